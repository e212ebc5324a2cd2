//! Queries as Grafana, Profiles Drilldown and the Pyroscope UI send them,
//! and the production mix of reference §2.6.

use std::time::{Duration, Instant};

use flamedb_api::pb::querier::v1 as querier;
use flamedb_api::pb::types::v1 as types;
use prost::Message;

use crate::stats::Latencies;

/// The profile type every CPU series of the workload has.
pub const CPU_TYPE: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

/// One kind of query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// `SelectMergeProfile`, proto: the pprof download of Drilldown.
    MergeProfile,
    /// `GET /pyroscope/render` with ms from/until.
    Render,
    /// `SelectMergeStacktraces`, proto: Grafana's flame graph.
    FlameGraph,
    LabelNames,
    Series,
    RenderDiff,
    ProfileTypes,
    SelectSeries,
    LabelValues,
}

/// The observed production mix (reference §2.6), in per mille; the
/// methods flamedb does not serve are left out.
pub const PRODUCTION_MIX: &[(QueryKind, u32)] = &[
    (QueryKind::MergeProfile, 780),
    (QueryKind::Render, 150),
    (QueryKind::FlameGraph, 30),
    (QueryKind::LabelNames, 14),
    (QueryKind::Series, 9),
    (QueryKind::RenderDiff, 7),
    (QueryKind::ProfileTypes, 4),
    (QueryKind::SelectSeries, 4),
    (QueryKind::LabelValues, 2),
];

/// What a query reads: a time range and a label selector.
#[derive(Debug, Clone)]
pub struct Scope {
    pub start_ms: i64,
    pub end_ms: i64,
    /// A selector such as `{}` or `{service_name="loadgen-0"}`.
    pub selector: String,
}

/// A client for one querier.
#[derive(Debug)]
pub struct QueryClient {
    http: reqwest::blocking::Client,
    target: String,
}

impl QueryClient {
    pub fn new(target: &str) -> Self {
        Self {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap_or_default(),
            target: target.to_owned(),
        }
    }

    /// Runs one query; its latency, or what went wrong.
    pub fn run(&self, kind: QueryKind, scope: &Scope) -> Result<Duration, String> {
        let proto = |method: &str, body: Vec<u8>| {
            self.http
                .post(format!("http://{}/querier.v1.QuerierService/{method}", self.target))
                .header("content-type", "application/proto")
                .body(body)
        };
        let (start, end) = (scope.start_ms, scope.end_ms);
        let selector = scope.selector.clone();
        let request = match kind {
            QueryKind::MergeProfile => proto(
                "SelectMergeProfile",
                querier::SelectMergeProfileRequest {
                    profile_type_id: CPU_TYPE.to_owned(),
                    label_selector: selector,
                    start,
                    end,
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            QueryKind::FlameGraph => proto(
                "SelectMergeStacktraces",
                querier::SelectMergeStacktracesRequest {
                    profile_type_id: CPU_TYPE.to_owned(),
                    label_selector: selector,
                    start,
                    end,
                    max_nodes: Some(16_384),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            QueryKind::SelectSeries => proto(
                "SelectSeries",
                querier::SelectSeriesRequest {
                    profile_type_id: CPU_TYPE.to_owned(),
                    label_selector: selector,
                    start,
                    end,
                    group_by: vec!["service_name".to_owned()],
                    step: ((end - start) as f64 / 1000.0 / 200.0).max(15.0),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            QueryKind::LabelNames => proto(
                "LabelNames",
                types::LabelNamesRequest {
                    matchers: vec![selector],
                    start,
                    end,
                }
                .encode_to_vec(),
            ),
            QueryKind::LabelValues => proto(
                "LabelValues",
                types::LabelValuesRequest {
                    name: "service_name".to_owned(),
                    matchers: vec![selector],
                    start,
                    end,
                }
                .encode_to_vec(),
            ),
            QueryKind::Series => proto(
                "Series",
                querier::SeriesRequest {
                    matchers: vec![selector],
                    label_names: vec!["service_name".to_owned(), "__profile_type__".to_owned()],
                    start,
                    end,
                }
                .encode_to_vec(),
            ),
            QueryKind::ProfileTypes => proto(
                "ProfileTypes",
                querier::ProfileTypesRequest { start, end }.encode_to_vec(),
            ),
            QueryKind::Render => self
                .http
                .get(format!("http://{}/pyroscope/render", self.target))
                .query(&[
                    ("query", format!("{CPU_TYPE}{selector}")),
                    ("from", start.to_string()),
                    ("until", end.to_string()),
                    ("aggregation", "sum".to_owned()),
                    ("format", "json".to_owned()),
                    ("max-nodes", "16384".to_owned()),
                ]),
            QueryKind::RenderDiff => {
                let middle = start + (end - start) / 2;
                self.http
                    .get(format!("http://{}/pyroscope/render-diff", self.target))
                    .query(&[
                        ("leftQuery", format!("{CPU_TYPE}{selector}")),
                        ("leftFrom", start.to_string()),
                        ("leftUntil", middle.to_string()),
                        ("rightQuery", format!("{CPU_TYPE}{selector}")),
                        ("rightFrom", middle.to_string()),
                        ("rightUntil", end.to_string()),
                        ("max-nodes", "16384".to_owned()),
                    ])
            }
        };
        let sent = Instant::now();
        let response = request.send().map_err(|err| format!("{kind:?}: {err}"))?;
        let status = response.status();
        let body = response.bytes().map_err(|err| format!("{kind:?}: {err}"))?;
        let elapsed = sent.elapsed();
        if !status.is_success() {
            return Err(format!("{kind:?}: {status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(elapsed)
    }

    /// The total of the CPU flame graph of `scope`: what the answers of a
    /// run are checked against.
    pub fn cpu_total(&self, scope: &Scope) -> Result<i64, String> {
        let request = querier::SelectMergeStacktracesRequest {
            profile_type_id: CPU_TYPE.to_owned(),
            label_selector: scope.selector.clone(),
            start: scope.start_ms,
            end: scope.end_ms,
            max_nodes: Some(1),
            ..Default::default()
        };
        let response = self
            .http
            .post(format!(
                "http://{}/querier.v1.QuerierService/SelectMergeStacktraces",
                self.target
            ))
            .header("content-type", "application/proto")
            .body(request.encode_to_vec())
            .send()
            .map_err(|err| format!("the CPU flame graph: {err}"))?;
        let status = response.status();
        let body = response.bytes().map_err(|err| format!("the CPU flame graph: {err}"))?;
        if !status.is_success() {
            return Err(format!(
                "the CPU flame graph: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let answer = querier::SelectMergeStacktracesResponse::decode(body.as_ref())
            .map_err(|err| format!("the CPU flame graph: {err}"))?;
        Ok(answer.flamegraph.map_or(0, |graph| graph.total))
    }

    /// Runs `kind` `times` times; the latencies.
    pub fn repeat(&self, kind: QueryKind, scope: &Scope, times: usize) -> Result<Latencies, String> {
        let mut latencies = Latencies::default();
        for _ in 0..times {
            latencies.push(self.run(kind, scope)?);
        }
        Ok(latencies)
    }

    /// Runs the production mix for `duration`, each query on one of
    /// `selectors` in turn; the latencies by kind.
    pub fn mix(
        &self,
        scope: &Scope,
        selectors: &[String],
        duration: Duration,
    ) -> Result<Vec<(QueryKind, Latencies)>, String> {
        let mut by_kind: Vec<(QueryKind, Latencies)> = PRODUCTION_MIX
            .iter()
            .map(|(kind, _)| (*kind, Latencies::default()))
            .collect();
        let total: u32 = PRODUCTION_MIX.iter().map(|(_, weight)| weight).sum();
        let started = Instant::now();
        let mut turn: u64 = 0;
        while started.elapsed() < duration {
            // A fixed low-discrepancy walk over the weights: the mix holds
            // over short runs too.
            let point = ((turn.wrapping_mul(2_654_435_761) % u64::from(total)) as u32) + 1;
            let mut at = 0;
            let index = PRODUCTION_MIX
                .iter()
                .position(|(_, weight)| {
                    at += weight;
                    point <= at
                })
                .unwrap_or(0);
            let scope = Scope {
                selector: selectors
                    .get(turn as usize % selectors.len().max(1))
                    .cloned()
                    .unwrap_or_else(|| scope.selector.clone()),
                ..scope.clone()
            };
            let latency = self.run(PRODUCTION_MIX[index].0, &scope)?;
            by_kind[index].1.push(latency);
            turn += 1;
        }
        Ok(by_kind)
    }
}
