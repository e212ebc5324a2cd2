//! The writing side: one thread owns the open segment, takes appends from a
//! bounded queue, writes every queued record in one go, fsyncs once, and
//! only then answers each appender (group commit). A failed write or fsync
//! answers every record of the batch with an error and cuts the segment
//! back to its last durable length, so nothing unacknowledged is replayed.
//!
//! Durable records are handed, in position order, to a second thread that
//! runs each append's completion ([`Wal::append_then`]) before answering:
//! what a caller does with its record happens in WAL order, whatever the
//! scheduling of the callers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::record::{self, MAX_RECORD_BYTES};
use crate::replay::Replay;
use crate::segment::{self, SegmentId};

/// Where a record starts: its segment and byte offset. Positions order
/// records as they were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: SegmentId,
    pub offset: u64,
}

/// WAL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    pub dir: PathBuf,
    /// A segment that grows past this size is closed and the next begun.
    pub segment_bytes: u64,
    /// Appends waiting for the WAL thread; more wait for room.
    pub queue_capacity: usize,
    /// Replay skips corrupt records (losing them) instead of stopping at
    /// the first one.
    pub skip_corrupt_records: bool,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 * 1024 * 1024,
            queue_capacity: 1024,
            skip_corrupt_records: false,
        }
    }
}

/// Why the WAL could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("WAL: cannot {action} {path}: {message}")]
    Io {
        action: &'static str,
        path: String,
        message: String,
        kind: std::io::ErrorKind,
    },
    #[error("WAL: record of {size} bytes is larger than the limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    #[error("WAL: closed")]
    Closed,
    #[error("WAL: the record is durable but could not be applied ({message}); it is applied when the WAL is replayed")]
    Applying { message: String },
    /// Acknowledged data does not read back: replay stopped there.
    #[error(
        "WAL: corrupt segment {path} at byte {offset}: {reason}; replay stopped and the file is kept as it is (see the runbook: restore it, or restart with -ingester.wal.skip-corrupt-records to skip the record and keep every later one)"
    )]
    Corrupt {
        path: String,
        offset: u64,
        reason: &'static str,
    },
}

impl WalError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.display().to_string(),
            message: source.to_string(),
            kind: source.kind(),
        }
    }
}

/// Counters of the writing side.
#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    failed_writes: AtomicU64,
    segment: AtomicU64,
}

/// A snapshot of the WAL's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records: u64,
    pub bytes: u64,
    /// fsyncs done; records per fsync shows how well commits group.
    pub fsyncs: u64,
    pub failed_writes: u64,
    /// The segment being written.
    pub segment: SegmentId,
}

/// Runs once a record is durable, on the completion thread, in WAL order.
pub type Completion = Box<dyn FnOnce(Position) + Send>;

type Reply = oneshot::Sender<Result<Position, WalError>>;

enum Request {
    Append {
        payload: Vec<u8>,
        then: Option<Completion>,
        reply: Reply,
    },
    Rotate {
        then: Option<Box<dyn FnOnce(SegmentId) + Send>>,
        reply: RotateReply,
    },
    RemoveBefore {
        segment: SegmentId,
        reply: oneshot::Sender<Result<usize, WalError>>,
    },
    Barrier {
        then: Box<dyn FnOnce() + Send>,
        reply: oneshot::Sender<Result<(), WalError>>,
    },
}

/// An open WAL. Dropping it (or [`Wal::close`]) stops its thread after the
/// queued appends are written.
#[derive(Debug)]
pub struct Wal {
    queue: mpsc::Sender<Request>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    dir: PathBuf,
}

impl Wal {
    /// Opens the WAL in `config.dir` (created if missing): the records
    /// already there come back through the [`Replay`], and new appends go
    /// to a new segment after them.
    pub fn open(config: WalConfig) -> Result<(Self, Replay), WalError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|source| WalError::io("create directory", &dir, source))?;
        let existing = segment::list(&dir).map_err(|source| WalError::io("list", &dir, source))?;
        let next = SegmentId(existing.last().map_or(1, |last| last.0 + 1));
        let writer = SegmentWriter::create(&dir, next)?;
        let counters = Arc::new(Counters::default());
        counters.segment.store(next.0, Ordering::Relaxed);
        let (queue, requests) = mpsc::channel(config.queue_capacity.max(1));
        let (completions, completed) = std::sync::mpsc::channel::<Done>();
        let completer = std::thread::Builder::new()
            .name("wal-completion".to_owned())
            .spawn(move || {
                for done in completed {
                    match done {
                        Done::Appended((then, position, reply)) => {
                            let completed = match then {
                                Some(then) => run_completion(move || then(position)),
                                None => Ok(()),
                            };
                            let _ = reply.send(completed.map(|()| position));
                        }
                        Done::Rotated(then, reply, rotated) => {
                            let answer = match (rotated, then) {
                                (Ok(segment), Some(then)) => run_completion(move || then(segment)).map(|()| segment),
                                (rotated, _) => rotated,
                            };
                            let _ = reply.send(answer);
                        }
                        Done::Barrier(then, reply) => {
                            let _ = reply.send(run_completion(then));
                        }
                    }
                }
            })
            .map_err(|source| WalError::io("start the completion thread for", &dir, source))?;
        let thread_counters = counters.clone();
        let thread_dir = dir.clone();
        let writer_thread = std::thread::Builder::new()
            .name("wal".to_owned())
            .spawn(move || {
                run(
                    thread_dir,
                    config.segment_bytes,
                    writer,
                    requests,
                    &completions,
                    &thread_counters,
                );
            })
            .map_err(|source| WalError::io("start the writer thread for", &dir, source))?;
        let replay = Replay::new(dir.clone(), existing, config.skip_corrupt_records);
        Ok((
            Self {
                queue,
                threads: vec![writer_thread, completer],
                counters,
                dir,
            },
            replay,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a record; returns once it is durable (fsync'd), with where
    /// it starts.
    pub async fn append(&self, payload: Vec<u8>) -> Result<Position, WalError> {
        self.append_inner(payload, None).await
    }

    /// Appends a record; once it is durable, runs `then` with its position
    /// (on the WAL's completion thread, in WAL order, also if this future
    /// is dropped), then returns. `then` does not run if the append fails;
    /// if it panics, the append answers [`WalError::Applying`] (the record
    /// stays durable and is replayed at the next start).
    pub async fn append_then(
        &self,
        payload: Vec<u8>,
        then: impl FnOnce(Position) + Send + 'static,
    ) -> Result<Position, WalError> {
        self.append_inner(payload, Some(Box::new(then))).await
    }

    async fn append_inner(&self, payload: Vec<u8>, then: Option<Completion>) -> Result<Position, WalError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(WalError::RecordTooLarge {
                size: payload.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Append { payload, then, reply })
            .await
            .map_err(|_| WalError::Closed)?;
        answer.await.map_err(|_| WalError::Closed)?
    }

    /// Closes the current segment and starts the next; returns the new
    /// segment. Every record appended before is in an older segment, and
    /// its completion has run.
    pub async fn rotate(&self) -> Result<SegmentId, WalError> {
        self.rotate_inner(None).await
    }

    /// Like [`Wal::rotate`], and runs `then` with the new segment on the
    /// completion thread exactly at the boundary: after the completions of
    /// every record of the older segments, before any of the new one.
    pub async fn rotate_then(&self, then: impl FnOnce(SegmentId) + Send + 'static) -> Result<SegmentId, WalError> {
        self.rotate_inner(Some(Box::new(then))).await
    }

    async fn rotate_inner(&self, then: Option<Box<dyn FnOnce(SegmentId) + Send>>) -> Result<SegmentId, WalError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Rotate { then, reply })
            .await
            .map_err(|_| WalError::Closed)?;
        answer.await.map_err(|_| WalError::Closed)?
    }

    /// Runs `then` on the completion thread once the completions of every
    /// record appended before have run, and before any later one: a point
    /// in WAL order where no record is half-applied.
    pub async fn barrier(&self, then: impl FnOnce() + Send + 'static) -> Result<(), WalError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::Barrier {
                then: Box::new(then),
                reply,
            })
            .await
            .map_err(|_| WalError::Closed)?;
        answer.await.map_err(|_| WalError::Closed)?
    }

    /// Deletes the segments older than `segment` (never the one being
    /// written); returns how many were deleted.
    pub async fn remove_segments_before(&self, segment: SegmentId) -> Result<usize, WalError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request::RemoveBefore { segment, reply })
            .await
            .map_err(|_| WalError::Closed)?;
        answer.await.map_err(|_| WalError::Closed)?
    }

    pub fn stats(&self) -> WalStats {
        WalStats {
            records: self.counters.records.load(Ordering::Relaxed),
            bytes: self.counters.bytes.load(Ordering::Relaxed),
            fsyncs: self.counters.fsyncs.load(Ordering::Relaxed),
            failed_writes: self.counters.failed_writes.load(Ordering::Relaxed),
            segment: SegmentId(self.counters.segment.load(Ordering::Relaxed)),
        }
    }

    /// Stops the writer thread after the queued appends; waits for it.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Closing the queue ends the writer's loop, which closes the
        // completion thread's channel in turn.
        let (closed, _) = mpsc::channel(1);
        self.queue = closed;
        let current = std::thread::current().id();
        for thread in self.threads.drain(..) {
            // Dropped by a completion on one of its own threads: that
            // thread ends once this returns; joining it would deadlock.
            if thread.thread().id() != current {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The open segment.
struct SegmentWriter {
    id: SegmentId,
    path: PathBuf,
    file: File,
    /// Length known to be durable.
    durable_len: u64,
}

impl SegmentWriter {
    fn create(dir: &Path, id: SegmentId) -> Result<Self, WalError> {
        let path = segment::path(dir, id);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| WalError::io("create segment", &path, source))?;
        let durable_len = file
            .metadata()
            .map_err(|source| WalError::io("read segment size", &path, source))?
            .len();
        segment::sync_dir(dir).map_err(|source| WalError::io("sync directory", dir, source))?;
        Ok(Self {
            id,
            path,
            file,
            durable_len,
        })
    }

    /// Writes and fsyncs `bytes`; on failure cuts the file back to its last
    /// durable length.
    fn write_durably(&mut self, bytes: &[u8]) -> Result<(), WalError> {
        let written = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| WalError::io("write to segment", &self.path, source));
        match written {
            Ok(()) => {
                self.durable_len += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                if let Err(truncate) = self.file.set_len(self.durable_len).and_then(|()| self.file.sync_all()) {
                    tracing::error!(
                        segment = %self.path.display(),
                        error = %truncate,
                        "cannot cut a failed WAL write back; the next write starts a new segment"
                    );
                }
                Err(err)
            }
        }
    }
}

type Pending = (Option<Completion>, Position, Reply);
type RotateReply = oneshot::Sender<Result<SegmentId, WalError>>;

/// What the completion thread answers, in order.
enum Done {
    Appended(Pending),
    /// Answered after the completions of every earlier record (running the
    /// rotation's own completion first).
    Rotated(
        Option<Box<dyn FnOnce(SegmentId) + Send>>,
        RotateReply,
        Result<SegmentId, WalError>,
    ),
    Barrier(Box<dyn FnOnce() + Send>, oneshot::Sender<Result<(), WalError>>),
}

/// Runs a completion; a panic in it is an error for its caller, never the
/// end of the completion thread.
fn run_completion(then: impl FnOnce()) -> Result<(), WalError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(then)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        tracing::error!(error = %message, "a WAL completion failed");
        WalError::Applying { message }
    })
}

type Completions = std::sync::mpsc::Sender<Done>;

fn run(
    dir: PathBuf,
    segment_bytes: u64,
    mut writer: SegmentWriter,
    mut requests: mpsc::Receiver<Request>,
    completions: &Completions,
    counters: &Counters,
) {
    let mut batch = Batch::default();
    let mut broken = false;
    while let Some(first) = requests.blocking_recv() {
        let mut next = Some(first);
        // Take everything queued: one write and one fsync for all of it.
        while let Some(request) = next.take().or_else(|| requests.try_recv().ok()) {
            match request {
                Request::Append { payload, then, reply } => {
                    // Never write after a failed write that may have left
                    // bytes behind: start a new segment first, or refuse.
                    if broken {
                        match rotate(&dir, &mut writer, counters) {
                            Ok(_) => broken = false,
                            Err(err) => {
                                let _ = reply.send(Err(err));
                                continue;
                            }
                        }
                    }
                    let position = Position {
                        segment: writer.id,
                        offset: writer.durable_len + batch.buffer.len() as u64,
                    };
                    record::encode(&payload, &mut batch.buffer);
                    batch.appends.push((then, position, reply));
                    counters
                        .bytes
                        .fetch_add(record::framed_len(&payload), Ordering::Relaxed);
                    if batch.buffer.len() as u64 >= segment_bytes {
                        break;
                    }
                }
                Request::Rotate { then, reply } => {
                    broken |= batch.commit(&mut writer, completions, counters);
                    let rotated = rotate(&dir, &mut writer, counters);
                    broken = broken && rotated.is_err();
                    if let Err(std::sync::mpsc::SendError(Done::Rotated(_, reply, _))) =
                        completions.send(Done::Rotated(then, reply, rotated))
                    {
                        let _ = reply.send(Err(WalError::Closed));
                    }
                }
                Request::RemoveBefore { segment, reply } => {
                    let _ = reply.send(remove_before(&dir, segment.min(writer.id)));
                }
                Request::Barrier { then, reply } => {
                    broken |= batch.commit(&mut writer, completions, counters);
                    if let Err(std::sync::mpsc::SendError(Done::Barrier(_, reply))) =
                        completions.send(Done::Barrier(then, reply))
                    {
                        let _ = reply.send(Err(WalError::Closed));
                    }
                }
            }
        }
        broken |= batch.commit(&mut writer, completions, counters);
        if writer.durable_len >= segment_bytes || broken {
            match rotate(&dir, &mut writer, counters) {
                Ok(_) => broken = false,
                Err(err) => tracing::error!(error = %err, "cannot start a new WAL segment"),
            }
        }
    }
    let _ = writer.file.sync_all();
}

/// Records encoded but not yet written, and who waits for them.
#[derive(Default)]
struct Batch {
    buffer: Vec<u8>,
    appends: Vec<Pending>,
}

impl Batch {
    /// Writes the buffered records durably and hands them to the completion
    /// thread in order, or answers them with the error; returns whether the
    /// write failed.
    fn commit(&mut self, writer: &mut SegmentWriter, completions: &Completions, counters: &Counters) -> bool {
        if self.appends.is_empty() {
            return false;
        }
        let result = writer.write_durably(&self.buffer);
        self.buffer.clear();
        counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                counters.records.fetch_add(self.appends.len() as u64, Ordering::Relaxed);
                for pending in self.appends.drain(..) {
                    // Without the completion thread the record cannot be
                    // applied: not an acknowledgement (it is replayed at
                    // the next start).
                    if let Err(std::sync::mpsc::SendError(Done::Appended((_, _, reply)))) =
                        completions.send(Done::Appended(pending))
                    {
                        let _ = reply.send(Err(WalError::Closed));
                    }
                }
                false
            }
            Err(err) => {
                counters
                    .failed_writes
                    .fetch_add(self.appends.len() as u64, Ordering::Relaxed);
                for (_, _, reply) in self.appends.drain(..) {
                    let _ = reply.send(Err(err.clone()));
                }
                true
            }
        }
    }
}

fn rotate(dir: &Path, writer: &mut SegmentWriter, counters: &Counters) -> Result<SegmentId, WalError> {
    let next = SegmentId(writer.id.0 + 1);
    let fresh = SegmentWriter::create(dir, next)?;
    let old = std::mem::replace(writer, fresh);
    let _ = old.file.sync_all();
    counters.segment.store(next.0, Ordering::Relaxed);
    Ok(next)
}

fn remove_before(dir: &Path, before: SegmentId) -> Result<usize, WalError> {
    let segments = segment::list(dir).map_err(|source| WalError::io("list", dir, source))?;
    let mut removed = 0;
    for id in segments.into_iter().filter(|id| *id < before) {
        let path = segment::path(dir, id);
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(WalError::io("remove segment", &path, source)),
        }
    }
    if removed > 0 {
        segment::sync_dir(dir).map_err(|source| WalError::io("sync directory", dir, source))?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
