//! Latency percentiles.

use std::time::Duration;

/// Durations of requests.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    values: Vec<Duration>,
    sorted: bool,
}

impl Latencies {
    pub fn push(&mut self, value: Duration) {
        self.values.push(value);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Latencies) {
        self.values.extend(other.values);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `p` quantile (0 to 1) in milliseconds, nearest rank; 0 when
    /// empty.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
        let rank = ((self.values.len() as f64 * p).ceil() as usize).clamp(1, self.values.len());
        self.values[rank - 1].as_secs_f64() * 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_nearest_rank_percentiles() {
        let mut latencies = Latencies::default();
        for ms in (1..=100).rev() {
            latencies.push(Duration::from_millis(ms));
        }
        assert_eq!(latencies.percentile_ms(0.5), 50.0);
        assert_eq!(latencies.percentile_ms(0.99), 99.0);
        assert_eq!(latencies.percentile_ms(0.999), 100.0);
        assert_eq!(latencies.percentile_ms(0.0), 1.0);
        assert_eq!(Latencies::default().percentile_ms(0.5), 0.0);
    }
}
