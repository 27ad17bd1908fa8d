//! Counters the emulator keeps, for its log, the admin endpoint and the demo's status line.

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
        })
    }
}
