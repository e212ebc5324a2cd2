//! A write-ahead log: append-only segment files of checksummed records,
//! written and fsync'd by one thread that commits concurrent appends
//! together (group commit). An append returns only once its record is
//! durable. The WAL knows bytes, never what they mean.
//!
//! ```text
//!  append(payload) ──▶ bounded queue ──▶ WAL thread: write batch ─▶ fsync ─▶ wake every appender
//!                                          │ (segment full: start the next one)
//!  open(dir) ──▶ Replay: records of the existing segments, in order;
//!                a torn tail (the last record written in part) is cut off;
//!                corruption anywhere else stops replay (or is skipped)
//! ```
//!
//! Record: `[length: u32 LE][crc32: u32 LE over the length bytes and the
//! payload][payload]`. Segments are `<dir>/<id:010>.wal`; a new WAL always
//! writes to a new segment after the ones it replays.

mod record;
mod replay;
mod segment;
mod writer;

pub use record::MAX_RECORD_BYTES;
pub use replay::{Record, Replay, ReplayStats};
pub use segment::SegmentId;
pub use writer::{Completion, Position, Wal, WalConfig, WalError, WalStats};
