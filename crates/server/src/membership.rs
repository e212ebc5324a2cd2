//! The ring membership of a process: the ring store (in memory or gossip),
//! the lifecyclers of the instances it runs (an ingester, a distributor)
//! and its views of the rings. Addresses, names and IDs left empty in the
//! configuration are worked out here.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flamedb_ring::{
    InMemoryStore, Lifecycler, LifecyclerConfig, LifecyclerHandle, MemberlistConfig, MemberlistStore, RingClient,
    RingConfig, RingMetrics, RingStore,
};
use prometheus_client::registry::Registry;
use rand::RngExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, InstanceRingSettings, StoreKind, Target};

/// The ring of ingesters.
pub const INGESTER_RING: &str = "ingester";
/// The ring distributors count each other in.
pub const DISTRIBUTOR_RING: &str = "distributor";
/// The ring compactors split tenants over.
pub const COMPACTOR_RING: &str = "compactor";
/// Distributors hold one token; they are counted, not sharded to.
const DISTRIBUTOR_TOKENS: usize = 1;
/// Compactors hold enough tokens for tenants to split evenly.
const COMPACTOR_TOKENS: usize = 128;
/// The gossip port of members listed without one.
const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// Forgetting a distributor or a compactor: after this many heartbeat
/// timeouts.
const INSTANCE_FORGET_TIMEOUTS: u32 = 10;

/// A check `/ready` runs, with what it waits for.
pub type ReadinessCheck = (std::borrow::Cow<'static, str>, Box<dyn Fn() -> bool + Send + Sync>);

/// Everything ring-related a process runs.
pub struct Membership {
    pub store: Arc<dyn RingStore>,
    /// Set when the store is gossip.
    pub gossip: Option<Arc<MemberlistStore>>,
    pub ingester_ring: RingClient,
    /// Set when the process runs a distributor.
    pub distributor_ring: Option<RingClient>,
    /// Set when the process runs a compactor.
    pub compactor_ring: Option<RingClient>,
    ingester: Option<LifecyclerHandle>,
    distributor: Option<LifecyclerHandle>,
    compactor: Option<LifecyclerHandle>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Membership {
    /// Starts the store, the ring views and the lifecyclers of the
    /// modules `config` runs; `http_port` is the port actually listened on.
    /// `internal` is where this process's ingester listens for the others,
    /// when it runs one: what it advertises in the ring.
    pub async fn start(
        config: &Config,
        http_port: u16,
        internal: Option<SocketAddr>,
        registry: &mut Registry,
    ) -> anyhow::Result<Self> {
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let modules = config.target.modules();
        let lifecycler = &config.ingester.lifecycler;
        let ring_settings = &lifecycler.ring;
        let (store, gossip): (Arc<dyn RingStore>, Option<Arc<MemberlistStore>>) =
            match ring_settings.kvstore.store.unwrap_or(StoreKind::Memberlist) {
                StoreKind::Inmemory => (InMemoryStore::new(), None),
                StoreKind::Memberlist => {
                    let settings = memberlist_config(config)?;
                    let (store, refresher) =
                        MemberlistStore::start(settings, &chitchat::transport::UdpTransport, registry, cancel.clone())
                            .await?;
                    tasks.push(refresher);
                    (store.clone(), Some(store))
                }
            };

        let ring_config = RingConfig {
            heartbeat_timeout: ring_settings.heartbeat_timeout,
            replication_factor: ring_settings.replication_factor.unwrap_or(1),
            zone_awareness_enabled: ring_settings.zone_awareness_enabled,
        };
        let ring_metrics = RingMetrics::register(registry);
        let (ingester_ring, task) = RingClient::start(
            INGESTER_RING,
            &store,
            ring_config.clone(),
            ring_metrics.clone(),
            cancel.clone(),
        );
        tasks.push(task);

        let ingester = internal
            .filter(|_| modules.contains(&Target::Ingester))
            .map(|internal| {
                let lifecycler_config = ingester_lifecycler_config(config, internal);
                info!(
                    instance = %lifecycler_config.instance_id,
                    addr = %lifecycler_config.addr,
                    "joining the ingester ring"
                );
                Lifecycler::start(INGESTER_RING, lifecycler_config, store.clone())
            });

        let mut instance_ring = |ring: &'static str, settings: &InstanceRingSettings, num_tokens: usize| {
            let ring_config = RingConfig {
                heartbeat_timeout: settings.heartbeat_timeout,
                replication_factor: 1,
                zone_awareness_enabled: false,
            };
            let (client, task) = RingClient::start(ring, &store, ring_config, ring_metrics.clone(), cancel.clone());
            tasks.push(task);
            let lifecycler_config = instance_lifecycler_config(config, settings, http_port, num_tokens);
            info!(instance = %lifecycler_config.instance_id, addr = %lifecycler_config.addr, "joining the {ring} ring");
            let handle = Lifecycler::start(ring, lifecycler_config, store.clone());
            (client, handle)
        };
        let (distributor_ring, distributor) = if modules.contains(&Target::Distributor) {
            let (client, handle) = instance_ring(DISTRIBUTOR_RING, &config.distributor.ring, DISTRIBUTOR_TOKENS);
            (Some(client), Some(handle))
        } else {
            (None, None)
        };
        let (compactor_ring, compactor) = if modules.contains(&Target::Compactor) {
            let (client, handle) = instance_ring(COMPACTOR_RING, &config.compactor.sharding_ring, COMPACTOR_TOKENS);
            (Some(client), Some(handle))
        } else {
            (None, None)
        };

        Ok(Self {
            store,
            gossip,
            ingester_ring,
            distributor_ring,
            compactor_ring,
            ingester,
            distributor,
            compactor,
            cancel,
            tasks,
        })
    }

    /// Completes when a lifecycler fails (its instance is out of the ring):
    /// the process should stop rather than run unseen.
    pub fn failure(&self) -> impl Future<Output = String> + Send + 'static {
        fn watch(handle: Option<&LifecyclerHandle>) -> impl Future<Output = String> + Send + 'static {
            let failure = handle.map(|handle| (handle.ring(), handle.failure()));
            async move {
                match failure {
                    Some((ring, failure)) => format!("{ring} ring: {}", failure.await),
                    None => std::future::pending().await,
                }
            }
        }
        let (ingester, distributor, compactor) = (
            watch(self.ingester.as_ref()),
            watch(self.distributor.as_ref()),
            watch(self.compactor.as_ref()),
        );
        async move {
            tokio::select! {
                message = ingester => message,
                message = distributor => message,
                message = compactor => message,
            }
        }
    }

    /// The ring ID of this process's ingester, if it runs one.
    pub fn ingester_instance_id(&self) -> Option<&str> {
        self.ingester.as_ref().map(LifecyclerHandle::instance_id)
    }

    /// Whether this process's compactor compacts a tenant: it is the first
    /// ACTIVE compactor with a fresh heartbeat from the tenant's token, so
    /// a compactor that dies hands its tenants on within the heartbeat
    /// timeout. Nothing is owned until this compactor is in the ring.
    pub fn compactor_ownership(&self) -> Option<impl Fn(&str) -> bool + Send + Sync + 'static> {
        let ring = self.compactor_ring.clone()?;
        let id = self.compactor.as_ref()?.instance_id().to_owned();
        Some(move |tenant: &str| {
            ring.ring()
                .first_healthy(
                    flamedb_model::tenant_token(tenant),
                    flamedb_ring::Operation::Write,
                    flamedb_ring::now_ms(),
                )
                .is_some_and(|owner| owner.id == id)
        })
    }

    /// How many distributors are ACTIVE with a fresh heartbeat (at least
    /// 1: this one), for the global rate limit.
    pub fn healthy_distributors(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let ring = self.distributor_ring.clone();
        move || {
            let Some(ring) = &ring else { return 1 };
            let ring = ring.ring();
            let now = flamedb_ring::now_ms();
            let timeout = ring.config().heartbeat_timeout;
            ring.instances()
                .iter()
                .filter(|instance| {
                    instance.state == flamedb_ring::InstanceState::Active && instance.is_heartbeat_healthy(now, timeout)
                })
                .count()
                .max(1)
        }
    }

    /// What `/ready` waits for: every lifecycler ACTIVE and seen so.
    pub fn readiness_checks(&self) -> Vec<ReadinessCheck> {
        let mut checks: Vec<ReadinessCheck> = Vec::new();
        if let Some(ingester) = &self.ingester {
            checks.push((
                "the ingester is not ACTIVE in the ring yet".into(),
                Box::new(ingester.readiness_probe()),
            ));
        }
        if let Some(distributor) = &self.distributor {
            checks.push((
                "the distributor is not ACTIVE in the distributor ring yet".into(),
                Box::new(distributor.readiness_probe()),
            ));
        }
        if let Some(compactor) = &self.compactor {
            checks.push((
                "the compactor is not ACTIVE in the compactor ring yet".into(),
                Box::new(compactor.readiness_probe()),
            ));
        }
        checks
    }

    /// Takes the ingester out of the write path: LEAVING while
    /// `shutdown_work` (the flush) runs, then out of the ring.
    pub async fn stop_ingester(&mut self, shutdown_work: impl Future<Output = ()>) {
        if let Some(ingester) = self.ingester.take()
            && let Err(err) = ingester.stop(shutdown_work).await
        {
            warn!(error = %err, "the ingester did not leave the ring cleanly");
        }
    }

    /// Leaves the distributor and compactor rings, stops gossip and the
    /// ring views.
    pub async fn shutdown(mut self) {
        self.stop_ingester(async {}).await;
        for handle in [self.distributor.take(), self.compactor.take()].into_iter().flatten() {
            let ring = handle.ring();
            if let Err(err) = handle.stop(async {}).await {
                warn!(error = %err, "the {ring} did not leave its ring cleanly");
            }
        }
        if let Some(gossip) = &self.gossip {
            gossip.shutdown().await;
        }
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "flamedb".to_owned())
}

/// The host other processes reach this one at: `explicit` if set, else
/// the HTTP listen address if it is a specific IP, else the first private
/// IPv4 address of this host (loopback as the last resort).
fn advertise_host(explicit: &str, config: &Config) -> String {
    if !explicit.is_empty() {
        return explicit.to_owned();
    }
    if let Ok(ip) = config.server.http_listen_address.parse::<IpAddr>()
        && !ip.is_unspecified()
    {
        return ip.to_string();
    }
    first_private_ipv4().unwrap_or(Ipv4Addr::LOCALHOST).to_string()
}

fn first_private_ipv4() -> Option<Ipv4Addr> {
    let addresses: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|interface| interface.address?.as_sockaddr_in().map(|address| address.ip()))
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    addresses
        .iter()
        .find(|ip| ip.is_private())
        .or_else(|| addresses.first())
        .copied()
}

fn with_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => SocketAddr::new(IpAddr::V6(ip), port).to_string(),
        _ => format!("{host}:{port}"),
    }
}

/// The ingester's ring entry: it is called at its internal listener,
/// `internal`, unless the lifecycler's address or port say otherwise.
fn ingester_lifecycler_config(config: &Config, internal: SocketAddr) -> LifecyclerConfig {
    let settings = &config.ingester.lifecycler;
    let port = if settings.port == 0 {
        internal.port()
    } else {
        settings.port
    };
    let host = if settings.address.is_empty() && !internal.ip().is_unspecified() {
        internal.ip().to_string()
    } else {
        advertise_host(&settings.address, config)
    };
    LifecyclerConfig {
        instance_id: if settings.id.is_empty() {
            hostname()
        } else {
            settings.id.clone()
        },
        addr: with_port(&host, port),
        zone: settings.availability_zone.clone(),
        num_tokens: settings.num_tokens,
        heartbeat_period: settings.heartbeat_period,
        heartbeat_timeout: settings.ring.heartbeat_timeout,
        auto_forget_unhealthy_period: settings
            .ring
            .auto_forget_unhealthy_period
            .unwrap_or(settings.ring.heartbeat_timeout * 10),
        join_after: settings.join_after,
        observe_period: settings.observe_period,
        final_sleep: settings.final_sleep,
        tokens_file: (!settings.tokens_file_path.is_empty()).then(|| settings.tokens_file_path.clone().into()),
    }
}

/// A distributor's or compactor's ring entry: called at the HTTP port.
fn instance_lifecycler_config(
    config: &Config,
    ring: &InstanceRingSettings,
    http_port: u16,
    num_tokens: usize,
) -> LifecyclerConfig {
    LifecyclerConfig {
        instance_id: if ring.instance_id.is_empty() {
            hostname()
        } else {
            ring.instance_id.clone()
        },
        addr: with_port(&advertise_host(&ring.instance_addr, config), http_port),
        zone: String::new(),
        num_tokens,
        heartbeat_period: ring.heartbeat_period,
        heartbeat_timeout: ring.heartbeat_timeout,
        auto_forget_unhealthy_period: ring.heartbeat_timeout * INSTANCE_FORGET_TIMEOUTS,
        join_after: Duration::ZERO,
        observe_period: Duration::ZERO,
        final_sleep: Duration::ZERO,
        tokens_file: None,
    }
}

fn memberlist_config(config: &Config) -> anyhow::Result<MemberlistConfig> {
    let settings = &config.memberlist;
    let bind_ip: IpAddr = if settings.bind_addr.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        settings.bind_addr.parse().context("memberlist.bind_addr")?
    };
    let bind_port = if settings.bind_port == 0 {
        // Ask the OS for a free UDP port; gossip binds it right after.
        UdpSocket::bind((bind_ip, 0))
            .and_then(|socket| socket.local_addr())
            .map(|address| address.port())
            .with_context(|| format!("cannot find a free UDP port on {bind_ip} for gossip"))?
    } else {
        settings.bind_port
    };
    let advertise_port = if settings.advertise_port == 0 {
        bind_port
    } else {
        settings.advertise_port
    };
    let advertise_host = advertise_host(&settings.advertise_addr, config);
    let advertise_addr: SocketAddr = with_port(&advertise_host, advertise_port)
        .parse()
        .with_context(|| format!("memberlist advertise address {advertise_host:?} is not an IP address"))?;
    let mut node_name = if settings.node_name.is_empty() {
        hostname()
    } else {
        settings.node_name.clone()
    };
    if settings.randomize_node_name {
        node_name = format!("{node_name}-{:08x}", rand::rng().random::<u32>());
    }
    let forget_period = config
        .ingester
        .lifecycler
        .ring
        .auto_forget_unhealthy_period
        .unwrap_or(Duration::from_secs(600))
        .max(config.distributor.ring.heartbeat_timeout * INSTANCE_FORGET_TIMEOUTS)
        .max(config.compactor.sharding_ring.heartbeat_timeout * INSTANCE_FORGET_TIMEOUTS);
    Ok(MemberlistConfig {
        node_name,
        cluster_label: settings.cluster_label.clone(),
        bind_addr: SocketAddr::new(bind_ip, bind_port),
        advertise_addr,
        join_members: settings
            .join_members
            .iter()
            .map(|member| {
                if member.contains(':') {
                    member.clone()
                } else {
                    format!(
                        "{member}:{}",
                        if settings.bind_port == 0 {
                            DEFAULT_GOSSIP_PORT
                        } else {
                            settings.bind_port
                        }
                    )
                }
            })
            .collect(),
        gossip_interval: settings.gossip_interval,
        // Dead processes' state outlives the forget period, so forgetting
        // (not garbage collection) is what removes their instances.
        dead_node_grace_period: forget_period * 2,
    })
}
