use flamedb_model::pprof::{Function, Label as PprofLabel, Line, Location, Sample, ValueType};
use flamedb_model::{ProfileType, parse_selector, typed_series};

use super::*;

const SECOND_NS: i64 = 1_000_000_000;

/// A profile with functions main, work, idle; samples are (stack of
/// function ids leaf first, values, span id).
fn profile(time_s: i64, sample_types: &[(&str, &str)], samples: &[(&[u64], &[i64], Option<&str>)]) -> Profile {
    let mut strings: Vec<String> = ["", "main", "work", "idle", "span_id", "nanoseconds"]
        .map(String::from)
        .to_vec();
    let mut sample_type = Vec::new();
    for (name, unit) in sample_types {
        strings.push((*name).to_owned());
        let name_index = strings.len() as i64 - 1;
        strings.push((*unit).to_owned());
        sample_type.push(ValueType {
            r#type: name_index,
            unit: strings.len() as i64 - 1,
        });
    }
    let label = |span: &str, strings: &mut Vec<String>| {
        strings.push(span.to_owned());
        PprofLabel {
            key: 4,
            str: strings.len() as i64 - 1,
            ..PprofLabel::default()
        }
    };
    let sample = samples
        .iter()
        .map(|(stack, values, span)| Sample {
            location_id: stack.to_vec(),
            value: values.to_vec(),
            label: span.map(|span| label(span, &mut strings)).into_iter().collect(),
        })
        .collect();
    Profile {
        sample_type,
        sample,
        function: (1..=3)
            .map(|id| Function {
                id,
                name: id as i64,
                ..Function::default()
            })
            .collect(),
        location: (1..=3)
            .map(|id| Location {
                id,
                line: vec![Line {
                    function_id: id,
                    line: 10,
                    column: 0,
                }],
                ..Location::default()
            })
            .collect(),
        string_table: strings,
        time_nanos: time_s * SECOND_NS,
        ..Profile::default()
    }
}

fn inserts(labels: &Labels, profile: &Profile) -> Vec<SeriesInsert> {
    typed_series(labels, profile)
        .into_iter()
        .map(|typed| SeriesInsert {
            fingerprint: typed.labels.fingerprint(),
            cumulative: crate::delta::is_cumulative(labels, &typed.profile_type.sample_type),
            labels: typed.labels,
            sample_type_index: typed.sample_type_index,
        })
        .collect()
}

fn insert(head: &Head, id: u8, labels: &Labels, profile: &Profile, delta: &mut DeltaState) -> usize {
    head.insert(ProfileId([id; 16]), profile, &inserts(labels, profile), delta, None)
}

fn select(head: &Head, query: &ProfileQuery) -> Vec<SelectedProfile> {
    let mut selected = Vec::new();
    head.visit_profiles(query, |profile| selected.push(profile));
    selected
}

fn cpu_labels(service: &str) -> Labels {
    Labels::from_pairs([("__name__", "process_cpu"), ("service_name", service)])
}

const CPU: &str = "process_cpu:cpu:nanoseconds::";

fn query(selector: &str) -> ProfileQuery {
    ProfileQuery {
        profile_type: CPU.to_owned(),
        selector: parse_selector(selector).unwrap(),
        range: TimeRange::ALL,
        series: None,
    }
}

fn stacks(tree: &Tree) -> Vec<(String, i64)> {
    tree.stacks()
        .into_iter()
        .map(|(frames, value)| (frames.join(";"), value))
        .collect()
}

#[test]
fn test_insert_and_query() {
    let head = Head::new(0);
    let mut delta = DeltaState::default();
    let cpu = [("cpu", "nanoseconds")];
    // Stacks are leaf first: [2, 1] is main → work.
    let first = profile(
        100,
        &cpu,
        &[(&[2, 1], &[30], None), (&[1], &[10], None), (&[3], &[0], None)],
    );
    let second = profile(200, &cpu, &[(&[2, 1], &[5], None)]);
    let grown = insert(&head, 1, &cpu_labels("api"), &first, &mut delta);
    assert!(grown > 0 && head.bytes() == grown);
    insert(&head, 2, &cpu_labels("api"), &second, &mut delta);
    insert(&head, 3, &cpu_labels("db"), &first, &mut delta);

    let all: [Selector; 0] = [];
    let names = head.label_names(&all, TimeRange::ALL);
    assert!(names.contains(&"service_name".to_owned()) && names.contains(&"__profile_type__".to_owned()));
    assert_eq!(head.label_values("service_name", &all, TimeRange::ALL), ["api", "db"]);
    let api = [parse_selector(r#"{service_name="api"}"#).unwrap()];
    assert_eq!(head.series(&api, TimeRange::ALL).len(), 1);
    assert_eq!(head.label_values("__profile_type__", &api, TimeRange::ALL), [CPU]);

    let selected = select(&head, &query(r#"{service_name="api"}"#));
    let summary: Vec<(u8, i64, i64)> = selected
        .iter()
        .map(|p| (p.id.0[0], p.time_nanos / SECOND_NS, p.total))
        .collect();
    assert_eq!(summary, [(1, 100, 40), (2, 200, 5)]);

    let mut tree = Tree::new();
    head.merge_into(&query("{}"), None, None, &mut tree).unwrap();
    assert_eq!(stacks(&tree), [("main".to_owned(), 20), ("main;work".to_owned(), 65)]);
    // Only some profiles; only a time range.
    let mut tree = Tree::new();
    let only: HashSet<ProfileId> = [ProfileId([2; 16])].into();
    head.merge_into(&query("{}"), Some(&only), None, &mut tree).unwrap();
    assert_eq!(stacks(&tree), [("main;work".to_owned(), 5)]);
    let mut tree = Tree::new();
    let early = ProfileQuery {
        range: TimeRange {
            start_ms: 0,
            end_ms: 150_000,
        },
        ..query("{}")
    };
    head.merge_into(&early, None, None, &mut tree).unwrap();
    assert_eq!(tree.total(), 80);
    // Series summaries: kept ones when the range covers the head, from
    // the rows otherwise; the same as summing the selected profiles.
    for query in [query("{}"), early, query(r#"{service_name="nope"}"#)] {
        let mut summaries = SeriesSummaries::new();
        head.summarize_into(&query, &mut summaries);
        let mut expected = SeriesSummaries::new();
        for profile in select(&head, &query) {
            summary_of(&mut expected, profile.fingerprint).add(profile.id, profile.total);
        }
        assert_eq!(summaries, expected);
    }
    assert!(
        head.label_names(
            &all,
            TimeRange {
                start_ms: 300_000,
                end_ms: 400_000
            }
        )
        .is_empty()
    );
}

#[test]
fn test_one_row_per_sample_type_with_values() {
    let head = Head::new(0);
    let mut delta = DeltaState::default();
    let labels = Labels::from_pairs([("__name__", "memory"), ("service_name", "app"), ("__delta__", "false")]);
    let heap = profile(
        1,
        &[("inuse_space", "bytes"), ("alloc_space", "bytes")],
        &[(&[1], &[100, 0], None), (&[2, 1], &[0, 7], None)],
    );
    insert(&head, 1, &labels, &heap, &mut delta);
    let types: Vec<String> = head.label_values("__profile_type__", &[], TimeRange::ALL);
    assert_eq!(types, ["memory:alloc_space:bytes::", "memory:inuse_space:bytes::"]);
    assert_eq!(head.rows(), 2);
    // __delta__ is a control label: not stored.
    assert!(!head.label_names(&[], TimeRange::ALL).contains(&"__delta__".to_owned()));
}

#[test]
fn test_cumulative_alloc_profiles_store_deltas() {
    let head = Head::new(0);
    let mut delta = DeltaState::default();
    let labels = Labels::from_pairs([("__name__", "memory"), ("service_name", "app")]);
    let alloc = [("alloc_space", "bytes")];
    let at = |time, main, work| profile(time, &alloc, &[(&[1], &[main], None), (&[2, 1], &[work], None)]);
    insert(&head, 1, &labels, &at(1, 100, 50), &mut delta); // baseline
    insert(&head, 2, &labels, &at(2, 130, 50), &mut delta);
    insert(&head, 3, &labels, &at(3, 160, 70), &mut delta);
    let query = ProfileQuery {
        profile_type: "memory:alloc_space:bytes::".to_owned(),
        selector: Selector::default(),
        range: TimeRange::ALL,
        series: None,
    };
    let totals: Vec<i64> = select(&head, &query).iter().map(|p| p.total).collect();
    assert_eq!(totals, [30, 50]);
    let mut tree = Tree::new();
    head.merge_into(&query, None, None, &mut tree).unwrap();
    assert_eq!(stacks(&tree), [("main".to_owned(), 60), ("main;work".to_owned(), 20)]);
}

#[test]
fn test_span_ids_are_kept_per_sample() {
    let head = Head::new(0);
    let mut delta = DeltaState::default();
    let cpu = [("cpu", "nanoseconds")];
    let traced = profile(
        1,
        &cpu,
        &[
            (&[1], &[5], Some("00000000000000aa")),
            (&[1], &[7], Some("00000000000000bb")),
            (&[1], &[1], None),
        ],
    );
    insert(&head, 1, &cpu_labels("api"), &traced, &mut delta);
    let data = head.read();
    let row = &data.rows[0];
    assert_eq!(row.values.len(), 3);
    let mut spans = row.span_ids.as_deref().unwrap().to_vec();
    spans.sort_unstable();
    assert_eq!(spans, [0, 0xaa, 0xbb]);
}

#[test]
fn test_symbols_are_stored_once() {
    let head = Head::new(0);
    let mut delta = DeltaState::default();
    let cpu = [("cpu", "nanoseconds")];
    let one = profile(1, &cpu, &[(&[2, 1], &[3], None), (&[3, 1], &[4], None)]);
    insert(&head, 1, &cpu_labels("api"), &one, &mut delta);
    let (counts, _) = head.counts();
    for id in 2..10 {
        insert(&head, id, &cpu_labels("api"), &one, &mut delta);
    }
    let (again, series) = head.counts();
    assert_eq!(again, counts);
    assert_eq!(series, 1);
    // main → work and main → idle share the main node.
    assert_eq!(counts.stacks, 3);
}

#[test]
fn test_selectors_and_profile_types() {
    let head = Head::new(0);
    let mut delta = DeltaState::default();
    let cpu = [("cpu", "nanoseconds")];
    for (id, service) in [(1, "checkout"), (2, "cart"), (3, "catalog")] {
        insert(
            &head,
            id,
            &cpu_labels(service),
            &profile(1, &cpu, &[(&[1], &[1], None)]),
            &mut delta,
        );
    }
    let values =
        |selector: &str| head.label_values("service_name", &[parse_selector(selector).unwrap()], TimeRange::ALL);
    assert_eq!(values(r#"{service_name=~"ca.*"}"#), ["cart", "catalog"]);
    assert_eq!(values(r#"{service_name!~"ca.*"}"#), ["checkout"]);
    assert_eq!(values(r#"{service_name!="cart"}"#), ["catalog", "checkout"]);
    assert_eq!(values(r#"{missing=""}"#).len(), 3);
    assert!(values(r#"{missing="x"}"#).is_empty());
    // Either selector matches (OR).
    let either = [
        parse_selector(r#"{service_name="cart"}"#).unwrap(),
        parse_selector(r#"{service_name="catalog"}"#).unwrap(),
    ];
    assert_eq!(head.series(&either, TimeRange::ALL).len(), 2);
    let profile_type = ProfileType::parse(CPU).unwrap();
    assert_eq!(
        head.label_values("__profile_type__", &[], TimeRange::ALL),
        [profile_type.id()]
    );
}
