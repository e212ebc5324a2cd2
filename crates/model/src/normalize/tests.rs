use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::budget::RequestBudget;
use crate::pprof::{Function, Line, Location, Mapping, ValueType, string_at};

const NOW: i64 = 42;

/// A stack as people see it: per frame, the function names and lines, leaf
/// first; plus the sample's labels as strings.
type StackKey = (Vec<Vec<(String, i64)>>, Vec<(String, String)>);

/// Sum of values per stack over the samples normalization keeps (no
/// negative value, not all zero).
fn stack_totals(profile: &Profile) -> BTreeMap<StackKey, Vec<i64>> {
    // The first of duplicated ids counts.
    let mut locations: HashMap<u64, &Location> = HashMap::new();
    for location in &profile.location {
        locations.entry(location.id).or_insert(location);
    }
    let mut functions: HashMap<u64, &Function> = HashMap::new();
    for function in &profile.function {
        functions.entry(function.id).or_insert(function);
    }
    let mut totals = BTreeMap::new();
    for sample in &profile.sample {
        if sample.value.iter().any(|&v| v < 0)
            || sample.value.iter().all(|&v| v == 0)
            || sample.location_id.iter().any(|id| !locations.contains_key(id))
        {
            continue;
        }
        let frames = sample
            .location_id
            .iter()
            .map(|id| {
                locations[id]
                    .line
                    .iter()
                    .filter_map(|line| functions.get(&line.function_id))
                    .map(|function| (string_at(profile, function.name).to_owned(), function.start_line))
                    .collect()
            })
            .collect();
        let mut labels: Vec<(String, String)> = sample
            .label
            .iter()
            .filter(|label| label.str != 0 && label.key != 0)
            .map(|label| {
                (
                    string_at(profile, label.key).to_owned(),
                    string_at(profile, label.str).to_owned(),
                )
            })
            .collect();
        labels.sort();
        let total: &mut Vec<i64> = totals
            .entry((frames, labels))
            .or_insert_with(|| vec![0; sample.value.len()]);
        for (sum, value) in total.iter_mut().zip(&sample.value) {
            *sum += value;
        }
    }
    totals
}

/// Every string index the profile refers to.
fn string_refs(profile: &Profile) -> Vec<i64> {
    let mut refs = vec![profile.drop_frames, profile.keep_frames, profile.default_sample_type];
    refs.extend(profile.comment.iter().copied());
    for value_type in profile.sample_type.iter().chain(profile.period_type.iter()) {
        refs.extend([value_type.r#type, value_type.unit]);
    }
    for label in profile.sample.iter().flat_map(|sample| sample.label.iter()) {
        refs.extend([label.key, label.str, label.num_unit]);
    }
    for mapping in &profile.mapping {
        refs.extend([mapping.filename, mapping.build_id]);
    }
    for function in &profile.function {
        refs.extend([function.name, function.system_name, function.filename]);
    }
    refs
}

fn arb_profile() -> impl Strategy<Value = Profile> {
    let value_count = 1..=3usize;
    (value_count, 1..=6u64, 1..=8u64, 0..=2u64).prop_flat_map(|(values, functions, locations, mappings)| {
        let strings: Vec<String> = [
            "", "cpu", "ns", "alloc", "bytes", "k1", "k2", "v1", "v2", "f1", "f2", "f3", "file.go",
        ]
        .map(String::from)
        .to_vec();
        let function = prop::collection::vec((9..=14i64, 0..=14i64, 0..100i64), functions as usize).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (name, filename, start_line))| Function {
                    id: i as u64 + 1,
                    name,
                    system_name: name,
                    filename,
                    start_line,
                })
                .collect::<Vec<_>>()
        });
        let mapping = prop::collection::vec(any::<bool>(), mappings as usize).prop_map(|flags| {
            flags
                .into_iter()
                .enumerate()
                .map(|(i, has_functions)| Mapping {
                    id: i as u64 + 1,
                    memory_start: 0x1000,
                    memory_limit: 0x9000,
                    filename: 12,
                    has_functions,
                    ..Mapping::default()
                })
                .collect::<Vec<_>>()
        });
        // Some locations repeat the previous id; some lines and mappings
        // point at ids that do not exist.
        let location = prop::collection::vec(
            (
                0..=mappings + 1,
                0..0x10000u64,
                prop::collection::vec((1..=functions + 1, 0..50i64), 0..=2),
                prop::bool::weighted(0.1),
            ),
            locations as usize,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (mapping_id, address, lines, repeat_id))| Location {
                    id: if repeat_id && i > 0 { i as u64 } else { i as u64 + 1 },
                    mapping_id,
                    address,
                    line: lines
                        .into_iter()
                        .map(|(function_id, line)| Line {
                            function_id,
                            line,
                            column: 0,
                        })
                        .collect(),
                    is_folded: false,
                })
                .collect::<Vec<_>>()
        });
        let sample = prop::collection::vec(
            (
                prop::collection::vec(1..=locations + 1, 0..=5),
                prop::collection::vec(-2..8i64, values),
                prop::collection::vec((5..=6i64, prop_oneof![Just(0i64), 7..=8i64]), 0..=2),
            ),
            0..=24,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .map(|(location_id, value, labels)| Sample {
                    location_id,
                    value,
                    label: labels
                        .into_iter()
                        .map(|(key, str)| crate::pprof::Label {
                            key,
                            str,
                            num: if str == 0 { 3 } else { 0 },
                            num_unit: 0,
                        })
                        .collect(),
                })
                .collect::<Vec<_>>()
        });
        (
            function,
            mapping,
            location,
            sample,
            Just(strings),
            Just(values),
            0..3i64,
        )
            .prop_map(
                |(function, mapping, location, sample, string_table, values, time)| Profile {
                    sample_type: (0..values)
                        .map(|i| ValueType {
                            r#type: 1 + 2 * (i as i64 % 2),
                            unit: 2 + 2 * (i as i64 % 2),
                        })
                        .collect(),
                    period_type: Some(ValueType { r#type: 1, unit: 2 }),
                    period: 10,
                    sample,
                    mapping,
                    location,
                    function,
                    string_table,
                    time_nanos: time,
                    ..Profile::default()
                },
            )
    })
}

proptest! {
    /// Invariants: the total of every stack (by function names and labels)
    /// is kept over the samples that are not dropped; normalizing again
    /// changes nothing.
    #[test]
    fn test_normalize_keeps_stack_totals_and_is_idempotent(profile in arb_profile()) {
        let before = stack_totals(&profile);
        let mut once = profile.clone();
        normalize(&mut once, NOW, &RequestBudget::unlimited()).unwrap();
        prop_assert_eq!(&stack_totals(&once), &before);
        let mut twice = once.clone();
        normalize(&mut twice, NOW, &RequestBudget::unlimited()).unwrap();
        prop_assert_eq!(&twice, &once);
    }

    /// Invariants: string table starts with "", every reference resolves,
    /// ids are dense from 1, and no two samples share stack and labels.
    #[test]
    fn test_normalize_output_is_well_formed(profile in arb_profile()) {
        let mut profile = profile;
        normalize(&mut profile, NOW, &RequestBudget::unlimited()).unwrap();
        prop_assert_eq!(profile.string_table.first().map(String::as_str), Some(""));
        let strings = profile.string_table.len() as i64;
        for (i, location) in profile.location.iter().enumerate() {
            prop_assert_eq!(location.id, i as u64 + 1);
            prop_assert!(location.mapping_id as usize <= profile.mapping.len());
            for line in &location.line {
                prop_assert!(line.function_id >= 1 && line.function_id as usize <= profile.function.len());
            }
        }
        for (i, function) in profile.function.iter().enumerate() {
            prop_assert_eq!(function.id, i as u64 + 1);
            prop_assert!(function.name < strings && function.filename < strings);
        }
        let mut seen = std::collections::HashSet::new();
        for sample in &profile.sample {
            prop_assert!(sample.value.iter().all(|&v| v >= 0) && sample.value.iter().any(|&v| v != 0));
            prop_assert!(sample.location_id.iter().all(|&id| id >= 1 && id as usize <= profile.location.len()));
            prop_assert!(sample.label.iter().all(|l| l.str != 0 && l.key < strings && l.str < strings));
            prop_assert!(seen.insert((sample.location_id.clone(), sample.label.clone())));
        }
        // Every string but the leading "" is referenced, and only once in
        // the table.
        let referenced = string_refs(&profile);
        prop_assert!((1..strings).all(|index| referenced.contains(&index)));
        let distinct: std::collections::HashSet<&String> = profile.string_table.iter().collect();
        prop_assert_eq!(distinct.len(), profile.string_table.len());
    }
}

#[test]
fn test_normalize_merges_drops_and_compacts() {
    let mut profile = Profile {
        sample_type: vec![ValueType { r#type: 1, unit: 2 }],
        string_table: ["", "cpu", "ns", "main", "unused", "work"].map(String::from).to_vec(),
        function: vec![
            Function {
                id: 7,
                name: 3,
                ..Function::default()
            },
            Function {
                id: 8,
                name: 4,
                ..Function::default()
            },
            Function {
                id: 9,
                name: 5,
                ..Function::default()
            },
        ],
        location: vec![
            Location {
                id: 10,
                line: vec![Line {
                    function_id: 7,
                    ..Line::default()
                }],
                ..Location::default()
            },
            Location {
                id: 11,
                line: vec![Line {
                    function_id: 8,
                    ..Line::default()
                }],
                ..Location::default()
            },
            Location {
                id: 12,
                line: vec![Line {
                    function_id: 9,
                    ..Line::default()
                }],
                ..Location::default()
            },
        ],
        sample: vec![
            Sample {
                location_id: vec![12, 10],
                value: vec![3],
                label: vec![],
            },
            Sample {
                location_id: vec![11],
                value: vec![0],
                label: vec![],
            },
            Sample {
                location_id: vec![12, 10],
                value: vec![4],
                label: vec![],
            },
            Sample {
                location_id: vec![10],
                value: vec![-1],
                label: vec![],
            },
            Sample {
                location_id: vec![99],
                value: vec![5],
                label: vec![],
            },
        ],
        ..Profile::default()
    };
    normalize(&mut profile, NOW, &RequestBudget::unlimited()).unwrap();
    assert_eq!(profile.time_nanos, NOW);
    // Symbols are renumbered in the order samples first use them.
    assert_eq!(
        profile.sample,
        vec![Sample {
            location_id: vec![1, 2],
            value: vec![7],
            label: vec![]
        }]
    );
    let names: Vec<&str> = profile.function.iter().map(|f| string_at(&profile, f.name)).collect();
    assert_eq!(names, ["work", "main"]);
    assert_eq!(profile.string_table, ["", "cpu", "ns", "work", "main"]);
    assert_eq!(profile.location.iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn test_normalize_inserts_leading_empty_string() {
    let mut profile = Profile {
        sample_type: vec![ValueType { r#type: 0, unit: 1 }],
        string_table: ["cpu", "ns"].map(String::from).to_vec(),
        sample: vec![Sample {
            location_id: vec![],
            value: vec![1],
            label: vec![],
        }],
        ..Profile::default()
    };
    normalize(&mut profile, NOW, &RequestBudget::unlimited()).unwrap();
    assert_eq!(profile.string_table, ["", "cpu", "ns"]);
    assert_eq!(profile.sample_type, vec![ValueType { r#type: 1, unit: 2 }]);
}
