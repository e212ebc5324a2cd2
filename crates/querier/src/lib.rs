//! The querier: Pyroscope's `querier.v1.QuerierService` over the ingesters
//! of the ring, counting each profile once although RF copies exist.
//!
//! ```text
//!  querier.v1 ──▶ checks (range, lookback, max_nodes, selectors)
//!                   │
//!                   ▼  every readable ingester, at once (ingester.v1 over gRPC)
//!  labels, series, types: union     profiles: list IDs (SelectProfiles pages)
//!                                     │ each ID to one holder
//!                                     ▼
//!                                   MergeProfiles(only those) ──▶ trees merged ──▶ flame graph | tree
//!                                   or time series (SelectSeries)
//!                  older ranges: blocks from object storage, listed and merged the same way;
//!                  where compacted blocks alone hold the range, each merged whole, unlisted
//! ```
//!
//! The legacy HTTP API (`/pyroscope/render`, `render-diff`,
//! `label-values`, `label-names`) answers from the same [`Querier`].
//! Ranges older than `query_store_after` also read the blocks in object
//! storage (small files cached locally, the profiles table read by byte
//! ranges); copies uploaded by different ingesters share profile IDs and
//! count once.

mod compacted;
mod querier;
mod render;
mod service;
mod store;
mod time_series;

pub use querier::Querier;
pub use service::routes;
pub use store::Store;
