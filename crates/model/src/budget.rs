//! Memory budgets for requests: what one request may make flamedb allocate
//! (its body, decompressed and decoded, and every copy made of it until it
//! is stored) and what all requests in flight may hold together. Decoders
//! charge what they are about to allocate before allocating it, counted in
//! what bytes decode into, not in bytes received; past a budget the request
//! fails whole and nothing of it is stored.
//!
//! ```text
//!  InflightBudget (process-wide: requests and bytes in flight)
//!        │ admit()
//!        ▼
//!  Admitted: a RequestSlot (counted until the request is answered)
//!          + a RequestBudget (one request: its own limit, its share of
//!            the pool; charge(bytes, what) before each allocation, given
//!            back when the last holder drops it: work that outlives the
//!            answer, such as a replica's straggling write, keeps it)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A budget ran out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The request alone needs more than its limit: it can never fit.
    #[error(
        "this request needs more than {flag} ({limit} bytes) of memory: {what} would bring it to {needed} bytes; nothing was stored: send less per request"
    )]
    RequestTooLarge {
        flag: &'static str,
        limit: usize,
        needed: usize,
        what: &'static str,
    },
    /// A query's merged data needs more than its limit.
    #[error(
        "this query needs more than {flag} ({limit} bytes) of memory: {what} would bring it to {needed} bytes; narrow its time range or label selector, or raise the limit"
    )]
    QueryTooLarge {
        flag: &'static str,
        limit: usize,
        needed: usize,
        what: &'static str,
    },
    /// Requests in flight hold all the memory allowed: try again later.
    #[error(
        "requests in flight already hold the memory {flag} allows ({limit} bytes): {what} did not fit; try again later"
    )]
    InflightBytes {
        flag: &'static str,
        limit: usize,
        what: &'static str,
    },
    /// As many requests as allowed are in flight: try again later.
    #[error("{limit} requests are in flight, the most {flag} allows; try again later")]
    InflightRequests { flag: &'static str, limit: usize },
}

/// The names of the settings a budget's limits come from, for its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetFlags {
    /// The per-request memory limit.
    pub request_bytes: &'static str,
    /// The in-flight memory limit.
    pub inflight_bytes: &'static str,
    /// The in-flight request count limit.
    pub inflight_requests: &'static str,
}

/// What all requests of one kind (pushes, say) in flight may hold together:
/// their number and their memory (`0`: no limit), and what each may hold.
#[derive(Debug)]
pub struct InflightBudget {
    flags: BudgetFlags,
    request_bytes: usize,
    max_requests: usize,
    max_bytes: usize,
    requests: AtomicUsize,
    bytes: AtomicUsize,
}

impl InflightBudget {
    /// A pool of `max_bytes` for at most `max_requests` requests, each of
    /// which may take `request_bytes` (`0` everywhere: no limit).
    pub fn new(flags: BudgetFlags, request_bytes: usize, max_requests: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            flags,
            request_bytes,
            max_requests,
            max_bytes,
            requests: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
        })
    }

    /// Admits one more request, or fails at once when the count is at its
    /// limit: callers are answered 429, never queued.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, BudgetError> {
        let requests = self.requests.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_requests != 0 && requests > self.max_requests {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return Err(BudgetError::InflightRequests {
                flag: self.flags.inflight_requests,
                limit: self.max_requests,
            });
        }
        Ok(Admitted {
            slot: RequestSlot(Arc::clone(self)),
            budget: Arc::new(RequestBudget {
                limit: self.request_bytes,
                flag: self.flags.request_bytes,
                query: false,
                used: AtomicUsize::new(0),
                pool: Some(Arc::clone(self)),
            }),
        })
    }

    /// Requests admitted and not yet finished.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Bytes charged by the requests in flight.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    fn take(&self, bytes: usize, what: &'static str) -> Result<(), BudgetError> {
        let total = self.bytes.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes);
        if self.max_bytes != 0 && total > self.max_bytes {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            return Err(BudgetError::InflightBytes {
                flag: self.flags.inflight_bytes,
                limit: self.max_bytes,
                what,
            });
        }
        Ok(())
    }
}

/// An admitted request: its place among the requests in flight, held by
/// whoever answers it, and its memory budget, shared by everything that
/// works on it.
#[derive(Debug)]
pub struct Admitted {
    pub slot: RequestSlot,
    pub budget: Arc<RequestBudget>,
}

/// A request's place in the in-flight count, given back when dropped: once
/// the request is answered, whatever work of it still runs.
#[derive(Debug)]
pub struct RequestSlot(Arc<InflightBudget>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request's memory: charged before each allocation it causes, given
/// back to the pool when the last holder drops it. Shared by the threads
/// that work on the request.
#[derive(Debug)]
pub struct RequestBudget {
    limit: usize,
    flag: &'static str,
    /// A query's budget (its errors advise a narrower query), not a push's.
    query: bool,
    used: AtomicUsize,
    pool: Option<Arc<InflightBudget>>,
}

impl RequestBudget {
    /// A budget of `limit` bytes (`0`: none) outside any pool, named
    /// `flag` in errors; for tools, tests and paths that have no pool.
    pub fn standalone(limit: usize, flag: &'static str) -> Self {
        Self {
            limit,
            flag,
            query: false,
            used: AtomicUsize::new(0),
            pool: None,
        }
    }

    /// The budget of one query: what the call trees it merges (every
    /// partial tree and the merged one) and its answer may take together,
    /// `limit` bytes (`0`: none) set by `flag`.
    pub fn for_query(limit: usize, flag: &'static str) -> Self {
        let mut budget = Self::standalone(limit, flag);
        budget.query = true;
        budget
    }

    /// No limit at all.
    pub fn unlimited() -> Self {
        Self::standalone(0, "no limit")
    }

    /// Charges `bytes` that `what` is about to allocate.
    pub fn charge(&self, bytes: usize, what: &'static str) -> Result<(), BudgetError> {
        let used = self.used.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes);
        if self.limit != 0 && used > self.limit {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            return Err(self.too_large(used, what));
        }
        if let Some(pool) = &self.pool {
            // Larger than the whole pool: it can never fit, however long
            // the client waits.
            if pool.max_bytes != 0 && used > pool.max_bytes {
                self.used.fetch_sub(bytes, Ordering::AcqRel);
                return Err(BudgetError::RequestTooLarge {
                    flag: pool.flags.inflight_bytes,
                    limit: pool.max_bytes,
                    needed: used,
                    what,
                });
            }
            if let Err(err) = pool.take(bytes, what) {
                self.used.fetch_sub(bytes, Ordering::AcqRel);
                return Err(err);
            }
        }
        Ok(())
    }

    /// The error of this budget when `what` would bring it to `needed`
    /// bytes, past its own limit.
    pub fn too_large(&self, needed: usize, what: &'static str) -> BudgetError {
        let (flag, limit) = (self.flag, self.limit);
        if self.query {
            BudgetError::QueryTooLarge {
                flag,
                limit,
                needed,
                what,
            }
        } else {
            BudgetError::RequestTooLarge {
                flag,
                limit,
                needed,
                what,
            }
        }
    }

    /// What may still be charged before the budget's own limit; `None`
    /// when it has none.
    pub fn remaining(&self) -> Option<usize> {
        (self.limit != 0).then(|| self.limit.saturating_sub(self.used()))
    }

    /// Gives back `bytes` charged earlier, once what they paid for is
    /// freed.
    pub fn release(&self, bytes: usize) {
        let released = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            })
            .map_or(0, |used| used.min(bytes));
        if let Some(pool) = &self.pool {
            pool.bytes.fetch_sub(released, Ordering::AcqRel);
        }
    }

    /// Bytes charged so far.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for RequestBudget {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.bytes.fetch_sub(*self.used.get_mut(), Ordering::AcqRel);
        }
    }
}

/// Appends `data` to `buffer`, growing it by doubling (never past `max`
/// bytes, which the caller checked) and charging each growth to `budget`
/// as `what` before it is made.
pub fn extend_charged(
    buffer: &mut Vec<u8>,
    data: &[u8],
    max: usize,
    budget: &RequestBudget,
    what: &'static str,
) -> Result<(), BudgetError> {
    reserve_charged(buffer, data.len(), max, Some(budget), what)?;
    buffer.extend_from_slice(data);
    Ok(())
}

/// Makes room in `buffer` for `additional` more bytes, growing it by
/// doubling (never past `max` bytes, unless more are needed) and charging
/// each growth to `budget`, when there is one, as `what` before it is made.
pub fn reserve_charged(
    buffer: &mut Vec<u8>,
    additional: usize,
    max: usize,
    budget: Option<&RequestBudget>,
    what: &'static str,
) -> Result<(), BudgetError> {
    let needed = buffer.len().saturating_add(additional);
    if needed > buffer.capacity() {
        let capacity = needed.max(buffer.capacity().saturating_mul(2)).min(max.max(needed));
        if let Some(budget) = budget {
            budget.charge(
                allocation_size(capacity).saturating_sub(allocation_size(buffer.capacity())),
                what,
            )?;
        }
        buffer.reserve_exact(capacity - buffer.len());
    }
    Ok(())
}

/// What an allocation of `bytes` takes from the allocator: jemalloc's size
/// classes (8 and 16 bytes apart up to 128, then four classes per doubling),
/// so a budget counts the rounding too.
pub fn allocation_size(bytes: usize) -> usize {
    match bytes {
        0 => 0,
        1..=8 => 8,
        9..=128 => bytes.next_multiple_of(16),
        _ => {
            let group = bytes.next_power_of_two() / 2;
            let spacing = (group / 4).max(1);
            bytes.saturating_add(spacing - 1) / spacing * spacing
        }
    }
}

/// The capacity a `Vec` reaches when `len` elements of `element` bytes are
/// pushed one by one: Rust's growth (doubling, at least 4 elements, 8 for
/// bytes), in allocated bytes.
pub fn vec_allocation(len: usize, element: usize) -> usize {
    if len == 0 || element == 0 {
        return 0;
    }
    let minimum = if element == 1 { 8 } else { 4 };
    let capacity = len.checked_next_power_of_two().unwrap_or(usize::MAX).max(minimum);
    allocation_size(capacity.saturating_mul(element))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: BudgetFlags = BudgetFlags {
        request_bytes: "-x.request",
        inflight_bytes: "-x.bytes",
        inflight_requests: "-x.requests",
    };

    #[test]
    fn test_request_limit_refuses_the_charge_that_passes_it() {
        let budget = RequestBudget::standalone(100, "-x.request");
        budget.charge(60, "a").unwrap();
        budget.charge(40, "b").unwrap();
        let err = budget.charge(1, "the decoded request").unwrap_err();
        assert_eq!(
            err.to_string(),
            "this request needs more than -x.request (100 bytes) of memory: the decoded request would bring it to 101 bytes; nothing was stored: send less per request"
        );
        assert_eq!(budget.used(), 100);
    }

    #[test]
    fn test_a_query_budget_advises_a_narrower_query() {
        let budget = RequestBudget::for_query(10, "-x.query");
        let err = budget.charge(11, "the merged tree").unwrap_err();
        assert!(matches!(
            err,
            BudgetError::QueryTooLarge {
                limit: 10,
                needed: 11,
                ..
            }
        ));
        assert!(
            err.to_string().contains("narrow its time range or label selector"),
            "{err}"
        );
    }

    #[test]
    fn test_pool_is_shared_and_given_back_on_drop() {
        let pool = InflightBudget::new(FLAGS, 0, 2, 100);
        let first = pool.admit().unwrap();
        let second = pool.admit().unwrap();
        let (first_slot, first) = (first.slot, first.budget);
        assert!(matches!(
            pool.admit(),
            Err(BudgetError::InflightRequests { limit: 2, .. })
        ));
        first.charge(70, "a").unwrap();
        let err = second.budget.charge(40, "b").unwrap_err();
        assert!(matches!(err, BudgetError::InflightBytes { limit: 100, .. }));
        assert!(
            err.to_string().contains("the memory -x.bytes allows (100 bytes)"),
            "{err}"
        );
        second.budget.charge(30, "c").unwrap();
        assert_eq!((pool.requests(), pool.bytes()), (2, 100));
        // Answered, with work of it still running: its memory stays held.
        drop(first_slot);
        assert_eq!((pool.requests(), pool.bytes()), (1, 100));
        drop(first);
        assert_eq!((pool.requests(), pool.bytes()), (1, 30));
        drop(second);
        assert_eq!((pool.requests(), pool.bytes()), (0, 0));
    }

    #[test]
    fn test_a_request_larger_than_the_pool_is_too_large_not_busy() {
        let pool = InflightBudget::new(FLAGS, 0, 0, 100);
        let request = pool.admit().unwrap();
        let err = request.budget.charge(101, "a").unwrap_err();
        assert!(
            matches!(
                err,
                BudgetError::RequestTooLarge {
                    flag: "-x.bytes",
                    limit: 100,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(pool.bytes(), 0);
    }

    #[test]
    fn test_allocation_sizes_follow_the_size_classes() {
        let sizes: Vec<usize> = [0, 1, 8, 9, 17, 128, 129, 160, 161, 4097, 1 << 20]
            .into_iter()
            .map(allocation_size)
            .collect();
        assert_eq!(sizes, [0, 8, 8, 16, 32, 128, 160, 160, 192, 5120, 1 << 20]);
        assert_eq!(vec_allocation(1, 24), 96);
        assert_eq!(vec_allocation(5, 24), 192);
        assert_eq!(vec_allocation(3, 1), 8);
        assert_eq!(vec_allocation(0, 24), 0);
    }
}
