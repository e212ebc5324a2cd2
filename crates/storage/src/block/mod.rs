//! Blocks: the immutable, self-describing files a head becomes when it is
//! flushed.
//!
//! ```text
//! <id>/meta.json            what the block is; lists every other file with size and CRC-32
//! <id>/series.binpb.zst     series (labels, fingerprint, time span, run of rows), label order
//! <id>/profiles.parquet     one row per profile and sample type, sorted by series, time, ID
//! <id>/symbols.binpb.zst    strings, functions, mappings, locations, stack prefix tree
//! <id>/downsampled.parquet  (compacted blocks) per resolution, series and time bucket, its profiles merged
//! ```
//!
//! A block is written into `<id>.tmp`, every file fsync'd, `meta.json`
//! last, then the directory is renamed to `<id>`: a block directory is
//! complete or absent. Readers check the format version and file sizes on
//! open, and the checksum of every file they read whole.

mod downsampled;
pub(crate) mod format;
mod meta;
mod profiles;
mod remote;
mod symbol_cache;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flamedb_model::budget::BudgetError;
use flamedb_model::{ProfileId, Tree};
use foldhash::{HashMap, HashMapExt};
use prost::Message;
use ulid::Ulid;

use downsampled::Downsampled;
pub use meta::{BlockFile, BlockMeta, BlockStats, Compaction, Downsample, FORMAT_VERSION};

use crate::series::SeriesIndex;
use crate::symbols::Symbols;
use crate::{ProfileQuery, ProfileRow, SelectedProfile, SeriesSummaries, SeriesSummary, add_samples, summary_of};
pub use downsampled::{FILE as DOWNSAMPLED_FILE, check_resolutions};
pub use profiles::FILE as PROFILES_FILE;
pub(crate) use remote::RemoteFile;
pub use symbol_cache::SymbolCache;

pub const META_FILE: &str = "meta.json";
const SERIES_FILE: &str = "series.binpb.zst";
const SYMBOLS_FILE: &str = "symbols.binpb.zst";
/// Every file a block may have besides `meta.json`.
const BLOCK_FILES: [&str; 4] = [profiles::FILE, SERIES_FILE, SYMBOLS_FILE, downsampled::FILE];
/// A compressed file may expand this many times, and to at least
/// `MIN_DECOMPRESSED_LIMIT`: a damaged file cannot take all memory.
const MAX_EXPANSION: u64 = 64;
const MIN_DECOMPRESSED_LIMIT: u64 = 64 << 20;
/// Suffix of a block directory being written.
pub const TEMP_SUFFIX: &str = ".tmp";
const ZSTD_LEVEL: i32 = 3;

/// What went wrong with a block.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block {path}: cannot {action}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("block {path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// A query read past its memory budget.
    #[error(transparent)]
    Budget(#[from] BudgetError),
}

impl BlockError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.display().to_string();
        move |source| Self::Io { action, path, source }
    }

    fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }
}

/// What a head hands over to become a block. Row `series` fields are ids
/// of `series`.
#[derive(Debug, Clone, Copy)]
pub struct BlockContents<'a> {
    pub series: &'a SeriesIndex,
    pub symbols: &'a Symbols,
    pub rows: &'a [ProfileRow],
}

/// Writes a block to `parent/<id>` (see the module docs). `sidecars` are
/// small files written into the directory with it, so they appear
/// atomically with the block, but are not part of it: `meta.json` does not
/// list them and they are never uploaded.
pub fn write_block(
    parent: &Path,
    id: Ulid,
    contents: BlockContents<'_>,
    sidecars: &[(&str, &[u8])],
) -> Result<BlockMeta, BlockError> {
    let origin = Origin {
        writer: "ingester",
        compaction: Compaction {
            level: 1,
            sources: vec![id],
        },
        downsample: None,
    };
    write_with_origin(parent, id, contents, sidecars, origin)
}

/// Who wrote a block (its meta's `source`), of which level-1 blocks it
/// holds the data, and whether it is downsampled.
pub(crate) struct Origin {
    pub writer: &'static str,
    pub compaction: Compaction,
    pub downsample: Option<Downsample>,
}

/// [`write_block`], for any writer.
pub(crate) fn write_with_origin(
    parent: &Path,
    id: Ulid,
    contents: BlockContents<'_>,
    sidecars: &[(&str, &[u8])],
    origin: Origin,
) -> Result<BlockMeta, BlockError> {
    let target = parent.join(id.to_string());
    let temp = parent.join(format!("{id}{TEMP_SUFFIX}"));
    create_dir_all_synced(parent)?;
    if temp.exists() {
        fs::remove_dir_all(&temp).map_err(BlockError::io("remove stale directory", &temp))?;
    }
    fs::create_dir(&temp).map_err(BlockError::io("create directory", &temp))?;

    // Series in label order, only those with rows; rows by series, time, ID.
    let BlockContents { series, symbols, rows } = contents;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut has_rows = vec![false; series.len()];
    for row in rows {
        if let Some(flag) = has_rows.get_mut(row.series as usize) {
            *flag = true;
        } else {
            return Err(BlockError::corrupt(
                &temp,
                format!("a row refers to missing series {}", row.series),
            ));
        }
    }
    let mut series_order: Vec<u32> = (0..series.len() as u32).filter(|&id| has_rows[id as usize]).collect();
    series_order.sort_by(|&a, &b| series.get(a).labels.as_slice().cmp(series.get(b).labels.as_slice()));
    let mut block_id_of = vec![u32::MAX; series.len()];
    for (block_id, &head_id) in series_order.iter().enumerate() {
        block_id_of[head_id as usize] = block_id as u32;
    }
    order.sort_unstable_by_key(|&row| {
        let row = &rows[row];
        (block_id_of[row.series as usize], row.time_nanos, row.id)
    });

    // The rows in table order, with their block series.
    let table: Vec<(u32, &ProfileRow)> = order
        .iter()
        .map(|&row| (block_id_of[rows[row].series as usize], &rows[row]))
        .collect();
    let mut files = Vec::new();
    let profiles_path = temp.join(profiles::FILE);
    let written = profiles::write(&profiles_path, table.iter().copied(), &[])
        .map_err(|err| parquet_error(err, &profiles_path))?;
    files.push(finish_table(written, &profiles_path)?);

    // Per block series: rows, and the summary of its profiles.
    let mut summaries = vec![SeriesSummary::default(); series_order.len()];
    let mut samples = 0u64;
    for row in rows {
        summaries[block_id_of[row.series as usize] as usize].add(row.id, row.total);
        samples += row.values.len() as u64;
    }
    let mut entries = Vec::with_capacity(series_order.len());
    let mut next_row = 0u32;
    for (&head_id, summary) in series_order.iter().zip(&summaries) {
        let count = summary.profiles as u32;
        entries.push(format::SeriesEntry::new(
            series.get(head_id),
            next_row,
            count,
            summary.id_sum,
            summary.total,
        ));
        next_row += count;
    }
    if let Some(downsample) = &origin.downsample {
        let path = temp.join(downsampled::FILE);
        downsampled::check_resolutions(&downsample.resolutions_ms)
            .map_err(|reason| BlockError::corrupt(&temp, reason))?;
        let (level_starts, merged) = downsampled::merged_rows(&downsample.resolutions_ms, &table, &mut entries);
        let written = profiles::write(&path, merged, &level_starts).map_err(|err| parquet_error(err, &path))?;
        files.push(finish_table(written, &path)?);
    }
    let series_bytes = format::SeriesFile { series: entries }.encode_to_vec();
    files.push(write_compressed(&temp, SERIES_FILE, &series_bytes)?);
    files.push(write_compressed(
        &temp,
        SYMBOLS_FILE,
        &symbols.to_file().encode_to_vec(),
    )?);
    files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));

    let min_time = rows.iter().map(ProfileRow::time_ms).min().unwrap_or(0);
    let max_time = rows.iter().map(ProfileRow::time_ms).max().unwrap_or(0);
    let meta = BlockMeta {
        version: FORMAT_VERSION,
        id,
        min_time,
        max_time,
        stats: BlockStats {
            num_series: series_order.len() as u64,
            num_profiles: rows.len() as u64,
            num_samples: samples,
        },
        files,
        source: origin.writer.to_owned(),
        compaction: origin.compaction,
        downsample: origin.downsample,
    };
    for (name, bytes) in sidecars {
        write_synced(&temp.join(name), bytes)?;
    }
    let meta_bytes = serde_json::to_vec_pretty(&meta).map_err(|err| BlockError::corrupt(&temp, err.to_string()))?;
    write_synced(&temp.join(META_FILE), &meta_bytes)?;
    sync_dir(&temp)?;
    if target.exists() {
        fs::remove_dir_all(&target).map_err(BlockError::io("replace directory", &target))?;
    }
    fs::rename(&temp, &target).map_err(BlockError::io("rename into place", &temp))?;
    sync_dir(parent)?;
    Ok(meta)
}

/// The entry of a written Parquet table, synced.
fn finish_table(table: profiles::Checksummed, path: &Path) -> Result<BlockFile, BlockError> {
    table.file.sync_all().map_err(BlockError::io("sync", path))?;
    Ok(BlockFile {
        rel_path: path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size_bytes: table.len,
        crc32: table.hasher.finalize(),
        uncompressed_bytes: 0,
    })
}

fn parquet_error(err: parquet::errors::ParquetError, path: &Path) -> BlockError {
    match err {
        parquet::errors::ParquetError::External(inner) => match inner.downcast::<io::Error>() {
            Ok(io) => BlockError::io("write", path)(*io),
            Err(other) => BlockError::corrupt(path, other.to_string()),
        },
        other => BlockError::corrupt(path, other.to_string()),
    }
}

/// Creates `dir` and any missing parents, syncing the directory each new
/// one was added to, so a block renamed into it survives a power loss.
fn create_dir_all_synced(dir: &Path) -> Result<(), BlockError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        create_dir_all_synced(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(err) => return Err(BlockError::io("create directory", dir)(err)),
    }
    match dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BlockError> {
    let mut file = File::create(path).map_err(BlockError::io("create", path))?;
    file.write_all(bytes).map_err(BlockError::io("write", path))?;
    file.sync_all().map_err(BlockError::io("sync", path))
}

fn sync_dir(dir: &Path) -> Result<(), BlockError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(BlockError::io("sync directory", dir))
}

fn write_compressed(dir: &Path, name: &str, bytes: &[u8]) -> Result<BlockFile, BlockError> {
    let path = dir.join(name);
    let compressed = zstd::bulk::compress(bytes, ZSTD_LEVEL).map_err(BlockError::io("compress", &path))?;
    write_synced(&path, &compressed)?;
    Ok(BlockFile {
        rel_path: name.to_owned(),
        size_bytes: compressed.len() as u64,
        crc32: crc32fast::hash(&compressed),
        uncompressed_bytes: bytes.len() as u64,
    })
}

/// Reads a block's `meta.json`.
pub fn read_meta(dir: &Path) -> Result<BlockMeta, BlockError> {
    let path = dir.join(META_FILE);
    let bytes = fs::read(&path).map_err(BlockError::io("read", &path))?;
    parse_meta(&path, &bytes)
}

/// Parses `meta.json` bytes (`path` names them in errors).
pub fn parse_meta(path: &Path, bytes: &[u8]) -> Result<BlockMeta, BlockError> {
    let meta: BlockMeta = serde_json::from_slice(bytes).map_err(|err| BlockError::corrupt(path, err.to_string()))?;
    check_meta(path, &meta)?;
    Ok(meta)
}

/// Checks a meta read from `path`: a format this build reads, and only
/// the files a block has.
pub(crate) fn check_meta(path: &Path, meta: &BlockMeta) -> Result<(), BlockError> {
    if meta.version != FORMAT_VERSION {
        return Err(BlockError::corrupt(
            path,
            format!("format version {} (this build reads {FORMAT_VERSION})", meta.version),
        ));
    }
    // Only the files this format has: a path from the meta never leaves
    // the block's directory.
    if let Some(file) = meta
        .files
        .iter()
        .find(|file| !BLOCK_FILES.contains(&file.rel_path.as_str()))
    {
        return Err(BlockError::corrupt(
            path,
            format!("lists {:?}, which is not a file of a block", file.rel_path),
        ));
    }
    Ok(())
}

/// An open block on local disk: its meta and series index in memory; the
/// profiles table and symbols are read per query.
#[derive(Debug)]
pub struct Block {
    dir: PathBuf,
    meta: BlockMeta,
    series: SeriesIndex,
    /// Per series (by block id), its rows in the profiles table.
    rows: Vec<Range<u32>>,
    /// Per series (by block id), the summary of all its profiles, when
    /// the block keeps them.
    summaries: Vec<Option<SeriesSummary>>,
    /// Set when the profiles table stays in object storage (read by
    /// ranges) and only the other files are in `dir`.
    remote_profiles: Option<RemoteFile>,
    /// Its downsampled table, when it has one.
    downsampled: Option<Downsampled>,
    /// Where its decoded symbols are kept between merges, when anywhere.
    symbol_cache: Option<Arc<SymbolCache>>,
}

impl Block {
    /// Opens the block in `dir`: checks the meta and that every file is
    /// there with its size, and loads the series index.
    pub fn open(dir: &Path) -> Result<Self, BlockError> {
        Self::open_with(dir, None)
    }

    /// Opens a block whose files but the profiles table are in `dir`; the
    /// table is read by ranges from `profiles`.
    pub(crate) fn open_with(dir: &Path, remote_profiles: Option<RemoteFile>) -> Result<Self, BlockError> {
        let meta = read_meta(dir)?;
        for file in meta
            .files
            .iter()
            .filter(|file| remote_profiles.is_none() || file.rel_path != profiles::FILE)
        {
            let path = dir.join(&file.rel_path);
            let size = fs::metadata(&path).map_err(BlockError::io("read", &path))?.len();
            if size != file.size_bytes {
                return Err(BlockError::corrupt(
                    &path,
                    format!("is {size} bytes, meta.json says {}", file.size_bytes),
                ));
            }
        }
        let series_path = dir.join(SERIES_FILE);
        let mut series_file = format::SeriesFile::decode(read_checked(dir, &meta, SERIES_FILE)?.as_slice())
            .map_err(|err| BlockError::corrupt(&series_path, err.to_string()))?;
        let mut series = SeriesIndex::new();
        let mut rows = Vec::with_capacity(series_file.series.len());
        let mut summaries = Vec::with_capacity(series_file.series.len());
        let mut next_row = 0u64;
        for entry in &series_file.series {
            if u64::from(entry.first_row) != next_row {
                return Err(BlockError::corrupt(&series_path, "series rows are not consecutive"));
            }
            next_row += u64::from(entry.row_count);
            rows.push(entry.first_row..entry.first_row.saturating_add(entry.row_count));
            summaries.push(entry.summary());
            series.push(entry.series());
        }
        let has_table = meta.files.iter().any(|file| file.rel_path == downsampled::FILE);
        if has_table != meta.downsample.is_some() {
            return Err(BlockError::corrupt(
                dir,
                "meta.json lists a downsampled table without resolutions, or resolutions without the table",
            ));
        }
        let downsampled = match &meta.downsample {
            Some(downsample) => Some(
                Downsampled::new(&downsample.resolutions_ms, &mut series_file.series, &rows)
                    .map_err(|reason| BlockError::corrupt(&series_path, reason))?,
            ),
            None => None,
        };
        if next_row != meta.stats.num_profiles {
            return Err(BlockError::corrupt(
                &series_path,
                format!(
                    "series hold {next_row} rows, meta.json says {}",
                    meta.stats.num_profiles
                ),
            ));
        }
        Ok(Self {
            dir: dir.to_owned(),
            meta,
            series,
            rows,
            summaries,
            remote_profiles,
            downsampled,
            symbol_cache: None,
        })
    }

    /// Keeps its decoded symbols in `cache` between merges.
    pub fn with_symbol_cache(mut self, cache: Arc<SymbolCache>) -> Self {
        self.symbol_cache = Some(cache);
        self
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The series and their label index.
    pub fn series(&self) -> &SeriesIndex {
        &self.series
    }

    /// Checks the size and CRC-32 of every local file against
    /// `meta.json`.
    pub fn verify(&self) -> Result<(), BlockError> {
        for file in self
            .meta
            .files
            .iter()
            .filter(|file| self.remote_profiles.is_none() || file.rel_path != profiles::FILE)
        {
            read_checked(&self.dir, &self.meta, &file.rel_path)?;
        }
        Ok(())
    }

    /// The symbol tables: from its symbol cache, or read, checked and
    /// decoded.
    pub fn symbols(&self) -> Result<Arc<Symbols>, BlockError> {
        match &self.symbol_cache {
            Some(cache) => cache.get_or_load(&self.dir, || self.read_symbols()),
            None => self.read_symbols().map(Arc::new),
        }
    }

    fn read_symbols(&self) -> Result<Symbols, BlockError> {
        let path = self.dir.join(SYMBOLS_FILE);
        let file = format::SymbolsFile::decode(read_checked(&self.dir, &self.meta, SYMBOLS_FILE)?.as_slice())
            .map_err(|err| BlockError::corrupt(&path, err.to_string()))?;
        Symbols::from_file(file).map_err(|reason| BlockError::corrupt(&path, reason))
    }

    /// Calls `each` with every row, its samples and span IDs included, in
    /// series then time order.
    pub(crate) fn visit_rows(&self, each: impl FnMut(profiles::RowView<'_>)) -> Result<(), BlockError> {
        let ranges = self
            .rows
            .iter()
            .map(|rows| rows.start as usize..rows.end as usize)
            .filter(|range| !range.is_empty())
            .collect();
        self.read_rows(ranges, profiles::Want::SamplesAndSpans, each)
    }

    /// Row ranges of the series matching `query`.
    fn ranges(&self, query: &ProfileQuery) -> (Vec<u32>, Vec<Range<usize>>) {
        let selected: Vec<u32> = self
            .series
            .selected(&[query.full_selector()], query.range)
            .iter()
            .filter(|&id| {
                query.series.is_none()
                    || (id < self.series.len() as u32 && query.wants_series(self.series.get(id).fingerprint))
            })
            .collect();
        let ranges = selected
            .iter()
            .map(|&id| {
                let rows = &self.rows[id as usize];
                rows.start as usize..rows.end as usize
            })
            .filter(|range| !range.is_empty())
            .collect();
        (selected, ranges)
    }

    fn read_rows(
        &self,
        ranges: Vec<Range<usize>>,
        want: profiles::Want,
        each: impl FnMut(profiles::RowView<'_>),
    ) -> Result<(), BlockError> {
        let path = self.dir.join(profiles::FILE);
        let read = match &self.remote_profiles {
            None => {
                if ranges.is_empty() {
                    return Ok(());
                }
                let file = File::open(&path).map_err(BlockError::io("open", &path))?;
                profiles::read(file, ranges, want, each)
            }
            Some(remote) => {
                let path = PathBuf::from(remote.path().as_ref());
                return profiles::read(remote.clone(), ranges, want, each)
                    .map_err(|reason| BlockError::corrupt(&path, reason));
            }
        };
        read.map_err(|reason| BlockError::corrupt(&path, reason))
    }

    /// Calls `visit` for each profile matching `query`, in series then
    /// time order.
    pub fn visit_profiles(
        &self,
        query: &ProfileQuery,
        mut visit: impl FnMut(SelectedProfile),
    ) -> Result<(), BlockError> {
        let (_, ranges) = self.ranges(query);
        let mut bad_series = None;
        self.read_rows(ranges, profiles::Want::Totals, |row| {
            if !query.range.contains(row.time_nanos.div_euclid(1_000_000)) {
                return;
            }
            let Some(series) = (row.series < self.series.len() as u32).then(|| self.series.get(row.series)) else {
                bad_series = Some(row.series);
                return;
            };
            visit(SelectedProfile {
                id: row.id,
                labels: series.labels.clone(),
                fingerprint: series.fingerprint,
                time_nanos: row.time_nanos,
                total: row.total,
            });
        })?;
        match bad_series {
            Some(series) => Err(BlockError::corrupt(
                &self.dir.join(profiles::FILE),
                format!("a row refers to missing series {series}"),
            )),
            None => Ok(()),
        }
    }

    /// Adds the series of the profiles matching `query` to `summaries`:
    /// from the kept summaries when the range covers the whole block,
    /// else from its rows.
    pub fn summarize_into(&self, query: &ProfileQuery, summaries: &mut SeriesSummaries) -> Result<(), BlockError> {
        let covered = query.range.contains(self.meta.min_time) && query.range.contains(self.meta.max_time);
        let kept: Option<Vec<SeriesSummary>> = if covered {
            let (selected, _) = self.ranges(query);
            selected
                .iter()
                .map(|&id| self.summaries.get(id as usize).copied().flatten())
                .collect()
        } else {
            None
        };
        match kept {
            Some(kept) => {
                for summary in kept.iter().filter(|summary| summary.profiles > 0) {
                    summary_of(summaries, summary.fingerprint).absorb(summary);
                }
                Ok(())
            }
            _ => self.visit_profiles(query, |profile| {
                summary_of(summaries, profile.fingerprint).add(profile.id, profile.total);
            }),
        }
    }

    /// Adds the stacks of the profiles matching `query` (only those in
    /// `only`, when given; only the samples of `spans`, when given) to
    /// `tree`, by function name.
    pub fn merge_into(
        &self,
        query: &ProfileQuery,
        only: Option<&HashSet<ProfileId>>,
        spans: Option<&HashSet<u64>>,
        tree: &mut Tree,
    ) -> Result<(), BlockError> {
        let (selected, ranges) = self.ranges(query);
        if ranges.is_empty() {
            return Ok(());
        }
        if let (Some(downsampled), None, None) = (&self.downsampled, only, spans) {
            return self.merge_downsampled(query, downsampled, &selected, tree);
        }
        let want = match spans {
            Some(_) => profiles::Want::SamplesAndSpans,
            None => profiles::Want::Samples,
        };
        let mut by_stack: HashMap<u32, i64> = HashMap::new();
        self.read_rows(ranges, want, |row| {
            if !query.range.contains(row.time_nanos.div_euclid(1_000_000))
                || only.is_some_and(|only| !only.contains(&row.id))
            {
                return;
            }
            add_samples(&mut by_stack, row.stacks, row.values, row.span_ids, spans);
        })?;
        self.symbols()?.add_to_tree(by_stack, tree)?;
        Ok(())
    }

    /// [`Block::merge_into`] of every profile of `selected` (the series of
    /// `query`): whole buckets in the range from the downsampled
    /// table, the rest of the range from the profiles table.
    fn merge_downsampled(
        &self,
        query: &ProfileQuery,
        downsampled: &Downsampled,
        selected: &[u32],
        tree: &mut Tree,
    ) -> Result<(), BlockError> {
        let range = query.range;
        let plan = downsampled.plan(range, selected, &self.rows);
        let mut by_stack: HashMap<u32, i64> = HashMap::new();
        downsampled::add_buckets(&self.dir, &plan.buckets, &mut by_stack)?;
        self.read_rows(plan.profiles, profiles::Want::Samples, |row| {
            if range.contains(row.time_nanos.div_euclid(1_000_000)) {
                add_samples(&mut by_stack, row.stacks, row.values, None, None);
            }
        })?;
        self.symbols()?.add_to_tree(by_stack, tree)?;
        Ok(())
    }
}

/// Reads a whole file of the block, checking size and CRC-32 against the
/// meta; zstd-compressed files come back decompressed.
fn read_checked(dir: &Path, meta: &BlockMeta, name: &str) -> Result<Vec<u8>, BlockError> {
    let path = dir.join(name);
    let Some(expected) = meta.files.iter().find(|file| file.rel_path == name) else {
        return Err(BlockError::corrupt(&path, "is not listed in meta.json"));
    };
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(BlockError::io("read", &path))?;
    if bytes.len() as u64 != expected.size_bytes || crc32fast::hash(&bytes) != expected.crc32 {
        return Err(BlockError::corrupt(&path, "size or checksum differs from meta.json"));
    }
    if name.ends_with(".zst") {
        let limit = (bytes.len() as u64)
            .saturating_mul(MAX_EXPANSION)
            .max(MIN_DECOMPRESSED_LIMIT);
        let mut decoded = Vec::new();
        zstd::stream::read::Decoder::new(bytes.as_slice())
            .and_then(|decoder| decoder.take(limit + 1).read_to_end(&mut decoded))
            .map_err(|err| BlockError::corrupt(&path, format!("cannot decompress: {err}")))?;
        if decoded.len() as u64 > limit {
            return Err(BlockError::corrupt(
                &path,
                format!("decompresses to more than {limit} bytes"),
            ));
        }
        return Ok(decoded);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
