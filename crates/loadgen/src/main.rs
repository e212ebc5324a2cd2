//! `flamedb-loadgen`: pushes profiles made from real pprof files, runs the
//! query mix, or runs the whole benchmark.
//!
//! ```text
//! flamedb-loadgen push  --target HOST:PORT [--profiles DIR] [--series 100] [--clients 8]
//!                       [--rate PUSHES_PER_S] [--seconds 30]
//! flamedb-loadgen fill  --target HOST:PORT [--profiles DIR] [--series 100] [--hours 24]
//!                       [--per-series 144] [--clients 8]
//! flamedb-loadgen query --target HOST:PORT [--seconds 30] [--hours 1] [--series 100]
//! flamedb-loadgen bench --binary PATH [--profiles DIR] [--short]
//! ```
//!
//! `--profiles` defaults to `../shared/testdata/pprof`. `fill` pushes
//! `--per-series` profiles per series spread over the last `--hours`, once
//! (the server must accept old profiles: `-validation.reject-older-than`). `query` runs the
//! production mix (reference §2.6) over the last `--hours`, on the
//! services `push` creates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use flamedb_loadgen::bench::{self, BenchConfig};
use flamedb_loadgen::push::{self, PushConfig};
use flamedb_loadgen::query::{QueryClient, Scope};
use flamedb_loadgen::workload;

/// jemalloc, as in flamedb (see the reason in Cargo.toml).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DEFAULT_PROFILES: &str = "../shared/testdata/pprof";

struct Args(Vec<String>);

impl Args {
    fn value(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .position(|arg| arg == name)
            .and_then(|at| self.0.get(at + 1))
            .cloned()
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, String> {
        self.value(name).map_or(Ok(default), |text| {
            text.parse()
                .map_err(|_| format!("{name} {text:?} is not a whole number"))
        })
    }

    fn flag(&self, name: &str) -> bool {
        self.0.iter().any(|arg| arg == name)
    }

    fn target(&self) -> Result<String, String> {
        self.value("--target")
            .ok_or_else(|| "--target HOST:PORT is required".to_owned())
    }

    fn profiles(&self) -> PathBuf {
        PathBuf::from(self.value("--profiles").unwrap_or_else(|| DEFAULT_PROFILES.to_owned()))
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: flamedb-loadgen push|fill|query|bench [options] (see the crate documentation)");
        return ExitCode::from(2);
    }
    let command = args.remove(0);
    let args = Args(args);
    let result = match command.as_str() {
        "push" => run_push(&args),
        "fill" => run_fill(&args),
        "query" => run_query(&args),
        "bench" => run_bench(&args),
        other => Err(format!("unknown command {other:?}: push, fill, query or bench")),
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("flamedb-loadgen {command}: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_push(args: &Args) -> Result<String, String> {
    let sources = workload::read_sources(&args.profiles(), workload::DEFAULT_FILES).map_err(|err| err.to_string())?;
    let series = usize::try_from(args.number("--series", 100)?.max(1)).unwrap_or(100);
    let now_ms = flamedb_model::now_nanos() / 1_000_000;
    let requests = Arc::new(workload::requests(&sources, series, 1, now_ms, 0));
    let rate = args.number("--rate", 0)?;
    let mut stats = push::run(
        &PushConfig {
            target: args.target()?,
            clients: usize::try_from(args.number("--clients", 8)?).unwrap_or(8),
            rate: (rate > 0).then_some(rate as f64),
            duration: Duration::from_secs(args.number("--seconds", 30)?),
        },
        &requests,
    );
    if stats.acknowledged == 0 {
        return Err(format!(
            "no push was acknowledged; first failure: {}",
            stats.first_failure.unwrap_or_default()
        ));
    }
    Ok(format!(
        "acknowledged {} failed {} in {:.1} s: {:.0} profiles/s, {:.0} samples/s, {:.2} MB/s (uncompressed pprof); latency ms p50 {:.1} p99 {:.1} p99.9 {:.1}{}",
        stats.acknowledged,
        stats.failed,
        stats.seconds,
        stats.profiles_per_second(),
        stats.samples_per_second(),
        stats.megabytes_per_second(),
        stats.latencies.percentile_ms(0.5),
        stats.latencies.percentile_ms(0.99),
        stats.latencies.percentile_ms(0.999),
        stats
            .first_failure
            .map(|failure| format!("; first failure: {failure}"))
            .unwrap_or_default(),
    ))
}

fn run_fill(args: &Args) -> Result<String, String> {
    let sources = workload::read_sources(&args.profiles(), workload::DEFAULT_FILES).map_err(|err| err.to_string())?;
    let series = usize::try_from(args.number("--series", 100)?.max(1)).unwrap_or(100);
    let per_series = usize::try_from(args.number("--per-series", 144)?.max(1)).unwrap_or(144);
    let hours = i64::try_from(args.number("--hours", 24)?).unwrap_or(24);
    let now_ms = flamedb_model::now_nanos() / 1_000_000;
    let span_ms = hours * 3600 * 1000 / per_series as i64;
    let requests = Arc::new(workload::requests(&sources, series, per_series, now_ms, span_ms));
    let started = std::time::Instant::now();
    push::fill(
        &args.target()?,
        &requests,
        usize::try_from(args.number("--clients", 8)?).unwrap_or(8),
    )?;
    Ok(format!(
        "pushed {} profiles ({series} series, one every {:.1} min over {hours} h) in {:.1} s",
        requests.len(),
        span_ms as f64 / 60_000.0,
        started.elapsed().as_secs_f64()
    ))
}

fn run_query(args: &Args) -> Result<String, String> {
    let client = QueryClient::new(&args.target()?);
    let now_ms = flamedb_model::now_nanos() / 1_000_000;
    let hours = i64::try_from(args.number("--hours", 1)?).unwrap_or(1);
    let series = args.number("--series", 100)?.max(1);
    let selectors: Vec<String> = (0..series)
        .map(|n| format!("{{service_name=\"loadgen-{n}\"}}"))
        .collect();
    let scope = Scope {
        start_ms: now_ms - hours * 3600 * 1000,
        end_ms: now_ms,
        selector: "{}".to_owned(),
    };
    let results = client.mix(&scope, &selectors, Duration::from_secs(args.number("--seconds", 30)?))?;
    let mut report = String::from("query: runs, p50 ms, p99 ms\n");
    for (kind, mut latencies) in results {
        report.push_str(&format!(
            "{kind:?}: {}, {:.1}, {:.1}\n",
            latencies.len(),
            latencies.percentile_ms(0.5),
            latencies.percentile_ms(0.99)
        ));
    }
    Ok(report)
}

fn run_bench(args: &Args) -> Result<String, String> {
    let binary = PathBuf::from(
        args.value("--binary")
            .ok_or("--binary PATH (the flamedb binary) is required")?,
    );
    let config = if args.flag("--short") {
        BenchConfig::short(binary, args.profiles())
    } else {
        BenchConfig::full(binary, args.profiles())
    };
    bench::run(&config)
}
