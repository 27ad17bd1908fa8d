//! One connection's view of the token manager: its tokens as `BasicAuth`, renewals
//! spread in time, errors as `RedisError` items.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use entraid_identity::Token;
use entraid_token_manager::{TokenManagerError, TokenStream};
use futures_core::Stream;
use redis::auth::BasicAuth;
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::time::{Instant, Sleep};

use crate::provider::ManagerHandle;

/// How long this connection waits before passing a renewal on. Kept small: one lives
/// beside every connection.
pub(crate) struct Spread {
    /// The window, in milliseconds (up to 49 days).
    max_ms: u32,
    renewals: u32,
    /// This stream's random seed, from the provider's per-process random keys.
    seed: u64,
}

impl Spread {
    pub(crate) fn new(max: Duration, random: &RandomState, stream_id: u64) -> Spread {
        Spread {
            max_ms: u32::try_from(max.as_millis()).unwrap_or(u32::MAX),
            renewals: 0,
            seed: random.hash_one(stream_id),
        }
    }

    /// A delay in `[0, min(max, left / 10))`, where `left` is what the replaced token had
    /// left: a renewal never waits long enough to put the connection at risk.
    fn next_delay(&mut self, left_on_replaced: Duration) -> Duration {
        let bound = Duration::from_millis(u64::from(self.max_ms)).min(left_on_replaced / 10);
        if bound.is_zero() {
            return Duration::ZERO;
        }
        self.renewals = self.renewals.wrapping_add(1);
        let draw = finalize(self.seed ^ u64::from(self.renewals).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let unit = (draw >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        // Whole milliseconds, rounded down: timers round up to the millisecond, and the
        // delay must stay strictly inside the window after that.
        Duration::from_millis((bound.as_millis() as f64 * unit) as u64)
    }
}

/// A 64-bit mixing finalizer (MurmurHash3's): spreads consecutive inputs over the range.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^ (z >> 33)
}

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
    spread: Spread,
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
    pub(crate) fn new(tokens: TokenStream, manager: ManagerHandle, spread: Spread) -> CredentialsStream {
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
    fn delays_stay_inside_the_window_and_the_tenth_of_life_bound() {
        let mut spread = Spread::new(Duration::from_secs(1), &RandomState::new(), 7);
        let delays: Vec<Duration> = (0..1000).map(|_| spread.next_delay(Duration::from_secs(600))).collect();
        assert!(delays.iter().all(|d| *d < Duration::from_secs(1)));
        assert!(
            delays.iter().any(|d| *d > Duration::from_millis(900))
                && delays.iter().any(|d| *d < Duration::from_millis(100))
        );
        // A replaced token with 2 s left: at most 200 ms.
        assert!((0..1000).all(|_| spread.next_delay(Duration::from_secs(2)) < Duration::from_millis(200)));
        assert_eq!(spread.next_delay(Duration::ZERO), Duration::ZERO);
        let mut off = Spread::new(Duration::ZERO, &RandomState::new(), 1);
        assert_eq!(off.next_delay(Duration::from_secs(3600)), Duration::ZERO);
        // Different streams draw differently.
        let random = RandomState::new();
        let (mut a, mut b) = (
            Spread::new(Duration::from_secs(1), &random, 1),
            Spread::new(Duration::from_secs(1), &random, 2),
        );
        // (Five draws each: one pair may collide at millisecond resolution, five will not.)
        let draws = |s: &mut Spread| {
            (0..5)
                .map(|_| s.next_delay(Duration::from_secs(600)))
                .collect::<Vec<_>>()
        };
        assert_ne!(draws(&mut a), draws(&mut b));
    }

    #[test]
    fn the_per_connection_state_stays_small() {
        // One of these lives beside every connection (issue 8, figure 3).
        assert!(
            std::mem::size_of::<CredentialsStream>() <= 112,
            "{}",
            std::mem::size_of::<CredentialsStream>()
        );
    }
}
