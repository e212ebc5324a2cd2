//! Clients of the ingesters' internal API (`ingester.v1`, gRPC over h2c),
//! for distributors and queriers: one lazily connected channel per
//! address, multiplexing every call to it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tonic::transport::{Channel, Endpoint};

use crate::error::{ErrorCode, RpcError};
use crate::pb::ingester::v1::ingester_service_client::IngesterServiceClient;

/// `X-Scope-OrgID` as gRPC metadata (keys are lower case).
const ORG_ID_METADATA: &str = "x-scope-orgid";

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
                let channel = endpoint.connect_lazy();
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
