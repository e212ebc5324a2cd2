//! Reads over the ingesters of the ring: every call goes to every
//! instance the ring allows for reads, at once; as many may fail as the
//! ring's read set tolerates, else the query fails saying which did.
//! Profiles are counted once: the IDs each ingester holds are listed
//! first, each ID is given to one holder, and each holder merges only its
//! own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flamedb_api::pb::ingester::v1 as ingester;
use flamedb_api::pb::types::v1 as types;
use flamedb_api::{ErrorCode, IngesterClients, RpcError, labels_from_pairs, tenant_request};
use flamedb_model::{Labels, ProfileId, Tree};
use flamedb_ring::{InstanceDesc, Operation, RingClient, now_ms};
use futures_util::future::join_all;
use tonic::transport::Channel;

use flamedb_api::pb::ingester::v1::ingester_service_client::IngesterServiceClient;

/// Profiles asked for per page of `SelectProfiles`.
const PAGE_SIZE: u32 = 65_536;

/// One profile as the ingesters list it.
#[derive(Debug, Clone)]
pub struct ListedProfile {
    pub id: ProfileId,
    pub labels: Arc<Labels>,
    pub time_ms: i64,
    pub total: i64,
}

/// Answers queries from the ingesters of a ring; cheap to clone.
#[derive(Clone)]
pub struct Querier {
    ring: RingClient,
    clients: Arc<IngesterClients>,
    timeout: Duration,
}

impl std::fmt::Debug for Querier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Querier")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Querier {
    /// Reads the ingesters of `ring`; each call to one may take `timeout`.
    pub fn new(ring: RingClient, timeout: Duration) -> Self {
        Self {
            ring,
            clients: Arc::new(IngesterClients::new()),
            timeout,
        }
    }

    /// Calls every readable ingester with `call`; the answers of those that
    /// answered, by position in the returned list of instances.
    async fn each_ingester<T, F, Fut>(&self, call: F) -> Result<Vec<(InstanceDesc, T)>, RpcError>
    where
        F: Fn(IngesterServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, RpcError>>,
    {
        let ring = self.ring.ring();
        let set = ring
            .replication_set_for_all(Operation::Read, now_ms())
            .map_err(|err| RpcError::new(ErrorCode::Unavailable, format!("cannot read the ingesters: {err}")))?;
        let instances: Vec<InstanceDesc> = set.instances.iter().map(|instance| (*instance).clone()).collect();
        let calls = instances.iter().map(|instance| {
            let client = self.clients.get(&instance.addr);
            let call = client.map(&call);
            async move {
                match tokio::time::timeout(self.timeout, call?).await {
                    Ok(result) => result,
                    Err(_) => Err(RpcError::new(
                        ErrorCode::DeadlineExceeded,
                        format!("no answer within {:?}", self.timeout),
                    )),
                }
            }
        });
        let results = join_all(calls).await;
        let mut answers = Vec::new();
        let mut failures = Vec::new();
        for (instance, result) in instances.into_iter().zip(results) {
            match result {
                Ok(answer) => answers.push((instance, answer)),
                Err(err) => failures.push(format!("{} ({}): {}", instance.id, instance.addr, err.message)),
            }
        }
        if failures.len() > set.max_errors {
            return Err(RpcError::new(
                ErrorCode::Unavailable,
                format!(
                    "{} of {} ingesters failed, at most {} may for a complete answer: {}",
                    failures.len(),
                    answers.len() + failures.len(),
                    set.max_errors,
                    failures.join("; ")
                ),
            ));
        }
        Ok(answers)
    }

    pub async fn profile_types(
        &self,
        tenant: &str,
        request: ingester::ProfileTypesRequest,
    ) -> Result<Vec<types::ProfileType>, RpcError> {
        let answers = self
            .each_ingester(|mut client| {
                let request = tenant_request(tenant, request);
                async move { Ok(client.profile_types(request?).await?.into_inner().profile_types) }
            })
            .await?;
        let by_id: BTreeMap<String, types::ProfileType> = answers
            .into_iter()
            .flat_map(|(_, types)| types)
            .map(|profile_type| (profile_type.id.clone(), profile_type))
            .collect();
        Ok(by_id.into_values().collect())
    }

    pub async fn label_names(&self, tenant: &str, request: types::LabelNamesRequest) -> Result<Vec<String>, RpcError> {
        let answers = self
            .each_ingester(|mut client| {
                let request = tenant_request(tenant, request.clone());
                async move { Ok(client.label_names(request?).await?.into_inner().names) }
            })
            .await?;
        Ok(union(answers.into_iter().flat_map(|(_, names)| names)))
    }

    pub async fn label_values(
        &self,
        tenant: &str,
        request: types::LabelValuesRequest,
    ) -> Result<Vec<String>, RpcError> {
        let answers = self
            .each_ingester(|mut client| {
                let request = tenant_request(tenant, request.clone());
                async move { Ok(client.label_values(request?).await?.into_inner().names) }
            })
            .await?;
        Ok(union(answers.into_iter().flat_map(|(_, names)| names)))
    }

    pub async fn series(&self, tenant: &str, request: ingester::SeriesRequest) -> Result<Vec<Labels>, RpcError> {
        let answers = self
            .each_ingester(|mut client| {
                let request = tenant_request(tenant, request.clone());
                async move { Ok(client.series(request?).await?.into_inner().labels_set) }
            })
            .await?;
        let unique: BTreeSet<Labels> = answers
            .into_iter()
            .flat_map(|(_, sets)| sets)
            .map(|set| labels_from_pairs(set.labels))
            .collect();
        Ok(unique.into_iter().collect())
    }

    /// The oldest and newest profile times (ms) over the ingesters.
    pub async fn profile_stats(&self, tenant: &str) -> Result<types::GetProfileStatsResponse, RpcError> {
        let answers = self
            .each_ingester(|mut client| {
                let request = tenant_request(tenant, types::GetProfileStatsRequest {});
                async move { Ok(client.get_profile_stats(request?).await?.into_inner()) }
            })
            .await?;
        let ingested: Vec<_> = answers
            .into_iter()
            .map(|(_, stats)| stats)
            .filter(|s| s.data_ingested)
            .collect();
        Ok(types::GetProfileStatsResponse {
            data_ingested: !ingested.is_empty(),
            oldest_profile_time: ingested.iter().map(|s| s.oldest_profile_time).min().unwrap_or(0),
            newest_profile_time: ingested.iter().map(|s| s.newest_profile_time).max().unwrap_or(0),
        })
    }

    /// Every profile of `selection`, each once (copies share an ID), with
    /// the ingesters that answered and which of them holds each.
    async fn list(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
    ) -> Result<(Vec<InstanceDesc>, Vec<(ListedProfile, usize)>), RpcError> {
        let answers = self
            .each_ingester(|client| list_one(client, tenant, selection.clone()))
            .await?;
        let mut seen: HashMap<ProfileId, usize> = HashMap::new();
        let mut profiles = Vec::new();
        let mut instances = Vec::new();
        for (holder, (instance, listed)) in answers.into_iter().enumerate() {
            instances.push(instance);
            for profile in listed {
                if let std::collections::hash_map::Entry::Vacant(entry) = seen.entry(profile.id) {
                    entry.insert(holder);
                    profiles.push((profile, holder));
                }
            }
        }
        Ok((instances, profiles))
    }

    /// Every profile of `selection`, each once.
    pub async fn select_profiles(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
    ) -> Result<Vec<ListedProfile>, RpcError> {
        Ok(self
            .list(tenant, selection)
            .await?
            .1
            .into_iter()
            .map(|(profile, _)| profile)
            .collect())
    }

    /// The merged tree of every profile of `selection`, each counted once.
    pub async fn merge(&self, tenant: &str, selection: &ingester::ProfileSelection) -> Result<Tree, RpcError> {
        let (instances, profiles) = self.list(tenant, selection).await?;
        let mut assigned: Vec<Vec<Vec<u8>>> = vec![Vec::new(); instances.len()];
        for (profile, holder) in profiles {
            assigned[holder].push(profile.id.0.to_vec());
        }
        let merges = instances
            .iter()
            .zip(assigned)
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(instance, ids)| {
                let client = self.clients.get(&instance.addr);
                let request = ingester::MergeProfilesRequest {
                    selection: Some(selection.clone()),
                    only_listed: true,
                    profile_ids: ids,
                    max_nodes: 0,
                };
                async move {
                    let mut client = client?;
                    let request = tenant_request(tenant, request)?;
                    let merged = tokio::time::timeout(self.timeout, client.merge_profiles(request))
                        .await
                        .map_err(|_| {
                            RpcError::new(
                                ErrorCode::DeadlineExceeded,
                                format!("ingester {} did not merge within {:?}", instance.id, self.timeout),
                            )
                        })??
                        .into_inner();
                    Tree::decode(&merged.tree)
                        .map_err(|err| RpcError::internal(format!("ingester {}: {err}", instance.id)))
                }
            });
        let mut tree = Tree::new();
        for merged in join_all(merges).await {
            // Each holder's profiles are its alone: all are needed.
            tree.merge(&merged?);
        }
        Ok(tree)
    }
}

/// Pages through one ingester's `SelectProfiles`.
async fn list_one(
    mut client: IngesterServiceClient<Channel>,
    tenant: &str,
    selection: ingester::ProfileSelection,
) -> Result<Vec<ListedProfile>, RpcError> {
    let mut listed = Vec::new();
    let mut page_token = Vec::new();
    loop {
        let request = ingester::SelectProfilesRequest {
            selection: Some(selection.clone()),
            page_size: PAGE_SIZE,
            page_token,
        };
        let page = client
            .select_profiles(tenant_request(tenant, request)?)
            .await?
            .into_inner();
        let series: Vec<Arc<Labels>> = page
            .series
            .into_iter()
            .map(|labels| Arc::new(labels_from_pairs(labels.labels)))
            .collect();
        for profile in page.profiles {
            let id = ProfileId::from_slice(&profile.id)
                .ok_or_else(|| RpcError::internal("an ingester listed a profile ID that is not 16 bytes"))?;
            let labels = series
                .get(profile.series as usize)
                .ok_or_else(|| RpcError::internal("an ingester listed a profile of an unknown series"))?
                .clone();
            listed.push(ListedProfile {
                id,
                labels,
                time_ms: profile.time_nanos.div_euclid(1_000_000),
                total: profile.total,
            });
        }
        if page.next_page_token.is_empty() {
            return Ok(listed);
        }
        page_token = page.next_page_token;
    }
}

fn union(values: impl Iterator<Item = String>) -> Vec<String> {
    values.collect::<BTreeSet<String>>().into_iter().collect()
}
