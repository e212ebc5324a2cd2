//! The decode-cost scan is an upper bound of what prost and pbjson really
//! allocate: measured with a counting allocator on random profiles and on
//! hostile shapes (empty repeated elements, long packed lists, many lines,
//! one line per location).
//!
//! Invariants: for any encoded profile, the scan's figure is at least the
//! heap the decoded profile holds, and the peak while decoding (buffers
//! being grown and copied) is at most twice the figure.

#![allow(clippy::unwrap_used)]

use flamedb_model::pprof::{self, Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use flamedb_testkit::counting::{Counting, measure};
use proptest::prelude::*;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Checks the scan against a real decode of `bytes`.
fn check_proto(bytes: &[u8]) -> Result<(), TestCaseError> {
    let estimate = pprof::decoded_size(bytes);
    let (decoded, live, peak) = measure(|| pprof::decode_plain(bytes));
    prop_assert!(decoded.is_ok());
    prop_assert!(live <= estimate, "holds {live} bytes, scan says {estimate}");
    prop_assert!(peak <= 2 * estimate + 64, "peaks at {peak} bytes, scan says {estimate}");
    drop(decoded);
    Ok(())
}

fn check_json(profile: &Profile) -> Result<(), TestCaseError> {
    let json = serde_json::to_vec(profile).unwrap();
    let shapes = pprof::message_shapes().unwrap();
    let estimate = shapes.json_size("google.v1.Profile", &json).unwrap();
    let (decoded, live, _) = measure(|| serde_json::from_slice::<Profile>(&json));
    prop_assert_eq!(decoded.as_ref().ok(), Some(profile));
    prop_assert!(live <= estimate, "JSON holds {live} bytes, scan says {estimate}");
    drop(decoded);
    Ok(())
}

fn arb_profile() -> impl Strategy<Value = Profile> {
    let string = prop::string::string_regex("[a-z/._]{0,40}").unwrap();
    let line = (0u64..20, any::<i64>(), any::<i64>()).prop_map(|(function_id, line, column)| Line {
        function_id,
        line,
        column,
    });
    let location = (
        0u64..50,
        0u64..5,
        any::<u64>(),
        prop::collection::vec(line, 0..6),
        any::<bool>(),
    )
        .prop_map(|(id, mapping_id, address, line, is_folded)| Location {
            id,
            mapping_id,
            address,
            line,
            is_folded,
        });
    let label = (0i64..10, 0i64..10, any::<i64>(), 0i64..10).prop_map(|(key, str, num, num_unit)| Label {
        key,
        str,
        num,
        num_unit,
    });
    let sample = (
        prop::collection::vec(0u64..100_000, 0..20),
        prop::collection::vec(any::<i64>(), 0..4),
        prop::collection::vec(label, 0..3),
    )
        .prop_map(|(location_id, value, label)| Sample {
            location_id,
            value,
            label,
        });
    let function = (0u64..50, 0i64..10, 0i64..10).prop_map(|(id, name, filename)| Function {
        id,
        name,
        filename,
        ..Function::default()
    });
    (
        prop::collection::vec(string, 0..30),
        prop::collection::vec(sample, 0..40),
        prop::collection::vec(location, 0..40),
        prop::collection::vec(function, 0..20),
        prop::collection::vec((0i64..5, 0i64..5), 0..3),
        prop::collection::vec(0i64..10, 0..3),
    )
        .prop_map(|(string_table, sample, location, function, types, comment)| Profile {
            sample_type: types
                .into_iter()
                .map(|(r#type, unit)| ValueType { r#type, unit })
                .collect(),
            sample,
            mapping: vec![Mapping {
                id: 1,
                has_functions: true,
                ..Mapping::default()
            }],
            location,
            function,
            string_table,
            comment,
            period_type: Some(ValueType { r#type: 1, unit: 2 }),
            time_nanos: 1,
            ..Profile::default()
        })
}

proptest! {
    #[test]
    fn test_scan_bounds_what_random_profiles_decode_into(profile in arb_profile()) {
        check_proto(&pprof::encode(&profile))?;
        check_json(&profile)?;
    }
}

/// `count` copies of the field `field` with an empty value, as raw bytes.
fn repeated_empty(field: u8, count: usize) -> Vec<u8> {
    [field << 3 | 2, 0].repeat(count)
}

#[test]
fn test_scan_bounds_hostile_shapes() {
    // Empty samples, locations, functions, strings: 2 bytes each.
    for field in [2u8, 4, 5, 6] {
        check_proto(&repeated_empty(field, 100_000)).unwrap();
    }
    // One location with 200,000 lines of one function each.
    let deep = Profile {
        location: vec![Location {
            id: 1,
            line: vec![
                Line {
                    function_id: 1,
                    ..Line::default()
                };
                200_000
            ],
            ..Location::default()
        }],
        ..Profile::default()
    };
    check_proto(&pprof::encode(&deep)).unwrap();
    check_json(&deep).unwrap();
    // 50,000 locations of one line each (vectors at their minimum
    // capacity, four times their length).
    let wide = Profile {
        location: (1..=50_000)
            .map(|id| Location {
                id,
                line: vec![Line::default()],
                ..Location::default()
            })
            .collect(),
        ..Profile::default()
    };
    check_proto(&pprof::encode(&wide)).unwrap();
    check_json(&wide).unwrap();
    // A long packed list of location ids.
    let long = Profile {
        sample: vec![Sample {
            location_id: (0..300_000).collect(),
            ..Sample::default()
        }],
        ..Profile::default()
    };
    check_proto(&pprof::encode(&long)).unwrap();
}

#[test]
fn test_struct_sizes_bound_the_real_ones() {
    let shapes = pprof::message_shapes().unwrap();
    let cases = [
        ("google.v1.Profile", size_of::<Profile>()),
        ("google.v1.Sample", size_of::<Sample>()),
        ("google.v1.Label", size_of::<Label>()),
        ("google.v1.Location", size_of::<Location>()),
        ("google.v1.Line", size_of::<Line>()),
        ("google.v1.Function", size_of::<Function>()),
        ("google.v1.Mapping", size_of::<Mapping>()),
        ("google.v1.ValueType", size_of::<ValueType>()),
    ];
    for (name, real) in cases {
        let scanned = shapes.struct_size(name).unwrap();
        assert!(scanned >= real, "{name}: {scanned} < {real}");
        assert!(scanned <= real + 32, "{name}: {scanned} is far above {real}");
    }
}

#[test]
fn test_malformed_bytes_count_up_to_where_they_break() {
    let mut bytes = repeated_empty(2, 1000);
    bytes.extend_from_slice(&[0x12, 0x05, 0x01]);
    let estimate = pprof::decoded_size(&bytes);
    assert!(estimate >= 1000 * size_of::<Sample>(), "{estimate}");
    assert!(pprof::decode_plain(&bytes).is_err());
}
