//! Blocks in object storage, for ranges older than the ingesters keep.
//! A query lists the tenant's blocks; of those overlapping its range, the
//! meta, series index, symbols and downsampled table are downloaded into a
//! local cache
//! (bounded: least recently used blocks go first), while the profiles
//! table is read in place by byte ranges, only the row groups and pages a
//! query needs. A block another one supersedes is not read; of the others,
//! the querier counts each profile ID once.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flamedb_api::{ErrorCode, RpcError};
use flamedb_model::budget::RequestBudget;
use flamedb_model::{ProfileId, Tree, parse_selector};
use flamedb_storage::block::{PROFILES_FILE, TEMP_SUFFIX};
use flamedb_storage::{Block, BlockError, BlockMeta, Bucket, ProfileQuery, TimeRange, Ulid};
use tokio::sync::Mutex as AsyncMutex;

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

/// Object storage seen by the querier.
pub struct Store {
    bucket: Bucket,
    dir: PathBuf,
    max_bytes: u64,
    cached: Mutex<HashMap<(String, Ulid), Cached>>,
    /// One download at a time, so a block is fetched once.
    downloading: AsyncMutex<()>,
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
        })
    }

    /// The first and last profile time (ms) of each of the tenant's blocks.
    pub(crate) async fn time_spans(&self, tenant: &str) -> Result<Vec<(i64, i64)>, RpcError> {
        let metas = self.list(tenant).await?;
        Ok(metas.iter().map(|meta| (meta.min_time, meta.max_time)).collect())
    }

    async fn list(&self, tenant: &str) -> Result<Vec<BlockMeta>, RpcError> {
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
        let metas = self.list(tenant).await?;
        let mut blocks = Vec::new();
        for meta in metas
            .into_iter()
            .filter(|meta| range.overlaps(meta.min_time, meta.max_time))
        {
            blocks.push(self.block(tenant, &meta).await?);
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
        let block = Arc::new(block);
        // What is on local disk: everything but the profiles table.
        let bytes = meta
            .files
            .iter()
            .filter(|file| file.rel_path != PROFILES_FILE)
            .map(|file| file.size_bytes)
            .sum();
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
