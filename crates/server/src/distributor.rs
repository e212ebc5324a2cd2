//! The distributor module of a process: pushes go to the ingesters of the
//! ring, straight to the ingester of this process when the ring says so
//! (a single binary) and over gRPC to the others.

use std::sync::Arc;

use flamedb_api::{Admission, RpcError, Tenancy};
use flamedb_distributor::{
    Distributor, DistributorConfig, DistributorMetrics, IngesterPool, RateLimiter, RemoteIngesters, ReplicatedProfile,
};
use flamedb_ingester::{IncomingProfile, Ingester};
use flamedb_model::TenantLimits;
use flamedb_ring::InstanceDesc;
use futures_util::future::BoxFuture;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::membership::Membership;

/// The running distributor module.
pub struct DistributorModule {
    pub distributor: Distributor,
}

impl DistributorModule {
    /// `local` is this process's ingester, if it runs one.
    pub fn start(
        config: &Config,
        membership: &Membership,
        local: Option<Ingester>,
        limits: TenantLimits,
        admission: Arc<Admission>,
        registry: &mut Registry,
    ) -> Self {
        let local = local.zip(membership.ingester_instance_id().map(str::to_owned));
        let pool = Arc::new(Ingesters {
            local,
            remote: RemoteIngesters::new(),
        });
        let distributor = Distributor::new(
            DistributorConfig {
                push_timeout: config.distributor.pushtimeout,
            },
            limits,
            RateLimiter::new(Arc::new(membership.healthy_distributors())),
            membership.ingester_ring.clone(),
            pool,
            DistributorMetrics::register(registry),
            admission,
        );
        Self { distributor }
    }

    pub fn routes(&self, config: &Config) -> axum::Router {
        flamedb_distributor::routes(
            self.distributor.clone(),
            Tenancy {
                multitenancy_enabled: config.multitenancy_enabled,
            },
            // Bodies as sent; decompressed profiles are bounded per tenant.
            config.limits.ingestion_body_limit_bytes(),
        )
    }
}

/// This process's ingester (by ring ID) and the others.
struct Ingesters {
    local: Option<(Ingester, String)>,
    remote: RemoteIngesters,
}

impl IngesterPool for Ingesters {
    fn push(
        &self,
        instance: &InstanceDesc,
        tenant: &str,
        profiles: Vec<Arc<ReplicatedProfile>>,
    ) -> BoxFuture<'static, Result<(), RpcError>> {
        match &self.local {
            Some((ingester, id)) if *id == instance.id => {
                let ingester = ingester.clone();
                let tenant = tenant.to_owned();
                let incoming = profiles
                    .iter()
                    .map(|profile| {
                        IncomingProfile::from_decoded(
                            profile.labels.clone(),
                            profile.id,
                            Arc::clone(profile.profile()),
                            profile.encoded(),
                        )
                    })
                    .collect();
                Box::pin(async move {
                    ingester
                        .push(&tenant, incoming)
                        .await
                        .map_err(|err| RpcError::new(err.code(), err.to_string()))
                })
            }
            _ => self.remote.push(instance, tenant, profiles),
        }
    }
}
