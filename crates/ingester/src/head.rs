//! A head: the profiles of one tenant in one time window (by profile
//! time), in memory until flushed. It holds the series with an inverted
//! index of their labels, the symbols (each stored once, stacks as a prefix
//! tree) and one row per profile and sample type: profile ID, series, time,
//! and samples as (stack, value), with span IDs when the agent sent them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use flamedb_model::budget::BudgetError;
use flamedb_model::pprof::{Profile, string_at};
use flamedb_model::{Labels, ProfileId, SPAN_ID, Selector, Tree};
use flamedb_storage::{
    BlockContents, ProfileQuery, ProfileRow, SelectedProfile, SeriesIndex, SeriesSummaries, SeriesSummary, Symbols,
    TimeRange, Ulid, add_samples, summary_of,
};
use flamedb_wal::Position;
use foldhash::{HashMap, HashMapExt};

use crate::delta::DeltaState;

const ROW_BYTES: usize = 96;
const SAMPLE_BYTES: usize = 12;

/// One series of a profile to insert: the stored labels (with
/// `__profile_type__` and friends) and which value column it takes.
#[derive(Debug, Clone)]
pub(crate) struct SeriesInsert {
    pub labels: Labels,
    pub fingerprint: u64,
    pub sample_type_index: usize,
    pub cumulative: bool,
}

#[derive(Debug)]
pub(crate) struct HeadData {
    pub symbols: Symbols,
    pub series: SeriesIndex,
    pub rows: Vec<ProfileRow>,
    /// Per series, its rows in arrival order.
    pub series_rows: Vec<Vec<u32>>,
    /// Per series, the summary of all its rows.
    series_summaries: Vec<SeriesSummary>,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    /// The first and last WAL records applied to this head.
    pub first_position: Option<Position>,
    pub last_position: Option<Position>,
    rows_bytes: usize,
}

impl HeadData {
    fn bytes(&self) -> usize {
        self.symbols.bytes() + self.series.bytes() + self.rows_bytes
    }
}

/// The in-memory profiles of one tenant and one time window.
#[derive(Debug)]
pub(crate) struct Head {
    /// Start of the window, ms since the epoch.
    pub window_start_ms: i64,
    /// The ID its block gets: fixed at creation, so a flush that is
    /// retried replaces a block written before rather than adding one.
    pub block_id: Ulid,
    data: RwLock<HeadData>,
    bytes: AtomicUsize,
    /// Wall-clock time of the last insert, ms.
    last_insert_ms: AtomicI64,
}

impl Head {
    pub(crate) fn new(window_start_ms: i64) -> Self {
        Self {
            window_start_ms,
            block_id: Ulid::generate(),
            data: RwLock::new(HeadData {
                symbols: Symbols::new(),
                series: SeriesIndex::new(),
                rows: Vec::new(),
                series_rows: Vec::new(),
                series_summaries: Vec::new(),
                min_time_ms: i64::MAX,
                max_time_ms: i64::MIN,
                first_position: None,
                last_position: None,
                rows_bytes: 0,
            }),
            bytes: AtomicUsize::new(0),
            last_insert_ms: AtomicI64::new(flamedb_model::now_nanos() / 1_000_000),
        }
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, HeadData> {
        self.data.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HeadData> {
        self.data.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Wall-clock time of the last insert (or of creation), ms.
    pub fn last_insert_ms(&self) -> i64 {
        self.last_insert_ms.load(Ordering::Relaxed)
    }

    /// The first WAL record applied to the head, if any.
    pub(crate) fn first_position(&self) -> Option<Position> {
        self.read().first_position
    }

    /// The time of the oldest and newest profile (ms), if any.
    pub fn time_span(&self) -> Option<(i64, i64)> {
        let data = self.read();
        (!data.rows.is_empty()).then_some((data.min_time_ms, data.max_time_ms))
    }

    /// How many profile rows (one per stored series) the head holds.
    pub fn rows(&self) -> usize {
        self.read().rows.len()
    }

    /// Stores one profile under each of its series; returns the bytes the
    /// head grew by.
    pub(crate) fn insert(
        &self,
        id: ProfileId,
        profile: &Profile,
        series: &[SeriesInsert],
        delta: &mut DeltaState,
        position: Option<Position>,
    ) -> usize {
        let mut data = self.write();
        let before = data.bytes();
        let stacks = data.symbols.add_profile(profile);
        let span_ids = span_ids(profile);
        let time_ms = profile.time_nanos.div_euclid(1_000_000);
        for insert in series {
            let Some((stacks, values, spans)) = samples_of(&data, profile, &stacks, span_ids.as_deref(), insert, delta)
            else {
                continue;
            };
            let series_id = data.series.get_or_insert(&insert.labels, insert.fingerprint, time_ms);
            let row = data.rows.len() as u32;
            data.rows_bytes += ROW_BYTES + values.len() * SAMPLE_BYTES + spans.as_ref().map_or(0, |s| s.len() * 8);
            let total = values.iter().fold(0i64, |sum, value| sum.saturating_add(*value));
            data.rows.push(ProfileRow {
                id,
                series: series_id,
                time_nanos: profile.time_nanos,
                total,
                stacks,
                values,
                span_ids: spans,
            });
            let slot = series_id as usize;
            if data.series_rows.len() <= slot {
                let added = slot + 1 - data.series_rows.len();
                data.rows_bytes += added * (std::mem::size_of::<Vec<u32>>() + std::mem::size_of::<SeriesSummary>());
                data.series_rows.resize_with(slot + 1, Vec::new);
                data.series_summaries.resize(slot + 1, SeriesSummary::default());
            }
            data.series_rows[slot].push(row);
            let summary = &mut data.series_summaries[slot];
            summary.fingerprint = insert.fingerprint;
            summary.add(id, total);
            data.min_time_ms = data.min_time_ms.min(time_ms);
            data.max_time_ms = data.max_time_ms.max(time_ms);
        }
        if position.is_some() {
            data.first_position = data.first_position.or(position);
            data.last_position = position;
        }
        self.last_insert_ms
            .store(flamedb_model::now_nanos() / 1_000_000, Ordering::Relaxed);
        let grown = data.bytes().saturating_sub(before);
        self.bytes.fetch_add(grown, Ordering::Relaxed);
        grown
    }

    pub fn label_names(&self, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        self.read().series.label_names(selectors, range)
    }

    pub fn label_values(&self, name: &str, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        self.read().series.label_values(name, selectors, range)
    }

    pub fn series(&self, selectors: &[Selector], range: TimeRange) -> Vec<Arc<Labels>> {
        self.read().series.series_labels(selectors, range)
    }

    /// The rows of the series matching `query`, in its time range.
    fn selected_rows<'a>(data: &'a HeadData, query: &ProfileQuery) -> impl Iterator<Item = &'a ProfileRow> {
        let range = query.range;
        data.series
            .selected(&[query.full_selector()], range)
            .into_iter()
            .filter(|&series| query.series.is_none() || query.wants_series(data.series.get(series).fingerprint))
            .flat_map(|series| data.series_rows.get(series as usize).into_iter().flatten())
            .map(|&row| &data.rows[row as usize])
            .filter(move |row| range.contains(row.time_ms()))
    }

    /// Adds the series of the profiles matching `query` to `summaries`:
    /// from the kept summaries when the range covers all the head holds,
    /// else from its rows.
    pub fn summarize_into(&self, query: &ProfileQuery, summaries: &mut SeriesSummaries) {
        let data = self.read();
        if !(query.range.contains(data.min_time_ms) && query.range.contains(data.max_time_ms)) {
            for row in Self::selected_rows(&data, query) {
                let fingerprint = data.series.get(row.series).fingerprint;
                summary_of(summaries, fingerprint).add(row.id, row.total);
            }
            return;
        }
        let selected = data.series.selected(&[query.full_selector()], query.range);
        for series in selected {
            if let Some(summary) = data.series_summaries.get(series as usize)
                && summary.profiles > 0
                && query.wants_series(summary.fingerprint)
            {
                summary_of(summaries, summary.fingerprint).absorb(summary);
            }
        }
    }

    /// Calls `visit` for each profile matching `query`, in series then
    /// arrival order.
    pub fn visit_profiles(&self, query: &ProfileQuery, mut visit: impl FnMut(SelectedProfile)) {
        let data = self.read();
        for row in Self::selected_rows(&data, query) {
            let series = data.series.get(row.series);
            visit(SelectedProfile {
                id: row.id,
                labels: series.labels.clone(),
                fingerprint: series.fingerprint,
                time_nanos: row.time_nanos,
                total: row.total,
            });
        }
    }

    /// Adds the stacks of the profiles matching `query` (only those in
    /// `only`, when given; only the samples of `spans`, when given) to
    /// `tree`, by function name.
    pub fn merge_into(
        &self,
        query: &ProfileQuery,
        only: Option<&HashSet<ProfileId>>,
        spans: Option<&HashSet<u64>>,
        tree: &mut Tree,
    ) -> Result<(), BudgetError> {
        let data = self.read();
        let mut by_stack: HashMap<u32, i64> = HashMap::new();
        for row in Self::selected_rows(&data, query) {
            if only.is_some_and(|only| !only.contains(&row.id)) {
                continue;
            }
            add_samples(&mut by_stack, &row.stacks, &row.values, row.span_ids.as_deref(), spans);
        }
        data.symbols.add_to_tree(by_stack, tree)
    }

    /// Runs `write` over what the head holds, as a block writer takes it.
    /// Only for sealed heads: the read lock is then held across the
    /// writer's I/O, but no writer is left to wait for it, and readers
    /// share it.
    /// `write` also gets the first and last WAL record applied.
    pub(crate) fn with_contents<T>(
        &self,
        write: impl FnOnce(BlockContents<'_>, Option<(Position, Position)>) -> T,
    ) -> T {
        let data = self.read();
        write(
            BlockContents {
                series: &data.series,
                symbols: &data.symbols,
                rows: &data.rows,
            },
            data.first_position.zip(data.last_position),
        )
    }

    /// Symbol and series counts.
    #[cfg(test)]
    pub fn counts(&self) -> (flamedb_storage::SymbolCounts, usize) {
        let data = self.read();
        (data.symbols.counts(), data.series.len())
    }
}

/// The span ID of each sample (0 for none), if any sample has one.
fn span_ids(profile: &Profile) -> Option<Vec<u64>> {
    let key = profile.string_table.iter().position(|s| s == SPAN_ID)? as i64;
    let ids: Vec<u64> = profile
        .sample
        .iter()
        .map(|sample| {
            sample
                .label
                .iter()
                .find(|label| label.key == key)
                .and_then(|label| u64::from_str_radix(string_at(profile, label.str), 16).ok())
                .unwrap_or(0)
        })
        .collect();
    ids.iter().any(|&id| id != 0).then_some(ids)
}

/// Feeds the cumulative series of a profile that is not stored (a block
/// holds it already) to the delta state, so the next stored profile of
/// each series gets its difference from this one.
pub(crate) fn observe_cumulative(profile: &Profile, series: &[SeriesInsert], delta: &mut DeltaState) {
    if !series.iter().any(|insert| insert.cumulative) {
        return;
    }
    let mut symbols = Symbols::new();
    let stacks = symbols.add_profile(profile);
    for insert in series.iter().filter(|insert| insert.cumulative) {
        let hashed: Vec<(u64, i64)> = profile
            .sample
            .iter()
            .zip(&stacks)
            .filter_map(|(sample, &stack)| {
                let value = *sample.value.get(insert.sample_type_index)?;
                (value != 0).then(|| (symbols.stack_hash(stack), value))
            })
            .collect();
        delta.apply(insert.fingerprint, &hashed, profile.time_nanos.div_euclid(1_000_000));
    }
}

type Samples = (Box<[u32]>, Box<[i64]>, Option<Box<[u64]>>);

/// The non-zero samples of one sample type: equal stacks merged (unless
/// they carry span IDs), cumulative values turned into deltas. `None` when
/// nothing is left to store.
fn samples_of(
    data: &HeadData,
    profile: &Profile,
    stacks: &[u32],
    span_ids: Option<&[u64]>,
    insert: &SeriesInsert,
    delta: &mut DeltaState,
) -> Option<Samples> {
    let column = insert.sample_type_index;
    let mut samples: Vec<(u32, u64, i64)> = profile
        .sample
        .iter()
        .zip(stacks)
        .enumerate()
        .filter_map(|(index, (sample, &stack))| {
            let value = *sample.value.get(column)?;
            let span = span_ids.map_or(0, |ids| ids[index]);
            (value != 0).then_some((stack, span, value))
        })
        .collect();
    samples.sort_unstable_by_key(|&(stack, span, _)| (stack, span));
    samples.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0 && later.1 == earlier.1;
        if same {
            earlier.2 = earlier.2.saturating_add(later.2);
        }
        same
    });
    if insert.cumulative {
        let hashed: Vec<(u64, i64)> = samples
            .iter()
            .map(|&(stack, _, value)| (data.symbols.stack_hash(stack), value))
            .collect();
        let deltas = delta.apply(insert.fingerprint, &hashed, profile.time_nanos.div_euclid(1_000_000))?;
        for (sample, value) in samples.iter_mut().zip(deltas) {
            sample.2 = value;
        }
        samples.retain(|&(_, _, value)| value != 0);
    }
    if samples.is_empty() {
        return None;
    }
    let spans = span_ids.map(|_| samples.iter().map(|&(_, span, _)| span).collect());
    Some((
        samples.iter().map(|&(stack, _, _)| stack).collect(),
        samples.iter().map(|&(_, _, value)| value).collect(),
        spans,
    ))
}

#[cfg(test)]
mod tests;
