//! Ingesters in other processes, reached with gRPC (h2c) at their ring
//! address: `ingester.v1.IngesterService/Push`. One lazily connected
//! channel per address, multiplexing every push to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use flamedb_api::pb::ingester::v1::ingester_service_client::IngesterServiceClient;
use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::{ErrorCode, RpcError, labels_to_pairs};
use flamedb_ring::InstanceDesc;
use futures_util::future::{BoxFuture, try_join_all};
use tonic::transport::{Channel, Endpoint};

use crate::replication::{IngesterPool, ReplicatedProfile};

/// Requests to one ingester are cut at about this many profile bytes, well
/// under the ingester's message limit.
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Clients of remote ingesters by address.
#[derive(Debug, Default)]
pub struct RemoteIngesters {
    channels: Mutex<HashMap<String, Channel>>,
}

impl RemoteIngesters {
    pub fn new() -> Self {
        Self::default()
    }

    fn channel(&self, addr: &str) -> Result<Channel, RpcError> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|err| RpcError::new(ErrorCode::Internal, format!("ingester address {addr:?}: {err}")))?;
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

impl IngesterPool for RemoteIngesters {
    fn push(
        &self,
        instance: &InstanceDesc,
        tenant: &str,
        profiles: Vec<Arc<ReplicatedProfile>>,
    ) -> BoxFuture<'static, Result<(), RpcError>> {
        let channel = self.channel(&instance.addr);
        let tenant = tenant.to_owned();
        Box::pin(async move {
            let client = IngesterServiceClient::new(channel?).max_decoding_message_size(1 << 20);
            let requests = requests(&profiles);
            try_join_all(requests.into_iter().map(|request| {
                let mut client = client.clone();
                let tenant = tenant.clone();
                async move {
                    let mut request = tonic::Request::new(request);
                    let tenant = tenant
                        .parse()
                        .map_err(|_| RpcError::invalid_argument(format!("tenant {tenant:?} is not a header value")))?;
                    request.metadata_mut().insert(ORG_ID_HEADER_LOWER, tenant);
                    client.push(request).await.map(|_| ()).map_err(status_error)
                }
            }))
            .await
            .map(|_| ())
        })
    }
}

/// `X-Scope-OrgID`: gRPC metadata keys are lower case.
const ORG_ID_HEADER_LOWER: &str = "x-scope-orgid";

/// The profiles as push requests of at most about [`MAX_REQUEST_BYTES`].
fn requests(profiles: &[Arc<ReplicatedProfile>]) -> Vec<PushRequest> {
    let mut requests = Vec::new();
    let mut current = PushRequest::default();
    let mut bytes = 0;
    for profile in profiles {
        let raw_profile = profile.encoded();
        if bytes > 0 && bytes + raw_profile.len() > MAX_REQUEST_BYTES {
            requests.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += raw_profile.len();
        current.series.push(RawProfileSeries {
            labels: labels_to_pairs(&profile.labels),
            samples: vec![RawSample {
                raw_profile: raw_profile.to_vec(),
                id: profile.id.to_string(),
            }],
            annotations: Vec::new(),
        });
    }
    if !current.series.is_empty() {
        requests.push(current);
    }
    requests
}

fn status_error(status: tonic::Status) -> RpcError {
    RpcError::new(
        ErrorCode::from_grpc_code(status.code() as u32),
        status.message().to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use flamedb_model::pprof::Profile;
    use flamedb_model::{Labels, ProfileId};

    use super::*;

    #[test]
    fn test_requests_carry_labels_and_ids_and_are_cut_by_size() {
        let big = Profile {
            string_table: vec![String::new(), "x".repeat(MAX_REQUEST_BYTES / 3)],
            ..Profile::default()
        };
        let profiles: Vec<Arc<ReplicatedProfile>> = (0..5u8)
            .map(|i| {
                Arc::new(ReplicatedProfile::new(
                    Labels::from_pairs([("service_name", "a")]),
                    ProfileId([i; 16]),
                    big.clone(),
                ))
            })
            .collect();
        // Two profiles of a third of the limit (and a little) fit each.
        let requests = requests(&profiles);
        assert_eq!(requests.len(), 3);
        let first = &requests[0].series[0];
        assert_eq!(first.labels[0].name, "service_name");
        assert_eq!(ProfileId::parse(&first.samples[0].id).unwrap(), ProfileId([0; 16]));
    }
}
