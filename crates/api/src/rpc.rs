//! Unary RPC over HTTP: one handler per procedure, served at
//! `POST /<package.Service>/<Method>` with the Connect protocol (proto or
//! JSON, gzip) and with gRPC and gRPC-Web (on the same path and port; gRPC
//! over h2c).
//!
//! ```text
//!  request ──▶ method (405) ──▶ content type → protocol + codec (415)
//!          ──▶ admission (429) ──▶ tenant (401) ──▶ timeout header
//!          ──▶ body, size-limited (413) ──▶ unframe / decompress
//!          ──▶ decoded size counted (413/429) ──▶ decode ──▶ handler
//!              (everything after the admission under the timeout; each
//!              allocation charged to the request's budget first)
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

use flamedb_model::budget::{RequestBudget, allocation_size, extend_charged};

use crate::admission::Admission;
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
    budget: Arc<RequestBudget>,
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

    /// The request's memory budget: what decoding and copying it may
    /// allocate, charged before allocating.
    pub fn budget(&self) -> &Arc<RequestBudget> {
        &self.budget
    }

    /// A context for calling handlers directly in tests.
    pub fn for_tenant(tenant: TenantId) -> Self {
        Self {
            tenants: vec![tenant],
            headers: HeaderMap::new(),
            deadline: None,
            budget: Arc::new(RequestBudget::unlimited()),
        }
    }
}

/// Limits and tenancy shared by the procedures of one router.
#[derive(Debug, Clone)]
pub struct RpcOptions {
    pub tenancy: Tenancy,
    /// Largest request message, both as received and after decompression.
    pub max_message_bytes: usize,
    /// What the router's requests may take together and each alone.
    pub admission: Arc<Admission>,
}

/// Messages up to this size are decoded on the async worker that read
/// them (microseconds); larger ones on a blocking thread, in a decoding
/// slot.
const INLINE_DECODE_BYTES: usize = 64 * 1024;
/// What the body charges the request's budget as.
const BODY: &str = "the request body";
/// The most of a body's declared length reserved before it arrives.
const FIRST_BODY_RESERVATION: usize = 1 << 20;
/// What the decoded message charges the request's budget as.
const DECODED: &str = "the decoded request message";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a procedure adds to the router's handling of its requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcedureHooks {
    /// Runs on the headers before the body is read; an error is the answer.
    pub check_headers: Option<fn(&HeaderMap) -> Result<(), RpcError>>,
    /// Given why a request message could not be decoded, a better message
    /// when the procedure can tell what the sender got wrong.
    pub explain_decode_error: Option<fn(&str) -> Option<String>>,
}

/// A procedure with its message types erased.
trait Procedure: Send + Sync + 'static {
    fn hooks(&self) -> ProcedureHooks;

    fn call(
        &self,
        ctx: RequestContext,
        codec: Codec,
        message: Bytes,
        admission: Arc<Admission>,
    ) -> BoxFuture<Result<Bytes, RpcError>>;
}

struct Unary<Req, Resp, H> {
    handler: H,
    hooks: ProcedureHooks,
    messages: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp, H, Fut> Procedure for Unary<Req, Resp, H>
where
    Req: prost::Message + prost::Name + Default + DeserializeOwned + Send + 'static,
    Resp: prost::Message + Serialize + Send + 'static,
    H: Fn(RequestContext, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
{
    fn hooks(&self) -> ProcedureHooks {
        self.hooks
    }

    fn call(
        &self,
        ctx: RequestContext,
        codec: Codec,
        message: Bytes,
        admission: Arc<Admission>,
    ) -> BoxFuture<Result<Bytes, RpcError>> {
        let handler = self.handler.clone();
        let explain = self.hooks.explain_decode_error;
        Box::pin(async move {
            let budget = Arc::clone(&ctx.budget);
            let inline = message.len() <= INLINE_DECODE_BYTES;
            let decode = move || -> Result<Req, RpcError> {
                budget.charge(codec.decoded_size::<Req>(&message), DECODED)?;
                codec.decode(&message).map_err(|mut err| {
                    if let Some(message) = explain.and_then(|explain| explain(&err.message)) {
                        err.message = message;
                    }
                    err
                })
            };
            let request = if !inline {
                admission.decode(decode).await??
            } else {
                decode()?
            };
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
    pub fn unary<Req, Resp, H, Fut>(self, path: &str, handler: H) -> Self
    where
        Req: prost::Message + prost::Name + Default + DeserializeOwned + Send + 'static,
        Resp: prost::Message + Serialize + Send + 'static,
        H: Fn(RequestContext, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        self.unary_with(path, ProcedureHooks::default(), handler)
    }

    /// [`RpcRouter::unary`], with `hooks` into how its requests are read.
    pub fn unary_with<Req, Resp, H, Fut>(mut self, path: &str, hooks: ProcedureHooks, handler: H) -> Self
    where
        Req: prost::Message + prost::Name + Default + DeserializeOwned + Send + 'static,
        Resp: prost::Message + Serialize + Send + 'static,
        H: Fn(RequestContext, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, RpcError>> + Send + 'static,
    {
        let procedure: Arc<dyn Procedure> = Arc::new(Unary {
            handler,
            hooks,
            messages: PhantomData,
        });
        let options = self.options.clone();
        self.router = self.router.route(
            path,
            axum::routing::any(move |request: Request| serve(procedure.clone(), options.clone(), request)),
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
    // The request counts as in flight until answered; work of it that
    // outlives the answer holds only its budget.
    let outcome = match options.admission.admit() {
        Ok(admitted) => {
            call(
                procedure.as_ref(),
                &options,
                admitted.budget,
                protocol,
                parts.headers.clone(),
                body,
            )
            .await
        }
        Err(err) => Err(err),
    };
    protocol.respond(&parts.headers, outcome)
}

async fn call(
    procedure: &dyn Procedure,
    options: &RpcOptions,
    budget: Arc<RequestBudget>,
    protocol: Protocol,
    headers: HeaderMap,
    body: Body,
) -> Result<Bytes, RpcError> {
    let tenants = options.tenancy.tenants(&headers)?;
    if let Some(check) = procedure.hooks().check_headers {
        check(&headers)?;
    }
    let request = Received {
        protocol,
        headers,
        tenants,
        budget,
    };
    let Some(timeout) = protocol.timeout(&request.headers)? else {
        return read_and_call(procedure, options, request, body, None).await;
    };
    // The caller's timeout covers reading and decompressing the body too.
    let deadline = Instant::now() + timeout;
    let call = read_and_call(procedure, options, request, body, Some(deadline));
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

/// A request admitted, before its body is read.
struct Received {
    protocol: Protocol,
    headers: HeaderMap,
    tenants: Vec<TenantId>,
    budget: Arc<RequestBudget>,
}

async fn read_and_call(
    procedure: &dyn Procedure,
    options: &RpcOptions,
    request: Received,
    body: Body,
    deadline: Option<Instant>,
) -> Result<Bytes, RpcError> {
    let Received {
        protocol,
        headers,
        tenants,
        budget,
    } = request;
    let body = read_body(body, options.max_message_bytes, &headers, &budget).await?;
    let message = protocol.request_message(&headers, body, options.max_message_bytes, &budget)?;
    let ctx = RequestContext {
        tenants,
        headers,
        deadline,
        budget,
    };
    procedure
        .call(ctx, protocol.codec(), message, Arc::clone(&options.admission))
        .await
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Timeout(crate::BodyReadTimeout),
    #[error("cannot read request body: {message}")]
    Broken { message: String },
    #[error(transparent)]
    Budget(#[from] flamedb_model::budget::BudgetError),
}

impl From<BodyError> for RpcError {
    fn from(err: BodyError) -> Self {
        let code = match err {
            BodyError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            BodyError::Timeout(_) => ErrorCode::RequestTimeout,
            BodyError::Broken { .. } => ErrorCode::InvalidArgument,
            BodyError::Budget(budget) => return budget.into(),
        };
        RpcError::new(code, err.to_string())
    }
}

/// Reads a whole body of at most `limit` bytes, charging its buffer to
/// `budget` before it grows.
pub async fn read_body(
    body: Body,
    limit: usize,
    headers: &HeaderMap,
    budget: &RequestBudget,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;

    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|declared| declared > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    // A declared length is a claim, not bytes: reserve at most a little
    // before data arrives, so idle connections cannot hold the pool.
    let first_capacity = declared.unwrap_or(0).min(FIRST_BODY_RESERVATION);
    budget.charge(allocation_size(first_capacity), BODY)?;
    let mut buffer: Vec<u8> = Vec::with_capacity(first_capacity);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| match crate::BodyReadTimeout::find(&err) {
            Some(timeout) => BodyError::Timeout(timeout),
            None => BodyError::Broken {
                message: err.to_string(),
            },
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if buffer.len().saturating_add(data.len()) > limit {
            return Err(BodyError::TooLarge { limit });
        }
        extend_charged(&mut buffer, &data, limit, budget, BODY)?;
    }
    Ok(Bytes::from(buffer))
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
