//! The protobuf messages of a block's series and symbols files. Both files
//! are one message, zstd-compressed.

use std::sync::Arc;

use flamedb_model::{Label, Labels};

use crate::query::SeriesSummary;
use crate::series::Series;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SeriesFile {
    /// In label order; a series' id in the block is its position here.
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<SeriesEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SeriesEntry {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(fixed64, tag = "2")]
    pub fingerprint: u64,
    #[prost(int64, tag = "3")]
    pub min_time_ms: i64,
    #[prost(int64, tag = "4")]
    pub max_time_ms: i64,
    /// Its rows in the profiles table: `first_row..first_row + row_count`.
    #[prost(uint32, tag = "5")]
    pub first_row: u32,
    #[prost(uint32, tag = "6")]
    pub row_count: u32,
    /// Its profile IDs summed as 128-bit big-endian numbers (wrapping), 16
    /// bytes; empty in blocks written before it was kept.
    #[prost(bytes = "vec", tag = "7")]
    pub id_sum: Vec<u8>,
    /// Its profiles' totals summed (wrapping).
    #[prost(int64, tag = "8")]
    pub total: i64,
    /// In a downsampled block: its buckets at each resolution of the
    /// meta, in that order.
    #[prost(message, repeated, tag = "9")]
    pub downsampled: Vec<DownsampledRun>,
}

/// A series' buckets at one resolution: rows `first_row..` of the
/// downsampled table, one per bucket with profiles, in time order.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DownsampledRun {
    #[prost(uint32, tag = "1")]
    pub first_row: u32,
    /// Each bucket's start divided by the resolution.
    #[prost(int64, repeated, tag = "2")]
    pub buckets: Vec<i64>,
    /// How many of the series' profile rows each bucket merges (they sum
    /// to its `row_count`).
    #[prost(uint32, repeated, tag = "3")]
    pub profile_rows: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

impl SeriesEntry {
    pub(crate) fn new(series: &Series, first_row: u32, row_count: u32, id_sum: u128, total: i64) -> Self {
        Self {
            labels: series
                .labels
                .iter()
                .map(|label| LabelPair {
                    name: label.name.clone(),
                    value: label.value.clone(),
                })
                .collect(),
            fingerprint: series.fingerprint,
            min_time_ms: series.min_time_ms,
            max_time_ms: series.max_time_ms,
            first_row,
            row_count,
            id_sum: id_sum.to_be_bytes().to_vec(),
            total,
            downsampled: Vec::new(),
        }
    }

    /// Its summary, when the block keeps one.
    pub(crate) fn summary(&self) -> Option<SeriesSummary> {
        let id_sum: [u8; 16] = self.id_sum.as_slice().try_into().ok()?;
        Some(SeriesSummary {
            fingerprint: self.fingerprint,
            profiles: u64::from(self.row_count),
            id_sum: u128::from_be_bytes(id_sum),
            total: self.total,
        })
    }

    pub(crate) fn series(&self) -> Series {
        Series {
            labels: Arc::new(Labels::new(
                self.labels
                    .iter()
                    .map(|pair| Label::new(pair.name.clone(), pair.value.clone()))
                    .collect(),
            )),
            fingerprint: self.fingerprint,
            min_time_ms: self.min_time_ms,
            max_time_ms: self.max_time_ms,
        }
    }
}

/// The symbol tables; references are positions in the tables.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SymbolsFile {
    #[prost(string, repeated, tag = "1")]
    pub strings: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub functions: Vec<FunctionEntry>,
    #[prost(message, repeated, tag = "3")]
    pub mappings: Vec<MappingEntry>,
    #[prost(message, repeated, tag = "4")]
    pub locations: Vec<LocationEntry>,
    /// Stack node `i + 1` is (`stack_parents[i]`, `stack_locations[i]`);
    /// node 0 is the empty stack.
    #[prost(uint32, repeated, tag = "5")]
    pub stack_parents: Vec<u32>,
    #[prost(uint32, repeated, tag = "6")]
    pub stack_locations: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FunctionEntry {
    #[prost(uint32, tag = "1")]
    pub name: u32,
    #[prost(uint32, tag = "2")]
    pub system_name: u32,
    #[prost(uint32, tag = "3")]
    pub filename: u32,
    #[prost(int64, tag = "4")]
    pub start_line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MappingEntry {
    #[prost(uint32, tag = "1")]
    pub filename: u32,
    #[prost(uint32, tag = "2")]
    pub build_id: u32,
    #[prost(uint64, tag = "3")]
    pub memory_start: u64,
    #[prost(uint64, tag = "4")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "5")]
    pub file_offset: u64,
    #[prost(bool, tag = "6")]
    pub has_functions: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LocationEntry {
    /// 0: none, else the mapping's position + 1.
    #[prost(uint32, tag = "1")]
    pub mapping: u32,
    #[prost(uint64, tag = "2")]
    pub address: u64,
    #[prost(uint32, repeated, tag = "3")]
    pub line_functions: Vec<u32>,
    #[prost(int64, repeated, tag = "4")]
    pub line_numbers: Vec<i64>,
}
