//! Small pieces the [`Supervisor`](super::supervisor::Supervisor) and its transports
//! share: the clock they give the core, and the futures the loop waits on.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use entraid_token_manager::{TokenManagerError, TokenStream};
use redis::{RedisError, RedisResult};
use tokio_stream::StreamExt;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The instant the state machines are given: tokio's clock, so paused-time tests work.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// `f`, or a timeout error after `timeout`. A timeout is not a lost connection: the
/// error is an I/O `TimedOut`, which redis classes as recoverable (as its own response
/// timeout), so no one takes a slow reply for a dead connection.
pub(crate) async fn within<T>(
    timeout: Duration,
    what: &str,
    f: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(what, timeout)),
    }
}

/// The error of [`within`].
pub(crate) fn timed_out(what: &str, timeout: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no reply to {what} within {timeout:?}"),
    ))
}

pub(crate) async fn next_token(
    tokens: &mut Option<TokenStream>,
) -> Option<Result<entraid_identity::Token, TokenManagerError>> {
    match tokens {
        Some(tokens) => tokens.next().await,
        None => std::future::pending().await,
    }
}

/// The result of the pending operation, if any; never resolves without one.
pub(crate) async fn wait_pending<K: Copy, T>(pending: &mut Option<(K, BoxFuture<T>)>) -> (K, T) {
    match pending {
        Some((key, future)) => (*key, future.await),
        None => std::future::pending().await,
    }
}

pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
