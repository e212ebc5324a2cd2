//! Compaction: blocks of one tenant become one block holding each profile
//! once. Replicas' blocks of the same range hold the same profiles under the
//! same IDs (RF copies); a profile is identified, as queries count it, by
//! its series and ID, and the first copy met is kept.
//!
//! ```text
//!  blocks (levels n..) ──rows, series, symbols──▶ one in-memory head ──write──▶ block of level max(n) + 1
//! ```
//!
//! The inputs are read whole into memory (about what their files hold
//! uncompressed); the caller bounds how much it hands over.

use std::collections::HashSet;
use std::path::Path;

use flamedb_model::ProfileId;
use ulid::Ulid;

use crate::block::{Block, BlockContents, BlockError, BlockMeta, Compaction, Origin, write};
use crate::query::ProfileRow;
use crate::series::SeriesIndex;
use crate::symbols::Symbols;

/// Writes the profiles of `inputs`, each once, as block `id` under
/// `parent`: its level one above the highest input's, its sources theirs.
pub fn compact(inputs: &[Block], parent: &Path, id: Ulid) -> Result<BlockMeta, BlockError> {
    let mut series = SeriesIndex::new();
    let mut symbols = Symbols::new();
    let mut rows: Vec<ProfileRow> = Vec::new();
    let mut seen: HashSet<(u64, ProfileId)> = HashSet::new();
    for block in inputs {
        let stacks = symbols.import(&block.symbols()?);
        let block_series = block.series();
        let mut bad_series = None;
        block.visit_rows(|row| {
            if row.series as usize >= block_series.len() {
                bad_series = Some(row.series);
                return;
            }
            let source = block_series.get(row.series);
            if !seen.insert((source.fingerprint, row.id)) {
                return;
            }
            let time_ms = row.time_nanos.div_euclid(1_000_000);
            rows.push(ProfileRow {
                id: row.id,
                series: series.get_or_insert(&source.labels, source.fingerprint, time_ms),
                time_nanos: row.time_nanos,
                total: row.values.iter().fold(0i64, |sum, value| sum.saturating_add(*value)),
                stacks: row
                    .stacks
                    .iter()
                    .map(|stack| stacks.get(*stack as usize).copied().unwrap_or(0))
                    .collect(),
                values: row.values.into(),
                span_ids: row.span_ids.map(Into::into),
            });
        })?;
        if let Some(missing) = bad_series {
            return Err(BlockError::Corrupt {
                path: block.dir().display().to_string(),
                reason: format!("a row refers to missing series {missing}"),
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
        source: "compactor",
        compaction: Compaction { level, sources },
    };
    write(parent, id, contents, &[], origin)
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

    /// Each service's merged stacks (root first) and profile count.
    fn answer(block: &Block) -> Vec<(String, usize, Vec<(Vec<String>, i64)>)> {
        ["api", "db"]
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
        let meta = compact(&inputs, dir.path(), id).unwrap();
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
            answer(&output),
            [
                ("api".to_owned(), 2, vec![stack("read", 5), stack("write", 11)]),
                ("db".to_owned(), 1, vec![stack("scan", 7)]),
            ]
        );

        // Compacting the output with a source again changes nothing: a
        // compaction cut short and run again counts nothing twice.
        let again = Ulid::generate();
        let meta = compact(&[output, block(dir.path(), &replica)], dir.path(), again).unwrap();
        assert_eq!(meta.compaction.level, 3);
        let output = Block::open(&dir.path().join(again.to_string())).unwrap();
        assert_eq!(answer(&output)[0].1, 2);
        assert_eq!(answer(&output)[1].2, vec![stack("scan", 7)]);
    }
}
