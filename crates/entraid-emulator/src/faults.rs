//! Fault injection: [`Faults`], the change a caller asks for (through
//! [`Emulator::set_faults`](crate::Emulator::set_faults) or the admin endpoint's
//! `POST /faults`), and the state the token service and the gateway read.

use std::sync::Mutex;
use std::time::Duration;

/// A change to the faults the emulator injects, as
/// [`Emulator::set_faults`](crate::Emulator::set_faults) takes it, and as the admin
/// endpoint's `POST /faults` takes it in JSON (`{"fail_next": 3, "status": 503}`, the
/// fields named as the methods, latency as `latency_ms`). Each setting given replaces the
/// current one; the others stay as they are. [`Faults::reset`] clears every fault first.
///
/// ```
/// use std::time::Duration;
/// use entraid_emulator::Faults;
///
/// // The next 3 token requests fail with 429 and `Retry-After: 2`.
/// let throttled = Faults::new().fail_next(3).status(429).retry_after(Some(2));
/// // Every answer of the token service a second late, nothing else changed.
/// let slow = Faults::new().latency(Duration::from_secs(1));
/// // Back to normal, then refuse the gateway's next re-authentication.
/// let one_refusal = Faults::reset().fail_reauth(1);
/// # let _ = (throttled, slow, one_refusal);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a change does nothing until it is given to Emulator::set_faults"]
pub struct Faults {
    reset: bool,
    fail_next: Option<u32>,
    status: Option<u16>,
    retry_after: Option<Option<u64>>,
    aadsts: Option<Option<u64>>,
    latency: Option<Duration>,
    stop_answering: Option<bool>,
    fail_reauth: Option<u32>,
    drop_after_auth: Option<bool>,
    hold_handshakes: Option<Duration>,
    silence_connections: bool,
    reject_maint_notifications: Option<bool>,
    maintenance: Option<Maintenance>,
}

/// A server maintenance the gateway announces to every connection that asked for
/// notifications (`CLIENT MAINT_NOTIFICATIONS ON`, on RESP3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Maintenance {
    /// `MOVING <seq> <time> <endpoint>` to the connections that asked; every connection
    /// open now is closed after `time`, told or not; the
    /// endpoint is the emulator's second gateway ([`Emulator::handoff_port`](crate::Emulator::handoff_port)),
    /// or none (`_`: reconnect to the same address).
    Moving {
        /// Until the gateway closes the connection.
        time: Duration,
        /// Whether `MOVING` names the second gateway (`true`) or no endpoint.
        endpoint: bool,
    },
    /// `MIGRATING <seq> <time> 1`, then `MIGRATED <seq+1> 1` after `time`.
    Migrating {
        /// Until the end is announced.
        time: Duration,
    },
}

impl Faults {
    /// A change that changes nothing yet: add settings to it.
    pub fn new() -> Faults {
        Faults::default()
    }

    /// A change that clears every fault (then applies the settings added to it).
    pub fn reset() -> Faults {
        Faults {
            reset: true,
            ..Faults::default()
        }
    }

    /// Fail this many of the next token requests (0: none).
    pub fn fail_next(mut self, requests: u32) -> Faults {
        self.fail_next = Some(requests);
        self
    }

    /// The HTTP status of those failures, 400 to 599 (500 unless given).
    pub fn status(mut self, status: u16) -> Faults {
        self.status = Some(status);
        self
    }

    /// The `Retry-After` of those failures, in seconds; `None`: no such header.
    pub fn retry_after(mut self, seconds: Option<u64>) -> Faults {
        self.retry_after = Some(seconds);
        self
    }

    /// The `AADSTS` code in those failures' bodies (for 400/401); `None`: Entra's
    /// "temporarily unavailable" (50001).
    pub fn aadsts(mut self, code: Option<u64>) -> Faults {
        self.aadsts = Some(code);
        self
    }

    /// Delay every answer of the token service by this much (zero: none).
    pub fn latency(mut self, latency: Duration) -> Faults {
        self.latency = Some(latency);
        self
    }

    /// Accept token requests but never answer them (`true`), or answer again (`false`).
    pub fn stop_answering(mut self, stop: bool) -> Faults {
        self.stop_answering = Some(stop);
        self
    }

    /// Refuse this many of the gateway's next re-authentications (an `AUTH` on a
    /// connection that is already authenticated), as if the token were bad: the client
    /// gets `WRONGPASS` and the connection's deadline does not move.
    pub fn fail_reauth(mut self, reauthentications: u32) -> Faults {
        self.fail_reauth = Some(reauthentications);
        self
    }

    /// Close every gateway connection shortly (100 ms) after it first authenticates
    /// (`true`), as a failing node, an admin kill loop or an output-buffer limit does; or
    /// stop (`false`).
    pub fn drop_after_auth(mut self, drop: bool) -> Faults {
        self.drop_after_auth = Some(drop);
        self
    }

    /// Make every gateway connection open now go silent: from then on no byte passes in
    /// either direction and the sockets stay open (a node gone behind a load balancer, a
    /// failover that leaves no reset). Connections opened later work.
    pub fn silence_connections(mut self) -> Faults {
        self.silence_connections = true;
        self
    }

    /// Hold each new gateway connection this long before its TLS handshake (zero:
    /// none), as a slow path to a node does; connections already open are unaffected.
    pub fn hold_handshakes(mut self, hold: Duration) -> Faults {
        self.hold_handshakes = Some(hold);
        self
    }

    /// Refuse `CLIENT MAINT_NOTIFICATIONS` as open-source Redis does (`-ERR unknown
    /// subcommand`), or accept it again (`false`, the default).
    pub fn reject_maint_notifications(mut self, reject: bool) -> Faults {
        self.reject_maint_notifications = Some(reject);
        self
    }

    /// Announce a maintenance now to every connection that asked for notifications.
    pub fn maintenance(mut self, maintenance: Maintenance) -> Faults {
        self.maintenance = Some(maintenance);
        self
    }
}

/// Why a fault setting was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FaultsError {
    /// The failure status is not an HTTP error status.
    #[error("status {status} is not an HTTP error status: give one from 400 to 599 (500 when none is given)")]
    Status {
        /// The status given.
        status: u64,
    },
    /// A count (`fail_next`, `fail_reauth`) does not fit in 32 bits.
    #[error("{field} {value} is too large: give at most {max}", max = u32::MAX)]
    TooLarge {
        /// The field.
        field: &'static str,
        /// The value given.
        value: u64,
    },
    /// The admin endpoint's request body is not a JSON object.
    #[error("the body must be a JSON object, e.g. {{\"fail_next\": 3, \"status\": 503}} or {{\"reset\": true}}")]
    NotAnObject,
}

/// The faults in force.
#[derive(Debug, Default, Clone)]
pub(crate) struct Active {
    /// Fail this many of the next token requests.
    pub(crate) fail_next: u32,
    /// With this HTTP status (0: none given, 500).
    pub(crate) status: u16,
    /// With this `Retry-After` (seconds), if any.
    pub(crate) retry_after: Option<u64>,
    /// With this AADSTS code in the body (for 400/401), if any.
    pub(crate) aadsts: Option<u64>,
    /// Delay every answer by this much.
    pub(crate) latency: Duration,
    /// Accept connections but never answer.
    pub(crate) stop_answering: bool,
    /// Refuse this many of the gateway's next re-authentications.
    pub(crate) fail_reauth: u32,
    /// Close each connection shortly after it authenticates.
    pub(crate) drop_after_auth: bool,
    /// Hold each new connection this long before its handshake.
    pub(crate) hold_handshakes: Duration,
    /// Refuse `CLIENT MAINT_NOTIFICATIONS`.
    pub(crate) reject_maint_notifications: bool,
}

/// What the next request should do, taken from the fault state.
pub(crate) enum Planned {
    Serve,
    Fail {
        status: u16,
        retry_after: Option<u64>,
        aadsts: Option<u64>,
    },
    Hang,
}

/// The faults in force, shared by the token service, the gateways and the admin endpoint.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    active: Mutex<Active>,
    /// Bumped by each `silence_connections`: a connection opened before goes silent.
    silences: tokio::sync::watch::Sender<u64>,
    /// Each announced maintenance, with the sequence number of its first notification.
    maintenance: MaintenanceEvents,
}

/// Announced maintenances, to every gateway connection.
#[derive(Debug)]
pub(crate) struct MaintenanceEvents {
    sender: tokio::sync::broadcast::Sender<(u64, Maintenance)>,
    next_seq: std::sync::atomic::AtomicU64,
}

impl Default for MaintenanceEvents {
    fn default() -> Self {
        MaintenanceEvents {
            sender: tokio::sync::broadcast::channel(16).0,
            next_seq: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

impl FaultState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves when a connection open now must go silent.
    pub(crate) fn silences(&self) -> tokio::sync::watch::Receiver<u64> {
        self.silences.subscribe()
    }

    /// The maintenances announced from now on: (first sequence number, what).
    pub(crate) fn maintenances(&self) -> tokio::sync::broadcast::Receiver<(u64, Maintenance)> {
        self.maintenance.sender.subscribe()
    }

    /// Whether `CLIENT MAINT_NOTIFICATIONS` is refused.
    pub(crate) fn reject_maint_notifications(&self) -> bool {
        self.lock().reject_maint_notifications
    }

    pub(crate) fn plan(&self) -> (Duration, Planned) {
        let mut f = self.lock();
        if f.stop_answering {
            return (f.latency, Planned::Hang);
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
            let status = if f.status == 0 { 500 } else { f.status };
            return (
                f.latency,
                Planned::Fail {
                    status,
                    retry_after: f.retry_after,
                    aadsts: f.aadsts,
                },
            );
        }
        (f.latency, Planned::Serve)
    }

    /// Whether the gateway must refuse this re-authentication (and counts it).
    pub(crate) fn take_reauth_failure(&self) -> bool {
        let mut f = self.lock();
        let fail = f.fail_reauth > 0;
        f.fail_reauth = f.fail_reauth.saturating_sub(1);
        fail
    }

    /// How long a new connection is held before its handshake.
    pub(crate) fn hold_handshakes(&self) -> Duration {
        self.lock().hold_handshakes
    }

    /// Whether a connection that just authenticated must be closed shortly.
    pub(crate) fn drop_after_auth(&self) -> bool {
        self.lock().drop_after_auth
    }

    /// Applies a change, all of it or (when a setting is refused) none of it; returns the
    /// faults now in force.
    pub(crate) fn apply(&self, change: &Faults) -> Result<Active, FaultsError> {
        if let Some(status) = change.status
            && !(400..=599).contains(&status)
        {
            return Err(FaultsError::Status { status: status.into() });
        }
        let mut f = self.lock();
        if change.reset {
            *f = Active::default();
        }
        if let Some(n) = change.fail_next {
            f.fail_next = n;
        }
        if let Some(n) = change.fail_reauth {
            f.fail_reauth = n;
        }
        if let Some(status) = change.status {
            f.status = status;
        }
        if let Some(retry_after) = change.retry_after {
            f.retry_after = retry_after;
        }
        if let Some(aadsts) = change.aadsts {
            f.aadsts = aadsts;
        }
        if let Some(latency) = change.latency {
            f.latency = latency;
        }
        if let Some(stop) = change.stop_answering {
            f.stop_answering = stop;
        }
        if let Some(drop) = change.drop_after_auth {
            f.drop_after_auth = drop;
        }
        if let Some(hold) = change.hold_handshakes {
            f.hold_handshakes = hold;
        }
        if let Some(reject) = change.reject_maint_notifications {
            f.reject_maint_notifications = reject;
        }
        if change.silence_connections {
            self.silences.send_modify(|n| *n += 1);
        }
        if let Some(maintenance) = change.maintenance {
            // Two numbers each: the start's and the end's (never the same, as servers do).
            let seq = self
                .maintenance
                .next_seq
                .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
            // No receiver: no connection to tell.
            let _ = self.maintenance.sender.send((seq, maintenance));
        }
        Ok(f.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_keeps_what_it_does_not_name_and_reset_clears_first() {
        let state = FaultState::default();
        state
            .apply(&Faults::new().fail_next(2).status(503).retry_after(Some(4)))
            .unwrap();
        let active = state.apply(&Faults::new().fail_reauth(1)).unwrap();
        assert_eq!((active.fail_next, active.status, active.retry_after), (2, 503, Some(4)));
        assert_eq!(active.fail_reauth, 1);
        let active = state.apply(&Faults::reset().stop_answering(true)).unwrap();
        assert_eq!((active.fail_next, active.status, active.fail_reauth), (0, 0, 0));
        assert!(active.stop_answering);
    }

    #[test]
    fn a_refused_change_changes_nothing() {
        let state = FaultState::default();
        let refused = state.apply(&Faults::reset().fail_next(3).status(200));
        assert_eq!(refused.unwrap_err(), FaultsError::Status { status: 200 });
        let active = state.apply(&Faults::new()).unwrap();
        assert_eq!(active.fail_next, 0);
    }
}
