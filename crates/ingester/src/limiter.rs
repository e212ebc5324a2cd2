//! The per-tenant active series limit: a series is active while it got a
//! profile in the last 10 minutes. The limit is the smaller non-zero of the
//! local limit and this ingester's share of the global one
//! (`global / healthy ingesters × replication factor`).

use foldhash::HashMap;

/// How long a series stays active without profiles.
pub(crate) const ACTIVE_WINDOW_MS: i64 = 10 * 60 * 1000;

/// How often idle series are looked for.
const EVICT_EVERY_MS: i64 = 10 * 1000;

/// How many ingesters share a tenant's series, for the global limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterShare {
    pub healthy_ingesters: usize,
    pub replication_factor: usize,
}

impl ClusterShare {
    /// A single ingester (the single binary).
    pub const ALONE: Self = Self {
        healthy_ingesters: 1,
        replication_factor: 1,
    };
}

/// The limit that applies, and where it comes from (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesLimit {
    /// 0: no limit.
    pub limit: usize,
    pub local: usize,
    pub global: usize,
    pub share: ClusterShare,
}

impl SeriesLimit {
    pub fn new(local: usize, global: usize, share: ClusterShare) -> Self {
        let from_global = if global == 0 {
            0
        } else {
            let healthy = share.healthy_ingesters.max(1);
            (global * share.replication_factor.max(1)).div_ceil(healthy)
        };
        let limit = match (local, from_global) {
            (0, limit) | (limit, 0) => limit,
            (local, global) => local.min(global),
        };
        Self {
            limit,
            local,
            global,
            share,
        }
    }
}

/// The active series of one tenant.
#[derive(Debug, Default)]
pub(crate) struct SeriesLimiter {
    last_seen_ms: HashMap<u64, i64>,
    last_evicted_ms: i64,
}

impl SeriesLimiter {
    /// Admits `fingerprints` at `now_ms` if the new ones fit under `limit`
    /// (marking them all active); else returns how many are active and how
    /// many would be added.
    pub(crate) fn admit(&mut self, fingerprints: &[u64], limit: usize, now_ms: i64) -> Result<(), (usize, usize)> {
        self.evict(now_ms);
        if limit != 0 {
            let mut new: Vec<u64> = fingerprints
                .iter()
                .copied()
                .filter(|fingerprint| !self.last_seen_ms.contains_key(fingerprint))
                .collect();
            new.sort_unstable();
            new.dedup();
            if self.last_seen_ms.len() + new.len() > limit {
                return Err((self.last_seen_ms.len(), new.len()));
            }
        }
        for &fingerprint in fingerprints {
            self.last_seen_ms.insert(fingerprint, now_ms);
        }
        Ok(())
    }

    /// Marks series active without a limit (replay).
    pub(crate) fn touch(&mut self, fingerprint: u64, now_ms: i64) {
        self.last_seen_ms.insert(fingerprint, now_ms);
    }

    pub(crate) fn active(&self) -> usize {
        self.last_seen_ms.len()
    }

    /// Active series at `now_ms`, idle ones forgotten first.
    pub(crate) fn active_at(&mut self, now_ms: i64) -> usize {
        self.evict(now_ms);
        self.active()
    }

    /// Forgets series idle for longer than the window; scans at most once
    /// per [`EVICT_EVERY_MS`] so a push does not pay for every series.
    fn evict(&mut self, now_ms: i64) {
        if now_ms.saturating_sub(self.last_evicted_ms) < EVICT_EVERY_MS {
            return;
        }
        self.last_evicted_ms = now_ms;
        self.last_seen_ms
            .retain(|_, &mut seen| now_ms.saturating_sub(seen) <= ACTIVE_WINDOW_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_limit_is_the_smaller_of_local_and_global_share() {
        let share = ClusterShare {
            healthy_ingesters: 3,
            replication_factor: 3,
        };
        assert_eq!(SeriesLimit::new(0, 5000, share).limit, 5000);
        assert_eq!(SeriesLimit::new(100, 5000, share).limit, 100);
        assert_eq!(SeriesLimit::new(0, 0, share).limit, 0);
        let six = ClusterShare {
            healthy_ingesters: 6,
            replication_factor: 3,
        };
        assert_eq!(SeriesLimit::new(0, 5000, six).limit, 2500);
        assert_eq!(SeriesLimit::new(0, 10, ClusterShare::ALONE).limit, 10);
    }

    #[test]
    fn test_admit_counts_only_new_series_and_expires_old_ones() {
        let mut limiter = SeriesLimiter::default();
        assert!(limiter.admit(&[1, 2], 3, 0).is_ok());
        assert!(limiter.admit(&[1, 2, 3], 3, 1).is_ok());
        assert_eq!(limiter.admit(&[4, 4], 3, 2), Err((3, 1)));
        // Unlimited.
        assert!(limiter.admit(&[4], 0, 3).is_ok());
        assert_eq!(limiter.active(), 4);
        // Ten minutes later only 4 (seen at 3) is active... and gone after.
        assert!(limiter.admit(&[5], 2, 3 + ACTIVE_WINDOW_MS).is_ok());
        assert_eq!(limiter.active(), 2);
    }
}
