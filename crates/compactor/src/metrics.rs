//! The compactor's metrics: what rounds did, how long they took, when one
//! last succeeded, which tenants this compactor owns and the blocks each
//! of them has per compaction level.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use flamedb_storage::BlockMeta;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLevel {
    tenant: String,
    level: u32,
}

#[derive(Debug)]
pub(crate) struct CompactorMetrics {
    pub runs: Counter,
    pub failures: Counter,
    pub compactions: Counter,
    pub blocks_compacted: Counter,
    pub blocks_expired: Counter,
    pub blocks_deleted: Counter,
    pub groups_over_memory: Counter,
    pub blocks_marked_no_compact: Counter,
    pub input_bytes: Counter,
    pub output_bytes: Counter,
    pub round_seconds: Histogram,
    pub last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub tenants_discovered: Gauge,
    pub tenants_owned: Gauge,
    blocks: Family<TenantLevel, Gauge>,
    /// The series of `blocks` set by the last round, so a tenant that
    /// passed to another compactor (or a level it no longer has) is
    /// removed rather than reported stale forever.
    blocks_reported: Mutex<HashSet<TenantLevel>>,
}

impl CompactorMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            runs: Counter::default(),
            failures: Counter::default(),
            compactions: Counter::default(),
            blocks_compacted: Counter::default(),
            blocks_expired: Counter::default(),
            blocks_deleted: Counter::default(),
            groups_over_memory: Counter::default(),
            blocks_marked_no_compact: Counter::default(),
            input_bytes: Counter::default(),
            output_bytes: Counter::default(),
            round_seconds: Histogram::new([1.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0]),
            last_success: Gauge::default(),
            tenants_discovered: Gauge::default(),
            tenants_owned: Gauge::default(),
            blocks: Family::default(),
            blocks_reported: Mutex::new(HashSet::new()),
        };
        let counters = [
            ("flamedb_compactor_runs", "Compaction rounds run", &metrics.runs),
            (
                "flamedb_compactor_failures",
                "Tenants or compactions of a round that failed (the next round retries)",
                &metrics.failures,
            ),
            (
                "flamedb_compactor_compactions",
                "Blocks written by compaction",
                &metrics.compactions,
            ),
            (
                "flamedb_compactor_blocks_compacted",
                "Blocks replaced by compaction (marked for deletion)",
                &metrics.blocks_compacted,
            ),
            (
                "flamedb_compactor_blocks_expired",
                "Blocks marked for deletion past their tenant's retention period",
                &metrics.blocks_expired,
            ),
            (
                "flamedb_compactor_blocks_deleted",
                "Marked blocks deleted after the deletion delay",
                &metrics.blocks_deleted,
            ),
            (
                "flamedb_compactor_groups_over_memory",
                "Groups of replicas' blocks left uncompacted: not even two of them fit -compactor.max-memory-bytes",
                &metrics.groups_over_memory,
            ),
            (
                "flamedb_compactor_blocks_marked_no_compact",
                "Blocks that could not be read (corrupt), marked not to be compacted again",
                &metrics.blocks_marked_no_compact,
            ),
            (
                "flamedb_compactor_input_bytes",
                "Bytes of the blocks compactions read (as stored in the bucket)",
                &metrics.input_bytes,
            ),
            (
                "flamedb_compactor_output_bytes",
                "Bytes of the blocks compactions wrote",
                &metrics.output_bytes,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "flamedb_compactor_round_duration_seconds",
            "How long compaction rounds took",
            metrics.round_seconds.clone(),
        );
        registry.register(
            "flamedb_compactor_last_successful_run_timestamp_seconds",
            "When the last round without a failure ended (Unix seconds; 0: none yet)",
            metrics.last_success.clone(),
        );
        registry.register(
            "flamedb_compactor_tenants_discovered",
            "Tenants with blocks in the bucket, at the last round",
            metrics.tenants_discovered.clone(),
        );
        registry.register(
            "flamedb_compactor_tenants_owned",
            "Tenants this compactor compacts (owns in the compactor ring), at the last round",
            metrics.tenants_owned.clone(),
        );
        registry.register(
            "flamedb_compactor_blocks",
            "Blocks of each tenant this compactor owns, by compaction level (1: as ingesters wrote them), at the last round",
            metrics.blocks.clone(),
        );
        metrics
    }

    /// Sets the block counts of the tenants owned this round from their
    /// listings (`None`: not listed, the counts are left as they were) and
    /// removes the counts of tenants and levels no longer there.
    pub fn set_blocks<'a>(&self, listings: impl IntoIterator<Item = (&'a str, Option<&'a [BlockMeta]>)>) {
        let mut reported = HashSet::new();
        let Ok(mut previous) = self.blocks_reported.lock() else {
            return;
        };
        for (tenant, blocks) in listings {
            let Some(blocks) = blocks else {
                reported.extend(previous.iter().filter(|key| key.tenant == tenant).cloned());
                continue;
            };
            let mut by_level: BTreeMap<u32, i64> = BTreeMap::new();
            for meta in blocks {
                *by_level.entry(meta.compaction.level.max(1)).or_default() += 1;
            }
            for (level, count) in by_level {
                let key = TenantLevel {
                    tenant: tenant.to_owned(),
                    level,
                };
                self.blocks.get_or_create(&key).set(count);
                reported.insert(key);
            }
        }
        for gone in previous.difference(&reported) {
            self.blocks.remove(gone);
        }
        *previous = reported;
    }
}
