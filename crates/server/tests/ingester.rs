//! The ingester in the real binary, pushed to and read through its
//! internal API (`ingester.v1`): SIGKILL during pushes and flushes loses
//! nothing acknowledged, a torn WAL tail is repaired, the memory ceiling
//! holds under a flood, SIGTERM flushes and uploads, a full disk answers
//! 503 and recovers, and blocks wait while S3 is down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flamedb_api::pb::ingester::v1 as ingester;
use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::types::v1::LabelPair;
use flamedb_model::pprof::StackProfileBuilder;
use flamedb_model::{ProfileId, Tree};
use flamedb_testkit::{Flamedb, S3Server, Signal, SmallDisk, path_in, shared_dir, wait_until};
use prost::Message;

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const READY: Duration = Duration::from_secs(60);

/// Starts the single binary with its data and bucket under `dir`.
fn start(dir: &Path, name: &str, extra: &[&str]) -> Flamedb {
    let data = format!("-pyroscopedb.data-path={}", path_in(dir, "data"));
    let bucket = format!("-storage.filesystem.dir={}", path_in(dir, "bucket"));
    let mut args = vec![
        data.as_str(),
        bucket.as_str(),
        "-pyroscopedb.retention-policy-min-free-disk-gb=0",
    ];
    args.extend_from_slice(extra);
    let node = Flamedb::start(BINARY, name, &args);
    node.wait_ready(READY);
    node
}

fn now_ms() -> i64 {
    flamedb_model::now_nanos() / 1_000_000
}

/// A one-sample CPU profile (`main;work`) worth `value`.
fn cpu_profile(time_ms: i64, value: i64) -> Vec<u8> {
    let mut builder = StackProfileBuilder::new("cpu", "nanoseconds")
        .period("cpu", "nanoseconds", 10_000_000)
        .time(time_ms * 1_000_000, 0);
    builder.add(["main", "work"], value);
    builder.build().encode_to_vec()
}

fn profile_id(n: u64) -> ProfileId {
    ProfileId(u128::from(n).to_be_bytes())
}

/// A push of one profile per `(id, value)`, to service `service`.
fn push_request(service: &str, profiles: &[(u64, i64)]) -> Vec<u8> {
    let now = now_ms();
    PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                LabelPair {
                    name: "__name__".into(),
                    value: "process_cpu".into(),
                },
                LabelPair {
                    name: "service_name".into(),
                    value: service.into(),
                },
            ],
            samples: profiles
                .iter()
                .map(|&(id, value)| RawSample {
                    raw_profile: cpu_profile(now, value),
                    id: profile_id(id).to_string(),
                })
                .collect(),
            annotations: vec![],
        }],
    }
    .encode_to_vec()
}

const PUSH: &str = "/ingester.v1.IngesterService/Push";

fn selection() -> Option<ingester::ProfileSelection> {
    Some(ingester::ProfileSelection {
        label_selector: "{}".into(),
        profile_type_id: CPU.into(),
        start: 0,
        end: 0,
    })
}

/// Every stored profile, by ID, with its total; panics on a duplicate.
fn stored_profiles(node: &Flamedb) -> HashMap<ProfileId, i64> {
    let mut stored = HashMap::new();
    let mut page_token = Vec::new();
    loop {
        let request = ingester::SelectProfilesRequest {
            selection: selection(),
            page_size: 500,
            page_token,
        };
        let (status, body) = node
            .post_internal_proto("/ingester.v1.IngesterService/SelectProfiles", request.encode_to_vec())
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let page = ingester::SelectProfilesResponse::decode(body.as_slice()).unwrap();
        for profile in page.profiles {
            let id = ProfileId::from_slice(&profile.id).unwrap();
            assert!(
                stored.insert(id, profile.total).is_none(),
                "profile {id} is stored twice"
            );
        }
        if page.next_page_token.is_empty() {
            return stored;
        }
        page_token = page.next_page_token;
    }
}

fn merged_tree(node: &Flamedb) -> Tree {
    let request = ingester::MergeProfilesRequest {
        selection: selection(),
        ..Default::default()
    };
    let (status, body) = node
        .post_internal_proto("/ingester.v1.IngesterService/MergeProfiles", request.encode_to_vec())
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    Tree::decode(&ingester::MergeProfilesResponse::decode(body.as_slice()).unwrap().tree).unwrap()
}

/// Checks every acknowledged profile is stored once with its value.
fn assert_all_acknowledged_stored(node: &Flamedb, acknowledged: &[(u64, i64)]) {
    let stored = stored_profiles(node);
    for &(id, value) in acknowledged {
        assert_eq!(
            stored.get(&profile_id(id)),
            Some(&value),
            "acknowledged profile {id} is missing or changed ({} acknowledged, {} stored)",
            acknowledged.len(),
            stored.len()
        );
    }
    // The flame graph agrees: nothing counted twice.
    let stored_total: i64 = stored.values().sum();
    assert_eq!(merged_tree(node).total(), stored_total);
}

/// Pushes to the ingester API at `internal` until told to stop or the
/// server is gone; records what was acknowledged.
fn pusher(internal: String, first_id: u64, stop: Arc<AtomicBool>, acknowledged: Arc<Mutex<Vec<(u64, i64)>>>) {
    let mut next = first_id;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<(u64, i64)> = (next..next + 3).map(|id| (id, (id % 97 + 1) as i64)).collect();
        next += 3;
        match flamedb_testkit::post_proto(&internal, PUSH, push_request("app", &batch)) {
            Ok((200, _)) => acknowledged.lock().unwrap().extend(batch),
            Ok((status, body)) => panic!("push answered {status}: {}", String::from_utf8_lossy(&body)),
            Err(_) => return, // killed
        }
    }
}

/// Asks for flushes until the server is gone.
fn flusher(http: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if flamedb_testkit::post_proto(&http, "/ingester/flush", Vec::new()).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pseudo_random_ms(low: u64, high: u64) -> u64 {
    let nanos = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    );
    low + nanos % (high - low)
}

fn last_wal_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("data/wal"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| std::fs::metadata(path).map(|meta| meta.len() > 0).unwrap_or(false))
        .collect();
    segments.sort();
    segments.pop().expect("a non-empty WAL segment")
}

#[test]
fn test_sigkill_during_pushes_and_flushes_loses_nothing_acknowledged() {
    let dir = shared_dir();
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    for round in 0..5u64 {
        let mut node = start(dir.path(), &format!("ingester-round-{round}"), &[]);
        assert_all_acknowledged_stored(&node, &acknowledged.lock().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![std::thread::spawn({
            let (internal, stop, acknowledged) = (node.internal.clone().unwrap(), stop.clone(), acknowledged.clone());
            move || pusher(internal, round * 1_000_000, stop, acknowledged)
        })];
        // Odd rounds flush all along, so the kill can land mid-flush.
        if round % 2 == 1 {
            threads.push(std::thread::spawn({
                let (http, stop) = (node.http.clone(), stop.clone());
                move || flusher(http, stop)
            }));
        }
        // At least one push acknowledged, then the kill at a random moment.
        wait_until(Duration::from_secs(30), "a first acknowledged push", || {
            (!acknowledged.lock().unwrap().is_empty()).then_some(())
        });
        std::thread::sleep(Duration::from_millis(pseudo_random_ms(300, 1200)));
        node.kill();
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(!acknowledged.lock().unwrap().is_empty());
    }

    // A crash in the middle of writing a record: a torn tail.
    let segment = last_wal_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe]);
    std::fs::write(&segment, bytes).unwrap();

    let node = start(dir.path(), "ingester-after", &[]);
    assert_all_acknowledged_stored(&node, &acknowledged.lock().unwrap());
    assert!(
        node.metric("flamedb_ingester_wal_repaired_segments_total")
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn test_sigterm_flushes_and_uploads_then_restart_reads_the_blocks() {
    let dir = shared_dir();
    let mut node = start(dir.path(), "ingester", &[]);
    let pushed: Vec<(u64, i64)> = (1..=20).map(|id| (id, id as i64 * 10)).collect();
    for chunk in pushed.chunks(5) {
        let (status, body) = node.post_internal_proto(PUSH, push_request("api", chunk)).unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    node.signal(Signal::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(60)).success(), "{}", node.log());
    // The heads became a block, uploaded with meta.json.
    let uploaded: Vec<PathBuf> = std::fs::read_dir(dir.path().join("bucket/anonymous/blocks"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(uploaded.len(), 1, "{uploaded:?}");
    assert!(uploaded[0].join("meta.json").exists());

    let node = start(dir.path(), "ingester-restarted", &[]);
    assert_eq!(node.metric("flamedb_ingester_head_bytes"), Some(0.0));
    assert_all_acknowledged_stored(&node, &pushed);
}

#[test]
fn test_low_disk_keeps_the_blocks_queries_read_from_ingesters() {
    let dir = shared_dir();
    // 100 % must be free: the disk is always low.
    let node = start(
        dir.path(),
        "ingester",
        &["-pyroscopedb.retention-policy-min-disk-available-percentage=1"],
    );
    let pushed = [(1, 5), (2, 6)];
    let (status, body) = node.post_internal_proto(PUSH, push_request("api", &pushed)).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _) = node.post_proto("/ingester/flush", Vec::new()).unwrap();
    assert_eq!(status, 200);
    // After the upload the shipper looks at the disk, finds it low, and
    // keeps the block: its profiles are newer than query-store-after.
    wait_until(Duration::from_secs(60), "a low-disk check after the upload", || {
        let log = node.log();
        let uploaded = log.find("block uploaded")?;
        log[uploaded..].contains("disk space is low").then_some(())
    });
    assert_eq!(node.metric("flamedb_ingester_local_blocks"), Some(1.0));
    assert_all_acknowledged_stored(&node, &pushed);
}

#[test]
fn test_memory_ceiling_holds_under_a_push_flood() {
    let dir = shared_dir();
    let ceiling = 300_000u64;
    let node = start(
        dir.path(),
        "ingester",
        &[&format!("-ingester.max-head-memory={ceiling}")],
    );
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4u64)
        .map(|thread| {
            let (internal, acknowledged, refused) =
                (node.internal.clone().unwrap(), acknowledged.clone(), refused.clone());
            std::thread::spawn(move || {
                for n in 0..150u64 {
                    // Many series: each push adds index and symbol memory.
                    let id = thread * 1_000 + n;
                    let batch = [(id, 5)];
                    let (status, body) =
                        flamedb_testkit::post_proto(&internal, PUSH, push_request(&format!("svc-{id}"), &batch))
                            .unwrap();
                    match status {
                        200 => acknowledged.lock().unwrap().extend(batch),
                        429 => {
                            let message = String::from_utf8_lossy(&body);
                            assert!(message.contains("-ingester.max-head-memory"), "{message}");
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("push answered {other}: {}", String::from_utf8_lossy(&body)),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let head_bytes = node.metric("flamedb_ingester_head_bytes").unwrap();
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the flood never reached the ceiling"
    );
    // Over by at most what was in flight when the ceiling was reached.
    assert!(head_bytes < (ceiling * 2) as f64, "head bytes {head_bytes}");
    assert_all_acknowledged_stored(&node, &acknowledged.lock().unwrap());
}

#[test]
fn test_full_disk_answers_503_and_recovers() {
    let dir = shared_dir();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), 16 << 20) else {
        return;
    };
    let mut node = start(disk.path(), "ingester", &[]);
    let mut acknowledged = Vec::new();
    let (status, _) = node.post_internal_proto(PUSH, push_request("api", &[(1, 7)])).unwrap();
    assert_eq!(status, 200);
    acknowledged.push((1, 7));

    disk.fill(0);
    let mut failures = 0;
    for id in 2..40u64 {
        let (status, body) = node.post_internal_proto(PUSH, push_request("api", &[(id, 3)])).unwrap();
        match status {
            200 => acknowledged.push((id, 3)),
            503 => {
                failures += 1;
                let message = String::from_utf8_lossy(&body);
                assert!(message.contains("WAL"), "{message}");
            }
            other => panic!("push answered {other}: {}", String::from_utf8_lossy(&body)),
        }
    }
    assert!(failures > 0, "a full disk never failed a push");
    assert!(node.is_running(), "the ingester died on a full disk:\n{}", node.log());

    disk.free_up();
    let (status, body) = node
        .post_internal_proto(PUSH, push_request("api", &[(100, 11)]))
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    acknowledged.push((100, 11));
    assert_all_acknowledged_stored(&node, &acknowledged);
    node.kill();
    let node = start(disk.path(), "ingester-restarted", &[]);
    assert_all_acknowledged_stored(&node, &acknowledged);
}

#[test]
fn test_blocks_wait_while_s3_is_down_and_upload_when_it_is_back() {
    let dir = shared_dir();
    let Some(mut s3) = S3Server::start_if_installed(&dir.path().join("s3")) else {
        return;
    };
    let flags = s3.flags();
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = start(dir.path(), "ingester", &args);
    let (status, _) = node.post_internal_proto(PUSH, push_request("api", &[(1, 5)])).unwrap();
    assert_eq!(status, 200);
    let (status, body) = node.post_proto("/ingester/flush", Vec::new()).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // Uploaded, and recorded as such by the ingester (it records it just
    // after the upload ends).
    wait_until(Duration::from_secs(60), "the first block uploaded", || {
        (s3.blocks("anonymous").len() == 1 && node.metric("flamedb_ingester_blocks_not_uploaded") == Some(0.0))
            .then_some(())
    });

    // Storage down: pushes and flushes still work, the block waits.
    s3.stop();
    let (status, _) = node.post_internal_proto(PUSH, push_request("api", &[(2, 6)])).unwrap();
    assert_eq!(status, 200);
    let (status, _) = node.post_proto("/ingester/flush", Vec::new()).unwrap();
    assert_eq!(status, 200);
    wait_until(Duration::from_secs(60), "a failed upload", || {
        (node.metric("flamedb_ingester_ship_failures_total").unwrap_or(0.0) >= 1.0).then_some(())
    });
    assert_eq!(node.metric("flamedb_ingester_blocks_not_uploaded"), Some(1.0));
    assert_all_acknowledged_stored(&node, &[(1, 5), (2, 6)]);

    // Back: the block goes up (retries back off from 1 s).
    s3.restart();
    wait_until(Duration::from_secs(90), "the waiting block uploaded", || {
        (s3.blocks("anonymous").len() == 2 && node.metric("flamedb_ingester_blocks_not_uploaded") == Some(0.0))
            .then_some(())
    });
    for block in s3.blocks("anonymous") {
        assert!(block.join("meta.json").exists(), "{block:?} has no meta.json");
    }
}

/// The offsets of the records of a WAL segment (framing: length u32 LE,
/// checksum u32, payload).
fn record_offsets(segment: &Path) -> Vec<usize> {
    let bytes = std::fs::read(segment).unwrap();
    let mut offsets = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        offsets.push(at);
        let size = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + size;
    }
    offsets
}

#[test]
fn test_a_corrupt_wal_record_leaves_the_process_up_and_unready_until_skipped() {
    let dir = shared_dir();
    let mut node = start(dir.path(), "ingester", &[]);
    for (id, value) in [(1, 1), (2, 10), (3, 100)] {
        let (status, body) = node
            .post_internal_proto(PUSH, push_request("api", &[(id, value)]))
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    node.kill();
    // A bit flips in the second record, acknowledged long ago.
    let segment = last_wal_segment(dir.path());
    let offsets = record_offsets(&segment);
    assert_eq!(offsets.len(), 3);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[offsets[1] + 20] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    let data = format!("-pyroscopedb.data-path={}", path_in(dir.path(), "data"));
    let bucket = format!("-storage.filesystem.dir={}", path_in(dir.path(), "bucket"));
    let mut unready = Flamedb::start(BINARY, "ingester-corrupt", &[data.as_str(), bucket.as_str()]);
    let (status, reason) = unready.get("/ready").unwrap();
    assert_eq!(status, 503, "{reason}");
    let named = format!("{} at byte {}", segment.display(), offsets[1]);
    assert!(reason.contains(&named), "{reason}");
    assert!(reason.contains("-ingester.wal.skip-corrupt-records"), "{reason}");
    assert_eq!(unready.get("/metrics").unwrap().0, 200);
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "the corrupt segment is kept as it is"
    );
    unready.signal(Signal::SIGTERM);
    assert!(
        unready.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        unready.log()
    );

    // Skipping the record keeps every later one.
    let node = start(dir.path(), "ingester-skipping", &["-ingester.wal.skip-corrupt-records"]);
    let stored = stored_profiles(&node);
    assert_eq!(stored.get(&profile_id(1)), Some(&1));
    assert_eq!(stored.get(&profile_id(2)), None);
    assert_eq!(stored.get(&profile_id(3)), Some(&100));
}
