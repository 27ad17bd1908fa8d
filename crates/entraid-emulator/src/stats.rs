//! Counters the emulator keeps, for its log, the admin endpoint and the demo's status line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What happened so far.
#[derive(Debug, Default)]
pub struct Stats {
    /// Tokens issued by the token service.
    pub tokens_issued: AtomicU64,
    /// Token requests refused (bad credentials, injected faults).
    pub token_requests_refused: AtomicU64,
    /// Gateway connections accepted.
    pub connections: AtomicU64,
    /// First successful authentication of a gateway connection.
    pub authentications: AtomicU64,
    /// Later successful `AUTH`s on an authenticated connection.
    pub reauthentications: AtomicU64,
    /// `AUTH`/`HELLO` refused by the gateway.
    pub auth_failures: AtomicU64,
    /// Connections closed by the gateway because their token expired.
    pub cut_connections: AtomicU64,
    /// Connections closed right after they authenticated (the `drop_after_auth` fault).
    pub dropped_connections: AtomicU64,
    /// Connections that asked for maintenance notifications and got them.
    pub maintenance_opt_ins: AtomicU64,
    /// Maintenance notifications pushed (`MOVING`, `MIGRATING`, `MIGRATED`).
    pub maintenance_pushes: AtomicU64,
    /// Connections the gateway closed at the end of a `MOVING` window (every connection
    /// still open then, told or not, as a server does): a client that moved in time has
    /// none.
    pub moved_connections_closed: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A JSON snapshot.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "tokens_issued": get(&self.tokens_issued),
            "token_requests_refused": get(&self.token_requests_refused),
            "connections": get(&self.connections),
            "authentications": get(&self.authentications),
            "reauthentications": get(&self.reauthentications),
            "auth_failures": get(&self.auth_failures),
            "cut_connections": get(&self.cut_connections),
            "dropped_connections": get(&self.dropped_connections),
            "maintenance_opt_ins": get(&self.maintenance_opt_ins),
            "maintenance_pushes": get(&self.maintenance_pushes),
            "moved_connections_closed": get(&self.moved_connections_closed),
        })
    }

    /// The gateway's counters only (a cluster node's share of them).
    pub fn gateway_json(&self) -> serde_json::Value {
        let mut json = self.to_json();
        if let Some(map) = json.as_object_mut() {
            map.remove("tokens_issued");
            map.remove("token_requests_refused");
        }
        json
    }

    /// Sets every counter back to zero.
    pub(crate) fn reset(&self) {
        for counter in [
            &self.tokens_issued,
            &self.token_requests_refused,
            &self.connections,
            &self.authentications,
            &self.reauthentications,
            &self.auth_failures,
            &self.cut_connections,
            &self.dropped_connections,
            &self.maintenance_opt_ins,
            &self.maintenance_pushes,
            &self.moved_connections_closed,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// What one gateway counts in: the emulator's totals and its own node's figures.
#[derive(Debug, Clone)]
pub(crate) struct GatewayStats {
    pub(crate) total: Arc<Stats>,
    pub(crate) node: Arc<Stats>,
}

impl GatewayStats {
    /// Counts one event in both.
    pub(crate) fn bump(&self, counter: fn(&Stats) -> &AtomicU64) {
        Stats::bump(counter(&self.total));
        Stats::bump(counter(&self.node));
    }

    /// A new connection's id (from 1, unique across the emulator's gateways), counting it.
    /// `fetch_add`'s own result: with an increment then a separate read, two connections
    /// accepted at once could get one id.
    pub(crate) fn next_connection_id(&self) -> u64 {
        Stats::bump(&self.node.connections);
        self.total.connections.fetch_add(1, Ordering::Relaxed) + 1
    }
}
