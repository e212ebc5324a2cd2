//! End-to-end push throughput and latency through real processes: one
//! distributor and three ingesters (RF=3, gossip), or the single binary.
//! Pushes a real profile of `../shared/testdata/pprof` (`profile_java` by
//! default: a Java CPU profile; gzip, Connect proto, one series per
//! request, as pyroscope-rs sends)
//! from client threads for a fixed time, then prints profiles/s,
//! samples/s, MB/s (uncompressed pprof) per core and latency percentiles.
//!
//! `cargo bench -p flamedb-server --bench push [-- --seconds 20 --clients 8 --file profile_java --single]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::types::v1::LabelPair;
use flamedb_model::gzip::gzip;
mod setup;
use prost::Message;

const SERIES: usize = 64;

struct Options {
    file: String,
    seconds: u64,
    clients: usize,
    single: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: u64| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|at| args.get(at + 1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    Options {
        file: args
            .iter()
            .position(|arg| arg == "--file")
            .and_then(|at| args.get(at + 1))
            .cloned()
            .unwrap_or_else(|| "profile_java".to_owned()),
        seconds: value("--seconds", 20),
        clients: value("--clients", 8) as usize,
        single: args.iter().any(|arg| arg == "--single"),
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    LabelPair {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

fn main() {
    let options = options();
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/pprof")
        .join(&options.file);
    let Ok(raw) = std::fs::read(&file) else {
        eprintln!("skipping: {} is absent", file.display());
        return;
    };
    let mut profile = flamedb_model::pprof::decode(&raw, 0).unwrap();
    profile.time_nanos = flamedb_model::now_nanos();
    let samples = profile.sample.len();
    let pprof = profile.encode_to_vec();
    let requests: Vec<Vec<u8>> = (0..SERIES)
        .map(|series| {
            gzip(
                &PushRequest {
                    series: vec![RawProfileSeries {
                        labels: vec![
                            label("__name__", "process_cpu"),
                            label("service_name", &format!("bench-{series}")),
                            label("__delta__", "false"),
                        ],
                        samples: vec![RawSample {
                            raw_profile: pprof.clone(),
                            id: String::new(),
                        }],
                        annotations: vec![],
                    }],
                }
                .encode_to_vec(),
            )
        })
        .collect();

    // No rate limit, large heads: measure the pipeline, not the limits.
    let common = [
        "-distributor.ingestion-rate-limit-mb=0",
        "-ingester.max-global-series-per-tenant=0",
    ];
    let setup = if options.single {
        setup::single(&common)
    } else {
        setup::rf3(&common, "distributor")
    };
    let target = setup.target.clone();

    let requests = Arc::new(requests);
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let clients: Vec<_> = (0..options.clients)
        .map(|client| {
            let (requests, stop, latencies, target) =
                (requests.clone(), stop.clone(), latencies.clone(), target.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut next = client;
                while !stop.load(Ordering::Relaxed) {
                    let body = requests[next % requests.len()].clone();
                    // Each client walks the series in its own order.
                    next += 7;
                    let sent = Instant::now();
                    let (status, answer) = flamedb_testkit::post(
                        &target,
                        "/push.v1.PusherService/Push",
                        &[("content-type", "application/proto"), ("content-encoding", "gzip")],
                        body,
                    )
                    .unwrap();
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                    mine.push(sent.elapsed());
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(options.seconds));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let pushes = latencies.len() as f64;
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let percentile = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "{}: {}, {} clients, {:.0} s, {} samples and {} bytes (uncompressed pprof) per profile, {} cores",
        if options.single {
            "single binary"
        } else {
            "1 distributor + 3 ingesters, RF=3"
        },
        options.file,
        options.clients,
        elapsed,
        samples,
        pprof.len(),
        cores
    );
    println!(
        "pushes/s {:.0} | per core: profiles/s {:.0}, samples/s {:.0}, MB/s {:.2} | latency ms p50 {:.1}, p99 {:.1}, max {:.1}",
        pushes / elapsed,
        pushes / elapsed / cores,
        pushes * samples as f64 / elapsed / cores,
        pushes * pprof.len() as f64 / elapsed / cores / 1e6,
        percentile(0.50),
        percentile(0.99),
        percentile(1.0),
    );
}
