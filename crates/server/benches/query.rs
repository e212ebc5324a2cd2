//! Query latency through real processes: the single binary (RF=1) and a
//! front process (distributor + querier) with three ingesters (RF=3).
//! Loads 24 hours of synthetic CPU profiles for two tenants (100 series
//! with a profile a minute; 10,000 series with a profile an hour; 40
//! samples each, drawn from 300 distinct stacks per service, 50 services),
//! then
//! times flame graphs (`SelectMergeStacktraces`) and pprof exports
//! (`SelectMergeProfile`) over the last hour and the whole day, and prints
//! the RF=3 / RF=1 cost ratio.
//!
//! `cargo bench -p flamedb-server --bench query [-- --runs 5]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod setup;

use std::time::{Duration, Instant};

use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::querier::v1 as querier;
use flamedb_api::pb::types::v1::LabelPair;
use flamedb_model::pprof::{Function, Line, Location, Profile, Sample, ValueType};
use flamedb_testkit::wait_until;
use prost::Message;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const CPU: &str = "process_cpu:cpu:nanoseconds::";
const FUNCTIONS: u64 = 200;
const STACKS: usize = 40;
/// Distinct stacks per service.
const STACK_POOL: usize = 300;
/// Services (`service_name`) the series belong to.
const SERVICES: usize = 50;
const PER_REQUEST: usize = 250;

/// A tenant's data: its series and how often each gets a profile.
struct Dataset {
    tenant: &'static str,
    series: usize,
    every_ms: i64,
}

const DATASETS: [Dataset; 2] = [
    Dataset {
        tenant: "series-100",
        series: 100,
        every_ms: 60_000,
    },
    Dataset {
        tenant: "series-10000",
        series: 10_000,
        every_ms: HOUR_MS,
    },
];

/// A small xorshift generator: the data is the same on every run.
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The stacks a service runs (8 frames, leaf first), as real programs
/// do: a few hundred distinct ones per service.
fn stack_pool(service: u64) -> Vec<Vec<u64>> {
    let mut random = Random::new(service + 1);
    (0..STACK_POOL)
        .map(|_| {
            (0..8)
                .map(|depth| {
                    if depth == 7 {
                        random.next() % 8 + 1
                    } else {
                        random.next() % FUNCTIONS + 1
                    }
                })
                .collect()
        })
        .collect()
}

/// A CPU profile of `STACKS` stacks from `pool`; `seed` varies which and
/// their values.
fn profile(pool: &[Vec<u64>], seed: u64, time_ms: i64) -> Vec<u8> {
    let mut string_table = vec![String::new(), "cpu".to_owned(), "nanoseconds".to_owned()];
    string_table.extend((0..FUNCTIONS).map(|f| format!("package.function_{f}")));
    let mut random = Random::new(seed);
    Profile {
        sample_type: vec![ValueType { r#type: 1, unit: 2 }],
        string_table,
        function: (1..=FUNCTIONS)
            .map(|id| Function {
                id,
                name: id as i64 + 2,
                ..Function::default()
            })
            .collect(),
        location: (1..=FUNCTIONS)
            .map(|id| Location {
                id,
                line: vec![Line {
                    function_id: id,
                    ..Line::default()
                }],
                ..Location::default()
            })
            .collect(),
        sample: (0..STACKS)
            .map(|_| Sample {
                location_id: pool[(random.next() % pool.len() as u64) as usize].clone(),
                value: vec![(random.next() % 100 + 1) as i64 * 10_000_000],
                label: vec![],
            })
            .collect(),
        time_nanos: time_ms * 1_000_000,
        ..Profile::default()
    }
    .encode_to_vec()
}

fn label(name: &str, value: &str) -> LabelPair {
    LabelPair {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

/// Pushes the dataset's day of profiles ending at `end_ms`; returns how
/// many.
fn load(target: &str, dataset: &Dataset, end_ms: i64) -> usize {
    let start = end_ms - DAY_MS;
    let mut profiles: Vec<(usize, i64)> = Vec::new();
    for series in 0..dataset.series {
        // Spread the series over the interval.
        let offset = (series as i64 * dataset.every_ms) / dataset.series as i64;
        let mut time = start + offset;
        while time < end_ms {
            profiles.push((series, time));
            time += dataset.every_ms;
        }
    }
    let chunks: Vec<Vec<(usize, i64)>> = profiles.chunks(PER_REQUEST).map(<[_]>::to_vec).collect();
    let clients = 4;
    let per_client = chunks.len().div_ceil(clients);
    let handles: Vec<_> = chunks
        .chunks(per_client.max(1))
        .map(<[_]>::to_vec)
        .map(|mine| {
            let target = target.to_owned();
            let tenant = dataset.tenant;
            std::thread::spawn(move || {
                let pools: Vec<Vec<Vec<u64>>> = (0..SERVICES as u64).map(stack_pool).collect();
                for chunk in mine {
                    let request = PushRequest {
                        series: chunk
                            .iter()
                            .map(|&(series, time)| RawProfileSeries {
                                labels: vec![
                                    label("__name__", "process_cpu"),
                                    label("service_name", &format!("service-{}", series % SERVICES)),
                                    label("pod", &format!("pod-{series}")),
                                ],
                                samples: vec![RawSample {
                                    raw_profile: profile(
                                        &pools[series % SERVICES],
                                        series as u64 * 31 + time as u64,
                                        time,
                                    ),
                                    id: String::new(),
                                }],
                                annotations: vec![],
                            })
                            .collect(),
                    };
                    let (status, body) = flamedb_testkit::post(
                        &target,
                        "/push.v1.PusherService/Push",
                        &[("content-type", "application/proto"), ("x-scope-orgid", tenant)],
                        request.encode_to_vec(),
                    )
                    .unwrap();
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    profiles.len()
}

/// The median time of `runs` calls of `method` with `request`.
fn time_query<Req: Message>(target: &str, tenant: &str, method: &str, request: &Req, runs: usize) -> Duration {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let (status, body) = flamedb_testkit::post_within(
            target,
            &format!("/querier.v1.QuerierService/{method}"),
            &[("content-type", "application/proto"), ("x-scope-orgid", tenant)],
            request.encode_to_vec(),
            Duration::from_secs(600),
        )
        .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        times.push(started.elapsed());
    }
    times.sort();
    times[runs / 2]
}

/// Median latencies (flame graph, pprof) per dataset and window.
fn measure(target: &str, end_ms: i64, runs: usize) -> Vec<(String, Duration, Duration)> {
    let mut rows = Vec::new();
    for dataset in &DATASETS {
        for (window, length) in [("1 h", HOUR_MS), ("24 h", DAY_MS)] {
            let (start, end) = (end_ms - length, end_ms);
            let flame_graph = querier::SelectMergeStacktracesRequest {
                profile_type_id: CPU.into(),
                label_selector: "{}".into(),
                start,
                end,
                ..Default::default()
            };
            let pprof = querier::SelectMergeProfileRequest {
                profile_type_id: CPU.into(),
                label_selector: "{}".into(),
                start,
                end,
                ..Default::default()
            };
            rows.push((
                format!("{} series, {window}", dataset.series),
                time_query(target, dataset.tenant, "SelectMergeStacktraces", &flame_graph, runs),
                time_query(target, dataset.tenant, "SelectMergeProfile", &pprof, runs),
            ));
        }
    }
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|arg| arg == "--runs")
        .and_then(|at| args.get(at + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(5usize);
    let common = [
        "-auth.multitenancy-enabled",
        "-distributor.ingestion-rate-limit-mb=0",
        "-ingester.max-global-series-per-tenant=0",
        "-validation.reject-older-than=0s",
        "-ingester.max-head-memory=8000000000",
    ];
    let end_ms = flamedb_model::now_nanos() / 1_000_000 - 60_000;
    let mut results = Vec::new();
    for (name, replicas) in [("RF=1 single binary", 1usize), ("RF=3, 3 ingesters", 3)] {
        let setup = if replicas == 1 {
            setup::single(&common)
        } else {
            setup::rf3(&common, "distributor,querier")
        };
        let started = Instant::now();
        let mut loaded = 0;
        for dataset in &DATASETS {
            loaded += load(&setup.target, dataset, end_ms);
        }
        let ingesters = &setup.processes[..replicas];
        wait_until(Duration::from_secs(120), "every copy applied", || {
            ingesters
                .iter()
                .all(|node| node.metric("flamedb_ingester_profiles_total") == Some(loaded as f64))
                .then_some(())
        });
        println!(
            "{name}: loaded {loaded} profiles in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        results.push((name, measure(&setup.target, end_ms, runs)));
    }
    println!("| data | RF=1 flame graph ms | RF=3 flame graph ms | ratio | RF=1 pprof ms | RF=3 pprof ms | ratio |");
    println!("|---|---|---|---|---|---|---|");
    for (one, three) in results[0].1.iter().zip(&results[1].1) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} |",
            one.0,
            ms(one.1),
            ms(three.1),
            ms(three.1) / ms(one.1),
            ms(one.2),
            ms(three.2),
            ms(three.2) / ms(one.2)
        );
    }
}
