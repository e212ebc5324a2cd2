//! Fault scenarios with the continuous checker writing through the public
//! API (four writers over 100 series, about 100 pushes a second, so pushes
//! are in flight when a fault lands): SIGKILL of the single binary (RF=1,
//! the WAL keeps every acknowledged profile), repeated SIGKILL and restart
//! of one ingester of three (RF=3) and SIGKILL of all three at once (only
//! their WALs keep the data). Kills land at random offsets (the seed is
//! printed; `FLAMEDB_FAULT_SEED` replays it), and each kill must follow
//! at least `MIN_ACKNOWLEDGED_PER_KILL` acknowledged pushes. Afterwards
//! every acknowledged profile must be read back once, with its value, and
//! each series' merged flame graph must total its points. Also: two
//! ingesters down, a rolling restart, a hung ingester, object storage
//! down, a full disk on one ingester and a network partition between the
//! front and one ingester. `FLAMEDB_LONG_TESTS=1` runs the long variants.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::thread;
use std::time::Duration;

use flamedb_checker::{Checker, CheckerConfig};
use flamedb_testkit::{
    Flamedb, Link, S3Server, Signal, SmallDisk, cluster_flags, path_in, shared_dir, start_ready, wait_active_ingesters,
};

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");

fn long() -> bool {
    std::env::var_os("FLAMEDB_LONG_TESTS").is_some()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn checker(target: &str, run: &str) -> Checker {
    Checker::new(CheckerConfig {
        push_to: target.to_owned(),
        query_from: target.to_owned(),
        tenant: None,
        series: 100,
        rate: 100,
        writers: 4,
        run: run.to_owned(),
    })
}

/// Acknowledged pushes each kill must follow, so a kill meets real load.
const MIN_ACKNOWLEDGED_PER_KILL: usize = 50;

/// Offsets of kills within their writing windows, from a printed seed
/// (`FLAMEDB_FAULT_SEED` replays one).
struct KillTimes(u64);

impl KillTimes {
    fn new(test: &str) -> Self {
        let seed = std::env::var("FLAMEDB_FAULT_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |elapsed| elapsed.as_nanos() as u64)
            });
        println!("{test}: FLAMEDB_FAULT_SEED={seed}");
        Self(seed | 1)
    }

    /// The next offset in `[from, to)` (xorshift).
    fn next(&mut self, from: Duration, to: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = (to - from).as_millis().max(1) as u64;
        from + Duration::from_millis(self.0 % span)
    }
}

/// Checks and prints the report with the acknowledged pushes before each
/// kill; panics on loss, double counting, wrong values or a kill that met
/// too little load.
fn assert_clean(checker: &Checker, acknowledged_per_kill: &[usize]) {
    let report = checker.check().unwrap();
    println!(
        "{} kills={} acknowledged_per_kill={acknowledged_per_kill:?}",
        report.summary(),
        acknowledged_per_kill.len()
    );
    assert!(report.is_clean(), "{}", report.summary());
    assert!(
        acknowledged_per_kill
            .iter()
            .all(|&acknowledged| acknowledged >= MIN_ACKNOWLEDGED_PER_KILL),
        "a kill followed fewer than {MIN_ACKNOWLEDGED_PER_KILL} acknowledged pushes: {acknowledged_per_kill:?}"
    );
}

/// Checks and prints the report (after `what`); panics on loss, double
/// counting, wrong values or any push that failed.
fn assert_clean_and_every_push_acknowledged(checker: &Checker, what: &str) {
    let report = checker.check().unwrap();
    println!("{what}{}", report.summary());
    assert!(report.is_clean(), "{}", report.summary());
    assert_eq!(report.unacknowledged, 0, "a push failed: {}", report.summary());
}

#[test]
fn test_rf1_sigkill_during_load_loses_nothing_acknowledged() {
    let dir = shared_dir();
    let port = free_port();
    let flags: Vec<String> = vec![
        format!("-server.http-listen-port={port}"),
        format!("-pyroscopedb.data-path={}", path_in(dir.path(), "data")),
        format!("-storage.filesystem.dir={}", path_in(dir.path(), "bucket")),
        format!("-querier.block-cache-dir={}", path_in(dir.path(), "cache")),
    ];
    let target = format!("127.0.0.1:{port}");
    let mut node = start_ready(BINARY, "single", &flags, &[]);
    let kills = if long() { 10 } else { 2 };
    let mut times = KillTimes::new("rf1");
    let mut checker = checker(&target, "rf1");
    let mut per_kill = Vec::new();
    for _ in 0..kills {
        let at = times.next(Duration::from_millis(1000), Duration::from_millis(2000));
        let until_kill;
        (checker, until_kill) = kill_while_writing(checker, Duration::from_millis(2500), at, || node.kill());
        per_kill.push(until_kill);
        node = start_ready(BINARY, "single", &flags, &[]);
    }
    checker.write_for(Duration::from_secs(1));
    assert_clean(&checker, &per_kill);
    drop(node);
}

/// An ingester of the cluster, restartable with its data and tokens.
struct Member {
    name: String,
    flags: Vec<String>,
    process: Option<Flamedb>,
}

impl Member {
    fn start(&mut self) {
        self.process = Some(start_ready(BINARY, &self.name, &self.flags, &[]));
    }
}

/// A front process (distributor and querier) and three ingesters with
/// their own data and tokens files under `dir`, RF=3, all ACTIVE; every
/// process also gets `extra`.
fn cluster(dir: &std::path::Path, label: &str, extra: &[String]) -> (Flamedb, Vec<Member>) {
    cluster_with(dir, label, extra, &[], |_| {})
}

/// [`cluster`], with `first_extra` for ingester-1 only, and `started`
/// called once ingester-1 runs (before the others start).
fn cluster_with(
    dir: &std::path::Path,
    label: &str,
    extra: &[String],
    first_extra: &[String],
    started: impl FnOnce(&Flamedb),
) -> (Flamedb, Vec<Member>) {
    let mut base = cluster_flags(&format!("{label}-{}", std::process::id()));
    base.extend_from_slice(extra);
    let front = start_ready(BINARY, "front", &base, &["-target=distributor,querier".into()]);
    let join = format!("-memberlist.join={}", front.gossip.clone().unwrap());
    let mut members: Vec<Member> = (1..=3)
        .map(|n| {
            let mut flags = base.clone();
            flags.extend([
                "-target=ingester".to_owned(),
                format!("-ingester.lifecycler.ID=ingester-{n}"),
                format!(
                    "-ingester.tokens-file-path={}",
                    path_in(dir, &format!("tokens-{n}.json"))
                ),
                format!("-pyroscopedb.data-path={}", path_in(dir, &format!("ingester-{n}"))),
                join.clone(),
            ]);
            Member {
                name: format!("ingester-{n}"),
                flags,
                process: None,
            }
        })
        .collect();
    members[0].flags.extend_from_slice(first_extra);
    members[0].start();
    started(members[0].process.as_ref().unwrap());
    for member in &mut members[1..] {
        member.start();
    }
    wait_active_ingesters(&front, 3);
    (front, members)
}

/// Flushes every ingester's heads into blocks (uploaded in the
/// background).
fn flush(ingesters: &[&Flamedb]) {
    for node in ingesters {
        let (status, body) = node.post("/ingester/flush", &[], Vec::new()).unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

/// Flags of a compactor of the cluster labelled `label` (see `cluster`)
/// with its `extra` flags: a round every 200 ms, replicas' windows
/// compacted as soon as they end.
fn compactor_flags(label: &str, extra: &[String]) -> Vec<String> {
    let mut flags = cluster_flags(&format!("{label}-{}", std::process::id()));
    flags.extend(extra.iter().cloned());
    flags.extend([
        "-target=compactor".to_owned(),
        "-compactor.compaction-interval=200ms".to_owned(),
        "-compactor.first-level-compaction-wait-period=0s".to_owned(),
    ]);
    flags
}

/// Writes with `checker` in the background for `duration`, running
/// `during` meanwhile; returns the checker.
fn while_writing(mut checker: Checker, duration: Duration, during: impl FnOnce()) -> Checker {
    let writer = thread::spawn(move || {
        checker.write_for(duration);
        checker
    });
    during();
    writer.join().unwrap()
}

/// Writes with `checker` in the background for `duration` and calls
/// `kill` at `at` into it; returns the checker and how many pushes were
/// acknowledged from the start until the kill.
fn kill_while_writing(checker: Checker, duration: Duration, at: Duration, kill: impl FnOnce()) -> (Checker, usize) {
    let counter = checker.acknowledged_counter();
    let before = counter.load(std::sync::atomic::Ordering::Acquire);
    let mut until_kill = 0;
    let checker = while_writing(checker, duration, || {
        thread::sleep(at);
        until_kill = counter.load(std::sync::atomic::Ordering::Acquire) - before;
        kill();
    });
    (checker, until_kill)
}

#[test]
fn test_rf3_repeated_sigkill_of_one_ingester_loses_and_doubles_nothing() {
    let dir = shared_dir();
    let (front, mut members) = cluster(dir.path(), "faults-kill", &[]);
    let kills = if long() { 20 } else { 3 };
    let mut times = KillTimes::new("rf3");
    let mut checker = checker(&front.http, "rf3");
    let mut per_kill = Vec::new();
    for _ in 0..kills {
        // Always the same ingester: its restarts replay its WAL.
        let victim = &mut members[0];
        let at = times.next(Duration::from_millis(1000), Duration::from_millis(2000));
        let until_kill;
        (checker, until_kill) = kill_while_writing(checker, Duration::from_millis(2500), at, || {
            if let Some(mut process) = victim.process.take() {
                process.kill();
            }
        });
        per_kill.push(until_kill);
        victim.start();
        wait_active_ingesters(&front, 3);
    }
    checker.write_for(Duration::from_secs(1));
    assert_clean(&checker, &per_kill);
}

/// Every replica of every series killed at once under load: only the
/// ingesters' WALs keep what was acknowledged.
#[test]
fn test_rf3_sigkill_of_every_ingester_at_once_loses_nothing_acknowledged() {
    let dir = shared_dir();
    let (front, mut members) = cluster(dir.path(), "faults-all", &[]);
    let kills = if long() { 5 } else { 1 };
    let mut times = KillTimes::new("rf3-all");
    let mut checker = checker(&front.http, "rf3-all");
    let mut per_kill = Vec::new();
    for _ in 0..kills {
        let at = times.next(Duration::from_millis(1000), Duration::from_millis(2000));
        let until_kill;
        (checker, until_kill) = kill_while_writing(checker, Duration::from_millis(2500), at, || {
            for member in members.iter_mut() {
                if let Some(mut process) = member.process.take() {
                    process.kill();
                }
            }
        });
        per_kill.push(until_kill);
        for member in &mut members {
            member.start();
        }
        wait_active_ingesters(&front, 3);
    }
    checker.write_for(Duration::from_secs(1));
    assert_clean(&checker, &per_kill);
}

/// A compactor SIGKILLed again and again while it compacts the blocks of
/// an RF=3 cluster under load (5 s windows, flushed and uploaded every
/// round, read back from the bucket alone after a second, whole buckets
/// of a second from the compacted blocks' merged ones): every acknowledged
/// profile is read back once, whatever step a kill cut short.
#[test]
fn test_rf3_compactor_sigkilled_mid_compaction_loses_and_doubles_nothing() {
    let dir = shared_dir();
    let extra = [
        format!("-storage.filesystem.dir={}", path_in(dir.path(), "bucket")),
        "-querier.query-store-after=1s".to_owned(),
        "-pyroscopedb.max-block-duration=5s".to_owned(),
    ];
    let (front, members) = cluster(dir.path(), "faults-compactor", &extra);
    let mut compactor_flags = compactor_flags("faults-compactor", &extra);
    compactor_flags.extend([
        format!("-compactor.data-dir={}", path_in(dir.path(), "compactor")),
        "-compactor.block-ranges=5s,10s,20s".to_owned(),
        "-compactor.downsampling-resolutions=1s,4s".to_owned(),
        "-compactor.deletion-delay=2s".to_owned(),
    ]);
    let start_compactor = || start_ready(BINARY, "compactor", &compactor_flags, &[]);
    let mut compactor = start_compactor();
    let ingesters: Vec<&Flamedb> = members.iter().filter_map(|member| member.process.as_ref()).collect();
    let flush_all = || flush(&ingesters);
    let kills = if long() { 10 } else { 4 };
    let mut times = KillTimes::new("compactor");
    let mut checker = checker(&front.http, "compactor");
    let mut compactions = 0.0;
    for _ in 0..kills {
        let at = times.next(Duration::from_millis(500), Duration::from_millis(2500));
        checker = while_writing(checker, Duration::from_millis(3000), || {
            flush_all();
            thread::sleep(at);
            compactions += compactor.metric("flamedb_compactor_compactions_total").unwrap_or(0.0);
            compactor.kill();
        });
        compactor = start_compactor();
    }
    flush_all();
    // The last compactor runs on: wait until it compacted, and until the
    // ingesters hold no block (kept 1 s once uploaded), so every read of
    // what was flushed comes from the bucket.
    flamedb_testkit::wait_until(Duration::from_secs(60), "a compaction after the last kill", || {
        (compactor.metric("flamedb_compactor_compactions_total").unwrap_or(0.0) >= 1.0).then_some(())
    });
    for node in &ingesters {
        flamedb_testkit::wait_until(
            Duration::from_secs(120),
            "the ingester's blocks uploaded and dropped",
            || (node.metric("flamedb_ingester_local_blocks") == Some(0.0)).then_some(()),
        );
    }
    compactions += compactor.metric("flamedb_compactor_compactions_total").unwrap_or(0.0);
    let report = checker.check().unwrap();
    println!("{} kills={kills} compactions={compactions}", report.summary());
    assert!(report.is_clean(), "{}", report.summary());
    assert_eq!(report.unacknowledged, 0, "{}", report.summary());
    assert!(
        report.acknowledged >= kills * MIN_ACKNOWLEDGED_PER_KILL,
        "{}",
        report.summary()
    );
}

/// The tenants named `tenant-<n>` the compactor ring `ring` (its page,
/// with tokens) gives to each of its instances, `per_instance` each: the
/// owner of a tenant is the instance of the first token past the tenant's.
fn tenants_split_by(ring: &serde_json::Value, per_instance: usize) -> Vec<(String, Vec<String>)> {
    let mut tokens: Vec<(u64, String)> = Vec::new();
    for shard in ring["shards"].as_array().unwrap() {
        let id = shard["id"].as_str().unwrap().to_owned();
        tokens.extend(
            shard["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|token| (token.as_u64().unwrap(), id.clone())),
        );
    }
    tokens.sort();
    let mut split: Vec<(String, Vec<String>)> = Vec::new();
    for n in 0.. {
        let tenant = format!("tenant-{n}");
        let key = u64::from(flamedb_model::tenant_token(&tenant));
        let owner = &tokens.iter().find(|(token, _)| *token > key).unwrap_or(&tokens[0]).1;
        let index = match split.iter().position(|(id, _)| id == owner) {
            Some(index) => index,
            None => {
                split.push((owner.clone(), Vec::new()));
                split.len() - 1
            }
        };
        if split[index].1.len() < per_instance {
            split[index].1.push(tenant);
        }
        if split.len() == ring["shards"].as_array().unwrap().len()
            && split.iter().all(|(_, tenants)| tenants.len() == per_instance)
        {
            return split;
        }
    }
    unreachable!()
}

/// Two compactors on the S3 bucket of an RF=3 cluster split four tenants
/// over the compactor ring (two each, as their tokens say), under load;
/// one is SIGKILLed and the other takes its tenants over within the
/// heartbeat timeout. Every tenant's blocks get compacted, and every
/// acknowledged profile of every tenant is read back once, from the
/// bucket, also when the tenant's bucket index lists its blocks.
#[test]
fn test_rf3_s3_two_compactors_split_tenants_and_one_takes_over_from_the_other() {
    let dir = shared_dir();
    let Some(s3) = S3Server::start_if_installed(&dir.path().join("s3")) else {
        return;
    };
    let mut extra = s3.flags();
    extra.extend([
        "-auth.multitenancy-enabled=true".to_owned(),
        // The bucket index is trusted up to half of this and half the
        // deletion delay: 1.5 s, several rounds.
        "-querier.query-store-after=3s".to_owned(),
        "-pyroscopedb.max-block-duration=5s".to_owned(),
    ]);
    let (front, members) = cluster(dir.path(), "faults-compactors", &extra);
    let mut compactor_flags = compactor_flags("faults-compactors", &extra);
    compactor_flags.extend([
        format!("-memberlist.join={}", front.gossip.clone().unwrap()),
        "-compactor.ring.heartbeat-timeout=5s".to_owned(),
        "-compactor.block-ranges=5s,10s".to_owned(),
        "-compactor.deletion-delay=4s".to_owned(),
    ]);
    let start_compactor = |n: usize| {
        let own = [
            format!("-compactor.ring.instance-id=compactor-{n}"),
            format!("-compactor.data-dir={}", path_in(dir.path(), &format!("compactor-{n}"))),
        ];
        start_ready(BINARY, &format!("compactor-{n}"), &compactor_flags, &own)
    };
    let survivor = start_compactor(1);
    let mut doomed = start_compactor(2);
    for compactor in [&survivor, &doomed] {
        flamedb_testkit::wait_until(Duration::from_secs(30), "both compactors ACTIVE in the ring", || {
            let ring = compactor.get_json("/compactor/ring");
            let active = ring["shards"]
                .as_array()?
                .iter()
                .filter(|shard| shard["state"] == "ACTIVE");
            (active.count() == 2).then_some(())
        });
    }
    let split = tenants_split_by(&survivor.get_json("/compactor/ring?tokens=true"), 2);
    println!("tenants by compactor: {split:?}");
    let tenants: Vec<&String> = split.iter().flat_map(|(_, tenants)| tenants).collect();
    let ingesters: Vec<&Flamedb> = members.iter().filter_map(|member| member.process.as_ref()).collect();
    let flush_all = || flush(&ingesters);
    let mut checkers: Vec<Checker> = tenants
        .iter()
        .map(|tenant| {
            Checker::new(CheckerConfig {
                push_to: front.http.clone(),
                query_from: front.http.clone(),
                tenant: Some((*tenant).to_owned()),
                series: 25,
                rate: 25,
                writers: 1,
                run: format!("compactors-{tenant}"),
            })
        })
        .collect();
    let write_all = |checkers: Vec<Checker>, duration: Duration, during: &mut dyn FnMut()| -> Vec<Checker> {
        thread::scope(|scope| {
            let writers: Vec<_> = checkers
                .into_iter()
                .map(|mut checker| {
                    scope.spawn(move || {
                        checker.write_for(duration);
                        checker
                    })
                })
                .collect();
            during();
            writers.into_iter().map(|writer| writer.join().unwrap()).collect()
        })
    };
    let owned = |compactor: &Flamedb| compactor.metric("flamedb_compactor_tenants_owned");
    let discovered = |compactor: &Flamedb| compactor.metric("flamedb_compactor_tenants_discovered");
    checkers = write_all(checkers, Duration::from_secs(2), &mut || {});
    flush_all();
    // Both see every tenant, and each owns its two.
    flamedb_testkit::wait_until(
        Duration::from_secs(60),
        "the tenants split between the compactors",
        || {
            [&survivor, &doomed]
                .iter()
                .all(|compactor| discovered(compactor) == Some(4.0) && owned(compactor) == Some(2.0))
                .then_some(())
        },
    );
    let mut killed_at = std::time::SystemTime::now();
    checkers = write_all(checkers, Duration::from_secs(3), &mut || {
        thread::sleep(Duration::from_millis(500));
        flush_all();
        doomed.kill();
        killed_at = std::time::SystemTime::now();
    });
    flamedb_testkit::wait_until(Duration::from_secs(60), "the survivor owns every tenant", || {
        (owned(&survivor) == Some(4.0)).then_some(())
    });
    // The survivor rounds over the dead compactor's tenants: their bucket
    // indexes are written again after the kill.
    let doomed_tenants = &split.iter().find(|(id, _)| id == "compactor-2").unwrap().1;
    for tenant in doomed_tenants {
        flamedb_testkit::wait_until(
            Duration::from_secs(60),
            "the survivor indexing a taken-over tenant",
            || {
                let index = s3.tenant_dir(tenant).join("bucket-index.json.gz");
                let written = std::fs::metadata(index).and_then(|meta| meta.modified()).ok()?;
                (written > killed_at).then_some(())
            },
        );
    }
    flush_all();
    for tenant in &tenants {
        flamedb_testkit::wait_until(Duration::from_secs(60), "a compacted block of every tenant", || {
            s3.blocks(tenant)
                .iter()
                .filter_map(|block| std::fs::read(block.join("meta.json")).ok())
                .filter_map(|meta| serde_json::from_slice::<serde_json::Value>(&meta).ok())
                .any(|meta| meta["compaction"]["level"].as_u64() >= Some(2))
                .then_some(())
        });
    }
    for node in &ingesters {
        flamedb_testkit::wait_until(
            Duration::from_secs(120),
            "the ingester's blocks uploaded and dropped",
            || (node.metric("flamedb_ingester_local_blocks") == Some(0.0)).then_some(()),
        );
    }
    // Reads of what only the bucket holds now, until some of them listed
    // a tenant's blocks from its bucket index.
    flamedb_testkit::wait_until(Duration::from_secs(60), "a query through the bucket index", || {
        for checker in &checkers {
            assert_clean_and_every_push_acknowledged(checker, "");
        }
        (front.metric("flamedb_querier_block_listings_total{source=\"index\"}") > Some(0.0)).then_some(())
    });
}

#[test]
fn test_rf3_two_ingesters_down_fails_writes_and_recovers() {
    let dir = shared_dir();
    let (front, mut members) = cluster(dir.path(), "faults-two-down", &[]);
    let mut checker = checker(&front.http, "two-down");
    checker.write_for(Duration::from_secs(1));
    let acknowledged_before = checker.acknowledged();
    assert!(
        acknowledged_before >= MIN_ACKNOWLEDGED_PER_KILL,
        "{acknowledged_before}"
    );
    for member in &mut members[..2] {
        if let Some(mut process) = member.process.take() {
            process.kill();
        }
    }
    // No quorum: every push sent fails.
    const REFUSED: usize = 5;
    for _ in 0..REFUSED {
        // Every series may have its profile of this second already: wait
        // for one that is free.
        let acknowledged =
            flamedb_testkit::wait_until(Duration::from_secs(5), "a series free to write", || checker.write_one());
        assert!(
            !acknowledged,
            "a push was acknowledged with two of three ingesters down"
        );
    }
    for member in &mut members[..2] {
        member.start();
    }
    wait_active_ingesters(&front, 3);
    // Recovered: pushes are acknowledged again, and everything
    // acknowledged before is still there.
    checker.write_for(Duration::from_secs(1));
    let report = checker.check().unwrap();
    println!("{} acknowledged_before={acknowledged_before}", report.summary());
    assert!(report.is_clean(), "{}", report.summary());
    assert!(report.unacknowledged >= REFUSED, "{}", report.summary());
    assert!(
        report.acknowledged >= acknowledged_before + MIN_ACKNOWLEDGED_PER_KILL,
        "{} acknowledged_before={acknowledged_before}",
        report.summary()
    );
}

#[test]
fn test_rf3_rolling_restart_with_sigterm_fails_no_push() {
    let dir = shared_dir();
    let (front, mut members) = cluster(dir.path(), "faults-rolling", &[]);
    let mut checker = checker(&front.http, "rolling");
    for member in &mut members {
        checker = while_writing(checker, Duration::from_millis(1500), || {
            thread::sleep(Duration::from_millis(300));
            // SIGTERM: it leaves the ring (LEAVING, flush, gone) and exits
            // cleanly.
            let mut process = member.process.take().unwrap();
            let status = process.terminate(Duration::from_secs(60));
            assert!(
                status.success(),
                "{} exited with {status}:\n{}",
                process.name(),
                process.log()
            );
        });
        member.start();
        wait_active_ingesters(&front, 3);
    }
    checker.write_for(Duration::from_secs(1));
    assert_clean_and_every_push_acknowledged(&checker, "");
}

#[test]
fn test_rf3_hung_ingester_does_not_stop_writes_and_rejoins() {
    let dir = shared_dir();
    let (front, members) = cluster(dir.path(), "faults-hung", &[]);
    let hung = members[0].process.as_ref().unwrap();
    let mut checker = checker(&front.http, "hung");
    hung.signal(Signal::SIGSTOP);
    // Pushes answer at two acknowledgements while the third waits.
    checker.write_for(Duration::from_secs(4));
    flamedb_testkit::wait_until(Duration::from_secs(20), "the hung ingester to turn UNHEALTHY", || {
        let page = front.get_json("/ring");
        page["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|shard| shard["id"] == "ingester-1" && shard["state"] == "UNHEALTHY")
            .then_some(())
    });
    hung.signal(Signal::SIGCONT);
    wait_active_ingesters(&front, 3);
    checker.write_for(Duration::from_secs(1));
    assert_clean_and_every_push_acknowledged(&checker, "");
}

#[test]
fn test_rf3_s3_down_during_flushes_loses_nothing_and_uploads_resume() {
    let dir = shared_dir();
    let Some(mut s3) = S3Server::start_if_installed(&dir.path().join("s3")) else {
        return;
    };
    // Queries read the bucket for anything older than a second, so the
    // uploaded copies are read (and must count once) too.
    let mut extra = s3.flags();
    extra.push("-querier.query-store-after=1s".to_owned());
    let (front, members) = cluster(dir.path(), "faults-s3", &extra);
    let mut checker = checker(&front.http, "s3");
    checker.write_for(Duration::from_secs(1));
    s3.stop();
    let ingesters: Vec<&Flamedb> = members.iter().filter_map(|member| member.process.as_ref()).collect();
    checker = while_writing(checker, Duration::from_secs(2), || flush(&ingesters));
    for node in &ingesters {
        flamedb_testkit::wait_until(Duration::from_secs(60), "a failed upload", || {
            (node.metric("flamedb_ingester_ship_failures_total").unwrap_or(0.0) >= 1.0).then_some(())
        });
    }
    s3.restart();
    for node in &ingesters {
        flamedb_testkit::wait_until(Duration::from_secs(90), "the waiting blocks uploaded", || {
            (node.metric("flamedb_ingester_blocks_not_uploaded") == Some(0.0)).then_some(())
        });
    }
    assert!(!s3.blocks("anonymous").is_empty());
    assert_clean_and_every_push_acknowledged(&checker, "");
}

#[test]
fn test_rf3_full_disk_on_one_ingester_fails_that_replica_only() {
    let dir = shared_dir();
    // ingester-1's data directory (see `cluster`) on a 16 MiB disk.
    let Some(disk) = SmallDisk::mount(&dir.path().join("ingester-1"), 16 << 20) else {
        return;
    };
    let (front, mut members) = cluster(dir.path(), "faults-disk", &[]);
    // Dropped in reverse order: the processes stop before the unmount.
    let mut checker = checker(&front.http, "disk-full");
    checker.write_for(Duration::from_secs(1));
    disk.fill(0);
    // Pushes go on at two acknowledgements; ingester-1 refuses its copies.
    checker.write_for(Duration::from_secs(3));
    let full = members[0].process.as_mut().unwrap();
    assert!(full.is_running(), "the ingester died on a full disk:\n{}", full.log());
    let refused = full.metric("flamedb_ingester_pushes_refused_total{reason=\"wal\"}");
    assert!(refused.unwrap_or(0.0) > 0.0, "the full disk refused nothing");
    assert_clean_and_every_push_acknowledged(
        &checker,
        &format!("while the disk is full (copies refused: {}): ", refused.unwrap_or(0.0)),
    );

    disk.free_up();
    checker.write_for(Duration::from_secs(1));
    assert_clean_and_every_push_acknowledged(&checker, "after freeing the disk: ");
}

#[test]
fn test_rf3_partitioned_ingester_does_not_stop_writes_or_reads() {
    let dir = shared_dir();
    // The front reaches ingester-1 only through `link`; gossip is direct,
    // so the ring keeps ingester-1 ACTIVE and healthy through the cut.
    let link = Link::start();
    let (front, _members) = cluster_with(
        dir.path(),
        "faults-partition",
        &[],
        &[format!("-ingester.lifecycler.port={}", link.port())],
        |ingester| link.set_target(&ingester.http),
    );
    let mut checker = checker(&front.http, "partition");
    checker.write_for(Duration::from_secs(1));
    link.cut();
    // Pushes answer at two acknowledgements; the copy for ingester-1 waits
    // until the push timeout.
    checker.write_for(Duration::from_secs(3));
    assert_clean_and_every_push_acknowledged(&checker, "during the partition: ");

    link.heal();
    checker.write_for(Duration::from_secs(1));
    assert_clean_and_every_push_acknowledged(&checker, "after healing: ");
}
