//! Bad input against the real binary, with multitenancy on: each answer
//! has the expected status and a message, memory stays bounded, and
//! nothing else is affected: another tenant's data stays whole and no
//! tenant reads another's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::querier::v1 as querier;
use flamedb_api::pb::types::v1::LabelPair;
use flamedb_model::gzip::gzip;
use flamedb_model::now_nanos;
use flamedb_model::pprof::StackProfileBuilder;
use flamedb_testkit::{Flamedb, start_ready};
use prost::Message;

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const PUSH: &str = "/push.v1.PusherService/Push";
const CPU: &str = "process_cpu:cpu:nanoseconds::";

/// A CPU profile whose one sample is the stack `depth` frames deep
/// (`main`, then `work` repeated), of value `value`.
fn profile(depth: usize, value: i64) -> Vec<u8> {
    let mut builder = StackProfileBuilder::new("cpu", "nanoseconds").time(now_nanos(), 0);
    let frames = std::iter::once("main").chain(std::iter::repeat_n("work", depth.saturating_sub(1)));
    builder.add(frames, value);
    builder.build().encode_to_vec()
}

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

fn push_body(labels: Vec<LabelPair>, raw_profile: Vec<u8>) -> Vec<u8> {
    PushRequest {
        series: vec![RawProfileSeries {
            labels,
            samples: vec![RawSample {
                raw_profile,
                id: String::new(),
            }],
            annotations: vec![],
        }],
    }
    .encode_to_vec()
}

fn push(node: &Flamedb, tenant: Option<&str>, content_type: &str, body: Vec<u8>) -> (u16, String) {
    let mut headers = vec![("content-type", content_type)];
    if let Some(tenant) = tenant {
        headers.push(("x-scope-orgid", tenant));
    }
    let (status, body) = node.post(PUSH, &headers, body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The flame graph total of `service` as `tenant` sees it.
fn total(node: &Flamedb, tenant: &str, service: &str) -> i64 {
    let now = now_nanos() / 1_000_000;
    let request = querier::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: format!("{{service_name=\"{service}\"}}"),
        start: now - 600_000,
        end: now + 1_000,
        ..Default::default()
    };
    let (status, body) = node
        .post(
            "/querier.v1.QuerierService/SelectMergeStacktraces",
            &[("content-type", "application/proto"), ("x-scope-orgid", tenant)],
            request.encode_to_vec(),
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    querier::SelectMergeStacktracesResponse::decode(body.as_slice())
        .unwrap()
        .flamegraph
        .map_or(0, |graph| graph.total)
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn test_bad_input_gets_its_status_and_harms_nothing_else() {
    let node = start_ready(BINARY, "single", &["-auth.multitenancy-enabled".to_owned()], &[]);
    let proto = "application/proto";
    let (status, body) = push(&node, Some("good"), proto, push_body(labels("app"), profile(3, 100)));
    assert_eq!(status, 200, "{body}");

    let bad_bodies: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        // Not a pprof at all, or cut short.
        (
            "random bytes",
            push_body(labels("x"), vec![0xff, 0x13, 0x37, 0x00, 0x99]),
            400,
            "cannot be decoded",
        ),
        (
            "truncated pprof",
            push_body(labels("x"), profile(3, 1)[..20].to_vec()),
            400,
            "cannot be decoded",
        ),
        // 64 MiB of zeros compress to 64 KiB; decompression stops at the
        // 4 MiB profile limit.
        (
            "gzip bomb",
            push_body(labels("x"), gzip(&vec![0u8; 64 << 20])),
            400,
            "max_profile_size_bytes",
        ),
        (
            "label name too long",
            push_body(
                {
                    let mut pairs = labels("x");
                    pairs.push(LabelPair {
                        name: "n".repeat(1025),
                        value: "v".into(),
                    });
                    pairs
                },
                profile(3, 1),
            ),
            400,
            "max_label_name_length",
        ),
        (
            "label value too long",
            push_body(
                {
                    let mut pairs = labels("x");
                    pairs.push(LabelPair {
                        name: "n".into(),
                        value: "v".repeat(2049),
                    });
                    pairs
                },
                profile(3, 1),
            ),
            400,
            "max_label_value_length",
        ),
        (
            "10,000 labels",
            push_body(
                {
                    let mut pairs = labels("x");
                    pairs.extend((0..10_000).map(|i| LabelPair {
                        name: format!("label_{i}"),
                        value: "v".into(),
                    }));
                    pairs
                },
                profile(3, 1),
            ),
            400,
            "max_label_names_per_series",
        ),
        (
            "a push with nothing in it",
            PushRequest::default().encode_to_vec(),
            400,
            "no profiles received",
        ),
        (
            "not a protobuf",
            b"\xff\xff\xff\xff".to_vec(),
            400,
            "cannot decode protobuf request",
        ),
    ];
    for (what, body, expected, reason) in bad_bodies {
        let (status, answer) = push(&node, Some("bad"), proto, body);
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(answer.contains(reason), "{what}: {answer}");
    }
    // Decompression stopped at the limit: memory stayed small.
    assert!(
        rss_bytes(node.pid()) < 512 << 20,
        "RSS {} bytes after a gzip bomb",
        rss_bytes(node.pid())
    );

    // Invalid UTF-8 in a label value (raw protobuf bytes).
    let mut invalid = push_body(labels("utf8"), profile(3, 1));
    let at = invalid.windows(4).position(|w| w == b"utf8").unwrap();
    invalid[at] = 0xff;
    let (status, answer) = push(&node, Some("bad"), proto, invalid);
    assert_eq!(status, 400, "{answer}");

    // Deep stacks are cut to 1,000 frames, not refused.
    let (status, answer) = push(
        &node,
        Some("bad"),
        proto,
        push_body(labels("deep"), profile(100_000, 5)),
    );
    assert_eq!(status, 200, "{answer}");
    // Negative values are dropped; a profile of only those stores nothing.
    let (status, answer) = push(&node, Some("bad"), proto, push_body(labels("negative"), profile(3, -5)));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(total(&node, "bad", "negative"), 0);

    // Wrong JSON, wrong content type, no or invalid tenant.
    let (status, answer) = push(&node, Some("bad"), "application/json", b"{\"series\": 5}".to_vec());
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = push(&node, Some("bad"), "text/csv", b"a,b".to_vec());
    assert_eq!(status, 415, "{answer}");
    let (status, answer) = push(&node, None, proto, push_body(labels("app"), profile(3, 1)));
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = push(&node, Some("a/b"), proto, push_body(labels("app"), profile(3, 1)));
    assert!([400, 401].contains(&status), "{status}: {answer}");

    // The good tenant's data is whole; no tenant sees another's.
    let (status, body) = push(&node, Some("good"), proto, push_body(labels("app"), profile(3, 23)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(total(&node, "good", "app"), 123);
    assert_eq!(total(&node, "other", "app"), 0);
    assert_eq!(total(&node, "bad", "app"), 0);
    assert_eq!(node.get("/ready").unwrap().0, 200);
}
