//! flamedb's data model: profiles, labels, profile types and selectors, and
//! the pure pipeline that turns a pushed pprof into the series to store.
//!
//! ```text
//!  raw_profile ──▶ pprof::decode ──▶ validate_profile ──▶ normalize ──▶ split_by_sample_labels
//!  (gzip/plain,     (size limit)      (limits, window,     (merge,        (one series per
//!   + labels)                          truncation)          drop, GC)      sample-label group)
//!                                                                │
//!                     validate_labels ◀──────────────────────────┘
//!                            │
//!                            ▼
//!       SeriesProfile { labels, profile } ──▶ ProfileType::all_of / series_labels
//!                                             (one stored series per sample type)
//! ```
//!
//! Merged profiles become a [`Tree`] by function name (Pyroscope's tree
//! bytes on the wire). Nothing here does I/O; everything is deterministic
//! given `now`.

pub mod attime;
pub mod budget;
pub mod decode_cost;
mod dot;
pub mod gzip;
mod ingest;
mod ingest_name;
pub mod jfr;
mod labels;
mod limits;
mod normalize;
pub mod pprof;
mod profile_id;
mod profile_type;
mod selector;
mod split;
mod symbols;
mod tree;
pub mod tree_formats;
mod validate;

pub use dot::to_dot;
pub use ingest::{PrepareError, prepare_decoded, prepare_profile};
pub use ingest_name::{IngestName, IngestNameError, parse_ingest_name};
pub use labels::{
    DELTA, Label, Labels, METRIC_NAME, ORDER, OTEL, PERIOD_TYPE, PERIOD_UNIT, PRIVATE_SERVICE_NAME, PROFILE_ID,
    PROFILE_TYPE, SAMPLE_TYPE, SAMPLE_UNIT, SERVICE_NAME, SESSION_ID, SPAN_ID, TRACE_ID, UNKNOWN_SERVICE,
    is_legacy_label_name, tenant_token,
};
pub use limits::{Limits, TenantLimits};
pub use normalize::normalize;
pub use profile_id::{ProfileId, ProfileIdError};
pub use profile_type::{ProfileType, ProfileTypeError, TypedSeries, typed_series};
pub use selector::{MatchOp, Matcher, Selector, SelectorError, parse_selector};
pub use split::{SeriesProfile, sample_labels, split_by_sample_labels};
pub use tree::{CompactTree, FlameGraph, FlameGraphDiff, OTHER, Tree, TreeDecodeError};
pub use validate::{ValidationError, now_nanos, validate_labels, validate_profile};
