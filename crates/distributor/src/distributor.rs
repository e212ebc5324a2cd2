//! The distributor's push pipeline: decode, rate limit, prepare and give
//! IDs on one blocking thread, then replicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flamedb_api::{Admission, ErrorCode, RpcError};
use flamedb_model::budget::{BudgetError, RequestBudget, allocation_size};
use flamedb_model::{Limits, PrepareError, ProfileId, TenantLimits, now_nanos, prepare_decoded};
use flamedb_ring::RingClient;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::batch::{PushBatch, Rejection};
use crate::metrics::DistributorMetrics;
use crate::rate_limit::RateLimiter;
use crate::replication::{IngesterPool, ReplicatedProfile, Writes, replicate};

/// Most problems listed in one error message.
const LISTED_PROBLEMS: usize = 20;

#[derive(Debug, Clone)]
pub struct DistributorConfig {
    /// How long one push to an ingester may take.
    pub push_timeout: Duration,
}

impl Default for DistributorConfig {
    fn default() -> Self {
        Self {
            push_timeout: Duration::from_secs(5),
        }
    }
}

/// What a successful push stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushReport {
    /// Series-profiles written to a quorum of their replicas.
    pub stored: usize,
}

/// Why a push was not (wholly) stored: the code of the most pressing
/// problem and every problem in the message. Profiles not named in it were
/// stored, unless a series could not reach a quorum of replicas (then
/// some series of the request may be stored, some not: the client retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PushError {
    pub code: ErrorCode,
    pub message: String,
}

impl From<PushError> for RpcError {
    fn from(err: PushError) -> Self {
        RpcError::new(err.code, err.message)
    }
}

/// A request's profiles made ready to store: its series, each with a new
/// ID, and the profiles refused.
#[derive(Debug)]
pub struct Prepared {
    tenant: String,
    series: Vec<ReplicatedProfile>,
    rejections: Vec<Rejection>,
    /// When the push arrived (for the push latency metric).
    started: Instant,
    /// Held while the series are being stored (stragglers included):
    /// they are what it was charged for.
    budget: Arc<RequestBudget>,
}

/// Takes pushes in two steps, [`Distributor::prepare`] then
/// [`Distributor::store`]; cheap to clone.
#[derive(Clone)]
pub struct Distributor {
    inner: Arc<Inner>,
}

struct Inner {
    config: DistributorConfig,
    limits: TenantLimits,
    rate: RateLimiter,
    ring: RingClient,
    pool: Arc<dyn IngesterPool>,
    metrics: DistributorMetrics,
    /// Bounds pushes in flight and the threads that decode them.
    admission: Arc<Admission>,
    /// Pushes to ingesters still running after their caller was answered.
    stragglers: TaskTracker,
}

impl std::fmt::Debug for Distributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributor")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Distributor {
    pub fn new(
        config: DistributorConfig,
        limits: TenantLimits,
        rate: RateLimiter,
        ring: RingClient,
        pool: Arc<dyn IngesterPool>,
        metrics: DistributorMetrics,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                limits,
                rate,
                ring,
                pool,
                metrics,
                admission,
                stragglers: TaskTracker::new(),
            }),
        }
    }

    /// What pushes in flight may take: shared by every ingest route.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.inner.admission
    }

    /// The limits of `tenant` now.
    pub fn limits(&self, tenant: &str) -> Arc<Limits> {
        (self.inner.limits)(tenant)
    }

    /// Decodes a request with `decode` into a batch under the limits of
    /// `tenant` and the request's `budget`, then rate-limits, validates,
    /// normalizes and splits each profile into series with new IDs. All of
    /// it is CPU work, done on one blocking thread in a decoding slot: off
    /// the async workers, so heartbeats and gossip never wait behind a
    /// large push, and never more pushes at once than there are slots.
    pub async fn prepare<F>(&self, tenant: &str, budget: Arc<RequestBudget>, decode: F) -> Result<Prepared, RpcError>
    where
        F: FnOnce(&mut PushBatch) -> Result<(), RpcError> + Send + 'static,
    {
        let started = Instant::now();
        let distributor = self.clone();
        let tenant = tenant.to_owned();
        self.inner
            .admission
            .decode(move || {
                let mut batch = PushBatch::new(distributor.limits(&tenant), Arc::clone(&budget));
                decode(&mut batch)?;
                let (series, rejections) = distributor.prepare_batch(&tenant, batch)?;
                Ok(Prepared {
                    tenant,
                    series,
                    rejections,
                    started,
                    budget,
                })
            })
            .await?
    }

    /// Writes the series of `prepared` to a quorum of their replicas. The
    /// valid profiles are stored even when others were refused; the error
    /// then lists every refusal.
    pub async fn store(&self, prepared: Prepared) -> Result<PushReport, PushError> {
        let inner = &self.inner;
        let Prepared {
            tenant,
            series,
            rejections,
            started,
            budget,
        } = prepared;
        let stored = series.len();
        let replicated = if series.is_empty() {
            Ok(())
        } else {
            let ring = inner.ring.ring();
            replicate(
                &ring,
                &inner.pool,
                &inner.stragglers,
                inner.config.push_timeout,
                &inner.metrics,
                Writes {
                    tenant: &tenant,
                    profiles: series,
                    budget: &budget,
                },
            )
            .await
        };
        inner.metrics.push_duration(started.elapsed().as_secs_f64());
        match (replicated, rejections.is_empty()) {
            (Ok(()), true) => Ok(PushReport { stored }),
            (Ok(()), false) => Err(refused(&rejections, stored)),
            (Err(err), _) => {
                debug!(tenant, error = %err.message, "push failed");
                let mut message = format!("not stored on a quorum of replicas: {}", err.message);
                if !rejections.is_empty() {
                    message.push_str("; also refused: ");
                    message.push_str(&list(&rejections));
                }
                Err(PushError {
                    code: err.code,
                    message,
                })
            }
        }
    }

    /// Rate-limits and prepares each profile of `batch`: the series to
    /// store, each with a new ID, and every refusal; or the budget error
    /// that fails the whole request.
    fn prepare_batch(
        &self,
        tenant: &str,
        batch: PushBatch,
    ) -> Result<(Vec<ReplicatedProfile>, Vec<Rejection>), BudgetError> {
        let inner = &self.inner;
        let PushBatch {
            limits,
            budget,
            profiles,
            mut rejections,
            ..
        } = batch;
        let now = now_nanos();
        let mut series = Vec::new();
        for received in profiles {
            inner.metrics.received(tenant, received.bytes);
            if let Err(limited) = inner.rate.admit(tenant, &limits, received.bytes) {
                rejections.push(Rejection {
                    reason: "rate_limited",
                    code: ErrorCode::ResourceExhausted,
                    message: limited.to_string(),
                    bytes: received.bytes,
                });
                continue;
            }
            match prepare_decoded(received.profile, &received.labels, &limits, now, &budget) {
                Ok(parts) => {
                    for part in parts {
                        // The labels of the series each sample type
                        // becomes where it is stored.
                        let label_bytes: usize = part
                            .labels
                            .iter()
                            .map(|label| allocation_size(label.name.len()) + allocation_size(label.value.len()) + 48)
                            .sum();
                        let typed = part.profile.sample_type.len().saturating_mul(label_bytes + 512);
                        budget.charge(typed, "the series labels of each sample type")?;
                        series.push(ReplicatedProfile::new(part.labels, random_id(), part.profile, &budget)?);
                    }
                }
                Err(PrepareError::Invalid(err)) => rejections.push(Rejection::invalid(&err, received.bytes)),
                Err(PrepareError::Budget(err)) => return Err(err),
            }
        }
        for rejection in &rejections {
            inner.metrics.discarded(tenant, rejection.reason, rejection.bytes);
        }
        Ok((series, rejections))
    }

    /// Waits for pushes still running in the background (each ends within
    /// the push timeout).
    pub async fn shutdown(&self) {
        self.inner.stragglers.close();
        self.inner.stragglers.wait().await;
    }
}

/// A random (version 4) UUID.
fn random_id() -> ProfileId {
    ProfileId(*uuid::Uuid::new_v4().as_bytes())
}

/// The error for a push some of whose profiles were refused: 429 if a
/// limit refused any (the client may retry later), else 400.
fn refused(rejections: &[Rejection], stored: usize) -> PushError {
    let code = if rejections
        .iter()
        .any(|rejection| rejection.code == ErrorCode::ResourceExhausted)
    {
        ErrorCode::ResourceExhausted
    } else {
        ErrorCode::InvalidArgument
    };
    let message = if stored == 0 {
        list(rejections)
    } else {
        format!(
            "{} refused, {stored} series-profiles stored: {}",
            plural(rejections.len(), "profile"),
            list(rejections)
        )
    };
    PushError { code, message }
}

fn list(rejections: &[Rejection]) -> String {
    let mut listed: Vec<&str> = rejections
        .iter()
        .take(LISTED_PROBLEMS)
        .map(|rejection| rejection.message.as_str())
        .collect();
    let more = rejections.len().saturating_sub(LISTED_PROBLEMS);
    let tail = format!("and {more} more");
    if more > 0 {
        listed.push(&tail);
    }
    listed.join("; ")
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(code: ErrorCode, message: &str) -> Rejection {
        Rejection {
            reason: "x",
            code,
            message: message.to_owned(),
            bytes: 1,
        }
    }

    #[test]
    fn test_refused_lists_every_problem_under_the_most_pressing_code() {
        let rejections = [
            rejection(ErrorCode::InvalidArgument, "bad label"),
            rejection(ErrorCode::ResourceExhausted, "rate"),
        ];
        let err = refused(&rejections, 3);
        assert_eq!(err.code, ErrorCode::ResourceExhausted);
        assert_eq!(
            err.message,
            "2 profiles refused, 3 series-profiles stored: bad label; rate"
        );
        let err = refused(&rejections[..1], 0);
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert_eq!(err.message, "bad label");
    }

    #[test]
    fn test_long_lists_are_cut() {
        let rejections: Vec<Rejection> = (0..25)
            .map(|i| rejection(ErrorCode::InvalidArgument, &i.to_string()))
            .collect();
        let message = list(&rejections);
        assert!(message.ends_with("19; and 5 more"), "{message}");
    }
}
