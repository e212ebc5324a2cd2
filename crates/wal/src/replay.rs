//! Reading back the records of existing segments, in order.
//!
//! Only a crash mid-write can leave a bad record behind legitimately, and
//! only as the last thing written: a bad record with no good record after
//! it, in the last segment holding data, is a torn tail (a batch whose
//! fsync never returned, so never acknowledged) and is cut off. (A power
//! loss can also land the pages of an unsynced batch out of order, so a
//! torn batch may show good records after a bad one: that is reported as
//! corruption, and the operator decides.) A bad
//! record anywhere else is corruption of acknowledged data: replay stops
//! with
//! [`WalError::Corrupt`] naming the segment and offset and leaves the file
//! as it is, unless the WAL was opened to skip corrupt records, which then
//! skips to the next good record and keeps every later one. Read errors
//! always stop replay.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
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
    /// Segments whose torn tail was cut off.
    pub repaired_segments: u64,
    /// Bytes cut off by those repairs.
    pub discarded_bytes: u64,
    /// Corrupt records skipped (only when skipping was asked for).
    pub skipped_records: u64,
    /// Bytes skipped with them.
    pub skipped_bytes: u64,
}

/// The segment being read: its ID, reader, next offset and length.
#[derive(Debug)]
struct Current {
    id: SegmentId,
    reader: BufReader<File>,
    offset: u64,
    length: u64,
    /// The largest record read from it so far, in bytes.
    largest: usize,
}

/// The records of the segments that existed when the WAL was opened.
#[derive(Debug)]
pub struct Replay {
    dir: PathBuf,
    segments: Vec<SegmentId>,
    /// Index in `segments` of the next segment to open.
    next: usize,
    current: Option<Current>,
    skip_corrupt: bool,
    /// Replay stopped at an error: nothing more comes.
    stopped: bool,
    stats: ReplayStats,
}

/// A record that does not read back whole.
enum Bad {
    /// It runs past the end of the segment.
    Incomplete,
    /// It fits in the segment but its checksum does not match.
    Checksum,
}

impl Replay {
    pub(crate) fn new(dir: PathBuf, segments: Vec<SegmentId>, skip_corrupt: bool) -> Self {
        Self {
            dir,
            segments,
            next: 0,
            current: None,
            skip_corrupt,
            stopped: false,
            stats: ReplayStats::default(),
        }
    }

    /// The oldest segment replayed, if the WAL had any: where the records
    /// begin.
    pub fn first_segment(&self) -> Option<SegmentId> {
        self.segments.first().copied()
    }

    /// What replay found so far (all of it once the iterator is done).
    pub fn stats(&self) -> ReplayStats {
        self.stats
    }

    fn open_next(&mut self) -> Result<bool, WalError> {
        let Some(&id) = self.segments.get(self.next) else {
            return Ok(false);
        };
        self.next += 1;
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
        self.current = Some(Current {
            id,
            reader: BufReader::with_capacity(1 << 20, file),
            offset: 0,
            length,
            largest: 0,
        });
        Ok(true)
    }

    /// Whether a segment after the current one holds any data.
    fn later_segments_hold_data(&self) -> Result<bool, WalError> {
        for &id in &self.segments[self.next..] {
            let path = segment::path(&self.dir, id);
            match std::fs::metadata(&path) {
                Ok(metadata) if metadata.len() > 0 => return Ok(true),
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(WalError::io("read segment size", &path, source)),
            }
        }
        Ok(false)
    }

    /// Cuts segment `id` at `offset`, where its last good record ends.
    fn cut_torn_tail(&mut self, id: SegmentId, offset: u64, length: u64) -> Result<(), WalError> {
        let path = segment::path(&self.dir, id);
        tracing::warn!(
            segment = %path.display(),
            offset,
            discarded_bytes = length - offset,
            "cutting off a torn WAL tail (a record written in part when the process stopped)"
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

    /// Reads the record at the current offset; `Ok(Err(bad))` when it does
    /// not read back whole.
    fn read_at_offset(current: &mut Current, path: &std::path::Path) -> Result<Result<Vec<u8>, Bad>, WalError> {
        let remaining = current.length - current.offset;
        if remaining < HEADER_BYTES as u64 {
            return Ok(Err(Bad::Incomplete));
        }
        let mut header = [0u8; HEADER_BYTES];
        current
            .reader
            .read_exact(&mut header)
            .map_err(|source| WalError::io("read segment", path, source))?;
        let size_bytes = [header[0], header[1], header[2], header[3]];
        let size = u32::from_le_bytes(size_bytes) as usize;
        let end = (HEADER_BYTES + size) as u64;
        if end > remaining {
            return Ok(Err(Bad::Incomplete));
        }
        if size > MAX_RECORD_BYTES {
            return Ok(Err(Bad::Checksum));
        }
        let expected = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut payload = vec![0u8; size];
        current
            .reader
            .read_exact(&mut payload)
            .map_err(|source| WalError::io("read segment", path, source))?;
        if checksum(size_bytes, &payload) != expected {
            return Ok(Err(Bad::Checksum));
        }
        Ok(Ok(payload))
    }

    fn read_record(&mut self) -> Result<Option<Record>, WalError> {
        let Some(current) = self.current.as_mut() else {
            return Ok(None);
        };
        if current.offset == current.length {
            self.current = None;
            return Ok(None);
        }
        let path = segment::path(&self.dir, current.id);
        let start = current.offset;
        match Self::read_at_offset(current, &path)? {
            Ok(payload) => {
                let end = start + (HEADER_BYTES + payload.len()) as u64;
                current.offset = end;
                current.largest = current.largest.max(payload.len());
                self.stats.records += 1;
                self.stats.bytes += end - start;
                Ok(Some(Record {
                    position: Position {
                        segment: current.id,
                        offset: start,
                    },
                    payload,
                }))
            }
            Err(bad) => {
                self.bad_record(bad, start)?;
                Ok(None)
            }
        }
    }

    /// A record at `start` of the current segment does not read back:
    /// cut a torn tail, skip corruption when asked to, else stop.
    fn bad_record(&mut self, bad: Bad, start: u64) -> Result<(), WalError> {
        let Some(current) = self.current.take() else {
            return Ok(());
        };
        let path = segment::path(&self.dir, current.id);
        let resume = next_good_record(&path, start + 1, current.length, current.largest)?;
        if resume.is_none() && !self.later_segments_hold_data()? {
            return self.cut_torn_tail(current.id, start, current.length);
        }
        let reason = match bad {
            Bad::Incomplete => "a record that runs past the end of its segment, with good records after it",
            Bad::Checksum => "a record whose checksum does not match, with good records after it",
        };
        if !self.skip_corrupt {
            return Err(WalError::Corrupt {
                path: path.display().to_string(),
                offset: start,
                reason,
            });
        }
        let skipped = resume.unwrap_or(current.length) - start;
        tracing::error!(
            segment = %path.display(),
            offset = start,
            skipped_bytes = skipped,
            reason,
            "skipping a corrupt WAL record (-ingester.wal.skip-corrupt-records); what it held is lost"
        );
        self.stats.skipped_records += 1;
        self.stats.skipped_bytes += skipped;
        if let Some(resume) = resume {
            let mut file = File::open(&path).map_err(|source| WalError::io("open segment", &path, source))?;
            file.seek(SeekFrom::Start(resume))
                .map_err(|source| WalError::io("seek in segment", &path, source))?;
            self.current = Some(Current {
                id: current.id,
                reader: BufReader::with_capacity(1 << 20, file),
                offset: resume,
                length: current.length,
                largest: current.largest,
            });
        }
        Ok(())
    }
}

/// The offset of the first record at or after `from` that reads back
/// whole and is followed by the end of the segment or another record that
/// does (so chance bytes that pass a checksum are not taken for one), if
/// any: where replay resumes after a corrupt record. Reads the rest of the
/// segment into memory (at most one segment); candidates longer than
/// `largest` (the largest record read from the segment, or 1 MiB) are not
/// checksummed, so a scan stays linear in practice.
fn next_good_record(path: &std::path::Path, from: u64, length: u64, largest: usize) -> Result<Option<u64>, WalError> {
    let mut file = File::open(path).map_err(|source| WalError::io("open segment", path, source))?;
    file.seek(SeekFrom::Start(from))
        .map_err(|source| WalError::io("seek in segment", path, source))?;
    let mut rest = Vec::new();
    file.take(length.saturating_sub(from))
        .read_to_end(&mut rest)
        .map_err(|source| WalError::io("read segment", path, source))?;
    let largest = largest.max(1 << 20);
    let record_end = |at: usize| -> Option<usize> {
        let header = rest.get(at..at + HEADER_BYTES)?;
        let size_bytes = [header[0], header[1], header[2], header[3]];
        let size = u32::from_le_bytes(size_bytes) as usize;
        if size > largest {
            return None;
        }
        let expected = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let payload = rest.get(at + HEADER_BYTES..at + HEADER_BYTES + size)?;
        (checksum(size_bytes, payload) == expected).then_some(at + HEADER_BYTES + size)
    };
    for at in 0..rest.len() {
        let Some(end) = record_end(at) else { continue };
        if end == rest.len() || record_end(end).is_some() {
            return Ok(Some(from + at as u64));
        }
    }
    Ok(None)
}

impl Iterator for Replay {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.stopped {
            if self.current.is_none() {
                match self.open_next() {
                    Ok(true) => continue,
                    Ok(false) => return None,
                    Err(err) => {
                        self.stopped = true;
                        return Some(Err(err));
                    }
                }
            }
            match self.read_record() {
                Ok(Some(record)) => return Some(Ok(record)),
                Ok(None) => {}
                Err(err) => {
                    self.stopped = true;
                    return Some(Err(err));
                }
            }
        }
        None
    }
}
