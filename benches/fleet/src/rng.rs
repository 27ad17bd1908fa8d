//! The endpoint models' random source: seeded, reproducible, no dependency.

/// SplitMix64, with the few draws the models need.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator that replays exactly for the same seed.
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    /// The next raw 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[low, high)`.
    pub fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// A standard normal draw (Box–Muller), for log-normal latencies.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A seed for the `index`-th member of something seeded with `seed`: distinct and
    /// well mixed even for consecutive indices.
    pub fn derive(seed: u64, index: u64) -> u64 {
        SimRng::new(seed ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03)).next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws_and_units_in_range() {
        let mut a = SimRng::new(9);
        let mut b = SimRng::new(9);
        for _ in 0..1000 {
            let x = a.unit();
            assert_eq!(x, b.unit());
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(SimRng::derive(1, 0), SimRng::derive(1, 1));
    }

    #[test]
    fn normal_draws_have_mean_zero_and_unit_spread() {
        let mut r = SimRng::new(3);
        let draws: Vec<f64> = (0..20_000).map(|_| r.normal()).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }
}
