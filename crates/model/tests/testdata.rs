//! The real profiles of `../shared/testdata/pprof` through the model
//! pipeline, checked against the expectations of that folder's README.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use flamedb_model::budget::RequestBudget;
use flamedb_model::{Labels, Limits, pprof, prepare_profile, sample_labels, typed_series};

fn testdata_dir() -> Option<PathBuf> {
    flamedb_testkit::testdata("pprof")
}

/// The pipeline as a push would run it, with "now" at the profile's own
/// time (the recordings are old) and the default limits.
fn push(dir: &Path, file: &str, name: &str) -> Result<Vec<flamedb_model::SeriesProfile>, flamedb_model::PrepareError> {
    let raw = std::fs::read(dir.join(file)).unwrap_or_else(|err| panic!("{file}: {err}"));
    let time = pprof::decode(&raw, 0).map(|p| p.time_nanos).unwrap_or(0);
    let now = if time > 0 { time } else { flamedb_model::now_nanos() };
    let labels = Labels::from_pairs([("__name__", name), ("service_name", "testdata")]);
    prepare_profile(&raw, &labels, &Limits::default(), now, &RequestBudget::unlimited())
}

/// The profile types of the series stored for a pushed profile.
fn profile_types(series: &[flamedb_model::SeriesProfile]) -> BTreeSet<String> {
    series
        .iter()
        .flat_map(|part| typed_series(&part.labels, &part.profile))
        .map(|typed| typed.profile_type.id())
        .collect()
}

#[test]
fn test_testdata_accepted_profiles_yield_exactly_the_listed_profile_types() {
    let Some(dir) = testdata_dir() else { return };
    let go_cpu = [
        "process_cpu:samples:count:cpu:nanoseconds",
        "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
    ]
    .as_slice();
    let go_heap = [
        "memory:alloc_objects:count:space:bytes",
        "memory:alloc_space:bytes:space:bytes",
        "memory:inuse_objects:count:space:bytes",
        "memory:inuse_space:bytes:space:bytes",
    ]
    .as_slice();
    let cases: &[(&str, &str, &[&str])] = &[
        ("cpu.pb.gz", "process_cpu", go_cpu),
        ("cpu-exemplars.pb.gz", "process_cpu", go_cpu),
        ("go.cpu.labels.pprof", "process_cpu", go_cpu),
        (
            "cpu-js.pb.gz",
            "wall",
            &[
                "wall:sample:count:wall:microseconds",
                "wall:wall:microseconds:wall:microseconds",
            ],
        ),
        ("heap.pb.gz", "memory", go_heap),
        ("heap", "memory", go_heap),
        (
            "heap-js.pprof",
            "memory",
            &["memory:objects:count:space:bytes", "memory:space:bytes:space:bytes"],
        ),
        (
            "nodejs-heap.pb.gz",
            "memory",
            &[
                "memory:inuse_objects:count:inuse_space:bytes",
                "memory:inuse_space:bytes:inuse_space:bytes",
            ],
        ),
        (
            "nodejs-wall.pb.gz",
            "wall",
            &[
                "wall:samples:count:wall:microseconds",
                "wall:wall:microseconds:wall:microseconds",
            ],
        ),
        (
            "req_2.pprof",
            "goroutines",
            &["goroutines:goroutine:count:goroutine:count"],
        ),
        (
            "req_3.pprof",
            "block",
            &[
                "block:contentions:count:contentions:count",
                "block:delay:nanoseconds:contentions:count",
            ],
        ),
        (
            "req_4.pprof",
            "mutex",
            &[
                "mutex:contentions:count:contentions:count",
                "mutex:delay:nanoseconds:contentions:count",
            ],
        ),
        (
            "req_5.pprof",
            "memory",
            &[
                "memory:alloc_objects:count:space:bytes",
                "memory:alloc_space:bytes:space:bytes",
            ],
        ),
        (
            "pyspy-1.pb.gz",
            "process_cpu",
            &["process_cpu:samples:count::milliseconds"],
        ),
        (
            "profile_java",
            "process_cpu",
            &["process_cpu:cpu:nanoseconds:cpu:nanoseconds"],
        ),
    ];
    for (file, name, expected) in cases {
        let series = push(&dir, file, name).unwrap_or_else(|err| panic!("{file}: {err}"));
        let expected: BTreeSet<String> = expected.iter().map(|id| id.to_string()).collect();
        assert_eq!(profile_types(&series), expected, "{file}");
    }
}

#[test]
fn test_testdata_sdk_profiles_are_accepted_with_the_types_they_hold() {
    let Some(dir) = testdata_dir() else { return };
    // The sample and period types found in each file, written out.
    const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
    for (file, expected) in [
        ("profile_python", &["process_cpu:samples:count::milliseconds"][..]),
        ("profile_nodejs", &["process_cpu:wall:microseconds:wall:microseconds"]),
        ("profile_rust", &[CPU]),
        (
            "profile_uncompressed",
            &[CPU, "process_cpu:samples:count:cpu:nanoseconds"],
        ),
        ("malformed_no_addr_no_line.pb.gz", &[CPU]),
    ] {
        let series = push(&dir, file, "process_cpu").unwrap_or_else(|err| panic!("{file}: {err}"));
        let expected: BTreeSet<String> = expected.iter().map(|id| (*id).to_owned()).collect();
        assert_eq!(profile_types(&series), expected, "{file}");
    }
}

#[test]
fn test_testdata_rejected_profiles_name_the_reason() {
    let Some(dir) = testdata_dir() else { return };
    let invalid = |file| match push(&dir, file, "process_cpu") {
        Err(flamedb_model::PrepareError::Invalid(err)) => err,
        other => panic!("{file} is refused as invalid, not {other:?}"),
    };
    let err = invalid("dotnet-pprof-3.pb.gz");
    assert!(err.to_string().ends_with("function id is 0"), "{err}");
    assert_eq!(err.reason(), "malformed_profile");
    let err = invalid("invalid_utf8.pb.gz");
    assert!(err.to_string().contains("invalid utf8 string hex: "), "{err}");
    assert_eq!(err.reason(), "malformed_profile");
}

#[test]
fn test_testdata_span_ids_stay_on_samples() {
    let Some(dir) = testdata_dir() else { return };
    let series = push(&dir, "single_group_with_optional_span_id.pb.gz", "process_cpu").unwrap();
    let mut with_span = 0;
    for part in &series {
        assert!(
            part.labels.get("span_id").is_none(),
            "span_id became a series label: {}",
            part.labels
        );
        assert!(part.labels.get("profile_id").is_none());
        with_span += part
            .profile
            .sample
            .iter()
            .filter(|sample| sample_labels(&part.profile, sample).iter().any(|l| l.name == "span_id"))
            .count();
    }
    assert!(with_span > 0, "no sample kept its span_id");
}

#[test]
fn test_testdata_go_labels_split_into_series() {
    let Some(dir) = testdata_dir() else { return };
    let series = push(&dir, "go.cpu.labels.pprof", "process_cpu").unwrap();
    assert!(
        series.len() > 1,
        "expected a split by pprof labels, got {} series",
        series.len()
    );
    let rendered: Vec<String> = series.iter().map(|part| part.labels.render()).collect();
    eprintln!("{rendered:#?}");
    // Totals are kept across the split.
    let raw = std::fs::read(dir.join("go.cpu.labels.pprof")).unwrap();
    let original = pprof::decode(&raw, 0).unwrap();
    let total = |profile: &pprof::Profile| -> i64 { profile.sample.iter().map(|s| s.value[1]).sum() };
    assert_eq!(
        series.iter().map(|part| total(&part.profile)).sum::<i64>(),
        total(&original)
    );
}
