//! A head: the profiles of one tenant in one time window (by profile
//! time), in memory until flushed. It holds the series with an inverted
//! index of their labels, the symbols (each stored once, stacks as a prefix
//! tree) and one row per profile and sample type: profile ID, series, time,
//! and samples as (stack, value), with span IDs when the agent sent them.

mod index;
mod symbols;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use flamedb_model::pprof::{Profile, string_at};
use flamedb_model::{Labels, Matcher, ProfileId, SPAN_ID, Selector, Tree};
use flamedb_wal::Position;
use foldhash::{HashMap, HashMapExt};
use roaring::RoaringBitmap;

use crate::delta::DeltaState;
pub use symbols::SymbolCounts;

const ROW_BYTES: usize = 96;
const SAMPLE_BYTES: usize = 12;

/// A time range, milliseconds since the Unix epoch, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl TimeRange {
    pub const ALL: Self = Self {
        start_ms: i64::MIN,
        end_ms: i64::MAX,
    };

    pub fn contains(&self, time_ms: i64) -> bool {
        self.start_ms <= time_ms && time_ms <= self.end_ms
    }

    pub fn overlaps(&self, min_ms: i64, max_ms: i64) -> bool {
        self.start_ms <= max_ms && min_ms <= self.end_ms
    }
}

/// Which profiles a query is about: one profile type, a selector, a time
/// range, optionally only some profile IDs.
#[derive(Debug, Clone)]
pub struct ProfileQuery {
    /// The profile type ID, `name:type:unit:period_type:period_unit`.
    pub profile_type: String,
    pub selector: Selector,
    pub range: TimeRange,
}

impl ProfileQuery {
    fn full_selector(&self) -> Selector {
        let mut selector = self.selector.clone();
        selector
            .matchers
            .push(Matcher::equal(flamedb_model::PROFILE_TYPE, self.profile_type.clone()));
        selector
    }
}

/// A stored profile as a query lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectedProfile {
    pub id: ProfileId,
    pub labels: Arc<Labels>,
    pub fingerprint: u64,
    pub time_nanos: i64,
    /// Sum of the profile's values.
    pub total: i64,
}

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
pub(crate) struct ProfileRow {
    pub id: ProfileId,
    #[expect(dead_code, reason = "read by the block writer, which lands next")]
    pub series: u32,
    pub time_nanos: i64,
    pub total: i64,
    pub stacks: Box<[u32]>,
    pub values: Box<[i64]>,
    /// Per sample; 0 where the sample had none.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the block writer, which lands next"))]
    pub span_ids: Option<Box<[u64]>>,
}

#[derive(Debug)]
pub(crate) struct HeadData {
    pub symbols: symbols::Symbols,
    pub index: index::SeriesIndex,
    pub rows: Vec<ProfileRow>,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    /// The WAL record last applied to this head.
    pub last_position: Option<Position>,
    rows_bytes: usize,
    /// Per series, the time span of its rows (ms).
    series_times: Vec<(i64, i64)>,
}

impl HeadData {
    fn bytes(&self) -> usize {
        self.symbols.bytes() + self.index.bytes() + self.rows_bytes
    }
}

/// The in-memory profiles of one tenant and one time window.
#[derive(Debug)]
pub struct Head {
    /// Start of the window, ms since the epoch.
    pub window_start_ms: i64,
    data: RwLock<HeadData>,
    bytes: AtomicUsize,
}

impl Head {
    pub(crate) fn new(window_start_ms: i64) -> Self {
        Self {
            window_start_ms,
            data: RwLock::new(HeadData {
                symbols: symbols::Symbols::new(),
                index: index::SeriesIndex::new(),
                rows: Vec::new(),
                min_time_ms: i64::MAX,
                max_time_ms: i64::MIN,
                last_position: None,
                rows_bytes: 0,
                series_times: Vec::new(),
            }),
            bytes: AtomicUsize::new(0),
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
            let series_id = data.index.get_or_insert(&insert.labels, insert.fingerprint);
            let row = data.rows.len() as u32;
            data.rows_bytes += ROW_BYTES + values.len() * SAMPLE_BYTES + spans.as_ref().map_or(0, |s| s.len() * 8);
            data.rows.push(ProfileRow {
                id,
                series: series_id,
                time_nanos: profile.time_nanos,
                total: values.iter().sum(),
                stacks,
                values,
                span_ids: spans,
            });
            data.index.get_mut(series_id).rows.push(row);
            let slot = series_id as usize;
            if data.series_times.len() <= slot {
                data.series_times.resize(slot + 1, (i64::MAX, i64::MIN));
            }
            let times = &mut data.series_times[slot];
            *times = (times.0.min(time_ms), times.1.max(time_ms));
            data.min_time_ms = data.min_time_ms.min(time_ms);
            data.max_time_ms = data.max_time_ms.max(time_ms);
        }
        if position.is_some() {
            data.last_position = position;
        }
        let grown = data.bytes().saturating_sub(before);
        self.bytes.fetch_add(grown, Ordering::Relaxed);
        grown
    }

    /// The series matching any of `selectors` with profiles in `range`.
    fn selected_series(data: &HeadData, selectors: &[Selector], range: TimeRange) -> RoaringBitmap {
        let mut selected = data.index.select_any(selectors);
        selected.retain(|id| {
            data.series_times
                .get(id as usize)
                .is_some_and(|&(min, max)| range.overlaps(min, max))
        });
        selected
    }

    pub fn label_names(&self, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        let data = self.read();
        data.index.label_names(&Self::selected_series(&data, selectors, range))
    }

    pub fn label_values(&self, name: &str, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        let data = self.read();
        data.index
            .label_values(name, &Self::selected_series(&data, selectors, range))
    }

    pub fn series(&self, selectors: &[Selector], range: TimeRange) -> Vec<Arc<Labels>> {
        let data = self.read();
        Self::selected_series(&data, selectors, range)
            .iter()
            .map(|id| data.index.get(id).labels.clone())
            .collect()
    }

    /// The profiles matching `query`, in series then time order.
    pub fn select_profiles(&self, query: &ProfileQuery) -> Vec<SelectedProfile> {
        let data = self.read();
        let mut selected = Vec::new();
        for series_id in Self::selected_series(&data, &[query.full_selector()], query.range).iter() {
            let series = data.index.get(series_id);
            for &row in &series.rows {
                let row = &data.rows[row as usize];
                if query.range.contains(row.time_nanos.div_euclid(1_000_000)) {
                    selected.push(SelectedProfile {
                        id: row.id,
                        labels: series.labels.clone(),
                        fingerprint: series.fingerprint,
                        time_nanos: row.time_nanos,
                        total: row.total,
                    });
                }
            }
        }
        selected
    }

    /// Adds the stacks of the profiles matching `query` (only those in
    /// `only`, when given) to `tree`, by function name.
    pub fn merge_into(&self, query: &ProfileQuery, only: Option<&HashSet<ProfileId>>, tree: &mut Tree) {
        let data = self.read();
        let mut by_stack: HashMap<u32, i64> = HashMap::new();
        for series_id in Self::selected_series(&data, &[query.full_selector()], query.range).iter() {
            for &row in &data.index.get(series_id).rows {
                let row = &data.rows[row as usize];
                if !query.range.contains(row.time_nanos.div_euclid(1_000_000))
                    || only.is_some_and(|only| !only.contains(&row.id))
                {
                    continue;
                }
                for (stack, value) in row.stacks.iter().zip(row.values.iter()) {
                    *by_stack.entry(*stack).or_insert(0) += value;
                }
            }
        }
        let mut frames = Vec::new();
        for (stack, value) in by_stack {
            data.symbols.frames(stack, &mut frames);
            tree.insert(frames.iter().map(|&name| data.symbols.string_at(name)), value);
        }
    }

    /// Symbol and series counts, for tests and metrics.
    pub fn counts(&self) -> (SymbolCounts, usize) {
        let data = self.read();
        (data.symbols.counts(), data.index.len())
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
            earlier.2 += later.2;
        }
        same
    });
    if insert.cumulative {
        let hashed: Vec<(u64, i64)> = samples
            .iter()
            .map(|&(stack, _, value)| (data.symbols.stack_hash(stack), value))
            .collect();
        let deltas = delta.apply(insert.fingerprint, &hashed)?;
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
