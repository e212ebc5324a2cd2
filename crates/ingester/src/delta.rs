//! Server-side delta for cumulative allocation profiles (`memory`
//! `alloc_objects` / `alloc_space`, unless `__delta__="false"`): agents send
//! totals since process start; stored are the differences between
//! consecutive profiles of a series. The first profile of a series is the
//! baseline and is not stored; so is a profile after a counter reset (any
//! stack going down).

use flamedb_model::Labels;
use foldhash::{HashMap, HashMapExt};

/// Whether the series of this sample type gets server-side delta.
pub(crate) fn is_cumulative(series_labels: &Labels, sample_type: &str) -> bool {
    series_labels.get(flamedb_model::METRIC_NAME) == Some("memory")
        && matches!(sample_type, "alloc_objects" | "alloc_space")
        && series_labels.get(flamedb_model::DELTA) != Some("false")
}

/// A series whose last profile is this much older (by profile time) than
/// the newest profile of the tenant starts over from a new baseline; its
/// totals are forgotten. Profile time, not the clock, so replaying the WAL
/// reaches the same state.
const IDLE_MS: i64 = 60 * 60 * 1000;
/// How often (in profile time) idle series are looked for.
const EVICT_EVERY_MS: i64 = 60 * 1000;
const SERIES_BYTES: usize = 96;
const STACK_BYTES: usize = 24;

#[derive(Debug)]
struct SeriesTotals {
    by_stack: HashMap<u64, i64>,
    seen_ms: i64,
}

/// The last cumulative values of each delta series, by stack hash.
#[derive(Debug, Default)]
pub(crate) struct DeltaState {
    previous: HashMap<u64, SeriesTotals>,
    bytes: usize,
    newest_ms: i64,
    last_evicted_ms: i64,
}

impl DeltaState {
    /// Turns cumulative `(stack hash, value)` pairs of series `fingerprint`
    /// (a profile at `time_ms`) into differences from its previous profile;
    /// `None` when this profile is a baseline.
    pub(crate) fn apply(&mut self, fingerprint: u64, current: &[(u64, i64)], time_ms: i64) -> Option<Vec<i64>> {
        self.newest_ms = self.newest_ms.max(time_ms);
        self.evict_idle();
        let mut totals: HashMap<u64, i64> = HashMap::with_capacity(current.len());
        for &(hash, value) in current {
            let total = totals.entry(hash).or_insert(0);
            *total = total.saturating_add(value);
        }
        let deltas = self.previous.get(&fingerprint).and_then(|previous| {
            let reset = totals
                .iter()
                .any(|(hash, value)| previous.by_stack.get(hash).is_some_and(|before| value < before));
            if reset {
                return None;
            }
            // Equal hashes within one profile share the difference: the
            // first takes it, the others keep their own values.
            let mut remaining = previous.by_stack.clone();
            Some(
                current
                    .iter()
                    .map(|&(hash, value)| value.saturating_sub(remaining.remove(&hash).unwrap_or(0)))
                    .collect(),
            )
        });
        let added = SERIES_BYTES + totals.len() * STACK_BYTES;
        if let Some(old) = self.previous.insert(
            fingerprint,
            SeriesTotals {
                by_stack: totals,
                seen_ms: time_ms,
            },
        ) {
            self.bytes -= SERIES_BYTES + old.by_stack.len() * STACK_BYTES;
        }
        self.bytes += added;
        deltas
    }

    /// Forgets series idle for an hour (checked at most once a minute).
    fn evict_idle(&mut self) {
        let newest = self.newest_ms;
        if newest.saturating_sub(self.last_evicted_ms) < EVICT_EVERY_MS {
            return;
        }
        self.last_evicted_ms = newest;
        let bytes = &mut self.bytes;
        self.previous.retain(|_, series| {
            let keep = newest.saturating_sub(series.seen_ms) <= IDLE_MS;
            if !keep {
                *bytes -= SERIES_BYTES + series.by_stack.len() * STACK_BYTES;
            }
            keep
        });
    }

    /// Memory held, in bytes (estimated from the entries).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The state as a snapshot stores it.
    pub(crate) fn to_snapshot(&self, tenant: &str) -> TenantDelta {
        TenantDelta {
            tenant: tenant.to_owned(),
            newest_ms: self.newest_ms,
            last_evicted_ms: self.last_evicted_ms,
            series: self
                .previous
                .iter()
                .map(|(&fingerprint, series)| SeriesDelta {
                    fingerprint,
                    seen_ms: series.seen_ms,
                    hashes: series.by_stack.keys().copied().collect(),
                    values: series.by_stack.values().copied().collect(),
                })
                .collect(),
        }
    }

    /// The state a snapshot stored.
    pub(crate) fn from_snapshot(snapshot: TenantDelta) -> Self {
        let mut state = Self {
            newest_ms: snapshot.newest_ms,
            last_evicted_ms: snapshot.last_evicted_ms,
            ..Self::default()
        };
        for series in snapshot.series {
            let by_stack: HashMap<u64, i64> = series.hashes.into_iter().zip(series.values).collect();
            state.bytes += SERIES_BYTES + by_stack.len() * STACK_BYTES;
            state.previous.insert(
                series.fingerprint,
                SeriesTotals {
                    by_stack,
                    seen_ms: series.seen_ms,
                },
            );
        }
        state
    }
}

/// The delta state of every tenant at a WAL segment boundary.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DeltaSnapshot {
    #[prost(message, repeated, tag = "1")]
    pub tenants: Vec<TenantDelta>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TenantDelta {
    #[prost(string, tag = "1")]
    pub tenant: String,
    #[prost(int64, tag = "2")]
    pub newest_ms: i64,
    #[prost(int64, tag = "3")]
    pub last_evicted_ms: i64,
    #[prost(message, repeated, tag = "4")]
    pub series: Vec<SeriesDelta>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SeriesDelta {
    #[prost(fixed64, tag = "1")]
    pub fingerprint: u64,
    #[prost(int64, tag = "2")]
    pub seen_ms: i64,
    #[prost(fixed64, repeated, tag = "3")]
    pub hashes: Vec<u64>,
    #[prost(int64, repeated, tag = "4")]
    pub values: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_first_profile_is_a_baseline_then_differences() {
        let mut state = DeltaState::default();
        assert_eq!(state.apply(1, &[(10, 5), (20, 7)], 0), None);
        assert_eq!(state.apply(1, &[(10, 8), (20, 7), (30, 2)], 1), Some(vec![3, 0, 2]));
        // Another series has its own baseline.
        assert_eq!(state.apply(2, &[(10, 1)], 2), None);
        // A counter going down is a reset: new baseline.
        assert_eq!(state.apply(1, &[(10, 1)], 3), None);
        assert_eq!(state.apply(1, &[(10, 4)], 4), Some(vec![3]));
        // Values near the limits saturate instead of overflowing.
        assert_eq!(state.apply(3, &[(10, i64::MAX), (10, i64::MAX)], 5), None);
        assert_eq!(state.apply(3, &[(10, i64::MAX), (10, 1)], 6), Some(vec![0, 1]));
    }

    #[test]
    fn test_snapshots_restore_the_state() {
        let mut state = DeltaState::default();
        state.apply(1, &[(10, 5), (20, 7)], 1_000);
        let restored = DeltaState::from_snapshot(state.to_snapshot("t"));
        assert_eq!(restored.bytes(), state.bytes());
        let mut restored = restored;
        assert_eq!(restored.apply(1, &[(10, 6), (20, 9)], 2_000), Some(vec![1, 2]));
    }

    #[test]
    fn test_idle_series_are_forgotten_and_counted() {
        let mut state = DeltaState::default();
        assert_eq!(state.apply(1, &[(10, 5), (20, 7)], 0), None);
        assert!(state.bytes() > 0);
        assert_eq!(state.apply(1, &[(10, 6), (20, 7)], EVICT_EVERY_MS), Some(vec![1, 0]));
        // Another series two hours later (profile time): series 1 is idle.
        assert_eq!(state.apply(2, &[(10, 1)], 2 * IDLE_MS), None);
        assert_eq!(state.bytes(), SERIES_BYTES + STACK_BYTES);
        // Forgotten: its next profile is a baseline again.
        assert_eq!(state.apply(1, &[(10, 9)], 2 * IDLE_MS), None);
    }

    #[test]
    fn test_which_series_are_cumulative() {
        let memory = Labels::from_pairs([("__name__", "memory")]);
        assert!(is_cumulative(&memory, "alloc_space"));
        assert!(is_cumulative(&memory, "alloc_objects"));
        assert!(!is_cumulative(&memory, "inuse_space"));
        let godelta = Labels::from_pairs([("__name__", "memory"), ("__delta__", "false")]);
        assert!(!is_cumulative(&godelta, "alloc_space"));
        assert!(!is_cumulative(
            &Labels::from_pairs([("__name__", "process_cpu")]),
            "alloc_space"
        ));
    }
}
