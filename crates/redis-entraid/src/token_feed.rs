//! Feeds a connection state machine from the token manager: each new token becomes a
//! generation with its expiry on the monotonic clock; the token itself stays here.

use std::time::{Duration, Instant, SystemTime};

use entraid_identity::Token;
use entraid_token_manager::{ConnectionPolicy, ConnectionStateMachine, Generation, TokenManagerError};
use redis::{ErrorKind, RedisError, RedisResult};

/// What `token` has left by the wall clock: a token may be handed over late in its life
/// (a reconnect, a new manager), so its full lifetime would overstate it.
pub(crate) fn time_left(token: &Token) -> Duration {
    token
        .expires_at()
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// When `token` expires on the monotonic clock, from what it has left by the wall clock.
/// Saturates for far-future expiries instead of overflowing `Instant`.
pub(crate) fn expiry_on_monotonic_clock(now: Instant, token: &Token) -> Instant {
    // No token lives ten years, and adding that cannot overflow an `Instant`.
    const FAR_FUTURE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    now.checked_add(time_left(token).min(FAR_FUTURE)).unwrap_or(now)
}

/// A connection state machine for `policy`, or the reason the policy cannot work.
pub(crate) fn state_machine(policy: ConnectionPolicy) -> RedisResult<ConnectionStateMachine> {
    ConnectionStateMachine::new(policy).map_err(|error| {
        RedisError::from((
            ErrorKind::InvalidClientConfig,
            "invalid re-authentication policy",
            error.to_string(),
        ))
    })
}

/// What a command gets while no valid token exists.
pub(crate) fn no_token_error(error: TokenManagerError) -> RedisError {
    RedisError::from((
        ErrorKind::AuthenticationFailed,
        "no valid Entra ID token",
        format!("{error}; connections recover by themselves as soon as a token is available"),
    ))
}

/// The newest token a connection state machine was given, by generation.
#[derive(Debug, Default)]
pub(crate) struct TokenFeed {
    latest: Option<(Generation, Token)>,
}

impl TokenFeed {
    /// Hands `token` to the machine unless it is the one it already has, expiring after
    /// the [`time_left`] it has.
    pub(crate) fn offer(&mut self, machine: &mut ConnectionStateMachine, now: Instant, token: Token) {
        if self
            .latest
            .as_ref()
            .is_some_and(|(_, latest)| latest.secret() == token.secret())
        {
            return;
        }
        let expires_at = expiry_on_monotonic_clock(now, &token);
        let generation = machine.handle_token(now, expires_at, token.lifetime());
        self.latest = Some((generation, token));
    }

    /// The token of `generation`: the machine only ever names the newest.
    pub(crate) fn get(&self, generation: Generation) -> Option<&Token> {
        self.latest
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, token)| token)
    }
}
