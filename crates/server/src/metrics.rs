//! The process's metrics registry and the HTTP request metrics every route
//! records. Metrics are registered on an explicit [`Registry`] (no global),
//! so several nodes can live in one test process.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::build_info::BuildInfo;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status_code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
    rustc: String,
}

/// The HTTP metrics, shared by the request-recording middleware.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    request_duration: Family<RequestLabels, Histogram>,
}

impl HttpMetrics {
    /// Registers `flamedb_request_duration_seconds` and
    /// `flamedb_build_info` on `registry`.
    pub fn register(registry: &mut Registry, build: &BuildInfo) -> Arc<Self> {
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 4.0, 10))
        });
        registry.register(
            "flamedb_request_duration_seconds",
            "Time to answer HTTP requests, by method, route and status code",
            request_duration.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: build.version.to_owned(),
                revision: build.revision.to_owned(),
                rustc: build.rustc.to_owned(),
            })
            .set(1);
        registry.register(
            "flamedb_build_info",
            "Always 1; the labels say which build is running",
            build_info,
        );
        Arc::new(Self { request_duration })
    }
}

/// Middleware: records every request's duration under its route pattern.
pub async fn record_requests(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Known methods only: a client must not grow the metrics with made-up
    // ones.
    let method = match *request.method() {
        Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::HEAD | Method::OPTIONS | Method::PATCH => {
            request.method().as_str().to_owned()
        }
        _ => "other".to_owned(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    metrics
        .request_duration
        .get_or_create(&RequestLabels {
            method,
            route,
            status_code: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %err, "cannot encode metrics");
    }
    out
}
