//! A token manager's health, for health checks, dashboards and `entraid doctor`: what a
//! person needs to tell "fine", "retrying" and "broken" apart, and never a secret.

use std::time::{Duration, Instant, SystemTime};

use entraid_identity::IdentityError;

/// A point-in-time view of a token manager. Cheap to take: a few small strings, nothing
/// per connection. `Debug` shows no secret: the token itself is not in here.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TokenStatus {
    /// The current token's username (the principal's object id, `oid`); `None` before
    /// the first token and after it expired with no replacement.
    pub username: Option<String>,
    /// When the current token expires, by the wall clock (the server's `exp`, or the
    /// receipt time plus the response's `expires_in`).
    pub expires_at: Option<SystemTime>,
    /// When the current token was received, by the wall clock.
    pub received_at: Option<SystemTime>,
    /// How the latest request ended.
    pub last_outcome: Option<RefreshOutcome>,
    /// Failed requests since the last success.
    pub consecutive_failures: u32,
    /// Requests that brought a token, since start.
    pub successful_requests: u64,
    /// Requests that failed or timed out, since start.
    pub failed_requests: u64,
    /// Whether a request to the identity provider is under way.
    pub request_in_flight: bool,
    /// When the next request is due (or the one under way times out).
    pub next_attempt_at: Option<Instant>,
    /// Whether the manager still runs (false once stopped, or once its runtime ended).
    pub running: bool,
}

impl TokenStatus {
    /// What the current token has left by the wall clock at `now`; `None` without one.
    pub fn expires_in(&self, now: SystemTime) -> Option<Duration> {
        self.expires_at
            .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// Whether a token that has not expired is held: the one thing connections need.
    pub fn has_valid_token(&self, now: SystemTime) -> bool {
        self.expires_in(now).is_some_and(|left| !left.is_zero())
    }
}

/// How a token request ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RefreshOutcome {
    /// A token arrived (a new one, or the current one again).
    Renewed {
        /// When, on the manager's clock.
        at: Instant,
    },
    /// The request failed or timed out; it is retried.
    Failed {
        /// When, on the manager's clock.
        at: Instant,
        /// Why: the provider's error, with its code (`AADSTS…`, `http_429`, `timeout`)
        /// and hint. Identity errors never carry a secret.
        error: IdentityError,
    },
}

impl RefreshOutcome {
    /// When the request ended.
    pub fn at(&self) -> Instant {
        match self {
            RefreshOutcome::Renewed { at } | RefreshOutcome::Failed { at, .. } => *at,
        }
    }

    /// Whether a token arrived.
    pub fn is_success(&self) -> bool {
        matches!(self, RefreshOutcome::Renewed { .. })
    }
}
