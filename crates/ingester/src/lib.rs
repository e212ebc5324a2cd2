//! The ingester: keeps the recent profiles of each tenant in heads (one per
//! tenant and time window), durable through a write-ahead log, and answers
//! queries over them.
//!
//! ```text
//!  push(tenant, profiles)
//!    │  memory ceiling, active series limit (refuse early: 429)
//!    ▼
//!  WAL append (group commit, fsync) ──▶ completion, in WAL order ──▶ heads
//!                                                                     │
//!  start: WAL replay ──────────────────────────────────────────────▶ heads
//!  queries: label names/values, series, profile types, profiles, merged trees
//! ```

mod delta;
mod flush;
mod head;
mod ingester;
mod limiter;
mod local_blocks;
mod metrics;
mod record;
mod service;
mod shipper;
mod snapshots;
mod task;

pub use flamedb_storage::{ProfileKey, ProfileQuery, SelectedProfile, SeriesSummary, TimeRange};
pub use flush::{FlushError, FlushReport};
pub use ingester::{
    IncomingProfile, Ingester, IngesterConfig, PushError, QueryError, ReplayReport, ShareOfCluster, ShutdownError,
    StartError,
};
pub use limiter::{ClusterShare, SeriesLimit};
pub use metrics::IngesterMetrics;
pub use service::{internal_routes, operator_routes};
