//! The compactor's memory estimate is an upper bound of what a compaction
//! allocates: measured with a counting allocator (peak bytes live on the
//! compacting thread, opening the inputs included) on blocks of several
//! shapes: many rows, many samples, many long names, replicas.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use flamedb_compactor::memory_estimate;
use flamedb_model::pprof::StackProfileBuilder;
use flamedb_model::{Labels, ProfileId};
use flamedb_storage::block::Downsample;
use flamedb_storage::{Block, BlockContents, BlockMeta, ProfileRow, SeriesIndex, Symbols, Ulid, compact, write_block};
use flamedb_testkit::counting::{Counting, measure};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A block of `profiles` profiles over `services` series, each with
/// `samples` samples on stacks `depth` frames deep whose names are
/// `name_bytes` long (`distinct` names in all); profile IDs from `first_id`.
struct Shape {
    profiles: usize,
    services: usize,
    samples: usize,
    depth: usize,
    name_bytes: usize,
    distinct: usize,
}

fn block(parent: &Path, shape: &Shape, first_id: u64) -> BlockMeta {
    let names: Vec<String> = (0..shape.distinct)
        .map(|n| format!("{n:0width$}", width = shape.name_bytes))
        .collect();
    let mut series = SeriesIndex::new();
    let mut symbols = Symbols::new();
    let mut rows = Vec::new();
    for profile in 0..shape.profiles {
        let service = format!("svc-{}", profile % shape.services);
        let labels = Labels::from_pairs([
            ("__name__", "process_cpu".to_owned()),
            ("__profile_type__", "process_cpu:cpu:nanoseconds::".to_owned()),
            ("service_name", service),
        ]);
        let mut builder = StackProfileBuilder::new("cpu", "nanoseconds");
        for sample in 0..shape.samples {
            let frames: Vec<&str> = (0..shape.depth)
                .map(|level| names[(profile * 31 + sample * 7 + level * 13) % names.len()].as_str())
                .collect();
            builder.add(frames, (sample + 1) as i64);
        }
        let built = builder.build();
        let stacks = symbols.add_profile(&built);
        let values: Vec<i64> = built.sample.iter().map(|sample| sample.value[0]).collect();
        let time_ms = 1_000 + profile as i64;
        let id = first_id + profile as u64;
        rows.push(ProfileRow {
            id: ProfileId(u128::from(id).to_be_bytes()),
            series: series.get_or_insert(&labels, labels.fingerprint(), time_ms),
            time_nanos: time_ms * 1_000_000,
            total: values.iter().sum(),
            stacks: stacks.into(),
            values: values.into(),
            span_ids: None,
        });
    }
    let contents = BlockContents {
        series: &series,
        symbols: &symbols,
        rows: &rows,
    };
    write_block(parent, Ulid::generate(), contents, &[]).unwrap()
}

/// Compacts `copies` blocks of `shape` (the same profiles: replicas) and
/// checks the peak against the estimate.
fn check(shape: &Shape, copies: usize) {
    let dir = tempfile::tempdir().unwrap();
    let metas: Vec<BlockMeta> = (0..copies).map(|_| block(dir.path(), shape, 1)).collect();
    let estimate: u64 = metas.iter().map(memory_estimate).sum();
    let out = dir.path().join("out");
    let ((), _, peak) = measure(|| {
        let blocks: Vec<Block> = metas
            .iter()
            .map(|meta| Block::open(&dir.path().join(meta.id.to_string())).unwrap())
            .collect();
        // Downsampled at its worst: a bucket per profile, and coarser.
        let downsample = Some(Downsample {
            resolutions_ms: vec![1, 10],
        });
        compact(&blocks, &out, Ulid::generate(), downsample).unwrap();
    });
    println!(
        "{} profiles x {} samples, {} names of {} bytes, {copies} copies: peak {peak} bytes, estimate {estimate} ({:.2})",
        shape.profiles,
        shape.samples,
        shape.distinct,
        shape.name_bytes,
        peak as f64 / estimate as f64
    );
    assert!(peak as u64 <= estimate, "peak {peak} bytes, estimate {estimate}");
}

#[test]
fn test_the_estimate_bounds_what_compactions_of_every_shape_allocate() {
    // Replicas of profiles with many samples on deep stacks.
    check(
        &Shape {
            profiles: 200,
            services: 10,
            samples: 50,
            depth: 20,
            name_bytes: 30,
            distinct: 500,
        },
        3,
    );
    // Many rows of one sample each.
    check(
        &Shape {
            profiles: 5_000,
            services: 100,
            samples: 1,
            depth: 3,
            name_bytes: 20,
            distinct: 50,
        },
        2,
    );
    // Symbols: many long names.
    check(
        &Shape {
            profiles: 50,
            services: 5,
            samples: 40,
            depth: 10,
            name_bytes: 1_024,
            distinct: 2_000,
        },
        2,
    );
}
