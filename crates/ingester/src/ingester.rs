//! The ingester service: accepts pushes (limits checked, then the WAL, then
//! the heads, in WAL order), replays the WAL on start, and answers queries
//! over its heads.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use flamedb_model::pprof::Profile;
use flamedb_model::{Labels, Limits, ProfileId, ProfileType, Selector, Tree, now_nanos, typed_series};
use flamedb_wal::{Position, ReplayStats, Wal, WalConfig, WalError};
use prost::Message;
use tracing::{info, warn};

use crate::delta::{DeltaState, is_cumulative};
use crate::head::{Head, ProfileQuery, SelectedProfile, SeriesInsert, TimeRange};
use crate::limiter::{ClusterShare, SeriesLimit, SeriesLimiter};
use crate::metrics::IngesterMetrics;
use crate::record;

/// Ingester settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngesterConfig {
    /// Where the WAL and the blocks live.
    pub data_dir: PathBuf,
    /// Width of a head's time window (by profile time).
    pub max_block_duration: Duration,
    /// Head memory (all tenants) past which pushes are refused.
    pub max_head_memory_bytes: usize,
    pub wal_segment_bytes: u64,
}

impl IngesterConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_block_duration: Duration::from_secs(3600),
            max_head_memory_bytes: 1 << 30,
            wal_segment_bytes: 64 << 20,
        }
    }

    fn window_ms(&self) -> i64 {
        i64::try_from(self.max_block_duration.as_millis())
            .unwrap_or(i64::MAX)
            .max(5_000)
    }
}

/// The limits of each tenant.
pub type TenantLimits = Arc<dyn Fn(&str) -> Arc<Limits> + Send + Sync>;
/// How many ingesters share the series, for global limits.
pub type ShareOfCluster = Arc<dyn Fn() -> ClusterShare + Send + Sync>;

/// One profile to store: the labels of its series (after splitting), the
/// ID the distributor gave it, and the normalized profile.
#[derive(Debug, Clone)]
pub struct IncomingProfile {
    pub labels: Labels,
    pub id: ProfileId,
    pub profile: Profile,
}

/// Why a push was refused; nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(
        "ingester head memory is at {used} bytes, the limit -ingester.max-head-memory is {limit} bytes: retry later"
    )]
    MemoryLimit { used: usize, limit: usize },
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
}

/// Why the ingester could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// What start-up found in the WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub wal: ReplayStats,
    pub profiles: u64,
    /// Records that could not be decoded (skipped, counted).
    pub unreadable_records: u64,
}

/// A tenant's heads and its series accounting.
#[derive(Debug, Default)]
struct TenantState {
    /// Heads by window start.
    heads: Mutex<BTreeMap<i64, Arc<Head>>>,
    limiter: Mutex<SeriesLimiter>,
    delta: Mutex<DeltaState>,
}

impl TenantState {
    fn head(&self, window_start_ms: i64) -> Arc<Head> {
        let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        heads
            .entry(window_start_ms)
            .or_insert_with(|| Arc::new(Head::new(window_start_ms)))
            .clone()
    }

    fn heads(&self) -> Vec<Arc<Head>> {
        let heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        heads.values().cloned().collect()
    }
}

/// A profile ready to be applied: where it goes and under which series.
#[derive(Debug)]
struct Prepared {
    id: ProfileId,
    profile: Profile,
    window_start_ms: i64,
    inserts: Vec<SeriesInsert>,
}

struct Inner {
    config: IngesterConfig,
    limits: TenantLimits,
    share: ShareOfCluster,
    wal: Wal,
    tenants: RwLock<BTreeMap<String, Arc<TenantState>>>,
    head_bytes: AtomicUsize,
    metrics: IngesterMetrics,
}

/// The ingester; cheap to clone.
#[derive(Clone)]
pub struct Ingester {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ingester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingester")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Ingester {
    /// Opens the WAL under `config.data_dir` and replays it into heads;
    /// the ingester answers nothing before this returns.
    pub fn start(
        config: IngesterConfig,
        limits: TenantLimits,
        share: ShareOfCluster,
        metrics: IngesterMetrics,
    ) -> Result<(Self, ReplayReport), StartError> {
        let wal_config = WalConfig {
            segment_bytes: config.wal_segment_bytes,
            ..WalConfig::new(config.data_dir.join("wal"))
        };
        let (wal, replay) = Wal::open(wal_config)?;
        let ingester = Self {
            inner: Arc::new(Inner {
                config,
                limits,
                share,
                wal,
                tenants: RwLock::new(BTreeMap::new()),
                head_bytes: AtomicUsize::new(0),
                metrics,
            }),
        };
        let report = ingester.replay(replay)?;
        info!(
            records = report.wal.records,
            bytes = report.wal.bytes,
            profiles = report.profiles,
            repaired_segments = report.wal.repaired_segments,
            unreadable_records = report.unreadable_records,
            head_bytes = ingester.head_bytes(),
            "WAL replayed"
        );
        Ok((ingester, report))
    }

    fn replay(&self, mut replay: flamedb_wal::Replay) -> Result<ReplayReport, StartError> {
        let mut report = ReplayReport::default();
        for record in replay.by_ref() {
            let record = record?;
            match record::decode(&record.payload) {
                Ok((tenant, profiles)) => {
                    let prepared: Vec<Prepared> = profiles
                        .into_iter()
                        .filter_map(|profile| self.prepare(profile.labels, profile.id, profile.profile).ok())
                        .collect();
                    report.profiles += prepared.len() as u64;
                    let tenant_state = self.inner.tenant(&tenant);
                    {
                        let mut limiter = tenant_state.limiter.lock().unwrap_or_else(PoisonError::into_inner);
                        let now = now_ms();
                        for insert in prepared.iter().flat_map(|p| &p.inserts) {
                            limiter.touch(insert.fingerprint, now);
                        }
                    }
                    self.inner.apply(&tenant, prepared, Some(record.position));
                }
                Err(err) => {
                    warn!(segment = %record.position.segment, offset = record.position.offset, error = %err, "skipping an unreadable WAL record");
                    report.unreadable_records += 1;
                }
            }
        }
        report.wal = replay.stats();
        self.inner.metrics.record_replay(&report);
        Ok(report)
    }

    /// Works out the series a profile is stored under.
    fn prepare(&self, labels: Labels, id: ProfileId, profile: Profile) -> Result<Prepared, PushError> {
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
        let window = self.inner.config.window_ms();
        let time_ms = profile.time_nanos.div_euclid(1_000_000);
        Ok(Prepared {
            id,
            window_start_ms: time_ms.div_euclid(window) * window,
            profile,
            inserts,
        })
    }

    /// Stores profiles of `tenant`: limits are checked, the batch is
    /// written to the WAL (fsync'd), then applied to the heads in WAL
    /// order; returns once all of that happened. An error means nothing
    /// was stored.
    pub async fn push(&self, tenant: &str, profiles: Vec<IncomingProfile>) -> Result<(), PushError> {
        let inner = &self.inner;
        let used = inner.head_bytes.load(Ordering::Relaxed);
        if used >= inner.config.max_head_memory_bytes {
            inner.metrics.refused("memory_limit");
            return Err(PushError::MemoryLimit {
                used,
                limit: inner.config.max_head_memory_bytes,
            });
        }
        let mut prepared = Vec::with_capacity(profiles.len());
        let mut encoded = Vec::with_capacity(profiles.len());
        for incoming in profiles {
            let pprof = incoming.profile.encode_to_vec();
            let ready = self.prepare(incoming.labels.clone(), incoming.id, incoming.profile)?;
            encoded.push((incoming.labels, incoming.id, pprof));
            prepared.push(ready);
        }
        self.admit_series(tenant, &prepared)?;
        let payload = record::encode(tenant, encoded);
        let applier = self.inner.clone();
        let owner = tenant.to_owned();
        let written = inner
            .wal
            .append_then(payload, move |position| applier.apply(&owner, prepared, Some(position)))
            .await;
        if let Err(err) = written {
            inner.metrics.refused("wal");
            return Err(err.into());
        }
        Ok(())
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

    /// Head memory of all tenants, in bytes.
    pub fn head_bytes(&self) -> usize {
        self.inner.head_bytes.load(Ordering::Relaxed)
    }

    fn tenant_heads(&self, tenant: &str, range: TimeRange) -> Vec<Arc<Head>> {
        let window = self.inner.config.window_ms();
        let tenants = self.inner.tenants.read().unwrap_or_else(PoisonError::into_inner);
        tenants.get(tenant).map_or_else(Vec::new, |state| {
            state
                .heads()
                .into_iter()
                .filter(|head| range.overlaps(head.window_start_ms, head.window_start_ms + window - 1))
                .collect()
        })
    }

    /// Label names of the tenant's series matching any of `selectors`
    /// (all series for none), sorted.
    pub fn label_names(&self, tenant: &str, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        sorted_union(
            self.tenant_heads(tenant, range)
                .iter()
                .map(|head| head.label_names(selectors, range)),
        )
    }

    /// Values of label `name`, sorted.
    pub fn label_values(&self, tenant: &str, name: &str, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        sorted_union(
            self.tenant_heads(tenant, range)
                .iter()
                .map(|head| head.label_values(name, selectors, range)),
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
        let mut all: Vec<Labels> = self
            .tenant_heads(tenant, range)
            .iter()
            .flat_map(|head| head.series(selectors, range))
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
        all.sort_by_key(Labels::render);
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

    /// The profiles matching `query`.
    pub fn select_profiles(&self, tenant: &str, query: &ProfileQuery) -> Vec<SelectedProfile> {
        self.tenant_heads(tenant, query.range)
            .iter()
            .flat_map(|head| head.select_profiles(query))
            .collect()
    }

    /// The matching profiles (only those in `only`, when given) merged into
    /// one tree by function name.
    pub fn merge(&self, tenant: &str, query: &ProfileQuery, only: Option<&HashSet<ProfileId>>) -> Tree {
        let mut tree = Tree::new();
        for head in self.tenant_heads(tenant, query.range) {
            head.merge_into(query, only, &mut tree);
        }
        tree
    }
}

impl Inner {
    fn tenant(&self, tenant: &str) -> Arc<TenantState> {
        if let Some(state) = self.tenants.read().unwrap_or_else(PoisonError::into_inner).get(tenant) {
            return state.clone();
        }
        let mut tenants = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        tenants.entry(tenant.to_owned()).or_default().clone()
    }

    /// Applies profiles to their heads; runs in WAL order.
    fn apply(&self, tenant: &str, prepared: Vec<Prepared>, position: Option<Position>) {
        let state = self.tenant(tenant);
        let mut delta = state.delta.lock().unwrap_or_else(PoisonError::into_inner);
        for profile in prepared {
            let head = state.head(profile.window_start_ms);
            let grown = head.insert(profile.id, &profile.profile, &profile.inserts, &mut delta, position);
            self.head_bytes.fetch_add(grown, Ordering::Relaxed);
            self.metrics.ingested(grown);
        }
        self.metrics.set_head_bytes(self.head_bytes.load(Ordering::Relaxed));
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
