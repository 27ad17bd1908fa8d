//! Feeds a connection state machine from the token manager: each new token becomes a
//! generation with its expiry on the monotonic clock; the token itself stays here.

use std::time::{Duration, Instant, SystemTime};

use entraid_identity::Token;
use entraid_token_manager::{ConnectionStateMachine, Generation};

/// The newest token a connection state machine was given, by generation.
#[derive(Debug, Default)]
pub(crate) struct TokenFeed {
    latest: Option<(Generation, Token)>,
}

impl TokenFeed {
    /// Hands `token` to the machine unless it is the one it already has. Its expiry is
    /// the time it has left by the wall clock, so a token handed over late in its life
    /// (a reconnect, a new manager) is not taken for a fresh one.
    pub(crate) fn offer(&mut self, machine: &mut ConnectionStateMachine, now: Instant, token: Token) {
        if self
            .latest
            .as_ref()
            .is_some_and(|(_, latest)| latest.secret() == token.secret())
        {
            return;
        }
        let left = token
            .expires_at()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let expires_at = now
            .checked_add(left)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
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
