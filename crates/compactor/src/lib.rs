//! The compactor: per tenant, the blocks in object storage that fall in one
//! time window (every ingester's copy of it, RF copies of each profile)
//! become one block holding each profile once; the blocks it replaces are
//! marked for deletion (readers ignore them at once) and deleted after a
//! delay, so a query that listed them before can still read them.
//!
//! ```text
//!  every interval, per tenant:
//!   blocks past the tenant's retention ──▶ marked
//!   per block range (1h, 2h, 8h, 1d, 7d): two or more blocks wholly inside one
//!   window of it, the window ended `first_level_wait` ago
//!   ──download──▶ compact (each profile once) ──upload the new block──▶
//!   mark the sources ──after deletion_delay──▶ delete
//! ```
//!
//! The first range merges the replicas' copies of a window (ingesters
//! write one block per window each); the longer ones merge windows, so a
//! query over a long range opens few blocks.
//!
//! A compaction holds its inputs in memory; what they take is estimated
//! from their metas before anything is downloaded ([`memory_estimate`]),
//! and a group is cut to the blocks that fit `max_memory_bytes`, oldest
//! first, skipping those that do not. A group of which not even two blocks
//! fit is left as it is, counted and logged: queries still count each
//! profile once.
//!
//! Every step is safe to cut short: a half-uploaded block has no
//! `meta.json`, is never read, and is deleted after the deletion delay;
//! sources are marked only once the new block is complete, and while both
//! are listed queries count each profile once (by ID). The new block's ID
//! follows from its data, so the round that redoes a compaction cut short
//! rewrites the same block (and never marks it), and compactors that race
//! on one bucket write one block: they repeat work, never data. A tenant
//! or a compaction that fails is logged and counted; the others go on. A
//! block that cannot be read gets a no-compact mark, and its window is
//! compacted without it.
//!
//! Each round ends a tenant with a new listing of its blocks written as
//! its bucket index, which queriers read instead of listing the bucket.
//!
//! Several compactors split the tenants of a bucket
//! ([`Compactor::with_ownership`]; the binary gives each tenant to the
//! first healthy compactor of the compactor ring from the tenant's token).
//! A round checks ownership again before each tenant; while the ring
//! changes, two may still work on one tenant at once: by the above they
//! repeat work, never data.

mod metrics;
mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flamedb_storage::block::{Downsample, check_resolutions};
use flamedb_storage::{Block, BlockError, BlockMeta, Bucket, BucketError, BucketIndex, INDEX_VERSION, Ulid, compact};
use metrics::CompactorMetrics;
use plan::output_id;
pub use plan::{memory_estimate, plan, within_memory};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How the compactor works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactorConfig {
    /// Where blocks are downloaded and written (emptied at start).
    pub data_dir: PathBuf,
    /// How often a round runs.
    pub interval: Duration,
    /// How long after a window ends its blocks are compacted, so every
    /// replica has uploaded its copy.
    pub first_level_wait: Duration,
    /// The widths of the windows blocks are compacted by, shortest first,
    /// each a multiple of the one before.
    pub block_ranges: Vec<Duration>,
    /// How long a marked block stays before it is deleted.
    pub deletion_delay: Duration,
    /// Most memory one compaction may take, as [`memory_estimate`] counts
    /// it (`0`: no limit).
    pub max_memory_bytes: u64,
    /// The time buckets a compacted block also keeps each series'
    /// profiles merged by, finest first, each a multiple of the one before
    /// (none: not downsampled).
    pub downsampling_resolutions: Vec<Duration>,
}

/// Why a round, a tenant or a compaction failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactorError {
    #[error("cannot list the tenants of the bucket: {0}")]
    ListTenants(#[source] Box<BucketError>),
    #[error("tenant {tenant}: {source}")]
    Bucket {
        tenant: String,
        #[source]
        source: Box<BucketError>,
    },
    #[error("tenant {tenant}: {source}")]
    Block {
        tenant: String,
        #[source]
        source: Box<BlockError>,
    },
    #[error("compactor directory {path}: {reason}")]
    NotOurs { path: String, reason: String },
    #[error("compactor directory {path}: {source}")]
    Local {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a compaction task failed: {0}")]
    Task(String),
    #[error("compactor configuration: {0}")]
    Config(String),
    /// A block of the group cannot be read: it gets a no-compact mark.
    #[error("tenant {tenant}: block {block} cannot be read: {source}")]
    CorruptInput {
        tenant: String,
        block: Ulid,
        #[source]
        source: Box<BlockError>,
    },
}

/// What a round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Blocks written.
    pub blocks_written: usize,
    /// Blocks replaced (marked for deletion).
    pub blocks_compacted: usize,
    /// Blocks marked for deletion past their tenant's retention.
    pub blocks_expired: usize,
    /// Groups of replicas' blocks left as they are: not even two of them
    /// fit `max_memory_bytes`.
    pub groups_over_memory: usize,
    /// Unfinished uploads (no `meta.json`) older than the deletion delay,
    /// deleted.
    pub incomplete_deleted: usize,
    /// Tenants or compactions that failed (logged; the next round retries).
    pub failures: usize,
    /// Marked blocks deleted.
    pub blocks_deleted: usize,
    /// Blocks that could not be read, marked not to be compacted again.
    pub blocks_marked_no_compact: usize,
    /// Tenants whose bucket index was written.
    pub indexes_written: usize,
}

impl RoundReport {
    /// Whether the round changed anything besides the indexes.
    fn did_something(&self) -> bool {
        *self
            != RoundReport {
                indexes_written: self.indexes_written,
                ..RoundReport::default()
            }
    }
}

/// Marks a directory as the compactor's work directory.
const DIR_MARKER: &str = ".flamedb-compactor";

/// How long a tenant's blocks are kept (`0`: forever).
pub type TenantRetention = Arc<dyn Fn(&str) -> Duration + Send + Sync>;

/// Whether this compactor compacts a tenant now (several compactors split
/// the tenants of one bucket).
pub type TenantOwnership = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Compacts the blocks of a bucket.
pub struct Compactor {
    bucket: Bucket,
    config: CompactorConfig,
    retention: TenantRetention,
    owns: TenantOwnership,
    metrics: CompactorMetrics,
}

impl std::fmt::Debug for Compactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compactor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Compactor {
    /// A compactor of `bucket`; empties its data directory of what a round
    /// cut short left there. A directory that is not empty and not marked
    /// as the compactor's (`.flamedb-compactor`) is refused, never emptied:
    /// a mistyped path loses nobody's data.
    pub fn new(
        bucket: Bucket,
        config: CompactorConfig,
        retention: TenantRetention,
        registry: &mut Registry,
    ) -> Result<Self, CompactorError> {
        if !config.downsampling_resolutions.is_empty() {
            let resolutions: Vec<i64> = config.downsampling_resolutions.iter().copied().map(millis).collect();
            check_resolutions(&resolutions).map_err(CompactorError::Config)?;
        }
        let dir = &config.data_dir;
        let local = |source| CompactorError::Local {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(local)?;
        let marker = dir.join(DIR_MARKER);
        if !marker.exists() {
            if std::fs::read_dir(dir).map_err(local)?.next().is_some() {
                return Err(CompactorError::NotOurs {
                    path: dir.display().to_string(),
                    reason: format!("not empty and not the compactor's (no {DIR_MARKER}); choose an empty directory"),
                });
            }
            std::fs::write(
                &marker,
                b"flamedb compactor work directory: contents are removed at start\n",
            )
            .map_err(local)?;
        }
        for entry in std::fs::read_dir(dir).map_err(local)? {
            let path = entry.map_err(local)?.path();
            if path != marker {
                std::fs::remove_dir_all(&path).map_err(local)?;
            }
        }
        Ok(Self {
            bucket,
            config,
            retention,
            owns: Arc::new(|_: &str| true),
            metrics: CompactorMetrics::register(registry),
        })
    }

    /// Compacts only the tenants `owns` says (every tenant without it).
    /// Whoever decides must give each tenant to one compactor at a time,
    /// mostly: two that both take a tenant for a while repeat work, never
    /// data (see the module documentation).
    pub fn with_ownership(mut self, owns: TenantOwnership) -> Self {
        self.owns = owns;
        self
    }

    /// Runs a round every interval until `stop`.
    pub fn spawn(self: Arc<Self>, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(self.config.interval) => {}
                }
                // Stopping abandons a round: the next start finishes it.
                tokio::select! {
                    () = stop.cancelled() => break,
                    result = self.run_once(now_ms()) => match result {
                        Ok(report) if report.did_something() => info!(
                            blocks_written = report.blocks_written,
                            blocks_compacted = report.blocks_compacted,
                            blocks_expired = report.blocks_expired,
                            blocks_deleted = report.blocks_deleted,
                            groups_over_memory = report.groups_over_memory,
                            blocks_marked_no_compact = report.blocks_marked_no_compact,
                            incomplete_deleted = report.incomplete_deleted,
                            failures = report.failures,
                            "compaction round done"
                        ),
                        Ok(_) => {}
                        Err(err) => error!(error = %err, "compaction round failed; the next round retries"),
                    },
                }
            }
        })
    }

    /// One round over every tenant this compactor owns, as of `now_ms`.
    /// Fails only when the tenants cannot be listed: a tenant or a
    /// compaction that fails is logged and counted, and the others go on.
    pub async fn run_once(&self, now_ms: i64) -> Result<RoundReport, CompactorError> {
        let started = Instant::now();
        self.metrics.runs.inc();
        let tenants = self.bucket.list_tenants().await.map_err(|source| {
            self.metrics.failures.inc();
            CompactorError::ListTenants(Box::new(source))
        })?;
        self.metrics.tenants_discovered.set(gauge_value(tenants.len()));
        let owned: Vec<String> = tenants.into_iter().filter(|tenant| (self.owns)(tenant)).collect();
        self.metrics.tenants_owned.set(gauge_value(owned.len()));
        let mut report = RoundReport::default();
        let mut listings: Vec<(&str, Option<Vec<BlockMeta>>)> = Vec::with_capacity(owned.len());
        for tenant in &owned {
            // A round can be long: a tenant passed on meanwhile is left
            // (and its block counts go).
            if !(self.owns)(tenant) {
                continue;
            }
            if let Err(err) = self.tenant_round(tenant, now_ms, &mut report).await {
                error!(tenant, error = %err, "compacting the tenant failed; the next round retries");
                self.failed(&mut report);
            }
            // Whatever the round did, the index is made from a new listing.
            let listing = match self.write_index(tenant).await {
                Ok(blocks) => {
                    report.indexes_written += 1;
                    Some(blocks)
                }
                Err(err) => {
                    error!(tenant, error = %err, "cannot write the bucket index; queriers list the bucket until a round writes it");
                    self.failed(&mut report);
                    None
                }
            };
            listings.push((tenant, listing));
        }
        self.metrics
            .set_blocks(listings.iter().map(|(tenant, blocks)| (*tenant, blocks.as_deref())));
        self.metrics.round_seconds.observe(started.elapsed().as_secs_f64());
        if report.failures == 0 {
            self.metrics.last_success.set(flamedb_model::now_nanos() as f64 / 1e9);
        }
        Ok(report)
    }

    /// Lists the tenant's blocks and writes them as its bucket index; the
    /// blocks listed.
    async fn write_index(&self, tenant: &str) -> Result<Vec<BlockMeta>, CompactorError> {
        let bucket_error = |source| CompactorError::Bucket {
            tenant: tenant.to_owned(),
            source: Box::new(source),
        };
        // Taken before the listing: blocks uploaded since may be missing.
        let updated_at_ms = now_ms();
        let blocks = self.bucket.list_blocks(tenant).await.map_err(bucket_error)?;
        let index = BucketIndex {
            version: INDEX_VERSION,
            updated_at_ms,
            deletion_delay_ms: millis(self.config.deletion_delay),
            blocks,
        };
        self.bucket.write_index(tenant, &index).await.map_err(bucket_error)?;
        Ok(index.blocks)
    }

    fn failed(&self, report: &mut RoundReport) {
        self.metrics.failures.inc();
        report.failures += 1;
    }

    /// Retention, deletions due, then compactions of one tenant.
    async fn tenant_round(&self, tenant: &str, now_ms: i64, report: &mut RoundReport) -> Result<(), CompactorError> {
        let bucket_error = |source| CompactorError::Bucket {
            tenant: tenant.to_owned(),
            source: Box::new(source),
        };
        let mut metas = self.bucket.list_blocks(tenant).await.map_err(bucket_error)?;
        let retention_ms = millis((self.retention)(tenant));
        if retention_ms > 0 {
            let oldest_kept_ms = now_ms.saturating_sub(retention_ms);
            for meta in metas.iter().filter(|meta| meta.max_time < oldest_kept_ms) {
                self.bucket
                    .mark_for_deletion(tenant, meta.id)
                    .await
                    .map_err(bucket_error)?;
                info!(tenant, block = %meta.id, max_time = meta.max_time, "block past the retention period marked for deletion");
                self.metrics.blocks_expired.inc();
                report.blocks_expired += 1;
            }
            metas.retain(|meta| meta.max_time >= oldest_kept_ms);
        }
        let delay_ms = millis(self.config.deletion_delay);
        for (id, marked_ms) in self.bucket.marked_for_deletion(tenant).await.map_err(bucket_error)? {
            if marked_ms.saturating_add(delay_ms) <= now_ms {
                self.bucket.delete_block(tenant, id).await.map_err(bucket_error)?;
                self.metrics.blocks_deleted.inc();
                report.blocks_deleted += 1;
            }
        }
        // Uploads cut short by a crash of whoever uploaded are never
        // finished under that ID: deleted once the delay has passed, and
        // never while an upload may still be going on.
        let incomplete_ms = delay_ms.max(millis(UPLOAD_GRACE));
        for (id, modified_ms) in self.bucket.incomplete_blocks(tenant).await.map_err(bucket_error)? {
            if modified_ms.saturating_add(incomplete_ms) <= now_ms {
                self.bucket.delete_block(tenant, id).await.map_err(bucket_error)?;
                report.incomplete_deleted += 1;
            }
        }
        // A block that could not be read stays as it is (queries still
        // read what they can of it; retention still deletes it).
        let no_compact = self.bucket.marked_no_compact(tenant).await.map_err(bucket_error)?;
        metas.retain(|meta| !no_compact.contains(&meta.id));
        let ranges: Vec<i64> = self.config.block_ranges.iter().copied().map(millis).collect();
        let wait_ms = millis(self.config.first_level_wait);
        for group in plan(&metas, &ranges, now_ms, wait_ms) {
            let Some(group) = within_memory(&metas, &group, self.config.max_memory_bytes) else {
                let replicas = group
                    .iter()
                    .any(|id| metas.iter().any(|meta| meta.id == *id && meta.compaction.level <= 1));
                if replicas {
                    error!(
                        tenant,
                        blocks = group.len(),
                        max_memory_bytes = self.config.max_memory_bytes,
                        "the replicas' blocks of a window do not fit -compactor.max-memory-bytes together; they stay uncompacted, each profile stored RF times"
                    );
                    self.metrics.groups_over_memory.inc();
                    report.groups_over_memory += 1;
                } else {
                    info!(
                        tenant,
                        blocks = group.len(),
                        max_memory_bytes = self.config.max_memory_bytes,
                        "compacted blocks of a longer window do not fit -compactor.max-memory-bytes together; they stay as they are (queries over them open more blocks)"
                    );
                }
                continue;
            };
            match self.compact_group(tenant, &metas, &group).await {
                Ok(replaced) => {
                    report.blocks_written += 1;
                    report.blocks_compacted += replaced;
                }
                Err(CompactorError::CorruptInput { block, source, .. }) => {
                    error!(tenant, %block, error = %source, "a block cannot be read; it is marked not to be compacted, and its window is compacted without it next round");
                    self.failed(report);
                    let reason = source.to_string();
                    self.bucket
                        .mark_no_compact(tenant, block, &reason)
                        .await
                        .map_err(bucket_error)?;
                    self.metrics.blocks_marked_no_compact.inc();
                    report.blocks_marked_no_compact += 1;
                }
                Err(err) => {
                    error!(tenant, blocks = ?group, error = %err, "a compaction failed; the next round retries");
                    self.failed(report);
                }
            }
        }
        Ok(())
    }

    /// Compacts the blocks `group` of `tenant` into one, uploads it, then
    /// marks them for deletion; how many it replaced. The work directory
    /// is removed however it ends.
    async fn compact_group(&self, tenant: &str, metas: &[BlockMeta], group: &[Ulid]) -> Result<usize, CompactorError> {
        let work = self.config.data_dir.join(tenant);
        let result = self.compact_group_in(tenant, metas, group, &work).await;
        match tokio::fs::remove_dir_all(&work).await {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound && result.is_ok() => Err(CompactorError::Local {
                path: work.display().to_string(),
                source: err,
            }),
            _ => result,
        }
    }

    async fn compact_group_in(
        &self,
        tenant: &str,
        metas: &[BlockMeta],
        group: &[Ulid],
        work: &Path,
    ) -> Result<usize, CompactorError> {
        let bucket_error = |source| CompactorError::Bucket {
            tenant: tenant.to_owned(),
            source: Box::new(source),
        };
        let inputs_dir = work.join("inputs");
        tokio::fs::create_dir_all(&inputs_dir)
            .await
            .map_err(|source| CompactorError::Local {
                path: inputs_dir.display().to_string(),
                source,
            })?;
        let corrupt = |block: Ulid, source: BlockError| CompactorError::CorruptInput {
            tenant: tenant.to_owned(),
            block,
            source: Box::new(source),
        };
        let mut inputs: Vec<(Ulid, PathBuf)> = Vec::with_capacity(group.len());
        for &id in group {
            let dir = match self.bucket.download_block(tenant, id, &inputs_dir).await {
                Ok(dir) => dir,
                Err(BucketError::Block(source @ BlockError::Corrupt { .. })) => return Err(corrupt(id, source)),
                Err(err) => return Err(bucket_error(err)),
            };
            inputs.push((id, dir));
        }
        // The same data always makes the same block: compactors that race
        // write one block, and a round that redoes a compaction cut short
        // rewrites it rather than adding another.
        let id = output_id(metas, group);
        let output_parent = work.to_owned();
        let resolutions = &self.config.downsampling_resolutions;
        let downsample = (!resolutions.is_empty()).then(|| Downsample {
            resolutions_ms: resolutions.iter().copied().map(millis).collect(),
        });
        let dirs = inputs.clone();
        let compacted = tokio::task::spawn_blocking(move || {
            let blocks = dirs
                .iter()
                .map(|(_, dir)| Block::open(dir))
                .collect::<Result<Vec<_>, _>>()?;
            compact(&blocks, &output_parent, id, downsample)
        })
        .await
        .map_err(|err| CompactorError::Task(err.to_string()))?
        .map_err(|source| {
            // Damage is reported under the path of the input holding it.
            let damaged = match &source {
                BlockError::Corrupt { path, .. } => inputs
                    .iter()
                    .find(|(_, dir)| Path::new(path).starts_with(dir))
                    .map(|(block, _)| *block),
                _ => None,
            };
            match damaged {
                Some(block) => corrupt(block, source),
                None => CompactorError::Block {
                    tenant: tenant.to_owned(),
                    source: Box::new(source),
                },
            }
        })?;
        self.bucket
            .upload_block(tenant, &work.join(id.to_string()), &compacted)
            .await
            .map_err(bucket_error)?;
        // Only now that the new block is complete do its sources go (the
        // new block itself, when a redo had it among them, stays).
        let replaced: Vec<Ulid> = group.iter().copied().filter(|source| *source != id).collect();
        for &source in &replaced {
            self.bucket
                .mark_for_deletion(tenant, source)
                .await
                .map_err(bucket_error)?;
        }
        info!(
            tenant,
            block = %id,
            sources = replaced.len(),
            profiles = compacted.stats.num_profiles,
            min_time = compacted.min_time,
            max_time = compacted.max_time,
            "blocks compacted"
        );
        self.metrics.compactions.inc();
        self.metrics.blocks_compacted.inc_by(replaced.len() as u64);
        let inputs = metas.iter().filter(|meta| group.contains(&meta.id));
        self.metrics.input_bytes.inc_by(inputs.map(stored_bytes).sum());
        self.metrics.output_bytes.inc_by(stored_bytes(&compacted));
        Ok(replaced.len())
    }
}

/// A block without `meta.json` whose last object is younger than this may
/// still be uploading (its meta comes last): it is never deleted.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(3600);

/// The bytes of a block's files in the bucket.
fn stored_bytes(meta: &BlockMeta) -> u64 {
    meta.files.iter().map(|file| file.size_bytes).sum()
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    flamedb_model::now_nanos() / 1_000_000
}

#[cfg(test)]
mod tests;
