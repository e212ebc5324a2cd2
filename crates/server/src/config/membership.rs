//! The YAML of ring membership: the ingester's lifecycler and ring
//! (`ingester.lifecycler`), the distributors' ring (`distributor.ring`),
//! the shape of the compactors' ring (`compactor.sharding_ring`, which
//! lives under `compactor:`) and gossip (`memberlist`), with Pyroscope's
//! key names and defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `ingester:` the ring lifecycler and the head memory ceiling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngesterSettings {
    pub lifecycler: LifecyclerSettings,
    /// Head memory (all tenants) past which pushes get 429; heads are
    /// flushed early from 80 % of it.
    pub max_head_memory_bytes: u64,
    /// What pushes from distributors may hold at once, and how many
    /// tenants.
    pub instance_limits: IngesterInstanceLimits,
    pub wal: IngesterWalSettings,
}

/// `ingester.instance_limits`: what one ingester takes on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngesterInstanceLimits {
    /// Pushes being received, decoded or stored at once (0: no limit).
    pub max_inflight_push_requests: usize,
    /// Memory those pushes may hold together, counted as what they decode
    /// into (0: no limit).
    pub max_inflight_push_requests_bytes: u64,
    /// Tenants the ingester holds data of (0: any number); tenants that
    /// hold nothing any more are forgotten.
    pub max_tenants: usize,
}

impl Default for IngesterInstanceLimits {
    fn default() -> Self {
        Self {
            // Each distributor's push reaches RF ingesters.
            max_inflight_push_requests: 256,
            max_inflight_push_requests_bytes: 1 << 30,
            max_tenants: 10_000,
        }
    }
}

/// `ingester.wal`: how the write-ahead log is replayed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngesterWalSettings {
    /// Skip corrupt records at replay, losing what they held, instead of
    /// staying unready at the first one.
    pub skip_corrupt_records: bool,
}

impl Default for IngesterSettings {
    fn default() -> Self {
        Self {
            lifecycler: LifecyclerSettings::default(),
            wal: IngesterWalSettings::default(),
            max_head_memory_bytes: 1 << 30,
            instance_limits: IngesterInstanceLimits::default(),
        }
    }
}

/// `*.instance_limits`: what the pushes in flight on one process may hold
/// together (Mimir's names); past either, a push gets 429 at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceLimits {
    /// Pushes being received, decoded or stored at once (0: no limit).
    pub max_inflight_push_requests: usize,
    /// Memory those pushes may hold together, counted as what they decode
    /// into (0: no limit).
    pub max_inflight_push_requests_bytes: u64,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        Self {
            max_inflight_push_requests: 128,
            max_inflight_push_requests_bytes: 1 << 30,
        }
    }
}

/// `ingester.lifecycler`: how an ingester takes part in the ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecyclerSettings {
    /// Instance ID in the ring; empty: the hostname.
    pub id: String,
    /// Address other processes reach the ingester's internal listener at;
    /// empty: the internal listen address if it is a specific IP, else the
    /// HTTP listen address if it is one, else this host's first private IP.
    pub address: String,
    /// Port advertised in the ring; 0: the internal listener's port.
    pub port: u16,
    pub availability_zone: String,
    pub num_tokens: usize,
    #[serde(with = "humantime_serde")]
    pub heartbeat_period: Duration,
    #[serde(with = "humantime_serde")]
    pub join_after: Duration,
    #[serde(with = "humantime_serde")]
    pub observe_period: Duration,
    #[serde(with = "humantime_serde")]
    pub final_sleep: Duration,
    /// Where tokens are kept across restarts; empty: not kept.
    pub tokens_file_path: String,
    pub ring: RingSettings,
}

impl Default for LifecyclerSettings {
    fn default() -> Self {
        Self {
            id: String::new(),
            address: String::new(),
            port: 0,
            availability_zone: String::new(),
            num_tokens: 128,
            heartbeat_period: Duration::from_secs(5),
            join_after: Duration::ZERO,
            observe_period: Duration::ZERO,
            final_sleep: Duration::ZERO,
            tokens_file_path: String::new(),
            ring: RingSettings::default(),
        }
    }
}

/// `ingester.lifecycler.ring`: the ingester ring, as everyone reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingSettings {
    pub kvstore: KvStoreSettings,
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Copies of each series; unset: 1 with `-target=all`, else 3.
    pub replication_factor: Option<usize>,
    pub zone_awareness_enabled: bool,
    /// Instances unhealthy this long leave the ring; unset: 10 × the
    /// heartbeat timeout.
    #[serde(with = "humantime_serde::option")]
    pub auto_forget_unhealthy_period: Option<Duration>,
}

impl Default for RingSettings {
    fn default() -> Self {
        Self {
            kvstore: KvStoreSettings::default(),
            heartbeat_timeout: Duration::from_secs(60),
            replication_factor: None,
            zone_awareness_enabled: false,
            auto_forget_unhealthy_period: None,
        }
    }
}

/// `ingester.lifecycler.ring.kvstore`: where every ring of the process is
/// kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvStoreSettings {
    /// `inmemory` or `memberlist`; unset: `inmemory` with `-target=all`,
    /// else `memberlist`.
    pub store: Option<StoreKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process only (a single binary).
    Inmemory,
    /// Gossip between processes.
    Memberlist,
}

/// `distributor:` pushes to ingesters and the distributors' ring (the
/// replication factor is the ingester ring's, the limits are `limits`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributorSettings {
    /// How long a push to one ingester may take (Pyroscope's key).
    #[serde(with = "humantime_serde")]
    pub pushtimeout: Duration,
    pub ring: InstanceRingSettings,
    /// Most memory one request may make a process allocate: its body,
    /// decompressed and decoded, and every copy made of it until it is
    /// stored (pushes on distributors and ingesters, queries' request
    /// messages). Past it: 413, nothing stored.
    pub max_request_memory_bytes: u64,
    /// What pushes may hold at once on this distributor.
    pub instance_limits: InstanceLimits,
}

impl Default for DistributorSettings {
    fn default() -> Self {
        Self {
            pushtimeout: Duration::from_secs(5),
            ring: InstanceRingSettings::default(),
            max_request_memory_bytes: 256 << 20,
            instance_limits: InstanceLimits::default(),
        }
    }
}

/// A ring of instances that heartbeat in it: `distributor.ring`
/// (distributors count each other, for global limits) and
/// `compactor.sharding_ring` (compactors split tenants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceRingSettings {
    /// Instance ID; empty: the hostname.
    pub instance_id: String,
    /// Advertised address; empty: as for ingesters.
    pub instance_addr: String,
    #[serde(with = "humantime_serde")]
    pub heartbeat_period: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
}

impl Default for InstanceRingSettings {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            instance_addr: String::new(),
            heartbeat_period: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(60),
        }
    }
}

/// `memberlist:`: gossip between processes (UDP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemberlistSettings {
    /// Name of this process in gossip; empty: the hostname.
    pub node_name: String,
    /// Add a random suffix to the name, so restarts and several processes
    /// per host never collide.
    pub randomize_node_name: bool,
    /// `host:port` of members to join (the bind port if no port is given).
    pub join_members: Vec<String>,
    /// IP to listen on; empty: every interface.
    pub bind_addr: String,
    /// UDP port; 0 picks a free one, logged at start.
    pub bind_port: u16,
    /// Address peers gossip to; empty: as for ingesters.
    pub advertise_addr: String,
    /// Port peers gossip to; 0: the bind port.
    pub advertise_port: u16,
    /// Clusters with different labels never merge.
    pub cluster_label: String,
    #[serde(with = "humantime_serde")]
    pub gossip_interval: Duration,
}

impl Default for MemberlistSettings {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            randomize_node_name: true,
            join_members: Vec::new(),
            bind_addr: String::new(),
            bind_port: 7946,
            advertise_addr: String::new(),
            advertise_port: 0,
            cluster_label: String::new(),
            gossip_interval: Duration::from_millis(200),
        }
    }
}
