//! A continuous write-then-read checker, like mimir-continuous-test: it
//! pushes CPU profiles with known values through the public API at a
//! steady rate, remembers which were acknowledged, then reads every series
//! back (`SelectSeries`, one-second steps, and the merged flame graph) and
//! reports profiles that are missing, counted twice or wrong.
//!
//! Each series gets at most one profile per second, stamped at the middle
//! of its second, so every one-second point of a series holds exactly one
//! profile's value. Several writers push at once, each with its own share
//! of the series, so that pushes are in flight whenever a fault lands. A push that was not acknowledged may still have been
//! stored (a replica wrote it before the quorum failed); its point may be
//! present or absent, but never counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::querier::v1 as querier;
use flamedb_api::pb::types::v1::LabelPair;
use flamedb_model::pprof::StackProfileBuilder;
use prost::Message;

/// Findings a report keeps.
const MAX_FINDINGS: usize = 5;

/// Series read back at once.
const READERS: usize = 8;

/// What the checker writes and reads.
const PROFILE_TYPE: &str = "process_cpu:cpu:nanoseconds::";

/// What to write and where.
#[derive(Debug, Clone)]
pub struct CheckerConfig {
    /// `host:port` pushes go to.
    pub push_to: String,
    /// `host:port` queries go to.
    pub query_from: String,
    /// Sent as `X-Scope-OrgID` when set.
    pub tenant: Option<String>,
    /// Series written round-robin; each gets at most one profile a second.
    pub series: usize,
    /// Pushes a second (at most `series`), over all writers.
    pub rate: usize,
    /// Threads pushing at once, each with every `writers`-th series.
    pub writers: usize,
    /// Labels every series of this run (`checker_run`).
    pub run: String,
}

/// What a run found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub acknowledged: usize,
    /// Pushes answered with an error (or not at all): maybe stored.
    pub unacknowledged: usize,
    /// Acknowledged profiles not found.
    pub lost: usize,
    /// Profiles found with twice (or more) their value.
    pub double_counted: usize,
    /// Points with any other value, or where nothing was written.
    pub wrong: usize,
    /// Series whose merged flame graph total is not the sum of the points
    /// read back.
    pub merge_mismatches: usize,
    /// What was found wrong, series by series (the first few).
    pub findings: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.double_counted == 0 && self.wrong == 0 && self.merge_mismatches == 0
    }

    /// The counts in Prometheus text format (for node_exporter's textfile
    /// collector, or any scraper of a file).
    pub fn prometheus_text(&self) -> String {
        let metrics = [
            ("acknowledged", self.acknowledged, "Pushes acknowledged"),
            (
                "unacknowledged",
                self.unacknowledged,
                "Pushes answered with an error or not at all",
            ),
            ("lost", self.lost, "Acknowledged profiles not read back"),
            (
                "double_counted",
                self.double_counted,
                "Profiles read back with a multiple of their value",
            ),
            ("wrong", self.wrong, "Points read back with any other value"),
            (
                "merge_mismatches",
                self.merge_mismatches,
                "Series whose flame graph total is not the sum of their points",
            ),
        ];
        let mut text = String::new();
        for (name, value, help) in metrics {
            text.push_str(&format!(
                "# HELP flamedb_checker_{name} {help}.\n# TYPE flamedb_checker_{name} gauge\nflamedb_checker_{name} {value}\n"
            ));
        }
        text
    }

    /// One line for logs and CI (and the first findings, if any).
    pub fn summary(&self) -> String {
        let mut line = format!(
            "checker: acknowledged={} unacknowledged={} lost={} double_counted={} wrong={} merge_mismatches={}",
            self.acknowledged, self.unacknowledged, self.lost, self.double_counted, self.wrong, self.merge_mismatches
        );
        for finding in self.findings.iter().take(MAX_FINDINGS) {
            line.push_str("\n  ");
            line.push_str(finding);
        }
        line
    }

    fn add(&mut self, other: Report) {
        self.acknowledged += other.acknowledged;
        self.unacknowledged += other.unacknowledged;
        self.lost += other.lost;
        self.double_counted += other.double_counted;
        self.wrong += other.wrong;
        self.merge_mismatches += other.merge_mismatches;
        self.findings.extend(other.findings);
        self.findings.truncate(MAX_FINDINGS);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read series {series} back: {message}")]
    Read { series: String, message: String },
}

/// One written profile.
#[derive(Debug, Clone, Copy)]
struct Written {
    /// The point it lands on (ms): the end of its second.
    point_ms: i64,
    value: i64,
    acknowledged: bool,
}

/// What is written to one series.
#[derive(Debug, Clone, Default)]
struct SeriesLog {
    written: Vec<Written>,
    /// The last second written in.
    last_second: Option<i64>,
}

/// Writes profiles, then checks them.
#[derive(Debug)]
pub struct Checker {
    config: CheckerConfig,
    client: reqwest::blocking::Client,
    series: Vec<SeriesLog>,
    /// Where [`Checker::write_one`] looks for a free series first.
    next_series: usize,
    /// The last value written: each profile's value is unique.
    sequence: AtomicI64,
    /// Pushes acknowledged so far, readable while writers run.
    acknowledged: Arc<AtomicUsize>,
}

impl Checker {
    pub fn new(config: CheckerConfig) -> Self {
        let series = config.series.max(1);
        Self {
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            series: vec![SeriesLog::default(); series],
            next_series: 0,
            sequence: AtomicI64::new(0),
            acknowledged: Arc::new(AtomicUsize::new(0)),
            config,
        }
    }

    /// Writes for `duration` at the configured rate, with the configured
    /// number of writers at once.
    pub fn write_for(&mut self, duration: Duration) {
        let writers = self.config.writers.clamp(1, self.series.len());
        let interval = Duration::from_secs_f64(writers as f64 / self.config.rate.max(1) as f64);
        let end = Instant::now() + duration;
        // Writer w takes series w, w + writers, ...
        let mut shares: Vec<Vec<(usize, &mut SeriesLog)>> = (0..writers).map(|_| Vec::new()).collect();
        for (series, log) in self.series.iter_mut().enumerate() {
            shares[series % writers].push((series, log));
        }
        let writer = Writer {
            config: &self.config,
            client: &self.client,
            sequence: &self.sequence,
            acknowledged: &self.acknowledged,
        };
        std::thread::scope(|scope| {
            for mut share in shares {
                scope.spawn(move || {
                    let mut next = Instant::now();
                    let mut turn = 0;
                    while Instant::now() < end {
                        writer.push_to_free_series(&mut share, &mut turn);
                        next += interval;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                });
            }
        });
    }

    /// Writes one profile to the next series free this second; whether it
    /// was acknowledged, or `None` when every series already has its
    /// profile for this second (nothing was sent).
    pub fn write_one(&mut self) -> Option<bool> {
        let writer = Writer {
            config: &self.config,
            client: &self.client,
            sequence: &self.sequence,
            acknowledged: &self.acknowledged,
        };
        let mut all: Vec<(usize, &mut SeriesLog)> = self.series.iter_mut().enumerate().collect();
        writer.push_to_free_series(&mut all, &mut self.next_series)
    }

    /// Pushes acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::Acquire)
    }

    /// The count of pushes acknowledged, to read while the checker writes
    /// on another thread (at the moment of a fault, say).
    pub fn acknowledged_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.acknowledged)
    }

    /// Reads every series back (several at once) and compares.
    pub fn check(&self) -> Result<Report, CheckError> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let reports: Vec<Result<Report, CheckError>> = std::thread::scope(|scope| {
            let readers: Vec<_> = (0..READERS)
                .map(|_| {
                    scope.spawn(|| {
                        let mut report = Report::default();
                        loop {
                            let series = next.fetch_add(1, Ordering::Relaxed);
                            if series >= self.series.len() {
                                return Ok(report);
                            }
                            report.add(self.check_series(series)?);
                        }
                    })
                })
                .collect();
            readers
                .into_iter()
                .map(|reader| {
                    reader.join().unwrap_or_else(|_| {
                        Err(CheckError::Read {
                            series: "?".to_owned(),
                            message: "a reader panicked".to_owned(),
                        })
                    })
                })
                .collect()
        });
        let mut report = Report::default();
        for part in reports {
            report.add(part?);
        }
        Ok(report)
    }

    /// Reads one series back and compares.
    fn check_series(&self, series: usize) -> Result<Report, CheckError> {
        let mut report = Report::default();
        let written = &self.series[series].written;
        report.acknowledged += written.iter().filter(|w| w.acknowledged).count();
        report.unacknowledged += written.iter().filter(|w| !w.acknowledged).count();
        let (Some(first), Some(last)) = (written.first(), written.last()) else {
            return Ok(report);
        };
        let name = service(series);
        let points = self.read(series, first.point_ms - 1000, last.point_ms)?;
        let expected: BTreeMap<i64, Written> = written.iter().map(|w| (w.point_ms, *w)).collect();
        for (point_ms, found) in &points {
            match expected.get(point_ms) {
                None => {
                    report.wrong += 1;
                    report
                        .findings
                        .push(format!("{name}: {found} at {point_ms}, where nothing was written"));
                }
                Some(w) if *found == w.value => {}
                Some(w) if *found >= 2 * w.value && found % w.value == 0 => {
                    report.double_counted += 1;
                    report
                        .findings
                        .push(format!("{name}: {found} at {point_ms}, {} written", w.value));
                }
                Some(w) => {
                    report.wrong += 1;
                    report
                        .findings
                        .push(format!("{name}: {found} at {point_ms}, {} written", w.value));
                }
            }
        }
        for w in written.iter().filter(|w| w.acknowledged) {
            if !points.contains_key(&w.point_ms) {
                report.lost += 1;
                report
                    .findings
                    .push(format!("{name}: {} at {} acknowledged, not found", w.value, w.point_ms));
            }
        }
        // The merged flame graph counts each profile once too: exactly the
        // sum of the points (each checked above) of the same range.
        let merged = self.merged_total(series, first.point_ms - 1000, last.point_ms)?;
        let sum: i64 = points.values().sum();
        if merged != sum {
            report.merge_mismatches += 1;
            report.findings.push(format!(
                "{name}: the merged flame graph totals {merged}, its points {sum} ({} points)",
                points.len()
            ));
        }
        report.findings.truncate(MAX_FINDINGS);
        Ok(report)
    }

    fn selector(&self, series: usize) -> String {
        format!(
            "{{service_name=\"{}\", checker_run=\"{}\"}}",
            service(series),
            self.config.run
        )
    }

    /// POSTs `request` to the querier method `method`; the answer's bytes.
    fn query(&self, series: usize, method: &str, request: Vec<u8>) -> Result<Vec<u8>, CheckError> {
        let error = |message: String| CheckError::Read {
            series: service(series),
            message,
        };
        let url = format!("http://{}/querier.v1.QuerierService/{method}", self.config.query_from);
        let response = headers(&self.config, self.client.post(url))
            .body(request)
            .send()
            .map_err(|err| error(err.to_string()))?;
        let status = response.status();
        let body = response.bytes().map_err(|err| error(err.to_string()))?;
        if !status.is_success() {
            return Err(error(format!("{method}: {status}: {}", String::from_utf8_lossy(&body))));
        }
        Ok(body.to_vec())
    }

    /// The total of the merged flame graph of `series` in `(start, end]`.
    fn merged_total(&self, series: usize, start_ms: i64, end_ms: i64) -> Result<i64, CheckError> {
        let request = querier::SelectMergeStacktracesRequest {
            profile_type_id: PROFILE_TYPE.to_owned(),
            label_selector: self.selector(series),
            start: start_ms + 1,
            end: end_ms,
            ..Default::default()
        };
        let body = self.query(series, "SelectMergeStacktraces", request.encode_to_vec())?;
        let answer =
            querier::SelectMergeStacktracesResponse::decode(body.as_slice()).map_err(|err| CheckError::Read {
                series: service(series),
                message: err.to_string(),
            })?;
        Ok(answer.flamegraph.map_or(0, |graph| graph.total))
    }

    /// The one-second points of `series` in `(start, end]`.
    fn read(&self, series: usize, start_ms: i64, end_ms: i64) -> Result<BTreeMap<i64, i64>, CheckError> {
        let request = querier::SelectSeriesRequest {
            profile_type_id: PROFILE_TYPE.to_owned(),
            label_selector: self.selector(series),
            start: start_ms,
            end: end_ms,
            step: 1.0,
            ..Default::default()
        };
        let body = self.query(series, "SelectSeries", request.encode_to_vec())?;
        let answer = querier::SelectSeriesResponse::decode(body.as_slice()).map_err(|err| CheckError::Read {
            series: service(series),
            message: err.to_string(),
        })?;
        Ok(answer
            .series
            .iter()
            .flat_map(|series| &series.points)
            .map(|point| (point.timestamp, point.value as i64))
            .collect())
    }
}

fn service(series: usize) -> String {
    format!("checker-{series}")
}

fn headers(config: &CheckerConfig, request: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
    let request = request.header("content-type", "application/proto");
    match &config.tenant {
        Some(tenant) => request.header("x-scope-orgid", tenant),
        None => request,
    }
}

/// What the writing threads share.
#[derive(Clone, Copy)]
struct Writer<'a> {
    config: &'a CheckerConfig,
    client: &'a reqwest::blocking::Client,
    sequence: &'a AtomicI64,
    acknowledged: &'a AtomicUsize,
}

impl Writer<'_> {
    /// Pushes one profile to the first series of `share` (from `*turn`,
    /// round robin) not yet written this second and logs it; whether it
    /// was acknowledged, or `None` when every series of `share` has its
    /// profile for this second.
    fn push_to_free_series(self, share: &mut [(usize, &mut SeriesLog)], turn: &mut usize) -> Option<bool> {
        let Self {
            config,
            client,
            sequence,
            acknowledged: counter,
        } = self;
        let now_ms = flamedb_model::now_nanos() / 1_000_000;
        let second = now_ms.div_euclid(1000);
        let count = share.len();
        let at = (0..count)
            .map(|offset| (*turn + offset) % count)
            .find(|&at| share[at].1.last_second.is_none_or(|last| last < second))?;
        *turn = (at + 1) % count;
        let (series, log) = &mut share[at];
        log.last_second = Some(second);
        let value = sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let time_ms = second * 1000 + 500;
        let body = PushRequest {
            series: vec![RawProfileSeries {
                labels: [
                    ("__name__", "process_cpu"),
                    ("service_name", service(*series).as_str()),
                    ("checker_run", config.run.as_str()),
                ]
                .iter()
                .map(|(name, value)| LabelPair {
                    name: (*name).to_owned(),
                    value: (*value).to_owned(),
                })
                .collect(),
                samples: vec![RawSample {
                    raw_profile: profile(time_ms, value),
                    id: String::new(),
                }],
                annotations: vec![],
            }],
        }
        .encode_to_vec();
        let url = format!("http://{}/push.v1.PusherService/Push", config.push_to);
        let acknowledged = headers(config, client.post(url))
            .body(body)
            .send()
            .is_ok_and(|response| response.status().is_success());
        if acknowledged {
            counter.fetch_add(1, Ordering::AcqRel);
        }
        log.written.push(Written {
            point_ms: second * 1000 + 1000,
            value,
            acknowledged,
        });
        Some(acknowledged)
    }
}

/// A CPU profile of one stack (`checker;write`) worth `value`.
fn profile(time_ms: i64, value: i64) -> Vec<u8> {
    let mut builder = StackProfileBuilder::new("cpu", "nanoseconds").time(time_ms * 1_000_000, 0);
    builder.add(["checker", "write"], value);
    builder.build().encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_summary_and_cleanliness() {
        let report = Report {
            acknowledged: 10,
            unacknowledged: 1,
            ..Report::default()
        };
        assert!(report.is_clean());
        assert_eq!(
            report.summary(),
            "checker: acknowledged=10 unacknowledged=1 lost=0 double_counted=0 wrong=0 merge_mismatches=0"
        );
        assert!(report.prometheus_text().contains("\nflamedb_checker_acknowledged 10\n"));
        assert!(!Report { lost: 1, ..report }.is_clean());
    }
}
