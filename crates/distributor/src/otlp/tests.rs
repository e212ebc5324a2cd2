use std::sync::Arc;

use flamedb_api::pb::opentelemetry::proto::common::v1::{AnyValue, InstrumentationScope, any_value};
use flamedb_api::pb::opentelemetry::proto::resource::v1::Resource;
use flamedb_model::Limits;
use proptest::prelude::*;

use super::*;

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

fn text(value: &str) -> any_value::Value {
    any_value::Value::StringValue(value.to_owned())
}

/// Strings: 0 "", 1 "samples", 2 "count", 3 "cpu", 4 "nanoseconds",
/// 5 "main", 6 "work", 7 "thread.name", 8 "t1", 9 "service.name",
/// 10 "other", 11 "off_cpu", 12 "app", 13 "build", 14 "space",
/// 15 "bytes", 16 "alloc".
/// Functions 1 main, 2 work; locations 1 → main, 2 → work (in mapping
/// 1); stacks 1 [main], 2 [work, main]; attributes 1 thread.name=t1,
/// 2 service.name=other, 3 the mapping's GNU build ID.
fn dictionary() -> otlp::ProfilesDictionary {
    let strings = [
        "",
        "samples",
        "count",
        "cpu",
        "nanoseconds",
        "main",
        "work",
        "thread.name",
        "t1",
        "service.name",
        "other",
        "off_cpu",
        "app",
        "process.executable.build_id.gnu",
        "space",
        "bytes",
        "alloc",
    ];
    let line = |function_index| otlp::Line {
        function_index,
        line: 7,
        column: 0,
    };
    otlp::ProfilesDictionary {
        mapping_table: vec![
            otlp::Mapping::default(),
            otlp::Mapping {
                memory_start: 0x1000,
                memory_limit: 0x2000,
                filename_strindex: 12,
                attribute_indices: vec![3],
                ..otlp::Mapping::default()
            },
        ],
        location_table: vec![
            otlp::Location::default(),
            otlp::Location {
                mapping_index: 1,
                address: 0x1010,
                lines: vec![line(1)],
                attribute_indices: vec![],
            },
            otlp::Location {
                mapping_index: 1,
                address: 0x1020,
                lines: vec![line(2)],
                attribute_indices: vec![],
            },
        ],
        function_table: vec![
            otlp::Function::default(),
            otlp::Function {
                name_strindex: 5,
                ..otlp::Function::default()
            },
            otlp::Function {
                name_strindex: 6,
                ..otlp::Function::default()
            },
        ],
        link_table: vec![otlp::Link::default()],
        string_table: strings.map(String::from).to_vec(),
        attribute_table: vec![
            otlp::KeyValueAndUnit::default(),
            otlp::KeyValueAndUnit {
                key_strindex: 7,
                value: Some(AnyValue {
                    value: Some(text("t1")),
                }),
                unit_strindex: 0,
            },
            otlp::KeyValueAndUnit {
                key_strindex: 9,
                value: Some(AnyValue {
                    value: Some(text("other")),
                }),
                unit_strindex: 0,
            },
            otlp::KeyValueAndUnit {
                key_strindex: 13,
                value: Some(AnyValue {
                    value: Some(text("abc123")),
                }),
                unit_strindex: 0,
            },
        ],
        stack_table: vec![
            otlp::Stack::default(),
            otlp::Stack {
                location_indices: vec![1],
            },
            otlp::Stack {
                location_indices: vec![2, 1],
            },
        ],
    }
}

fn value_type(type_strindex: i32, unit_strindex: i32) -> Option<otlp::ValueType> {
    Some(otlp::ValueType {
        type_strindex,
        unit_strindex,
    })
}

fn sample(stack_index: i32, values: Vec<i64>, timestamps: usize, attribute_indices: Vec<i32>) -> otlp::Sample {
    otlp::Sample {
        stack_index,
        attribute_indices,
        link_index: 0,
        values,
        timestamps_unix_nano: vec![1; timestamps],
    }
}

/// A CPU profile (counts periodic on CPU nanoseconds, every 10 ms).
fn cpu_profile(samples: Vec<otlp::Sample>) -> otlp::Profile {
    otlp::Profile {
        sample_type: value_type(1, 2),
        samples,
        time_unix_nano: 1_700_000_000_000_000_000,
        duration_nano: 0,
        period_type: value_type(3, 4),
        period: 10_000_000,
    }
}

fn request(resource: Vec<KeyValue>, profiles: Vec<otlp::Profile>) -> ExportProfilesServiceRequest {
    ExportProfilesServiceRequest {
        resource_profiles: vec![otlp::ResourceProfiles {
            resource: Some(Resource { attributes: resource }),
            scope_profiles: vec![otlp::ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "profiler".to_owned(),
                    version: String::new(),
                    attributes: vec![attribute("host.name", text("scope-host"))],
                }),
                profiles,
            }],
        }],
        dictionary: Some(dictionary()),
    }
}

fn convert(request: &ExportProfilesServiceRequest) -> PushBatch {
    let mut batch = PushBatch::new(Arc::new(Limits::default()), Arc::new(RequestBudget::unlimited()));
    add_export(&mut batch, request).unwrap();
    batch
}

/// Limits with a body limit of `bytes`.
/// A batch whose request may take `bytes`.
fn batch_within(bytes: usize) -> PushBatch {
    PushBatch::new(
        Arc::new(Limits::default()),
        Arc::new(RequestBudget::standalone(bytes, "-distributor.max-request-memory")),
    )
}

fn names(profile: &Profile, sample: &Sample) -> Vec<String> {
    sample
        .location_id
        .iter()
        .map(|&id| {
            let location = &profile.location[usize::try_from(id - 1).unwrap()];
            let function = &profile.function[usize::try_from(location.line[0].function_id - 1).unwrap()];
            pprof::string_at(profile, function.name).to_owned()
        })
        .collect()
}

#[test]
fn test_cpu_counts_become_nanoseconds_under_the_resource_labels() {
    let request = request(
        vec![
            attribute("process.pid", any_value::Value::IntValue(42)),
            attribute("process.executable.name", text("nginx")),
            attribute("host.name", text("resource-host")),
            attribute("ratio", any_value::Value::DoubleValue(0.5)),
        ],
        vec![cpu_profile(vec![
            sample(2, vec![], 3, vec![1]),
            sample(1, vec![2, 5], 2, vec![]),
        ])],
    );
    let batch = convert(&request);
    assert!(batch.rejections.is_empty(), "{:?}", batch.rejections);
    let [received] = batch.profiles.as_slice() else {
        panic!("{:?}", batch.profiles);
    };
    let labels: Vec<(&str, &str)> = received
        .labels
        .iter()
        .map(|label| (label.name.as_str(), label.value.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("__delta__", "false"),
            ("__name__", "process_cpu"),
            ("__otel__", "true"),
            // The resource's wins over the scope's.
            ("host.name", "resource-host"),
            ("process.executable.name", "nginx"),
            ("process.pid", "42"),
            ("service_name", "unknown_service:nginx"),
        ]
    );
    let profile = &received.profile;
    assert_eq!(pprof::string_at(profile, profile.sample_type[0].r#type), "cpu");
    assert_eq!(pprof::string_at(profile, profile.sample_type[0].unit), "nanoseconds");
    assert_eq!(profile.period, 10_000_000);
    assert_eq!(profile.time_nanos, 1_700_000_000_000_000_000);
    assert_eq!(profile.duration_nanos, DEFAULT_DURATION_NANOS);
    // Three timestamps without values count 3; values 2 + 5 count 7.
    let samples: Vec<(Vec<String>, i64)> = profile
        .sample
        .iter()
        .map(|sample| (names(profile, sample), sample.value[0]))
        .collect();
    assert_eq!(
        samples,
        [
            (vec!["work".to_owned(), "main".to_owned()], 30_000_000),
            (vec!["main".to_owned()], 70_000_000),
        ]
    );
    // Thread names stay sample labels.
    let label = &profile.sample[0].label[0];
    assert_eq!(
        (
            pprof::string_at(profile, label.key),
            pprof::string_at(profile, label.str)
        ),
        ("thread.name", "t1")
    );
    assert!(profile.sample[1].label.is_empty());
    // One location per dictionary location, with its mapping.
    assert_eq!(profile.location.len(), 2);
    assert_eq!(profile.mapping.len(), 1);
    assert_eq!(pprof::string_at(profile, profile.mapping[0].filename), "app");
    assert_eq!(pprof::string_at(profile, profile.mapping[0].build_id), "abc123");
    assert_eq!(profile.location[0].address, 0x1020);
}

#[test]
fn test_a_sample_service_name_moves_the_sample_to_that_service() {
    let request = request(
        vec![attribute("service.name", text("api"))],
        vec![cpu_profile(vec![
            sample(1, vec![1], 0, vec![]),
            sample(2, vec![1], 0, vec![2]),
        ])],
    );
    let batch = convert(&request);
    let services: Vec<(&str, usize)> = batch
        .profiles
        .iter()
        .map(|received| {
            (
                received.labels.get("service_name").unwrap(),
                received.profile.sample.len(),
            )
        })
        .collect();
    assert_eq!(services, [("api", 1), ("other", 1)]);
}

#[test]
fn test_metric_names_follow_the_sample_and_period_types() {
    let of = |sample_type, period_type| Kind::of(sample_type, period_type, 0).metric;
    assert_eq!(of(("samples", "count"), ("cpu", "nanoseconds")), "process_cpu");
    assert_eq!(of(("off_cpu", "nanoseconds"), ("", "")), "off_cpu");
    assert_eq!(of(("alloc", "bytes"), ("space", "bytes")), "space");
    assert_eq!(of(("samples", "count"), ("", "")), "process_cpu");
    // Counts periodic on anything else stay counts.
    let kind = Kind::of(("samples", "count"), ("wall", "nanoseconds"), 5);
    assert_eq!(
        (kind.metric, kind.sample_type, kind.multiplier),
        ("wall", ("samples", "count"), 1)
    );

    let off_cpu = otlp::Profile {
        sample_type: value_type(11, 4),
        period_type: None,
        ..cpu_profile(vec![sample(1, vec![5, 6], 2, vec![])])
    };
    let batch = convert(&request(vec![], vec![off_cpu]));
    let received = &batch.profiles[0];
    assert_eq!(received.labels.get("__name__"), Some("off_cpu"));
    assert_eq!(received.labels.get("service_name"), Some("unknown_service"));
    assert_eq!(received.profile.sample[0].value, [11]);
    assert_eq!(received.profile.period_type, None);
}

#[test]
fn test_a_bad_index_refuses_its_profile_and_keeps_the_others() {
    let bad_stack = cpu_profile(vec![sample(9, vec![1], 0, vec![])]);
    let bad_attribute = cpu_profile(vec![sample(1, vec![1], 0, vec![-1])]);
    let good = cpu_profile(vec![sample(1, vec![1], 0, vec![])]);
    let mut request = request(vec![], vec![bad_stack, good, bad_attribute]);
    let batch = convert(&request);
    assert_eq!(batch.profiles.len(), 1);
    let messages: Vec<&str> = batch.rejections.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages.len(), 2);
    assert!(
        messages[0].contains("OTLP profile 0 of scope 0 of resource 0"),
        "{}",
        messages[0]
    );
    assert!(messages[0].contains("stack index 9 is outside"), "{}", messages[0]);
    assert!(messages[1].contains("attribute index -1"), "{}", messages[1]);

    // A location pointing past the function table.
    let dictionary = request.dictionary.as_mut().unwrap();
    dictionary.location_table[1].lines[0].function_index = 99;
    let batch = convert(&request);
    assert!(batch.rejections[1].message.contains("function index 99"));
}

#[test]
fn test_what_the_copies_take_is_bounded_by_the_request_budget() {
    // One stack of 1000 frames, referenced by 100 samples: 800 kB of
    // location references from a request of a few kB.
    let mut dictionary = dictionary();
    dictionary.stack_table[1].location_indices = vec![1; 1000];
    let samples = (0..100).map(|_| sample(1, vec![1], 0, vec![])).collect();
    let mut request = request(vec![], vec![cpu_profile(samples)]);
    request.dictionary = Some(dictionary);
    let mut batch = batch_within(100_000);
    let err = add_export(&mut batch, &request).unwrap_err();
    assert!(
        matches!(
            err,
            BatchError::Budget(BudgetError::RequestTooLarge { limit: 100_000, .. })
        ),
        "{err}"
    );
    let mut batch = batch_within(2_000_000);
    add_export(&mut batch, &request).unwrap();
    assert_eq!(batch.profiles[0].profile.sample.len(), 100);
}

#[test]
fn test_resources_with_more_attributes_than_labels_allowed_are_refused() {
    let attributes = (0..40)
        .map(|i| attribute(&format!("attribute.{i}"), text("x")))
        .collect();
    let request = request(attributes, vec![cpu_profile(vec![sample(1, vec![1], 0, vec![])])]);
    let batch = convert(&request);
    assert!(batch.profiles.is_empty());
    assert!(
        batch.rejections[0]
            .message
            .contains("more attributes than max_label_names_per_series"),
        "{:?}",
        batch.rejections
    );
}

#[test]
fn test_an_empty_sample_service_name_keeps_the_resource_service() {
    let mut request = request(
        vec![attribute("service.name", text("api"))],
        vec![cpu_profile(vec![sample(1, vec![1], 0, vec![2])])],
    );
    let dictionary = request.dictionary.as_mut().unwrap();
    dictionary.attribute_table[2].value = Some(AnyValue { value: Some(text("")) });
    let batch = convert(&request);
    assert_eq!(batch.profiles[0].labels.get("service_name"), Some("api"));
}

/// The field numbers, from hand-written wire bytes: what the eBPF
/// profiler sends.
#[test]
fn test_field_numbers_are_opentelemetrys() {
    use prost::Message;
    // Sample: stack_index 1 = 3, attribute_indices 2 = [4, 5],
    // link_index 3 = 6, values 4 = [7], timestamps 5 = [9] (fixed64).
    let sample = [
        0x08, 3, 0x12, 2, 4, 5, 0x18, 6, 0x22, 1, 7, 0x2a, 8, 9, 0, 0, 0, 0, 0, 0, 0,
    ];
    // Profile: sample_type 1 = {1, 2}, samples 2, time 3 (fixed64) = 1,
    // duration 4 = 10, period_type 5 = {3, 4}, period 6 = 50.
    let mut profile = vec![0x0a, 4, 0x08, 1, 0x10, 2, 0x12, sample.len() as u8];
    profile.extend_from_slice(&sample);
    profile.extend_from_slice(&[
        0x19, 1, 0, 0, 0, 0, 0, 0, 0, 0x20, 10, 0x2a, 4, 0x08, 3, 0x10, 4, 0x30, 50,
    ]);
    // Fields 7 to 11, not read: profile_id, dropped_attributes_count,
    // original_payload_format, original_payload, attribute_indices.
    profile.extend_from_slice(&[0x3a, 2, 0xab, 0xcd, 0x40, 3, 0x4a, 1, b'p', 0x52, 1, 0, 0x5a, 1, 1]);
    let decoded = otlp::Profile::decode(profile.as_slice()).unwrap();
    assert_eq!(decoded.sample_type, value_type(1, 2));
    assert_eq!(decoded.period_type, value_type(3, 4));
    assert_eq!(
        (decoded.time_unix_nano, decoded.duration_nano, decoded.period),
        (1, 10, 50)
    );
    let decoded = &decoded.samples[0];
    assert_eq!(decoded.stack_index, 3);
    assert_eq!(decoded.attribute_indices, [4, 5]);
    assert_eq!(decoded.link_index, 6);
    assert_eq!(decoded.values, [7]);
    assert_eq!(decoded.timestamps_unix_nano, [9]);
    // Dictionary: stack_table 7 = [{location_indices 1 = [1, 2]}],
    // string_table 5 = ["", "a"].
    let dictionary = [0x2a, 0, 0x2a, 1, b'a', 0x3a, 4, 0x0a, 2, 1, 2];
    let decoded = otlp::ProfilesDictionary::decode(dictionary.as_slice()).unwrap();
    assert_eq!(decoded.string_table, ["", "a"]);
    assert_eq!(decoded.stack_table[0].location_indices, [1, 2]);
}

#[test]
fn test_the_service_may_be_named_by_reference() {
    let by_reference = KeyValue {
        key: String::new(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValueStrindex(10)),
        }),
        key_strindex: 9,
    };
    let batch = convert(&request(
        vec![by_reference],
        vec![cpu_profile(vec![sample(1, vec![1], 0, vec![])])],
    ));
    assert_eq!(batch.profiles[0].labels.get("service_name"), Some("other"));
    assert_eq!(batch.profiles[0].labels.get("service.name"), Some("other"));
    // A reference past the table refuses the scope's profiles.
    let dangling = KeyValue {
        key: String::new(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue("x".to_owned())),
        }),
        key_strindex: 99,
    };
    let batch = convert(&request(
        vec![dangling],
        vec![cpu_profile(vec![sample(1, vec![1], 0, vec![])])],
    ));
    assert!(batch.profiles.is_empty());
    assert!(
        batch.rejections[0].message.contains("string index 99"),
        "{:?}",
        batch.rejections
    );
}

#[test]
fn test_integer_sample_attributes_and_links_become_sample_labels() {
    let mut request = request(
        vec![],
        vec![cpu_profile(vec![otlp::Sample {
            link_index: 1,
            ..sample(1, vec![1], 0, vec![4])
        }])],
    );
    let dictionary = request.dictionary.as_mut().unwrap();
    // Attribute 4: thread.name (string 7) = 42.
    dictionary.attribute_table.push(otlp::KeyValueAndUnit {
        key_strindex: 7,
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(42)),
        }),
        unit_strindex: 0,
    });
    dictionary.link_table.push(otlp::Link {
        trace_id: vec![0xee; 16],
        span_id: vec![0xab; 8],
    });
    let batch = convert(&request);
    assert!(batch.rejections.is_empty(), "{:?}", batch.rejections);
    let profile = &batch.profiles[0].profile;
    let labels: Vec<(&str, &str)> = profile.sample[0]
        .label
        .iter()
        .map(|label| {
            (
                pprof::string_at(profile, label.key),
                pprof::string_at(profile, label.str),
            )
        })
        .collect();
    assert_eq!(
        labels,
        [
            ("thread.name", "42"),
            ("span_id", "abababababababab"),
            ("trace_id", "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"),
        ]
    );
}

#[test]
fn test_samples_with_nothing_to_count_refuse_their_profile_naming_the_older_layout() {
    let batch = convert(&request(vec![], vec![cpu_profile(vec![sample(1, vec![], 0, vec![])])]));
    let message = &batch.rejections[0].message;
    assert!(
        message.contains("sample 0 has neither values nor timestamps"),
        "{message}"
    );
    assert!(!message.contains("v1.9"), "{message}");
    // With attributes: v1.9's values, read as v1.10's attribute indices.
    let batch = convert(&request(vec![], vec![cpu_profile(vec![sample(1, vec![], 0, vec![1])])]));
    assert!(
        batch.rejections[0].message.contains("v1.9 or older"),
        "{:?}",
        batch.rejections
    );
    let batch = convert(&request(
        vec![],
        vec![cpu_profile(vec![sample(1, vec![], 1, vec![1_000_000])])],
    ));
    let message = &batch.rejections[0].message;
    assert!(message.contains("sample attribute index 1000000"), "{message}");
    assert!(message.contains("v1.9 or older"), "{message}");
}

#[test]
fn test_the_development_version_header_must_name_the_layout_read() {
    let headers = |version: Option<&str>| {
        let mut headers = HeaderMap::new();
        if let Some(version) = version {
            headers.insert(VERSION_HEADER, version.parse().unwrap());
        }
        headers
    };
    assert!(check_version(&headers(None)).is_ok());
    assert!(check_version(&headers(Some("1"))).is_ok());
    for other in ["2", "99", "0", "v1"] {
        let err = check_version(&headers(Some(other))).unwrap_err();
        assert_eq!(err.code, flamedb_api::ErrorCode::InvalidArgument);
        assert!(err.message.contains("opentelemetry-proto v1.10"), "{}", err.message);
    }
}

#[test]
fn test_the_v1_9_layout_is_named_when_it_cannot_be_decoded() {
    use prost::Message;
    // v1.9's sample: values 2 = [3] and attribute_indices 3 = [1], packed.
    let sample = [0x08, 1, 0x12, 1, 3, 0x1a, 1, 1];
    let mut profile = vec![0x12, sample.len() as u8];
    profile.extend_from_slice(&sample);
    let err = otlp::Profile::decode(profile.as_slice()).unwrap_err().to_string();
    let explained = explain_decode_error(&err).unwrap();
    assert!(explained.starts_with(&err), "{explained}");
    assert!(explained.contains("v1.9 or older"), "{explained}");
    assert_eq!(explain_decode_error("unexpected end of input"), None);
}

fn any_sample() -> impl Strategy<Value = otlp::Sample> {
    (
        -1i32..6,
        proptest::collection::vec(-1i32..6, 0..3),
        proptest::collection::vec(any::<i64>(), 0..3),
        0usize..3,
    )
        .prop_map(|(stack, attributes, values, timestamps)| sample(stack, values, timestamps, attributes))
}

proptest! {
    /// Whatever the indexes and values, each profile converts or is
    /// refused (or the request is, over the body limit), and the
    /// location references stay within the limit.
    #[test]
    fn prop_any_profile_converts_or_is_refused(
        profiles in proptest::collection::vec(
            (proptest::collection::vec(any_sample(), 0..8), -1i32..20, -1i32..20, any::<i64>()),
            0..4,
        ),
        limit in 0usize..4096,
    ) {
        let profiles: Vec<otlp::Profile> = profiles
            .into_iter()
            .map(|(samples, sample_type, period_type, period)| otlp::Profile {
                sample_type: value_type(sample_type, 2),
                period_type: value_type(period_type, 4),
                period,
                ..cpu_profile(samples)
            })
            .collect();
        let count = profiles.len();
        let request = request(vec![], profiles);
        let mut batch = batch_within(limit.max(1));
        if add_export(&mut batch, &request).is_err() {
            return Ok(());
        }
        let references: usize = batch
            .profiles
            .iter()
            .flat_map(|received| &received.profile.sample)
            .map(|sample| sample.location_id.len())
            .sum();
        prop_assert!(references * cost::LOCATION_REFERENCE <= limit);
        prop_assert!(batch.rejections.len() <= count);
    }
}
