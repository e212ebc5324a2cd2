//! Flushing: heads become blocks on local disk.
//!
//! A head is sealed (taken out of the live heads, still queried) when its
//! window has ended and it got nothing for the idle grace, when head
//! memory nears the ceiling (largest heads first), on request, and on
//! shutdown. One flusher task writes sealed heads one at a time; a head
//! whose block cannot be written stays sealed, queryable and counted in
//! memory, and is tried again at the next check. Once blocks are written
//! the WAL is rotated and the segments no head needs any more are deleted.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use flamedb_storage::{Block, BlockError, write_block};
use flamedb_wal::{SegmentId, WalError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::delta::DeltaSnapshot;
use crate::head::Head;
use crate::ingester::{BLOCKS_DIR, Inner};
use crate::local_blocks::{FLUSH_NOTE, FlushNote, LocalBlock, tenant_dir};
use crate::snapshots;
use crate::task::BackgroundTask;

/// Head memory, as a share of the ceiling, at which heads are flushed
/// early, and the share of live heads left after.
const EARLY_FLUSH_AT: f64 = 0.8;
const EARLY_FLUSH_DOWN_TO: f64 = 0.5;

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Blocks written.
    pub blocks: usize,
    /// WAL segments deleted after.
    pub wal_segments_removed: usize,
}

/// Why a flush did not complete; the heads it could not write are kept.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("cannot write a block of tenant {tenant}: {source}")]
    Block {
        tenant: String,
        #[source]
        source: BlockError,
    },
    #[error("cannot trim the WAL after a flush: {0}")]
    Wal(#[from] WalError),
    #[error("cannot trim the WAL: delta state snapshots in {path}: {source}")]
    Snapshots {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the ingester is stopped")]
    Stopped,
    #[error("the ingester could not apply a stored record; it flushes nothing until restarted")]
    Failed,
}

/// Why heads were sealed (the `reason` of the metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealReason {
    WindowEnded,
    Memory,
    Requested,
}

impl SealReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::WindowEnded => "window_ended",
            Self::Memory => "memory",
            Self::Requested => "requested",
        }
    }
}

type Reply = oneshot::Sender<Result<FlushReport, FlushError>>;

/// The flusher task: flushes on its own schedule and on request.
#[derive(Debug, Clone)]
pub(crate) struct FlusherHandle {
    requests: mpsc::Sender<Reply>,
    task: BackgroundTask,
}

impl FlusherHandle {
    /// Starts the flusher; it ends when stopped or when the ingester is
    /// gone.
    pub(crate) fn spawn(inner: Weak<Inner>, period: Duration) -> Self {
        let (requests, receiver) = mpsc::channel(16);
        let task = BackgroundTask::spawn(|stop| run(inner, receiver, stop, period));
        Self { requests, task }
    }

    /// Seals every head and flushes; returns once done.
    pub(crate) async fn flush(&self) -> Result<FlushReport, FlushError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(reply).await.map_err(|_| FlushError::Stopped)?;
        answer.await.map_err(|_| FlushError::Stopped)?
    }

    /// Stops the task and waits for it.
    pub(crate) async fn stop(&self) {
        self.task.stop().await;
    }
}

async fn run(inner: Weak<Inner>, mut requests: mpsc::Receiver<Reply>, stop: CancellationToken, period: Duration) {
    // Right after start: drop the segments the local blocks cover, and
    // learn which segments are left (retention waits for that).
    if let Some(strong) = inner.upgrade()
        && let Err(err) = strong.trim_wal().await
    {
        error!(error = %err, "cannot trim the WAL at start");
    }
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            request = requests.recv() => {
                let (Some(reply), Some(inner)) = (request, inner.upgrade()) else { break };
                if inner.apply_failed.load(Ordering::Relaxed) {
                    let _ = reply.send(Err(FlushError::Failed));
                    continue;
                }
                let result = match inner.seal(Sealing::All).await {
                    Ok(()) => inner.flush_sealed().await,
                    Err(err) => Err(err.into()),
                };
                let _ = reply.send(result);
            }
            _ = ticker.tick() => {
                let Some(inner) = inner.upgrade() else { break };
                if inner.apply_failed.load(Ordering::Relaxed) {
                    continue;
                }
                let result = match inner.seal(Sealing::Due { now_ms: now_ms() }).await {
                    Ok(()) => inner.flush_sealed().await,
                    Err(err) => Err(err.into()),
                };
                if let Err(err) = result {
                    error!(error = %err, "flush failed; the heads stay in memory and are tried again");
                }
            }
        }
    }
}

/// Which heads to seal.
#[derive(Debug, Clone, Copy)]
enum Sealing {
    All,
    Due { now_ms: i64 },
}

fn now_ms() -> i64 {
    flamedb_model::now_nanos() / 1_000_000
}

impl Inner {
    /// Seals heads on the WAL completion thread, between two records, so
    /// no record is split between a sealed head and the next one.
    async fn seal(self: &Arc<Self>, which: Sealing) -> Result<(), WalError> {
        let inner = Arc::downgrade(self);
        self.wal
            .barrier(move || {
                if let Some(inner) = inner.upgrade() {
                    match which {
                        Sealing::All => inner.seal_all(),
                        Sealing::Due { now_ms } => inner.seal_due(now_ms),
                    }
                }
            })
            .await
    }

    fn seal_one(&self, tenant: &crate::ingester::TenantState, window_start_ms: i64, reason: SealReason) {
        let mut data = tenant.data();
        if let Some(head) = data.live.remove(&window_start_ms) {
            data.flushing.push(head);
            self.metrics.sealed(reason.as_str());
        }
    }

    /// Seals every live head.
    fn seal_all(&self) {
        for (_, state) in self.all_tenants() {
            let windows: Vec<i64> = state.data().live.keys().copied().collect();
            for window in windows {
                self.seal_one(&state, window, SealReason::Requested);
            }
        }
    }

    /// Seals the heads whose window ended and which have been idle for
    /// the grace period, then, if memory is near the ceiling, the largest
    /// live heads; forgets tenants that hold nothing any more.
    fn seal_due(&self, now_ms: i64) {
        self.forget_idle_tenants(now_ms);
        let window = self.config.window_ms();
        let grace = i64::try_from(self.config.flush_idle_grace.as_millis()).unwrap_or(i64::MAX);
        let mut live = Vec::new();
        for (_, state) in self.all_tenants() {
            let heads: Vec<Arc<Head>> = state.data().live.values().cloned().collect();
            for head in heads {
                let ended = now_ms >= head.window_start_ms.saturating_add(window);
                if ended && now_ms.saturating_sub(head.last_insert_ms()) >= grace {
                    self.seal_one(&state, head.window_start_ms, SealReason::WindowEnded);
                } else {
                    live.push((state.clone(), head));
                }
            }
        }
        let ceiling = self.config.max_head_memory_bytes as f64;
        if (self.head_bytes.load(Ordering::Relaxed) as f64) < ceiling * EARLY_FLUSH_AT {
            return;
        }
        live.sort_by_key(|(_, head)| std::cmp::Reverse(head.bytes()));
        let mut live_bytes: usize = live.iter().map(|(_, head)| head.bytes()).sum();
        for (state, head) in live {
            if (live_bytes as f64) < ceiling * EARLY_FLUSH_DOWN_TO {
                break;
            }
            live_bytes -= head.bytes();
            self.seal_one(&state, head.window_start_ms, SealReason::Memory);
        }
    }

    /// Writes every sealed head as a block, then trims the WAL. Heads that
    /// fail stay sealed; the first error is returned after the others
    /// were tried.
    pub(crate) async fn flush_sealed(self: &Arc<Self>) -> Result<FlushReport, FlushError> {
        let mut report = FlushReport::default();
        let mut first_error = None;
        for (tenant, state) in self.all_tenants() {
            let sealed: Vec<Arc<Head>> = state.data().flushing.clone();
            for head in sealed {
                let written = if head.rows() == 0 {
                    Ok(None)
                } else {
                    let inner = self.clone();
                    let (owner, sealed) = (tenant.clone(), head.clone());
                    tokio::task::spawn_blocking(move || inner.write_head(&owner, &sealed).map(Some))
                        .await
                        .unwrap_or_else(|join| {
                            Err(BlockError::Io {
                                action: "write (the writer panicked)",
                                path: tenant_dir(&self.config.data_dir.join(BLOCKS_DIR), &tenant)
                                    .display()
                                    .to_string(),
                                source: std::io::Error::other(join.to_string()),
                            })
                        })
                };
                match written {
                    Ok(block) => {
                        let mut data = state.data();
                        data.flushing.retain(|sealed| !Arc::ptr_eq(sealed, &head));
                        if let Some(block) = block {
                            data.blocks.push(Arc::new(block));
                            report.blocks += 1;
                        }
                        drop(data);
                        self.release_head_bytes(&state, head.bytes());
                    }
                    Err(source) => {
                        self.metrics.flush_failed();
                        first_error.get_or_insert(FlushError::Block {
                            tenant: tenant.clone(),
                            source,
                        });
                    }
                }
            }
        }
        if report.blocks > 0 {
            self.update_block_gauge();
            let trimmed = self.trim_wal().await;
            self.ship_nudge.notify_one();
            match trimmed {
                Ok(removed) => report.wal_segments_removed = removed,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(report),
        }
    }

    /// Writes one sealed head as a block and opens it.
    fn write_head(&self, tenant: &str, head: &Head) -> Result<LocalBlock, BlockError> {
        let started = std::time::Instant::now();
        let dir = tenant_dir(&self.config.data_dir.join(BLOCKS_DIR), tenant);
        let window_end = head.window_start_ms.saturating_add(self.config.window_ms());
        let (meta, note) = head.with_contents(|contents, positions| {
            // Heads are filled from the WAL only, so they know their records.
            let Some((first, last)) = positions else {
                return Err(BlockError::Corrupt {
                    path: dir.display().to_string(),
                    reason: "a head without WAL positions cannot be flushed".to_owned(),
                });
            };
            let note = FlushNote::new(head.window_start_ms, window_end, first, last);
            let note_bytes = serde_json::to_vec(&note).map_err(|err| BlockError::Corrupt {
                path: dir.display().to_string(),
                reason: err.to_string(),
            })?;
            let meta = write_block(&dir, head.block_id, contents, &[(FLUSH_NOTE, &note_bytes)])?;
            Ok((meta, note))
        })?;
        let block = Block::open(&dir.join(meta.id.to_string()))?;
        self.metrics.flushed(started.elapsed());
        info!(
            tenant,
            block = %meta.id,
            profiles = meta.stats.num_profiles,
            series = meta.stats.num_series,
            head_bytes = head.bytes(),
            seconds = started.elapsed().as_secs_f64(),
            "head flushed"
        );
        Ok(LocalBlock::new(block, note))
    }

    /// Starts a new WAL segment (saving the delta state at its start) and
    /// deletes the segments before the first record any head still holds,
    /// back to the nearest segment whose start state is saved. `rotate`
    /// answers only after every earlier record was applied, so no
    /// acknowledged record is left out of both heads and blocks.
    pub(crate) async fn trim_wal(self: &Arc<Self>) -> Result<usize, FlushError> {
        if self.apply_failed.load(Ordering::Relaxed) {
            return Err(FlushError::Failed);
        }
        let inner = Arc::downgrade(self);
        let rotated = self
            .wal
            .rotate_then(move |segment| {
                if let Some(inner) = inner.upgrade() {
                    inner.save_delta_snapshot(segment);
                }
            })
            .await?;
        let mut keep_from = rotated;
        for (_, state) in self.all_tenants() {
            let data = state.data();
            for head in data.live.values().chain(&data.flushing) {
                if let Some(first) = head.first_position() {
                    keep_from = keep_from.min(first.segment);
                }
            }
        }
        let dir = self.snapshots_dir();
        let snapshot_error = |source| FlushError::Snapshots {
            path: dir.display().to_string(),
            source,
        };
        let saved = snapshots::list(&dir).map_err(snapshot_error)?;
        let Some(&from) = saved.iter().rev().find(|segment| **segment <= keep_from) else {
            return Ok(0);
        };
        let removed = self.wal.remove_segments_before(from).await?;
        snapshots::prune(&dir, from..SegmentId(u64::MAX)).map_err(snapshot_error)?;
        self.wal_kept_from.store(from.0, Ordering::Relaxed);
        Ok(removed)
    }

    /// Saves every tenant's delta state; runs on the WAL completion thread
    /// at the start of `segment`. A failure only means the WAL is not
    /// trimmed to this segment.
    fn save_delta_snapshot(&self, segment: SegmentId) {
        let snapshot = DeltaSnapshot {
            tenants: self
                .all_tenants()
                .iter()
                .map(|(tenant, state)| state.delta().to_snapshot(tenant))
                .collect(),
        };
        if let Err(err) = snapshots::save(&self.snapshots_dir(), segment, &snapshot) {
            error!(segment = %segment, error = %err, "cannot save the delta state; the WAL is kept longer");
        }
    }
}
