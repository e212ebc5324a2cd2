//! Ring members shared by gossip (chitchat over UDP): every process
//! publishes the instances it runs in its own key-value state, and builds
//! each ring from the states of all known processes, live or recently dead.
//!
//! Keys of a process's state:
//! - `ring/<ring>/<instance>`: the instance (JSON);
//! - `hb/<ring>/<instance>`: its last heartbeat, ms since the epoch;
//! - `forget/<ring>/<instance>`: a forget marker, the heartbeat the
//!   instance had when it was forgotten (expires after the dead-node grace
//!   period, by which time the dead process's state is gone).
//!
//! An instance seen in several states (a process restarted with a new
//! generation) is taken from the one with the newest heartbeat; an instance
//! whose heartbeat is not newer than a forget marker is left out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chitchat::transport::Transport;
use chitchat::{Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::MemberlistConfig;
use crate::desc::{InstanceDesc, now_ms};
use crate::store::{BoxFuture, Members, RingStore, StoreError};

/// How often the ring views are rebuilt from the gossiped state.
const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// One process seen through gossip, for the `/memberlist` page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GossipMember {
    pub node: String,
    pub generation: u64,
    pub address: SocketAddr,
    pub live: bool,
    pub keys: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// A [`RingStore`] over gossip.
pub struct MemberlistStore {
    config: MemberlistConfig,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    rings: Mutex<BTreeMap<String, watch::Sender<Members>>>,
    members: Family<StateLabel, Gauge>,
}

impl std::fmt::Debug for MemberlistStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberlistStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl MemberlistStore {
    /// Joins (or starts) the cluster and keeps the ring views up to date
    /// until `cancel`; the returned task ends then.
    pub async fn start(
        config: MemberlistConfig,
        transport: &dyn Transport,
        registry: &mut Registry,
        cancel: CancellationToken,
    ) -> Result<(Arc<Self>, JoinHandle<()>), StoreError> {
        let generation = u64::try_from(now_ms()).unwrap_or_default();
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(config.node_name.clone(), generation, config.advertise_addr),
            cluster_id: if config.cluster_label.is_empty() {
                "flamedb".to_owned()
            } else {
                config.cluster_label.clone()
            },
            gossip_interval: config.gossip_interval,
            listen_addr: config.bind_addr,
            seed_nodes: config.join_members.clone(),
            failure_detector_config: FailureDetectorConfig {
                dead_node_grace_period: config.dead_node_grace_period,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: config.dead_node_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let handle = chitchat::spawn_chitchat(chitchat_config, Vec::new(), transport)
            .await
            .map_err(|err| StoreError::Gossip {
                address: config.bind_addr.to_string(),
                reason: format!("{err:#}"),
            })?;
        info!(
            node = %config.node_name,
            bind = %config.bind_addr,
            advertise = %config.advertise_addr,
            join = ?config.join_members,
            cluster_label = %config.cluster_label,
            "gossip membership started"
        );
        let members = Family::<StateLabel, Gauge>::default();
        registry.register(
            "flamedb_memberlist_members",
            "Processes known through gossip, by state (live or dead)",
            members.clone(),
        );
        let store = Arc::new(Self {
            chitchat: handle.chitchat(),
            handle: tokio::sync::Mutex::new(Some(handle)),
            rings: Mutex::new(BTreeMap::new()),
            config,
            members,
        });
        let refresher = tokio::spawn(refresh_loop(store.clone(), cancel));
        Ok((store, refresher))
    }

    /// The processes known through gossip.
    pub async fn members(&self) -> Vec<GossipMember> {
        let chitchat = self.chitchat.lock().await;
        let live: Vec<ChitchatId> = chitchat.live_nodes().cloned().collect();
        chitchat
            .node_states()
            .iter()
            .map(|(id, state)| GossipMember {
                node: id.node_id.to_string(),
                generation: id.generation_id,
                address: id.gossip_advertise_addr,
                live: live.contains(id),
                keys: state.key_values().count(),
            })
            .collect()
    }

    /// Stops gossiping after giving the last changes (a leaving instance)
    /// a few rounds to spread.
    pub async fn shutdown(&self) {
        tokio::time::sleep(self.config.gossip_interval * 3).await;
        let handle = self.handle.lock().await.take();
        if let Some(handle) = handle
            && let Err(err) = handle.shutdown().await
        {
            warn!(error = %err, "gossip did not stop cleanly");
        }
    }

    async fn with_self_state(&self, change: impl FnOnce(&mut chitchat::NodeState)) {
        let mut chitchat = self.chitchat.lock().await;
        change(chitchat.self_node_state());
    }

    fn sender(&self, ring: &str) -> watch::Sender<Members> {
        let mut rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
        rings
            .entry(ring.to_owned())
            .or_insert_with(|| {
                // A ring watched for the first time starts from what is
                // known now, if the state is free; else the next refresh
                // fills it in.
                let members = self
                    .chitchat
                    .try_lock()
                    .ok()
                    .and_then(|chitchat| build_views(chitchat.node_states().values()).remove(ring))
                    .unwrap_or_default();
                watch::channel(Arc::new(members)).0
            })
            .clone()
    }

    /// Rebuilds every ring view from the gossiped states.
    async fn refresh(&self) {
        let (views, live, dead) = {
            let chitchat = self.chitchat.lock().await;
            let live = chitchat.live_nodes().count();
            let dead = chitchat.dead_nodes().count();
            (build_views(chitchat.node_states().values()), live, dead)
        };
        self.members
            .get_or_create(&StateLabel { state: "live" })
            .set(live as i64);
        self.members
            .get_or_create(&StateLabel { state: "dead" })
            .set(dead as i64);
        let rings: Vec<(String, watch::Sender<Members>)> = {
            let rings = self.rings.lock().unwrap_or_else(PoisonError::into_inner);
            rings
                .iter()
                .map(|(name, sender)| (name.clone(), sender.clone()))
                .collect()
        };
        for (name, sender) in rings {
            let members = views.get(&name).cloned().unwrap_or_default();
            sender.send_if_modified(|current| {
                if current.as_slice() == members.as_slice() {
                    return false;
                }
                *current = Arc::new(members);
                true
            });
        }
    }
}

async fn refresh_loop(store: Arc<MemberlistStore>, cancel: CancellationToken) {
    let mut interval = tokio::time::interval(REFRESH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => store.refresh().await,
        }
    }
}

fn ring_key(ring: &str, instance_id: &str) -> String {
    format!("ring/{ring}/{instance_id}")
}

fn heartbeat_key(ring: &str, instance_id: &str) -> String {
    format!("hb/{ring}/{instance_id}")
}

fn forget_key(ring: &str, instance_id: &str) -> String {
    format!("forget/{ring}/{instance_id}")
}

/// The newest heartbeat any process gossips for an instance.
fn newest_heartbeat<'a>(
    states: impl Iterator<Item = &'a chitchat::NodeState>,
    ring: &str,
    instance_id: &str,
) -> Option<i64> {
    let ring_key = ring_key(ring, instance_id);
    let heartbeat_key = heartbeat_key(ring, instance_id);
    states
        .filter(|state| state.get(&ring_key).is_some())
        .filter_map(|state| {
            let from_desc = state
                .get(&ring_key)
                .and_then(|json| serde_json::from_str::<InstanceDesc>(json).ok())
                .map(|desc| desc.heartbeat_ms);
            let from_key = state.get(&heartbeat_key).and_then(|ms| ms.parse::<i64>().ok());
            from_desc.max(from_key)
        })
        .max()
}

/// Every ring's members from the key-value states of all processes.
fn build_views<'a>(states: impl Iterator<Item = &'a chitchat::NodeState>) -> BTreeMap<String, Vec<InstanceDesc>> {
    let mut instances: BTreeMap<(String, String), InstanceDesc> = BTreeMap::new();
    let mut forgotten: BTreeMap<(String, String), i64> = BTreeMap::new();
    for state in states {
        let value_of = |prefix: &str, ring: &str, id: &str| state.get(&format!("{prefix}/{ring}/{id}"));
        for (key, value) in state.key_values() {
            let mut parts = key.splitn(3, '/');
            let (Some(kind), Some(ring), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let name = (ring.to_owned(), id.to_owned());
            match kind {
                "ring" => {
                    let Ok(mut desc) = serde_json::from_str::<InstanceDesc>(value) else {
                        warn!(key, "ignoring an unreadable ring entry");
                        continue;
                    };
                    let heartbeat = value_of("hb", ring, id).and_then(|ms| ms.parse::<i64>().ok());
                    desc.heartbeat_ms = desc.heartbeat_ms.max(heartbeat.unwrap_or(0));
                    match instances.get(&name) {
                        Some(known) if known.heartbeat_ms >= desc.heartbeat_ms => {}
                        _ => {
                            instances.insert(name, desc);
                        }
                    }
                }
                "forget" => {
                    if let Ok(heartbeat) = value.parse::<i64>() {
                        let marker = forgotten.entry(name).or_insert(heartbeat);
                        *marker = (*marker).max(heartbeat);
                    }
                }
                _ => {}
            }
        }
    }
    let mut views: BTreeMap<String, Vec<InstanceDesc>> = BTreeMap::new();
    for ((ring, id), desc) in instances {
        let forgotten = forgotten
            .get(&(ring.clone(), id))
            .is_some_and(|&marker| desc.heartbeat_ms <= marker);
        if !forgotten {
            views.entry(ring).or_default().push(desc);
        }
    }
    views
}

impl RingStore for MemberlistStore {
    fn publish<'a>(&'a self, ring: &'a str, desc: InstanceDesc) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&desc).map_err(|err| StoreError::Encode {
                ring: ring.to_owned(),
                instance: desc.id.clone(),
                reason: err.to_string(),
            })?;
            self.with_self_state(|state| {
                state.set(ring_key(ring, &desc.id), json);
                state.set(heartbeat_key(ring, &desc.id), desc.heartbeat_ms);
            })
            .await;
            // This process's own view holds the change at once: a view
            // without it made the lifecycler think it had been forgotten.
            self.refresh().await;
            Ok(())
        })
    }

    fn heartbeat<'a>(
        &'a self,
        ring: &'a str,
        instance_id: &'a str,
        at_ms: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.with_self_state(|state| state.set(heartbeat_key(ring, instance_id), at_ms))
                .await;
            Ok(())
        })
    }

    fn leave<'a>(&'a self, ring: &'a str, instance_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            {
                let mut chitchat = self.chitchat.lock().await;
                // Older registrations of the instance (a process killed
                // before a restart) still gossip; a forget marker hides them.
                let newest = newest_heartbeat(chitchat.node_states().values(), ring, instance_id);
                let state = chitchat.self_node_state();
                for key in [ring_key(ring, instance_id), heartbeat_key(ring, instance_id)] {
                    if state.get(&key).is_some() {
                        state.delete(&key);
                    }
                }
                if let Some(heartbeat) = newest {
                    state.set_with_ttl(forget_key(ring, instance_id), heartbeat);
                }
            }
            self.refresh().await;
            Ok(())
        })
    }

    fn forget<'a>(&'a self, ring: &'a str, instance_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            {
                // The marker takes the newest heartbeat gossip holds now, in
                // the same critical section that sets it.
                let mut chitchat = self.chitchat.lock().await;
                let Some(heartbeat) = newest_heartbeat(chitchat.node_states().values(), ring, instance_id) else {
                    return Err(StoreError::NotInRing {
                        ring: ring.to_owned(),
                        instance: instance_id.to_owned(),
                    });
                };
                chitchat
                    .self_node_state()
                    .set_with_ttl(forget_key(ring, instance_id), heartbeat);
            }
            self.refresh().await;
            Ok(())
        })
    }

    fn watch(&self, ring: &str) -> watch::Receiver<Members> {
        self.sender(ring).subscribe()
    }

    fn is_synced(&self) -> bool {
        self.config.join_members.is_empty()
            || self
                .chitchat
                .try_lock()
                .is_ok_and(|chitchat| chitchat.live_nodes().count() > 1)
    }

    fn wait_until_synced(&self, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            if self.config.join_members.is_empty() {
                return true;
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                if self.chitchat.lock().await.live_nodes().count() > 1 {
                    // One more refresh so the views hold what was heard.
                    self.refresh().await;
                    return true;
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }
}

#[cfg(test)]
mod tests;
