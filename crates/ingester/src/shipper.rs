//! Shipping and local retention: blocks go to object storage after they
//! are written (and every `ship_period`), with backoff while storage is
//! down; nothing is dropped, blocks simply wait on disk. A local block is
//! deleted only once uploaded, and then either after `local_retention` or,
//! oldest first, when the disk runs low. Two kinds of block are always
//! kept: those whose WAL records are still on disk (a restart would replay
//! them twice), and those holding profiles newer than `local_retention`
//! (the querier reads only ingesters for that range: deleting them would
//! hide acknowledged profiles from queries until the range ages out).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use flamedb_storage::{Bucket, BucketError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ingester::Inner;
use crate::local_blocks::LocalBlock;
use crate::task::BackgroundTask;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// Starts the shipper task; it ends when stopped or when the ingester is
/// gone.
pub(crate) fn spawn(inner: Weak<Inner>, bucket: Bucket, period: Duration, nudge: Arc<Notify>) -> BackgroundTask {
    BackgroundTask::spawn(|stop| run(inner, bucket, nudge, stop, period))
}

async fn run(inner: Weak<Inner>, bucket: Bucket, nudge: Arc<Notify>, stop: CancellationToken, period: Duration) {
    let mut backoff: Option<Duration> = None;
    loop {
        let Some(strong) = inner.upgrade() else { break };
        // Stopping abandons an upload in flight: without its meta.json it
        // is unfinished, and the block stays local to be uploaded later.
        let shipped = tokio::select! {
            () = stop.cancelled() => break,
            shipped = strong.ship(&bucket) => shipped,
        };
        match shipped {
            Ok(_) => backoff = None,
            Err(err) => {
                let next = backoff.map_or(FIRST_BACKOFF, |last| (last * 2).min(MAX_BACKOFF));
                error!(error = %err, retry_in = ?next, "cannot upload blocks; they wait on local disk");
                backoff = Some(next);
            }
        }
        strong.enforce_retention();
        drop(strong);
        tokio::select! {
            () = stop.cancelled() => break,
            () = nudge.notified() => {}
            () = tokio::time::sleep(backoff.unwrap_or(period)) => {}
        }
    }
}

impl Inner {
    /// Uploads every local block not yet in the bucket; returns how many
    /// were uploaded. Stops at the first failure (counted in a metric).
    pub(crate) async fn ship(&self, bucket: &Bucket) -> Result<usize, BucketError> {
        let mut shipped = 0;
        let mut result = Ok(());
        for (tenant, block) in self.blocks_where(|block| !block.is_uploaded()) {
            match self.ship_block(bucket, &tenant, &block).await {
                Ok(uploaded) => shipped += usize::from(uploaded),
                Err(err) => {
                    self.metrics.ship_failed();
                    result = Err(err);
                    break;
                }
            }
        }
        self.update_block_gauge();
        result.map(|()| shipped)
    }

    /// Uploads one block unless the bucket has it; marks it uploaded.
    async fn ship_block(&self, bucket: &Bucket, tenant: &str, block: &Arc<LocalBlock>) -> Result<bool, BucketError> {
        let meta = block.block.meta();
        let mut uploaded = false;
        if !bucket.has_block(tenant, meta.id).await? {
            let started = std::time::Instant::now();
            bucket.upload_block(tenant, block.block.dir(), meta).await?;
            self.metrics.shipped(started.elapsed());
            info!(tenant, block = %meta.id, "block uploaded");
            uploaded = true;
        }
        let marked = tokio::task::spawn_blocking({
            let block = block.clone();
            move || block.mark_uploaded()
        })
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join.to_string())));
        if let Err(err) = marked {
            error!(tenant, block = %meta.id, error = %err, "cannot record that a block was uploaded");
        }
        Ok(uploaded)
    }

    /// The blocks of every tenant for which `keep` holds, oldest first.
    fn blocks_where(&self, keep: impl Fn(&LocalBlock) -> bool) -> Vec<(String, Arc<LocalBlock>)> {
        let mut blocks: Vec<(String, Arc<LocalBlock>)> = self
            .all_tenants()
            .into_iter()
            .flat_map(|(tenant, state)| {
                state
                    .data()
                    .blocks
                    .iter()
                    .filter(|block| keep(block))
                    .map(|block| (tenant.clone(), block.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        blocks.sort_by_key(|(_, block)| block.block.meta().id);
        blocks
    }

    /// Deletes uploaded blocks past the local retention, then more
    /// (oldest first) while the disk is low, never one holding profiles
    /// newer than the retention. A block is dropped from the queryable set
    /// at once; its files go when the last query using it is done.
    pub(crate) fn enforce_retention(&self) {
        let now_ms = flamedb_model::now_nanos() / 1_000_000;
        let retention_ms = i64::try_from(self.config.local_retention.as_millis()).unwrap_or(i64::MAX);
        let queried_from_ms = now_ms.saturating_sub(retention_ms);
        let kept_from = self.wal_kept_from.load(Ordering::Relaxed);
        // Deletable: uploaded, and no WAL segment left holds its records.
        let deletable = self.blocks_where(|block| block.is_uploaded() && block.note.last.segment < kept_from);
        let mut early = Vec::new();
        for (tenant, block) in deletable {
            if block.uploaded_at_ms() <= queried_from_ms {
                self.delete_block(&tenant, &block, "retention");
            } else if block.block.meta().max_time < queried_from_ms {
                early.push((tenant, block));
            }
        }
        let mut early = early.into_iter();
        let mut low = self.disk_is_low();
        while low && let Some((tenant, block)) = early.next() {
            self.delete_block(&tenant, &block, "disk_low");
            low = self.disk_is_low();
        }
        if low {
            warn!(
                dir = %self.config.data_dir.display(),
                "disk space is low; the uploaded blocks left hold profiles newer than \
                 -querier.query-store-after, which queries read from the ingesters only, so they stay"
            );
        }
    }

    fn delete_block(&self, tenant: &str, block: &Arc<LocalBlock>, reason: &'static str) {
        self.tenant(tenant)
            .data()
            .blocks
            .retain(|held| !Arc::ptr_eq(held, block));
        block.delete_when_dropped();
        self.update_block_gauge();
        self.metrics.local_block_deleted(reason);
        info!(tenant, block = %block.block.meta().id, reason, "local block deleted");
    }

    fn disk_is_low(&self) -> bool {
        disk_is_low(
            &self.config.data_dir,
            self.config.min_free_disk_bytes,
            self.config.min_free_disk_percent,
        )
    }
}

/// Whether the file system of `dir` has less than `min_bytes` or less than
/// `min_percent` % free.
fn disk_is_low(dir: &Path, min_bytes: u64, min_percent: f64) -> bool {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(stats) => {
            let fragment = stats.fragment_size();
            let free = stats.blocks_available().saturating_mul(fragment);
            let total = stats.blocks().saturating_mul(fragment);
            free < min_bytes || (total > 0 && (free as f64) * 100.0 < min_percent * total as f64)
        }
        Err(err) => {
            warn!(dir = %dir.display(), error = %err, "cannot read free disk space");
            false
        }
    }
}
