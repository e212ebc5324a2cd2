//! The profiles table of a block, in Parquet: one row per profile and
//! sample type, sorted by series (in label order), time and profile ID, so
//! each series is one run of rows. Row groups hold up to 100,000 rows
//! (the downsampled table starts one per resolution too); columns are
//! zstd-compressed, in pages of about 64 KiB. A read decodes only the row
//! groups its rows are in, and of those only the pages that hold them
//! (found by the offset index).
//!
//! | column | type |
//! |---|---|
//! | `id` | fixed 16 bytes (the profile ID) |
//! | `series` | uint32, the series' position in the series file |
//! | `time_nanos` | int64 |
//! | `total` | int64, the sum of `values` |
//! | `stacks` | list of uint32 (stack nodes of the symbols file) |
//! | `values` | list of int64, one per stack |
//! | `span_ids` | list of uint64, one per stack, 0 for none; null when no sample had one |

use std::borrow::Borrow;
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeBinaryBuilder, Int64Builder, ListBuilder, UInt32Builder, UInt64Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use flamedb_model::ProfileId;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;

use crate::ProfileRow;

pub const FILE: &str = "profiles.parquet";
const ROW_GROUP_ROWS: usize = 100_000;
/// Pages this size (before compression) or a little more: a read of a few
/// rows decompresses the pages that hold them, found by the offset index,
/// not the whole column.
const PAGE_BYTES: usize = 64 << 10;
const BATCH_ROWS: usize = 8192;

const ID: usize = 0;
const SERIES: usize = 1;
const TIME: usize = 2;
const TOTAL: usize = 3;
const STACKS: usize = 4;
const VALUES: usize = 5;
const SPAN_IDS: usize = 6;

fn item(data_type: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", data_type, false))
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::FixedSizeBinary(16), false),
        Field::new("series", DataType::UInt32, false),
        Field::new("time_nanos", DataType::Int64, false),
        Field::new("total", DataType::Int64, false),
        Field::new("stacks", DataType::List(item(DataType::UInt32)), false),
        Field::new("values", DataType::List(item(DataType::Int64)), false),
        Field::new("span_ids", DataType::List(item(DataType::UInt64)), true),
    ]))
}

/// Columns being filled for one record batch.
struct Columns {
    id: FixedSizeBinaryBuilder,
    series: UInt32Builder,
    time: Int64Builder,
    total: Int64Builder,
    stacks: ListBuilder<UInt32Builder>,
    values: ListBuilder<Int64Builder>,
    span_ids: ListBuilder<UInt64Builder>,
    rows: usize,
}

impl Columns {
    fn new() -> Self {
        Self {
            id: FixedSizeBinaryBuilder::with_capacity(BATCH_ROWS, 16),
            series: UInt32Builder::with_capacity(BATCH_ROWS),
            time: Int64Builder::with_capacity(BATCH_ROWS),
            total: Int64Builder::with_capacity(BATCH_ROWS),
            stacks: ListBuilder::new(UInt32Builder::new()).with_field(item(DataType::UInt32)),
            values: ListBuilder::new(Int64Builder::new()).with_field(item(DataType::Int64)),
            span_ids: ListBuilder::new(UInt64Builder::new()).with_field(item(DataType::UInt64)),
            rows: 0,
        }
    }

    fn push(&mut self, series: u32, row: &ProfileRow) -> Result<(), parquet::errors::ParquetError> {
        self.id.append_value(row.id.0)?;
        self.series.append_value(series);
        self.time.append_value(row.time_nanos);
        self.total.append_value(row.total);
        self.stacks.values().append_slice(&row.stacks);
        self.stacks.append(true);
        self.values.values().append_slice(&row.values);
        self.values.append(true);
        match &row.span_ids {
            Some(spans) => {
                self.span_ids.values().append_slice(spans);
                self.span_ids.append(true);
            }
            None => self.span_ids.append(false),
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.series.finish()),
            Arc::new(self.time.finish()),
            Arc::new(self.total.finish()),
            Arc::new(self.stacks.finish()),
            Arc::new(self.values.finish()),
            Arc::new(self.span_ids.finish()),
        ];
        RecordBatch::try_new(schema(), columns)
    }
}

/// A file being written, with the CRC-32 and length of what went in.
pub(crate) struct Checksummed {
    pub file: File,
    pub hasher: crc32fast::Hasher,
    pub len: u64,
}

impl std::io::Write for Checksummed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes `rows` (block series id, row), already in table order, to `path`,
/// starting a row group at each of `group_starts` (row numbers, ascending)
/// besides every `ROW_GROUP_ROWS`; returns the file with the checksum of
/// its bytes.
pub(crate) fn write<R: Borrow<ProfileRow>>(
    path: &Path,
    rows: impl Iterator<Item = (u32, R)>,
    group_starts: &[usize],
) -> Result<Checksummed, parquet::errors::ParquetError> {
    let file = Checksummed {
        file: File::create(path)?,
        hasher: crc32fast::Hasher::new(),
        len: 0,
    };
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_size_limit(PAGE_BYTES)
        .build();
    let mut writer = ArrowWriter::try_new(file, schema(), Some(properties))?;
    let mut columns = Columns::new();
    let mut group_starts = group_starts.iter().copied().peekable();
    for (number, (series, row)) in rows.enumerate() {
        let mut starts_group = false;
        while group_starts.next_if(|&start| start <= number).is_some() {
            starts_group = number > 0;
        }
        if starts_group {
            if columns.rows > 0 {
                writer.write(&columns.finish()?)?;
            }
            writer.flush()?;
        }
        columns.push(series, row.borrow())?;
        if columns.rows == BATCH_ROWS {
            writer.write(&columns.finish()?)?;
        }
    }
    if columns.rows > 0 {
        writer.write(&columns.finish()?)?;
    }
    writer.into_inner()
}

/// Which columns a read needs besides ID, series and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Totals,
    Samples,
    /// Samples and the span ID of each.
    SamplesAndSpans,
}

/// One row as a read hands it out.
#[derive(Debug)]
pub(crate) struct RowView<'a> {
    pub id: ProfileId,
    pub series: u32,
    pub time_nanos: i64,
    pub total: i64,
    /// Empty unless samples were asked for.
    pub stacks: &'a [u32],
    pub values: &'a [i64],
    /// One per sample, if spans were asked for and the row has them.
    pub span_ids: Option<&'a [u64]>,
}

/// Reads the rows in `ranges` (sorted, disjoint) of the table in `file`
/// (a local file or an object read by ranges), calling `each` for every
/// row.
pub(crate) fn read<R: ChunkReader + 'static>(
    file: R,
    ranges: Vec<Range<usize>>,
    want: Want,
    mut each: impl FnMut(RowView<'_>),
) -> Result<(), String> {
    if ranges.is_empty() {
        return Ok(());
    }
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).map_err(|err| err.to_string())?;
    let expected = schema();
    let found = builder.schema();
    if found.fields().len() != expected.fields().len()
        || found
            .fields()
            .iter()
            .zip(expected.fields())
            .any(|(found, expected)| found.name() != expected.name() || found.data_type() != expected.data_type())
    {
        return Err(format!("unexpected schema {found}"));
    }
    let total_rows = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    if ranges.last().is_some_and(|last| last.end > total_rows) {
        return Err(format!(
            "the series index points past the {total_rows} rows of the table"
        ));
    }
    let mut columns = vec![ID, SERIES, TIME];
    columns.extend_from_slice(match want {
        Want::Totals => &[TOTAL],
        Want::Samples => &[STACKS, VALUES],
        Want::SamplesAndSpans => &[STACKS, VALUES, SPAN_IDS],
    });
    let projection = ProjectionMask::roots(builder.parquet_schema(), columns);
    // Only the row groups the ranges touch are read at all; the selection
    // counts rows within them.
    let group_rows: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|group| usize::try_from(group.num_rows()).unwrap_or(0))
        .collect();
    if group_rows.iter().sum::<usize>() != total_rows {
        return Err(format!(
            "its row groups hold {} rows, its footer says {total_rows}",
            group_rows.iter().sum::<usize>()
        ));
    }
    let (groups, ranges, selected_rows) = within_groups(&group_rows, &ranges);
    let reader = builder
        .with_projection(projection)
        .with_row_groups(groups)
        .with_row_selection(RowSelection::from_consecutive_ranges(ranges.into_iter(), selected_rows))
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|err| err.to_string())?;
    for batch in reader {
        let batch = batch.map_err(|err| err.to_string())?;
        read_batch(&batch, want, &mut each).ok_or_else(|| "a column has an unexpected type".to_owned())?;
    }
    Ok(())
}

/// The row groups (of `group_rows` rows each) that `ranges` (sorted,
/// disjoint rows of the table) touch, the ranges counted within those
/// groups alone, and how many rows those groups hold.
fn within_groups(group_rows: &[usize], ranges: &[Range<usize>]) -> (Vec<usize>, Vec<Range<usize>>, usize) {
    let mut groups = Vec::new();
    let mut rebased = Vec::with_capacity(ranges.len());
    // Rows of the groups skipped so far, and kept so far.
    let mut skipped = 0;
    let mut kept = 0;
    let mut group_start = 0;
    let mut ranges = ranges.iter().peekable();
    for (group, &rows) in group_rows.iter().enumerate() {
        if rows == 0 {
            continue;
        }
        let group_end = group_start + rows;
        let mut touched = false;
        while let Some(range) = ranges.peek() {
            if range.start >= group_end {
                break;
            }
            touched = true;
            let end = range.end.min(group_end);
            rebased.push(range.start.max(group_start) - skipped..end - skipped);
            if range.end > group_end {
                break;
            }
            ranges.next();
        }
        if touched {
            groups.push(group);
            kept += rows;
        } else {
            skipped += rows;
        }
        group_start = group_end;
    }
    // Ranges split at a group boundary whose groups are both kept join up.
    let mut joined: Vec<Range<usize>> = Vec::with_capacity(rebased.len());
    for range in rebased {
        match joined.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => joined.push(range),
        }
    }
    (groups, joined, kept)
}

fn read_batch(batch: &RecordBatch, want: Want, each: &mut impl FnMut(RowView<'_>)) -> Option<()> {
    let column = |name: &str| batch.column_by_name(name);
    let ids = column("id")?.as_fixed_size_binary_opt()?;
    let series = column("series")?.as_primitive_opt::<UInt32Type>()?.values();
    let times = column("time_nanos")?.as_primitive_opt::<Int64Type>()?.values();
    let totals = match want {
        Want::Totals => Some(column("total")?.as_primitive_opt::<Int64Type>()?.values()),
        Want::Samples | Want::SamplesAndSpans => None,
    };
    let spans = match want {
        Want::SamplesAndSpans => {
            let spans = column("span_ids")?.as_list_opt::<i32>()?;
            Some((
                spans,
                spans.value_offsets(),
                spans.values().as_primitive_opt::<UInt64Type>()?.values(),
            ))
        }
        Want::Totals | Want::Samples => None,
    };
    let samples = match want {
        Want::Samples | Want::SamplesAndSpans => {
            let stacks = column("stacks")?.as_list_opt::<i32>()?;
            let values = column("values")?.as_list_opt::<i32>()?;
            Some((
                stacks.value_offsets(),
                stacks.values().as_primitive_opt::<UInt32Type>()?.values(),
                values.value_offsets(),
                values.values().as_primitive_opt::<Int64Type>()?.values(),
            ))
        }
        Want::Totals => None,
    };
    for row in 0..batch.num_rows() {
        let slice = |offsets: &[i32]| -> Option<Range<usize>> {
            Some(usize::try_from(*offsets.get(row)?).ok()?..usize::try_from(*offsets.get(row + 1)?).ok()?)
        };
        let (stacks, values): (&[u32], &[i64]) = match samples {
            Some((stack_offsets, stack_values, value_offsets, value_values)) => {
                let stacks = stack_values.get(slice(stack_offsets)?)?;
                let values = value_values.get(slice(value_offsets)?)?;
                if stacks.len() != values.len() {
                    return None;
                }
                (stacks, values)
            }
            None => (&[], &[]),
        };
        let span_ids = match spans {
            Some((list, offsets, ids)) if !list.is_null(row) => {
                let ids = ids.get(slice(offsets)?)?;
                if ids.len() != stacks.len() {
                    return None;
                }
                Some(ids)
            }
            _ => None,
        };
        each(RowView {
            id: ProfileId::from_slice(ids.value(row))?,
            series: series[row],
            time_nanos: times[row],
            total: totals.map_or_else(|| values.iter().sum(), |totals| totals[row]),
            stacks,
            values,
            span_ids,
        });
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Reading the kept groups with the rebased ranges selects exactly
        /// the rows the ranges name, and no group without one of them.
        #[test]
        fn prop_ranges_within_groups_select_the_same_rows(
            group_rows in proptest::collection::vec(0usize..20, 1..8),
            marks in proptest::collection::vec(any::<bool>(), 0..160),
        ) {
            let total: usize = group_rows.iter().sum();
            let wanted: Vec<usize> = (0..total).filter(|&row| marks.get(row).copied().unwrap_or(false)).collect();
            let mut ranges: Vec<Range<usize>> = Vec::new();
            for &row in &wanted {
                match ranges.last_mut() {
                    Some(last) if last.end == row => last.end = row + 1,
                    _ => ranges.push(row..row + 1),
                }
            }
            let (groups, rebased, kept) = within_groups(&group_rows, &ranges);
            // The rows of the kept groups, in order, as the reader sees them.
            let mut starts = Vec::new();
            let mut start = 0;
            for &rows in &group_rows {
                starts.push(start);
                start += rows;
            }
            let concatenated: Vec<usize> = groups.iter().flat_map(|&group| starts[group]..starts[group] + group_rows[group]).collect();
            prop_assert_eq!(concatenated.len(), kept);
            let selected: Vec<usize> = rebased.iter().flat_map(|range| range.clone()).map(|row| concatenated[row]).collect();
            prop_assert_eq!(&selected, &wanted);
            for &group in &groups {
                prop_assert!(wanted.iter().any(|&row| (starts[group]..starts[group] + group_rows[group]).contains(&row)));
            }
            prop_assert!(rebased.windows(2).all(|pair| pair[0].end < pair[1].start));
        }
    }
}
