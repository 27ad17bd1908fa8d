//! The sans-IO per-connection core: keeps one logical Redis connection authenticated
//! across token renewals, failed `AUTH`s, lost connections and identity outages.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::jitter::Jitter;
use crate::maintenance::{Endpoint, Maintenance, MaintenanceNotice};
use crate::spread::spread_delay;

/// Identifies one token handed to a [`ConnectionStateMachine`]; later tokens have
/// greater generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(u64);

/// Identifies one physical connection the machine asked its driver to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection #{}", self.0)
    }
}

/// Timing rules of a [`ConnectionStateMachine`].
///
/// Margins scale down for short tokens: each is at most a tenth (replace) or a fortieth
/// (close) of the token's lifetime, so a token of a few seconds still leaves room for
/// the renewal, which the token manager sends at least 30 % of a lifetime before expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionPolicy {
    /// Renewals reach each connection after a random delay in `[0, reauth_spread)`, and
    /// never more than a tenth of the time the token in force has left. Default 5 s.
    pub reauth_spread: Duration,
    /// How long one re-authentication `AUTH` may take before it counts as failed.
    /// Default 5 s (a server stall of a few seconds is survived by waiting).
    pub auth_timeout: Duration,
    /// First wait after a failed `AUTH`; doubles per failure up to `auth_retry_max`.
    /// Default 200 ms.
    pub auth_retry_initial: Duration,
    /// Longest wait between two `AUTH` attempts. Default 5 s.
    pub auth_retry_max: Duration,
    /// When the token in force has this little left and no `AUTH` with a newer token has
    /// succeeded, a new connection is opened with the newest token and takes over
    /// (make-before-break). Capped at a tenth of the token's lifetime. Default 30 s.
    /// The old connection is closed at a quarter of this margin before its token
    /// expires, so the server never has to cut it.
    pub replace_margin: Duration,
    /// How long opening a connection (TCP, TLS, `HELLO`/`AUTH`) may take. Default 5 s.
    pub connect_timeout: Duration,
    /// First wait after a failed connection attempt; doubles per failure up to
    /// `reconnect_max`. Default 100 ms.
    pub reconnect_initial: Duration,
    /// Longest wait between two connection attempts. Default 10 s.
    pub reconnect_max: Duration,
    /// A connection lost sooner than this after it opened counts as a failed attempt, so
    /// a server that drops every connection at once meets the reconnect backoff instead
    /// of a tight loop of TLS handshakes and `AUTH`s. Default 1 s.
    pub stable_after: Duration,
    /// How long a health `PING` may wait, once a command on the connection got no reply
    /// in time; unanswered, the connection is taken for a silent path (a node gone
    /// behind a load balancer, a failover that left no reset) and replaced
    /// make-before-break. Default 2 s: longer than a server stall worth waiting out.
    pub probe_timeout: Duration,
    /// The response timeout commands get while the server announces maintenance
    /// (`MIGRATING`, `FAILING_OVER`, `MOVING`), until it announces the end (or, if it
    /// never does, three times the announced time). `None`: timeouts are never relaxed.
    /// Default 10 s, as the other Redis clients.
    pub relaxed_timeout: Option<Duration>,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        ConnectionPolicy {
            reauth_spread: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(5),
            auth_retry_initial: Duration::from_millis(200),
            auth_retry_max: Duration::from_secs(5),
            replace_margin: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            stable_after: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            relaxed_timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// The longest duration a [`ConnectionPolicy`] takes: a day. Every timing rule is
/// about tokens that live at most about a day (managed identity); a longer value (such as
/// `Duration::MAX` meant as "no limit") is refused rather than overflowing an instant.
pub const MAX_POLICY_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A [`ConnectionPolicy`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionPolicyError {
    /// A timeout of zero would fail every attempt.
    #[error("connection policy: {0} must be greater than zero")]
    Zero(&'static str),
    /// A duration longer than [`MAX_POLICY_DURATION`].
    #[error("connection policy: {name} ({value:?}) is longer than a day; give at most {max:?}", max = MAX_POLICY_DURATION)]
    TooLong {
        /// The setting's name.
        name: &'static str,
        /// Its value.
        value: Duration,
    },
    /// A retry range whose maximum is below its start.
    #[error("connection policy: {max} ({max_value:?}) is below {initial} ({initial_value:?}); raise the maximum")]
    MaxBelowInitial {
        /// The maximum's name.
        max: &'static str,
        /// Its value.
        max_value: Duration,
        /// The initial delay's name.
        initial: &'static str,
        /// Its value.
        initial_value: Duration,
    },
}

impl ConnectionPolicy {
    /// Checks every value; the machine refuses a policy that fails this.
    pub fn validate(&self) -> Result<(), ConnectionPolicyError> {
        for (name, value) in [
            ("reauth_spread", self.reauth_spread),
            ("auth_timeout", self.auth_timeout),
            ("auth_retry_initial", self.auth_retry_initial),
            ("auth_retry_max", self.auth_retry_max),
            ("replace_margin", self.replace_margin),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_initial", self.reconnect_initial),
            ("reconnect_max", self.reconnect_max),
            ("stable_after", self.stable_after),
            ("probe_timeout", self.probe_timeout),
            ("relaxed_timeout", self.relaxed_timeout.unwrap_or_default()),
        ] {
            if value > MAX_POLICY_DURATION {
                return Err(ConnectionPolicyError::TooLong { name, value });
            }
        }
        for (name, value) in [
            ("probe_timeout", self.probe_timeout),
            ("auth_timeout", self.auth_timeout),
            ("auth_retry_initial", self.auth_retry_initial),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_initial", self.reconnect_initial),
            (
                "relaxed_timeout (None turns relaxing off)",
                self.relaxed_timeout.unwrap_or(Duration::MAX),
            ),
        ] {
            if value.is_zero() {
                return Err(ConnectionPolicyError::Zero(name));
            }
        }
        for (max, max_value, initial, initial_value) in [
            (
                "auth_retry_max",
                self.auth_retry_max,
                "auth_retry_initial",
                self.auth_retry_initial,
            ),
            (
                "reconnect_max",
                self.reconnect_max,
                "reconnect_initial",
                self.reconnect_initial,
            ),
        ] {
            if max_value < initial_value {
                return Err(ConnectionPolicyError::MaxBelowInitial {
                    max,
                    max_value,
                    initial,
                    initial_value,
                });
            }
        }
        Ok(())
    }
}

/// Why the machine asks for a new connection: drivers count, log and trace by it
/// instead of working it out from the machine's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectReason {
    /// No connection has been in use yet.
    First,
    /// The connection in use was lost or closed (or the last attempt failed): commands
    /// wait for this one.
    Reconnect,
    /// The connection in use could not re-authenticate before the replace margin: this
    /// one, on the newest token, takes over make-before-break.
    Replacement,
    /// A renewal under [`Renewal::Replace`]: the connection in use cannot send `AUTH`
    /// (a RESP2 subscriber), so this one, on the new token, takes over.
    RenewalSwap,
    /// The connection in use stopped answering (a command and then a health `PING` got
    /// no reply: a silent path): this one takes over, make-before-break.
    Unresponsive,
    /// The server announced that the endpoint moves (`MOVING`): this one, to the
    /// announced endpoint (or the original address), takes over before the server
    /// closes the one in use.
    Handoff,
}

/// What the machine asks its driver to do. Drain with
/// [`ConnectionStateMachine::poll_output`] until [`ConnectionOutput::Timeout`] or
/// [`ConnectionOutput::Idle`].
///
/// A protocol between this crate and its drivers: not `non_exhaustive`, so a driver
/// matches every output and a new one does not compile until each driver handles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionOutput {
    /// Open a connection authenticated, in its handshake, with the token of
    /// `generation` (always the newest), within `timeout`; report with
    /// [`ConnectionStateMachine::handle_connected`] or
    /// [`handle_connect_failed`](ConnectionStateMachine::handle_connect_failed).
    Connect {
        /// The new connection.
        id: ConnectionId,
        /// The token to authenticate with.
        generation: Generation,
        /// Give up after this long.
        timeout: Duration,
        /// Why.
        reason: ConnectReason,
        /// Where to connect, when the server moved the endpoint (`MOVING`); `None`: the
        /// configured address.
        endpoint: Option<Endpoint>,
    },
    /// Route new commands to this connection from now on.
    Use(ConnectionId),
    /// Send `AUTH` with the token of `generation` on connection `id`, waiting at most
    /// `timeout`; report with [`ConnectionStateMachine::handle_auth_result`].
    SendAuth {
        /// The connection.
        id: ConnectionId,
        /// The token to send.
        generation: Generation,
        /// Give up after this long.
        timeout: Duration,
    },
    /// A command on connection `id` got no reply in time: send it a health `PING`, waiting
    /// at most `timeout`; report with [`ConnectionStateMachine::handle_probe_result`].
    Probe {
        /// The connection.
        id: ConnectionId,
        /// Give up after this long.
        timeout: Duration,
    },
    /// Send no new command to this connection; let it close when its commands in flight
    /// have finished. A [`Close`](ConnectionOutput::Close) follows if they take too long.
    Retire(ConnectionId),
    /// Close this connection now: its token is about to expire, and the server would
    /// otherwise cut it. Commands still in flight on it fail.
    Close(ConnectionId),
    /// Give commands this response timeout from now on: `Some` while the server
    /// announces maintenance ([`ConnectionPolicy::relaxed_timeout`]), `None` to go back
    /// to the configured one.
    RelaxTimeouts(Option<Duration>),
    /// Nothing more to do until this instant: call
    /// [`ConnectionStateMachine::handle_timeout`] then (or on an earlier event).
    Timeout(Instant),
    /// Nothing is scheduled: wait for an event.
    Idle,
}

/// How a connection takes a renewed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Renewal {
    /// `AUTH` on the live connection ([`ConnectionOutput::SendAuth`]).
    #[default]
    InPlace,
    /// A new connection, opened with the new token after the spread delay, takes over
    /// (make-before-break): for a RESP2 subscriber, which the server does not let send
    /// `AUTH`. A failed attempt is retried with the reconnect backoff; the machine never
    /// asks for `SendAuth`.
    Replace,
}

/// Whether commands can be sent, as the driver should tell its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Commands go to this connection.
    Connected(ConnectionId),
    /// A connection is being opened with a valid token: commands may wait for it.
    Connecting,
    /// No valid token exists: commands should fail at once, saying so. The machine
    /// connects again as soon as a token arrives.
    NoValidToken,
    /// A valid token exists, but the last connection attempt failed; another is
    /// scheduled. Commands should fail at once with the connection error.
    Reconnecting,
}

#[derive(Debug, Clone, Copy)]
struct TokenInfo {
    generation: Generation,
    expires_at: Instant,
    replace_margin: Duration,
}

impl TokenInfo {
    /// Past this, a connection still on this token is replaced by one on a newer token.
    fn replace_at(&self) -> Instant {
        self.expires_at
            .checked_sub(self.replace_margin)
            .unwrap_or(self.expires_at)
    }

    /// Past this, a connection on this token is closed, and the token is not used to
    /// open one.
    fn close_at(&self) -> Instant {
        self.expires_at
            .checked_sub(self.replace_margin / 4)
            .unwrap_or(self.expires_at)
    }
}

#[derive(Debug, Clone, Copy)]
enum Auth {
    /// The connection holds the newest token (or nothing newer can be sent).
    UpToDate,
    /// Send the newest token at this instant (spread delay or retry backoff).
    Due(Instant),
    /// An `AUTH` is waiting for its reply.
    InFlight { token: TokenInfo, deadline: Instant },
}

#[derive(Debug)]
struct Active {
    id: ConnectionId,
    /// When it was opened: a connection lost soon after counts as a failed attempt.
    opened_at: Instant,
    in_force: TokenInfo,
    auth: Auth,
    auth_failures: u32,
    /// Inside the user's transaction or `WATCH`: no `AUTH`, no takeover, until the
    /// replace margin.
    pinned: bool,
    /// A health `PING` waiting for its reply, until this instant.
    probe: Option<Instant>,
    /// It stopped answering: replaced as soon as a connection can be opened.
    unresponsive: bool,
}

#[derive(Debug)]
struct Connecting {
    id: ConnectionId,
    token: TokenInfo,
    deadline: Instant,
    /// Opened for a `MOVING` handoff.
    handoff: bool,
}

#[derive(Debug)]
struct Retired {
    id: ConnectionId,
    close_at: Instant,
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
///             Retire(id)              => no new commands on id; it closes when idle
///             Close(id)               => close id now (in-flight commands fail)
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
    retired: Vec<Retired>,
    /// When the next connection attempt may start, after failures.
    reconnect_at: Option<Instant>,
    connect_failures: u32,
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
            retired: Vec::new(),
            reconnect_at: None,
            connect_failures: 0,
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
        let token = TokenInfo {
            generation,
            expires_at,
            replace_margin: self.policy.replace_margin().min(lifetime / 10),
        };
        self.latest = Some(token);
        if let Some(active) = &mut self.active
            && let Auth::UpToDate = active.auth
        {
            let left = active.in_force.expires_at.saturating_duration_since(now);
            let delay = spread_delay(self.policy.reauth_spread(), left, self.jitter.unit());
            active.auth = Auth::Due(now + delay);
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
            self.outputs.push_back(ConnectionOutput::Close(id));
            return;
        };
        if connecting.token.close_at() <= now {
            self.outputs.push_back(ConnectionOutput::Close(id));
            self.connect_failed(now);
            self.process(now);
            return;
        }
        // The failure count stays until the connection proves stable (see
        // `handle_connection_lost`): a server that drops each connection at once must
        // meet the backoff, not a tight reconnect loop.
        self.reconnect_at = None;
        // A handoff's old connection is closed, at the latest, when the server would
        // close it; the handoff is done.
        let moved_by = match (connecting.handoff, self.maintenance.as_deref_mut()) {
            (true, Some(maintenance)) => maintenance.handoff.take().map(|h| h.deadline),
            _ => None,
        };
        if let Some(old) = self.active.take() {
            self.outputs.push_back(ConnectionOutput::Retire(old.id));
            let close_at = old.in_force.close_at();
            self.retired.push(Retired {
                id: old.id,
                close_at: moved_by.map_or(close_at, |by| by.min(close_at)),
            });
        }
        let newer = self.newer_than(connecting.token.generation);
        self.active = Some(Active {
            id,
            opened_at: now,
            in_force: connecting.token,
            auth: if newer { Auth::Due(now) } else { Auth::UpToDate },
            auth_failures: 0,
            pinned: false,
            probe: None,
            unresponsive: false,
        });
        self.ever_used = true;
        self.outputs.push_back(ConnectionOutput::Use(id));
        self.process(now);
    }

    /// Opening connection `id` failed (or took longer than its timeout).
    pub fn handle_connect_failed(&mut self, now: Instant, id: ConnectionId) {
        let now = self.observe(now);
        if self.connecting.take_if(|c| c.id == id).is_some() {
            self.connect_failed(now);
        }
        self.process(now);
    }

    /// The reply to an `AUTH` with `generation`'s token on connection `id`: `true` if the
    /// server accepted it. A late success still counts: the server holds that token.
    pub fn handle_auth_result(&mut self, now: Instant, id: ConnectionId, generation: Generation, accepted: bool) {
        let now = self.observe(now);
        let Some(active) = self.active.as_mut().filter(|a| a.id == id) else {
            self.process(now);
            return;
        };
        let in_flight = match active.auth {
            Auth::InFlight { token, .. } if token.generation == generation => Some(token),
            _ => None,
        };
        if accepted {
            let accepted_token = in_flight.or_else(|| self.latest.filter(|t| t.generation == generation));
            if let Some(token) = accepted_token
                && token.generation > active.in_force.generation
            {
                active.in_force = token;
            }
            if in_flight.is_some() {
                active.auth_failures = 0;
                active.auth = Auth::UpToDate;
            }
            let newer = self.latest.is_some_and(|t| t.generation > active.in_force.generation);
            if newer && matches!(active.auth, Auth::UpToDate) {
                active.auth = Auth::Due(now);
            }
        } else if in_flight.is_some() {
            active.auth_failures += 1;
            let wait = backoff(
                &mut self.jitter,
                self.policy.auth_retry_initial(),
                self.policy.auth_retry_max(),
                active.auth_failures,
            );
            active.auth = Auth::Due(now + wait);
        }
        self.process(now);
    }

    /// Connection `id` dropped (an I/O error, the server closed it).
    pub fn handle_connection_lost(&mut self, now: Instant, id: ConnectionId) {
        let now = self.observe(now);
        if let Some(active) = self.active.take_if(|a| a.id == id) {
            if now.saturating_duration_since(active.opened_at) >= self.policy.stable_after() {
                // It was stable: reconnect at once, with a fresh backoff.
                self.connect_failures = 0;
                self.reconnect_at = None;
            } else {
                // Lost soon after it opened (a kill loop, a failing node, an output
                // buffer limit): a failure. The first reconnects at once, the next back off.
                self.connect_failures += 1;
                self.reconnect_at = (self.connect_failures > 1).then(|| {
                    now + backoff(
                        &mut self.jitter,
                        self.policy.reconnect_initial(),
                        self.policy.reconnect_max(),
                        self.connect_failures - 1,
                    )
                });
            }
        } else if self.connecting.take_if(|c| c.id == id).is_some() {
            self.connect_failed(now);
        }
        self.retired.retain(|r| r.id != id);
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
            && active.probe.is_none()
            && !active.unresponsive
        {
            active.probe = Some(now + timeout);
            self.outputs.push_back(ConnectionOutput::Probe { id, timeout });
        }
        self.process(now);
    }

    /// The health `PING` on `id` was answered (`true`), or failed or timed out.
    pub fn handle_probe_result(&mut self, now: Instant, id: ConnectionId, answered: bool) {
        let now = self.observe(now);
        if let Some(active) = self.active.as_mut().filter(|a| a.id == id)
            && active.probe.take().is_some()
            && !answered
        {
            active.unresponsive = true;
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
        if maintenance.notice(now, id, active, notice, relaxed_timeout) {
            tracing::info!(connection = %id, "the server announced a move: handing the connection off");
        }
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
        match self.next_deadline() {
            Some(at) => ConnectionOutput::Timeout(at),
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
        match (usable, self.connect_failures) {
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

    fn connect_failed(&mut self, now: Instant) {
        self.connect_failures += 1;
        let wait = backoff(
            &mut self.jitter,
            self.policy.reconnect_initial(),
            self.policy.reconnect_max(),
            self.connect_failures,
        );
        self.reconnect_at = Some(now + wait);
    }

    /// A token fit to open a connection with: valid beyond its close margin.
    fn usable_latest(&self, now: Instant) -> Option<TokenInfo> {
        self.latest.filter(|t| t.close_at() > now)
    }

    fn process(&mut self, now: Instant) {
        // Retired connections whose token is about to expire are closed.
        let mut closing = Vec::new();
        self.retired.retain(|r| {
            let due = r.close_at <= now;
            if due {
                closing.push(r.id);
            }
            !due
        });
        self.outputs.extend(closing.into_iter().map(ConnectionOutput::Close));

        if let Some(connecting) = &self.connecting
            && connecting.deadline <= now
        {
            self.connecting = None;
            self.connect_failed(now);
        }

        let latest = self.usable_latest(now);
        if let Some(active) = &mut self.active {
            if active.in_force.close_at() <= now {
                // The server would cut it soon: close it ourselves.
                self.outputs.push_back(ConnectionOutput::Close(active.id));
                self.active = None;
                self.reconnect_at = None;
            } else {
                if let Auth::InFlight { deadline, .. } = active.auth
                    && deadline <= now
                {
                    active.auth_failures += 1;
                    let wait = backoff(
                        &mut self.jitter,
                        self.policy.auth_retry_initial(),
                        self.policy.auth_retry_max(),
                        active.auth_failures,
                    );
                    active.auth = Auth::Due(now + wait);
                }
                let newer = latest.filter(|t| t.generation > active.in_force.generation);
                // A renewal waits for the end of the user's transaction, but not past the
                // replace margin: then it goes on, and the driver fails the transaction.
                let held = active.pinned && now < active.in_force.replace_at();
                // A renewal taken by replacement stays due until a connection with it is up.
                let renew_by_replacing = self.renewal == Renewal::Replace
                    && newer.is_some()
                    && !held
                    && matches!(active.auth, Auth::Due(at) if at <= now);
                if let Auth::Due(at) = active.auth
                    && at <= now
                    && !renew_by_replacing
                    && !held
                {
                    match newer {
                        Some(token) => {
                            let deadline_cap = active.in_force.close_at().saturating_duration_since(now);
                            let timeout = self.policy.auth_timeout().min(deadline_cap);
                            active.auth = Auth::InFlight {
                                token,
                                deadline: now + timeout,
                            };
                            self.outputs.push_back(ConnectionOutput::SendAuth {
                                id: active.id,
                                generation: token.generation,
                                timeout,
                            });
                        }
                        None => active.auth = Auth::UpToDate,
                    }
                }
                if active.probe.is_some_and(|deadline| deadline <= now) {
                    active.probe = None;
                    active.unresponsive = true;
                }
                let must_replace = (active.in_force.replace_at() <= now && newer.is_some()) || active.unresponsive;
                let may_connect = self.reconnect_at.is_none_or(|at| at <= now);
                if (must_replace || renew_by_replacing) && self.connecting.is_none() && may_connect {
                    let reason = if active.unresponsive {
                        ConnectReason::Unresponsive
                    } else if renew_by_replacing {
                        ConnectReason::RenewalSwap
                    } else {
                        ConnectReason::Replacement
                    };
                    match reason {
                        ConnectReason::RenewalSwap => {
                            tracing::debug!(connection = %active.id, "renewal: opening a connection to take over");
                        }
                        ConnectReason::Unresponsive => tracing::warn!(
                            connection = %active.id,
                            "no reply to a command nor to a health PING: replacing the connection"
                        ),
                        ConnectReason::Replacement
                        | ConnectReason::First
                        | ConnectReason::Reconnect
                        | ConnectReason::Handoff => {
                            tracing::warn!(
                                connection = %active.id,
                                failed_auths = active.auth_failures,
                                "re-authentication did not succeed in time: replacing the connection before its token expires"
                            );
                        }
                    }
                    self.start_connect(now, reason);
                }
            }
        }

        let may_connect = self.reconnect_at.is_none_or(|at| at <= now);
        if self.active.is_none() && self.connecting.is_none() && may_connect && latest.is_some() {
            let reason = if self.ever_used {
                ConnectReason::Reconnect
            } else {
                ConnectReason::First
            };
            self.start_connect(now, reason);
        }
        self.process_maintenance(now);
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
                tracing::warn!(
                    connection = %handoff.from,
                    "the handoff did not finish before the server's deadline; the server closes the connection and it is opened again"
                );
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
        let may_connect = self.reconnect_at.is_none_or(|at| at <= now);
        if start && self.connecting.is_none() && may_connect {
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
        let handoff = reason == ConnectReason::Handoff;
        let endpoint = self
            .maintenance
            .as_deref_mut()
            .and_then(|maintenance| maintenance.target(now, handoff));
        self.connecting = Some(Connecting {
            id,
            token,
            deadline: now + timeout,
            handoff,
        });
        self.outputs.push_back(ConnectionOutput::Connect {
            id,
            generation: token.generation,
            timeout,
            reason,
            endpoint,
        });
    }

    /// The earliest instant ahead at which something may become due. Instants already
    /// past were acted on (or wait for an event), so they are left out.
    fn next_deadline(&self) -> Option<Instant> {
        let now = self.now?;
        let mut candidates: Vec<Instant> = self.retired.iter().map(|r| r.close_at).collect();
        candidates.extend(self.connecting.as_ref().map(|c| c.deadline));
        candidates.extend(self.latest.map(|t| t.close_at()));
        if let Some(active) = &self.active {
            candidates.push(active.in_force.close_at());
            if let Auth::Due(at) | Auth::InFlight { deadline: at, .. } = active.auth {
                candidates.push(at);
            }
            candidates.extend(active.probe);
            if self.newer_than(active.in_force.generation) {
                candidates.push(active.in_force.replace_at());
            }
        }
        candidates.extend(self.reconnect_at);
        if let Some(maintenance) = &self.maintenance {
            candidates.extend(maintenance.deadlines());
        }
        candidates.into_iter().filter(|at| *at > now).min()
    }
}

/// A validated [`ConnectionPolicy`] in whole milliseconds (rounded up), kept beside
/// every connection: a fourth of the size. Every value is at most a day
/// ([`MAX_POLICY_DURATION`]), so it fits in 32 bits.
#[derive(Debug, Clone, Copy)]
struct CompactPolicy {
    reauth_spread: u32,
    auth_timeout: u32,
    auth_retry_initial: u32,
    auth_retry_max: u32,
    replace_margin: u32,
    connect_timeout: u32,
    reconnect_initial: u32,
    reconnect_max: u32,
    stable_after: u32,
    probe_timeout: u32,
    /// Zero: never relaxed.
    relaxed_timeout: u32,
}

fn millis_up(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

impl CompactPolicy {
    fn new(policy: &ConnectionPolicy) -> CompactPolicy {
        CompactPolicy {
            reauth_spread: millis_up(policy.reauth_spread),
            auth_timeout: millis_up(policy.auth_timeout),
            auth_retry_initial: millis_up(policy.auth_retry_initial),
            auth_retry_max: millis_up(policy.auth_retry_max),
            replace_margin: millis_up(policy.replace_margin),
            connect_timeout: millis_up(policy.connect_timeout),
            reconnect_initial: millis_up(policy.reconnect_initial),
            reconnect_max: millis_up(policy.reconnect_max),
            stable_after: millis_up(policy.stable_after),
            probe_timeout: millis_up(policy.probe_timeout),
            relaxed_timeout: policy.relaxed_timeout.map_or(0, millis_up),
        }
    }

    fn relaxed_timeout(&self) -> Option<Duration> {
        (self.relaxed_timeout != 0).then(|| Duration::from_millis(u64::from(self.relaxed_timeout)))
    }
}

macro_rules! durations {
    ($($name:ident),*) => {
        impl CompactPolicy {
            $(fn $name(&self) -> Duration {
                Duration::from_millis(u64::from(self.$name))
            })*
        }
    };
}

durations!(
    reauth_spread,
    auth_timeout,
    auth_retry_initial,
    auth_retry_max,
    replace_margin,
    connect_timeout,
    reconnect_initial,
    reconnect_max,
    stable_after,
    probe_timeout
);

/// `initial · 2^(n−1)`, at most `max`, scaled by a ±20 % jitter and kept within `max`.
fn backoff(jitter: &mut Jitter, initial: Duration, max: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exponent).min(max);
    // Through f64 seconds so no value can overflow `Duration` (`mul_f64` would panic).
    Duration::try_from_secs_f64(base.as_secs_f64() * jitter.factor(0.2))
        .unwrap_or(max)
        .min(max)
}
