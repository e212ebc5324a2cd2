//! The distributor in the real binary: the real profiles of
//! `../shared/testdata/pprof` through every ingest API, folded stacks
//! through `/ingest`, the real Python agent (`pyroscope-io`), per-tenant
//! rate limits with runtime overrides, and a gossip cluster of three
//! ingesters and two distributors writing with RF=3 while ingesters die.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use flamedb_api::pb::ingester::v1 as ingester;
use flamedb_api::pb::opentelemetry::proto::collector::profiles::v1development::profiles_service_client::ProfilesServiceClient;
use flamedb_api::pb::opentelemetry::proto::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use flamedb_api::pb::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::types::v1::LabelPair;
use flamedb_model::gzip::gzip;
use flamedb_model::pprof::{Profile, StackProfileBuilder};
use flamedb_model::{ProfileId, Tree};
use flamedb_testkit::{Flamedb, cluster_flags, start_ingesters, start_ready, wait_active_ingesters, wait_until};
use prost::Message;

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const READY: Duration = Duration::from_secs(60);
const PUSH: &str = "/push.v1.PusherService/Push";
const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";

fn start(name: &str, args: &[&str]) -> Flamedb {
    let node = Flamedb::start(BINARY, name, args);
    node.wait_ready(READY);
    node
}

fn testdata_dir() -> Option<PathBuf> {
    flamedb_testkit::testdata("pprof")
}

fn pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(name, value)| LabelPair {
            name: (*name).to_owned(),
            value: (*value).to_owned(),
        })
        .collect()
}

fn push_request(labels: &[(&str, &str)], raw_profiles: Vec<Vec<u8>>) -> PushRequest {
    PushRequest {
        series: vec![RawProfileSeries {
            labels: pairs(labels),
            samples: raw_profiles
                .into_iter()
                .map(|raw_profile| RawSample {
                    raw_profile,
                    id: String::new(),
                })
                .collect(),
            annotations: vec![],
        }],
    }
}

/// How a Connect push is sent.
#[derive(Debug, Clone, Copy)]
enum Encoding {
    Proto,
    Json,
    GzipProto,
}

fn connect_push(node: &Flamedb, tenant: Option<&str>, encoding: Encoding, request: &PushRequest) -> (u16, String) {
    let mut headers = Vec::new();
    if let Some(tenant) = tenant {
        headers.push(("x-scope-orgid", tenant));
    }
    let body = match encoding {
        Encoding::Proto => {
            headers.push(("content-type", "application/proto"));
            request.encode_to_vec()
        }
        Encoding::GzipProto => {
            headers.push(("content-type", "application/proto"));
            headers.push(("content-encoding", "gzip"));
            gzip(&request.encode_to_vec())
        }
        Encoding::Json => {
            headers.push(("content-type", "application/json"));
            json_push(request).into_bytes()
        }
    };
    let (status, body) = node.post(PUSH, &headers, body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The proto3 JSON of a push, as the docs' example sends it.
fn json_push(request: &PushRequest) -> String {
    let series: Vec<serde_json::Value> = request
        .series
        .iter()
        .map(|series| {
            serde_json::json!({
                "labels": series.labels.iter().map(|l| serde_json::json!({"name": l.name, "value": l.value})).collect::<Vec<_>>(),
                "samples": series.samples.iter().map(|s| serde_json::json!({"rawProfile": base64(&s.raw_profile), "ID": s.id})).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "series": series }).to_string()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A multipart body with `fields` (name, file bytes): (content type, body).
fn multipart(fields: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "flamedb-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, content) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn ingest(node: &Flamedb, query: &str, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let (status, body) = node
        .post(&format!("/ingest?{query}"), &[("content-type", content_type)], body)
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The profile types stored on `node` for the series matching `selector`.
fn profile_types(node: &Flamedb, tenant: &str, selector: &str) -> BTreeSet<String> {
    let request = ingester::SeriesRequest {
        matchers: vec![selector.to_owned()],
        label_names: vec!["__profile_type__".to_owned()],
        start: 0,
        end: 0,
    };
    let (status, body) = flamedb_testkit::post(
        node.internal.as_deref().unwrap(),
        "/ingester.v1.IngesterService/Series",
        &[("content-type", "application/proto"), ("x-scope-orgid", tenant)],
        request.encode_to_vec(),
    )
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    ingester::SeriesResponse::decode(body.as_slice())
        .unwrap()
        .labels_set
        .iter()
        .flat_map(|labels| labels.labels.iter())
        .filter(|label| label.name == "__profile_type__")
        .map(|label| label.value.clone())
        .collect()
}

fn selection(profile_type: &str, selector: &str) -> Option<ingester::ProfileSelection> {
    Some(ingester::ProfileSelection {
        label_selector: selector.to_owned(),
        profile_type_id: profile_type.to_owned(),
        start: 0,
        end: 0,
    })
}

/// The IDs of the profiles stored on `node` for `selector`.
fn stored_ids(node: &Flamedb, profile_type: &str, selector: &str) -> BTreeSet<ProfileId> {
    let request = ingester::SelectProfilesRequest {
        selection: selection(profile_type, selector),
        page_size: 10_000,
        page_token: Vec::new(),
    };
    let (status, body) = node
        .post_internal_proto("/ingester.v1.IngesterService/SelectProfiles", request.encode_to_vec())
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let page = ingester::SelectProfilesResponse::decode(body.as_slice()).unwrap();
    assert!(page.next_page_token.is_empty());
    page.profiles
        .iter()
        .map(|profile| ProfileId::from_slice(&profile.id).unwrap())
        .collect()
}

fn merged(node: &Flamedb, profile_type: &str, selector: &str) -> Tree {
    let request = ingester::MergeProfilesRequest {
        selection: selection(profile_type, selector),
        ..Default::default()
    };
    let (status, body) = node
        .post_internal_proto("/ingester.v1.IngesterService/MergeProfiles", request.encode_to_vec())
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    Tree::decode(&ingester::MergeProfilesResponse::decode(body.as_slice()).unwrap().tree).unwrap()
}

/// One testdata row: what the README of `../shared/testdata` expects.
struct Row {
    file: &'static str,
    sample_type_config: Option<&'static str>,
    /// `__name__` for Connect pushes.
    name: &'static str,
    spy: &'static str,
    push_status: u16,
    ingest_status: u16,
    /// Empty: whatever the file holds, but something.
    types: &'static [&'static str],
}

const GO_CPU: &[&str] = &[
    "process_cpu:samples:count:cpu:nanoseconds",
    "process_cpu:cpu:nanoseconds:cpu:nanoseconds",
];
const GO_HEAP: &[&str] = &[
    "memory:alloc_objects:count:space:bytes",
    "memory:alloc_space:bytes:space:bytes",
    "memory:inuse_objects:count:space:bytes",
    "memory:inuse_space:bytes:space:bytes",
];

const fn row(
    file: &'static str,
    name: &'static str,
    push_status: u16,
    ingest_status: u16,
    types: &'static [&'static str],
) -> Row {
    Row {
        file,
        sample_type_config: None,
        name,
        spy: "gospy",
        push_status,
        ingest_status,
        types,
    }
}

const ROWS: &[Row] = &[
    row("cpu.pb.gz", "process_cpu", 200, 200, GO_CPU),
    row("cpu-exemplars.pb.gz", "process_cpu", 200, 200, GO_CPU),
    row("go.cpu.labels.pprof", "process_cpu", 200, 200, GO_CPU),
    Row {
        spy: "nodespy",
        ..row(
            "cpu-js.pb.gz",
            "wall",
            200,
            200,
            &[
                "wall:sample:count:wall:microseconds",
                "wall:wall:microseconds:wall:microseconds",
            ],
        )
    },
    row("heap.pb.gz", "memory", 200, 200, GO_HEAP),
    row("heap", "memory", 200, 200, GO_HEAP),
    Row {
        spy: "nodespy",
        ..row(
            "heap-js.pprof",
            "memory",
            200,
            200,
            &["memory:objects:count:space:bytes", "memory:space:bytes:space:bytes"],
        )
    },
    Row {
        spy: "nodespy",
        ..row(
            "nodejs-heap.pb.gz",
            "memory",
            200,
            200,
            &[
                "memory:inuse_objects:count:inuse_space:bytes",
                "memory:inuse_space:bytes:inuse_space:bytes",
            ],
        )
    },
    Row {
        spy: "nodespy",
        ..row(
            "nodejs-wall.pb.gz",
            "wall",
            200,
            200,
            &[
                "wall:samples:count:wall:microseconds",
                "wall:wall:microseconds:wall:microseconds",
            ],
        )
    },
    Row {
        sample_type_config: Some("req_2.st.json"),
        ..row(
            "req_2.pprof",
            "goroutines",
            200,
            200,
            &["goroutines:goroutine:count:goroutine:count"],
        )
    },
    Row {
        sample_type_config: Some("req_3.st.json"),
        ..row(
            "req_3.pprof",
            "block",
            200,
            200,
            &[
                "block:contentions:count:contentions:count",
                "block:delay:nanoseconds:contentions:count",
            ],
        )
    },
    Row {
        sample_type_config: Some("req_4.st.json"),
        ..row(
            "req_4.pprof",
            "mutex",
            200,
            200,
            &[
                "mutex:contentions:count:contentions:count",
                "mutex:delay:nanoseconds:contentions:count",
            ],
        )
    },
    Row {
        sample_type_config: Some("req_5.st.json"),
        ..row(
            "req_5.pprof",
            "memory",
            200,
            200,
            &[
                "memory:alloc_objects:count:space:bytes",
                "memory:alloc_space:bytes:space:bytes",
            ],
        )
    },
    Row {
        spy: "pyspy",
        ..row(
            "pyspy-1.pb.gz",
            "process_cpu",
            200,
            200,
            &["process_cpu:samples:count::milliseconds"],
        )
    },
    Row {
        sample_type_config: Some("dotnet-pprof-3.st.json"),
        spy: "dotnetspy",
        ..row(
            "dotnet-pprof-3.pb.gz",
            "process_cpu",
            400,
            200,
            &["process_cpu:cpu:nanoseconds::nanoseconds"],
        )
    },
    row("invalid_utf8.pb.gz", "process_cpu", 400, 422, &[]),
    Row {
        spy: "javaspy",
        ..row(
            "profile_java",
            "process_cpu",
            200,
            200,
            &["process_cpu:cpu:nanoseconds:cpu:nanoseconds"],
        )
    },
    Row {
        spy: "pyspy",
        ..row("profile_python", "process_cpu", 200, 200, &[])
    },
    Row {
        spy: "nodespy",
        ..row("profile_nodejs", "process_cpu", 200, 200, &[])
    },
    Row {
        spy: "pyroscope-rs",
        ..row("profile_rust", "process_cpu", 200, 200, &[])
    },
    row("profile_uncompressed", "process_cpu", 200, 200, &[]),
    row("single_group_with_optional_span_id.pb.gz", "process_cpu", 200, 200, &[]),
];

fn check_stored(node: &Flamedb, row: &Row, service: &str, status: u16, how: &str) {
    let stored = profile_types(node, "anonymous", &format!("{{service_name=\"{service}\"}}"));
    if status != 200 {
        assert!(
            stored.is_empty(),
            "{how} of {} was refused but stored {stored:?}",
            row.file
        );
    } else if row.types.is_empty() {
        assert!(!stored.is_empty(), "{how} of {} stored nothing", row.file);
    } else {
        let expected: BTreeSet<String> = row.types.iter().map(|t| (*t).to_owned()).collect();
        assert_eq!(stored, expected, "{how} of {}", row.file);
    }
}

#[test]
fn test_every_testdata_profile_through_every_ingest_api() {
    let Some(dir) = testdata_dir() else { return };
    // The recordings are years old: no ingestion window.
    let node = start(
        "single",
        &[
            "-validation.reject-older-than=0s",
            "-validation.reject-newer-than=0s",
            "-distributor.ingestion-rate-limit-mb=0",
        ],
    );
    for row in ROWS {
        let raw = std::fs::read(dir.join(row.file)).unwrap();
        let slug = row.file.replace('.', "-");
        for encoding in [Encoding::Proto, Encoding::Json, Encoding::GzipProto] {
            let service = format!("push-{encoding:?}-{slug}");
            // Each recording is one profile, not a stream: without
            // `__delta__="false"` the first cumulative heap profile of a
            // series would only be the baseline of server-side delta.
            let labels = [
                ("__name__", row.name),
                ("service_name", &service),
                ("__delta__", "false"),
            ];
            let request = push_request(&labels, vec![raw.clone()]);
            let (status, body) = connect_push(&node, None, encoding, &request);
            assert_eq!(status, row.push_status, "{encoding:?} push of {}: {body}", row.file);
            if row.file.starts_with("dotnet") {
                assert!(body.contains("function id is 0"), "{body}");
            }
            check_stored(&node, row, &service, status, &format!("{encoding:?} push"));
        }

        let config = row
            .sample_type_config
            .map(|file| std::fs::read(dir.join(file)).unwrap());
        let service = format!("ingest-multipart-{slug}");
        let mut fields: Vec<(&str, &[u8])> = vec![("profile", &raw)];
        if let Some(config) = &config {
            fields.push(("sample_type_config", config));
        }
        let (content_type, body) = multipart(&fields);
        let query = format!("name={service}&spyName={}&from=now-10s&until=now", row.spy);
        let (status, answer) = ingest(&node, &query, &content_type, body);
        assert_eq!(status, row.ingest_status, "multipart ingest of {}: {answer}", row.file);
        if status == 200 {
            assert!(answer.is_empty(), "{answer}");
        }
        check_stored(&node, row, &service, status, "multipart ingest");

        // Raw pprof has no room for a sample type config.
        if config.is_none() {
            let service = format!("ingest-raw-{slug}");
            let query = format!("name={service}&spyName={}&format=pprof", row.spy);
            let (status, answer) = ingest(&node, &query, "application/octet-stream", raw.clone());
            assert_eq!(status, row.ingest_status, "raw ingest of {}: {answer}", row.file);
            check_stored(&node, row, &service, status, "raw ingest");
        }
    }

    // Locations without address or line: no crash, whatever the answer.
    let raw = std::fs::read(dir.join("malformed_no_addr_no_line.pb.gz")).unwrap();
    let request = push_request(&[("__name__", "process_cpu"), ("service_name", "malformed")], vec![raw]);
    let (status, _) = connect_push(&node, None, Encoding::Proto, &request);
    assert!([200, 400].contains(&status), "{status}");
    assert_eq!(node.get("/ready").unwrap().0, 200);

    // A new agent never sends prev_profile; an old one is told to update.
    let raw = std::fs::read(dir.join("cpu.pb.gz")).unwrap();
    let (content_type, body) = multipart(&[("profile", &raw), ("prev_profile", &raw)]);
    let (status, answer) = ingest(&node, "name=old-agent", &content_type, body);
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("prev_profile"), "{answer}");
}

#[test]
fn test_folded_stacks_are_stored_as_cpu_nanoseconds() {
    let node = start("single", &[]);
    let (status, body) = ingest(
        &node,
        "name=app.cpu%7Benv%3Dprod%7D&from=now-10s&until=now",
        "text/plain",
        b"foo;bar 100\nfoo;baz 200".to_vec(),
    );
    assert_eq!((status, body.as_str()), (200, ""));
    let selector = r#"{service_name="app",env="prod"}"#;
    assert_eq!(
        profile_types(&node, "anonymous", selector),
        BTreeSet::from([CPU.to_owned()])
    );
    let tree = merged(&node, CPU, selector);
    let mut stacks = tree.stacks();
    stacks.sort();
    assert_eq!(
        stacks,
        vec![
            (vec!["foo".to_owned(), "bar".to_owned()], 1_000_000_000),
            (vec!["foo".to_owned(), "baz".to_owned()], 2_000_000_000),
        ]
    );

    // `lines` counts each line once; the type comes from the suffix.
    let (status, _) = ingest(
        &node,
        "name=app.inuse_space&format=lines",
        "text/plain",
        b"a;b\na;b\na;c\n".to_vec(),
    );
    assert_eq!(status, 200);
    let tree = merged(&node, "memory:inuse_space:bytes::", r#"{service_name="app"}"#);
    assert_eq!(tree.total(), 3);

    // Speedscope: one series per speedscope profile (`profile_name`),
    // values in seconds become nanoseconds.
    let speedscope = br#"{"profiles": [
        {"type": "sampled", "name": "one", "unit": "seconds", "samples": [[0, 1], [0]], "weights": [2, 0.5]},
        {"type": "sampled", "name": "two", "unit": "seconds", "samples": [[0]], "weights": [1]}],
        "shared": {"frames": [{"name": "main"}, {"name": "work"}]}}"#;
    let (status, answer) = ingest(
        &node,
        "name=scoped.cpu&format=speedscope",
        "application/json",
        speedscope.to_vec(),
    );
    assert_eq!(status, 200, "{answer}");
    let tree = merged(&node, CPU, r#"{service_name="scoped",profile_name="one"}"#);
    let mut stacks = tree.stacks();
    stacks.sort();
    assert_eq!(
        stacks,
        vec![
            (vec!["main".to_owned()], 500_000_000),
            (vec!["main".to_owned(), "work".to_owned()], 2_000_000_000),
        ]
    );
    let tree = merged(&node, CPU, r#"{service_name="scoped"}"#);
    assert_eq!(tree.total(), 3_500_000_000);

    // The binary trie and tree of old agents: prefix-compressed stack
    // keys with counts, and frames with self values.
    let trie = [
        &[0, 0, 1, 6][..],
        b"foo;ba",
        &[0, 2, 1],
        b"r",
        &[3, 0, 1],
        b"z",
        &[5, 0],
    ]
    .concat();
    let (status, answer) = ingest(&node, "name=trie.cpu&format=trie", "binary/octet-stream", trie);
    assert_eq!((status, answer.as_str()), (200, ""));
    let mut stacks = merged(&node, CPU, r#"{service_name="trie"}"#).stacks();
    stacks.sort();
    let foo = |leaf: &str| vec!["foo".to_owned(), leaf.to_owned()];
    assert_eq!(stacks, [(foo("bar"), 30_000_000), (foo("baz"), 50_000_000)]);
    let tree = [&[0, 0, 1, 4][..], b"main", &[1, 1, 4], b"work", &[4, 0]].concat();
    let (status, answer) = ingest(&node, "name=tree.alloc_objects", "binary/octet-stream+tree", tree);
    assert_eq!((status, answer.as_str()), (200, ""));
    let tree = merged(&node, "memory:alloc_objects:count::", r#"{service_name="tree"}"#);
    assert_eq!(tree.total(), 5);

    // Bad input: each with its status, nothing stored.
    for (query, body, expected) in [
        ("name=%7Benv%3Dx%7D", "a 1", 400),
        ("name=my.app", "a 1", 400),
        ("name=app&from=yesterday", "a 1", 400),
        ("name=app", "a;b notanumber", 422),
        ("name=app&format=jfr", "x", 422),
        ("name=app&format=tree", "x", 422),
        ("name=app&format=speedscope", "{\"profiles\": 1}", 422),
    ] {
        let (status, answer) = ingest(&node, query, "text/plain", body.as_bytes().to_vec());
        assert_eq!(status, expected, "{query}: {answer}");
        let error: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }
    // The push shows up in the ingester's metrics.
    assert!(node.metric("flamedb_ingester_profiles_total").unwrap() >= 2.0);
    assert!(node.metric("flamedb_distributor_received_profiles_total").unwrap() >= 2.0);
}

#[test]
fn test_testdata_jfr_from_the_java_agent_is_stored_per_kind_of_sample_and_context() {
    let Some(pprof_dir) = testdata_dir() else { return };
    let dir = pprof_dir.join("../jfr");
    let node = start("single", &[]);
    let cpu = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
    // Raw (gzipped) recording: 478 CPU samples of 10 ms.
    let kafka = std::fs::read(dir.join("cortex-dev-01__kafka-0__cpu__0.jfr.gz")).unwrap();
    let (status, body) = ingest(
        &node,
        "name=kafka%7Benv%3Ddev%7D&format=jfr&from=now-10s&until=now&spyName=javaspy",
        "application/octet-stream",
        kafka,
    );
    assert_eq!((status, body.as_str()), (200, ""));
    let tree = merged(
        &node,
        cpu,
        r#"{service_name="kafka",env="dev",jfr_event="cpu",pyroscope_spy="javaspy"}"#,
    );
    assert_eq!(tree.total(), 478 * 10_000_000);

    // Multipart with async-profiler context labels: one series per
    // context, 2188 samples in all.
    let jfr = std::fs::read(dir.join("dump1.jfr.gz")).unwrap();
    let labels = std::fs::read(dir.join("dump1.labels.pb.gz")).unwrap();
    let (content_type, body) = multipart(&[("jfr", &jfr), ("labels", &labels)]);
    let (status, answer) = ingest(&node, "name=app&format=jfr&from=now-10s&until=now", &content_type, body);
    assert_eq!((status, answer.as_str()), (200, ""));
    let all = r#"{service_name="app",jfr_event="itimer"}"#;
    assert_eq!(merged(&node, cpu, all).total(), 2188 * 10_000_000);
    assert_eq!(stored_ids(&node, cpu, all).len(), 5);

    // Allocation and lock samples (a recording made up here): profiles
    // of their own types.
    use flamedb_model::jfr::synthetic::{Event, FieldValue, recording};
    let stacks: &[&[&str]] = &[&["App.alloc", "App.main"]];
    let events = [
        Event {
            name: "jdk.ObjectAllocationInNewTLAB",
            stack: 1,
            fields: vec![("tlabSize", FieldValue::Long(65_536))],
        },
        Event {
            name: "jdk.JavaMonitorEnter",
            stack: 1,
            fields: vec![("duration", FieldValue::Long(1_500_000))],
        },
    ];
    let file = recording("cpu", 1_000_000_000, stacks, &events);
    let (status, body) = ingest(&node, "name=java&format=jfr", "application/octet-stream", file);
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(
        profile_types(&node, "anonymous", r#"{service_name="java"}"#),
        BTreeSet::from(
            [
                "memory:alloc_in_new_tlab_bytes:bytes:space:bytes",
                "memory:alloc_in_new_tlab_objects:count:space:bytes",
                "mutex:contentions:count:mutex:count",
                "mutex:delay:nanoseconds:mutex:count",
            ]
            .map(String::from)
        )
    );
    let bytes = merged(
        &node,
        "memory:alloc_in_new_tlab_bytes:bytes:space:bytes",
        r#"{service_name="java"}"#,
    );
    assert_eq!(bytes.total(), 65_536);
    let delay = merged(&node, "mutex:delay:nanoseconds:mutex:count", r#"{service_name="java"}"#);
    assert_eq!(delay.total(), 1_500_000);

    // Not a recording: 422, nothing stored.
    let (content_type, body) = multipart(&[("jfr", b"FLR\0 broken")]);
    let (status, answer) = ingest(&node, "name=broken&format=jfr", &content_type, body);
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("JFR"), "{answer}");
}

/// The stacks (root first) and values of an expected output of
/// `../shared/testdata/otlp`: samples whose locations (leaf first) have
/// one line `name[system name]@file:line`.
fn expected_otlp_tree(path: &std::path::Path) -> Tree {
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut tree = Tree::new();
    for sample in expected["samples"].as_array().unwrap() {
        let names: Vec<&str> = sample["locations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|location| {
                let line = location["lines"][0].as_str().unwrap();
                line.rsplit_once("[]@").unwrap().0
            })
            .collect();
        let value: i64 = sample["values"].as_str().unwrap().parse().unwrap();
        tree.insert(names.into_iter().rev(), value).unwrap();
    }
    tree
}

/// The OTLP export of the OpenTelemetry eBPF profiler, stamped now.
fn otlp_export(dir: &std::path::Path) -> ExportProfilesServiceRequest {
    let bytes = std::fs::read(dir.join("otel-ebpf-profile.pb.bin")).unwrap();
    let mut request = ExportProfilesServiceRequest::decode(bytes.as_slice()).unwrap();
    let now = u64::try_from(flamedb_model::now_nanos()).unwrap();
    for profile in request
        .resource_profiles
        .iter_mut()
        .flat_map(|resource| &mut resource.scope_profiles)
        .flat_map(|scope| &mut scope.profiles)
    {
        profile.time_unix_nano = now;
    }
    request
}

#[test]
fn test_testdata_otlp_profiles_from_the_ebpf_profiler_over_http_json_and_grpc() {
    let Some(pprof_dir) = testdata_dir() else { return };
    let dir = pprof_dir.join("../otlp");
    let node = start("single", &[]);
    let off_cpu = "off_cpu:off_cpu:nanoseconds::";
    let unknown = r#"{service_name="unknown_service"}"#;
    let expected_cpu = expected_otlp_tree(&dir.join("otel-ebpf-profile-cpu.out.json"));
    let expected_off_cpu = expected_otlp_tree(&dir.join("otel-ebpf-profile-offcpu.out.json"));
    let request = otlp_export(&dir);

    // OTLP/HTTP, protobuf, gzipped: the stacks Pyroscope makes of it.
    let (status, body) = node
        .post(
            "/v1development/profiles",
            &[("content-type", "application/x-protobuf"), ("content-encoding", "gzip")],
            gzip(&request.encode_to_vec()),
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    ExportProfilesServiceResponse::decode(body.as_slice()).unwrap();
    assert_eq!(merged(&node, CPU, unknown).stacks(), expected_cpu.stacks());
    assert_eq!(merged(&node, off_cpu, unknown).stacks(), expected_off_cpu.stacks());
    // Resource attributes label the series; other executables are their
    // own services.
    let containerd = r#"{service_name="unknown_service:containerd","process.executable.name"="containerd"}"#;
    assert_eq!(merged(&node, off_cpu, containerd).total(), 4_701_359_575);

    // OTLP/HTTP JSON, as the file holds it (times made now).
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("otel-ebpf-profile.pb.json")).unwrap()).unwrap();
    let now = flamedb_model::now_nanos().to_string();
    for resource in json["resourceProfiles"].as_array_mut().unwrap() {
        for scope in resource["scopeProfiles"].as_array_mut().unwrap() {
            for profile in scope["profiles"].as_array_mut().unwrap() {
                profile["timeUnixNano"] = serde_json::Value::String(now.clone());
            }
        }
    }
    let (status, body) = node
        .post(
            "/v1development/profiles",
            &[("content-type", "application/json")],
            serde_json::to_vec(&json).unwrap(),
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(merged(&node, CPU, unknown).total(), 2 * expected_cpu.total());

    // gRPC, as the OpenTelemetry collector exports.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = ProfilesServiceClient::connect(format!("http://{}", node.http))
            .await
            .unwrap();
        client.export(request.clone()).await.unwrap();
    });
    assert_eq!(merged(&node, CPU, unknown).total(), 3 * expected_cpu.total());
    assert_eq!(merged(&node, off_cpu, unknown).total(), 3 * expected_off_cpu.total());
    // Every sample has an integer thread ID, a label of its own.
    let threads = r#"{service_name="unknown_service","thread.id"=~"[0-9]+"}"#;
    assert_eq!(merged(&node, CPU, threads).total(), 3 * expected_cpu.total());

    // The same export with its service named by string-table reference,
    // as the Collector writes resource attributes.
    let mut by_reference = request.clone();
    let dictionary = by_reference.dictionary.as_mut().unwrap();
    let strindex = |strings: &mut Vec<String>, text: &str| {
        strings.push(text.to_owned());
        i32::try_from(strings.len() - 1).unwrap()
    };
    let key_strindex = strindex(&mut dictionary.string_table, "service.name");
    let value_strindex = strindex(&mut dictionary.string_table, "ebpf-by-reference");
    for resource in &mut by_reference.resource_profiles {
        resource.resource.as_mut().unwrap().attributes.push(KeyValue {
            key: String::new(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValueStrindex(value_strindex)),
            }),
            key_strindex,
        });
    }
    let (status, body) = node
        .post(
            "/v1development/profiles",
            &[("content-type", "application/x-protobuf")],
            by_reference.encode_to_vec(),
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let by_reference_service = r#"{service_name="ebpf-by-reference"}"#;
    assert_eq!(merged(&node, CPU, by_reference_service).stacks(), expected_cpu.stacks());
    // And over gRPC, with the development version the Collector sends.
    runtime.block_on(async {
        let mut client = ProfilesServiceClient::connect(format!("http://{}", node.http))
            .await
            .unwrap();
        let mut export = tonic::Request::new(by_reference);
        export
            .metadata_mut()
            .insert("otlp-profiles-development-version", "1".parse().unwrap());
        client.export(export).await.unwrap();
    });
    assert_eq!(
        merged(&node, CPU, by_reference_service).total(),
        2 * expected_cpu.total()
    );

    // Over OTLP/JSON: the service by reference again, and every sample
    // linked to one span (IDs in hex, as OTLP/JSON writes them).
    let mut linked = json.clone();
    let strings = linked["dictionary"]["stringTable"].as_array_mut().unwrap();
    strings.push("service.name".into());
    strings.push("ebpf-linked".into());
    let (key, value) = (strings.len() - 2, strings.len() - 1);
    for resource in linked["resourceProfiles"].as_array_mut().unwrap() {
        let attribute = serde_json::json!({"keyStrindex": key, "value": {"stringValueStrindex": value}});
        resource["resource"]["attributes"]
            .as_array_mut()
            .unwrap()
            .push(attribute);
        for scope in resource["scopeProfiles"].as_array_mut().unwrap() {
            for profile in scope["profiles"].as_array_mut().unwrap() {
                for sample in profile["samples"].as_array_mut().unwrap() {
                    sample["linkIndex"] = 1.into();
                }
            }
        }
    }
    let links = linked["dictionary"]["linkTable"].as_array_mut().unwrap();
    links.truncate(1);
    links.push(serde_json::json!({"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "a1a2a3a4a5a6a7a8"}));
    let (status, body) = node
        .post(
            "/v1development/profiles",
            &[("content-type", "application/json")],
            serde_json::to_vec(&linked).unwrap(),
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let linked = r#"{service_name="ebpf-linked"}"#;
    assert_eq!(merged(&node, CPU, linked).stacks(), expected_cpu.stacks());
    let span = ingester::MergeProfilesRequest {
        selection: selection(CPU, linked),
        span_ids: vec![0xa1a2_a3a4_a5a6_a7a8],
        ..Default::default()
    };
    let (status, body) = node
        .post_internal_proto("/ingester.v1.IngesterService/MergeProfiles", span.encode_to_vec())
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let span_tree = Tree::decode(&ingester::MergeProfilesResponse::decode(body.as_slice()).unwrap().tree).unwrap();
    assert_eq!(span_tree.stacks(), expected_cpu.stacks());

    // Bad requests: 400 without a dictionary, 415 for other media types.
    let empty = ExportProfilesServiceRequest::default().encode_to_vec();
    let (status, body) = node
        .post(
            "/v1development/profiles",
            &[("content-type", "application/x-protobuf")],
            empty,
        )
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("no dictionary"));
    let (status, _) = node
        .post(
            "/v1development/profiles",
            &[("content-type", "text/plain")],
            b"x".to_vec(),
        )
        .unwrap();
    assert_eq!(status, 415);
    let (status, _) = node
        .post(
            "/v1development/profiles",
            &[("content-type", "application/x-protobuf")],
            b"\xff\xff not protobuf".to_vec(),
        )
        .unwrap();
    assert_eq!(status, 400);
}

/// A CPU profile of `size` bytes or so, stamped now.
fn sized_profile(size: usize) -> Vec<u8> {
    let names: Vec<String> = (0..size / 40)
        .map(|i| format!("function_number_{i:06}_padding_x"))
        .collect();
    let mut builder = StackProfileBuilder::new("cpu", "nanoseconds").time(flamedb_model::now_nanos(), 0);
    builder.add(names.iter().map(String::as_str), 1);
    builder.build().encode_to_vec()
}

#[test]
fn test_a_flood_over_the_tenant_rate_gets_429_and_other_tenants_go_on() {
    let dir = flamedb_testkit::shared_dir();
    let overrides = dir.path().join("overrides.yaml");
    std::fs::write(
        &overrides,
        "overrides:\n  generous:\n    ingestion_rate_mb: 100\n    ingestion_burst_size_mb: 50\n",
    )
    .unwrap();
    let runtime_config = format!("-runtime-config.file={}", overrides.display());
    // 8 KiB/s with a 128 KiB burst by default.
    let node = start(
        "single",
        &[
            "-auth.multitenancy-enabled",
            "-distributor.ingestion-rate-limit-mb=0.0078125",
            "-distributor.ingestion-burst-size-mb=0.125",
            "-runtime-config.reload-period=100ms",
            &runtime_config,
        ],
    );
    let profile = sized_profile(16 * 1024);
    let request = |service: &str| {
        push_request(
            &[("__name__", "process_cpu"), ("service_name", service)],
            vec![profile.clone()],
        )
    };

    let mut limited = 0;
    for _ in 0..30 {
        let (status, body) = connect_push(&node, Some("flooder"), Encoding::Proto, &request("flood"));
        match status {
            200 => {}
            429 => {
                limited += 1;
                assert!(body.contains("ingestion_rate_mb"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(limited >= 15, "only {limited} of 30 pushes were limited");
    // Meanwhile other tenants push as before.
    for tenant in ["quiet", "generous"] {
        for _ in 0..5 {
            let (status, body) = connect_push(&node, Some(tenant), Encoding::Proto, &request(tenant));
            assert_eq!(status, 200, "{tenant}: {body}");
        }
    }
    // The overrides give one tenant far more.
    for _ in 0..30 {
        let (status, body) = connect_push(&node, Some("generous"), Encoding::Proto, &request("generous"));
        assert_eq!(status, 200, "{body}");
    }
    assert!(node.metric("flamedb_distributor_discarded_profiles_total").unwrap() >= limited as f64);
    // The overrides file is re-read: the flooder gets room too.
    // Replaced at once, as config tools do.
    let temp = dir.path().join("overrides.yaml.tmp");
    std::fs::write(&temp, "overrides:\n  flooder:\n    ingestion_rate_mb: 0\n").unwrap();
    std::fs::rename(&temp, &overrides).unwrap();
    wait_until(Duration::from_secs(10), "the overrides reload", || {
        let page = node.get("/runtime_config").ok()?.1;
        page.contains("flooder").then_some(())
    });
    // Far more than the burst and any refill while they run (about 1 MiB).
    for _ in 0..64 {
        let (status, body) = connect_push(&node, Some("flooder"), Encoding::Proto, &request("flood"));
        assert_eq!(status, 200, "{body}");
    }
    // Without a tenant: 401.
    let (status, _) = connect_push(&node, None, Encoding::Proto, &request("x"));
    assert_eq!(status, 401);
}

#[test]
fn test_a_push_with_some_invalid_profiles_stores_the_valid_ones_and_lists_the_problems() {
    let node = start("single", &["-validation.max-label-names-per-series=4"]);
    let good = sized_profile(400);
    let mut request = push_request(
        &[("__name__", "process_cpu"), ("service_name", "mixed")],
        vec![good.clone(), b"not a profile".to_vec()],
    );
    request.series.push(RawProfileSeries {
        labels: pairs(&[
            ("__name__", "process_cpu"),
            ("service_name", "wide"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
        ]),
        samples: vec![RawSample {
            raw_profile: good,
            id: "not-a-uuid".to_owned(),
        }],
        annotations: vec![],
    });
    let (status, body) = connect_push(&node, None, Encoding::Proto, &request);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("2 profiles refused, 1 series-profiles stored"), "{body}");
    assert!(body.contains("cannot be decoded"), "{body}");
    assert!(body.contains("service_name=\\\"wide\\\""), "{body}");
    assert_eq!(
        stored_ids(&node, "process_cpu:cpu:nanoseconds::", r#"{service_name="mixed"}"#).len(),
        1
    );
    assert!(profile_types(&node, "anonymous", r#"{service_name="wide"}"#).is_empty());

    let (status, body) = connect_push(&node, None, Encoding::Proto, &PushRequest::default());
    assert_eq!(status, 400);
    assert!(body.contains("no profiles received"), "{body}");
}

/// The Python interpreter with `pyroscope-io` that `.ci/run` installs.
fn python_with_agent() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/python/bin/python");
    if python.exists() {
        return Some(python);
    }
    flamedb_testkit::missing(
        flamedb_testkit::Need::PythonAgent,
        &format!(
            "{} is missing (.ci/run installs it; or: python3 -m venv .tools/python && .tools/python/bin/pip install pyroscope-io==1.4.0)",
            python.display()
        ),
    );
    None
}

const PYTHON_APP: &str = r#"
import sys, time
import pyroscope

pyroscope.configure(
    application_name="flamedb-python-agent",
    server_address=sys.argv[1],
    sample_rate=100,
    upload_interval=1,
    tags={"env": "ci"},
)

def busy(seconds):
    end = time.time() + seconds
    n = 0
    while time.time() < end:
        n += 1
    return n

busy(4)
pyroscope.shutdown()
"#;

#[test]
fn test_the_real_python_agent_pushes_to_the_real_server() {
    let Some(python) = python_with_agent() else { return };
    let node = start("single", &[]);
    let script = node.workdir().join("app.py");
    std::fs::write(&script, PYTHON_APP).unwrap();
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}", node.http))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let selector = r#"{service_name="flamedb-python-agent",env="ci"}"#;
    let types = wait_until(Duration::from_secs(10), "the agent's profiles", || {
        let types = profile_types(&node, "anonymous", selector);
        (!types.is_empty()).then_some(types)
    });
    assert_eq!(types, BTreeSet::from([CPU.to_owned()]));
    let tree = merged(&node, CPU, selector);
    assert!(tree.total() > 0);
    let stacks = tree.stacks();
    assert!(
        stacks
            .iter()
            .any(|(frames, _)| frames.iter().any(|frame| frame.contains("busy"))),
        "{stacks:?}"
    );
}

fn cpu_push(service: &str, value: i64) -> PushRequest {
    let mut profile = Profile::decode(sized_profile(200).as_slice()).unwrap();
    profile.sample[0].value[0] = value;
    push_request(
        &[("__name__", "process_cpu"), ("service_name", service)],
        vec![profile.encode_to_vec()],
    )
}

const CLUSTER_CPU: &str = "process_cpu:cpu:nanoseconds::";

#[test]
fn test_rf3_cluster_writes_every_series_to_three_replicas_and_needs_a_quorum() {
    let flags = cluster_flags(&format!("distributor-test-{}", std::process::id()));
    let distributor_1 = start_ready(
        BINARY,
        "distributor-1",
        &flags,
        &[
            "-target=distributor".into(),
            "-distributor.ring.instance-id=distributor-1".into(),
        ],
    );
    let mut ingesters = start_ingesters(BINARY, &distributor_1, 3, &flags, &[]);
    let join = format!("-memberlist.join={}", distributor_1.gossip.clone().unwrap());
    let distributor_2 = start_ready(
        BINARY,
        "distributor-2",
        &flags,
        &[
            "-target=distributor".into(),
            "-distributor.ring.instance-id=distributor-2".into(),
            join,
        ],
    );
    wait_active_ingesters(&distributor_2, 3);

    // Both distributors write; every series lands on all three replicas
    // under one profile ID.
    for (n, distributor) in [&distributor_1, &distributor_2, &distributor_1].iter().enumerate() {
        for service in 0..10 {
            let (status, body) = connect_push(
                distributor,
                None,
                Encoding::Proto,
                &cpu_push(&format!("svc-{service}"), n as i64 + 1),
            );
            assert_eq!(status, 200, "{body}");
        }
    }
    // A push answers at 2 of 3 acknowledgements: the third copy may land
    // just after.
    for service in 0..10 {
        let selector = format!("{{service_name=\"svc-{service}\"}}");
        let ids = wait_until(Duration::from_secs(10), "every copy", || {
            let ids: Vec<BTreeSet<ProfileId>> = ingesters
                .iter()
                .map(|node| stored_ids(node, CLUSTER_CPU, &selector))
                .collect();
            ids.iter().all(|set| set.len() == 3).then_some(ids)
        });
        assert!(
            ids.iter().all(|set| *set == ids[0]),
            "svc-{service}: replicas differ: {ids:?}"
        );
        for node in &ingesters {
            assert_eq!(merged(node, CLUSTER_CPU, &selector).total(), 6);
        }
    }

    // One ingester killed: writes go on with two acknowledgements.
    ingesters[2].kill();
    for service in 0..10 {
        let (status, body) = connect_push(
            &distributor_2,
            None,
            Encoding::Proto,
            &cpu_push(&format!("after-kill-{service}"), 1),
        );
        assert_eq!(status, 200, "{body}");
    }
    let selector = r#"{service_name="after-kill-0"}"#;
    assert_eq!(stored_ids(&ingesters[0], CLUSTER_CPU, selector).len(), 1);
    assert_eq!(
        stored_ids(&ingesters[0], CLUSTER_CPU, selector),
        stored_ids(&ingesters[1], CLUSTER_CPU, selector)
    );

    // Two killed: no quorum, and the client is told so.
    ingesters[1].kill();
    for distributor in [&distributor_1, &distributor_2] {
        let (status, body) = connect_push(distributor, None, Encoding::Proto, &cpu_push("no-quorum", 1));
        assert!((500..600).contains(&status), "{status}: {body}");
        assert!(body.contains("not stored on a quorum of replicas"), "{body}");
    }
    // Once the ring sees them dead, the answer says which are unhealthy.
    wait_until(
        Duration::from_secs(20),
        "the ring to see two unhealthy ingesters",
        || {
            let (status, body) = connect_push(&distributor_1, None, Encoding::Proto, &cpu_push("no-quorum", 1));
            assert!((500..600).contains(&status), "{status}: {body}");
            body.contains("unhealthy instances").then_some(())
        },
    );
    assert!(
        distributor_1
            .metric("flamedb_distributor_replicated_series_total")
            .unwrap()
            >= 30.0
    );
}

#[test]
fn test_a_single_binary_with_no_flags_takes_pushes_on_the_ring_and_in_metrics() {
    let node = start("single", &[]);
    let (status, body) = connect_push(&node, None, Encoding::GzipProto, &cpu_push("plain", 5));
    assert_eq!(status, 200, "{body}");
    wait_active_ingesters(&node, 1);
    assert_eq!(node.metric("flamedb_ingester_profiles_total"), Some(1.0));
    assert_eq!(stored_ids(&node, CLUSTER_CPU, r#"{service_name="plain"}"#).len(), 1);
}
