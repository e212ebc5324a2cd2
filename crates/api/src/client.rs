//! Clients of the ingesters' internal API (`ingester.v1`, gRPC over h2c),
//! for distributors and queriers: one lazily connected channel per
//! address, multiplexing every call to it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::{ErrorCode, RpcError};
use crate::pb::ingester::v1::ingester_service_client::IngesterServiceClient;

/// `X-Scope-OrgID` as gRPC metadata (keys are lower case).
const ORG_ID_METADATA: &str = "x-scope-orgid";

/// A connection to an ingester not made within this fails its calls.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Every connection is pinged this often (HTTP/2 PING), idle or not; a
/// ping unanswered for `KEEPALIVE_TIMEOUT` closes it and fails its calls.
/// A partitioned ingester (no reset, no FIN: packets just vanish) is so
/// noticed within seconds rather than when the kernel gives up.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Ingester clients by `host:port`.
#[derive(Debug, Default)]
pub struct IngesterClients {
    channels: Mutex<HashMap<String, Channel>>,
}

impl IngesterClients {
    pub fn new() -> Self {
        Self::default()
    }

    /// The client of the ingester at `addr`; connects on first use.
    pub fn get(&self, addr: &str) -> Result<IngesterServiceClient<Channel>, RpcError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|err| RpcError::new(ErrorCode::Internal, format!("ingester address {addr:?}: {err}")))?;
                let channel = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(IngesterServiceClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }
}

/// A request carrying `message` for `tenant`.
pub fn tenant_request<T>(tenant: &str, message: T) -> Result<tonic::Request<T>, RpcError> {
    let mut request = tonic::Request::new(message);
    let value = tenant
        .parse()
        .map_err(|_| RpcError::invalid_argument(format!("tenant {tenant:?} is not a header value")))?;
    request.metadata_mut().insert(ORG_ID_METADATA, value);
    Ok(request)
}
