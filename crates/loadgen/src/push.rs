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
        let answer = http
            .post(url)
            .header("content-type", "application/proto")
            .body(request.body.clone())
            .send();
        let elapsed = sent.elapsed();
        match answer {
            Ok(response) if response.status().is_success() => {
                stats.acknowledged += 1;
                stats.samples += request.samples as u64;
                stats.pprof_bytes += request.pprof_bytes as u64;
                stats.latencies.push(elapsed);
            }
            Ok(response) => {
                stats.failed += 1;
                if stats.first_failure.is_none() {
                    let status = response.status();
                    let body = response.text().unwrap_or_default();
                    stats.first_failure = Some(format!("{status}: {body}"));
                }
            }
            Err(err) => {
                stats.failed += 1;
                stats.first_failure.get_or_insert_with(|| err.to_string());
                // Unreachable: do not spin.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    stats
}

/// Pushes every request once, from `clients` threads; the first failure
/// stops it.
pub fn fill(target: &str, requests: &Arc<Vec<Request>>, clients: usize) -> Result<(), String> {
    let chunks: Vec<Arc<Vec<Request>>> = requests
        .chunks(requests.len().div_ceil(clients.max(1)).max(1))
        .map(|chunk| Arc::new(chunk.to_vec()))
        .collect();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let url = format!("http://{target}/push.v1.PusherService/Push");
            std::thread::spawn(move || -> Result<(), String> {
                let http = reqwest::blocking::Client::new();
                for request in chunk.iter() {
                    let response = http
                        .post(&url)
                        .header("content-type", "application/proto")
                        .body(request.body.clone())
                        .send()
                        .map_err(|err| err.to_string())?;
                    if !response.status().is_success() {
                        return Err(format!(
                            "filling: {}: {}",
                            response.status(),
                            response.text().unwrap_or_default()
                        ));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "a filling thread panicked".to_owned())??;
    }
    Ok(())
}
