//! A block's profiles table read in place in object storage, by byte
//! ranges: the Parquet footer, then only the pages of the row groups a
//! query needs. Pages are small (64 KiB), and a read asks for them one by
//! one, column by column: each request fetches at least a window of 1
//! MiB, and the last few windows serve the next pages of their columns,
//! so a dense read makes about as many requests as it reads MiB, and a
//! sparse one skips what it does not need. Reads block on the async
//! runtime, so they must run where blocking is fine (as every block read
//! does).

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

/// Bytes fetched from a read position: enough for any page header.
const READ_AHEAD: u64 = 64 << 10;
/// Least bytes one request fetches.
const FETCH_WINDOW: u64 = 1 << 20;
/// Windows a reader keeps: about one per column it reads.
const WINDOWS: usize = 8;

/// One object, read by ranges. Each clone keeps its own windows.
#[derive(Debug)]
pub(crate) struct RemoteFile {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    len: u64,
    runtime: tokio::runtime::Handle,
    /// Fetched byte ranges (start, bytes), the most recent last.
    windows: Mutex<VecDeque<(u64, Bytes)>>,
}

impl Clone for RemoteFile {
    fn clone(&self) -> Self {
        Self::new(self.store.clone(), self.path.clone(), self.len, self.runtime.clone())
    }
}

impl RemoteFile {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        len: u64,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            store,
            path,
            len,
            runtime,
            windows: Mutex::new(VecDeque::with_capacity(WINDOWS)),
        }
    }

    pub(crate) fn path(&self) -> &ObjectPath {
        &self.path
    }

    /// `length` bytes from `start` (fewer at the end of the object): from
    /// a window fetched before, or from a new one.
    fn read(&self, start: u64, length: u64) -> Result<Bytes, ParquetError> {
        let end = start.saturating_add(length).min(self.len);
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let held = windows.iter().find_map(|(from, bytes)| {
            let offset = usize::try_from(start.checked_sub(*from)?).ok()?;
            let until = usize::try_from(end.checked_sub(*from)?).ok()?;
            (offset <= until && until <= bytes.len()).then(|| bytes.slice(offset..until))
        });
        if let Some(bytes) = held {
            return Ok(bytes);
        }
        drop(windows);
        let window = self.fetch(start, length.max(FETCH_WINDOW))?;
        let wanted = usize::try_from(end.saturating_sub(start))
            .unwrap_or(usize::MAX)
            .min(window.len());
        let bytes = window.slice(..wanted);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() == WINDOWS {
            windows.pop_front();
        }
        windows.push_back((start, window));
        Ok(bytes)
    }

    fn fetch(&self, start: u64, length: u64) -> Result<Bytes, ParquetError> {
        let end = start.saturating_add(length).min(self.len);
        if start > end {
            return Err(ParquetError::EOF(format!(
                "{} has {} bytes, asked from {start}",
                self.path, self.len
            )));
        }
        self.runtime
            .block_on(self.store.get_range(&self.path, start..end))
            .map_err(|err| ParquetError::External(Box::new(err)))
    }
}

impl Length for RemoteFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for RemoteFile {
    type T = Cursor<Bytes>;

    /// Parquet reads page headers through this; page data comes through
    /// `get_bytes`.
    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        Ok(Cursor::new(self.read(start, READ_AHEAD)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        let bytes = self.read(start, length as u64)?;
        if bytes.len() != length {
            return Err(ParquetError::EOF(format!(
                "{} ends before {} bytes from {start}",
                self.path, length
            )));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use object_store::memory::InMemory;

    use super::*;

    #[test]
    fn test_reads_through_windows_return_the_object_s_bytes() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = ObjectPath::from("t/table");
        let object: Vec<u8> = (0..3 * FETCH_WINDOW + 123).map(|byte| (byte % 251) as u8).collect();
        runtime.block_on(store.put(&path, object.clone().into())).unwrap();
        let file = RemoteFile::new(store, path, object.len() as u64, runtime.handle().clone());
        let len = object.len() as u64;
        // Pages of several columns, in turn; one across a window's end;
        // one larger than a window; the object's end.
        let reads = [
            (0, 100),
            (FETCH_WINDOW * 2, 5_000),
            (100, 65_536),
            (FETCH_WINDOW * 2 + 5_000, 10),
            (FETCH_WINDOW - 10, 20),
            (10, 2 * FETCH_WINDOW),
            (len - 7, 7),
        ];
        for (start, length) in reads {
            let bytes = file.get_bytes(start, length as usize).unwrap();
            assert_eq!(&bytes[..], &object[start as usize..(start + length) as usize]);
        }
        // Past the end: an error, from a window or not.
        assert!(file.get_bytes(len - 7, 8).is_err());
        assert!(file.get_bytes(len + 1, 1).is_err());
        let header = file.get_read(len - 3).unwrap();
        assert_eq!(header.into_inner().len(), 3);
    }
}
