//! Snapshots of the delta state (the last totals of cumulative series) at
//! WAL segment boundaries: `<data_dir>/delta/<segment:010>.snapshot` holds
//! the state after every record of the segments before `segment`. The WAL
//! is only ever trimmed to a segment that has one, so replay can start
//! from the oldest segment left with the state it had then, and compute
//! the same differences as when the records first arrived. A WAL that was
//! never trimmed starts from an empty state.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flamedb_wal::SegmentId;
use prost::Message;

use crate::delta::DeltaSnapshot;

const SUFFIX: &str = ".snapshot";

fn path(dir: &Path, segment: SegmentId) -> PathBuf {
    dir.join(format!("{:010}{SUFFIX}", segment.0))
}

/// Writes the snapshot of `segment`'s start, durably (temporary file,
/// fsync, rename, directory fsync).
pub(crate) fn save(dir: &Path, segment: SegmentId, snapshot: &DeltaSnapshot) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let target = path(dir, segment);
    let temp = target.with_extension("tmp");
    let mut file = fs::File::create(&temp)?;
    file.write_all(&snapshot.encode_to_vec())?;
    file.sync_all()?;
    fs::rename(&temp, &target)?;
    fs::File::open(dir)?.sync_all()
}

/// The segments with a snapshot, oldest first.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<SegmentId>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut segments: Vec<SegmentId> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let id = name.to_str()?.strip_suffix(SUFFIX)?.parse().ok()?;
            Some(SegmentId(id))
        })
        .collect();
    segments.sort();
    Ok(segments)
}

/// The snapshot of `segment`'s start, if there is one.
pub(crate) fn load(dir: &Path, segment: SegmentId) -> io::Result<Option<DeltaSnapshot>> {
    match fs::read(path(dir, segment)) {
        Ok(bytes) => DeltaSnapshot::decode(bytes.as_slice())
            .map(Some)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Deletes the snapshots of segments outside `keep` (and any left half
/// written by a crash).
pub(crate) fn prune(dir: &Path, keep: std::ops::Range<SegmentId>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match name.strip_suffix(SUFFIX).map(str::parse::<u64>) {
            Some(Ok(segment)) => !keep.contains(&SegmentId(segment)),
            _ => name.ends_with(".tmp"),
        };
        if stale {
            match fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(())
}
