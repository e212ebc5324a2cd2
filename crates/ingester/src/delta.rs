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

/// The last cumulative values of each delta series, by stack hash.
#[derive(Debug, Default)]
pub(crate) struct DeltaState {
    previous: HashMap<u64, HashMap<u64, i64>>,
}

impl DeltaState {
    /// Turns cumulative `(stack hash, value)` pairs of series `fingerprint`
    /// into differences from its previous profile; `None` when this profile
    /// is a baseline.
    pub(crate) fn apply(&mut self, fingerprint: u64, current: &[(u64, i64)]) -> Option<Vec<i64>> {
        let mut totals: HashMap<u64, i64> = HashMap::with_capacity(current.len());
        for &(hash, value) in current {
            *totals.entry(hash).or_insert(0) += value;
        }
        let Some(previous) = self.previous.get(&fingerprint) else {
            self.previous.insert(fingerprint, totals);
            return None;
        };
        let reset = totals
            .iter()
            .any(|(hash, value)| previous.get(hash).is_some_and(|before| value < before));
        if reset {
            self.previous.insert(fingerprint, totals);
            return None;
        }
        // Equal hashes within one profile share the difference: the first
        // takes it, the others keep their own values against nothing.
        let mut remaining = previous.clone();
        let deltas = current
            .iter()
            .map(|&(hash, value)| value - remaining.remove(&hash).unwrap_or(0))
            .collect();
        self.previous.insert(fingerprint, totals);
        Some(deltas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_first_profile_is_a_baseline_then_differences() {
        let mut state = DeltaState::default();
        assert_eq!(state.apply(1, &[(10, 5), (20, 7)]), None);
        assert_eq!(state.apply(1, &[(10, 8), (20, 7), (30, 2)]), Some(vec![3, 0, 2]));
        // Another series has its own baseline.
        assert_eq!(state.apply(2, &[(10, 1)]), None);
        // A counter going down is a reset: new baseline.
        assert_eq!(state.apply(1, &[(10, 1)]), None);
        assert_eq!(state.apply(1, &[(10, 4)]), Some(vec![3]));
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
