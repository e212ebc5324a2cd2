//! The ingester through its public API: pushes, restarts with WAL replay,
//! limits, and queries, with the real profiles of ../shared/testdata.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flamedb_ingester::{
    ClusterShare, IncomingProfile, Ingester, IngesterConfig, IngesterMetrics, ProfileQuery, PushError, ReplayReport,
    SelectedProfile, TimeRange,
};
use flamedb_model::pprof::{Function, Line, Location, Profile, Sample, ValueType};
use flamedb_model::{Labels, Limits, ProfileId, Selector, parse_selector, prepare_profile};
use flamedb_storage::{Bucket, BucketConfig};
use prometheus_client::registry::Registry;

const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

struct TestContext {
    dir: tempfile::TempDir,
}

impl TestContext {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn start_with(&self, config: IngesterConfig, limits: Limits) -> Ingester {
        start_ingester(config, limits, None).0
    }

    /// Starts with the default settings; returns what replay found too.
    fn start_reporting(&self) -> (Ingester, ReplayReport) {
        start_ingester(IngesterConfig::new(self.dir.path()), Limits::default(), None)
    }

    fn start(&self) -> Ingester {
        self.start_with(IngesterConfig::new(self.dir.path()), Limits::default())
    }
}

fn start_ingester(config: IngesterConfig, limits: Limits, bucket: Option<Bucket>) -> (Ingester, ReplayReport) {
    let limits = Arc::new(limits);
    Ingester::start(
        config,
        Arc::new(move |_| limits.clone()),
        Arc::new(|| ClusterShare::ALONE),
        IngesterMetrics::register(&mut Registry::default()),
        bucket,
    )
    .unwrap()
}

/// A CPU profile: `main` with `value`, at `time_ms`.
fn cpu_profile(time_ms: i64, value: i64) -> Profile {
    Profile {
        sample_type: vec![ValueType { r#type: 1, unit: 2 }],
        period_type: Some(ValueType { r#type: 1, unit: 2 }),
        string_table: ["", "cpu", "nanoseconds", "main"].map(String::from).to_vec(),
        function: vec![Function {
            id: 1,
            name: 3,
            ..Function::default()
        }],
        location: vec![Location {
            id: 1,
            line: vec![Line {
                function_id: 1,
                ..Line::default()
            }],
            ..Location::default()
        }],
        sample: vec![Sample {
            location_id: vec![1],
            value: vec![value],
            label: vec![],
        }],
        time_nanos: time_ms * 1_000_000,
        ..Profile::default()
    }
}

fn incoming(service: &str, id: u8, time_ms: i64, value: i64) -> IncomingProfile {
    IncomingProfile::new(
        Labels::from_pairs([("__name__", "process_cpu"), ("service_name", service)]),
        ProfileId([id; 16]),
        cpu_profile(time_ms, value),
    )
}

fn cpu_query(selector: &str) -> ProfileQuery {
    ProfileQuery {
        profile_type: CPU.to_owned(),
        selector: parse_selector(selector).unwrap(),
        range: TimeRange::ALL,
        series: None,
    }
}

/// Every selected profile, read a page of 2 at a time.
fn select_all(ingester: &Ingester, tenant: &str, query: &ProfileQuery) -> Vec<SelectedProfile> {
    let mut all: Vec<SelectedProfile> = Vec::new();
    loop {
        let after = all.last().map(SelectedProfile::key);
        let (page, more) = ingester.select_profiles(tenant, query, after, 2).unwrap();
        assert!(page.len() <= 2);
        all.extend(page);
        if !more {
            return all;
        }
    }
}

fn total(ingester: &Ingester, tenant: &str) -> i64 {
    ingester.merge(tenant, &cpu_query("{}"), None, None).unwrap().total()
}

#[tokio::test]
async fn test_push_query_restart_replay() {
    let context = TestContext::new();
    let ingester = context.start();
    ingester
        .push(
            "tenant-a",
            vec![incoming("api", 1, 1_000, 10), incoming("db", 2, 2_000, 20)],
        )
        .await
        .unwrap();
    ingester
        .push("tenant-b", vec![incoming("api", 3, 3_000, 5)])
        .await
        .unwrap();
    ingester
        .push("tenant-a", vec![incoming("api", 4, 3_600_001, 1)])
        .await
        .unwrap();

    let check = |ingester: &Ingester| {
        assert_eq!(total(ingester, "tenant-a"), 31);
        assert_eq!(total(ingester, "tenant-b"), 5);
        assert_eq!(
            ingester.label_values("tenant-a", "service_name", &[], TimeRange::ALL),
            ["api", "db"]
        );
        let types: Vec<String> = ingester
            .profile_types("tenant-a", TimeRange::ALL)
            .iter()
            .map(|profile_type| profile_type.id())
            .collect();
        assert_eq!(types, [CPU]);
        let selected = select_all(ingester, "tenant-a", &cpu_query(r#"{service_name="api"}"#));
        let mut ids: Vec<u8> = selected.iter().map(|profile| profile.id.0[0]).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 4]);
        let series = ingester.series("tenant-a", &[], &["service_name".to_owned()], TimeRange::ALL);
        assert_eq!(series.len(), 2);
    };
    check(&ingester);
    let head_bytes = ingester.head_bytes();
    assert!(head_bytes > 0);
    drop(ingester);

    // A restart replays the WAL: the same answers.
    let restarted = context.start();
    check(&restarted);
    assert_eq!(restarted.head_bytes(), head_bytes);
}

#[tokio::test]
async fn test_only_some_profile_ids() {
    let context = TestContext::new();
    let ingester = context.start();
    ingester
        .push("t", vec![incoming("api", 1, 1_000, 10), incoming("api", 2, 2_000, 20)])
        .await
        .unwrap();
    let only = [ProfileId([2; 16])].into_iter().collect();
    assert_eq!(
        ingester
            .merge("t", &cpu_query("{}"), Some(&only), None)
            .unwrap()
            .total(),
        20
    );
    let early = ProfileQuery {
        range: TimeRange {
            start_ms: 0,
            end_ms: 1_500,
        },
        ..cpu_query("{}")
    };
    assert_eq!(ingester.merge("t", &early, None, None).unwrap().total(), 10);
}

#[tokio::test]
async fn test_memory_ceiling_refuses_pushes_and_stores_nothing_more() {
    let context = TestContext::new();
    let config = IngesterConfig {
        max_head_memory_bytes: 4_000,
        ..IngesterConfig::new(context.dir.path())
    };
    let ingester = context.start_with(config.clone(), Limits::default());
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..200u8 {
        match ingester
            .push("t", vec![incoming(&format!("service-{i}"), i, 1_000, 1)])
            .await
        {
            Ok(()) => accepted += 1,
            Err(PushError::MemoryLimit { used, limit }) => {
                assert!(used >= limit);
                refused += 1;
            }
            Err(err) => panic!("{err}"),
        }
    }
    assert!(accepted > 0 && refused > 0, "accepted {accepted}, refused {refused}");
    // The ceiling holds (overshoot: at most the last accepted push).
    assert!(ingester.head_bytes() < 4_000 + 2_000, "{}", ingester.head_bytes());
    assert_eq!(total(&ingester, "t"), accepted);
    drop(ingester);
    // Everything acknowledged is still there after a restart.
    let restarted = context.start_with(config, Limits::default());
    assert_eq!(total(&restarted, "t"), accepted);
}

#[tokio::test]
async fn test_series_limit() {
    let context = TestContext::new();
    let limits = Limits {
        max_global_series_per_tenant: 2,
        ..Limits::default()
    };
    let ingester = context.start_with(IngesterConfig::new(context.dir.path()), limits);
    ingester.push("t", vec![incoming("a", 1, 1_000, 1)]).await.unwrap();
    ingester.push("t", vec![incoming("b", 2, 1_000, 1)]).await.unwrap();
    // Known series are fine, a new one is not, nor in another tenant's name.
    ingester.push("t", vec![incoming("a", 3, 2_000, 1)]).await.unwrap();
    let err = ingester.push("t", vec![incoming("c", 4, 1_000, 1)]).await.unwrap_err();
    assert!(
        matches!(
            err,
            PushError::SeriesLimit {
                active: 2,
                new: 1,
                limit: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_global_series_per_tenant 2"), "{err}");
    ingester.push("other", vec![incoming("c", 5, 1_000, 1)]).await.unwrap();
    assert_eq!(total(&ingester, "t"), 3);
}

#[tokio::test]
async fn test_concurrent_pushes_all_land_and_replay() {
    let context = TestContext::new();
    let ingester = context.start();
    let tasks: Vec<_> = (0..100u8)
        .map(|i| {
            let ingester = ingester.clone();
            tokio::spawn(async move {
                ingester
                    .push("t", vec![incoming(&format!("s{}", i % 7), i, 1_000 + i64::from(i), 1)])
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(total(&ingester, "t"), 100);
    drop(ingester);
    assert_eq!(total(&context.start(), "t"), 100);
}

#[tokio::test]
async fn test_torn_wal_tail_after_a_crash_is_repaired() {
    let context = TestContext::new();
    let ingester = context.start();
    ingester.push("t", vec![incoming("api", 1, 1_000, 7)]).await.unwrap();
    drop(ingester);
    // A crash mid-write of the next record.
    let wal_dir = context.dir.path().join("wal");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    segments.sort();
    let last = segments.iter().rev().find(|path| file_len(path) > 0).unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(last, bytes).unwrap();
    let (restarted, report) = context.start_reporting();
    assert_eq!(report.wal.repaired_segments, 1);
    assert_eq!(total(&restarted, "t"), 7);
}

/// A copy of the WAL's segments, to put back the ones a trim deleted (as
/// if the process had died before the trim).
struct WalCopy(Vec<(PathBuf, Vec<u8>)>);

impl WalCopy {
    fn take(wal_dir: &Path) -> Self {
        Self(
            std::fs::read_dir(wal_dir)
                .unwrap()
                .map(|entry| {
                    let path = entry.unwrap().path();
                    let bytes = std::fs::read(&path).unwrap();
                    (path, bytes)
                })
                .collect(),
        )
    }

    fn put_back_missing(&self) {
        for (path, bytes) in &self.0 {
            if !path.exists() {
                std::fs::write(path, bytes).unwrap();
            }
        }
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
}

fn testdata_dir() -> Option<PathBuf> {
    flamedb_testkit::testdata("pprof")
}

#[tokio::test]
async fn test_testdata_profiles_keep_their_totals() {
    let Some(dir) = testdata_dir() else { return };
    let context = TestContext::new();
    let ingester = context.start_with(IngesterConfig::new(context.dir.path()), Limits::unlimited());
    let raw = std::fs::read(dir.join("go.cpu.labels.pprof")).unwrap();
    let labels = Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "go-app")]);
    let series = prepare_profile(
        &raw,
        &labels,
        &Limits::unlimited(),
        1,
        &flamedb_model::budget::RequestBudget::unlimited(),
    )
    .unwrap();
    let expected: i64 = series
        .iter()
        .map(|part| part.profile.sample.iter().map(|sample| sample.value[1]).sum::<i64>())
        .sum();
    let profiles: Vec<IncomingProfile> = series
        .into_iter()
        .enumerate()
        .map(|(i, part)| IncomingProfile::new(part.labels, ProfileId([i as u8; 16]), part.profile))
        .collect();
    let parts = profiles.len();
    ingester.push("t", profiles).await.unwrap();
    let tree = ingester.merge("t", &cpu_query("{}"), None, None).unwrap();
    assert_eq!(tree.total(), expected);
    let selected = select_all(&ingester, "t", &cpu_query("{}"));
    assert_eq!(selected.len(), parts);
    drop(ingester);
    let restarted = context.start_with(IngesterConfig::new(context.dir.path()), Limits::unlimited());
    assert_eq!(sorted_stacks(&restarted, "t"), sorted(tree.stacks()));
    // And from a block.
    restarted.flush().await.unwrap();
    assert_eq!(restarted.head_bytes(), 0);
    assert_eq!(sorted_stacks(&restarted, "t"), sorted(tree.stacks()));
    assert_eq!(select_all(&restarted, "t", &cpu_query("{}")), selected);
}

type Stacks = Vec<(Vec<String>, i64)>;

fn sorted(mut stacks: Stacks) -> Stacks {
    stacks.sort();
    stacks
}

fn sorted_stacks(ingester: &Ingester, tenant: &str) -> Stacks {
    sorted(ingester.merge(tenant, &cpu_query("{}"), None, None).unwrap().stacks())
}

/// Everything the ingester answers about a tenant, for comparisons.
fn answers(ingester: &Ingester, tenant: &str) -> (Stacks, Vec<String>, Vec<String>, usize, Vec<(u8, i64, i64)>) {
    let none: [Selector; 0] = [];
    let selected = select_all(ingester, tenant, &cpu_query(r#"{service_name=~"api|db"}"#))
        .iter()
        .map(|profile| (profile.id.0[0], profile.time_nanos, profile.total))
        .collect();
    (
        sorted_stacks(ingester, tenant),
        ingester.label_names(tenant, &none, TimeRange::ALL),
        ingester.label_values(tenant, "service_name", &none, TimeRange::ALL),
        ingester.series(tenant, &none, &[], TimeRange::ALL).len(),
        selected,
    )
}

fn wal_segments(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("wal")).unwrap().count()
}

#[tokio::test]
async fn test_flushed_blocks_answer_what_heads_answered() {
    let context = TestContext::new();
    let ingester = context.start();
    for (i, service) in ["api", "db", "api", "batch"].iter().enumerate() {
        let i = i as u8;
        ingester
            .push("t", vec![incoming(service, i, 1_000 * i64::from(i), 10 + i64::from(i))])
            .await
            .unwrap();
    }
    // Another window.
    ingester.push("t", vec![incoming("db", 9, 7_200_000, 3)]).await.unwrap();
    let before = answers(&ingester, "t");
    assert_eq!(
        before.0.iter().map(|(_, value)| value).sum::<i64>(),
        10 + 11 + 12 + 13 + 3
    );
    let segments_before = wal_segments(context.dir.path());
    let summaries_before = ingester.summarize_series("t", &cpu_query("{}")).unwrap();
    let profiles: Vec<u64> = summaries_before.iter().map(|summary| summary.profiles).collect();
    let mut sorted = profiles.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2, 2]);

    let report = ingester.flush().await.unwrap();
    assert_eq!(report.blocks, 2);
    assert_eq!(ingester.head_bytes(), 0);
    assert_eq!(ingester.local_blocks().len(), 2);
    assert_eq!(answers(&ingester, "t"), before);
    // Blocks summarize their series as the heads did.
    assert_eq!(
        ingester.summarize_series("t", &cpu_query("{}")).unwrap(),
        summaries_before
    );
    // A merge of some series only: those of "db".
    let db: std::collections::HashSet<u64> = ingester
        .summarize_series("t", &cpu_query(r#"{service_name="db"}"#))
        .unwrap()
        .iter()
        .map(|summary| summary.fingerprint)
        .collect();
    let only_db = ProfileQuery {
        series: Some(std::sync::Arc::new(db)),
        ..cpu_query("{}")
    };
    assert_eq!(ingester.merge("t", &only_db, None, None).unwrap().total(), 11 + 3);
    // The WAL segments the blocks cover are gone.
    assert!(report.wal_segments_removed >= 1);
    assert!(wal_segments(context.dir.path()) <= segments_before);

    // More in the same window after the flush; a restart replays only that.
    ingester.push("t", vec![incoming("api", 10, 500, 100)]).await.unwrap();
    let after = answers(&ingester, "t");
    drop(ingester);
    let (restarted, report) = context.start_reporting();
    assert_eq!(report.profiles, 1);
    assert_eq!(answers(&restarted, "t"), after);
}

#[tokio::test]
async fn test_records_already_in_blocks_are_not_replayed_twice() {
    let context = TestContext::new();
    let ingester = context.start();
    ingester.push("t", vec![incoming("api", 1, 1_000, 5)]).await.unwrap();
    // Keep the segments the flush is about to trim.
    let saved = WalCopy::take(&context.dir.path().join("wal"));
    assert!(ingester.flush().await.unwrap().wal_segments_removed >= 1);
    ingester.push("t", vec![incoming("api", 2, 2_000, 7)]).await.unwrap();
    drop(ingester);
    // As if the process died between writing the block and trimming.
    saved.put_back_missing();
    let (restarted, report) = context.start_reporting();
    assert_eq!((report.profiles, report.profiles_in_blocks), (1, 1));
    assert_eq!(total(&restarted, "t"), 12);
    restarted.flush().await.unwrap();
    drop(restarted);
    assert_eq!(total(&context.start(), "t"), 12);
}

#[tokio::test]
async fn test_ended_idle_windows_are_flushed_on_their_own() {
    let context = TestContext::new();
    let config = IngesterConfig {
        flush_idle_grace: std::time::Duration::ZERO,
        flush_check_period: std::time::Duration::from_millis(20),
        ..IngesterConfig::new(context.dir.path())
    };
    let ingester = context.start_with(config, Limits::default());
    // Profile time 1970: its window ended long ago.
    ingester.push("t", vec![incoming("api", 1, 1_000, 5)]).await.unwrap();
    wait_for(|| ingester.local_blocks().len() == 1).await;
    assert_eq!(ingester.head_bytes(), 0);
    assert_eq!(total(&ingester, "t"), 5);
}

#[tokio::test]
async fn test_memory_near_the_ceiling_flushes_early() {
    let context = TestContext::new();
    let config = IngesterConfig {
        max_head_memory_bytes: 40_000,
        flush_check_period: std::time::Duration::from_millis(20),
        ..IngesterConfig::new(context.dir.path())
    };
    let ingester = context.start_with(config, Limits::default());
    let now_ms = flamedb_model::now_nanos() / 1_000_000;
    let mut stored = 0;
    for i in 0..60u8 {
        // Refusals are allowed while the flusher catches up; retry them.
        loop {
            match ingester
                .push("t", vec![incoming(&format!("service-{i}"), i, now_ms, 1)])
                .await
            {
                Ok(()) => break,
                Err(PushError::MemoryLimit { .. }) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                Err(err) => panic!("{err}"),
            }
        }
        stored += 1;
    }
    // The last push accepted may leave the head over the ceiling until the
    // flusher runs.
    wait_for(|| !ingester.local_blocks().is_empty() && ingester.head_bytes() < 40_000).await;
    assert_eq!(total(&ingester, "t"), stored);
    // Several blocks and a head for one window: a restart replays exactly
    // what no block holds.
    drop(ingester);
    assert_eq!(total(&context.start(), "t"), stored);
}

#[tokio::test]
async fn test_records_of_several_profiles_are_never_split_by_a_flush() {
    let context = TestContext::new();
    let ingester = context.start();
    let now_ms = flamedb_model::now_nanos() / 1_000_000;
    let pushers: Vec<_> = (0..4u8)
        .map(|pusher| {
            let ingester = ingester.clone();
            tokio::spawn(async move {
                for n in 0..25u8 {
                    // Three profiles per record, two windows apart.
                    let batch = (0..3u8)
                        .map(|k| {
                            let mut profile = incoming("api", 0, now_ms - i64::from(k) * 3_600_000, 1);
                            profile.id = ProfileId([pusher, n, k, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
                            profile
                        })
                        .collect();
                    ingester.push("t", batch).await.unwrap();
                }
            })
        })
        .collect();
    let flusher = {
        let ingester = ingester.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                ingester.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for pusher in pushers {
        pusher.await.unwrap();
    }
    flusher.await.unwrap();
    let expected = 4 * 25 * 3;
    assert_eq!(total(&ingester, "t"), expected);
    assert_eq!(select_all(&ingester, "t", &cpu_query("{}")).len(), expected as usize);
    drop(ingester);
    let restarted = context.start();
    assert_eq!(total(&restarted, "t"), expected);
    assert_eq!(select_all(&restarted, "t", &cpu_query("{}")).len(), expected as usize);
}

fn alloc_profile(time_ms: i64, value: i64) -> IncomingProfile {
    let mut profile = cpu_profile(time_ms, value);
    profile.string_table[1] = "alloc_space".to_owned();
    profile.string_table[2] = "bytes".to_owned();
    profile.period_type = None;
    IncomingProfile::new(
        Labels::from_pairs([("__name__", "memory"), ("service_name", "app")]),
        ProfileId([time_ms as u8; 16]),
        profile,
    )
}

#[tokio::test]
async fn test_a_trim_cut_short_by_a_crash_is_finished_at_start() {
    let context = TestContext::new();
    let ingester = context.start();
    let alloc = ProfileQuery {
        profile_type: "memory:alloc_space:bytes::".to_owned(),
        ..cpu_query("{}")
    };
    // A first flush and trim: the WAL no longer starts at segment 1.
    ingester.push("t", vec![incoming("api", 1, 500, 1)]).await.unwrap();
    ingester.flush().await.unwrap();
    ingester.push("t", vec![alloc_profile(1_000, 100)]).await.unwrap();
    ingester.push("t", vec![alloc_profile(2_000, 130)]).await.unwrap();
    let saved = WalCopy::take(&context.dir.path().join("wal"));
    ingester.flush().await.unwrap();
    ingester.push("t", vec![alloc_profile(3_000, 170)]).await.unwrap();
    drop(ingester);
    // As if the trim had died before deleting the old segments: they are
    // back, without a delta snapshot of their own.
    saved.put_back_missing();
    let (restarted, report) = context.start_reporting();
    // The old segments are skipped (a block holds them); the 170 is still
    // 40 more than the 130 before it.
    assert_eq!((report.profiles, report.profiles_in_blocks), (1, 0));
    assert_eq!(restarted.merge("t", &alloc, None, None).unwrap().total(), 30 + 40);
}

#[tokio::test]
async fn test_cumulative_series_keep_their_deltas_across_a_restart() {
    let context = TestContext::new();
    let ingester = context.start();
    let alloc = ProfileQuery {
        profile_type: "memory:alloc_space:bytes::".to_owned(),
        ..cpu_query("{}")
    };
    // Totals since process start: 100 (baseline), 130, then 170.
    ingester.push("t", vec![alloc_profile(1_000, 100)]).await.unwrap();
    ingester.push("t", vec![alloc_profile(2_000, 130)]).await.unwrap();
    ingester.flush().await.unwrap();
    ingester.push("t", vec![alloc_profile(3_000, 170)]).await.unwrap();
    assert_eq!(ingester.merge("t", &alloc, None, None).unwrap().total(), 30 + 40);
    drop(ingester);
    // The 130 is in a block, the 170 replayed: its delta is still 40.
    let restarted = context.start();
    assert_eq!(restarted.merge("t", &alloc, None, None).unwrap().total(), 30 + 40);
}

/// Waits (up to a minute) for `done`.
async fn wait_for(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn filesystem_bucket(dir: &Path) -> Bucket {
    Bucket::new(&BucketConfig::Filesystem { dir: dir.to_owned() }).unwrap()
}

#[tokio::test]
async fn test_blocks_are_shipped_then_deleted_locally_after_retention() {
    let context = TestContext::new();
    let remote = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(remote.path());
    let config = IngesterConfig {
        local_retention: std::time::Duration::ZERO,
        min_free_disk_bytes: 0,
        min_free_disk_percent: 0.0,
        ..IngesterConfig::new(context.dir.path())
    };
    let (ingester, _) = start_ingester(config, Limits::default(), Some(bucket.clone()));
    ingester.push("t", vec![incoming("api", 1, 1_000, 5)]).await.unwrap();
    ingester.flush().await.unwrap();
    // The flush wakes the shipper; retention then drops the local copy.
    wait_for(|| ingester.local_blocks().is_empty()).await;
    let stored = bucket.list_blocks("t").await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].stats.num_profiles, 1);
    ingester.shutdown().await.unwrap();
}

#[tokio::test]
async fn test_low_disk_deletes_only_blocks_older_than_the_retention() {
    let context = TestContext::new();
    let remote = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(remote.path());
    let config = IngesterConfig {
        ship_period: std::time::Duration::from_millis(20),
        local_retention: std::time::Duration::from_secs(3600),
        // Over 100 %: the disk is always low.
        min_free_disk_percent: 101.0,
        ..IngesterConfig::new(context.dir.path())
    };
    let (ingester, _) = start_ingester(config, Limits::default(), Some(bucket.clone()));
    let now_ms = flamedb_model::now_nanos() / 1_000_000;
    ingester
        .push("t", vec![incoming("api", 1, now_ms - 2 * 3600 * 1000, 5)])
        .await
        .unwrap();
    ingester.push("t", vec![incoming("api", 2, now_ms, 6)]).await.unwrap();
    ingester.flush().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while bucket.list_blocks("t").await.unwrap().len() < 2 || ingester.local_blocks().len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old block was never uploaded and deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Another old block: once retention has deleted it too (a later round,
    // seen by its effect, not waited for by a sleep), the recent block is
    // still there, as queries for the last hour read only this ingester.
    ingester
        .push("t", vec![incoming("api", 3, now_ms - 3 * 3600 * 1000, 7)])
        .await
        .unwrap();
    ingester.flush().await.unwrap();
    while bucket.list_blocks("t").await.unwrap().len() < 3 || ingester.local_blocks().len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second old block was never uploaded and deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let local = ingester.local_blocks();
    assert_eq!(local.len(), 1);
    assert!(local[0].1.min_time >= now_ms - 1000, "{local:?}");
    assert_eq!(total(&ingester, "t"), 6);
    ingester.shutdown().await.unwrap();
}

#[tokio::test]
async fn test_blocks_wait_while_storage_is_down_and_upload_when_it_is_back() {
    let context = TestContext::new();
    let remote = tempfile::tempdir().unwrap();
    let bucket_dir = remote.path().join("bucket");
    let bucket = filesystem_bucket(&bucket_dir);
    // Storage "down": its directory is a file, every write fails.
    std::fs::remove_dir(&bucket_dir).unwrap();
    std::fs::write(&bucket_dir, b"not a directory").unwrap();
    let config = IngesterConfig {
        ship_period: std::time::Duration::from_millis(20),
        min_free_disk_bytes: 0,
        min_free_disk_percent: 0.0,
        ..IngesterConfig::new(context.dir.path())
    };
    let (ingester, _) = start_ingester(config, Limits::default(), Some(bucket.clone()));
    ingester.push("t", vec![incoming("api", 1, 1_000, 5)]).await.unwrap();
    ingester.flush().await.unwrap();
    assert!(ingester.ship().await.is_err());
    // Pushes still work; the block waits on disk and answers queries.
    ingester.push("t", vec![incoming("api", 2, 2_000, 6)]).await.unwrap();
    assert_eq!(ingester.local_blocks().len(), 1);
    assert_eq!(total(&ingester, "t"), 11);

    std::fs::remove_file(&bucket_dir).unwrap();
    std::fs::create_dir(&bucket_dir).unwrap();
    // Retries (backoff starts at 1 s) upload it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while bucket.list_blocks("t").await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the block was never uploaded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ingester.shutdown().await.unwrap();
    assert_eq!(bucket.list_blocks("t").await.unwrap().len(), 2);
}

#[tokio::test]
async fn test_near_the_ceiling_the_tenant_over_its_share_is_the_one_refused() {
    let context = TestContext::new();
    let config = IngesterConfig {
        max_head_memory_bytes: 40_000,
        ..IngesterConfig::new(context.dir.path())
    };
    let ingester = context.start_with(config, Limits::default());
    ingester.push("small", vec![incoming("a", 1, 1_000, 1)]).await.unwrap();
    // The hog fills memory until it is refused for holding more than half
    // of it (two tenants hold memory).
    let mut refusal = None;
    for i in 0..250u8 {
        if let Err(err) = ingester
            .push("hog", vec![incoming(&format!("hog-{i}"), i, 1_000, 1)])
            .await
        {
            refusal = Some(err);
            break;
        }
    }
    let refusal = refusal.expect("the hog was never refused");
    assert!(
        matches!(refusal, PushError::TenantMemoryShare { ref tenant, tenants: 2, share: 20_000, .. } if tenant == "hog"),
        "{refusal}"
    );
    assert!(refusal.to_string().contains("-ingester.max-head-memory"), "{refusal}");
    // The small tenant still gets in.
    ingester.push("small", vec![incoming("b", 2, 1_000, 1)]).await.unwrap();
    assert_eq!(total(&ingester, "small"), 2);
}

#[tokio::test]
async fn test_new_tenants_past_the_tenant_limit_are_refused() {
    let context = TestContext::new();
    let config = IngesterConfig {
        max_tenants: 2,
        ..IngesterConfig::new(context.dir.path())
    };
    let ingester = context.start_with(config, Limits::default());
    for tenant in ["a", "b"] {
        ingester.push(tenant, vec![incoming("api", 1, 1_000, 1)]).await.unwrap();
    }
    let err = ingester
        .push("made-up", vec![incoming("api", 1, 1_000, 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, PushError::TooManyTenants { limit: 2, .. }), "{err}");
    assert!(
        err.to_string().contains("-ingester.instance-limits.max-tenants"),
        "{err}"
    );
    // Known tenants go on.
    ingester.push("a", vec![incoming("api", 2, 2_000, 1)]).await.unwrap();
}
