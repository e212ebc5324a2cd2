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
//!   service; its other string and integer attributes become pprof sample
//!   labels (which split it into series, as for any pushed profile), and
//!   its link its `span_id` and `trace_id` (kept on the samples);
//! - `__name__` is `process_cpu` for `samples:count` periodic on
//!   `cpu:nanoseconds` (the values become nanoseconds: counts × period),
//!   `off_cpu` for `off_cpu:nanoseconds`, else the period type, else
//!   `process_cpu`;
//! - a sample counts the sum of its values, or one per timestamp when it
//!   has no values (one with neither is refused); the profile's time
//!   defaults to now, its duration to 10 s.
//!
//! Each profile copies what its samples reference out of the request's
//! shared dictionary. What the copies take is charged against the tenant's
//! `ingestion_body_limit_mb`, as the decompressed profiles of a push are:
//! a small request whose samples reference large parts of the dictionary
//! many times is refused whole (413), not expanded without bound.
//!
//! Attributes are read as ADR 018 says, in `attributes`: keys and values
//! inline or by string-table reference; strings, integers and
//! one-element arrays of them. Only the layout of opentelemetry-proto
//! v1.10 and v1.11 is read: the development-version header must be absent
//! or `1`, and a request in the v1.9 layout is refused naming the senders
//! that work.

mod attributes;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use axum::http::HeaderMap;
use flamedb_api::RpcError;
use flamedb_api::pb::opentelemetry::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
use flamedb_api::pb::opentelemetry::proto::common::v1::KeyValue;
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

/// The header (over HTTP) and metadata key (over gRPC) naming the OTLP
/// profiles layout a sender writes (opentelemetry-proto #857).
pub(crate) const VERSION_HEADER: &str = "otlp-profiles-development-version";
/// The one layout read: opentelemetry-proto v1.10 and v1.11.
const SUPPORTED_VERSION: &str = "1";
/// Who sends the layout read.
const SENDERS: &str = "the layout of opentelemetry-proto v1.10 and v1.11, which the OpenTelemetry eBPF profiler sends since March 2026 and the Collector since v0.148";

/// Refuses, before its body is read, a request that names a layout other
/// than the one read.
pub(crate) fn check_version(headers: &HeaderMap) -> Result<(), RpcError> {
    match headers.get(VERSION_HEADER) {
        None => Ok(()),
        Some(version) if version.as_bytes().trim_ascii() == SUPPORTED_VERSION.as_bytes() => Ok(()),
        Some(version) => Err(RpcError::invalid_argument(format!(
            "OTLP profiles development version {:?} is not supported: only {SUPPORTED_VERSION} ({SENDERS})",
            String::from_utf8_lossy(version.as_bytes())
        ))),
    }
}

/// Why a request could not be decoded, when the error shows the v1.9
/// layout: its packed `attribute_indices` (field 3) land where v1.10 has
/// `Sample.link_index`, a single number.
pub(crate) fn explain_decode_error(message: &str) -> Option<String> {
    message.contains("Sample.link_index").then(|| {
        format!("{message}: this looks like the OTLP profiles layout of opentelemetry-proto v1.9 or older; flamedb reads {SENDERS}")
    })
}

/// What a sample's attribute indices are in the v1.9 layout, when
/// `with_attributes`.
fn v1_9_values_hint(with_attributes: &bool) -> String {
    if *with_attributes {
        format!(
            " (in the layout of opentelemetry-proto v1.9 or older, sample values are written where v1.10 has attribute indices; flamedb reads {SENDERS})"
        )
    } else {
        String::new()
    }
}

/// Why an OTLP profile could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ConvertError {
    #[error("its {table} index {index} is outside the dictionary's {len} entries")]
    IndexOutOfRange {
        table: &'static str,
        index: i64,
        len: usize,
    },
    /// A sample's attribute index past the table: in the v1.9 layout the
    /// sample's values are where v1.10 has its attribute indices.
    #[error("its sample attribute index {index} is outside the dictionary's {len} entries{}", v1_9_values_hint(&true))]
    SampleAttributeOutOfRange { index: i64, len: usize },
    /// A sample with nothing to count; one with attributes is v1.9's
    /// values read as attribute indices.
    #[error("sample {sample} has neither values nor timestamps{}", v1_9_values_hint(.with_attributes))]
    NothingToCount { sample: usize, with_attributes: bool },
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
            let reject = |batch: &mut PushBatch, p: usize, service: &str, why: String| {
                batch.reject(Rejection {
                    reason: "malformed_profile",
                    code: flamedb_api::ErrorCode::InvalidArgument,
                    message: format!(
                        "OTLP profile {p} of scope {s} of resource {r} ({service}) cannot be converted: {why}"
                    ),
                    bytes: 0,
                });
            };
            let attributes = resource_attributes.iter().chain(scope_attributes);
            let series = match SeriesLabels::new(attributes, max_labels, &mut converter) {
                Ok(series) => series,
                Err(ConvertError::OverBudget(err)) => return Err(err.into()),
                Err(err) => {
                    for p in 0..scope_profiles.profiles.len() {
                        reject(
                            batch,
                            p,
                            "its service unknown",
                            format!("an attribute of its resource or scope: {err}"),
                        );
                    }
                    continue;
                }
            };
            if max_labels > 0 && series.attributes.len() > max_labels {
                // Every series would have more labels than allowed.
                for p in 0..scope_profiles.profiles.len() {
                    let why = format!(
                        "its resource and scope have more attributes than max_label_names_per_series ({max_labels})"
                    );
                    reject(batch, p, &series.service, why);
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
                    Err(err) => reject(batch, p, &series.service, err.to_string()),
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
    /// The labels of `attributes`, each copy charged to the converter's
    /// budget; past `max_labels` (0: no limit) names, one more is taken
    /// and the rest are not read: the scope is refused.
    fn new<'a>(
        attributes: impl Iterator<Item = &'a KeyValue>,
        max_labels: usize,
        converter: &mut Converter<'a>,
    ) -> Result<Self, ConvertError> {
        let strings = &converter.dictionary.string_table;
        let mut labels: Vec<(String, String)> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for attribute in attributes {
            if max_labels > 0 && labels.len() > max_labels {
                break;
            }
            let Some(value) = attributes::label_value(attribute.value.as_ref(), strings)? else {
                continue;
            };
            let key = attributes::key(attribute, strings)?;
            if !key.is_empty() && seen.insert(key) {
                converter.budget.take(key.len() + value.len() + cost::LABEL)?;
                labels.push((key.to_owned(), value.into_owned()));
            }
        }
        let find = |name: &str| {
            labels
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let service = match (find(SERVICE_NAME_ATTRIBUTE), find(EXECUTABLE_NAME_ATTRIBUTE)) {
            (Some(service), _) => service.to_owned(),
            (_, Some(executable)) => format!("{UNKNOWN_SERVICE}:{executable}"),
            _ => UNKNOWN_SERVICE.to_owned(),
        };
        Ok(Self {
            attributes: labels,
            service,
        })
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
        let mut builders: Vec<(Cow<'_, str>, PprofBuilder<'a>)> = Vec::new();
        let mut by_service: HashMap<Cow<'_, str>, usize> = HashMap::new();
        let attribute_table = &self.dictionary.attribute_table;
        for (number, sample) in profile.samples.iter().enumerate() {
            if sample.values.is_empty() && sample.timestamps_unix_nano.is_empty() {
                return Err(ConvertError::NothingToCount {
                    sample: number,
                    with_attributes: !sample.attribute_indices.is_empty(),
                });
            }
            let mut service = Cow::Borrowed(series.service.as_str());
            let mut labels: Vec<(&'a str, Cow<'a, str>)> = Vec::new();
            for &index in &sample.attribute_indices {
                let attribute = entry(attribute_table, "attribute", index).map_err(|_| {
                    ConvertError::SampleAttributeOutOfRange {
                        index: i64::from(index),
                        len: attribute_table.len(),
                    }
                })?;
                let key = self.string(attribute.key_strindex)?;
                let Some(value) = attributes::label_value(attribute.value.as_ref(), &self.dictionary.string_table)?
                else {
                    continue;
                };
                if key == SERVICE_NAME_ATTRIBUTE {
                    service = value;
                } else if !key.is_empty() {
                    labels.push((key, value));
                }
            }
            labels.extend(attributes::link_labels(&self.dictionary.link_table, sample.link_index)?);
            let stack = entry(&self.dictionary.stack_table, "stack", sample.stack_index)?;
            let position = match by_service.get(service.as_ref()) {
                Some(&position) => position,
                None => {
                    let builder =
                        PprofBuilder::new(self.dictionary, &kind, time_nanos, duration_nanos, &mut self.budget)?;
                    builders.push((service.clone(), builder));
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
                .add_sample(stack, count.saturating_mul(kind.multiplier), labels, &mut self.budget)?;
        }
        builders
            .into_iter()
            .map(|(service, builder)| Ok((series.labels(kind.metric, &service, &mut self.budget)?, builder.profile)))
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
    strings: HashMap<Cow<'a, str>, i64>,
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
            strings: HashMap::from([(Cow::Borrowed(""), 0)]),
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
            r#type: self.string(Cow::Borrowed(r#type), budget)?,
            unit: self.string(Cow::Borrowed(unit), budget)?,
        })
    }

    fn string(&mut self, value: Cow<'a, str>, budget: &mut Budget<'_>) -> Result<i64, ConvertError> {
        if let Some(&index) = self.strings.get(value.as_ref()) {
            return Ok(index);
        }
        // A string made here (a number, an ID in hex) is kept twice: in
        // the table and as the key.
        let copies = if matches!(value, Cow::Owned(_)) { 2 } else { 1 };
        budget.take(copies * value.len() + cost::STRING)?;
        let index = i64::try_from(self.profile.string_table.len()).unwrap_or(i64::MAX);
        self.profile.string_table.push(value.as_ref().to_owned());
        self.strings.insert(value, index);
        Ok(index)
    }

    fn dictionary_string(&mut self, index: i32, budget: &mut Budget<'_>) -> Result<i64, ConvertError> {
        let value = entry(&self.dictionary.string_table, "string", index)?;
        self.string(Cow::Borrowed(value.as_str()), budget)
    }

    fn add_sample(
        &mut self,
        stack: &otlp::Stack,
        value: i64,
        labels: Vec<(&'a str, Cow<'a, str>)>,
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
            .into_iter()
            .map(|(key, value)| {
                Ok(Label {
                    key: self.string(Cow::Borrowed(key), budget)?,
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
        let mut build_id: Option<(usize, Cow<'a, str>)> = None;
        for &attribute_index in &mapping.attribute_indices {
            let attribute = entry(&self.dictionary.attribute_table, "attribute", attribute_index)?;
            let key = entry(&self.dictionary.string_table, "string", attribute.key_strindex)?;
            let Some(rank) = BUILD_ID_ATTRIBUTES.iter().position(|name| name == key) else {
                continue;
            };
            if build_id.as_ref().is_none_or(|(best, _)| rank < *best)
                && let Some(value) = attributes::label_value(attribute.value.as_ref(), &self.dictionary.string_table)?
            {
                build_id = Some((rank, value));
            }
        }
        let id = next_id(self.profile.mapping.len());
        let converted = Mapping {
            id,
            memory_start: mapping.memory_start,
            memory_limit: mapping.memory_limit,
            file_offset: mapping.file_offset,
            filename: self.dictionary_string(mapping.filename_strindex, budget)?,
            build_id: self.string(build_id.map_or(Cow::Borrowed(""), |(_, value)| value), budget)?,
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
mod tests;
