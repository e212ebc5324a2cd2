//! What requests may take in this process: the in-flight limits of pushes
//! on the distributor and on the ingester, and the per-request memory
//! limit of every request (reads too), with decoding slots sized to the
//! cores. Pushes and reads never share a budget, so a flood of pushes
//! leaves queries, `/ready` and the ring's heartbeats answering.

use std::sync::Arc;

use flamedb_api::Admission;
use flamedb_model::budget::{BudgetFlags, InflightBudget};

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
    pub fn new(config: &Config) -> Self {
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
        Self {
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
        }
    }
}

fn bytes(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}
