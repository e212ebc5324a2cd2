use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn open(dir: &Path) -> (Wal, Vec<(Position, Vec<u8>)>, crate::ReplayStats) {
    let (wal, mut replay) = Wal::open(WalConfig {
        segment_bytes: 4096,
        ..WalConfig::new(dir)
    })
    .unwrap();
    let records = replay
        .by_ref()
        .map(|record| {
            let record = record.unwrap();
            (record.position, record.payload)
        })
        .collect();
    let stats = replay.stats();
    (wal, records, stats)
}

fn payloads(records: &[(Position, Vec<u8>)]) -> Vec<Vec<u8>> {
    records.iter().map(|(_, payload)| payload.clone()).collect()
}

#[tokio::test]
async fn test_appended_records_come_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, replayed, _) = open(dir.path());
    assert!(replayed.is_empty());
    let mut positions = Vec::new();
    for i in 0..100u32 {
        positions.push(wal.append(i.to_le_bytes().repeat(i as usize)).await.unwrap());
    }
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]));
    // Small segments: several were written.
    assert!(wal.stats().segment.0 > 2, "{:?}", wal.stats());
    wal.close();
    let (_wal, replayed, stats) = open(dir.path());
    let expected: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_le_bytes().repeat(i as usize)).collect();
    assert_eq!(payloads(&replayed), expected);
    assert_eq!(
        replayed.iter().map(|(position, _)| *position).collect::<Vec<_>>(),
        positions
    );
    assert_eq!((stats.records, stats.repaired_segments), (100, 0));
}

#[tokio::test]
async fn test_concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path());
    let wal = Arc::new(wal);
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            let wal = wal.clone();
            tokio::spawn(async move { wal.append(i.to_le_bytes().to_vec()).await.unwrap() })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.records, 200);
    assert!(stats.fsyncs < 200, "{stats:?}");
}

/// The newest segment file.
fn last_segment(dir: &Path) -> PathBuf {
    let ids = segment::list(dir).unwrap();
    segment::path(dir, *ids.last().unwrap())
}

#[tokio::test]
async fn test_completions_run_in_wal_order_before_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path());
    let wal = Arc::new(wal);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..100u32)
        .map(|i| {
            let (wal, seen) = (wal.clone(), seen.clone());
            tokio::spawn(async move {
                let record = seen.clone();
                let position = wal
                    .append_then(i.to_le_bytes().to_vec(), move |position| {
                        record.lock().unwrap().push(position)
                    })
                    .await
                    .unwrap();
                // The completion ran before the answer.
                assert!(seen.lock().unwrap().contains(&position));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.windows(2).all(|pair| pair[0] < pair[1]),
        "completions out of order"
    );
}

#[tokio::test]
async fn test_rotate_answers_after_the_completions_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path());
    let wal = Arc::new(wal);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Slow completions queue up behind the writer; rotate must wait them out.
    let appends: Vec<_> = (0..20u32)
        .map(|i| {
            let (wal, seen) = (wal.clone(), seen.clone());
            tokio::spawn(async move {
                wal.append_then(i.to_le_bytes().to_vec(), move |position| {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    seen.lock().unwrap().push(position);
                })
                .await
                .unwrap()
            })
        })
        .collect();
    tokio::task::yield_now().await;
    // The rotation's own completion sees exactly the older records applied.
    let at_boundary = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
    let rotated = wal
        .rotate_then({
            let (seen, at_boundary) = (seen.clone(), at_boundary.clone());
            move |_| at_boundary.store(seen.lock().unwrap().len(), std::sync::atomic::Ordering::SeqCst)
        })
        .await
        .unwrap();
    let completed: Vec<Position> = seen.lock().unwrap().clone();
    let mut before = 0;
    for append in appends {
        let position = append.await.unwrap();
        if position.segment < rotated {
            before += 1;
            assert!(
                completed.contains(&position),
                "{position:?} was not completed before rotate answered"
            );
        }
    }
    assert!(before > 0, "no append landed before the rotation");
    assert_eq!(at_boundary.load(std::sync::atomic::Ordering::SeqCst), before);
}

#[tokio::test]
async fn test_barrier_runs_between_completions_in_wal_order() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path());
    let wal = Arc::new(wal);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let append = |i: u32| {
        let (wal, seen) = (wal.clone(), seen.clone());
        tokio::spawn(async move {
            wal.append_then(i.to_le_bytes().to_vec(), move |_| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                seen.lock().unwrap().push(format!("record {i}"));
            })
            .await
            .unwrap();
        })
    };
    let before: Vec<_> = (0..10).map(append).collect();
    tokio::task::yield_now().await;
    let marker = seen.clone();
    let barrier = tokio::spawn({
        let wal = wal.clone();
        async move {
            wal.barrier(move || marker.lock().unwrap().push("barrier".to_owned()))
                .await
        }
    });
    tokio::task::yield_now().await;
    let after: Vec<_> = (10..20).map(append).collect();
    barrier.await.unwrap().unwrap();
    for task in before.into_iter().chain(after) {
        task.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<String> = (0..10)
        .map(|i| format!("record {i}"))
        .chain(["barrier".to_owned()])
        .chain((10..20).map(|i| format!("record {i}")))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn test_a_panicking_completion_fails_its_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path());
    let failed = wal.append_then(b"bad".to_vec(), |_| panic!("cannot apply")).await;
    assert!(
        matches!(failed, Err(WalError::Applying { ref message }) if message == "cannot apply"),
        "{failed:?}"
    );
    let applied = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = applied.clone();
    wal.append_then(b"good".to_vec(), move |_| {
        flag.store(true, std::sync::atomic::Ordering::SeqCst)
    })
    .await
    .unwrap();
    assert!(applied.load(std::sync::atomic::Ordering::SeqCst));
    drop(wal);
    // Both records are durable.
    let (_, records, _) = open(dir.path());
    assert_eq!(payloads(&records), [b"bad".to_vec(), b"good".to_vec()]);
}

#[tokio::test]
async fn test_torn_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path());
    wal.append(b"one".to_vec()).await.unwrap();
    wal.append(b"two".to_vec()).await.unwrap();
    wal.close();
    // A crash mid-write: a header promising 100 bytes, 5 written.
    let path = last_segment(dir.path());
    let good_length = std::fs::metadata(&path).unwrap().len();
    let mut torn = Vec::new();
    record::encode(&[7u8; 100], &mut torn);
    torn.truncate(13);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&torn)
        .unwrap();

    let (wal, replayed, stats) = open(dir.path());
    assert_eq!(payloads(&replayed), [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!((stats.repaired_segments, stats.discarded_bytes), (1, 13));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_length);
    // Writing goes on in a new segment; everything comes back.
    wal.append(b"three".to_vec()).await.unwrap();
    wal.close();
    let (_wal, replayed, stats) = open(dir.path());
    assert_eq!(
        payloads(&replayed),
        [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    assert_eq!(stats.repaired_segments, 0);
}

/// Writes "first", "second" in one segment and "third" in the next, then
/// flips a byte in the payload of "second".
async fn corrupt_second_record(dir: &Path) -> (PathBuf, u64) {
    let (wal, _, _) = open(dir);
    wal.append(b"first".to_vec()).await.unwrap();
    let second = wal.append(b"second".to_vec()).await.unwrap();
    wal.rotate().await.unwrap();
    wal.append(b"third".to_vec()).await.unwrap();
    wal.close();
    let first_segment = segment::path(dir, second.segment);
    let mut bytes = std::fs::read(&first_segment).unwrap();
    let at = bytes.len() - 2;
    bytes[at] ^= 0xff;
    std::fs::write(&first_segment, &bytes).unwrap();
    (first_segment, second.offset)
}

#[tokio::test]
async fn test_corruption_before_later_data_stops_replay_and_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, offset) = corrupt_second_record(dir.path()).await;
    let before = std::fs::read(&path).unwrap();
    let (_wal, mut replay) = Wal::open(WalConfig::new(dir.path())).unwrap();
    let first = replay.next().unwrap().unwrap();
    assert_eq!(first.payload, b"first");
    let err = replay.next().unwrap().unwrap_err();
    let WalError::Corrupt {
        path: named,
        offset: at,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!((named.as_str(), *at), (path.display().to_string().as_str(), offset));
    assert!(err.to_string().contains("-ingester.wal.skip-corrupt-records"), "{err}");
    assert!(replay.next().is_none());
    assert_eq!(std::fs::read(&path).unwrap(), before, "the corrupt segment is kept");
}

#[tokio::test]
async fn test_skipping_corruption_keeps_every_later_record() {
    let dir = tempfile::tempdir().unwrap();
    corrupt_second_record(dir.path()).await;
    let (_wal, mut replay) = Wal::open(WalConfig {
        skip_corrupt_records: true,
        ..WalConfig::new(dir.path())
    })
    .unwrap();
    let payloads: Vec<Vec<u8>> = replay.by_ref().map(|record| record.unwrap().payload).collect();
    assert_eq!(payloads, [b"first".to_vec(), b"third".to_vec()]);
    let stats = replay.stats();
    assert_eq!((stats.skipped_records, stats.repaired_segments), (1, 0));
}

#[tokio::test]
async fn test_skipping_resumes_at_the_next_good_record_of_the_same_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path());
    let mut positions = Vec::new();
    for payload in [b"one".as_slice(), b"two", b"three"] {
        positions.push(wal.append(payload.to_vec()).await.unwrap());
    }
    wal.close();
    // The length of "two" is garbage: the record boundary is lost.
    let path = segment::path(dir.path(), positions[1].segment);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[positions[1].offset as usize] = 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let (_wal, mut replay) = Wal::open(WalConfig {
        skip_corrupt_records: true,
        ..WalConfig::new(dir.path())
    })
    .unwrap();
    let payloads: Vec<Vec<u8>> = replay.by_ref().map(|record| record.unwrap().payload).collect();
    assert_eq!(payloads, [b"one".to_vec(), b"three".to_vec()]);
}

#[tokio::test]
async fn test_a_bad_last_record_or_zero_tail_of_the_last_segment_is_torn() {
    for tail in ["bad checksum", "zeros"] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _, _) = open(dir.path());
        wal.append(b"kept".to_vec()).await.unwrap();
        let last = wal.append(b"torn".to_vec()).await.unwrap();
        wal.close();
        let path = segment::path(dir.path(), last.segment);
        let mut bytes = std::fs::read(&path).unwrap();
        match tail {
            "bad checksum" => {
                let end = bytes.len() - 1;
                bytes[end] ^= 0xff;
            }
            _ => bytes.extend([0u8; 4096]),
        }
        std::fs::write(&path, &bytes).unwrap();
        let (_wal, replayed, stats) = open(dir.path());
        let expected: Vec<Vec<u8>> = match tail {
            "bad checksum" => vec![b"kept".to_vec()],
            _ => vec![b"kept".to_vec(), b"torn".to_vec()],
        };
        assert_eq!(payloads(&replayed), expected, "{tail}");
        assert_eq!(stats.repaired_segments, 1, "{tail}");
    }
}

#[tokio::test]
async fn test_empty_and_missing_segments() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(segment::path(dir.path(), SegmentId(3)), b"").unwrap();
    std::fs::write(segment::path(dir.path(), SegmentId(1)), b"xy").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a segment").unwrap();
    let (wal, replayed, stats) = open(dir.path());
    assert!(replayed.is_empty());
    assert_eq!(stats.repaired_segments, 1);
    assert_eq!(wal.stats().segment, SegmentId(4));
}

#[tokio::test]
async fn test_remove_segments_before() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path());
    wal.append(b"a".to_vec()).await.unwrap();
    let second = wal.rotate().await.unwrap();
    wal.append(b"b".to_vec()).await.unwrap();
    let third = wal.rotate().await.unwrap();
    assert_eq!(wal.remove_segments_before(second).await.unwrap(), 1);
    // Never the segment being written.
    assert_eq!(wal.remove_segments_before(SegmentId(u64::MAX)).await.unwrap(), 1);
    assert_eq!(segment::list(dir.path()).unwrap(), [third]);
    wal.close();
}

#[tokio::test]
async fn test_oversized_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path());
    let err = wal.append(vec![0; MAX_RECORD_BYTES + 1]).await.unwrap_err();
    assert!(matches!(err, WalError::RecordTooLarge { .. }));
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Rotate,
    Reopen,
    /// A crash in the middle of writing a record that was never acknowledged.
    TornTail(usize),
    RemoveOldest,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..600).prop_map(Op::Append),
        1 => Just(Op::Rotate),
        1 => Just(Op::Reopen),
        1 => (1usize..40).prop_map(Op::TornTail),
        1 => Just(Op::RemoveOldest),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Invariants: after any sequence of appends, rotations, reopenings,
    /// torn tails and segment removals, replay returns exactly the
    /// acknowledged records of the segments not removed, in order.
    #[test]
    fn test_replay_returns_exactly_the_acknowledged_records(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, _, _) = open(dir.path());
            let mut acknowledged: Vec<(Position, Vec<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Append(payload) => {
                        let position = wal.append(payload.clone()).await.unwrap();
                        acknowledged.push((position, payload));
                    }
                    Op::Rotate => {
                        wal.rotate().await.unwrap();
                    }
                    Op::Reopen | Op::TornTail(_) => {
                        wal.close();
                        if let Op::TornTail(length) = op {
                            let mut torn = Vec::new();
                            record::encode(&[1u8; 64], &mut torn);
                            torn.truncate(length);
                            let path = last_segment(dir.path());
                            std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(&torn).unwrap();
                        }
                        let (reopened, replayed, _) = open(dir.path());
                        prop_assert_eq!(&replayed, &acknowledged);
                        wal = reopened;
                    }
                    Op::RemoveOldest => {
                        let oldest = segment::list(dir.path()).unwrap()[0];
                        let next = SegmentId(oldest.0 + 1);
                        wal.remove_segments_before(next).await.unwrap();
                        acknowledged.retain(|(position, _)| position.segment >= next || position.segment >= wal.stats().segment);
                    }
                }
            }
            wal.close();
            let (_wal, replayed, _) = open(dir.path());
            prop_assert_eq!(&replayed, &acknowledged);
            Ok(())
        })?;
    }
}
