//! A tiny random source for jitter: seeded once per process, no dependency, no clock.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// SplitMix64: statistically fine for spreading retries, not for cryptography.
#[derive(Debug, Clone)]
pub(crate) struct Jitter {
    state: u64,
}

impl Jitter {
    /// Seeded from the standard library's per-process random hash keys, so two processes
    /// that fail together do not retry together.
    pub(crate) fn from_process_randomness() -> Jitter {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x6a09_e667_f3bc_c908);
        Jitter::from_seed(hasher.finish())
    }

    pub(crate) fn from_seed(seed: u64) -> Jitter {
        Jitter { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform draw in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform factor in `[1 - amount, 1 + amount]`.
    pub(crate) fn factor(&mut self, amount: f64) -> f64 {
        1.0 - amount + 2.0 * amount * self.unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_stay_in_band_and_spread() {
        let mut j = Jitter::from_seed(42);
        let samples: Vec<f64> = (0..10_000).map(|_| j.factor(0.2)).collect();
        assert!(samples.iter().all(|f| (0.8..=1.2).contains(f)));
        let below = samples.iter().filter(|f| **f < 1.0).count();
        assert!((4_000..6_000).contains(&below), "{below} of 10000 below 1.0");
        assert!(samples.iter().any(|f| *f < 0.82) && samples.iter().any(|f| *f > 1.18));
        assert_eq!(Jitter::from_seed(1).factor(0.0), 1.0);
    }

    #[test]
    fn process_seeds_differ() {
        let a = Jitter::from_process_randomness().next_u64();
        let b = Jitter::from_process_randomness().next_u64();
        assert_ne!(a, b);
    }
}
