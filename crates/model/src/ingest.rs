//! The model side of ingesting one pushed profile, in Pyroscope's order:
//! default `service_name` → decode (gzip or plain, size-limited) → validate
//! → normalize → split by sample labels → validate each series' labels.

use crate::labels::{Labels, SERVICE_NAME, UNKNOWN_SERVICE};
use crate::limits::ValidationLimits;
use crate::normalize::normalize;
use crate::pprof;
use crate::split::{SeriesProfile, split_by_sample_labels};
use crate::validate::{ValidationError, validate_labels, validate_profile};

/// Turns one raw pushed profile (`raw_profile` of a push) sent under
/// `labels` into the series to store. An empty result means the profile
/// had no samples left after normalization: accepted, nothing to store.
pub fn prepare_profile(
    raw: &[u8],
    labels: &Labels,
    limits: &ValidationLimits,
    now_nanos: i64,
) -> Result<Vec<SeriesProfile>, ValidationError> {
    let mut labels = labels.clone();
    labels.set_if_absent(SERVICE_NAME, UNKNOWN_SERVICE);
    let mut profile = pprof::decode(raw, limits.max_profile_size_bytes)
        .map_err(|source| ValidationError::from_decode(&labels, source))?;
    validate_profile(&mut profile, &labels, limits, now_nanos)?;
    normalize(&mut profile, now_nanos);
    if profile.sample.is_empty() {
        return Ok(Vec::new());
    }
    let mut series = split_by_sample_labels(profile, &labels);
    for part in &mut series {
        validate_labels(&mut part.labels, limits)?;
    }
    Ok(series)
}
