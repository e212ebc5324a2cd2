//! The distributor's metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Discard {
    reason: &'static str,
    tenant: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// Registered once per process.
#[derive(Debug, Clone)]
pub struct DistributorMetrics {
    received_profiles: Family<Tenant, Counter>,
    received_bytes: Family<Tenant, Counter>,
    discarded_profiles: Family<Discard, Counter>,
    discarded_bytes: Family<Discard, Counter>,
    push_seconds: Histogram,
    ingester_pushes: Family<Outcome, Counter>,
    replicated_series: Family<Outcome, Counter>,
}

impl DistributorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            received_profiles: Family::default(),
            received_bytes: Family::default(),
            discarded_profiles: Family::default(),
            discarded_bytes: Family::default(),
            push_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            ingester_pushes: Family::default(),
            replicated_series: Family::default(),
        };
        registry.register(
            "flamedb_distributor_received_profiles",
            "Profiles received, decoded, by tenant (before limits and validation)",
            metrics.received_profiles.clone(),
        );
        registry.register(
            "flamedb_distributor_received_bytes",
            "Uncompressed bytes of the profiles received (labels included), by tenant",
            metrics.received_bytes.clone(),
        );
        registry.register(
            "flamedb_distributor_discarded_profiles",
            "Profiles refused, by reason and tenant",
            metrics.discarded_profiles.clone(),
        );
        registry.register(
            "flamedb_distributor_discarded_bytes",
            "Bytes of the profiles refused, by reason and tenant",
            metrics.discarded_bytes.clone(),
        );
        registry.register(
            "flamedb_distributor_push_duration_seconds",
            "Time from a push's body to its answer: decoding, preparing and writing to a quorum of replicas (reached or failed)",
            metrics.push_seconds.clone(),
        );
        registry.register(
            "flamedb_distributor_ingester_pushes",
            "Batched pushes to ingesters by outcome: ok, error, timeout",
            metrics.ingester_pushes.clone(),
        );
        registry.register(
            "flamedb_distributor_replicated_series",
            "Series-profiles by replication outcome: quorum (enough replicas acknowledged) or failed",
            metrics.replicated_series.clone(),
        );
        metrics
    }

    pub(crate) fn received(&self, tenant: &str, bytes: usize) {
        let tenant = Tenant {
            tenant: tenant.to_owned(),
        };
        self.received_profiles.get_or_create(&tenant).inc();
        self.received_bytes.get_or_create(&tenant).inc_by(bytes as u64);
    }

    pub(crate) fn discarded(&self, tenant: &str, reason: &'static str, bytes: usize) {
        let key = Discard {
            reason,
            tenant: tenant.to_owned(),
        };
        self.discarded_profiles.get_or_create(&key).inc();
        self.discarded_bytes.get_or_create(&key).inc_by(bytes as u64);
    }

    pub(crate) fn push_duration(&self, seconds: f64) {
        self.push_seconds.observe(seconds);
    }

    pub(crate) fn ingester_push(&self, outcome: &'static str) {
        self.ingester_pushes.get_or_create(&Outcome { outcome }).inc();
    }

    pub(crate) fn replicated(&self, outcome: &'static str, series: usize) {
        self.replicated_series
            .get_or_create(&Outcome { outcome })
            .inc_by(series as u64);
    }
}
