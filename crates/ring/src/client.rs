//! A process's read view of one ring: the members the store delivers,
//! turned into a [`Ring`] snapshot whenever they change, and the ring
//! metrics, refreshed every few seconds (health changes with time).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::RingConfig;
use crate::desc::now_ms;
use crate::ring::Ring;
use crate::store::RingStore;

const METRICS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MemberLabels {
    ring: &'static str,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RingLabel {
    ring: &'static str,
}

/// The ring metrics of a process, shared by its ring views (each labels
/// its series with its ring name).
#[derive(Debug, Clone)]
pub struct RingMetrics {
    members: Family<MemberLabels, Gauge>,
    oldest_heartbeat: Family<RingLabel, Gauge>,
}

impl RingMetrics {
    /// Registers `flamedb_ring_members` and
    /// `flamedb_ring_oldest_heartbeat_age_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            members: Family::default(),
            oldest_heartbeat: Family::default(),
        };
        registry.register(
            "flamedb_ring_members",
            "Instances in the ring by state; UNHEALTHY counts those with a stale heartbeat",
            metrics.members.clone(),
        );
        registry.register(
            "flamedb_ring_oldest_heartbeat_age_seconds",
            "Age of the oldest heartbeat of any instance in the ring",
            metrics.oldest_heartbeat.clone(),
        );
        metrics
    }
}

/// The latest snapshot of a ring.
#[derive(Debug, Clone)]
pub struct RingClient {
    name: &'static str,
    snapshot: watch::Receiver<Arc<Ring>>,
}

impl RingClient {
    /// Follows ring `name` in `store` until `cancel`, recording its
    /// metrics in `metrics`.
    pub fn start(
        name: &'static str,
        store: &Arc<dyn RingStore>,
        config: RingConfig,
        metrics: RingMetrics,
        cancel: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let mut members = store.watch(name);
        let initial = Ring::new(members.borrow_and_update().to_vec(), config.clone());
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(initial));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_INTERVAL);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = members.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let ring = Ring::new(members.borrow_and_update().to_vec(), config.clone());
                        record(name, &ring, &metrics);
                        snapshot_tx.send_replace(Arc::new(ring));
                    }
                    _ = tick.tick() => record(name, &snapshot_tx.borrow(), &metrics),
                }
            }
        });
        (
            Self {
                name,
                snapshot: snapshot_rx,
            },
            task,
        )
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The current snapshot.
    pub fn ring(&self) -> Arc<Ring> {
        self.snapshot.borrow().clone()
    }

    /// Waits until the snapshot satisfies `ready` (for start-up and tests).
    pub async fn wait_for(&mut self, ready: impl Fn(&Ring) -> bool) -> Arc<Ring> {
        let waited = self
            .snapshot
            .wait_for(|ring| ready(ring))
            .await
            .map(|ring| ring.clone());
        waited.unwrap_or_else(|_| self.ring())
    }
}

fn record(name: &'static str, ring: &Ring, metrics: &RingMetrics) {
    let now = now_ms();
    let mut unhealthy = 0;
    for (state, total, stale) in ring.count_by_health(now) {
        unhealthy += stale;
        metrics
            .members
            .get_or_create(&MemberLabels {
                ring: name,
                state: state.as_str(),
            })
            .set((total - stale) as i64);
    }
    metrics
        .members
        .get_or_create(&MemberLabels {
            ring: name,
            state: "UNHEALTHY",
        })
        .set(unhealthy as i64);
    let oldest = ring
        .instances()
        .iter()
        .map(|desc| desc.heartbeat_age(now).as_secs())
        .max()
        .unwrap_or(0);
    metrics
        .oldest_heartbeat
        .get_or_create(&RingLabel { ring: name })
        .set(i64::try_from(oldest).unwrap_or(i64::MAX));
}
