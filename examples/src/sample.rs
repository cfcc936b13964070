//! Random numbers for the load generator: a small, seedable, fast generator and a Zipf
//! sampler. Reproducible from a seed on every platform, which benchmark comparisons need.

/// SplitMix64: tiny, fast, statistically fine for picking cards and amounts.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0 .. n` (`n > 0`), without modulo bias worth noticing (Lemire's method).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf over `0 .. n`: rank k (0-based) has weight `1 / (k + 1)^s`. Sampled by binary
/// search in a precomputed cumulative table: exact, and `O(log n)` per sample.
#[derive(Clone, Debug)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// The distribution over `0 .. n` with exponent `s`. `n` must be at least 1.
    pub fn new(n: u64, s: f64) -> Zipf {
        let mut cumulative = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 1..=n.max(1) {
            total += 1.0 / (k as f64).powf(s);
            cumulative.push(total);
        }
        for value in &mut cumulative {
            *value /= total;
        }
        Zipf { cumulative }
    }

    /// One sample in `0 .. n`.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let index = self.cumulative.partition_point(|&c| c <= u);
        index.min(self.cumulative.len().saturating_sub(1)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_stays_in_range_and_is_reproducible() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..10_000 {
            let x = a.below(5000);
            assert!(x < 5000);
            assert_eq!(x, b.below(5000));
        }
    }

    #[test]
    fn zipf_favours_low_ranks_as_one_over_k() {
        let zipf = Zipf::new(1000, 1.0);
        let mut rng = Rng::new(1);
        let mut counts = [0u64; 3];
        let draws = 200_000;
        for _ in 0..draws {
            let k = zipf.sample(&mut rng);
            assert!(k < 1000);
            if let Some(count) = counts.get_mut(k as usize) {
                *count += 1;
            }
        }
        // Rank 0 is drawn about twice as often as rank 1 and three times as rank 2.
        let ratio_1 = counts[0] as f64 / counts[1] as f64;
        let ratio_2 = counts[0] as f64 / counts[2] as f64;
        assert!((1.8..2.2).contains(&ratio_1), "{ratio_1}");
        assert!((2.7..3.3).contains(&ratio_2), "{ratio_2}");
    }
}
