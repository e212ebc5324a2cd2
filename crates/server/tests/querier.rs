//! The querier in the real binary: `querier.v1` answers computed from
//! profiles pushed through the distributor, in one process and in an RF=3
//! cluster, where every profile has three copies and is counted once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::querier::v1 as querier;
use flamedb_api::pb::types::v1 as types;
use flamedb_model::pprof::StackProfileBuilder;
use flamedb_model::{Tree, now_nanos};
use flamedb_testkit::{Flamedb, cluster_flags, start_ingesters, start_ready, wait_active_ingesters, wait_until};
use prost::Message;

const BINARY: &str = env!("CARGO_BIN_EXE_flamedb");
const READY: Duration = Duration::from_secs(60);
const CPU: &str = "process_cpu:cpu:nanoseconds:cpu:nanoseconds";
const SERVICE: &str = "/querier.v1.QuerierService";

fn start(name: &str, args: &[&str]) -> Flamedb {
    let node = Flamedb::start(BINARY, name, args);
    node.wait_ready(READY);
    node
}

fn now_ms() -> i64 {
    now_nanos() / 1_000_000
}

/// A CPU profile at `time_ms`: `main;work` worth `work` and `main;idle`
/// worth `idle`.
fn cpu_profile(time_ms: i64, work: i64, idle: i64) -> Vec<u8> {
    let mut builder = StackProfileBuilder::new("cpu", "nanoseconds")
        .period("cpu", "nanoseconds", 10_000_000)
        .time(time_ms * 1_000_000, 0);
    builder.add(["main", "work"], work);
    builder.add(["main", "idle"], idle);
    builder.build().encode_to_vec()
}

fn push(node: &Flamedb, service: &str, raw: Vec<u8>) {
    let request = PushRequest {
        series: vec![RawProfileSeries {
            labels: vec![
                types::LabelPair {
                    name: "__name__".into(),
                    value: "process_cpu".into(),
                },
                types::LabelPair {
                    name: "service_name".into(),
                    value: service.into(),
                },
            ],
            samples: vec![RawSample {
                raw_profile: raw,
                id: String::new(),
            }],
            annotations: vec![],
        }],
    };
    let (status, body) = node
        .post_proto("/push.v1.PusherService/Push", request.encode_to_vec())
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

fn call<Req: Message, Resp: Message + Default>(
    node: &Flamedb,
    method: &str,
    request: &Req,
) -> Result<Resp, (u16, String)> {
    let (status, body) = node
        .post_proto(&format!("{SERVICE}/{method}"), request.encode_to_vec())
        .unwrap();
    if status != 200 {
        return Err((status, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(Resp::decode(body.as_slice()).unwrap())
}

fn flame_graph(node: &Flamedb, selector: &str, start: i64, end: i64) -> querier::FlameGraph {
    let request = querier::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: selector.into(),
        start,
        end,
        ..Default::default()
    };
    let response: querier::SelectMergeStacktracesResponse = call(node, "SelectMergeStacktraces", &request).unwrap();
    response.flamegraph.unwrap()
}

fn tree(node: &Flamedb, selector: &str, start: i64, end: i64) -> Tree {
    let request = querier::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: selector.into(),
        start,
        end,
        format: querier::ProfileFormat::Tree as i32,
        ..Default::default()
    };
    let response: querier::SelectMergeStacktracesResponse = call(node, "SelectMergeStacktraces", &request).unwrap();
    Tree::decode(&response.tree).unwrap()
}

/// Series name → (timestamp → value).
fn time_series(node: &Flamedb, start: i64, end: i64, step_s: f64) -> BTreeMap<String, BTreeMap<i64, f64>> {
    let request = querier::SelectSeriesRequest {
        profile_type_id: CPU.into(),
        label_selector: "{}".into(),
        start,
        end,
        group_by: vec!["service_name".into()],
        step: step_s,
        ..Default::default()
    };
    let response: querier::SelectSeriesResponse = call(node, "SelectSeries", &request).unwrap();
    response
        .series
        .into_iter()
        .map(|series| {
            let name = series
                .labels
                .iter()
                .find(|l| l.name == "service_name")
                .unwrap()
                .value
                .clone();
            (name, series.points.iter().map(|p| (p.timestamp, p.value)).collect())
        })
        .collect()
}

/// What was pushed, kept by the test: (service, time ms, work, idle).
type Pushed = Vec<(String, i64, i64, i64)>;

fn push_known(node: &Flamedb, base_ms: i64) -> Pushed {
    let mut pushed = Vec::new();
    for i in 0..12 {
        let service = if i % 3 == 0 { "checkout" } else { "search" };
        let time = base_ms + i * 10_000;
        let (work, idle) = (100 + i, 7 * i + 1);
        push(node, service, cpu_profile(time, work, idle));
        pushed.push((service.to_owned(), time, work, idle));
    }
    pushed
}

/// Checks every select answer against sums computed from `pushed`.
fn check_answers(node: &Flamedb, pushed: &Pushed, start: i64, end: i64) {
    let total: i64 = pushed.iter().map(|(_, _, w, i)| w + i).sum();
    let graph = flame_graph(node, "{}", start, end);
    assert_eq!(graph.names[0], "total");
    assert_eq!(graph.total, total);
    assert_eq!(graph.levels[0].values, vec![0, total, 0, 0]);

    let checkout: i64 = pushed
        .iter()
        .filter(|p| p.0 == "checkout")
        .map(|(_, _, w, i)| w + i)
        .sum();
    assert_eq!(
        flame_graph(node, r#"{service_name="checkout"}"#, start, end).total,
        checkout
    );

    let merged = tree(node, "{}", start, end);
    let work: i64 = pushed.iter().map(|p| p.2).sum();
    let idle: i64 = pushed.iter().map(|p| p.3).sum();
    let mut stacks = merged.stacks();
    stacks.sort();
    assert_eq!(
        stacks,
        vec![
            (vec!["main".to_owned(), "idle".to_owned()], idle),
            (vec!["main".to_owned(), "work".to_owned()], work),
        ]
    );

    // One step per 30 s: each point sums the profiles of (t - 30 s, t].
    let step_ms = 30_000;
    let series = time_series(node, start, end, 30.0);
    let mut expected: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for (service, time, work, idle) in pushed {
        let bucket = (time - start + step_ms - 1).div_euclid(step_ms);
        *expected
            .entry(service.clone())
            .or_default()
            .entry(start + bucket * step_ms)
            .or_default() += (work + idle) as f64;
    }
    assert_eq!(series, expected);
}

#[test]
fn test_single_binary_answers_every_method_from_what_was_pushed() {
    let node = start("single", &[]);
    let base = now_ms() - 600_000;
    let pushed = push_known(&node, base);
    let (start, end) = (base - 1_000, now_ms() + 1_000);
    check_answers(&node, &pushed, start, end);

    let types: querier::ProfileTypesResponse =
        call(&node, "ProfileTypes", &querier::ProfileTypesRequest { start, end }).unwrap();
    let ids: Vec<&str> = types.profile_types.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [CPU]);
    let names: types::LabelNamesResponse = call(&node, "LabelNames", &types::LabelNamesRequest::default()).unwrap();
    assert!(names.names.contains(&"service_name".to_owned()), "{:?}", names.names);
    let values: types::LabelValuesResponse = call(
        &node,
        "LabelValues",
        &types::LabelValuesRequest {
            name: "service_name".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(values.names, ["checkout", "search"]);
    let series: querier::SeriesResponse = call(
        &node,
        "Series",
        &querier::SeriesRequest {
            matchers: vec![r#"{service_name="search"}"#.into()],
            label_names: vec!["service_name".into(), "__profile_type__".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(series.labels_set.len(), 1);
    let stats: types::GetProfileStatsResponse =
        call(&node, "GetProfileStats", &types::GetProfileStatsRequest {}).unwrap();
    assert!(stats.data_ingested);
    assert_eq!(stats.oldest_profile_time, base);

    check_pprof_diff_and_legacy_http(&node, &pushed, start, end);

    // Connect JSON, as the Pyroscope UI sends it.
    let (status, body) = node
        .post(
            &format!("{SERVICE}/LabelValues"),
            &[("content-type", "application/json")],
            br#"{"name":"service_name"}"#.to_vec(),
        )
        .unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["names"], serde_json::json!(["checkout", "search"]));

    // A small node limit folds into "other" and keeps the total.
    let request = querier::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: "{}".into(),
        start,
        end,
        max_nodes: Some(2),
        ..Default::default()
    };
    let folded: querier::SelectMergeStacktracesResponse = call(&node, "SelectMergeStacktraces", &request).unwrap();
    let folded = folded.flamegraph.unwrap();
    assert!(folded.names.contains(&"other".to_owned()), "{:?}", folded.names);
    assert_eq!(folded.total, flame_graph(&node, "{}", start, end).total);

    // Bad queries: 400 with the reason.
    let bad = |request: querier::SelectMergeStacktracesRequest, reason: &str| {
        let (status, body) =
            call::<_, querier::SelectMergeStacktracesResponse>(&node, "SelectMergeStacktraces", &request).unwrap_err();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(reason), "{body}");
    };
    let good = querier::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: "{}".into(),
        start,
        end,
        ..Default::default()
    };
    bad(
        querier::SelectMergeStacktracesRequest {
            start: 0,
            ..good.clone()
        },
        "missing time range",
    );
    bad(
        querier::SelectMergeStacktracesRequest {
            start: end - 31 * 24 * 3_600_000,
            ..good.clone()
        },
        "max_query_length",
    );
    bad(
        querier::SelectMergeStacktracesRequest {
            label_selector: "{service_name=}".into(),
            ..good.clone()
        },
        "label selector",
    );
    bad(
        querier::SelectMergeStacktracesRequest {
            max_nodes: Some(2_000_000),
            ..good.clone()
        },
        "max_flamegraph_nodes_max",
    );
    bad(
        querier::SelectMergeStacktracesRequest {
            profile_type_id: "cpu".into(),
            ..good
        },
        "profile",
    );
}

/// SelectMergeProfile, Diff and the legacy HTTP API against `pushed`.
fn check_pprof_diff_and_legacy_http(node: &Flamedb, pushed: &Pushed, start: i64, end: i64) {
    let total: i64 = pushed.iter().map(|(_, _, w, i)| w + i).sum();
    let checkout: i64 = pushed
        .iter()
        .filter(|p| p.0 == "checkout")
        .map(|(_, _, w, i)| w + i)
        .sum();

    // A pprof, as Grafana and Profiles Drilldown fetch it.
    let request = querier::SelectMergeProfileRequest {
        profile_type_id: CPU.into(),
        label_selector: "{}".into(),
        start,
        end,
        ..Default::default()
    };
    let (status, body) = node
        .post_proto(&format!("{SERVICE}/SelectMergeProfile"), request.encode_to_vec())
        .unwrap();
    assert_eq!(status, 200);
    let profile = flamedb_model::pprof::decode(&body, 0).unwrap();
    assert_eq!(profile.sample.iter().map(|s| s.value[0]).sum::<i64>(), total);
    assert_eq!(
        flamedb_model::pprof::string_at(&profile, profile.sample_type[0].r#type),
        "cpu"
    );
    assert_eq!(profile.function.len(), 3, "one function per name");

    // Diff: checkout on the left, everything on the right.
    let side = |selector: &str| querier::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: selector.into(),
        start,
        end,
        ..Default::default()
    };
    let diff: querier::DiffResponse = call(
        node,
        "Diff",
        &querier::DiffRequest {
            left: Some(side(r#"{service_name="checkout"}"#)),
            right: Some(side("{}")),
        },
    )
    .unwrap();
    let diff = diff.flamegraph.unwrap();
    assert_eq!((diff.left_ticks, diff.right_ticks), (checkout, total));
    assert_eq!(diff.levels[0].values, vec![0, checkout, 0, 0, total, 0, 0]);

    // /pyroscope/render as Profiles Drilldown calls it (ms times).
    let query = format!("{CPU}%7Bservice_name%3D%22checkout%22%7D");
    let render = node.get_json(&format!(
        "/pyroscope/render?query={query}&from={start}&until={end}&aggregation=sum&max-nodes=100&groupBy=service_name"
    ));
    assert_eq!(render["flamebearer"]["numTicks"], checkout);
    assert_eq!(render["flamebearer"]["names"][0], "total");
    assert_eq!(render["metadata"]["units"], "samples");
    let timeline_sum: i64 = render["timeline"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(timeline_sum, checkout);
    assert!(render["groups"]["checkout"].is_object(), "{render}");
    let (status, body) = node.get("/pyroscope/render?query=%7B%7D").unwrap();
    assert_eq!(status, 400, "{body}");
    // format=dot: the call graph, as Profiles Drilldown asks for it.
    let (status, dot) = node
        .get(&format!(
            "/pyroscope/render?query={query}&from={start}&until={end}&format=dot&max-nodes=10"
        ))
        .unwrap();
    assert_eq!(status, 200, "{dot}");
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(
        dot.contains("main") && dot.contains("work") && dot.contains("->"),
        "{dot}"
    );

    let diff = node.get_json(&format!(
        "/pyroscope/render-diff?leftQuery={query}&leftFrom={start}&leftUntil={end}&rightQuery={CPU}&rightFrom={start}&rightUntil={end}"
    ));
    assert_eq!(
        (diff["leftTicks"].as_i64(), diff["rightTicks"].as_i64()),
        (Some(checkout), Some(total))
    );
    assert_eq!(diff["metadata"]["format"], "double");

    assert_eq!(
        node.get_json("/pyroscope/label-values?label=__name__"),
        serde_json::json!([CPU])
    );
    assert_eq!(
        node.get_json("/pyroscope/label-values?label=service_name"),
        serde_json::json!(["checkout", "search"])
    );
    let names = node.get_json("/pyroscope/label-names");
    assert!(
        names.as_array().unwrap().contains(&serde_json::json!("service_name")),
        "{names}"
    );
}

/// The real profiles of `../shared/testdata/pprof` that push as 200.
const REAL_PROFILES: &[(&str, &str)] = &[
    ("cpu.pb.gz", "process_cpu"),
    ("go.cpu.labels.pprof", "process_cpu"),
    ("cpu-js.pb.gz", "wall"),
    ("heap.pb.gz", "memory"),
    ("nodejs-wall.pb.gz", "wall"),
    ("req_3.pprof", "block"),
    ("profile_java", "process_cpu"),
    ("profile_python", "process_cpu"),
    ("profile_rust", "process_cpu"),
];

/// Pushes each real profile (stamped now) as its own service and returns,
/// per (service, profile type), the total computed here from the pprof:
/// samples with a negative value are dropped, as normalization does.
fn push_real_profiles(node: &Flamedb) -> Option<BTreeMap<(String, String), i64>> {
    let dir = flamedb_testkit::testdata("pprof")?;
    let mut expected = BTreeMap::new();
    for (file, name) in REAL_PROFILES {
        let raw = std::fs::read(dir.join(file)).unwrap();
        let mut profile = flamedb_model::pprof::decode(&raw, 0).unwrap();
        profile.time_nanos = now_nanos() - 5_000_000_000;
        let service = format!("real-{}", file.replace('.', "-"));
        let string = |index: i64| profile.string_table[index as usize].clone();
        let period = profile
            .period_type
            .as_ref()
            .map_or((String::new(), String::new()), |t| (string(t.r#type), string(t.unit)));
        for (index, sample_type) in profile.sample_type.iter().enumerate() {
            let id = format!(
                "{name}:{}:{}:{}:{}",
                string(sample_type.r#type),
                string(sample_type.unit),
                period.0,
                period.1
            );
            let total: i64 = profile
                .sample
                .iter()
                .filter(|sample| sample.value.iter().all(|v| *v >= 0))
                .map(|sample| sample.value[index])
                .sum();
            if total > 0 {
                expected.insert((service.clone(), id), total);
            }
        }
        let request = PushRequest {
            series: vec![RawProfileSeries {
                labels: [
                    ("__name__", *name),
                    ("service_name", service.as_str()),
                    ("__delta__", "false"),
                ]
                .iter()
                .map(|(name, value)| types::LabelPair {
                    name: (*name).into(),
                    value: (*value).into(),
                })
                .collect(),
                samples: vec![RawSample {
                    raw_profile: profile.encode_to_vec(),
                    id: String::new(),
                }],
                annotations: vec![],
            }],
        };
        let (status, body) = node
            .post_proto("/push.v1.PusherService/Push", request.encode_to_vec())
            .unwrap();
        assert_eq!(status, 200, "{file}: {}", String::from_utf8_lossy(&body));
    }
    Some(expected)
}

/// Every real profile's totals through SelectMergeStacktraces,
/// SelectMergeProfile and SelectSeries, against `expected`.
fn check_real_totals(node: &Flamedb, expected: &BTreeMap<(String, String), i64>) {
    let (start, end) = (now_ms() - 60_000, now_ms() + 1_000);
    for ((service, profile_type), total) in expected {
        let selector = format!("{{service_name=\"{service}\"}}");
        let request = querier::SelectMergeStacktracesRequest {
            profile_type_id: profile_type.clone(),
            label_selector: selector.clone(),
            start,
            end,
            ..Default::default()
        };
        let graph: querier::SelectMergeStacktracesResponse = call(node, "SelectMergeStacktraces", &request).unwrap();
        assert_eq!(graph.flamegraph.unwrap().total, *total, "{service} {profile_type}");

        let request = querier::SelectMergeProfileRequest {
            profile_type_id: profile_type.clone(),
            label_selector: selector.clone(),
            start,
            end,
            ..Default::default()
        };
        let profile: flamedb_model::pprof::Profile = call(node, "SelectMergeProfile", &request).unwrap();
        let pprof_total: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
        assert_eq!(pprof_total, *total, "pprof of {service} {profile_type}");

        let request = querier::SelectSeriesRequest {
            profile_type_id: profile_type.clone(),
            label_selector: selector,
            start,
            end,
            step: 15.0,
            ..Default::default()
        };
        let series: querier::SelectSeriesResponse = call(node, "SelectSeries", &request).unwrap();
        let series_total: f64 = series.series.iter().flat_map(|s| &s.points).map(|p| p.value).sum();
        assert_eq!(series_total, *total as f64, "series of {service} {profile_type}");
    }
}

#[test]
fn test_testdata_profile_totals_match_the_pushed_pprof() {
    let node = start("single", &[]);
    let Some(expected) = push_real_profiles(&node) else {
        return;
    };
    assert!(expected.len() >= 15, "{expected:?}");
    check_real_totals(&node, &expected);
}

#[test]
fn test_rf3_cluster_counts_every_profile_once_and_tolerates_one_ingester_down() {
    let flags = cluster_flags(&format!("querier-test-{}", std::process::id()));
    let front = start_ready(
        BINARY,
        "distributor-querier",
        &flags,
        &["-target=distributor,querier".into()],
    );
    let mut ingesters = start_ingesters(BINARY, &front, 3, &flags, &[]);
    let base_ms = now_ms() - 600_000;
    let pushed = push_known(&front, base_ms);
    let (start, end) = (base_ms - 1_000, now_ms() + 1_000);
    // A push is answered at 2 of 3 copies: wait for the third, then every
    // answer must count each profile once, not three times.
    let total: i64 = pushed.iter().map(|(_, _, w, i)| w + i).sum();
    wait_until(Duration::from_secs(10), "all copies", || {
        (ingesters
            .iter()
            .all(|node| node.metric("flamedb_ingester_profiles_total") == Some(12.0)))
        .then_some(())
    });
    assert_eq!(flame_graph(&front, "{}", start, end).total, total);
    check_answers(&front, &pushed, start, end);

    // One ingester down: every profile still has a copy; same answers.
    ingesters[0].kill();
    check_answers(&front, &pushed, start, end);

    // The real profiles, written to the two left and read back whole.
    if let Some(expected) = push_real_profiles(&front) {
        wait_until(Duration::from_secs(10), "both copies", || {
            let applied: Vec<Option<f64>> = ingesters[1..]
                .iter()
                .map(|node| node.metric("flamedb_ingester_profiles_total"))
                .collect();
            (applied[0].is_some() && applied[0] == applied[1]).then_some(())
        });
        check_real_totals(&front, &expected);
    }

    // Two down: the answer would be partial, so it is an error.
    ingesters[1].kill();
    assert_partial_answer_refused(&front, start, end);
}

#[test]
fn test_zone_aware_reads_survive_a_whole_zone_down() {
    let mut flags = cluster_flags(&format!("querier-zones-{}", std::process::id()));
    flags.push("-distributor.zone-awareness-enabled=true".into());
    let front = start_ready(
        BINARY,
        "distributor-querier",
        &flags,
        &["-target=distributor,querier".into()],
    );
    let join = format!("-memberlist.join={}", front.gossip.clone().unwrap());
    let mut ingesters: Vec<Flamedb> = [
        ("ingester-a1", "zone-a"),
        ("ingester-a2", "zone-a"),
        ("ingester-b", "zone-b"),
        ("ingester-c", "zone-c"),
    ]
    .iter()
    .map(|(id, zone)| {
        let args = [
            "-target=ingester".to_owned(),
            format!("-ingester.lifecycler.ID={id}"),
            format!("-ingester.availability-zone={zone}"),
            join.clone(),
        ];
        start_ready(BINARY, id, &flags, &args)
    })
    .collect();
    wait_active_ingesters(&front, 4);
    let base_ms = now_ms() - 600_000;
    let pushed = push_known(&front, base_ms);
    let (start, end) = (base_ms - 1_000, now_ms() + 1_000);
    // One copy per zone: 12 profiles, 36 copies.
    wait_until(Duration::from_secs(10), "all copies", || {
        let copies: f64 = ingesters
            .iter()
            .map(|node| node.metric("flamedb_ingester_profiles_total").unwrap_or(0.0))
            .sum();
        (copies == 36.0).then_some(())
    });
    check_answers(&front, &pushed, start, end);

    // Zone a down whole, before the ring notices: two calls fail, but in
    // one zone, and zones b and c hold a copy of every profile.
    ingesters[0].kill();
    ingesters[1].kill();
    check_answers(&front, &pushed, start, end);

    // A second zone down: the answer would be partial, so it is an error.
    ingesters[2].kill();
    assert_partial_answer_refused(&front, start, end);
}

/// A flame graph over `start..end` fails with 503 naming the failure: the
/// ingesters that answer do not hold every profile.
fn assert_partial_answer_refused(node: &Flamedb, start: i64, end: i64) {
    let request = querier::SelectMergeStacktracesRequest {
        profile_type_id: CPU.into(),
        label_selector: "{}".into(),
        start,
        end,
        ..Default::default()
    };
    let (status, body) =
        call::<_, querier::SelectMergeStacktracesResponse>(node, "SelectMergeStacktraces", &request).unwrap_err();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("ingesters failed") || body.contains("unhealthy"),
        "{body}"
    );
}

/// A CPU profile whose samples carry span IDs: main;work in span a1 (30),
/// main;idle in span b2 (50), main;gc in none (20).
fn span_profile(time_ms: i64) -> Vec<u8> {
    let mut builder = StackProfileBuilder::new("cpu", "nanoseconds")
        .period("cpu", "nanoseconds", 10_000_000)
        .time(time_ms * 1_000_000, 0);
    builder.add(["main", "work"], 30);
    builder.add(["main", "idle"], 50);
    builder.add(["main", "gc"], 20);
    let mut profile = builder.build();
    let key = profile.string_table.len() as i64;
    profile
        .string_table
        .extend(["span_id", "00000000000000a1", "00000000000000b2"].map(String::from));
    assert_eq!(profile.sample.len(), 3);
    for (sample, span) in profile.sample.iter_mut().zip([key + 1, key + 2]) {
        sample.label.push(flamedb_model::pprof::Label {
            key,
            str: span,
            ..Default::default()
        });
    }
    profile.encode_to_vec()
}

#[test]
fn test_span_selectors_merge_only_the_samples_of_those_spans() {
    let dir = flamedb_testkit::shared_dir();
    let data = format!("-pyroscopedb.data-path={}", dir.path().join("data").display());
    let node = start_ready(BINARY, "single", &[data], &[]);
    let time = now_ms() - 60_000;
    push(&node, "traced", span_profile(time));
    let (start, end) = (time - 1_000, now_ms() + 1_000);
    let span_total = |spans: &[&str]| -> Result<i64, (u16, String)> {
        let request = querier::SelectMergeSpanProfileRequest {
            profile_type_id: CPU.into(),
            label_selector: r#"{service_name="traced"}"#.into(),
            span_selector: spans.iter().map(ToString::to_string).collect(),
            start,
            end,
            ..Default::default()
        };
        let response: querier::SelectMergeSpanProfileResponse = call(&node, "SelectMergeSpanProfile", &request)?;
        Ok(response.flamegraph.unwrap_or_default().total)
    };
    let stacktraces_total = |spans: &[&str]| -> i64 {
        let request = querier::SelectMergeStacktracesRequest {
            profile_type_id: CPU.into(),
            label_selector: r#"{service_name="traced"}"#.into(),
            span_selector: spans.iter().map(ToString::to_string).collect(),
            start,
            end,
            ..Default::default()
        };
        let response: querier::SelectMergeStacktracesResponse =
            call(&node, "SelectMergeStacktraces", &request).unwrap();
        response.flamegraph.unwrap().total
    };
    let check = || {
        assert_eq!(span_total(&["00000000000000a1"]), Ok(30));
        assert_eq!(span_total(&["a1", "b2"]), Ok(80));
        assert_eq!(span_total(&["c3"]), Ok(0));
        assert_eq!(span_total(&[]), Ok(0));
        assert_eq!(stacktraces_total(&["b2"]), 50);
        assert_eq!(stacktraces_total(&[]), 100);
    };
    check();
    for bad in ["not-a-span", "+a1", "00000000000000a1f"] {
        let (status, body) = span_total(&[bad]).unwrap_err();
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("span_selector"), "{body}");
    }
    // The same from the block the head is flushed into.
    let (status, _) = node.post("/ingester/flush", &[], Vec::new()).unwrap();
    assert_eq!(status, 200);
    assert!(std::fs::read_dir(dir.path().join("data/blocks")).is_ok_and(|mut entries| entries.next().is_some()));
    check();
}

/// Flushes `node`'s heads to blocks and waits until they are uploaded.
fn flush_and_upload(node: &Flamedb) {
    let (status, body) = node.post("/ingester/flush", &[], Vec::new()).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    wait_until(Duration::from_secs(30), "the blocks to be uploaded", || {
        let shipped = node.metric("flamedb_ingester_shipped_blocks_total").unwrap_or(0.0);
        let waiting = node.metric("flamedb_ingester_blocks_not_uploaded").unwrap_or(1.0);
        (shipped >= 1.0 && waiting == 0.0).then_some(())
    });
}

#[test]
fn test_older_ranges_are_read_from_object_storage() {
    let shared = flamedb_testkit::shared_dir();
    let bucket = format!(
        "-storage.filesystem.dir={}",
        flamedb_testkit::path_in(shared.path(), "bucket")
    );
    let base = now_ms() - 30 * 60_000;
    let pushed = {
        let writer = start("writer", &[&bucket]);
        let pushed = push_known(&writer, base);
        flush_and_upload(&writer);
        pushed
    };
    // A new process with empty ingester data: only the bucket has them.
    let reader = start("reader", &[&bucket, "-querier.query-store-after=10m"]);
    check_answers(&reader, &pushed, base - 1_000, base + 200_000);
    // A range reaching into the ingesters' time reads both.
    check_answers(&reader, &pushed, base - 1_000, now_ms());
    // Labels, series and profile types of old ranges come from the blocks.
    let (start, end) = (base - 1_000, base + 200_000);
    let types: querier::ProfileTypesResponse =
        call(&reader, "ProfileTypes", &querier::ProfileTypesRequest { start, end }).unwrap();
    assert_eq!(types.profile_types.len(), 1);
    assert_eq!(types.profile_types[0].id, CPU);
    let values: types::LabelValuesResponse = call(
        &reader,
        "LabelValues",
        &types::LabelValuesRequest {
            name: "service_name".into(),
            matchers: vec![],
            start,
            end,
        },
    )
    .unwrap();
    assert_eq!(values.names, ["checkout", "search"]);
    let series: querier::SeriesResponse = call(
        &reader,
        "Series",
        &querier::SeriesRequest {
            matchers: vec![r#"{service_name="checkout"}"#.into()],
            label_names: vec!["service_name".into()],
            start,
            end,
        },
    )
    .unwrap();
    assert_eq!(series.labels_set.len(), 1);
    // The stored blocks count in the stats.
    let stats: types::GetProfileStatsResponse =
        call(&reader, "GetProfileStats", &types::GetProfileStatsRequest {}).unwrap();
    assert!(stats.data_ingested);
    assert_eq!(stats.oldest_profile_time, base);
    // Without a range: the ingesters only, which hold nothing here.
    let names: types::LabelNamesResponse = call(&reader, "LabelNames", &types::LabelNamesRequest::default()).unwrap();
    assert!(names.names.is_empty(), "{:?}", names.names);
    assert!(
        std::fs::read_dir(reader.workdir().join("data/querier-cache/anonymous"))
            .unwrap()
            .count()
            >= 1,
        "the block is cached"
    );
}

/// The complete blocks of `tenant` in a filesystem bucket: (level,
/// profiles) of each, and how many carry a deletion mark.
fn bucket_blocks(bucket: &std::path::Path, tenant: &str) -> (Vec<(u64, u64)>, usize) {
    let mut blocks = Vec::new();
    let marked = std::fs::read_dir(bucket.join(tenant).join("markers")).map_or(0, |marks| marks.count());
    for entry in std::fs::read_dir(bucket.join(tenant).join("blocks")).unwrap().flatten() {
        if let Ok(meta) = std::fs::read(entry.path().join("meta.json")) {
            let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
            blocks.push((
                meta["compaction"]["level"].as_u64().unwrap(),
                meta["stats"]["numProfiles"].as_u64().unwrap(),
            ));
        }
    }
    (blocks, marked)
}

#[test]
fn test_blocks_of_one_window_are_compacted_into_one_that_answers_the_same() {
    let shared = flamedb_testkit::shared_dir();
    let bucket_dir = shared.path().join("bucket");
    let bucket = format!("-storage.filesystem.dir={}", bucket_dir.display());
    // Two flushes of one hour-long window, three hours ago: two blocks.
    let hour = 3_600_000;
    let base = (now_ms() - 3 * hour).div_euclid(hour) * hour + 60_000;
    let mut pushed = {
        let writer = start("writer", &[&bucket, "-validation.reject-older-than=0s"]);
        let mut pushed = push_known(&writer, base);
        flush_and_upload(&writer);
        pushed.extend(push_known(&writer, base + 5_000));
        let (status, body) = writer.post("/ingester/flush", &[], Vec::new()).unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        wait_until(Duration::from_secs(30), "both blocks uploaded", || {
            (writer.metric("flamedb_ingester_shipped_blocks_total").unwrap_or(0.0) >= 2.0).then_some(())
        });
        pushed
    };
    pushed.sort();
    let (blocks, _) = bucket_blocks(&bucket_dir, "anonymous");
    assert_eq!(blocks, [(1, 12), (1, 12)]);

    // A process that reads only the bucket, and compacts it at once.
    let reader = start(
        "reader",
        &[
            &bucket,
            "-querier.query-store-after=10m",
            "-compactor.compaction-interval=1s",
            "-compactor.first-level-compaction-wait-period=0s",
            "-compactor.deletion-delay=0s",
        ],
    );
    wait_until(
        Duration::from_secs(60),
        "one compacted block, its sources deleted",
        || {
            let (blocks, marked) = bucket_blocks(&bucket_dir, "anonymous");
            (blocks == [(2, 24)] && marked == 0).then_some(())
        },
    );
    assert!(reader.metric("flamedb_compactor_compactions_total").unwrap_or(0.0) >= 1.0);
    check_answers(&reader, &pushed, base - 1_000, base + hour);
    // With no deletion delay the compactor's index is never trusted.
    assert_eq!(reader.metric(INDEX_LISTINGS), None);
    drop(reader);

    // With one, a reader learns the blocks from the index its compactor
    // writes each round, and lists the bucket no more.
    let reader = start(
        "indexed-reader",
        &[
            &bucket,
            "-querier.query-store-after=10m",
            "-compactor.compaction-interval=1s",
            "-compactor.deletion-delay=1h",
        ],
    );
    // A second round has begun once the first wrote its index.
    wait_until(Duration::from_secs(60), "a bucket index written", || {
        (reader.metric("flamedb_compactor_runs_total").unwrap_or(0.0) >= 2.0).then_some(())
    });
    let listed = reader.metric(BUCKET_LISTINGS).unwrap_or(0.0);
    check_answers(&reader, &pushed, base - 1_000, base + hour);
    assert!(reader.metric(INDEX_LISTINGS).unwrap_or(0.0) >= 1.0);
    assert_eq!(reader.metric(BUCKET_LISTINGS).unwrap_or(0.0), listed);
}

const INDEX_LISTINGS: &str = "flamedb_querier_block_listings_total{source=\"index\"}";
const BUCKET_LISTINGS: &str = "flamedb_querier_block_listings_total{source=\"bucket\"}";

#[test]
fn test_rf3_copies_in_object_storage_count_once() {
    let shared = flamedb_testkit::shared_dir();
    let bucket = format!(
        "-storage.filesystem.dir={}",
        flamedb_testkit::path_in(shared.path(), "bucket")
    );
    let mut flags = cluster_flags(&format!("querier-store-test-{}", std::process::id()));
    flags.push(bucket);
    let front = start_ready(
        BINARY,
        "distributor-querier",
        &flags,
        &[
            "-target=distributor,querier".into(),
            "-querier.query-store-after=5m".into(),
        ],
    );
    let ingesters = start_ingesters(BINARY, &front, 3, &flags, &[]);
    let base = now_ms() - 20 * 60_000;
    let pushed = push_known(&front, base);
    wait_until(Duration::from_secs(10), "all copies", || {
        (ingesters
            .iter()
            .all(|node| node.metric("flamedb_ingester_profiles_total") == Some(12.0)))
        .then_some(())
    });
    for node in &ingesters {
        flush_and_upload(node);
    }
    // Older than 5 minutes: three blocks hold each profile; once each.
    check_answers(&front, &pushed, base - 1_000, base + 200_000);
    // Up to now: the ingesters' local blocks too; still once each.
    check_answers(&front, &pushed, base - 1_000, now_ms());
}
