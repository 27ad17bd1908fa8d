//! What the connections of this crate's own types report for
//! [`EntraIdCredentialsProvider::status`](crate::EntraIdCredentialsProvider::status):
//! gauges and counters shared by every connection of one provider, updated at events,
//! read without visiting any connection.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use entraid_identity::Token;
use entraid_token_manager::TokenStatus;

/// A provider's health: its token manager's, and its connections'.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ProviderStatus {
    /// The token manager's status (username and expiry, never the secret; the latest
    /// refresh outcome and error; failures in a row; the next attempt). `running` is
    /// false before the provider was started.
    pub token: TokenStatus,
    /// The connections made through this crate's connection types
    /// ([`crate::aio::ConnectionManager`], [`crate::aio::PubSub`], [`crate::Connection`]),
    /// and what the redis crate's own connections lost.
    pub connections: ConnectionsStatus,
}

/// Connection figures of one provider. Gauges are "now"; counters count since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionsStatus {
    /// Open connections of this crate's types (a manager replacing its connection holds
    /// two for a moment; a RESP2 subscriber swapping, likewise).
    pub live: u64,
    /// Successful re-authentications (`AUTH` on a live connection) with the newest
    /// token: after a rotation settles this reaches the number of connections that were
    /// open before it (new connections authenticate in their handshake instead).
    pub reauthenticated_on_latest_renewal: u64,
    /// Connections whose last re-authentication `AUTH` failed and is being retried.
    pub retrying_auth: u64,
    /// Connections replaced (make-before-break) because they could not re-authenticate
    /// in time, since start.
    pub replaced: u64,
    /// Connections handed off to a new one before the server moved the endpoint
    /// (maintenance notifications, `MOVING`), since start.
    pub handed_off: u64,
    /// Connections made through the redis crate's own paths whose re-authentication
    /// ended after a failed `AUTH` (the server cuts them at their token's expiry), since
    /// start. Also logged once each.
    pub lost_reauthentications: u64,
}

/// The shared figures behind [`ConnectionsStatus`].
#[derive(Debug, Default)]
pub(crate) struct ConnectionHealth {
    live: AtomicI64,
    retrying_auth: AtomicI64,
    replaced: AtomicU64,
    handed_off: AtomicU64,
    pub(crate) lost_reauthentications: AtomicU64,
    latest: Mutex<LatestRenewal>,
}

/// Re-authentications with the newest token seen, keyed by its receipt time.
#[derive(Debug, Default)]
struct LatestRenewal {
    received_at: Option<SystemTime>,
    reauthenticated: u64,
}

impl ConnectionHealth {
    pub(crate) fn handed_off(&self) {
        self.handed_off.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn replaced(&self) {
        self.replaced.fetch_add(1, Ordering::Relaxed);
    }

    /// A live connection accepted `token` in an `AUTH`.
    pub(crate) fn reauthenticated(&self, token: &Token) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let received_at = token.received_at();
        match latest.received_at {
            Some(newest) if newest > received_at => {}
            Some(newest) if newest == received_at => latest.reauthenticated += 1,
            _ => {
                latest.received_at = Some(received_at);
                latest.reauthenticated = 1;
            }
        }
    }

    pub(crate) fn snapshot(&self) -> ConnectionsStatus {
        let gauge = |g: &AtomicI64| u64::try_from(g.load(Ordering::Relaxed)).unwrap_or(0);
        ConnectionsStatus {
            live: gauge(&self.live),
            reauthenticated_on_latest_renewal: self
                .latest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reauthenticated,
            retrying_auth: gauge(&self.retrying_auth),
            replaced: self.replaced.load(Ordering::Relaxed),
            handed_off: self.handed_off.load(Ordering::Relaxed),
            lost_reauthentications: self.lost_reauthentications.load(Ordering::Relaxed),
        }
    }
}

/// One connection type's share of the provider's gauges: it reports its own counts, the
/// share adds the differences. Only the counts are kept (one of these lives beside every
/// manager): the owner passes the provider's figures in, and calls
/// [`release`](Self::release) when it goes.
#[derive(Debug, Default)]
pub(crate) struct GaugeShare {
    live: u16,
    retrying: u16,
}

impl GaugeShare {
    /// This owner now holds `live` open connections, `retrying` of them retrying an `AUTH`.
    pub(crate) fn set(&mut self, health: &ConnectionHealth, live: usize, retrying: usize) {
        let live = u16::try_from(live).unwrap_or(u16::MAX);
        let retrying = u16::try_from(retrying).unwrap_or(u16::MAX);
        let delta = |new: u16, old: u16| i64::from(new) - i64::from(old);
        if live != self.live {
            health.live.fetch_add(delta(live, self.live), Ordering::Relaxed);
            self.live = live;
        }
        if retrying != self.retrying {
            health
                .retrying_auth
                .fetch_add(delta(retrying, self.retrying), Ordering::Relaxed);
            self.retrying = retrying;
        }
    }

    /// The owner is gone: its connections no longer count.
    pub(crate) fn release(&mut self, health: &ConnectionHealth) {
        self.set(health, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn shares_add_up_and_are_released() {
        let health = ConnectionHealth::default();
        let (mut a, mut b) = (GaugeShare::default(), GaugeShare::default());
        a.set(&health, 2, 1);
        b.set(&health, 1, 0);
        assert_eq!((health.snapshot().live, health.snapshot().retrying_auth), (3, 1));
        a.set(&health, 1, 0);
        assert_eq!((health.snapshot().live, health.snapshot().retrying_auth), (2, 0));
        b.release(&health);
        assert_eq!(health.snapshot().live, 1);
        a.release(&health);
        assert_eq!(health.snapshot().live, 0);
    }

    #[test]
    fn reauthentications_count_for_the_newest_token_only() {
        let health = ConnectionHealth::default();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let token = |received: SystemTime| Token::new("s", "oid", received + Duration::from_secs(3600), received);
        health.reauthenticated(&token(at));
        health.reauthenticated(&token(at));
        assert_eq!(health.snapshot().reauthenticated_on_latest_renewal, 2);
        let later = at + Duration::from_secs(2520);
        health.reauthenticated(&token(later));
        assert_eq!(
            health.snapshot().reauthenticated_on_latest_renewal,
            1,
            "a new renewal starts over"
        );
        health.reauthenticated(&token(at));
        assert_eq!(
            health.snapshot().reauthenticated_on_latest_renewal,
            1,
            "a late AUTH with the old token"
        );
    }
}
