//! What requests may take in this process: the in-flight limits of pushes
//! on the distributor and on the ingester, and the per-request memory
//! limit of every request (reads too), with decoding slots sized to the
//! cores. Pushes and reads never share a budget, so a flood of pushes
//! leaves queries, `/ready` and the ring's heartbeats answering.

use std::sync::Arc;

use flamedb_api::Admission;
use flamedb_model::budget::{BudgetFlags, InflightBudget};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::config::Config;

const REQUEST_MEMORY_FLAG: &str = "-distributor.max-request-memory";

/// The admissions of one process.
#[derive(Debug, Clone)]
pub struct Admissions {
    /// Pushes to the distributor (push.v1, OTLP, `/ingest`).
    pub distributor_pushes: Arc<Admission>,
    /// Pushes from distributors to the ingester.
    pub ingester_pushes: Arc<Admission>,
    /// Reads: the querier's API and the ingester's.
    pub reads: Arc<Admission>,
}

impl Admissions {
    /// The admissions `config` asks for; their in-flight figures are
    /// exported on `registry`.
    pub fn new(config: &Config, registry: &mut Registry) -> Self {
        let request_bytes = bytes(config.distributor.max_request_memory_bytes);
        let decode_slots = std::thread::available_parallelism().map_or(1, usize::from);
        let pushes = |max_requests: usize, max_bytes: u64, count_flag, bytes_flag| {
            let flags = BudgetFlags {
                request_bytes: REQUEST_MEMORY_FLAG,
                inflight_bytes: bytes_flag,
                inflight_requests: count_flag,
            };
            let budget = InflightBudget::new(flags, request_bytes, max_requests, bytes(max_bytes));
            Admission::new(budget, decode_slots)
        };
        let reads = InflightBudget::new(
            BudgetFlags {
                request_bytes: REQUEST_MEMORY_FLAG,
                inflight_bytes: "no limit",
                inflight_requests: "no limit",
            },
            request_bytes,
            0,
            0,
        );
        let admissions = Self {
            distributor_pushes: pushes(
                config.distributor.instance_limits.max_inflight_push_requests,
                config.distributor.instance_limits.max_inflight_push_requests_bytes,
                "-distributor.instance-limits.max-inflight-push-requests",
                "-distributor.instance-limits.max-inflight-push-requests-bytes",
            ),
            ingester_pushes: pushes(
                config.ingester.instance_limits.max_inflight_push_requests,
                config.ingester.instance_limits.max_inflight_push_requests_bytes,
                "-ingester.instance-limits.max-inflight-push-requests",
                "-ingester.instance-limits.max-inflight-push-requests-bytes",
            ),
            reads: Admission::new(reads, decode_slots),
        };
        registry.register_collector(Box::new(admissions.clone()));
        admissions
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// `flamedb_inflight_requests{kind}` and `flamedb_inflight_bytes{kind}`,
/// read from the budgets at each scrape.
impl Collector for Admissions {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kinds = [
            ("distributor_push", &self.distributor_pushes),
            ("ingester_push", &self.ingester_pushes),
            ("read", &self.reads),
        ];
        let figures: [(&str, &str, fn(&InflightBudget) -> usize); 2] = [
            (
                "flamedb_inflight_requests",
                "Requests admitted and not yet answered, by kind (push limits: -*.instance-limits.max-inflight-push-requests)",
                InflightBudget::requests,
            ),
            (
                "flamedb_inflight_bytes",
                "Memory charged by the requests in flight, as what they decode into, by kind (push limits: -*.instance-limits.max-inflight-push-requests-bytes)",
                InflightBudget::bytes,
            ),
        ];
        for (name, help, read) in figures {
            let gauge = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            for (kind, admission) in kinds {
                let value = i64::try_from(read(admission.budget())).unwrap_or(i64::MAX);
                ConstGauge::new(value).encode(family.encode_family(&KindLabel { kind })?)?;
            }
        }
        Ok(())
    }
}

fn bytes(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}
