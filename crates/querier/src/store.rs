//! Blocks in object storage, for ranges older than the ingesters keep.
//! A query lists the tenant's blocks; of those overlapping its range, the
//! meta, series index, symbols and downsampled table are downloaded into a
//! local cache
//! (bounded: least recently used blocks go first; their decoded symbols
//! stay in memory within a bound of their own), while the profiles
//! table is read in place by byte ranges, only the row groups and pages a
//! query needs. A block another one supersedes is not read; of the others,
//! the querier counts each profile ID once.
//!
//! The tenant's blocks are learnt from its bucket index, written by the
//! compactor, while the index is young enough to trust
//! ([`BucketIndex::usable_at`]; at most half `query_store_after` old, as
//! the ingesters keep what they uploaded that long); otherwise, and when
//! an index names a block that is gone, from a listing of the bucket.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flamedb_api::{ErrorCode, RpcError};
use flamedb_model::budget::RequestBudget;
use flamedb_model::{ProfileId, Tree, parse_selector};
use flamedb_ring::now_ms;
use flamedb_storage::block::{PROFILES_FILE, TEMP_SUFFIX};
use flamedb_storage::{
    Block, BlockError, BlockMeta, Bucket, BucketIndex, IndexRead, ProfileQuery, SymbolCache, TimeRange, Ulid,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::Mutex as AsyncMutex;
use tracing::{debug, warn};

use crate::querier::ListedProfile;

/// Longest wait for a bucket listing.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for opening one block (its small files).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Marks a directory as the querier's block cache.
const CACHE_MARKER: &str = ".flamedb-block-cache";

/// An opened cached block and when it was last used.
struct Cached {
    block: Arc<Block>,
    bytes: u64,
    used: Instant,
}

/// A tenant's bucket index as last read.
struct CachedIndex {
    etag: Option<String>,
    index: Arc<BucketIndex>,
    /// It named a block that is gone: not trusted until it is rewritten.
    distrusted: bool,
}

/// Where a listing of a tenant's blocks came from: `index` or `bucket`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListingSource {
    source: &'static str,
}

/// A tenant's blocks: as its bucket index names them (with the index's
/// entity tag), or as a listing of the bucket found them.
enum BlockListing {
    Indexed(Arc<BucketIndex>, Option<String>),
    Listed(Vec<BlockMeta>),
}

impl BlockListing {
    fn metas(&self) -> &[BlockMeta] {
        match self {
            Self::Indexed(index, _) => &index.blocks,
            Self::Listed(metas) => metas,
        }
    }
}

/// Object storage seen by the querier.
pub struct Store {
    bucket: Bucket,
    dir: PathBuf,
    max_bytes: u64,
    cached: Mutex<HashMap<(String, Ulid), Cached>>,
    /// One download at a time, so a block is fetched once.
    downloading: AsyncMutex<()>,
    /// How old a bucket index may be and still stand for a listing (zero:
    /// always list the bucket).
    index_max_stale: Duration,
    indexes: Mutex<HashMap<String, CachedIndex>>,
    listings: Family<ListingSource, Counter>,
    /// The decoded symbols of cached blocks, within a memory bound.
    symbols: Arc<SymbolCache>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

fn store_error(message: String) -> RpcError {
    RpcError::new(ErrorCode::Unavailable, message)
}

impl Store {
    /// Reads `bucket`, caching up to `max_bytes` of blocks under `dir`
    /// (`<dir>/<tenant>/<block id>`). Blocks a previous run left there are
    /// removed; a non-empty `dir` that is not a block cache is refused, so
    /// a mistyped path never loses anyone's data.
    pub fn new(bucket: Bucket, dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let marker = dir.join(CACHE_MARKER);
        if !marker.exists() {
            if std::fs::read_dir(&dir)?.next().is_some() {
                return Err(std::io::Error::other(format!(
                    "{} is not empty and not a flamedb block cache (no {CACHE_MARKER}); choose an empty directory",
                    dir.display()
                )));
            }
            std::fs::write(&marker, b"flamedb querier block cache: contents are removed at start\n")?;
        }
        for tenant in std::fs::read_dir(&dir)? {
            let tenant = tenant?.path();
            if !tenant.is_dir() {
                continue;
            }
            for block in std::fs::read_dir(&tenant)? {
                let block = block?.path();
                let name = block.file_name().and_then(|name| name.to_str()).unwrap_or_default();
                let id = name.strip_suffix(TEMP_SUFFIX).unwrap_or(name);
                if block.is_dir() && Ulid::from_string(id).is_ok() {
                    std::fs::remove_dir_all(&block)?;
                }
            }
        }
        Ok(Self {
            bucket,
            dir,
            max_bytes,
            cached: Mutex::new(HashMap::new()),
            downloading: AsyncMutex::new(()),
            index_max_stale: Duration::ZERO,
            indexes: Mutex::new(HashMap::new()),
            listings: Family::default(),
            symbols: Arc::new(SymbolCache::new(0)),
        })
    }

    /// Keeps up to `max_bytes` of cached blocks' decoded symbols in memory
    /// between queries.
    pub fn with_symbol_cache(mut self, max_bytes: usize) -> Self {
        self.symbols = Arc::new(SymbolCache::new(max_bytes));
        self
    }

    /// Reads tenants' bucket indexes instead of listing the bucket while
    /// they are at most `max_stale` old (see [`BucketIndex::usable_at`]);
    /// counts listings by where they came from.
    pub fn with_bucket_index(mut self, max_stale: Duration, registry: &mut Registry) -> Self {
        self.index_max_stale = max_stale;
        registry.register(
            "flamedb_querier_block_listings",
            "Listings of a tenant's blocks in object storage, by source: its bucket index, or the bucket (no index fit to use)",
            self.listings.clone(),
        );
        self
    }

    /// Trusts a bucket index at most `bound` old.
    pub(crate) fn cap_index_staleness(&mut self, bound: Duration) {
        self.index_max_stale = self.index_max_stale.min(bound);
    }

    /// The first and last profile time (ms) of each of the tenant's blocks.
    pub(crate) async fn time_spans(&self, tenant: &str) -> Result<Vec<(i64, i64)>, RpcError> {
        let listing = self.list(tenant).await?;
        Ok(listing
            .metas()
            .iter()
            .map(|meta| (meta.min_time, meta.max_time))
            .collect())
    }

    /// The tenant's blocks: from its bucket index when it has one fit to
    /// use, else from a listing of the bucket.
    async fn list(&self, tenant: &str) -> Result<BlockListing, RpcError> {
        if let Some((index, etag)) = self.indexed(tenant).await {
            self.count_listing("index");
            return Ok(BlockListing::Indexed(index, etag));
        }
        Ok(BlockListing::Listed(self.list_bucket(tenant).await?))
    }

    fn count_listing(&self, source: &'static str) {
        self.listings.get_or_create(&ListingSource { source }).inc();
    }

    /// The blocks the tenant's bucket index names and the index's entity
    /// tag, when it has an index young enough to trust (read again only
    /// when it changed).
    async fn indexed(&self, tenant: &str) -> Option<(Arc<BucketIndex>, Option<String>)> {
        if self.index_max_stale.is_zero() {
            return None;
        }
        let known = self.lock_indexes().get(tenant).and_then(|cached| cached.etag.clone());
        let read = tokio::time::timeout(LIST_TIMEOUT, self.bucket.read_index(tenant, known.as_deref())).await;
        let (index, etag) = match read {
            Ok(Ok(IndexRead::Unchanged)) => {
                let indexes = self.lock_indexes();
                let cached = indexes.get(tenant)?;
                if cached.distrusted {
                    return None;
                }
                (cached.index.clone(), cached.etag.clone())
            }
            Ok(Ok(IndexRead::Read { index, etag })) => {
                let index = Arc::new(index);
                let cached = CachedIndex {
                    etag: etag.clone(),
                    index: index.clone(),
                    distrusted: false,
                };
                self.lock_indexes().insert(tenant.to_owned(), cached);
                (index, etag)
            }
            Ok(Ok(IndexRead::Missing)) => {
                self.lock_indexes().remove(tenant);
                return None;
            }
            Ok(Err(err)) => {
                warn!(tenant, error = %err, "cannot read the bucket index; listing the bucket instead");
                return None;
            }
            Err(_) => {
                warn!(tenant, timeout = ?LIST_TIMEOUT, "reading the bucket index timed out; listing the bucket instead");
                return None;
            }
        };
        let max_stale_ms = i64::try_from(self.index_max_stale.as_millis()).unwrap_or(i64::MAX);
        if !index.usable_at(now_ms(), max_stale_ms) {
            debug!(
                tenant,
                updated_at_ms = index.updated_at_ms,
                "the bucket index is too old to trust; listing the bucket"
            );
            return None;
        }
        Some((index, etag))
    }

    fn lock_indexes(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedIndex>> {
        self.indexes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn list_bucket(&self, tenant: &str) -> Result<Vec<BlockMeta>, RpcError> {
        self.count_listing("bucket");
        tokio::time::timeout(LIST_TIMEOUT, self.bucket.list_blocks(tenant))
            .await
            .map_err(|_| {
                store_error(format!(
                    "listing the blocks of tenant {tenant} took over {LIST_TIMEOUT:?}"
                ))
            })?
            .map_err(|err| store_error(format!("cannot list the blocks of tenant {tenant}: {err}")))
    }

    /// The tenant's blocks that overlap `range`, opened.
    pub(crate) async fn blocks(&self, tenant: &str, range: TimeRange) -> Result<Vec<Arc<Block>>, RpcError> {
        let listing = self.list(tenant).await?;
        match (self.open_overlapping(tenant, listing.metas(), range).await, &listing) {
            (Err((id, _)), BlockListing::Indexed(_, etag))
                if matches!(self.bucket.has_block(tenant, id).await, Ok(false)) =>
            {
                warn!(tenant, block = %id, "the bucket index names a block that is gone; listing the bucket instead");
                // That index, not one read since.
                if let Some(cached) = self.lock_indexes().get_mut(tenant)
                    && cached.etag == *etag
                {
                    cached.distrusted = true;
                }
                let metas = self.list_bucket(tenant).await?;
                self.open_overlapping(tenant, &metas, range)
                    .await
                    .map_err(|(_, err)| err)
            }
            (opened, _) => opened.map_err(|(_, err)| err),
        }
    }

    /// Opens the blocks of `metas` that overlap `range`; on failure, which
    /// block failed and why.
    async fn open_overlapping(
        &self,
        tenant: &str,
        metas: &[BlockMeta],
        range: TimeRange,
    ) -> Result<Vec<Arc<Block>>, (Ulid, RpcError)> {
        let mut blocks = Vec::new();
        for meta in metas.iter().filter(|meta| range.overlaps(meta.min_time, meta.max_time)) {
            blocks.push(self.block(tenant, meta).await.map_err(|err| (meta.id, err))?);
        }
        Ok(blocks)
    }

    async fn block(&self, tenant: &str, meta: &BlockMeta) -> Result<Arc<Block>, RpcError> {
        let key = (tenant.to_owned(), meta.id);
        if let Some(block) = self.touch(&key) {
            return Ok(block);
        }
        let _downloading = self.downloading.lock().await;
        if let Some(block) = self.touch(&key) {
            return Ok(block);
        }
        let parent = self.dir.join(tenant);
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|err| store_error(format!("cannot create {}: {err}", parent.display())))?;
        let block = tokio::time::timeout(DOWNLOAD_TIMEOUT, self.bucket.open_block(tenant, meta.id, &parent))
            .await
            .map_err(|_| store_error(format!("opening block {} took over {DOWNLOAD_TIMEOUT:?}", meta.id)))?
            .map_err(|err| store_error(format!("cannot open block {} of tenant {tenant}: {err}", meta.id)))?;
        let block = Arc::new(block.with_symbol_cache(self.symbols.clone()));
        let bytes = cached_bytes(meta);
        let evicted = {
            let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
            cached.insert(
                key,
                Cached {
                    block: block.clone(),
                    bytes,
                    used: Instant::now(),
                },
            );
            evict(&mut cached, self.max_bytes)
        };
        for dir in evicted {
            self.symbols.remove(&dir);
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        Ok(block)
    }

    fn touch(&self, key: &(String, Ulid)) -> Option<Arc<Block>> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        cached.get_mut(key).map(|entry| {
            entry.used = Instant::now();
            entry.block.clone()
        })
    }
}

/// What a block takes in the cache on local disk: every file but the
/// profiles table, which is read in place.
fn cached_bytes(meta: &BlockMeta) -> u64 {
    meta.files
        .iter()
        .filter(|file| file.rel_path != PROFILES_FILE)
        .map(|file| file.size_bytes)
        .sum()
}

/// Drops least recently used blocks that no query holds until the cache
/// fits `max_bytes` (blocks in use stay, so a query's blocks are never
/// removed under it); returns their directories.
fn evict(cached: &mut HashMap<(String, Ulid), Cached>, max_bytes: u64) -> Vec<PathBuf> {
    let mut total: u64 = cached.values().map(|entry| entry.bytes).sum();
    let mut removed = Vec::new();
    while total > max_bytes {
        let Some(oldest) = cached
            .iter()
            .filter(|(_, entry)| Arc::strong_count(&entry.block) == 1)
            .min_by_key(|(_, entry)| entry.used)
            .map(|(key, _)| key.clone())
        else {
            break;
        };
        if let Some(entry) = cached.remove(&oldest) {
            total -= entry.bytes;
            removed.push(entry.block.dir().to_path_buf());
        }
    }
    removed
}

/// The query of a selection, for blocks.
pub(crate) fn block_query(
    profile_type: &str,
    selector: &str,
    start_ms: i64,
    end_ms: i64,
) -> Result<ProfileQuery, RpcError> {
    let selector = if selector.trim().is_empty() {
        flamedb_model::Selector::default()
    } else {
        parse_selector(selector).map_err(|err| RpcError::invalid_argument(err.to_string()))?
    };
    Ok(ProfileQuery {
        profile_type: profile_type.to_owned(),
        selector,
        range: TimeRange { start_ms, end_ms },
        series: None,
    })
}

/// The profiles of `block` matching `query`.
pub(crate) async fn list_block(block: Arc<Block>, query: ProfileQuery) -> Result<Vec<ListedProfile>, RpcError> {
    tokio::task::spawn_blocking(move || {
        let mut listed = Vec::new();
        block
            .visit_profiles(&query, |profile| {
                listed.push(ListedProfile {
                    id: profile.id,
                    labels: profile.labels,
                    time_ms: profile.time_nanos.div_euclid(1_000_000),
                    total: profile.total,
                });
            })
            .map_err(|err| store_error(format!("cannot read block {}: {err}", block.meta().id)))?;
        Ok(listed)
    })
    .await
    .map_err(|err| RpcError::internal(err.to_string()))?
}

/// The merged tree of the profiles of `block` matching `query` (only those
/// in `only`, when given; only the samples of `spans`, when given).
pub(crate) async fn merge_block(
    block: Arc<Block>,
    query: ProfileQuery,
    only: Option<HashSet<ProfileId>>,
    spans: Option<Arc<HashSet<u64>>>,
    budget: Arc<RequestBudget>,
) -> Result<Tree, RpcError> {
    tokio::task::spawn_blocking(move || {
        let mut tree = Tree::within(budget);
        block
            .merge_into(&query, only.as_ref(), spans.as_deref(), &mut tree)
            .map_err(|err| match err {
                BlockError::Budget(err) => err.into(),
                err => store_error(format!("cannot read block {}: {err}", block.meta().id)),
            })?;
        Ok(tree)
    })
    .await
    .map_err(|err| RpcError::internal(err.to_string()))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use flamedb_model::Labels;
    use flamedb_model::pprof::StackProfileBuilder;
    use flamedb_storage::{BlockContents, BucketConfig, INDEX_VERSION, ProfileRow, SeriesIndex, Symbols, write_block};

    use super::*;

    /// Uploads a block of one profile at `time_ms` for tenant `t`; its meta.
    async fn upload(bucket: &Bucket, local: &std::path::Path, time_ms: i64) -> BlockMeta {
        let labels = Labels::from_pairs([("service_name", "api".to_owned())]);
        let mut series = SeriesIndex::new();
        let mut symbols = Symbols::new();
        let mut builder = StackProfileBuilder::new("cpu", "nanoseconds");
        builder.add(["main"], 1);
        let stacks = symbols.add_profile(&builder.build());
        let rows = [ProfileRow {
            id: ProfileId([7; 16]),
            series: series.get_or_insert(&labels, labels.fingerprint(), time_ms),
            time_nanos: time_ms * 1_000_000,
            total: 1,
            stacks: stacks.into(),
            values: vec![1].into(),
            span_ids: None,
        }];
        let contents = BlockContents {
            series: &series,
            symbols: &symbols,
            rows: &rows,
        };
        let id = Ulid::generate();
        let meta = write_block(local, id, contents, &[]).unwrap();
        bucket
            .upload_block("t", &local.join(id.to_string()), &meta)
            .await
            .unwrap();
        meta
    }

    fn index(updated_at_ms: i64, blocks: Vec<BlockMeta>) -> BucketIndex {
        BucketIndex {
            version: INDEX_VERSION,
            updated_at_ms,
            deletion_delay_ms: 12 * 3_600_000,
            blocks,
        }
    }

    /// The IDs of the blocks a query over all time opens.
    async fn opened(store: &Store) -> Vec<Ulid> {
        let blocks = store.blocks("t", TimeRange::ALL).await.unwrap();
        let mut ids: Vec<Ulid> = blocks.iter().map(|block| block.meta().id).collect();
        ids.sort_unstable();
        ids
    }

    /// A bucket in a new temporary directory (its `bucket` folder).
    fn filesystem_bucket() -> (tempfile::TempDir, Bucket) {
        let dir = tempfile::tempdir().unwrap();
        let bucket = Bucket::new(&BucketConfig::Filesystem {
            dir: dir.path().join("bucket"),
        })
        .unwrap();
        (dir, bucket)
    }

    fn listings(store: &Store, source: &'static str) -> u64 {
        store.listings.get_or_create(&ListingSource { source }).get()
    }

    #[tokio::test]
    async fn test_a_young_index_stands_for_a_listing_and_an_old_or_wrong_one_does_not() {
        let (dir, bucket) = filesystem_bucket();
        let local = dir.path().join("local");
        let indexed = upload(&bucket, &local, 1_000).await;
        let later = upload(&bucket, &local, 2_000).await;
        let store = Store::new(bucket.clone(), dir.path().join("cache"), u64::MAX)
            .unwrap()
            .with_bucket_index(Duration::from_secs(3600), &mut Registry::default());

        // No index: the bucket is listed.
        assert_eq!(opened(&store).await, sorted([indexed.id, later.id]));
        assert_eq!((listings(&store, "index"), listings(&store, "bucket")), (0, 1));

        // A young index is taken as it is: the block uploaded after it
        // was written is not seen (its ingester still has it).
        bucket
            .write_index("t", &index(now_ms(), vec![indexed.clone()]))
            .await
            .unwrap();
        assert_eq!(opened(&store).await, [indexed.id]);
        assert_eq!(opened(&store).await, [indexed.id]);
        assert_eq!((listings(&store, "index"), listings(&store, "bucket")), (2, 1));

        // An index older than the bound: listed again.
        bucket
            .write_index("t", &index(now_ms() - 3_600_000, vec![indexed.clone()]))
            .await
            .unwrap();
        assert_eq!(opened(&store).await, sorted([indexed.id, later.id]));
        assert_eq!(listings(&store, "bucket"), 2);

        // A querier whose ingesters keep uploads a shorter time trusts an
        // index for no longer than that.
        let new_store = |cache: &str| {
            Store::new(bucket.clone(), dir.path().join(cache), u64::MAX)
                .unwrap()
                .with_bucket_index(Duration::from_secs(3600), &mut Registry::default())
        };
        let mut capped = new_store("capped");
        capped.cap_index_staleness(Duration::from_secs(60));
        bucket
            .write_index("t", &index(now_ms() - 120_000, vec![indexed.clone()]))
            .await
            .unwrap();
        assert_eq!(opened(&capped).await, sorted([indexed.id, later.id]));
        assert_eq!((listings(&capped, "index"), listings(&capped, "bucket")), (0, 1));

        // An index naming a block that is gone: the query lists the bucket
        // and succeeds, and that index is not trusted again.
        let fresh = new_store("fresh");
        bucket
            .write_index("t", &index(now_ms(), vec![indexed.clone(), later.clone()]))
            .await
            .unwrap();
        bucket.delete_block("t", indexed.id).await.unwrap();
        assert_eq!(opened(&fresh).await, [later.id]);
        assert_eq!(opened(&fresh).await, [later.id]);
        assert_eq!((listings(&fresh, "index"), listings(&fresh, "bucket")), (1, 2));
    }

    #[tokio::test]
    async fn test_decoded_symbols_are_kept_for_the_next_query_and_go_with_the_block() {
        let (dir, bucket) = filesystem_bucket();
        let local = dir.path().join("local");
        upload(&bucket, &local, 1_000).await;
        let second = upload(&bucket, &local, 2_000).await;
        // Room in the block cache for one block at a time.
        let one_block = cached_bytes(&second);
        let store = Store::new(bucket, dir.path().join("cache"), one_block)
            .unwrap()
            .with_symbol_cache(1 << 20);
        let query = || block_query("", "{}", 0, 3_000).unwrap();
        let merge = |block| merge_block(block, query(), None, None, Arc::new(RequestBudget::unlimited()));
        let first = opened_within(&store, 0, 1_500).await;
        assert_eq!(store.symbols.bytes(), 0);
        assert_eq!(merge(first[0].clone()).await.unwrap().total(), 1);
        let kept = store.symbols.bytes();
        assert!(kept > 0);
        // The next merge keeps no second copy.
        merge(first[0].clone()).await.unwrap();
        assert_eq!(store.symbols.bytes(), kept);
        drop(first);
        // Opening the second block evicts the first, and its symbols.
        let later = opened_within(&store, 1_500, 3_000).await;
        assert_eq!(store.symbols.bytes(), 0);
        merge(later[0].clone()).await.unwrap();
        assert_eq!(store.symbols.bytes(), kept);
    }

    /// The blocks of tenant `t` a query over `start_ms..=end_ms` opens.
    async fn opened_within(store: &Store, start_ms: i64, end_ms: i64) -> Vec<Arc<Block>> {
        store.blocks("t", TimeRange { start_ms, end_ms }).await.unwrap()
    }

    fn sorted<const N: usize>(mut ids: [Ulid; N]) -> [Ulid; N] {
        ids.sort_unstable();
        ids
    }
}
