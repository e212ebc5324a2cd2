//! The ingester's blocks on local disk: `<data_dir>/blocks/<tenant>/<id>/`.
//! Each carries a flush note (a sidecar file, never uploaded) saying which
//! WAL records it holds, so a restart does not replay them into heads
//! again, and an `uploaded` marker once the shipper has put it in object
//! storage.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use flamedb_storage::block::TEMP_SUFFIX;
use flamedb_storage::{Block, BlockError};
use flamedb_wal::{Position, SegmentId};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

/// The sidecar naming the WAL records a block holds.
pub(crate) const FLUSH_NOTE: &str = "flushed.json";
/// Created once the block is in object storage.
const UPLOADED_MARKER: &str = "uploaded";

/// Which WAL records a block holds: those of `tenant` with a profile time
/// in `[window_start_ms, window_end_ms)`, up to `last_position`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FlushNote {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub last_segment: Option<u64>,
    pub last_offset: Option<u64>,
}

impl FlushNote {
    pub(crate) fn new(window_start_ms: i64, window_end_ms: i64, last: Option<Position>) -> Self {
        Self {
            window_start_ms,
            window_end_ms,
            last_segment: last.map(|p| p.segment.0),
            last_offset: last.map(|p| p.offset),
        }
    }

    pub(crate) fn last_position(&self) -> Option<Position> {
        Some(Position {
            segment: SegmentId(self.last_segment?),
            offset: self.last_offset?,
        })
    }

    /// Whether the record at `position` with a profile at `time_ms` is in
    /// the block.
    pub(crate) fn covers(&self, position: Position, time_ms: i64) -> bool {
        self.window_start_ms <= time_ms
            && time_ms < self.window_end_ms
            && self.last_position().is_some_and(|last| position <= last)
    }
}

/// A flushed block of one tenant.
#[derive(Debug)]
pub(crate) struct LocalBlock {
    pub block: Block,
    pub note: FlushNote,
    uploaded: AtomicBool,
}

impl LocalBlock {
    pub(crate) fn new(block: Block, note: FlushNote) -> Self {
        let uploaded = block.dir().join(UPLOADED_MARKER).exists();
        Self {
            block,
            note,
            uploaded: AtomicBool::new(uploaded),
        }
    }

    pub(crate) fn is_uploaded(&self) -> bool {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Records (durably) that the block is in object storage.
    pub(crate) fn mark_uploaded(&self) -> io::Result<()> {
        let marker = self.block.dir().join(UPLOADED_MARKER);
        fs::File::create(&marker)?.sync_all()?;
        fs::File::open(self.block.dir())?.sync_all()?;
        self.uploaded.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// The directory of a tenant's blocks.
pub(crate) fn tenant_dir(blocks_dir: &Path, tenant: &str) -> PathBuf {
    blocks_dir.join(tenant)
}

/// Opens every block under `blocks_dir`, by tenant; removes half-written
/// ones (`<id>.tmp`). A block that cannot be opened is logged and left
/// alone: its records are then replayed from the WAL if it still has them.
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
