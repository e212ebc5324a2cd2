//! What protobuf and proto3 JSON bytes decode into, counted before they are
//! decoded. prost turns two bytes on the wire (an empty element of a
//! repeated message field) into a struct of tens of bytes, so a limit on
//! bytes alone does not bound memory. [`MessageShapes`] knows each
//! message's in-memory size and fields (from the `.proto` descriptors), and
//! a scan of the bytes adds up every struct, `Vec` and string prost or
//! pbjson would allocate, with the allocator's rounding, without
//! allocating them. The scans are loops over an explicit stack, stopped at
//! the decoders' own nesting limits: no recursion on the depth of data.

use std::collections::HashMap;

use prost::Message as _;
use prost::encoding::decode_varint;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

use crate::budget::{allocation_size, vec_allocation};

/// prost's nesting limit for messages: deeper input fails to decode.
const PROTO_DEPTH_LIMIT: usize = 100;
/// serde_json's nesting limit.
const JSON_DEPTH_LIMIT: usize = 128;
/// The size of a `String` or `Vec` in a struct.
const VEC_SIZE: usize = 24;

/// The messages of a descriptor set, as prost lays them out in memory.
#[derive(Debug)]
pub struct MessageShapes {
    shapes: Vec<Shape>,
    by_name: HashMap<String, usize>,
}

#[derive(Debug)]
struct Shape {
    /// The struct's size (an upper bound of `size_of`).
    size: usize,
    /// Sorted by number.
    fields: Vec<Field>,
    /// Only single numbers, bools and enums: decoding it allocates nothing
    /// beyond the struct, so its bytes need no scan.
    flat: bool,
    /// The index in `fields` by field number, for numbers below
    /// [`DIRECT_NUMBERS`] (`u8::MAX`: none); the scan's hot lookup.
    by_number: [u8; DIRECT_NUMBERS],
}

/// Field numbers looked up by table rather than by search.
const DIRECT_NUMBERS: usize = 32;

#[derive(Debug, Clone)]
struct Field {
    number: u32,
    name: String,
    json_name: String,
    repeated: bool,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A message; `boxed` when prost puts it behind a `Box` (recursive).
    Message { shape: usize, boxed: bool },
    /// `string` or `bytes`: heap bytes as long as the value.
    Bytes,
    /// A number, bool or enum of `size` bytes in memory; `fixed` is its
    /// wire size when not a varint.
    Scalar { size: usize, fixed: Option<usize> },
}

impl Kind {
    /// The size of one element in a `Vec` of this kind.
    fn element_size(self, shapes: &[Shape]) -> usize {
        match self {
            Kind::Message { shape, .. } => shapes[shape].size,
            Kind::Bytes => VEC_SIZE,
            Kind::Scalar { size, .. } => size,
        }
    }
}

/// Descriptors that do not describe messages prost could have generated.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("cannot decode the descriptor set: {0}")]
    Descriptors(#[from] prost::DecodeError),
    #[error("field {field} refers to unknown message {type_name}")]
    UnknownType { field: String, type_name: String },
}

impl MessageShapes {
    /// The shapes of every message in an encoded `FileDescriptorSet`.
    pub fn from_descriptor_set(encoded: &[u8]) -> Result<Self, ShapeError> {
        let set = FileDescriptorSet::decode(encoded)?;
        // Every message with its full name (".package.Outer.Inner").
        let mut messages: Vec<(String, &DescriptorProto)> = Vec::new();
        for file in &set.file {
            let package = file.package();
            let mut pending: Vec<(String, &DescriptorProto)> = file
                .message_type
                .iter()
                .map(|message| (format!(".{package}.{}", message.name()), message))
                .collect();
            while let Some((name, message)) = pending.pop() {
                pending.extend(
                    message
                        .nested_type
                        .iter()
                        .map(|nested| (format!("{name}.{}", nested.name()), nested)),
                );
                messages.push((name, message));
            }
        }
        let by_name: HashMap<String, usize> = messages
            .iter()
            .enumerate()
            .map(|(index, (name, _))| (name.clone(), index))
            .collect();
        let mut fields_of = Vec::with_capacity(messages.len());
        for (name, message) in &messages {
            let mut fields = Vec::with_capacity(message.field.len());
            for field in &message.field {
                let kind = match field.r#type() {
                    Type::Message | Type::Group => {
                        let shape = *by_name.get(field.type_name()).ok_or_else(|| ShapeError::UnknownType {
                            field: format!("{name}.{}", field.name()),
                            type_name: field.type_name().to_owned(),
                        })?;
                        Kind::Message { shape, boxed: false }
                    }
                    Type::String | Type::Bytes => Kind::Bytes,
                    Type::Double | Type::Fixed64 | Type::Sfixed64 => Kind::Scalar {
                        size: 8,
                        fixed: Some(8),
                    },
                    Type::Float | Type::Fixed32 | Type::Sfixed32 => Kind::Scalar {
                        size: 4,
                        fixed: Some(4),
                    },
                    Type::Int64 | Type::Uint64 | Type::Sint64 => Kind::Scalar { size: 8, fixed: None },
                    Type::Int32 | Type::Uint32 | Type::Sint32 | Type::Enum => Kind::Scalar { size: 4, fixed: None },
                    Type::Bool => Kind::Scalar { size: 1, fixed: None },
                };
                fields.push(Field {
                    number: u32::try_from(field.number()).unwrap_or(0),
                    name: field.name().to_owned(),
                    json_name: field.json_name().to_owned(),
                    repeated: field.label() == Label::Repeated,
                    kind,
                });
            }
            fields.sort_by_key(|field| field.number);
            fields_of.push(fields);
        }
        let sizes = struct_sizes(&messages, &mut fields_of);
        let shapes = sizes
            .into_iter()
            .zip(fields_of)
            .map(|(size, fields)| {
                let mut by_number = [u8::MAX; DIRECT_NUMBERS];
                for (index, field) in fields.iter().enumerate() {
                    let index = u8::try_from(index).ok().filter(|index| *index != u8::MAX);
                    if let (Some(slot), Some(index)) = (by_number.get_mut(field.number as usize), index) {
                        *slot = index;
                    }
                }
                Shape {
                    size,
                    flat: fields
                        .iter()
                        .all(|field: &Field| !field.repeated && matches!(field.kind, Kind::Scalar { .. })),
                    by_number,
                    fields,
                }
            })
            .collect();
        Ok(Self { shapes, by_name })
    }

    /// What decoding `bytes` as the message `name` (e.g.
    /// `push.v1.PushRequest`, no leading dot) allocates, in bytes: an
    /// upper bound. `None` when the message is unknown. Malformed bytes
    /// count up to where they stop making sense (where decoding fails).
    pub fn proto_size(&self, name: &str, bytes: &[u8]) -> Option<usize> {
        let root = self.index_of(name)?;
        Some(ProtoScan { shapes: &self.shapes }.run(root, bytes))
    }

    /// What decoding `json` as the message `name` with pbjson allocates,
    /// in bytes: an upper bound (escapes and base64 only shrink values).
    pub fn json_size(&self, name: &str, json: &[u8]) -> Option<usize> {
        let root = self.index_of(name)?;
        Some(JsonScan::new(&self.shapes, json).run(root))
    }

    /// The in-memory size of the message `name`'s struct (an upper bound
    /// of `size_of`); `None` when unknown.
    pub fn struct_size(&self, name: &str) -> Option<usize> {
        self.index_of(name).map(|index| self.shapes[index].size)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(&format!(".{name}")).copied()
    }
}

impl Shape {
    fn field(&self, number: u32) -> Option<(usize, &Field)> {
        let index = match self.by_number.get(number as usize) {
            Some(&index) if index != u8::MAX => usize::from(index),
            // Not in the table: a high number, or the 256th field.
            _ => self.fields.binary_search_by_key(&number, |field| field.number).ok()?,
        };
        Some((index, &self.fields[index]))
    }

    /// The field a JSON key names: its JSON name or its proto name.
    fn field_named(&self, key: &[u8]) -> Option<(usize, &Field)> {
        self.fields
            .iter()
            .enumerate()
            .find(|(_, field)| field.json_name.as_bytes() == key || field.name.as_bytes() == key)
    }
}

/// Each struct's size: every field rounded up to 8 bytes (Rust reorders
/// fields, so this bounds the padding), `Option`s of messages inline
/// (prost only boxes recursive fields), a `oneof` as its largest variant
/// plus a tag. Fields that close a cycle are boxed (8 bytes).
fn struct_sizes(messages: &[(String, &DescriptorProto)], fields_of: &mut [Vec<Field>]) -> Vec<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Todo,
        Visiting,
        Done(usize),
    }
    let mut state = vec![State::Todo; messages.len()];
    // Post-order over the schema (finite and ours, but walked with a stack
    // all the same): (message, whether its children were pushed).
    for start in 0..messages.len() {
        let mut stack = vec![(start, false)];
        while let Some((index, expanded)) = stack.pop() {
            if matches!(state[index], State::Done(_)) {
                continue;
            }
            if !expanded {
                state[index] = State::Visiting;
                stack.push((index, true));
                for field in &mut fields_of[index] {
                    if let Kind::Message { shape, boxed } = &mut field.kind
                        && !field.repeated
                    {
                        match state[*shape] {
                            State::Todo => stack.push((*shape, false)),
                            State::Visiting => *boxed = true,
                            State::Done(_) => {}
                        }
                    }
                }
                continue;
            }
            let (_, descriptor) = &messages[index];
            let mut size = 0usize;
            let mut oneofs: HashMap<i32, usize> = HashMap::new();
            for (field, proto) in fields_of[index].iter().zip(sorted_by_number(descriptor)) {
                let inline = match field.kind {
                    _ if field.repeated => VEC_SIZE,
                    Kind::Message { boxed: true, .. } => 8,
                    Kind::Message { shape, .. } => match state[shape] {
                        State::Done(child) => child + 8,
                        // A cycle not yet marked: boxed.
                        _ => 8,
                    },
                    Kind::Bytes => VEC_SIZE,
                    Kind::Scalar { size, .. } => size.next_multiple_of(8),
                };
                let optional = proto.proto3_optional.unwrap_or(false);
                match proto.oneof_index {
                    Some(oneof) if !optional => {
                        let largest = oneofs.entry(oneof).or_default();
                        *largest = (*largest).max(inline);
                    }
                    _ => size += inline + if optional { 8 } else { 0 },
                }
            }
            size += oneofs.values().map(|largest| largest + 8).sum::<usize>();
            state[index] = State::Done(size.next_multiple_of(8));
        }
    }
    state
        .into_iter()
        .map(|state| match state {
            State::Done(size) => size,
            _ => 0,
        })
        .collect()
}

fn sorted_by_number(message: &DescriptorProto) -> Vec<&prost_types::FieldDescriptorProto> {
    let mut fields: Vec<_> = message.field.iter().collect();
    fields.sort_by_key(|field| field.number());
    fields
}

/// One message being scanned: its shape, where it ends, and where its
/// repeated fields' element counts start in the scan's shared list (one
/// list for every open message, so scanning allocates next to nothing).
struct Open {
    shape: usize,
    end: usize,
    counts_from: usize,
}

/// (field index, elements) of the repeated fields of the open messages.
type Counts = Vec<(usize, usize)>;

/// Adds `elements` to `field` of the message whose counts start at `from`.
fn count(counts: &mut Counts, from: usize, field: usize, elements: usize) {
    match counts[from..].iter_mut().find(|(index, _)| *index == field) {
        Some((_, count)) => *count = count.saturating_add(elements),
        None => counts.push((field, elements)),
    }
}

struct ProtoScan<'a> {
    shapes: &'a [Shape],
}

impl ProtoScan<'_> {
    /// The bytes of the `Vec`s of a message's repeated fields.
    fn vec_bytes(&self, shape: usize, counts: &[(usize, usize)]) -> usize {
        let fields = &self.shapes[shape].fields;
        counts
            .iter()
            .map(|&(field, count)| vec_allocation(count, fields[field].kind.element_size(self.shapes)))
            .fold(0, usize::saturating_add)
    }

    fn run(&self, root: usize, bytes: &[u8]) -> usize {
        let mut total = self.shapes[root].size;
        let mut counts = Counts::new();
        let mut stack = vec![Open {
            shape: root,
            end: bytes.len(),
            counts_from: 0,
        }];
        let mut pos = 0;
        while let Some(open) = stack.last() {
            if pos >= open.end {
                total = total.saturating_add(self.vec_bytes(open.shape, &counts[open.counts_from..]));
                counts.truncate(open.counts_from);
                stack.pop();
                continue;
            }
            match self.field(open, &mut counts, bytes, pos) {
                Some(Step::Next { end, heap }) => {
                    total = total.saturating_add(heap);
                    pos = end;
                }
                Some(Step::Enter {
                    shape,
                    start,
                    end,
                    heap,
                }) if stack.len() < PROTO_DEPTH_LIMIT => {
                    total = total.saturating_add(heap);
                    stack.push(Open {
                        shape,
                        end,
                        counts_from: counts.len(),
                    });
                    pos = start;
                }
                // Malformed or too deep: decoding fails here too.
                Some(Step::Enter { .. }) | None => break,
            }
        }
        // What the messages still open had received when decoding failed.
        let mut to = counts.len();
        for open in stack.iter().rev() {
            total = total.saturating_add(self.vec_bytes(open.shape, &counts[open.counts_from..to]));
            to = open.counts_from;
        }
        total
    }

    /// Reads the field at `pos` of `open`'s message, counting the elements
    /// of its repeated fields in `counts`.
    fn field(&self, open: &Open, counts: &mut Counts, bytes: &[u8], pos: usize) -> Option<Step> {
        let mut rest = bytes.get(pos..open.end)?;
        let available = rest.len();
        let key = decode_varint(&mut rest).ok()?;
        let number = u32::try_from(key >> 3).ok()?;
        let wire = key & 7;
        let field = self.shapes[open.shape]
            .field(number)
            .map(|(index, field)| (index, field.repeated, field.kind));
        let at = |rest: &[u8]| pos + (available - rest.len());
        match wire {
            // varint, 64-bit, 32-bit
            0 | 1 | 5 => {
                match wire {
                    0 => {
                        decode_varint(&mut rest).ok()?;
                    }
                    1 => rest = rest.get(8..)?,
                    _ => rest = rest.get(4..)?,
                }
                if let Some((index, true, Kind::Scalar { .. })) = field {
                    count(counts, open.counts_from, index, 1);
                }
                Some(Step::Next { end: at(rest), heap: 0 })
            }
            2 => {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                let payload = rest.get(..len)?;
                let start = at(rest);
                let end = start + len;
                match field {
                    Some((index, repeated, Kind::Message { shape, boxed })) => {
                        if repeated {
                            count(counts, open.counts_from, index, 1);
                        }
                        let heap = if boxed && !repeated {
                            allocation_size(self.shapes[shape].size)
                        } else {
                            0
                        };
                        if self.shapes[shape].flat {
                            // Its struct is all it takes (counted above).
                            return Some(Step::Next { end, heap });
                        }
                        Some(Step::Enter {
                            shape,
                            start,
                            end,
                            heap,
                        })
                    }
                    Some((index, repeated, Kind::Bytes)) => {
                        if repeated {
                            count(counts, open.counts_from, index, 1);
                        }
                        Some(Step::Next {
                            end,
                            heap: allocation_size(len),
                        })
                    }
                    Some((index, true, Kind::Scalar { fixed, .. })) => {
                        let elements = match fixed {
                            Some(size) => len / size,
                            // Each varint ends with a byte below 0x80.
                            None => payload.iter().filter(|byte| **byte < 0x80).count(),
                        };
                        count(counts, open.counts_from, index, elements);
                        Some(Step::Next { end, heap: 0 })
                    }
                    _ => Some(Step::Next { end, heap: 0 }),
                }
            }
            // A group: skipped (prost keeps nothing of unknown groups).
            3 => Some(Step::Next {
                end: at(skip_group(rest)?),
                heap: 0,
            }),
            _ => None,
        }
    }
}

enum Step {
    /// The field was read whole; go on at `end`.
    Next { end: usize, heap: usize },
    /// The field is a message in `start..end`: scan it.
    Enter {
        shape: usize,
        start: usize,
        end: usize,
        heap: usize,
    },
}

/// Skips the rest of a group whose start key was read; returns what follows
/// its end key.
fn skip_group(mut rest: &[u8]) -> Option<&[u8]> {
    let mut depth = 1usize;
    while depth > 0 {
        let key = decode_varint(&mut rest).ok()?;
        match key & 7 {
            0 => {
                decode_varint(&mut rest).ok()?;
            }
            1 => rest = rest.get(8..)?,
            5 => rest = rest.get(4..)?,
            2 => {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                rest = rest.get(len..)?;
            }
            3 => {
                depth += 1;
                if depth > PROTO_DEPTH_LIMIT {
                    return None;
                }
            }
            4 => depth -= 1,
            _ => return None,
        }
    }
    Some(rest)
}

/// What a JSON value is decoded into.
#[derive(Clone, Copy)]
enum Target {
    /// A message of this shape.
    Message(usize),
    /// The value of a field.
    Field { kind: Kind, repeated: bool },
    /// One element of a repeated field (inside its array).
    Element(Kind),
    /// Nothing: an unknown field, ignored without allocating.
    Ignored,
}

enum JsonOpen {
    Object {
        /// The message the object is; `None` when ignored.
        shape: Option<usize>,
        /// Whether a key comes next (else a value, for `next`).
        expect_key: bool,
        next: Target,
    },
    Array {
        /// What each element is; `None` when ignored.
        element: Option<Kind>,
        elements: usize,
    },
}

struct JsonScan<'a> {
    shapes: &'a [Shape],
    json: &'a [u8],
    pos: usize,
}

impl<'a> JsonScan<'a> {
    fn new(shapes: &'a [Shape], json: &'a [u8]) -> Self {
        Self { shapes, json, pos: 0 }
    }

    fn run(mut self, root: usize) -> usize {
        let mut total = self.shapes[root].size;
        let mut stack: Vec<JsonOpen> = Vec::new();
        let mut started = false;
        loop {
            self.skip_whitespace();
            let Some(&byte) = self.json.get(self.pos) else { break };
            match (byte, stack.last_mut()) {
                (b':', _) => {
                    self.pos += 1;
                    continue;
                }
                (b',', Some(JsonOpen::Object { expect_key, .. })) => {
                    *expect_key = true;
                    self.pos += 1;
                    continue;
                }
                (b',', _) => {
                    self.pos += 1;
                    continue;
                }
                (b'}' | b']', _) => {
                    self.pos += 1;
                    match stack.pop() {
                        Some(JsonOpen::Array {
                            element: Some(kind),
                            elements,
                        }) => {
                            total = total.saturating_add(vec_allocation(elements, kind.element_size(self.shapes)));
                        }
                        Some(_) => {}
                        None => break,
                    }
                    continue;
                }
                (
                    b'"',
                    Some(JsonOpen::Object {
                        shape,
                        expect_key: expect_key @ true,
                        next,
                    }),
                ) => {
                    let shape = *shape;
                    *expect_key = false;
                    let Some(key) = self.string() else { break };
                    *next = shape.and_then(|shape| self.shapes[shape].field_named(key)).map_or(
                        Target::Ignored,
                        |(_, field)| Target::Field {
                            kind: field.kind,
                            repeated: field.repeated,
                        },
                    );
                    continue;
                }
                _ => {}
            }
            // A value: where it goes.
            let target = match stack.last_mut() {
                None if !started => Target::Message(root),
                // Anything after the top-level value fails to decode.
                None => break,
                Some(JsonOpen::Object { next, .. }) => std::mem::replace(next, Target::Ignored),
                Some(JsonOpen::Array { element, elements }) => {
                    *elements += 1;
                    element.map_or(Target::Ignored, Target::Element)
                }
            };
            started = true;
            match byte {
                b'{' | b'[' if stack.len() >= JSON_DEPTH_LIMIT => break,
                b'{' => {
                    self.pos += 1;
                    let shape = match target {
                        Target::Message(shape) | Target::Element(Kind::Message { shape, .. }) => Some(shape),
                        Target::Field {
                            kind: Kind::Message { shape, boxed },
                            repeated: false,
                        } => {
                            if boxed {
                                total = total.saturating_add(allocation_size(self.shapes[shape].size));
                            }
                            Some(shape)
                        }
                        _ => None,
                    };
                    stack.push(JsonOpen::Object {
                        shape,
                        expect_key: true,
                        next: Target::Ignored,
                    });
                }
                b'[' => {
                    self.pos += 1;
                    let element = match target {
                        Target::Field { kind, repeated: true } => Some(kind),
                        _ => None,
                    };
                    stack.push(JsonOpen::Array { element, elements: 0 });
                }
                b'"' => {
                    let Some(value) = self.string() else { break };
                    if let Target::Field { kind: Kind::Bytes, .. } | Target::Element(Kind::Bytes) = target {
                        total = total.saturating_add(allocation_size(value.len()));
                    }
                }
                _ => self.skip_scalar(),
            }
        }
        total
    }

    fn skip_whitespace(&mut self) {
        while self.json.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    /// The raw bytes of the string starting at `pos` (escapes left as
    /// they are); `pos` moves past its closing quote.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.pos + 1;
        let mut at = start;
        loop {
            match self.json.get(at)? {
                b'"' => break,
                b'\\' => at += 2,
                _ => at += 1,
            }
        }
        self.pos = at + 1;
        self.json.get(start..at)
    }

    fn skip_scalar(&mut self) {
        let start = self.pos;
        while self
            .json
            .get(self.pos)
            .is_some_and(|byte| !matches!(byte, b',' | b'}' | b']' | b':' | b'"') && !byte.is_ascii_whitespace())
        {
            self.pos += 1;
        }
        // Never stall on a stray byte.
        if self.pos == start {
            self.pos += 1;
        }
    }
}
