//! Storage: the block format a head is flushed to, the series index and
//! symbol store that heads and blocks share, and object storage access.
//!
//! ```text
//!  head (ingester) ──write_block──▶ <dir>/<id>/{meta.json, series, profiles.parquet, symbols}
//!  Block::open ──▶ label names/values, series, selected profiles, merged trees
//!  blocks ──compact──▶ one block, each profile once (the compactor)
//! ```

pub mod block;
mod bucket;
mod compact;
mod query;
mod series;
mod symbols;

pub use block::{Block, BlockContents, BlockError, BlockMeta, SymbolCache, write_block};
pub use bucket::{Bucket, BucketConfig, BucketError, BucketIndex, INDEX_VERSION, IndexRead, S3Config};
pub use compact::compact;
pub use query::{
    ProfileKey, ProfileQuery, ProfileRow, SelectedProfile, SeriesSummaries, SeriesSummary, TimeRange, add_samples,
    summary_of,
};
pub use series::{Series, SeriesIndex};
pub use symbols::{SymbolCounts, Symbols};
pub use ulid::Ulid;
