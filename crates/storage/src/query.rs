//! What queries ask for and what they get back, the same for heads and
//! blocks.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;

use flamedb_model::{Labels, Matcher, PROFILE_TYPE, ProfileId, Selector};

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

/// Which profiles a query is about: one profile type, a selector and a
/// time range (and, when given, only some of the series).
#[derive(Debug, Clone)]
pub struct ProfileQuery {
    /// The profile type ID, `name:type:unit:period_type:period_unit`.
    pub profile_type: String,
    pub selector: Selector,
    pub range: TimeRange,
    /// Only the series with these fingerprints, when given.
    pub series: Option<Arc<HashSet<u64>>>,
}

impl ProfileQuery {
    /// The selector with the profile type as one more matcher.
    pub fn full_selector(&self) -> Selector {
        let mut selector = self.selector.clone();
        selector
            .matchers
            .push(Matcher::equal(PROFILE_TYPE, self.profile_type.clone()));
        selector
    }

    /// Whether the series of `fingerprint` is one the query may read.
    pub fn wants_series(&self, fingerprint: u64) -> bool {
        self.series.as_ref().is_none_or(|series| series.contains(&fingerprint))
    }
}

/// What a source holds of one series in a query's range: how many
/// profiles, their IDs summed, their totals summed. Replicas that hold the
/// same profiles of a series have the same summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeriesSummary {
    pub fingerprint: u64,
    pub profiles: u64,
    /// The profile IDs as 128-bit big-endian numbers, summed (wrapping):
    /// a sum, not an XOR, so a profile counted twice shows.
    pub id_sum: u128,
    /// The profiles' totals summed (wrapping).
    pub total: i64,
}

impl SeriesSummary {
    pub fn add(&mut self, id: ProfileId, total: i64) {
        self.profiles += 1;
        self.id_sum = self.id_sum.wrapping_add(u128::from_be_bytes(id.0));
        self.total = self.total.wrapping_add(total);
    }

    /// Adds the profiles `other` summarizes (of the same series, from
    /// another part of the source).
    pub fn absorb(&mut self, other: &SeriesSummary) {
        self.profiles += other.profiles;
        self.id_sum = self.id_sum.wrapping_add(other.id_sum);
        self.total = self.total.wrapping_add(other.total);
    }
}

/// Series summaries by fingerprint.
pub type SeriesSummaries = HashMap<u64, SeriesSummary>;

/// The summary of the series `fingerprint` in `summaries`, new if absent.
pub fn summary_of(summaries: &mut SeriesSummaries, fingerprint: u64) -> &mut SeriesSummary {
    summaries.entry(fingerprint).or_insert_with(|| SeriesSummary {
        fingerprint,
        ..SeriesSummary::default()
    })
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

/// The order of selected profiles, and where a page of them ends: time,
/// series fingerprint, profile ID.
pub type ProfileKey = (i64, u64, ProfileId);

impl SelectedProfile {
    pub fn key(&self) -> ProfileKey {
        (self.time_nanos, self.fingerprint, self.id)
    }
}

/// Adds samples (stack, value) to `by_stack`: all of them, or with `spans`
/// only those whose span ID (`span_ids`, one per sample; 0 for none) is in
/// it.
pub fn add_samples<S: BuildHasher>(
    by_stack: &mut HashMap<u32, i64, S>,
    stacks: &[u32],
    values: &[i64],
    span_ids: Option<&[u64]>,
    spans: Option<&HashSet<u64>>,
) {
    match spans {
        None => {
            for (&stack, &value) in stacks.iter().zip(values) {
                *by_stack.entry(stack).or_insert(0) += value;
            }
        }
        Some(spans) => {
            let Some(span_ids) = span_ids else {
                return;
            };
            for ((&stack, &value), span) in stacks.iter().zip(values).zip(span_ids) {
                if *span != 0 && spans.contains(span) {
                    *by_stack.entry(stack).or_insert(0) += value;
                }
            }
        }
    }
}

/// One stored profile of one series: its samples as (stack, value), with
/// the span ID of each sample when the agent sent any.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRow {
    pub id: ProfileId,
    /// The series, as numbered by the [`crate::SeriesIndex`] holding it.
    pub series: u32,
    pub time_nanos: i64,
    pub total: i64,
    pub stacks: Box<[u32]>,
    pub values: Box<[i64]>,
    /// Per sample; 0 where the sample had none.
    pub span_ids: Option<Box<[u64]>>,
}

impl ProfileRow {
    pub fn time_ms(&self) -> i64 {
        self.time_nanos.div_euclid(1_000_000)
    }
}
