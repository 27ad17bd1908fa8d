//! [`SupervisionCore`]: the sans-IO half of every connection type. It owns the
//! [`ConnectionStateMachine`], the token feed, the counters, the spans and the health
//! share, and turns the machine's outputs into [`Io`] requests for its executor (the
//! async [`Supervisor`](crate::aio) task, or the sync [`Connection`](crate::Connection)'s
//! inline loop), which does them and reports back with the `handle_*` methods.
//!
//! ```text
//! executor ──handle_*(now, …)──▶ core ──handle_*──▶ machine
//! machine ──poll_output──▶ core ──poll_io──▶ Io::{Open, Auth, Probe, TakeOver, Retire, Gone, Wait}
//! ```
//!
//! The one place that counts, logs and traces an event: every executor gets the same
//! figures and the same log lines for the same event, once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entraid_identity::Token;
use entraid_token_manager::{
    Availability, CloseReason, ConnectReason, ConnectionId, ConnectionOutput, ConnectionStateMachine, Endpoint,
    Generation, MaintenanceNotice, TokenManagerError,
};
use redis::{Cmd, ErrorKind, RedisError, RedisResult};

use super::counters::{Counters, Shared};
use crate::commands;
use crate::health::GaugeShare;
use crate::maintenance::client_at;
use crate::provider::ManagerHandle;
use crate::token_feed::{TokenFeed, client_with_token};

/// What the core asks its executor to do. Drain with [`SupervisionCore::poll_io`] until
/// [`Io::Wait`].
pub(crate) enum Io {
    /// Open a connection; report with [`SupervisionCore::handle_opened`] or
    /// [`handle_open_failed`](SupervisionCore::handle_open_failed).
    Open(OpenRequest),
    /// Send a renewal `AUTH`; report with [`SupervisionCore::handle_auth_result`].
    Auth(AuthRequest),
    /// Send a health `PING` on `id`, waiting at most `timeout`; report with
    /// [`SupervisionCore::handle_probe_result`].
    Probe { id: ConnectionId, timeout: Duration },
    /// `id` takes new commands from now on.
    TakeOver(ConnectionId),
    /// `id` takes no new commands: let it finish what it holds (report a drain's end
    /// with [`SupervisionCore::handle_drained`]).
    Retire(ConnectionId),
    /// `id` is gone, for `why`: drop it, failing what still runs on it, and forget it.
    Gone { id: ConnectionId, why: Gone },
    /// Nothing more to do until this instant (`None`: until an event); then call
    /// [`SupervisionCore::handle_timeout`].
    Wait(Option<Instant>),
}

/// A connection to open: `id`, with `client` (which authenticates in its handshake),
/// within `timeout`. (Why is the core's to count and log; the I/O is the same.)
pub(crate) struct OpenRequest {
    pub(crate) id: ConnectionId,
    pub(crate) client: redis::Client,
    pub(crate) timeout: Duration,
}

/// A renewal `AUTH` to send: `command` on `id`, waiting at most `timeout`, with the token
/// of `generation`.
pub(crate) struct AuthRequest {
    pub(crate) id: ConnectionId,
    pub(crate) generation: Generation,
    pub(crate) command: Cmd,
    pub(crate) timeout: Duration,
}

/// Why a connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// The machine closed it before its token expires: fail what still runs on it.
    Closed,
    /// It dropped, or opening it failed.
    Lost,
    /// Its drain ended and it closed.
    Drained,
}

/// Rare state, boxed: one core lives beside every connection.
#[derive(Default)]
struct Events {
    /// The connection whose last re-authentication failed (retried meanwhile).
    retrying: Option<ConnectionId>,
    /// `entraid.connection_replacement`, from the replacement's connect to its use.
    replacement: Option<tracing::Span>,
    /// `entraid.handoff`, from the handoff connection's connect to its use.
    handoff: Option<(ConnectionId, tracing::Span)>,
    /// The response timeout for announced maintenance, while the server announces one.
    relaxed: Option<Duration>,
    /// Connections the core found gone, for the executor, in order.
    gone: VecDeque<(ConnectionId, Gone)>,
}

impl Events {
    fn is_over(&self) -> bool {
        self.retrying.is_none()
            && self.replacement.is_none()
            && self.handoff.is_none()
            && self.relaxed.is_none()
            && self.gone.is_empty()
    }
}

/// The sans-IO half of a connection type: see the module's docs.
pub(crate) struct SupervisionCore<X> {
    machine: ConnectionStateMachine,
    feed: TokenFeed,
    /// The configured client: each connection opens a copy with its token (and, after a
    /// `MOVING`, its endpoint).
    client: redis::Client,
    /// Keeps the token manager running; health figures; a new stream after a restart.
    manager: ManagerHandle,
    shared: Arc<Shared<X>>,
    /// This connection owner's share of the provider's connection figures.
    health: GaugeShare,
    events: Option<Box<Events>>,
}

impl<X> Drop for SupervisionCore<X> {
    fn drop(&mut self) {
        self.health.release(self.manager.health());
    }
}

impl<X> SupervisionCore<X> {
    pub(crate) fn new(
        machine: ConnectionStateMachine,
        client: redis::Client,
        manager: ManagerHandle,
        shared: Arc<Shared<X>>,
    ) -> Self {
        SupervisionCore {
            machine,
            feed: TokenFeed::default(),
            client,
            manager,
            shared,
            health: GaugeShare::default(),
            events: None,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared<X>> {
        &self.shared
    }

    pub(crate) fn manager(&self) -> &ManagerHandle {
        &self.manager
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    fn events(&mut self) -> &mut Events {
        self.events.get_or_insert_with(Box::default)
    }

    fn tidy_events(&mut self) {
        if self.events.as_ref().is_some_and(|e| e.is_over()) {
            self.events = None;
        }
    }

    /// The connection the machine has in use, if any.
    fn in_use(&self) -> Option<ConnectionId> {
        match self.machine.availability() {
            Availability::Connected(id) => Some(id),
            Availability::Connecting | Availability::NoValidToken | Availability::Reconnecting => None,
        }
    }

    // ---- what callers are told ----

    /// The connection callers use, `None` while one is being opened, or why there is none.
    pub(crate) fn for_callers(&self) -> Result<Option<ConnectionId>, RedisError> {
        self.feed.for_callers(self.machine.availability())
    }

    /// Changes whenever [`for_callers`](Self::for_callers) may give another error.
    pub(crate) fn errors_changed(&self) -> u64 {
        self.feed.errors_changed()
    }

    /// See [`ConnectionStateMachine::close_grace`].
    pub(crate) fn close_grace(&self) -> Option<Duration> {
        self.machine.close_grace()
    }

    /// The response timeout commands get while the server announces maintenance.
    pub(crate) fn relaxed(&self) -> Option<Duration> {
        self.events.as_ref().and_then(|e| e.relaxed)
    }

    /// Whether a connection is in use now.
    pub(crate) fn is_connected(&self) -> bool {
        self.in_use().is_some()
    }

    /// For `Debug`.
    pub(crate) fn availability(&self) -> Availability {
        self.machine.availability()
    }

    /// Publishes this owner's figures to the provider's health: `live` connections open.
    pub(crate) fn publish_health(&mut self, live: usize) {
        let in_use = self.in_use();
        if let Some(events) = &mut self.events
            && events.retrying.is_some_and(|id| Some(id) != in_use)
        {
            events.retrying = None;
        }
        self.tidy_events();
        let retrying = usize::from(self.events.as_ref().is_some_and(|e| e.retrying.is_some()));
        self.health.set(self.manager.health(), live, retrying);
    }

    // ---- inputs ----

    /// A token from the token manager.
    pub(crate) fn handle_token(&mut self, now: Instant, token: Token) {
        self.feed.token(&mut self.machine, now, token);
    }

    /// No valid token exists any more, because of `error`.
    pub(crate) fn handle_token_lost(&mut self, now: Instant, error: TokenManagerError) {
        self.feed.token_lost(&mut self.machine, now, error);
    }

    /// The token manager reports `error`; the token in force, if any, stays usable.
    pub(crate) fn handle_token_error(&mut self, error: TokenManagerError) {
        self.feed.token_error(error);
    }

    /// Connection `id` is open (and caught up): it can take over.
    pub(crate) fn handle_opened(&mut self, now: Instant, id: ConnectionId) {
        self.feed.connect_result(None);
        Counters::bump(&self.counters().connections_opened);
        self.machine.handle_connected(now, id);
    }

    /// Opening connection `id` failed with `error`.
    pub(crate) fn handle_open_failed(&mut self, now: Instant, id: ConnectionId, error: RedisError) {
        tracing::warn!(connection = %id, %error, "connecting to Redis failed");
        Counters::bump(&self.counters().connect_failures);
        if let Some((_, span)) = self
            .events
            .as_mut()
            .and_then(|e| e.handoff.take_if(|(handoff, _)| *handoff == id))
        {
            Counters::bump(&self.shared.counters.handoff_failures);
            span.in_scope(|| tracing::warn!(connection = %id, %error, "the handoff connection failed"));
        }
        self.events().gone.push_back((id, Gone::Lost));
        self.feed.connect_result(Some(error));
        self.machine.handle_connect_failed(now, id);
    }

    /// The reply to the renewal `AUTH` of `generation` on `id`.
    pub(crate) fn handle_auth_result(
        &mut self,
        now: Instant,
        id: ConnectionId,
        generation: Generation,
        result: RedisResult<()>,
    ) {
        match &result {
            Ok(()) => {
                // Rare state stays unallocated on the usual path: a renewal accepted.
                if let Some(events) = &mut self.events {
                    events.retrying = None;
                }
                Counters::bump(&self.counters().reauthentications);
                if let Some(token) = self.feed.get(generation) {
                    self.manager.health().reauthenticated(token);
                }
            }
            Err(error) => {
                Counters::bump(&self.counters().failed_auths);
                tracing::warn!(connection = %id, %error, "re-authentication failed; retrying");
                self.events().retrying = Some(id);
            }
        }
        match result {
            Err(error) if error.is_unrecoverable_error() => self.handle_lost(now, id),
            result => self.machine.handle_auth_result(now, id, generation, result.is_ok()),
        }
    }

    /// The reply to the health `PING` on `id`.
    pub(crate) fn handle_probe_result(&mut self, now: Instant, id: ConnectionId, result: RedisResult<()>) {
        if let Err(error) = &result {
            tracing::warn!(connection = %id, %error, "no reply to a health PING");
        }
        match result {
            Err(error) if error.is_unrecoverable_error() => self.handle_lost(now, id),
            result => self.machine.handle_probe_result(now, id, result.is_ok()),
        }
    }

    /// Connection `id` dropped (an I/O error, a disconnection, its reader ended).
    pub(crate) fn handle_lost(&mut self, now: Instant, id: ConnectionId) {
        if self.in_use() == Some(id) {
            Counters::bump(&self.counters().connections_lost);
            tracing::warn!(connection = %id, "connection lost; opening another");
        }
        self.events().gone.push_back((id, Gone::Lost));
        self.machine.handle_connection_lost(now, id);
    }

    /// A retired connection's drain ended, and it closed.
    pub(crate) fn handle_drained(&mut self, now: Instant, id: ConnectionId) {
        self.events().gone.push_back((id, Gone::Drained));
        self.machine.handle_connection_lost(now, id);
    }

    /// A command on `id` got no reply in time.
    pub(crate) fn handle_reply_timeout(&mut self, now: Instant, id: ConnectionId) {
        self.machine.handle_reply_timeout(now, id);
    }

    /// The server pushed a maintenance notification on `id`.
    pub(crate) fn handle_maintenance(&mut self, now: Instant, id: ConnectionId, notice: MaintenanceNotice) {
        tracing::info!(connection = %id, ?notice, "the server announced maintenance");
        self.machine.handle_maintenance(now, id, notice);
    }

    /// `id` holds the user's transaction or `WATCH` (`true`), or no longer.
    pub(crate) fn handle_pinned(&mut self, now: Instant, id: ConnectionId, pinned: bool) {
        self.machine.handle_pinned(now, id, pinned);
    }

    /// Time has passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.machine.handle_timeout(now);
    }

    // ---- outputs ----

    /// The next thing to do: the machine's outputs, counted, logged and traced here, as
    /// I/O for the executor.
    pub(crate) fn poll_io(&mut self, now: Instant) -> Io {
        loop {
            if let Some((id, why)) = self.events.as_mut().and_then(|e| e.gone.pop_front()) {
                return Io::Gone { id, why };
            }
            match self.machine.poll_output() {
                ConnectionOutput::Connect {
                    id,
                    generation,
                    timeout,
                    reason,
                    endpoint,
                } => {
                    self.connecting(id, reason, endpoint.as_ref());
                    match self.client_for(generation, endpoint.as_ref()) {
                        Ok(client) => {
                            return Io::Open(OpenRequest { id, client, timeout });
                        }
                        Err(error) => self.handle_open_failed(now, id, error),
                    }
                }
                ConnectionOutput::SendAuth {
                    id,
                    generation,
                    timeout,
                } => match self.feed.get(generation) {
                    Some(token) => {
                        return Io::Auth(AuthRequest {
                            id,
                            generation,
                            command: commands::auth(token),
                            timeout,
                        });
                    }
                    None => self.machine.handle_auth_result(now, id, generation, false),
                },
                ConnectionOutput::Probe { id, timeout } => return Io::Probe { id, timeout },
                ConnectionOutput::Use(id) => {
                    self.in_use_now(id);
                    return Io::TakeOver(id);
                }
                ConnectionOutput::Retire { id, reason } => {
                    self.unused_handoff(id);
                    tracing::debug!(connection = %id, ?reason, "connection retired: another takes over");
                    return Io::Retire(id);
                }
                ConnectionOutput::Close { id, reason } => {
                    self.unused_handoff(id);
                    match reason {
                        CloseReason::TokenExpiring | CloseReason::ServerMoving => {
                            Counters::bump(&self.counters().closed_before_expiry);
                            tracing::info!(connection = %id, ?reason, "connection closed before its token expires");
                        }
                        CloseReason::NotWanted => {
                            tracing::debug!(connection = %id, "a connection opened too late is closed");
                        }
                    }
                    return Io::Gone { id, why: Gone::Closed };
                }
                ConnectionOutput::HandoffMissed(id) => tracing::warn!(
                    connection = %id,
                    "the handoff did not finish before the server's deadline; the server closes the connection and it is opened again"
                ),
                ConnectionOutput::RelaxTimeouts(relaxed) => {
                    if relaxed.is_some() {
                        Counters::bump(&self.counters().relaxed_windows);
                    }
                    tracing::info!(?relaxed, "response timeouts for announced maintenance");
                    self.events().relaxed = relaxed;
                    self.tidy_events();
                }
                ConnectionOutput::Timeout(at) => return Io::Wait(Some(at)),
                ConnectionOutput::Idle => return Io::Wait(None),
            }
        }
    }

    /// Counts, logs and traces a connection the machine asks for.
    fn connecting(&mut self, id: ConnectionId, reason: ConnectReason, endpoint: Option<&Endpoint>) {
        match reason {
            ConnectReason::Replacement => {
                Counters::bump(&self.counters().replacements);
                self.manager.health().replaced();
                let failed_auths = self.machine.auth_failures();
                let span = tracing::info_span!("entraid.connection_replacement", new = %id);
                span.in_scope(|| {
                    tracing::warn!(
                        connection = %id,
                        failed_auths,
                        "re-authentication did not succeed in time: replacing the connection before its token expires"
                    );
                });
                self.events().replacement = Some(span);
            }
            ConnectReason::RenewalSwap => {
                Counters::bump(&self.counters().renewal_swaps);
                tracing::debug!(connection = %id, "renewal: a new connection takes over");
            }
            ConnectReason::Unresponsive => {
                Counters::bump(&self.counters().unresponsive);
                tracing::warn!(
                    connection = %id,
                    "no reply to a command nor to a health PING: replacing the connection"
                );
            }
            ConnectReason::Handoff => {
                let span =
                    tracing::info_span!("entraid.handoff", new = %id, to = endpoint.map(tracing::field::display));
                span.in_scope(|| tracing::info!(connection = %id, "opening the connection the server moves us to"));
                self.events().handoff = Some((id, span));
            }
            ConnectReason::First | ConnectReason::Reconnect => {}
        }
    }

    /// The client connection `generation`'s token opens (at `endpoint` after a move).
    fn client_for(&self, generation: Generation, endpoint: Option<&Endpoint>) -> RedisResult<redis::Client> {
        let client = match endpoint {
            Some(endpoint) => client_at(&self.client, endpoint)?,
            None => self.client.clone(),
        };
        match self.feed.get(generation) {
            Some(token) => client_with_token(&client, token),
            None => Err(RedisError::from((ErrorKind::Client, "no token to connect with"))),
        }
    }

    /// `id` took over: a replacement or a handoff is done.
    fn in_use_now(&mut self, id: ConnectionId) {
        let Some(events) = &mut self.events else { return };
        if let Some(span) = events.replacement.take() {
            span.in_scope(|| tracing::info!(connection = %id, "replacement connection in use"));
        }
        if let Some((_, span)) = events.handoff.take_if(|(handoff, _)| *handoff == id) {
            Counters::bump(&self.shared.counters.handoffs);
            self.manager.health().handed_off();
            span.in_scope(|| tracing::info!(connection = %id, "handoff done: the new connection is in use"));
        }
        self.tidy_events();
    }

    /// A handoff connection that goes before it was used (it came after the machine gave
    /// up) failed.
    fn unused_handoff(&mut self, id: ConnectionId) {
        if let Some((_, span)) = self
            .events
            .as_mut()
            .and_then(|e| e.handoff.take_if(|(handoff, _)| *handoff == id))
        {
            Counters::bump(&self.shared.counters.handoff_failures);
            span.in_scope(|| tracing::warn!(connection = %id, "the handoff connection came too late; closed"));
        }
        self.tidy_events();
    }
}
