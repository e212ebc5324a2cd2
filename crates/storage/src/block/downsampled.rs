//! A compacted block's downsampled table: per resolution (finest first,
//! each a multiple of the one before), per series and time bucket (aligned
//! to the epoch), the bucket's profiles merged into one row. The table has
//! the profiles table's format: the bucket's start as its time, the
//! samples merged in stack order, the totals summed, the profile IDs summed
//! (128-bit, wrapping) in the ID column, no span IDs. Rows go by
//! resolution (each in row groups of its own, so a read of coarse buckets
//! decodes nothing of the fine ones), then series, then time; the series
//! file records, per series
//! and resolution, where its rows start, each bucket's index and how many
//! profile rows it merges.
//!
//! A merge over a range reads each series' buckets the range holds whole,
//! the coarsest that fit first, and profile rows only for the two finest
//! buckets the range holds in part: a long range reads about one row per
//! series and coarse bucket.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use flamedb_model::ProfileId;
use foldhash::{HashMap, HashMapExt};

use super::format::{DownsampledRun, SeriesEntry};
use super::{BlockError, profiles};
use crate::{ProfileRow, TimeRange, add_samples};

pub const FILE: &str = "downsampled.parquet";

/// Where a downsampled block's buckets are, per resolution.
#[derive(Debug)]
pub(crate) struct Downsampled {
    levels: Vec<Resolution>,
}

#[derive(Debug)]
struct Resolution {
    resolution_ms: i64,
    /// Per series (by block id).
    runs: Vec<DownsampledRun>,
}

/// What a merge over a range reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReadPlan {
    /// Rows of the downsampled table, ascending.
    pub buckets: Vec<BucketRow>,
    /// Row ranges of the profiles table, ascending and disjoint.
    pub profiles: Vec<Range<usize>>,
}

/// A row of the downsampled table and what it must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BucketRow {
    pub row: usize,
    pub series: u32,
    pub start_ms: i64,
}

/// Downsampling resolutions (ms) a block can have: at least one, each at
/// least 1 ms and a multiple of the one before, and longer.
pub fn check_resolutions(resolutions_ms: &[i64]) -> Result<(), String> {
    if resolutions_ms.first().is_none_or(|&finest| finest < 1)
        || resolutions_ms
            .windows(2)
            .any(|pair| pair[1] <= pair[0] || pair[1] % pair[0] != 0)
    {
        return Err(format!(
            "downsampling resolutions {resolutions_ms:?} (ms) are not each a multiple of the one before"
        ));
    }
    Ok(())
}

impl Downsampled {
    /// From the series entries of a block whose meta lists
    /// `resolutions_ms`; each series' profile rows are `rows`. Errors
    /// say what does not add up.
    pub(crate) fn new(
        resolutions_ms: &[i64],
        entries: &mut [SeriesEntry],
        rows: &[Range<u32>],
    ) -> Result<Self, String> {
        check_resolutions(resolutions_ms)?;
        let mut levels: Vec<Resolution> = resolutions_ms
            .iter()
            .map(|&resolution_ms| Resolution {
                resolution_ms,
                runs: Vec::with_capacity(entries.len()),
            })
            .collect();
        let mut next_row = 0u64;
        for (index, level) in levels.iter_mut().enumerate() {
            for (entry, rows) in entries.iter_mut().zip(rows) {
                let Some(run) = entry.downsampled.get_mut(index) else {
                    return Err("a series lacks downsampled buckets".to_owned());
                };
                let merged: u64 = run.profile_rows.iter().map(|&rows| u64::from(rows)).sum();
                if u64::from(run.first_row) != next_row
                    || run.profile_rows.len() != run.buckets.len()
                    || merged != u64::from(rows.end - rows.start)
                    || run.buckets.windows(2).any(|pair| pair[1] <= pair[0])
                {
                    return Err("downsampled buckets are not consecutive or do not hold the series' rows".to_owned());
                }
                next_row += run.buckets.len() as u64;
                level.runs.push(std::mem::take(run));
            }
        }
        Ok(Self { levels })
    }

    /// What merging `series` (block ids, whose profile rows are `rows`)
    /// over `range` reads.
    pub(crate) fn plan(&self, range: TimeRange, series: &[u32], rows: &[Range<u32>]) -> ReadPlan {
        // The span each level's whole buckets cover, coarsest last.
        let spans: Vec<(i128, i128)> = self
            .levels
            .iter()
            .map(|level| whole_span(range, level.resolution_ms))
            .collect();
        let mut plan = ReadPlan::default();
        for &series in series {
            for (index, level) in self.levels.iter().enumerate() {
                let Some(run) = level.runs.get(series as usize) else {
                    continue;
                };
                let (from, to) = spans[index];
                let coarser = spans.get(index + 1).copied();
                for (position, &bucket) in run.buckets.iter().enumerate() {
                    let start = i128::from(bucket) * i128::from(level.resolution_ms);
                    let whole = from <= start && start + i128::from(level.resolution_ms) <= to;
                    let in_coarser = coarser.is_some_and(|(from, to)| from <= start && start < to);
                    if whole && !in_coarser {
                        plan.buckets.push(BucketRow {
                            row: run.first_row as usize + position,
                            series,
                            start_ms: bucket.saturating_mul(level.resolution_ms),
                        });
                    }
                }
            }
            // Profile rows for the finest buckets the range holds in part.
            let (Some(finest), Some(rows)) = (self.levels.first(), rows.get(series as usize)) else {
                continue;
            };
            let Some(run) = finest.runs.get(series as usize) else {
                continue;
            };
            let resolution = i128::from(finest.resolution_ms);
            let mut next = rows.start as usize;
            for (&bucket, &count) in run.buckets.iter().zip(&run.profile_rows) {
                let profile_rows = next..next + count as usize;
                next = profile_rows.end;
                let start = i128::from(bucket) * resolution;
                let end = start + resolution - 1;
                let overlaps = start <= i128::from(range.end_ms) && i128::from(range.start_ms) <= end;
                let whole = i128::from(range.start_ms) <= start && end <= i128::from(range.end_ms);
                if overlaps && !whole {
                    match plan.profiles.last_mut() {
                        Some(last) if last.end == profile_rows.start => last.end = profile_rows.end,
                        _ => plan.profiles.push(profile_rows),
                    }
                }
            }
        }
        plan.buckets.sort_unstable();
        plan.profiles.sort_unstable_by_key(|rows| rows.start);
        plan
    }
}

/// Adds the samples of `buckets` (rows of the downsampled table in block
/// directory `dir`, ascending) to `by_stack`; each row read must be of the
/// series and bucket the plan expects.
pub(crate) fn add_buckets(
    dir: &Path,
    buckets: &[BucketRow],
    by_stack: &mut HashMap<u32, i64>,
) -> Result<(), BlockError> {
    if buckets.is_empty() {
        return Ok(());
    }
    let path = dir.join(FILE);
    let file = File::open(&path).map_err(BlockError::io("open", &path))?;
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for bucket in buckets {
        match ranges.last_mut() {
            Some(last) if last.end == bucket.row => last.end = bucket.row + 1,
            _ => ranges.push(bucket.row..bucket.row + 1),
        }
    }
    let mut expected = buckets.iter();
    let mut mismatch = false;
    profiles::read(file, ranges, profiles::Want::Samples, |row| {
        let matches = expected.next().is_some_and(|bucket| {
            bucket.series == row.series && bucket.start_ms.checked_mul(1_000_000) == Some(row.time_nanos)
        });
        if matches {
            add_samples(by_stack, row.stacks, row.values, None, None);
        } else {
            mismatch = true;
        }
    })
    .map_err(|reason| BlockError::corrupt(&path, reason))?;
    if mismatch || expected.next().is_some() {
        return Err(BlockError::corrupt(&path, "rows differ from the series' buckets"));
    }
    Ok(())
}

/// The span (ms, end excluded) of the buckets of `resolution_ms` that
/// `range` holds whole.
fn whole_span(range: TimeRange, resolution_ms: i64) -> (i128, i128) {
    let resolution = i128::from(resolution_ms.max(1));
    let from = i128::from(range.start_ms).div_euclid(resolution) * resolution;
    let from = if from < i128::from(range.start_ms) {
        from + resolution
    } else {
        from
    };
    let to = (i128::from(range.end_ms) + 1).div_euclid(resolution) * resolution;
    (from, to.max(from))
}

/// The downsampled rows of `rows` (a block's, each with its block series,
/// in table order) at each of `resolutions_ms`, in table order, and the
/// row each resolution starts at; fills in each series entry's runs.
pub(crate) fn merged_rows<'a>(
    resolutions_ms: &'a [i64],
    rows: &'a [(u32, &'a ProfileRow)],
    entries: &mut [SeriesEntry],
) -> (Vec<usize>, impl Iterator<Item = (u32, ProfileRow)> + 'a) {
    let mut levels = Vec::with_capacity(resolutions_ms.len());
    let mut level_starts = Vec::with_capacity(resolutions_ms.len());
    let mut next_row = 0u32;
    for &resolution_ms in resolutions_ms {
        level_starts.push(next_row as usize);
        let resolution_ms = resolution_ms.max(1);
        let key = move |row: &(u32, &ProfileRow)| (row.0, row.1.time_ms().div_euclid(resolution_ms));
        let buckets: Vec<&[(u32, &ProfileRow)]> = rows.chunk_by(|a, b| key(a) == key(b)).collect();
        let mut buckets_of = buckets.iter().peekable();
        for (series, entry) in entries.iter_mut().enumerate() {
            let mut run = DownsampledRun {
                first_row: next_row,
                ..DownsampledRun::default()
            };
            while let Some(bucket) = buckets_of.next_if(|bucket| bucket[0].0 == series as u32) {
                run.buckets.push(key(&bucket[0]).1);
                run.profile_rows.push(bucket.len() as u32);
                next_row += 1;
            }
            entry.downsampled.push(run);
        }
        levels.push((resolution_ms, buckets));
    }
    let merged = levels.into_iter().flat_map(|(resolution_ms, buckets)| {
        buckets.into_iter().map(move |bucket| {
            let start_ms = bucket[0].1.time_ms().div_euclid(resolution_ms) * resolution_ms;
            (bucket[0].0, merge(bucket, start_ms))
        })
    });
    (level_starts, merged)
}

/// One row of the downsampled table: the profile rows of one series and
/// bucket (starting at `start_ms`) merged.
fn merge(bucket: &[(u32, &ProfileRow)], start_ms: i64) -> ProfileRow {
    let mut by_stack: HashMap<u32, i64> = HashMap::new();
    let mut id_sum = 0u128;
    let mut total = 0i64;
    for (_, row) in bucket {
        id_sum = id_sum.wrapping_add(u128::from_be_bytes(row.id.0));
        total = total.wrapping_add(row.total);
        for (&stack, &value) in row.stacks.iter().zip(row.values.iter()) {
            let sum = by_stack.entry(stack).or_insert(0);
            *sum = sum.wrapping_add(value);
        }
    }
    let mut merged: Vec<(u32, i64)> = by_stack.into_iter().collect();
    merged.sort_unstable();
    ProfileRow {
        id: ProfileId(id_sum.to_be_bytes()),
        series: bucket[0].0,
        time_nanos: start_ms.saturating_mul(1_000_000),
        total,
        stacks: merged.iter().map(|(stack, _)| *stack).collect(),
        values: merged.iter().map(|(_, value)| *value).collect(),
        span_ids: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_whole_spans_hold_only_whole_buckets() {
        let range = |start_ms, end_ms| TimeRange { start_ms, end_ms };
        assert_eq!(whole_span(range(0, 99), 10), (0, 100));
        assert_eq!(whole_span(range(1, 99), 10), (10, 100));
        assert_eq!(whole_span(range(1, 98), 10), (10, 90));
        assert_eq!(whole_span(range(-15, -1), 10), (-10, 0));
        assert_eq!(whole_span(range(3, 8), 10), (10, 10));
        let (from, to) = whole_span(TimeRange::ALL, 10);
        assert!(from <= i128::from(i64::MIN) + 10 && to >= i128::from(i64::MAX) - 10);
    }

    #[test]
    fn test_a_plan_reads_the_coarsest_whole_buckets_and_profiles_only_at_the_edges() {
        // One series, profile rows 0..12, one per 10 ms from 0 to 110 ms:
        // buckets of 10 ms (rows 0..12 of the table) and of 40 ms (12..15).
        let fine = DownsampledRun {
            first_row: 0,
            buckets: (0..12).collect(),
            profile_rows: vec![1; 12],
        };
        let coarse = DownsampledRun {
            first_row: 12,
            buckets: vec![0, 1, 2],
            profile_rows: vec![4, 4, 4],
        };
        let mut entries = vec![SeriesEntry {
            downsampled: vec![fine, coarse],
            ..SeriesEntry::default()
        }];
        let rows = vec![Range { start: 0, end: 12 }];
        let downsampled = Downsampled::new(&[10, 40], &mut entries, &rows).unwrap();
        // 5..=94: 10..40 and 80..90 fine, 40..80 coarse, profiles of 0..10
        // and 90..100 at the edges.
        let plan = downsampled.plan(
            TimeRange {
                start_ms: 5,
                end_ms: 94,
            },
            &[0],
            &rows,
        );
        assert_eq!(
            plan,
            ReadPlan {
                buckets: [(1, 10), (2, 20), (3, 30), (8, 80), (13, 40)]
                    .map(|(row, start_ms)| BucketRow {
                        row,
                        series: 0,
                        start_ms
                    })
                    .to_vec(),
                profiles: vec![0..1, 9..10],
            }
        );
        // Resolutions that do not nest are refused.
        let mut entries = vec![SeriesEntry::default()];
        assert!(Downsampled::new(&[10, 25], &mut entries, &[Range { start: 0, end: 0 }]).is_err());
    }
}
