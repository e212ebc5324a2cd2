//! The distributor's routes: Connect/gRPC `push.v1.PusherService/Push`
//! and the legacy `/ingest`.

use axum::Router;
use flamedb_api::pb::push::v1::{PushRequest, PushResponse};
use flamedb_api::{RequestContext, RpcError, RpcOptions, RpcRouter, labels_from_pairs};

use crate::distributor::Distributor;
use crate::ingest;

/// The routes of the ingest APIs. `options.max_message_bytes` bounds a
/// Connect push body as sent; each tenant's body limit then bounds what
/// its profiles decompress to.
pub fn routes(distributor: Distributor, options: RpcOptions) -> Router {
    let tenancy = options.tenancy;
    RpcRouter::new(options)
        .unary("/push.v1.PusherService/Push", {
            let distributor = distributor.clone();
            move |ctx, request| push(distributor.clone(), ctx, request)
        })
        .into_router()
        .merge(ingest::routes(distributor, tenancy))
}

/// Many series per request, each with raw profiles (gzip or plain). The
/// sample `ID`s of the request are not used: the distributor gives each
/// stored series-profile its own.
async fn push(distributor: Distributor, ctx: RequestContext, request: PushRequest) -> Result<PushResponse, RpcError> {
    let tenant = ctx.tenant()?.as_str().to_owned();
    let prepared = distributor
        .prepare(&tenant, move |batch| {
            if request.series.iter().all(|series| series.samples.is_empty()) {
                return Err(RpcError::invalid_argument("no profiles received"));
            }
            for series in request.series {
                let labels = labels_from_pairs(series.labels);
                for sample in series.samples {
                    // Pyroscope's body_size_limit_exceeded: invalid input,
                    // so agents do not retry it.
                    batch
                        .add_raw(&labels, &sample.raw_profile)
                        .map_err(|err| RpcError::invalid_argument(err.to_string()))?;
                }
            }
            Ok(())
        })
        .await?;
    distributor.store(prepared).await?;
    Ok(PushResponse {})
}
