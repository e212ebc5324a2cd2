//! The symbols of a head or block, each stored once: strings, functions, mappings,
//! locations, and stack traces as a prefix tree (each node is a parent node
//! and a location, so shared stack prefixes are stored once).
//!
//! A location without source lines gets one synthetic line whose function
//! is named after its address (`0x4f2a10`), so every frame has a name.

use std::collections::HashMap;

use flamedb_model::Tree;
use flamedb_model::budget::BudgetError;
use flamedb_model::pprof::Profile;
use indexmap::IndexSet;

/// Sets numbering what they hold in insertion order, with a fast hasher
/// (SipHash showed at several per cent of the push CPU).
type NumberedSet<T> = IndexSet<T, foldhash::fast::RandomState>;

use crate::block::format;

/// A function: string ids of its names and file, and its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Function {
    pub name: u32,
    pub system_name: u32,
    pub filename: u32,
    pub start_line: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Mapping {
    pub filename: u32,
    pub build_id: u32,
    pub memory_start: u64,
    pub memory_limit: u64,
    pub file_offset: u64,
    pub has_functions: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Line {
    pub function: u32,
    pub line: i64,
}

/// A location: its mapping (0 = none, else mapping index + 1), address and
/// lines (innermost first, as in pprof).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Location {
    pub mapping: u32,
    pub address: u64,
    pub lines: Box<[Line]>,
}

/// Rough sizes of what each entry costs in memory (the value, the index
/// slot and the hash table slot).
const STRING_OVERHEAD: usize = 56;
const FUNCTION_BYTES: usize = 56;
const MAPPING_BYTES: usize = 80;
const LOCATION_BYTES: usize = 64;
const LINE_BYTES: usize = 16;
const STACK_NODE_BYTES: usize = 32;

/// The symbol store of one head or block.
#[derive(Debug)]
pub struct Symbols {
    strings: NumberedSet<String>,
    functions: NumberedSet<Function>,
    mappings: NumberedSet<Mapping>,
    locations: NumberedSet<Location>,
    /// Stack node `i + 1` is `(parent node, location index)`; node 0 is the
    /// empty stack.
    stacks: NumberedSet<(u32, u32)>,
    bytes: usize,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbols {
    pub fn new() -> Self {
        let mut strings = NumberedSet::default();
        strings.insert(String::new());
        Self {
            strings,
            functions: NumberedSet::default(),
            mappings: NumberedSet::default(),
            locations: NumberedSet::default(),
            stacks: NumberedSet::default(),
            bytes: 0,
        }
    }

    /// Memory held, in bytes (estimated from the entries).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn string(&mut self, value: &str) -> u32 {
        if let Some(index) = self.strings.get_index_of(value) {
            return index as u32;
        }
        self.bytes += value.len() + STRING_OVERHEAD;
        self.strings.insert_full(value.to_owned()).0 as u32
    }

    pub fn string_at(&self, index: u32) -> &str {
        self.strings.get_index(index as usize).map_or("", String::as_str)
    }

    /// Adds a profile's symbols; returns the stack id of each sample.
    /// References that do not resolve (a profile that was not normalized)
    /// are skipped, never trusted.
    pub fn add_profile(&mut self, profile: &Profile) -> Vec<u32> {
        let strings: Vec<u32> = profile.string_table.iter().map(|value| self.string(value)).collect();
        let string = |index: i64| {
            usize::try_from(index)
                .ok()
                .and_then(|index| strings.get(index).copied())
                .unwrap_or(0)
        };
        // pprof ids, as normalized: 1..=n in table order. Each table maps
        // by position; an id out of range resolves to nothing.
        let functions: Vec<u32> = profile
            .function
            .iter()
            .map(|function| {
                let function = Function {
                    name: string(function.name),
                    system_name: string(function.system_name),
                    filename: string(function.filename),
                    start_line: function.start_line,
                };
                self.function(function)
            })
            .collect();
        let mappings: Vec<u32> = profile
            .mapping
            .iter()
            .map(|mapping| {
                let mapping = Mapping {
                    filename: string(mapping.filename),
                    build_id: string(mapping.build_id),
                    memory_start: mapping.memory_start,
                    memory_limit: mapping.memory_limit,
                    file_offset: mapping.file_offset,
                    has_functions: mapping.has_functions,
                };
                self.mapping(mapping)
            })
            .collect();
        let by_id = |table: &[u32], id: u64| -> Option<u32> {
            usize::try_from(id)
                .ok()
                .and_then(|id| id.checked_sub(1))
                .and_then(|index| table.get(index).copied())
        };
        let locations: Vec<u32> = profile
            .location
            .iter()
            .map(|location| {
                let mut lines: Vec<Line> = location
                    .line
                    .iter()
                    .filter_map(|line| {
                        Some(Line {
                            function: by_id(&functions, line.function_id)?,
                            line: line.line,
                        })
                    })
                    .collect();
                if lines.is_empty() {
                    let name = self.string(&format!("{:#x}", location.address));
                    let function = self.function(Function {
                        name,
                        system_name: name,
                        filename: 0,
                        start_line: 0,
                    });
                    lines.push(Line { function, line: 0 });
                }
                let mapping = by_id(&mappings, location.mapping_id).map_or(0, |index| index + 1);
                self.location(Location {
                    mapping,
                    address: location.address,
                    lines: lines.into_boxed_slice(),
                })
            })
            .collect();
        profile
            .sample
            .iter()
            .map(|sample| {
                // pprof stacks are leaf first; the tree grows from the root.
                sample
                    .location_id
                    .iter()
                    .rev()
                    .filter_map(|&id| by_id(&locations, id))
                    .fold(0, |parent, location| self.stack_node(parent, location))
            })
            .collect()
    }

    /// Adds every symbol of `other` (a block's, being compacted into this
    /// store); returns the id here of each of its stacks (index: its stack
    /// id, 0 the empty stack).
    pub fn import(&mut self, other: &Symbols) -> Vec<u32> {
        let strings: Vec<u32> = other.strings.iter().map(|value| self.string(value)).collect();
        let string = |index: u32| strings.get(index as usize).copied().unwrap_or(0);
        let functions: Vec<u32> = other
            .functions
            .iter()
            .map(|function| {
                self.function(Function {
                    name: string(function.name),
                    system_name: string(function.system_name),
                    filename: string(function.filename),
                    start_line: function.start_line,
                })
            })
            .collect();
        let mappings: Vec<u32> = other
            .mappings
            .iter()
            .map(|mapping| {
                self.mapping(Mapping {
                    filename: string(mapping.filename),
                    build_id: string(mapping.build_id),
                    ..*mapping
                })
            })
            .collect();
        let locations: Vec<u32> = other
            .locations
            .iter()
            .map(|location| {
                let lines = location
                    .lines
                    .iter()
                    .map(|line| Line {
                        function: functions.get(line.function as usize).copied().unwrap_or(0),
                        line: line.line,
                    })
                    .collect();
                // Mapping 0 is none, else the index + 1.
                let mapping = match location.mapping {
                    0 => 0,
                    index => mappings.get(index as usize - 1).map_or(0, |index| index + 1),
                };
                self.location(Location {
                    mapping,
                    address: location.address,
                    lines,
                })
            })
            .collect();
        // Parents come before their children, so each parent is already
        // translated when its child is.
        let mut stacks = Vec::with_capacity(other.stacks.len() + 1);
        stacks.push(0);
        for &(parent, location) in &other.stacks {
            let parent = stacks.get(parent as usize).copied().unwrap_or(0);
            let location = locations.get(location as usize).copied().unwrap_or(0);
            stacks.push(self.stack_node(parent, location));
        }
        stacks
    }

    fn function(&mut self, function: Function) -> u32 {
        let (index, added) = self.functions.insert_full(function);
        if added {
            self.bytes += FUNCTION_BYTES;
        }
        index as u32
    }

    fn mapping(&mut self, mapping: Mapping) -> u32 {
        let (index, added) = self.mappings.insert_full(mapping);
        if added {
            self.bytes += MAPPING_BYTES;
        }
        index as u32
    }

    fn location(&mut self, location: Location) -> u32 {
        if let Some(index) = self.locations.get_index_of(&location) {
            return index as u32;
        }
        self.bytes += LOCATION_BYTES + location.lines.len() * LINE_BYTES;
        self.locations.insert_full(location).0 as u32
    }

    fn stack_node(&mut self, parent: u32, location: u32) -> u32 {
        let (index, added) = self.stacks.insert_full((parent, location));
        if added {
            self.bytes += STACK_NODE_BYTES;
        }
        index as u32 + 1
    }

    /// Calls `each` with the location of every node of `stack`, leaf
    /// first.
    fn walk(&self, stack: u32, mut each: impl FnMut(&Location)) {
        let mut node = stack;
        while node != 0 {
            let Some(&(parent, location)) = self.stacks.get_index(node as usize - 1) else {
                break;
            };
            if let Some(location) = self.locations.get_index(location as usize) {
                each(location);
            }
            node = parent;
        }
    }

    /// The function names of a stack, root first (inlined calls expanded,
    /// caller before callee).
    pub fn frames(&self, stack: u32, out: &mut Vec<u32>) {
        out.clear();
        self.walk(stack, |location| {
            out.extend(
                location
                    .lines
                    .iter()
                    .filter_map(|line| self.functions.get_index(line.function as usize))
                    .map(|function| function.name),
            );
        });
        out.reverse();
    }

    /// A hash of what a stack says (function names, files, lines), the
    /// same in every head: the key of server-side delta computation. It is
    /// kept in delta state snapshots, so its recipe must not change.
    pub fn stack_hash(&self, stack: u32) -> u64 {
        let mut hasher = xxhash_rust::xxh64::Xxh64::new(0);
        self.walk(stack, |location| {
            for line in location.lines.iter() {
                if let Some(function) = self.functions.get_index(line.function as usize) {
                    hasher.update(self.string_at(function.name).as_bytes());
                    hasher.update(&[0xff]);
                    hasher.update(self.string_at(function.filename).as_bytes());
                    hasher.update(&line.line.to_le_bytes());
                }
            }
            hasher.update(&[0xfe]);
        });
        hasher.digest()
    }

    /// Adds `(stack, value)` pairs to `tree`, by function name. Each
    /// function name is looked up in the tree once, not once per frame.
    pub fn add_to_tree(
        &self,
        stacks: impl IntoIterator<Item = (u32, i64)>,
        tree: &mut Tree,
    ) -> Result<(), BudgetError> {
        let mut frames = Vec::new();
        let mut in_tree: HashMap<u32, u32> = HashMap::new();
        for (stack, value) in stacks {
            self.frames(stack, &mut frames);
            for name in &mut frames {
                *name = match in_tree.get(name) {
                    Some(&interned) => interned,
                    None => {
                        let interned = tree.intern(self.string_at(*name))?;
                        in_tree.insert(*name, interned);
                        interned
                    }
                };
            }
            tree.insert_interned(frames.iter().copied(), value)?;
        }
        Ok(())
    }

    pub fn counts(&self) -> SymbolCounts {
        SymbolCounts {
            strings: self.strings.len(),
            functions: self.functions.len(),
            mappings: self.mappings.len(),
            locations: self.locations.len(),
            stacks: self.stacks.len(),
        }
    }
}

/// How many symbols a head holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SymbolCounts {
    pub strings: usize,
    pub functions: usize,
    pub mappings: usize,
    pub locations: usize,
    pub stacks: usize,
}

impl Symbols {
    /// The tables as a block stores them.
    pub(crate) fn to_file(&self) -> format::SymbolsFile {
        format::SymbolsFile {
            strings: self.strings.iter().cloned().collect(),
            functions: self
                .functions
                .iter()
                .map(|f| format::FunctionEntry {
                    name: f.name,
                    system_name: f.system_name,
                    filename: f.filename,
                    start_line: f.start_line,
                })
                .collect(),
            mappings: self
                .mappings
                .iter()
                .map(|m| format::MappingEntry {
                    filename: m.filename,
                    build_id: m.build_id,
                    memory_start: m.memory_start,
                    memory_limit: m.memory_limit,
                    file_offset: m.file_offset,
                    has_functions: m.has_functions,
                })
                .collect(),
            locations: self
                .locations
                .iter()
                .map(|l| format::LocationEntry {
                    mapping: l.mapping,
                    address: l.address,
                    line_functions: l.lines.iter().map(|line| line.function).collect(),
                    line_numbers: l.lines.iter().map(|line| line.line).collect(),
                })
                .collect(),
            stack_parents: self.stacks.iter().map(|&(parent, _)| parent).collect(),
            stack_locations: self.stacks.iter().map(|&(_, location)| location).collect(),
        }
    }

    /// Rebuilds the tables a block stored, checking every reference (ids
    /// keep their meaning only if each entry is unique and in range).
    pub(crate) fn from_file(file: format::SymbolsFile) -> Result<Self, String> {
        let mut symbols = Self {
            strings: NumberedSet::with_capacity_and_hasher(file.strings.len(), Default::default()),
            functions: NumberedSet::with_capacity_and_hasher(file.functions.len(), Default::default()),
            mappings: NumberedSet::with_capacity_and_hasher(file.mappings.len(), Default::default()),
            locations: NumberedSet::with_capacity_and_hasher(file.locations.len(), Default::default()),
            stacks: NumberedSet::with_capacity_and_hasher(file.stack_parents.len(), Default::default()),
            bytes: 0,
        };
        let strings = file.strings.len();
        let string = |index: u32, what: &str| {
            if (index as usize) < strings {
                Ok(index)
            } else {
                Err(format!("{what} refers to string {index} of {strings}"))
            }
        };
        for value in file.strings {
            symbols.bytes += value.len() + STRING_OVERHEAD;
            if !symbols.strings.insert(value) {
                return Err("a string is stored twice".to_owned());
            }
        }
        for f in file.functions {
            let function = Function {
                name: string(f.name, "a function name")?,
                system_name: string(f.system_name, "a function system name")?,
                filename: string(f.filename, "a function file name")?,
                start_line: f.start_line,
            };
            if symbols.function(function) as usize != symbols.functions.len() - 1 {
                return Err("a function is stored twice".to_owned());
            }
        }
        for m in file.mappings {
            let mapping = Mapping {
                filename: string(m.filename, "a mapping file name")?,
                build_id: string(m.build_id, "a mapping build id")?,
                memory_start: m.memory_start,
                memory_limit: m.memory_limit,
                file_offset: m.file_offset,
                has_functions: m.has_functions,
            };
            if symbols.mapping(mapping) as usize != symbols.mappings.len() - 1 {
                return Err("a mapping is stored twice".to_owned());
            }
        }
        for l in file.locations {
            if l.mapping as usize > symbols.mappings.len() {
                return Err(format!(
                    "a location refers to mapping {} of {}",
                    l.mapping,
                    symbols.mappings.len()
                ));
            }
            if l.line_functions.len() != l.line_numbers.len() {
                return Err("a location has lines without numbers".to_owned());
            }
            let lines = l
                .line_functions
                .iter()
                .zip(&l.line_numbers)
                .map(|(&function, &line)| {
                    if (function as usize) < symbols.functions.len() {
                        Ok(Line { function, line })
                    } else {
                        Err(format!(
                            "a line refers to function {function} of {}",
                            symbols.functions.len()
                        ))
                    }
                })
                .collect::<Result<Box<[Line]>, String>>()?;
            let location = Location {
                mapping: l.mapping,
                address: l.address,
                lines,
            };
            if symbols.location(location) as usize != symbols.locations.len() - 1 {
                return Err("a location is stored twice".to_owned());
            }
        }
        if file.stack_parents.len() != file.stack_locations.len() {
            return Err("stack parents and locations differ in length".to_owned());
        }
        for (node, (&parent, &location)) in file.stack_parents.iter().zip(&file.stack_locations).enumerate() {
            // Node `node + 1`: its parent comes before it, so walks end.
            if parent as usize > node || location as usize >= symbols.locations.len() {
                return Err(format!(
                    "stack node {} is out of order or refers to a missing location",
                    node + 1
                ));
            }
            if symbols.stack_node(parent, location) as usize != node + 1 {
                return Err("a stack node is stored twice".to_owned());
            }
        }
        Ok(symbols)
    }
}
