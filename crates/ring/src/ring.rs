//! An immutable snapshot of a ring: token lookup, replica selection and
//! quorum, with dskit's semantics.
//!
//! - The owner of a key is the instance of the first token strictly greater
//!   than the key, wrapping past the end.
//! - Replicas: walk clockwise from the owner over distinct instances until
//!   the replication factor is reached; an operation may "extend" the set
//!   for instances in states it cannot use (writes: anything but ACTIVE;
//!   reads: anything but ACTIVE or LEAVING). With zone awareness, at most
//!   one instance per zone; an extension is taken in the same zone.
//! - Quorum: `RF' = max(RF, picked)`, `min_success = RF'/2 + 1`; instances
//!   unhealthy for the operation (wrong state or stale heartbeat) are not
//!   sent to but count in `RF'`.

use std::time::Duration;

use crate::config::RingConfig;
use crate::desc::{InstanceDesc, InstanceState};

/// What a caller wants to do with the replicas it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Writes go to ACTIVE instances only; the set extends past others.
    Write,
    /// Reads are served by ACTIVE and LEAVING instances.
    Read,
}

impl Operation {
    fn accepts(self, state: InstanceState) -> bool {
        match self {
            Self::Write => state == InstanceState::Active,
            Self::Read => matches!(state, InstanceState::Active | InstanceState::Leaving),
        }
    }

    fn extends_on(self, state: InstanceState) -> bool {
        !self.accepts(state)
    }
}

/// Why no usable replica set exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("the ring is empty: no instance holds tokens")]
    Empty,
    #[error(
        "at least {required} live replicas required{zones}, could only find {found} - unhealthy instances: {unhealthy}"
    )]
    TooFewLiveReplicas {
        required: usize,
        found: usize,
        unhealthy: String,
        zones: &'static str,
    },
    #[error(
        "too many unhealthy instances in the ring: {required} healthy needed, found {found} - unhealthy instances: {unhealthy}"
    )]
    TooManyUnhealthy {
        required: usize,
        found: usize,
        unhealthy: String,
    },
}

/// The instances to call for one key (or for a read over the whole ring),
/// and how many of them may fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSet<'a> {
    pub instances: Vec<&'a InstanceDesc>,
    /// Calls that may fail while the operation still succeeds.
    pub max_errors: usize,
    /// For zone-aware reads: whole zones that may fail (instead of at most
    /// `max_errors` calls, which is then 0).
    pub max_unavailable_zones: usize,
}

impl ReplicationSet<'_> {
    /// How many calls must succeed.
    pub fn min_success(&self) -> usize {
        self.instances.len().saturating_sub(self.max_errors)
    }

    /// Whether the operation still succeeds when the calls to `failed`
    /// (instances of this set) fail: at most `max_errors` of them, or, for
    /// zone-aware reads, any number within `max_unavailable_zones` zones.
    /// An instance without a zone counts as a zone of its own: nothing
    /// keeps the copies it holds out of other zoneless instances.
    pub fn tolerates<'b>(&self, failed: impl IntoIterator<Item = &'b InstanceDesc>) -> bool {
        let failed: Vec<&InstanceDesc> = failed.into_iter().collect();
        if failed.len() <= self.max_errors {
            return true;
        }
        if self.max_unavailable_zones == 0 {
            return false;
        }
        let mut zones: Vec<(&str, &str)> = failed
            .iter()
            .map(|desc| match desc.zone.as_str() {
                "" => ("", desc.id.as_str()),
                zone => (zone, ""),
            })
            .collect();
        zones.sort_unstable();
        zones.dedup();
        zones.len() <= self.max_unavailable_zones
    }

    /// What [`Self::tolerates`] allows, in words for error messages.
    pub fn tolerance(&self) -> String {
        if self.max_unavailable_zones == 0 {
            format!("at most {} failed", self.max_errors)
        } else {
            format!("failures within {} zone(s)", self.max_unavailable_zones)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RingToken {
    token: u32,
    /// Index into `Ring::instances`.
    instance: usize,
}

/// A ring snapshot; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Ring {
    instances: Vec<InstanceDesc>,
    tokens: Vec<RingToken>,
    instances_with_tokens: usize,
    config: RingConfig,
}

impl Ring {
    /// Builds a snapshot. Two instances claiming one token: the one not
    /// LEAVING keeps it, else the one with the smaller ID.
    pub fn new(mut instances: Vec<InstanceDesc>, config: RingConfig) -> Self {
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        instances.dedup_by(|later, earlier| later.id == earlier.id);
        let mut tokens: Vec<RingToken> = instances
            .iter()
            .enumerate()
            .flat_map(|(instance, desc)| desc.tokens.iter().map(move |&token| RingToken { token, instance }))
            .collect();
        // Conflicts sort the winner first: non-LEAVING, then smaller ID
        // (instances are sorted by ID, so a smaller index).
        tokens.sort_by_key(|t| {
            (
                t.token,
                instances[t.instance].state == InstanceState::Leaving,
                t.instance,
            )
        });
        tokens.dedup_by_key(|t| t.token);
        let mut owners: Vec<usize> = tokens.iter().map(|t| t.instance).collect();
        owners.sort_unstable();
        owners.dedup();
        Self {
            instances,
            tokens,
            instances_with_tokens: owners.len(),
            config,
        }
    }

    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Every instance, sorted by ID.
    pub fn instances(&self) -> &[InstanceDesc] {
        &self.instances
    }

    pub fn instance(&self, id: &str) -> Option<&InstanceDesc> {
        self.instances
            .binary_search_by(|desc| desc.id.as_str().cmp(id))
            .ok()
            .map(|index| &self.instances[index])
    }

    /// Index of the first token strictly greater than `key`, wrapping.
    fn search(&self, key: u32) -> usize {
        let index = self.tokens.partition_point(|t| t.token <= key);
        if index == self.tokens.len() { 0 } else { index }
    }

    /// The instance owning `key`.
    pub fn owner(&self, key: u32) -> Option<&InstanceDesc> {
        self.tokens
            .get(self.search(key))
            .map(|token| &self.instances[token.instance])
    }

    /// The first instance in ring order from `key` that is healthy for
    /// `op` (its state and a fresh heartbeat): who does the work of `key`
    /// when exactly one instance should, and a dead one's keys pass on to
    /// the next instance without waiting for it to be forgotten.
    pub fn first_healthy(&self, key: u32, op: Operation, now_ms: i64) -> Option<&InstanceDesc> {
        if self.tokens.is_empty() {
            return None;
        }
        let start = self.search(key);
        (0..self.tokens.len())
            .map(|step| &self.instances[self.tokens[(start + step) % self.tokens.len()].instance])
            .find(|desc| self.is_healthy(desc, op, now_ms))
    }

    /// The ID of the instance that holds `token` after conflict resolution.
    pub fn token_holder(&self, token: u32) -> Option<&str> {
        self.tokens
            .binary_search_by_key(&token, |t| t.token)
            .ok()
            .map(|index| self.instances[self.tokens[index].instance].id.as_str())
    }

    /// The replicas for `key` before health filtering (see the module
    /// documentation), in ring order.
    pub fn replicas(&self, key: u32, op: Operation) -> Vec<&InstanceDesc> {
        if self.tokens.is_empty() {
            return Vec::new();
        }
        let mut wanted = self.config.replication_factor.max(1);
        let mut picked: Vec<usize> = Vec::with_capacity(wanted + 1);
        let mut zones: Vec<&str> = Vec::new();
        let start = self.search(key);
        for step in 0..self.tokens.len() {
            if picked.len() >= wanted.min(self.instances_with_tokens) {
                break;
            }
            let instance = self.tokens[(start + step) % self.tokens.len()].instance;
            if picked.contains(&instance) {
                continue;
            }
            let desc = &self.instances[instance];
            let zoned = self.config.zone_awareness_enabled && !desc.zone.is_empty();
            if zoned && zones.contains(&desc.zone.as_str()) {
                continue;
            }
            picked.push(instance);
            if op.extends_on(desc.state) {
                // An extra replica for this one, in the same zone.
                wanted += 1;
            } else if zoned {
                zones.push(&desc.zone);
            }
        }
        picked.into_iter().map(|instance| &self.instances[instance]).collect()
    }

    fn is_healthy(&self, desc: &InstanceDesc, op: Operation, now_ms: i64) -> bool {
        op.accepts(desc.state) && desc.is_heartbeat_healthy(now_ms, self.config.heartbeat_timeout)
    }

    /// The replicas to call for `key`, with the failures quorum tolerates.
    pub fn replication_set(&self, key: u32, op: Operation, now_ms: i64) -> Result<ReplicationSet<'_>, RingError> {
        let picked = self.replicas(key, op);
        if picked.is_empty() {
            return Err(RingError::Empty);
        }
        let replication_factor = self.config.replication_factor.max(picked.len());
        let min_success = replication_factor / 2 + 1;
        let (healthy, unhealthy): (Vec<&InstanceDesc>, Vec<&InstanceDesc>) =
            picked.into_iter().partition(|desc| self.is_healthy(desc, op, now_ms));
        if healthy.len() < min_success {
            return Err(RingError::TooFewLiveReplicas {
                required: min_success,
                found: healthy.len(),
                unhealthy: describe(&unhealthy, now_ms),
                zones: if self.config.zone_awareness_enabled {
                    " across different availability zones"
                } else {
                    ""
                },
            });
        }
        Ok(ReplicationSet {
            max_errors: healthy.len() - min_success,
            instances: healthy,
            max_unavailable_zones: 0,
        })
    }

    /// The instances to call for a read over the whole ring (queries of
    /// recent data): every healthy instance, with the failures the
    /// replication factor tolerates.
    pub fn replication_set_for_all(&self, op: Operation, now_ms: i64) -> Result<ReplicationSet<'_>, RingError> {
        if self.instances.is_empty() {
            return Err(RingError::Empty);
        }
        let replication_factor = self.config.replication_factor.max(1);
        let (healthy, unhealthy): (Vec<&InstanceDesc>, Vec<&InstanceDesc>) = self
            .instances
            .iter()
            .partition(|desc| self.is_healthy(desc, op, now_ms));
        let zones = self.zones();
        if self.config.zone_awareness_enabled && !zones.is_empty() {
            let replicated_zones = zones.len().min(replication_factor);
            let max_unavailable_zones = replicated_zones / 2;
            let mut failed_zones: Vec<&str> = unhealthy.iter().map(|desc| desc.zone.as_str()).collect();
            failed_zones.sort_unstable();
            failed_zones.dedup();
            if failed_zones.len() > max_unavailable_zones {
                return Err(RingError::TooManyUnhealthy {
                    required: zones.len() - max_unavailable_zones,
                    found: zones.len() - failed_zones.len(),
                    unhealthy: describe(&unhealthy, now_ms),
                });
            }
            return Ok(ReplicationSet {
                instances: healthy
                    .into_iter()
                    .filter(|desc| !failed_zones.contains(&desc.zone.as_str()))
                    .collect(),
                max_errors: 0,
                max_unavailable_zones: max_unavailable_zones - failed_zones.len(),
            });
        }
        let required = self.instances.len().max(replication_factor) - replication_factor / 2;
        if healthy.len() < required {
            return Err(RingError::TooManyUnhealthy {
                required,
                found: healthy.len(),
                unhealthy: describe(&unhealthy, now_ms),
            });
        }
        Ok(ReplicationSet {
            max_errors: healthy.len() - required,
            instances: healthy,
            max_unavailable_zones: 0,
        })
    }

    /// Distinct non-empty zones of the instances.
    pub fn zones(&self) -> Vec<&str> {
        let mut zones: Vec<&str> = self
            .instances
            .iter()
            .map(|desc| desc.zone.as_str())
            .filter(|zone| !zone.is_empty())
            .collect();
        zones.sort_unstable();
        zones.dedup();
        zones
    }

    /// The share of the key space each instance owns, by instance ID
    /// (instances without tokens own 0).
    pub fn ownership(&self) -> Vec<(&str, f64)> {
        let mut owned = vec![0u64; self.instances.len()];
        let count = self.tokens.len();
        for (index, token) in self.tokens.iter().enumerate() {
            let range = if count == 1 {
                1u64 << 32
            } else {
                let previous = self.tokens[(index + count - 1) % count].token;
                u64::from(token.token.wrapping_sub(previous))
            };
            owned[token.instance] += range;
        }
        self.instances
            .iter()
            .zip(owned)
            .map(|(desc, owned)| (desc.id.as_str(), owned as f64 / (1u64 << 32) as f64))
            .collect()
    }

    /// How many instances are in each state, and how many of them have a
    /// stale heartbeat.
    pub fn count_by_health(&self, now_ms: i64) -> Vec<(InstanceState, usize, usize)> {
        let states = [
            InstanceState::Pending,
            InstanceState::Joining,
            InstanceState::Active,
            InstanceState::Leaving,
        ];
        states
            .into_iter()
            .map(|state| {
                let in_state = self.instances.iter().filter(|desc| desc.state == state);
                let (total, stale) = in_state.fold((0, 0), |(total, stale), desc| {
                    let stale_heartbeat = !desc.is_heartbeat_healthy(now_ms, self.config.heartbeat_timeout);
                    (total + 1, stale + usize::from(stale_heartbeat))
                });
                (state, total, stale)
            })
            .collect()
    }

    /// The heartbeat timeout instances are judged by.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.config.heartbeat_timeout
    }
}

/// `id (addr, STATE, heartbeat 75s ago)` for each instance.
fn describe(instances: &[&InstanceDesc], now_ms: i64) -> String {
    if instances.is_empty() {
        return "none".to_owned();
    }
    instances
        .iter()
        .map(|desc| {
            format!(
                "{} ({}, {}, heartbeat {}s ago)",
                desc.id,
                desc.addr,
                desc.state,
                desc.heartbeat_age(now_ms).as_secs()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
