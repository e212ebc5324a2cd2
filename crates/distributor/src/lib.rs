//! The distributor: where agents meet flamedb. It takes every ingest API
//! (Connect `push.v1.PusherService/Push`, OTLP profiles, legacy `/ingest`), applies the
//! tenant's limits, prepares each profile (validate, normalize, split into
//! series), gives every series-profile an ID and writes it to its replicas
//! on the ingester ring, answering once a quorum of each has it.
//!
//! ```text
//!  push.v1 Push ─┐                        per profile                      per series
//!  OTLP export ──┤
//!  /ingest ──────┴▶ PushBatch ──▶ rate limit ─▶ prepare_decoded ──▶ token ─▶ ring replicas
//!   (decode, body   (decoded      (tenant bucket,  (validate, normalize,      │ one batched push
//!    size limits)    profiles,     ÷ distributors)   split, label checks)     ▼ per ingester
//!                    rejections)                                       IngesterPool ── quorum
//! ```
//!
//! A request with some bad profiles stores the good ones and answers with
//! every problem listed; the status is the most pressing one (quorum
//! failure, then limits, then invalid input).

mod batch;
mod distributor;
mod ingest;
mod metrics;
mod otlp;
mod push_api;
mod rate_limit;
mod remote;
mod replication;

pub use batch::{BatchError, PushBatch, Rejection};
pub use distributor::{Distributor, DistributorConfig, Prepared, PushError, PushReport};
pub use metrics::DistributorMetrics;
pub use push_api::routes;
pub use rate_limit::RateLimiter;
pub use remote::RemoteIngesters;
pub use replication::{IngesterPool, ReplicatedProfile};
