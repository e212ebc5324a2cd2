//! Ingesters in other processes, reached with gRPC (h2c) at their ring
//! address: `ingester.v1.IngesterService/Push`.

use std::sync::Arc;

use flamedb_api::pb::push::v1::{PushRequest, RawProfileSeries, RawSample};
use flamedb_api::{IngesterClients, RpcError, labels_to_pairs, tenant_request};
use flamedb_ring::InstanceDesc;
use futures_util::future::{BoxFuture, try_join_all};

use crate::replication::{IngesterPool, ReplicatedProfile};

/// Requests to one ingester are cut at about this many profile bytes, well
/// under the ingester's message limit.
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Ingesters in other processes.
#[derive(Debug, Default)]
pub struct RemoteIngesters {
    clients: IngesterClients,
}

impl RemoteIngesters {
    pub fn new() -> Self {
        Self::default()
    }
}

impl IngesterPool for RemoteIngesters {
    fn push(
        &self,
        instance: &InstanceDesc,
        tenant: &str,
        profiles: Vec<Arc<ReplicatedProfile>>,
    ) -> BoxFuture<'static, Result<(), RpcError>> {
        let client = self.clients.get(&instance.addr);
        let tenant = tenant.to_owned();
        Box::pin(async move {
            let client = client?;
            try_join_all(requests(&profiles).into_iter().map(|request| {
                let mut client = client.clone();
                let request = tenant_request(&tenant, request);
                async move {
                    client.push(request?).await?;
                    Ok::<_, RpcError>(())
                }
            }))
            .await
            .map(|_| ())
        })
    }
}

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
                Arc::new(
                    ReplicatedProfile::new(
                        Labels::from_pairs([("service_name", "a")]),
                        ProfileId([i; 16]),
                        big.clone(),
                        &flamedb_model::budget::RequestBudget::unlimited(),
                    )
                    .unwrap(),
                )
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
