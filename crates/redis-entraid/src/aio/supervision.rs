//! Small pieces the [`Supervisor`](super::supervisor::Supervisor) and its transports
//! share: containers sized for one or two connections, and the futures its loop waits on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use entraid_token_manager::{ConnectionId, MaintenanceNotice, TokenManagerError, TokenStream};
use redis::{RedisError, RedisResult};
use tokio::sync::Notify;
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

/// A map by connection id for the one or two entries a supervisor holds: a `Vec`, sized
/// exactly, costs less beside every connection than a hash map.
pub(crate) struct IdMap<V>(Vec<(ConnectionId, V)>);

impl<V> IdMap<V> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        IdMap(Vec::with_capacity(capacity))
    }

    pub(crate) fn insert(&mut self, id: ConnectionId, value: V) {
        self.remove(&id);
        self.0.push((id, value));
    }

    pub(crate) fn remove(&mut self, id: &ConnectionId) -> Option<V> {
        let at = self.0.iter().position(|(i, _)| i == id)?;
        Some(self.0.swap_remove(at).1)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn get(&self, id: &ConnectionId) -> Option<&V> {
        self.0.iter().find(|(i, _)| i == id).map(|(_, v)| v)
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.0.iter().map(|(id, _)| *id)
    }
}

/// What a report says of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// It dropped (an I/O error, a disconnection, its reader ended).
    Lost,
    /// A command on it got no reply in time.
    TimedOut,
    /// The server pushed a maintenance notification on it.
    Maintenance(MaintenanceNotice),
}

/// What commands and readers found out about connections, for the supervisor. (A
/// `Mutex<Vec>` and a `Notify` rather than a channel: one lives beside every connection,
/// and tokio's unbounded channel allocates a block of slots up front.)
#[derive(Default)]
pub(crate) struct Reports {
    reports: Mutex<Vec<(ConnectionId, Report)>>,
    notify: Notify,
}

impl Reports {
    pub(crate) fn report(&self, id: ConnectionId, report: Report) {
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        if !reports.iter().any(|(i, r)| *i == id && *r == report) {
            reports.push((id, report));
        }
        drop(reports);
        self.notify.notify_one();
    }

    pub(crate) async fn next(&self) -> Vec<(ConnectionId, Report)> {
        loop {
            let reports = std::mem::take(&mut *self.reports.lock().unwrap_or_else(PoisonError::into_inner));
            if !reports.is_empty() {
                return reports;
            }
            self.notify.notified().await;
        }
    }
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
