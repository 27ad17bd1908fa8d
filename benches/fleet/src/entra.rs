//! Entra ID's token endpoint: a tenant-wide rate, 429 with `Retry-After: 60` beyond it,
//! fresh tokens of 60–90 min for service principals (about 24 h for managed identities,
//! which IMDS fetches), log-normal latency, outages that swallow requests.

use std::time::Duration;

use crate::endpoint::{Answer, Outage, Reply};
use crate::rate_limit::SlidingWindow;
use crate::rng::SimRng;

/// Who asks: the lifetime of the token Entra issues depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// A process with a service principal: 60–90 min tokens, uniformly random.
    ServicePrincipal,
    /// A node's IMDS renewing its cache: managed-identity tokens of about 24 h.
    ManagedIdentity,
}

/// How long Entra takes to answer a request it accepts: log-normal, given by its median
/// and 99th percentile, and never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Half the answers take less.
    pub median: Duration,
    /// 99 % of the answers take less.
    pub p99: Duration,
    /// The longest answer (the tail is cut here).
    pub max: Duration,
}

impl Latency {
    /// A healthy endpoint: median 150 ms, p99 600 ms, at most 1 s.
    pub fn healthy() -> Latency {
        Latency {
            median: Duration::from_millis(150),
            p99: Duration::from_millis(600),
            max: Duration::from_secs(1),
        }
    }

    /// A slow endpoint: median 500 ms, p99 5 s, at most 30 s (past every request timeout).
    pub fn slow() -> Latency {
        Latency {
            median: Duration::from_millis(500),
            p99: Duration::from_secs(5),
            max: Duration::from_secs(30),
        }
    }

    /// One draw.
    pub fn sample(&self, rng: &mut SimRng) -> Duration {
        // The 99th percentile of a standard normal.
        const Z99: f64 = 2.326_348;
        let median = self.median.as_secs_f64();
        let sigma = (self.p99.as_secs_f64() / median).ln() / Z99;
        let secs = median * (sigma * rng.normal()).exp();
        Duration::try_from_secs_f64(secs).unwrap_or(self.max).min(self.max)
    }
}

/// The knobs of the Entra model.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// Accepted requests per second, tenant-wide.
    pub rate_per_second: usize,
    /// The `Retry-After` of a 429.
    pub retry_after: Duration,
    /// Latency of accepted requests.
    pub latency: Latency,
    /// Latency of a 429.
    pub throttle_latency: Duration,
    /// When the endpoint answers nothing.
    pub outage: Option<Outage>,
}

impl Default for EntraConfig {
    fn default() -> Self {
        EntraConfig {
            rate_per_second: 500,
            retry_after: Duration::from_secs(60),
            latency: Latency::healthy(),
            throttle_latency: Duration::from_millis(20),
            outage: None,
        }
    }
}

/// The token endpoint of one tenant.
#[derive(Debug)]
pub struct EntraModel {
    config: EntraConfig,
    window: SlidingWindow,
    rng: SimRng,
    issued: u64,
}

impl EntraModel {
    /// A healthy endpoint with these knobs; `seed` drives latencies and lifetimes.
    pub fn new(config: EntraConfig, seed: u64) -> EntraModel {
        EntraModel {
            window: SlidingWindow::per_second(config.rate_per_second),
            config,
            rng: SimRng::new(seed),
            // Secrets from Entra never collide with anything else's.
            issued: 1 << 62,
        }
    }

    /// A request arriving at `now`.
    pub fn request(&mut self, now: Duration, requester: Requester) -> Answer {
        if self.config.outage.is_some_and(|o| o.covers(now)) {
            return Answer::Never;
        }
        if self.window.try_accept(now).is_err() {
            let reply = Reply::Throttled {
                retry_after: self.config.retry_after,
            };
            return Answer::At(now + self.config.throttle_latency, reply);
        }
        let answered_at = now + self.config.latency.sample(&mut self.rng);
        let lifetime_secs = match requester {
            Requester::ServicePrincipal => self.rng.between(60.0 * 60.0, 90.0 * 60.0),
            Requester::ManagedIdentity => self.rng.between(23.9 * 3600.0, 24.0 * 3600.0),
        };
        self.issued += 1;
        let reply = Reply::Token {
            secret: self.issued,
            expires_at: answered_at + Duration::from_secs_f64(lifetime_secs),
        };
        Answer::At(answered_at, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const MIN: Duration = Duration::from_secs(60);

    fn model(rate: usize) -> EntraModel {
        EntraModel::new(
            EntraConfig {
                rate_per_second: rate,
                ..EntraConfig::default()
            },
            5,
        )
    }

    #[test]
    fn beyond_the_tenant_rate_it_answers_429_with_retry_after_60() {
        let mut entra = model(3);
        let now = 10 * SEC;
        for _ in 0..3 {
            assert!(matches!(
                entra.request(now, Requester::ServicePrincipal),
                Answer::At(_, Reply::Token { .. })
            ));
        }
        assert_eq!(
            entra.request(now, Requester::ServicePrincipal),
            Answer::At(
                now + Duration::from_millis(20),
                Reply::Throttled { retry_after: 60 * SEC }
            )
        );
        // A second later the window has room again.
        assert!(matches!(
            entra.request(now + SEC, Requester::ServicePrincipal),
            Answer::At(_, Reply::Token { .. })
        ));
    }

    #[test]
    fn service_principal_tokens_live_60_to_90_minutes_and_are_fresh_each_time() {
        let mut entra = model(1_000_000);
        let mut secrets = std::collections::HashSet::new();
        let mut shortest = Duration::MAX;
        let mut longest = Duration::ZERO;
        for i in 0..2_000u64 {
            let Answer::At(at, Reply::Token { secret, expires_at }) =
                entra.request(Duration::from_millis(i), Requester::ServicePrincipal)
            else {
                panic!("no token");
            };
            assert!(secrets.insert(secret), "a fresh token per request");
            let lifetime = expires_at - at;
            shortest = shortest.min(lifetime);
            longest = longest.max(lifetime);
        }
        assert!(shortest >= 60 * MIN && shortest < 62 * MIN, "{shortest:?}");
        assert!(longest < 90 * MIN && longest > 88 * MIN, "{longest:?}");
    }

    #[test]
    fn managed_identity_tokens_live_about_a_day() {
        let mut entra = model(10);
        let Answer::At(at, Reply::Token { expires_at, .. }) = entra.request(SEC, Requester::ManagedIdentity) else {
            panic!("no token");
        };
        let lifetime = expires_at - at;
        assert!(lifetime > Duration::from_secs(23 * 3600) && lifetime <= Duration::from_secs(24 * 3600));
    }

    #[test]
    fn during_an_outage_nothing_answers_and_nothing_counts() {
        let mut entra = EntraModel::new(
            EntraConfig {
                rate_per_second: 1,
                outage: Some(Outage {
                    start: 10 * SEC,
                    end: 20 * SEC,
                }),
                ..EntraConfig::default()
            },
            1,
        );
        assert_eq!(entra.request(10 * SEC, Requester::ServicePrincipal), Answer::Never);
        assert_eq!(entra.request(19 * SEC, Requester::ServicePrincipal), Answer::Never);
        // The swallowed requests did not use the quota.
        assert!(matches!(
            entra.request(20 * SEC, Requester::ServicePrincipal),
            Answer::At(_, Reply::Token { .. })
        ));
    }

    #[test]
    fn slow_latency_has_its_median_and_p99_and_is_capped() {
        let mut rng = SimRng::new(11);
        let slow = Latency::slow();
        let mut draws: Vec<Duration> = (0..50_000).map(|_| slow.sample(&mut rng)).collect();
        draws.sort();
        let median = draws[draws.len() / 2].as_secs_f64();
        let p99 = draws[draws.len() * 99 / 100].as_secs_f64();
        assert!((0.45..0.55).contains(&median), "median {median}");
        assert!((4.5..5.5).contains(&p99), "p99 {p99}");
        assert!(draws.iter().all(|d| *d <= slow.max));
        let healthy = Latency::healthy();
        assert!((0..1000).all(|_| healthy.sample(&mut rng) <= Duration::from_secs(1)));
    }
}
