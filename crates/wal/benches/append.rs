//! WAL appends of 4 KiB records with 1, 8 and 64 concurrent appenders:
//! every append waits for its fsync, and appends queued together share
//! one (group commit), so throughput grows with concurrency. After the
//! timings, records per fsync for each concurrency are printed.
//!
//! `cargo bench -p flamedb-wal --bench append`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use flamedb_wal::{Wal, WalConfig};

const RECORD_BYTES: usize = 4096;
/// Appends per measured iteration.
const APPENDS: usize = 512;

fn main() {
    divan::main();
    for appenders in [1, 8, 64] {
        let (wal, dir, runtime) = open();
        runtime.block_on(append_all(&wal, appenders));
        let stats = wal.stats();
        println!(
            "{appenders:>2} appenders: {:.1} records per fsync",
            stats.records as f64 / stats.fsyncs.max(1) as f64
        );
        drop(wal);
        drop(dir);
    }
}

fn open() -> (Arc<Wal>, tempfile::TempDir, tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalConfig::new(dir.path().join("wal"))).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (Arc::new(wal), dir, runtime)
}

async fn append_all(wal: &Arc<Wal>, appenders: usize) {
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let wal = wal.clone();
            tokio::spawn(async move {
                for _ in 0..APPENDS / appenders {
                    wal.append(vec![0x5a; RECORD_BYTES]).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[divan::bench(args = [1, 8, 64], sample_count = 10, sample_size = 1)]
fn append_4k(bencher: Bencher, appenders: usize) {
    let (wal, _dir, runtime) = open();
    bencher
        .counter(BytesCount::new(APPENDS * RECORD_BYTES))
        .counter(ItemsCount::new(APPENDS))
        .bench(|| runtime.block_on(append_all(&wal, appenders)));
}
