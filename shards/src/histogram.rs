//! Power-of-two histograms of what the runtime already measures (batch service times and
//! sizes, group commits, WAL fsyncs), kept where the measurement is taken: one relaxed
//! `fetch_add` for the bucket and one for the sum per observation, on a line only one
//! thread writes at a time, so the hot path pays two uncontended adds. `/metrics` exports
//! them as Prometheus histograms; the pretty dump reads quantiles from them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Observations by the bit length of `value / UNIT`: bucket `i` counts values (in units)
/// below `2^i` and at least `2^(i-1)` (bucket 0: below one unit); the last bucket takes
/// everything larger. The sum is kept in the values' own unit, so a duration recorded in
/// nanoseconds and bucketed by microseconds loses nothing of its sum.
pub struct Log2Histogram<const N: usize, const UNIT: u64> {
    buckets: [AtomicU64; N],
    sum: AtomicU64,
}

/// Durations recorded in nanoseconds, bucketed by microseconds up to about 2^31 µs (36
/// minutes).
pub type DurationHistogram = Log2Histogram<DURATION_BUCKETS, 1_000>;

/// Buckets of a [`DurationHistogram`].
pub const DURATION_BUCKETS: usize = 32;

impl<const N: usize, const UNIT: u64> Default for Log2Histogram<N, UNIT> {
    fn default() -> Self {
        Log2Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize, const UNIT: u64> Log2Histogram<N, UNIT> {
    const NONEMPTY: () = assert!(N > 0 && N <= 64 && UNIT > 0);

    /// Counts one observation of `value`.
    pub fn record(&self, value: u64) {
        let () = Self::NONEMPTY;
        let units = value / UNIT;
        let bucket = (u64::BITS - units.leading_zeros()) as usize;
        self.buckets[bucket.min(N - 1)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts so far. Read bucket by bucket while others record, so a snapshot may
    /// miss an observation in flight; each count only grows.
    pub fn snapshot(&self) -> Buckets {
        Buckets {
            counts: self.buckets.iter().map(|count| count.load(Ordering::Relaxed)).collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment, by power-of-two bucket (see [`Log2Histogram`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    /// `counts[i]`: observations below `2^i` units (and at least `2^(i-1)`); the last
    /// bucket also holds everything larger.
    pub counts: Vec<u64>,
    /// The sum of the observations, in the recorded values' unit.
    pub sum: u64,
}

impl Buckets {
    /// How many observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts (another shard's) to these.
    pub fn add(&mut self, other: &Buckets) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (count, more) in self.counts.iter_mut().zip(&other.counts) {
            *count += more;
        }
        self.sum += other.sum;
    }

    /// The bound, in units, below which a `quantile` of the observations fell: the upper
    /// bound `2^i` of its bucket (so within a factor of two); 0 before any observation.
    pub fn quantile_bound(&self, quantile: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return 1u64 << bucket;
            }
        }
        1u64 << self.counts.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_power_of_two_microsecond_buckets_and_sum_in_nanoseconds() {
        let histogram = DurationHistogram::default();
        assert_eq!(histogram.snapshot().quantile_bound(0.5), 0, "nothing recorded yet");
        for _ in 0..98 {
            histogram.record(3_000); // 3 µs: below 4
        }
        histogram.record(900_000); // 900 µs: below 1024
        histogram.record(5_000_000_000_000); // beyond the last bucket
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 100);
        assert_eq!(snapshot.counts[2], 98);
        assert_eq!(snapshot.counts[10], 1);
        assert_eq!(snapshot.counts[DURATION_BUCKETS - 1], 1);
        assert_eq!(snapshot.sum, 98 * 3_000 + 900_000 + 5_000_000_000_000);
        assert_eq!(snapshot.quantile_bound(0.5), 4);
        assert_eq!(snapshot.quantile_bound(0.98), 4);
        assert_eq!(snapshot.quantile_bound(0.99), 1_024);
        assert_eq!(snapshot.quantile_bound(1.0), 1 << (DURATION_BUCKETS - 1));
    }

    #[test]
    fn counts_of_one_unit_and_merged_snapshots() {
        let sizes = Log2Histogram::<4, 1>::default();
        for value in [1, 2, 3, 4, 100] {
            sizes.record(value);
        }
        let mut merged = sizes.snapshot();
        assert_eq!(merged.counts, vec![0, 1, 2, 2], "1 | 2, 3 | 4 and 100 in the last");
        merged.add(&sizes.snapshot());
        assert_eq!(merged.counts, vec![0, 2, 4, 4]);
        assert_eq!(merged.sum, 2 * 110);
    }
}
