//! Starting the processes a benchmark measures: the single binary, or one
//! front process (distributor, and querier if asked) with three ingesters
//! and RF=3, sharing the ring by gossip.

use std::time::Duration;

use flamedb_testkit::{Flamedb, wait_until};

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
    let label = format!("-memberlist.cluster-label=bench-{}", std::process::id());
    let mut base: Vec<&str> = args.to_vec();
    base.extend([
        "-memberlist.gossip-interval=100ms",
        "-ingester.heartbeat-period=500ms",
        &label,
    ]);
    let front_target = format!("-target={front_target}");
    let front = Flamedb::start(BINARY, "front", &[base.as_slice(), &[&front_target]].concat());
    let join = format!("-memberlist.join={}", front.gossip.clone().unwrap());
    let mut processes = vec![];
    for n in 1..=3 {
        let id = format!("-ingester.lifecycler.ID=ingester-{n}");
        processes.push(Flamedb::start(
            BINARY,
            &format!("ingester-{n}"),
            &[base.as_slice(), &["-target=ingester", &id, &join]].concat(),
        ));
    }
    for node in &processes {
        node.wait_ready(READY);
    }
    front.wait_ready(READY);
    wait_until(Duration::from_secs(30), "3 ACTIVE ingesters", || {
        let ring = front.get_json("/ring");
        let active = ring["shards"]
            .as_array()
            .map(|shards| shards.iter().filter(|s| s["state"] == "ACTIVE").count())
            .unwrap_or(0);
        (active == 3).then_some(())
    });
    let target = front.http.clone();
    processes.push(front);
    Setup { target, processes }
}
