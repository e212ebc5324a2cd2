//! The ingester's metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ingester::ReplayReport;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

/// Registered once per process, shared by the ingester's parts.
#[derive(Debug, Clone)]
pub struct IngesterMetrics {
    head_bytes: Gauge,
    profiles: Counter,
    ingested_bytes: Counter,
    refused: Family<Reason, Counter>,
    active_series: Family<Tenant, Gauge>,
    replayed_records: Counter,
    repaired_segments: Counter,
    skipped_records: Counter,
    unreadable_records: Counter,
    sealed: Family<Reason, Counter>,
    flushed_blocks: Counter,
    flush_failures: Counter,
    flush_seconds: Histogram,
    local_blocks: Gauge,
    blocks_not_uploaded: Gauge,
    shipped_blocks: Counter,
    ship_failures: Counter,
    ship_seconds: Histogram,
    deleted_blocks: Family<Reason, Counter>,
}

impl IngesterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            head_bytes: Gauge::default(),
            profiles: Counter::default(),
            ingested_bytes: Counter::default(),
            refused: Family::default(),
            active_series: Family::default(),
            replayed_records: Counter::default(),
            repaired_segments: Counter::default(),
            skipped_records: Counter::default(),
            unreadable_records: Counter::default(),
            sealed: Family::default(),
            flushed_blocks: Counter::default(),
            flush_failures: Counter::default(),
            flush_seconds: Histogram::new([0.01, 0.05, 0.25, 1.0, 5.0, 25.0, 120.0]),
            local_blocks: Gauge::default(),
            blocks_not_uploaded: Gauge::default(),
            shipped_blocks: Counter::default(),
            ship_failures: Counter::default(),
            ship_seconds: Histogram::new([0.05, 0.25, 1.0, 5.0, 25.0, 120.0, 600.0]),
            deleted_blocks: Family::default(),
        };
        registry.register(
            "flamedb_ingester_head_bytes",
            "Memory held by the heads and the delta state of all tenants, as measured from their structures",
            metrics.head_bytes.clone(),
        );
        registry.register(
            "flamedb_ingester_profiles",
            "Profiles applied to the heads (replayed ones included)",
            metrics.profiles.clone(),
        );
        registry.register(
            "flamedb_ingester_head_growth_bytes",
            "Bytes the heads grew by when profiles were applied",
            metrics.ingested_bytes.clone(),
        );
        registry.register(
            "flamedb_ingester_pushes_refused",
            "Pushes refused by the ingester, by reason (memory_limit, tenant_memory_share, max_tenants, series_limit, wal, apply_failed)",
            metrics.refused.clone(),
        );
        registry.register(
            "flamedb_ingester_active_series",
            "Series of each tenant that got a profile in the last 10 minutes (what the series limit counts)",
            metrics.active_series.clone(),
        );
        registry.register(
            "flamedb_ingester_wal_replayed_records",
            "WAL records replayed at start",
            metrics.replayed_records.clone(),
        );
        registry.register(
            "flamedb_ingester_wal_repaired_segments",
            "WAL segments whose torn tail (never acknowledged) was cut off at start",
            metrics.repaired_segments.clone(),
        );
        registry.register(
            "flamedb_ingester_wal_skipped_records",
            "Corrupt WAL records skipped at start with -ingester.wal.skip-corrupt-records (their data is lost)",
            metrics.skipped_records.clone(),
        );
        registry.register(
            "flamedb_ingester_wal_unreadable_records",
            "WAL records skipped at start because they could not be decoded",
            metrics.unreadable_records.clone(),
        );
        registry.register(
            "flamedb_ingester_heads_sealed",
            "Heads taken out of service to be flushed, by reason (window_ended, memory, requested)",
            metrics.sealed.clone(),
        );
        registry.register(
            "flamedb_ingester_flushed_blocks",
            "Blocks written to local disk from heads",
            metrics.flushed_blocks.clone(),
        );
        registry.register(
            "flamedb_ingester_flush_failures",
            "Heads whose block could not be written (kept in memory, tried again)",
            metrics.flush_failures.clone(),
        );
        registry.register(
            "flamedb_ingester_flush_duration_seconds",
            "Time to write one head as a block",
            metrics.flush_seconds.clone(),
        );
        registry.register(
            "flamedb_ingester_local_blocks",
            "Blocks on the ingester's local disk",
            metrics.local_blocks.clone(),
        );
        registry.register(
            "flamedb_ingester_blocks_not_uploaded",
            "Local blocks waiting to be uploaded to object storage",
            metrics.blocks_not_uploaded.clone(),
        );
        registry.register(
            "flamedb_ingester_shipped_blocks",
            "Blocks uploaded to object storage",
            metrics.shipped_blocks.clone(),
        );
        registry.register(
            "flamedb_ingester_ship_failures",
            "Block uploads that failed (retried with backoff)",
            metrics.ship_failures.clone(),
        );
        registry.register(
            "flamedb_ingester_ship_duration_seconds",
            "Time to upload one block",
            metrics.ship_seconds.clone(),
        );
        registry.register(
            "flamedb_ingester_local_blocks_deleted",
            "Uploaded blocks deleted from local disk, by reason (retention, disk_low)",
            metrics.deleted_blocks.clone(),
        );
        metrics
    }

    pub(crate) fn shipped(&self, took: std::time::Duration) {
        self.shipped_blocks.inc();
        self.ship_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn ship_failed(&self) {
        self.ship_failures.inc();
    }

    pub(crate) fn local_block_deleted(&self, reason: &'static str) {
        self.deleted_blocks.get_or_create(&Reason { reason }).inc();
    }

    pub(crate) fn sealed(&self, reason: &'static str) {
        self.sealed.get_or_create(&Reason { reason }).inc();
    }

    pub(crate) fn flushed(&self, took: std::time::Duration) {
        self.flushed_blocks.inc();
        self.flush_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn flush_failed(&self) {
        self.flush_failures.inc();
    }

    pub(crate) fn set_local_blocks(&self, blocks: usize, not_uploaded: usize) {
        self.local_blocks.set(i64::try_from(blocks).unwrap_or(i64::MAX));
        self.blocks_not_uploaded
            .set(i64::try_from(not_uploaded).unwrap_or(i64::MAX));
    }

    pub(crate) fn ingested(&self, grown_bytes: usize) {
        self.profiles.inc();
        self.ingested_bytes.inc_by(grown_bytes as u64);
    }

    pub(crate) fn set_head_bytes(&self, bytes: usize) {
        self.head_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }

    /// Drops the series of a tenant the ingester no longer holds.
    pub(crate) fn forget_tenant(&self, tenant: &str) {
        self.active_series.remove(&Tenant {
            tenant: tenant.to_owned(),
        });
    }

    pub(crate) fn set_active_series(&self, tenant: &str, active: usize) {
        self.active_series
            .get_or_create(&Tenant {
                tenant: tenant.to_owned(),
            })
            .set(i64::try_from(active).unwrap_or(i64::MAX));
    }

    pub(crate) fn record_replay(&self, report: &ReplayReport) {
        self.replayed_records.inc_by(report.wal.records);
        self.repaired_segments.inc_by(report.wal.repaired_segments);
        self.skipped_records.inc_by(report.wal.skipped_records);
        self.unreadable_records.inc_by(report.unreadable_records);
    }
}
