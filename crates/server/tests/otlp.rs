//! OTLP profiles as current senders write them, through the real binary
//! over OTLP/HTTP (protobuf and JSON) and gRPC: attributes by string-table
//! reference, integer and one-element-array attributes, links to spans,
//! the development-version header, and the v1.9 layout refused with a
//! message that says so. (The eBPF profiler's own export is tested in
//! `distributor.rs`, from `../shared/testdata`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flamedb_api::pb::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use flamedb_api::pb::opentelemetry::proto::collector::profiles::v1development::profiles_service_client::ProfilesServiceClient;
use flamedb_api::pb::opentelemetry::proto::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use flamedb_api::pb::opentelemetry::proto::profiles::v1development as otlp;
use flamedb_api::pb::opentelemetry::proto::resource::v1::Resource;
use flamedb_testkit::{Flamedb, start_ready};
use prost::Message;

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const HTTP_PATH: &str = "/v1development/profiles";
const TRACE_ID: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
const SPAN_ID: [u8; 8] = [0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8];
const SPAN_HEX: &str = "a1a2a3a4a5a6a7a8";

fn value(value: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

/// One CPU profile of service `checkout` (named by reference, key and
/// value) with two samples of stack main;work: 3 counts on thread 7, CPU
/// 1 (an integer and a one-element array), linked to a span, and 2 counts
/// on thread 7 alone. Every 10 ms, so 30 ms and 20 ms.
fn request(time_nanos: u64) -> ExportProfilesServiceRequest {
    let strings = [
        "",
        "samples",
        "count",
        "cpu",
        "nanoseconds",
        "main",
        "work",
        "service.name",
        "checkout",
        "thread.id",
        "cpu.logical_number",
    ];
    let function = |name_strindex| otlp::Function {
        name_strindex,
        ..Default::default()
    };
    let location = |function_index| otlp::Location {
        lines: vec![otlp::Line {
            function_index,
            ..Default::default()
        }],
        ..Default::default()
    };
    let attribute = |key_strindex, value: Option<AnyValue>| otlp::KeyValueAndUnit {
        key_strindex,
        value,
        unit_strindex: 0,
    };
    let dictionary = otlp::ProfilesDictionary {
        function_table: vec![otlp::Function::default(), function(5), function(6)],
        location_table: vec![otlp::Location::default(), location(1), location(2)],
        stack_table: vec![
            otlp::Stack::default(),
            otlp::Stack {
                location_indices: vec![2, 1],
            },
        ],
        string_table: strings.map(String::from).to_vec(),
        attribute_table: vec![
            otlp::KeyValueAndUnit::default(),
            attribute(9, value(any_value::Value::IntValue(7))),
            attribute(
                10,
                value(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::IntValue(1)),
                    }],
                })),
            ),
        ],
        link_table: vec![
            otlp::Link::default(),
            otlp::Link {
                trace_id: TRACE_ID.to_vec(),
                span_id: SPAN_ID.to_vec(),
            },
        ],
        ..Default::default()
    };
    let sample = |attribute_indices: Vec<i32>, link_index, count| otlp::Sample {
        stack_index: 1,
        attribute_indices,
        link_index,
        values: vec![count],
        timestamps_unix_nano: Vec::new(),
    };
    let value_type = |type_strindex, unit_strindex| {
        Some(otlp::ValueType {
            type_strindex,
            unit_strindex,
        })
    };
    ExportProfilesServiceRequest {
        resource_profiles: vec![otlp::ResourceProfiles {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: String::new(),
                    value: value(any_value::Value::StringValueStrindex(8)),
                    key_strindex: 7,
                }],
            }),
            scope_profiles: vec![otlp::ScopeProfiles {
                scope: None,
                profiles: vec![otlp::Profile {
                    sample_type: value_type(1, 2),
                    samples: vec![sample(vec![1, 2], 1, 3), sample(vec![1], 0, 2)],
                    time_unix_nano: time_nanos,
                    duration_nano: 0,
                    period_type: value_type(3, 4),
                    period: 10_000_000,
                }],
            }],
        }],
        dictionary: Some(dictionary),
    }
}

/// `request` as OTLP/JSON writes it: trace and span IDs in hex.
fn json_request(time_nanos: u64) -> Vec<u8> {
    let mut json = serde_json::to_value(request(time_nanos)).unwrap();
    let link = &mut json["dictionary"]["linkTable"][1];
    link["traceId"] = serde_json::Value::String(TRACE_ID.iter().map(|byte| format!("{byte:02x}")).collect());
    link["spanId"] = serde_json::Value::String(SPAN_HEX.to_owned());
    serde_json::to_vec(&json).unwrap()
}

/// The total of a Connect JSON query's flame graph.
fn total(node: &Flamedb, method: &str, query: serde_json::Value) -> i64 {
    let (status, body) = node
        .post(
            &format!("/querier.v1.QuerierService/{method}"),
            &[("content-type", "application/json")],
            serde_json::to_vec(&query).unwrap(),
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    answer["flamegraph"]["total"].as_str().map_or_else(
        || answer["flamegraph"]["total"].as_i64().unwrap_or(0),
        |total| total.parse().unwrap(),
    )
}

fn post(node: &Flamedb, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
    let (status, body) = node.post(HTTP_PATH, headers, body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn test_otlp_attributes_by_reference_integers_and_links_over_http_json_and_grpc() {
    let node = start_ready(BINARY, "single", &[], &[]);
    let now = u64::try_from(flamedb_model::now_nanos()).unwrap();
    let (start, end) = (now / 1_000_000 - 60_000, now / 1_000_000 + 60_000);
    let flame_graph = |selector: &str| {
        total(
            &node,
            "SelectMergeStacktraces",
            serde_json::json!({"profileTypeID": CPU, "labelSelector": selector, "start": start, "end": end}),
        )
    };
    let span = || {
        total(
            &node,
            "SelectMergeSpanProfile",
            serde_json::json!({
                "profileTypeID": CPU, "labelSelector": r#"{service_name="checkout"}"#,
                "spanSelector": [SPAN_HEX], "start": start, "end": end,
            }),
        )
    };
    let check = |pushes: i64| {
        // The service by reference; integer attributes split the series.
        assert_eq!(flame_graph(r#"{service_name="checkout"}"#), pushes * 50_000_000);
        assert_eq!(
            flame_graph(r#"{service_name="checkout","thread.id"="7","cpu.logical_number"="1"}"#),
            pushes * 30_000_000
        );
        assert_eq!(
            flame_graph(r#"{service_name="checkout","cpu.logical_number"=""}"#),
            pushes * 20_000_000
        );
        // The linked sample is the span's.
        assert_eq!(span(), pushes * 30_000_000);
    };

    let (status, body) = post(
        &node,
        &[("content-type", "application/x-protobuf")],
        request(now).encode_to_vec(),
    );
    assert_eq!(status, 200, "{body}");
    check(1);

    let (status, body) = post(
        &node,
        &[
            ("content-type", "application/json"),
            ("otlp-profiles-development-version", "1"),
        ],
        json_request(now + 1),
    );
    assert_eq!(status, 200, "{body}");
    check(2);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = ProfilesServiceClient::connect(format!("http://{}", node.http))
            .await
            .unwrap();
        client.export(request(now + 2)).await.unwrap();
        // Another layout's version: refused before anything is read.
        let mut refused = tonic::Request::new(request(now + 3));
        refused
            .metadata_mut()
            .insert("otlp-profiles-development-version", "2".parse().unwrap());
        let status = client.export(refused).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("development version \"2\""), "{status:?}");
    });
    check(3);

    let (status, body) = post(
        &node,
        &[
            ("content-type", "application/x-protobuf"),
            ("otlp-profiles-development-version", "99"),
        ],
        request(now + 4).encode_to_vec(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("only 1 (the layout of opentelemetry-proto v1.10"),
        "{body}"
    );
    // Checked before the body is read: what follows is not even protobuf.
    let (status, body) = post(
        &node,
        &[
            ("content-type", "application/x-protobuf"),
            ("otlp-profiles-development-version", "99"),
        ],
        b"\xff\xff not protobuf".to_vec(),
    );
    assert_eq!(status, 400, "{body}");
    let message = serde_json::from_str::<serde_json::Value>(&body).unwrap()["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .starts_with("OTLP profiles development version \"99\" is not supported"),
        "{body}"
    );
    check(3);
}

/// A length-delimited field of one byte's length.
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![number << 3 | 2, u8::try_from(bytes.len()).unwrap()];
    out.extend_from_slice(bytes);
    out
}

#[test]
fn test_otlp_of_the_v1_9_layout_is_refused_naming_what_works() {
    let node = start_ready(BINARY, "single", &[], &[]);
    // A v1.9 sample: stack_index 1 = 1, values 2 = [3] and
    // attribute_indices 3 = [1], both packed.
    let sample = [0x08, 1, 0x12, 1, 3, 0x1a, 1, 1];
    let profile = field(2, &sample);
    let scope = field(2, &profile);
    let resource = field(2, &scope);
    let mut request = field(1, &resource);
    request.extend(field(2, &field(5, b"")));
    let (status, body) = post(&node, &[("content-type", "application/x-protobuf")], request);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Sample.link_index"), "{body}");
    assert!(body.contains("opentelemetry-proto v1.9 or older"), "{body}");
    assert!(body.contains("eBPF profiler sends since March 2026"), "{body}");
}
