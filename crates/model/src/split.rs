//! Splitting one pushed profile into series by its pprof sample labels
//! (Go `pprof.Do` labels, JFR contexts, eBPF labels...). Samples are grouped
//! by their string labels other than `span_id` and `trace_id`; each group
//! becomes a series whose labels are the pushed series' labels plus the
//! group's labels (the pushed ones win on conflicts). `span_id` and
//! `trace_id` stay on the samples; a `profile_id` sample label is a span ID
//! and is renamed to `span_id`.

use foldhash::{HashMap, HashMapExt};

use crate::labels::{Label, Labels, PROFILE_ID, SPAN_ID, TRACE_ID};
use crate::normalize::compact_symbols;
use crate::pprof::{Profile, Sample};

/// One series of a pushed profile: its labels and its part of the profile.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesProfile {
    pub labels: Labels,
    pub profile: Profile,
}

/// Splits a normalized `profile` pushed under `series` by its sample labels.
/// A profile without such labels is returned whole, as one series.
pub fn split_by_sample_labels(mut profile: Profile, series: &Labels) -> Vec<SeriesProfile> {
    rename_profile_id_labels(&mut profile);
    let kept_on_samples = [string_index(&profile, SPAN_ID), string_index(&profile, TRACE_ID)];
    let is_series_label = |label: &crate::pprof::Label| label.str != 0 && !kept_on_samples.contains(&Some(label.key));
    if !profile
        .sample
        .iter()
        .any(|sample| sample.label.iter().any(is_series_label))
    {
        return vec![SeriesProfile {
            labels: series.clone(),
            profile,
        }];
    }

    // Group samples by their series labels (as string table indexes, sorted
    // by name so the order in a sample does not matter).
    let mut groups: Vec<(GroupKey, Vec<Sample>)> = Vec::new();
    let mut group_of: HashMap<GroupKey, usize> = HashMap::new();
    for mut sample in std::mem::take(&mut profile.sample) {
        let mut key: GroupKey = sample
            .label
            .iter()
            .filter(|label| is_series_label(label))
            .map(|label| (label.key, label.str))
            .collect();
        key.sort_by(|a, b| string(&profile, a.0).cmp(string(&profile, b.0)).then(a.1.cmp(&b.1)));
        sample.label.retain(|label| !is_series_label(label));
        let index = *group_of.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[index].1.push(sample);
    }

    let template = profile;
    groups
        .into_iter()
        .map(|(key, samples)| {
            let mut labels = series.clone();
            for (name, value) in key {
                labels.set_if_absent(string(&template, name), string(&template, value));
            }
            let mut profile = Profile {
                sample: samples,
                ..template.clone()
            };
            compact_symbols(&mut profile);
            SeriesProfile { labels, profile }
        })
        .collect()
}

/// The series labels of a sample group, as (name, value) string indexes.
type GroupKey = Vec<(i64, i64)>;

fn string(profile: &Profile, index: i64) -> &str {
    crate::pprof::string_at(profile, index)
}

fn string_index(profile: &Profile, value: &str) -> Option<i64> {
    profile
        .string_table
        .iter()
        .position(|string| string == value)
        .map(|index| index as i64)
}

/// Renames the `profile_id` sample label to `span_id`.
fn rename_profile_id_labels(profile: &mut Profile) {
    let Some(profile_id) = string_index(profile, PROFILE_ID) else {
        return;
    };
    let used = profile
        .sample
        .iter()
        .any(|sample| sample.label.iter().any(|label| label.key == profile_id));
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
    for sample in &mut profile.sample {
        for label in &mut sample.label {
            if label.key == profile_id {
                label.key = span_id;
            }
        }
    }
}

/// Reads the sample labels of `sample` as (name, value) pairs.
pub fn sample_labels(profile: &Profile, sample: &Sample) -> Vec<Label> {
    sample
        .label
        .iter()
        .filter(|label| label.str != 0)
        .map(|label| Label::new(string(profile, label.key), string(profile, label.str)))
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
        let out = split_by_sample_labels(input.clone(), &series);
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
        let out = split_by_sample_labels(input, &series);
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
        assert_eq!(string(first, first.function[0].name), "main");
        // profile_id became span_id.
        let third = &out[2].profile;
        assert_eq!(sample_labels(third, &third.sample[0]), [Label::new("span_id", "5678")]);
        assert_eq!(string(third, third.function[0].name), "idle");
    }

    #[test]
    fn test_split_adds_sample_labels_to_series_labels() {
        let series = Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "app")]);
        let input = profile(&[(1, 10, &[(6, 7)]), (2, 5, &[(6, 8)]), (3, 2, &[(6, 7)])]);
        let out = split_by_sample_labels(input, &series);
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
