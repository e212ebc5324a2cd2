//! What a round compacts: the groups of blocks that share a window of a
//! block range, cut to what fits the memory bound, and the ID of the
//! block each becomes.

use std::collections::{BTreeMap, HashSet};

use flamedb_storage::{BlockMeta, Ulid};

/// Any constant whose low 80 bits (a ULID's random part) are not all zero.
const OUTPUT_ID_SEED: u128 = 0x666c_616d_6564_622d_636f_6d70_6163_7421;

/// The ID of the block compacted from `group`: its time part the group's
/// first profile, its random part a digest of the level-1 blocks the group
/// holds, so the same data always gets the same ID.
pub(crate) fn output_id(metas: &[BlockMeta], group: &[Ulid]) -> Ulid {
    let members: Vec<&BlockMeta> = metas.iter().filter(|meta| group.contains(&meta.id)).collect();
    let mut sources: Vec<Ulid> = members
        .iter()
        .flat_map(|meta| meta.compaction.sources.iter().copied())
        .collect();
    sources.sort_unstable();
    sources.dedup();
    // Seeded, so a block compacted alone never gets its source's ID.
    let digest = sources.iter().fold(OUTPUT_ID_SEED, |digest, source| {
        digest.rotate_left(29) ^ u128::from(*source)
    });
    let min_time = members.iter().map(|meta| meta.min_time).min().unwrap_or(0);
    Ulid::from_parts(u64::try_from(min_time).unwrap_or(0), digest)
}

/// The groups of blocks to compact this round: for each of `ranges_ms`
/// (shortest first) and each window of it (aligned to the epoch) that
/// ended at least `wait_ms` before `now_ms`, the blocks wholly inside it
/// not grouped at a shorter range already, when there are two or more, or
/// one an ingester wrote (so every block becomes a compacted one, which
/// queries read without listing its profiles).
pub fn plan(metas: &[BlockMeta], ranges_ms: &[i64], now_ms: i64, wait_ms: i64) -> Vec<Vec<Ulid>> {
    let mut groups = Vec::new();
    let mut grouped: HashSet<Ulid> = HashSet::new();
    for &range_ms in ranges_ms {
        let range_ms = range_ms.max(1);
        let mut windows: BTreeMap<i64, Vec<Ulid>> = BTreeMap::new();
        for meta in metas.iter().filter(|meta| !grouped.contains(&meta.id)) {
            let start = meta.min_time.div_euclid(range_ms) * range_ms;
            let end = start.saturating_add(range_ms);
            if meta.max_time < end && end.saturating_add(wait_ms) <= now_ms {
                windows.entry(start).or_default().push(meta.id);
            }
        }
        let level_one: HashSet<Ulid> = metas
            .iter()
            .filter(|meta| meta.compaction.level <= 1)
            .map(|meta| meta.id)
            .collect();
        for group in windows
            .into_values()
            .filter(|group| group.len() > 1 || group.iter().any(|id| level_one.contains(id)))
        {
            grouped.extend(group.iter().copied());
            groups.push(group);
        }
    }
    groups
}

/// What compacting a block takes in memory at most, from its meta: each
/// row as the compaction holds it (with its entry in the set of profiles
/// seen, and the table reader's and writer's share), each sample's stack,
/// value and span ID in the input view and in the output, and the series
/// and symbol files unpacked, read into tables with their indexes and
/// written again. `tests/memory.rs` measures it against real compactions.
pub fn memory_estimate(meta: &BlockMeta) -> u64 {
    /// A row, its dedup entry, its boxed slices' headers, its share of
    /// the table's buffers.
    const ROW_BYTES: u64 = 384;
    /// Stack id, value and span ID, twice.
    const SAMPLE_BYTES: u64 = 2 * (4 + 8 + 8);
    /// Per unpacked byte of the series and symbol files: the bytes, the
    /// tables and indexes made of them, the output's tables and bytes.
    const PER_UNPACKED_BYTE: u64 = 4;
    /// Per block: its table reader's state and its share of the writer's
    /// buffers, whatever the rows.
    const BLOCK_BYTES: u64 = 256 << 10;
    /// Blocks written before unpacked sizes were recorded: zstd packs
    /// these files 4× to 16×, count the worst.
    const PER_PACKED_BYTE_UNRECORDED: u64 = 16 * PER_UNPACKED_BYTE;
    let files: u64 = meta
        .files
        .iter()
        .map(|file| match (file.rel_path.as_str(), file.uncompressed_bytes) {
            // Read in row groups, counted per row and sample.
            (flamedb_storage::block::PROFILES_FILE, _) => 0,
            // Only checked (read whole once), never decoded: it is made
            // again from the rows.
            (flamedb_storage::block::DOWNSAMPLED_FILE, _) => file.size_bytes,
            (_, 0) => file.size_bytes.saturating_mul(PER_PACKED_BYTE_UNRECORDED),
            (_, unpacked) => unpacked.saturating_mul(PER_UNPACKED_BYTE),
        })
        .fold(0, u64::saturating_add);
    meta.stats
        .num_profiles
        .saturating_mul(ROW_BYTES)
        .saturating_add(meta.stats.num_samples.saturating_mul(SAMPLE_BYTES))
        .saturating_add(files)
        .saturating_add(BLOCK_BYTES)
}

/// The blocks of `group` that fit `max_memory_bytes` together (`0`: all),
/// taken oldest first and skipping those that do not fit, or `None` when
/// fewer than two do (unless the group is one block an ingester wrote,
/// which fits).
pub fn within_memory(metas: &[BlockMeta], group: &[Ulid], max_memory_bytes: u64) -> Option<Vec<Ulid>> {
    let mut blocks: Vec<&BlockMeta> = group
        .iter()
        .filter_map(|id| metas.iter().find(|meta| meta.id == *id))
        .collect();
    blocks.sort_by_key(|meta| (meta.min_time, meta.id));
    let mut used = 0u64;
    let alone = matches!(blocks.as_slice(), [meta] if meta.compaction.level <= 1);
    let mut fitting = Vec::new();
    for meta in blocks {
        let with = used.saturating_add(memory_estimate(meta));
        if max_memory_bytes == 0 || with <= max_memory_bytes {
            used = with;
            fitting.push(meta.id);
        }
    }
    (fitting.len() >= 2 || (alone && fitting.len() == 1)).then_some(fitting)
}
