//! What happened to a connection owner's connections so far, and the one allocation a
//! supervisor shares with its handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::reports::Reports;

/// What happened to a supervisor's connections so far.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) reauthentications: AtomicU64,
    pub(crate) failed_auths: AtomicU64,
    pub(crate) replacements: AtomicU64,
    pub(crate) renewal_swaps: AtomicU64,
    pub(crate) closed_before_expiry: AtomicU64,
    pub(crate) connections_lost: AtomicU64,
    pub(crate) subscriptions_refused: AtomicU64,
    pub(crate) settings_refused: AtomicU64,
    pub(crate) unresponsive: AtomicU64,
    pub(crate) handoffs: AtomicU64,
    pub(crate) handoff_failures: AtomicU64,
    pub(crate) relaxed_windows: AtomicU64,
    pub(crate) maintenance_refused: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Sets a flag kept as a counter (0 or 1).
    pub(crate) fn bump_once(counter: &AtomicU64) {
        counter.store(1, Ordering::Relaxed);
    }
}

/// What a supervisor and its handles (and the transport's readers) share: one allocation
/// per connection, the transport's part (`of`) included.
pub(crate) struct Shared<X> {
    pub(crate) counters: Counters,
    /// What commands and readers found out: connections dropped, or slow to answer.
    pub(crate) reports: Reports,
    /// The transport's own.
    pub(crate) of: X,
}

impl<X> Shared<X> {
    pub(crate) fn new(of: X) -> Arc<Shared<X>> {
        Arc::new(Shared {
            counters: Counters::default(),
            reports: Reports::default(),
            of,
        })
    }
}

/// What happened to a connection's physical connections so far. Cheap to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Connections opened (each authenticated once, in its handshake).
    pub connections_opened: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Renewals accepted by the server on a live connection.
    pub reauthentications: u64,
    /// Re-authentication `AUTH`s refused or timed out (each was retried).
    pub failed_auths: u64,
    /// Connections replaced by a new one because they could not re-authenticate in time.
    pub replacements: u64,
    /// Connections closed before their token expired, so the server did not cut them.
    pub closed_before_expiry: u64,
    /// Connections found dropped (I/O errors, server restarts).
    pub connections_lost: u64,
    /// Channels and patterns dropped from the record because the server refused them
    /// when a new connection made them again (an ACL change, say); each is logged.
    pub subscriptions_refused: u64,
    /// Settings (a client name, `READONLY`, `CLIENT NO-EVICT`/`NO-TOUCH`) dropped from
    /// the record because the server refused them when a new connection made them again;
    /// each is logged.
    pub settings_refused: u64,
    /// Connections replaced because they stopped answering: a command and then a health
    /// `PING` got no reply (a silent network path).
    pub unresponsive: u64,
    /// Connections handed off to the endpoint a server's `MOVING` named (or to the
    /// original address) before the server closed the old one.
    pub handoffs: u64,
    /// Handoff connections that could not be opened (each retried until the server's
    /// deadline).
    pub handoff_failures: u64,
    /// Times command timeouts were relaxed for announced maintenance (`MIGRATING`,
    /// `FAILING_OVER`, `MOVING`).
    pub relaxed_windows: u64,
    /// Whether the server refused maintenance notifications (`CLIENT
    /// MAINT_NOTIFICATIONS`): with [`MaintenanceNotifications::Auto`](crate::MaintenanceNotifications::Auto)
    /// the manager then goes on without them.
    pub maintenance_refused: bool,
}

impl ConnectionStats {
    pub(crate) fn of(c: &Counters) -> Self {
        ConnectionStats {
            connections_opened: Counters::get(&c.connections_opened),
            connect_failures: Counters::get(&c.connect_failures),
            reauthentications: Counters::get(&c.reauthentications),
            failed_auths: Counters::get(&c.failed_auths),
            replacements: Counters::get(&c.replacements),
            closed_before_expiry: Counters::get(&c.closed_before_expiry),
            connections_lost: Counters::get(&c.connections_lost),
            subscriptions_refused: Counters::get(&c.subscriptions_refused),
            settings_refused: Counters::get(&c.settings_refused),
            unresponsive: Counters::get(&c.unresponsive),
            handoffs: Counters::get(&c.handoffs),
            handoff_failures: Counters::get(&c.handoff_failures),
            relaxed_windows: Counters::get(&c.relaxed_windows),
            maintenance_refused: Counters::get(&c.maintenance_refused) > 0,
        }
    }
}
