//! Reading back the records of existing segments, in order. A record that
//! is cut short or fails its checksum ends its segment: the file is
//! truncated there (a torn tail from a crash mid-write, or corruption), the
//! repair is counted, and replay goes on with the next segment.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read};
use std::path::PathBuf;

use crate::record::{HEADER_BYTES, MAX_RECORD_BYTES, checksum};
use crate::segment::{self, SegmentId};
use crate::writer::{Position, WalError};

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub position: Position,
    pub payload: Vec<u8>,
}

/// What replay found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    /// Segments whose tail was cut off (torn or corrupt records).
    pub repaired_segments: u64,
    /// Bytes cut off by those repairs.
    pub discarded_bytes: u64,
}

/// The records of the segments that existed when the WAL was opened.
#[derive(Debug)]
pub struct Replay {
    dir: PathBuf,
    /// The oldest segment, if the WAL had any.
    first: Option<SegmentId>,
    segments: std::vec::IntoIter<SegmentId>,
    current: Option<(SegmentId, BufReader<File>, u64, u64)>,
    stats: ReplayStats,
}

impl Replay {
    pub(crate) fn new(dir: PathBuf, segments: Vec<SegmentId>) -> Self {
        Self {
            dir,
            first: segments.first().copied(),
            segments: segments.into_iter(),
            current: None,
            stats: ReplayStats::default(),
        }
    }

    /// The oldest segment replayed, if the WAL had any: where the records
    /// begin.
    pub fn first_segment(&self) -> Option<SegmentId> {
        self.first
    }

    /// What replay found so far (all of it once the iterator is done).
    pub fn stats(&self) -> ReplayStats {
        self.stats
    }

    fn open_next(&mut self) -> Result<bool, WalError> {
        let Some(id) = self.segments.next() else {
            return Ok(false);
        };
        let path = segment::path(&self.dir, id);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Removed since listing: nothing to replay there.
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(true),
            Err(source) => return Err(WalError::io("open segment", &path, source)),
        };
        let length = file
            .metadata()
            .map_err(|source| WalError::io("read segment size", &path, source))?
            .len();
        self.stats.segments += 1;
        self.current = Some((id, BufReader::with_capacity(1 << 20, file), 0, length));
        Ok(true)
    }

    /// Cuts the current segment at `offset`, where its last good record ends.
    fn repair(&mut self, id: SegmentId, offset: u64, length: u64) -> Result<(), WalError> {
        let path = segment::path(&self.dir, id);
        tracing::warn!(
            segment = %path.display(),
            offset,
            discarded_bytes = length - offset,
            "cutting off a torn or corrupt WAL tail"
        );
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| WalError::io("open segment for repair", &path, source))?;
        file.set_len(offset)
            .and_then(|()| file.sync_all())
            .map_err(|source| WalError::io("truncate segment", &path, source))?;
        self.stats.repaired_segments += 1;
        self.stats.discarded_bytes += length - offset;
        Ok(())
    }

    fn read_record(&mut self) -> Result<Option<Record>, WalError> {
        let Some((id, reader, offset, length)) = self.current.as_mut() else {
            return Ok(None);
        };
        let (id, start, length) = (*id, *offset, *length);
        if start == length {
            self.current = None;
            return Ok(None);
        }
        let remaining = length - start;
        let mut header = [0u8; HEADER_BYTES];
        let valid = remaining >= HEADER_BYTES as u64 && reader.read_exact(&mut header).is_ok() && {
            let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            size <= MAX_RECORD_BYTES && (HEADER_BYTES + size) as u64 <= remaining
        };
        if !valid {
            self.current = None;
            self.repair(id, start, length)?;
            return Ok(None);
        }
        let size_bytes = [header[0], header[1], header[2], header[3]];
        let size = u32::from_le_bytes(size_bytes) as usize;
        let expected = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut payload = vec![0u8; size];
        let read = reader.read_exact(&mut payload);
        if read.is_err() || checksum(size_bytes, &payload) != expected {
            self.current = None;
            self.repair(id, start, length)?;
            return Ok(None);
        }
        let end = start + (HEADER_BYTES + size) as u64;
        if let Some((_, _, offset, _)) = self.current.as_mut() {
            *offset = end;
        }
        self.stats.records += 1;
        self.stats.bytes += end - start;
        Ok(Some(Record {
            position: Position {
                segment: id,
                offset: start,
            },
            payload,
        }))
    }
}

impl Iterator for Replay {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                match self.open_next() {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(err) => return Some(Err(err)),
                }
            }
            match self.read_record() {
                Ok(Some(record)) => return Some(Ok(record)),
                Ok(None) => {}
                Err(err) => return Some(Err(err)),
            }
        }
    }
}
