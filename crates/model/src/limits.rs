//! The per-tenant limits a profile and its series labels are validated
//! against. Names and defaults follow Pyroscope's `limits` block.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Validation limits; a count or size of `0` means "no limit", a duration of
/// `0s` turns that window check off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationLimits {
    /// Longest label name, in bytes.
    pub max_label_name_length: usize,
    /// Longest label value, in bytes.
    pub max_label_value_length: usize,
    /// Most labels a series may have (all of them, `__name__` included).
    pub max_label_names_per_series: usize,
    /// Largest profile after decompression, in bytes.
    pub max_profile_size_bytes: usize,
    /// Most samples in one profile.
    pub max_profile_stacktrace_samples: usize,
    /// Most labels on one sample.
    pub max_profile_stacktrace_sample_labels: usize,
    /// Deeper stacks are truncated to the frames closest to the root.
    pub max_profile_stacktrace_depth: usize,
    /// Longer symbols (any string of the profile) keep their last bytes.
    pub max_profile_symbol_value_length: usize,
    /// Profiles older than this (by their own timestamp) are rejected.
    #[serde(with = "humantime_serde")]
    pub reject_older_than: Duration,
    /// Profiles newer than this are rejected.
    #[serde(with = "humantime_serde")]
    pub reject_newer_than: Duration,
    /// When false, label names must follow the legacy Prometheus rules
    /// (dots allowed) and dots are replaced by underscores.
    pub disable_label_sanitization: bool,
}

impl Default for ValidationLimits {
    fn default() -> Self {
        Self {
            max_label_name_length: 1024,
            max_label_value_length: 2048,
            max_label_names_per_series: 30,
            max_profile_size_bytes: 4 * 1024 * 1024,
            max_profile_stacktrace_samples: 16_000,
            max_profile_stacktrace_sample_labels: 100,
            max_profile_stacktrace_depth: 1000,
            max_profile_symbol_value_length: 65_535,
            reject_older_than: Duration::from_secs(3600),
            reject_newer_than: Duration::from_secs(600),
            disable_label_sanitization: true,
        }
    }
}

impl ValidationLimits {
    /// Limits that accept anything a well-formed profile can hold; for
    /// tools and tests that read old recordings.
    pub fn unlimited() -> Self {
        Self {
            max_label_name_length: 0,
            max_label_value_length: 0,
            max_label_names_per_series: 0,
            max_profile_size_bytes: 0,
            max_profile_stacktrace_samples: 0,
            max_profile_stacktrace_sample_labels: 0,
            max_profile_stacktrace_depth: 0,
            max_profile_symbol_value_length: 0,
            reject_older_than: Duration::ZERO,
            reject_newer_than: Duration::ZERO,
            disable_label_sanitization: true,
        }
    }
}

/// Returns whether `value` exceeds `limit`, where `0` means no limit.
pub(crate) fn exceeds(value: usize, limit: usize) -> bool {
    limit != 0 && value > limit
}
