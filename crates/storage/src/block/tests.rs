#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use flamedb_model::pprof::{Function, Line, Location, Profile, Sample};
use flamedb_model::{Labels, ProfileId, Selector, Tree, parse_selector};
use proptest::prelude::*;

use super::*;
use crate::{ProfileQuery, SeriesSummaries, TimeRange, summary_of};

const CPU: &str = "process_cpu:cpu:nanoseconds::";

/// Functions f1..f5, one location each; stacks are leaf first.
fn profile(stacks: &[&[u64]]) -> Profile {
    let mut strings = vec![String::new()];
    strings.extend((1..=5).map(|i| format!("f{i}")));
    Profile {
        sample: stacks
            .iter()
            .map(|stack| Sample {
                location_id: stack.to_vec(),
                value: vec![1],
                label: Vec::new(),
            })
            .collect(),
        function: (1..=5)
            .map(|id| Function {
                id,
                name: id as i64,
                ..Function::default()
            })
            .collect(),
        location: (1..=5)
            .map(|id| Location {
                id,
                line: vec![Line {
                    function_id: id,
                    line: 1,
                    column: 0,
                }],
                ..Location::default()
            })
            .collect(),
        string_table: strings,
        ..Profile::default()
    }
}

fn series_labels(service: usize) -> Labels {
    Labels::from_pairs([
        ("__name__", "process_cpu".to_owned()),
        ("__profile_type__", CPU.to_owned()),
        ("service_name", format!("svc-{service}")),
    ])
}

/// Rows over a few series with the stacks of `profile`.
struct Source {
    series: SeriesIndex,
    symbols: Symbols,
    rows: Vec<ProfileRow>,
}

impl Source {
    /// `rows`: (series, time ms, values per stack of the shared profile).
    fn new(rows: &[(usize, i64, Vec<i64>)]) -> Self {
        let mut symbols = Symbols::new();
        let stacks = symbols.add_profile(&profile(&[&[1], &[2, 1], &[3, 2, 1], &[4, 1], &[5]]));
        let mut series = SeriesIndex::new();
        let rows = rows
            .iter()
            .enumerate()
            .map(|(n, (service, time_ms, values))| {
                let labels = series_labels(*service);
                let id = series.get_or_insert(&labels, labels.fingerprint(), *time_ms);
                let (stacks, values): (Vec<u32>, Vec<i64>) = stacks
                    .iter()
                    .zip(values)
                    .filter(|&(_, &value)| value != 0)
                    .map(|(&stack, &value)| (stack, value))
                    .unzip();
                ProfileRow {
                    id: ProfileId((n as u128).to_be_bytes()),
                    series: id,
                    time_nanos: time_ms * 1_000_000,
                    total: values.iter().sum(),
                    values: values.into(),
                    span_ids: (n % 2 == 0).then(|| vec![n as u64; stacks.len()].into()),
                    stacks: stacks.into(),
                }
            })
            .collect();
        Self { series, symbols, rows }
    }

    fn contents(&self) -> BlockContents<'_> {
        BlockContents {
            series: &self.series,
            symbols: &self.symbols,
            rows: &self.rows,
        }
    }

    /// What a query over the source answers: sorted (id, time, total,
    /// labels) and the merged tree.
    fn answer(&self, query: &ProfileQuery, only: Option<&HashSet<ProfileId>>) -> (Vec<Summary>, Stacks) {
        let selected = self.series.selected(&[query.full_selector()], query.range);
        let mut profiles = Vec::new();
        let mut tree = Tree::new();
        for row in &self.rows {
            if !selected.contains(row.series) || !query.range.contains(row.time_ms()) {
                continue;
            }
            profiles.push((
                row.id,
                row.time_nanos,
                row.total,
                self.series.get(row.series).labels.render(),
            ));
            if only.is_none_or(|only| only.contains(&row.id)) {
                self.symbols
                    .add_to_tree(row.stacks.iter().copied().zip(row.values.iter().copied()), &mut tree)
                    .unwrap();
            }
        }
        profiles.sort();
        (profiles, sorted_stacks(&tree))
    }
}

type Summary = (ProfileId, i64, i64, String);
type Stacks = Vec<(Vec<String>, i64)>;

fn sorted_stacks(tree: &Tree) -> Stacks {
    let mut stacks = tree.stacks();
    stacks.sort();
    stacks
}

fn block_answer(block: &Block, query: &ProfileQuery, only: Option<&HashSet<ProfileId>>) -> (Vec<Summary>, Stacks) {
    let mut profiles: Vec<Summary> = Vec::new();
    block
        .visit_profiles(query, |p| {
            profiles.push((p.id, p.time_nanos, p.total, p.labels.render()))
        })
        .unwrap();
    profiles.sort();
    let mut tree = Tree::new();
    block.merge_into(query, only, None, &mut tree).unwrap();
    (profiles, sorted_stacks(&tree))
}

/// Writes `contents` as a compacted block downsampled to buckets of
/// `resolutions_ms`.
fn write_downsampled(parent: &Path, id: Ulid, contents: BlockContents<'_>, resolutions_ms: &[i64]) -> BlockMeta {
    let origin = Origin {
        writer: "compactor",
        compaction: Compaction {
            level: 2,
            sources: vec![id],
        },
        downsample: Some(Downsample {
            resolutions_ms: resolutions_ms.to_vec(),
        }),
    };
    write_with_origin(parent, id, contents, &[], origin).unwrap()
}

fn query(selector: &str, range: TimeRange) -> ProfileQuery {
    ProfileQuery {
        profile_type: CPU.to_owned(),
        selector: parse_selector(selector).unwrap(),
        range,
        series: None,
    }
}

#[test]
fn test_block_answers_what_its_source_answered() {
    let source = Source::new(&[
        (0, 1_000, vec![1, 2, 3, 0, 0]),
        (1, 2_000, vec![0, 5, 0, 7, 0]),
        (0, 3_000, vec![4, 0, 0, 0, 9]),
        (2, 500, vec![1, 1, 1, 1, 1]),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let id = Ulid::generate();
    let meta = write_block(dir.path(), id, source.contents(), &[("note.json", b"{}")]).unwrap();
    assert_eq!((meta.min_time, meta.max_time), (500, 3_000));
    assert_eq!(meta.stats.num_series, 3);
    assert_eq!(meta.stats.num_profiles, 4);
    assert_eq!(meta.stats.num_samples, 3 + 2 + 2 + 5);
    assert!(!meta.files.iter().any(|file| file.rel_path == "note.json"));

    let block = Block::open(&dir.path().join(id.to_string())).unwrap();
    block.verify().unwrap();
    assert_eq!(block.meta(), &meta);
    assert!(block.dir().join("note.json").exists());
    let none: [Selector; 0] = [];
    for range in [
        TimeRange::ALL,
        TimeRange {
            start_ms: 900,
            end_ms: 2_500,
        },
    ] {
        assert_eq!(
            block.series().label_names(&none, range),
            source.series.label_names(&none, range)
        );
        assert_eq!(
            block.series().label_values("service_name", &none, range),
            source.series.label_values("service_name", &none, range)
        );
        for selector in ["{}", r#"{service_name="svc-0"}"#, r#"{service_name!~"svc-[01]"}"#] {
            let query = query(selector, range);
            assert_eq!(block_answer(&block, &query, None), source.answer(&query, None));
        }
    }
    // Written out, not only compared with the source: svc-0 holds rows 0
    // (values 1, 2, 3 on stacks f1, f1;f2, f1;f2;f3) and 2 (4 on f1, 9 on
    // f5).
    let (profiles, stacks) = block_answer(&block, &query(r#"{service_name="svc-0"}"#, TimeRange::ALL), None);
    let summaries: Vec<(ProfileId, i64, i64)> = profiles
        .iter()
        .map(|(id, time, total, _)| (*id, *time, *total))
        .collect();
    assert_eq!(
        summaries,
        [
            (ProfileId(0u128.to_be_bytes()), 1_000_000_000, 6),
            (ProfileId(2u128.to_be_bytes()), 3_000_000_000, 13)
        ]
    );
    let stack = |frames: &[&str]| frames.iter().map(|frame| (*frame).to_owned()).collect::<Vec<String>>();
    assert_eq!(
        stacks,
        [
            (stack(&["f1"]), 5),
            (stack(&["f1", "f2"]), 2),
            (stack(&["f1", "f2", "f3"]), 3),
            (stack(&["f5"]), 9)
        ]
    );

    let only: HashSet<ProfileId> = [source.rows[1].id, source.rows[3].id].into();
    let everything = query("{}", TimeRange::ALL);
    let (_, stacks) = block_answer(&block, &everything, Some(&only));
    assert_eq!(stacks, source.answer(&everything, Some(&only)).1);
    assert_eq!(stacks.iter().map(|(_, value)| value).sum::<i64>(), 12 + 5);

    // Span filters: rows 0 and 2 carry span IDs 0 (none) and 2 on every
    // sample, rows 1 and 3 no span IDs.
    let spans = |ids: &[u64]| -> i64 {
        let spans: HashSet<u64> = ids.iter().copied().collect();
        let mut tree = Tree::new();
        block.merge_into(&everything, None, Some(&spans), &mut tree).unwrap();
        tree.total()
    };
    assert_eq!(spans(&[2]), 4 + 9);
    assert_eq!(spans(&[0, 2]), 4 + 9);
    assert_eq!(spans(&[1, 3, 7]), 0);

    // Only some series, by fingerprint: those of svc-1 and svc-2.
    let fingerprints: HashSet<u64> = block
        .series()
        .iter()
        .filter(|series| series.labels.render() != source.series.get(0).labels.render())
        .map(|series| series.fingerprint)
        .collect();
    let some_series = ProfileQuery {
        series: Some(std::sync::Arc::new(fingerprints)),
        ..query("{}", TimeRange::ALL)
    };
    let (profiles, stacks) = block_answer(&block, &some_series, None);
    assert_eq!(profiles.len(), 2);
    assert_eq!(stacks.iter().map(|(_, value)| value).sum::<i64>(), 12 + 5);

    // Series summaries: kept ones for a range covering the block, read
    // from the rows otherwise; the same as summing the listed profiles.
    for query in [
        everything.clone(),
        query(
            "{}",
            TimeRange {
                start_ms: 900,
                end_ms: 2_500,
            },
        ),
        some_series,
    ] {
        let mut summaries = SeriesSummaries::new();
        block.summarize_into(&query, &mut summaries).unwrap();
        let mut expected = SeriesSummaries::new();
        block
            .visit_profiles(&query, |profile| {
                summary_of(&mut expected, profile.fingerprint).add(profile.id, profile.total)
            })
            .unwrap();
        assert_eq!(summaries, expected);
    }
}

#[test]
fn test_damaged_blocks_are_refused_with_the_file_named() {
    let source = Source::new(&[(0, 1_000, vec![1, 2, 3, 4, 5])]);
    let dir = tempfile::tempdir().unwrap();
    let id = Ulid::generate();
    write_block(dir.path(), id, source.contents(), &[]).unwrap();
    let block_dir = dir.path().join(id.to_string());

    // A flipped byte in the symbols: found when they are read.
    let symbols = block_dir.join(SYMBOLS_FILE);
    let mut bytes = fs::read(&symbols).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&symbols, &bytes).unwrap();
    let block = Block::open(&block_dir).unwrap();
    let err = block
        .merge_into(&query("{}", TimeRange::ALL), None, None, &mut Tree::new())
        .unwrap_err();
    assert!(err.to_string().contains(SYMBOLS_FILE), "{err}");
    assert!(block.verify().is_err());

    // A truncated table: found on open.
    let table = block_dir.join(profiles::FILE);
    let bytes = fs::read(&table).unwrap();
    fs::write(&table, &bytes[..bytes.len() / 2]).unwrap();
    let err = Block::open(&block_dir).unwrap_err();
    assert!(err.to_string().contains("profiles.parquet"), "{err}");

    // Another format version.
    let meta_path = block_dir.join(META_FILE);
    let meta = fs::read_to_string(&meta_path)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 99");
    fs::write(&meta_path, meta).unwrap();
    let err = Block::open(&block_dir).unwrap_err();
    assert!(err.to_string().contains("format version 99"), "{err}");

    // A meta naming a file outside the block.
    let escaping = fs::read_to_string(&meta_path)
        .unwrap()
        .replace("\"version\": 99", "\"version\": 1")
        .replace("\"profiles.parquet\"", "\"../../etc/passwd\"");
    fs::write(&meta_path, escaping).unwrap();
    let err = Block::open(&block_dir).unwrap_err();
    assert!(err.to_string().contains("not a file of a block"), "{err}");

    // No meta at all: not a block.
    fs::remove_file(&meta_path).unwrap();
    assert!(matches!(Block::open(&block_dir), Err(BlockError::Io { .. })));
}

#[test]
fn test_a_stale_temporary_directory_is_replaced() {
    let source = Source::new(&[(0, 1_000, vec![1, 0, 0, 0, 0])]);
    let dir = tempfile::tempdir().unwrap();
    let id = Ulid::generate();
    let temp = dir.path().join(format!("{id}{TEMP_SUFFIX}"));
    fs::create_dir_all(&temp).unwrap();
    fs::write(temp.join("junk"), b"half a block").unwrap();
    write_block(dir.path(), id, source.contents(), &[]).unwrap();
    assert!(!temp.exists());
    assert!(!dir.path().join(id.to_string()).join("junk").exists());
}

#[test]
fn test_symbols_with_dangling_references_are_refused() {
    let mut file = Source::new(&[]).symbols.to_file();
    file.stack_parents.push(100);
    file.stack_locations.push(0);
    assert!(Symbols::from_file(file.clone()).is_err());
    file.stack_parents.pop();
    file.stack_locations.pop();
    file.functions.push(format::FunctionEntry {
        name: 10_000,
        ..format::FunctionEntry::default()
    });
    assert!(Symbols::from_file(file.clone()).is_err());
    file.functions.pop();
    let again = Symbols::from_file(file.clone()).unwrap();
    assert_eq!(again.to_file(), file);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn prop_block_round_trip(
        rows in prop::collection::vec((0usize..4, 0i64..10_000, prop::collection::vec(0i64..50, 5)), 1..40),
        start in 0i64..10_000,
        width in 0i64..10_000,
        service in 0usize..5,
    ) {
        let source = Source::new(&rows);
        let dir = tempfile::tempdir().unwrap();
        let id = Ulid::generate();
        write_block(dir.path(), id, source.contents(), &[]).unwrap();
        let block = Block::open(&dir.path().join(id.to_string())).unwrap();
        let range = TimeRange { start_ms: start, end_ms: start + width };
        for selector in ["{}".to_owned(), format!(r#"{{service_name="svc-{service}"}}"#)] {
            let query = query(&selector, range);
            prop_assert_eq!(block_answer(&block, &query, None), source.answer(&query, None));
        }
        prop_assert_eq!(
            block.series().label_values("service_name", &[], range),
            source.series.label_values("service_name", &[], range)
        );
    }

    /// A downsampled block merges whole buckets from its downsampled table
    /// and the rest from its profiles: the same answer as its source's.
    #[test]
    fn prop_downsampled_block_answers_what_its_source_answered(
        rows in prop::collection::vec((0usize..4, -5_000i64..10_000, prop::collection::vec(0i64..50, 5)), 1..60),
        resolution in 1i64..2_000,
        coarser in 1i64..6,
        coarsest in 2i64..4,
        start in -6_000i64..10_000,
        width in 0i64..10_000,
        service in 0usize..5,
    ) {
        let source = Source::new(&rows);
        let dir = tempfile::tempdir().unwrap();
        let id = Ulid::generate();
        let meta = write_downsampled(dir.path(), id, source.contents(), &[resolution, resolution * coarser * 2, resolution * coarser * 2 * coarsest]);
        prop_assert!(meta.files.iter().any(|file| file.rel_path == downsampled::FILE));
        // Each resolution in row groups of its own.
        let table = std::fs::File::open(dir.path().join(id.to_string()).join(downsampled::FILE)).unwrap();
        let groups = parquet::file::reader::FileReader::metadata(&parquet::file::reader::SerializedFileReader::new(table).unwrap()).num_row_groups();
        prop_assert_eq!(groups, 3);
        let block = Block::open(&dir.path().join(id.to_string())).unwrap();
        block.verify().unwrap();
        let range = TimeRange { start_ms: start, end_ms: start + width };
        for selector in ["{}".to_owned(), format!(r#"{{service_name="svc-{service}"}}"#)] {
            for range in [range, TimeRange::ALL] {
                let query = query(&selector, range);
                prop_assert_eq!(block_answer(&block, &query, None), source.answer(&query, None));
            }
        }
    }
}

#[tokio::test]
async fn test_blocks_round_trip_through_a_bucket() {
    let source = Source::new(&[(0, 1_000, vec![1, 2, 3, 4, 5]), (1, 2_000, vec![5, 4, 3, 2, 1])]);
    let local = tempfile::tempdir().unwrap();
    let remote = tempfile::tempdir().unwrap();
    let bucket = crate::Bucket::new(&crate::BucketConfig::Filesystem {
        dir: remote.path().to_owned(),
    })
    .unwrap();
    let id = Ulid::generate();
    let meta = write_block(local.path(), id, source.contents(), &[("note.json", b"{}")]).unwrap();
    assert!(!bucket.has_block("t", id).await.unwrap());
    bucket
        .upload_block("t", &local.path().join(id.to_string()), &meta)
        .await
        .unwrap();
    assert!(bucket.has_block("t", id).await.unwrap());
    assert!(!bucket.has_block("other", id).await.unwrap());
    assert_eq!(bucket.list_blocks("t").await.unwrap(), vec![meta]);
    assert!(remote.path().join(format!("t/blocks/{id}/meta.json")).exists());
    // Sidecars stay local.
    assert!(!remote.path().join(format!("t/blocks/{id}/note.json")).exists());

    // A block without meta.json is an unfinished upload: not listed.
    let unfinished = Ulid::generate();
    let partial = remote.path().join(format!("t/blocks/{unfinished}"));
    fs::create_dir_all(&partial).unwrap();
    fs::write(partial.join("profiles.parquet"), b"half").unwrap();
    assert_eq!(bucket.list_blocks("t").await.unwrap().len(), 1);

    let downloads = tempfile::tempdir().unwrap();
    let dir = bucket.download_block("t", id, downloads.path()).await.unwrap();
    let block = Block::open(&dir).unwrap();
    let everything = query("{}", TimeRange::ALL);
    assert_eq!(
        block_answer(&block, &everything, None),
        source.answer(&everything, None)
    );

    // Marked for deletion: no longer listed, at once; deleted: gone.
    assert_eq!(bucket.list_tenants().await.unwrap(), ["t"]);
    bucket.mark_for_deletion("t", id).await.unwrap();
    assert!(bucket.list_blocks("t").await.unwrap().is_empty());
    let marked = bucket.marked_for_deletion("t").await.unwrap();
    assert_eq!(marked.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [id]);
    assert!(marked[0].1 > 0);
    bucket.delete_block("t", id).await.unwrap();
    assert!(!bucket.has_block("t", id).await.unwrap());
    assert!(bucket.marked_for_deletion("t").await.unwrap().is_empty());
    assert!(!remote.path().join(format!("t/blocks/{id}/profiles.parquet")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn test_a_block_read_in_place_answers_as_a_downloaded_one() {
    let source = Source::new(&[
        (0, 1_000, vec![1, 2, 3, 0, 0]),
        (1, 2_000, vec![0, 5, 0, 7, 0]),
        (1, 2_900, vec![0, 0, 2, 0, 1]),
        (2, 3_000, vec![4, 0, 0, 0, 9]),
    ]);
    let local = tempfile::tempdir().unwrap();
    let remote = tempfile::tempdir().unwrap();
    let bucket = crate::Bucket::new(&crate::BucketConfig::Filesystem {
        dir: remote.path().to_owned(),
    })
    .unwrap();
    // Downsampled, so a range holding buckets in part reads profile rows
    // by ranges too.
    let id = Ulid::generate();
    let meta = write_downsampled(local.path(), id, source.contents(), &[500, 1_500]);
    bucket
        .upload_block("t", &local.path().join(id.to_string()), &meta)
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let block = bucket.open_block("t", id, cache.path()).await.unwrap();
    // Only the small files are local; the profiles table stays remote.
    assert!(!cache.path().join(id.to_string()).join(PROFILES_FILE).exists());
    assert!(cache.path().join(id.to_string()).join("meta.json").exists());
    assert!(cache.path().join(id.to_string()).join(downsampled::FILE).exists());
    let queries = [
        query("{}", TimeRange::ALL),
        query(r#"{service_name="svc-1"}"#, TimeRange::ALL),
        query(
            "{}",
            TimeRange {
                start_ms: 1_200,
                end_ms: 2_500,
            },
        ),
    ];
    let answers = {
        let queries = queries.clone();
        tokio::task::spawn_blocking(move || {
            queries
                .iter()
                .map(|query| block_answer(&block, query, None))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap()
    };
    for (query, answer) in queries.iter().zip(answers) {
        assert_eq!(answer, source.answer(query, None), "{query:?}");
    }
}
