//! Unary RPC over HTTP: one handler per procedure, served at
//! `POST /<package.Service>/<Method>` with the Connect protocol (proto or
//! JSON, gzip) and with gRPC and gRPC-Web (on the same path and port; gRPC
//! over h2c).
//!
//! ```text
//!  request ──▶ method (405) ──▶ content type → protocol + codec (415)
//!          ──▶ tenant (401) ──▶ timeout header ──▶ body, size-limited (413)
//!          ──▶ unframe / decompress ──▶ decode ──▶ handler (under the timeout)
//!          ──▶ encode ──▶ Connect body (gzip if accepted) | gRPC frame + trailers
//! ```

mod codec;
mod protocol;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ErrorCode, RpcError};
use crate::tenant::{Tenancy, TenantId};
use codec::Codec;
use protocol::Protocol;

/// What a handler learns about its request besides the message.
#[derive(Debug, Clone)]
pub struct RequestContext {
    tenants: Vec<TenantId>,
    headers: HeaderMap,
    deadline: Option<Instant>,
}

impl RequestContext {
    /// The request's only tenant; an error when several were named (only
    /// some reads accept several).
    pub fn tenant(&self) -> Result<&TenantId, RpcError> {
        match self.tenants.as_slice() {
            [tenant] => Ok(tenant),
            tenants => Err(crate::tenant::TenantError::Multiple { count: tenants.len() }.into()),
        }
    }

    /// Every tenant the request named (one unless `a|b` was sent).
    pub fn tenants(&self) -> &[TenantId] {
        &self.tenants
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// When the caller stops waiting, from `Connect-Timeout-Ms` or
    /// `grpc-timeout`.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// A context for calling handlers directly in tests.
    pub fn for_tenant(tenant: TenantId) -> Self {
        Self {
            tenants: vec![tenant],
            headers: HeaderMap::new(),
            deadline: None,
        }
    }
}

/// Limits and tenancy shared by the procedures of one router.
#[derive(Debug, Clone, Copy)]
pub struct RpcOptions {
    pub tenancy: Tenancy,
    /// Largest request message, both as received and after decompression.
    pub max_message_bytes: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A procedure with its message types erased.
trait Procedure: Send + Sync + 'static {
    fn call(&self, ctx: RequestContext, codec: Codec, message: Bytes) -> BoxFuture<Result<Bytes, RpcError>>;
}

struct Unary<Req, Resp, H> {
    handler: H,
    messages: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp, H, Fut> Procedure for Unary<Req, Resp, H>
where
    Req: prost::Message + Default + DeserializeOwned + Send + 'static,
    Resp: prost::Message + Serialize + Send + 'static,
    H: Fn(RequestContext, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    fn call(&self, ctx: RequestContext, codec: Codec, message: Bytes) -> BoxFuture<Result<Bytes, RpcError>> {
        let handler = self.handler.clone();
        Box::pin(async move {
            let request: Req = codec.decode(&message)?;
            let response = handler(ctx, request).await?;
            codec.encode(&response)
        })
    }
}

/// Collects procedures and turns them into axum routes.
#[must_use]
pub struct RpcRouter {
    options: RpcOptions,
    router: axum::Router,
}

impl std::fmt::Debug for RpcRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcRouter")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RpcRouter {
    pub fn new(options: RpcOptions) -> Self {
        Self {
            options,
            router: axum::Router::new(),
        }
    }

    /// Serves `handler` at `path` (`/<package.Service>/<Method>`).
    pub fn unary<Req, Resp, H, Fut>(mut self, path: &str, handler: H) -> Self
    where
        Req: prost::Message + Default + DeserializeOwned + Send + 'static,
        Resp: prost::Message + Serialize + Send + 'static,
        H: Fn(RequestContext, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        let procedure: Arc<dyn Procedure> = Arc::new(Unary {
            handler,
            messages: PhantomData,
        });
        let options = self.options;
        self.router = self.router.route(
            path,
            axum::routing::any(move |request: Request| serve(procedure.clone(), options, request)),
        );
        self
    }

    pub fn into_router(self) -> axum::Router {
        self.router
    }
}

async fn serve(procedure: Arc<dyn Procedure>, options: RpcOptions, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        return protocol::method_not_allowed();
    }
    let Some(protocol) = Protocol::from_headers(&parts.headers) else {
        return protocol::unsupported_media_type(&parts.headers);
    };
    let outcome = call(procedure.as_ref(), options, protocol, parts.headers.clone(), body).await;
    protocol.respond(&parts.headers, outcome)
}

async fn call(
    procedure: &dyn Procedure,
    options: RpcOptions,
    protocol: Protocol,
    headers: HeaderMap,
    body: Body,
) -> Result<Bytes, RpcError> {
    let tenants = options.tenancy.tenants(&headers)?;
    let Some(timeout) = protocol.timeout(&headers)? else {
        return read_and_call(procedure, options, protocol, headers, body, tenants, None).await;
    };
    // The caller's timeout covers reading and decompressing the body too.
    let deadline = Instant::now() + timeout;
    let call = read_and_call(procedure, options, protocol, headers, body, tenants, Some(deadline));
    tokio::time::timeout_at(deadline.into(), call)
        .await
        .unwrap_or_else(|_| {
            Err(RpcError::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the call did not finish within its timeout of {}",
                    format_duration(timeout)
                ),
            ))
        })
}

async fn read_and_call(
    procedure: &dyn Procedure,
    options: RpcOptions,
    protocol: Protocol,
    headers: HeaderMap,
    body: Body,
    tenants: Vec<TenantId>,
    deadline: Option<Instant>,
) -> Result<Bytes, RpcError> {
    let body = read_body(body, options.max_message_bytes).await?;
    let message = protocol.request_message(&headers, body, options.max_message_bytes)?;
    let ctx = RequestContext {
        tenants,
        headers,
        deadline,
    };
    procedure.call(ctx, protocol.codec(), message).await
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, RpcError> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let too_large =
            std::error::Error::source(&err).is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_large {
            RpcError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than the limit of {limit} bytes"),
            )
        } else if let Some(timeout) = crate::BodyReadTimeout::find(&err) {
            RpcError::new(ErrorCode::RequestTimeout, timeout.to_string())
        } else {
            RpcError::new(ErrorCode::InvalidArgument, format!("cannot read request body: {err}"))
        }
    })
}

fn format_duration(duration: Duration) -> String {
    humanize_millis(duration.as_millis())
}

fn humanize_millis(millis: u128) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}
