//! The whole benchmark in one run: starts the configurations under test
//! (the single binary, then one distributor with three ingesters, RF=3)
//! on 127.0.0.1, drives them with the workload, and returns the table of
//! docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flamedb_testkit::{Flamedb, start_ingesters, start_ready};

use crate::measure::{bucket_block_bytes, cpu_seconds, dir_size, peak_rss_bytes, rss_bytes};
use crate::push::{self, PushConfig, PushStats};
use crate::query::{QueryClient, QueryKind, Scope};
use crate::workload::{self, Request, Source};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The `flamedb` binary under test.
    pub binary: PathBuf,
    /// Where the pprof files are.
    pub profiles: PathBuf,
    /// Seconds of each timed push phase.
    pub seconds: u64,
    /// Series of the push workload.
    pub series: usize,
    /// Series, and profiles per series, of the data queries read.
    pub query_series: usize,
    pub query_profiles_per_series: usize,
    /// Runs of each query.
    pub query_runs: usize,
    pub clients: usize,
    /// Series, and days at the query data's cadence, of the long-range
    /// queries over compacted blocks.
    pub long_series: usize,
    pub long_days: usize,
}

impl BenchConfig {
    /// The full run (about 15 minutes on 2 cores).
    pub fn full(binary: PathBuf, profiles: PathBuf) -> Self {
        Self {
            binary,
            profiles,
            seconds: 30,
            series: 200,
            query_series: 100,
            query_profiles_per_series: 144,
            query_runs: 5,
            clients: 8,
            long_series: 10,
            long_days: 30,
        }
    }

    /// A short run that only shows everything works.
    pub fn short(binary: PathBuf, profiles: PathBuf) -> Self {
        Self {
            seconds: 2,
            series: 20,
            query_series: 10,
            query_profiles_per_series: 12,
            query_runs: 1,
            clients: 4,
            long_series: 2,
            long_days: 3,
            ..Self::full(binary, profiles)
        }
    }
}

/// Flags of the query phases: blocks are uploaded, compacted at once
/// (within 1 GiB, the default memory bound) and read from the bucket a minute
/// after their upload; ranges of any length.
const COMPACTING: [&str; 7] = [
    "-querier.query-store-after=1m",
    "-compactor.max-memory-bytes=1073741824",
    "-compactor.compaction-interval=2s",
    "-compactor.first-level-compaction-wait-period=0s",
    "-compactor.deletion-delay=0s",
    "-querier.max-query-length=0s",
    "-querier.max-query-lookback=0s",
];

/// The flags every process gets: no rate limits, room for large heads,
/// profiles of the whole last day accepted.
const COMMON: [&str; 5] = [
    "-distributor.ingestion-rate-limit-mb=0",
    "-validation.reject-older-than=0s",
    "-ingester.max-global-series-per-tenant=0",
    "-ingester.max-head-memory=17179869184",
    "-memberlist.gossip-interval=100ms",
];

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, usize::from) as f64
}

/// Runs everything; the report as Markdown.
pub fn run(config: &BenchConfig) -> Result<String, String> {
    let sources = workload::read_sources(&config.profiles, workload::DEFAULT_FILES).map_err(|err| err.to_string())?;
    let now_ms = flamedb_model::now_nanos() / 1_000_000;
    // Eight differing profiles per series, all stamped now.
    let requests = Arc::new(workload::requests(&sources, config.series, 8, now_ms, 0));
    let cores = cores();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Workload: {} series over {} pprof files ({}), Connect proto with gzipped pprof, {} client threads; {} cores; {} s per push phase.\n",
        config.series,
        sources.len(),
        workload::DEFAULT_FILES.join(", "),
        config.clients,
        cores,
        config.seconds
    );

    // The decode limit: gunzip + pprof decode of the same input, one thread.
    let decode_mb = workload::decode_rate(&requests, (config.seconds as f64 / 3.0).max(1.0)) / 1e6;

    let dir = tempfile::tempdir().map_err(|err| format!("cannot make a temporary directory: {err}"))?;
    let single_flags = single_flags(dir.path());
    // Processes run in their own directories: the path must be absolute.
    let binary = config
        .binary
        .canonicalize()
        .map_err(|err| format!("the flamedb binary {}: {err}", config.binary.display()))?
        .display()
        .to_string();
    let mut single = start_ready(&binary, "single", &single_flags, &[]);
    let (peak_single, single_cpu) = push_phase(config, &single.http, &[single.pid()], &requests, None)?;
    let memory = memory_figures(&single, &peak_single);

    // Restart: everything pushed is in the WAL only (heads are not flushed).
    let wal_bytes = dir_size(&dir.path().join("data/wal"));
    single.kill();
    let restarted_at = Instant::now();
    let single = start_ready(&binary, "single-restarted", &single_flags, &[]);
    let to_ready = restarted_at.elapsed().as_secs_f64();
    let log = single.log();
    let (Some(replay_seconds), Some(replayed)) = (
        log_field(&log, "WAL replayed", "seconds"),
        log_field(&log, "WAL replayed", "profiles"),
    ) else {
        return Err("the restarted single binary logged no WAL replay".to_owned());
    };
    if replayed < 1.0 {
        return Err("the restarted single binary replayed no profile from its WAL".to_owned());
    }
    // Everything acknowledged is back, counted once.
    let pushed_range = Scope {
        start_ms: now_ms - 3_600_000,
        end_ms: now_ms + 3_600_000,
        selector: "{}".to_owned(),
    };
    check_total(
        &single.http,
        &pushed_range,
        peak_single.cpu_total,
        "after the WAL replay",
    )?;

    let (status, body) = single.post("/ingester/flush", &[], Vec::new())?;
    if status != 200 {
        return Err(format!("flush answered {status}: {}", String::from_utf8_lossy(&body)));
    }
    let block_bytes = dir_size(&dir.path().join("data/blocks"));
    drop(single);

    let rf3_dir = tempfile::tempdir().map_err(|err| format!("cannot make a temporary directory: {err}"))?;
    let cluster = Cluster::start(&binary, rf3_dir.path(), &[], false);
    let pids = cluster.pids();
    let (peak_rf3, rf3_cpu) = push_phase(config, &cluster.front.http, &pids, &requests, None)?;
    let half_rate = peak_rf3.profiles_per_second() / 2.0;
    let (mut at_half, _) = push_phase(config, &cluster.front.http, &pids, &requests, Some(half_rate))?;
    check_total(
        &cluster.front.http,
        &pushed_range,
        peak_rf3.cpu_total + at_half.cpu_total,
        "in the RF=3 cluster",
    )?;
    drop(cluster);

    let _ = writeln!(
        out,
        "| ingest | profiles/s per core | samples/s per core | MB/s per core | MB per flamedb CPU second | that ÷ decode limit | push p50 / p99 ms |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (name, mut stats, cpu) in [
        ("single binary", peak_single.clone(), single_cpu),
        ("1 distributor + 3 ingesters, RF=3", peak_rf3.clone(), rf3_cpu),
    ] {
        let per_cpu_second = stats.pprof_bytes as f64 / 1e6 / cpu.max(1e-9);
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.2} | {per_cpu_second:.2} | {:.2} | {:.1} / {:.1} |",
            stats.profiles_per_second() / cores,
            stats.samples_per_second() / cores,
            stats.megabytes_per_second() / cores,
            per_cpu_second / decode_mb,
            stats.latencies.percentile_ms(0.5),
            stats.latencies.percentile_ms(0.99),
        );
    }
    let _ = writeln!(
        out,
        "| decode limit: gunzip + pprof decode of the same input, one thread | | | | {decode_mb:.2} | 1 | |"
    );
    let _ = writeln!(
        out,
        "\nPer core: the rate divided by the machine's {cores} cores, which the load generator shares. \
         Per flamedb CPU second: uncompressed pprof MB over the CPU time (user + system) of the flamedb \
         processes during the phase; MB are of uncompressed pprof."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Push latency at 50 % of the RF=3 peak ({half_rate:.0} profiles/s, fsync'd WAL): p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms ({} pushes, {} failed).\n",
        at_half.latencies.percentile_ms(0.5),
        at_half.latencies.percentile_ms(0.99),
        at_half.latencies.percentile_ms(0.999),
        at_half.acknowledged,
        at_half.failed,
    );
    let _ = writeln!(out, "{memory}");
    let _ = writeln!(
        out,
        "Storage after flush: {:.1} MB of blocks for {} samples and {:.1} MB of uncompressed pprof: {:.2} bytes per sample, {:.3} bytes per pprof byte.\n",
        block_bytes as f64 / 1e6,
        peak_single.samples,
        peak_single.pprof_bytes as f64 / 1e6,
        block_bytes as f64 / peak_single.samples.max(1) as f64,
        block_bytes as f64 / peak_single.pprof_bytes.max(1) as f64,
    );
    let _ = writeln!(
        out,
        "Restart: a {:.0} MB WAL replayed in {replay_seconds:.2} s ({:.0} MB/s); ready (ACTIVE) {to_ready:.2} s after the start.\n",
        wal_bytes as f64 / 1e6,
        wal_bytes as f64 / 1e6 / replay_seconds,
    );
    out.push_str(&query_phase(config, &binary, &sources)?);
    Ok(out)
}

/// Fails unless the CPU flame graph of `scope` totals `expected`: every
/// acknowledged profile counted, and counted once.
fn check_total(target: &str, scope: &Scope, expected: i64, when: &str) -> Result<(), String> {
    let found = QueryClient::new(target).cpu_total(scope)?;
    if found != expected {
        return Err(format!(
            "{when}: the CPU flame graph of {target} totals {found}, but {expected} was acknowledged"
        ));
    }
    Ok(())
}

fn single_flags(dir: &Path) -> Vec<String> {
    let mut flags: Vec<String> = COMMON.iter().map(ToString::to_string).collect();
    flags.extend([
        format!("-pyroscopedb.data-path={}", dir.join("data").display()),
        format!("-storage.filesystem.dir={}", dir.join("bucket").display()),
        format!("-querier.block-cache-dir={}", dir.join("cache").display()),
        format!("-compactor.data-dir={}", dir.join("compactor").display()),
    ]);
    flags
}

/// One distributor and querier, three ingesters, RF=3, and a compactor
/// of its own (for the query phases).
struct Cluster {
    front: Flamedb,
    /// Held so they run as long as the cluster.
    ingesters: Vec<Flamedb>,
    compactor: Option<Flamedb>,
}

impl Cluster {
    /// The distributor's and ingesters' processes.
    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.front.pid())
            .chain(self.ingesters.iter().map(Flamedb::pid))
            .collect()
    }

    /// A cluster with `extra` flags for every process; with a compactor
    /// process when `compacting`.
    fn start(binary: &str, dir: &Path, extra: &[String], compacting: bool) -> Self {
        let mut flags: Vec<String> = COMMON.iter().map(ToString::to_string).collect();
        flags.extend([
            "-ingester.heartbeat-period=500ms".to_owned(),
            format!("-memberlist.cluster-label=bench-{}", std::process::id()),
            format!("-storage.filesystem.dir={}", dir.join("bucket").display()),
        ]);
        flags.extend(extra.iter().cloned());
        let front = start_ready(
            binary,
            "front",
            &flags,
            &[
                "-target=distributor,querier".to_owned(),
                format!("-querier.block-cache-dir={}", dir.join("cache").display()),
            ],
        );
        let ingesters = start_ingesters(binary, &front, 3, &flags, &[]);
        let compactor = compacting.then(|| {
            let gossip = front.gossip.clone().unwrap_or_default();
            start_ready(
                binary,
                "compactor",
                &flags,
                &[
                    "-target=compactor".to_owned(),
                    format!("-memberlist.join={gossip}"),
                    format!("-compactor.data-dir={}", dir.join("compactor").display()),
                ],
            )
        });
        Self {
            front,
            ingesters,
            compactor,
        }
    }
}

/// A push phase and the CPU seconds the `pids` (flamedb) used meanwhile.
fn push_phase(
    config: &BenchConfig,
    target: &str,
    pids: &[u32],
    requests: &Arc<Vec<Request>>,
    rate: Option<f64>,
) -> Result<(PushStats, f64), String> {
    let cpu_before = cpu_seconds(pids);
    let stats = push::run(
        &PushConfig {
            target: target.to_owned(),
            clients: config.clients,
            rate,
            duration: Duration::from_secs(config.seconds),
        },
        requests,
    );
    if stats.acknowledged == 0 || stats.failed > 0 {
        return Err(format!(
            "pushes to {target}: {} acknowledged, {} failed; first failure: {}",
            stats.acknowledged,
            stats.failed,
            stats.first_failure.as_deref().unwrap_or("none")
        ));
    }
    Ok((stats, cpu_seconds(pids) - cpu_before))
}

/// RSS and head bytes per active series and per ingested MB.
fn memory_figures(node: &Flamedb, pushed: &PushStats) -> String {
    let rss = rss_bytes(node.pid()).unwrap_or(0) as f64;
    let head = node.metric("flamedb_ingester_head_bytes").unwrap_or(0.0);
    let series = node.metric("flamedb_ingester_active_series").unwrap_or(0.0).max(1.0);
    let megabytes = (pushed.pprof_bytes as f64 / 1e6).max(1e-9);
    format!(
        "Single-binary memory after the push phase: RSS {:.0} MB, heads {:.0} MB, {series:.0} active series, {:.1} MB of pprof ingested: RSS {:.0} KB and heads {:.0} KB per series; RSS {:.2} MB and heads {:.2} MB per ingested MB.\n",
        rss / 1e6,
        head / 1e6,
        megabytes,
        rss / series / 1e3,
        head / series / 1e3,
        rss / 1e6 / megabytes,
        head / 1e6 / megabytes,
    )
}

/// The number after `field=` on the last log line containing `marker`.
fn log_field(log: &str, marker: &str, field: &str) -> Option<f64> {
    let line = log.lines().rev().find(|line| line.contains(marker))?;
    let at = line.find(&format!("{field}="))? + field.len() + 1;
    line[at..].split(|c: char| c.is_whitespace()).next()?.parse().ok()
}

/// Fills 24 hours in the single binary and in the RF=3 cluster, times
/// flame graphs and pprof merges over the last hour and the day from the
/// ingesters' heads, then again once every block is uploaded and compacted
/// and the ingesters dropped their copies (and the bucket's bytes).
fn query_phase(config: &BenchConfig, binary: &str, sources: &[Source]) -> Result<String, String> {
    let now_ms = flamedb_model::now_nanos() / 1_000_000;
    let day_ms = 24 * 3600 * 1000;
    let per_series = config.query_profiles_per_series;
    let span_ms = day_ms / per_series.max(1) as i64;
    let requests = Arc::new(workload::requests(
        sources,
        config.query_series,
        per_series,
        now_ms,
        span_ms,
    ));
    let kinds = [
        (QueryKind::FlameGraph, "{}", "flame graph, all series"),
        (QueryKind::MergeProfile, "{}", "SelectMergeProfile, all series"),
        (
            QueryKind::MergeProfile,
            "{service_name=\"loadgen-0\"}",
            "SelectMergeProfile, one service",
        ),
    ];
    let ranges = [("1 h", 3600 * 1000), ("24 h", day_ms)];
    let filled: i64 = requests.iter().map(|request| request.cpu_total).sum();
    let day = Scope {
        start_ms: now_ms + 1000 - day_ms,
        end_ms: now_ms + 1000,
        selector: "{}".to_owned(),
    };
    let timed = |target: &str| -> Result<Vec<f64>, String> {
        let client = QueryClient::new(target);
        let mut medians = Vec::new();
        for (kind, selector, _) in kinds {
            for (_, range_ms) in ranges {
                let scope = Scope {
                    start_ms: now_ms + 1000 - range_ms,
                    end_ms: now_ms + 1000,
                    selector: selector.to_owned(),
                };
                let mut latencies = client.repeat(kind, &scope, config.query_runs)?;
                medians.push(latencies.percentile_ms(0.5));
            }
        }
        Ok(medians)
    };
    // Per configuration: medians from heads, medians from compacted
    // blocks, the bucket's bytes.
    let mut results: Vec<(Vec<f64>, Vec<f64>, (u64, u64))> = Vec::new();
    let mut compaction = String::new();
    for rf3 in [false, true] {
        let dir = tempfile::tempdir().map_err(|err| format!("cannot make a temporary directory: {err}"))?;
        let compacting: Vec<String> = COMPACTING.iter().map(ToString::to_string).collect();
        // The processes live until the end of this round.
        let (target, cluster, single) = if rf3 {
            let cluster = Cluster::start(binary, dir.path(), &compacting, true);
            (cluster.front.http.clone(), Some(cluster), None)
        } else {
            let mut flags = single_flags(dir.path());
            flags.extend(compacting);
            let node = start_ready(binary, "single", &flags, &[]);
            (node.http.clone(), None, Some(node))
        };
        push::fill(&target, &requests, config.clients)?;
        check_total(&target, &day, filled, "after the fill")?;
        let from_heads = timed(&target)?;
        let (compactor, ingesters): (&Flamedb, Vec<&Flamedb>) = match (&cluster, &single) {
            (
                Some(Cluster {
                    compactor: Some(compactor),
                    ingesters,
                    ..
                }),
                _,
            ) => (compactor, ingesters.iter().collect()),
            (_, Some(node)) => (node, vec![node]),
            _ => return Err("no process to query or compact".to_owned()),
        };
        wait_compacted(compactor, &ingesters)?;
        if rf3 {
            compaction = compaction_figures(compactor, requests.len());
        }
        check_total(&target, &day, filled, "from compacted blocks")?;
        let from_blocks = timed(&target)?;
        results.push((from_heads, from_blocks, bucket_block_bytes(&dir.path().join("bucket"))));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Queries over {} series with a CPU profile every {:.0} min for 24 h ({} profiles), median of {} runs; \
         first from the ingesters' heads, then once every block is uploaded and compacted and the ingesters \
         dropped their copies (the last hour stays uncompacted):\n",
        config.query_series,
        span_ms as f64 / 60_000.0,
        requests.len(),
        config.query_runs
    );
    let _ = writeln!(
        out,
        "| query | range | RF=1 heads ms | RF=1 compacted ms | RF=3 heads ms | RF=3 compacted ms | RF=3 / RF=1 (heads) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let mut column = 0;
    for (_, _, name) in kinds {
        for (range, _) in ranges {
            let (rf1, rf3) = (&results[0], &results[1]);
            let _ = writeln!(
                out,
                "| {name} | {range} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
                rf1.0[column],
                rf1.1[column],
                rf3.0[column],
                rf3.1[column],
                rf3.0[column] / rf1.0[column]
            );
            column += 1;
        }
    }
    let ((rf1_compacted, rf1_uploaded), (rf3_compacted, rf3_uploaded)) = (results[0].2, results[1].2);
    let _ = writeln!(
        out,
        "\nBucket after compaction: compacted blocks RF=1 {:.2} MB, RF=3 {:.2} MB ({:.3}× the RF=1 bytes); \
         the current hour's blocks as uploaded (its window has not ended), RF=1 {:.2} MB, RF=3 {:.2} MB; \
         in all {:.3}× the RF=1 bytes.\n",
        rf1_compacted as f64 / 1e6,
        rf3_compacted as f64 / 1e6,
        rf3_compacted as f64 / rf1_compacted.max(1) as f64,
        rf1_uploaded as f64 / 1e6,
        rf3_uploaded as f64 / 1e6,
        (rf3_compacted + rf3_uploaded) as f64 / (rf1_compacted + rf1_uploaded).max(1) as f64
    );
    out.push_str(&compaction);
    out.push_str(&long_range_phase(config, binary, sources, span_ms)?);
    Ok(out)
}

/// What the RF=3 cluster's compactor process (which does nothing else)
/// read, wrote and used, once it compacted the fill of `profiles`
/// profiles: throughput per CPU second (one compaction runs at a time, on
/// one core) and its peak memory against its bound.
fn compaction_figures(compactor: &Flamedb, profiles: usize) -> String {
    /// `-compactor.max-memory-bytes` of `COMPACTING`.
    const MAX_MEMORY_BYTES: f64 = 1_073_741_824.0;
    let metric = |name: &str| compactor.metric(name).unwrap_or(0.0);
    let read = metric("flamedb_compactor_input_bytes_total");
    let written = metric("flamedb_compactor_output_bytes_total");
    let compactions = metric("flamedb_compactor_compactions_total");
    let cpu = cpu_seconds(&[compactor.pid()]).max(1e-9);
    let peak = peak_rss_bytes(compactor.pid()).unwrap_or(0) as f64;
    format!(
        "Compaction in the RF=3 cluster (a compactor process of its own): {compactions:.0} compactions read {:.2} MB \
         of blocks and wrote {:.2} MB in {cpu:.1} CPU s: {:.1} MB read and {:.0} replicas' profile copies made one \
         (3 × {profiles} profiles) per CPU second; peak RSS {:.0} MB, {:.2}× -compactor.max-memory-bytes (1 GiB, \
         the default).\n\n",
        read / 1e6,
        written / 1e6,
        read / 1e6 / cpu,
        (3 * profiles) as f64 / cpu,
        peak / 1e6,
        peak / MAX_MEMORY_BYTES,
    )
}

/// Fills `long_days` days of `long_series` series (one profile per
/// `span_ms`) into a single binary, waits until they are compacted, and
/// times flame graphs over a day, a week and the whole span.
fn long_range_phase(config: &BenchConfig, binary: &str, sources: &[Source], span_ms: i64) -> Result<String, String> {
    let now_ms = flamedb_model::now_nanos() / 1_000_000;
    let day_ms: i64 = 24 * 3600 * 1000;
    let days = config.long_days.max(1);
    let per_series = (days as i64 * day_ms / span_ms.max(1)) as usize;
    let requests = Arc::new(workload::requests(
        sources,
        config.long_series,
        per_series,
        now_ms,
        span_ms,
    ));
    let dir = tempfile::tempdir().map_err(|err| format!("cannot make a temporary directory: {err}"))?;
    let mut flags = single_flags(dir.path());
    flags.extend(COMPACTING.iter().map(ToString::to_string));
    let node = start_ready(binary, "single-long", &flags, &[]);
    let filled_at = Instant::now();
    push::fill(&node.http, &requests, config.clients)?;
    let fill_seconds = filled_at.elapsed().as_secs_f64();
    let compacted_at = Instant::now();
    wait_compacted(&node, &[&node])?;
    let compact_seconds = compacted_at.elapsed().as_secs_f64();
    let whole = Scope {
        start_ms: now_ms + 1000 - days as i64 * day_ms,
        end_ms: now_ms + 1000,
        selector: "{}".to_owned(),
    };
    let filled: i64 = requests.iter().map(|request| request.cpu_total).sum();
    check_total(&node.http, &whole, filled, "over the long range")?;
    let mut spans: Vec<(String, i64)> = vec![("1 d".to_owned(), 1)];
    if days > 7 {
        spans.push(("7 d".to_owned(), 7));
    }
    if days > 1 {
        spans.push((format!("{days} d"), days as i64));
    }
    let time_spans = |node: &Flamedb| -> Result<Vec<f64>, String> {
        let client = QueryClient::new(&node.http);
        spans
            .iter()
            .map(|(_, span_days)| {
                let scope = Scope {
                    start_ms: now_ms + 1000 - span_days * day_ms,
                    ..whole.clone()
                };
                let mut latencies = client.repeat(QueryKind::FlameGraph, &scope, config.query_runs)?;
                Ok(latencies.percentile_ms(0.5))
            })
            .collect()
    };
    // Without a deletion delay the compactor's index is never trusted:
    // these queries list the bucket.
    let listed = time_spans(&node)?;
    drop(node);
    // The same bucket again, read through the index its compactor writes.
    flags.push("-compactor.deletion-delay=1h".to_owned());
    let node = start_ready(binary, "single-long-indexed", &flags, &[]);
    let runs = || node.metric("flamedb_compactor_runs_total").unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(120);
    // A second round has begun once the first wrote the index.
    while runs() < 2.0 {
        if Instant::now() > deadline {
            return Err("the compactor wrote no bucket index within 2 minutes".to_owned());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check_total(&node.http, &whole, filled, "over the long range, from the bucket index")?;
    let indexed = time_spans(&node)?;
    let listings = |source: &str| {
        node.metric(&format!("flamedb_querier_block_listings_total{{source=\"{source}\"}}"))
            .unwrap_or(0.0)
    };
    if listings("bucket") > 0.0 || listings("index") == 0.0 {
        return Err(format!(
            "queries listed the bucket {} times and read the index {} times: the index was not used",
            listings("bucket"),
            listings("index")
        ));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Long ranges from compacted blocks (single binary): {} series, a CPU profile every {:.0} min for {days} days \
         ({} profiles, filled in {fill_seconds:.0} s, compacted {compact_seconds:.0} s later), median of {} runs; \
         blocks learnt from a listing of the bucket, then from the bucket index:\n",
        config.long_series,
        span_ms as f64 / 60_000.0,
        requests.len(),
        config.query_runs
    );
    let _ = writeln!(
        out,
        "| flame graph, all series | listing ms | index ms | index ÷ listing | index ÷ 1 d |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let one_day = indexed.first().copied().unwrap_or(f64::NAN);
    for (((name, _), from_listing), from_index) in spans.iter().zip(&listed).zip(&indexed) {
        let _ = writeln!(
            out,
            "| {name} | {from_listing:.1} | {from_index:.1} | {:.2} | {:.2} |",
            from_index / from_listing,
            from_index / one_day
        );
    }
    let _ = writeln!(out);
    Ok(out)
}

/// Flushes `ingesters`, then waits until every block is uploaded and
/// deleted locally and `compactor` has run two rounds without compacting
/// anything (so every window that can be compacted is, and marked blocks
/// are gone).
fn wait_compacted(compactor: &Flamedb, ingesters: &[&Flamedb]) -> Result<(), String> {
    for ingester in ingesters {
        // Every window's head becomes a block, written and uploaded fsync'd.
        let (status, body) = flamedb_testkit::post_within(
            &ingester.http,
            "/ingester/flush",
            &[],
            Vec::new(),
            Duration::from_secs(600),
        )?;
        if status != 200 {
            return Err(format!("flush answered {status}: {}", String::from_utf8_lossy(&body)));
        }
    }
    let metric = |node: &Flamedb, name: &str| node.metric(name).unwrap_or(0.0);
    let mut steady: Option<(f64, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let local: f64 = ingesters
            .iter()
            .map(|node| metric(node, "flamedb_ingester_local_blocks"))
            .sum();
        let compactions = metric(compactor, "flamedb_compactor_compactions_total");
        let runs = metric(compactor, "flamedb_compactor_runs_total");
        match steady {
            Some((before, runs_then)) if before == compactions => {
                if local == 0.0 && runs >= runs_then + 2.0 {
                    return Ok(());
                }
            }
            _ => steady = Some((compactions, runs)),
        }
        if Instant::now() > deadline {
            return Err(format!(
                "blocks were not compacted within 20 minutes ({local} local blocks left, {compactions} compactions)"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
