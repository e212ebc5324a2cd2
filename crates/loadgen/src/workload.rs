//! The traffic: real pprof files turned into push requests for many
//! series, as agents send them (Connect proto, the pprof gzipped inside).

use std::path::Path;

use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::pb::types::v1::LabelPair;
use flamedb_model::gzip::gzip;
use flamedb_model::pprof::{self, Profile};
use prost::Message;

/// Files of `../shared/testdata/pprof` that every agent path accepts
/// (push answers 200) without a sample type config.
pub const DEFAULT_FILES: &[&str] = &[
    "profile_java",
    "cpu.pb.gz",
    "go.cpu.labels.pprof",
    "heap.pb.gz",
    "cpu-js.pb.gz",
    "nodejs-heap.pb.gz",
    "nodejs-wall.pb.gz",
    "profile_python",
    "profile_nodejs",
    "profile_rust",
];

/// One pprof file, decoded.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    profile: Profile,
}

/// Errors reading the sources.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a pprof profile: {message}")]
    Decode { path: String, message: String },
    #[error("no profiles to send")]
    Empty,
}

/// Reads `files` from `dir`.
pub fn read_sources(dir: &Path, files: &[&str]) -> Result<Vec<Source>, WorkloadError> {
    let mut sources = Vec::new();
    for file in files {
        let path = dir.join(file);
        let raw = std::fs::read(&path).map_err(|source| WorkloadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let profile = pprof::decode(&raw, 0).map_err(|err| WorkloadError::Decode {
            path: path.display().to_string(),
            message: err.to_string(),
        })?;
        sources.push(Source {
            name: (*file).to_owned(),
            profile,
        });
    }
    if sources.is_empty() {
        return Err(WorkloadError::Empty);
    }
    Ok(sources)
}

/// A push request ready to send, with what it carries.
#[derive(Debug, Clone)]
pub struct Request {
    /// The Connect proto body.
    pub body: Vec<u8>,
    pub samples: usize,
    /// Bytes of the pprof it carries, uncompressed.
    pub pprof_bytes: usize,
    /// The gzipped pprof (what the server gunzips and decodes).
    pub raw_profile: Vec<u8>,
    /// What it adds to the `process_cpu:cpu:nanoseconds:cpu:nanoseconds`
    /// flame graph: the positive values of that sample type (0 for other
    /// kinds of profile), so answers can be checked.
    pub cpu_total: i64,
}

/// `series` series (`service_name` `loadgen-<n>`, with `env` and
/// `region` labels), each sending the source `n % sources`, and for each
/// `per_series` requests whose profiles are stamped `span_ms` apart
/// ending at `end_ms` (so a whole range can be filled at once). Every
/// profile's values are the source's scaled by 80 % to 120 %, differently
/// per request, as successive profiles of a program differ.
pub fn requests(sources: &[Source], series: usize, per_series: usize, end_ms: i64, span_ms: i64) -> Vec<Request> {
    let mut requests = Vec::with_capacity(series * per_series);
    for step in 0..per_series {
        let time_ms = end_ms - span_ms * (per_series - 1 - step) as i64;
        for n in 0..series {
            let source = &sources[n % sources.len()];
            let mut profile = source.profile.clone();
            profile.time_nanos = time_ms * 1_000_000;
            jitter(&mut profile, (n * per_series + step) as u64);
            let plain = pprof::encode(&profile);
            let raw_profile = gzip(&plain);
            let body = PushRequest {
                series: vec![RawProfileSeries {
                    labels: vec![
                        label("__name__", profile_name(&profile)),
                        label("service_name", &format!("loadgen-{n}")),
                        label("env", ["prod", "staging", "dev"][n % 3]),
                        label("region", ["eu-west-1", "us-east-1"][n % 2]),
                        label("__delta__", "false"),
                    ],
                    samples: vec![RawSample {
                        raw_profile: raw_profile.clone(),
                        id: String::new(),
                    }],
                    annotations: vec![],
                }],
            }
            .encode_to_vec();
            requests.push(Request {
                body,
                samples: profile.sample.len(),
                pprof_bytes: plain.len(),
                raw_profile,
                cpu_total: cpu_total(&profile),
            });
        }
    }
    requests
}

/// Scales each sample's values by a factor from 0.8 to 1.2 drawn from
/// `seed` and the sample's position.
fn jitter(profile: &mut Profile, seed: u64) {
    for (index, sample) in profile.sample.iter_mut().enumerate() {
        // SplitMix64 of (seed, index): cheap, deterministic, well spread.
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (index as u64).wrapping_add(0x632b_e59b_d9b4_e019);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        let percent = 80 + (x % 41) as i64;
        for value in sample.value.iter_mut().filter(|value| **value > 0) {
            *value = (value.saturating_mul(percent) / 100).max(1);
        }
    }
}

/// The positive values of sample type `cpu:nanoseconds` of a profile with
/// period type `cpu:nanoseconds` (what its series of
/// `process_cpu:cpu:nanoseconds:cpu:nanoseconds` holds); 0 for others.
fn cpu_total(profile: &Profile) -> i64 {
    let string = |index: i64| {
        usize::try_from(index)
            .ok()
            .and_then(|index| profile.string_table.get(index))
            .map_or("", String::as_str)
    };
    let is_cpu = |value_type: &flamedb_model::pprof::ValueType| {
        (string(value_type.r#type), string(value_type.unit)) == ("cpu", "nanoseconds")
    };
    if profile_name(profile) != "process_cpu" || !profile.period_type.as_ref().is_some_and(is_cpu) {
        return 0;
    }
    let Some(index) = profile.sample_type.iter().position(is_cpu) else {
        return 0;
    };
    profile
        .sample
        .iter()
        .filter_map(|sample| sample.value.get(index))
        .filter(|value| **value > 0)
        .sum()
}

/// The `__name__` an agent would give a profile of this kind.
fn profile_name(profile: &Profile) -> &'static str {
    let period_type = profile
        .period_type
        .as_ref()
        .and_then(|value_type| profile.string_table.get(usize::try_from(value_type.r#type).ok()?))
        .map_or("", String::as_str);
    match period_type {
        "cpu" => "process_cpu",
        "wall" => "wall",
        "space" | "inuse_space" | "objects" | "bytes" => "memory",
        _ => "process_cpu",
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    LabelPair {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

/// How fast this thread gunzips and decodes the pprof of `requests`: the
/// bytes of uncompressed pprof per second, the limit no server parsing
/// the same input can pass on one core.
pub fn decode_rate(requests: &[Request], seconds: f64) -> f64 {
    let started = std::time::Instant::now();
    let mut bytes = 0usize;
    let mut decoded = 0usize;
    while started.elapsed().as_secs_f64() < seconds {
        for request in requests.iter().take(64) {
            if let Ok(profile) = pprof::decode(&request.raw_profile, 0) {
                decoded += profile.sample.len();
                bytes += request.pprof_bytes;
            }
        }
    }
    std::hint::black_box(decoded);
    bytes as f64 / started.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use flamedb_api::pb::push::v1::PushRequest;

    #[test]
    fn test_testdata_requests_carry_each_series_with_jittered_values_and_spread_times() {
        let Some(dir) = flamedb_testkit::testdata("pprof") else {
            return;
        };
        let sources = read_sources(&dir, DEFAULT_FILES).unwrap();
        let requests = requests(&sources, 12, 3, 1_000_000, 1_000);
        assert_eq!(requests.len(), 36);
        let java_total: i64 = sources[0].profile.sample.iter().map(|sample| sample.value[0]).sum();
        let mut services = std::collections::BTreeSet::new();
        let mut times = std::collections::BTreeSet::new();
        for request in &requests {
            let push = PushRequest::decode(request.body.as_slice()).unwrap();
            let series = &push.series[0];
            let service = series.labels.iter().find(|label| label.name == "service_name").unwrap();
            services.insert(service.value.clone());
            let profile = pprof::decode(&series.samples[0].raw_profile, 0).unwrap();
            assert_eq!(profile.sample.len(), request.samples);
            times.insert(profile.time_nanos);
            if service.value == "loadgen-0" {
                let total: i64 = profile.sample.iter().map(|sample| sample.value[0]).sum();
                assert!(total >= java_total * 8 / 10 && total <= java_total * 12 / 10);
                assert_ne!(total, java_total, "values are jittered");
            }
        }
        assert_eq!(services.len(), 12);
        let expected: std::collections::BTreeSet<i64> =
            [998_000, 999_000, 1_000_000].iter().map(|ms| ms * 1_000_000).collect();
        assert_eq!(times, expected);
    }

    #[test]
    fn test_the_cpu_total_counts_positive_cpu_values_of_cpu_profiles_only() {
        let cpu = |values: &[i64]| {
            let mut builder = flamedb_model::pprof::StackProfileBuilder::new("cpu", "nanoseconds").period(
                "cpu",
                "nanoseconds",
                10_000_000,
            );
            for (leaf, value) in values.iter().enumerate() {
                builder.add(["main", &format!("f{leaf}")], *value);
            }
            builder.build()
        };
        assert_eq!(cpu_total(&cpu(&[5, -3, 7])), 12);
        let mut wall = flamedb_model::pprof::StackProfileBuilder::new("wall", "nanoseconds").period(
            "wall",
            "nanoseconds",
            10_000_000,
        );
        wall.add(["main"], 9);
        assert_eq!(cpu_total(&wall.build()), 0);
    }
}
