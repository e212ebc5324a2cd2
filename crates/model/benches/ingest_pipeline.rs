//! The model hot path over the real profiles of `../shared/testdata/pprof`:
//! the whole pipeline (decode + validate + normalize + split) next to the
//! decoding limit (gunzip + protobuf decode) of the same bytes, so the ratio
//! shows what the model adds. Throughput counters: uncompressed bytes and
//! samples.
//!
//! `cargo bench -p flamedb-model --bench ingest_pipeline`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

use divan::Bencher;
use divan::counter::{BytesCount, ItemsCount};
use flamedb_model::{Labels, Limits, gzip, pprof, prepare_profile};

/// The accepted profiles with their `__name__`.
const FILES: &[&str] = &[
    "cpu.pb.gz",
    "cpu-exemplars.pb.gz",
    "go.cpu.labels.pprof",
    "heap.pb.gz",
    "heap",
    "nodejs-wall.pb.gz",
    "profile_java",
    "profile_python",
    "profile_uncompressed",
    "single_group_with_optional_span_id.pb.gz",
];

struct Input {
    raw: Vec<u8>,
    uncompressed_bytes: usize,
    samples: usize,
    now: i64,
}

fn testdata_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/pprof")
}

static INPUTS: LazyLock<BTreeMap<&'static str, Input>> = LazyLock::new(|| {
    FILES
        .iter()
        .filter_map(|&file| {
            let raw = std::fs::read(testdata_dir().join(file)).ok()?;
            let uncompressed_bytes =
                gzip::gunzip_if_compressed(&raw, 0, &flamedb_model::budget::RequestBudget::unlimited())
                    .ok()?
                    .len();
            let profile = pprof::decode(&raw, 0).ok()?;
            let input = Input {
                uncompressed_bytes,
                samples: profile.sample.len(),
                now: if profile.time_nanos > 0 {
                    profile.time_nanos
                } else {
                    flamedb_model::now_nanos()
                },
                raw,
            };
            Some((file, input))
        })
        .collect()
});

fn main() {
    if !testdata_dir().is_dir() {
        eprintln!("skipping: {} is absent", testdata_dir().display());
        return;
    }
    divan::main();
}

fn counters<'a, 'b>(bencher: Bencher<'a, 'b>, input: &Input) -> Bencher<'a, 'b> {
    bencher
        .counter(BytesCount::new(input.uncompressed_bytes))
        .counter(ItemsCount::new(input.samples))
}

/// The decoding limit: gunzip (when compressed) and protobuf decode.
#[divan::bench(args = FILES)]
fn decode_only(bencher: Bencher, file: &str) {
    let input = &INPUTS[file];
    counters(bencher, input).bench(|| pprof::decode(divan::black_box(&input.raw), 0));
}

/// The whole model pipeline a push runs.
#[divan::bench(args = FILES)]
fn pipeline(bencher: Bencher, file: &str) {
    let input = &INPUTS[file];
    let labels = Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "bench")]);
    let limits = Limits::default();
    counters(bencher, input).bench(|| {
        prepare_profile(
            divan::black_box(&input.raw),
            &labels,
            &limits,
            input.now,
            &flamedb_model::budget::RequestBudget::unlimited(),
        )
    });
}
