//! Server maintenance notifications (smart client handoffs), as the connection machine
//! takes them: what the server announced, where a connection moves, and how long command
//! timeouts stay relaxed. Decisions only; the driver parses the pushes and does the I/O.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::output::ConnectionId;

/// A maintenance notification a server pushed on a connection (RESP3, after the client
/// opted in with `CLIENT MAINT_NOTIFICATIONS ON`), as the driver parsed it.
///
/// Start and end notifications are never paired by sequence number (a server may give
/// the end another one); a start seen twice (same kind and sequence number) counts once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaintenanceNotice {
    /// The endpoint moves: open a new connection (to `endpoint`, or to the original
    /// address after half of `time` when there is none) and move onto it before `time`
    /// has passed, when the server closes this one.
    Moving {
        /// The server's sequence number.
        seq: u64,
        /// How long until the server closes the connection.
        time: Duration,
        /// Where to connect; `None`: the original address, after half of `time`.
        endpoint: Option<Endpoint>,
    },
    /// Shards are migrating: replies may be slow for up to `time`.
    Migrating {
        /// The server's sequence number.
        seq: u64,
        /// How long the migration may take.
        time: Duration,
    },
    /// A migration ended.
    Migrated {
        /// The server's sequence number (not the start's).
        seq: u64,
    },
    /// A failover is under way: replies may be slow for up to `time`.
    FailingOver {
        /// The server's sequence number.
        seq: u64,
        /// How long the failover may take.
        time: Duration,
    },
    /// A failover ended.
    FailedOver {
        /// The server's sequence number (not the start's).
        seq: u64,
    },
}

/// Where a `MOVING` notification sends new connections: a host name or IP address and a
/// port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: String,
    port: u16,
}

/// Why a `MOVING` endpoint could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// No `:port` at the end.
    #[error("the endpoint {0:?} has no port: expected host:port")]
    NoPort(String),
    /// The port is not a number from 1 to 65535.
    #[error("the endpoint {0:?} has no valid port: expected host:port with a port from 1 to 65535")]
    BadPort(String),
    /// Nothing before the port.
    #[error("the endpoint {0:?} has no host: expected host:port")]
    NoHost(String),
}

impl Endpoint {
    /// An endpoint from its parts.
    pub fn new(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
        }
    }

    /// Reads `host:port`, splitting at the last colon (so an IPv6 address needs no
    /// brackets, as redis-py reads it); `[v6]:port` loses its brackets.
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| EndpointError::NoPort(text.to_owned()))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| EndpointError::BadPort(text.to_owned()))?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return Err(EndpointError::NoHost(text.to_owned()));
        }
        Ok(Endpoint::new(host, port))
    }

    /// The host name or IP address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A move the machine is carrying out.
#[derive(Debug)]
pub(crate) struct Handoff {
    /// The connection that received `MOVING`.
    pub(crate) from: ConnectionId,
    /// Where the new connection goes; `None`: the original address.
    pub(crate) endpoint: Option<Endpoint>,
    /// When to open it.
    pub(crate) start_at: Instant,
    /// A tenth of the announced time before the server closes `from`: the move is done,
    /// and `from` closed, by then.
    pub(crate) deadline: Instant,
}

/// How many start notifications are remembered to drop repeats: servers replay the
/// active ones to new connections, a handful at most.
const REMEMBERED: usize = 16;

/// Kinds of start notification, for the repeat check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartKind {
    Moving,
    Migrating,
    FailingOver,
}

/// The maintenance a machine knows of. Boxed in the machine: most connections never
/// see one.
#[derive(Debug, Default)]
pub(crate) struct Maintenance {
    pub(crate) handoff: Option<Handoff>,
    /// New connections go here until the instant (the `MOVING` window).
    pub(crate) redirect: Option<(Endpoint, Instant)>,
    /// Migrations and failovers started and not ended.
    windows: u32,
    /// Relaxed timeouts end here at the latest: a backstop when no end notification comes.
    relaxed_until: Option<Instant>,
    /// Whether the driver was told to relax (so each change is said once).
    relaxed: bool,
    seen: VecDeque<(StartKind, u64)>,
}

/// Relaxed timeouts outlast a start notification by at most this many times its `time`
/// (and by at least twice the relaxed timeout): SE.Redis's backstop.
const BACKSTOP_FACTOR: u32 = 3;

/// The longest announced time taken as it is: a push may carry up to `i64::MAX` seconds,
/// and no maintenance window lasts a day. Longer ones are taken as a day, so every
/// instant computed from one stays far inside `Instant`'s range.
pub(crate) const MAX_ANNOUNCED_TIME: Duration = Duration::from_secs(24 * 3600);

impl Maintenance {
    /// Whether this start was seen already; remembers it.
    fn repeat(&mut self, kind: StartKind, seq: u64) -> bool {
        if self.seen.contains(&(kind, seq)) {
            return true;
        }
        if self.seen.len() == REMEMBERED {
            self.seen.pop_front();
        }
        self.seen.push_back((kind, seq));
        false
    }

    /// Takes a notice received on `on` (the connection in use, `active`).
    pub(crate) fn notice(
        &mut self,
        now: Instant,
        on: ConnectionId,
        active: Option<ConnectionId>,
        notice: MaintenanceNotice,
        relaxed_timeout: Option<Duration>,
    ) {
        let backstop = |time: Duration| {
            let floor = relaxed_timeout.unwrap_or_default().saturating_mul(2);
            later(now, time.saturating_mul(BACKSTOP_FACTOR).max(floor))
        };
        match notice {
            MaintenanceNotice::Moving { seq, time, endpoint } => {
                let time = time.min(MAX_ANNOUNCED_TIME);
                if self.repeat(StartKind::Moving, seq) {
                    return;
                }
                // The push took a moment to arrive, and the old connection must be gone
                // before the server closes it: done by nine tenths of the announced time.
                let deadline = later(now, time.saturating_sub(time / 10));
                if let Some(endpoint) = &endpoint {
                    self.redirect = Some((endpoint.clone(), later(now, time)));
                }
                // Only the connection in use moves; one already retired goes anyway.
                if active != Some(on) {
                    return;
                }
                let start_at = if endpoint.is_some() { now } else { later(now, time / 2) };
                self.handoff = Some(Handoff {
                    from: on,
                    endpoint,
                    start_at,
                    deadline,
                });
                // Replies slow down while the endpoint moves, as in a migration: relaxed
                // for the whole window.
                let window_end = later(now, time);
                self.relaxed_until = Some(self.relaxed_until.map_or(window_end, |at| at.max(window_end)));
            }
            MaintenanceNotice::Migrating { seq, time } | MaintenanceNotice::FailingOver { seq, time } => {
                let time = time.min(MAX_ANNOUNCED_TIME);
                let kind = match notice {
                    MaintenanceNotice::Migrating { .. } => StartKind::Migrating,
                    _ => StartKind::FailingOver,
                };
                if !self.repeat(kind, seq) {
                    self.windows += 1;
                    let until = backstop(time);
                    self.relaxed_until = Some(self.relaxed_until.map_or(until, |at| at.max(until)));
                }
            }
            MaintenanceNotice::Migrated { .. } | MaintenanceNotice::FailedOver { .. } => {
                self.windows = self.windows.saturating_sub(1);
                if self.windows == 0 && self.handoff.is_none() {
                    self.relaxed_until = None;
                }
            }
        }
    }

    /// Whether timeouts should be relaxed now.
    fn should_relax(&self, now: Instant) -> bool {
        self.relaxed_until.is_some_and(|until| now < until)
    }

    /// The change to tell the driver, if the relaxed state changed: `Some(true)` relax,
    /// `Some(false)` restore.
    pub(crate) fn relax_change(&mut self, now: Instant) -> Option<bool> {
        if self.relaxed_until.is_some_and(|until| until <= now) {
            self.relaxed_until = None;
            self.windows = 0;
        }
        let relax = self.should_relax(now);
        (relax != self.relaxed).then(|| {
            self.relaxed = relax;
            relax
        })
    }

    /// Where a connection opened now for `handoff` (or any other reason) goes: the
    /// handoff's endpoint, or the `MOVING` window's, or the original address.
    pub(crate) fn target(&mut self, now: Instant, for_handoff: bool) -> Option<Endpoint> {
        if self.redirect.as_ref().is_some_and(|(_, until)| *until <= now) {
            self.redirect = None;
        }
        match (&self.handoff, for_handoff) {
            (Some(handoff), true) => handoff.endpoint.clone(),
            _ => self.redirect.as_ref().map(|(endpoint, _)| endpoint.clone()),
        }
    }

    /// Nothing left to do or to tell.
    pub(crate) fn is_over(&self) -> bool {
        self.handoff.is_none() && self.redirect.is_none() && self.relaxed_until.is_none() && !self.relaxed
    }

    /// The instants at which something may become due.
    pub(crate) fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.handoff
            .iter()
            .flat_map(|h| [h.start_at, h.deadline])
            .chain(self.relaxed_until)
            .chain(self.redirect.as_ref().map(|(_, until)| *until))
    }
}

/// `now + after`, or far ahead (never a panic) if that leaves `Instant`'s range.
fn later(now: Instant, after: Duration) -> Instant {
    now.checked_add(after)
        .or_else(|| now.checked_add(MAX_ANNOUNCED_TIME))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_read_like_the_peers_read_them() {
        assert_eq!(
            Endpoint::parse("10.0.0.2:12000").unwrap(),
            Endpoint::new("10.0.0.2", 12000)
        );
        assert_eq!(
            Endpoint::parse("cache.redis.azure.net:10000").unwrap().to_string(),
            "cache.redis.azure.net:10000"
        );
        // IPv6, bare (split at the last colon) or bracketed.
        assert_eq!(Endpoint::parse("fe80::1:6379").unwrap().host(), "fe80::1");
        assert_eq!(Endpoint::parse("[fe80::1]:6379").unwrap().to_string(), "[fe80::1]:6379");
        assert!(matches!(Endpoint::parse("host"), Err(EndpointError::NoPort(_))));
        assert!(matches!(Endpoint::parse("host:0"), Err(EndpointError::BadPort(_))));
        assert!(matches!(Endpoint::parse("host:99999"), Err(EndpointError::BadPort(_))));
        assert!(matches!(Endpoint::parse(":6379"), Err(EndpointError::NoHost(_))));
    }
}
