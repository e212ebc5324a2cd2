//! The series of a head and an inverted index over their labels: for each
//! label name and value, the bitmap of series carrying it. Matchers (`=`,
//! `!=`, `=~`, `!~`) resolve to bitmaps by testing each value of their
//! label once, not each series.

use std::collections::BTreeMap;
use std::sync::Arc;

use flamedb_model::{Labels, Matcher, Selector};
use foldhash::{HashMap, HashMapExt};
use roaring::RoaringBitmap;
use std::collections::hash_map::Entry;

const SERIES_OVERHEAD: usize = 160;
const POSTING_OVERHEAD: usize = 64;

/// One series (one sample type of one label set).
#[derive(Debug)]
pub(crate) struct Series {
    pub labels: Arc<Labels>,
    pub fingerprint: u64,
    /// Indexes of its profile rows in the head, in arrival order.
    pub rows: Vec<u32>,
}

#[derive(Debug)]
pub(crate) struct SeriesIndex {
    series: Vec<Series>,
    by_fingerprint: HashMap<u64, u32>,
    /// Further series whose fingerprint collides with another's.
    collisions: HashMap<u64, Vec<u32>>,
    postings: BTreeMap<String, BTreeMap<String, RoaringBitmap>>,
    bytes: usize,
}

impl SeriesIndex {
    pub(crate) fn new() -> Self {
        Self {
            series: Vec::new(),
            by_fingerprint: HashMap::new(),
            collisions: HashMap::new(),
            postings: BTreeMap::new(),
            bytes: 0,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.series.len()
    }

    pub(crate) fn get(&self, id: u32) -> &Series {
        &self.series[id as usize]
    }

    pub(crate) fn get_mut(&mut self, id: u32) -> &mut Series {
        &mut self.series[id as usize]
    }

    /// The id of the series with these labels, adding it if new.
    pub(crate) fn get_or_insert(&mut self, labels: &Labels, fingerprint: u64) -> u32 {
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
            return id;
        }
        let id = self.series.len() as u32;
        for label in labels.iter() {
            let values = self.postings.entry(label.name.clone()).or_default();
            let bitmap = values.entry(label.value.clone()).or_insert_with(|| {
                self.bytes += label.name.len() + label.value.len() + POSTING_OVERHEAD;
                RoaringBitmap::new()
            });
            bitmap.insert(id);
        }
        self.bytes += SERIES_OVERHEAD + labels.iter().map(|l| l.name.len() + l.value.len() + 48).sum::<usize>();
        match self.by_fingerprint.entry(fingerprint) {
            Entry::Occupied(_) => self.collisions.entry(fingerprint).or_default().push(id),
            Entry::Vacant(slot) => {
                slot.insert(id);
            }
        }
        self.series.push(Series {
            labels: Arc::new(labels.clone()),
            fingerprint,
            rows: Vec::new(),
        });
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
    pub(crate) fn select(&self, selector: &Selector) -> RoaringBitmap {
        let mut selected = self.all();
        for matcher in &selector.matchers {
            if selected.is_empty() {
                break;
            }
            selected &= self.matching(matcher);
        }
        selected
    }

    /// The series matching any of `selectors` (all series for none).
    pub(crate) fn select_any(&self, selectors: &[Selector]) -> RoaringBitmap {
        if selectors.is_empty() {
            return self.all();
        }
        selectors.iter().fold(RoaringBitmap::new(), |mut any, selector| {
            any |= self.select(selector);
            any
        })
    }

    /// Label names of the selected series.
    pub(crate) fn label_names(&self, selected: &RoaringBitmap) -> Vec<String> {
        self.postings
            .iter()
            .filter(|(_, values)| values.values().any(|bitmap| !bitmap.is_disjoint(selected)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Values of label `name` among the selected series.
    pub(crate) fn label_values(&self, name: &str, selected: &RoaringBitmap) -> Vec<String> {
        self.postings
            .get(name)
            .into_iter()
            .flatten()
            .filter(|(_, bitmap)| !bitmap.is_disjoint(selected))
            .map(|(value, _)| value.clone())
            .collect()
    }
}
