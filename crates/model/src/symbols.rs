//! Building a profile from some samples of another, with only the symbols
//! those samples use: locations, functions and mappings renumbered densely
//! from 1 in the order of first use, strings deduplicated by content with
//! `""` at index 0. Used by normalization (all samples) and by series
//! splitting (one group of samples at a time): the cost is linear in what
//! the samples reference, whatever the size of the source tables.

use foldhash::{HashMap, HashMapExt};

use crate::pprof::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType, string_at};

/// Lookups over the symbol tables of a source profile (the first entry of
/// a duplicated id wins).
#[derive(Debug)]
pub(crate) struct SymbolTables<'a> {
    source: &'a Profile,
    locations: HashMap<u64, &'a Location>,
    functions: HashMap<u64, &'a Function>,
    mappings: HashMap<u64, &'a Mapping>,
}

impl<'a> SymbolTables<'a> {
    pub(crate) fn new(source: &'a Profile) -> Self {
        fn index<T>(entries: &[T], id: impl Fn(&T) -> u64) -> HashMap<u64, &T> {
            let mut map = HashMap::with_capacity(entries.len());
            for entry in entries {
                map.entry(id(entry)).or_insert(entry);
            }
            map
        }
        Self {
            source,
            locations: index(&source.location, |location| location.id),
            functions: index(&source.function, |function| function.id),
            mappings: index(&source.mapping, |mapping| mapping.id),
        }
    }

    /// Returns whether the source has a location with this id.
    pub(crate) fn has_location(&self, id: u64) -> bool {
        self.locations.contains_key(&id)
    }

    /// A profile holding `samples` (location ids and string indexes of the
    /// source) and the metadata of the source, with only the symbols the
    /// samples use. Frames of unknown locations and lines of unknown
    /// functions are dropped; unknown mappings become 0.
    pub(crate) fn extract(&self, samples: Vec<Sample>) -> Profile {
        let source = self.source;
        let mut builder = Builder {
            tables: self,
            strings: Strings::new(),
            locations: HashMap::new(),
            functions: HashMap::new(),
            mappings: HashMap::new(),
            out: Profile::default(),
        };
        let strings = &mut builder.strings;
        let mut value_type = |value_type: &ValueType| ValueType {
            r#type: strings.intern(source, value_type.r#type),
            unit: strings.intern(source, value_type.unit),
        };
        let sample_type = source.sample_type.iter().map(&mut value_type).collect();
        let period_type = source.period_type.as_ref().map(&mut value_type);
        builder.out = Profile {
            sample_type,
            period_type,
            drop_frames: strings.intern(source, source.drop_frames),
            keep_frames: strings.intern(source, source.keep_frames),
            default_sample_type: strings.intern(source, source.default_sample_type),
            comment: source
                .comment
                .iter()
                .map(|&comment| strings.intern(source, comment))
                .collect(),
            time_nanos: source.time_nanos,
            duration_nanos: source.duration_nanos,
            period: source.period,
            ..Profile::default()
        };
        builder.out.sample = samples.into_iter().map(|sample| builder.sample(sample)).collect();
        builder.out.string_table = builder.strings.table;
        builder.out
    }
}

/// The string table being built: content → index, `""` at 0.
#[derive(Debug)]
struct Strings<'a> {
    table: Vec<String>,
    index: HashMap<&'a str, i64>,
}

impl<'a> Strings<'a> {
    fn new() -> Self {
        Self {
            table: vec![String::new()],
            index: HashMap::new(),
        }
    }

    /// The new index of the source's string `old` (out of range: `""`).
    fn intern(&mut self, source: &'a Profile, old: i64) -> i64 {
        let value = string_at(source, old);
        if value.is_empty() {
            return 0;
        }
        if let Some(&index) = self.index.get(value) {
            return index;
        }
        let index = self.table.len() as i64;
        self.table.push(value.to_owned());
        self.index.insert(value, index);
        index
    }
}

struct Builder<'t, 'a> {
    tables: &'t SymbolTables<'a>,
    strings: Strings<'a>,
    /// Old id → new id, for what was copied so far.
    locations: HashMap<u64, u64>,
    functions: HashMap<u64, u64>,
    mappings: HashMap<u64, u64>,
    out: Profile,
}

impl Builder<'_, '_> {
    fn sample(&mut self, mut sample: Sample) -> Sample {
        sample.location_id = sample.location_id.iter().filter_map(|&id| self.location(id)).collect();
        let source = self.tables.source;
        for label in &mut sample.label {
            let Label { key, str, num_unit, .. } = label;
            *key = self.strings.intern(source, *key);
            *str = self.strings.intern(source, *str);
            *num_unit = self.strings.intern(source, *num_unit);
        }
        sample
    }

    fn location(&mut self, old: u64) -> Option<u64> {
        if let Some(&new) = self.locations.get(&old) {
            return Some(new);
        }
        let location = *self.tables.locations.get(&old)?;
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
        let new = self.out.location.len() as u64 + 1;
        self.out.location.push(Location {
            id: new,
            mapping_id,
            address: location.address,
            line,
            is_folded: location.is_folded,
        });
        self.locations.insert(old, new);
        Some(new)
    }

    fn function(&mut self, old: u64) -> Option<u64> {
        if let Some(&new) = self.functions.get(&old) {
            return Some(new);
        }
        let function = *self.tables.functions.get(&old)?;
        let source = self.tables.source;
        let new = self.out.function.len() as u64 + 1;
        self.out.function.push(Function {
            id: new,
            name: self.strings.intern(source, function.name),
            system_name: self.strings.intern(source, function.system_name),
            filename: self.strings.intern(source, function.filename),
            start_line: function.start_line,
        });
        self.functions.insert(old, new);
        Some(new)
    }

    /// The new id of a mapping; 0 (none) for 0 and unknown ids.
    fn mapping(&mut self, old: u64) -> u64 {
        if let Some(&new) = self.mappings.get(&old) {
            return new;
        }
        let Some(&mapping) = self.tables.mappings.get(&old).filter(|_| old != 0) else {
            return 0;
        };
        let source = self.tables.source;
        let new = self.out.mapping.len() as u64 + 1;
        self.out.mapping.push(Mapping {
            id: new,
            filename: self.strings.intern(source, mapping.filename),
            build_id: self.strings.intern(source, mapping.build_id),
            ..*mapping
        });
        self.mappings.insert(old, new);
        new
    }
}
