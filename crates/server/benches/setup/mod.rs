//! Starting the processes a benchmark measures: the single binary, or one
//! front process (distributor, and querier if asked) with three ingesters
//! and RF=3, sharing the ring by gossip.

use std::time::Duration;

use flamedb_testkit::{Flamedb, start_ingesters, start_ready};

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const READY: Duration = Duration::from_secs(60);

/// The processes of a setup (stopped when dropped) and the address to
/// send requests to.
pub struct Setup {
    pub target: String,
    /// Held so the processes live as long as the setup; not every
    /// benchmark reads them.
    #[allow(dead_code)]
    pub processes: Vec<Flamedb>,
}

/// The single binary with `args`.
pub fn single(args: &[&str]) -> Setup {
    let node = Flamedb::start(BINARY, "single", args);
    node.wait_ready(READY);
    Setup {
        target: node.http.clone(),
        processes: vec![node],
    }
}

/// A front process running `front_target` and three ingesters, RF=3.
pub fn rf3(args: &[&str], front_target: &str) -> Setup {
    let mut flags: Vec<String> = args.iter().map(ToString::to_string).collect();
    flags.extend([
        "-memberlist.gossip-interval=100ms".to_owned(),
        "-ingester.heartbeat-period=500ms".to_owned(),
        format!("-memberlist.cluster-label=bench-{}", std::process::id()),
    ]);
    let front = start_ready(BINARY, "front", &flags, &[format!("-target={front_target}")]);
    let mut processes = start_ingesters(BINARY, &front, 3, &flags, &[]);
    let target = front.http.clone();
    processes.push(front);
    Setup { target, processes }
}
