//! Compaction: blocks of one tenant become one block holding each profile
//! once. Replicas' blocks of the same range hold the same profiles under the
//! same IDs (RF copies). Queries count a profile as they list it: per
//! profile type and ID, every row of one holder. Compaction keeps the same:
//! for each (profile type, ID), the rows of the first input that has it,
//! and none of the others'.
//!
//! ```text
//!  blocks (levels n..) ──rows, series, symbols──▶ one in-memory head ──write──▶ block of level max(n) + 1
//! ```
//!
//! The inputs are read whole into memory (about what their files hold
//! uncompressed); the caller bounds how much it hands over.

use std::collections::HashMap;
use std::path::Path;

use flamedb_model::{PROFILE_TYPE, ProfileId};
use ulid::Ulid;

use crate::block::{Block, BlockContents, BlockError, BlockMeta, Compaction, Downsample, Origin, write_with_origin};
use crate::query::ProfileRow;
use crate::series::SeriesIndex;
use crate::symbols::Symbols;

/// Writes the profiles of `inputs`, each once, as block `id` under
/// `parent`: its level one above the highest input's, its sources theirs;
/// with `downsample`, also its profiles merged per series and time bucket
/// (inputs' downsampled tables are not read: they are made again).
pub fn compact(
    inputs: &[Block],
    parent: &Path,
    id: Ulid,
    downsample: Option<Downsample>,
) -> Result<BlockMeta, BlockError> {
    let mut series = SeriesIndex::new();
    let mut symbols = Symbols::new();
    let mut rows: Vec<ProfileRow> = Vec::new();
    // (profile type, ID) → the input whose rows of it are kept.
    let mut holders: HashMap<(String, ProfileId), usize> = HashMap::new();
    for (input, block) in inputs.iter().enumerate() {
        let stacks = symbols.import(block.symbols()?.as_ref());
        let block_series = block.series();
        let mut bad_reference = None;
        block.visit_rows(|row| {
            if row.series as usize >= block_series.len() {
                bad_reference = Some(format!("a row refers to missing series {}", row.series));
                return;
            }
            if let Some(stack) = row.stacks.iter().find(|stack| **stack as usize >= stacks.len()) {
                bad_reference = Some(format!("a row refers to missing stack {stack}"));
                return;
            }
            let source = block_series.get(row.series);
            let profile_type = source.labels.get(PROFILE_TYPE).unwrap_or_default().to_owned();
            if *holders.entry((profile_type, row.id)).or_insert(input) != input {
                return;
            }
            let time_ms = row.time_nanos.div_euclid(1_000_000);
            rows.push(ProfileRow {
                id: row.id,
                series: series.get_or_insert(&source.labels, source.fingerprint, time_ms),
                time_nanos: row.time_nanos,
                total: row.values.iter().fold(0i64, |sum, value| sum.saturating_add(*value)),
                stacks: row.stacks.iter().map(|stack| stacks[*stack as usize]).collect(),
                values: row.values.into(),
                span_ids: row.span_ids.map(Into::into),
            });
        })?;
        if let Some(reason) = bad_reference {
            return Err(BlockError::Corrupt {
                path: block.dir().display().to_string(),
                reason,
            });
        }
    }
    let mut sources: Vec<Ulid> = inputs
        .iter()
        .flat_map(|block| block.meta().compaction.sources.iter().copied())
        .collect();
    sources.sort_unstable();
    sources.dedup();
    let level = inputs
        .iter()
        .map(|block| block.meta().compaction.level)
        .max()
        .unwrap_or(0)
        + 1;
    let contents = BlockContents {
        series: &series,
        symbols: &symbols,
        rows: &rows,
    };
    let origin = Origin {
        writer: "compactor",
        compaction: Compaction { level, sources },
        downsample,
    };
    write_with_origin(parent, id, contents, &[], origin)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use flamedb_model::pprof::StackProfileBuilder;
    use flamedb_model::{Labels, Tree, parse_selector};

    use super::*;
    use crate::{ProfileQuery, TimeRange, write_block};

    const CPU: &str = "process_cpu:cpu:nanoseconds::";

    /// A block of the given profiles: (service, profile id, time ms, leaf,
    /// value), each the stack `main;<leaf>`.
    fn block(parent: &Path, profiles: &[(&str, u8, i64, &str, i64)]) -> Block {
        let mut series = SeriesIndex::new();
        let mut symbols = Symbols::new();
        let mut rows = Vec::new();
        for (service, id, time_ms, leaf, value) in profiles {
            let labels = Labels::from_pairs([
                ("__name__", "process_cpu".to_owned()),
                ("__profile_type__", CPU.to_owned()),
                ("service_name", (*service).to_owned()),
            ]);
            let mut builder = StackProfileBuilder::new("cpu", "nanoseconds");
            builder.add(["main", leaf], *value);
            let stacks = symbols.add_profile(&builder.build());
            rows.push(ProfileRow {
                id: ProfileId([*id; 16]),
                series: series.get_or_insert(&labels, labels.fingerprint(), *time_ms),
                time_nanos: time_ms * 1_000_000,
                total: *value,
                stacks: stacks.into(),
                values: vec![*value].into(),
                span_ids: None,
            });
        }
        let id = Ulid::generate();
        let contents = BlockContents {
            series: &series,
            symbols: &symbols,
            rows: &rows,
        };
        write_block(parent, id, contents, &[]).unwrap();
        Block::open(&parent.join(id.to_string())).unwrap()
    }

    /// Each of `services`' profile count and merged stacks (root first).
    fn answer(block: &Block, services: &[&str]) -> Vec<(String, usize, Vec<(Vec<String>, i64)>)> {
        services
            .iter()
            .map(|service| {
                let query = ProfileQuery {
                    profile_type: CPU.to_owned(),
                    selector: parse_selector(&format!("{{service_name=\"{service}\"}}")).unwrap(),
                    range: TimeRange::ALL,
                    series: None,
                };
                let mut count = 0;
                block.visit_profiles(&query, |_| count += 1).unwrap();
                let mut tree = Tree::new();
                block.merge_into(&query, None, None, &mut tree).unwrap();
                ((*service).to_owned(), count, tree.stacks())
            })
            .collect()
    }

    fn stack(leaf: &str, value: i64) -> (Vec<String>, i64) {
        (vec!["main".to_owned(), leaf.to_owned()], value)
    }

    #[test]
    fn test_an_id_is_kept_as_queries_count_it_from_one_holder() {
        let dir = tempfile::tempdir().unwrap();
        // ID 1 under two series of one block (all its rows count), and
        // under a third series in another block, which a query listing ID 1
        // would not count next to the first block's.
        let inputs = vec![
            block(dir.path(), &[("api", 1, 1_000, "read", 5), ("db", 1, 1_000, "scan", 7)]),
            block(dir.path(), &[("web", 1, 1_000, "serve", 11)]),
        ];
        let id = Ulid::generate();
        compact(&inputs, dir.path(), id, None).unwrap();
        let output = Block::open(&dir.path().join(id.to_string())).unwrap();
        let counts: Vec<usize> = answer(&output, &["api", "db", "web"])
            .into_iter()
            .map(|(_, count, _)| count)
            .collect();
        assert_eq!(counts, [1, 1, 0]);
    }

    #[test]
    fn test_replicas_compact_to_each_profile_once() {
        let dir = tempfile::tempdir().unwrap();
        // Three replicas of profiles 1 and 2; the third also holds 3, which
        // the others missed.
        let replica = [("api", 1, 1_000, "read", 5), ("db", 2, 2_000, "scan", 7)];
        let mut third = replica.to_vec();
        third.push(("api", 3, 3_000, "write", 11));
        let inputs = vec![
            block(dir.path(), &replica),
            block(dir.path(), &replica),
            block(dir.path(), &third),
        ];
        let id = Ulid::generate();
        let meta = compact(&inputs, dir.path(), id, None).unwrap();
        assert_eq!(meta.source, "compactor");
        assert_eq!(meta.compaction.level, 2);
        let mut sources: Vec<Ulid> = inputs.iter().map(|block| block.meta().id).collect();
        sources.sort_unstable();
        assert_eq!(meta.compaction.sources, sources);
        assert_eq!((meta.min_time, meta.max_time), (1_000, 3_000));
        assert_eq!((meta.stats.num_series, meta.stats.num_profiles), (2, 3));

        let output = Block::open(&dir.path().join(id.to_string())).unwrap();
        output.verify().unwrap();
        assert_eq!(
            answer(&output, &["api", "db"]),
            [
                ("api".to_owned(), 2, vec![stack("read", 5), stack("write", 11)]),
                ("db".to_owned(), 1, vec![stack("scan", 7)]),
            ]
        );

        // Compacting the output with a source again changes nothing: a
        // compaction cut short and run again counts nothing twice.
        let again = Ulid::generate();
        let meta = compact(&[output, block(dir.path(), &replica)], dir.path(), again, None).unwrap();
        assert_eq!(meta.compaction.level, 3);
        let output = Block::open(&dir.path().join(again.to_string())).unwrap();
        assert_eq!(answer(&output, &["api", "db"])[0].1, 2);
        assert_eq!(answer(&output, &["api", "db"])[1].2, vec![stack("scan", 7)]);
    }
}
