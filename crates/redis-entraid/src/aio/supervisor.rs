//! The async executor of the [`SupervisionCore`]: one tokio task per connection owner,
//! [`Supervisor`], does the I/O the core asks for through a [`Transport`], which is only
//! the I/O of one kind of connection, and feeds the results back.
//!
//! ```text
//! token manager ──token──▶ Supervisor ──handle_*──▶ SupervisionCore ──▶ machine
//! SupervisionCore ──poll_io──▶ Supervisor ──open/auth/probe/retire/gone──▶ Transport
//! Transport's futures and reports ──results──▶ Supervisor ──handle_*──▶ SupervisionCore
//! Supervisor ──Slot (watch)──▶ handles (commands)
//! ```
//!
//! This task is the facade's one place that waits on a tokio timer for the machine (its
//! deadline) and bounds the operations the machine timed ([`within`]).

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use entraid_identity::Token;
use entraid_token_manager::{ConnectionId, Generation, Renewal, TokenManagerError, TokenStream};
use redis::{Cmd, ErrorKind, RedisError, RedisResult};
use tokio::sync::watch;

use super::supervision::{BoxFuture, next_token, now, sleep_until, wait_pending, within};
use crate::EntraIdCredentialsProvider;
use crate::connection_config::{ConnectionConfig, ConnectionType};
pub(crate) use crate::supervision::Gone;
pub(crate) use crate::supervision::OpenRequest;
use crate::supervision::{IdMap, Io, Report, Shared, SupervisionCore};
use crate::token_feed::no_token_error;

/// The I/O of one kind of connection, as the [`Supervisor`] asks for it. Every decision
/// (when to open, authenticate, retire, close) is the machine's; a transport waits on no
/// timer of its own.
///
/// The required methods are the I/O every connection type has; the hooks with defaults
/// (bb8's `CustomizeConnection`) are for the types that carry more over a swap.
pub(crate) trait Transport: Send + 'static {
    /// What the transport shares with its handles and readers, in the supervisor's one
    /// shared allocation ([`Shared::of`]).
    type Shared: Send + Sync + 'static;
    /// An open connection, as the supervisor keeps it.
    type Conn: Send + 'static;
    /// What callers are handed to send commands on, once a connection is in use.
    type Handle: Clone + Send + Sync + 'static;

    /// Opens the connection `open` asks for (its client authenticates in its handshake)
    /// within its timeout, and carries over what must be on every connection (session
    /// state, subscriptions). The supervisor bounds the whole with the timeout too.
    fn open(&mut self, open: OpenRequest) -> BoxFuture<RedisResult<Self::Conn>>;

    /// Sends `auth` (the renewal `AUTH`) on `conn`, waiting at most `timeout` for the reply.
    fn auth(&self, conn: &Self::Conn, auth: Cmd, timeout: Duration) -> BoxFuture<RedisResult<()>>;

    /// Sends a health `PING` on `conn`, waiting at most `timeout` for the reply.
    fn probe(&self, conn: &Self::Conn, timeout: Duration) -> BoxFuture<RedisResult<()>>;

    /// What callers send commands on, for the connection in use.
    fn handle(&self, conn: &Self::Conn, view: HandleView) -> Self::Handle;

    /// `conn` takes no new commands; what happens to it until it goes.
    fn retire(&mut self, id: ConnectionId, conn: Self::Conn) -> Retirement;

    /// `id` is gone, for `why`: fail what still runs on it, forget what is kept of it.
    fn gone(&mut self, id: ConnectionId, why: Gone);

    /// Hook: a connection just opened, before it takes over: `Ready`, or the work that
    /// brings it up to date with what changed while it was being opened.
    fn catch_up(&mut self, _id: ConnectionId, conn: Self::Conn) -> CatchUp<Self::Conn> {
        CatchUp::Ready(conn)
    }

    /// Hook: `conn` takes new commands from now on.
    fn took_over(&mut self, _id: ConnectionId, _conn: &Self::Conn) {}

    /// Hook: the transport's own work beside the supervisor's (a subscriber's changes);
    /// resolves with a connection that work found lost. Cancel-safe: the supervisor
    /// polls it in a `select!`.
    fn own_work(&mut self) -> impl Future<Output = ConnectionId> + Send + '_ {
        std::future::pending()
    }

    /// Hook: callers were told `slot`; what the transport serves on its own follows it.
    fn published(&mut self, _slot: &Slot<Self::Handle>) {}

    /// Hook: when the transport's own work must be woken (a deadline of its own sans-IO
    /// machine), for the supervisor's one timer.
    fn deadline(&self) -> Option<std::time::Instant> {
        None
    }

    /// Hook: the supervisor's timer fired at `now`.
    fn handle_timeout(&mut self, _now: std::time::Instant) {}
}

/// What a handle is built for: the connection in use is closed `close_grace` before its
/// token expires; `relaxed` is the response timeout commands get while the server
/// announces maintenance, instead of the configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandleView {
    pub(crate) close_grace: Option<Duration>,
    pub(crate) relaxed: Option<Duration>,
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
        core: SupervisionCore::new(machine, client, provider.manager_handle(), shared.clone()),
        transport,
        tokens: Some(manager.subscribe()),
        open: IdMap::with_capacity(1),
        retired: Vec::new(),
        pending_connect: None,
        pending_auth: None,
        slot: slot_tx,
        rare: None,
    };
    // Fed before the task starts, so callers never see "no token" at the start.
    supervisor.core.handle_token(now(), first_token);
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

/// The executor's rare state, boxed: one supervisor lives beside every connection.
#[derive(Default)]
struct Rare {
    /// A health `PING` waiting for its reply.
    pending_probe: Option<(ConnectionId, BoxFuture<RedisResult<()>>)>,
    /// While the provider's token manager is stopped: the wait for its next start.
    restart: Option<((), BoxFuture<TokenStream>)>,
    /// The relaxed response timeout the handle in the slot has.
    relaxed_published: Option<Duration>,
}

impl Rare {
    fn is_over(&self) -> bool {
        self.pending_probe.is_none() && self.restart.is_none() && self.relaxed_published.is_none()
    }
}

/// The end of a rare pending operation (a health `PING`, the wait for a stopped provider
/// to start again); never resolves without one.
async fn rare_wake<C>(rare: &mut Option<Box<Rare>>) -> Wake<C> {
    let Some(rare) = rare.as_deref_mut() else {
        return std::future::pending().await;
    };
    tokio::select! {
        ((), tokens) = wait_pending(&mut rare.restart) => Wake::Started(tokens),
        (id, result) = wait_pending(&mut rare.pending_probe) => Wake::Probed(id, result),
    }
}

enum Wake<C> {
    Token(Option<Result<Token, TokenManagerError>>),
    /// The provider runs a token manager again after a `stop`.
    Started(TokenStream),
    Connected(ConnectionId, RedisResult<C>),
    Auth(ConnectionId, Generation, RedisResult<()>),
    Lost(ConnectionId),
    Reports(std::collections::VecDeque<(ConnectionId, Report)>),
    Probed(ConnectionId, RedisResult<()>),
    Drained(ConnectionId, bool),
    Timer,
}

/// Executes one [`SupervisionCore`] on tokio, doing its I/O through `T`.
pub(crate) struct Supervisor<T: Transport> {
    core: SupervisionCore<T::Shared>,
    transport: T,
    /// `None` while the provider's token manager is stopped.
    tokens: Option<TokenStream>,
    open: IdMap<T::Conn>,
    retired: Vec<Retired>,
    pending_connect: Option<(ConnectionId, BoxFuture<RedisResult<T::Conn>>)>,
    pending_auth: PendingAuth,
    slot: watch::Sender<Slot<T::Handle>>,
    rare: Option<Box<Rare>>,
}

impl<T: Transport> Supervisor<T> {
    pub(crate) async fn run(mut self) {
        loop {
            let deadline = self.act();
            self.publish();
            let deadline = match (deadline, self.transport.deadline().map(tokio::time::Instant::from_std)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wake = tokio::select! {
                item = next_token(&mut self.tokens) => Wake::Token(item),
                wake = rare_wake(&mut self.rare) => wake,
                (id, result) = wait_pending(&mut self.pending_connect) => Wake::Connected(id, result),
                ((id, generation), result) = wait_pending(&mut self.pending_auth) => Wake::Auth(id, generation, result),
                reports = self.core.shared().reports.next() => Wake::Reports(reports),
                id = self.transport.own_work() => Wake::Lost(id),
                (id, closes) = next_retired(&mut self.retired) => Wake::Drained(id, closes),
                () = sleep_until(deadline) => Wake::Timer,
            };
            self.handle(now(), wake);
        }
    }

    fn handle(&mut self, now: std::time::Instant, wake: Wake<T::Conn>) {
        match wake {
            Wake::Token(Some(Ok(token))) => self.core.handle_token(now, token),
            Wake::Token(Some(Err(TokenManagerError::RuntimeShutDown))) => {
                // The provider starts the manager again on a runtime of its own.
                self.tokens = self.core.manager().resubscribe();
            }
            Wake::Token(Some(Err(TokenManagerError::TokenExpired))) => {
                self.core.handle_token_lost(now, TokenManagerError::TokenExpired);
            }
            Wake::Token(Some(Err(error))) => self.core.handle_token_error(error),
            Wake::Token(None) => {
                // The token manager stopped: the connection lives until its token ends,
                // and follows the provider if it is started again.
                self.core.handle_token_lost(now, TokenManagerError::Stopped);
                self.tokens = None;
                let manager = self.core.manager().clone();
                self.rare_mut().restart = Some(((), Box::pin(async move { manager.next_start().await })));
            }
            Wake::Started(tokens) => {
                self.rare_mut().restart = None;
                self.tokens = Some(tokens);
            }
            Wake::Connected(id, Ok(conn)) => {
                self.pending_connect = None;
                match self.transport.catch_up(id, conn) {
                    // Bounded as its connect was: by the machine's connect deadline, after
                    // which a late success is closed.
                    CatchUp::Pending(work) => self.pending_connect = Some((id, work)),
                    CatchUp::Ready(conn) => {
                        self.open.insert(id, conn);
                        self.core.handle_opened(now, id);
                    }
                }
            }
            Wake::Connected(id, Err(error)) => {
                self.pending_connect = None;
                self.core.handle_open_failed(now, id, error);
            }
            Wake::Auth(id, generation, result) => {
                self.pending_auth = None;
                self.core.handle_auth_result(now, id, generation, result);
            }
            Wake::Lost(id) => self.core.handle_lost(now, id),
            Wake::Reports(reports) => {
                for (id, report) in reports {
                    match report {
                        Report::Lost => self.core.handle_lost(now, id),
                        Report::TimedOut => self.core.handle_reply_timeout(now, id),
                        Report::Maintenance(notice) => self.core.handle_maintenance(now, id, notice),
                    }
                }
            }
            Wake::Probed(id, result) => {
                self.rare_mut().pending_probe = None;
                self.core.handle_probe_result(now, id, result);
            }
            Wake::Drained(id, closes) => {
                if closes {
                    self.core.handle_drained(now, id);
                }
            }
            Wake::Timer => {
                self.core.handle_timeout(now);
                self.transport.handle_timeout(now);
            }
        }
    }

    /// Does the I/O the core asks for; returns when to wake it next.
    fn act(&mut self) -> Option<tokio::time::Instant> {
        loop {
            match self.core.poll_io(now()) {
                Io::Open(open) => {
                    // The machine gave up on the attempt still pending (its deadline
                    // passed first): the transport forgets it before the next one.
                    if let Some((stale, _)) = self.pending_connect.take() {
                        self.transport.gone(stale, Gone::Lost);
                    }
                    let (id, timeout) = (open.id, open.timeout);
                    let future = self.transport.open(open);
                    self.pending_connect = Some((id, Box::pin(within(timeout, "opening a connection", future))));
                }
                Io::Auth(request) => {
                    let (id, timeout) = (request.id, request.timeout);
                    let auth = match self.open.get(&id) {
                        Some(conn) => self.transport.auth(conn, request.command, timeout),
                        None => Box::pin(std::future::ready(Err(not_open()))),
                    };
                    let pending = within(timeout, "AUTH", auth);
                    self.pending_auth = Some(((id, request.generation), Box::pin(pending)));
                }
                Io::Probe { id, timeout } => {
                    let probe = match self.open.get(&id) {
                        Some(conn) => self.transport.probe(conn, timeout),
                        None => Box::pin(std::future::ready(Err(not_open()))),
                    };
                    let probe = within(timeout, "a health PING", probe);
                    self.rare_mut().pending_probe = Some((id, Box::pin(probe)));
                }
                Io::TakeOver(id) => {
                    if let Some(conn) = self.open.get(&id) {
                        self.transport.took_over(id, conn);
                    }
                }
                Io::Retire(id) => {
                    self.stop_waiting_on(id);
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
                Io::Gone { id, why } => {
                    self.stop_waiting_on(id);
                    self.open.remove(&id);
                    self.retired.retain(|r| r.id != id);
                    self.transport.gone(id, why);
                }
                Io::Wait(at) => return at.map(tokio::time::Instant::from_std),
            }
        }
    }

    /// A pending `AUTH` or health `PING` on `id` is dropped.
    fn stop_waiting_on(&mut self, id: ConnectionId) {
        if self.pending_auth.as_ref().is_some_and(|((a, _), _)| *a == id) {
            self.pending_auth = None;
        }
        if let Some(rare) = &mut self.rare
            && rare.pending_probe.as_ref().is_some_and(|(p, _)| *p == id)
        {
            rare.pending_probe = None;
        }
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Tells callers where to go, when that changed.
    fn publish(&mut self) {
        let draining = self.retired.iter().filter(|r| r.closes).count();
        self.core.publish_health(self.open.len() + draining);
        let state = self.core.for_callers();
        let errors_changed = self.core.errors_changed();
        let view = HandleView {
            close_grace: self.core.close_grace(),
            relaxed: self.core.relaxed(),
        };
        // Whether the handle has the relaxed timeout in force.
        let relaxed_same = self.rare.as_ref().and_then(|r| r.relaxed_published) == view.relaxed;
        let (open, transport) = (&self.open, &self.transport);
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
                        Some(conn) => Slot::Ready(id, transport.handle(conn, view)),
                        None => Slot::Connecting,
                    },
                    Ok(None) => Slot::Connecting,
                    Err(error) => Slot::Unavailable { error, errors_changed },
                };
            }
            !same
        });
        if !relaxed_same {
            self.rare_mut().relaxed_published = view.relaxed;
        }
        if self.rare.as_ref().is_some_and(|r| r.is_over()) {
            self.rare = None;
        }
        if changed {
            self.transport.published(&self.slot.borrow());
        }
    }
}

/// An operation asked for a connection the supervisor no longer holds.
fn not_open() -> RedisError {
    RedisError::from((ErrorKind::Client, "no such connection"))
}

impl<T: Transport> Drop for Supervisor<T> {
    fn drop(&mut self) {
        self.slot.send_replace(Slot::Stopped);
        for id in self
            .open
            .ids()
            .chain(self.retired.iter().map(|r| r.id))
            .chain(self.pending_connect.as_ref().map(|(id, _)| *id))
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use entraid_identity::{IdentityError, IdentityProvider};

    use super::*;
    use crate::supervision::Report;

    /// One token, valid for an hour, every time.
    struct Static;

    #[async_trait::async_trait]
    impl IdentityProvider for Static {
        async fn request_token(&self) -> Result<Token, IdentityError> {
            let now = SystemTime::now();
            Ok(Token::new("secret", "oid", now + Duration::from_secs(3600), now))
        }
    }

    /// What the fake transport was asked to do.
    #[derive(Default)]
    struct Record {
        opened: Vec<ConnectionId>,
        gone: Vec<(ConnectionId, Gone)>,
    }

    /// Connections that open at once; the second one's catch-up never ends.
    struct Fake(Arc<Mutex<Record>>);

    impl Transport for Fake {
        type Shared = ();
        type Conn = ConnectionId;
        type Handle = ConnectionId;

        fn open(&mut self, open: OpenRequest) -> BoxFuture<RedisResult<ConnectionId>> {
            self.0.lock().unwrap().opened.push(open.id);
            Box::pin(std::future::ready(Ok(open.id)))
        }

        fn catch_up(&mut self, _id: ConnectionId, conn: ConnectionId) -> CatchUp<ConnectionId> {
            if self.0.lock().unwrap().opened.len() == 2 {
                return CatchUp::Pending(Box::pin(std::future::pending()));
            }
            CatchUp::Ready(conn)
        }

        fn auth(&self, _conn: &ConnectionId, _auth: Cmd, _timeout: Duration) -> BoxFuture<RedisResult<()>> {
            Box::pin(std::future::ready(Ok(())))
        }

        fn probe(&self, _conn: &ConnectionId, _timeout: Duration) -> BoxFuture<RedisResult<()>> {
            Box::pin(std::future::ready(Ok(())))
        }

        fn handle(&self, conn: &ConnectionId, _view: HandleView) -> ConnectionId {
            *conn
        }

        fn retire(&mut self, _id: ConnectionId, _conn: ConnectionId) -> Retirement {
            Retirement::Linger(None)
        }

        fn gone(&mut self, id: ConnectionId, why: Gone) {
            self.0.lock().unwrap().gone.push((id, why));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_the_supervisor_stops_waiting_for_goes_through_gone() {
        let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(Static);
        provider
            .try_start_with_config(entraid_token_manager::TokenManagerConfig::default())
            .unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let shared = Shared::new(());
        let handle = start(Start {
            client: redis::Client::open("redis://127.0.0.1:1").unwrap(),
            provider: &provider,
            config: &ConnectionConfig::new(),
            kind: ConnectionType::Manager,
            renewal: Renewal::InPlace,
            transport: Fake(record.clone()),
            shared,
            what: "test",
        })
        .await
        .unwrap();
        let (first, _) = handle.live().await.unwrap();
        // The first connection drops; the one opened next never finishes catching up, and
        // the machine gives up on it at its connect timeout and opens a third.
        handle.shared.reports.report(first, Report::Lost);
        let third = loop {
            match handle.live().await {
                Ok((id, _)) if id != first => break id,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (opened, gone) = {
            let record = record.lock().unwrap();
            (record.opened.clone(), record.gone.clone())
        };
        assert_eq!(opened.len(), 3, "{opened:?}");
        assert_eq!(third, opened[2]);
        assert!(
            gone.contains(&(opened[1], Gone::Lost)),
            "the attempt given up on is forgotten by the transport: {gone:?}"
        );
    }
}
