//! Feeds a connection state machine from the token manager: each new token becomes a
//! generation with its expiry on the monotonic clock; the token itself stays here, with
//! why there is none when there is none. Shared by every connection type's driver.

use std::time::{Duration, Instant, SystemTime};

use entraid_identity::Token;
use entraid_token_manager::{Availability, ConnectionId, ConnectionStateMachine, Generation, TokenManagerError};
use redis::{ErrorKind, RedisError};

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

/// What a command gets while no valid token exists.
pub(crate) fn no_token_error(error: TokenManagerError) -> RedisError {
    RedisError::from((
        ErrorKind::AuthenticationFailed,
        "no valid Entra ID token",
        format!("{error}; connections recover by themselves as soon as a token is available"),
    ))
}

/// The newest token a connection state machine was given, by generation, and the
/// failures callers are told about while there is no connection to use.
#[derive(Debug, Default)]
pub(crate) struct TokenFeed {
    latest: Option<(Generation, Token)>,
    /// Why there is no valid token (boxed: rarely set, and one feed lives beside every
    /// connection).
    token_error: Option<Box<TokenManagerError>>,
    /// Why the last connection attempt failed.
    connect_error: Option<Box<RedisError>>,
    /// Bumped whenever either error changes, so a published state is compared by it,
    /// never by an error's text.
    errors_changed: u64,
}

impl TokenFeed {
    /// Hands `token` to the machine unless it is the one it already has, expiring after
    /// the [`time_left`] it has.
    pub(crate) fn token(&mut self, machine: &mut ConnectionStateMachine, now: Instant, token: Token) {
        self.set_token_error(None);
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

    /// The token manager reports `error`; the token in force, if any, stays usable.
    pub(crate) fn token_error(&mut self, error: TokenManagerError) {
        self.set_token_error(Some(error));
    }

    /// No valid token exists any more, because of `error`.
    pub(crate) fn token_lost(&mut self, machine: &mut ConnectionStateMachine, now: Instant, error: TokenManagerError) {
        self.set_token_error(Some(error));
        machine.handle_token_lost(now);
    }

    /// The last connection attempt failed with `error` (`None`: one succeeded).
    pub(crate) fn connect_result(&mut self, error: Option<RedisError>) {
        if error.is_none() && self.connect_error.is_none() {
            return;
        }
        self.connect_error = error.map(Box::new);
        self.errors_changed += 1;
    }

    fn set_token_error(&mut self, error: Option<TokenManagerError>) {
        if error.is_none() && self.token_error.is_none() {
            return;
        }
        self.token_error = error.map(Box::new);
        self.errors_changed += 1;
    }

    /// The token of `generation`: the machine only ever names the newest.
    pub(crate) fn get(&self, generation: Generation) -> Option<&Token> {
        self.latest
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, token)| token)
    }

    /// A counter that changes whenever [`for_callers`](Self::for_callers) may give
    /// another error.
    pub(crate) fn errors_changed(&self) -> u64 {
        self.errors_changed
    }

    /// What callers are told for `availability`: the connection to use, `None` while one
    /// is being opened (wait for it), or why there is none.
    pub(crate) fn for_callers(&self, availability: Availability) -> Result<Option<ConnectionId>, RedisError> {
        match availability {
            Availability::Connected(id) => Ok(Some(id)),
            Availability::Connecting => Ok(None),
            Availability::NoValidToken => Err(no_token_error(
                self.token_error
                    .as_deref()
                    .cloned()
                    .unwrap_or(TokenManagerError::TokenExpired),
            )),
            Availability::Reconnecting => Err(self.connect_error.as_deref().cloned().unwrap_or_else(|| {
                RedisError::from((
                    ErrorKind::Io,
                    "reconnecting",
                    "the last connection attempt failed".to_owned(),
                ))
            })),
        }
    }
}

/// A client for `client`'s address and settings, authenticating with `token` in its
/// handshake.
pub(crate) fn client_with_token(client: &redis::Client, token: &Token) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_username(token.username())
        .set_password(token.secret());
    redis::Client::open(info.set_redis_settings(settings))
}
