//! The per-tenant ingestion rate limit: a token bucket per tenant on
//! uncompressed bytes. With the global strategy each distributor takes an
//! equal part of the tenant's rate (`ingestion_rate_mb / healthy
//! distributors`); the burst is not divided, and a profile larger than the
//! burst is always refused. Limits are read per call, so runtime overrides
//! apply at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flamedb_model::Limits;

const MIB: f64 = 1_048_576.0;
/// Buckets idle this long are dropped: at any rate that refills the burst
/// within it (all sensible ones), they were full anyway.
const IDLE: Duration = Duration::from_secs(600);
/// Dropping idle buckets starts past this many tenants; after a pass, the
/// next waits until the map doubles, so passes cost O(1) per new tenant.
const PRUNE_ABOVE: usize = 1024;

/// How many distributors share each tenant's rate (at least 1).
pub type DistributorCount = Arc<dyn Fn() -> usize + Send + Sync>;

/// A profile over the tenant's rate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "push rate limit exceeded for tenant {tenant}: adding {bytes} bytes to a bucket of {available:.0} bytes (ingestion_rate_mb {rate_mb} MiB/s over {distributors} distributors, ingestion_burst_size_mb {burst_mb} MiB): slow down or raise the limit"
)]
pub struct RateLimited {
    pub tenant: String,
    pub bytes: usize,
    pub available: f64,
    pub rate_mb: f64,
    pub burst_mb: f64,
    pub distributors: usize,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct Buckets {
    by_tenant: HashMap<String, Bucket>,
    /// Size at which idle buckets are next looked for.
    prune_at: usize,
}

/// Token buckets of every tenant seen lately.
pub struct RateLimiter {
    buckets: Mutex<Buckets>,
    distributors: DistributorCount,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(distributors: DistributorCount) -> Self {
        Self {
            buckets: Mutex::new(Buckets {
                by_tenant: HashMap::new(),
                prune_at: PRUNE_ABOVE,
            }),
            distributors,
        }
    }

    /// Takes `bytes` from the tenant's bucket, or refuses them whole.
    pub fn admit(&self, tenant: &str, limits: &Limits, bytes: usize) -> Result<(), RateLimited> {
        self.admit_at(tenant, limits, bytes, Instant::now())
    }

    fn admit_at(&self, tenant: &str, limits: &Limits, bytes: usize, now: Instant) -> Result<(), RateLimited> {
        if limits.ingestion_rate_mb <= 0.0 {
            return Ok(());
        }
        let distributors = (self.distributors)().max(1);
        let rate = limits.ingestion_rate_mb * MIB / distributors as f64;
        let burst = limits.ingestion_burst_size_mb * MIB;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let Buckets { by_tenant, prune_at } = &mut *buckets;
        if !by_tenant.contains_key(tenant) && by_tenant.len() >= *prune_at {
            by_tenant.retain(|_, bucket| now.saturating_duration_since(bucket.updated) < IDLE);
            *prune_at = (by_tenant.len() * 2).max(PRUNE_ABOVE);
        }
        let bucket = by_tenant.entry(tenant.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        let wanted = bytes as f64;
        if wanted <= bucket.tokens {
            bucket.tokens -= wanted;
            return Ok(());
        }
        Err(RateLimited {
            tenant: tenant.to_owned(),
            bytes,
            available: bucket.tokens,
            rate_mb: limits.ingestion_rate_mb,
            burst_mb: limits.ingestion_burst_size_mb,
            distributors,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn limits(rate_mb: f64, burst_mb: f64) -> Limits {
        Limits {
            ingestion_rate_mb: rate_mb,
            ingestion_burst_size_mb: burst_mb,
            ..Limits::default()
        }
    }

    const MIB_BYTES: usize = 1 << 20;

    #[test]
    fn test_burst_then_refill_at_the_rate() {
        let limiter = RateLimiter::new(Arc::new(|| 1));
        let limits = limits(1.0, 2.0);
        let start = Instant::now();
        limiter.admit_at("a", &limits, MIB_BYTES, start).unwrap();
        limiter.admit_at("a", &limits, MIB_BYTES, start).unwrap();
        let err = limiter.admit_at("a", &limits, 1, start).unwrap_err();
        assert!(err.to_string().contains("tenant a"), "{err}");
        // Another tenant has its own bucket.
        limiter.admit_at("b", &limits, MIB_BYTES, start).unwrap();
        // Half a second refills half a MiB.
        let later = start + Duration::from_millis(500);
        limiter.admit_at("a", &limits, MIB_BYTES / 2 - 100, later).unwrap();
        assert!(limiter.admit_at("a", &limits, 1000, later).is_err());
    }

    #[test]
    fn test_profile_larger_than_the_burst_is_always_refused() {
        let limiter = RateLimiter::new(Arc::new(|| 1));
        let limits = limits(100.0, 1.0);
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(limiter.admit_at("a", &limits, MIB_BYTES + 1, later).is_err());
        limiter.admit_at("a", &limits, MIB_BYTES, later).unwrap();
    }

    #[test]
    fn test_rate_is_divided_by_distributors_and_zero_means_unlimited() {
        let count = Arc::new(AtomicUsize::new(4));
        let limiter = RateLimiter::new({
            let count = count.clone();
            Arc::new(move || count.load(Ordering::Relaxed))
        });
        let limits = limits(4.0, 1.0);
        let start = Instant::now();
        limiter.admit_at("a", &limits, MIB_BYTES, start).unwrap();
        // 4 MiB/s over 4 distributors: 1 MiB/s here, so 0.5 s gives 0.5 MiB.
        let half = start + Duration::from_millis(500);
        assert!(limiter.admit_at("a", &limits, MIB_BYTES * 3 / 4, half).is_err());
        limiter.admit_at("a", &limits, MIB_BYTES / 2 - 100, half).unwrap();
        // No distributors known yet: the whole rate.
        count.store(0, Ordering::Relaxed);
        let err = limiter.admit_at("a", &limits, MIB_BYTES, half).unwrap_err();
        assert_eq!(err.distributors, 1);

        let unlimited = RateLimiter::new(Arc::new(|| 1));
        for _ in 0..100 {
            unlimited.admit("a", &self::limits(0.0, 0.0), usize::MAX).unwrap();
        }
    }

    #[test]
    fn test_idle_tenants_are_forgotten_past_the_prune_threshold() {
        let limiter = RateLimiter::new(Arc::new(|| 1));
        let limits = limits(1.0, 1.0);
        let start = Instant::now();
        for tenant in 0..PRUNE_ABOVE {
            limiter.admit_at(&tenant.to_string(), &limits, 1, start).unwrap();
        }
        limiter.admit_at("new", &limits, 1, start + IDLE).unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().by_tenant.len(), 1);
    }
}
