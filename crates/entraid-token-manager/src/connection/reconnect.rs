//! When the next connection attempt may start: the reconnect backoff after failed
//! attempts, and connections lost so soon after they opened that they count as failed.

use std::time::{Duration, Instant};

use super::policy::CompactPolicy;
use crate::jitter::Jitter;

/// Failed connection attempts in a row, and the earliest instant of the next one.
#[derive(Debug, Default)]
pub(super) struct Reconnect {
    at: Option<Instant>,
    failures: u32,
}

impl Reconnect {
    /// Whether an attempt may start now.
    pub(super) fn may_connect(&self, now: Instant) -> bool {
        self.at.is_none_or(|at| at <= now)
    }

    /// Failed attempts in a row (reset once a connection proves stable).
    pub(super) fn failures(&self) -> u32 {
        self.failures
    }

    /// The instant the next attempt may start, while one must wait.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.at
    }

    /// An attempt failed: the next waits the backoff.
    pub(super) fn failed(&mut self, now: Instant, policy: &CompactPolicy, jitter: &mut Jitter) {
        self.failures = self.failures.saturating_add(1);
        let wait = backoff(
            jitter,
            policy.reconnect_initial(),
            policy.reconnect_max(),
            self.failures,
        );
        self.at = Some(now + wait);
    }

    /// A connection opened. The failure count stays until it proves stable (see
    /// [`lost`](Self::lost)): a server that drops each connection at once must meet the
    /// backoff, not a tight reconnect loop.
    pub(super) fn opened(&mut self) {
        self.at = None;
    }

    /// The connection in use went (closed by the machine): the next attempt need not
    /// wait.
    pub(super) fn wait_no_more(&mut self) {
        self.at = None;
    }

    /// The connection in use, opened at `opened_at`, was lost.
    pub(super) fn lost(&mut self, now: Instant, opened_at: Instant, policy: &CompactPolicy, jitter: &mut Jitter) {
        if now.saturating_duration_since(opened_at) >= policy.stable_after() {
            // It was stable: reconnect at once, with a fresh backoff.
            self.failures = 0;
            self.at = None;
        } else {
            // Lost soon after it opened (a kill loop, a failing node, an output buffer
            // limit): a failure. The first reconnects at once, the next back off.
            self.failures = self.failures.saturating_add(1);
            self.at = (self.failures > 1).then(|| {
                now + backoff(
                    jitter,
                    policy.reconnect_initial(),
                    policy.reconnect_max(),
                    self.failures - 1,
                )
            });
        }
    }
}

/// `initial · 2^(n−1)`, at most `max`, scaled by a ±20 % jitter and kept within `max`:
/// the backoff of reconnects and of `AUTH` retries. (The token manager's
/// [`RetryPolicy::backoff`](crate::RetryPolicy::backoff) is the user's configurable
/// multiplier, in floating point; this one is whole doubling, exact on the fake clock.)
pub(super) fn backoff(jitter: &mut Jitter, initial: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exponent).min(max);
    // Through f64 seconds so no value can overflow `Duration` (`mul_f64` would panic).
    Duration::try_from_secs_f64(base.as_secs_f64() * jitter.factor(0.2))
        .unwrap_or(max)
        .min(max)
}
