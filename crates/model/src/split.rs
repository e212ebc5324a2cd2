//! Splitting one pushed profile into series by its pprof sample labels
//! (Go `pprof.Do` labels, JFR contexts, eBPF labels...). Samples are grouped
//! by their string labels other than `span_id` and `trace_id`; each group
//! becomes a series whose labels are the pushed series' labels plus the
//! group's labels (the pushed ones win on conflicts). `span_id` and
//! `trace_id` stay on the samples; a `profile_id` sample label is a span ID
//! and is renamed to `span_id`.

use foldhash::{HashMap, HashMapExt};

use crate::budget::{BudgetError, RequestBudget, allocation_size};
use crate::labels::{Label, Labels, PROFILE_ID, SPAN_ID, TRACE_ID};
use crate::pprof::{Profile, Sample, string_at};
use crate::symbols::SymbolTables;

/// One series of a pushed profile: its labels and its part of the profile.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesProfile {
    pub labels: Labels,
    pub profile: Profile,
}

/// The series labels of a sample group: sorted (name, value) pairs.
type GroupKey<'a> = Vec<(&'a str, &'a str)>;

/// Splits a normalized `profile` pushed under `series` by its sample labels.
/// A profile without such labels is returned whole, as one series. Each
/// part holds only the symbols its samples use; what each part copies is
/// charged to `budget` before it is copied.
pub fn split_by_sample_labels(
    mut profile: Profile,
    series: &Labels,
    budget: &RequestBudget,
) -> Result<Vec<SeriesProfile>, BudgetError> {
    rename_profile_id_labels(&mut profile);
    let samples = std::mem::take(&mut profile.sample);
    let source = &profile;
    let is_series_label = |label: &crate::pprof::Label| {
        let key = string_at(source, label.key);
        let value = string_at(source, label.str);
        !key.is_empty() && !value.is_empty() && key != SPAN_ID && key != TRACE_ID
    };
    if !samples.iter().any(|sample| sample.label.iter().any(is_series_label)) {
        let mut whole = profile;
        whole.sample = samples;
        return Ok(vec![SeriesProfile {
            labels: series.clone(),
            profile: whole,
        }]);
    }

    let mut groups: Vec<(GroupKey<'_>, Vec<Sample>)> = Vec::new();
    let mut group_of: HashMap<GroupKey<'_>, usize> = HashMap::new();
    for mut sample in samples {
        let mut key: GroupKey<'_> = sample
            .label
            .iter()
            .filter(|label| is_series_label(label))
            .map(|label| (string_at(source, label.key), string_at(source, label.str)))
            .collect();
        key.sort_unstable();
        sample.label.retain(|label| !is_series_label(label));
        let index = match group_of.get(&key) {
            Some(&index) => index,
            None => {
                group_of.insert(key.clone(), groups.len());
                groups.push((key, Vec::new()));
                groups.len() - 1
            }
        };
        groups[index].1.push(sample);
    }

    let mut tables = SymbolTables::new(source);
    let series_bytes = series
        .iter()
        .map(|label| allocation_size(label.name.len()) + allocation_size(label.value.len()) + 48)
        .fold(0usize, usize::saturating_add);
    let mut parts = Vec::with_capacity(groups.len());
    for (key, samples) in groups {
        budget.charge(series_bytes, LABELS)?;
        let mut labels = series.clone();
        for (name, value) in key {
            budget.charge(allocation_size(name.len()) + allocation_size(value.len()) + 64, LABELS)?;
            labels.set_if_absent(name, value);
        }
        parts.push(SeriesProfile {
            labels,
            profile: tables.extract(samples, budget)?,
        });
    }
    Ok(parts)
}

/// What splitting charges for the labels of each part.
const LABELS: &str = "the labels of the series a profile splits into";

/// Renames the `profile_id` sample label to `span_id`.
fn rename_profile_id_labels(profile: &mut Profile) {
    let is_profile_id = |profile: &Profile, key: i64| string_at(profile, key) == PROFILE_ID;
    let used = profile
        .sample
        .iter()
        .any(|sample| sample.label.iter().any(|label| is_profile_id(profile, label.key)));
    if !used {
        return;
    }
    let span_id = match profile.string_table.iter().position(|string| string == SPAN_ID) {
        Some(index) => index as i64,
        None => {
            profile.string_table.push(SPAN_ID.to_owned());
            profile.string_table.len() as i64 - 1
        }
    };
    let profile_id_indexes: Vec<i64> = (0..profile.string_table.len() as i64)
        .filter(|&index| is_profile_id(profile, index))
        .collect();
    for label in profile.sample.iter_mut().flat_map(|sample| sample.label.iter_mut()) {
        if profile_id_indexes.contains(&label.key) {
            label.key = span_id;
        }
    }
}

/// Reads the sample labels of `sample` as (name, value) pairs.
pub fn sample_labels(profile: &Profile, sample: &Sample) -> Vec<Label> {
    sample
        .label
        .iter()
        .filter(|label| label.str != 0)
        .map(|label| Label::new(string_at(profile, label.key), string_at(profile, label.str)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pprof::{Function, Label as PprofLabel, Line, Location, ValueType};

    /// A profile with one function per location; samples are (location id,
    /// value, labels as string indexes).
    fn profile(samples: &[(u64, i64, &[(i64, i64)])]) -> Profile {
        let strings = [
            "",
            "cpu",
            "ns",
            "main",
            "work",
            "idle",
            "pod",
            "a",
            "b",
            "span_id",
            "1234",
            "profile_id",
            "5678",
        ];
        Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }],
            string_table: strings.map(String::from).to_vec(),
            function: (1..=3)
                .map(|id| Function {
                    id,
                    name: 2 + id as i64,
                    ..Function::default()
                })
                .collect(),
            location: (1..=3)
                .map(|id| Location {
                    id,
                    line: vec![Line {
                        function_id: id,
                        line: 0,
                        column: 0,
                    }],
                    ..Location::default()
                })
                .collect(),
            sample: samples
                .iter()
                .map(|&(location, value, labels)| Sample {
                    location_id: vec![location],
                    value: vec![value],
                    label: labels
                        .iter()
                        .map(|&(key, str)| PprofLabel {
                            key,
                            str,
                            ..PprofLabel::default()
                        })
                        .collect(),
                })
                .collect(),
            ..Profile::default()
        }
    }

    #[test]
    fn test_split_without_labels_keeps_one_series() {
        let series = Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "app")]);
        let input = profile(&[(1, 10, &[]), (2, 5, &[(9, 10)])]);
        let out = split_by_sample_labels(input.clone(), &series, &RequestBudget::unlimited()).unwrap();
        assert_eq!(
            out,
            vec![SeriesProfile {
                labels: series,
                profile: input
            }]
        );
    }

    #[test]
    fn test_split_groups_by_labels_and_keeps_span_ids_on_samples() {
        let series = Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "app"), ("pod", "fixed")]);
        // Groups: {pod=a (ignored: series wins)}, {}, and span ids along.
        let input = profile(&[(1, 10, &[(6, 7), (9, 10)]), (2, 5, &[]), (3, 1, &[(6, 8), (11, 12)])]);
        let out = split_by_sample_labels(input, &series, &RequestBudget::unlimited()).unwrap();
        assert_eq!(out.len(), 3);
        // The pushed pod label wins over the sample's pod label.
        for part in &out {
            assert_eq!(part.labels.get("pod"), Some("fixed"));
        }
        let first = &out[0].profile;
        assert_eq!(first.sample.len(), 1);
        assert_eq!(sample_labels(first, &first.sample[0]), [Label::new("span_id", "1234")]);
        // Unused symbols are gone from each part.
        assert_eq!(first.function.len(), 1);
        assert_eq!(string_at(first, first.function[0].name), "main");
        // profile_id became span_id.
        let third = &out[2].profile;
        assert_eq!(sample_labels(third, &third.sample[0]), [Label::new("span_id", "5678")]);
        assert_eq!(string_at(third, third.function[0].name), "idle");
    }

    #[test]
    fn test_split_adds_sample_labels_to_series_labels() {
        let series = Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "app")]);
        let input = profile(&[(1, 10, &[(6, 7)]), (2, 5, &[(6, 8)]), (3, 2, &[(6, 7)])]);
        let out = split_by_sample_labels(input, &series, &RequestBudget::unlimited()).unwrap();
        let rendered: Vec<String> = out.iter().map(|part| part.labels.render()).collect();
        assert_eq!(
            rendered,
            [
                r#"{__name__="process_cpu", pod="a", service_name="app"}"#,
                r#"{__name__="process_cpu", pod="b", service_name="app"}"#
            ]
        );
        assert_eq!(out[0].profile.sample.len(), 2);
        assert!(out[0].profile.sample.iter().all(|sample| sample.label.is_empty()));
    }
}
