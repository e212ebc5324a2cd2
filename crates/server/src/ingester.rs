//! The ingester module of a process: its settings from the configuration,
//! the object storage bucket, start-up (WAL replay before anything is
//! served or the instance joins the ring) and its routes.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use flamedb_api::{RpcOptions, Tenancy};
use flamedb_ingester::{ClusterShare, Ingester, IngesterConfig, IngesterMetrics};
use flamedb_model::TenantLimits;
use flamedb_ring::RingClient;
use flamedb_storage::{Bucket, BucketConfig, S3Config};
use prometheus_client::registry::Registry;

use crate::admission::Admissions;
use crate::config::{Config, StorageBackend};
use crate::membership::ReadinessCheck;

/// Largest ingester push (a distributor's batch of profiles).
const MAX_PUSH_BYTES: usize = 64 << 20;
/// Largest ingester read request (a querier's).
const MAX_QUERY_BYTES: usize = 16 << 20;

/// The running ingester module.
pub struct IngesterModule {
    pub ingester: Ingester,
    /// The ingester ring, once membership has started: the series limit
    /// divides the global limit by its healthy ingesters.
    ring: Arc<OnceLock<RingClient>>,
}

impl IngesterModule {
    /// Opens the bucket and the ingester's data, replaying the WAL.
    pub fn start(config: &Config, limits: TenantLimits, registry: &mut Registry) -> anyhow::Result<Self> {
        let bucket = Bucket::new(&bucket_config(config)).context("cannot open object storage")?;
        let db = &config.pyroscopedb;
        let ingester_config = IngesterConfig {
            max_block_duration: db.max_block_duration,
            max_head_memory_bytes: usize::try_from(config.ingester.max_head_memory_bytes).unwrap_or(usize::MAX),
            max_tenants: config.ingester.instance_limits.max_tenants,
            local_retention: config.querier.query_store_after,
            min_free_disk_bytes: db.min_free_disk_gb.saturating_mul(1 << 30),
            min_free_disk_percent: db.min_disk_available_percentage * 100.0,
            wal_skip_corrupt_records: config.ingester.wal.skip_corrupt_records,
            ..IngesterConfig::new(PathBuf::from(&db.data_path))
        };
        let ring: Arc<OnceLock<RingClient>> = Arc::new(OnceLock::new());
        let share = {
            let ring = ring.clone();
            Arc::new(move || ring.get().map_or(ClusterShare::ALONE, cluster_share))
        };
        let (ingester, _) = Ingester::start(
            ingester_config,
            limits,
            share,
            IngesterMetrics::register(registry),
            Some(bucket),
        )
        .with_context(|| format!("cannot start the ingester in {}", db.data_path))?;
        Ok(Self { ingester, ring })
    }

    /// Lets the series limit see the ring.
    pub fn set_ring(&self, ring: RingClient) {
        let _ = self.ring.set(ring);
    }

    /// Not ready once the ingester could not apply a record it stored (it
    /// then refuses pushes until restarted).
    pub fn readiness_check(&self) -> ReadinessCheck {
        let ingester = self.ingester.clone();
        (
            "the ingester could not apply a record it stored; restart it to replay the WAL".into(),
            Box::new(move || !ingester.has_failed()),
        )
    }

    /// The ingester API, for the internal listener only.
    pub fn internal_routes(&self, config: &Config, admissions: &Admissions) -> axum::Router {
        let tenancy = Tenancy {
            multitenancy_enabled: config.multitenancy_enabled,
        };
        flamedb_ingester::internal_routes(
            self.ingester.clone(),
            RpcOptions {
                tenancy,
                max_message_bytes: MAX_PUSH_BYTES,
                admission: Arc::clone(&admissions.ingester_pushes),
            },
            RpcOptions {
                tenancy,
                max_message_bytes: MAX_QUERY_BYTES,
                admission: Arc::clone(&admissions.reads),
            },
        )
    }

    /// `/ingester/flush`, for the public listener.
    pub fn operator_routes(&self) -> axum::Router {
        flamedb_ingester::operator_routes(self.ingester.clone())
    }
}

/// How many healthy ingesters share the tenants' series, and the
/// replication factor.
fn cluster_share(ring: &RingClient) -> ClusterShare {
    let ring = ring.ring();
    let now = flamedb_ring::now_ms();
    let timeout = ring.config().heartbeat_timeout;
    let healthy = ring
        .instances()
        .iter()
        .filter(|instance| instance.is_heartbeat_healthy(now, timeout))
        .count();
    ClusterShare {
        healthy_ingesters: healthy.max(1),
        replication_factor: ring.config().replication_factor,
    }
}

pub fn bucket_config(config: &Config) -> BucketConfig {
    let storage = &config.storage;
    match storage.backend {
        StorageBackend::Filesystem => BucketConfig::Filesystem {
            dir: PathBuf::from(&storage.filesystem.dir),
        },
        StorageBackend::S3 => {
            let s3 = &storage.s3;
            let endpoint = if s3.endpoint.is_empty() || s3.endpoint.contains("://") {
                s3.endpoint.clone()
            } else {
                let scheme = if s3.insecure { "http" } else { "https" };
                format!("{scheme}://{}", s3.endpoint)
            };
            BucketConfig::S3(S3Config {
                endpoint,
                bucket: s3.bucket_name.clone(),
                region: s3.region.clone(),
                access_key_id: s3.access_key_id.clone(),
                secret_access_key: s3.secret_access_key.0.clone(),
                insecure: s3.insecure,
            })
        }
    }
}
