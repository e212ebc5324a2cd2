//! The pprof profile messages (`google.v1`) and their decoding from the bytes
//! agents send: gzip-compressed or plain, with a limit on the decompressed
//! size so a small body can never expand into unbounded memory.

use prost::Message;

use crate::budget::{BudgetError, RequestBudget, allocation_size};
use crate::decode_cost::MessageShapes;
use crate::gzip::{GzipError, gunzip_if_compressed};

/// Generated from `proto/google/v1/profile.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/google.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/google.v1.serde.rs"));
}

pub use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// Why bytes could not be read as a pprof profile.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("uncompressed profile payload size exceeds limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("invalid gzip data: {source}")]
    Gzip { source: std::io::Error },
    #[error("invalid utf8 string hex: {hex}")]
    InvalidUtf8 { hex: String },
    #[error("invalid pprof protobuf: {source}")]
    Protobuf { source: prost::DecodeError },
    /// The request's memory budget ran out: the request fails, not only
    /// this profile.
    #[error(transparent)]
    Budget(BudgetError),
}

/// Decodes a pprof profile from gzip-compressed or plain bytes; the
/// decompressed size must not exceed `max_bytes` (`0`: no limit). Nothing
/// else is limited: for tools and trusted input.
pub fn decode(raw: &[u8], max_bytes: usize) -> Result<Profile, DecodeError> {
    decode_within(raw, max_bytes, &RequestBudget::unlimited())
}

/// [`decode`], charging the decompressed bytes and what they decode into
/// to `budget` first. [`DecodeError::Budget`] is the request's failure (its
/// budget ran out), the other errors the profile's.
pub fn decode_within(raw: &[u8], max_bytes: usize, budget: &RequestBudget) -> Result<Profile, DecodeError> {
    let bytes = gunzip_if_compressed(raw, max_bytes, budget).map_err(|err| match err {
        GzipError::TooLarge { limit } => DecodeError::TooLarge { limit },
        GzipError::Invalid { source } => DecodeError::Gzip { source },
        GzipError::Budget(err) => DecodeError::Budget(err),
    })?;
    budget
        .charge(decoded_size(&bytes), DECODED)
        .map_err(DecodeError::Budget)?;
    decode_plain(&bytes)
}

/// What [`decode_within`] charges the decoded profile as.
const DECODED: &str = "the decoded pprof profile";

/// What decoding plain pprof `bytes` allocates: an upper bound, counted
/// without decoding (see [`crate::decode_cost`]).
pub fn decoded_size(bytes: &[u8]) -> usize {
    /// More than prost ever allocates per byte of pprof (a packed varint
    /// becomes 8 bytes, twice with growth; an empty sample 72 bytes, and
    /// more with the minimum capacity of its vectors): only used if the
    /// compiled-in descriptors could not be read.
    const WORST_CASE_PER_BYTE: usize = 256;
    message_shapes()
        .and_then(|shapes| shapes.proto_size(<Profile as prost::Name>::full_name().as_str(), bytes))
        .unwrap_or_else(|| bytes.len().saturating_mul(WORST_CASE_PER_BYTE))
}

/// The in-memory shapes of the pprof messages, from their compiled-in
/// descriptors (`None` only if those could not be read, which a test rules
/// out).
pub fn message_shapes() -> Option<&'static MessageShapes> {
    static SHAPES: std::sync::LazyLock<Option<MessageShapes>> = std::sync::LazyLock::new(|| {
        MessageShapes::from_descriptor_set(include_bytes!(concat!(env!("OUT_DIR"), "/google.v1.descriptors.bin"))).ok()
    });
    SHAPES.as_ref()
}

/// Decodes an uncompressed pprof profile.
pub fn decode_plain(bytes: &[u8]) -> Result<Profile, DecodeError> {
    Profile::decode(bytes).map_err(|source| match find_invalid_utf8_string(bytes) {
        Some(invalid) => DecodeError::InvalidUtf8 { hex: to_hex(invalid) },
        None => DecodeError::Protobuf { source },
    })
}

/// Encodes a profile as plain pprof bytes.
pub fn encode(profile: &Profile) -> Vec<u8> {
    profile.encode_to_vec()
}

/// Finds the first string table entry (field 6 of `Profile`) that is not
/// valid UTF-8. Only called after decoding failed, to name the culprit.
fn find_invalid_utf8_string(mut bytes: &[u8]) -> Option<&[u8]> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    const STRING_TABLE_FIELD: u32 = 6;
    while !bytes.is_empty() {
        let (field, wire_type) = decode_key(&mut bytes).ok()?;
        match wire_type {
            WireType::Varint => {
                decode_varint(&mut bytes).ok()?;
            }
            WireType::SixtyFourBit => bytes = bytes.get(8..)?,
            WireType::ThirtyTwoBit => bytes = bytes.get(4..)?,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut bytes).ok()?).ok()?;
                let value = bytes.get(..len)?;
                if field == STRING_TABLE_FIELD && std::str::from_utf8(value).is_err() {
                    return Some(value);
                }
                bytes = bytes.get(len..)?;
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        }
    }
    None
}

/// `bytes` in lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// Returns the string at `index` in the profile's string table, or `""` when
/// the index is out of range.
pub fn string_at(profile: &Profile, index: i64) -> &str {
    usize::try_from(index)
        .ok()
        .and_then(|index| profile.string_table.get(index))
        .map_or("", String::as_str)
}

/// Builds a profile from stacks of function names: one function and one
/// location per name, one sample per stack. Text formats of `/ingest`,
/// JFR recordings, merged trees exported as pprof, and tools build their
/// profiles with it. With a budget ([`StackProfileBuilder::within`]) every
/// allocation is charged first; once the budget runs out nothing more is
/// added and [`StackProfileBuilder::finish`] returns the error.
#[derive(Debug)]
pub struct StackProfileBuilder {
    profile: Profile,
    strings: std::collections::HashMap<String, i64>,
    /// Location by the string index of its function name.
    locations: std::collections::HashMap<i64, u64>,
    budget: Option<std::sync::Arc<RequestBudget>>,
    /// The first charge the budget refused.
    exceeded: Option<BudgetError>,
}

/// What a builder charges its budget as.
const BUILT: &str = "the profile built from the request";

impl StackProfileBuilder {
    /// A profile whose values are `sample_type` in `sample_unit`.
    pub fn new(sample_type: &str, sample_unit: &str) -> Self {
        Self::with_types(&[(sample_type, sample_unit)])
    }

    /// A profile with one value of each `(type, unit)` per sample.
    pub fn with_types(sample_types: &[(&str, &str)]) -> Self {
        let mut builder = Self {
            profile: Profile {
                string_table: vec![String::new()],
                mapping: vec![Mapping {
                    id: 1,
                    has_functions: true,
                    ..Mapping::default()
                }],
                ..Profile::default()
            },
            strings: std::collections::HashMap::from([(String::new(), 0)]),
            locations: std::collections::HashMap::new(),
            budget: None,
            exceeded: None,
        };
        for (sample_type, sample_unit) in sample_types {
            let sample_type = ValueType {
                r#type: builder.string(sample_type),
                unit: builder.string(sample_unit),
            };
            builder.profile.sample_type.push(sample_type);
        }
        builder
    }

    /// Charges what the builder allocates from now on to `budget`.
    pub fn within(mut self, budget: std::sync::Arc<RequestBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Sets the period: each sample stands for `period` of `period_type`
    /// in `period_unit`.
    pub fn period(mut self, period_type: &str, period_unit: &str, period: i64) -> Self {
        let value_type = ValueType {
            r#type: self.string(period_type),
            unit: self.string(period_unit),
        };
        self.profile.period_type = Some(value_type);
        self.profile.period = period;
        self
    }

    /// Sets when the profile starts and how long it covers.
    pub fn time(mut self, time_nanos: i64, duration_nanos: i64) -> Self {
        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
        self
    }

    /// Adds a sample of `value` for the stack `frames` (root first).
    pub fn add<'a>(&mut self, frames: impl IntoIterator<Item = &'a str>, value: i64) {
        self.add_values(frames, vec![value]);
    }

    /// Adds a sample with a value per sample type for the stack `frames`
    /// (root first).
    pub fn add_values<'a>(&mut self, frames: impl IntoIterator<Item = &'a str>, values: Vec<i64>) {
        // The sample, its values and its (at least 4) location ids.
        let sample_bytes = 2 * size_of::<Sample>() + allocation_size(values.len() * 8) + 32;
        if !self.charge(sample_bytes) {
            return;
        }
        let mut location_id = Vec::new();
        for frame in frames {
            // Twice the id: the vector grows by doubling.
            if !self.charge(16) {
                return;
            }
            match self.location(frame) {
                Some(id) => location_id.push(id),
                None => return,
            }
        }
        location_id.reverse();
        self.profile.sample.push(Sample {
            location_id,
            value: values,
            label: Vec::new(),
        });
    }

    /// The profile; for builders without a budget (see
    /// [`StackProfileBuilder::finish`]).
    pub fn build(self) -> Profile {
        debug_assert!(
            self.exceeded.is_none(),
            "a builder with a budget is finished, not built"
        );
        self.profile
    }

    /// The profile, or the error of the budget it ran out of.
    pub fn finish(self) -> Result<Profile, BudgetError> {
        match self.exceeded {
            Some(err) => Err(err),
            None => Ok(self.profile),
        }
    }

    /// Charges `bytes` about to be allocated; false once the budget ran
    /// out (then nothing may be allocated).
    fn charge(&mut self, bytes: usize) -> bool {
        if self.exceeded.is_some() {
            return false;
        }
        let Some(budget) = &self.budget else {
            return true;
        };
        match budget.charge(bytes, BUILT) {
            Ok(()) => true,
            Err(err) => {
                self.exceeded = Some(err);
                false
            }
        }
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        // The table's copy and the index's, each with their slot.
        if !self.charge(2 * allocation_size(text.len()) + 2 * size_of::<String>() + 32) {
            return 0;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_owned());
        self.strings.insert(text.to_owned(), index);
        index
    }

    fn location(&mut self, name: &str) -> Option<u64> {
        let name_index = self.string(name);
        if let Some(&id) = self.locations.get(&name_index) {
            return Some(id);
        }
        // The function, the location with its one line (a vector of at
        // least 4), the index entry.
        let bytes = 2 * size_of::<Function>() + 2 * size_of::<Location>() + 4 * size_of::<Line>() + 32;
        if !self.charge(bytes) {
            return None;
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.function.push(Function {
            id,
            name: name_index,
            ..Function::default()
        });
        self.profile.location.push(Location {
            id,
            mapping_id: 1,
            line: vec![Line {
                function_id: id,
                ..Line::default()
            }],
            ..Location::default()
        });
        self.locations.insert(name_index, id);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gzip::gzip;

    fn sample_profile() -> Profile {
        Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }],
            string_table: vec!["".into(), "cpu".into(), "nanoseconds".into()],
            sample: vec![Sample {
                location_id: vec![],
                value: vec![5],
                label: vec![],
            }],
            ..Profile::default()
        }
    }

    #[test]
    fn test_decode_plain_and_gzip_give_the_same_profile() {
        let plain = encode(&sample_profile());
        assert_eq!(decode(&plain, 0).unwrap(), sample_profile());
        assert_eq!(decode(&gzip(&plain), 0).unwrap(), sample_profile());
    }

    #[test]
    fn test_decode_limit_applies_after_decompression() {
        let plain = encode(&sample_profile());
        let compressed = gzip(&plain);
        assert!(decode(&compressed, plain.len()).is_ok());
        let err = decode(&compressed, plain.len() - 1).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
        let err = decode(&plain, plain.len() - 1).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn test_decode_names_the_invalid_utf8_string() {
        let mut bytes = encode(&sample_profile());
        // Append a string table entry with an invalid byte.
        bytes.extend_from_slice(&[0x32, 0x02, b'a', 0xff]);
        let err = decode(&bytes, 0).unwrap_err();
        assert_eq!(err.to_string(), "invalid utf8 string hex: 61ff");
    }

    #[test]
    fn test_decode_rejects_garbage() {
        let err = decode(&[0x0a, 0xff, 0xff], 0).unwrap_err();
        assert!(matches!(err, DecodeError::Protobuf { .. }), "{err}");
        let err = decode(&[0x1f, 0x8b, 0x00], 0).unwrap_err();
        assert!(matches!(err, DecodeError::Gzip { .. }), "{err}");
    }

    #[test]
    fn test_stack_profile_builder_shares_functions_and_stores_leaf_first() {
        let mut builder = StackProfileBuilder::new("cpu", "nanoseconds")
            .period("cpu", "nanoseconds", 10)
            .time(5, 7);
        builder.add(["main", "work"], 3);
        builder.add(["main", "idle"], 4);
        let profile = builder.build();
        assert_eq!(profile.function.len(), 3);
        assert_eq!(profile.location.len(), 3);
        assert_eq!(profile.sample[0].location_id, vec![2, 1]);
        assert_eq!(profile.sample[1].value, vec![4]);
        assert_eq!(string_at(&profile, profile.sample_type[0].r#type), "cpu");
        assert_eq!((profile.period, profile.time_nanos, profile.duration_nanos), (10, 5, 7));
        // A valid, decodable pprof.
        assert_eq!(decode_plain(&encode(&profile)).unwrap(), profile);
    }
}
