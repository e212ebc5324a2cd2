//! The distributor's routes: Connect/gRPC `push.v1.PusherService/Push`,
//! OTLP profiles (gRPC and OTLP/HTTP) and the legacy `/ingest`.

use std::sync::Arc;

use axum::Router;
use flamedb_api::pb::opentelemetry::proto::collector::profiles::v1development::{
    ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use flamedb_api::pb::push::v1::{PushRequest, PushResponse};
use flamedb_api::{ProcedureHooks, RequestContext, RpcError, RpcOptions, RpcRouter, Tenancy, labels_from_pairs};

use crate::distributor::Distributor;
use crate::{ingest, otlp};

/// OTLP profiles over gRPC (and Connect).
const OTLP_EXPORT_PATH: &str = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";
/// OTLP profiles over HTTP (protobuf or JSON).
const OTLP_HTTP_PATH: &str = "/v1development/profiles";

/// The routes of the ingest APIs. `max_message_bytes` bounds a Connect
/// push body as sent; each tenant's body limit then bounds what its
/// profiles decompress to, and the distributor's admission what every push
/// may allocate.
pub fn routes(distributor: Distributor, tenancy: Tenancy, max_message_bytes: usize) -> Router {
    let options = RpcOptions {
        tenancy,
        max_message_bytes,
        admission: Arc::clone(distributor.admission()),
    };
    let otlp_hooks = ProcedureHooks {
        check_headers: Some(otlp::check_version),
        explain_decode_error: Some(otlp::explain_decode_error),
    };
    RpcRouter::new(options)
        .unary("/push.v1.PusherService/Push", {
            let distributor = distributor.clone();
            move |ctx, request| push(distributor.clone(), ctx, request)
        })
        .unary_with(OTLP_EXPORT_PATH, otlp_hooks, {
            let distributor = distributor.clone();
            move |ctx, request| export(distributor.clone(), ctx, request)
        })
        .unary_with(OTLP_HTTP_PATH, otlp_hooks, {
            let distributor = distributor.clone();
            move |ctx, request| export(distributor.clone(), ctx, request)
        })
        .into_router()
        .merge(ingest::routes(distributor, tenancy))
}

/// Many series per request, each with raw profiles (gzip or plain). The
/// sample `ID`s of the request are not used: the distributor gives each
/// stored series-profile its own.
async fn push(distributor: Distributor, ctx: RequestContext, request: PushRequest) -> Result<PushResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str().to_owned();
    if request.series.iter().all(|series| series.samples.is_empty()) {
        return Err(RpcError::invalid_argument("no profiles received"));
    }
    let prepared = distributor
        .prepare(&tenant, Arc::clone(ctx.budget()), move |batch| {
            for series in request.series {
                let labels = labels_from_pairs(series.labels);
                for sample in series.samples {
                    batch.add_raw(&labels, &sample.raw_profile)?;
                }
            }
            Ok(())
        })
        .await?;
    distributor.store(prepared).await?;
    Ok(PushResponse {})
}

/// OTLP profiles: converted to pprof per profile and service, then stored
/// like pushed profiles (a request with some bad profiles stores the
/// others and answers 400 naming each).
async fn export(
    distributor: Distributor,
    ctx: RequestContext,
    request: ExportProfilesServiceRequest,
) -> Result<ExportProfilesServiceResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str().to_owned();
    if request.dictionary.is_none() {
        return Err(RpcError::invalid_argument("the OTLP request has no dictionary"));
    }
    if request.resource_profiles.is_empty() {
        return Err(RpcError::invalid_argument("the OTLP request has no resource_profiles"));
    }
    let prepared = distributor
        .prepare(&tenant, Arc::clone(ctx.budget()), move |batch| {
            otlp::add_export(batch, &request).map_err(RpcError::from)
        })
        .await?;
    distributor.store(prepared).await?;
    Ok(ExportProfilesServiceResponse::default())
}
