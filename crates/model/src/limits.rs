//! The per-tenant limits: what a profile and its series labels are
//! validated against, and how many series a tenant may keep active. Names
//! and defaults follow Pyroscope's `limits` block.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The limits of a tenant: the defaults with the tenant's overrides.
pub type TenantLimits = Arc<dyn Fn(&str) -> Arc<Limits> + Send + Sync>;

/// Per-tenant limits; a count or size of `0` means "no limit", a duration
/// of `0s` turns that window check off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Ingestion rate of the tenant in MiB/s of uncompressed profiles
    /// (labels included), shared by all distributors: each takes an equal
    /// part. `0` means no limit.
    pub ingestion_rate_mb: f64,
    /// Burst of the rate limit in MiB, per distributor; a single profile
    /// larger than this is always refused.
    pub ingestion_burst_size_mb: f64,
    /// Largest request body in MiB, both as sent and after decompression
    /// of its profiles. `0` means no limit.
    pub ingestion_body_limit_mb: f64,
    /// Longest label name, in bytes.
    pub max_label_name_length: usize,
    /// Longest label value, in bytes.
    pub max_label_value_length: usize,
    /// Most labels a series may have (all of them, `__name__` included).
    pub max_label_names_per_series: usize,
    /// Largest profile after decompression, in bytes.
    pub max_profile_size_bytes: usize,
    /// Most samples in one profile.
    pub max_profile_stacktrace_samples: usize,
    /// Most labels on one sample.
    pub max_profile_stacktrace_sample_labels: usize,
    /// Deeper stacks are truncated to the frames closest to the root.
    pub max_profile_stacktrace_depth: usize,
    /// Longer symbols (any string of the profile) keep their last bytes.
    pub max_profile_symbol_value_length: usize,
    /// Profiles older than this (by their own timestamp) are rejected.
    #[serde(with = "humantime_serde")]
    pub reject_older_than: Duration,
    /// Profiles newer than this are rejected.
    #[serde(with = "humantime_serde")]
    pub reject_newer_than: Duration,
    /// When false, label names must follow the legacy Prometheus rules
    /// (dots allowed) and dots are replaced by underscores.
    pub disable_label_sanitization: bool,
    /// Most active series (seen in the last 10 minutes) of the tenant on
    /// one ingester.
    pub max_local_series_per_tenant: usize,
    /// Most active series of the tenant in the whole cluster; each
    /// ingester takes its share (`limit / healthy ingesters × RF`).
    pub max_global_series_per_tenant: usize,
    /// Longest time range of a query (`0s`: any).
    #[serde(with = "humantime_serde")]
    pub max_query_length: Duration,
    /// How far back queries may look; older parts of a range are cut off
    /// (`0s`: no limit).
    #[serde(with = "humantime_serde")]
    pub max_query_lookback: Duration,
    /// Nodes of a flame graph when the query does not say.
    pub max_flamegraph_nodes_default: usize,
    /// Most nodes a query may ask for (`0`: any).
    pub max_flamegraph_nodes_max: usize,
    /// Most memory the call trees of one query may take, in bytes (an
    /// upper bound of what they allocate): on the querier every partial
    /// tree, the merged one and the answer made from it together; on an
    /// ingester the tree of each merge request (`0`: no limit).
    pub max_query_memory_bytes: usize,
    /// How long the tenant's blocks are kept in object storage; older ones
    /// are deleted by the compactor (`0s`: forever).
    #[serde(with = "humantime_serde")]
    pub compactor_blocks_retention_period: Duration,
}

/// The flag of [`Limits::max_query_memory_bytes`], for its errors.
pub const MAX_QUERY_MEMORY_FLAG: &str = "-querier.max-query-memory-bytes";

impl Default for Limits {
    fn default() -> Self {
        Self {
            ingestion_rate_mb: 4.0,
            ingestion_burst_size_mb: 2.0,
            ingestion_body_limit_mb: 256.0,
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_label_names_per_series: 30,
            max_profile_size_bytes: 4 * 1024 * 1024,
            max_profile_stacktrace_samples: 16_000,
            max_profile_stacktrace_sample_labels: 100,
            max_profile_stacktrace_depth: 1000,
            max_profile_symbol_value_length: 65_535,
            reject_older_than: Duration::from_secs(3600),
            reject_newer_than: Duration::from_secs(600),
            disable_label_sanitization: true,
            max_local_series_per_tenant: 0,
            max_global_series_per_tenant: 5000,
            // Pyroscope's are 24h and 7d; compacted, downsampled blocks make
            // a month cost about twice a day, and what is kept is the
            // retention period's to say (ADR 016).
            max_query_length: Duration::from_secs(30 * 24 * 3600),
            max_query_lookback: Duration::ZERO,
            max_flamegraph_nodes_default: 8192,
            max_flamegraph_nodes_max: 1_048_576,
            max_query_memory_bytes: 512 << 20,
            compactor_blocks_retention_period: Duration::ZERO,
        }
    }
}

impl Limits {
    /// Limits that accept anything a well-formed profile can hold; for
    /// tools and tests that read old recordings.
    pub fn unlimited() -> Self {
        Self {
            ingestion_rate_mb: 0.0,
            ingestion_burst_size_mb: 0.0,
            ingestion_body_limit_mb: 0.0,
            max_label_name_length: 0,
            max_label_value_length: 0,
            max_label_names_per_series: 0,
            max_profile_size_bytes: 0,
            max_profile_stacktrace_samples: 0,
            max_profile_stacktrace_sample_labels: 0,
            max_profile_stacktrace_depth: 0,
            max_profile_symbol_value_length: 0,
            reject_older_than: Duration::ZERO,
            reject_newer_than: Duration::ZERO,
            disable_label_sanitization: true,
            max_local_series_per_tenant: 0,
            max_global_series_per_tenant: 0,
            max_query_length: Duration::ZERO,
            max_query_lookback: Duration::ZERO,
            max_flamegraph_nodes_default: 0,
            max_flamegraph_nodes_max: 0,
            max_query_memory_bytes: 0,
            compactor_blocks_retention_period: Duration::ZERO,
        }
    }
}

impl Limits {
    /// A budget for one query of this tenant's (see
    /// [`Limits::max_query_memory_bytes`]).
    pub fn query_budget(&self) -> Arc<crate::budget::RequestBudget> {
        Arc::new(crate::budget::RequestBudget::for_query(
            self.max_query_memory_bytes,
            MAX_QUERY_MEMORY_FLAG,
        ))
    }

    /// The body limit in bytes; `usize::MAX` when there is none.
    pub fn ingestion_body_limit_bytes(&self) -> usize {
        let mb = self.ingestion_body_limit_mb;
        if mb > 0.0 {
            // Saturating float-to-int conversion: huge values become
            // usize::MAX.
            (mb * 1_048_576.0) as usize
        } else {
            usize::MAX
        }
    }
}

/// Returns whether `value` exceeds `limit`, where `0` means no limit.
pub(crate) fn exceeds(value: usize, limit: usize) -> bool {
    limit != 0 && value > limit
}
