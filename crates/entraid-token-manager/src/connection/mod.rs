//! The sans-IO per-connection core: keeps one logical Redis connection authenticated
//! across token renewals, failed `AUTH`s, lost connections and identity outages.
//!
//! Split by concern, as quinn-proto splits its connection: the machine here holds the
//! state and routes each input to the concern it is about; each concern is a module.
//! - `policy`: the timing rules as users set them, validated, and compacted.
//! - `output`: ids, outputs and the reasons they carry, `Availability`.
//! - `auth`: the connection in use, its token and its renewal `AUTH`.
//! - `probe`: the health `PING` after a command got no reply.
//! - `reconnect`: the reconnect backoff, and connections lost too soon after opening.
//! - `retire`: retired connections and their closes.
//! - `maintenance`: announced server maintenance (handoffs, relaxed timeouts).
//! - `timer`: the timer table `poll_output` answers from.
//!
//! The machine never logs: every decision leaves it as an output that says why, and
//! drivers log each event once.

mod auth;
mod maintenance;
mod output;
mod policy;
mod probe;
mod reconnect;
mod retire;
mod timer;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use self::auth::{Active, TokenInfo};
use self::maintenance::Maintenance;
pub use self::maintenance::{Endpoint, EndpointError, MaintenanceNotice};
pub use self::output::{Availability, CloseReason, ConnectReason, ConnectionId, ConnectionOutput, Generation, Renewal};
use self::policy::CompactPolicy;
pub use self::policy::{ConnectionPolicy, ConnectionPolicyError, MAX_POLICY_DURATION};
use self::reconnect::Reconnect;
use self::retire::Retiring;
use self::timer::{Timer, TimerTable};
use crate::jitter::Jitter;
use crate::spread::spread_delay;

/// A connection being opened.
#[derive(Debug)]
struct Connecting {
    id: ConnectionId,
    token: TokenInfo,
    deadline: Instant,
    reason: ConnectReason,
}

/// Keeps one logical connection authenticated, without a clock, a runtime or I/O.
///
/// The driver owns the physical connections and the token source; the machine decides,
/// from the instants it is given, which connection to open, when to send `AUTH`, when to
/// give up on a connection and replace it, and when to close one before the server would
/// cut it.
///
/// ```text
/// loop {
///     loop {
///         match sm.poll_output() {
///             Connect { id, generation, timeout, reason, endpoint } => open a connection with the newest token
///                                       (to `endpoint` when the server moved, else the configured address)
///             Use(id)                 => route new commands to connection id
///             SendAuth { id, generation, timeout } => send AUTH with the newest token on id
///             Retire { id, reason }   => no new commands on id; it closes when idle
///             Close { id, reason }    => close id now (in-flight commands fail)
///             HandoffMissed(id)       => log it: the server closes id itself
///             Probe { id, timeout }   => send a health PING on id
///             RelaxTimeouts(t)        => commands get response timeout t (None: the configured one)
///             Timeout(at)             => { deadline = at; break }
///             Idle                    => { deadline = never; break }
///         }
///     }
///     publish sm.availability() to callers
///     wait for the first of: a token or its loss from the token manager, a connect or
///     AUTH result, a lost connection, the deadline; feed it with the matching handle_*.
/// }
/// ```
///
/// Rules:
/// - A connection authenticates once, in its handshake, with the newest token. A token
///   that arrives while it is being opened is sent as `AUTH` as soon as it is up.
/// - A renewal is sent as `AUTH` after a spread delay. A failed or timed-out `AUTH` is
///   retried with backoff. When the token in force comes within the replace margin of
///   expiry and no newer token has been accepted, a new connection is opened with the
///   newest token; once it is up it takes new commands and the old one is retired, and
///   closed at a quarter of the margin before its token expires if still open.
/// - With [`Renewal::Replace`], a renewal opens a new connection after the spread delay
///   instead of sending `AUTH`, and it takes over as a replacement does.
/// - A lost connection is opened again at once, then with backoff after failures; one
///   lost within `stable_after` of opening counts as a failure (a kill loop backs off).
/// - With no valid token, no connection is opened and the last one is closed before its
///   token expires; the first new token opens one again.
/// - Maintenance the server announces ([`handle_maintenance`](Self::handle_maintenance)):
///   `MOVING` hands the connection off make-before-break before the server closes it;
///   migrations and failovers relax command timeouts until they end.
/// - Time never goes backwards: an earlier `now` than one seen is taken as the later one.
#[derive(Debug)]
pub struct ConnectionStateMachine {
    policy: CompactPolicy,
    renewal: Renewal,
    jitter: Jitter,
    now: Option<Instant>,
    next_generation: u64,
    next_connection: u64,
    /// Whether a connection has been in use yet (a later connect is a reconnect).
    ever_used: bool,
    latest: Option<TokenInfo>,
    active: Option<Active>,
    connecting: Option<Connecting>,
    retired: Retiring,
    reconnect: Reconnect,
    /// Announced server maintenance; boxed, as most connections never see one.
    maintenance: Option<Box<Maintenance>>,
    outputs: VecDeque<ConnectionOutput>,
}

impl ConnectionStateMachine {
    /// A machine with this policy, validated; random draws are seeded per process.
    pub fn new(policy: ConnectionPolicy) -> Result<ConnectionStateMachine, ConnectionPolicyError> {
        Self::with_jitter(policy, Jitter::from_process_randomness())
    }

    /// Like [`new`](Self::new) with a fixed seed, for tests and simulations that replay.
    pub fn with_seed(policy: ConnectionPolicy, seed: u64) -> Result<ConnectionStateMachine, ConnectionPolicyError> {
        Self::with_jitter(policy, Jitter::from_seed(seed))
    }

    fn with_jitter(policy: ConnectionPolicy, jitter: Jitter) -> Result<ConnectionStateMachine, ConnectionPolicyError> {
        policy.validate()?;
        Ok(ConnectionStateMachine {
            policy: CompactPolicy::new(&policy),
            renewal: Renewal::InPlace,
            jitter,
            now: None,
            next_generation: 0,
            next_connection: 0,
            ever_used: false,
            latest: None,
            active: None,
            connecting: None,
            retired: Retiring::default(),
            reconnect: Reconnect::default(),
            maintenance: None,
            outputs: VecDeque::new(),
        })
    }

    /// Takes renewals as `renewal` says; [`Renewal::InPlace`] unless set.
    pub fn with_renewal(mut self, renewal: Renewal) -> Self {
        self.renewal = renewal;
        self
    }

    /// A new token, valid until `expires_at` (on the driver's clock), of total `lifetime`
    /// (which scales the margins). Returns its generation; the driver keeps the token,
    /// since every later `Connect` or `SendAuth` names the newest one.
    pub fn handle_token(&mut self, now: Instant, expires_at: Instant, lifetime: Duration) -> Generation {
        let now = self.observe(now);
        let generation = Generation(self.next_generation);
        self.next_generation += 1;
        self.latest = Some(TokenInfo {
            generation,
            expires_at,
            replace_margin: self.policy.replace_margin().min(lifetime / 10),
        });
        if let Some(active) = &mut self.active {
            let spread = spread_delay(self.policy.reauth_spread(), active.left(now), self.jitter.unit());
            active.renewal_arrived(now, spread);
        }
        self.process(now);
        generation
    }

    /// The token source says there is no valid token (it expired with no replacement).
    pub fn handle_token_lost(&mut self, now: Instant) {
        let now = self.observe(now);
        self.latest = None;
        self.process(now);
    }

    /// Connection `id` is open and authenticated with `generation`'s token.
    pub fn handle_connected(&mut self, now: Instant, id: ConnectionId) {
        let now = self.observe(now);
        let Some(connecting) = self.connecting.take_if(|c| c.id == id) else {
            // Not the attempt the machine waits for (it timed out): not wanted.
            self.outputs.push_back(ConnectionOutput::Close {
                id,
                reason: CloseReason::NotWanted,
            });
            return;
        };
        if connecting.token.close_at() <= now {
            self.outputs.push_back(ConnectionOutput::Close {
                id,
                reason: CloseReason::NotWanted,
            });
            self.reconnect.failed(now, &self.policy, &mut self.jitter);
            self.process(now);
            return;
        }
        self.reconnect.opened();
        // A handoff's old connection is closed, at the latest, when the server would
        // close it; the handoff is done.
        let moved_by = match (connecting.reason, self.maintenance.as_deref_mut()) {
            (ConnectReason::Handoff, Some(maintenance)) => maintenance.handoff.take().map(|h| h.deadline),
            _ => None,
        };
        if let Some(old) = self.active.take() {
            self.outputs.push_back(ConnectionOutput::Retire {
                id: old.id,
                reason: connecting.reason,
            });
            let close_at = old.in_force.close_at();
            match moved_by {
                Some(by) if by < close_at => self.retired.push(old.id, by, CloseReason::ServerMoving),
                _ => self.retired.push(old.id, close_at, CloseReason::TokenExpiring),
            }
        }
        let newer = self.newer_than(connecting.token.generation);
        self.active = Some(Active::new(id, now, connecting.token, newer));
        self.ever_used = true;
        self.outputs.push_back(ConnectionOutput::Use(id));
        self.process(now);
    }

    /// Opening connection `id` failed (or took longer than its timeout).
    pub fn handle_connect_failed(&mut self, now: Instant, id: ConnectionId) {
        let now = self.observe(now);
        if self.connecting.take_if(|c| c.id == id).is_some() {
            self.reconnect.failed(now, &self.policy, &mut self.jitter);
        }
        self.process(now);
    }

    /// The reply to an `AUTH` with `generation`'s token on connection `id`: `true` if the
    /// server accepted it. A late success still counts: the server holds that token.
    pub fn handle_auth_result(&mut self, now: Instant, id: ConnectionId, generation: Generation, accepted: bool) {
        let now = self.observe(now);
        if let Some(active) = self.active.as_mut().filter(|a| a.id == id) {
            active.auth_result(now, generation, accepted, self.latest, &self.policy, &mut self.jitter);
        }
        self.process(now);
    }

    /// Connection `id` dropped (an I/O error, the server closed it).
    pub fn handle_connection_lost(&mut self, now: Instant, id: ConnectionId) {
        let now = self.observe(now);
        if let Some(active) = self.active.take_if(|a| a.id == id) {
            self.reconnect
                .lost(now, active.opened_at, &self.policy, &mut self.jitter);
        } else if self.connecting.take_if(|c| c.id == id).is_some() {
            self.reconnect.failed(now, &self.policy, &mut self.jitter);
        }
        self.retired.remove(id);
        self.process(now);
    }

    /// Connection `id` is inside the user's transaction (`MULTI`) or holds a `WATCH`
    /// (`true`), or no longer (`false`). Meanwhile no `AUTH` is sent on it and no renewal
    /// swap starts, so nothing lands inside the transaction; a renewal due waits, but not
    /// past the token's replace margin: then it goes on, and the driver fails the
    /// transaction with a clear error (never a cut).
    pub fn handle_pinned(&mut self, now: Instant, id: ConnectionId, pinned: bool) {
        let now = self.observe(now);
        if let Some(active) = self.active.as_mut().filter(|a| a.id == id) {
            active.pinned = pinned;
        }
        self.process(now);
    }

    /// A command on connection `id` got no reply within its timeout. A slow reply is not
    /// a lost connection: the machine asks for a health `PING` first
    /// ([`ConnectionOutput::Probe`]), unless one is already out.
    pub fn handle_reply_timeout(&mut self, now: Instant, id: ConnectionId) {
        let now = self.observe(now);
        let timeout = self.policy.probe_timeout();
        if let Some(active) = self.active.as_mut().filter(|a| a.id == id)
            && active.probe.start(now, timeout)
        {
            self.outputs.push_back(ConnectionOutput::Probe { id, timeout });
        }
        self.process(now);
    }

    /// The health `PING` on `id` was answered (`true`), or failed or timed out.
    pub fn handle_probe_result(&mut self, now: Instant, id: ConnectionId, answered: bool) {
        let now = self.observe(now);
        if let Some(active) = self.active.as_mut().filter(|a| a.id == id) {
            active.probe.result(answered);
        }
        self.process(now);
    }

    /// The server pushed a maintenance notification on connection `id`. `MOVING` on the
    /// connection in use starts a handoff: a connection to the announced endpoint (at
    /// once), or to the original address (after half the announced time), takes over
    /// make-before-break, and the old one is closed before the server would close it;
    /// connections opened during the window go to the announced endpoint. Migrations and
    /// failovers relax command timeouts until they end ([`ConnectionOutput::RelaxTimeouts`]).
    pub fn handle_maintenance(&mut self, now: Instant, id: ConnectionId, notice: MaintenanceNotice) {
        let now = self.observe(now);
        let active = self.active.as_ref().map(|a| a.id);
        let relaxed_timeout = self.policy.relaxed_timeout();
        let maintenance = self.maintenance.get_or_insert_with(Box::default);
        maintenance.notice(now, id, active, notice, relaxed_timeout);
        self.process(now);
    }

    /// Time has passed: acts on whatever is due. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.observe(now);
        self.process(now);
    }

    /// The next thing to do; see the type's docs for the loop.
    pub fn poll_output(&mut self) -> ConnectionOutput {
        if let Some(output) = self.outputs.pop_front() {
            return output;
        }
        // Events are rare (a renewal an hour): keep nothing allocated between them, since
        // one machine lives beside every connection.
        self.outputs = VecDeque::new();
        match self.next_timer() {
            Some((_, at)) => ConnectionOutput::Timeout(at),
            None => ConnectionOutput::Idle,
        }
    }

    /// Whether commands can be sent now, and where.
    pub fn availability(&self) -> Availability {
        if let Some(active) = &self.active {
            return Availability::Connected(active.id);
        }
        if self.connecting.is_some() {
            return Availability::Connecting;
        }
        let usable = match (self.latest, self.now) {
            (Some(token), Some(now)) => token.close_at() > now,
            _ => false,
        };
        match (usable, self.reconnect.failures()) {
            (false, _) => Availability::NoValidToken,
            (true, 0) => Availability::Connecting,
            (true, _) => Availability::Reconnecting,
        }
    }

    /// How long before its token's expiry the machine closes the connection in use (a
    /// quarter of the replace margin): a command that cannot outlive this after the
    /// close (its response timeout is shorter) ends before the server would cut it.
    pub fn close_grace(&self) -> Option<Duration> {
        self.active
            .as_ref()
            .map(|a| a.in_force.expires_at.saturating_duration_since(a.in_force.close_at()))
    }

    /// Consecutive failed `AUTH`s on the connection in use.
    pub fn auth_failures(&self) -> u32 {
        self.active.as_ref().map_or(0, |a| a.auth_failures)
    }

    fn observe(&mut self, now: Instant) -> Instant {
        let now = self.now.map_or(now, |seen| seen.max(now));
        self.now = Some(now);
        now
    }

    fn newer_than(&self, generation: Generation) -> bool {
        self.latest.is_some_and(|t| t.generation > generation)
    }

    /// A token fit to open a connection with: valid beyond its close margin.
    fn usable_latest(&self, now: Instant) -> Option<TokenInfo> {
        self.latest.filter(|t| t.close_at() > now)
    }

    /// Acts on everything due at `now`, concern by concern.
    fn process(&mut self, now: Instant) {
        self.retired.close_due(now, &mut self.outputs);
        if self.connecting.as_ref().is_some_and(|c| c.deadline <= now) {
            self.connecting = None;
            self.reconnect.failed(now, &self.policy, &mut self.jitter);
        }
        let latest = self.usable_latest(now);
        self.process_active(now, latest);
        if self.active.is_none() && self.connecting.is_none() && self.reconnect.may_connect(now) && latest.is_some() {
            let reason = if self.ever_used {
                ConnectReason::Reconnect
            } else {
                ConnectReason::First
            };
            self.start_connect(now, reason);
        }
        self.process_maintenance(now);
    }

    /// The connection in use: closed before its token expires, re-authenticated,
    /// probed, or replaced.
    fn process_active(&mut self, now: Instant, latest: Option<TokenInfo>) {
        let Some(active) = &mut self.active else { return };
        if active.in_force.close_at() <= now {
            // The server would cut it soon: close it ourselves.
            self.outputs.push_back(ConnectionOutput::Close {
                id: active.id,
                reason: CloseReason::TokenExpiring,
            });
            self.active = None;
            self.reconnect.wait_no_more();
            return;
        }
        let (send, renew_by_replacing) = active.step(now, latest, self.renewal, &self.policy, &mut self.jitter);
        self.outputs.extend(send);
        active.probe.step(now);
        let newer = latest.is_some_and(|t| t.generation > active.in_force.generation);
        let unresponsive = active.probe.is_unresponsive();
        let must_replace = (active.in_force.replace_at() <= now && newer) || unresponsive;
        if (must_replace || renew_by_replacing) && self.connecting.is_none() && self.reconnect.may_connect(now) {
            let reason = if unresponsive {
                ConnectReason::Unresponsive
            } else if renew_by_replacing {
                ConnectReason::RenewalSwap
            } else {
                ConnectReason::Replacement
            };
            self.start_connect(now, reason);
        }
    }

    /// Starts a due handoff, gives up one past its deadline, and tells the driver when
    /// timeouts relax or go back.
    fn process_maintenance(&mut self, now: Instant) {
        let Some(maintenance) = self.maintenance.as_deref_mut() else {
            return;
        };
        let active = self.active.as_ref().map(|a| a.id);
        let mut start = false;
        if let Some(handoff) = &maintenance.handoff {
            if active != Some(handoff.from) {
                // The connection went (lost, closed, replaced): nothing left to move.
                maintenance.handoff = None;
            } else if handoff.deadline <= now {
                self.outputs.push_back(ConnectionOutput::HandoffMissed(handoff.from));
                maintenance.handoff = None;
            } else {
                start = handoff.start_at <= now;
            }
        }
        if let Some(relax) = maintenance.relax_change(now) {
            let timeout = if relax { self.policy.relaxed_timeout() } else { None };
            if !relax || timeout.is_some() {
                self.outputs.push_back(ConnectionOutput::RelaxTimeouts(timeout));
            }
        }
        if start && self.connecting.is_none() && self.reconnect.may_connect(now) {
            self.start_connect(now, ConnectReason::Handoff);
        }
        if self.maintenance.as_ref().is_some_and(|m| m.is_over()) {
            self.maintenance = None;
        }
    }

    fn start_connect(&mut self, now: Instant, reason: ConnectReason) {
        let Some(token) = self.usable_latest(now) else { return };
        let id = ConnectionId(self.next_connection);
        self.next_connection += 1;
        let timeout = self.policy.connect_timeout();
        let endpoint = self
            .maintenance
            .as_deref_mut()
            .and_then(|maintenance| maintenance.target(now, reason == ConnectReason::Handoff));
        self.connecting = Some(Connecting {
            id,
            token,
            deadline: now + timeout,
            reason,
        });
        self.outputs.push_back(ConnectionOutput::Connect {
            id,
            generation: token.generation,
            timeout,
            reason,
            endpoint,
        });
    }

    /// The earliest deadline ahead, and what it is for.
    fn next_timer(&self) -> Option<(Timer, Instant)> {
        let now = self.now?;
        let mut timers = TimerTable::new(now);
        timers.set(Timer::RetiredClose, self.retired.deadlines());
        timers.set(Timer::Connect, self.connecting.as_ref().map(|c| c.deadline));
        timers.set(Timer::TokenUnusable, self.latest.map(|t| t.close_at()));
        if let Some(active) = &self.active {
            timers.set(Timer::ActiveClose, Some(active.in_force.close_at()));
            timers.set(Timer::Auth, active.auth_deadline());
            timers.set(Timer::Probe, active.probe.deadline());
            if self.newer_than(active.in_force.generation) {
                timers.set(Timer::Replace, Some(active.in_force.replace_at()));
            }
        }
        timers.set(Timer::Reconnect, self.reconnect.deadline());
        if let Some(maintenance) = &self.maintenance {
            timers.set(Timer::Maintenance, maintenance.deadlines());
        }
        timers.next()
    }
}
