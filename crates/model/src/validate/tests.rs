//! Table-driven tests: every rule at its boundary (accepted at the limit,
//! rejected one past it).

use super::*;
use crate::pprof::{Function, Label as PprofLabel, Line, Location, Mapping, Sample, ValueType};

const NOW: i64 = 1_700_000_000_000_000_000;
const SECOND: i64 = 1_000_000_000;

fn limits() -> Limits {
    Limits {
        max_label_name_length: 12,
        max_label_value_length: 10,
        max_label_names_per_series: 4,
        max_profile_size_bytes: 1 << 20,
        max_profile_stacktrace_samples: 3,
        max_profile_stacktrace_sample_labels: 2,
        max_profile_stacktrace_depth: 2,
        max_profile_symbol_value_length: 6,
        reject_older_than: Duration::from_secs(3600),
        reject_newer_than: Duration::from_secs(600),
        disable_label_sanitization: true,
        ..Limits::default()
    }
}

/// A valid profile: two samples over three locations/functions.
fn base_profile() -> Profile {
    Profile {
        sample_type: vec![ValueType { r#type: 1, unit: 2 }],
        string_table: ["", "cpu", "ns", "main", "work", "idle", "k", "v"]
            .map(String::from)
            .to_vec(),
        mapping: vec![Mapping {
            id: 1,
            filename: 3,
            ..Mapping::default()
        }],
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
                mapping_id: 1,
                line: vec![Line {
                    function_id: id,
                    line: 1,
                    column: 0,
                }],
                ..Location::default()
            })
            .collect(),
        sample: vec![
            Sample {
                location_id: vec![3, 2, 1],
                value: vec![1],
                label: vec![],
            },
            Sample {
                location_id: vec![2, 1],
                value: vec![2],
                label: vec![],
            },
        ],
        time_nanos: NOW,
        ..Profile::default()
    }
}

fn series() -> Labels {
    Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "app")])
}

fn check(profile: &mut Profile) -> Result<(), ValidationError> {
    validate_profile(profile, &series(), &limits(), NOW)
}

type Mutation = fn(&mut Profile);

#[test]
fn test_validate_profile_rules_at_their_boundaries() {
    let cases: Vec<(&str, Mutation, Option<&str>)> = vec![
        ("valid", |_| {}, None),
        ("no sample types", |p| p.sample_type.clear(), Some("malformed_profile")),
        (
            "just inside the old edge",
            |p| p.time_nanos = NOW - 3600 * SECOND + 1,
            None,
        ),
        (
            "at the old edge",
            |p| p.time_nanos = NOW - 3600 * SECOND,
            Some("not_in_ingestion_window"),
        ),
        (
            "just inside the new edge",
            |p| p.time_nanos = NOW + 600 * SECOND - 1,
            None,
        ),
        (
            "at the new edge",
            |p| p.time_nanos = NOW + 600 * SECOND,
            Some("not_in_ingestion_window"),
        ),
        ("samples at the limit", |p| p.sample.push(p.sample[0].clone()), None),
        (
            "samples past the limit",
            |p| p.sample.extend([p.sample[0].clone(), p.sample[0].clone()]),
            Some("samples_limit"),
        ),
        (
            "sample labels at the limit",
            |p| {
                p.sample[0].label = vec![
                    PprofLabel {
                        key: 6,
                        str: 7,
                        ..PprofLabel::default()
                    };
                    2
                ]
            },
            None,
        ),
        (
            "sample labels past the limit",
            |p| {
                p.sample[0].label = vec![
                    PprofLabel {
                        key: 6,
                        str: 7,
                        ..PprofLabel::default()
                    };
                    3
                ]
            },
            Some("sample_labels_limit"),
        ),
        ("location id 0", |p| p.location[0].id = 0, Some("malformed_profile")),
        ("function id 0", |p| p.function[0].id = 0, Some("malformed_profile")),
        (
            "too few values",
            |p| p.sample[0].value.clear(),
            Some("malformed_profile"),
        ),
        (
            "too many values",
            |p| p.sample[0].value.push(1),
            Some("malformed_profile"),
        ),
        (
            "string table without leading empty string",
            |p| p.string_table[0] = "x".into(),
            Some("malformed_profile"),
        ),
        (
            "empty string table",
            |p| p.string_table.clear(),
            Some("malformed_profile"),
        ),
        (
            "sample type out of range",
            |p| p.sample_type[0].r#type = 8,
            Some("malformed_profile"),
        ),
        (
            "negative string index",
            |p| p.sample_type[0].unit = -1,
            Some("malformed_profile"),
        ),
        (
            "function name out of range",
            |p| p.function[1].name = 99,
            Some("malformed_profile"),
        ),
        (
            "mapping file out of range",
            |p| p.mapping[0].build_id = 8,
            Some("malformed_profile"),
        ),
        (
            "sample label out of range",
            |p| {
                p.sample[0].label = vec![PprofLabel {
                    key: 6,
                    str: 8,
                    ..PprofLabel::default()
                }]
            },
            Some("malformed_profile"),
        ),
        (
            "sample type with a dash",
            |p| p.string_table[1] = "cpu-x".into(),
            Some("malformed_profile"),
        ),
    ];
    for (name, mutate, expected) in cases {
        let mut profile = base_profile();
        mutate(&mut profile);
        let result = check(&mut profile);
        match (expected, result) {
            (None, Ok(())) => {}
            (Some(reason), Err(err)) => {
                assert_eq!(err.reason(), reason, "{name}: {err}");
                assert!(
                    err.to_string()
                        .contains(r#"{__name__="process_cpu", service_name="app"}"#),
                    "{name}: {err}"
                );
            }
            (expected, result) => panic!("{name}: expected {expected:?}, got {result:?}"),
        }
    }
}

#[test]
fn test_validate_profile_messages_name_the_limit_and_value() {
    let mut profile = base_profile();
    profile
        .sample
        .extend([profile.sample[0].clone(), profile.sample[0].clone()]);
    let err = check(&mut profile).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"profile of series {__name__="process_cpu", service_name="app"} has 4 samples, limit max_profile_stacktrace_samples is 3"#
    );
    let mut profile = base_profile();
    profile.function[0].id = 0;
    assert!(
        check(&mut profile)
            .unwrap_err()
            .to_string()
            .ends_with("function id is 0")
    );
    let mut profile = base_profile();
    profile.time_nanos = NOW - 7200 * SECOND;
    assert_eq!(
        check(&mut profile).unwrap_err().to_string(),
        r#"profile of series {__name__="process_cpu", service_name="app"} is too old: its time 2023-11-14T20:13:20.000Z is more than reject_older_than 1h before now (2023-11-14T22:13:20.000Z)"#
    );
}

#[test]
fn test_validate_profile_sets_missing_time_and_truncates() {
    let mut profile = base_profile();
    profile.time_nanos = 0;
    profile.string_table.push("abéfghij".into()); // 9 bytes: é is 2
    check(&mut profile).unwrap();
    assert_eq!(profile.time_nanos, NOW);
    // Depth 3 → the 2 frames closest to the root (the end) remain.
    assert_eq!(profile.sample[0].location_id, [2, 1]);
    assert_eq!(profile.sample[1].location_id, [2, 1]);
    // The last 6 bytes, moved to a character boundary.
    assert_eq!(profile.string_table.last().unwrap(), "fghij");
    assert_eq!(profile.string_table[3], "main");
}

#[test]
fn test_validate_profile_keeps_what_is_at_the_limits() {
    let mut profile = base_profile();
    profile.sample[0].location_id = vec![2, 1]; // depth 2, the limit
    profile.string_table.push("abcdéf".into()); // 7 bytes
    profile.string_table.push("abcdef".into()); // 6 bytes, the limit
    check(&mut profile).unwrap();
    assert_eq!(profile.sample[0].location_id, [2, 1]);
    assert_eq!(profile.string_table[profile.string_table.len() - 2], "bcdéf");
    assert_eq!(profile.string_table.last().unwrap(), "abcdef");
}

#[test]
fn test_validate_profile_counts_depth_in_frames_after_expanding_lines() {
    let line = |function_id| Line {
        function_id,
        line: 1,
        column: 0,
    };
    // Location 1 (the root) inlines two functions: 2 frames; with location
    // 2 on top the stack is 3 frames deep, over the limit of 2.
    let mut profile = base_profile();
    profile.location[0].line = vec![line(2), line(1)];
    profile.sample[0].location_id = vec![2, 1];
    // Location 3 holds 200,000 lines: only its 2 root-most lines stay.
    profile.location[2].line = (0..200_000).map(|_| line(3)).collect();
    profile.location[2].line.push(line(1));
    profile.sample[1].location_id = vec![3];
    check(&mut profile).unwrap();
    assert_eq!(profile.sample[0].location_id, [1]);
    assert_eq!(profile.location[2].line, [line(3), line(1)]);
    assert_eq!(profile.sample[1].location_id, [3]);
}

#[test]
fn test_validate_profile_zero_limits_mean_unlimited() {
    let mut profile = base_profile();
    for _ in 0..100 {
        profile.sample.push(profile.sample[0].clone());
    }
    profile.time_nanos = 1;
    validate_profile(&mut profile, &series(), &Limits::unlimited(), NOW).unwrap();
    assert_eq!(profile.sample[0].location_id.len(), 3);
}

fn labels_check(pairs: &[(&str, &str)]) -> Result<Labels, ValidationError> {
    let mut labels = Labels::from_pairs(pairs.iter().copied());
    validate_labels(&mut labels, &limits()).map(|()| labels)
}

#[test]
fn test_validate_labels_rules_at_their_boundaries() {
    let base = [("__name__", "cpu"), ("service_name", "app")];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        base.iter().chain(extra).copied().collect()
    };
    let cases: Vec<(&str, Vec<(&str, &str)>, Option<&str>)> = vec![
        ("valid", with(&[]), None),
        ("empty", vec![], Some("missing_labels")),
        ("labels at the limit", with(&[("a", "1"), ("b", "2")]), None),
        (
            "labels past the limit",
            with(&[("a", "1"), ("b", "2"), ("c", "3")]),
            Some("max_label_names_per_series"),
        ),
        ("no metric name", vec![("service_name", "app")], Some("invalid_labels")),
        (
            "empty metric name",
            vec![("__name__", ""), ("service_name", "app")],
            Some("invalid_labels"),
        ),
        ("no service name", vec![("__name__", "cpu")], Some("missing_labels")),
        (
            "empty service name",
            vec![("__name__", "cpu"), ("service_name", "")],
            Some("missing_labels"),
        ),
        ("name at the limit", with(&[("abcdefghijkl", "1")]), None),
        (
            "name past the limit",
            with(&[("abcdefghijklm", "1")]),
            Some("label_name_too_long"),
        ),
        ("value at the limit", with(&[("a", "0123456789")]), None),
        (
            "value past the limit",
            with(&[("a", "0123456789x")]),
            Some("label_value_too_long"),
        ),
        ("utf-8 name", with(&[("k.é", "v")]), None),
        ("empty name", with(&[("", "v")]), Some("invalid_labels")),
        (
            "duplicate name",
            with(&[("a", "1"), ("a", "2")]),
            Some("duplicate_label_names"),
        ),
    ];
    for (name, pairs, expected) in cases {
        match (expected, labels_check(&pairs)) {
            (None, Ok(_)) => {}
            (Some(reason), Err(err)) => assert_eq!(err.reason(), reason, "{name}: {err}"),
            (expected, result) => panic!("{name}: expected {expected:?}, got {result:?}"),
        }
    }
}

#[test]
fn test_validate_labels_rule_order() {
    // Too many labels is reported before the missing service name, which
    // is reported before a long value.
    let err = labels_check(&[
        ("__name__", "cpu"),
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("d", "0123456789x"),
    ])
    .unwrap_err();
    assert_eq!(err.reason(), "max_label_names_per_series");
    let err = labels_check(&[("__name__", "cpu"), ("a", "0123456789x")]).unwrap_err();
    assert_eq!(err.reason(), "missing_labels");
    let err = labels_check(&[("service_name", "app"), ("a", "0123456789x")]).unwrap_err();
    assert_eq!(err.reason(), "invalid_labels");
}

#[test]
fn test_validate_labels_message() {
    let err = labels_check(&[("__name__", "cpu"), ("service_name", "app"), ("a", "0123456789x")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"series {__name__="cpu", a="0123456789x", service_name="app"} has a value of label "a" of 11 bytes, limit max_label_value_length is 10"#
    );
}

#[test]
fn test_label_sanitization_when_enabled() {
    let sanitizing = Limits {
        disable_label_sanitization: false,
        ..limits()
    };
    let mut labels = Labels::from_pairs([("__name__", "cpu"), ("service_name", "app"), ("k.a", "v")]);
    validate_labels(&mut labels, &sanitizing).unwrap();
    assert_eq!(labels.render(), r#"{__name__="cpu", k_a="v", service_name="app"}"#);

    let mut same = Labels::from_pairs([("__name__", "cpu"), ("service_name", "app"), ("k.a", "v"), ("k_a", "v")]);
    validate_labels(&mut same, &sanitizing).unwrap();
    assert_eq!(same.len(), 3);

    let mut clash = Labels::from_pairs([("__name__", "cpu"), ("service_name", "app"), ("k.a", "v"), ("k_a", "w")]);
    assert_eq!(
        validate_labels(&mut clash, &sanitizing).unwrap_err().reason(),
        "duplicate_label_names"
    );

    // A name given twice stays a duplicate, dots or not.
    let mut twice = Labels::from_pairs([("__name__", "cpu"), ("service_name", "app"), ("a.b", "1"), ("a.b", "1")]);
    assert_eq!(
        validate_labels(&mut twice, &sanitizing).unwrap_err().reason(),
        "duplicate_label_names"
    );

    let mut invalid = Labels::from_pairs([("__name__", "cpu"), ("service_name", "app"), ("k-a", "v")]);
    assert_eq!(
        validate_labels(&mut invalid, &sanitizing).unwrap_err().reason(),
        "invalid_labels"
    );
}
