//! Reads over the ingesters of the ring and the blocks in object storage:
//! every call goes to every instance the ring allows for reads, at once; as
//! many may fail as the ring's read set tolerates, else the query fails
//! saying which did. Once the answers make a complete one, the slow rest
//! get a short grace and then count as failed. Ranges reaching past `query_store_after` ago also read
//! the blocks; the ingesters are read for every range. Profiles are counted once: the IDs each source holds are
//! listed first, each ID is given to one holder (ingesters first), and
//! each holder merges only its own. A merge whose range no stored block
//! overlaps (the ingesters alone hold it) first asks each ingester for a
//! summary of each series (profiles counted, IDs and totals summed); when every
//! replica of every series holds the same profiles, each series is merged
//! whole by one of them, without listing a profile. The part of a range
//! that compacted blocks alone hold is merged from them whole, without
//! listing either (see `compacted`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use flamedb_api::pb::ingester::v1 as ingester;
use flamedb_api::pb::types::v1 as types;
use flamedb_api::{ErrorCode, IngesterClients, RpcError, labels_from_pairs, profile_type_to_proto, tenant_request};
use flamedb_model::budget::RequestBudget;
use flamedb_model::{
    CompactTree, Labels, PROFILE_TYPE, ProfileId, ProfileType, Selector, Tree, TreeDecodeError, parse_selector,
};
use flamedb_ring::{InstanceDesc, Operation, RingClient, now_ms};
use flamedb_storage::{Block, ProfileQuery, SeriesIndex, TimeRange};
use futures_util::future::try_join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tonic::transport::Channel;
use tracing::debug;

use flamedb_api::pb::ingester::v1::ingester_service_client::IngesterServiceClient;

use crate::compacted::{compacted_alone_until, drop_superseded, is_compacted};
use crate::store::{Store, block_query, list_block, merge_block};

/// Once the ingesters that answered make a complete answer, the others
/// get as long again as those took, and at least this.
const STRAGGLER_WAIT_MIN: Duration = Duration::from_secs(1);
/// Profiles asked for per page of `SelectProfiles`.
const PAGE_SIZE: u32 = 65_536;
/// Selections of more profiles than this are merged by all their holders,
/// each a share; smaller ones by few holders (see `pick_holders`).
const SPREAD_MERGES_ABOVE: usize = 16_384;
/// Profile IDs per `MergeProfiles` request (16 bytes each: 8 MiB).
const IDS_PER_MERGE: usize = 500_000;
/// Series fingerprints per `MergeProfiles` request (8 bytes each: 8 MiB).
const SERIES_PER_MERGE: usize = 1_000_000;

/// One profile as the ingesters list it.
#[derive(Debug, Clone)]
pub struct ListedProfile {
    pub id: ProfileId,
    pub labels: Arc<Labels>,
    pub time_ms: i64,
    pub total: i64,
}

/// Where a listed profile is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Holder {
    Ingester(usize),
    Block(usize),
}

/// The sources of a selection and which holds each profile.
struct Listing {
    ingesters: Vec<InstanceDesc>,
    blocks: Vec<Arc<Block>>,
    profiles: Vec<(ListedProfile, Holder)>,
}

/// A selection cut where compacted blocks stop holding its profiles alone.
struct Split {
    /// The compacted blocks that alone hold the start of the range, and
    /// the query of that part of it.
    compacted: Option<(Vec<Arc<Block>>, ProfileQuery)>,
    /// The rest of the selection and its stored blocks, if any is left.
    rest: Option<(ingester::ProfileSelection, Vec<Arc<Block>>)>,
}

/// Answers queries from the ingesters of a ring and object storage;
/// cheap to clone.
#[derive(Clone)]
pub struct Querier {
    ring: RingClient,
    clients: Arc<IngesterClients>,
    timeout: Duration,
    store: Option<Arc<Store>>,
    query_store_after: Duration,
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
            store: None,
            query_store_after: Duration::ZERO,
        }
    }

    /// Also reads the blocks of `store` for the part of a range older than
    /// `query_store_after` ago (trusting a bucket index at most half that
    /// old: what ingesters uploaded since is on them only that long, and
    /// a query needs the other half to read it there).
    pub fn with_store(mut self, mut store: Store, query_store_after: Duration) -> Self {
        store.cap_index_staleness(query_store_after / 2);
        self.store = Some(Arc::new(store));
        self.query_store_after = query_store_after;
        self
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
        let mut calls: FuturesUnordered<_> = instances
            .iter()
            .enumerate()
            .map(|(index, instance)| {
                let call = self.clients.get(&instance.addr).map(&call);
                async move {
                    let result = match call {
                        Err(err) => Err(err),
                        Ok(call) => tokio::time::timeout(self.timeout, call).await.unwrap_or_else(|_| {
                            Err(RpcError::new(
                                ErrorCode::DeadlineExceeded,
                                format!("no answer within {:?}", self.timeout),
                            ))
                        }),
                    };
                    (index, result)
                }
            })
            .collect();
        let started = tokio::time::Instant::now();
        let mut results: Vec<Option<Result<T, RpcError>>> = instances.iter().map(|_| None).collect();
        let mut pending = instances.len();
        // Until the answers so far make a complete one, wait for all (up to
        // the call timeout); then give the rest as long again as that
        // took (at least STRAGGLER_WAIT_MIN): a partitioned or hung
        // ingester the ring still calls healthy must not hold every query.
        let mut straggler_deadline = None;
        while pending > 0 {
            if straggler_deadline.is_none() && set.tolerates(without_answer(&instances, &results)) {
                straggler_deadline = Some(tokio::time::Instant::now() + started.elapsed().max(STRAGGLER_WAIT_MIN));
            }
            let next = match straggler_deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, calls.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => calls.next().await,
            };
            let Some((index, result)) = next else { break };
            pending -= 1;
            results[index] = Some(result);
        }
        let tolerated = set.tolerates(without_answer(&instances, &results));
        let mut answers = Vec::new();
        let mut failures = Vec::new();
        for (instance, result) in instances.into_iter().zip(results) {
            match result {
                Some(Ok(answer)) => answers.push((instance, answer)),
                // The request itself is wrong: every ingester would say so.
                Some(Err(err)) if err.code == ErrorCode::InvalidArgument => return Err(err),
                Some(Err(err)) => failures.push(format!("{} ({}): {}", instance.id, instance.addr, err.message)),
                None => failures.push(format!(
                    "{} ({}): no answer within {:?}, when the others had answered",
                    instance.id,
                    instance.addr,
                    started.elapsed()
                )),
            }
        }
        if !tolerated {
            return Err(RpcError::new(
                ErrorCode::Unavailable,
                format!(
                    "{} of {} ingesters failed; a complete answer allows {}: {}",
                    failures.len(),
                    answers.len() + failures.len(),
                    set.tolerance(),
                    failures.join("; ")
                ),
            ));
        }
        Ok(answers)
    }

    pub(crate) async fn profile_types(
        &self,
        tenant: &str,
        request: ingester::ProfileTypesRequest,
    ) -> Result<Vec<types::ProfileType>, RpcError> {
        let (answers, stored) = futures_util::try_join!(
            self.each_ingester(|mut client| {
                let request = tenant_request(tenant, request);
                async move { Ok(client.profile_types(request?).await?.into_inner().profile_types) }
            }),
            self.read_block_indexes(tenant, request.start, request.end, |series, range| {
                series.label_values(PROFILE_TYPE, &[], range)
            })
        )?;
        let mut by_id: BTreeMap<String, types::ProfileType> = answers
            .into_iter()
            .flat_map(|(_, types)| types)
            .map(|profile_type| (profile_type.id.clone(), profile_type))
            .collect();
        for id in stored {
            if let Ok(profile_type) = ProfileType::parse(&id) {
                by_id.entry(id).or_insert_with(|| profile_type_to_proto(&profile_type));
            }
        }
        Ok(by_id.into_values().collect())
    }

    pub(crate) async fn label_names(
        &self,
        tenant: &str,
        request: types::LabelNamesRequest,
    ) -> Result<Vec<String>, RpcError> {
        let selectors = selectors(&request.matchers)?;
        let (answers, stored) = futures_util::try_join!(
            self.each_ingester(|mut client| {
                let request = tenant_request(tenant, request.clone());
                async move { Ok(client.label_names(request?).await?.into_inner().names) }
            }),
            self.read_block_indexes(tenant, request.start, request.end, move |series, range| {
                series.label_names(&selectors, range)
            })
        )?;
        Ok(union(answers.into_iter().flat_map(|(_, names)| names).chain(stored)))
    }

    pub(crate) async fn label_values(
        &self,
        tenant: &str,
        request: types::LabelValuesRequest,
    ) -> Result<Vec<String>, RpcError> {
        let selectors = selectors(&request.matchers)?;
        let name = request.name.clone();
        let (answers, stored) = futures_util::try_join!(
            self.each_ingester(|mut client| {
                let request = tenant_request(tenant, request.clone());
                async move { Ok(client.label_values(request?).await?.into_inner().names) }
            }),
            self.read_block_indexes(tenant, request.start, request.end, move |series, range| {
                series.label_values(&name, &selectors, range)
            })
        )?;
        Ok(union(answers.into_iter().flat_map(|(_, names)| names).chain(stored)))
    }

    pub(crate) async fn series(&self, tenant: &str, request: ingester::SeriesRequest) -> Result<Vec<Labels>, RpcError> {
        let selectors = selectors(&request.matchers)?;
        let label_names = request.label_names.clone();
        let (answers, stored) = futures_util::try_join!(
            self.each_ingester(|mut client| {
                let request = tenant_request(tenant, request.clone());
                async move { Ok(client.series(request?).await?.into_inner().labels_set) }
            }),
            self.read_block_indexes(tenant, request.start, request.end, move |series, range| {
                series
                    .series_labels(&selectors, range)
                    .into_iter()
                    .map(|labels| project(&labels, &label_names))
                    .collect()
            })
        )?;
        let unique: BTreeSet<Labels> = answers
            .into_iter()
            .flat_map(|(_, sets)| sets)
            .map(|set| labels_from_pairs(set.labels))
            .chain(stored)
            .collect();
        Ok(unique.into_iter().collect())
    }

    /// `read` over the series index of every stored block overlapping
    /// `start..end` (ms), when that range reaches past what the ingesters
    /// keep; nothing otherwise (or for "any time", 0..0, as Pyroscope).
    async fn read_block_indexes<T: Send + 'static>(
        &self,
        tenant: &str,
        start: i64,
        end: i64,
        read: impl Fn(&SeriesIndex, TimeRange) -> Vec<T> + Send + Sync + 'static,
    ) -> Result<Vec<T>, RpcError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        if (start == 0 && end == 0) || start >= self.store_boundary() {
            return Ok(Vec::new());
        }
        let range = TimeRange {
            start_ms: start,
            end_ms: end,
        };
        let blocks = store.blocks(tenant, range).await?;
        tokio::task::spawn_blocking(move || blocks.iter().flat_map(|block| read(block.series(), range)).collect())
            .await
            .map_err(|err| RpcError::internal(err.to_string()))
    }

    /// Ranges starting before this (ms) read object storage too.
    fn store_boundary(&self) -> i64 {
        now_ms() - i64::try_from(self.query_store_after.as_millis()).unwrap_or(i64::MAX)
    }

    /// The oldest and newest profile times (ms) over the ingesters and the
    /// stored blocks.
    pub(crate) async fn profile_stats(&self, tenant: &str) -> Result<types::GetProfileStatsResponse, RpcError> {
        let mut spans = self.ingester_time_spans(tenant).await?;
        if let Some(store) = &self.store {
            spans.extend(store.time_spans(tenant).await?);
        }
        Ok(types::GetProfileStatsResponse {
            data_ingested: !spans.is_empty(),
            oldest_profile_time: spans.iter().map(|span| span.0).min().unwrap_or(0),
            newest_profile_time: spans.iter().map(|span| span.1).max().unwrap_or(0),
        })
    }

    /// The oldest and newest profile time (ms) of each answering ingester
    /// that holds profiles of `tenant`.
    async fn ingester_time_spans(&self, tenant: &str) -> Result<Vec<(i64, i64)>, RpcError> {
        let answers = self
            .each_ingester(|mut client| {
                let request = tenant_request(tenant, types::GetProfileStatsRequest {});
                async move { Ok(client.get_profile_stats(request?).await?.into_inner()) }
            })
            .await?;
        Ok(answers
            .into_iter()
            .map(|(_, stats)| stats)
            .filter(|stats| stats.data_ingested)
            .map(|stats| (stats.oldest_profile_time, stats.newest_profile_time))
            .collect())
    }

    /// The stored blocks a selection reads: those overlapping its range
    /// when it starts before `query_store_after` ago, else none; never one
    /// that another supersedes.
    async fn stored_blocks(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
    ) -> Result<Vec<Arc<Block>>, RpcError> {
        match &self.store {
            Some(store) if selection.start < self.store_boundary() => {
                let range = TimeRange {
                    start_ms: selection.start,
                    end_ms: selection.end,
                };
                Ok(drop_superseded(store.blocks(tenant, range).await?))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Splits `selection` (whose stored blocks are `blocks`) where the
    /// compacted blocks stop being the only holders (see
    /// [`compacted_alone_until`]).
    async fn split(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
        blocks: Vec<Arc<Block>>,
    ) -> Result<Split, RpcError> {
        let all_rest = |blocks| Split {
            compacted: None,
            rest: Some((selection.clone(), blocks)),
        };
        if !blocks.iter().any(|block| is_compacted(block.meta())) {
            return Ok(all_rest(blocks));
        }
        let oldest: Vec<i64> = self
            .ingester_time_spans(tenant)
            .await?
            .iter()
            .map(|span| span.0)
            .collect();
        let metas: Vec<_> = blocks.iter().map(|block| block.meta()).collect();
        let until = compacted_alone_until(&metas, &oldest);
        if selection.start >= until {
            return Ok(all_rest(blocks));
        }
        let alone = TimeRange {
            start_ms: selection.start,
            end_ms: selection.end.min(until - 1),
        };
        let query = block_query(
            &selection.profile_type_id,
            &selection.label_selector,
            alone.start_ms,
            alone.end_ms,
        )?;
        let compacted = blocks
            .iter()
            .filter(|block| is_compacted(block.meta()) && alone.overlaps(block.meta().min_time, block.meta().max_time))
            .cloned()
            .collect();
        // Nothing else holds profiles after `until == i64::MAX`.
        let rest = (until <= selection.end && until < i64::MAX).then(|| {
            let blocks = blocks
                .into_iter()
                .filter(|block| block.meta().max_time >= until)
                .collect();
            let selection = ingester::ProfileSelection {
                start: until,
                ..selection.clone()
            };
            (selection, blocks)
        });
        Ok(Split {
            compacted: Some((compacted, query)),
            rest,
        })
    }

    /// Every profile of `selection`, each once (copies share an ID), with
    /// the sources that answered and which of them holds each: the
    /// ingesters, and `blocks` (the selection's stored blocks).
    async fn list(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
        blocks: Vec<Arc<Block>>,
    ) -> Result<Listing, RpcError> {
        // Ingesters are always asked, however old the range: a block they
        // could not upload yet (object storage down) is only theirs.
        let ingesters = self.each_ingester(|client| list_one(client, tenant, selection.clone()));
        let blocks = async {
            if blocks.is_empty() {
                return Ok(Vec::new());
            }
            let query = block_query(
                &selection.profile_type_id,
                &selection.label_selector,
                selection.start,
                selection.end,
            )?;
            let listed = try_join_all(blocks.iter().map(|block| list_block(block.clone(), query.clone()))).await?;
            Ok::<_, RpcError>(blocks.into_iter().zip(listed).collect::<Vec<_>>())
        };
        let (ingester_answers, block_answers) = futures_util::try_join!(ingesters, blocks)?;
        // Every holder of each ID: ingesters first; blocks only when no
        // ingester has it.
        let mut holders: HashMap<ProfileId, (ListedProfile, Vec<Holder>)> = HashMap::new();
        let mut listing = Listing {
            ingesters: Vec::new(),
            blocks: Vec::new(),
            profiles: Vec::new(),
        };
        for (index, (instance, listed)) in ingester_answers.into_iter().enumerate() {
            listing.ingesters.push(instance);
            for profile in listed {
                holders
                    .entry(profile.id)
                    .or_insert_with(|| (profile, Vec::new()))
                    .1
                    .push(Holder::Ingester(index));
            }
        }
        for (index, (block, listed)) in block_answers.into_iter().enumerate() {
            listing.blocks.push(block);
            for profile in listed {
                let (_, holding) = holders.entry(profile.id).or_insert_with(|| (profile, Vec::new()));
                if holding.iter().all(|holder| matches!(holder, Holder::Block(_))) {
                    holding.push(Holder::Block(index));
                }
            }
        }
        listing.profiles = pick_holders(holders.into_values().collect())?;
        Ok(listing)
    }

    /// Every profile of `selection`, each once.
    pub(crate) async fn select_profiles(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
    ) -> Result<Vec<ListedProfile>, RpcError> {
        let blocks = self.stored_blocks(tenant, selection).await?;
        let split = self.split(tenant, selection, blocks).await?;
        // The compacted blocks hold each profile once, and alone.
        let compacted = async {
            match &split.compacted {
                Some((blocks, query)) => list_whole(blocks, query).await,
                None => Ok(Vec::new()),
            }
        };
        let rest = async {
            let Some((selection, blocks)) = split.rest else {
                return Ok(Vec::new());
            };
            Ok(self.list(tenant, &selection, blocks).await?.profiles)
        };
        let (compacted, rest) = futures_util::try_join!(compacted, rest)?;
        Ok(compacted
            .into_iter()
            .chain(rest.into_iter().map(|(profile, _)| profile))
            .collect())
    }

    /// The merged tree of every profile of `selection` (only the samples
    /// of `spans`, when given), each profile counted once: the part
    /// compacted blocks alone hold from them whole; the rest by whole
    /// series when the ingesters alone hold it (no stored block overlaps
    /// it) and the replicas agree, else by listed profile. Every tree of
    /// the merge is charged to `budget`.
    pub(crate) async fn merge(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
        spans: Option<HashSet<u64>>,
        budget: &Arc<RequestBudget>,
    ) -> Result<Tree, RpcError> {
        let blocks = self.stored_blocks(tenant, selection).await?;
        let split = self.split(tenant, selection, blocks).await?;
        let spans = spans.map(Arc::new);
        let compacted = async {
            match &split.compacted {
                Some((blocks, query)) => merge_whole(blocks, query, spans.clone(), budget).await,
                None => Ok(Vec::new()),
            }
        };
        let rest = async {
            match split.rest {
                Some((selection, blocks)) => self
                    .merge_listed(tenant, &selection, blocks, spans.clone(), budget)
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let (mut trees, rest) = futures_util::try_join!(compacted, rest)?;
        trees.extend(rest);
        merge_trees(trees, budget).await
    }

    /// The merge of `selection` over the ingesters and `blocks`, each
    /// profile once: by whole series when no block overlaps and the
    /// replicas agree, else by listed profile.
    async fn merge_listed(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
        blocks: Vec<Arc<Block>>,
        spans: Option<Arc<HashSet<u64>>>,
        budget: &Arc<RequestBudget>,
    ) -> Result<Tree, RpcError> {
        let span_ids: Vec<u64> = spans.iter().flat_map(|spans| spans.iter().copied()).collect();
        if blocks.is_empty() {
            match self.merge_by_series(tenant, selection, &span_ids, budget).await {
                Ok(Some(tree)) => return Ok(tree),
                Ok(None) => {}
                // The request itself is wrong: the listing would say so too.
                Err(err) if err.code == ErrorCode::InvalidArgument => return Err(err),
                // An ingester that cannot summarize (an older version) or
                // failed its merge: the listing has its own tolerance.
                Err(err) => debug!(error = %err.message, "merging by series failed; listing the profiles"),
            }
        }
        let listing = self.list(tenant, selection, blocks).await?;
        self.merge_listing(tenant, selection, &listing, spans, budget).await
    }

    /// The merge by whole series (see [`plan_series`]), or `None` when the
    /// replicas disagree.
    async fn merge_by_series(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
        span_ids: &[u64],
        budget: &Arc<RequestBudget>,
    ) -> Result<Option<Tree>, RpcError> {
        let Some(plan) = self.plan_by_series(tenant, selection).await? else {
            return Ok(None);
        };
        let merges = plan.into_iter().flat_map(|(instance, series)| {
            let chunks: Vec<Vec<u64>> = series.chunks(SERIES_PER_MERGE).map(<[_]>::to_vec).collect();
            chunks.into_iter().map(move |series| (instance.clone(), series))
        });
        let trees = try_join_all(merges.map(|(instance, series)| {
            let filter = MergeFilter::Series(series);
            async move {
                self.merge_on(&instance, tenant, selection, filter, span_ids.to_vec(), budget)
                    .await
            }
        }))
        .await?;
        merge_trees(trees, budget).await.map(Some)
    }

    /// Which series each ingester merges (see [`plan_series`]), from the
    /// summaries of every readable ingester.
    async fn plan_by_series(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
    ) -> Result<Option<Vec<(InstanceDesc, Vec<u64>)>>, RpcError> {
        let answers = self
            .each_ingester(|mut client| {
                let request = ingester::SummarizeSeriesRequest {
                    selection: Some(selection.clone()),
                };
                let request = tenant_request(tenant, request);
                async move { Ok(client.summarize_series(request?).await?.into_inner().series) }
            })
            .await?;
        let (instances, summaries): (Vec<InstanceDesc>, Vec<Vec<ingester::SeriesSummary>>) =
            answers.into_iter().unzip();
        Ok(plan_series(&summaries).map(|plan| {
            instances
                .into_iter()
                .zip(plan)
                .filter(|(_, series)| !series.is_empty())
                .collect()
        }))
    }

    /// The merged tree and the listed profiles of `selection`, from one
    /// listing (so both count the same profiles).
    pub(crate) async fn merge_and_list(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
        budget: &Arc<RequestBudget>,
    ) -> Result<(Tree, Vec<ListedProfile>), RpcError> {
        let blocks = self.stored_blocks(tenant, selection).await?;
        let split = self.split(tenant, selection, blocks).await?;
        let compacted = async {
            match &split.compacted {
                Some((blocks, query)) => {
                    futures_util::try_join!(merge_whole(blocks, query, None, budget), list_whole(blocks, query))
                }
                None => Ok((Vec::new(), Vec::new())),
            }
        };
        let rest = async {
            let Some((selection, blocks)) = &split.rest else {
                return Ok((None, Vec::new()));
            };
            let listing = self.list(tenant, selection, blocks.clone()).await?;
            let tree = self.merge_listing(tenant, selection, &listing, None, budget).await?;
            Ok((Some(tree), listing.profiles))
        };
        let ((mut trees, mut listed), (tree, rest)) = futures_util::try_join!(compacted, rest)?;
        trees.extend(tree);
        listed.extend(rest.into_iter().map(|(profile, _)| profile));
        Ok((merge_trees(trees, budget).await?, listed))
    }

    /// Merges each listed profile on its holder: all samples, or only those
    /// of `spans`.
    async fn merge_listing(
        &self,
        tenant: &str,
        selection: &ingester::ProfileSelection,
        listing: &Listing,
        spans: Option<Arc<HashSet<u64>>>,
        budget: &Arc<RequestBudget>,
    ) -> Result<Tree, RpcError> {
        let span_ids: Vec<u64> = spans.iter().flat_map(|spans| spans.iter().copied()).collect();
        let mut for_ingester: Vec<Vec<Vec<u8>>> = vec![Vec::new(); listing.ingesters.len()];
        let mut for_block: Vec<HashSet<ProfileId>> = vec![HashSet::new(); listing.blocks.len()];
        for (profile, holder) in &listing.profiles {
            match *holder {
                Holder::Ingester(index) => for_ingester[index].push(profile.id.0.to_vec()),
                Holder::Block(index) => {
                    for_block[index].insert(profile.id);
                }
            }
        }
        // Requests stay well under the ingester's message limit.
        let ingester_merges = listing
            .ingesters
            .iter()
            .zip(for_ingester)
            .flat_map(|(instance, ids)| {
                let chunks: Vec<Vec<Vec<u8>>> = ids.chunks(IDS_PER_MERGE).map(<[_]>::to_vec).collect();
                chunks.into_iter().map(move |ids| (instance, ids))
            })
            .map(|(instance, ids)| {
                self.merge_on(
                    instance,
                    tenant,
                    selection,
                    MergeFilter::Profiles(ids),
                    span_ids.clone(),
                    budget,
                )
            });
        let query = block_query(
            &selection.profile_type_id,
            &selection.label_selector,
            selection.start,
            selection.end,
        )?;
        let block_merges = listing
            .blocks
            .iter()
            .zip(for_block)
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(block, ids)| {
                merge_block(
                    block.clone(),
                    query.clone(),
                    Some(ids),
                    spans.clone(),
                    Arc::clone(budget),
                )
            });
        let (mut from_ingesters, from_blocks) =
            futures_util::try_join!(try_join_all(ingester_merges), try_join_all(block_merges))?;
        from_ingesters.extend(from_blocks);
        merge_trees(from_ingesters, budget).await
    }

    /// Merges the profiles or series of `filter` on one ingester (only
    /// the samples of `span_ids`, when any); the tree it sends is charged
    /// to `budget` as it arrives and as it is read.
    async fn merge_on(
        &self,
        instance: &InstanceDesc,
        tenant: &str,
        selection: &ingester::ProfileSelection,
        filter: MergeFilter,
        span_ids: Vec<u64>,
        budget: &Arc<RequestBudget>,
    ) -> Result<Tree, RpcError> {
        // What the ingester sends is decoded (and allocated) before it can
        // be charged: no answer may be larger than what the budget has left.
        let mut client = self.clients.get(&instance.addr)?;
        let cap = budget.remaining();
        if let Some(cap) = cap {
            client = client.max_decoding_message_size(cap);
        }
        let (only_listed, profile_ids, series) = match filter {
            MergeFilter::Profiles(ids) => (true, ids, Vec::new()),
            MergeFilter::Series(series) => (false, Vec::new(), series),
        };
        let request = tenant_request(
            tenant,
            ingester::MergeProfilesRequest {
                selection: Some(selection.clone()),
                only_listed,
                profile_ids,
                max_nodes: 0,
                span_ids,
                series,
                compact: true,
            },
        )?;
        let merged = tokio::time::timeout(self.timeout, client.merge_profiles(request))
            .await
            .map_err(|_| {
                RpcError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("ingester {} did not merge within {:?}", instance.id, self.timeout),
                )
            })?
            .map_err(|status| match cap {
                // Tonic refuses a message past the cap with OutOfRange.
                Some(cap) if status.code() == tonic::Code::OutOfRange => RpcError::from(budget.too_large(
                    budget.used().saturating_add(cap).saturating_add(1),
                    "a tree received from an ingester",
                )),
                _ => RpcError::from(status),
            })?
            .into_inner();
        let id = instance.id.clone();
        let budget = Arc::clone(budget);
        crate::service::off_runtime(move || {
            let received = merged.tree.len()
                + merged.nodes.len()
                + merged
                    .names
                    .iter()
                    .map(|name| name.len() + size_of::<String>())
                    .sum::<usize>();
            budget.charge(received, "the trees received from ingesters")?;
            // An ingester that predates compact trees sends tree bytes.
            let tree = if merged.nodes.is_empty() {
                Tree::decode_within(&merged.tree, Arc::clone(&budget))
            } else {
                let compact = CompactTree {
                    names: merged.names,
                    nodes: merged.nodes,
                };
                Tree::decode_compact_within(&compact, Arc::clone(&budget))
            };
            budget.release(received);
            tree.map_err(|err| match err {
                TreeDecodeError::Budget(err) => err.into(),
                TreeDecodeError::Invalid { .. } => RpcError::internal(format!("ingester {id}: {err}")),
            })
        })
        .await
    }
}

/// The trees of `blocks` (compacted blocks that alone hold `query`'s
/// range), each merged whole.
async fn merge_whole(
    blocks: &[Arc<Block>],
    query: &ProfileQuery,
    spans: Option<Arc<HashSet<u64>>>,
    budget: &Arc<RequestBudget>,
) -> Result<Vec<Tree>, RpcError> {
    try_join_all(
        blocks
            .iter()
            .map(|block| merge_block(block.clone(), query.clone(), None, spans.clone(), Arc::clone(budget))),
    )
    .await
}

/// The profiles of `blocks` (compacted blocks that alone hold `query`'s
/// range): each once, unlisted elsewhere.
async fn list_whole(blocks: &[Arc<Block>], query: &ProfileQuery) -> Result<Vec<ListedProfile>, RpcError> {
    let listed = try_join_all(blocks.iter().map(|block| list_block(block.clone(), query.clone()))).await?;
    Ok(listed.into_iter().flatten().collect())
}

/// Which series each answering ingester merges, when every ingester that
/// holds profiles of a series holds the same ones (same count, IDs and
/// totals); `None` when some disagree (a replica missed writes), and the
/// profiles must be listed. Each series goes to the ingester of it that
/// holds the most series, so few partial trees are merged again (ties
/// rotate by the selection's fingerprints); a selection of more than
/// `SPREAD_MERGES_ABOVE` profiles is spread over the replicas.
fn plan_series(answers: &[Vec<ingester::SeriesSummary>]) -> Option<Vec<Vec<u64>>> {
    // Fingerprint → the summary and the ingesters (by answer) holding it.
    let mut series: HashMap<u64, (&ingester::SeriesSummary, Vec<usize>)> = HashMap::new();
    for (index, summaries) in answers.iter().enumerate() {
        for summary in summaries {
            let (agreed, holders) = series.entry(summary.fingerprint).or_insert((summary, Vec::new()));
            if *agreed != summary {
                return None;
            }
            holders.push(index);
        }
    }
    // The same profiles under two fingerprints (replicas that label a
    // series differently) would be merged twice: only the listing, by ID,
    // counts them once.
    let mut contents: HashSet<(u64, &[u8])> = HashSet::new();
    for (summary, _) in series.values() {
        if summary.profiles > 0 && !contents.insert((summary.profiles, summary.id_sum.as_slice())) {
            return None;
        }
    }
    let profiles: u64 = series.values().map(|(summary, _)| summary.profiles).sum();
    let mut held = vec![0usize; answers.len()];
    for (_, holders) in series.values() {
        for &holder in holders {
            held[holder] += 1;
        }
    }
    let count = answers.len().max(1);
    let rotation = series
        .keys()
        .fold(0u64, |sum, fingerprint| sum.wrapping_add(*fingerprint));
    let first = usize::try_from(rotation % count as u64).unwrap_or(0);
    let tie_rank = |holder: usize| (holder + count - first) % count;
    let spread = usize::try_from(profiles).unwrap_or(usize::MAX) > SPREAD_MERGES_ABOVE;
    let mut plan: Vec<Vec<u64>> = vec![Vec::new(); answers.len()];
    for (fingerprint, (_, holders)) in series {
        let holder = if spread {
            holders.get(usize::try_from(fingerprint % holders.len().max(1) as u64).unwrap_or(0))
        } else {
            holders
                .iter()
                .max_by_key(|&&holder| (held[holder], std::cmp::Reverse(tie_rank(holder))))
        };
        if let Some(&holder) = holder {
            plan[holder].push(fingerprint);
        }
    }
    for series in &mut plan {
        series.sort_unstable();
    }
    Some(plan)
}

/// What one ingester merges.
enum MergeFilter {
    /// These profiles (IDs of 16 bytes).
    Profiles(Vec<Vec<u8>>),
    /// Every profile of these series (fingerprints).
    Series(Vec<u64>),
}

/// The trees of several holders in one: each holder's profiles are its
/// alone, so all are needed. The largest takes in the others (charged to
/// `budget` as it grows); no tree at all is an empty one within `budget`.
async fn merge_trees(mut trees: Vec<Tree>, budget: &Arc<RequestBudget>) -> Result<Tree, RpcError> {
    trees.sort_by_key(Tree::node_count);
    let Some(mut tree) = trees.pop() else {
        return Ok(Tree::within(Arc::clone(budget)));
    };
    if trees.is_empty() {
        return Ok(tree);
    }
    crate::service::off_runtime(move || {
        while let Some(merged) = trees.pop() {
            tree.merge(&merged)?;
        }
        Ok(tree)
    })
    .await
}

/// The instances whose call failed or has not answered.
fn without_answer<'a, T>(
    instances: &'a [InstanceDesc],
    results: &'a [Option<Result<T, RpcError>>],
) -> impl Iterator<Item = &'a InstanceDesc> {
    instances
        .iter()
        .zip(results)
        .filter(|(_, result)| !matches!(result, Some(Ok(_))))
        .map(|(instance, _)| instance)
}

/// Picks the one holder that merges each profile. A large selection is
/// spread over the replicas by profile ID, so holders share the work. A
/// small one goes to few holders: each profile to the holder of it that
/// holds the most, so fewer partial trees are sent and merged again; ties
/// go to a holder picked by the selection's IDs, so different queries
/// load different replicas.
fn pick_holders(listed: Vec<(ListedProfile, Vec<Holder>)>) -> Result<Vec<(ListedProfile, Holder)>, RpcError> {
    let no_holder =
        |profile: &ListedProfile| RpcError::internal(format!("profile {} was listed without a holder", profile.id));
    if listed.len() > SPREAD_MERGES_ABOVE {
        return listed
            .into_iter()
            .map(|(profile, holding)| {
                let pick = usize::from(profile.id.0[15]) % holding.len().max(1);
                match holding.get(pick) {
                    Some(&holder) => Ok((profile, holder)),
                    None => Err(no_holder(&profile)),
                }
            })
            .collect();
    }
    let mut held: HashMap<Holder, usize> = HashMap::new();
    for holder in listed.iter().flat_map(|(_, holding)| holding) {
        *held.entry(*holder).or_default() += 1;
    }
    let mut order: Vec<Holder> = held.keys().copied().collect();
    order.sort_unstable();
    let first = usize::from(
        listed
            .iter()
            .fold(0u8, |sum, (profile, _)| sum.wrapping_add(profile.id.0[14])),
    ) % order.len().max(1);
    // 0 for the holder that wins ties, then 1, 2, ... in holder order.
    let tie_rank = |holder: &Holder| {
        let rank = order.binary_search(holder).unwrap_or(0);
        (rank + order.len() - first) % order.len().max(1)
    };
    listed
        .into_iter()
        .map(|(profile, holding)| {
            let holder = holding
                .iter()
                .copied()
                .max_by_key(|holder| (held.get(holder).copied(), std::cmp::Reverse(tie_rank(holder))));
            match holder {
                Some(holder) => Ok((profile, holder)),
                None => Err(no_holder(&profile)),
            }
        })
        .collect()
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

/// `labels` keeping only `names` (all when `names` is empty).
fn project(labels: &Labels, names: &[String]) -> Labels {
    if names.is_empty() {
        return labels.clone();
    }
    labels
        .iter()
        .filter(|label| names.contains(&label.name))
        .cloned()
        .collect()
}

/// The selectors of `matchers` (OR-ed); an empty one matches everything,
/// as on the ingesters.
fn selectors(matchers: &[String]) -> Result<Vec<Selector>, RpcError> {
    matchers
        .iter()
        .map(|matcher| {
            if matcher.trim().is_empty() {
                return Ok(Selector::default());
            }
            parse_selector(matcher)
                .map_err(|err| RpcError::invalid_argument(format!("label selector {matcher:?}: {err}")))
        })
        .collect()
}

fn union(values: impl Iterator<Item = String>) -> Vec<String> {
    values.collect::<BTreeSet<String>>().into_iter().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn summary(fingerprint: u64, profiles: u64) -> ingester::SeriesSummary {
        ingester::SeriesSummary {
            fingerprint,
            profiles,
            id_sum: vec![fingerprint as u8; 16],
            total: profiles as i64 * 10,
        }
    }

    #[test]
    fn test_agreeing_replicas_merge_each_series_once_on_few_holders() {
        // Three replicas of series 1 and 2; series 3 only on the third.
        let all = vec![summary(1, 5), summary(2, 5)];
        let answers = vec![all.clone(), all.clone(), [all, vec![summary(3, 1)]].concat()];
        let plan = plan_series(&answers).unwrap();
        // The third holds the most series: it merges all of them.
        assert_eq!(plan, [vec![], vec![], vec![1, 2, 3]]);
        // Each series exactly once, whatever the plan.
        let mut merged: Vec<u64> = plan.concat();
        merged.sort_unstable();
        assert_eq!(merged, [1, 2, 3]);
    }

    #[test]
    fn test_replicas_that_disagree_on_a_series_need_a_listing() {
        let answers = vec![vec![summary(1, 5)], vec![summary(1, 4)]];
        assert_eq!(plan_series(&answers), None);
        // Same count, other IDs.
        let mut other = summary(1, 5);
        other.id_sum[0] ^= 1;
        assert_eq!(plan_series(&[vec![summary(1, 5)], vec![other]]), None);
        // The same profiles under two fingerprints: only IDs tell.
        let mut renamed = summary(2, 5);
        renamed.id_sum = summary(1, 5).id_sum;
        assert_eq!(plan_series(&[vec![summary(1, 5)], vec![renamed]]), None);
        // A replica without the series in range holds none of it: no
        // disagreement, the one that holds them merges them.
        assert_eq!(plan_series(&[vec![summary(1, 5)], vec![]]).unwrap(), [vec![1], vec![]]);
    }

    #[test]
    fn test_large_selections_spread_series_over_their_replicas() {
        let all: Vec<ingester::SeriesSummary> = (0..64).map(|fingerprint| summary(fingerprint, 1_000)).collect();
        let plan = plan_series(&[all.clone(), all.clone(), all]).unwrap();
        assert!(plan.iter().all(|series| series.len() > 10), "{plan:?}");
        let mut merged: Vec<u64> = plan.concat();
        merged.sort_unstable();
        assert_eq!(merged, (0..64).collect::<Vec<u64>>());
    }

    fn listed(n: usize, holding: &[Holder]) -> Vec<(ListedProfile, Vec<Holder>)> {
        (0..n)
            .map(|i| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                id[14] = i as u8;
                id[15] = i as u8;
                let profile = ListedProfile {
                    id: ProfileId(id),
                    labels: Arc::new(Labels::default()),
                    time_ms: 0,
                    total: 1,
                };
                (profile, holding.to_vec())
            })
            .collect()
    }

    fn holders_used(picked: &[(ListedProfile, Holder)]) -> HashSet<Holder> {
        picked.iter().map(|(_, holder)| *holder).collect()
    }

    #[test]
    fn test_small_selections_are_merged_by_few_holders() {
        let replicas = [Holder::Ingester(2), Holder::Ingester(0), Holder::Ingester(1)];
        let mut profiles = listed(100, &replicas);
        // Ingester 1 also holds profiles the others do not: it holds the most.
        profiles.extend(listed(10, &[Holder::Ingester(1)]));
        profiles.extend(listed(5, &[Holder::Block(0)]));
        let picked = pick_holders(profiles).unwrap();
        assert_eq!(picked.len(), 115);
        assert_eq!(
            holders_used(&picked),
            HashSet::from([Holder::Ingester(1), Holder::Block(0)])
        );
    }

    #[test]
    fn test_ties_go_to_different_replicas_for_different_selections() {
        let replicas = [Holder::Ingester(0), Holder::Ingester(1), Holder::Ingester(2)];
        let mut chosen = HashSet::new();
        for n in 1..40 {
            let picked = pick_holders(listed(n, &replicas)).unwrap();
            let used = holders_used(&picked);
            assert_eq!(used.len(), 1, "one holder for {n} profiles");
            chosen.extend(used);
        }
        assert_eq!(chosen, HashSet::from(replicas));
    }

    #[test]
    fn test_a_profile_without_holders_is_an_error_not_a_smaller_answer() {
        let mut profiles = listed(3, &[Holder::Ingester(0)]);
        profiles[1].1.clear();
        assert_eq!(pick_holders(profiles).unwrap_err().code, ErrorCode::Internal);
    }

    #[test]
    fn test_large_selections_are_spread_over_the_holders() {
        let replicas = [Holder::Ingester(0), Holder::Ingester(1), Holder::Ingester(2)];
        let picked = pick_holders(listed(SPREAD_MERGES_ABOVE + 1, &replicas)).unwrap();
        assert_eq!(picked.len(), SPREAD_MERGES_ABOVE + 1);
        assert_eq!(holders_used(&picked), HashSet::from(replicas));
    }
}
