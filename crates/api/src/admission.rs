//! Admission of requests: how many of one kind (pushes, say) may be in
//! flight, the memory they may hold together and each alone, and how many
//! may decode at once. Past a limit a request is answered at once (429, or
//! 413 when it could never fit), never queued; what waits for a decoding
//! slot is bounded by the in-flight count.

use std::sync::Arc;

use flamedb_model::budget::{Admitted, BudgetError, BudgetFlags, InflightBudget};
use tokio::sync::Semaphore;

use crate::error::{ErrorCode, RpcError};

/// The limits of one kind of request, shared by the routes that serve it.
#[derive(Debug)]
pub struct Admission {
    budget: Arc<InflightBudget>,
    decoding: Arc<Semaphore>,
}

impl Admission {
    /// Requests limited by `budget`, decoding at most `decode_slots` at a
    /// time (at least one).
    pub fn new(budget: Arc<InflightBudget>, decode_slots: usize) -> Arc<Self> {
        Arc::new(Self {
            budget,
            decoding: Arc::new(Semaphore::new(decode_slots.max(1))),
        })
    }

    /// No limits but the decoding slots: for tests and tools.
    pub fn unlimited(decode_slots: usize) -> Arc<Self> {
        let flags = BudgetFlags {
            request_bytes: "no limit",
            inflight_bytes: "no limit",
            inflight_requests: "no limit",
        };
        Self::new(InflightBudget::new(flags, 0, 0, 0), decode_slots)
    }

    /// Admits a request: its place in flight (hold it until the request
    /// is answered) and its memory budget, or the error to answer at once.
    pub fn admit(&self) -> Result<Admitted, RpcError> {
        self.budget.admit().map_err(RpcError::from)
    }

    /// Runs CPU-bound `work` (decoding, converting) on a blocking thread
    /// once a decoding slot is free, so the async workers stay free for
    /// heartbeats, gossip, `/ready` and queries.
    pub async fn decode<T, F>(&self, work: F) -> Result<T, RpcError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let slot = Arc::clone(&self.decoding)
            .acquire_owned()
            .await
            .map_err(|_| RpcError::new(ErrorCode::Unavailable, "the server is shutting down"))?;
        // The work holds the slot, not the caller: a caller that stops
        // waiting (its timeout) does not free a slot the work still uses.
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|err| RpcError::internal(format!("decoding failed: {err}")))
    }

    /// The process-wide budget, for metrics.
    pub fn budget(&self) -> &InflightBudget {
        &self.budget
    }
}

impl From<BudgetError> for RpcError {
    fn from(err: BudgetError) -> Self {
        let code = match err {
            // It can never fit: the client must send less.
            BudgetError::RequestTooLarge { .. } => ErrorCode::PayloadTooLarge,
            // A query limit, like the limit on its time range.
            BudgetError::QueryTooLarge { .. } => ErrorCode::InvalidArgument,
            // The instance is busy: the client may retry.
            BudgetError::InflightBytes { .. } | BudgetError::InflightRequests { .. } => ErrorCode::ResourceExhausted,
        };
        RpcError::new(code, err.to_string())
    }
}
