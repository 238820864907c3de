//! What one child's requests looked like: responses by status class,
//! upstream errors, and time to the response header as a histogram. Plain
//! atomics, bumped on the request path (no lock, no allocation); the engine
//! reads [`Snapshot`]s to judge a new version against the previous one, and
//! `/metrics` shows them per child.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Buckets of the latency histogram: bucket `i` counts times up to
/// `FIRST_BOUND_US << i` (250 µs, 500 µs, 1 ms, ... about 33 s); the last
/// one counts everything slower.
pub const BUCKETS: usize = 19;
const FIRST_BOUND_US: u64 = 250;

#[derive(Default, Debug)]
pub struct Stats {
    classes: [AtomicU64; 5],
    upstream_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    latency_sum_us: AtomicU64,
}

impl Stats {
    /// A response with `status`, whose header came `latency` after the
    /// request arrived.
    pub fn response(&self, status: u16, latency: Duration) {
        if let Some(class) = self.classes.get((status / 100).wrapping_sub(1) as usize) {
            class.fetch_add(1, Relaxed);
        }
        let us = latency.as_micros() as u64;
        self.latency[bucket(us)].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// A request that failed on the way to or from this child (refused,
    /// reset, closed without an answer).
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    /// Responses received so far, of any status: a child that keeps
    /// answering requests is alive, whatever its health probe says.
    pub fn responses(&self) -> u64 {
        self.classes.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            classes: self.classes.each_ref().map(|c| c.load(Relaxed)),
            upstream_errors: self.upstream_errors.load(Relaxed),
            latency: self.latency.each_ref().map(|c| c.load(Relaxed)),
            latency_sum_us: self.latency_sum_us.load(Relaxed),
        }
    }
}

/// Which bucket a time in microseconds falls in: the number of doublings of
/// the first bound it needs, found from the leading zeros (no loop).
fn bucket(us: u64) -> usize {
    let doublings = 64 - (us.saturating_sub(1) / FIRST_BOUND_US).leading_zeros() as usize;
    doublings.min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, or `None` for the last one (+Inf).
pub fn bucket_bound(i: usize) -> Option<Duration> {
    (i + 1 < BUCKETS).then(|| Duration::from_micros(FIRST_BOUND_US << i))
}

/// Counts at one moment; subtract two to get what happened in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub classes: [u64; 5],
    pub upstream_errors: u64,
    pub latency: [u64; BUCKETS],
    pub latency_sum_us: u64,
}

impl Snapshot {
    /// Responses plus upstream errors.
    pub fn requests(&self) -> u64 {
        self.classes.iter().sum::<u64>() + self.upstream_errors
    }

    /// 5xx responses plus upstream errors.
    pub fn errors(&self) -> u64 {
        self.classes[4] + self.upstream_errors
    }

    /// The share of requests that were errors, 0 with no requests.
    pub fn error_rate(&self) -> f64 {
        match self.requests() {
            0 => 0.0,
            n => self.errors() as f64 / n as f64,
        }
    }

    /// The 99th percentile time to the response header, as the upper
    /// bound of its bucket (`None` without responses, or past the last bound).
    pub fn p99(&self) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = total - total / 100;
        let mut seen = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_bound(i);
            }
        }
        None
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let sub = |a: u64, b: u64| a.saturating_sub(b);
        Snapshot {
            classes: std::array::from_fn(|i| sub(self.classes[i], earlier.classes[i])),
            upstream_errors: sub(self.upstream_errors, earlier.upstream_errors),
            latency: std::array::from_fn(|i| sub(self.latency[i], earlier.latency[i])),
            latency_sum_us: sub(self.latency_sum_us, earlier.latency_sum_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_double_from_250_microseconds() {
        for (us, want) in [
            (0, 0),
            (250, 0),
            (251, 1),
            (500, 1),
            (501, 2),
            (1000, 2),
            (1001, 3),
            (2000, 3),
            (64_000, 8),
            (u64::MAX, BUCKETS - 1),
        ] {
            assert_eq!(bucket(us), want, "{us} us");
        }
        assert_eq!(bucket_bound(0), Some(Duration::from_micros(250)));
        assert_eq!(bucket_bound(2), Some(Duration::from_millis(1)));
        assert_eq!(bucket_bound(BUCKETS - 1), None);
    }

    #[test]
    fn snapshots_count_errors_and_percentiles() {
        let stats = Stats::default();
        for _ in 0..198 {
            stats.response(200, Duration::from_micros(300));
        }
        stats.response(500, Duration::from_millis(40));
        stats.upstream_error();
        let before = stats.snapshot();
        assert_eq!(before.requests(), 200);
        assert_eq!(before.errors(), 2);
        assert!((before.error_rate() - 0.01).abs() < 1e-9);
        // 199 responses: the 99th percentile is the 198th fastest, 300 us
        // (in the bucket up to 500 us); two more slow ones and it is slow.
        assert_eq!(before.p99(), Some(Duration::from_micros(500)));
        stats.response(200, Duration::from_millis(40));
        stats.response(200, Duration::from_millis(40));
        assert_eq!(stats.snapshot().p99(), Some(Duration::from_millis(64)));
        let before = stats.snapshot();
        for _ in 0..10 {
            stats.response(503, Duration::from_millis(3));
        }
        let window = stats.snapshot().since(&before);
        assert_eq!((window.requests(), window.errors()), (10, 10));
        assert_eq!(window.p99(), Some(Duration::from_millis(4)));
        assert_eq!(Snapshot::default().p99(), None);
        assert_eq!(Snapshot::default().error_rate(), 0.0);
    }
}
