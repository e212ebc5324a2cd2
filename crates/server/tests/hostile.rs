//! Hostile input against the real binary with its default limits: one
//! request per amplification vector, in each format that can carry it.
//! Each gets its expected status (naming the limit when refused), the
//! process stays up and ready, another tenant's data stays whole, and the
//! process's peak resident memory (VmHWM, reset before each request) grows
//! by at most the documented bound over what was resident before. Deep
//! stacks are stored truncated and every query over them answers, also
//! after a kill -9 and a WAL replay.
//!
//! The table of the last run is in `docs/testing.md`; run with
//! `--no-capture` to print it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::time::Duration;

use flamedb_api::pb::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use flamedb_api::pb::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use flamedb_api::pb::opentelemetry::proto::profiles::v1development as otlp;
use flamedb_api::pb::opentelemetry::proto::resource::v1::Resource;
use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::querier::v1 as querier;
use flamedb_api::pb::types::v1::LabelPair;
use flamedb_model::gzip::gzip;
use flamedb_model::jfr::synthetic::{Event, FieldValue, recording};
use flamedb_model::now_nanos;
use flamedb_model::pprof::{Function, Label, Line, Location, Profile, Sample, StackProfileBuilder, ValueType};
use flamedb_testkit::{Flamedb, path_in, shared_dir, start_ready, wait_until};
use prost::Message;

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const PUSH: &str = "/push.v1.PusherService/Push";
const OTLP_HTTP: &str = "/v1development/profiles";
const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const PROTO: &str = "application/proto";
/// The bound on what one request may add to the process's peak resident
/// memory (docs/invariants.md): the 256 MiB request budget, with room for
/// the allocator and buffers copied while they grow.
const PEAK_GROWTH_BOUND: u64 = 512 << 20;
const ATTACKER: &str = "attacker";
const VICTIM: &str = "victim";

fn labels(service: &str) -> Vec<LabelPair> {
    vec![
        LabelPair {
            name: "__name__".into(),
            value: "process_cpu".into(),
        },
        LabelPair {
            name: "service_name".into(),
            value: service.into(),
        },
    ]
}

fn push_body(labels: Vec<LabelPair>, raw_profiles: Vec<Vec<u8>>) -> Vec<u8> {
    PushRequest {
        series: vec![RawProfileSeries {
            labels,
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
    .encode_to_vec()
}

/// A CPU profile (sample type `cpu:nanoseconds`) with `strings` after the
/// usual first three.
fn cpu_profile(strings: &[&str]) -> Profile {
    let mut string_table: Vec<String> = ["", "cpu", "nanoseconds"].map(String::from).to_vec();
    string_table.extend(strings.iter().map(|text| (*text).to_owned()));
    Profile {
        sample_type: vec![ValueType { r#type: 1, unit: 2 }],
        period_type: Some(ValueType { r#type: 1, unit: 2 }),
        period: 10_000_000,
        string_table,
        time_nanos: now_nanos(),
        ..Profile::default()
    }
}

/// [`cpu_profile`] with one function, named by `strings[0]` (string 3),
/// and location 1 of `lines` lines of it; no samples yet.
fn one_function_profile(strings: &[&str], lines: usize) -> Profile {
    Profile {
        function: vec![Function {
            id: 1,
            name: 3,
            ..Function::default()
        }],
        location: vec![Location {
            id: 1,
            line: vec![
                Line {
                    function_id: 1,
                    ..Line::default()
                };
                lines
            ],
            ..Location::default()
        }],
        ..cpu_profile(strings)
    }
}

/// A location of `lines` inlined lines of one function, with one sample
/// on it.
fn deep_lines_profile(lines: usize) -> Profile {
    Profile {
        sample: vec![Sample {
            location_id: vec![1],
            value: vec![1],
            label: vec![],
        }],
        ..one_function_profile(&["recursive"], lines)
    }
}

/// A tree-format chain `depth` nodes deep with a value at its leaf.
fn deep_tree(depth: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(depth * 4 + 4);
    // The virtual root, then the chain.
    body.extend([0, 0, 1]);
    for level in 0..depth {
        let leaf = level + 1 == depth;
        body.extend([1, b'a', u8::from(leaf), u8::from(!leaf)]);
    }
    body
}

fn otlp_request(dictionary: otlp::ProfilesDictionary, service: &str, samples: Vec<otlp::Sample>) -> Vec<u8> {
    ExportProfilesServiceRequest {
        resource_profiles: vec![otlp::ResourceProfiles {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    key_strindex: 0,
                }],
            }),
            scope_profiles: vec![otlp::ScopeProfiles {
                scope: None,
                profiles: vec![otlp::Profile {
                    sample_type: Some(otlp::ValueType {
                        type_strindex: 1,
                        unit_strindex: 2,
                    }),
                    samples,
                    time_unix_nano: u64::try_from(now_nanos()).unwrap(),
                    duration_nano: 0,
                    period_type: Some(otlp::ValueType {
                        type_strindex: 3,
                        unit_strindex: 4,
                    }),
                    period: 10_000_000,
                }],
            }],
        }],
        dictionary: Some(dictionary),
    }
    .encode_to_vec()
}

/// An OTLP dictionary of one function and one location with `lines` lines
/// of it, stack 1 on it.
fn deep_otlp_dictionary(lines: usize) -> otlp::ProfilesDictionary {
    otlp::ProfilesDictionary {
        string_table: ["", "samples", "count", "cpu", "nanoseconds", "recursive"]
            .map(String::from)
            .to_vec(),
        function_table: vec![
            otlp::Function::default(),
            otlp::Function {
                name_strindex: 5,
                ..otlp::Function::default()
            },
        ],
        location_table: vec![
            otlp::Location::default(),
            otlp::Location {
                lines: vec![
                    otlp::Line {
                        function_index: 1,
                        line: 1,
                        column: 0,
                    };
                    lines
                ],
                ..otlp::Location::default()
            },
        ],
        stack_table: vec![
            otlp::Stack::default(),
            otlp::Stack {
                location_indices: vec![1],
            },
        ],
        mapping_table: vec![otlp::Mapping::default()],
        link_table: vec![otlp::Link::default()],
        attribute_table: vec![otlp::KeyValueAndUnit::default()],
    }
}

fn one_sample() -> Vec<otlp::Sample> {
    vec![otlp::Sample {
        stack_index: 1,
        values: vec![1],
        ..otlp::Sample::default()
    }]
}

/// A speedscope file of one evented profile opening `depth` frames, one
/// inside the other.
fn nested_speedscope(depth: usize) -> Vec<u8> {
    let mut events = String::new();
    for at in 0..depth {
        let _ = write!(events, r#"{{"type":"O","at":{at},"frame":0}},"#);
    }
    for at in 0..depth {
        let comma = if at + 1 == depth { "" } else { "," };
        let _ = write!(events, r#"{{"type":"C","at":{},"frame":0}}{comma}"#, depth + at);
    }
    format!(
        r#"{{"$schema":"https://www.speedscope.app/file-format-schema.json","shared":{{"frames":[{{"name":"f"}}]}},"profiles":[{{"type":"evented","name":"p","unit":"nanoseconds","startValue":0,"endValue":{},"events":[{events}]}}]}}"#,
        2 * depth
    )
    .into_bytes()
}

fn jfr(stacks: &[&[&str]]) -> Vec<u8> {
    let runnable = || vec![("state", FieldValue::State("STATE_RUNNABLE"))];
    let events: Vec<Event> = (1..=stacks.len())
        .map(|stack| Event {
            name: "jdk.ExecutionSample",
            stack: stack as i64,
            fields: runnable(),
        })
        .collect();
    recording("itimer", 1_000_000_000, stacks, &events)
}

/// What a request sends.
struct Request {
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
}

fn push_request(body: Vec<u8>) -> Request {
    Request {
        path: PUSH.into(),
        headers: vec![("content-type", PROTO)],
        body,
    }
}

fn ingest(query: &str, body: Vec<u8>) -> Request {
    Request {
        path: format!("/ingest?{query}"),
        headers: vec![],
        body,
    }
}

/// One amplification vector: what it sends, the statuses it may get and
/// what a refusal must name.
struct Vector {
    name: &'static str,
    format: &'static str,
    request: Box<dyn Fn() -> Request>,
    expected: &'static [u16],
    names: &'static str,
}

fn vector(
    name: &'static str,
    format: &'static str,
    expected: &'static [u16],
    names: &'static str,
    request: impl Fn() -> Request + 'static,
) -> Vector {
    Vector {
        name,
        format,
        request: Box::new(request),
        expected,
        names,
    }
}

const REQUEST_LIMIT: &str = "-distributor.max-request-memory";

fn vectors() -> Vec<Vector> {
    vec![
        // Depth: 200,000 inlined frames in one location, stored truncated
        // to the 1,000 root-most.
        vector("deep stack (lines of one location)", "pprof push", &[200], "", || {
            push_request(push_body(
                labels("deep-push"),
                vec![deep_lines_profile(200_000).encode_to_vec()],
            ))
        }),
        vector(
            "deep stack (lines of one location)",
            "/ingest pprof",
            &[200],
            "",
            || {
                ingest(
                    "name=deep-ingest&format=pprof",
                    deep_lines_profile(200_000).encode_to_vec(),
                )
            },
        ),
        vector("deep stack (lines of one location)", "OTLP", &[200], "", || Request {
            path: OTLP_HTTP.into(),
            headers: vec![("content-type", "application/x-protobuf")],
            body: otlp_request(deep_otlp_dictionary(200_000), "deep-otlp", one_sample()),
        }),
        vector("deep stack", "folded", &[200], "", || {
            let mut body = "a;".repeat(500_000);
            body.push_str("a 1\n");
            ingest("name=deep-folded.cpu", body.into_bytes())
        }),
        vector("deep stack", "tree", &[200], "", || {
            ingest("name=deep-tree.cpu&format=tree", deep_tree(500_000))
        }),
        vector("deep stack", "speedscope", &[200], "", || {
            let frames = vec!["0"; 100_000].join(",");
            let body = format!(
                r#"{{"shared":{{"frames":[{{"name":"f"}}]}},"profiles":[{{"type":"sampled","name":"p","unit":"none","startValue":0,"endValue":1,"samples":[[{frames}]],"weights":[1]}}]}}"#
            );
            ingest("name=deep-speedscope.cpu&format=speedscope", body.into_bytes())
        }),
        // Every prefix of an evented stack is a stack of its own: 40,000
        // nested frames expand to 800 million.
        vector("40,000 nested frames", "speedscope", &[413], REQUEST_LIMIT, || {
            ingest(
                "name=nested-speedscope.cpu&format=speedscope",
                nested_speedscope(40_000),
            )
        }),
        vector("deep stack", "JFR", &[200], "", || {
            let frames = vec!["Deep.recurse"; 100_000];
            ingest("name=deep-jfr&format=jfr", jfr(&[&frames]))
        }),
        // Empty repeated elements: 2 bytes on the wire, tens in memory.
        vector("32M empty series", "push.v1 proto, gzip", &[413], REQUEST_LIMIT, || {
            Request {
                path: PUSH.into(),
                headers: vec![("content-type", PROTO), ("content-encoding", "gzip")],
                body: gzip(&[0x0a, 0x00].repeat(32_000_000)),
            }
        }),
        vector("20M empty series", "push.v1 JSON, gzip", &[413], REQUEST_LIMIT, || {
            Request {
                path: PUSH.into(),
                headers: vec![("content-type", "application/json"), ("content-encoding", "gzip")],
                body: gzip(format!("{{\"series\":[{}{{}}]}}", "{},".repeat(20_000_000)).as_bytes()),
            }
        }),
        vector(
            "32M empty resource profiles",
            "OTLP proto, gzip",
            &[413],
            REQUEST_LIMIT,
            || Request {
                path: OTLP_HTTP.into(),
                headers: vec![("content-type", "application/x-protobuf"), ("content-encoding", "gzip")],
                body: gzip(&[0x0a, 0x00].repeat(32_000_000)),
            },
        ),
        vector(
            "2M empty samples",
            "pprof push",
            &[400],
            "max_profile_stacktrace_samples",
            || {
                let mut raw = cpu_profile(&[]).encode_to_vec();
                raw.extend([0x12, 0x00].repeat(2_000_000));
                push_request(push_body(labels("empty-samples"), vec![gzip(&raw)]))
            },
        ),
        // One long string referenced many times.
        vector(
            "3 MB file name x 3,000 functions",
            "/ingest pprof, rbspy",
            &[200],
            "",
            || {
                let file = "f".repeat(3_000_000);
                let mut profile = cpu_profile(&["main", &file]);
                profile.function = (1..=3000)
                    .map(|id| Function {
                        id,
                        name: 3,
                        filename: 4,
                        ..Function::default()
                    })
                    .collect();
                ingest("name=a.cpu&spyName=rbspy&format=pprof", gzip(&profile.encode_to_vec()))
            },
        ),
        vector(
            "3 MB file name x 3,000 distinct functions",
            "/ingest pprof, rbspy",
            &[200],
            "",
            || {
                let file = "f".repeat(3_000_000);
                let names: Vec<String> = (0..3000).map(|n| format!("fn{n}")).collect();
                let mut strings: Vec<&str> = vec![&file];
                strings.extend(names.iter().map(String::as_str));
                let mut profile = cpu_profile(&strings);
                profile.function = (1..=3000)
                    .map(|id| Function {
                        id,
                        name: 3 + id as i64,
                        filename: 3,
                        ..Function::default()
                    })
                    .collect();
                ingest("name=b.cpu&spyName=rbspy&format=pprof", gzip(&profile.encode_to_vec()))
            },
        ),
        vector(
            "3 MB sample type name x 100,000 sample types",
            "/ingest pprof, dotnetspy",
            &[200],
            "",
            || {
                let name = format!("alloc-{}", "x".repeat(3_000_000));
                let mut profile = cpu_profile(&[&name]);
                profile.sample_type = vec![ValueType { r#type: 3, unit: 2 }; 100_000];
                ingest("name=c&spyName=dotnetspy&format=pprof", gzip(&profile.encode_to_vec()))
            },
        ),
        // Copies per series a profile splits into.
        vector(
            "16,000 label groups x a 60 KB function name",
            "pprof push",
            &[413],
            REQUEST_LIMIT,
            || {
                let name = "g".repeat(60_000);
                let values: Vec<String> = (0..16_000).map(|n| format!("v{n}")).collect();
                let mut strings: Vec<&str> = vec![&name, "k"];
                strings.extend(values.iter().map(String::as_str));
                let mut profile = one_function_profile(&strings, 1);
                profile.sample = (0..16_000)
                    .map(|n| Sample {
                        location_id: vec![1],
                        value: vec![1],
                        label: vec![Label {
                            key: 4,
                            str: 5 + n,
                            ..Label::default()
                        }],
                    })
                    .collect();
                push_request(push_body(labels("split"), vec![gzip(&profile.encode_to_vec())]))
            },
        ),
        vector(
            "16,000 label groups x a 60 KB function name",
            "OTLP",
            &[413],
            REQUEST_LIMIT,
            || {
                let mut dictionary = deep_otlp_dictionary(1);
                dictionary.string_table[5] = "g".repeat(60_000);
                dictionary.string_table.push("thread.name".to_owned());
                dictionary
                    .attribute_table
                    .extend((0..16_000).map(|n| otlp::KeyValueAndUnit {
                        key_strindex: 6,
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("t{n}"))),
                        }),
                        unit_strindex: 0,
                    }));
                let samples = (1..=16_000)
                    .map(|n| otlp::Sample {
                        stack_index: 1,
                        values: vec![1],
                        attribute_indices: vec![n],
                        ..otlp::Sample::default()
                    })
                    .collect();
                Request {
                    path: OTLP_HTTP.into(),
                    headers: vec![("content-type", "application/x-protobuf")],
                    body: otlp_request(dictionary, "groups-otlp", samples),
                }
            },
        ),
        vector(
            "35,000 profiles x a 60 KB frame name",
            "speedscope",
            &[413],
            REQUEST_LIMIT,
            || {
                let profile = r#"{"type":"sampled","name":"p","unit":"none","startValue":0,"endValue":1,"samples":[[0]],"weights":[1]}"#;
                let profiles: Vec<String> = (0..35_000)
                    .map(|n| profile.replace("\"p\"", &format!("\"p{n}\"")))
                    .collect();
                let body = format!(
                    r#"{{"shared":{{"frames":[{{"name":"{}"}}]}},"profiles":[{}]}}"#,
                    "f".repeat(60_000),
                    profiles.join(",")
                );
                ingest("name=profiles-speedscope.cpu&format=speedscope", body.into_bytes())
            },
        ),
        vector(
            "1 MB series label x 100,000 profiles",
            "push.v1 proto",
            &[413],
            REQUEST_LIMIT,
            || {
                let mut pairs = labels("labels");
                pairs.push(LabelPair {
                    name: "big".into(),
                    value: "v".repeat(1 << 20),
                });
                push_request(push_body(pairs, vec![Vec::new(); 100_000]))
            },
        ),
        vector(
            "100,000 distinct sample types of one sample",
            "pprof push",
            &[429],
            "max_global_series_per_tenant",
            || {
                let types: Vec<String> = (0..100_000).map(|n| format!("t{n}")).collect();
                let mut strings = vec!["f"];
                strings.extend(types.iter().map(String::as_str));
                let mut profile = one_function_profile(&strings, 1);
                profile.sample_type = (0..100_000).map(|n| ValueType { r#type: 4 + n, unit: 2 }).collect();
                profile.sample = vec![Sample {
                    location_id: vec![1],
                    value: vec![1; 100_000],
                    label: vec![],
                }];
                push_request(push_body(labels("types"), vec![gzip(&profile.encode_to_vec())]))
            },
        ),
        // Expansion of compact formats.
        vector(
            "3 MiB trie key x 300 children",
            "trie",
            &[422],
            "per byte of the body",
            || {
                let mut body = Vec::new();
                let name = "k".repeat(3 << 20);
                body.extend([0, 0, 1]);
                prost::encoding::encode_varint(name.len() as u64, &mut body);
                body.extend(name.as_bytes());
                body.extend([0]);
                prost::encoding::encode_varint(300, &mut body);
                for child in 0..300u32 {
                    body.extend([2, b'x', b'a' + (child % 26) as u8, 1, 0]);
                }
                ingest("name=trie.cpu&format=trie", body)
            },
        ),
        vector(
            "60 KB class name x 20,000 methods",
            "JFR",
            &[413],
            REQUEST_LIMIT,
            || {
                let class = "C".repeat(60_000);
                let frames: Vec<String> = (0..20_000).map(|n| format!("{class}.m{n}")).collect();
                let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
                ingest("name=wide-jfr&format=jfr", jfr(&[&frames]))
            },
        ),
        // Each context becomes a profile of its own, with its own copy of
        // the frame names.
        vector(
            "20,000 contexts x a 60 KB frame name",
            "JFR",
            &[413],
            REQUEST_LIMIT,
            || {
                let frame = format!("{}.m", "C".repeat(60_000));
                let events: Vec<Event> = (0..20_000)
                    .map(|context| Event {
                        name: "jdk.ExecutionSample",
                        stack: 1,
                        fields: vec![
                            ("state", FieldValue::State("STATE_RUNNABLE")),
                            ("contextId", FieldValue::Long(context)),
                        ],
                    })
                    .collect();
                ingest(
                    "name=contexts-jfr&format=jfr",
                    recording("itimer", 1_000_000_000, &[&[frame.as_str()]], &events),
                )
            },
        ),
    ]
}

/// A field of `/proc/<pid>/status` in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak resident memory (VmHWM) of `pid` to what is resident
/// now.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .unwrap_or_else(|err| panic!("cannot reset the peak memory of {pid}: {err}"));
}

fn send(node: &Flamedb, tenant: &str, request: &Request) -> (u16, String) {
    let mut headers = request.headers.clone();
    headers.push(("x-scope-orgid", tenant));
    let (status, body) = flamedb_testkit::post_within(
        &node.http,
        &request.path,
        &headers,
        request.body.clone(),
        Duration::from_secs(300),
    )
    .unwrap_or_else(|err| panic!("{}: no answer: {err}", request.path));
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The flame graph of `service` as `tenant` sees it: its total and levels.
fn flame_graph(node: &Flamedb, tenant: &str, service: &str) -> (i64, usize) {
    flame_graph_of(node, Some(tenant), service)
}

/// [`flame_graph`], for any tenant when multitenancy is off (`None`).
fn flame_graph_of(node: &Flamedb, tenant: Option<&str>, service: &str) -> (i64, usize) {
    let now = now_nanos() / 1_000_000;
    let request = querier::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: format!("{{service_name=\"{service}\"}}"),
        start: now - 3_600_000,
        end: now + 60_000,
        max_nodes: Some(0),
        ..Default::default()
    };
    let mut headers = vec![("content-type", PROTO)];
    if let Some(tenant) = tenant {
        headers.push(("x-scope-orgid", tenant));
    }
    let (status, body) = node
        .post(
            "/querier.v1.QuerierService/SelectMergeStacktraces",
            &headers,
            request.encode_to_vec(),
        )
        .unwrap();
    assert_eq!(status, 200, "{service}: {}", String::from_utf8_lossy(&body));
    let graph = querier::SelectMergeStacktracesResponse::decode(body.as_slice())
        .unwrap()
        .flamegraph
        .unwrap_or_default();
    (graph.total, graph.levels.len())
}

/// Every view of a deep service answers: flame graph, tree, DOT, pprof.
fn query_deep(node: &Flamedb, service: &str) {
    let (total, levels) = flame_graph(node, ATTACKER, service);
    assert!(total > 0, "{service} holds nothing");
    assert!(levels <= 1002, "{service}: {levels} levels, more than the depth limit");
    let now = now_nanos() / 1_000_000_000;
    for format in ["json", "dot", "pprof"] {
        let path = format!(
            "/pyroscope/render?query={CPU}{{service_name=\"{service}\"}}&from={}&until={}&format={format}",
            now - 3600,
            now + 60
        );
        let (status, body) = node.get_with(&path, &[("x-scope-orgid", ATTACKER)]).unwrap();
        assert_eq!(status, 200, "{service} {format}: {body}");
    }
}

const DEEP: [&str; 7] = [
    "deep-push",
    "deep-ingest",
    "deep-otlp",
    "deep-folded",
    "deep-tree",
    "deep-speedscope",
    "deep-jfr",
];

#[test]
fn test_hostile_requests_are_refused_or_bounded_and_harm_nothing_else() {
    let data = shared_dir();
    let data_flag = format!("-pyroscopedb.data-path={}", path_in(data.path(), "data"));
    // No rate limit: each vector meets the memory budget, not a bucket
    // drained by the vectors before it.
    let flags = vec![
        "-auth.multitenancy-enabled".to_owned(),
        "-distributor.ingestion-rate-limit-mb=0".to_owned(),
        data_flag,
    ];
    let mut node = start_ready(BINARY, "hostile", &flags, &[]);
    let mut victim = StackProfileBuilder::new("cpu", "nanoseconds")
        .period("cpu", "nanoseconds", 10_000_000)
        .time(now_nanos(), 0);
    victim.add(["main", "serve"], 100);
    let (status, body) = send(
        &node,
        VICTIM,
        &push_request(push_body(labels("victim"), vec![victim.build().encode_to_vec()])),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(flame_graph(&node, VICTIM, "victim").0, 100);

    let mut table = String::from("| vector | format | status | peak RSS growth |\n|---|---|---|---|\n");
    let mut failures = Vec::new();
    for vector in vectors() {
        let request = (vector.request)();
        let resident = status_bytes(node.pid(), "VmRSS:");
        reset_peak(node.pid());
        let (status, body) = send(&node, ATTACKER, &request);
        let peak = status_bytes(node.pid(), "VmHWM:");
        let growth = peak.saturating_sub(resident);
        let _ = writeln!(
            table,
            "| {} | {} | {status} | {} MiB |",
            vector.name,
            vector.format,
            growth >> 20
        );
        let what = format!("{} ({})", vector.name, vector.format);
        if !vector.expected.contains(&status) {
            failures.push(format!(
                "{what}: status {status}, expected {:?}: {body}",
                vector.expected
            ));
        }
        let refusal = vector.expected.iter().any(|status| *status != 200);
        assert!(
            !refusal || !vector.names.is_empty(),
            "{what}: a refusal must name its limit"
        );
        if status != 200 && !body.contains(vector.names) {
            failures.push(format!("{what}: the refusal does not name {:?}: {body}", vector.names));
        }
        if growth > PEAK_GROWTH_BOUND {
            failures.push(format!("{what}: peak memory grew by {} MiB", growth >> 20));
        }
        assert!(node.is_running(), "{what} stopped the process:\n{}", node.log());
        assert_eq!(node.get("/ready").unwrap().0, 200, "{what}: not ready");
        assert_eq!(
            flame_graph(&node, VICTIM, "victim").0,
            100,
            "{what}: the victim's data changed"
        );
    }
    println!("{table}");
    assert!(failures.is_empty(), "{}\n{table}", failures.join("\n"));

    for service in DEEP {
        query_deep(&node, service);
    }
    // The deep profiles are in the WAL: replayed after a kill -9, they are
    // still read without harm.
    node.kill();
    drop(node);
    let node = start_ready(BINARY, "hostile-restarted", &flags, &[]);
    for service in DEEP {
        query_deep(&node, service);
    }
    assert_eq!(flame_graph(&node, VICTIM, "victim").0, 100);
}

/// A flood of pushes past the in-flight limit: the surplus gets 429 at
/// once naming the limit, and `/ready` and queries keep answering.
#[test]
fn test_a_flood_of_pushes_gets_429_and_reads_go_on() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let flags = vec![
        "-distributor.instance-limits.max-inflight-push-requests=2".to_owned(),
        "-distributor.ingestion-rate-limit-mb=0".to_owned(),
    ];
    let node = start_ready(BINARY, "flood", &flags, &[]);
    // Profiles that take a while to prepare: many distinct stacks.
    let mut builder = StackProfileBuilder::new("cpu", "nanoseconds").time(now_nanos(), 0);
    let names: Vec<String> = (0..4000).map(|n| format!("frame{n}")).collect();
    for n in 0..4000 {
        builder.add([names[n].as_str(), names[(n * 7) % 4000].as_str(), "main"], 1);
    }
    let body = push_body(labels("flood"), vec![builder.build().encode_to_vec(); 8]);
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (http, body, stop, refused) = (node.http.clone(), body.clone(), stop.clone(), refused.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let headers = [("content-type", PROTO)];
                    let answer =
                        flamedb_testkit::post_within(&http, PUSH, &headers, body.clone(), Duration::from_secs(60));
                    if let Ok((status, body)) = answer {
                        if status == 429 {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        statuses.push((status, String::from_utf8_lossy(&body).into_owned()));
                    }
                }
                statuses
            })
        })
        .collect();
    // Reads answer while the flood goes on, until pushes were refused.
    wait_until(
        Duration::from_secs(120),
        "pushes refused for the in-flight limit",
        || {
            assert_eq!(node.get("/ready").unwrap().0, 200, "not ready during the flood");
            let (status, body) = node.get("/pyroscope/label-names").unwrap();
            assert_eq!(status, 200, "a query failed during the flood: {body}");
            (refused.load(Ordering::Relaxed) >= 3).then_some(())
        },
    );
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<(u16, String)> = senders.into_iter().flat_map(|sender| sender.join().unwrap()).collect();
    assert!(
        statuses.iter().any(|(status, _)| *status == 200),
        "no push went through"
    );
    for (status, body) in &statuses {
        match status {
            200 => {}
            429 => assert!(
                body.contains("-distributor.instance-limits.max-inflight-push-requests"),
                "{body}"
            ),
            _ => panic!("a push answered {status}: {body}"),
        }
    }
}

/// The ingester's API (its Push skips validation, limits and the time
/// window) is not on the public port: only on the internal listener, on
/// loopback in a single process. `/ingester/flush` takes POST only.
#[test]
fn test_internal_surfaces_are_not_on_the_public_port() {
    let node = start_ready(BINARY, "surfaces", &[], &[]);
    let internal = node.internal.clone().expect("an internal listener");
    assert!(internal.starts_with("127.0.0.1:"), "{internal}");
    let empty_push = PushRequest::default().encode_to_vec();
    let path = "/ingester.v1.IngesterService/Push";
    let (status, body) = node.post(path, &[("content-type", PROTO)], empty_push.clone()).unwrap();
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, body) = flamedb_testkit::post_proto(&internal, path, empty_push).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // The public API is not on the internal listener.
    let (status, _) = flamedb_testkit::post_proto(&internal, PUSH, Vec::new()).unwrap();
    assert_eq!(status, 404);
    assert_eq!(node.get("/ingester/flush").unwrap().0, 405);
    assert_eq!(node.post("/ingester/flush", &[], Vec::new()).unwrap().0, 200);
}

/// Data stored before depth was counted in frames (here: pushed straight
/// to the ingester API, which trusts the distributor's validation) holds a
/// stack 200,000 frames deep. Every query over it answers, before and
/// after a kill -9 and a WAL replay.
#[test]
fn test_deep_stacks_stored_unvalidated_never_poison_queries() {
    let data = shared_dir();
    let flags = vec![format!("-pyroscopedb.data-path={}", path_in(data.path(), "data"))];
    let mut node = start_ready(BINARY, "old-data", &flags, &[]);
    let push = PushRequest {
        series: vec![RawProfileSeries {
            labels: labels("old-deep"),
            samples: vec![RawSample {
                raw_profile: deep_lines_profile(200_000).encode_to_vec(),
                id: "00000000-0000-4000-8000-000000000001".into(),
            }],
            annotations: vec![],
        }],
    };
    let internal = node.internal.clone().unwrap();
    let (status, body) =
        flamedb_testkit::post_proto(&internal, "/ingester.v1.IngesterService/Push", push.encode_to_vec()).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let check = |node: &Flamedb| {
        let (total, levels) = flame_graph_of(node, None, "old-deep");
        assert_eq!((total, levels), (1, 200_001));
        let now = now_nanos() / 1_000_000_000;
        for format in ["json", "dot", "pprof"] {
            let path = format!(
                "/pyroscope/render?query={CPU}{{service_name=\"old-deep\"}}&from={}&until={}&format={format}&max-nodes=0",
                now - 3600,
                now + 60
            );
            let (status, body) = node.get(&path).unwrap();
            assert_eq!(status, 200, "{format}: {body:.200}");
        }
    };
    check(&node);
    node.kill();
    drop(node);
    let node = start_ready(BINARY, "old-data-restarted", &flags, &[]);
    check(&node);
}

const QUERY_LIMIT: &str = "-querier.max-query-memory-bytes";

/// A profile whose call tree holds one 64,000-byte name in 16,001 nodes:
/// stacks `[leaf i, big, leaf i]` and `[big, leaf i, big]` for 8,000
/// leaves. Its tree bytes (each node repeats its name) would take 1 GB;
/// its tree, with each name once, a few MB.
fn repeated_name_profile() -> Profile {
    const LEAVES: usize = 8000;
    let big = "f".repeat(64_000);
    let leaves: Vec<String> = (0..LEAVES).map(|leaf| format!("leaf{leaf}")).collect();
    let mut strings: Vec<&str> = vec![&big];
    strings.extend(leaves.iter().map(String::as_str));
    let function = |id: u64| Function {
        id,
        name: id as i64 + 2,
        ..Function::default()
    };
    let location = |id: u64| Location {
        id,
        line: vec![Line {
            function_id: id,
            ..Line::default()
        }],
        ..Location::default()
    };
    let ids = 1..=(LEAVES as u64 + 1);
    let sample = |location_id: Vec<u64>| Sample {
        location_id,
        value: vec![1],
        label: vec![],
    };
    Profile {
        function: ids.clone().map(function).collect(),
        location: ids.map(location).collect(),
        sample: (2..=(LEAVES as u64 + 1))
            .flat_map(|leaf| [sample(vec![leaf, 1, leaf]), sample(vec![1, leaf, 1])])
            .collect(),
        ..cpu_profile(&strings)
    }
}

/// SelectMergeStacktraces of `service` in `format` with every node kept.
fn select(node: &Flamedb, tenant: &str, service: &str, format: querier::ProfileFormat) -> (u16, Vec<u8>) {
    let now = now_nanos() / 1_000_000;
    let request = querier::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: format!("{{service_name=\"{service}\"}}"),
        start: now - 3_600_000,
        end: now + 60_000,
        max_nodes: Some(1_048_576),
        format: format as i32,
        ..Default::default()
    };
    node.post(
        "/querier.v1.QuerierService/SelectMergeStacktraces",
        &[("content-type", PROTO), ("x-scope-orgid", tenant)],
        request.encode_to_vec(),
    )
    .unwrap()
}

/// What queries build from stored data has a budget: tree bytes that
/// would repeat a long name past it are refused (400 naming the limit)
/// with the process's peak memory bounded, while the flame graph of the
/// same data, each name once, answers; with a small limit the merge itself
/// is refused. The process stays up and other data stays readable.
#[test]
fn test_queries_past_their_memory_budget_are_refused_and_harm_nothing_else() {
    let body = push_body(labels("repeated"), vec![repeated_name_profile().encode_to_vec()]);
    let mut victim = StackProfileBuilder::new("cpu", "nanoseconds")
        .period("cpu", "nanoseconds", 10_000_000)
        .time(now_nanos(), 0);
    victim.add(["main", "serve"], 100);
    let victim = push_body(labels("victim"), vec![victim.build().encode_to_vec()]);
    for limit in [None, Some(1 << 20)] {
        let data = shared_dir();
        let mut flags = vec![
            "-auth.multitenancy-enabled".to_owned(),
            "-distributor.ingestion-rate-limit-mb=0".to_owned(),
            format!("-pyroscopedb.data-path={}", path_in(data.path(), "data")),
        ];
        flags.extend(limit.map(|limit| format!("{QUERY_LIMIT}={limit}")));
        let mut node = start_ready(BINARY, "query-budget", &flags, &[]);
        for (tenant, body) in [(ATTACKER, &body), (VICTIM, &victim)] {
            let (status, answer) = send(&node, tenant, &push_request(body.clone()));
            assert_eq!(status, 200, "{answer}");
        }
        let resident = status_bytes(node.pid(), "VmRSS:");
        reset_peak(node.pid());
        let (status, answer) = select(&node, ATTACKER, "repeated", querier::ProfileFormat::Tree);
        let growth = status_bytes(node.pid(), "VmHWM:").saturating_sub(resident);
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status, 400, "tree bytes, limit {limit:?}: {answer:.300}");
        assert!(answer.contains(QUERY_LIMIT), "{answer:.300}");
        assert!(growth <= PEAK_GROWTH_BOUND, "peak memory grew by {} MiB", growth >> 20);
        println!(
            "tree bytes of 16,001 nodes of a 64,000-byte name, limit {limit:?}: {status}, peak RSS growth {} MiB",
            growth >> 20
        );

        let (status, answer) = select(&node, ATTACKER, "repeated", querier::ProfileFormat::Flamegraph);
        match limit {
            None => {
                assert_eq!(status, 200, "{:.300}", String::from_utf8_lossy(&answer));
                let graph = querier::SelectMergeStacktracesResponse::decode(answer.as_slice())
                    .unwrap()
                    .flamegraph
                    .unwrap_or_default();
                assert_eq!((graph.total, graph.levels.len()), (16_000, 4));
            }
            Some(_) => {
                let answer = String::from_utf8_lossy(&answer);
                assert_eq!(status, 400, "{answer:.300}");
                assert!(answer.contains(QUERY_LIMIT), "{answer:.300}");
            }
        }
        assert!(node.is_running(), "the query stopped the process:\n{}", node.log());
        assert_eq!(node.get("/ready").unwrap().0, 200);
        assert_eq!(flame_graph(&node, VICTIM, "victim").0, 100);
    }
}
