//! `RetryConfig`: the retry knobs as the redis.io page names them.

use std::time::Duration;

use entraid_token_manager::{RetryPolicy, TokenManagerConfig};

/// How failed token requests are retried, in the redis crate's terms.
///
/// It maps onto [`RetryPolicy`]: `number_of_retries` retries after the first attempt
/// (so `max_attempts = number_of_retries + 1` consecutive failures before an error is
/// reported), `min_delay` is the first wait, `max_delay` the longest, `exponent_base` the
/// backoff multiplier. Unlike redis-rs, the manager does not stop after the retries: it
/// reports the error and keeps trying every `max_delay`.
///
/// The defaults are [`RetryPolicy`]'s: 4 retries (5 attempts), 500 ms, 30 s, base 2.
/// (The redis.io page describes `set_exponent_base` as a refresh ratio; it is the backoff
/// base, as in redis-rs. The refresh ratio is [`TokenManagerConfig::expiration_refresh_ratio`].)
#[derive(Debug, Clone)]
pub struct RetryConfig {
    number_of_retries: usize,
    min_delay: Duration,
    max_delay: Duration,
    exponent_base: f32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        RetryConfig {
            number_of_retries: policy.max_attempts.saturating_sub(1) as usize,
            min_delay: policy.initial_delay,
            max_delay: policy.max_delay,
            exponent_base: policy.backoff_multiplier as f32,
        }
    }
}

impl RetryConfig {
    /// Retries after a failed request before the error is reported to connections.
    pub fn set_number_of_retries(mut self, retries: usize) -> Self {
        self.number_of_retries = retries;
        self
    }

    /// The wait after the first failure.
    pub fn set_min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// The longest wait between attempts.
    pub fn set_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Each wait is this many times the previous one.
    pub fn set_exponent_base(mut self, base: f32) -> Self {
        self.exponent_base = base;
        self
    }

    /// The full token-manager configuration this retry configuration gives, with the other
    /// settings at their defaults. Validated when the provider starts.
    pub fn to_token_manager_config(&self) -> TokenManagerConfig {
        let mut config = TokenManagerConfig::default();
        config.retry.max_attempts = u32::try_from(self.number_of_retries)
            .unwrap_or(u32::MAX - 1)
            .saturating_add(1);
        config.retry.initial_delay = self.min_delay;
        config.retry.max_delay = self.max_delay;
        config.retry.backoff_multiplier = f64::from(self.exponent_base);
        config
    }
}

impl From<RetryConfig> for TokenManagerConfig {
    fn from(retry: RetryConfig) -> Self {
        retry.to_token_manager_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_maps_to_the_token_manager_defaults() {
        let config = RetryConfig::default().to_token_manager_config();
        let expected = TokenManagerConfig::default();
        assert_eq!(config.retry.max_attempts, expected.retry.max_attempts);
        assert_eq!(config.retry.initial_delay, expected.retry.initial_delay);
        assert_eq!(config.retry.max_delay, expected.retry.max_delay);
        assert_eq!(config.retry.backoff_multiplier, expected.retry.backoff_multiplier);
        assert_eq!(config.expiration_refresh_ratio, expected.expiration_refresh_ratio);
    }

    #[test]
    fn the_page_example_maps_field_by_field() {
        let config = RetryConfig::default()
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(30))
            .set_exponent_base(2.0)
            .to_token_manager_config();
        assert_eq!(config.retry.max_attempts, 4);
        assert_eq!(config.retry.initial_delay, Duration::from_millis(100));
        assert_eq!(config.retry.max_delay, Duration::from_secs(30));
        assert_eq!(config.retry.backoff_multiplier, 2.0);
        assert!(config.validate().is_ok());
        let bad = RetryConfig::default().set_exponent_base(0.5).to_token_manager_config();
        assert!(bad.validate().is_err(), "validated at start, never clamped");
        let huge = RetryConfig::default()
            .set_number_of_retries(usize::MAX)
            .to_token_manager_config();
        assert_eq!(huge.retry.max_attempts, u32::MAX);
    }
}
