//! The ingester's blocks on local disk: `<data_dir>/blocks/<tenant>/<id>/`.
//! Each carries a flush note (a sidecar file, never uploaded) saying which
//! WAL records it holds, so a restart does not replay them into heads
//! again, and an `uploaded` marker once the shipper has put it in object
//! storage.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use flamedb_storage::block::TEMP_SUFFIX;
use flamedb_storage::{Block, BlockError};
use flamedb_wal::{Position, SegmentId};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

/// The sidecar naming the WAL records a block holds.
pub(crate) const FLUSH_NOTE: &str = "flushed.json";
/// Created once the block is in object storage.
const UPLOADED_MARKER: &str = "uploaded";

/// Which WAL records a block holds: the profiles of its tenant with a
/// time in `[window_start_ms, window_end_ms)` from the records between its
/// first and last position. A record is never split between heads of one
/// window (heads are sealed between records), so the heads of a window
/// hold disjoint runs of records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FlushNote {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub first: WalPosition,
    pub last: WalPosition,
}

/// A WAL position as the note stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WalPosition {
    pub segment: u64,
    pub offset: u64,
}

impl From<Position> for WalPosition {
    fn from(position: Position) -> Self {
        Self {
            segment: position.segment.0,
            offset: position.offset,
        }
    }
}

impl From<WalPosition> for Position {
    fn from(position: WalPosition) -> Self {
        Self {
            segment: SegmentId(position.segment),
            offset: position.offset,
        }
    }
}

impl FlushNote {
    pub(crate) fn new(window_start_ms: i64, window_end_ms: i64, first: Position, last: Position) -> Self {
        Self {
            window_start_ms,
            window_end_ms,
            first: first.into(),
            last: last.into(),
        }
    }

    /// Whether the block holds the profile at `time_ms` of the record at
    /// `position`.
    pub(crate) fn covers(&self, position: Position, time_ms: i64) -> bool {
        self.window_start_ms <= time_ms
            && time_ms < self.window_end_ms
            && Position::from(self.first) <= position
            && position <= Position::from(self.last)
    }
}

/// A flushed block of one tenant. Deleting it is deferred to when the
/// last query holding it lets go.
#[derive(Debug)]
pub(crate) struct LocalBlock {
    pub block: Block,
    pub note: FlushNote,
    /// When it was uploaded (ms since the epoch); 0 while it is not.
    uploaded_at_ms: AtomicI64,
    delete_when_dropped: AtomicBool,
}

impl LocalBlock {
    pub(crate) fn new(block: Block, note: FlushNote) -> Self {
        // The marker's modification time is when the upload was recorded.
        let uploaded_at_ms = fs::metadata(block.dir().join(UPLOADED_MARKER))
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX).max(1));
        Self {
            block,
            note,
            uploaded_at_ms: AtomicI64::new(uploaded_at_ms),
            delete_when_dropped: AtomicBool::new(false),
        }
    }

    /// Deletes the block's directory once nothing holds it any more.
    pub(crate) fn delete_when_dropped(&self) {
        self.delete_when_dropped.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_uploaded(&self) -> bool {
        self.uploaded_at_ms() != 0
    }

    /// When it was uploaded (ms since the epoch); 0 while it is not.
    pub(crate) fn uploaded_at_ms(&self) -> i64 {
        self.uploaded_at_ms.load(Ordering::Relaxed)
    }

    /// Records (durably) that the block is in object storage. Blocking
    /// I/O.
    pub(crate) fn mark_uploaded(&self) -> io::Result<()> {
        let marker = self.block.dir().join(UPLOADED_MARKER);
        fs::File::create(&marker)?.sync_all()?;
        fs::File::open(self.block.dir())?.sync_all()?;
        let now_ms = flamedb_model::now_nanos() / 1_000_000;
        self.uploaded_at_ms.store(now_ms.max(1), Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for LocalBlock {
    fn drop(&mut self) {
        if !self.delete_when_dropped.load(Ordering::Relaxed) {
            return;
        }
        // Renamed first: a crash midway leaves a `.tmp` directory, which
        // the next start removes, never a block with files missing.
        let dir = self.block.dir();
        let mut doomed = dir.as_os_str().to_owned();
        doomed.push(TEMP_SUFFIX);
        let removed = fs::rename(dir, &doomed).and_then(|()| fs::remove_dir_all(&doomed));
        match removed {
            Ok(()) => tracing::debug!(block = %self.block.meta().id, "local block files removed"),
            Err(err) => error!(dir = %dir.display(), error = %err, "cannot delete a local block"),
        }
    }
}

/// The directory of a tenant's blocks.
pub(crate) fn tenant_dir(blocks_dir: &Path, tenant: &str) -> PathBuf {
    blocks_dir.join(tenant)
}

/// Opens every block under `blocks_dir`, by tenant; removes half-written
/// ones (`<id>.tmp`). A block that cannot be opened is logged and left
/// alone: no other block's note covers its records, so they are replayed
/// from the WAL if it still has them.
pub(crate) fn load(blocks_dir: &Path) -> Result<Vec<(String, LocalBlock)>, BlockError> {
    let mut blocks = Vec::new();
    let tenants = match fs::read_dir(blocks_dir) {
        Ok(tenants) => tenants,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(blocks),
        Err(source) => {
            return Err(BlockError::Io {
                action: "list",
                path: blocks_dir.display().to_string(),
                source,
            });
        }
    };
    for tenant in tenants.flatten() {
        let Some(tenant_name) = tenant.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(entries) = fs::read_dir(tenant.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(TEMP_SUFFIX) {
                info!(dir = %path.display(), "removing a half-written block");
                if let Err(err) = fs::remove_dir_all(&path) {
                    error!(dir = %path.display(), error = %err, "cannot remove a half-written block");
                }
                continue;
            }
            match open(&path) {
                Ok(block) => blocks.push((tenant_name.clone(), block)),
                Err(err) => error!(dir = %path.display(), error = %err, "cannot open a local block; leaving it alone"),
            }
        }
    }
    blocks.sort_by_key(|(_, block)| block.block.meta().id);
    Ok(blocks)
}

fn open(dir: &Path) -> Result<LocalBlock, BlockError> {
    let block = Block::open(dir)?;
    let note_path = dir.join(FLUSH_NOTE);
    let note = fs::read(&note_path)
        .map_err(|source| BlockError::Io {
            action: "read",
            path: note_path.display().to_string(),
            source,
        })
        .and_then(|bytes| {
            serde_json::from_slice(&bytes).map_err(|err| BlockError::Corrupt {
                path: note_path.display().to_string(),
                reason: err.to_string(),
            })
        })?;
    Ok(LocalBlock::new(block, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u64, offset: u64) -> Position {
        Position {
            segment: SegmentId(segment),
            offset,
        }
    }

    #[test]
    fn test_a_note_covers_its_window_and_its_run_of_records_only() {
        let note = FlushNote::new(0, 1_000, at(2, 100), at(3, 50));
        assert!(note.covers(at(2, 100), 0));
        assert!(note.covers(at(3, 50), 999));
        // Outside the window.
        assert!(!note.covers(at(2, 200), 1_000));
        assert!(!note.covers(at(2, 200), -1));
        // Records before the head began (an older head of the same
        // window, maybe never flushed) and after it was sealed.
        assert!(!note.covers(at(2, 99), 10));
        assert!(!note.covers(at(1, 500), 10));
        assert!(!note.covers(at(3, 51), 10));
    }
}
