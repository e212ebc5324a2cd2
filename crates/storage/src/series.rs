//! Series and an inverted index over their labels: for each label name and
//! value, the bitmap of series carrying it. Matchers (`=`, `!=`, `=~`,
//! `!~`) resolve to bitmaps by testing each value of their label once, not
//! each series. Heads fill one as profiles arrive; blocks rebuild one from
//! their series file.

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use flamedb_model::{Labels, Matcher, Selector};
use foldhash::{HashMap, HashMapExt};
use roaring::RoaringBitmap;

use crate::TimeRange;

const SERIES_OVERHEAD: usize = 160;
const POSTING_OVERHEAD: usize = 64;
const LABEL_OVERHEAD: usize = 48;

/// One series (one sample type of one label set).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Arc<Labels>,
    pub fingerprint: u64,
    /// Time span of its profiles, ms.
    pub min_time_ms: i64,
    pub max_time_ms: i64,
}

#[derive(Debug)]
pub struct SeriesIndex {
    series: Vec<Series>,
    by_fingerprint: HashMap<u64, u32>,
    /// Further series whose fingerprint collides with another's.
    collisions: HashMap<u64, Vec<u32>>,
    postings: BTreeMap<String, BTreeMap<String, RoaringBitmap>>,
    bytes: usize,
}

impl Default for SeriesIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl SeriesIndex {
    pub fn new() -> Self {
        Self {
            series: Vec::new(),
            by_fingerprint: HashMap::new(),
            collisions: HashMap::new(),
            postings: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Memory held, in bytes (estimated from the entries).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The series with id `id`; ids are `0..len()`.
    pub fn get(&self, id: u32) -> &Series {
        &self.series[id as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Series> {
        self.series.iter()
    }

    /// The id of the series with these labels, adding it if new; its time
    /// span grows to cover `time_ms`.
    pub fn get_or_insert(&mut self, labels: &Labels, fingerprint: u64, time_ms: i64) -> u32 {
        let same = |id: &u32| *self.series[*id as usize].labels == *labels;
        let known = self
            .by_fingerprint
            .get(&fingerprint)
            .filter(|id| same(id))
            .copied()
            .or_else(|| {
                self.collisions
                    .get(&fingerprint)
                    .and_then(|ids| ids.iter().find(|id| same(id)).copied())
            });
        if let Some(id) = known {
            let series = &mut self.series[id as usize];
            series.min_time_ms = series.min_time_ms.min(time_ms);
            series.max_time_ms = series.max_time_ms.max(time_ms);
            return id;
        }
        self.push(Series {
            labels: Arc::new(labels.clone()),
            fingerprint,
            min_time_ms: time_ms,
            max_time_ms: time_ms,
        })
    }

    /// Adds a series as the next id, even if an equal one exists (blocks
    /// rebuild their index this way, in file order).
    pub fn push(&mut self, series: Series) -> u32 {
        let id = self.series.len() as u32;
        for label in series.labels.iter() {
            let values = self.postings.entry(label.name.clone()).or_default();
            let bitmap = values.entry(label.value.clone()).or_insert_with(|| {
                self.bytes += label.name.len() + label.value.len() + POSTING_OVERHEAD;
                RoaringBitmap::new()
            });
            bitmap.insert(id);
        }
        self.bytes += SERIES_OVERHEAD
            + series
                .labels
                .iter()
                .map(|l| l.name.len() + l.value.len() + LABEL_OVERHEAD)
                .sum::<usize>();
        match self.by_fingerprint.entry(series.fingerprint) {
            Entry::Occupied(_) => self.collisions.entry(series.fingerprint).or_default().push(id),
            Entry::Vacant(slot) => {
                slot.insert(id);
            }
        }
        self.series.push(series);
        id
    }

    fn all(&self) -> RoaringBitmap {
        let mut all = RoaringBitmap::new();
        all.insert_range(0..self.series.len() as u32);
        all
    }

    fn matching(&self, matcher: &Matcher) -> RoaringBitmap {
        let values = self.postings.get(&matcher.name);
        let mut selected = RoaringBitmap::new();
        if matcher.matches_empty() {
            // Series without the label match too: all but the values that
            // do not match.
            selected = self.all();
            for (value, bitmap) in values.into_iter().flatten() {
                if !matcher.matches(value) {
                    selected -= bitmap;
                }
            }
        } else {
            for (value, bitmap) in values.into_iter().flatten() {
                if matcher.matches(value) {
                    selected |= bitmap;
                }
            }
        }
        selected
    }

    /// The series matching every matcher of `selector`.
    fn select(&self, selector: &Selector) -> RoaringBitmap {
        let mut selected = self.all();
        for matcher in &selector.matchers {
            if selected.is_empty() {
                break;
            }
            selected &= self.matching(matcher);
        }
        selected
    }

    /// The series matching any of `selectors` (all series for none) with
    /// profiles in `range`.
    pub fn selected(&self, selectors: &[Selector], range: TimeRange) -> RoaringBitmap {
        let mut selected = if selectors.is_empty() {
            self.all()
        } else {
            selectors.iter().fold(RoaringBitmap::new(), |mut any, selector| {
                any |= self.select(selector);
                any
            })
        };
        selected.retain(|id| {
            let series = &self.series[id as usize];
            range.overlaps(series.min_time_ms, series.max_time_ms)
        });
        selected
    }

    /// Label names of the series matching any of `selectors` in `range`,
    /// sorted.
    pub fn label_names(&self, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        let selected = self.selected(selectors, range);
        self.postings
            .iter()
            .filter(|(_, values)| values.values().any(|bitmap| !bitmap.is_disjoint(&selected)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Values of label `name` among the series matching any of
    /// `selectors` in `range`, sorted.
    pub fn label_values(&self, name: &str, selectors: &[Selector], range: TimeRange) -> Vec<String> {
        let selected = self.selected(selectors, range);
        self.postings
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(_, bitmap)| !bitmap.is_disjoint(&selected))
            .map(|(value, _)| value.clone())
            .collect()
    }

    /// The labels of the series matching any of `selectors` in `range`.
    pub fn series_labels(&self, selectors: &[Selector], range: TimeRange) -> Vec<Arc<Labels>> {
        self.selected(selectors, range)
            .iter()
            .map(|id| self.series[id as usize].labels.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use flamedb_model::parse_selector;

    use super::*;

    fn labels(service: &str, env: Option<&str>) -> Labels {
        let mut labels = Labels::from_pairs([("service_name", service)]);
        if let Some(env) = env {
            labels.set("env", env);
        }
        labels
    }

    #[test]
    fn test_matchers_and_time_ranges() {
        let mut index = SeriesIndex::new();
        let a = index.get_or_insert(&labels("api", Some("prod")), 1, 100);
        let b = index.get_or_insert(&labels("db", None), 2, 200);
        assert_eq!(index.get_or_insert(&labels("api", Some("prod")), 1, 300), a);
        assert_eq!((index.get(a).min_time_ms, index.get(a).max_time_ms), (100, 300));
        let ids = |selector: &str, range| -> Vec<u32> {
            index
                .selected(&[parse_selector(selector).unwrap()], range)
                .iter()
                .collect()
        };
        assert_eq!(ids(r#"{env="prod"}"#, TimeRange::ALL), [a]);
        assert_eq!(ids(r#"{env!="prod"}"#, TimeRange::ALL), [b]);
        assert_eq!(ids(r#"{env=""}"#, TimeRange::ALL), [b]);
        assert_eq!(ids(r#"{service_name=~"a.*|db"}"#, TimeRange::ALL), [a, b]);
        assert_eq!(ids(r#"{service_name!~"a.*"}"#, TimeRange::ALL), [b]);
        let late = TimeRange {
            start_ms: 250,
            end_ms: 1000,
        };
        assert_eq!(ids("{}", late), [a]);
        assert_eq!(index.label_values("service_name", &[], late), ["api"]);
        assert_eq!(index.label_names(&[], TimeRange::ALL), ["env", "service_name"]);
    }

    #[test]
    fn test_fingerprint_collisions_keep_series_apart() {
        let mut index = SeriesIndex::new();
        let a = index.get_or_insert(&labels("api", None), 7, 0);
        let b = index.get_or_insert(&labels("db", None), 7, 0);
        assert_ne!(a, b);
        assert_eq!(index.get_or_insert(&labels("db", None), 7, 1), b);
        assert_eq!(index.get_or_insert(&labels("api", None), 7, 1), a);
        assert_eq!(index.len(), 2);
    }
}
