//! Object storage: where blocks go once written, under
//! `<tenant>/blocks/<block id>/<file>`, `meta.json` last (a block without
//! it is an unfinished upload and is ignored by readers). A block the
//! compactor replaced gets a deletion mark,
//! `<tenant>/markers/<block id>-deletion-mark.json`: listings ignore it at
//! once (readers on a bucket index once the index is rewritten), and it
//! is deleted (`meta.json` first) after a delay, so queries that listed
//! it before can still read it. The compactor also keeps an
//! index of each tenant's blocks, `<tenant>/bucket-index.json.gz` (see
//! [`BucketIndex`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::io::AsyncWriteExt;
use ulid::Ulid;

use crate::block::{BlockMeta, META_FILE, TEMP_SUFFIX, parse_meta};

mod index;
pub use index::{BucketIndex, INDEX_VERSION, IndexRead};

/// Where a tenant's deletion marks are, one per block:
/// `<tenant>/markers/<block id>-deletion-mark.json` (listed apart from the
/// blocks, so readers list both cheaply).
const MARKERS_DIR: &str = "markers";
const DELETION_MARK_SUFFIX: &str = "-deletion-mark.json";
const NO_COMPACT_MARK_SUFFIX: &str = "-no-compact-mark.json";

/// Where blocks are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketConfig {
    /// A directory (for one machine, or a shared mount).
    Filesystem { dir: PathBuf },
    /// An S3-compatible service.
    S3(S3Config),
}

#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `https://host[:port]`; empty: AWS for the region.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Allow `http://` endpoints.
    pub insecure: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// What went wrong talking to object storage.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("object storage: cannot {action} {path}: {source}")]
    Store {
        action: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("object storage: cannot read local file {path}: {source}")]
    Local {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object storage: {0}")]
    Block(#[from] crate::BlockError),
    #[error("object storage configuration: {0}")]
    Config(String),
    #[error("bucket index {path}: {reason}")]
    Index { path: String, reason: String },
}

/// A bucket of blocks; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
}

impl Bucket {
    pub fn new(config: &BucketConfig) -> Result<Self, BucketError> {
        let store: Arc<dyn ObjectStore> = match config {
            BucketConfig::Filesystem { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|err| BucketError::Config(format!("cannot create {}: {err}", dir.display())))?;
                // Uploads are durable before the local copy goes, and a
                // deleted block leaves no empty directory to list.
                Arc::new(
                    LocalFileSystem::new_with_prefix(dir)
                        .map_err(|err| BucketError::Config(format!("{}: {err}", dir.display())))?
                        .with_fsync(true)
                        .with_automatic_cleanup(true),
                )
            }
            BucketConfig::S3(s3) => {
                if s3.bucket.is_empty() {
                    return Err(BucketError::Config("-storage.s3.bucket-name is required".to_owned()));
                }
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    .with_region(&s3.region)
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(&s3.secret_access_key)
                    .with_allow_http(s3.insecure)
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(5))
                            .with_timeout(Duration::from_secs(60))
                            .with_allow_http(s3.insecure),
                    )
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig::default(),
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(30),
                    });
                if !s3.endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&s3.endpoint)
                        .with_virtual_hosted_style_request(false);
                }
                Arc::new(builder.build().map_err(|err| BucketError::Config(err.to_string()))?)
            }
        };
        Ok(Self { store })
    }

    fn block_path(tenant: &str, id: Ulid, file: &str) -> ObjectPath {
        ObjectPath::from(format!("{tenant}/blocks/{id}/{file}"))
    }

    /// Uploads the block in `dir`: every file of its meta, then
    /// `meta.json`. Files are streamed, never held whole in memory.
    pub async fn upload_block(&self, tenant: &str, dir: &Path, meta: &BlockMeta) -> Result<(), BucketError> {
        for file in &meta.files {
            self.upload_file(
                &dir.join(&file.rel_path),
                Self::block_path(tenant, meta.id, &file.rel_path),
            )
            .await?;
        }
        self.upload_file(&dir.join(META_FILE), Self::block_path(tenant, meta.id, META_FILE))
            .await
    }

    async fn upload_file(&self, local: &Path, remote: ObjectPath) -> Result<(), BucketError> {
        let local_error = |source| BucketError::Local {
            path: local.display().to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(local_error)?;
        let mut writer = BufWriter::new(self.store.clone(), remote.clone());
        let copied = tokio::io::copy(&mut file, &mut writer).await;
        let finished = match copied {
            Ok(_) => writer.shutdown().await,
            Err(err) => {
                let _ = writer.abort().await;
                Err(err)
            }
        };
        finished.map_err(|err| BucketError::Store {
            action: "upload",
            path: remote.to_string(),
            source: object_store::Error::Generic {
                store: "bucket",
                source: Box::new(err),
            },
        })
    }

    /// Whether a complete block (with `meta.json`) is stored.
    pub async fn has_block(&self, tenant: &str, id: Ulid) -> Result<bool, BucketError> {
        let path = Self::block_path(tenant, id, META_FILE);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(store_error("look up", &path)(source)),
        }
    }

    /// The tenants with anything stored.
    pub async fn list_tenants(&self) -> Result<Vec<String>, BucketError> {
        let listing = self
            .store
            .list_with_delimiter(None)
            .await
            .map_err(store_error("list", &ObjectPath::from("")))?;
        let mut tenants: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|dir| dir.filename().map(str::to_owned))
            .collect();
        tenants.sort();
        Ok(tenants)
    }

    /// Every object under `prefix`.
    async fn list_objects(&self, prefix: &ObjectPath) -> Result<Vec<object_store::ObjectMeta>, BucketError> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(store_error("list", prefix))
    }

    /// The tenant's deletion marks: `<tenant>/markers/<id>-deletion-mark.json`,
    /// by block, with when each was written (ms since the epoch).
    pub async fn marked_for_deletion(&self, tenant: &str) -> Result<Vec<(Ulid, i64)>, BucketError> {
        self.marks(tenant, DELETION_MARK_SUFFIX).await
    }

    /// The tenant's blocks marked not to be compacted (their data could
    /// not be read): `<tenant>/markers/<id>-no-compact-mark.json`.
    pub async fn marked_no_compact(&self, tenant: &str) -> Result<HashSet<Ulid>, BucketError> {
        Ok(self
            .marks(tenant, NO_COMPACT_MARK_SUFFIX)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The tenant's marks of one kind, by block, with when each was
    /// written (ms since the epoch).
    async fn marks(&self, tenant: &str, suffix: &str) -> Result<Vec<(Ulid, i64)>, BucketError> {
        let prefix = ObjectPath::from(format!("{tenant}/{MARKERS_DIR}"));
        let objects = self.list_objects(&prefix).await?;
        Ok(objects
            .iter()
            .filter_map(|object| {
                let id = object.location.filename()?.strip_suffix(suffix)?;
                Some((Ulid::from_string(id).ok()?, object.last_modified.timestamp_millis()))
            })
            .collect())
    }

    /// The metas of the tenant's complete blocks not marked for deletion,
    /// by block id. Marks are listed before blocks: a block marked while
    /// this lists is kept, and so is the block that replaced it (uploaded
    /// before the mark), which supersedes it; the other way round both
    /// could be missed.
    pub async fn list_blocks(&self, tenant: &str) -> Result<Vec<BlockMeta>, BucketError> {
        let marked: HashSet<Ulid> = self
            .marked_for_deletion(tenant)
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let prefix = ObjectPath::from(format!("{tenant}/blocks"));
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(store_error("list", &prefix))?;
        let mut metas = Vec::new();
        for dir in listing.common_prefixes {
            let Some(id) = dir.filename().and_then(|name| Ulid::from_string(name).ok()) else {
                continue;
            };
            if marked.contains(&id) {
                continue;
            }
            let path = Self::block_path(tenant, id, META_FILE);
            let bytes = match self.read(&path).await {
                Ok(bytes) => bytes,
                Err(BucketError::Store {
                    source: object_store::Error::NotFound { .. },
                    ..
                }) => continue,
                Err(err) => return Err(err),
            };
            metas.push(parse_meta(Path::new(path.as_ref()), &bytes)?);
        }
        metas.sort_by_key(|meta| meta.id);
        Ok(metas)
    }

    /// The tenant's blocks without `meta.json` (uploads unfinished, or cut
    /// short), with when their newest object was written (ms).
    pub async fn incomplete_blocks(&self, tenant: &str) -> Result<Vec<(Ulid, i64)>, BucketError> {
        let prefix = ObjectPath::from(format!("{tenant}/blocks"));
        let objects = self.list_objects(&prefix).await?;
        let mut newest: HashMap<Ulid, i64> = HashMap::new();
        let mut complete: HashSet<Ulid> = HashSet::new();
        for object in objects {
            let mut parts = object.location.parts();
            let (Some(id), Some(file)) = (parts.nth(2), parts.next()) else {
                continue;
            };
            let Ok(id) = Ulid::from_string(id.as_ref()) else {
                continue;
            };
            if file.as_ref() == META_FILE {
                complete.insert(id);
            }
            let modified = newest.entry(id).or_insert(i64::MIN);
            *modified = (*modified).max(object.last_modified.timestamp_millis());
        }
        let mut incomplete: Vec<(Ulid, i64)> = newest.into_iter().filter(|(id, _)| !complete.contains(id)).collect();
        incomplete.sort_unstable();
        Ok(incomplete)
    }

    fn deletion_mark_path(tenant: &str, id: Ulid) -> ObjectPath {
        ObjectPath::from(format!("{tenant}/{MARKERS_DIR}/{id}{DELETION_MARK_SUFFIX}"))
    }

    /// Marks a block for deletion: readers ignore it from now on.
    pub async fn mark_for_deletion(&self, tenant: &str, id: Ulid) -> Result<(), BucketError> {
        let path = Self::deletion_mark_path(tenant, id);
        let mark = format!("{{\"id\":\"{id}\",\"version\":1}}");
        self.store
            .put(&path, bytes::Bytes::from(mark).into())
            .await
            .map_err(store_error("write", &path))?;
        Ok(())
    }

    /// Marks a block not to be compacted, saying why; queries still read
    /// it, retention still deletes it.
    pub async fn mark_no_compact(&self, tenant: &str, id: Ulid, reason: &str) -> Result<(), BucketError> {
        let path = Self::no_compact_mark_path(tenant, id);
        let mark = serde_json::json!({ "id": id.to_string(), "version": 1, "details": reason }).to_string();
        self.store
            .put(&path, bytes::Bytes::from(mark).into())
            .await
            .map_err(store_error("write", &path))?;
        Ok(())
    }

    fn no_compact_mark_path(tenant: &str, id: Ulid) -> ObjectPath {
        ObjectPath::from(format!("{tenant}/{MARKERS_DIR}/{id}{NO_COMPACT_MARK_SUFFIX}"))
    }

    /// Deletes a block: `meta.json` first (it is then incomplete, and
    /// ignored), then its other files, its marks last.
    pub async fn delete_block(&self, tenant: &str, id: Ulid) -> Result<(), BucketError> {
        let prefix = ObjectPath::from(format!("{tenant}/blocks/{id}"));
        let mut objects: Vec<ObjectPath> = self
            .list_objects(&prefix)
            .await?
            .into_iter()
            .map(|object| object.location)
            .collect();
        objects.sort_by_key(|path| path.filename() != Some(META_FILE));
        objects.push(Self::no_compact_mark_path(tenant, id));
        objects.push(Self::deletion_mark_path(tenant, id));
        for path in objects {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(store_error("delete", &path)(source)),
            }
        }
        Ok(())
    }

    /// Downloads a block into `parent/<id>` (through a temporary
    /// directory), checking every file against its meta.
    pub async fn download_block(&self, tenant: &str, id: Ulid, parent: &Path) -> Result<PathBuf, BucketError> {
        let (target, _) = self.download_files(tenant, id, parent, None).await?;
        let dir = target.clone();
        tokio::task::spawn_blocking(move || crate::Block::open(&dir)?.verify())
            .await
            .map_err(|err| BucketError::Config(format!("opening block {id} failed: {err}")))??;
        Ok(target)
    }

    /// Opens a block for reading in place: its meta, series, symbols and
    /// downsampled files are downloaded into `parent/<id>` (and checked), its profiles
    /// table stays in the bucket and is read by byte ranges. Reads of the
    /// returned block block on this async runtime: run them where blocking
    /// is fine.
    pub async fn open_block(&self, tenant: &str, id: Ulid, parent: &Path) -> Result<crate::Block, BucketError> {
        let profiles = crate::block::PROFILES_FILE;
        let (target, meta) = self.download_files(tenant, id, parent, Some(profiles)).await?;
        let size = meta
            .files
            .iter()
            .find(|file| file.rel_path == profiles)
            .map(|file| file.size_bytes)
            .unwrap_or(0);
        let remote = crate::block::RemoteFile::new(
            self.store.clone(),
            Self::block_path(tenant, id, profiles),
            size,
            tokio::runtime::Handle::current(),
        );
        tokio::task::spawn_blocking(move || {
            let block = crate::Block::open_with(&target, Some(remote))?;
            block.verify()?;
            Ok::<_, crate::BlockError>(block)
        })
        .await
        .map_err(|err| BucketError::Config(format!("opening block {id} failed: {err}")))?
        .map_err(BucketError::from)
    }

    /// Downloads the files of a block but `skip` into `parent/<id>`
    /// (through a temporary directory), checked against the meta.
    async fn download_files(
        &self,
        tenant: &str,
        id: Ulid,
        parent: &Path,
        skip: Option<&str>,
    ) -> Result<(PathBuf, BlockMeta), BucketError> {
        let local_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| BucketError::Local { path, source }
        };
        let meta_path = Self::block_path(tenant, id, META_FILE);
        let meta_bytes = self.read(&meta_path).await?;
        let meta = parse_meta(Path::new(meta_path.as_ref()), &meta_bytes)?;
        let temp = parent.join(format!("{id}{TEMP_SUFFIX}"));
        let target = parent.join(id.to_string());
        let _ = tokio::fs::remove_dir_all(&temp).await;
        tokio::fs::create_dir_all(&temp).await.map_err(local_error(&temp))?;
        for file in meta.files.iter().filter(|file| Some(file.rel_path.as_str()) != skip) {
            let remote = Self::block_path(tenant, id, &file.rel_path);
            let local = temp.join(&file.rel_path);
            let mut out = tokio::fs::File::create(&local).await.map_err(local_error(&local))?;
            let mut stream = self
                .store
                .get(&remote)
                .await
                .map_err(store_error("read", &remote))?
                .into_stream();
            while let Some(chunk) = stream.try_next().await.map_err(store_error("read", &remote))? {
                out.write_all(&chunk).await.map_err(local_error(&local))?;
            }
            out.sync_all().await.map_err(local_error(&local))?;
        }
        tokio::fs::write(temp.join(META_FILE), &meta_bytes)
            .await
            .map_err(local_error(&temp))?;
        let _ = tokio::fs::remove_dir_all(&target).await;
        tokio::fs::rename(&temp, &target).await.map_err(local_error(&temp))?;
        Ok((target, meta))
    }

    /// A whole (small) object.
    async fn read(&self, path: &ObjectPath) -> Result<bytes::Bytes, BucketError> {
        self.store
            .get(path)
            .await
            .map_err(store_error("read", path))?
            .bytes()
            .await
            .map_err(store_error("read", path))
    }
}

fn store_error(action: &'static str, path: &ObjectPath) -> impl FnOnce(object_store::Error) -> BucketError {
    let path = path.to_string();
    move |source| BucketError::Store { action, path, source }
}
