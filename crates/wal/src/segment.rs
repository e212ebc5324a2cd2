//! Segment files: naming and listing.

use std::fmt;
use std::path::{Path, PathBuf};

/// A segment's number; segments are written in increasing order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u64);

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:010}", self.0)
    }
}

const EXTENSION: &str = "wal";

pub(crate) fn path(dir: &Path, id: SegmentId) -> PathBuf {
    dir.join(format!("{id}.{EXTENSION}"))
}

/// The segments in `dir`, sorted; other files are ignored.
pub(crate) fn list(dir: &Path) -> std::io::Result<Vec<SegmentId>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(&format!(".{EXTENSION}")) else {
            continue;
        };
        if let Ok(number) = stem.parse::<u64>() {
            ids.push(SegmentId(number));
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes a directory entry change (create, rename, delete) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
