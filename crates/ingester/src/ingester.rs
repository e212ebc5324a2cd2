//! The ingester service: accepts pushes (limits checked, then the WAL, then
//! the heads, in WAL order), replays the WAL on start, and answers queries
//! over its heads.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use flamedb_api::ErrorCode;
use flamedb_model::pprof::Profile;
use flamedb_model::{Labels, ProfileId, ProfileType, Selector, TenantLimits, Tree, now_nanos, typed_series};
use flamedb_wal::{Position, ReplayStats, SegmentId, Wal, WalConfig, WalError};
use prost::Message;
use tracing::{error, info, warn};

use crate::delta::{DeltaState, is_cumulative};
use flamedb_storage::{
    BlockError, BlockMeta, Bucket, BucketError, ProfileKey, ProfileQuery, SelectedProfile, SeriesSummaries,
    SeriesSummary, TimeRange,
};
use tokio::sync::Notify;

use crate::flush::{self, FlushError, FlushReport};
use crate::head::{Head, SeriesInsert, observe_cumulative};
use crate::limiter::{ClusterShare, SeriesLimit, SeriesLimiter};
use crate::local_blocks::{self, FlushNote, LocalBlock};
use crate::metrics::IngesterMetrics;
use crate::record;
use crate::shipper;
use crate::snapshots;
use crate::task::BackgroundTask;

/// Where blocks live under the data directory.
pub(crate) const BLOCKS_DIR: &str = "blocks";
/// Where delta state snapshots live under the data directory.
const SNAPSHOTS_DIR: &str = "delta";

/// Ingester settings.
#[derive(Debug, Clone, PartialEq)]
pub struct IngesterConfig {
    /// Where the WAL (`wal/`) and the local blocks (`blocks/`) live.
    pub data_dir: PathBuf,
    /// Width of a head's time window (by profile time).
    pub max_block_duration: Duration,
    /// Memory of heads and delta state (all tenants) past which pushes are
    /// refused; heads are flushed early from 80 % of it, and from 90 % a
    /// tenant holding more than its share of it is refused.
    pub max_head_memory_bytes: usize,
    /// Most tenants the ingester holds (`0`: any number).
    pub max_tenants: usize,
    /// Size at which a WAL segment is closed and the next begun.
    pub wal_segment_bytes: u64,
    /// Replay skips corrupt WAL records (losing what they held) instead
    /// of stopping at the first one.
    pub wal_skip_corrupt_records: bool,
    /// A head whose window has ended is flushed once it got nothing for
    /// this long.
    pub flush_idle_grace: Duration,
    /// How often flush triggers (window end, memory) are checked.
    pub flush_check_period: Duration,
    /// How often blocks not yet in object storage are uploaded (also right
    /// after each flush; failures back off from 1 s to 5 min).
    pub ship_period: Duration,
    /// How long an uploaded block stays on local disk: the querier's
    /// `query_store_after`, as queries for newer ranges read only the
    /// ingesters.
    pub local_retention: Duration,
    /// Below this much free disk, or this share (percent), uploaded blocks
    /// are deleted early, oldest first, if all they hold is older than
    /// `local_retention`.
    pub min_free_disk_bytes: u64,
    pub min_free_disk_percent: f64,
}

impl IngesterConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_block_duration: Duration::from_secs(3600),
            max_head_memory_bytes: 1 << 30,
            max_tenants: 10_000,
            wal_segment_bytes: 64 << 20,
            wal_skip_corrupt_records: false,
            flush_idle_grace: Duration::from_secs(5 * 60),
            flush_check_period: Duration::from_secs(10),
            ship_period: Duration::from_secs(30),
            local_retention: Duration::from_secs(4 * 3600),
            min_free_disk_bytes: 10 << 30,
            min_free_disk_percent: 5.0,
        }
    }

    pub(crate) fn window_ms(&self) -> i64 {
        i64::try_from(self.max_block_duration.as_millis())
            .unwrap_or(i64::MAX)
            .max(5_000)
    }
}

/// How many ingesters share the series, for global limits.
pub type ShareOfCluster = Arc<dyn Fn() -> ClusterShare + Send + Sync>;

/// One profile to store: the labels of its series (after splitting), the
/// ID the distributor gave it, and the normalized profile, decoded and as
/// plain pprof bytes (what the WAL keeps). Callers that have both pass
/// both, so the profile is neither copied nor encoded again.
#[derive(Debug, Clone)]
pub struct IncomingProfile {
    pub labels: Labels,
    pub id: ProfileId,
    profile: Arc<Profile>,
    /// `profile` as plain pprof.
    pprof: Bytes,
}

impl IncomingProfile {
    /// A profile known only decoded: encoded here.
    pub fn new(labels: Labels, id: ProfileId, profile: Profile) -> Self {
        let pprof = Bytes::from(profile.encode_to_vec());
        Self::from_decoded(labels, id, Arc::new(profile), pprof)
    }

    /// A profile and `pprof`, which must be its encoding (or the bytes it
    /// was decoded from): the WAL keeps the bytes, the head the profile.
    pub fn from_decoded(labels: Labels, id: ProfileId, profile: Arc<Profile>, pprof: Bytes) -> Self {
        Self {
            labels,
            id,
            profile,
            pprof,
        }
    }
}

/// Why a push was refused; nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(
        "ingester head memory is at {used} bytes, the limit -ingester.max-head-memory is {limit} bytes: retry later"
    )]
    MemoryLimit { used: usize, limit: usize },
    /// Head memory is nearly full and this tenant holds more than its
    /// fair share of it: it is the one refused.
    #[error(
        "ingester head memory is at {used} of {limit} bytes (-ingester.max-head-memory) and tenant {tenant} holds {held} bytes, more than its fair share of {share} bytes (the limit divided among the {tenants} tenants holding memory): this tenant's pushes are refused until its heads are flushed; retry later"
    )]
    TenantMemoryShare {
        tenant: String,
        held: usize,
        share: usize,
        tenants: usize,
        used: usize,
        limit: usize,
    },
    /// The ingester holds as many tenants as it may.
    #[error(
        "this ingester holds {limit} tenants, the most -ingester.instance-limits.max-tenants allows; tenant {tenant} is new: retry later, or raise the limit"
    )]
    TooManyTenants { tenant: String, limit: usize },
    #[error(
        "tenant {tenant} has {active} active series on this ingester, the push would add {new}; limit {limit} (max_global_series_per_tenant {global} over {healthy} ingesters x replication factor {replication_factor}, max_local_series_per_tenant {local}): reduce the number of series"
    )]
    SeriesLimit {
        tenant: String,
        active: usize,
        new: usize,
        limit: usize,
        global: usize,
        local: usize,
        healthy: usize,
        replication_factor: usize,
    },
    #[error("the profile of series {series} has no __name__ label")]
    MissingName { series: String },
    #[error("cannot write the WAL, nothing was stored: {0}")]
    Wal(#[from] WalError),
    #[error(
        "this ingester could not apply a record it had stored and takes no pushes until it is restarted (which replays the record)"
    )]
    Failed,
}

impl PushError {
    /// How callers see the refusal: 429 for limits (retry later), 503
    /// when the WAL cannot take writes now.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::MemoryLimit { .. }
            | Self::TenantMemoryShare { .. }
            | Self::TooManyTenants { .. }
            | Self::SeriesLimit { .. } => ErrorCode::ResourceExhausted,
            Self::MissingName { .. } => ErrorCode::InvalidArgument,
            Self::Failed => ErrorCode::Unavailable,
            Self::Wal(WalError::RecordTooLarge { .. }) => ErrorCode::PayloadTooLarge,
            // Durable, but not applied: the next start replays it.
            Self::Wal(WalError::Applying { .. }) => ErrorCode::Internal,
            // Cannot be made durable now (disk full, I/O error, stopping);
            // corruption is only found at replay, never by a push.
            Self::Wal(WalError::Io { .. } | WalError::Closed | WalError::Corrupt { .. }) => ErrorCode::Unavailable,
        }
    }
}

/// Why the ingester could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("cannot read the local blocks: {0}")]
    Blocks(#[from] BlockError),
    #[error("WAL replay: {0}")]
    Thread(String),
}

/// What did not complete at shutdown; nothing is lost (heads are in the
/// WAL, blocks on disk), the next start picks it up.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error(transparent)]
    Ship(#[from] BucketError),
}

/// Why a query over local blocks failed.
#[derive(Debug, thiserror::Error)]
#[error("tenant {tenant}: {source}")]
pub struct QueryError {
    pub tenant: String,
    #[source]
    pub source: BlockError,
}

/// What start-up found in the WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub wal: ReplayStats,
    /// Profiles replayed into heads.
    pub profiles: u64,
    /// Profiles skipped because a local block already holds them.
    pub profiles_in_blocks: u64,
    /// Records that could not be decoded (skipped, counted).
    pub unreadable_records: u64,
    /// Profiles of readable records that could not be stored (skipped).
    pub invalid_profiles: u64,
}

/// Where a tenant's profiles are: heads taking pushes (by window start),
/// heads being flushed, and flushed blocks. `live` changes only on the WAL
/// completion thread (records are applied there, and heads are sealed
/// there between records), so a sealed head gets nothing more and a
/// record is never split between two heads of one window.
#[derive(Debug, Default)]
pub(crate) struct TenantData {
    pub live: BTreeMap<i64, Arc<Head>>,
    pub flushing: Vec<Arc<Head>>,
    pub blocks: Vec<Arc<LocalBlock>>,
}

/// A tenant's data and its series accounting.
#[derive(Debug, Default)]
pub(crate) struct TenantState {
    pub data: Mutex<TenantData>,
    limiter: Mutex<SeriesLimiter>,
    delta: Mutex<DeltaState>,
    /// The tenant's part of the ingester's head memory.
    head_bytes: AtomicUsize,
}

impl TenantState {
    pub(crate) fn data(&self) -> std::sync::MutexGuard<'_, TenantData> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn delta(&self) -> std::sync::MutexGuard<'_, DeltaState> {
        self.delta.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds nothing at `now_ms`: no heads, no local blocks, no delta
    /// state, no active series. Such a tenant's state can go.
    fn is_idle(&self, now_ms: i64) -> bool {
        // One lock at a time: others take them in other orders.
        let empty = {
            let data = self.data();
            data.live.is_empty() && data.flushing.is_empty() && data.blocks.is_empty()
        };
        empty
            && self.delta().bytes() == 0
            && self
                .limiter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .active_at(now_ms)
                == 0
    }
}

/// A profile ready to be applied: where it goes and under which series.
#[derive(Debug)]
struct Prepared {
    id: ProfileId,
    profile: Arc<Profile>,
    window_start_ms: i64,
    inserts: Vec<SeriesInsert>,
}

pub(crate) struct Inner {
    pub config: IngesterConfig,
    limits: TenantLimits,
    share: ShareOfCluster,
    pub wal: Wal,
    pub tenants: RwLock<BTreeMap<String, Arc<TenantState>>>,
    /// Memory of live and flushing heads and of the delta state.
    pub head_bytes: AtomicUsize,
    pub metrics: IngesterMetrics,
    /// WAL segments before this one are gone (0: unknown).
    pub wal_kept_from: AtomicU64,
    /// Wakes the shipper after a flush.
    pub ship_nudge: Arc<Notify>,
    /// Set when a stored record could not be applied: the heads may be
    /// missing part of it, so nothing is flushed or trimmed any more and
    /// pushes are refused until a restart replays the WAL.
    pub apply_failed: AtomicBool,
    bucket: Option<Bucket>,
}

/// The ingester; cheap to clone. Its flusher runs while a clone lives or
/// until [`Ingester::shutdown`].
#[derive(Clone)]
pub struct Ingester {
    inner: Arc<Inner>,
    flusher: flush::FlusherHandle,
    shipper: Option<BackgroundTask>,
}

impl std::fmt::Debug for Ingester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingester")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Ingester {
    /// Opens the local blocks and the WAL under `config.data_dir`, replays
    /// the WAL records no block holds into heads, and starts the flusher
    /// and, with a bucket, the shipper (on the current tokio runtime). The
    /// ingester answers nothing before this returns.
    pub fn start(
        config: IngesterConfig,
        limits: TenantLimits,
        share: ShareOfCluster,
        metrics: IngesterMetrics,
        bucket: Option<Bucket>,
    ) -> Result<(Self, ReplayReport), StartError> {
        let started = std::time::Instant::now();
        let blocks = local_blocks::load(&config.data_dir.join(BLOCKS_DIR))?;
        let wal_config = WalConfig {
            segment_bytes: config.wal_segment_bytes,
            skip_corrupt_records: config.wal_skip_corrupt_records,
            ..WalConfig::new(config.data_dir.join("wal"))
        };
        let (wal, replay) = Wal::open(wal_config)?;
        // Snapshots at or past the segment the WAL now writes belong to a
        // WAL that is gone.
        let snapshots_dir = config.data_dir.join(SNAPSHOTS_DIR);
        if let Err(err) = snapshots::prune(&snapshots_dir, SegmentId(0)..wal.stats().segment) {
            warn!(dir = %snapshots_dir.display(), error = %err, "cannot remove stale delta state snapshots");
        }
        let check_period = config.flush_check_period;
        let ship_period = config.ship_period;
        let ship_nudge = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            config,
            limits,
            share,
            wal,
            tenants: RwLock::new(BTreeMap::new()),
            head_bytes: AtomicUsize::new(0),
            metrics,
            wal_kept_from: AtomicU64::new(0),
            ship_nudge: ship_nudge.clone(),
            apply_failed: AtomicBool::new(false),
            bucket: bucket.clone(),
        });
        let mut notes: BTreeMap<String, Vec<FlushNote>> = BTreeMap::new();
        for (tenant, block) in blocks {
            notes.entry(tenant.clone()).or_default().push(block.note.clone());
            inner.tenant(&tenant).data().blocks.push(Arc::new(block));
        }
        inner.update_block_gauge();
        let report = Self::replay(&inner, replay, &notes)?;
        info!(
            seconds = started.elapsed().as_secs_f64(),
            records = report.wal.records,
            bytes = report.wal.bytes,
            profiles = report.profiles,
            already_in_blocks = report.profiles_in_blocks,
            repaired_segments = report.wal.repaired_segments,
            unreadable_records = report.unreadable_records,
            invalid_profiles = report.invalid_profiles,
            head_bytes = inner.head_bytes.load(Ordering::Relaxed),
            "WAL replayed"
        );
        let flusher = flush::FlusherHandle::spawn(Arc::downgrade(&inner), check_period);
        let shipper = bucket.map(|bucket| shipper::spawn(Arc::downgrade(&inner), bucket, ship_period, ship_nudge));
        Ok((
            Self {
                inner,
                flusher,
                shipper,
            },
            report,
        ))
    }

    /// Replays `replay` into the heads. A second thread reads and decodes
    /// the records (half the work) while this one applies them in WAL
    /// order, which the delta state depends on.
    fn replay(
        inner: &Arc<Inner>,
        replay: flamedb_wal::Replay,
        notes: &BTreeMap<String, Vec<FlushNote>>,
    ) -> Result<ReplayReport, StartError> {
        let replay_from = inner.restore_delta_state(replay.first_segment());
        let (decoded_tx, decoded_rx) = std::sync::mpsc::sync_channel::<Result<DecodedRecord, WalError>>(REPLAY_QUEUE);
        std::thread::scope(|scope| {
            let decoder = std::thread::Builder::new()
                .name("wal-replay-decode".to_owned())
                .spawn_scoped(scope, move || decode_records(replay, replay_from, &decoded_tx))
                .map_err(|err| StartError::Thread(err.to_string()))?;
            let mut report = ReplayReport::default();
            let applied = decoded_rx
                .iter()
                .try_for_each(|decoded| Self::apply_replayed(inner, notes, decoded?, &mut report));
            // On an error the receiver is dropped here and the decoder stops.
            drop(decoded_rx);
            let replay = decoder
                .join()
                .map_err(|_| StartError::Thread("the WAL decoding thread panicked".to_owned()))?;
            applied?;
            inner.recount_memory();
            report.wal = replay.stats();
            inner.metrics.record_replay(&report);
            Ok(report)
        })
    }

    /// Applies one replayed record, in WAL order.
    fn apply_replayed(
        inner: &Arc<Inner>,
        notes: &BTreeMap<String, Vec<FlushNote>>,
        decoded: DecodedRecord,
        report: &mut ReplayReport,
    ) -> Result<(), StartError> {
        let position = decoded.position;
        let (tenant, profiles) = match decoded.record {
            Ok(record) => record,
            Err(err) => {
                warn!(segment = %position.segment, offset = position.offset, error = %err, "skipping an unreadable WAL record");
                report.unreadable_records += 1;
                return Ok(());
            }
        };
        let flushed = notes.get(&tenant).map_or(&[][..], Vec::as_slice);
        let tenant_state = inner.tenant(&tenant);
        // In record order, as when it arrived: the delta state depends on it.
        for profile in profiles {
            let Ok(ready) = inner.prepare(profile.labels, profile.id, Arc::new(profile.profile)) else {
                report.invalid_profiles += 1;
                continue;
            };
            let time_ms = ready.profile.time_nanos.div_euclid(1_000_000);
            if flushed.iter().any(|note| note.covers(position, time_ms)) {
                // In a block already; its cumulative values are still the
                // base of the next delta.
                report.profiles_in_blocks += 1;
                observe_cumulative(&ready.profile, &ready.inserts, &mut tenant_state.delta());
            } else {
                report.profiles += 1;
                {
                    let mut limiter = tenant_state.limiter.lock().unwrap_or_else(PoisonError::into_inner);
                    for insert in &ready.inserts {
                        limiter.touch(insert.fingerprint, now_ms());
                    }
                }
                inner.apply(&tenant, vec![ready], position);
            }
        }
        Ok(())
    }
}

/// From this share of the head memory ceiling on, a tenant holding more
/// than its fair share is refused (from 80 % the largest heads are flushed
/// early).
const FAIR_SHARE_FROM: f64 = 0.9;

/// Decoded records queued between the replay threads.
const REPLAY_QUEUE: usize = 64;

/// A WAL record read back and decoded (or why it could not be).
struct DecodedRecord {
    position: Position,
    record: Result<(String, Vec<record::RecordProfile>), record::RecordError>,
}

/// Reads and decodes every record from `replay_from` on into `decoded`;
/// stops at the end, at a read error (sent on), or when nobody listens.
/// Gives the replay back for its statistics.
fn decode_records(
    mut replay: flamedb_wal::Replay,
    replay_from: Option<SegmentId>,
    decoded: &std::sync::mpsc::SyncSender<Result<DecodedRecord, WalError>>,
) -> flamedb_wal::Replay {
    for record in replay.by_ref() {
        let item = match record {
            // Left by a cut-short trim: all in blocks already.
            Ok(record) if replay_from.is_some_and(|from| record.position.segment < from) => continue,
            Ok(record) => Ok(DecodedRecord {
                position: record.position,
                record: record::decode(&record.payload),
            }),
            Err(err) => Err(err),
        };
        let stop = item.is_err();
        if decoded.send(item).is_err() || stop {
            break;
        }
    }
    replay
}

impl Inner {
    /// Works out the series a profile is stored under.
    fn prepare(&self, labels: Labels, id: ProfileId, profile: Arc<Profile>) -> Result<Prepared, PushError> {
        if labels.get(flamedb_model::METRIC_NAME).is_none_or(str::is_empty) {
            return Err(PushError::MissingName {
                series: labels.render(),
            });
        }
        let inserts = typed_series(&labels, &profile)
            .into_iter()
            .map(|typed| SeriesInsert {
                fingerprint: typed.labels.fingerprint(),
                cumulative: is_cumulative(&labels, &typed.profile_type.sample_type),
                labels: typed.labels,
                sample_type_index: typed.sample_type_index,
            })
            .collect();
        let window = self.config.window_ms();
        let time_ms = profile.time_nanos.div_euclid(1_000_000);
        Ok(Prepared {
            id,
            window_start_ms: time_ms.div_euclid(window) * window,
            profile,
            inserts,
        })
    }
}

impl Ingester {
    /// Stores profiles of `tenant`: limits are checked, the batch is
    /// written to the WAL (fsync'd), then applied to the heads in WAL
    /// order; returns once all of that happened. An error means nothing
    /// was stored.
    pub async fn push(&self, tenant: &str, profiles: Vec<IncomingProfile>) -> Result<(), PushError> {
        let inner = &self.inner;
        self.check_accepting(tenant)?;
        let mut prepared = Vec::with_capacity(profiles.len());
        let mut encoded = Vec::with_capacity(profiles.len());
        for incoming in profiles {
            let ready = inner.prepare(incoming.labels.clone(), incoming.id, incoming.profile)?;
            encoded.push((incoming.labels, incoming.id, incoming.pprof));
            prepared.push(ready);
        }
        self.admit_series(tenant, &prepared)?;
        let payload = record::encode(tenant, encoded);
        // Weak: the WAL's own thread must never hold the last reference to
        // the ingester (dropping it there would close the WAL from within).
        // Should the ingester be gone, the record is durable and replayed
        // at the next start.
        let applier = Arc::downgrade(&self.inner);
        let owner = tenant.to_owned();
        let written = inner
            .wal
            .append_then(payload, move |position| {
                if let Some(inner) = applier.upgrade() {
                    inner.apply(&owner, prepared, position);
                }
            })
            .await;
        match written {
            Ok(_) => Ok(()),
            Err(err @ WalError::Applying { .. }) => {
                error!(error = %err, "a stored record could not be applied; refusing pushes until restarted");
                inner.apply_failed.store(true, Ordering::Relaxed);
                inner.metrics.refused("apply_failed");
                Err(err.into())
            }
            Err(err) => {
                inner.metrics.refused("wal");
                Err(err.into())
            }
        }
    }

    fn admit_series(&self, tenant: &str, prepared: &[Prepared]) -> Result<(), PushError> {
        let limits = (self.inner.limits)(tenant);
        let share = (self.inner.share)();
        let limit = SeriesLimit::new(
            limits.max_local_series_per_tenant,
            limits.max_global_series_per_tenant,
            share,
        );
        let fingerprints: Vec<u64> = prepared
            .iter()
            .flat_map(|p| p.inserts.iter().map(|insert| insert.fingerprint))
            .collect();
        let tenant_state = self.inner.tenant(tenant);
        let mut limiter = tenant_state.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        let admitted = limiter.admit(&fingerprints, limit.limit, now_ms());
        self.inner.metrics.set_active_series(tenant, limiter.active());
        admitted.map_err(|(active, new)| {
            self.inner.metrics.refused("series_limit");
            PushError::SeriesLimit {
                tenant: tenant.to_owned(),
                active,
                new,
                limit: limit.limit,
                global: limit.global,
                local: limit.local,
                healthy: share.healthy_ingesters,
                replication_factor: share.replication_factor,
            }
        })
    }

    /// Refuses work when head memory is at the ceiling, when it is nearly
    /// there and `tenant` holds more than its fair share (so the tenant at
    /// fault is the one refused, and inventing tenants only shrinks each
    /// share), when `tenant` would be one too many, or when the ingester
    /// failed. Checked before a push is decoded, and again before it is
    /// stored.
    pub fn check_accepting(&self, tenant: &str) -> Result<(), PushError> {
        let inner = &self.inner;
        if self.has_failed() {
            inner.metrics.refused("apply_failed");
            return Err(PushError::Failed);
        }
        let used = inner.head_bytes.load(Ordering::Relaxed);
        let limit = inner.config.max_head_memory_bytes;
        if used >= limit {
            inner.metrics.refused("memory_limit");
            return Err(PushError::MemoryLimit { used, limit });
        }
        let tenants = inner.tenants.read().unwrap_or_else(PoisonError::into_inner);
        let known = tenants.get(tenant);
        if known.is_none() && inner.config.max_tenants != 0 && tenants.len() >= inner.config.max_tenants {
            inner.metrics.refused("max_tenants");
            return Err(PushError::TooManyTenants {
                tenant: tenant.to_owned(),
                limit: inner.config.max_tenants,
            });
        }
        if (used as f64) >= limit as f64 * FAIR_SHARE_FROM {
            let held = known.map_or(0, |state| state.head_bytes.load(Ordering::Relaxed));
            let holding = tenants
                .values()
                .filter(|state| state.head_bytes.load(Ordering::Relaxed) > 0)
                .count()
                .max(1);
            let share = limit / holding;
            if held > share {
                inner.metrics.refused("tenant_memory_share");
                return Err(PushError::TenantMemoryShare {
                    tenant: tenant.to_owned(),
                    held,
                    share,
                    tenants: holding,
                    used,
                    limit,
                });
            }
        }
        Ok(())
    }

    /// Whether a stored record could not be applied; the ingester then
    /// needs a restart (readiness fails).
    pub fn has_failed(&self) -> bool {
        self.inner.apply_failed.load(Ordering::Relaxed)
    }

    /// Memory of the heads and the delta state of all tenants, in bytes.
    pub fn head_bytes(&self) -> usize {
        self.inner.head_bytes.load(Ordering::Relaxed)
    }

    /// The heads and blocks of `tenant` that may hold profiles in `range`.
    fn sources(&self, tenant: &str, range: TimeRange) -> (Vec<Arc<Head>>, Vec<Arc<LocalBlock>>) {
        let window = self.inner.config.window_ms();
        let Some(state) = self
            .inner
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
            .cloned()
        else {
            return (Vec::new(), Vec::new());
        };
        let data = state.data();
        let heads = data
            .live
            .values()
            .chain(&data.flushing)
            .filter(|head| range.overlaps(head.window_start_ms, head.window_start_ms.saturating_add(window - 1)))
            .cloned()
            .collect();
        let blocks = data
            .blocks
            .iter()
            .filter(|local| range.overlaps(local.block.meta().min_time, local.block.meta().max_time))
            .cloned()
            .collect();
        (heads, blocks)
    }

    /// Label names of the tenant's series matching any of `selectors`
    /// (all series for none), sorted.
    pub fn label_names(&self, tenant: &str, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        let (heads, blocks) = self.sources(tenant, range);
        sorted_union(
            heads.iter().map(|head| head.label_names(selectors, range)).chain(
                blocks
                    .iter()
                    .map(|local| local.block.series().label_names(selectors, range)),
            ),
        )
    }

    /// Values of label `name`, sorted.
    pub fn label_values(&self, tenant: &str, name: &str, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        let (heads, blocks) = self.sources(tenant, range);
        sorted_union(
            heads
                .iter()
                .map(|head| head.label_values(name, selectors, range))
                .chain(
                    blocks
                        .iter()
                        .map(|local| local.block.series().label_values(name, selectors, range)),
                ),
        )
    }

    /// The label sets of the matching series (projected on `label_names`
    /// when given), deduplicated and sorted.
    pub fn series(
        &self,
        tenant: &str,
        selectors: &[Selector],
        label_names: &[String],
        range: TimeRange,
    ) -> Vec<Labels> {
        let (heads, blocks) = self.sources(tenant, range);
        let mut all: Vec<Labels> = heads
            .iter()
            .flat_map(|head| head.series(selectors, range))
            .chain(
                blocks
                    .iter()
                    .flat_map(|local| local.block.series().series_labels(selectors, range)),
            )
            .map(|labels| {
                if label_names.is_empty() {
                    (*labels).clone()
                } else {
                    labels
                        .iter()
                        .filter(|label| label_names.contains(&label.name))
                        .cloned()
                        .collect()
                }
            })
            .collect();
        all.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
        all.dedup();
        all
    }

    /// The profile types with data, sorted by ID.
    pub fn profile_types(&self, tenant: &str, range: TimeRange) -> Vec<ProfileType> {
        let mut types: Vec<ProfileType> = self
            .label_values(tenant, flamedb_model::PROFILE_TYPE, &[], range)
            .iter()
            .filter_map(|id| ProfileType::parse(id).ok())
            .collect();
        types.sort_by_key(ProfileType::id);
        types
    }

    /// A page of the profiles matching `query`, by [`ProfileKey`] (time,
    /// series fingerprint, ID): at most `limit` of those after `after`,
    /// and whether more follow. Memory is bounded by the page, not the
    /// selection. Reads local blocks: call it where blocking is fine.
    pub fn select_profiles(
        &self,
        tenant: &str,
        query: &ProfileQuery,
        after: Option<ProfileKey>,
        limit: usize,
    ) -> Result<(Vec<SelectedProfile>, bool), QueryError> {
        let (heads, blocks) = self.sources(tenant, query.range);
        let mut page = PageCollector::new(after, limit);
        for head in heads {
            head.visit_profiles(query, |profile| page.offer(profile));
        }
        for local in blocks {
            local
                .block
                .visit_profiles(query, |profile| page.offer(profile))
                .map_err(|source| QueryError {
                    tenant: tenant.to_owned(),
                    source,
                })?;
        }
        Ok(page.finish())
    }

    /// Per series of the matching profiles: how many, their IDs summed and
    /// their totals summed. Replicas that hold the same profiles of a
    /// series answer alike. Reads local blocks: call it where blocking is
    /// fine.
    pub fn summarize_series(&self, tenant: &str, query: &ProfileQuery) -> Result<Vec<SeriesSummary>, QueryError> {
        let (heads, blocks) = self.sources(tenant, query.range);
        let mut summaries = SeriesSummaries::new();
        for head in heads {
            head.summarize_into(query, &mut summaries);
        }
        for local in blocks {
            local
                .block
                .summarize_into(query, &mut summaries)
                .map_err(|source| QueryError {
                    tenant: tenant.to_owned(),
                    source,
                })?;
        }
        let mut summaries: Vec<SeriesSummary> = summaries.into_values().collect();
        summaries.sort_unstable_by_key(|summary| summary.fingerprint);
        Ok(summaries)
    }

    /// The matching profiles (only those in `only`, when given; only the
    /// samples of `spans`, when given) merged into one tree by function
    /// name, within the tenant's query memory limit (the tree keeps
    /// charging it as it is encoded). Reads local blocks: call it where
    /// blocking is fine.
    pub fn merge(
        &self,
        tenant: &str,
        query: &ProfileQuery,
        only: Option<&HashSet<ProfileId>>,
        spans: Option<&HashSet<u64>>,
    ) -> Result<Tree, QueryError> {
        let (heads, blocks) = self.sources(tenant, query.range);
        let mut tree = Tree::within((self.inner.limits)(tenant).query_budget());
        for head in heads {
            head.merge_into(query, only, spans, &mut tree)
                .map_err(|err| QueryError {
                    tenant: tenant.to_owned(),
                    source: err.into(),
                })?;
        }
        for local in blocks {
            local
                .block
                .merge_into(query, only, spans, &mut tree)
                .map_err(|source| QueryError {
                    tenant: tenant.to_owned(),
                    source,
                })?;
        }
        Ok(tree)
    }

    /// Flushes every head to a block now; returns once they are on disk.
    pub async fn flush(&self) -> Result<FlushReport, FlushError> {
        self.flusher.flush().await
    }

    /// Uploads the local blocks not yet in object storage now; returns
    /// how many were uploaded (0 without a bucket).
    pub async fn ship(&self) -> Result<usize, BucketError> {
        match &self.inner.bucket {
            Some(bucket) => self.inner.ship(bucket).await,
            None => Ok(0),
        }
    }

    /// Flushes every head, uploads the blocks (once; what fails waits on
    /// disk for the next start), then stops the flusher and shipper.
    /// Pushes after this are still durable in the WAL and come back at the
    /// next start.
    pub async fn shutdown(&self) -> Result<FlushReport, ShutdownError> {
        let flushed = self.flusher.flush().await;
        self.flusher.stop().await;
        // The shipper stops first, so the last upload round is this one.
        if let Some(shipper) = &self.shipper {
            shipper.stop().await;
        }
        let shipped = self.ship().await;
        let report = flushed?;
        shipped?;
        Ok(report)
    }

    /// The time of the tenant's oldest and newest profile (ms), if any.
    pub fn profile_time_span(&self, tenant: &str) -> Option<(i64, i64)> {
        let (heads, blocks) = self.sources(tenant, TimeRange::ALL);
        heads
            .iter()
            .filter_map(|head| head.time_span())
            .chain(
                blocks
                    .iter()
                    .map(|local| (local.block.meta().min_time, local.block.meta().max_time)),
            )
            .reduce(|(min_a, max_a), (min_b, max_b)| (min_a.min(min_b), max_a.max(max_b)))
    }

    /// Local blocks of all tenants.
    pub fn local_blocks(&self) -> Vec<(String, BlockMeta)> {
        let tenants = self.inner.tenants.read().unwrap_or_else(PoisonError::into_inner);
        tenants
            .iter()
            .flat_map(|(tenant, state)| {
                state
                    .data()
                    .blocks
                    .iter()
                    .map(|local| (tenant.clone(), local.block.meta().clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Inner {
    pub(crate) fn tenant(&self, tenant: &str) -> Arc<TenantState> {
        if let Some(state) = self.tenants.read().unwrap_or_else(PoisonError::into_inner).get(tenant) {
            return state.clone();
        }
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        tenants.entry(tenant.to_owned()).or_default().clone()
    }

    /// Forgets the state of tenants that hold nothing any more, so tenants
    /// that come and go (or are made up) do not pile up. A state some push
    /// holds (its series being admitted, say) is kept: it is checked again
    /// under the write lock, where nobody else can take it.
    pub(crate) fn forget_idle_tenants(&self, now_ms: i64) {
        let idle: Vec<String> = self
            .all_tenants()
            .into_iter()
            .filter(|(_, state)| state.is_idle(now_ms))
            .map(|(tenant, _)| tenant)
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        for tenant in &idle {
            // Only the map holds it, so no lock inside it is taken.
            let unused = tenants
                .get(tenant)
                .is_some_and(|state| Arc::strong_count(state) == 1 && state.is_idle(now_ms));
            if unused {
                tenants.remove(tenant);
                self.metrics.forget_tenant(tenant);
            }
        }
    }

    /// Every tenant and its state.
    pub(crate) fn all_tenants(&self) -> Vec<(String, Arc<TenantState>)> {
        let tenants = self.tenants.read().unwrap_or_else(PoisonError::into_inner);
        tenants
            .iter()
            .map(|(name, state)| (name.clone(), state.clone()))
            .collect()
    }

    /// Applies profiles to their live heads; runs in WAL order, on the WAL
    /// completion thread (or at start-up, before anything else runs).
    fn apply(&self, tenant: &str, prepared: Vec<Prepared>, position: Position) {
        let state = self.tenant(tenant);
        let mut delta = state.delta();
        let delta_before = delta.bytes();
        for profile in prepared {
            let head = state
                .data()
                .live
                .entry(profile.window_start_ms)
                .or_insert_with(|| Arc::new(Head::new(profile.window_start_ms)))
                .clone();
            let grown = head.insert(
                profile.id,
                &profile.profile,
                &profile.inserts,
                &mut delta,
                Some(position),
            );
            self.add_head_bytes(&state, grown);
            self.metrics.ingested(grown);
        }
        let delta_after = delta.bytes();
        drop(delta);
        if delta_after >= delta_before {
            self.add_head_bytes(&state, delta_after - delta_before);
        } else {
            self.release_head_bytes(&state, delta_before - delta_after);
        }
        self.metrics.set_head_bytes(self.head_bytes.load(Ordering::Relaxed));
    }

    /// Adds `bytes` to the head memory of the ingester and of `tenant`.
    fn add_head_bytes(&self, tenant: &TenantState, bytes: usize) {
        self.head_bytes.fetch_add(bytes, Ordering::Relaxed);
        tenant.head_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Takes `bytes` off the head memory of the ingester and of `tenant`
    /// (never below zero).
    pub(crate) fn release_head_bytes(&self, tenant: &TenantState, bytes: usize) {
        for figure in [&self.head_bytes, &tenant.head_bytes] {
            let _ = figure.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
        }
        self.metrics.set_head_bytes(self.head_bytes.load(Ordering::Relaxed));
    }

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.config.data_dir.join(SNAPSHOTS_DIR)
    }

    /// Loads the delta state the WAL's oldest segment started with;
    /// returns the segment replay starts at when that is not the oldest.
    /// Trimming leaves the oldest segment with its snapshot (or the WAL's
    /// first segment, which starts empty); a trim cut short by a crash can
    /// leave older segments, whose records are all in blocks: replay then
    /// starts at the oldest snapshot after them.
    fn restore_delta_state(&self, first: Option<SegmentId>) -> Option<SegmentId> {
        let first = first?;
        let dir = self.snapshots_dir();
        let saved = match snapshots::list(&dir) {
            Ok(saved) => saved,
            Err(err) => {
                warn!(dir = %dir.display(), error = %err, "cannot list the delta state snapshots; cumulative series start from a new baseline");
                return None;
            }
        };
        let start = if saved.contains(&first) || first == SegmentId(1) {
            first
        } else if let Some(&later) = saved.iter().find(|segment| **segment > first) {
            info!(from = %first, to = %later, "finishing a WAL trim that was cut short");
            later
        } else {
            warn!(segment = %first, "no delta state saved for the oldest WAL segment; cumulative series start from a new baseline");
            return None;
        };
        match snapshots::load(&dir, start) {
            Ok(snapshot) => {
                for tenant in snapshot.map(|snapshot| snapshot.tenants).unwrap_or_default() {
                    let state = self.tenant(&tenant.tenant);
                    *state.delta() = DeltaState::from_snapshot(tenant);
                }
            }
            Err(err) => {
                warn!(segment = %start, error = %err, "cannot read the delta state; cumulative series start from a new baseline")
            }
        }
        Some(start)
    }

    /// Sets the memory figure from the heads and delta states themselves.
    fn recount_memory(&self) {
        let mut bytes = 0;
        for (_, state) in self.all_tenants() {
            let mut tenant_bytes = state.delta().bytes();
            let data = state.data();
            tenant_bytes += data
                .live
                .values()
                .chain(&data.flushing)
                .map(|head| head.bytes())
                .sum::<usize>();
            state.head_bytes.store(tenant_bytes, Ordering::Relaxed);
            bytes += tenant_bytes;
        }
        self.head_bytes.store(bytes, Ordering::Relaxed);
        self.metrics.set_head_bytes(bytes);
    }

    pub(crate) fn update_block_gauge(&self) {
        let (mut blocks, mut pending) = (0, 0);
        for (_, state) in self.all_tenants() {
            let data = state.data();
            blocks += data.blocks.len();
            pending += data.blocks.iter().filter(|block| !block.is_uploaded()).count();
        }
        self.metrics.set_local_blocks(blocks, pending);
    }
}

/// Keeps the smallest `limit` (+1, to know whether more follow) profiles
/// after a key, each key once.
struct PageCollector {
    after: Option<ProfileKey>,
    limit: usize,
    kept: BTreeMap<ProfileKey, SelectedProfile>,
}

impl PageCollector {
    fn new(after: Option<ProfileKey>, limit: usize) -> Self {
        Self {
            after,
            limit,
            kept: BTreeMap::new(),
        }
    }

    fn offer(&mut self, profile: SelectedProfile) {
        let key = profile.key();
        if self.after.is_some_and(|after| key <= after) {
            return;
        }
        if self.kept.len() > self.limit && self.kept.last_key_value().is_some_and(|(last, _)| key >= *last) {
            return;
        }
        self.kept.insert(key, profile);
        if self.kept.len() > self.limit.saturating_add(1) {
            self.kept.pop_last();
        }
    }

    /// The page in key order and whether more follow.
    fn finish(self) -> (Vec<SelectedProfile>, bool) {
        let more = self.kept.len() > self.limit;
        (self.kept.into_values().take(self.limit).collect(), more)
    }
}

fn sorted_union(lists: impl Iterator<Item = Vec<String>>) -> Vec<String> {
    let mut all: Vec<String> = lists.flatten().collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn now_ms() -> i64 {
    now_nanos() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tenants holding nothing (no heads, blocks, delta state or active
    /// series) are forgotten; the others are kept.
    #[tokio::test]
    async fn test_idle_tenants_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (ingester, _) = Ingester::start(
            IngesterConfig::new(dir.path()),
            Arc::new(|_| Arc::new(flamedb_model::Limits::default())),
            Arc::new(|| ClusterShare::ALONE),
            IngesterMetrics::register(&mut prometheus_client::registry::Registry::default()),
            None,
        )
        .unwrap();
        let inner = &ingester.inner;
        let now = now_ms();
        inner.tenant("ghost");
        let series = inner.tenant("series-only");
        series.limiter.lock().unwrap().admit(&[7], 0, now).unwrap();
        inner.tenant("busy").data().live.insert(0, Arc::new(Head::new(0)));
        drop(series);
        inner.forget_idle_tenants(now);
        let names = |inner: &Inner| -> Vec<String> { inner.all_tenants().into_iter().map(|(name, _)| name).collect() };
        assert_eq!(names(inner), ["busy", "series-only"]);
        // An hour later the series are idle too; a state a push holds is
        // kept whatever it holds.
        let held = inner.tenant("series-only");
        inner.forget_idle_tenants(now + 3_600_000);
        assert_eq!(names(inner), ["busy", "series-only"]);
        drop(held);
        inner.forget_idle_tenants(now + 3_600_000);
        assert_eq!(names(inner), ["busy"]);
    }
}
