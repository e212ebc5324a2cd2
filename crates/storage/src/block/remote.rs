//! A block's profiles table read in place in object storage, by byte
//! ranges: the Parquet footer, then only the pages of the row groups a
//! query needs. Reads block on the async runtime, so they must run where
//! blocking is fine (as every block read does).

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};

/// Bytes fetched from a read position: enough for any page header.
const READ_AHEAD: u64 = 64 << 10;

/// One object, read by ranges.
#[derive(Debug, Clone)]
pub(crate) struct RemoteFile {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    len: u64,
    runtime: tokio::runtime::Handle,
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
        }
    }

    pub(crate) fn path(&self) -> &ObjectPath {
        &self.path
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
        Ok(Cursor::new(self.fetch(start, READ_AHEAD)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        let bytes = self.fetch(start, length as u64)?;
        if bytes.len() != length {
            return Err(ParquetError::EOF(format!(
                "{} ends before {} bytes from {start}",
                self.path, length
            )));
        }
        Ok(bytes)
    }
}
