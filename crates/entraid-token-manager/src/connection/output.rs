//! What the machine and its driver say to each other: the ids, the outputs and the
//! reasons they carry, and what callers should be told.

use std::fmt;
use std::time::{Duration, Instant};

use super::maintenance::Endpoint;
#[cfg(doc)]
use super::{ConnectionPolicy, ConnectionStateMachine};

/// Identifies one token handed to a [`ConnectionStateMachine`]; later tokens have
/// greater generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(pub(crate) u64);

/// Identifies one physical connection the machine asked its driver to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection #{}", self.0)
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
    /// Send no new command to connection `id`; let it close when its commands in flight
    /// have finished. A [`Close`](ConnectionOutput::Close) follows if they take too long.
    Retire {
        /// The connection.
        id: ConnectionId,
        /// Why the connection that takes over from it was opened.
        reason: ConnectReason,
    },
    /// Close connection `id` now, for `reason`, before the server would cut it.
    /// Commands still in flight on it fail.
    Close {
        /// The connection.
        id: ConnectionId,
        /// Why.
        reason: CloseReason,
    },
    /// The server's deadline for moving connection `id` (`MOVING`) passed before a
    /// connection to the new endpoint took over: the server closes `id` itself, and the
    /// machine reconnects once it is lost. For the driver's log and counters.
    HandoffMissed(ConnectionId),
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

/// Why the machine closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Its token is about to expire (a quarter of the replace margin is left) and no
    /// newer one reached it: the server would cut it.
    TokenExpiring,
    /// The server announced a move (`MOVING`) and closes this retired connection at the
    /// announced time: it goes by nine tenths of it.
    ServerMoving,
    /// It opened after the machine stopped waiting for it (its attempt had timed out),
    /// or its token came too close to expiry while it opened.
    NotWanted,
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
