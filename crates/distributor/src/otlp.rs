//! OTLP profiles, as OpenTelemetry profilers (the eBPF profiler, the
//! collector) export them: gRPC `ProfilesService/Export` and OTLP/HTTP
//! `/v1development/profiles`. Each OTLP profile becomes one pprof profile
//! per service, then takes the push pipeline like any other.
//!
//! As Pyroscope converts them:
//! - the series is labelled with the resource's and the scope's string and
//!   integer attributes (the first of a name wins), `service_name` (the
//!   `service.name` attribute, else `unknown_service`, with
//!   `:<process.executable.name>` when that is known), `__otel__="true"`
//!   and `__delta__="false"`;
//! - a sample's own (non-empty) `service.name` attribute moves it to that
//!   service; its other string attributes become pprof sample labels
//!   (which split it into series, as for any pushed profile);
//! - `__name__` is `process_cpu` for `samples:count` periodic on
//!   `cpu:nanoseconds` (the values become nanoseconds: counts × period),
//!   `off_cpu` for `off_cpu:nanoseconds`, else the period type, else
//!   `process_cpu`;
//! - a sample counts the sum of its values, or one per timestamp when it
//!   has no values; the profile's time defaults to now, its duration to
//!   10 s.
//!
//! Each profile copies what its samples reference out of the request's
//! shared dictionary. What the copies take is charged against the tenant's
//! `ingestion_body_limit_mb`, as the decompressed profiles of a push are:
//! a small request whose samples reference large parts of the dictionary
//! many times is refused whole (413), not expanded without bound.
//!
//! Links to spans are not read.

use std::collections::{HashMap, HashSet};

use flamedb_api::pb::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use flamedb_api::pb::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use flamedb_api::pb::opentelemetry::proto::profiles::v1development as otlp;
use flamedb_model::pprof::{self, Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use flamedb_model::{Labels, METRIC_NAME, OTEL, SERVICE_NAME, UNKNOWN_SERVICE, ValidationError};

use flamedb_model::budget::{BudgetError, RequestBudget};

use crate::batch::{BatchError, PushBatch, Rejection};

/// What the copies take in memory, in bytes (twice the structs: vectors
/// grow by doubling): charged to the request's budget.
mod cost {
    use flamedb_model::pprof::{Function, Label, Line, Location, Mapping, Sample};
    /// A string's slot in the table and in its index.
    pub const STRING: usize = 4 * size_of::<String>();
    pub const LOCATION: usize = 2 * size_of::<Location>();
    pub const LINE: usize = 2 * size_of::<Line>();
    pub const FUNCTION: usize = 2 * size_of::<Function>();
    pub const MAPPING: usize = 2 * size_of::<Mapping>();
    pub const SAMPLE: usize = 2 * size_of::<Sample>();
    pub const LOCATION_REFERENCE: usize = 2 * size_of::<u64>();
    pub const LABEL: usize = 2 * size_of::<Label>();
}
/// Default duration of a profile that states none.
const DEFAULT_DURATION_NANOS: i64 = 10_000_000_000;
const SERVICE_NAME_ATTRIBUTE: &str = "service.name";
const EXECUTABLE_NAME_ATTRIBUTE: &str = "process.executable.name";
/// Mapping attributes holding the binary's build ID, in order of
/// preference.
const BUILD_ID_ATTRIBUTES: [&str; 3] = [
    "process.executable.build_id.gnu",
    "process.executable.build_id.go",
    "process.executable.build_id.htlhash",
];

/// Why an OTLP profile could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ConvertError {
    #[error("its {table} index {index} is outside the dictionary's {len} entries")]
    IndexOutOfRange {
        table: &'static str,
        index: i64,
        len: usize,
    },
    /// The request ran out of memory budget: nothing of it is stored.
    #[error(transparent)]
    OverBudget(BudgetError),
}

/// The request's budget, as the conversion charges it.
struct Budget<'a> {
    request: &'a RequestBudget,
}

impl Budget<'_> {
    fn take(&mut self, bytes: usize) -> Result<(), ConvertError> {
        self.request
            .charge(bytes, "the profiles converted from OTLP")
            .map_err(ConvertError::OverBudget)
    }
}

/// Converts every profile of `request` and adds the results to `batch`; a
/// profile that cannot be converted is a rejection naming it. Fails whole
/// when the converted profiles run out of the request's budget.
pub(crate) fn add_export(batch: &mut PushBatch, request: &ExportProfilesServiceRequest) -> Result<(), BatchError> {
    let no_dictionary = otlp::ProfilesDictionary::default();
    let budget = std::sync::Arc::clone(batch.budget());
    let mut converter = Converter {
        dictionary: request.dictionary.as_ref().unwrap_or(&no_dictionary),
        budget: Budget { request: &budget },
    };
    let max_labels = batch.limits.max_label_names_per_series;
    for (r, resource_profiles) in request.resource_profiles.iter().enumerate() {
        let resource_attributes = resource_profiles
            .resource
            .as_ref()
            .map_or(&[][..], |resource| resource.attributes.as_slice());
        for (s, scope_profiles) in resource_profiles.scope_profiles.iter().enumerate() {
            let scope_attributes = scope_profiles
                .scope
                .as_ref()
                .map_or(&[][..], |scope| scope.attributes.as_slice());
            let series = SeriesLabels::new(resource_attributes.iter().chain(scope_attributes));
            let reject = |batch: &mut PushBatch, p: usize, why: String| {
                batch.reject(Rejection {
                    reason: "malformed_profile",
                    code: flamedb_api::ErrorCode::InvalidArgument,
                    message: format!(
                        "OTLP profile {p} of scope {s} of resource {r} ({}) cannot be converted: {why}",
                        series.service
                    ),
                    bytes: 0,
                });
            };
            if max_labels > 0 && series.attributes.len() > max_labels {
                // Every series would have more labels than allowed.
                for p in 0..scope_profiles.profiles.len() {
                    let why = format!(
                        "its resource and scope have {} attributes, more than max_label_names_per_series ({max_labels})",
                        series.attributes.len()
                    );
                    reject(batch, p, why);
                }
                continue;
            }
            for (p, profile) in scope_profiles.profiles.iter().enumerate() {
                match converter.convert(profile, &series) {
                    Ok(profiles) => {
                        for (labels, profile) in profiles {
                            add_converted(batch, labels, profile)?;
                        }
                    }
                    Err(ConvertError::OverBudget(err)) => return Err(err.into()),
                    Err(err) => reject(batch, p, err.to_string()),
                }
            }
        }
    }
    Ok(())
}

/// Adds a converted profile within the tenant's profile size limit (its
/// size as pprof).
fn add_converted(batch: &mut PushBatch, labels: Labels, profile: Profile) -> Result<(), BatchError> {
    let bytes = prost::Message::encoded_len(&profile);
    let limit = batch.limits.max_profile_size_bytes;
    if limit > 0 && bytes > limit {
        batch.reject(Rejection::invalid(
            &ValidationError::from_decode(&labels, pprof::DecodeError::TooLarge { limit }),
            bytes,
        ));
        return Ok(());
    }
    batch.add(labels, profile, bytes)
}

/// The series labels of a resource and scope, and their service.
struct SeriesLabels {
    /// Attribute labels, the first of each name.
    attributes: Vec<(String, String)>,
    service: String,
}

impl SeriesLabels {
    fn new<'a>(attributes: impl Iterator<Item = &'a KeyValue>) -> Self {
        let mut labels: Vec<(String, String)> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for attribute in attributes {
            let Some(value) = attribute.value.as_ref().and_then(label_value) else {
                continue;
            };
            if !attribute.key.is_empty() && seen.insert(attribute.key.as_str()) {
                labels.push((attribute.key.clone(), value));
            }
        }
        let find = |name: &str| {
            labels
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let service = match (find(SERVICE_NAME_ATTRIBUTE), find(EXECUTABLE_NAME_ATTRIBUTE)) {
            (Some(service), _) if !service.is_empty() => service.to_owned(),
            (_, Some(executable)) if !executable.is_empty() => format!("{UNKNOWN_SERVICE}:{executable}"),
            _ => UNKNOWN_SERVICE.to_owned(),
        };
        Self {
            attributes: labels,
            service,
        }
    }

    /// The labels of the series of `service`, charged to `budget`.
    fn labels(&self, metric: &str, service: &str, budget: &mut Budget<'_>) -> Result<Labels, ConvertError> {
        let bytes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| name.len() + value.len() + cost::LABEL)
            .sum();
        budget.take(bytes + service.len() + 4 * cost::LABEL)?;
        let mut labels = Labels::from_pairs(
            self.attributes
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        labels.set(METRIC_NAME, metric);
        labels.set(SERVICE_NAME, service);
        labels.set(OTEL, "true");
        labels.set(flamedb_model::DELTA, "false");
        Ok(labels)
    }
}

/// A string or integer attribute as a label value.
fn label_value(value: &AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        any_value::Value::StringValue(value) => Some(value.clone()),
        any_value::Value::IntValue(value) => Some(value.to_string()),
        _ => None,
    }
}

/// What an OTLP profile's sample type becomes.
struct Kind<'a> {
    metric: &'a str,
    sample_type: (&'a str, &'a str),
    period_type: (&'a str, &'a str),
    /// The profile's period.
    period: i64,
    /// What each counted value is multiplied by.
    multiplier: i64,
}

impl<'a> Kind<'a> {
    fn of(sample_type: (&'a str, &'a str), period_type: (&'a str, &'a str), period: i64) -> Self {
        if sample_type == ("samples", "count") && period_type == ("cpu", "nanoseconds") {
            return Self {
                metric: "process_cpu",
                sample_type: period_type,
                period_type,
                period,
                multiplier: period.max(1),
            };
        }
        let metric = if sample_type == ("off_cpu", "nanoseconds") && period_type == ("", "") {
            "off_cpu"
        } else if period_type.0.is_empty() {
            "process_cpu"
        } else {
            period_type.0
        };
        Self {
            metric,
            sample_type,
            period_type,
            period,
            multiplier: 1,
        }
    }
}

struct Converter<'a> {
    dictionary: &'a otlp::ProfilesDictionary,
    budget: Budget<'a>,
}

impl<'a> Converter<'a> {
    fn string(&self, index: i32) -> Result<&'a str, ConvertError> {
        entry(&self.dictionary.string_table, "string", index).map(String::as_str)
    }

    /// One pprof profile per service the samples of `profile` belong to.
    fn convert(
        &mut self,
        profile: &otlp::Profile,
        series: &SeriesLabels,
    ) -> Result<Vec<(Labels, Profile)>, ConvertError> {
        let value_type = |value_type: Option<&otlp::ValueType>| -> Result<(&'a str, &'a str), ConvertError> {
            let value_type = value_type.cloned().unwrap_or_default();
            Ok((
                self.string(value_type.type_strindex)?,
                self.string(value_type.unit_strindex)?,
            ))
        };
        let kind = Kind::of(
            value_type(profile.sample_type.as_ref())?,
            value_type(profile.period_type.as_ref())?,
            profile.period,
        );
        let time_nanos = match i64::try_from(profile.time_unix_nano) {
            Ok(0) | Err(_) => flamedb_model::now_nanos(),
            Ok(time) => time,
        };
        let duration_nanos = match i64::try_from(profile.duration_nano) {
            Ok(0) | Err(_) => DEFAULT_DURATION_NANOS,
            Ok(duration) => duration,
        };
        // Builders in the order their services first appear.
        let mut builders: Vec<(&str, PprofBuilder<'a>)> = Vec::new();
        let mut by_service: HashMap<&str, usize> = HashMap::new();
        for sample in &profile.samples {
            let mut service = series.service.as_str();
            let mut labels = Vec::new();
            for &index in &sample.attribute_indices {
                let attribute = entry(&self.dictionary.attribute_table, "attribute", index)?;
                let key = self.string(attribute.key_strindex)?;
                let Some(any_value::Value::StringValue(value)) =
                    attribute.value.as_ref().and_then(|value| value.value.as_ref())
                else {
                    continue;
                };
                if key == SERVICE_NAME_ATTRIBUTE {
                    if !value.is_empty() {
                        service = value.as_str();
                    }
                } else if !key.is_empty() {
                    labels.push((key, value.as_str()));
                }
            }
            let stack = entry(&self.dictionary.stack_table, "stack", sample.stack_index)?;
            let position = match by_service.get(service) {
                Some(&position) => position,
                None => {
                    let builder =
                        PprofBuilder::new(self.dictionary, &kind, time_nanos, duration_nanos, &mut self.budget)?;
                    builders.push((service, builder));
                    by_service.insert(service, builders.len() - 1);
                    builders.len() - 1
                }
            };
            let count = if sample.values.is_empty() {
                i64::try_from(sample.timestamps_unix_nano.len()).unwrap_or(i64::MAX)
            } else {
                sample.values.iter().fold(0i64, |sum, &value| sum.saturating_add(value))
            };
            builders[position]
                .1
                .add_sample(stack, count.saturating_mul(kind.multiplier), &labels, &mut self.budget)?;
        }
        builders
            .into_iter()
            .map(|(service, builder)| Ok((series.labels(kind.metric, service, &mut self.budget)?, builder.profile)))
            .collect()
    }
}

/// The entry at `index` of a dictionary table.
fn entry<'t, T>(table: &'t [T], name: &'static str, index: i32) -> Result<&'t T, ConvertError> {
    usize::try_from(index)
        .ok()
        .and_then(|position| table.get(position))
        .ok_or(ConvertError::IndexOutOfRange {
            table: name,
            index: i64::from(index),
            len: table.len(),
        })
}

/// Builds one pprof profile from samples of the dictionary, copying the
/// strings, functions, locations and mappings they reference once each,
/// and charging what it copies to the budget.
struct PprofBuilder<'a> {
    dictionary: &'a otlp::ProfilesDictionary,
    profile: Profile,
    strings: HashMap<&'a str, i64>,
    /// Dictionary index → pprof ID.
    locations: HashMap<i32, u64>,
    functions: HashMap<i32, u64>,
    mappings: HashMap<i32, u64>,
}

impl<'a> PprofBuilder<'a> {
    fn new(
        dictionary: &'a otlp::ProfilesDictionary,
        kind: &Kind<'a>,
        time_nanos: i64,
        duration_nanos: i64,
        budget: &mut Budget<'_>,
    ) -> Result<Self, ConvertError> {
        let mut builder = Self {
            dictionary,
            profile: Profile {
                string_table: vec![String::new()],
                time_nanos,
                duration_nanos,
                ..Profile::default()
            },
            strings: HashMap::from([("", 0)]),
            locations: HashMap::new(),
            functions: HashMap::new(),
            mappings: HashMap::new(),
        };
        builder.profile.sample_type = vec![builder.value_type(kind.sample_type, budget)?];
        if kind.period_type != ("", "") {
            builder.profile.period_type = Some(builder.value_type(kind.period_type, budget)?);
            builder.profile.period = kind.period;
        }
        Ok(builder)
    }

    fn value_type(
        &mut self,
        (r#type, unit): (&'a str, &'a str),
        budget: &mut Budget<'_>,
    ) -> Result<ValueType, ConvertError> {
        Ok(ValueType {
            r#type: self.string(r#type, budget)?,
            unit: self.string(unit, budget)?,
        })
    }

    fn string(&mut self, value: &'a str, budget: &mut Budget<'_>) -> Result<i64, ConvertError> {
        if let Some(&index) = self.strings.get(value) {
            return Ok(index);
        }
        budget.take(value.len() + cost::STRING)?;
        let index = i64::try_from(self.profile.string_table.len()).unwrap_or(i64::MAX);
        self.profile.string_table.push(value.to_owned());
        self.strings.insert(value, index);
        Ok(index)
    }

    fn dictionary_string(&mut self, index: i32, budget: &mut Budget<'_>) -> Result<i64, ConvertError> {
        let value = entry(&self.dictionary.string_table, "string", index)?;
        self.string(value, budget)
    }

    fn add_sample(
        &mut self,
        stack: &otlp::Stack,
        value: i64,
        labels: &[(&'a str, &'a str)],
        budget: &mut Budget<'_>,
    ) -> Result<(), ConvertError> {
        budget.take(
            cost::SAMPLE + stack.location_indices.len() * cost::LOCATION_REFERENCE + labels.len() * cost::LABEL,
        )?;
        let location_id = stack
            .location_indices
            .iter()
            .map(|&index| self.location(index, budget))
            .collect::<Result<Vec<u64>, ConvertError>>()?;
        let label = labels
            .iter()
            .map(|&(key, value)| {
                Ok(Label {
                    key: self.string(key, budget)?,
                    str: self.string(value, budget)?,
                    ..Label::default()
                })
            })
            .collect::<Result<Vec<Label>, ConvertError>>()?;
        self.profile.sample.push(Sample {
            location_id,
            value: vec![value],
            label,
        });
        Ok(())
    }

    fn location(&mut self, index: i32, budget: &mut Budget<'_>) -> Result<u64, ConvertError> {
        if let Some(&id) = self.locations.get(&index) {
            return Ok(id);
        }
        let location = entry(&self.dictionary.location_table, "location", index)?;
        budget.take(cost::LOCATION + location.lines.len() * cost::LINE)?;
        let mapping_id = match location.mapping_index {
            0 => 0,
            index => self.mapping(index, budget)?,
        };
        let line = location
            .lines
            .iter()
            .map(|line| {
                Ok(Line {
                    function_id: self.function(line.function_index, budget)?,
                    line: line.line,
                    column: line.column,
                })
            })
            .collect::<Result<Vec<Line>, ConvertError>>()?;
        let id = next_id(self.profile.location.len());
        self.profile.location.push(Location {
            id,
            mapping_id,
            address: location.address,
            line,
            is_folded: false,
        });
        self.locations.insert(index, id);
        Ok(id)
    }

    fn function(&mut self, index: i32, budget: &mut Budget<'_>) -> Result<u64, ConvertError> {
        if let Some(&id) = self.functions.get(&index) {
            return Ok(id);
        }
        let function = entry(&self.dictionary.function_table, "function", index)?;
        budget.take(cost::FUNCTION)?;
        let id = next_id(self.profile.function.len());
        let converted = Function {
            id,
            name: self.dictionary_string(function.name_strindex, budget)?,
            system_name: self.dictionary_string(function.system_name_strindex, budget)?,
            filename: self.dictionary_string(function.filename_strindex, budget)?,
            start_line: function.start_line,
        };
        self.profile.function.push(converted);
        self.functions.insert(index, id);
        Ok(id)
    }

    fn mapping(&mut self, index: i32, budget: &mut Budget<'_>) -> Result<u64, ConvertError> {
        if let Some(&id) = self.mappings.get(&index) {
            return Ok(id);
        }
        let mapping = entry(&self.dictionary.mapping_table, "mapping", index)?;
        // Its attributes are read again for every profile that uses it.
        budget.take(cost::MAPPING + mapping.attribute_indices.len() * cost::LOCATION_REFERENCE)?;
        // The most preferred build ID attribute: (rank, value).
        let mut build_id: Option<(usize, &'a str)> = None;
        for &attribute_index in &mapping.attribute_indices {
            let attribute = entry(&self.dictionary.attribute_table, "attribute", attribute_index)?;
            let key = entry(&self.dictionary.string_table, "string", attribute.key_strindex)?;
            let Some(rank) = BUILD_ID_ATTRIBUTES.iter().position(|name| name == key) else {
                continue;
            };
            if let Some(any_value::Value::StringValue(value)) =
                attribute.value.as_ref().and_then(|value| value.value.as_ref())
                && build_id.is_none_or(|(best, _)| rank < best)
            {
                build_id = Some((rank, value.as_str()));
            }
        }
        let id = next_id(self.profile.mapping.len());
        let converted = Mapping {
            id,
            memory_start: mapping.memory_start,
            memory_limit: mapping.memory_limit,
            file_offset: mapping.file_offset,
            filename: self.dictionary_string(mapping.filename_strindex, budget)?,
            build_id: self.string(build_id.map_or("", |(_, value)| value), budget)?,
            ..Mapping::default()
        };
        self.profile.mapping.push(converted);
        self.mappings.insert(index, id);
        Ok(id)
    }
}

/// pprof IDs start at 1.
fn next_id(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flamedb_api::pb::opentelemetry::proto::common::v1::InstrumentationScope;
    use flamedb_api::pb::opentelemetry::proto::resource::v1::Resource;
    use flamedb_model::Limits;
    use proptest::prelude::*;

    use super::*;

    fn attribute(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
        }
    }

    fn text(value: &str) -> any_value::Value {
        any_value::Value::StringValue(value.to_owned())
    }

    /// Strings: 0 "", 1 "samples", 2 "count", 3 "cpu", 4 "nanoseconds",
    /// 5 "main", 6 "work", 7 "thread.name", 8 "t1", 9 "service.name",
    /// 10 "other", 11 "off_cpu", 12 "app", 13 "build", 14 "space",
    /// 15 "bytes", 16 "alloc".
    /// Functions 1 main, 2 work; locations 1 → main, 2 → work (in mapping
    /// 1); stacks 1 [main], 2 [work, main]; attributes 1 thread.name=t1,
    /// 2 service.name=other, 3 the mapping's GNU build ID.
    fn dictionary() -> otlp::ProfilesDictionary {
        let strings = [
            "",
            "samples",
            "count",
            "cpu",
            "nanoseconds",
            "main",
            "work",
            "thread.name",
            "t1",
            "service.name",
            "other",
            "off_cpu",
            "app",
            "process.executable.build_id.gnu",
            "space",
            "bytes",
            "alloc",
        ];
        let line = |function_index| otlp::Line {
            function_index,
            line: 7,
            column: 0,
        };
        otlp::ProfilesDictionary {
            mapping_table: vec![
                otlp::Mapping::default(),
                otlp::Mapping {
                    memory_start: 0x1000,
                    memory_limit: 0x2000,
                    filename_strindex: 12,
                    attribute_indices: vec![3],
                    ..otlp::Mapping::default()
                },
            ],
            location_table: vec![
                otlp::Location::default(),
                otlp::Location {
                    mapping_index: 1,
                    address: 0x1010,
                    lines: vec![line(1)],
                    attribute_indices: vec![],
                },
                otlp::Location {
                    mapping_index: 1,
                    address: 0x1020,
                    lines: vec![line(2)],
                    attribute_indices: vec![],
                },
            ],
            function_table: vec![
                otlp::Function::default(),
                otlp::Function {
                    name_strindex: 5,
                    ..otlp::Function::default()
                },
                otlp::Function {
                    name_strindex: 6,
                    ..otlp::Function::default()
                },
            ],
            link_table: vec![otlp::Link::default()],
            string_table: strings.map(String::from).to_vec(),
            attribute_table: vec![
                otlp::KeyValueAndUnit::default(),
                otlp::KeyValueAndUnit {
                    key_strindex: 7,
                    value: Some(AnyValue {
                        value: Some(text("t1")),
                    }),
                    unit_strindex: 0,
                },
                otlp::KeyValueAndUnit {
                    key_strindex: 9,
                    value: Some(AnyValue {
                        value: Some(text("other")),
                    }),
                    unit_strindex: 0,
                },
                otlp::KeyValueAndUnit {
                    key_strindex: 13,
                    value: Some(AnyValue {
                        value: Some(text("abc123")),
                    }),
                    unit_strindex: 0,
                },
            ],
            stack_table: vec![
                otlp::Stack::default(),
                otlp::Stack {
                    location_indices: vec![1],
                },
                otlp::Stack {
                    location_indices: vec![2, 1],
                },
            ],
        }
    }

    fn value_type(type_strindex: i32, unit_strindex: i32) -> Option<otlp::ValueType> {
        Some(otlp::ValueType {
            type_strindex,
            unit_strindex,
        })
    }

    fn sample(stack_index: i32, values: Vec<i64>, timestamps: usize, attribute_indices: Vec<i32>) -> otlp::Sample {
        otlp::Sample {
            stack_index,
            attribute_indices,
            link_index: 0,
            values,
            timestamps_unix_nano: vec![1; timestamps],
        }
    }

    /// A CPU profile (counts periodic on CPU nanoseconds, every 10 ms).
    fn cpu_profile(samples: Vec<otlp::Sample>) -> otlp::Profile {
        otlp::Profile {
            sample_type: value_type(1, 2),
            samples,
            time_unix_nano: 1_700_000_000_000_000_000,
            duration_nano: 0,
            period_type: value_type(3, 4),
            period: 10_000_000,
        }
    }

    fn request(resource: Vec<KeyValue>, profiles: Vec<otlp::Profile>) -> ExportProfilesServiceRequest {
        ExportProfilesServiceRequest {
            resource_profiles: vec![otlp::ResourceProfiles {
                resource: Some(Resource { attributes: resource }),
                scope_profiles: vec![otlp::ScopeProfiles {
                    scope: Some(InstrumentationScope {
                        name: "profiler".to_owned(),
                        version: String::new(),
                        attributes: vec![attribute("host.name", text("scope-host"))],
                    }),
                    profiles,
                }],
            }],
            dictionary: Some(dictionary()),
        }
    }

    fn convert(request: &ExportProfilesServiceRequest) -> PushBatch {
        let mut batch = PushBatch::new(Arc::new(Limits::default()), Arc::new(RequestBudget::unlimited()));
        add_export(&mut batch, request).unwrap();
        batch
    }

    /// Limits with a body limit of `bytes`.
    /// A batch whose request may take `bytes`.
    fn batch_within(bytes: usize) -> PushBatch {
        PushBatch::new(
            Arc::new(Limits::default()),
            Arc::new(RequestBudget::standalone(bytes, "-distributor.max-request-memory")),
        )
    }

    fn names(profile: &Profile, sample: &Sample) -> Vec<String> {
        sample
            .location_id
            .iter()
            .map(|&id| {
                let location = &profile.location[usize::try_from(id - 1).unwrap()];
                let function = &profile.function[usize::try_from(location.line[0].function_id - 1).unwrap()];
                pprof::string_at(profile, function.name).to_owned()
            })
            .collect()
    }

    #[test]
    fn test_cpu_counts_become_nanoseconds_under_the_resource_labels() {
        let request = request(
            vec![
                attribute("process.pid", any_value::Value::IntValue(42)),
                attribute("process.executable.name", text("nginx")),
                attribute("host.name", text("resource-host")),
                attribute("ratio", any_value::Value::DoubleValue(0.5)),
            ],
            vec![cpu_profile(vec![
                sample(2, vec![], 3, vec![1]),
                sample(1, vec![2, 5], 2, vec![]),
            ])],
        );
        let batch = convert(&request);
        assert!(batch.rejections.is_empty(), "{:?}", batch.rejections);
        let [received] = batch.profiles.as_slice() else {
            panic!("{:?}", batch.profiles);
        };
        let labels: Vec<(&str, &str)> = received
            .labels
            .iter()
            .map(|label| (label.name.as_str(), label.value.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("__delta__", "false"),
                ("__name__", "process_cpu"),
                ("__otel__", "true"),
                // The resource's wins over the scope's.
                ("host.name", "resource-host"),
                ("process.executable.name", "nginx"),
                ("process.pid", "42"),
                ("service_name", "unknown_service:nginx"),
            ]
        );
        let profile = &received.profile;
        assert_eq!(pprof::string_at(profile, profile.sample_type[0].r#type), "cpu");
        assert_eq!(pprof::string_at(profile, profile.sample_type[0].unit), "nanoseconds");
        assert_eq!(profile.period, 10_000_000);
        assert_eq!(profile.time_nanos, 1_700_000_000_000_000_000);
        assert_eq!(profile.duration_nanos, DEFAULT_DURATION_NANOS);
        // Three timestamps without values count 3; values 2 + 5 count 7.
        let samples: Vec<(Vec<String>, i64)> = profile
            .sample
            .iter()
            .map(|sample| (names(profile, sample), sample.value[0]))
            .collect();
        assert_eq!(
            samples,
            [
                (vec!["work".to_owned(), "main".to_owned()], 30_000_000),
                (vec!["main".to_owned()], 70_000_000),
            ]
        );
        // Thread names stay sample labels.
        let label = &profile.sample[0].label[0];
        assert_eq!(
            (
                pprof::string_at(profile, label.key),
                pprof::string_at(profile, label.str)
            ),
            ("thread.name", "t1")
        );
        assert!(profile.sample[1].label.is_empty());
        // One location per dictionary location, with its mapping.
        assert_eq!(profile.location.len(), 2);
        assert_eq!(profile.mapping.len(), 1);
        assert_eq!(pprof::string_at(profile, profile.mapping[0].filename), "app");
        assert_eq!(pprof::string_at(profile, profile.mapping[0].build_id), "abc123");
        assert_eq!(profile.location[0].address, 0x1020);
    }

    #[test]
    fn test_a_sample_service_name_moves_the_sample_to_that_service() {
        let request = request(
            vec![attribute("service.name", text("api"))],
            vec![cpu_profile(vec![
                sample(1, vec![1], 0, vec![]),
                sample(2, vec![1], 0, vec![2]),
            ])],
        );
        let batch = convert(&request);
        let services: Vec<(&str, usize)> = batch
            .profiles
            .iter()
            .map(|received| {
                (
                    received.labels.get("service_name").unwrap(),
                    received.profile.sample.len(),
                )
            })
            .collect();
        assert_eq!(services, [("api", 1), ("other", 1)]);
    }

    #[test]
    fn test_metric_names_follow_the_sample_and_period_types() {
        let of = |sample_type, period_type| Kind::of(sample_type, period_type, 0).metric;
        assert_eq!(of(("samples", "count"), ("cpu", "nanoseconds")), "process_cpu");
        assert_eq!(of(("off_cpu", "nanoseconds"), ("", "")), "off_cpu");
        assert_eq!(of(("alloc", "bytes"), ("space", "bytes")), "space");
        assert_eq!(of(("samples", "count"), ("", "")), "process_cpu");
        // Counts periodic on anything else stay counts.
        let kind = Kind::of(("samples", "count"), ("wall", "nanoseconds"), 5);
        assert_eq!(
            (kind.metric, kind.sample_type, kind.multiplier),
            ("wall", ("samples", "count"), 1)
        );

        let off_cpu = otlp::Profile {
            sample_type: value_type(11, 4),
            period_type: None,
            ..cpu_profile(vec![sample(1, vec![5, 6], 2, vec![])])
        };
        let batch = convert(&request(vec![], vec![off_cpu]));
        let received = &batch.profiles[0];
        assert_eq!(received.labels.get("__name__"), Some("off_cpu"));
        assert_eq!(received.labels.get("service_name"), Some("unknown_service"));
        assert_eq!(received.profile.sample[0].value, [11]);
        assert_eq!(received.profile.period_type, None);
    }

    #[test]
    fn test_a_bad_index_refuses_its_profile_and_keeps_the_others() {
        let bad_stack = cpu_profile(vec![sample(9, vec![1], 0, vec![])]);
        let bad_attribute = cpu_profile(vec![sample(1, vec![1], 0, vec![-1])]);
        let good = cpu_profile(vec![sample(1, vec![1], 0, vec![])]);
        let mut request = request(vec![], vec![bad_stack, good, bad_attribute]);
        let batch = convert(&request);
        assert_eq!(batch.profiles.len(), 1);
        let messages: Vec<&str> = batch.rejections.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages.len(), 2);
        assert!(
            messages[0].contains("OTLP profile 0 of scope 0 of resource 0"),
            "{}",
            messages[0]
        );
        assert!(messages[0].contains("stack index 9 is outside"), "{}", messages[0]);
        assert!(messages[1].contains("attribute index -1"), "{}", messages[1]);

        // A location pointing past the function table.
        let dictionary = request.dictionary.as_mut().unwrap();
        dictionary.location_table[1].lines[0].function_index = 99;
        let batch = convert(&request);
        assert!(batch.rejections[1].message.contains("function index 99"));
    }

    #[test]
    fn test_what_the_copies_take_is_bounded_by_the_request_budget() {
        // One stack of 1000 frames, referenced by 100 samples: 800 kB of
        // location references from a request of a few kB.
        let mut dictionary = dictionary();
        dictionary.stack_table[1].location_indices = vec![1; 1000];
        let samples = (0..100).map(|_| sample(1, vec![1], 0, vec![])).collect();
        let mut request = request(vec![], vec![cpu_profile(samples)]);
        request.dictionary = Some(dictionary);
        let mut batch = batch_within(100_000);
        let err = add_export(&mut batch, &request).unwrap_err();
        assert!(
            matches!(
                err,
                BatchError::Budget(BudgetError::RequestTooLarge { limit: 100_000, .. })
            ),
            "{err}"
        );
        let mut batch = batch_within(2_000_000);
        add_export(&mut batch, &request).unwrap();
        assert_eq!(batch.profiles[0].profile.sample.len(), 100);
    }

    #[test]
    fn test_resources_with_more_attributes_than_labels_allowed_are_refused() {
        let attributes = (0..40)
            .map(|i| attribute(&format!("attribute.{i}"), text("x")))
            .collect();
        let request = request(attributes, vec![cpu_profile(vec![sample(1, vec![1], 0, vec![])])]);
        let batch = convert(&request);
        assert!(batch.profiles.is_empty());
        assert!(
            batch.rejections[0]
                .message
                .contains("more than max_label_names_per_series"),
            "{:?}",
            batch.rejections
        );
    }

    #[test]
    fn test_an_empty_sample_service_name_keeps_the_resource_service() {
        let mut request = request(
            vec![attribute("service.name", text("api"))],
            vec![cpu_profile(vec![sample(1, vec![1], 0, vec![2])])],
        );
        let dictionary = request.dictionary.as_mut().unwrap();
        dictionary.attribute_table[2].value = Some(AnyValue { value: Some(text("")) });
        let batch = convert(&request);
        assert_eq!(batch.profiles[0].labels.get("service_name"), Some("api"));
    }

    /// The field numbers, from hand-written wire bytes: what the eBPF
    /// profiler sends.
    #[test]
    fn test_field_numbers_are_opentelemetrys() {
        use prost::Message;
        // Sample: stack_index 1 = 3, attribute_indices 2 = [4, 5],
        // link_index 3 = 6, values 4 = [7], timestamps 5 = [9] (fixed64).
        let sample = [
            0x08, 3, 0x12, 2, 4, 5, 0x18, 6, 0x22, 1, 7, 0x2a, 8, 9, 0, 0, 0, 0, 0, 0, 0,
        ];
        // Profile: sample_type 1 = {1, 2}, samples 2, time 3 (fixed64) = 1,
        // duration 4 = 10, period_type 5 = {3, 4}, period 6 = 50.
        let mut profile = vec![0x0a, 4, 0x08, 1, 0x10, 2, 0x12, sample.len() as u8];
        profile.extend_from_slice(&sample);
        profile.extend_from_slice(&[
            0x19, 1, 0, 0, 0, 0, 0, 0, 0, 0x20, 10, 0x2a, 4, 0x08, 3, 0x10, 4, 0x30, 50,
        ]);
        let decoded = otlp::Profile::decode(profile.as_slice()).unwrap();
        assert_eq!(decoded.sample_type, value_type(1, 2));
        assert_eq!(decoded.period_type, value_type(3, 4));
        assert_eq!(
            (decoded.time_unix_nano, decoded.duration_nano, decoded.period),
            (1, 10, 50)
        );
        let decoded = &decoded.samples[0];
        assert_eq!(decoded.stack_index, 3);
        assert_eq!(decoded.attribute_indices, [4, 5]);
        assert_eq!(decoded.link_index, 6);
        assert_eq!(decoded.values, [7]);
        assert_eq!(decoded.timestamps_unix_nano, [9]);
        // Dictionary: stack_table 7 = [{location_indices 1 = [1, 2]}],
        // string_table 5 = ["", "a"].
        let dictionary = [0x2a, 0, 0x2a, 1, b'a', 0x3a, 4, 0x0a, 2, 1, 2];
        let decoded = otlp::ProfilesDictionary::decode(dictionary.as_slice()).unwrap();
        assert_eq!(decoded.string_table, ["", "a"]);
        assert_eq!(decoded.stack_table[0].location_indices, [1, 2]);
    }

    fn any_sample() -> impl Strategy<Value = otlp::Sample> {
        (
            -1i32..6,
            proptest::collection::vec(-1i32..6, 0..3),
            proptest::collection::vec(any::<i64>(), 0..3),
            0usize..3,
        )
            .prop_map(|(stack, attributes, values, timestamps)| sample(stack, values, timestamps, attributes))
    }

    proptest! {
        /// Whatever the indexes and values, each profile converts or is
        /// refused (or the request is, over the body limit), and the
        /// location references stay within the limit.
        #[test]
        fn prop_any_profile_converts_or_is_refused(
            profiles in proptest::collection::vec(
                (proptest::collection::vec(any_sample(), 0..8), -1i32..20, -1i32..20, any::<i64>()),
                0..4,
            ),
            limit in 0usize..4096,
        ) {
            let profiles: Vec<otlp::Profile> = profiles
                .into_iter()
                .map(|(samples, sample_type, period_type, period)| otlp::Profile {
                    sample_type: value_type(sample_type, 2),
                    period_type: value_type(period_type, 4),
                    period,
                    ..cpu_profile(samples)
                })
                .collect();
            let count = profiles.len();
            let request = request(vec![], profiles);
            let mut batch = batch_within(limit.max(1));
            if add_export(&mut batch, &request).is_err() {
                return Ok(());
            }
            let references: usize = batch
                .profiles
                .iter()
                .flat_map(|received| &received.profile.sample)
                .map(|sample| sample.location_id.len())
                .sum();
            prop_assert!(references * cost::LOCATION_REFERENCE <= limit);
            prop_assert!(batch.rejections.len() <= count);
        }
    }
}
