//! The one supervision loop of every async connection type: [`Supervisor`] drives a
//! [`ConnectionStateMachine`] and does what it says through a [`Transport`], which is
//! only the I/O of one kind of connection.
//!
//! ```text
//! token manager ──token──▶ TokenFeed ──handle_token──▶ machine
//! machine ──poll_output──▶ Supervisor ──open/auth/take_over/retire/gone──▶ Transport
//! Transport's futures and reports ──results──▶ Supervisor ──handle_*──▶ machine
//! Supervisor ──Slot (watch)──▶ handles (commands)      Supervisor ──▶ Counters, health
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use entraid_identity::Token;
use entraid_token_manager::{
    ConnectReason, ConnectionId, ConnectionOutput, ConnectionStateMachine, Endpoint, Generation, Renewal,
    TokenManagerError, TokenStream,
};
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::sync::watch;

use super::supervision::{BoxFuture, IdMap, Report, Reports, next_token, now, sleep_until, wait_pending, within};
use crate::EntraIdCredentialsProvider;
use crate::connection_config::{ConnectionConfig, ConnectionType};
use crate::health::GaugeShare;
use crate::maintenance::client_at;
use crate::provider::ManagerHandle;
use crate::token_feed::{TokenFeed, client_with_token, no_token_error};

/// The I/O of one kind of connection, as the [`Supervisor`] asks for it. Every decision
/// (when to open, authenticate, retire, close) is the machine's; a transport never
/// waits on a timer of its own for one.
pub(crate) trait Transport: Send + 'static {
    /// What the transport shares with its handles and readers, in the supervisor's one
    /// shared allocation ([`Shared::of`]).
    type Shared: Send + Sync + 'static;
    /// An open connection, as the supervisor keeps it.
    type Conn: Send + 'static;
    /// What callers are handed to send commands on, once a connection is in use.
    type Handle: Clone + Send + Sync + 'static;

    /// Opens a connection with `client` (which authenticates in its handshake) within
    /// `timeout`, and carries over what must be on every connection (subscriptions). The
    /// supervisor bounds the whole with `timeout` too.
    fn open(
        &mut self,
        id: ConnectionId,
        client: redis::Client,
        reason: ConnectReason,
        timeout: Duration,
    ) -> BoxFuture<RedisResult<Self::Conn>>;

    /// A connection just opened: `Ready` if it can take over now, or the work that
    /// brings it up to date with what changed while it was being opened.
    fn catch_up(&mut self, id: ConnectionId, conn: Self::Conn) -> CatchUp<Self::Conn>;

    /// Sends `AUTH` with `token` on `conn`, waiting at most `timeout` for the reply.
    fn auth(&self, conn: &Self::Conn, token: &Token, timeout: Duration) -> BoxFuture<RedisResult<()>>;

    /// Sends a health `PING` on `conn`, waiting at most `timeout` for the reply.
    fn probe(&self, conn: &Self::Conn, timeout: Duration) -> BoxFuture<RedisResult<()>>;

    /// `conn` takes new commands from now on.
    fn take_over(&mut self, id: ConnectionId, conn: &Self::Conn);

    /// What callers send commands on, for the connection in use, which the machine
    /// closes `close_grace` before its token expires; `relaxed`: the response timeout
    /// commands get while the server announces maintenance, instead of the configured one.
    fn handle(&self, conn: &Self::Conn, close_grace: Option<Duration>, relaxed: Option<Duration>) -> Self::Handle;

    /// `conn` takes no new commands; what happens to it until it goes.
    fn retire(&mut self, id: ConnectionId, conn: Self::Conn) -> Retirement;

    /// `id` is gone, for `why`: forget what the transport keeps of it.
    fn gone(&mut self, id: ConnectionId, why: Gone);

    /// The transport's own work, beside the supervisor's (the pub/sub actor's
    /// subscription changes); resolves with a connection that work found lost.
    /// Cancel-safe: the supervisor polls it in a `select!`.
    fn next_lost(&mut self) -> impl Future<Output = ConnectionId> + Send + '_;

    /// Callers were told `slot`: what the transport serves on its own follows it.
    fn published(&mut self, slot: &Slot<Self::Handle>);
}

/// Whether an opened connection can take over.
pub(crate) enum CatchUp<C> {
    Ready(C),
    Pending(BoxFuture<RedisResult<C>>),
}

/// What happens to a retired connection.
pub(crate) enum Retirement {
    /// It stays open while commands hold it, until the machine's `Close`; the future,
    /// if any, runs meanwhile (a drain `PING` that keeps it alive until answered).
    Linger(Option<BoxFuture<()>>),
    /// It is closed when this drain ends, and the machine is told it is gone.
    Drain(BoxFuture<()>),
}

/// Why a connection is gone, for [`Transport::gone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// The machine closed it before its token expires: fail what still runs on it.
    Closed,
    /// It dropped, or opening it failed.
    Lost,
    /// Its drain ended and it closed.
    Drained,
}

/// What callers see: the connection to use, or why there is none.
#[derive(Clone)]
pub(crate) enum Slot<H> {
    Connecting,
    Ready(ConnectionId, H),
    /// `errors_changed` tells one error from the next without comparing texts.
    Unavailable {
        error: RedisError,
        errors_changed: u64,
    },
    Stopped,
}

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
    pub(crate) unresponsive: AtomicU64,
    pub(crate) handoffs: AtomicU64,
    pub(crate) handoff_failures: AtomicU64,
    pub(crate) relaxed_windows: AtomicU64,
    pub(crate) maintenance_refused: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
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

/// The handle side: where commands go, waiting for a connection being opened.
pub(crate) struct SupervisorHandle<H, X> {
    slot: watch::Receiver<Slot<H>>,
    pub(crate) shared: Arc<Shared<X>>,
    /// How long a caller waits for a connection being opened.
    connect_wait: Duration,
    task: tokio::task::JoinHandle<()>,
    what: &'static str,
}

impl<H, X> Drop for SupervisorHandle<H, X> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<H: Clone, X> SupervisorHandle<H, X> {
    /// The connection in use, waiting (at most the connection timeout) while one is
    /// being opened; the reason at once when there is none.
    pub(crate) async fn live(&self) -> RedisResult<(ConnectionId, H)> {
        // The usual case, a connection in use: no timer, no waiting.
        if let Slot::Ready(id, handle) = &*self.slot.borrow() {
            return Ok((*id, handle.clone()));
        }
        let mut slot = self.slot.clone();
        let what = self.what;
        let wait = async move {
            loop {
                match &*slot.borrow_and_update() {
                    Slot::Ready(id, handle) => return Ok((*id, handle.clone())),
                    Slot::Unavailable { error, .. } => return Err(error.clone()),
                    Slot::Stopped => return Err(stopped_error(what)),
                    Slot::Connecting => {}
                }
                if slot.changed().await.is_err() {
                    return Err(stopped_error(what));
                }
            }
        };
        match tokio::time::timeout(self.connect_wait, wait).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from((
                ErrorKind::Io,
                "no connection",
                format!(
                    "no connection to Redis could be opened within {:?}; it keeps trying",
                    self.connect_wait
                ),
            ))),
        }
    }

    /// A short word for `Debug`.
    pub(crate) fn state(&self) -> String {
        match &*self.slot.borrow() {
            Slot::Connecting => "connecting".to_owned(),
            Slot::Ready(id, _) => format!("using {id}"),
            Slot::Unavailable { error, .. } => format!("unavailable: {error}"),
            Slot::Stopped => "stopped".to_owned(),
        }
    }

    /// A dropped connection is reported, so the supervisor opens another at once; one
    /// that did not answer in time, so the supervisor checks it.
    pub(crate) fn report<T>(&self, id: ConnectionId, result: &RedisResult<T>) {
        match result {
            Err(error) if error.is_unrecoverable_error() => self.shared.reports.report(id, Report::Lost),
            Err(error) if error.is_timeout() => self.shared.reports.report(id, Report::TimedOut),
            Ok(_) | Err(_) => {}
        }
    }
}

/// What a caller gets once the supervisor ended.
pub(crate) fn stopped_error(what: &'static str) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "stopped",
        format!("the background task of this {what} ended; create a new one"),
    ))
}

/// Everything a supervisor starts from.
pub(crate) struct Start<'a, T: Transport> {
    pub(crate) client: redis::Client,
    pub(crate) provider: &'a EntraIdCredentialsProvider,
    pub(crate) config: &'a ConnectionConfig,
    pub(crate) kind: ConnectionType,
    pub(crate) renewal: Renewal,
    pub(crate) transport: T,
    pub(crate) shared: Arc<Shared<T::Shared>>,
    /// For messages: "connection manager", "subscriber".
    pub(crate) what: &'static str,
}

/// Starts a supervisor on the current tokio runtime once the first token is in, and
/// waits for its first connection.
pub(crate) async fn start<T: Transport>(start: Start<'_, T>) -> RedisResult<SupervisorHandle<T::Handle, T::Shared>> {
    let Start {
        client,
        provider,
        config,
        kind,
        renewal,
        transport,
        shared,
        what,
    } = start;
    config.check(kind, &client)?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        RedisError::from((
            ErrorKind::InvalidClientConfig,
            "this connection type needs a tokio runtime",
            format!("create the {what} inside one, or use redis_entraid::Connection in synchronous code"),
        ))
    })?;
    let machine = config.state_machine(provider, renewal)?;
    let manager = provider.token_manager()?;
    // The first token, or the reason there is none, within the manager's attempts.
    let first_token = manager.token().await.map_err(no_token_error)?;
    let (slot_tx, slot) = watch::channel(Slot::Connecting);
    let mut supervisor = Supervisor {
        machine,
        transport,
        client,
        tokens: Some(manager.subscribe()),
        manager: provider.manager_handle(),
        feed: TokenFeed::default(),
        open: IdMap::with_capacity(1),
        retired: Vec::new(),
        pending_connect: None,
        pending_auth: None,
        slot: slot_tx,
        shared: shared.clone(),
        trouble: None,
        health: GaugeShare::default(),
    };
    // Fed before the task starts, so callers never see "no token" at the start.
    supervisor.feed.token(&mut supervisor.machine, now(), first_token);
    let handle = SupervisorHandle {
        slot,
        shared,
        connect_wait: config.policy(provider).connect_timeout,
        task: runtime.spawn(supervisor.run()),
        what,
    };
    handle.live().await?;
    Ok(handle)
}

/// A re-authentication `AUTH` waiting for its reply, by connection and token.
type PendingAuth = Option<((ConnectionId, Generation), BoxFuture<RedisResult<()>>)>;

/// A retired connection: kept until the machine closes it or its drain ends.
struct Retired {
    id: ConnectionId,
    work: Option<BoxFuture<()>>,
    /// Whether the end of `work` closes it.
    closes: bool,
}

/// Rare state, boxed: one supervisor lives beside every connection.
#[derive(Default)]
struct Trouble {
    /// The connection whose last re-authentication failed (retried meanwhile).
    retrying: Option<ConnectionId>,
    /// `entraid.connection_replacement`, from the replacement's connect to its use.
    replacement: Option<tracing::Span>,
    /// A health `PING` waiting for its reply.
    pending_probe: Option<(ConnectionId, BoxFuture<RedisResult<()>>)>,
    /// While the provider's token manager is stopped: the wait for its next start.
    restart: Option<((), BoxFuture<TokenStream>)>,
    /// `entraid.handoff`, from the handoff's connect to its use, with its connection.
    handoff: Option<(ConnectionId, tracing::Span)>,
    /// The response timeout commands get during announced maintenance.
    relaxed: Option<Duration>,
    /// The one the handle in the slot has.
    relaxed_published: Option<Duration>,
}

impl Trouble {
    fn is_over(&self) -> bool {
        self.retrying.is_none()
            && self.replacement.is_none()
            && self.pending_probe.is_none()
            && self.restart.is_none()
            && self.handoff.is_none()
            && self.relaxed.is_none()
            && self.relaxed_published.is_none()
    }
}

/// The end of a rare pending operation kept in `trouble` (a health `PING`, the wait for
/// a stopped provider to start again); never resolves without one.
async fn rare_wake<C>(trouble: &mut Option<Box<Trouble>>) -> Wake<C> {
    let Some(trouble) = trouble.as_deref_mut() else {
        return std::future::pending().await;
    };
    tokio::select! {
        ((), tokens) = wait_pending(&mut trouble.restart) => Wake::Started(tokens),
        (id, result) = wait_pending(&mut trouble.pending_probe) => Wake::Probed(id, result),
    }
}

enum Wake<C> {
    Token(Option<Result<Token, TokenManagerError>>),
    /// The provider runs a token manager again after a `stop`.
    Started(TokenStream),
    Connected(ConnectionId, RedisResult<C>),
    Auth(ConnectionId, Generation, RedisResult<()>),
    Lost(ConnectionId),
    Reports(Vec<(ConnectionId, Report)>),
    Probed(ConnectionId, RedisResult<()>),
    Drained(ConnectionId, bool),
    Timer,
}

/// Drives one connection state machine and does what it says through `T`.
pub(crate) struct Supervisor<T: Transport> {
    machine: ConnectionStateMachine,
    transport: T,
    client: redis::Client,
    /// `None` while the provider's token manager is stopped.
    tokens: Option<TokenStream>,
    /// Keeps the token manager running; a new stream if it had to be started again.
    manager: ManagerHandle,
    feed: TokenFeed,
    open: IdMap<T::Conn>,
    retired: Vec<Retired>,
    pending_connect: Option<(ConnectionId, BoxFuture<RedisResult<T::Conn>>)>,
    pending_auth: PendingAuth,
    slot: watch::Sender<Slot<T::Handle>>,
    shared: Arc<Shared<T::Shared>>,
    trouble: Option<Box<Trouble>>,
    /// This supervisor's share of the provider's connection figures.
    health: GaugeShare,
}

impl<T: Transport> Supervisor<T> {
    pub(crate) async fn run(mut self) {
        loop {
            let deadline = self.act();
            self.publish();
            let wake = tokio::select! {
                item = next_token(&mut self.tokens) => Wake::Token(item),
                wake = rare_wake(&mut self.trouble) => wake,
                (id, result) = wait_pending(&mut self.pending_connect) => Wake::Connected(id, result),
                ((id, generation), result) = wait_pending(&mut self.pending_auth) => Wake::Auth(id, generation, result),
                reports = self.shared.reports.next() => Wake::Reports(reports),
                id = self.transport.next_lost() => Wake::Lost(id),
                (id, closes) = next_retired(&mut self.retired) => Wake::Drained(id, closes),
                () = sleep_until(deadline) => Wake::Timer,
            };
            self.handle(now(), wake);
        }
    }

    fn handle(&mut self, now: std::time::Instant, wake: Wake<T::Conn>) {
        match wake {
            Wake::Token(Some(Ok(token))) => self.feed.token(&mut self.machine, now, token),
            Wake::Token(Some(Err(TokenManagerError::RuntimeShutDown))) => {
                // The provider starts the manager again on a runtime of its own.
                self.tokens = self.manager.resubscribe();
            }
            Wake::Token(Some(Err(TokenManagerError::TokenExpired))) => {
                self.feed
                    .token_lost(&mut self.machine, now, TokenManagerError::TokenExpired);
            }
            Wake::Token(Some(Err(error))) => self.feed.token_error(error),
            Wake::Token(None) => {
                // The token manager stopped: the connection lives until its token ends,
                // and follows the provider if it is started again.
                self.feed.token_lost(&mut self.machine, now, TokenManagerError::Stopped);
                self.tokens = None;
                let manager = self.manager.clone();
                self.trouble_mut().restart = Some(((), Box::pin(async move { manager.next_start().await })));
            }
            Wake::Started(tokens) => {
                self.trouble_mut().restart = None;
                self.tokens = Some(tokens);
            }
            Wake::Connected(id, Ok(conn)) => {
                self.pending_connect = None;
                match self.transport.catch_up(id, conn) {
                    // Bounded as its connect was: by the machine's connect deadline, after
                    // which a late success is closed.
                    CatchUp::Pending(work) => self.pending_connect = Some((id, work)),
                    CatchUp::Ready(conn) => {
                        self.feed.connect_result(None);
                        Counters::bump(&self.shared.counters.connections_opened);
                        self.open.insert(id, conn);
                        self.machine.handle_connected(now, id);
                    }
                }
            }
            Wake::Connected(id, Err(error)) => {
                self.pending_connect = None;
                tracing::warn!(connection = %id, %error, "connecting to Redis failed");
                Counters::bump(&self.shared.counters.connect_failures);
                if let Some((_, span)) = self
                    .trouble
                    .as_mut()
                    .and_then(|t| t.handoff.take_if(|(handoff, _)| *handoff == id))
                {
                    Counters::bump(&self.shared.counters.handoff_failures);
                    span.in_scope(|| tracing::warn!(connection = %id, %error, "the handoff connection failed"));
                }
                self.transport.gone(id, Gone::Lost);
                self.feed.connect_result(Some(error));
                self.machine.handle_connect_failed(now, id);
            }
            Wake::Auth(id, generation, result) => {
                self.pending_auth = None;
                self.trouble_mut().retrying = None;
                match &result {
                    Ok(()) => {
                        Counters::bump(&self.shared.counters.reauthentications);
                        if let Some(token) = self.feed.get(generation) {
                            self.manager.health().reauthenticated(token);
                        }
                    }
                    Err(error) => {
                        self.trouble_mut().retrying = Some(id);
                        Counters::bump(&self.shared.counters.failed_auths);
                        tracing::warn!(connection = %id, %error, "re-authentication failed; retrying");
                    }
                }
                match result {
                    Err(error) if error.is_unrecoverable_error() => self.lost(now, id),
                    result => self.machine.handle_auth_result(now, id, generation, result.is_ok()),
                }
            }
            Wake::Lost(id) => self.lost(now, id),
            Wake::Reports(reports) => {
                for (id, report) in reports {
                    match report {
                        Report::Lost => self.lost(now, id),
                        Report::TimedOut => self.machine.handle_reply_timeout(now, id),
                        Report::Maintenance(notice) => {
                            tracing::info!(connection = %id, ?notice, "the server announced maintenance");
                            self.machine.handle_maintenance(now, id, notice);
                        }
                    }
                }
            }
            Wake::Probed(id, result) => {
                self.trouble_mut().pending_probe = None;
                if let Err(error) = &result {
                    tracing::warn!(connection = %id, %error, "no reply to a health PING");
                }
                match result {
                    Err(error) if error.is_unrecoverable_error() => self.lost(now, id),
                    result => self.machine.handle_probe_result(now, id, result.is_ok()),
                }
            }
            Wake::Drained(id, closes) => {
                if closes {
                    self.retired.retain(|r| r.id != id);
                    self.transport.gone(id, Gone::Drained);
                    self.machine.handle_connection_lost(now, id);
                }
            }
            Wake::Timer => self.machine.handle_timeout(now),
        }
    }

    fn lost(&mut self, now: std::time::Instant, id: ConnectionId) {
        if self.open.remove(&id).is_some() {
            Counters::bump(&self.shared.counters.connections_lost);
            tracing::warn!(connection = %id, "connection lost; opening another");
        }
        self.retired.retain(|r| r.id != id);
        self.transport.gone(id, Gone::Lost);
        self.machine.handle_connection_lost(now, id);
    }

    /// Carries out the machine's outputs; returns when to wake it next.
    fn act(&mut self) -> Option<tokio::time::Instant> {
        loop {
            match self.machine.poll_output() {
                ConnectionOutput::Connect {
                    id,
                    generation,
                    timeout,
                    reason,
                    endpoint,
                } => self.connect(id, generation, timeout, reason, endpoint.as_ref()),
                ConnectionOutput::SendAuth {
                    id,
                    generation,
                    timeout,
                } => match (self.open.get(&id), self.feed.get(generation)) {
                    (Some(conn), Some(token)) => {
                        let auth = within(timeout, "AUTH", self.transport.auth(conn, token, timeout));
                        self.pending_auth = Some(((id, generation), Box::pin(auth)));
                    }
                    _ => self.machine.handle_auth_result(now(), id, generation, false),
                },
                ConnectionOutput::Probe { id, timeout } => match self.open.get(&id) {
                    Some(conn) => {
                        let probe = within(timeout, "a health PING", self.transport.probe(conn, timeout));
                        self.trouble_mut().pending_probe = Some((id, Box::pin(probe)));
                    }
                    None => self.machine.handle_probe_result(now(), id, false),
                },
                ConnectionOutput::Use(id) => {
                    if let Some(conn) = self.open.get(&id) {
                        self.transport.take_over(id, conn);
                    }
                    if let Some(span) = self.trouble.as_mut().and_then(|t| t.replacement.take()) {
                        span.in_scope(|| tracing::info!(connection = %id, "replacement connection in use"));
                    }
                    if let Some((_, span)) = self
                        .trouble
                        .as_mut()
                        .and_then(|t| t.handoff.take_if(|(handoff, _)| *handoff == id))
                    {
                        Counters::bump(&self.shared.counters.handoffs);
                        self.manager.health().handed_off();
                        span.in_scope(
                            || tracing::info!(connection = %id, "handoff done: the new connection is in use"),
                        );
                    }
                }
                ConnectionOutput::Retire(id) => {
                    self.stop_using(id);
                    if let Some(conn) = self.open.remove(&id) {
                        let retired = match self.transport.retire(id, conn) {
                            Retirement::Linger(work) => Retired {
                                id,
                                work,
                                closes: false,
                            },
                            Retirement::Drain(work) => Retired {
                                id,
                                work: Some(work),
                                closes: true,
                            },
                        };
                        self.retired.push(retired);
                    }
                }
                ConnectionOutput::Close(id) => {
                    self.stop_using(id);
                    let open = self.open.remove(&id).is_some();
                    let before = self.retired.len();
                    self.retired.retain(|r| r.id != id);
                    if open || self.retired.len() < before {
                        Counters::bump(&self.shared.counters.closed_before_expiry);
                        tracing::info!(connection = %id, "connection closed before its token expires");
                    }
                    self.transport.gone(id, Gone::Closed);
                }
                ConnectionOutput::RelaxTimeouts(relaxed) => {
                    if relaxed.is_some() {
                        Counters::bump(&self.shared.counters.relaxed_windows);
                    }
                    tracing::info!(?relaxed, "response timeouts for announced maintenance");
                    self.trouble_mut().relaxed = relaxed;
                }
                ConnectionOutput::Timeout(at) => return Some(tokio::time::Instant::from_std(at)),
                ConnectionOutput::Idle => return None,
            }
        }
    }

    fn connect(
        &mut self,
        id: ConnectionId,
        generation: Generation,
        timeout: Duration,
        reason: ConnectReason,
        endpoint: Option<&Endpoint>,
    ) {
        match reason {
            ConnectReason::Replacement => {
                Counters::bump(&self.shared.counters.replacements);
                self.manager.health().replaced();
                let span = tracing::info_span!("entraid.connection_replacement", new = %id);
                span.in_scope(|| {
                    tracing::info!(connection = %id, "replacing a connection that could not re-authenticate");
                });
                self.trouble_mut().replacement = Some(span);
            }
            ConnectReason::RenewalSwap => {
                Counters::bump(&self.shared.counters.renewal_swaps);
                tracing::debug!(connection = %id, "renewal: a new connection takes over");
            }
            ConnectReason::Unresponsive => Counters::bump(&self.shared.counters.unresponsive),
            ConnectReason::Handoff => {
                let span =
                    tracing::info_span!("entraid.handoff", new = %id, to = endpoint.map(tracing::field::display));
                span.in_scope(|| tracing::info!(connection = %id, "opening the connection the server moves us to"));
                self.trouble_mut().handoff = Some((id, span));
            }
            ConnectReason::First | ConnectReason::Reconnect => {}
        }
        let client = match endpoint {
            Some(endpoint) => client_at(&self.client, endpoint),
            None => Ok(self.client.clone()),
        };
        let opened = match (client, self.feed.get(generation)) {
            (Ok(client), Some(token)) => client_with_token(&client, token),
            (Err(error), _) => Err(error),
            (_, None) => Err(RedisError::from((ErrorKind::Client, "no token to connect with"))),
        };
        let future = match opened {
            Ok(client) => self.transport.open(id, client, reason, timeout),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        };
        self.pending_connect = Some((id, Box::pin(within(timeout, "opening a connection", future))));
    }

    /// A pending `AUTH` or health `PING` on `id` is dropped; a handoff connection that
    /// goes before it was used (it came after the machine gave up) failed.
    fn stop_using(&mut self, id: ConnectionId) {
        if self.pending_auth.as_ref().is_some_and(|((a, _), _)| *a == id) {
            self.pending_auth = None;
        }
        if let Some(trouble) = &mut self.trouble {
            if trouble.pending_probe.as_ref().is_some_and(|(p, _)| *p == id) {
                trouble.pending_probe = None;
            }
            if let Some((_, span)) = trouble.handoff.take_if(|(handoff, _)| *handoff == id) {
                Counters::bump(&self.shared.counters.handoff_failures);
                span.in_scope(|| tracing::warn!(connection = %id, "the handoff connection came too late; closed"));
            }
        }
    }

    fn trouble_mut(&mut self) -> &mut Trouble {
        self.trouble.get_or_insert_with(Box::default)
    }

    /// Tells callers where to go, when that changed.
    fn publish(&mut self) {
        let open = &self.open;
        if let Some(trouble) = &mut self.trouble {
            if trouble.retrying.is_some_and(|id| open.get(&id).is_none()) {
                trouble.retrying = None;
            }
            if trouble.is_over() {
                self.trouble = None;
            }
        }
        let retrying = usize::from(self.trouble.as_ref().is_some_and(|t| t.retrying.is_some()));
        let draining = self.retired.iter().filter(|r| r.closes).count();
        self.health
            .set(self.manager.health(), self.open.len() + draining, retrying);
        let state = self.feed.for_callers(self.machine.availability());
        let errors_changed = self.feed.errors_changed();
        let (open, transport) = (&self.open, &self.transport);
        let close_grace = self.machine.close_grace();
        // The response timeout for announced maintenance, and whether the handle has it.
        let (relaxed, relaxed_same) = self
            .trouble
            .as_mut()
            .map_or((None, true), |t| (t.relaxed, t.relaxed_published == t.relaxed));
        let changed = self.slot.send_if_modified(|current| {
            let same = relaxed_same
                && match (&*current, &state) {
                    (Slot::Ready(a, _), Ok(Some(b))) => a == b,
                    (Slot::Connecting, Ok(None)) => true,
                    (Slot::Unavailable { errors_changed: a, .. }, Err(_)) => *a == errors_changed,
                    _ => false,
                };
            if !same {
                // Built only when it changed: a handle is a clone of the connection.
                *current = match state {
                    Ok(Some(id)) => match open.get(&id) {
                        Some(conn) => Slot::Ready(id, transport.handle(conn, close_grace, relaxed)),
                        None => Slot::Connecting,
                    },
                    Ok(None) => Slot::Connecting,
                    Err(error) => Slot::Unavailable { error, errors_changed },
                };
            }
            !same
        });
        if let Some(trouble) = &mut self.trouble {
            trouble.relaxed_published = trouble.relaxed;
            if trouble.is_over() {
                self.trouble = None;
            }
        }
        if changed {
            self.transport.published(&self.slot.borrow());
        }
    }
}

impl<T: Transport> Drop for Supervisor<T> {
    fn drop(&mut self) {
        self.health.release(self.manager.health());
        self.slot.send_replace(Slot::Stopped);
        for id in self
            .open
            .ids()
            .chain(self.retired.iter().map(|r| r.id))
            .collect::<Vec<_>>()
        {
            self.transport.gone(id, Gone::Closed);
        }
    }
}

/// The first retired connection whose work ended, and whether that closes it. The
/// futures stay in `retired`: nothing is spawned, so nothing outlives the supervisor.
async fn next_retired(retired: &mut [Retired]) -> (ConnectionId, bool) {
    std::future::poll_fn(|cx| {
        for r in retired.iter_mut() {
            if let Some(work) = &mut r.work
                && work.as_mut().poll(cx).is_ready()
            {
                r.work = None;
                return Poll::Ready((r.id, r.closes));
            }
        }
        Poll::Pending
    })
    .await
}
