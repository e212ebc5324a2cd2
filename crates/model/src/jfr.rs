//! Java Flight Recorder files as the Pyroscope Java agent (async-profiler)
//! sends them: its sampling events (execution samples, allocations, lock
//! and park waits, live objects, native mallocs), each with its stack of
//! frame names and async-profiler's context ID, and the profiling event
//! the recording was made with (`cpu`, `itimer`, `wall`).
//!
//! A file is a series of chunks. Each chunk has a header, a metadata event
//! that describes every type (classes with typed fields), constant pools
//! (stack traces, methods, classes, symbols, strings, ...) and events whose
//! fields refer to the pools. Integers are LEB128-style varints when the
//! chunk says so, else big-endian. Every length and count read from the
//! input is checked against the bytes left, and nesting is bounded, so a
//! damaged or hostile file is refused without a large allocation.
//!
//! Frame names are `class.method` with classes in their internal form
//! (`java/lang/Thread.run`); classes the JVM generates with a counter lose
//! it (`App$$Lambda$75.0x0000000800c22a28` → `App$$Lambda_`), as Pyroscope
//! names them, so a frame keeps one name across restarts.

use std::collections::HashMap;

use crate::budget::{BudgetError, RequestBudget, allocation_size};

const MAGIC: &[u8; 4] = b"FLR\0";
const HEADER_BYTES: usize = 68;
const METADATA_EVENT: i64 = 0;
const CONSTANT_POOL_EVENT: i64 = 1;
/// Nesting of metadata elements and of values; real files use a few levels.
const MAX_DEPTH: usize = 32;
/// Values read per byte of a chunk at most: objects of field-less classes
/// take no bytes, and nested classes many values per byte.
const VALUES_PER_BYTE: usize = 4;
/// Stack frames the samples may expand to, per byte of the file.
const FRAMES_PER_BYTE: usize = 8;
const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// The sampling events read, by event type name.
const EVENTS: [(&str, Event); 9] = [
    ("jdk.ExecutionSample", Event::Execution),
    ("profiler.WallClockSample", Event::WallClock),
    (
        "jdk.ObjectAllocationInNewTLAB",
        Event::Sampled(SampleKind::AllocInNewTlab),
    ),
    (
        "jdk.ObjectAllocationOutsideTLAB",
        Event::Sampled(SampleKind::AllocOutsideTlab),
    ),
    ("jdk.ObjectAllocationSample", Event::Sampled(SampleKind::AllocSample)),
    ("jdk.JavaMonitorEnter", Event::Sampled(SampleKind::Lock)),
    ("jdk.ThreadPark", Event::Sampled(SampleKind::Park)),
    ("profiler.LiveObject", Event::Sampled(SampleKind::Live)),
    ("profiler.Malloc", Event::Sampled(SampleKind::Malloc)),
];

/// What a sample measures: each becomes a profile type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleKind {
    /// Execution samples of threads not sleeping.
    Cpu,
    /// Execution samples of a wall-clock recording (every state), and
    /// async-profiler's wall-clock samples.
    Wall,
    /// Objects allocated in a new TLAB; the amount is the TLAB's size.
    AllocInNewTlab,
    /// Objects allocated outside TLABs; the amount is their size.
    AllocOutsideTlab,
    /// The JDK's allocation samples; the amount is their weight in bytes.
    AllocSample,
    /// Contended monitor enters; the amount is the wait in nanoseconds.
    Lock,
    /// Thread parks; the amount is the wait in nanoseconds.
    Park,
    /// Objects still live.
    Live,
    /// Native allocations; the amount is their size.
    Malloc,
}

impl SampleKind {
    /// The event field holding the amount, if the kind has one.
    fn amount_field(self) -> Option<&'static str> {
        match self {
            Self::Cpu | Self::Wall | Self::Live => None,
            Self::AllocInNewTlab => Some("tlabSize"),
            Self::AllocOutsideTlab => Some("allocationSize"),
            Self::AllocSample => Some("weight"),
            Self::Lock | Self::Park => Some("duration"),
            Self::Malloc => Some("size"),
        }
    }
}

/// How an event type is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// `jdk.ExecutionSample`: CPU unless sleeping; wall too in a
    /// wall-clock recording.
    Execution,
    /// `profiler.WallClockSample`: `samples` wall-clock samples.
    WallClock,
    Sampled(SampleKind),
}

/// How many events of a kind, context and stack there were, and their
/// amount summed (bytes or nanoseconds; 0 for kinds without one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub events: u64,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JfrError {
    #[error("not a JFR file (no FLR magic at byte {offset})")]
    Magic { offset: usize },
    #[error("the JFR file is damaged at byte {offset}: {what}")]
    Damaged { offset: usize, what: String },
    #[error("the JFR file expands to more than {limit} {what}")]
    TooLarge { limit: usize, what: &'static str },
    /// The request's memory budget ran out while reading the file.
    #[error(transparent)]
    Budget(BudgetError),
}

/// What reading a recording charges a request's budget as.
const PARSED: &str = "the values read from a JFR recording";
/// A value in memory, twice (vectors grow by doubling).
const VALUE_BYTES: usize = 2 * size_of::<Value>();

/// What a recording holds that flamedb stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recording {
    /// The profiling event (`cpu`, `itimer`, `wall`), when the recording
    /// says.
    pub event: Option<String>,
    /// Frame names; stacks refer to them by index.
    pub names: Vec<String>,
    /// Distinct stacks: indices into `names`, root first.
    pub stacks: Vec<Vec<u32>>,
    /// Samples by kind, context ID and stack (index into `stacks`).
    pub samples: HashMap<(SampleKind, i64, usize), Totals>,
}

/// Reads every chunk of `data`.
pub fn parse(data: &[u8]) -> Result<Recording, JfrError> {
    parse_within(data, &RequestBudget::unlimited())
}

/// [`parse`], charging what it allocates to `budget` first.
pub fn parse_within(data: &[u8], budget: &RequestBudget) -> Result<Recording, JfrError> {
    let mut recording = Recording::default();
    let mut names: HashMap<String, u32> = HashMap::new();
    let mut start = 0;
    while start < data.len() {
        start = parse_chunk(data, start, &mut recording, &mut names, budget)?;
    }
    let limit = data.len().saturating_mul(FRAMES_PER_BYTE);
    let frames = recording
        .samples
        .keys()
        .map(|&(_, _, stack)| recording.stacks.get(stack).map_or(0, Vec::len))
        .fold(0usize, usize::saturating_add);
    if frames > limit {
        return Err(JfrError::TooLarge {
            limit,
            what: "stack frames",
        });
    }
    Ok(recording)
}

fn damaged(offset: usize, what: impl Into<String>) -> JfrError {
    JfrError::Damaged {
        offset,
        what: what.into(),
    }
}

/// Reads the chunk at `start`; returns where the next one starts.
fn parse_chunk(
    data: &[u8],
    start: usize,
    recording: &mut Recording,
    names: &mut HashMap<String, u32>,
    budget: &RequestBudget,
) -> Result<usize, JfrError> {
    let mut header = Reader::new(data, start, data.len(), false, budget);
    if header.bytes(4)? != MAGIC {
        return Err(JfrError::Magic { offset: start });
    }
    let _version = header.bytes(4)?;
    let size = header.fixed_i64()?;
    let _constant_pool_offset = header.fixed_i64()?;
    let metadata_offset = header.fixed_i64()?;
    let _start_nanos = header.fixed_i64()?;
    let _duration_nanos = header.fixed_i64()?;
    let _start_ticks = header.fixed_i64()?;
    let ticks_per_second = header.fixed_i64()?;
    let features = header.fixed_i32()?;
    let compressed = features & 1 != 0;
    let end = usize::try_from(size)
        .ok()
        .and_then(|size| start.checked_add(size))
        .filter(|&end| end <= data.len() && end >= start + HEADER_BYTES)
        .ok_or_else(|| damaged(start + 8, format!("a chunk size of {size} bytes")))?;
    let metadata_at = usize::try_from(metadata_offset)
        .ok()
        .and_then(|offset| start.checked_add(offset))
        .filter(|&at| at >= start + HEADER_BYTES && at < end)
        .ok_or_else(|| damaged(start + 24, format!("a metadata offset of {metadata_offset}")))?;
    let types = Types::parse(&mut Reader::new(data, metadata_at, end, compressed, budget))?;
    types.values_left.set((end - start).saturating_mul(VALUES_PER_BYTE));

    let mut pools: HashMap<(i64, i64), Value> = HashMap::new();
    // Samples and settings refer to pools that may come later in the chunk.
    let mut samples: Vec<RawSample> = Vec::new();
    let mut settings: Vec<(Value, Value)> = Vec::new();
    let mut at = start + HEADER_BYTES;
    while at < end {
        let mut event = Reader::new(data, at, end, compressed, budget);
        let size = event.int()?;
        let event_end = usize::try_from(size)
            .ok()
            .filter(|&size| size > 0)
            .and_then(|size| at.checked_add(size))
            .filter(|&event_end| event_end <= end)
            .ok_or_else(|| damaged(at, format!("an event size of {size} bytes")))?;
        event.end = event_end;
        let kind = event.long()?;
        match kind {
            METADATA_EVENT => {}
            CONSTANT_POOL_EVENT => read_pools(&mut event, &types, &mut pools)?,
            kind if let Some(&sampled) = types.events.get(&kind) => {
                let class = types.class(kind, event.pos)?;
                let Value::Object(fields) = read_object(&mut event, &types, class, 0)? else {
                    return Err(damaged(at, "a sample that is not an object"));
                };
                let field = |name| class.field(&fields, name).cloned().unwrap_or(Value::Null);
                let int = |name| match class.field(&fields, name) {
                    Some(Value::Int(value)) => Some(*value),
                    _ => None,
                };
                let amount = match sampled {
                    Event::Sampled(kind) => kind.amount_field().and_then(int).unwrap_or(0),
                    Event::WallClock => int("samples").unwrap_or(1),
                    Event::Execution => 0,
                };
                event.charge(2 * size_of::<RawSample>())?;
                samples.push(RawSample {
                    event: sampled,
                    stack: field("stackTrace"),
                    context: int("contextId").unwrap_or(0),
                    state: field("state"),
                    amount,
                });
            }
            kind if Some(kind) == types.active_setting => {
                let class = types.class(kind, event.pos)?;
                if let Value::Object(fields) = read_object(&mut event, &types, class, 0)? {
                    event.charge(2 * size_of::<(Value, Value)>())?;
                    let field = |name| class.field(&fields, name).cloned().unwrap_or(Value::Null);
                    settings.push((field("name"), field("value")));
                }
            }
            _ => {}
        }
        at = event_end;
    }

    let resolver = Resolver {
        types: &types,
        pools: &pools,
        budget,
    };
    for (name, value) in settings {
        if resolver.string(&name).as_deref() == Some("event")
            && let Some(value) = resolver.string(&value)
        {
            recording.event = Some(value);
        }
    }
    let wall_recording = recording.event.as_deref() == Some("wall");
    // Each stack is resolved once, however many samples share it, and
    // each method's frame name made once, however many frames call it.
    let mut resolved: HashMap<(i64, i64), usize> = HashMap::new();
    let mut method_names: HashMap<(i64, i64), Option<u32>> = HashMap::new();
    for sample in samples {
        let mut counted: [Option<(SampleKind, Totals)>; 2] = [None, None];
        match sample.event {
            Event::Execution => {
                let sleeping = types
                    .thread_state
                    .and_then(|class| resolver.field(&sample.state, class, "name"))
                    .and_then(|(name, _)| resolver.string(name))
                    .is_some_and(|name| name == "STATE_SLEEPING");
                let one = Totals { events: 1, amount: 0 };
                if !sleeping {
                    counted[0] = Some((SampleKind::Cpu, one));
                }
                if wall_recording {
                    counted[1] = Some((SampleKind::Wall, one));
                }
            }
            Event::WallClock => {
                let events = u64::try_from(sample.amount).unwrap_or(0);
                counted[0] = Some((SampleKind::Wall, Totals { events, amount: 0 }));
            }
            Event::Sampled(kind) => {
                let amount = if matches!(kind, SampleKind::Lock | SampleKind::Park) {
                    ticks_to_nanos(sample.amount, ticks_per_second)
                } else {
                    sample.amount
                };
                counted[0] = Some((kind, Totals { events: 1, amount }));
            }
        }
        if counted.iter().all(Option::is_none) {
            continue;
        }
        let stack_id = match sample.stack {
            Value::Ref { class, index } if resolved.contains_key(&(class, index)) => resolved[&(class, index)],
            stack => {
                let frames = resolver.frames(&stack, names, &mut recording.names, &mut method_names)?;
                charge(budget, 2 * size_of::<Vec<u32>>() + 64)?;
                recording.stacks.push(frames);
                let id = recording.stacks.len() - 1;
                if let Value::Ref { class, index } = stack {
                    resolved.insert((class, index), id);
                }
                id
            }
        };
        for (kind, totals) in counted.into_iter().flatten() {
            charge(budget, 64)?;
            let entry = recording.samples.entry((kind, sample.context, stack_id)).or_default();
            entry.events = entry.events.saturating_add(totals.events);
            entry.amount = entry.amount.saturating_add(totals.amount);
        }
    }
    Ok(end)
}

/// Charges `bytes` about to be allocated to `budget`.
fn charge(budget: &RequestBudget, bytes: usize) -> Result<(), JfrError> {
    budget.charge(bytes, PARSED).map_err(JfrError::Budget)
}

/// A sampling event as read, before the pools it refers to are known.
struct RawSample {
    event: Event,
    stack: Value,
    context: i64,
    /// The thread state of execution samples.
    state: Value,
    /// The event's amount field (ticks for durations), or its number of
    /// wall-clock samples.
    amount: i64,
}

/// A duration in the chunk's ticks as nanoseconds (as is when the chunk
/// states no tick rate).
fn ticks_to_nanos(ticks: i64, ticks_per_second: i64) -> i64 {
    if ticks_per_second <= 0 || i128::from(ticks_per_second) == NANOS_PER_SECOND {
        return ticks;
    }
    let nanos = i128::from(ticks) * NANOS_PER_SECOND / i128::from(ticks_per_second);
    i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX })
}

/// Constant pools of one checkpoint event.
fn read_pools(event: &mut Reader<'_>, types: &Types, pools: &mut HashMap<(i64, i64), Value>) -> Result<(), JfrError> {
    let _start = event.long()?;
    let _duration = event.long()?;
    let _delta = event.long()?;
    let _kind = event.u8()?;
    let count = event.count()?;
    for _ in 0..count {
        let class_id = event.long()?;
        let class = types.class(class_id, event.pos)?;
        let entries = event.count()?;
        for _ in 0..entries {
            let index = event.long()?;
            let value = read_value(event, types, class, 0)?;
            // The map's slot: key, value, control bytes, twice for growth.
            event.charge(2 * (size_of::<(i64, i64)>() + size_of::<Value>() + 8))?;
            pools.insert((class_id, index), value);
        }
    }
    Ok(())
}

/// A value of a field: numbers, text, a reference into a pool, an array or
/// an object (fields in their class's order).
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Float,
    Text(String),
    Ref { class: i64, index: i64 },
    Array(Vec<Value>),
    Object(Vec<Value>),
}

fn read_value(reader: &mut Reader<'_>, types: &Types, class: &Class, depth: usize) -> Result<Value, JfrError> {
    types.take_value(reader)?;
    Ok(match class.name.as_str() {
        "boolean" | "byte" => Value::Int(i64::from(reader.u8()?)),
        "char" | "short" | "int" => Value::Int(i64::from(reader.int()?)),
        "long" => Value::Int(reader.long()?),
        "float" => {
            reader.bytes(4)?;
            Value::Float
        }
        "double" => {
            reader.bytes(8)?;
            Value::Float
        }
        "java.lang.String" => match reader.string()? {
            Text::Null => Value::Null,
            Text::Inline(text) => Value::Text(text),
            Text::Pool(index) => Value::Ref { class: class.id, index },
        },
        _ => read_object(reader, types, class, depth)?,
    })
}

fn read_object(reader: &mut Reader<'_>, types: &Types, class: &Class, depth: usize) -> Result<Value, JfrError> {
    if depth > MAX_DEPTH {
        return Err(damaged(reader.pos, "values nested too deep"));
    }
    let mut fields = Vec::with_capacity(class.fields.len());
    for field in &class.fields {
        let read_one = |reader: &mut Reader<'_>| -> Result<Value, JfrError> {
            if field.pool {
                Ok(Value::Ref {
                    class: field.type_id,
                    index: reader.long()?,
                })
            } else {
                read_value(reader, types, types.class(field.type_id, reader.pos)?, depth + 1)
            }
        };
        types.take_value(reader)?;
        let value = if field.array {
            let count = reader.count()?;
            let mut items = Vec::new();
            for _ in 0..count {
                items.push(read_one(reader)?);
            }
            Value::Array(items)
        } else {
            read_one(reader)?
        };
        fields.push(value);
    }
    Ok(Value::Object(fields))
}

/// Follows references into the pools to frame names and strings.
struct Resolver<'a> {
    types: &'a Types,
    pools: &'a HashMap<(i64, i64), Value>,
    budget: &'a RequestBudget,
}

impl Resolver<'_> {
    /// `value`, or what it refers to, with its class.
    fn deref<'v>(&'v self, value: &'v Value, class: i64) -> Option<(&'v Value, &'v Class)> {
        match value {
            Value::Ref { class, index } => {
                let value = self.pools.get(&(*class, *index))?;
                Some((value, self.types.classes.get(class)?))
            }
            value => Some((value, self.types.classes.get(&class)?)),
        }
    }

    /// The text of a string value or of a reference to one.
    fn string(&self, value: &Value) -> Option<String> {
        match value {
            Value::Text(text) => Some(text.clone()),
            Value::Ref { class, index } => match self.pools.get(&(*class, *index))? {
                Value::Text(text) => Some(text.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The field `name` of an object value (or of the object a reference
    /// points to) of class `class`.
    fn field<'v>(&'v self, value: &'v Value, class: i64, name: &str) -> Option<(&'v Value, i64)> {
        let (value, class) = self.deref(value, class)?;
        let Value::Object(fields) = value else { return None };
        let index = class.fields.iter().position(|field| field.name == name)?;
        Some((fields.get(index)?, class.fields[index].type_id))
    }

    /// The `string` of a symbol.
    fn symbol(&self, value: &Value, class: i64) -> Option<String> {
        let (text, _) = self.field(value, class, "string")?;
        self.string(text)
    }

    /// The frames of a stack trace, root first, as indices into `names`.
    /// A method referred to by many frames gets its name made once
    /// (`by_method`).
    fn frames(
        &self,
        stack: &Value,
        index: &mut HashMap<String, u32>,
        names: &mut Vec<String>,
        by_method: &mut HashMap<(i64, i64), Option<u32>>,
    ) -> Result<Vec<u32>, JfrError> {
        let Some(stack_class) = self.types.stack_trace else {
            return Ok(Vec::new());
        };
        let Some((Value::Array(frames), frame_class)) = self.field(stack, stack_class, "frames") else {
            return Ok(Vec::new());
        };
        charge(self.budget, 2 * 4 * frames.len())?;
        let mut out: Vec<u32> = Vec::with_capacity(frames.len());
        for frame in frames {
            let Some((method, method_class)) = self.field(frame, frame_class, "method") else {
                continue;
            };
            let method_ref = match method {
                Value::Ref { class, index } => Some((*class, *index)),
                _ => None,
            };
            let known = method_ref.and_then(|key| by_method.get(&key).copied());
            let id = match known {
                Some(id) => id,
                None => {
                    let id = match self.frame_name(method, method_class) {
                        Some(name) => Some(match index.get(&name) {
                            Some(&id) => id,
                            None => {
                                // The name in `names` and in `index`.
                                charge(self.budget, 2 * allocation_size(name.len()) + 96)?;
                                let id = u32::try_from(names.len()).unwrap_or(u32::MAX);
                                index.insert(name.clone(), id);
                                names.push(name);
                                id
                            }
                        }),
                        None => None,
                    };
                    if let Some(key) = method_ref {
                        charge(self.budget, 64)?;
                        by_method.insert(key, id);
                    }
                    id
                }
            };
            // Frames whose method or class cannot be resolved are left out.
            out.extend(id);
        }
        out.reverse();
        Ok(out)
    }

    /// The frame name of a method: `Class.method`.
    fn frame_name(&self, method: &Value, method_class: i64) -> Option<String> {
        let (class, class_id) = self.field(method, method_class, "type")?;
        let (name, symbol_class) = self.field(class, class_id, "name")?;
        let class_name = self.symbol(name, symbol_class)?;
        let (name, symbol_class) = self.field(method, method_class, "name")?;
        let method_name = self.symbol(name, symbol_class)?;
        Some(format!("{}.{method_name}", without_generated_suffix(&class_name)))
    }
}

/// Class names the JVM generates with a counter lose it, so the frame
/// keeps one name across runs, as Pyroscope names them: lambda classes
/// (`App$$Lambda$75.0x0000000800c22a28`, `Main$$Lambda$1/1831932724`,
/// `App$$Lambda/0x...`, `Foo$$Lambda123`) become `App$$Lambda_`, and
/// reflection accessors (`jdk/internal/reflect/GeneratedMethodAccessor12`)
/// end in `_`.
fn without_generated_suffix(class: &str) -> std::borrow::Cow<'_, str> {
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    const ACCESSOR: &str = "GeneratedMethodAccessor";
    if let Some(at) = class.find(ACCESSOR)
        && digits(&class[at + ACCESSOR.len()..])
    {
        return format!("{}_", &class[..at + ACCESSOR.len()]).into();
    }
    const LAMBDA: &str = "$$Lambda";
    let Some(at) = class.rfind(LAMBDA).filter(|&at| at > 0) else {
        return class.into();
    };
    let rest = &class[at + LAMBDA.len()..];
    // `$?\d*[./](0x)?[0-9a-f]+` or `\d+`, to the end of the name.
    let generated = digits(rest) || {
        let counter = rest.strip_prefix('$').unwrap_or(rest);
        let after_counter = counter.trim_start_matches(|c: char| c.is_ascii_digit());
        after_counter
            .strip_prefix(['.', '/'])
            .map(|hex| hex.strip_prefix("0x").unwrap_or(hex))
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')))
    };
    if generated {
        format!("{}_", &class[..at + LAMBDA.len()]).into()
    } else {
        class.into()
    }
}

/// A field of a class.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    type_id: i64,
    /// The value is a reference into the type's constant pool.
    pool: bool,
    array: bool,
}

#[derive(Debug, Clone)]
struct Class {
    id: i64,
    name: String,
    fields: Vec<Field>,
}

impl Class {
    fn field<'v>(&self, values: &'v [Value], name: &str) -> Option<&'v Value> {
        let index = self.fields.iter().position(|field| field.name == name)?;
        values.get(index)
    }
}

/// The types of a chunk, from its metadata event.
#[derive(Debug, Default)]
struct Types {
    classes: HashMap<i64, Class>,
    /// The sampling event types read, by class ID.
    events: HashMap<i64, Event>,
    active_setting: Option<i64>,
    stack_trace: Option<i64>,
    thread_state: Option<i64>,
    /// Values the chunk may still hold (see [`VALUES_PER_BYTE`]).
    values_left: std::cell::Cell<usize>,
}

impl Types {
    /// Counts one more value read and charges it; refuses past the chunk's
    /// allowance.
    fn take_value(&self, reader: &Reader<'_>) -> Result<(), JfrError> {
        let left = self.values_left.get();
        if left == 0 {
            return Err(damaged(reader.pos, "more values than the chunk's size allows"));
        }
        self.values_left.set(left - 1);
        reader.charge(VALUE_BYTES)
    }

    fn class(&self, id: i64, offset: usize) -> Result<&Class, JfrError> {
        self.classes
            .get(&id)
            .ok_or_else(|| damaged(offset, format!("type {id} is not in the metadata")))
    }

    fn parse(reader: &mut Reader<'_>) -> Result<Self, JfrError> {
        let at = reader.pos;
        let size = reader.int()?;
        reader.end = usize::try_from(size)
            .ok()
            .and_then(|size| at.checked_add(size))
            .filter(|&end| end <= reader.end)
            .ok_or_else(|| damaged(at, format!("a metadata size of {size} bytes")))?;
        if reader.long()? != METADATA_EVENT {
            return Err(damaged(at, "the metadata offset does not point at the metadata"));
        }
        let _start = reader.long()?;
        let _duration = reader.long()?;
        let _id = reader.long()?;
        let count = reader.count()?;
        let mut strings = Vec::new();
        for _ in 0..count {
            reader.charge(2 * size_of::<String>())?;
            strings.push(match reader.string()? {
                Text::Inline(text) => text,
                Text::Null | Text::Pool(_) => String::new(),
            });
        }
        let root = Element::parse(reader, &strings, 0)?;
        let mut types = Self::default();
        for metadata in root.children.iter().filter(|element| element.name == "metadata") {
            for class in metadata.children.iter().filter(|element| element.name == "class") {
                let id = class.attribute("id").and_then(|id| id.parse().ok());
                let Some(id) = id else { continue };
                let name = class.attribute("name").unwrap_or_default();
                reader.charge(allocation_size(name.len()) + 2 * size_of::<Class>())?;
                let name = name.to_owned();
                let mut fields = Vec::new();
                for field in class.children.iter().filter(|element| element.name == "field") {
                    let field_name = field.attribute("name").unwrap_or_default();
                    reader.charge(allocation_size(field_name.len()) + 2 * size_of::<Field>())?;
                    fields.push(Field {
                        name: field_name.to_owned(),
                        type_id: field.attribute("class").and_then(|id| id.parse().ok()).unwrap_or(-1),
                        pool: field.attribute("constantPool") == Some("true"),
                        array: field.attribute("dimension") == Some("1"),
                    });
                }
                if let Some((_, event)) = EVENTS.iter().find(|(event_name, _)| *event_name == name) {
                    types.events.insert(id, *event);
                }
                match name.as_str() {
                    "jdk.ActiveSetting" => types.active_setting = Some(id),
                    "jdk.types.StackTrace" => types.stack_trace = Some(id),
                    "jdk.types.ThreadState" => types.thread_state = Some(id),
                    _ => {}
                }
                types.classes.insert(id, Class { id, name, fields });
            }
        }
        Ok(types)
    }
}

/// An element of the metadata tree.
#[derive(Debug)]
struct Element<'s> {
    name: &'s str,
    /// Borrowed from the string table: a string used by many attributes
    /// is never copied.
    attributes: Vec<(&'s str, &'s str)>,
    children: Vec<Element<'s>>,
}

impl<'s> Element<'s> {
    fn parse(reader: &mut Reader<'_>, strings: &'s [String], depth: usize) -> Result<Self, JfrError> {
        if depth > MAX_DEPTH {
            return Err(damaged(reader.pos, "metadata nested too deep"));
        }
        let string = |reader: &mut Reader<'_>| -> Result<&'s str, JfrError> {
            let at = reader.pos;
            let index = reader.int()?;
            usize::try_from(index)
                .ok()
                .and_then(|index| strings.get(index))
                .map(String::as_str)
                .ok_or_else(|| damaged(at, format!("metadata string {index} does not exist")))
        };
        let name = string(reader)?;
        let count = reader.count()?;
        let mut attributes = Vec::new();
        for _ in 0..count {
            reader.charge(2 * size_of::<(&str, &str)>())?;
            attributes.push((string(reader)?, string(reader)?));
        }
        let count = reader.count()?;
        let mut children = Vec::new();
        for _ in 0..count {
            reader.charge(2 * size_of::<Self>())?;
            children.push(Self::parse(reader, strings, depth + 1)?);
        }
        Ok(Self {
            name,
            attributes,
            children,
        })
    }

    fn attribute(&self, key: &str) -> Option<&'s str> {
        self.attributes
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| *value)
    }
}

enum Text {
    Null,
    Inline(String),
    Pool(i64),
}

/// Reads the bytes of `data` between `pos` and `end`; what is built from
/// them is charged to `budget` first.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
    compressed: bool,
    budget: &'a RequestBudget,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], pos: usize, end: usize, compressed: bool, budget: &'a RequestBudget) -> Self {
        Self {
            data,
            pos,
            end: end.min(data.len()),
            compressed,
            budget,
        }
    }

    /// Charges `bytes` about to be allocated.
    fn charge(&self, bytes: usize) -> Result<(), JfrError> {
        charge(self.budget, bytes)
    }

    /// Bytes left before `end`.
    fn left(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    fn bytes(&mut self, count: usize) -> Result<&'a [u8], JfrError> {
        let end = self
            .pos
            .checked_add(count)
            .filter(|&end| end <= self.end)
            .ok_or_else(|| damaged(self.pos, format!("{count} bytes needed, {} left", self.left())))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, JfrError> {
        Ok(self.bytes(1)?[0])
    }

    fn fixed_i64(&mut self) -> Result<i64, JfrError> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.bytes(8)?);
        Ok(i64::from_be_bytes(bytes))
    }

    fn fixed_i32(&mut self) -> Result<i32, JfrError> {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(self.bytes(4)?);
        Ok(i32::from_be_bytes(bytes))
    }

    /// A varint of up to 9 bytes (the ninth holds 8 bits).
    fn varint(&mut self) -> Result<i64, JfrError> {
        let mut value: u64 = 0;
        for shift in 0..8 {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                return Ok(value as i64);
            }
        }
        value |= u64::from(self.u8()?) << 56;
        Ok(value as i64)
    }

    fn long(&mut self) -> Result<i64, JfrError> {
        if self.compressed {
            self.varint()
        } else {
            self.fixed_i64()
        }
    }

    fn int(&mut self) -> Result<i32, JfrError> {
        if self.compressed {
            // Ints are varints of their 32 bits.
            Ok(self.varint()? as i32)
        } else {
            self.fixed_i32()
        }
    }

    /// A count of items that follow: each takes at least one byte (or is
    /// bounded by the bytes left), so a count over them is damage.
    fn count(&mut self) -> Result<usize, JfrError> {
        let at = self.pos;
        let count = self.int()?;
        usize::try_from(count)
            .ok()
            .filter(|&count| count <= self.left())
            .ok_or_else(|| damaged(at, format!("a count of {count} with {} bytes left", self.left())))
    }

    fn string(&mut self) -> Result<Text, JfrError> {
        let at = self.pos;
        Ok(match self.u8()? {
            0 => Text::Null,
            1 => Text::Inline(String::new()),
            2 => Text::Pool(self.long()?),
            3 => {
                let length = self.count()?;
                self.charge(allocation_size(length))?;
                let bytes = self.bytes(length)?;
                Text::Inline(String::from_utf8(bytes.to_vec()).map_err(|_| damaged(at, "a string that is not UTF-8"))?)
            }
            4 => {
                let length = self.count()?;
                // Up to 4 bytes per character, as the string grows.
                self.charge(2 * allocation_size(length.saturating_mul(4)))?;
                let mut text = String::with_capacity(length);
                for _ in 0..length {
                    let code = self.int()?;
                    text.push(
                        u32::try_from(code)
                            .ok()
                            .and_then(char::from_u32)
                            .unwrap_or(char::REPLACEMENT_CHARACTER),
                    );
                }
                Text::Inline(text)
            }
            5 => {
                let length = self.count()?;
                // Latin-1: up to 2 bytes per character.
                self.charge(2 * allocation_size(length.saturating_mul(2)))?;
                Text::Inline(self.bytes(length)?.iter().map(|&byte| char::from(byte)).collect())
            }
            encoding => return Err(damaged(at, format!("string encoding {encoding}"))),
        })
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod synthetic;
#[cfg(test)]
mod tests;
