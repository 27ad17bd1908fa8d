//! One connection's view of the token manager: its tokens as `BasicAuth`, renewals
//! spread in time, errors as `RedisError` items.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use entraid_identity::Token;
use entraid_token_manager::{RenewalSpread, TokenManagerError, TokenStream};
use futures_core::Stream;
use redis::auth::BasicAuth;
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::time::{Instant, Sleep};

use crate::provider::ManagerHandle;

/// A renewal waiting out its spread delay.
struct Delayed {
    sleep: Pin<Box<Sleep>>,
    auth: BasicAuth,
}

/// Yields the current token first, then each renewal (after its spread delay) and each
/// error. Holds a manager handle, so the manager runs as long as a connection listens.
pub(crate) struct CredentialsStream {
    tokens: TokenStream,
    manager: ManagerHandle,
    spread: RenewalSpread,
    /// When the token last handed out expires, on tokio's clock.
    current_expiry: Option<Instant>,
    /// When the token the connection held before the last renewal expires.
    replaced_expiry: Option<Instant>,
    delayed: Option<Box<Delayed>>,
    /// A renewal was handed out and the stream was not polled since: if it is dropped
    /// now, the redis crate's re-auth task ended on that renewal's `AUTH`.
    renewal_unacknowledged: bool,
}

impl CredentialsStream {
    pub(crate) fn new(tokens: TokenStream, manager: ManagerHandle, spread: RenewalSpread) -> CredentialsStream {
        CredentialsStream {
            tokens,
            manager,
            spread,
            current_expiry: None,
            replaced_expiry: None,
            delayed: None,
            renewal_unacknowledged: false,
        }
    }

    fn renewal(&mut self, auth: BasicAuth) -> Poll<Option<RedisResult<BasicAuth>>> {
        self.renewal_unacknowledged = true;
        Poll::Ready(Some(Ok(auth)))
    }
}

impl Drop for CredentialsStream {
    fn drop(&mut self) {
        if !self.renewal_unacknowledged {
            return;
        }
        self.manager
            .health()
            .lost_reauthentications
            .fetch_add(1, Ordering::Relaxed);
        let cut_in_s = self
            .replaced_expiry
            .map(|at| at.saturating_duration_since(Instant::now()).as_secs());
        tracing::error!(
            cut_in_s,
            "a connection's re-authentication ended after a failed AUTH (the redis crate does not retry): \
             the server will close it when its token expires; use redis_entraid::aio::ConnectionManager, \
             which retries AUTH and replaces the connection before expiry"
        );
    }
}

fn basic_auth(token: &Token) -> BasicAuth {
    BasicAuth::new(token.username().to_owned(), token.secret().to_owned())
}

fn redis_error(error: TokenManagerError) -> RedisError {
    RedisError::from((ErrorKind::AuthenticationFailed, "no Entra ID token", error.to_string()))
}

/// A connection's first item when no valid token exists. An I/O-kind error, because
/// redis's `ConnectionManager` reconnects only after I/O errors: with any other kind it
/// would keep this failure for every later command, even once tokens are back.
fn first_item_error(error: TokenManagerError) -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "no Entra ID token",
        format!("{error}; the connection is retried on the next command"),
    ))
}

impl Stream for CredentialsStream {
    type Item = RedisResult<BasicAuth>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.renewal_unacknowledged = false;
        if let Some(delayed) = &mut self.delayed {
            ready!(delayed.sleep.as_mut().poll(cx));
            if let Some(delayed) = self.delayed.take() {
                return self.renewal(delayed.auth);
            }
        }
        let first = self.current_expiry.is_none();
        let token = loop {
            match ready!(Pin::new(&mut self.tokens).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(TokenManagerError::RuntimeShutDown)) => match self.manager.resubscribe() {
                    // The manager was started again on a runtime of its own.
                    Some(tokens) => self.tokens = tokens,
                    None => return Poll::Ready(None),
                },
                Some(Err(error)) if first => return Poll::Ready(Some(Err(first_item_error(error)))),
                // A connection that has credentials gains nothing from the error (the
                // token manager logs it once), and the redis crate would log it at
                // `error` once per connection: 10 000 lines for one failure.
                Some(Err(TokenManagerError::Stopped)) => {
                    return Poll::Ready(Some(Err(redis_error(TokenManagerError::Stopped))));
                }
                Some(Err(_)) => {}
                Some(Ok(token)) => break token,
            }
        };
        let now = Instant::now();
        // What the token has left, not its full lifetime: a connection may start late
        // in a token's life (every reconnect does).
        let expiry = Instant::from_std(crate::token_feed::expiry_on_monotonic_clock(now.into_std(), &token));
        let previous_expiry = self.current_expiry.replace(expiry);
        let auth = basic_auth(&token);
        // A connection's first credentials are never delayed.
        let Some(previous_expiry) = previous_expiry else {
            return Poll::Ready(Some(Ok(auth)));
        };
        self.replaced_expiry = Some(previous_expiry);
        let delay = self.spread.next_delay(previous_expiry.saturating_duration_since(now));
        if delay.is_zero() {
            return self.renewal(auth);
        }
        let mut sleep = Box::pin(tokio::time::sleep(delay));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => self.renewal(auth),
            Poll::Pending => {
                self.delayed = Some(Box::new(Delayed { sleep, auth }));
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_connection_state_stays_small() {
        // One of these lives beside every connection: a fleet holds thousands.
        assert!(
            std::mem::size_of::<CredentialsStream>() <= 112,
            "{}",
            std::mem::size_of::<CredentialsStream>()
        );
    }
}
