//! When to refresh and how to retry: the knobs, their defaults and their validation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use entraid_identity::IdentityError;

/// The default [`TokenManagerConfig::refresh_jitter`], chosen with the fleet simulation
/// (`cargo xtask simulate`): without it, 10 000 pods on 500 nodes drew 21 881 IMDS 429s
/// after a deploy wave and 4 886 on a steady day; 0.05 already removed every one (20 and
/// 50 pods per node, three seeds); 0.1 keeps a margin for denser nodes and costs about
/// 4 % more token requests (0.2: about 10 %).
pub const DEFAULT_REFRESH_JITTER: f64 = 0.1;

/// How a token manager schedules refreshes and retries.
///
/// The defaults match the other Redis Entra ID libraries (redis-py-entraid,
/// go-redis-entraid): refresh at 70 % of a token's life but at least 3 minutes before it
/// expires (Microsoft's advice), give each request 10 s.
///
/// ```
/// use entraid_token_manager::{RetryPolicy, TokenManagerConfig};
/// use std::time::Duration;
///
/// // `#[non_exhaustive]`: start from the defaults and set what differs, so a new setting
/// // in a later version is not a breaking change.
/// let mut config = TokenManagerConfig::default();
/// config.expiration_refresh_ratio = 0.8;
/// config.retry = RetryPolicy::default().with_is_retryable(|error| error.is_transient());
/// config.retry.max_attempts = 3;
/// config.validate()?;
/// // A 60-minute token is refreshed after 48 minutes (80 %), which is more than 3 minutes before expiry.
/// assert_eq!(config.refresh_delay(Duration::from_secs(3600)), Duration::from_secs(48 * 60));
/// # Ok::<(), entraid_token_manager::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TokenManagerConfig {
    /// The fraction of a token's lifetime after which it is refreshed; in (0, 1]. Default 0.7.
    pub expiration_refresh_ratio: f64,
    /// Refresh at least this long before expiry, when the token lives longer than this.
    /// Default 3 minutes.
    pub lower_refresh_bound: Duration,
    /// Each refresh comes at a random point up to this fraction earlier than the refresh
    /// rule's instant: uniformly in `[(1 − refresh_jitter)·d, d]` after receipt, where `d`
    /// is [`refresh_delay`](Self::refresh_delay)`(L)`; in [0, 1). Never later than `d`, so
    /// never later than the lower bound allows. Default 0.1 ([`DEFAULT_REFRESH_JITTER`]).
    ///
    /// Why: processes that got their tokens together (a deploy), or that share one
    /// (pods on a node share IMDS's cached managed-identity token, so they share its
    /// expiry), would otherwise refresh together, round after round. The fleet
    /// simulation (`cargo xtask simulate`) measured the 429s this causes at IMDS.
    pub refresh_jitter: f64,
    /// How long one token request may take before it counts as failed. Default 10 s.
    pub token_request_timeout: Duration,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
}

impl Default for TokenManagerConfig {
    fn default() -> Self {
        TokenManagerConfig {
            expiration_refresh_ratio: 0.7,
            lower_refresh_bound: Duration::from_secs(3 * 60),
            refresh_jitter: DEFAULT_REFRESH_JITTER,
            token_request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

impl TokenManagerConfig {
    /// Checks every value; the first bad one is returned, never silently clamped.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ratio = self.expiration_refresh_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(ConfigError::RefreshRatio(ratio));
        }
        let jitter = self.refresh_jitter;
        if !(0.0..1.0).contains(&jitter) {
            return Err(ConfigError::RefreshJitter(jitter));
        }
        if self.token_request_timeout.is_zero() {
            return Err(ConfigError::ZeroRequestTimeout);
        }
        self.retry.validate()
    }

    /// How long after its receipt a token of this `lifetime` is refreshed:
    /// `min(ratio·L, L − lower_refresh_bound)` when `L > lower_refresh_bound`, else `ratio·L`,
    /// and never earlier than `ratio·min(L, lower_refresh_bound)`.
    ///
    /// The `ratio·L` form for short tokens keeps them from being refreshed the moment they
    /// arrive (a hot loop in some other libraries). The floor does the same for tokens
    /// just longer than the bound: without it, a token of `bound + 1 ms` would be
    /// refreshed after 1 ms, and so would its successor. With it the delay is continuous
    /// and never decreases as `L` grows.
    pub fn refresh_delay(&self, lifetime: Duration) -> Duration {
        let ratio = self.expiration_refresh_ratio;
        let by_ratio = lifetime.mul_f64(ratio);
        match lifetime.checked_sub(self.lower_refresh_bound) {
            Some(before_bound) if !before_bound.is_zero() => {
                let floor = self.lower_refresh_bound.mul_f64(ratio);
                by_ratio.min(before_bound).max(floor)
            }
            _ => by_ratio,
        }
    }
}

impl TokenManagerConfig {
    /// The span in which a token of this `lifetime` is refreshed, after its receipt:
    /// `[(1 − refresh_jitter)·d, d]` with `d = refresh_delay(lifetime)`. The state machine
    /// draws uniformly in it, once per token.
    ///
    /// ```
    /// use entraid_token_manager::TokenManagerConfig;
    /// use std::time::Duration;
    ///
    /// let mut config = TokenManagerConfig::default();
    /// config.refresh_jitter = 0.2;
    /// // A 60-minute token: somewhere between 33.6 and 42 minutes.
    /// let (earliest, latest) = config.refresh_delay_band(Duration::from_secs(3600));
    /// assert_eq!((earliest.as_secs_f64().round(), latest.as_secs()), (2016.0, 42 * 60));
    /// ```
    pub fn refresh_delay_band(&self, lifetime: Duration) -> (Duration, Duration) {
        let latest = self.refresh_delay(lifetime);
        (scale_down(latest, 1.0 - self.refresh_jitter), latest)
    }

    /// The refresh delay for a uniform draw `unit` in `[0, 1)`: `d·(1 − refresh_jitter·unit)`.
    pub(crate) fn jittered_refresh_delay(&self, lifetime: Duration, unit: f64) -> Duration {
        let latest = self.refresh_delay(lifetime);
        scale_down(latest, 1.0 - self.refresh_jitter * unit)
    }
}

/// `duration · factor` for a factor in [0, 1], never more than `duration` (floating-point
/// rounding of huge durations included).
fn scale_down(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor.clamp(0.0, 1.0))
        .map_or(duration, |scaled| scaled.min(duration))
}

/// How failed token requests are retried.
///
/// The manager never gives up: after `max_attempts` consecutive failures it reports the
/// error and keeps trying every `max_delay`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Consecutive failures before the error is reported to connections; at least 1. Default 5.
    pub max_attempts: u32,
    /// The wait after the first failure; more than zero. Default 500 ms.
    pub initial_delay: Duration,
    /// The longest wait between attempts; at least `initial_delay`. Default 30 s.
    pub max_delay: Duration,
    /// Each wait is this many times the previous one; at least 1. Default 2.
    pub backoff_multiplier: f64,
    /// Each wait is scaled by a random factor in `[1 - jitter, 1 + jitter]`; in [0, 1).
    /// Default 0.2.
    pub jitter: f64,
    /// Which errors are worth retrying with backoff. Default: [`IdentityError::is_transient`].
    pub is_retryable: IsRetryable,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            backoff_multiplier: 2.0,
            jitter: 0.2,
            is_retryable: IsRetryable::default(),
        }
    }
}

impl RetryPolicy {
    /// Replaces the is-retryable predicate.
    ///
    /// ```
    /// # use entraid_token_manager::RetryPolicy;
    /// // Retry everything with backoff, even errors the provider called permanent.
    /// let policy = RetryPolicy::default().with_is_retryable(|_error| true);
    /// # assert!(policy.is_retryable.check(&entraid_identity::IdentityError::permanent("x")));
    /// ```
    pub fn with_is_retryable(mut self, predicate: impl Fn(&IdentityError) -> bool + Send + Sync + 'static) -> Self {
        self.is_retryable = IsRetryable::new(predicate);
        self
    }

    /// Checks every value; the first bad one is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::ZeroMaxAttempts);
        }
        if self.initial_delay.is_zero() {
            return Err(ConfigError::ZeroInitialDelay);
        }
        if self.max_delay < self.initial_delay {
            return Err(ConfigError::MaxDelayBelowInitial {
                initial: self.initial_delay,
                max: self.max_delay,
            });
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return Err(ConfigError::BackoffMultiplier(self.backoff_multiplier));
        }
        if !(self.jitter >= 0.0 && self.jitter < 1.0) {
            return Err(ConfigError::Jitter(self.jitter));
        }
        Ok(())
    }

    /// The wait after the `failures`-th consecutive failure, before jitter:
    /// `min(max_delay, initial_delay · multiplier^(failures − 1))`.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(i32::MAX as u32) as i32;
        let factor = self.backoff_multiplier.powi(exponent);
        let secs = self.initial_delay.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// A predicate deciding whether an [`IdentityError`] is worth retrying with backoff.
/// Non-retryable errors are reported at once and tried again only every `max_delay`.
#[derive(Clone)]
pub struct IsRetryable(Arc<dyn Fn(&IdentityError) -> bool + Send + Sync>);

impl IsRetryable {
    /// Wraps a predicate.
    pub fn new(predicate: impl Fn(&IdentityError) -> bool + Send + Sync + 'static) -> Self {
        IsRetryable(Arc::new(predicate))
    }

    /// Applies the predicate.
    pub fn check(&self, error: &IdentityError) -> bool {
        (self.0)(error)
    }
}

impl Default for IsRetryable {
    fn default() -> Self {
        IsRetryable::new(IdentityError::is_transient)
    }
}

impl fmt::Debug for IsRetryable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IsRetryable(..)")
    }
}

/// A configuration value that the manager refuses, with what to do instead. Only
/// validation: a driver that cannot start says so with [`StartError`](crate::StartError).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `expiration_refresh_ratio` outside (0, 1].
    #[error(
        "expiration_refresh_ratio is {0}, but must be in (0, 1]: it is the fraction of a token's \
         lifetime after which it is refreshed (default 0.7)"
    )]
    RefreshRatio(f64),
    /// `refresh_jitter` outside [0, 1).
    #[error(
        "refresh_jitter is {0}, but must be in [0, 1): each refresh comes at a random point up to that \
         fraction earlier than the refresh rule's instant (0 turns it off; default 0.1)"
    )]
    RefreshJitter(f64),
    /// `token_request_timeout` is zero.
    #[error("token_request_timeout is zero; give each token request time to finish (default 10 s)")]
    ZeroRequestTimeout,
    /// `retry.max_attempts` is zero.
    #[error(
        "retry.max_attempts is 0; it counts the failures before one is reported and must be at least 1 (default 5)"
    )]
    ZeroMaxAttempts,
    /// `retry.initial_delay` is zero.
    #[error(
        "retry.initial_delay is zero, which would retry in a hot loop; use at least a few milliseconds (default 500 ms)"
    )]
    ZeroInitialDelay,
    /// `retry.max_delay` is shorter than `retry.initial_delay`.
    #[error(
        "retry.max_delay ({max:?}) is shorter than retry.initial_delay ({initial:?}); raise max_delay or lower initial_delay"
    )]
    MaxDelayBelowInitial {
        /// The configured initial delay.
        initial: Duration,
        /// The configured maximum delay.
        max: Duration,
    },
    /// `retry.backoff_multiplier` below 1 or not finite.
    #[error("retry.backoff_multiplier is {0}, but must be a finite number of at least 1 (default 2.0)")]
    BackoffMultiplier(f64),
    /// `retry.jitter` outside [0, 1).
    #[error(
        "retry.jitter is {0}, but must be in [0, 1): each delay is scaled by a random factor in [1 - jitter, 1 + jitter] (default 0.2)"
    )]
    Jitter(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn defaults_are_the_documented_ones_and_valid() {
        let c = TokenManagerConfig::default();
        assert_eq!(c.expiration_refresh_ratio, 0.7);
        assert_eq!(c.lower_refresh_bound, 3 * MIN);
        assert_eq!(c.refresh_jitter, 0.1);
        assert_eq!(c.token_request_timeout, Duration::from_secs(10));
        assert_eq!(c.retry.max_attempts, 5);
        assert_eq!(c.retry.initial_delay, Duration::from_millis(500));
        assert_eq!(c.retry.max_delay, Duration::from_secs(30));
        assert_eq!(c.retry.backoff_multiplier, 2.0);
        assert_eq!(c.retry.jitter, 0.2);
        assert!(c.retry.is_retryable.check(&IdentityError::transient("t")));
        assert!(!c.retry.is_retryable.check(&IdentityError::permanent("p")));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn refresh_delay_follows_the_rule() {
        let c = TokenManagerConfig::default();
        // 60 min: ratio gives 42 min, bound gives 57 min: ratio wins.
        assert_eq!(c.refresh_delay(60 * MIN), 42 * MIN);
        // 8 min: ratio gives 5.6 min, bound gives 5 min: bound wins.
        assert_eq!(c.refresh_delay(8 * MIN), 5 * MIN);
        // 2 min is shorter than the bound: ratio alone, never "now".
        assert_eq!(c.refresh_delay(2 * MIN), Duration::from_secs(84));
        // Exactly the bound: ratio alone.
        assert_eq!(c.refresh_delay(3 * MIN), Duration::from_secs(126));
        assert_eq!(c.refresh_delay(Duration::ZERO), Duration::ZERO);
        // Just above the bound: the floor (70 % of the bound), not "after 1 ms".
        assert_eq!(
            c.refresh_delay(3 * MIN + Duration::from_millis(1)),
            Duration::from_secs(126)
        );
        assert_eq!(c.refresh_delay(4 * MIN), Duration::from_secs(126));
        // From 1.7 × bound on, L − bound is above the floor again.
        assert_eq!(c.refresh_delay(6 * MIN), 3 * MIN);
        let one = TokenManagerConfig {
            expiration_refresh_ratio: 1.0,
            ..c.clone()
        };
        assert_eq!(one.refresh_delay(60 * MIN), 57 * MIN);
        assert_eq!(one.refresh_delay(MIN), MIN);
        let none = TokenManagerConfig {
            lower_refresh_bound: Duration::ZERO,
            ..c
        };
        assert_eq!(none.refresh_delay(MIN), Duration::from_secs(42));
    }

    #[test]
    fn refresh_delay_is_monotone_and_before_expiry() {
        let c = TokenManagerConfig::default();
        let mut previous = Duration::ZERO;
        for ms in (1..20 * 60 * 1000u64).step_by(997) {
            let lifetime = Duration::from_millis(ms);
            let delay = c.refresh_delay(lifetime);
            assert!(delay >= previous, "{lifetime:?}: {delay:?} < {previous:?}");
            assert!(
                delay < lifetime,
                "{lifetime:?}: refresh at {delay:?} is not before expiry"
            );
            previous = delay;
        }
    }

    #[test]
    fn the_refresh_band_ends_at_the_rule_and_starts_jitter_earlier() {
        let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_micros(1);
        let c = TokenManagerConfig::default();
        let (low, high) = c.refresh_delay_band(60 * MIN);
        // 60 min tokens: between 37.8 and 42 min.
        assert!(
            close(low, Duration::from_secs(2268)) && high == 42 * MIN,
            "{low:?} {high:?}"
        );
        assert_eq!(c.jittered_refresh_delay(60 * MIN, 0.0), 42 * MIN);
        assert!(close(
            c.jittered_refresh_delay(60 * MIN, 0.5),
            Duration::from_secs(2394)
        ));
        // Short tokens keep their floor, scaled: 2 min tokens between 75.6 and 84 s.
        let (low, high) = c.refresh_delay_band(2 * MIN);
        assert!(close(low, Duration::from_millis(75_600)) && high == Duration::from_secs(84));
        let off = TokenManagerConfig {
            refresh_jitter: 0.0,
            ..c.clone()
        };
        assert_eq!(off.refresh_delay_band(60 * MIN), (42 * MIN, 42 * MIN));
        // Absurd lifetimes do not overflow, and the band never ends after the rule.
        let (low, high) = c.refresh_delay_band(Duration::MAX);
        assert!(low <= high && high == c.refresh_delay(Duration::MAX));
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default();
        let ms = |n| p.backoff(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(6), ms(7)],
            [500, 1000, 2000, 4000, 8000, 16000, 30000]
        );
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(30));
        let flat = RetryPolicy {
            backoff_multiplier: 1.0,
            ..RetryPolicy::default()
        };
        assert_eq!(flat.backoff(100), Duration::from_millis(500));
    }

    #[test]
    fn every_bad_value_is_refused_with_its_own_error() {
        let base = TokenManagerConfig::default;
        let cases: Vec<(TokenManagerConfig, ConfigError)> = vec![
            (
                TokenManagerConfig {
                    expiration_refresh_ratio: 0.0,
                    ..base()
                },
                ConfigError::RefreshRatio(0.0),
            ),
            (
                TokenManagerConfig {
                    expiration_refresh_ratio: 1.5,
                    ..base()
                },
                ConfigError::RefreshRatio(1.5),
            ),
            (
                TokenManagerConfig {
                    expiration_refresh_ratio: -0.1,
                    ..base()
                },
                ConfigError::RefreshRatio(-0.1),
            ),
            (
                TokenManagerConfig {
                    token_request_timeout: Duration::ZERO,
                    ..base()
                },
                ConfigError::ZeroRequestTimeout,
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(config.validate(), Err(expected));
        }
        for bad in [1.0, -0.01, f64::NAN, f64::INFINITY] {
            let config = TokenManagerConfig {
                refresh_jitter: bad,
                ..base()
            };
            assert!(
                matches!(config.validate(), Err(ConfigError::RefreshJitter(j)) if j.to_bits() == bad.to_bits()),
                "{bad}"
            );
        }
        let nan = TokenManagerConfig {
            expiration_refresh_ratio: f64::NAN,
            ..base()
        };
        assert!(matches!(nan.validate(), Err(ConfigError::RefreshRatio(r)) if r.is_nan()));

        let retry = |r: RetryPolicy| TokenManagerConfig { retry: r, ..base() }.validate();
        let d = RetryPolicy::default;
        assert_eq!(
            retry(RetryPolicy { max_attempts: 0, ..d() }),
            Err(ConfigError::ZeroMaxAttempts)
        );
        assert_eq!(
            retry(RetryPolicy {
                initial_delay: Duration::ZERO,
                ..d()
            }),
            Err(ConfigError::ZeroInitialDelay)
        );
        assert_eq!(
            retry(RetryPolicy {
                max_delay: Duration::from_millis(100),
                ..d()
            }),
            Err(ConfigError::MaxDelayBelowInitial {
                initial: Duration::from_millis(500),
                max: Duration::from_millis(100)
            })
        );
        assert_eq!(
            retry(RetryPolicy {
                backoff_multiplier: 0.5,
                ..d()
            }),
            Err(ConfigError::BackoffMultiplier(0.5))
        );
        assert!(
            retry(RetryPolicy {
                backoff_multiplier: f64::INFINITY,
                ..d()
            })
            .is_err()
        );
        assert_eq!(retry(RetryPolicy { jitter: 1.0, ..d() }), Err(ConfigError::Jitter(1.0)));
        assert_eq!(
            retry(RetryPolicy { jitter: -0.1, ..d() }),
            Err(ConfigError::Jitter(-0.1))
        );
        assert_eq!(retry(RetryPolicy { jitter: 0.0, ..d() }), Ok(()));
    }

    #[test]
    fn errors_name_the_field_and_the_default() {
        let msg = ConfigError::RefreshRatio(2.0).to_string();
        assert!(
            msg.contains("expiration_refresh_ratio") && msg.contains("(0, 1]") && msg.contains("0.7"),
            "{msg}"
        );
        let msg = ConfigError::RefreshJitter(1.5).to_string();
        assert!(
            msg.contains("refresh_jitter") && msg.contains("[0, 1)") && msg.contains("0 turns it off"),
            "{msg}"
        );
        let msg = ConfigError::Jitter(3.0).to_string();
        assert!(msg.contains("retry.jitter") && msg.contains("[0, 1)"), "{msg}");
    }
}
