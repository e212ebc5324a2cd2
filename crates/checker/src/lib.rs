//! A continuous write-then-read checker, like mimir-continuous-test: it
//! pushes CPU profiles with known values through the public API at a
//! steady rate, remembers which were acknowledged, then reads every series
//! back (`SelectSeries`, one-second steps, and the merged flame graph) and
//! reports profiles that are missing, counted twice or wrong.
//!
//! Each series gets at most one profile per second, stamped at the middle
//! of its second, so every one-second point of a series holds exactly one
//! profile's value. A push that was not acknowledged may still have been
//! stored (a replica wrote it before the quorum failed); its point may be
//! present or absent, but never counted twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::querier::v1 as querier;
use flamedb_api::pb::types::v1::LabelPair;
use flamedb_model::pprof::StackProfileBuilder;
use prost::Message;

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
    /// Pushes a second (at most `series`).
    pub rate: usize,
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
    /// Series whose merged flame graph totals less than was acknowledged
    /// or more than was written.
    pub merge_mismatches: usize,
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
                "Series whose flame graph totals less than acknowledged or more than written",
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

    /// One line for logs and CI.
    pub fn summary(&self) -> String {
        format!(
            "checker: acknowledged={} unacknowledged={} lost={} double_counted={} wrong={} merge_mismatches={}",
            self.acknowledged, self.unacknowledged, self.lost, self.double_counted, self.wrong, self.merge_mismatches
        )
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

/// Writes profiles, then checks them.
#[derive(Debug)]
pub struct Checker {
    config: CheckerConfig,
    client: reqwest::blocking::Client,
    /// Per series, what was written.
    written: Vec<Vec<Written>>,
    next_series: usize,
    /// The last second each series was written in.
    last_second: Vec<i64>,
    sequence: i64,
}

impl Checker {
    pub fn new(config: CheckerConfig) -> Self {
        let series = config.series.max(1);
        Self {
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            written: vec![Vec::new(); series],
            last_second: vec![i64::MIN; series],
            next_series: 0,
            sequence: 0,
            config,
        }
    }

    fn service(&self, series: usize) -> String {
        format!("checker-{series}")
    }

    fn headers(&self, request: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        let request = request.header("content-type", "application/proto");
        match &self.config.tenant {
            Some(tenant) => request.header("x-scope-orgid", tenant),
            None => request,
        }
    }

    /// Writes for `duration` at the configured rate.
    pub fn write_for(&mut self, duration: Duration) {
        let interval = Duration::from_secs_f64(1.0 / self.config.rate.max(1) as f64);
        let end = Instant::now() + duration;
        let mut next = Instant::now();
        while Instant::now() < end {
            self.write_one();
            next += interval;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }

    /// Writes one profile to the next series free this second; returns
    /// whether it was acknowledged (false, without sending anything, when
    /// every series already has its profile for this second).
    pub fn write_one(&mut self) -> bool {
        let now_ms = flamedb_model::now_nanos() / 1_000_000;
        let second = now_ms.div_euclid(1000);
        let count = self.written.len();
        let Some(series) = (0..count)
            .map(|offset| (self.next_series + offset) % count)
            .find(|&series| self.last_second[series] < second)
        else {
            return false;
        };
        self.next_series = (series + 1) % count;
        self.last_second[series] = second;
        self.sequence += 1;
        let value = self.sequence;
        let time_ms = second * 1000 + 500;
        let body = PushRequest {
            series: vec![RawProfileSeries {
                labels: [
                    ("__name__", "process_cpu"),
                    ("service_name", self.service(series).as_str()),
                    ("checker_run", self.config.run.as_str()),
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
        let url = format!("http://{}/push.v1.PusherService/Push", self.config.push_to);
        let acknowledged = self
            .headers(self.client.post(url))
            .body(body)
            .send()
            .is_ok_and(|response| response.status().is_success());
        self.written[series].push(Written {
            point_ms: second * 1000 + 1000,
            value,
            acknowledged,
        });
        acknowledged
    }

    /// Reads every series back and compares.
    pub fn check(&self) -> Result<Report, CheckError> {
        let mut report = Report::default();
        for (series, written) in self.written.iter().enumerate() {
            report.acknowledged += written.iter().filter(|w| w.acknowledged).count();
            report.unacknowledged += written.iter().filter(|w| !w.acknowledged).count();
            let (Some(first), Some(last)) = (written.first(), written.last()) else {
                continue;
            };
            let points = self.read(series, first.point_ms - 1000, last.point_ms)?;
            let expected: BTreeMap<i64, Written> = written.iter().map(|w| (w.point_ms, *w)).collect();
            for (point_ms, found) in &points {
                match expected.get(point_ms) {
                    None => report.wrong += 1,
                    Some(w) if *found == w.value => {}
                    Some(w) if *found >= 2 * w.value && found % w.value == 0 => report.double_counted += 1,
                    Some(_) => report.wrong += 1,
                }
            }
            for w in written.iter().filter(|w| w.acknowledged) {
                if !points.contains_key(&w.point_ms) {
                    report.lost += 1;
                }
            }
            // The merged flame graph counts each profile once too: at
            // least what was acknowledged, at most all that was written
            // (exactly what was acknowledged when every push was).
            let acknowledged: i64 = written.iter().filter(|w| w.acknowledged).map(|w| w.value).sum();
            let all: i64 = written.iter().map(|w| w.value).sum();
            let merged = self.merged_total(series, first.point_ms - 1000, last.point_ms)?;
            if merged < acknowledged || merged > all {
                report.merge_mismatches += 1;
            }
        }
        Ok(report)
    }

    fn selector(&self, series: usize) -> String {
        format!(
            "{{service_name=\"{}\", checker_run=\"{}\"}}",
            self.service(series),
            self.config.run
        )
    }

    /// POSTs `request` to the querier method `method`; the answer's bytes.
    fn query(&self, series: usize, method: &str, request: Vec<u8>) -> Result<Vec<u8>, CheckError> {
        let error = |message: String| CheckError::Read {
            series: self.service(series),
            message,
        };
        let url = format!("http://{}/querier.v1.QuerierService/{method}", self.config.query_from);
        let response = self
            .headers(self.client.post(url))
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
                series: self.service(series),
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
            series: self.service(series),
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
