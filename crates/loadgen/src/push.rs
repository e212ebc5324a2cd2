//! Pushing: client threads sending requests as fast as they are answered
//! or at a set rate, recording what was acknowledged and how long each
//! push took.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::stats::Latencies;
use crate::workload::Request;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// `host:port` of a distributor.
    pub target: String,
    pub clients: usize,
    /// Pushes per second over all clients; `None`: as fast as answered.
    pub rate: Option<f64>,
    pub duration: Duration,
}

/// What a push run did.
#[derive(Debug, Clone, Default)]
pub struct PushStats {
    pub acknowledged: u64,
    pub failed: u64,
    /// The first failure's status and message, if any.
    pub first_failure: Option<String>,
    pub samples: u64,
    /// Uncompressed pprof bytes acknowledged.
    pub pprof_bytes: u64,
    /// What the acknowledged pushes add to the CPU flame graph.
    pub cpu_total: i64,
    pub seconds: f64,
    pub latencies: Latencies,
}

impl PushStats {
    pub fn profiles_per_second(&self) -> f64 {
        self.acknowledged as f64 / self.seconds
    }

    pub fn samples_per_second(&self) -> f64 {
        self.samples as f64 / self.seconds
    }

    pub fn megabytes_per_second(&self) -> f64 {
        self.pprof_bytes as f64 / self.seconds / 1e6
    }

    fn absorb(&mut self, other: PushStats) {
        self.acknowledged += other.acknowledged;
        self.failed += other.failed;
        self.first_failure = self.first_failure.take().or(other.first_failure);
        self.samples += other.samples;
        self.pprof_bytes += other.pprof_bytes;
        self.cpu_total += other.cpu_total;
        self.latencies.extend(other.latencies);
    }
}

/// Pushes `requests` (each client walks them from its own offset) until
/// `config.duration` has passed.
pub fn run(config: &PushConfig, requests: &Arc<Vec<Request>>) -> PushStats {
    if requests.is_empty() {
        return PushStats {
            first_failure: Some("nothing to send".to_owned()),
            ..PushStats::default()
        };
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients = config.clients.max(1);
    let interval = config
        .rate
        .filter(|rate| *rate > 0.0)
        .map(|rate| Duration::from_secs_f64(clients as f64 / rate));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (requests, stop, url) = (
                requests.clone(),
                stop.clone(),
                format!("http://{}/push.v1.PusherService/Push", config.target),
            );
            std::thread::spawn(move || push_loop(&url, &requests, client, clients, interval, &stop))
        })
        .collect();
    std::thread::sleep(config.duration);
    stop.store(true, Ordering::Relaxed);
    let mut total = PushStats::default();
    for thread in threads {
        if let Ok(stats) = thread.join() {
            total.absorb(stats);
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    total
}

fn push_loop(
    url: &str,
    requests: &[Request],
    client: usize,
    clients: usize,
    interval: Option<Duration>,
    stop: &AtomicBool,
) -> PushStats {
    let mut stats = PushStats::default();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default();
    let mut next = client * requests.len() / clients;
    // Clients start spread over one interval.
    let mut due =
        Instant::now() + interval.map_or(Duration::ZERO, |interval| interval * client as u32 / clients as u32);
    while !stop.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            due += interval;
        }
        let request = &requests[next % requests.len()];
        next += 1;
        let sent = Instant::now();
        let answer = push_one(&http, url, request);
        let elapsed = sent.elapsed();
        match answer {
            Ok(()) => {
                stats.acknowledged += 1;
                stats.samples += request.samples as u64;
                stats.pprof_bytes += request.pprof_bytes as u64;
                stats.cpu_total += request.cpu_total;
                stats.latencies.push(elapsed);
            }
            Err(failure) => {
                stats.failed += 1;
                let unreachable = matches!(failure, PushFailure::Unreachable(_));
                stats.first_failure.get_or_insert_with(|| failure.to_string());
                if unreachable {
                    // Do not spin.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    stats
}

/// Why a push was not acknowledged.
#[derive(Debug, thiserror::Error)]
enum PushFailure {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(String),
}

/// Sends one push request; `Ok` once the server acknowledged it.
fn push_one(http: &reqwest::blocking::Client, url: &str, request: &Request) -> Result<(), PushFailure> {
    let response = http
        .post(url)
        .header("content-type", "application/proto")
        .body(request.body.clone())
        .send()
        .map_err(|err| PushFailure::Unreachable(err.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    Err(PushFailure::Refused(format!(
        "{status}: {}",
        response.text().unwrap_or_default()
    )))
}

/// Pushes every request once, from `clients` threads, each stopping at
/// its first failure; the error is the first, in request order.
pub fn fill(target: &str, requests: &[Request], clients: usize) -> Result<(), String> {
    let url = format!("http://{target}/push.v1.PusherService/Push");
    let chunk_size = requests.len().div_ceil(clients.max(1)).max(1);
    std::thread::scope(|scope| {
        let threads: Vec<_> = requests
            .chunks(chunk_size)
            .map(|chunk| {
                let url = url.as_str();
                scope.spawn(move || -> Result<(), String> {
                    let http = reqwest::blocking::Client::new();
                    chunk
                        .iter()
                        .try_for_each(|request| push_one(&http, url, request))
                        .map_err(|failure| format!("filling: {failure}"))
                })
            })
            .collect();
        threads
            .into_iter()
            .try_for_each(|thread| thread.join().map_err(|_| "a filling thread panicked".to_owned())?)
    })
}
