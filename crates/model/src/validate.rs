//! Validation of profiles and series labels against [`Limits`].
//! Every failure is a typed error that names the limit, the value found and
//! the series; `reason()` gives the discard reason used in metrics (the same
//! strings as Pyroscope's).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::labels::{Label, Labels, METRIC_NAME, SERVICE_NAME};
use crate::limits::{Limits, exceeds};
use crate::pprof::{DecodeError, Profile};

/// Why a profile or its series was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("profile of series {series} exceeds max_profile_size_bytes: it is larger than {limit} bytes uncompressed")]
    ProfileTooLarge { series: String, limit: usize },
    #[error("profile of series {series} cannot be decoded: {source}")]
    Decode { series: String, source: DecodeError },
    #[error("profile of series {series} is empty: it has no sample types")]
    NoSampleTypes { series: String },
    #[error(
        "profile of series {series} is too old: its time {time} is more than reject_older_than {limit} before now ({now})"
    )]
    TooOld {
        series: String,
        time: String,
        now: String,
        limit: String,
    },
    #[error(
        "profile of series {series} is too new: its time {time} is more than reject_newer_than {limit} after now ({now})"
    )]
    TooNew {
        series: String,
        time: String,
        now: String,
        limit: String,
    },
    #[error("profile of series {series} has {count} samples, limit max_profile_stacktrace_samples is {limit}")]
    TooManySamples { series: String, count: usize, limit: usize },
    #[error("a sample of series {series} has {count} labels, limit max_profile_stacktrace_sample_labels is {limit}")]
    TooManySampleLabels { series: String, count: usize, limit: usize },
    #[error("profile of series {series} is malformed: location id is 0")]
    ZeroLocationId { series: String },
    #[error("profile of series {series} is malformed: function id is 0")]
    ZeroFunctionId { series: String },
    #[error("profile of series {series} is malformed: a sample has {values} values for {sample_types} sample types")]
    SampleValueLengthMismatch {
        series: String,
        values: usize,
        sample_types: usize,
    },
    #[error("profile of series {series} is malformed: the string table must start with an empty string")]
    StringTableStart { series: String },
    #[error(
        "profile of series {series} is malformed: {field} refers to string {index}, the string table has {len} strings"
    )]
    StringIndexOutOfRange {
        series: String,
        field: &'static str,
        index: i64,
        len: usize,
    },
    #[error("profile of series {series} is malformed: sample type {sample_type:?} contains '-'")]
    SampleTypeContainsDash { series: String, sample_type: String },
    #[error("series {series} has no labels: at least one label pair is required per profile")]
    MissingLabels { series: String },
    #[error("series {series} has {count} label names, limit max_label_names_per_series is {limit}")]
    TooManyLabels { series: String, count: usize, limit: usize },
    #[error("series {series} has an invalid metric name: __name__ must be set and not empty")]
    InvalidMetricName { series: String },
    #[error("series {series} has no service name: service_name must not be empty")]
    MissingServiceName { series: String },
    #[error("series {series} has label name {name:?} of {length} bytes, limit max_label_name_length is {limit}")]
    LabelNameTooLong {
        series: String,
        name: String,
        length: usize,
        limit: usize,
    },
    #[error("series {series} has a value of label {name:?} of {length} bytes, limit max_label_value_length is {limit}")]
    LabelValueTooLong {
        series: String,
        name: String,
        length: usize,
        limit: usize,
    },
    #[error("series {series} has an invalid label name {name:?}{rule}")]
    InvalidLabelName {
        series: String,
        name: String,
        rule: &'static str,
    },
    #[error("series {series} has label name {name:?} more than once")]
    DuplicateLabelName { series: String, name: String },
}

impl ValidationError {
    /// The discard reason, as Pyroscope names it in
    /// `pyroscope_discarded_samples_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ProfileTooLarge { .. } => "profile_size_limit",
            Self::Decode { .. }
            | Self::NoSampleTypes { .. }
            | Self::ZeroLocationId { .. }
            | Self::ZeroFunctionId { .. }
            | Self::SampleValueLengthMismatch { .. }
            | Self::StringTableStart { .. }
            | Self::StringIndexOutOfRange { .. }
            | Self::SampleTypeContainsDash { .. } => "malformed_profile",
            Self::TooOld { .. } | Self::TooNew { .. } => "not_in_ingestion_window",
            Self::TooManySamples { .. } => "samples_limit",
            Self::TooManySampleLabels { .. } => "sample_labels_limit",
            Self::MissingLabels { .. } | Self::MissingServiceName { .. } => "missing_labels",
            Self::TooManyLabels { .. } => "max_label_names_per_series",
            Self::InvalidMetricName { .. } | Self::InvalidLabelName { .. } => "invalid_labels",
            Self::LabelNameTooLong { .. } => "label_name_too_long",
            Self::LabelValueTooLong { .. } => "label_value_too_long",
            Self::DuplicateLabelName { .. } => "duplicate_label_names",
        }
    }

    /// Wraps a decoding failure of the profile of `series`.
    pub fn from_decode(series: &Labels, source: DecodeError) -> Self {
        match source {
            DecodeError::TooLarge { limit } => Self::ProfileTooLarge {
                series: series.render(),
                limit,
            },
            source => Self::Decode {
                series: series.render(),
                source,
            },
        }
    }
}

/// Checks a decoded profile against the limits, in Pyroscope's order, and
/// applies the limits that truncate rather than reject (stack depth, symbol
/// length). A profile without a timestamp gets `now_nanos`.
pub fn validate_profile(
    profile: &mut Profile,
    series: &Labels,
    limits: &Limits,
    now_nanos: i64,
) -> Result<(), ValidationError> {
    let series_name = || series.render();
    if profile.sample_type.is_empty() {
        return Err(ValidationError::NoSampleTypes { series: series_name() });
    }
    if profile.time_nanos > 0 {
        check_ingestion_window(profile.time_nanos, series, limits, now_nanos)?;
    } else {
        profile.time_nanos = now_nanos;
    }
    if exceeds(profile.sample.len(), limits.max_profile_stacktrace_samples) {
        return Err(ValidationError::TooManySamples {
            series: series_name(),
            count: profile.sample.len(),
            limit: limits.max_profile_stacktrace_samples,
        });
    }
    truncate_stacks(profile, limits.max_profile_stacktrace_depth);
    for sample in &profile.sample {
        if exceeds(sample.label.len(), limits.max_profile_stacktrace_sample_labels) {
            return Err(ValidationError::TooManySampleLabels {
                series: series_name(),
                count: sample.label.len(),
                limit: limits.max_profile_stacktrace_sample_labels,
            });
        }
    }
    if limits.max_profile_symbol_value_length > 0 {
        for string in &mut profile.string_table {
            truncate_keeping_end(string, limits.max_profile_symbol_value_length);
        }
    }
    if profile.location.iter().any(|location| location.id == 0) {
        return Err(ValidationError::ZeroLocationId { series: series_name() });
    }
    if profile.function.iter().any(|function| function.id == 0) {
        return Err(ValidationError::ZeroFunctionId { series: series_name() });
    }
    let sample_types = profile.sample_type.len();
    if let Some(sample) = profile.sample.iter().find(|sample| sample.value.len() != sample_types) {
        return Err(ValidationError::SampleValueLengthMismatch {
            series: series_name(),
            values: sample.value.len(),
            sample_types,
        });
    }
    if profile.string_table.first().is_none_or(|first| !first.is_empty()) {
        return Err(ValidationError::StringTableStart { series: series_name() });
    }
    check_string_indexes(profile, series)?;
    for sample_type in &profile.sample_type {
        let name = crate::pprof::string_at(profile, sample_type.r#type);
        if name.contains('-') {
            return Err(ValidationError::SampleTypeContainsDash {
                series: series_name(),
                sample_type: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// Truncates every stack to at most `max_depth` frames (`0`: no limit),
/// keeping the frames closest to the root as Pyroscope does. Frames are
/// counted after expanding each location into its lines (inlined
/// functions), since that is what a stored stack becomes: a location's
/// lines keep their root-most `max_depth`, and a sample keeps its root-most
/// locations whose frames fit.
fn truncate_stacks(profile: &mut Profile, max_depth: usize) {
    if max_depth == 0 {
        return;
    }
    let mut frames_of_location = std::collections::HashMap::with_capacity(profile.location.len());
    for location in &mut profile.location {
        // Lines are leaf first: the last ones are the callers.
        if location.line.len() > max_depth {
            let excess = location.line.len() - max_depth;
            location.line.drain(..excess);
            location.line.shrink_to_fit();
        }
        frames_of_location.insert(location.id, location.line.len().max(1));
    }
    for sample in &mut profile.sample {
        // Locations are leaf first: count from the root end.
        let mut frames = 0usize;
        let mut kept = 0usize;
        for id in sample.location_id.iter().rev() {
            let location_frames = frames_of_location.get(id).copied().unwrap_or(1);
            if frames + location_frames > max_depth {
                break;
            }
            frames += location_frames;
            kept += 1;
        }
        // A root location deeper than the limit alone cannot happen (its
        // lines were cut above), so at least one location stays.
        let excess = sample.location_id.len() - kept.max(1).min(sample.location_id.len());
        if excess > 0 {
            sample.location_id.drain(..excess);
            sample.location_id.shrink_to_fit();
        }
    }
}

fn check_ingestion_window(
    time_nanos: i64,
    series: &Labels,
    limits: &Limits,
    now_nanos: i64,
) -> Result<(), ValidationError> {
    let nanos = |duration: Duration| i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
    if !limits.reject_older_than.is_zero() && time_nanos <= now_nanos.saturating_sub(nanos(limits.reject_older_than)) {
        return Err(ValidationError::TooOld {
            series: series.render(),
            time: format_nanos(time_nanos),
            now: format_nanos(now_nanos),
            limit: humantime::format_duration(limits.reject_older_than).to_string(),
        });
    }
    if !limits.reject_newer_than.is_zero() && time_nanos >= now_nanos.saturating_add(nanos(limits.reject_newer_than)) {
        return Err(ValidationError::TooNew {
            series: series.render(),
            time: format_nanos(time_nanos),
            now: format_nanos(now_nanos),
            limit: humantime::format_duration(limits.reject_newer_than).to_string(),
        });
    }
    Ok(())
}

/// Formats nanoseconds since the epoch as RFC 3339 (UTC, milliseconds).
fn format_nanos(nanos: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// Returns the current time in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
}

/// Keeps the last `max` bytes of `string`, moved forward to a character
/// boundary so the result stays valid UTF-8.
fn truncate_keeping_end(string: &mut String, max: usize) {
    if string.len() <= max {
        return;
    }
    let mut start = string.len() - max;
    while !string.is_char_boundary(start) {
        start += 1;
    }
    string.drain(..start);
    string.shrink_to_fit();
}

fn check_string_indexes(profile: &Profile, series: &Labels) -> Result<(), ValidationError> {
    let len = profile.string_table.len();
    let check = |field: &'static str, index: i64| {
        if usize::try_from(index).is_ok_and(|index| index < len) {
            Ok(())
        } else {
            Err(ValidationError::StringIndexOutOfRange {
                series: series.render(),
                field,
                index,
                len,
            })
        }
    };
    for sample_type in &profile.sample_type {
        check("sample type", sample_type.r#type)?;
        check("sample unit", sample_type.unit)?;
    }
    for sample in &profile.sample {
        for label in &sample.label {
            check("sample label key", label.key)?;
            check("sample label value", label.str)?;
        }
    }
    for function in &profile.function {
        check("function name", function.name)?;
        check("function system name", function.system_name)?;
        check("function file name", function.filename)?;
    }
    for mapping in &profile.mapping {
        check("mapping file name", mapping.filename)?;
        check("mapping build id", mapping.build_id)?;
    }
    Ok(())
}

/// Checks a series' final labels (after splitting), in Pyroscope's order.
/// With `disable_label_sanitization` off, label names follow the legacy
/// rules and dots become underscores first.
pub fn validate_labels(labels: &mut Labels, limits: &Limits) -> Result<(), ValidationError> {
    if !limits.disable_label_sanitization {
        sanitize_label_names(labels)?;
    }
    let series = || labels.render();
    if labels.is_empty() {
        return Err(ValidationError::MissingLabels { series: series() });
    }
    if exceeds(labels.len(), limits.max_label_names_per_series) {
        return Err(ValidationError::TooManyLabels {
            series: series(),
            count: labels.len(),
            limit: limits.max_label_names_per_series,
        });
    }
    if labels.get(METRIC_NAME).is_none_or(str::is_empty) {
        return Err(ValidationError::InvalidMetricName { series: series() });
    }
    if labels.get(SERVICE_NAME).is_none_or(str::is_empty) {
        return Err(ValidationError::MissingServiceName { series: series() });
    }
    let mut previous: Option<&str> = None;
    for label in labels.iter() {
        if exceeds(label.name.len(), limits.max_label_name_length) {
            return Err(ValidationError::LabelNameTooLong {
                series: series(),
                name: label.name.clone(),
                length: label.name.len(),
                limit: limits.max_label_name_length,
            });
        }
        if exceeds(label.value.len(), limits.max_label_value_length) {
            return Err(ValidationError::LabelValueTooLong {
                series: series(),
                name: label.name.clone(),
                length: label.value.len(),
                limit: limits.max_label_value_length,
            });
        }
        if label.name.is_empty() {
            return Err(ValidationError::InvalidLabelName {
                series: series(),
                name: String::new(),
                rule: ": label names must not be empty",
            });
        }
        if previous == Some(label.name.as_str()) {
            return Err(ValidationError::DuplicateLabelName {
                series: series(),
                name: label.name.clone(),
            });
        }
        previous = Some(label.name.as_str());
    }
    Ok(())
}

/// Legacy label names: `[A-Za-z_.][A-Za-z0-9_.]*`, dots then replaced by
/// underscores; two names that become equal must carry the same value.
fn sanitize_label_names(labels: &mut Labels) -> Result<(), ValidationError> {
    let is_legacy = |name: &str| {
        let mut bytes = name.bytes();
        matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'.'))
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    };
    if let Some(label) = labels.iter().find(|label| !is_legacy(&label.name)) {
        return Err(ValidationError::InvalidLabelName {
            series: labels.render(),
            name: label.name.clone(),
            rule: ": with label sanitization, names must match [A-Za-z_.][A-Za-z0-9_.]*",
        });
    }
    if labels.iter().all(|label| !label.name.contains('.')) {
        return Ok(());
    }
    let original = labels.render();
    // (sanitized name, value, original name)
    let mut sanitized: Vec<(String, String, String)> = std::mem::take(labels)
        .into_vec()
        .into_iter()
        .map(|label| (label.name.replace('.', "_"), label.value, label.name))
        .collect();
    sanitized.sort();
    let mut kept: Vec<Label> = Vec::with_capacity(sanitized.len());
    let mut previous: Option<&(String, String, String)> = None;
    for entry in &sanitized {
        if let Some(prev) = previous.filter(|prev| prev.0 == entry.0) {
            if prev.1 != entry.1 {
                return Err(ValidationError::DuplicateLabelName {
                    series: original,
                    name: entry.0.clone(),
                });
            }
            // Two names made equal by the rewrite, with one value: keep one.
            // A name given twice stays twice, for the duplicate check.
            if prev.2 != entry.2 {
                continue;
            }
        }
        kept.push(Label::new(entry.0.clone(), entry.1.clone()));
        previous = Some(entry);
    }
    *labels = Labels::new(kept);
    Ok(())
}

#[cfg(test)]
mod tests;
