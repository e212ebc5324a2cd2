//! Settings of rings, lifecyclers and gossip, as the process resolved them
//! (YAML keys and flags live with the binary's configuration).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How a ring is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// An instance whose last heartbeat is older is UNHEALTHY.
    pub heartbeat_timeout: Duration,
    /// Copies of each series (writes wait for a quorum of them).
    pub replication_factor: usize,
    /// At most one replica per availability zone.
    pub zone_awareness_enabled: bool,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout: Duration::from_secs(60),
            replication_factor: 1,
            zone_awareness_enabled: false,
        }
    }
}

/// How an instance takes part in a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecyclerConfig {
    /// Unique in the ring; a restarted instance with the same ID takes its
    /// tokens back.
    pub instance_id: String,
    /// `host:port` other processes reach this instance at.
    pub addr: String,
    pub zone: String,
    /// Tokens to hold (128 for ingesters, 1 for distributors).
    pub num_tokens: usize,
    pub heartbeat_period: Duration,
    /// An instance whose heartbeat is older is UNHEALTHY; an ID held by a
    /// healthy instance at another address is not taken.
    pub heartbeat_timeout: Duration,
    /// Instances whose heartbeat is older are removed from the ring.
    pub auto_forget_unhealthy_period: Duration,
    /// Wait before taking tokens, to see the ring first.
    pub join_after: Duration,
    /// With a non-zero period the instance holds its tokens in JOINING that
    /// long and regenerates any lost to a conflict before turning ACTIVE.
    pub observe_period: Duration,
    /// Pause after the shutdown work, before leaving the ring.
    pub final_sleep: Duration,
    /// Where tokens are kept across restarts (`{"tokens":[...]}`).
    pub tokens_file: Option<PathBuf>,
}

impl LifecyclerConfig {
    /// Settings for tests: short periods, no tokens file.
    pub fn for_test(instance_id: &str, num_tokens: usize) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            addr: format!("127.0.0.1:{}", 4000 + instance_id.len()),
            zone: String::new(),
            num_tokens,
            heartbeat_period: Duration::from_millis(50),
            heartbeat_timeout: Duration::from_millis(500),
            auto_forget_unhealthy_period: Duration::from_secs(600),
            join_after: Duration::ZERO,
            observe_period: Duration::ZERO,
            final_sleep: Duration::ZERO,
            tokens_file: None,
        }
    }
}

/// Gossip membership (chitchat over UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberlistConfig {
    /// Unique per process (and per restart: a generation is added).
    pub node_name: String,
    /// Clusters with different labels never merge.
    pub cluster_label: String,
    pub bind_addr: SocketAddr,
    /// The address peers gossip to.
    pub advertise_addr: SocketAddr,
    /// Seeds: `host:port` of any members.
    pub join_members: Vec<String>,
    pub gossip_interval: Duration,
    /// How long the state of a dead member is kept.
    pub dead_node_grace_period: Duration,
}
