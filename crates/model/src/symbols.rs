//! Building a profile from some samples of another, with only the symbols
//! those samples use: locations, functions and mappings renumbered densely
//! from 1 in the order of first use, strings deduplicated by content with
//! `""` at index 0. Used by normalization (all samples) and by series
//! splitting (one group of samples at a time): the cost is linear in what
//! the samples reference, whatever the size of the source tables.

use foldhash::{HashMap, HashMapExt};

use crate::budget::{BudgetError, RequestBudget, allocation_size};
use crate::pprof::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// What extraction charges a request's budget for.
const EXTRACTED: &str = "symbols copied for a series";

/// Finds table entries by id: by position when ids are `1..=n` in order
/// (the usual case), else through a map (the first of a duplicated id wins).
#[derive(Debug)]
enum IdIndex {
    Dense(usize),
    Sparse(HashMap<u64, usize>),
}

impl IdIndex {
    fn new(ids: impl ExactSizeIterator<Item = u64> + Clone) -> Self {
        let len = ids.len();
        if ids.clone().enumerate().all(|(position, id)| id == position as u64 + 1) {
            return Self::Dense(len);
        }
        let mut map = HashMap::with_capacity(len);
        for (position, id) in ids.enumerate() {
            map.entry(id).or_insert(position);
        }
        Self::Sparse(map)
    }

    fn position(&self, id: u64) -> Option<usize> {
        match self {
            Self::Dense(len) => usize::try_from(id)
                .ok()
                .filter(|&id| id >= 1 && id <= *len)
                .map(|id| id - 1),
            Self::Sparse(map) => map.get(&id).copied(),
        }
    }
}

/// Old position → new value, reset in O(1) between extractions.
#[derive(Debug)]
struct Remap {
    values: Vec<u32>,
    stamps: Vec<u32>,
    generation: u32,
}

impl Remap {
    fn new(len: usize) -> Self {
        Self {
            values: vec![0; len],
            stamps: vec![0; len],
            generation: 1,
        }
    }

    fn reset(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamps.fill(0);
            self.generation = 1;
        }
    }

    fn get(&self, position: usize) -> Option<u32> {
        (self.stamps.get(position) == Some(&self.generation)).then(|| self.values[position])
    }

    fn set(&mut self, position: usize, value: u32) {
        if let (Some(stamp), Some(slot)) = (self.stamps.get_mut(position), self.values.get_mut(position)) {
            *stamp = self.generation;
            *slot = value;
        }
    }
}

/// The symbol tables of a source profile, and the scratch space to copy
/// parts of them.
#[derive(Debug)]
pub(crate) struct SymbolTables<'a> {
    source: &'a Profile,
    location_index: IdIndex,
    function_index: IdIndex,
    mapping_index: IdIndex,
    locations: Remap,
    functions: Remap,
    mappings: Remap,
    strings: Remap,
}

impl<'a> SymbolTables<'a> {
    pub(crate) fn new(source: &'a Profile) -> Self {
        Self {
            source,
            location_index: IdIndex::new(source.location.iter().map(|location| location.id)),
            function_index: IdIndex::new(source.function.iter().map(|function| function.id)),
            mapping_index: IdIndex::new(source.mapping.iter().map(|mapping| mapping.id)),
            locations: Remap::new(source.location.len()),
            functions: Remap::new(source.function.len()),
            mappings: Remap::new(source.mapping.len()),
            strings: Remap::new(source.string_table.len()),
        }
    }

    /// Returns whether the source has a location with this id.
    pub(crate) fn has_location(&self, id: u64) -> bool {
        self.location_index.position(id).is_some()
    }

    /// A profile holding `samples` (location ids and string indexes of the
    /// source) and the metadata of the source, with only the symbols the
    /// samples use. Frames of unknown locations and lines of unknown
    /// functions are dropped; unknown mappings become 0; out-of-range
    /// string indexes become `""`. Every copy is charged to `budget`
    /// before it is made; once it runs out, nothing more is copied and the
    /// error is returned.
    pub(crate) fn extract(&mut self, samples: Vec<Sample>, budget: &RequestBudget) -> Result<Profile, BudgetError> {
        for remap in [
            &mut self.locations,
            &mut self.functions,
            &mut self.mappings,
            &mut self.strings,
        ] {
            remap.reset();
        }
        let source = self.source;
        let mut builder = Builder {
            tables: self,
            table: vec![String::new()],
            by_content: HashMap::new(),
            out: Profile::default(),
            budget,
            exceeded: None,
        };
        // The output's vectors: at most twice their length (growth), and
        // the samples, moved into a new vector.
        builder.charge(size_of::<Sample>().saturating_mul(samples.len()));
        let sample_type = source
            .sample_type
            .iter()
            .map(|value| builder.value_type(value))
            .collect();
        let period_type = source.period_type.as_ref().map(|value| builder.value_type(value));
        let comment = source.comment.iter().map(|&comment| builder.string(comment)).collect();
        builder.out = Profile {
            sample_type,
            period_type,
            comment,
            drop_frames: builder.string(source.drop_frames),
            keep_frames: builder.string(source.keep_frames),
            default_sample_type: builder.string(source.default_sample_type),
            time_nanos: source.time_nanos,
            duration_nanos: source.duration_nanos,
            period: source.period,
            ..Profile::default()
        };
        let mut out_samples = Vec::with_capacity(samples.len());
        for sample in samples {
            if builder.exceeded.is_some() {
                break;
            }
            out_samples.push(builder.sample(sample));
        }
        builder.out.sample = out_samples;
        if let Some(err) = builder.exceeded {
            return Err(err);
        }
        builder.out.string_table = builder.table;
        Ok(builder.out)
    }
}

struct Builder<'t, 'a> {
    tables: &'t mut SymbolTables<'a>,
    /// The new string table and its content index.
    table: Vec<String>,
    by_content: HashMap<&'a str, u32>,
    out: Profile,
    budget: &'t RequestBudget,
    /// The first charge the budget refused; nothing is copied after it.
    exceeded: Option<BudgetError>,
}

impl<'a> Builder<'_, 'a> {
    /// Charges `bytes` about to be allocated; false (and nothing may be
    /// allocated) once the budget is exceeded.
    fn charge(&mut self, bytes: usize) -> bool {
        if self.exceeded.is_some() {
            return false;
        }
        match self.budget.charge(bytes, EXTRACTED) {
            Ok(()) => true,
            Err(err) => {
                self.exceeded = Some(err);
                false
            }
        }
    }

    /// Charges one more element of a vector that grows by doubling.
    fn charge_element<T>(&mut self) -> bool {
        self.charge(2 * size_of::<T>())
    }

    /// The new index of the source's string `old`; `""` and out-of-range
    /// indexes are 0.
    fn string(&mut self, old: i64) -> i64 {
        let Ok(position) = usize::try_from(old) else {
            return 0;
        };
        if let Some(new) = self.tables.strings.get(position) {
            return i64::from(new);
        }
        let source: &'a Profile = self.tables.source;
        let Some(value) = source.string_table.get(position).filter(|value| !value.is_empty()) else {
            return 0;
        };
        let new = match self.by_content.get(value.as_str()).copied() {
            Some(new) => new,
            None if !self.charge(allocation_size(value.len()) + 2 * size_of::<String>() + 16) => return 0,
            None => {
                let new = self.table.len() as u32;
                self.table.push(value.clone());
                self.by_content.insert(value, new);
                new
            }
        };
        self.tables.strings.set(position, new);
        i64::from(new)
    }

    fn value_type(&mut self, value_type: &ValueType) -> ValueType {
        ValueType {
            r#type: self.string(value_type.r#type),
            unit: self.string(value_type.unit),
        }
    }

    fn sample(&mut self, mut sample: Sample) -> Sample {
        sample.location_id.retain_mut(|id| match self.location(*id) {
            Some(new) => {
                *id = new;
                true
            }
            None => false,
        });
        for label in &mut sample.label {
            let Label { key, str, num_unit, .. } = label;
            *key = self.string(*key);
            *str = self.string(*str);
            *num_unit = self.string(*num_unit);
        }
        sample
    }

    fn location(&mut self, old: u64) -> Option<u64> {
        let position = self.tables.location_index.position(old)?;
        if let Some(new) = self.tables.locations.get(position) {
            return Some(u64::from(new));
        }
        let source: &'a Profile = self.tables.source;
        let location: &Location = &source.location[position];
        if !self
            .charge(2 * size_of::<Location>() + crate::budget::vec_allocation(location.line.len(), size_of::<Line>()))
        {
            return None;
        }
        let mapping_id = self.mapping(location.mapping_id);
        let line = location
            .line
            .iter()
            .filter_map(|line| {
                Some(Line {
                    function_id: self.function(line.function_id)?,
                    ..*line
                })
            })
            .collect();
        let new = self.out.location.len() as u32 + 1;
        self.out.location.push(Location {
            id: u64::from(new),
            mapping_id,
            address: location.address,
            line,
            is_folded: location.is_folded,
        });
        self.tables.locations.set(position, new);
        Some(u64::from(new))
    }

    fn function(&mut self, old: u64) -> Option<u64> {
        let position = self.tables.function_index.position(old)?;
        if let Some(new) = self.tables.functions.get(position) {
            return Some(u64::from(new));
        }
        let source: &'a Profile = self.tables.source;
        let function: &Function = &source.function[position];
        if !self.charge_element::<Function>() {
            return None;
        }
        let new = self.out.function.len() as u32 + 1;
        let copy = Function {
            id: u64::from(new),
            name: self.string(function.name),
            system_name: self.string(function.system_name),
            filename: self.string(function.filename),
            start_line: function.start_line,
        };
        self.out.function.push(copy);
        self.tables.functions.set(position, new);
        Some(u64::from(new))
    }

    /// The new id of a mapping; 0 (none) for 0 and unknown ids.
    fn mapping(&mut self, old: u64) -> u64 {
        if old == 0 {
            return 0;
        }
        let Some(position) = self.tables.mapping_index.position(old) else {
            return 0;
        };
        if let Some(new) = self.tables.mappings.get(position) {
            return u64::from(new);
        }
        let source: &'a Profile = self.tables.source;
        let mapping: &Mapping = &source.mapping[position];
        if !self.charge_element::<Mapping>() {
            return 0;
        }
        let new = self.out.mapping.len() as u32 + 1;
        let copy = Mapping {
            id: u64::from(new),
            filename: self.string(mapping.filename),
            build_id: self.string(mapping.build_id),
            ..*mapping
        };
        self.out.mapping.push(copy);
        self.tables.mappings.set(position, new);
        u64::from(new)
    }
}
