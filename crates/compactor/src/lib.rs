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

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flamedb_storage::block::{Downsample, check_resolutions};
use flamedb_storage::{Block, BlockError, BlockMeta, Bucket, BucketError, BucketIndex, INDEX_VERSION, Ulid, compact};
use prometheus_client::metrics::counter::Counter;
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

#[derive(Debug, Clone, Default)]
struct CompactorMetrics {
    runs: Counter,
    failures: Counter,
    compactions: Counter,
    blocks_compacted: Counter,
    blocks_expired: Counter,
    blocks_deleted: Counter,
    groups_over_memory: Counter,
    blocks_marked_no_compact: Counter,
}

impl CompactorMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
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
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        metrics
    }
}

/// Marks a directory as the compactor's work directory.
const DIR_MARKER: &str = ".flamedb-compactor";

/// How long a tenant's blocks are kept (`0`: forever).
pub type TenantRetention = Arc<dyn Fn(&str) -> Duration + Send + Sync>;

/// Compacts the blocks of a bucket.
pub struct Compactor {
    bucket: Bucket,
    config: CompactorConfig,
    retention: TenantRetention,
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
            metrics: CompactorMetrics::register(registry),
        })
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

    /// One round over every tenant, as of `now_ms`. Fails only when the
    /// tenants cannot be listed: a tenant or a compaction that fails is
    /// logged and counted, and the others go on.
    pub async fn run_once(&self, now_ms: i64) -> Result<RoundReport, CompactorError> {
        self.metrics.runs.inc();
        let tenants = self.bucket.list_tenants().await.map_err(|source| {
            self.metrics.failures.inc();
            CompactorError::ListTenants(Box::new(source))
        })?;
        let mut report = RoundReport::default();
        for tenant in tenants {
            if let Err(err) = self.tenant_round(&tenant, now_ms, &mut report).await {
                error!(tenant, error = %err, "compacting the tenant failed; the next round retries");
                self.failed(&mut report);
            }
            // Whatever the round did, the index is made from a new listing.
            match self.write_index(&tenant).await {
                Ok(()) => report.indexes_written += 1,
                Err(err) => {
                    error!(tenant, error = %err, "cannot write the bucket index; queriers list the bucket until a round writes it");
                    self.failed(&mut report);
                }
            }
        }
        Ok(report)
    }

    /// Lists the tenant's blocks and writes them as its bucket index.
    async fn write_index(&self, tenant: &str) -> Result<(), CompactorError> {
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
        self.bucket.write_index(tenant, &index).await.map_err(bucket_error)
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
        Ok(replaced.len())
    }
}

/// A block without `meta.json` whose last object is younger than this may
/// still be uploading (its meta comes last): it is never deleted.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(3600);

/// Any constant whose low 80 bits (a ULID's random part) are not all zero.
const OUTPUT_ID_SEED: u128 = 0x666c_616d_6564_622d_636f_6d70_6163_7421;

/// The ID of the block compacted from `group`: its time part the group's
/// first profile, its random part a digest of the level-1 blocks the group
/// holds, so the same data always gets the same ID.
fn output_id(metas: &[BlockMeta], group: &[Ulid]) -> Ulid {
    let members: Vec<&BlockMeta> = metas.iter().filter(|meta| group.contains(&meta.id)).collect();
    let mut sources: Vec<Ulid> = members
        .iter()
        .flat_map(|meta| meta.compaction.sources.iter().copied())
        .collect();
    sources.sort_unstable();
    sources.dedup();
    // Seeded, so a block compacted alone never gets its source's ID.
    let digest = sources.iter().fold(OUTPUT_ID_SEED, |digest, source| {
        digest.rotate_left(29) ^ u128::from(*source)
    });
    let min_time = members.iter().map(|meta| meta.min_time).min().unwrap_or(0);
    Ulid::from_parts(u64::try_from(min_time).unwrap_or(0), digest)
}

/// The groups of blocks to compact this round: for each of `ranges_ms`
/// (shortest first) and each window of it (aligned to the epoch) that
/// ended at least `wait_ms` before `now_ms`, the blocks wholly inside it
/// not grouped at a shorter range already, when there are two or more, or
/// one an ingester wrote (so every block becomes a compacted one, which
/// queries read without listing its profiles).
pub fn plan(metas: &[BlockMeta], ranges_ms: &[i64], now_ms: i64, wait_ms: i64) -> Vec<Vec<Ulid>> {
    let mut groups = Vec::new();
    let mut grouped: HashSet<Ulid> = HashSet::new();
    for &range_ms in ranges_ms {
        let range_ms = range_ms.max(1);
        let mut windows: BTreeMap<i64, Vec<Ulid>> = BTreeMap::new();
        for meta in metas.iter().filter(|meta| !grouped.contains(&meta.id)) {
            let start = meta.min_time.div_euclid(range_ms) * range_ms;
            let end = start.saturating_add(range_ms);
            if meta.max_time < end && end.saturating_add(wait_ms) <= now_ms {
                windows.entry(start).or_default().push(meta.id);
            }
        }
        let level_one: HashSet<Ulid> = metas
            .iter()
            .filter(|meta| meta.compaction.level <= 1)
            .map(|meta| meta.id)
            .collect();
        for group in windows
            .into_values()
            .filter(|group| group.len() > 1 || group.iter().any(|id| level_one.contains(id)))
        {
            grouped.extend(group.iter().copied());
            groups.push(group);
        }
    }
    groups
}

/// What compacting a block takes in memory at most, from its meta: each
/// row as the compaction holds it (with its entry in the set of profiles
/// seen, and the table reader's and writer's share), each sample's stack,
/// value and span ID in the input view and in the output, and the series
/// and symbol files unpacked, read into tables with their indexes and
/// written again. `tests/memory.rs` measures it against real compactions.
pub fn memory_estimate(meta: &BlockMeta) -> u64 {
    /// A row, its dedup entry, its boxed slices' headers, its share of
    /// the table's buffers.
    const ROW_BYTES: u64 = 384;
    /// Stack id, value and span ID, twice.
    const SAMPLE_BYTES: u64 = 2 * (4 + 8 + 8);
    /// Per unpacked byte of the series and symbol files: the bytes, the
    /// tables and indexes made of them, the output's tables and bytes.
    const PER_UNPACKED_BYTE: u64 = 4;
    /// Per block: its table reader's state and its share of the writer's
    /// buffers, whatever the rows.
    const BLOCK_BYTES: u64 = 256 << 10;
    /// Blocks written before unpacked sizes were recorded: zstd packs
    /// these files 4× to 16×, count the worst.
    const PER_PACKED_BYTE_UNRECORDED: u64 = 16 * PER_UNPACKED_BYTE;
    let files: u64 = meta
        .files
        .iter()
        .map(|file| match (file.rel_path.as_str(), file.uncompressed_bytes) {
            // Read in row groups, counted per row and sample.
            (flamedb_storage::block::PROFILES_FILE, _) => 0,
            // Only checked (read whole once), never decoded: it is made
            // again from the rows.
            (flamedb_storage::block::DOWNSAMPLED_FILE, _) => file.size_bytes,
            (_, 0) => file.size_bytes.saturating_mul(PER_PACKED_BYTE_UNRECORDED),
            (_, unpacked) => unpacked.saturating_mul(PER_UNPACKED_BYTE),
        })
        .fold(0, u64::saturating_add);
    meta.stats
        .num_profiles
        .saturating_mul(ROW_BYTES)
        .saturating_add(meta.stats.num_samples.saturating_mul(SAMPLE_BYTES))
        .saturating_add(files)
        .saturating_add(BLOCK_BYTES)
}

/// The blocks of `group` that fit `max_memory_bytes` together (`0`: all),
/// taken oldest first and skipping those that do not fit, or `None` when
/// fewer than two do (unless the group is one block an ingester wrote,
/// which fits).
pub fn within_memory(metas: &[BlockMeta], group: &[Ulid], max_memory_bytes: u64) -> Option<Vec<Ulid>> {
    let mut blocks: Vec<&BlockMeta> = group
        .iter()
        .filter_map(|id| metas.iter().find(|meta| meta.id == *id))
        .collect();
    blocks.sort_by_key(|meta| (meta.min_time, meta.id));
    let mut used = 0u64;
    let alone = matches!(blocks.as_slice(), [meta] if meta.compaction.level <= 1);
    let mut fitting = Vec::new();
    for meta in blocks {
        let with = used.saturating_add(memory_estimate(meta));
        if max_memory_bytes == 0 || with <= max_memory_bytes {
            used = with;
            fitting.push(meta.id);
        }
    }
    (fitting.len() >= 2 || (alone && fitting.len() == 1)).then_some(fitting)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    flamedb_model::now_nanos() / 1_000_000
}

#[cfg(test)]
mod tests;
