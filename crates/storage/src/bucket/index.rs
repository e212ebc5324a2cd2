//! The bucket index, `<tenant>/bucket-index.json.gz`: the metas of a
//! tenant's blocks as the compactor last listed them, so a reader learns
//! them in one request instead of a listing and a `meta.json` per block.
//!
//! An index is a snapshot, trusted only while it cannot mislead
//! ([`BucketIndex::usable_at`]): every block it names was unmarked when
//! it was written and stays in the bucket at least the deletion delay
//! after that; a block uploaded since is missing from it, and is found on
//! the ingester that uploaded it, which keeps it `query_store_after` after
//! the upload. Readers trust an index at most half of either time old,
//! leaving the other half for a query to finish.

use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{Bucket, BucketError, store_error};
use crate::BlockMeta;
use crate::block::check_meta;

/// The index format this build writes and reads.
pub const INDEX_VERSION: u32 = 1;
const INDEX_FILE: &str = "bucket-index.json.gz";
/// Most bytes an index may unpack to (a block's meta takes about 1 KiB).
const MAX_INDEX_BYTES: usize = 256 << 20;

/// A tenant's blocks as of one listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketIndex {
    pub version: u32,
    /// When the listing began (ms since the epoch): blocks uploaded since
    /// may be missing.
    pub updated_at_ms: i64,
    /// How long its writer waits between marking a block for deletion and
    /// deleting it: every block named stays at least this long after
    /// `updated_at_ms`.
    pub deletion_delay_ms: i64,
    /// The complete blocks not marked for deletion, by ID.
    pub blocks: Vec<BlockMeta>,
}

impl BucketIndex {
    /// Whether a reader may take it for a listing at `now_ms`, allowing it
    /// to be at most `max_stale_ms` old: younger than that and than half
    /// the deletion delay, so every block it names stays in the bucket for
    /// at least the other half, time for a query to read it.
    pub fn usable_at(&self, now_ms: i64, max_stale_ms: i64) -> bool {
        now_ms.saturating_sub(self.updated_at_ms) < max_stale_ms.min(self.deletion_delay_ms / 2)
    }
}

/// What reading a tenant's index found.
#[derive(Debug)]
pub enum IndexRead {
    /// The tenant has no index.
    Missing,
    /// The index is the one the reader had (same entity tag).
    Unchanged,
    /// The index, and its entity tag for the next read.
    Read { index: BucketIndex, etag: Option<String> },
}

impl Bucket {
    fn index_path(tenant: &str) -> ObjectPath {
        ObjectPath::from(format!("{tenant}/{INDEX_FILE}"))
    }

    /// Writes (replaces) the tenant's index; readers see the old one or
    /// the new one whole.
    pub async fn write_index(&self, tenant: &str, index: &BucketIndex) -> Result<(), BucketError> {
        use std::io::Write as _;
        let path = Self::index_path(tenant);
        let json = serde_json::to_vec(index).map_err(|err| BucketError::Index {
            path: path.to_string(),
            reason: err.to_string(),
        })?;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let packed = encoder
            .write_all(&json)
            .and_then(|()| encoder.finish())
            .map_err(|source| BucketError::Local {
                path: path.to_string(),
                source,
            })?;
        self.store
            .put(&path, PutPayload::from(packed))
            .await
            .map_err(store_error("write", &path))?;
        Ok(())
    }

    /// Reads the tenant's index unless it is still the one tagged
    /// `known_etag`. An index that does not parse, is of another version
    /// or names a block this build cannot read is an error.
    pub async fn read_index(&self, tenant: &str, known_etag: Option<&str>) -> Result<IndexRead, BucketError> {
        let path = Self::index_path(tenant);
        let options = GetOptions {
            if_none_match: known_etag.map(str::to_owned),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&path, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(IndexRead::Missing),
            Err(object_store::Error::NotModified { .. }) => return Ok(IndexRead::Unchanged),
            Err(source) => return Err(store_error("read", &path)(source)),
        };
        let etag = result.meta.e_tag.clone();
        let packed = result.bytes().await.map_err(store_error("read", &path))?;
        let bad = |reason: String| BucketError::Index {
            path: path.to_string(),
            reason,
        };
        let json = flamedb_model::gzip::gunzip(&packed, MAX_INDEX_BYTES).map_err(|err| bad(err.to_string()))?;
        let index: BucketIndex = serde_json::from_slice(&json).map_err(|err| bad(err.to_string()))?;
        if index.version != INDEX_VERSION {
            return Err(bad(format!(
                "version {} (this build reads {INDEX_VERSION})",
                index.version
            )));
        }
        for meta in &index.blocks {
            check_meta(std::path::Path::new(path.as_ref()), meta)?;
        }
        Ok(IndexRead::Read { index, etag })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::BucketConfig;

    fn index(updated_at_ms: i64) -> BucketIndex {
        BucketIndex {
            version: INDEX_VERSION,
            updated_at_ms,
            deletion_delay_ms: 1_000,
            blocks: Vec::new(),
        }
    }

    #[test]
    fn usable_while_younger_than_both_bounds() {
        let written = index(10_000);
        assert!(written.usable_at(10_000, 500));
        assert!(written.usable_at(10_499, 500));
        assert!(!written.usable_at(10_500, 500));
        // Half the deletion delay bounds it too: a block it names may be
        // gone after the delay, and a query needs time to read it.
        assert!(written.usable_at(10_499, 60_000));
        assert!(!written.usable_at(10_500, 60_000));
        // No deletion delay, or no staleness allowed: never.
        assert!(!index(10_000).usable_at(10_000, 0));
        let undelayed = BucketIndex {
            deletion_delay_ms: 0,
            ..index(10_000)
        };
        assert!(!undelayed.usable_at(10_000, 60_000));
    }

    #[tokio::test]
    async fn written_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Bucket::new(&BucketConfig::Filesystem {
            dir: dir.path().to_owned(),
        })
        .unwrap();
        assert!(matches!(
            bucket.read_index("t", None).await.unwrap(),
            IndexRead::Missing
        ));

        let written = index(42);
        bucket.write_index("t", &written).await.unwrap();
        let IndexRead::Read { index: read, etag } = bucket.read_index("t", None).await.unwrap() else {
            panic!("index not read");
        };
        assert_eq!(read, written);
        let etag = etag.unwrap();
        assert!(matches!(
            bucket.read_index("t", Some(&etag)).await.unwrap(),
            IndexRead::Unchanged
        ));
        // Rewritten: read again, with a new tag.
        bucket.write_index("t", &index(43)).await.unwrap();
        let IndexRead::Read {
            index: read,
            etag: newer,
        } = bucket.read_index("t", Some(&etag)).await.unwrap()
        else {
            panic!("a rewritten index must be read again");
        };
        assert_eq!(read.updated_at_ms, 43);
        assert_ne!(newer.unwrap(), etag);

        // Another version, or not an index at all: errors, never a listing.
        let future = BucketIndex {
            version: INDEX_VERSION + 1,
            ..index(44)
        };
        bucket.write_index("t", &future).await.unwrap();
        let err = bucket.read_index("t", None).await.unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        std::fs::write(dir.path().join("t").join(INDEX_FILE), b"not gzip").unwrap();
        let err = bucket.read_index("t", None).await.unwrap_err();
        assert!(matches!(err, BucketError::Index { .. }), "{err}");
    }
}
