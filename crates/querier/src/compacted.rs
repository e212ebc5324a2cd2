//! Which stored blocks a query reads, and up to when compacted blocks alone
//! hold its range, so that part is merged without listing a profile.
//!
//! A block whose level-1 sources another block holds as well is not read:
//! that other block holds every profile it does. A compacted block (level 2
//! or more) holds each of its profiles once. Before the returned time no
//! other source holds a profile: no ingester (by the time span each one
//! reports), no level-1 block and no other compacted block overlapping it.
//! So the range up to then is the compacted blocks' alone, and merging
//! each of them whole counts every profile once; the rest of the range is
//! listed as before (ingesters and blocks, each profile ID once).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use flamedb_storage::{Block, BlockMeta, Ulid};

/// `blocks` without those another of them supersedes: one whose sources
/// include all of theirs and more, or the same at a higher level (or the
/// same level and a smaller ID).
pub(crate) fn drop_superseded(blocks: Vec<Arc<Block>>) -> Vec<Arc<Block>> {
    let metas: Vec<&BlockMeta> = blocks.iter().map(|block| block.meta()).collect();
    let superseded = superseded(&metas);
    blocks
        .into_iter()
        .enumerate()
        .filter(|(index, _)| !superseded.contains(index))
        .map(|(_, block)| block)
        .collect()
}

/// The positions of the metas another of them supersedes.
fn superseded(metas: &[&BlockMeta]) -> HashSet<usize> {
    let mut holding: HashMap<Ulid, Vec<usize>> = HashMap::new();
    for (index, meta) in metas.iter().enumerate() {
        for source in &meta.compaction.sources {
            holding.entry(*source).or_default().push(index);
        }
    }
    let sources: Vec<HashSet<Ulid>> = metas
        .iter()
        .map(|meta| meta.compaction.sources.iter().copied().collect())
        .collect();
    let mut superseded = HashSet::new();
    for (index, meta) in metas.iter().enumerate() {
        let Some(first) = meta.compaction.sources.first() else {
            continue;
        };
        let mine = &sources[index];
        let covered = holding.get(first).into_iter().flatten().any(|&other| {
            let theirs = &sources[other];
            let rank = |meta: &BlockMeta| (std::cmp::Reverse(meta.compaction.level), meta.id);
            other != index && mine.is_subset(theirs) && (theirs.len() > mine.len() || rank(metas[other]) < rank(meta))
        });
        if covered {
            superseded.insert(index);
        }
    }
    superseded
}

/// The time (ms) before which only compacted blocks of `blocks` (none
/// superseded) hold profiles, given the oldest profile time of each
/// ingester that holds any; `i64::MAX` when nothing else holds any.
pub(crate) fn compacted_alone_until(blocks: &[&BlockMeta], ingesters_oldest: &[i64]) -> i64 {
    let mut until = ingesters_oldest.iter().copied().min().unwrap_or(i64::MAX);
    let mut compacted: Vec<&BlockMeta> = Vec::new();
    for meta in blocks {
        if is_compacted(meta) {
            compacted.push(meta);
        } else {
            until = until.min(meta.min_time);
        }
    }
    // Compacted blocks that overlap may hold the same profiles (a late
    // replica's block compacted apart): neither is alone.
    compacted.sort_by_key(|meta| meta.min_time);
    let mut reach: Option<&BlockMeta> = None;
    for meta in compacted {
        if let Some(before) = reach {
            if meta.min_time <= before.max_time {
                until = until.min(before.min_time).min(meta.min_time);
            }
            if meta.max_time <= before.max_time {
                continue;
            }
        }
        reach = Some(meta);
    }
    until
}

/// Whether the compactor wrote the block: it holds each profile once.
pub(crate) fn is_compacted(meta: &BlockMeta) -> bool {
    meta.compaction.level >= 2
}

#[cfg(test)]
mod tests {
    use flamedb_storage::block::{BlockStats, Compaction, FORMAT_VERSION};

    use super::*;

    fn meta(id: u128, level: u32, sources: &[u128], min_time: i64, max_time: i64) -> BlockMeta {
        BlockMeta {
            version: FORMAT_VERSION,
            id: Ulid(id),
            min_time,
            max_time,
            stats: BlockStats::default(),
            files: Vec::new(),
            source: if level > 1 { "compactor" } else { "ingester" }.to_owned(),
            compaction: Compaction {
                level,
                sources: sources.iter().map(|&id| Ulid(id)).collect(),
            },
            downsample: None,
        }
    }

    #[test]
    fn test_blocks_whose_sources_another_holds_are_superseded() {
        let metas = [
            meta(1, 1, &[1], 0, 10),
            meta(2, 1, &[2], 0, 10),
            meta(10, 2, &[1, 2], 0, 10),
            // A late replica's block: no one holds it yet.
            meta(3, 1, &[3], 0, 10),
            meta(20, 3, &[1, 2, 4], 0, 20),
            // Two blocks of the same sources: the smaller ID stays.
            meta(31, 2, &[5, 6], 30, 40),
            meta(30, 2, &[5, 6], 30, 40),
            // A block compacted alone supersedes its source, whatever IDs.
            meta(40, 1, &[40], 50, 60),
            meta(39, 2, &[40], 50, 60),
        ];
        let refs: Vec<&BlockMeta> = metas.iter().collect();
        let mut gone: Vec<usize> = superseded(&refs).into_iter().collect();
        gone.sort_unstable();
        assert_eq!(gone, [0, 1, 2, 5, 7]);
    }

    #[test]
    fn test_compacted_blocks_are_alone_until_another_source_holds_profiles() {
        let old = meta(10, 2, &[1, 2], 0, 99);
        let next = meta(11, 3, &[3, 4], 100, 199);
        let level_one = meta(5, 1, &[5], 150, 250);
        // Only compacted blocks: alone for ever.
        assert_eq!(compacted_alone_until(&[&old, &next], &[]), i64::MAX);
        // An ingester's oldest profile, a level-1 block: the earlier counts.
        assert_eq!(compacted_alone_until(&[&old, &next], &[180, 300]), 180);
        assert_eq!(compacted_alone_until(&[&old, &next, &level_one], &[300]), 150);
        // Compacted blocks that overlap are not alone from the first's start.
        let overlapping = meta(12, 2, &[6], 50, 60);
        assert_eq!(compacted_alone_until(&[&old, &next, &overlapping], &[]), 0);
        let inside_next = meta(13, 2, &[7], 120, 130);
        assert_eq!(compacted_alone_until(&[&old, &next, &inside_next], &[]), 100);
        // A block that only touches the previous one's last millisecond
        // overlaps it.
        let touching = meta(14, 2, &[8], 199, 300);
        assert_eq!(compacted_alone_until(&[&old, &next, &touching], &[]), 100);
    }
}
