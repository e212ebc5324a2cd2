#![allow(clippy::unwrap_used)]

use flamedb_model::pprof::StackProfileBuilder;
use flamedb_model::{Labels, ProfileId, Tree, parse_selector};
use flamedb_storage::{
    BlockContents, BucketConfig, IndexRead, ProfileQuery, ProfileRow, SeriesIndex, Symbols, TimeRange, write_block,
};

use super::*;

const CPU: &str = "process_cpu:cpu:nanoseconds::";
const HOUR: i64 = 3_600_000;

/// Uploads a block of `profiles` (profile id, time ms, value; all of
/// service `api`, stack `main;work`) for tenant `t`; its id.
async fn upload(bucket: &Bucket, local: &Path, profiles: &[(u8, i64, i64)]) -> Ulid {
    let labels = Labels::from_pairs([
        ("__name__", "process_cpu".to_owned()),
        ("__profile_type__", CPU.to_owned()),
        ("service_name", "api".to_owned()),
    ]);
    let mut series = SeriesIndex::new();
    let mut symbols = Symbols::new();
    let mut rows = Vec::new();
    for &(id, time_ms, value) in profiles {
        let mut builder = StackProfileBuilder::new("cpu", "nanoseconds");
        builder.add(["main", "work"], value);
        let stacks = symbols.add_profile(&builder.build());
        rows.push(ProfileRow {
            id: ProfileId([id; 16]),
            series: series.get_or_insert(&labels, labels.fingerprint(), time_ms),
            time_nanos: time_ms * 1_000_000,
            total: value,
            stacks: stacks.into(),
            values: vec![value].into(),
            span_ids: None,
        });
    }
    let id = Ulid::generate();
    let contents = BlockContents {
        series: &series,
        symbols: &symbols,
        rows: &rows,
    };
    let meta = write_block(local, id, contents, &[]).unwrap();
    bucket
        .upload_block("t", &local.join(id.to_string()), &meta)
        .await
        .unwrap();
    id
}

/// Compacts `sources` of tenant `t` into block `id` and uploads it, as a
/// compactor does before it marks the sources.
async fn upload_compacted(bucket: &Bucket, work: &Path, sources: &[Ulid], id: Ulid) {
    let mut blocks = Vec::new();
    for &source in sources {
        let dir = bucket.download_block("t", source, work).await.unwrap();
        blocks.push(Block::open(&dir).unwrap());
    }
    let meta = compact(&blocks, work, id, None).unwrap();
    bucket
        .upload_block("t", &work.join(id.to_string()), &meta)
        .await
        .unwrap();
}

/// Every CPU profile.
fn everything() -> ProfileQuery {
    ProfileQuery {
        profile_type: CPU.to_owned(),
        selector: parse_selector("{}").unwrap(),
        range: TimeRange::ALL,
        series: None,
    }
}

/// What the bucket's listed blocks hold: profiles (counted once by ID,
/// as queries count them) and the merged total.
async fn read_back(bucket: &Bucket) -> (usize, usize, i64) {
    let downloads = tempfile::tempdir().unwrap();
    let metas = bucket.list_blocks("t").await.unwrap();
    let query = everything();
    let mut ids = std::collections::HashSet::new();
    let mut tree = Tree::new();
    for meta in &metas {
        let dir = bucket.download_block("t", meta.id, downloads.path()).await.unwrap();
        let block = Block::open(&dir).unwrap();
        let mut only = std::collections::HashSet::new();
        block
            .visit_profiles(&query, |profile| {
                if ids.insert(profile.id) {
                    only.insert(profile.id);
                }
            })
            .unwrap();
        block.merge_into(&query, Some(&only), None, &mut tree).unwrap();
    }
    (metas.len(), ids.len(), tree.total())
}

fn filesystem_bucket(dir: &Path) -> Bucket {
    Bucket::new(&BucketConfig::Filesystem {
        dir: dir.join("bucket"),
    })
    .unwrap()
}

/// A compactor of `bucket` with the test's settings, keeping every block.
fn compactor(bucket: &Bucket, dir: &Path) -> Compactor {
    Compactor::new(bucket.clone(), config(dir), keep_forever(), &mut Registry::default()).unwrap()
}

/// What a round that had nothing to do reports: it only wrote the index.
fn idle() -> RoundReport {
    RoundReport {
        indexes_written: 1,
        ..RoundReport::default()
    }
}

fn keep_forever() -> TenantRetention {
    Arc::new(|_| Duration::ZERO)
}

fn config(dir: &Path) -> CompactorConfig {
    CompactorConfig {
        data_dir: dir.join("compactor"),
        interval: Duration::from_secs(3600),
        first_level_wait: Duration::from_secs(25 * 60),
        block_ranges: vec![Duration::from_secs(3600), Duration::from_secs(2 * 3600)],
        deletion_delay: Duration::from_secs(12 * 3600),
        max_memory_bytes: 0,
        downsampling_resolutions: vec![Duration::from_secs(600), Duration::from_secs(3600)],
    }
}

#[tokio::test]
async fn test_replicas_of_a_window_become_one_block_and_are_deleted_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(dir.path());
    let local = dir.path().join("blocks");
    // Three replicas of the first hour (one missed profile 3), and a
    // block of the second hour.
    let replica = [(1, 1_000, 5), (2, 2_000, 7)];
    let mut sources = Vec::new();
    for copy in 0..3 {
        let mut profiles = replica.to_vec();
        if copy == 2 {
            profiles.push((3, 3_000, 11));
        }
        sources.push(upload(&bucket, &local, &profiles).await);
    }
    upload(&bucket, &local, &[(4, HOUR + 1_000, 13)]).await;
    assert_eq!(read_back(&bucket).await, (4, 4, 5 + 7 + 11 + 13));

    let compactor = compactor(&bucket, dir.path());
    // The first window has not waited long enough yet.
    let too_early = HOUR + 24 * 60 * 1000;
    assert_eq!(compactor.run_once(too_early).await.unwrap(), idle());

    let now = 2 * HOUR + 30 * 60 * 1000;
    let report = compactor.run_once(now).await.unwrap();
    // The second hour's block, alone in its window, is compacted alone.
    assert_eq!(
        report,
        RoundReport {
            blocks_written: 2,
            blocks_compacted: 4,
            indexes_written: 1,
            ..RoundReport::default()
        }
    );
    // The round's last listing is the tenant's index.
    let IndexRead::Read { index, .. } = bucket.read_index("t", None).await.unwrap() else {
        panic!("no bucket index written");
    };
    assert_eq!(index.blocks, bucket.list_blocks("t").await.unwrap());
    assert_eq!(index.deletion_delay_ms, 12 * HOUR);
    assert_eq!(index.blocks.len(), 2);
    assert_eq!(read_back(&bucket).await, (2, 4, 5 + 7 + 11 + 13));
    let compacted: Vec<BlockMeta> = bucket
        .list_blocks("t")
        .await
        .unwrap()
        .into_iter()
        .filter(|meta| meta.compaction.level == 2 && meta.compaction.sources.len() == 3)
        .collect();
    sources.sort_unstable();
    assert_eq!(compacted.len(), 1);
    assert_eq!(compacted[0].compaction.sources, sources);
    assert_eq!(compacted[0].stats.num_profiles, 3);
    assert_eq!(
        compacted[0].downsample,
        Some(Downsample {
            resolutions_ms: vec![600_000, 3_600_000]
        })
    );

    // Marked sources stay until the delay is over, then go.
    let marked: Vec<Ulid> = bucket
        .marked_for_deletion("t")
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(marked.len(), 4);

    // The next round merges the two hours (the 2h range).
    let report = compactor.run_once(now).await.unwrap();
    assert_eq!((report.blocks_written, report.blocks_compacted), (1, 2));
    let metas = bucket.list_blocks("t").await.unwrap();
    assert_eq!(metas.len(), 1);
    assert_eq!((metas[0].compaction.level, metas[0].compaction.sources.len()), (3, 4));
    assert_eq!(read_back(&bucket).await, (1, 4, 5 + 7 + 11 + 13));
    // Merged whole, from its downsampled buckets, it holds the same.
    let downloads = tempfile::tempdir().unwrap();
    let block = Block::open(&bucket.download_block("t", metas[0].id, downloads.path()).await.unwrap()).unwrap();
    let mut tree = Tree::new();
    block.merge_into(&everything(), None, None, &mut tree).unwrap();
    assert_eq!(tree.total(), 5 + 7 + 11 + 13);
    assert_eq!(compactor.run_once(now).await.unwrap(), idle());

    let later = now_ms() + 12 * HOUR;
    assert_eq!(compactor.run_once(later).await.unwrap().blocks_deleted, 6);
    assert!(bucket.marked_for_deletion("t").await.unwrap().is_empty());
    assert_eq!(read_back(&bucket).await, (1, 4, 5 + 7 + 11 + 13));
}

#[tokio::test]
async fn test_a_block_that_cannot_be_read_is_marked_no_compact_and_its_window_goes_on_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(dir.path());
    let local = dir.path().join("blocks");
    let replica = [(1, 1_000, 5), (2, 2_000, 7)];
    let good = upload(&bucket, &local, &replica).await;
    let damaged = upload(&bucket, &local, &replica).await;
    let table = dir.path().join(format!(
        "bucket/t/blocks/{damaged}/{}",
        flamedb_storage::block::PROFILES_FILE
    ));
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&table, bytes).unwrap();

    let compactor = compactor(&bucket, dir.path());
    let now = 2 * HOUR;
    let report = compactor.run_once(now).await.unwrap();
    assert_eq!((report.failures, report.blocks_marked_no_compact), (1, 1));
    assert_eq!(
        bucket.marked_no_compact("t").await.unwrap(),
        std::collections::HashSet::from([damaged])
    );
    // The next round compacts the window without it, and leaves it be.
    let report = compactor.run_once(now).await.unwrap();
    assert_eq!(
        (report.failures, report.blocks_written, report.blocks_compacted),
        (0, 1, 1)
    );
    let metas = bucket.list_blocks("t").await.unwrap();
    assert!(metas.iter().any(|meta| meta.id == damaged));
    let compacted: Vec<&BlockMeta> = metas.iter().filter(|meta| meta.compaction.level == 2).collect();
    assert_eq!(compacted.len(), 1);
    assert_eq!(compacted[0].compaction.sources, [good]);
    assert_eq!(compactor.run_once(now).await.unwrap(), idle());
}

#[tokio::test]
async fn test_an_upload_in_progress_is_never_deleted_as_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(dir.path());
    let id = upload(&bucket, &dir.path().join("blocks"), &[(1, 1_000, 5)]).await;
    // Its files are there, its meta (written last) not yet.
    let meta = dir.path().join(format!("bucket/t/blocks/{id}/meta.json"));
    std::fs::remove_file(&meta).unwrap();
    let config = CompactorConfig {
        deletion_delay: Duration::ZERO,
        ..config(dir.path())
    };
    let compactor = Compactor::new(bucket.clone(), config, keep_forever(), &mut Registry::default()).unwrap();
    let now = now_ms();
    assert_eq!(compactor.run_once(now).await.unwrap().incomplete_deleted, 0);
    assert_eq!(bucket.incomplete_blocks("t").await.unwrap().len(), 1);
    let later = now + millis(UPLOAD_GRACE);
    assert_eq!(compactor.run_once(later).await.unwrap().incomplete_deleted, 1);
    assert!(bucket.incomplete_blocks("t").await.unwrap().is_empty());
}

#[tokio::test]
async fn test_blocks_past_the_tenant_retention_are_marked_for_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(dir.path());
    let local = dir.path().join("blocks");
    let old = upload(&bucket, &local, &[(1, 1_000, 5)]).await;
    upload(&bucket, &local, &[(2, 30 * HOUR, 7)]).await;
    // Tenant t keeps a day.
    let retention: TenantRetention = Arc::new(|tenant| Duration::from_secs(if tenant == "t" { 24 * 3600 } else { 0 }));
    let compactor = Compactor::new(bucket.clone(), config(dir.path()), retention, &mut Registry::default()).unwrap();
    let report = compactor.run_once(25 * HOUR).await.unwrap();
    assert_eq!(report.blocks_expired, 1);
    assert_eq!(
        bucket
            .marked_for_deletion("t")
            .await
            .unwrap()
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        [old]
    );
    assert_eq!(read_back(&bucket).await, (1, 1, 7));
}

#[tokio::test]
async fn test_a_round_cut_short_before_marking_is_finished_without_double_counts() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(dir.path());
    let local = dir.path().join("blocks");
    let first = upload(&bucket, &local, &[(1, 1_000, 5), (2, 2_000, 7)]).await;
    let second = upload(&bucket, &local, &[(1, 1_000, 5), (2, 2_000, 7)]).await;
    // A compactor killed after uploading its block, before marking the
    // sources: the new block and both sources are listed.
    upload_compacted(
        &bucket,
        &dir.path().join("cut-short"),
        &[first, second],
        Ulid::generate(),
    )
    .await;
    assert_eq!(read_back(&bucket).await, (3, 2, 12));

    let compactor = compactor(&bucket, dir.path());
    let report = compactor.run_once(2 * HOUR).await.unwrap();
    assert_eq!((report.blocks_written, report.blocks_compacted), (1, 3));
    let metas = bucket.list_blocks("t").await.unwrap();
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].compaction.level, 3);
    assert_eq!(metas[0].stats.num_profiles, 2);
    assert_eq!(read_back(&bucket).await, (1, 2, 12));
}

#[tokio::test]
async fn test_a_redo_of_a_compaction_writes_the_same_block_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(dir.path());
    let local = dir.path().join("blocks");
    let first = upload(&bucket, &local, &[(1, 1_000, 5), (2, 2_000, 7)]).await;
    let second = upload(&bucket, &local, &[(1, 1_000, 5), (2, 2_000, 7)]).await;
    // A compactor cut short after uploading its block (under the ID the
    // same data always gets), before marking the sources.
    let metas = bucket.list_blocks("t").await.unwrap();
    let id = output_id(&metas, &[first, second]);
    upload_compacted(&bucket, &dir.path().join("cut-short"), &[first, second], id).await;

    let compactor = compactor(&bucket, dir.path());
    let report = compactor.run_once(2 * HOUR).await.unwrap();
    assert_eq!((report.blocks_written, report.blocks_compacted), (1, 2));
    let metas = bucket.list_blocks("t").await.unwrap();
    assert_eq!(metas.iter().map(|meta| meta.id).collect::<Vec<_>>(), [id]);
    assert_eq!(read_back(&bucket).await, (1, 2, 12));
}

#[test]
fn test_the_work_directory_must_be_empty_or_the_compactors() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(dir.path());
    let work = dir.path().join("compactor");
    std::fs::create_dir_all(work.join("someone-elses")).unwrap();
    std::fs::write(work.join("precious"), b"data").unwrap();
    let err = Compactor::new(
        bucket.clone(),
        config(dir.path()),
        keep_forever(),
        &mut Registry::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not the compactor's"), "{err}");
    assert!(work.join("precious").exists());
    // Its own directory: emptied of what a round left, the marker kept.
    std::fs::remove_dir_all(&work).unwrap();
    compactor(&bucket, dir.path());
    std::fs::create_dir_all(work.join("t/inputs")).unwrap();
    Compactor::new(bucket, config(dir.path()), keep_forever(), &mut Registry::default()).unwrap();
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert_eq!(left, [".flamedb-compactor"]);
}

#[test]
fn test_plan_groups_whole_windows_that_waited() {
    let compacted = |min_time: i64, max_time: i64| {
        let mut meta = meta_with_nothing_set();
        meta.id = Ulid::generate();
        (meta.min_time, meta.max_time) = (min_time, max_time);
        meta.compaction.level = 2;
        meta
    };
    let meta = |min_time: i64, max_time: i64| BlockMeta {
        compaction: flamedb_storage::block::Compaction {
            level: 1,
            sources: Vec::new(),
        },
        ..compacted(min_time, max_time)
    };
    let blocks = [
        meta(0, 10),
        meta(5, HOUR - 1),
        // Crosses the window's end: left alone.
        meta(10, HOUR + 5),
        meta(HOUR, HOUR + 10),
        meta(HOUR + 1, HOUR + 2),
        // Alone in a window that has not ended.
        meta(3 * HOUR, 3 * HOUR + 1),
    ];
    let wait = 25 * 60 * 1000;
    let groups = plan(&blocks, &[HOUR], 2 * HOUR + wait, wait);
    assert_eq!(
        groups,
        [vec![blocks[0].id, blocks[1].id], vec![blocks[3].id, blocks[4].id]]
    );
    // The second hour has not waited long enough.
    let groups = plan(&blocks, &[HOUR], 2 * HOUR + wait - 1, wait);
    assert_eq!(groups, [vec![blocks[0].id, blocks[1].id]]);
    // With a 2h range too: what the 1h windows group is not grouped again;
    // the block across them is compacted alone in its 2h window.
    let groups = plan(&blocks, &[HOUR, 2 * HOUR], 2 * HOUR + wait, wait);
    assert_eq!(groups.len(), 3);
    assert_eq!(groups[2], [blocks[2].id]);
    // Compacted blocks alone in their hours (or across one) meet in their
    // 2h window.
    let lone = [compacted(0, 10), compacted(HOUR + 1, HOUR + 2), compacted(10, HOUR + 5)];
    let groups = plan(&lone, &[HOUR, 2 * HOUR], 2 * HOUR + wait, wait);
    assert_eq!(groups, [vec![lone[0].id, lone[1].id, lone[2].id]]);
    // An ingester's block alone in its window is compacted alone, so
    // queries read it without listing; a compacted one is left as it is.
    let lone = [meta(0, 10), compacted(HOUR + 1, HOUR + 2)];
    let groups = plan(&lone, &[HOUR], 2 * HOUR + wait, wait);
    assert_eq!(groups, [vec![lone[0].id]]);
}

#[test]
fn test_a_group_is_cut_to_the_oldest_blocks_that_fit_the_memory_limit() {
    let meta = |min_time: i64, profiles: u64| BlockMeta {
        id: Ulid::generate(),
        min_time,
        max_time: min_time + 1,
        stats: flamedb_storage::block::BlockStats {
            num_series: 1,
            num_profiles: profiles,
            num_samples: profiles * 10,
        },
        ..meta_with_nothing_set()
    };
    let blocks = [meta(30, 1_000), meta(10, 1_000), meta(20, 1_000)];
    let group: Vec<Ulid> = blocks.iter().map(|meta| meta.id).collect();
    let each = memory_estimate(&blocks[0]);
    assert_eq!(each, 1_000 * 384 + 10_000 * 40 + (256 << 10));
    assert_eq!(within_memory(&blocks, &group, 0).unwrap().len(), 3);
    assert_eq!(
        within_memory(&blocks, &group, 2 * each + 1).unwrap(),
        [blocks[1].id, blocks[2].id]
    );
    assert_eq!(within_memory(&blocks, &group, 2 * each - 1), None);
    // One block an ingester wrote, alone in its window, is compacted alone
    // when it fits.
    assert_eq!(within_memory(&blocks, &group[..1], each).unwrap(), [blocks[0].id]);
    assert_eq!(within_memory(&blocks, &group[..1], each - 1), None);
}

/// A meta with nothing set but what `plan` reads.
fn meta_with_nothing_set() -> BlockMeta {
    BlockMeta {
        version: flamedb_storage::block::FORMAT_VERSION,
        id: Ulid::nil(),
        min_time: 0,
        max_time: 0,
        stats: Default::default(),
        files: Vec::new(),
        source: "ingester".to_owned(),
        compaction: flamedb_storage::block::Compaction {
            level: 1,
            sources: Vec::new(),
        },
        downsample: None,
    }
}

/// The registry's text exposition.
fn exposition(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test]
async fn test_a_compactor_leaves_tenants_it_does_not_own_alone_and_reports_what_it_owns() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = filesystem_bucket(dir.path());
    let local = dir.path().join("blocks");
    for _ in 0..2 {
        upload(&bucket, &local, &[(1, 1_000, 5)]).await;
    }
    let owned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut registry = Registry::default();
    let compactor = Compactor::new(bucket.clone(), config(dir.path()), keep_forever(), &mut registry)
        .unwrap()
        .with_ownership({
            let owned = Arc::clone(&owned);
            Arc::new(move |tenant: &str| tenant == "t" && owned.load(std::sync::atomic::Ordering::Relaxed))
        });
    let now = 2 * HOUR;
    // Not owned: neither compacted nor indexed, and counted as seen only.
    assert_eq!(compactor.run_once(now).await.unwrap(), RoundReport::default());
    assert_eq!(bucket.list_blocks("t").await.unwrap().len(), 2);
    assert!(matches!(
        bucket.read_index("t", None).await.unwrap(),
        IndexRead::Missing
    ));
    let text = exposition(&registry);
    assert!(text.contains("flamedb_compactor_tenants_discovered 1\n"), "{text}");
    assert!(text.contains("flamedb_compactor_tenants_owned 0\n"), "{text}");
    assert!(!text.contains("flamedb_compactor_blocks{"), "{text}");

    owned.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = compactor.run_once(now).await.unwrap();
    assert_eq!((report.blocks_written, report.indexes_written), (1, 1));
    let text = exposition(&registry);
    assert!(text.contains("flamedb_compactor_tenants_owned 1\n"), "{text}");
    assert!(
        text.contains("flamedb_compactor_blocks{tenant=\"t\",level=\"2\"} 1\n"),
        "{text}"
    );
    assert!(!text.contains("level=\"1\""), "{text}");
    assert!(!text.contains("flamedb_compactor_input_bytes_total 0\n"), "{text}");
    assert!(
        !text.contains("flamedb_compactor_last_successful_run_timestamp_seconds 0"),
        "{text}"
    );

    // Passed to another compactor: its block counts go.
    owned.store(false, std::sync::atomic::Ordering::Relaxed);
    compactor.run_once(now).await.unwrap();
    let text = exposition(&registry);
    assert!(!text.contains("flamedb_compactor_blocks{"), "{text}");
}
