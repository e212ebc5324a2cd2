//! Writing series-profiles to their replicas: one batched push per
//! ingester, all at once; success once every series has a quorum of
//! acknowledgements, failure as soon as one series cannot reach it. Pushes
//! still running when the caller is answered finish in the background,
//! each within the push timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flamedb_api::{ErrorCode, RpcError};
use flamedb_model::budget::{BudgetError, RequestBudget, allocation_size};
use flamedb_model::pprof::Profile;
use flamedb_model::{Labels, ProfileId};
use flamedb_ring::{InstanceDesc, Operation, Ring, now_ms};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::metrics::DistributorMetrics;

/// One series-profile to store: its series labels, the ID every replica
/// stores it under, and the prepared profile (shared, not copied, by the
/// ingester of this process) with its pprof bytes, encoded once for all
/// replicas.
#[derive(Debug)]
pub struct ReplicatedProfile {
    pub labels: Labels,
    pub id: ProfileId,
    profile: Arc<Profile>,
    encoded: Bytes,
}

impl ReplicatedProfile {
    /// Encodes `profile` (on the caller's thread: a blocking one), its
    /// bytes charged to `budget` first; the size is worked out once.
    pub fn new(labels: Labels, id: ProfileId, profile: Profile, budget: &RequestBudget) -> Result<Self, BudgetError> {
        let len = prost::Message::encoded_len(&profile);
        budget.charge(allocation_size(len), "the pprof bytes of each series")?;
        let mut encoded = Vec::with_capacity(len);
        prost::Message::encode_raw(&profile, &mut encoded);
        Ok(Self {
            labels,
            id,
            profile: Arc::new(profile),
            encoded: Bytes::from(encoded),
        })
    }

    pub fn profile(&self) -> &Arc<Profile> {
        &self.profile
    }

    /// The profile as plain pprof bytes.
    pub fn encoded(&self) -> Bytes {
        self.encoded.clone()
    }
}

/// Sends batches to ingesters: in this process or over the network.
pub trait IngesterPool: Send + Sync {
    /// Stores `profiles` of `tenant` on `instance`; an error means the
    /// instance did not acknowledge them.
    fn push(
        &self,
        instance: &InstanceDesc,
        tenant: &str,
        profiles: Vec<Arc<ReplicatedProfile>>,
    ) -> BoxFuture<'static, Result<(), RpcError>>;
}

/// Acknowledgements of one series-profile.
#[derive(Debug)]
struct Quorum {
    needed: usize,
    tolerated: usize,
    acked: usize,
    failed: usize,
}

impl Quorum {
    fn done(&self) -> bool {
        self.acked >= self.needed
    }

    /// Counts an ack; true when this one completes the quorum.
    fn ack(&mut self) -> bool {
        self.acked += 1;
        self.acked == self.needed
    }

    /// Counts a failure; true when the quorum became impossible.
    fn fail(&mut self) -> bool {
        self.failed += 1;
        !self.done() && self.failed > self.tolerated
    }
}

/// One ingester's share of a push.
struct Batch {
    instance: InstanceDesc,
    series: Vec<usize>,
}

/// What one request writes: its tenant's series-profiles, and the budget
/// they were charged to (held while any push of them runs).
pub(crate) struct Writes<'a> {
    pub tenant: &'a str,
    pub profiles: Vec<ReplicatedProfile>,
    pub budget: &'a Arc<RequestBudget>,
}

/// Writes the series-profiles of `writes` to their replicas on `ring` and returns
/// once each has a quorum, or with the first error that makes one
/// impossible.
pub(crate) async fn replicate(
    ring: &Ring,
    pool: &Arc<dyn IngesterPool>,
    tasks: &TaskTracker,
    timeout: Duration,
    metrics: &DistributorMetrics,
    writes: Writes<'_>,
) -> Result<(), RpcError> {
    let Writes {
        tenant,
        profiles,
        budget,
    } = writes;
    let now = now_ms();
    let profiles: Vec<Arc<ReplicatedProfile>> = profiles.into_iter().map(Arc::new).collect();
    let mut quorums = Vec::with_capacity(profiles.len());
    let mut batches: HashMap<&str, Batch> = HashMap::new();
    for (index, profile) in profiles.iter().enumerate() {
        let set = ring
            .replication_set(profile.labels.token(tenant), Operation::Write, now)
            .map_err(|err| {
                metrics.replicated("failed", profiles.len());
                RpcError::new(
                    ErrorCode::Unavailable,
                    format!("cannot write series {}: {err}", profile.labels.render()),
                )
            })?;
        quorums.push(Quorum {
            needed: set.min_success(),
            tolerated: set.max_errors,
            acked: 0,
            failed: 0,
        });
        for instance in set.instances {
            batches
                .entry(instance.id.as_str())
                .or_insert_with(|| Batch {
                    instance: instance.clone(),
                    series: Vec::new(),
                })
                .series
                .push(index);
        }
    }
    let mut pending = quorums.iter().filter(|quorum| !quorum.done()).count();
    if pending == 0 {
        metrics.replicated("quorum", profiles.len());
        return Ok(());
    }

    let batches: Vec<Batch> = batches.into_values().collect();
    let (sender, mut answers) = mpsc::channel(batches.len());
    for (which, batch) in batches.iter().enumerate() {
        let push = pool.push(
            &batch.instance,
            tenant,
            batch.series.iter().map(|&index| profiles[index].clone()).collect(),
        );
        let sender = sender.clone();
        let metrics = metrics.clone();
        // What the profiles were charged to stays charged while any push
        // of them runs, stragglers included.
        let held = Arc::clone(budget);
        tasks.spawn(async move {
            let _held = held;
            let result = match tokio::time::timeout(timeout, push).await {
                Ok(result) => result,
                Err(_) => Err(RpcError::new(
                    ErrorCode::DeadlineExceeded,
                    format!("no answer within -distributor.push.timeout ({timeout:?})"),
                )),
            };
            metrics.ingester_push(match &result {
                Ok(()) => "ok",
                Err(err) if err.code == ErrorCode::DeadlineExceeded => "timeout",
                Err(_) => "error",
            });
            // The caller may have been answered already.
            let _ = sender.send((which, result)).await;
        });
    }
    drop(sender);

    while let Some((which, result)) = answers.recv().await {
        let batch = &batches[which];
        match result {
            Ok(()) => {
                for &index in &batch.series {
                    if quorums[index].ack() {
                        pending -= 1;
                    }
                }
                if pending == 0 {
                    metrics.replicated("quorum", profiles.len());
                    return Ok(());
                }
            }
            Err(err) => {
                for &index in &batch.series {
                    let quorum = &mut quorums[index];
                    if quorum.fail() {
                        metrics.replicated("failed", pending);
                        metrics.replicated("quorum", profiles.len() - pending);
                        return Err(RpcError::new(
                            err.code,
                            format!(
                                "series {} reached {} of the {} acknowledgements it needs and cannot get more: ingester {} ({}) failed: {}",
                                profiles[index].labels.render(),
                                quorum.acked,
                                quorum.needed,
                                batch.instance.id,
                                batch.instance.addr,
                                err.message
                            ),
                        ));
                    }
                }
            }
        }
    }
    // Every push answered yet some series neither reached nor lost its
    // quorum: cannot happen, as each series' replicas are all called.
    metrics.replicated("failed", pending);
    Err(RpcError::internal("the replicas answered without reaching a quorum"))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use flamedb_ring::{InstanceState, RingConfig};
    use prometheus_client::registry::Registry;

    use super::*;

    /// Answers per instance ID: ok, an error, or never.
    #[derive(Default)]
    struct FakePool {
        failing: Vec<&'static str>,
        hanging: Vec<&'static str>,
        received: Mutex<Vec<(String, usize)>>,
    }

    impl IngesterPool for FakePool {
        fn push(
            &self,
            instance: &InstanceDesc,
            _tenant: &str,
            profiles: Vec<Arc<ReplicatedProfile>>,
        ) -> BoxFuture<'static, Result<(), RpcError>> {
            self.received
                .lock()
                .unwrap()
                .push((instance.id.clone(), profiles.len()));
            let id = instance.id.as_str();
            if self.hanging.contains(&id) {
                return Box::pin(futures_util::future::pending());
            }
            let result = if self.failing.contains(&id) {
                Err(RpcError::new(ErrorCode::Unavailable, format!("{id} is down")))
            } else {
                Ok(())
            };
            Box::pin(async move { result })
        }
    }

    fn ring(replication_factor: usize) -> Ring {
        let instances = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, id)| InstanceDesc {
                id: (*id).to_owned(),
                addr: format!("127.0.0.1:{}", 4000 + i),
                zone: String::new(),
                state: InstanceState::Active,
                tokens: (0..64).map(|t| (t * 3 + i as u32) * 0x0100_0000 / 3).collect(),
                heartbeat_ms: now_ms(),
                registered_ms: 0,
            })
            .collect();
        Ring::new(
            instances,
            RingConfig {
                replication_factor,
                ..RingConfig::default()
            },
        )
    }

    fn profiles(count: usize) -> Vec<ReplicatedProfile> {
        (0..count)
            .map(|i| {
                ReplicatedProfile::new(
                    Labels::from_pairs([("__name__", "process_cpu"), ("service_name", &format!("svc-{i}"))]),
                    ProfileId([i as u8; 16]),
                    Profile::default(),
                    &RequestBudget::unlimited(),
                )
                .unwrap()
            })
            .collect()
    }

    async fn run(pool: FakePool, replication_factor: usize, count: usize) -> (Result<(), RpcError>, Arc<FakePool>) {
        let pool = Arc::new(pool);
        let dyn_pool: Arc<dyn IngesterPool> = pool.clone();
        let metrics = DistributorMetrics::register(&mut Registry::default());
        let tasks = TaskTracker::new();
        let result = replicate(
            &ring(replication_factor),
            &dyn_pool,
            &tasks,
            Duration::from_millis(200),
            &metrics,
            Writes {
                tenant: "t",
                profiles: profiles(count),
                budget: &Arc::new(RequestBudget::unlimited()),
            },
        )
        .await;
        (result, pool)
    }

    #[tokio::test]
    async fn test_one_batched_push_per_ingester_and_every_series_on_all_replicas() {
        let (result, pool) = run(FakePool::default(), 3, 20).await;
        result.unwrap();
        let received = pool.received.lock().unwrap().clone();
        assert_eq!(received.len(), 3);
        assert!(received.iter().all(|(_, count)| *count == 20), "{received:?}");
    }

    #[tokio::test]
    async fn test_rf3_tolerates_one_failed_and_one_hung_ingester_fails_with_two_down() {
        let one_down = FakePool {
            failing: vec!["a"],
            ..FakePool::default()
        };
        run(one_down, 3, 10).await.0.unwrap();

        let one_hung = FakePool {
            hanging: vec!["b"],
            ..FakePool::default()
        };
        run(one_hung, 3, 10).await.0.unwrap();

        let two_down = FakePool {
            failing: vec!["a", "c"],
            ..FakePool::default()
        };
        let err = run(two_down, 3, 10).await.0.unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert!(err.message.contains("acknowledgements"), "{}", err.message);

        let two_hung = FakePool {
            hanging: vec!["a", "b"],
            ..FakePool::default()
        };
        let err = run(two_hung, 3, 10).await.0.unwrap_err();
        assert_eq!(err.code, ErrorCode::DeadlineExceeded);
    }

    #[tokio::test]
    async fn test_rf1_fails_when_the_owner_fails() {
        let series = &profiles(1)[0];
        let ring = ring(1);
        let set = ring
            .replication_set(series.labels.token("t"), Operation::Write, now_ms())
            .unwrap();
        assert_eq!(set.instances.len(), 1);
        let owner = ["a", "b", "c"]
            .into_iter()
            .find(|id| *id == set.instances[0].id)
            .unwrap();
        let others: Vec<&'static str> = ["a", "b", "c"].into_iter().filter(|id| *id != owner).collect();
        // The others down: the series goes to its owner alone, and lands.
        let (result, pool) = run(
            FakePool {
                failing: others,
                ..FakePool::default()
            },
            1,
            1,
        )
        .await;
        result.unwrap();
        assert_eq!(*pool.received.lock().unwrap(), [(owner.to_owned(), 1)]);
        // The owner down: the push fails, naming it.
        let pool = FakePool {
            failing: vec![owner],
            ..FakePool::default()
        };
        let err = run(pool, 1, 1).await.0.unwrap_err();
        assert!(err.message.contains(&format!("{owner} is down")), "{}", err.message);
    }

    #[test]
    fn test_quorum_counts() {
        let mut quorum = Quorum {
            needed: 2,
            tolerated: 1,
            acked: 0,
            failed: 0,
        };
        assert!(!quorum.fail());
        assert!(!quorum.ack());
        assert!(quorum.ack());
        // Reached: a later failure does not undo it.
        assert!(!quorum.fail());
    }
}
