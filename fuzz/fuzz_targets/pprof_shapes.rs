//! Structure-aware: valid pprof profiles of extreme shapes (deep stacks,
//! many inlined lines per location, long and shared strings, many label
//! groups, many sample types), built from the fuzzer's input. Each goes
//! through the push pipeline within a request budget, then into a call
//! tree that is merged and drawn (flame graph, DOT): never a panic, never
//! a stack overflow (no recursion on depth), never past the budget.
#![no_main]

use std::sync::Arc;

use flamedb_model::budget::RequestBudget;
use flamedb_model::pprof::{Function, Label, Line, Location, Profile, Sample, ValueType, encode};
use flamedb_model::{Labels, Limits, Tree, prepare_profile, to_dot};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

/// The dimensions of a profile; each is bounded so the encoded profile
/// stays near the 4 MiB size limit and a run takes a fraction of a second
/// (the shapes stay extreme: stacks of thousands of frames, hundreds of
/// inlined lines per location, long shared names, thousands of label
/// groups).
#[derive(Debug, Arbitrary)]
struct Shape {
    functions: u16,
    locations: u16,
    lines_per_location: u16,
    samples: u16,
    depth: u16,
    long_string: u32,
    label_values: u16,
    sample_types: u8,
    seed: u64,
}

fn build(shape: &Shape) -> Profile {
    let functions = u64::from(shape.functions % 500) + 1;
    let locations = u64::from(shape.locations % 500) + 1;
    let lines = usize::from(shape.lines_per_location % 1024) + 1;
    let samples = usize::from(shape.samples % 2000) + 1;
    let depth = usize::from(shape.depth % 4096) + 1;
    let types = usize::from(shape.sample_types % 16) + 1;
    let mut strings = vec![
        String::new(),
        "cpu".to_owned(),
        "nanoseconds".to_owned(),
        "k".to_owned(),
    ];
    strings.push("x".repeat((shape.long_string % (256 << 10)) as usize));
    let long = strings.len() as i64 - 1;
    let first_value = strings.len() as i64;
    let values = i64::from(shape.label_values % 5000);
    strings.extend((0..values).map(|n| format!("v{n}")));
    let mut next = shape.seed | 1;
    let mut random = move |below: u64| {
        next ^= next << 13;
        next ^= next >> 7;
        next ^= next << 17;
        next % below.max(1)
    };
    // About a million lines and as many location references in all.
    let lines = lines.min(1_000_000 / locations as usize).max(1);
    let depth = depth.min(1_000_000 / samples).max(1);
    Profile {
        sample_type: vec![ValueType { r#type: 1, unit: 2 }; types],
        string_table: strings,
        function: (1..=functions)
            .map(|id| Function {
                id,
                name: if id % 2 == 0 { long } else { 1 + (id as i64 % 3) },
                filename: long,
                ..Function::default()
            })
            .collect(),
        location: (1..=locations)
            .map(|id| Location {
                id,
                line: (0..lines)
                    .map(|_| Line {
                        function_id: 1 + random(functions),
                        line: 1,
                        column: 0,
                    })
                    .collect(),
                ..Location::default()
            })
            .collect(),
        sample: (0..samples)
            .map(|_| Sample {
                location_id: (0..1 + random(depth as u64)).map(|_| 1 + random(locations)).collect(),
                value: (0..types).map(|_| random(1000) as i64).collect(),
                label: if values == 0 {
                    vec![]
                } else {
                    vec![Label {
                        key: 3,
                        str: first_value + random(values as u64) as i64,
                        ..Label::default()
                    }]
                },
            })
            .collect(),
        time_nanos: 1_700_000_000_000_000_000,
        ..Profile::default()
    }
}

fuzz_target!(|shape: Shape| {
    let raw = encode(&build(&shape));
    let labels = Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "fuzz")]);
    let limits = Limits {
        reject_older_than: std::time::Duration::ZERO,
        reject_newer_than: std::time::Duration::ZERO,
        max_profile_size_bytes: 0,
        ..Limits::default()
    };
    let budget = RequestBudget::standalone(256 << 20, "-distributor.max-request-memory");
    let Ok(series) = prepare_profile(&raw, &labels, &limits, 1_700_000_000_000_000_000, &budget) else {
        return;
    };
    // The trees of a query, within a query's budget: past it a step is
    // refused, never allocated.
    let query = Arc::new(RequestBudget::for_query(256 << 20, "-querier.max-query-memory-bytes"));
    let mut merged = Tree::within(Arc::clone(&query));
    for part in &series {
        let profile = &part.profile;
        let name = |index: i64| profile.string_table[index as usize].as_str();
        let mut tree = Tree::within(Arc::clone(&query));
        for sample in &profile.sample {
            let mut frames = Vec::new();
            for id in sample.location_id.iter().rev() {
                let location = &profile.location[*id as usize - 1];
                for line in location.line.iter().rev() {
                    frames.push(name(profile.function[line.function_id as usize - 1].name));
                }
            }
            assert!(
                frames.len() <= limits.max_profile_stacktrace_depth,
                "{} frames",
                frames.len()
            );
            if tree.insert(frames.iter().copied(), sample.value[0]).is_err() {
                return;
            }
        }
        if merged.merge(&tree).is_err() {
            return;
        }
    }
    // Tree bytes write every node's name (nodes x up to 64 KiB): charged
    // as they grow, so a crafted shape is refused, not allocated.
    if let Ok(bytes) = merged.encode(0) {
        let decoded = Tree::decode(&bytes).expect("tree bytes read back");
        assert_eq!(decoded.total(), merged.total());
    }
    let Ok(graph) = merged.flame_graph(8192) else {
        return;
    };
    assert_eq!(graph.total, merged.total());
    let _ = to_dot(&merged, 64, "nanoseconds");
});
