//! Starting and stopping a `flamedb` process, top to bottom: metrics, the
//! HTTP listener, the per-tenant limits, the ingester (WAL replay, before
//! anything is served or the instance joins the ring), ring membership
//! (store, lifecyclers, ring views: ingester, distributor and compactor
//! rings), the distributor, the querier (with its block cache), the
//! compactor (compacting the tenants it owns in the compactor ring), the
//! routes; then, on
//! the shutdown signal, refuse traffic (`/ready` fails), take the ingester
//! out of the write path (LEAVING), flush and upload its heads, leave the
//! ring, let in-flight requests finish within the grace period, wait for
//! pushes to replicas still running, leave the distributor and compactor
//! rings, stop gossip.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::response::IntoResponse;
use axum::serve::ListenerExt;
use flamedb_api::{ErrorCode, RpcError, RpcOptions, Tenancy};
use flamedb_compactor::{Compactor, CompactorConfig};
use flamedb_ingester::StartError;
use flamedb_querier::{Querier, Store};
use flamedb_storage::Bucket;
use flamedb_wal::WalError;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admission::Admissions;
use crate::build_info::BuildInfo;
use crate::config::{Config, Target};
use crate::distributor::DistributorModule;
use crate::ingester::{IngesterModule, bucket_config};
use crate::membership::Membership;
use crate::metrics::{HttpMetrics, record_requests};
use crate::overrides::Overrides;
use crate::status::{Readiness, StatusState};

/// How long a querier waits for one ingester call.
const INGESTER_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest query request.
const MAX_QUERY_BYTES: usize = 16 << 20;

/// Runs the process until `shutdown` completes, then stops gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let build = BuildInfo::CURRENT;
    let modules = config.target.modules();
    let names: Vec<&str> = modules.iter().map(|module| module.as_str()).collect();
    info!(
        version = build.version,
        revision = build.revision,
        target = %config.target,
        modules = names.join(","),
        "starting flamedb"
    );

    let mut registry = Registry::default();
    let http_metrics = HttpMetrics::register(&mut registry, &build);
    let readiness = Arc::new(Readiness::default());

    let address = listen_address(&config)?;
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let local_address = listener.local_addr().context("cannot read the listening address")?;

    let overrides = Overrides::load(config.limits.clone(), &config.runtime_config.file, &mut registry)?;
    let ingester = if modules.contains(&Target::Ingester) {
        // Replay reads the whole WAL: off the async workers.
        let started =
            tokio::task::block_in_place(|| IngesterModule::start(&config, overrides.tenant_limits(), &mut registry));
        match started {
            Ok(module) => Some(module),
            Err(ref err) if let Some(corrupt) = corrupt_wal(err) => {
                let reason = corrupt.to_string();
                error!(error = %reason, "the WAL is corrupt: staying up, not ready, until an operator acts");
                let status = StatusState {
                    readiness: readiness.clone(),
                    checks: vec![(reason.into(), Box::new(|| false))],
                    registry,
                    config,
                    overrides,
                };
                return serve_unready(listener, status, shutdown).await;
            }
            Err(err) => return Err(err),
        }
    } else {
        None
    };
    // The ingester's API (unvalidated pushes, raw reads) listens apart from
    // the public port: loopback in a single process, where the operator
    // says in a cluster.
    let internal = match &ingester {
        Some(_) => {
            let address = internal_listen_address(&config)?;
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (-server.grpc-listen-port)"))?;
            Some(listener)
        }
        None => None,
    };
    let internal_address = internal
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .context("cannot read the internal listening address")?;
    let mut membership = Membership::start(&config, local_address.port(), internal_address, &mut registry).await?;
    if let Some(ingester) = &ingester {
        ingester.set_ring(membership.ingester_ring.clone());
    }
    let admissions = Admissions::new(&config, &mut registry);
    let ingester_routes = ingester.as_ref().map(IngesterModule::operator_routes);
    let internal_app = ingester.as_ref().map(|ingester| {
        flamedb_api::with_body_read_timeout(
            ingester.internal_routes(&config, &admissions).fallback(route_not_found),
            config.server.http_server_read_timeout,
        )
        .layer(axum::middleware::from_fn_with_state(
            http_metrics.clone(),
            record_requests,
        ))
    });
    let distributor = modules.contains(&Target::Distributor).then(|| {
        DistributorModule::start(
            &config,
            &membership,
            ingester.as_ref().map(|module| module.ingester.clone()),
            overrides.tenant_limits(),
            Arc::clone(&admissions.distributor_pushes),
            &mut registry,
        )
    });
    let distributor_routes = distributor.as_ref().map(|module| module.routes(&config));
    let querier_routes = if modules.contains(&Target::Querier) {
        let settings = &config.querier;
        let bucket = Bucket::new(&bucket_config(&config)).context("cannot open object storage")?;
        let store = Store::new(
            bucket,
            PathBuf::from(&settings.block_cache_dir),
            settings.block_cache_max_bytes,
        )
        .with_context(|| format!("cannot prepare the block cache {}", settings.block_cache_dir))?
        .with_bucket_index(settings.bucket_index_max_stale_period, &mut registry)
        .with_symbol_cache(usize::try_from(settings.symbol_cache_max_bytes).unwrap_or(usize::MAX));
        let querier = Querier::new(membership.ingester_ring.clone(), INGESTER_CALL_TIMEOUT)
            .with_store(store, settings.query_store_after);
        Some(flamedb_querier::routes(
            querier,
            overrides.tenant_limits(),
            RpcOptions {
                tenancy: Tenancy {
                    multitenancy_enabled: config.multitenancy_enabled,
                },
                max_message_bytes: MAX_QUERY_BYTES,
                admission: Arc::clone(&admissions.reads),
            },
        ))
    } else {
        None
    };
    let stop_compacting = CancellationToken::new();
    let compactor = if modules.contains(&Target::Compactor) {
        let settings = &config.compactor;
        let bucket = Bucket::new(&bucket_config(&config)).context("cannot open object storage")?;
        let compactor = Compactor::new(
            bucket,
            CompactorConfig {
                data_dir: PathBuf::from(&settings.data_dir),
                interval: settings.compaction_interval,
                first_level_wait: settings.first_level_compaction_wait_period,
                block_ranges: settings.block_ranges.iter().map(|range| **range).collect(),
                deletion_delay: settings.deletion_delay,
                max_memory_bytes: settings.max_memory_bytes,
                downsampling_resolutions: settings
                    .downsampling_resolutions
                    .iter()
                    .map(|resolution| **resolution)
                    .collect(),
            },
            {
                let limits = overrides.tenant_limits();
                Arc::new(move |tenant: &str| limits(tenant).compactor_blocks_retention_period)
            },
            &mut registry,
        )
        .with_context(|| format!("cannot prepare the compactor directory {}", settings.data_dir))?;
        let ownership = membership
            .compactor_ownership()
            .context("the compactor runs without the compactor ring")?;
        Some(Arc::new(compactor.with_ownership(Arc::new(ownership))).spawn(stop_compacting.clone()))
    } else {
        None
    };
    let stop_reloading = CancellationToken::new();
    let reloader = overrides.spawn_reloader(config.runtime_config.period, stop_reloading.clone());

    let grace = config.server.graceful_shutdown_timeout;
    let read_timeout = config.server.http_server_read_timeout;
    let mut checks = membership.readiness_checks();
    if let Some(module) = &ingester {
        checks.push(module.readiness_check());
    }
    let status = Arc::new(StatusState {
        readiness: readiness.clone(),
        checks,
        registry,
        config,
        overrides,
    });
    let mut app = crate::status::routes(status).merge(crate::ring_pages::routes(&membership));
    for routes in [ingester_routes, distributor_routes, querier_routes]
        .into_iter()
        .flatten()
    {
        app = app.merge(routes);
    }
    let app = flamedb_api::with_body_read_timeout(app.fallback(route_not_found), read_timeout)
        .layer(axum::middleware::from_fn_with_state(http_metrics, record_requests));

    let stop = CancellationToken::new();
    let internal_server = match (internal, internal_app, internal_address) {
        (Some(listener), Some(app), Some(address)) => {
            let server = tokio::spawn(serve(listener, app, stop.clone()));
            info!(address = %address, "listening for internal gRPC (ingester.v1)");
            Some(server)
        }
        _ => None,
    };
    let server = tokio::spawn(serve(listener, app, stop.clone()));
    info!(address = %local_address, "listening for HTTP/1.1 and h2c");
    readiness.set_ready();

    let failure = membership.failure();
    let mut internal_server = internal_server;
    // The internal listener serving no more is a failure too: the ingester
    // would be unreachable while the process says it is ready.
    let internal_ended = async {
        match internal_server.as_mut() {
            Some(task) => match task.await {
                Ok(Ok(())) => "the internal listener stopped".to_owned(),
                Ok(Err(err)) => format!("the internal listener failed: {err}"),
                Err(err) => format!("the internal listener task failed: {err}"),
            },
            None => std::future::pending().await,
        }
    };
    let failed = tokio::select! {
        () = shutdown => None,
        message = failure => Some(message),
        message = internal_ended => {
            internal_server = None;
            Some(message)
        }
    };
    if let Some(message) = &failed {
        error!(error = %message, "a module failed; stopping");
    }
    info!(grace_period = %humantime::format_duration(grace), "shutting down");
    readiness.set_stopping();
    // Backend first: the ingester leaves the write path (LEAVING, flush,
    // leave the ring) while HTTP still serves reads; then HTTP stops; then
    // the distributor leaves its ring and gossip stops.
    membership
        .stop_ingester(async {
            if let Some(module) = &ingester {
                match module.ingester.shutdown().await {
                    Ok(report) => info!(blocks = report.blocks, "ingester flushed"),
                    Err(err) => error!(error = %err, "the ingester did not flush and upload everything; the WAL and local blocks keep it for the next start"),
                }
            }
        })
        .await;
    stop.cancel();
    // One grace period for both listeners.
    let deadline = tokio::time::Instant::now() + grace;
    let abort = server.abort_handle();
    let served = match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(result)) => result.context("the HTTP server failed"),
        Ok(Err(join_error)) => Err(join_error).context("the HTTP server task failed"),
        Err(_) => {
            warn!(
                grace_period = %humantime::format_duration(grace),
                "requests still running after the grace period; stopping anyway"
            );
            abort.abort();
            Ok(())
        }
    };
    if let Some(internal) = internal_server {
        // Stopped with the public server (the same token); what it still
        // runs after the grace period is cut.
        let abort = internal.abort_handle();
        match tokio::time::timeout_at(deadline, internal).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => warn!(error = %err, "the internal listener failed while stopping"),
            Ok(Err(err)) => warn!(error = %err, "the internal listener task failed while stopping"),
            Err(_) => abort.abort(),
        }
    }
    if let Some(module) = &distributor {
        // Pushes to replicas still running after their client was answered.
        module.distributor.shutdown().await;
    }
    stop_reloading.cancel();
    if let Some(reloader) = reloader {
        let _ = reloader.await;
    }
    // A round cut short is finished by the next start.
    stop_compacting.cancel();
    if let Some(compactor) = compactor {
        let _ = compactor.await;
    }
    membership.shutdown().await;
    info!("stopped");
    served?;
    match failed {
        Some(message) => Err(anyhow::anyhow!(message)),
        None => Ok(()),
    }
}

/// The WAL corruption that stopped the ingester's start, if that is what
/// `err` is.
fn corrupt_wal(err: &anyhow::Error) -> Option<&WalError> {
    match err.downcast_ref::<StartError>()? {
        StartError::Wal(corrupt @ WalError::Corrupt { .. }) => Some(corrupt),
        _ => None,
    }
}

/// Serves the status routes only, `/ready` failing with the checks'
/// reasons, until `shutdown`: a process that must not take traffic but
/// should say why (its logs, `/ready`, `/metrics`) rather than exit and be
/// restarted into the same state.
async fn serve_unready(
    listener: TcpListener,
    status: StatusState,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    status.readiness.set_ready();
    let app = crate::status::routes(Arc::new(status)).fallback(route_not_found);
    let address = listener.local_addr().context("cannot read the listening address")?;
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, app, stop.clone()));
    info!(address = %address, "listening for HTTP/1.1 and h2c (status pages only: not ready)");
    shutdown.await;
    stop.cancel();
    server
        .await
        .context("the HTTP server task failed")?
        .context("the HTTP server failed")?;
    info!("stopped");
    Ok(())
}

async fn serve(listener: TcpListener, app: Router, stop: CancellationToken) -> std::io::Result<()> {
    // Without TCP_NODELAY a response written in two parts (head, then
    // body) waits for the client's delayed ACK: about 40 ms per answer.
    let listener = listener.tap_io(|stream| {
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

fn internal_listen_address(config: &Config) -> anyhow::Result<SocketAddr> {
    let address = &config.server.grpc_listen_address;
    let ip = if address.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        address
            .parse()
            .with_context(|| format!("invalid internal listen address {address:?}"))?
    };
    Ok(SocketAddr::new(ip, config.server.grpc_listen_port))
}

fn listen_address(config: &Config) -> anyhow::Result<SocketAddr> {
    let ip = if config.server.http_listen_address.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        config
            .server
            .http_listen_address
            .parse()
            .with_context(|| format!("invalid listen address {:?}", config.server.http_listen_address))?
    };
    Ok(SocketAddr::new(ip, config.server.http_listen_port))
}

async fn route_not_found(uri: axum::http::Uri) -> axum::response::Response {
    RpcError::new(ErrorCode::NotFound, format!("no route for {}", uri.path())).into_response()
}
