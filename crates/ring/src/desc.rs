//! What the ring knows of one instance: its address, zone, state, tokens and
//! heartbeat. UNHEALTHY is not a state: it is derived from a heartbeat older
//! than the ring's heartbeat timeout.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    /// Registered, without tokens yet.
    Pending,
    /// Holding tokens, watching for conflicts; takes no writes.
    Joining,
    /// Takes writes and reads.
    Active,
    /// Shutting down: takes no new writes, still serves reads.
    Leaving,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Joining => "JOINING",
            Self::Active => "ACTIVE",
            Self::Leaving => "LEAVING",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance of a ring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDesc {
    /// Unique in the ring; a restarted instance keeps it.
    pub id: String,
    /// `host:port` where the instance serves (its HTTP port).
    pub addr: String,
    /// Availability zone; empty when zones are not used.
    #[serde(default)]
    pub zone: String,
    pub state: InstanceState,
    /// Sorted ring tokens.
    pub tokens: Vec<u32>,
    /// Last heartbeat, milliseconds since the Unix epoch.
    pub heartbeat_ms: i64,
    /// When the instance registered, milliseconds since the Unix epoch.
    pub registered_ms: i64,
}

impl InstanceDesc {
    /// Returns whether the last heartbeat is within `timeout` of `now_ms`.
    pub fn is_heartbeat_healthy(&self, now_ms: i64, timeout: Duration) -> bool {
        self.heartbeat_age(now_ms) <= timeout
    }

    /// How long ago the last heartbeat was (zero if in the future).
    pub fn heartbeat_age(&self, now_ms: i64) -> Duration {
        Duration::from_millis(u64::try_from(now_ms.saturating_sub(self.heartbeat_ms)).unwrap_or(0))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}
