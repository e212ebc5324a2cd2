//! Normalization of a validated profile, so equal data is stored equally:
//! a missing timestamp becomes "now"; numeric sample labels, samples with a
//! negative value, samples whose values are all zero and samples pointing
//! at unknown locations are dropped; symbols nothing refers to are dropped,
//! ids made dense and strings deduplicated with `""` first; samples with
//! the same stack and labels are merged; symbolized mappings lose their
//! addresses. Normalizing twice gives the same profile as normalizing once.

use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::budget::{BudgetError, RequestBudget};
use crate::pprof::{Profile, Sample, string_at};
use crate::symbols::SymbolTables;

/// Normalizes `profile` in place (see the module documentation); the
/// symbol tables it rebuilds are charged to `budget`.
pub fn normalize(profile: &mut Profile, now_nanos: i64, budget: &RequestBudget) -> Result<(), BudgetError> {
    if profile.time_nanos == 0 {
        profile.time_nanos = now_nanos;
    }
    let samples = std::mem::take(&mut profile.sample);
    let source = std::mem::take(profile);
    let mut tables = SymbolTables::new(&source);
    let kept = samples
        .into_iter()
        .filter(|sample| {
            sample.value.iter().all(|&value| value >= 0)
                && sample.value.iter().any(|&value| value != 0)
                && sample.location_id.iter().all(|&id| tables.has_location(id))
        })
        .map(|mut sample| {
            // Numeric labels (no string value) are not kept; the others are
            // sorted by name and value, so equal label sets compare equal.
            sample
                .label
                .retain(|label| !string_at(&source, label.key).is_empty() && !string_at(&source, label.str).is_empty());
            sample.label.sort_by(|a, b| {
                (string_at(&source, a.key), string_at(&source, a.str))
                    .cmp(&(string_at(&source, b.key), string_at(&source, b.str)))
            });
            sample
        })
        .collect();
    // Strings are deduplicated here, so equal labels get equal indexes.
    *profile = tables.extract(kept, budget)?;
    profile.sample = merge_equal_samples(std::mem::take(&mut profile.sample).into_iter());
    clear_symbolized_addresses(profile);
    Ok(())
}

/// Merges samples with the same stack and labels (values summed), keeping
/// the order in which each stack first appears.
fn merge_equal_samples(samples: impl Iterator<Item = Sample>) -> Vec<Sample> {
    let hasher = foldhash::fast::FixedState::with_seed(0);
    let mut merged: Vec<Sample> = Vec::new();
    // First sample of each hash, and a chain through samples sharing a hash.
    let mut first_by_hash: HashMap<u64, usize> = HashMap::new();
    let mut next_with_same_hash: Vec<Option<usize>> = Vec::new();
    for sample in samples {
        let mut state = hasher.build_hasher();
        sample.location_id.hash(&mut state);
        for label in &sample.label {
            (label.key, label.str).hash(&mut state);
        }
        let hash = state.finish();
        let mut candidate = first_by_hash.get(&hash).copied();
        let mut last = None;
        while let Some(index) = candidate {
            let existing = &mut merged[index];
            if existing.location_id == sample.location_id && existing.label == sample.label {
                for (total, value) in existing.value.iter_mut().zip(&sample.value) {
                    *total = total.saturating_add(*value);
                }
                break;
            }
            last = Some(index);
            candidate = next_with_same_hash[index];
        }
        if candidate.is_none() {
            let index = merged.len();
            match last {
                Some(previous) => next_with_same_hash[previous] = Some(index),
                None => {
                    first_by_hash.insert(hash, index);
                }
            }
            merged.push(sample);
            next_with_same_hash.push(None);
        }
    }
    merged
}

/// Symbolized mappings (`has_functions`) need no addresses: clearing them
/// lets equal frames compare equal, as Pyroscope does.
fn clear_symbolized_addresses(profile: &mut Profile) {
    let symbolized: HashSet<u64> = profile
        .mapping
        .iter_mut()
        .filter(|mapping| mapping.has_functions)
        .map(|mapping| {
            mapping.memory_start = 0;
            mapping.memory_limit = 0;
            mapping.file_offset = 0;
            mapping.id
        })
        .collect();
    if symbolized.is_empty() {
        return;
    }
    for location in &mut profile.location {
        if symbolized.contains(&location.mapping_id) {
            location.address = 0;
        }
    }
}

#[cfg(test)]
mod tests;
