//! Normalization of a validated profile, so equal data is stored equally:
//! a missing timestamp becomes "now"; numeric sample labels, samples with a
//! negative value and samples whose values are all zero are dropped; samples
//! with the same stack and labels are merged; symbols nothing refers to are
//! dropped and ids made dense; the string table starts with `""`.
//! Normalizing twice gives the same profile as normalizing once.

use std::hash::{BuildHasher, Hash, Hasher};

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::pprof::{Label, Profile, Sample};

/// Normalizes `profile` in place (see the module documentation).
pub fn normalize(profile: &mut Profile, now_nanos: i64) {
    if profile.time_nanos == 0 {
        profile.time_nanos = now_nanos;
    }
    let location_ids: HashSet<u64> = profile.location.iter().map(|location| location.id).collect();
    let samples = std::mem::take(&mut profile.sample);
    let kept = samples.into_iter().filter_map(|mut sample| {
        let keep = sample.value.iter().all(|&value| value >= 0)
            && sample.value.iter().any(|&value| value != 0)
            && sample.location_id.iter().all(|id| location_ids.contains(id));
        if !keep {
            return None;
        }
        sample.label.retain(|label| label.str != 0 && label.key != 0);
        sample
            .label
            .sort_by_key(|label| (label.key, label.str, label.num, label.num_unit));
        Some(sample)
    });
    profile.sample = merge_equal_samples(kept);
    compact_symbols(profile);
    clear_symbolized_addresses(profile);
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

/// Drops locations, functions, mappings and strings that no sample refers
/// to (directly or through another table), renumbers ids densely from 1 in
/// table order, points invalid string references at `""`, and makes sure
/// the string table starts with `""`.
pub(crate) fn compact_symbols(profile: &mut Profile) {
    let used_locations: HashSet<u64> = profile
        .sample
        .iter()
        .flat_map(|sample| sample.location_id.iter().copied())
        .collect();
    let location_ids = renumber(&mut profile.location, |location| &mut location.id, &used_locations);
    for sample in &mut profile.sample {
        for id in &mut sample.location_id {
            *id = location_ids.get(id).copied().unwrap_or(0);
        }
    }

    let used_functions: HashSet<u64> = profile
        .location
        .iter()
        .flat_map(|location| location.line.iter().map(|line| line.function_id))
        .collect();
    let used_mappings: HashSet<u64> = profile.location.iter().map(|location| location.mapping_id).collect();
    let function_ids = renumber(&mut profile.function, |function| &mut function.id, &used_functions);
    let mapping_ids = renumber(&mut profile.mapping, |mapping| &mut mapping.id, &used_mappings);
    for location in &mut profile.location {
        location.mapping_id = mapping_ids.get(&location.mapping_id).copied().unwrap_or(0);
        location
            .line
            .retain_mut(|line| match function_ids.get(&line.function_id) {
                Some(&new_id) => {
                    line.function_id = new_id;
                    true
                }
                None => false,
            });
    }

    compact_strings(profile);
}

/// Keeps the entries of `table` whose id is in `used` (the first of
/// duplicates), renumbers them densely from 1 in table order and returns
/// old id → new id.
fn renumber<T>(table: &mut Vec<T>, id_of: impl Fn(&mut T) -> &mut u64, used: &HashSet<u64>) -> HashMap<u64, u64> {
    let mut new_ids: HashMap<u64, u64> = HashMap::with_capacity(used.len());
    table.retain_mut(|entry| {
        let id = *id_of(entry);
        if id == 0 || !used.contains(&id) || new_ids.contains_key(&id) {
            return false;
        }
        let new_id = new_ids.len() as u64 + 1;
        new_ids.insert(id, new_id);
        *id_of(entry) = new_id;
        true
    });
    new_ids
}

/// Visits every string reference of the profile.
fn for_each_string_ref(profile: &mut Profile, mut visit: impl FnMut(&mut i64)) {
    for value_type in profile.sample_type.iter_mut().chain(profile.period_type.iter_mut()) {
        visit(&mut value_type.r#type);
        visit(&mut value_type.unit);
    }
    for label in profile.sample.iter_mut().flat_map(|sample| sample.label.iter_mut()) {
        let Label { key, str, num_unit, .. } = label;
        visit(key);
        visit(str);
        visit(num_unit);
    }
    for mapping in &mut profile.mapping {
        visit(&mut mapping.filename);
        visit(&mut mapping.build_id);
    }
    for function in &mut profile.function {
        visit(&mut function.name);
        visit(&mut function.system_name);
        visit(&mut function.filename);
    }
    for comment in &mut profile.comment {
        visit(comment);
    }
    visit(&mut profile.drop_frames);
    visit(&mut profile.keep_frames);
    visit(&mut profile.default_sample_type);
}

fn compact_strings(profile: &mut Profile) {
    let len = profile.string_table.len();
    let mut used = vec![false; len];
    for_each_string_ref(profile, |index| {
        if let Some(slot) = usize::try_from(*index).ok().and_then(|index| used.get_mut(index)) {
            *slot = true;
        }
    });
    // New index of every old string; old index 0 stays 0 when it is "".
    let starts_empty = profile.string_table.first().is_some_and(String::is_empty);
    let mut new_index = vec![0i64; len];
    let old_table = std::mem::take(&mut profile.string_table);
    let mut table = Vec::with_capacity(len + 1);
    table.push(String::new());
    for (index, string) in old_table.into_iter().enumerate() {
        if index == 0 && starts_empty {
            continue;
        }
        if used[index] {
            new_index[index] = table.len() as i64;
            table.push(string);
        }
    }
    profile.string_table = table;
    for_each_string_ref(profile, |index| {
        *index = usize::try_from(*index)
            .ok()
            .and_then(|old| new_index.get(old).copied())
            .unwrap_or(0);
    });
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
