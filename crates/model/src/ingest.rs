//! The model side of ingesting one pushed profile, in Pyroscope's order:
//! default `service_name` → decode (gzip or plain, size-limited) → validate
//! → normalize → split by sample labels → validate each series' labels.

use crate::budget::{BudgetError, RequestBudget};
use crate::labels::{Labels, SERVICE_NAME, SESSION_ID, UNKNOWN_SERVICE};
use crate::limits::Limits;
use crate::normalize::normalize;
use crate::pprof::{self, Profile};
use crate::split::{SeriesProfile, split_by_sample_labels};
use crate::validate::{ValidationError, validate_labels, validate_profile};

/// Why a pushed profile was not prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The profile is refused; the other profiles of its request go on.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The request ran out of memory budget: it fails whole.
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

/// Turns one raw pushed profile (`raw_profile` of a push) sent under
/// `labels` into the series to store, charging what it decodes and copies
/// to `budget`. An empty result means the profile had no samples left
/// after normalization: accepted, nothing to store.
pub fn prepare_profile(
    raw: &[u8],
    labels: &Labels,
    limits: &Limits,
    now_nanos: i64,
    budget: &RequestBudget,
) -> Result<Vec<SeriesProfile>, PrepareError> {
    let profile = match pprof::decode_within(raw, limits.max_profile_size_bytes, budget) {
        Ok(profile) => profile,
        Err(pprof::DecodeError::Budget(err)) => return Err(err.into()),
        Err(source) => return Err(ValidationError::from_decode(labels, source).into()),
    };
    prepare_decoded(profile, labels, limits, now_nanos, budget)
}

/// [`prepare_profile`] for a profile already decoded (and size-checked).
pub fn prepare_decoded(
    mut profile: Profile,
    labels: &Labels,
    limits: &Limits,
    now_nanos: i64,
    budget: &RequestBudget,
) -> Result<Vec<SeriesProfile>, PrepareError> {
    let mut labels = labels.clone();
    labels.set_if_absent(SERVICE_NAME, UNKNOWN_SERVICE);
    validate_profile(&mut profile, &labels, limits, now_nanos)?;
    normalize(&mut profile, now_nanos, budget)?;
    if profile.sample.is_empty() {
        return Ok(Vec::new());
    }
    let mut series = split_by_sample_labels(profile, &labels, budget)?;
    for part in &mut series {
        validate_labels(&mut part.labels, limits)?;
        // Agents tag each process run; kept, it would make a series per
        // run. Pyroscope drops it too (max_sessions_per_series 0).
        part.labels.remove(SESSION_ID);
    }
    Ok(series)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gzip::gzip;
    use crate::pprof::{Function, Line, Location, Profile, Sample, ValueType, encode};

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn raw_profile() -> Vec<u8> {
        encode(&Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }],
            string_table: ["", "cpu", "nanoseconds", "main"].map(String::from).to_vec(),
            function: vec![Function {
                id: 1,
                name: 3,
                ..Function::default()
            }],
            location: vec![Location {
                id: 1,
                line: vec![Line {
                    function_id: 1,
                    ..Line::default()
                }],
                ..Location::default()
            }],
            sample: vec![
                Sample {
                    location_id: vec![1],
                    value: vec![7],
                    label: vec![],
                },
                Sample {
                    location_id: vec![1],
                    value: vec![0],
                    label: vec![],
                },
            ],
            time_nanos: NOW,
            ..Profile::default()
        })
    }

    #[test]
    fn test_prepare_profile_defaults_service_name_and_normalizes() {
        let labels = Labels::from_pairs([("__name__", "process_cpu")]);
        let series = prepare_profile(
            &gzip(&raw_profile()),
            &labels,
            &Limits::default(),
            NOW,
            &RequestBudget::unlimited(),
        )
        .unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].labels.get(SERVICE_NAME), Some(UNKNOWN_SERVICE));
        assert_eq!(series[0].profile.sample.len(), 1);
    }

    #[test]
    fn test_prepare_profile_drops_the_session_id_label() {
        let labels = Labels::from_pairs([
            ("__name__", "process_cpu"),
            ("service_name", "app"),
            ("__session_id__", "8b1f"),
        ]);
        let series = prepare_profile(
            &raw_profile(),
            &labels,
            &Limits::default(),
            NOW,
            &RequestBudget::unlimited(),
        )
        .unwrap();
        assert_eq!(series[0].labels.get(SESSION_ID), None);
        assert_eq!(series[0].labels.len(), 2);
    }

    #[test]
    fn test_prepare_profile_size_limit_boundary() {
        let raw = raw_profile();
        let labels = Labels::from_pairs([("__name__", "process_cpu"), ("service_name", "app")]);
        let at_limit = Limits {
            max_profile_size_bytes: raw.len(),
            ..Limits::default()
        };
        assert!(prepare_profile(&gzip(&raw), &labels, &at_limit, NOW, &RequestBudget::unlimited()).is_ok());
        let below = Limits {
            max_profile_size_bytes: raw.len() - 1,
            ..Limits::default()
        };
        let Err(PrepareError::Invalid(err)) =
            prepare_profile(&gzip(&raw), &labels, &below, NOW, &RequestBudget::unlimited())
        else {
            panic!("a profile over the size limit is invalid");
        };
        assert_eq!(err.reason(), "profile_size_limit");
        assert_eq!(
            err.to_string(),
            format!(
                r#"profile of series {{__name__="process_cpu", service_name="app"}} exceeds max_profile_size_bytes: it is larger than {} bytes uncompressed"#,
                raw.len() - 1
            )
        );
    }

    #[test]
    fn test_prepare_profile_without_samples_stores_nothing() {
        let profile = Profile {
            sample_type: vec![ValueType { r#type: 1, unit: 2 }],
            string_table: ["", "cpu", "nanoseconds"].map(String::from).to_vec(),
            sample: vec![Sample {
                location_id: vec![],
                value: vec![0],
                label: vec![],
            }],
            ..Profile::default()
        };
        let labels = Labels::from_pairs([("__name__", "process_cpu")]);
        let series = prepare_profile(
            &encode(&profile),
            &labels,
            &Limits::default(),
            NOW,
            &RequestBudget::unlimited(),
        )
        .unwrap();
        assert!(series.is_empty());
    }
}
