//! The ingester over the real profiles of `../shared/testdata/pprof`
//! (each pushed under 20 services):
//!
//! - `push`: `Ingester::push` end to end, 16 pushers at once (limits, WAL
//!   append with group commit and fsync, apply to the heads);
//! - `replay`: start-up on a WAL of `FLAMEDB_BENCH_WAL_MB` (default 64)
//!   MB: decode every record, work out its series, insert into the heads.
//!   This is the head ingest rate without fsync;
//! - `flush`: writing the heads of one pass over the profiles as blocks.
//!
//! After the timings it prints head bytes per sample and per series.
//!
//! `cargo bench -p flamedb-ingester --bench ingester`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use flamedb_ingester::{ClusterShare, IncomingProfile, Ingester, IngesterConfig, IngesterMetrics, TimeRange};
use flamedb_model::{Labels, Limits, ProfileId, prepare_profile};
use prometheus_client::registry::Registry;

const FILES: &[&str] = &[
    "cpu.pb.gz",
    "cpu-exemplars.pb.gz",
    "go.cpu.labels.pprof",
    "heap.pb.gz",
    "heap",
    "nodejs-wall.pb.gz",
    "profile_java",
    "profile_python",
    "profile_uncompressed",
    "single_group_with_optional_span_id.pb.gz",
];
const SERVICES: usize = 20;
const PUSHERS: usize = 16;

fn testdata_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/pprof")
}

/// One pass: every file under every service, as the distributor hands
/// them over (normalized, split into series).
struct Pass {
    pushes: Vec<Vec<IncomingProfile>>,
    samples: usize,
}

static PASS: LazyLock<Pass> = LazyLock::new(|| {
    let now = flamedb_model::now_nanos();
    let mut pushes = Vec::new();
    let mut samples = 0;
    let mut next_id = 0u128;
    for service in 0..SERVICES {
        for file in FILES {
            let Ok(raw) = std::fs::read(testdata_dir().join(file)) else {
                continue;
            };
            let name = if file.starts_with("heap") {
                "memory"
            } else {
                "process_cpu"
            };
            let labels = Labels::from_pairs([
                ("__name__", name.to_owned()),
                ("service_name", format!("svc-{service}")),
            ]);
            let Ok(series) = prepare_profile(
                &raw,
                &labels,
                &Limits::unlimited(),
                now,
                &flamedb_model::budget::RequestBudget::unlimited(),
            ) else {
                continue;
            };
            let push: Vec<IncomingProfile> = series
                .into_iter()
                .map(|part| {
                    next_id += 1;
                    samples += part.profile.sample.len();
                    IncomingProfile::new(part.labels, ProfileId(next_id.to_be_bytes()), part.profile)
                })
                .collect();
            pushes.push(push);
        }
    }
    Pass { pushes, samples }
});

fn main() {
    if !testdata_dir().is_dir() {
        eprintln!("skipping: {} is absent", testdata_dir().display());
        return;
    }
    divan::main();
    print_head_sizes();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start(dir: &Path) -> Ingester {
    let config = IngesterConfig {
        max_head_memory_bytes: usize::MAX,
        ..IngesterConfig::new(dir)
    };
    let (ingester, _) = Ingester::start(
        config,
        Arc::new(|_| Arc::new(Limits::unlimited())),
        Arc::new(|| ClusterShare::ALONE),
        IngesterMetrics::register(&mut Registry::default()),
        None,
    )
    .unwrap();
    ingester
}

/// Pushes one pass with `PUSHERS` concurrent pushers.
async fn push_pass(ingester: &Ingester) {
    let pushes = &PASS.pushes;
    let tasks: Vec<_> = (0..PUSHERS)
        .map(|pusher| {
            let ingester = ingester.clone();
            tokio::spawn(async move {
                for push in PASS.pushes.iter().skip(pusher).step_by(PUSHERS) {
                    ingester.push("bench", push.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert!(!pushes.is_empty());
}

fn profiles_in_pass() -> usize {
    PASS.pushes.iter().map(Vec::len).sum()
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn push(bencher: Bencher) {
    let runtime = runtime();
    bencher
        .counter(ItemsCount::new(PASS.samples))
        .with_inputs(|| {
            let dir = tempfile::tempdir().unwrap();
            let ingester = runtime.block_on(async { start(dir.path()) });
            (dir, ingester)
        })
        .bench_local_values(|(dir, ingester)| {
            runtime.block_on(push_pass(&ingester));
            (dir, ingester)
        });
}

fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum()
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn replay(bencher: Bencher) {
    let runtime = runtime();
    let target_mb: u64 = std::env::var("FLAMEDB_BENCH_WAL_MB")
        .ok()
        .and_then(|mb| mb.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().unwrap();
    let mut passes = 0usize;
    {
        let ingester = runtime.block_on(async { start(dir.path()) });
        while wal_bytes(dir.path()) < target_mb << 20 {
            runtime.block_on(push_pass(&ingester));
            passes += 1;
        }
    }
    let bytes = wal_bytes(dir.path());
    println!(
        "replay: WAL of {:.0} MB, {} profiles, {} samples",
        bytes as f64 / 1e6,
        passes * profiles_in_pass(),
        passes * PASS.samples
    );
    bencher
        .counter(BytesCount::new(bytes))
        .counter(ItemsCount::new(passes * PASS.samples))
        .bench_local(|| runtime.block_on(async { start(dir.path()) }));
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn flush(bencher: Bencher) {
    let runtime = runtime();
    bencher
        .counter(ItemsCount::new(PASS.samples))
        .with_inputs(|| {
            let dir = tempfile::tempdir().unwrap();
            let ingester = runtime.block_on(async {
                let ingester = start(dir.path());
                push_pass(&ingester).await;
                ingester
            });
            (dir, ingester)
        })
        .bench_local_values(|(dir, ingester)| {
            runtime.block_on(ingester.flush()).unwrap();
            (dir, ingester)
        });
}

fn print_head_sizes() {
    let runtime = runtime();
    let dir = tempfile::tempdir().unwrap();
    let ingester = runtime.block_on(async { start(dir.path()) });
    runtime.block_on(push_pass(&ingester));
    let bytes = ingester.head_bytes();
    let series = ingester.series("bench", &[], &[], TimeRange::ALL).len();
    let samples = PASS.samples;
    println!(
        "one pass: {} profiles, {samples} samples, {series} series; head {:.1} MB: {:.1} bytes per sample, {:.0} bytes per series",
        profiles_in_pass(),
        bytes as f64 / 1e6,
        bytes as f64 / samples as f64,
        bytes as f64 / series as f64
    );
    runtime.block_on(ingester.flush()).unwrap();
    let on_disk: u64 = walk_bytes(&dir.path().join("blocks"));
    println!(
        "blocks of one pass: {:.2} MB on disk, {:.2} bytes per sample",
        on_disk as f64 / 1e6,
        on_disk as f64 / samples as f64
    );
}

fn walk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map(|entry| {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    walk_bytes(&entry.path())
                } else {
                    meta.len()
                }
            })
            .sum()
    })
}
