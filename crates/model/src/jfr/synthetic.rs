//! Writes JFR recordings made up by tests: one uncompressed chunk
//! (fixed-size big-endian integers) with the types async-profiler writes,
//! a constant pool of the stacks, and the given events. Built for tests
//! (`cfg(test)` or the `testing` feature), never by flamedb itself.

// Test support: a misuse by a test should panic there.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::unwrap_used)]

use std::collections::HashMap;

/// Type IDs of the recordings written here.
const LONG: i64 = 1;
const INT: i64 = 2;
const STRING: i64 = 3;
const SYMBOL: i64 = 10;
const CLASS: i64 = 11;
const METHOD: i64 = 12;
const FRAME: i64 = 13;
const STACK: i64 = 14;
const STATE: i64 = 15;
const SETTING: i64 = 20;

/// An event: its type name and its fields after `startTime` and
/// `stackTrace`, each a name and a value (longs, or a thread state).
#[derive(Debug)]
pub struct Event {
    pub name: &'static str,
    pub stack: i64,
    pub fields: Vec<(&'static str, FieldValue)>,
}

#[derive(Debug)]
pub enum FieldValue {
    Long(i64),
    Int(i32),
    /// A thread state by name (`STATE_RUNNABLE`, `STATE_SLEEPING`).
    State(&'static str),
}

#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn long(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    fn int(&mut self, value: i32) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn string(&mut self, text: &str) {
        self.u8(3);
        self.int(text.len() as i32);
        self.0.extend_from_slice(text.as_bytes());
    }
    /// Appends an event of `kind` with `payload`, size first.
    fn event(&mut self, kind: i64, payload: &[u8]) {
        self.int((4 + 8 + payload.len()) as i32);
        self.long(kind);
        self.0.extend_from_slice(payload);
    }
}

struct Element {
    name: &'static str,
    attributes: Vec<(&'static str, String)>,
    children: Vec<Element>,
}

fn write_element(out: &mut Out, strings: &mut Vec<String>, element: &Element) {
    let mut index = |text: &str| -> i32 {
        match strings.iter().position(|s| s == text) {
            Some(at) => at as i32,
            None => {
                strings.push(text.to_owned());
                (strings.len() - 1) as i32
            }
        }
    };
    out.int(index(element.name));
    out.int(element.attributes.len() as i32);
    for (key, value) in &element.attributes {
        out.int(index(key));
        out.int(index(value));
    }
    out.int(element.children.len() as i32);
    for child in &element.children {
        write_element(out, strings, child);
    }
}

/// A field: name, type, whether a pool reference, whether an array.
type FieldSpec = (&'static str, i64, bool, bool);

fn class(id: i64, name: &'static str, fields: &[FieldSpec]) -> Element {
    Element {
        name: "class",
        attributes: vec![("id", id.to_string()), ("name", name.to_owned())],
        children: fields
            .iter()
            .map(|&(field, type_id, pool, array)| {
                let mut attributes = vec![("name", field.to_owned()), ("class", type_id.to_string())];
                if pool {
                    attributes.push(("constantPool", "true".to_owned()));
                }
                if array {
                    attributes.push(("dimension", "1".to_owned()));
                }
                Element {
                    name: "field",
                    attributes,
                    children: Vec::new(),
                }
            })
            .collect(),
    }
}

/// A recording made with profiling event `setting`, with `stacks`
/// (frames as `class.method`, leaf first; stack IDs from 1) and
/// `events`, its ticks at `ticks_per_second`.
pub fn recording(setting: &str, ticks_per_second: i64, stacks: &[&[&str]], events: &[Event]) -> Vec<u8> {
    // Event types: each distinct name, with the fields its events use.
    let mut event_types: Vec<(i64, &'static str, Vec<FieldSpec>)> = Vec::new();
    for event in events {
        if event_types.iter().any(|(_, name, _)| *name == event.name) {
            continue;
        }
        let mut fields: Vec<FieldSpec> = vec![("startTime", LONG, false, false), ("stackTrace", STACK, true, false)];
        for (field, value) in &event.fields {
            fields.push(match value {
                FieldValue::Long(_) => (field, LONG, false, false),
                FieldValue::Int(_) => (field, INT, false, false),
                FieldValue::State(_) => (field, STATE, true, false),
            });
        }
        event_types.push((100 + event_types.len() as i64, event.name, fields));
    }
    let mut classes = vec![
        class(LONG, "long", &[]),
        class(INT, "int", &[]),
        class(STRING, "java.lang.String", &[]),
        class(SYMBOL, "jdk.types.Symbol", &[("string", STRING, false, false)]),
        class(CLASS, "java.lang.Class", &[("name", SYMBOL, true, false)]),
        class(
            METHOD,
            "jdk.types.Method",
            &[("type", CLASS, true, false), ("name", SYMBOL, true, false)],
        ),
        class(FRAME, "jdk.types.StackFrame", &[("method", METHOD, true, false)]),
        class(STACK, "jdk.types.StackTrace", &[("frames", FRAME, false, true)]),
        class(STATE, "jdk.types.ThreadState", &[("name", STRING, false, false)]),
        class(
            SETTING,
            "jdk.ActiveSetting",
            &[("name", STRING, false, false), ("value", STRING, false, false)],
        ),
    ];
    for (id, name, fields) in &event_types {
        classes.push(class(*id, name, fields));
    }

    let mut chunk = Out::default();
    chunk.0.resize(68, 0);
    let mut setting_event = Out::default();
    setting_event.string("event");
    setting_event.string(setting);
    chunk.event(SETTING, &setting_event.0);
    let mut states: HashMap<&str, i64> = HashMap::new();
    for event in events {
        let (id, _, _) = event_types.iter().find(|(_, name, _)| *name == event.name).unwrap();
        let mut payload = Out::default();
        payload.long(0);
        payload.long(event.stack);
        for (_, value) in &event.fields {
            match value {
                FieldValue::Long(value) => payload.long(*value),
                FieldValue::Int(value) => payload.int(*value),
                FieldValue::State(name) => {
                    let next = states.len() as i64 + 1;
                    payload.long(*states.entry(name).or_insert(next));
                }
            }
        }
        chunk.event(*id, &payload.0);
    }

    // The constant pool: symbols, classes, methods, stacks, states.
    let mut symbols: Vec<String> = Vec::new();
    let mut symbol = |text: &str| -> i64 {
        match symbols.iter().position(|s| s == text) {
            Some(at) => at as i64 + 1,
            None => {
                symbols.push(text.to_owned());
                symbols.len() as i64
            }
        }
    };
    // Methods by (class symbol, method symbol); classes by symbol.
    let mut methods: Vec<(i64, i64)> = Vec::new();
    let mut stack_methods: Vec<Vec<i64>> = Vec::new();
    for frames in stacks {
        let mut ids = Vec::new();
        for frame in *frames {
            let (class_name, method_name) = frame.rsplit_once('.').unwrap();
            let key = (symbol(class_name), symbol(method_name));
            let id = match methods.iter().position(|m| *m == key) {
                Some(at) => at as i64 + 1,
                None => {
                    methods.push(key);
                    methods.len() as i64
                }
            };
            ids.push(id);
        }
        stack_methods.push(ids);
    }
    let mut pools = Out::default();
    pools.long(0);
    pools.long(0);
    pools.long(0);
    pools.u8(1);
    pools.int(5);
    pools.long(SYMBOL);
    pools.int(symbols.len() as i32);
    for (index, text) in symbols.iter().enumerate() {
        pools.long(index as i64 + 1);
        pools.string(text);
    }
    // One class per symbol (only class names are used as classes).
    pools.long(CLASS);
    pools.int(symbols.len() as i32);
    for index in 1..=symbols.len() as i64 {
        pools.long(index);
        pools.long(index);
    }
    pools.long(METHOD);
    pools.int(methods.len() as i32);
    for (index, (class_symbol, name_symbol)) in methods.iter().enumerate() {
        pools.long(index as i64 + 1);
        pools.long(*class_symbol);
        pools.long(*name_symbol);
    }
    pools.long(STACK);
    pools.int(stack_methods.len() as i32);
    for (index, frames) in stack_methods.iter().enumerate() {
        pools.long(index as i64 + 1);
        pools.int(frames.len() as i32);
        for method in frames {
            pools.long(*method);
        }
    }
    pools.long(STATE);
    pools.int(states.len() as i32);
    for (name, index) in &states {
        pools.long(*index);
        pools.string(name);
    }
    let pool_offset = chunk.0.len();
    chunk.event(1, &pools.0);

    let metadata_offset = chunk.0.len();
    let mut strings: Vec<String> = Vec::new();
    let mut tree = Out::default();
    let root = Element {
        name: "root",
        attributes: Vec::new(),
        children: vec![Element {
            name: "metadata",
            attributes: Vec::new(),
            children: classes,
        }],
    };
    write_element(&mut tree, &mut strings, &root);
    let mut metadata = Out::default();
    metadata.long(0);
    metadata.long(0);
    metadata.long(0);
    metadata.int(strings.len() as i32);
    for text in &strings {
        metadata.string(text);
    }
    metadata.0.extend_from_slice(&tree.0);
    chunk.event(0, &metadata.0);

    let size = chunk.0.len() as i64;
    let mut header = Out::default();
    header.0.extend_from_slice(b"FLR\0");
    header.0.extend_from_slice(&[0, 2, 0, 0]);
    header.long(size);
    header.long(pool_offset as i64);
    header.long(metadata_offset as i64);
    header.long(0);
    header.long(0);
    header.long(0);
    header.long(ticks_per_second);
    header.int(0);
    chunk.0[..68].copy_from_slice(&header.0);
    chunk.0
}
