//! [`ConnectionManager`]: a multiplexed connection that owns its re-authentication.
//!
//! The [`Supervisor`](super::supervisor) drives it; this module is the handle commands
//! go through and [`ManagerTransport`], the I/O on `MultiplexedConnection`s: open with a
//! token and the RESP3 subscriptions, `AUTH`, and failing what still runs on a
//! connection the machine closed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use entraid_token_manager::{ConnectionId, Renewal};
use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, PushInfo, PushKind, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::Notify;

use super::subscriptions::{Change, ChangeRequest, Subscriber, SubscriptionActor, Subscriptions, request_change};
use super::supervision::{BoxFuture, now};
use super::supervisor::{
    CatchUp, Gone, HandleView, OpenRequest, Retirement, Slot, Start, SupervisorHandle, Transport, start, stopped_error,
};
use crate::EntraIdCredentialsProvider;
use crate::commands;
use crate::connection_config::{ConnectionConfig, ConnectionType};
use crate::maintenance::{self, MaintenanceNotifications, MovingEndpointType, OptIn};
use crate::session::{self, Effect, SessionState};
use crate::supervision::{ConnectionStats, Counters, Mailbox, Report, Shared};

/// How a [`ConnectionManager`] connects, times out and re-authenticates: the one
/// [`ConnectionConfig`] of every connection type.
pub type ConnectionManagerConfig = ConnectionConfig;

/// Connections the supervisor closed, for the commands still running on them. Only the
/// last few are kept: a command outlives at most the close of its own connection. Inline,
/// so no allocation per manager.
#[derive(Default)]
struct Closures {
    recent: Mutex<[Option<ConnectionId>; 4]>,
    notify: Notify,
}

impl Closures {
    fn close(&self, id: ConnectionId) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.rotate_right(1);
        recent[0] = Some(id);
        drop(recent);
        self.notify.notify_waiters();
    }

    fn is_closed(&self, id: ConnectionId) -> bool {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&Some(id))
    }

    /// Resolves when `id` is closed.
    async fn closed(&self, id: ConnectionId) -> RedisError {
        loop {
            let notified = self.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed(id) {
                return closed_error();
            }
            notified.await;
        }
    }
}

/// Until when a blocking command (`BLPOP`, `XREAD … BLOCK`, `WAIT`, …) may hold this
/// manager's replies: a command that times out before then waited behind it, which says
/// nothing of the network path. In milliseconds since a process-wide origin, so one atomic
/// beside every manager; `u64::MAX` while one blocks for ever (until it ends).
#[derive(Default)]
struct Blocked {
    until_ms: AtomicU64,
}

impl Blocked {
    /// A blocking command starts at `now`, for `time` (`None`: for ever).
    fn hold(&self, now: std::time::Instant, time: Option<Duration>) {
        // The time is the user's (`BLPOP key 1e15`): past `Instant`'s range it is for ever.
        let until = time
            .and_then(|time| now.checked_add(time))
            .map_or(u64::MAX, |until| millis(now, until));
        self.until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// A command that blocked for ever ended.
    fn release_for_ever(&self) {
        let _ = self
            .until_ms
            .compare_exchange(u64::MAX, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether a blocking command may still hold the replies at `now`.
    fn holds(&self, now: std::time::Instant) -> bool {
        millis(now, now) < self.until_ms.load(Ordering::Relaxed)
    }
}

/// `at` in milliseconds since a process-wide origin: the `now` of the first call (never a
/// deadline ahead, which would put every later `now` before it).
fn millis(now: std::time::Instant, at: std::time::Instant) -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(|| now);
    u64::try_from(at.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX - 1)
}

/// What the handles and the transport share beside the supervisor's [`Shared`] (and
/// the settings the transport reads: one supervisor lives beside every connection, so
/// its transport is kept to a pointer).
struct ManagerShared {
    closures: Closures,
    blocked: Blocked,
    /// RESP3 subscription changes from the handles, for the supervisor's task (boxed, and
    /// only on RESP3, which alone takes them).
    changes: Option<Box<Mailbox<ChangeRequest>>>,
    /// Session state the user set (client name and the like), replayed on every new
    /// connection (boxed when set: most managers never set any).
    session: Mutex<Option<Box<SessionState>>>,
    response_timeout: Option<Duration>,
    push_sender: Option<Arc<dyn AsyncPushSender>>,
    /// Whether connections ask for maintenance notifications, and how they name a move.
    maintenance: MaintenanceNotifications,
    moving_endpoint_type: MovingEndpointType,
}

/// A Redis connection that stays authenticated with Entra ID for as long as it lives.
///
/// Like `redis::aio::ConnectionManager` (cloneable, multiplexed, reconnects by itself),
/// but it owns re-authentication instead of leaving it to the redis crate's per-connection
/// task:
///
/// - a new connection authenticates once, in its handshake, with the current token;
/// - each renewal is sent as `AUTH`; a failed or timed-out `AUTH` is retried with
///   backoff; if none succeeds by a margin before the token in force expires, a new
///   connection with the current token takes over and the old one is closed once its
///   commands finish, and in any case before the server would cut it;
/// - a dropped connection is opened again; while no valid token exists, commands fail at
///   once with an error that says so, and the manager recovers by itself when a token is
///   available again;
/// - RESP3 subscriptions made through [`subscribe`](Self::subscribe) and
///   [`psubscribe`](Self::psubscribe) are made again on every new connection.
///
/// A blocking command (`BLPOP`, `XREAD BLOCK`) holds the connection's replies: an `AUTH`
/// queued behind it waits. If it is still blocked when the connection must be closed
/// (a quarter of the replace margin before the token expires) it fails with an I/O
/// error; give blocking commands a timeout shorter than that.
///
/// ```no_run
/// use redis::AsyncCommands;
/// use redis_entraid::EntraIdCredentialsProvider;
///
/// # async fn run() -> redis::RedisResult<()> {
/// let provider = EntraIdCredentialsProvider::new_system_assigned_managed_identity()?;
/// let client = redis::Client::open("rediss://my-cache.westeurope.redis.azure.net:10000")?;
/// let mut connection = redis_entraid::aio::ConnectionManager::new(client, provider).await?;
/// let () = connection.set("foo", "bar").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConnectionManager {
    inner: Arc<Inner>,
}

struct Inner {
    supervisor: SupervisorHandle<Live, ManagerShared>,
    db: i64,
    resp3: bool,
}

impl fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("state", &self.inner.supervisor.state())
            .field("stats", &self.stats())
            .finish()
    }
}

impl ConnectionManager {
    /// Connects with the provider's current token (waiting for the first one) and keeps
    /// the connection authenticated from then on. Needs a tokio runtime.
    pub async fn new(client: redis::Client, provider: EntraIdCredentialsProvider) -> RedisResult<Self> {
        Self::new_with_config(client, provider, ConnectionManagerConfig::new()).await
    }

    /// Like [`new`](Self::new), with timeouts, backoff, spread and a RESP3 push sender.
    pub async fn new_with_config(
        client: redis::Client,
        provider: EntraIdCredentialsProvider,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Self> {
        let settings = client.get_connection_info().redis_settings();
        let (resp3, db) = (settings.protocol().supports_resp3(), settings.db());
        let shared = Shared::new(ManagerShared {
            closures: Closures::default(),
            blocked: Blocked::default(),
            changes: resp3.then(Box::default),
            session: Mutex::default(),
            response_timeout: config.response_timeout(ConnectionType::Manager),
            push_sender: config.push_sender(),
            maintenance: config.maintenance_notifications(),
            moving_endpoint_type: config.moving_endpoint_type(client.get_connection_info().addr()),
        });
        // Subscriptions need RESP3 (refused up front on RESP2): only then the record.
        let subscriptions = resp3.then(|| {
            let change_timeout = config
                .response_timeout(ConnectionType::Manager)
                .unwrap_or(Duration::MAX);
            Box::new(SubscriptionActor::new(
                config.policy(&provider).connect_timeout,
                change_timeout,
            ))
        });
        let transport = ManagerTransport {
            resp3,
            shared: shared.clone(),
            subscriptions,
        };
        let supervisor = start(Start {
            client,
            provider: &provider,
            config: &config,
            kind: ConnectionType::Manager,
            renewal: Renewal::InPlace,
            transport,
            shared,
            what: "connection manager",
        })
        .await?;
        Ok(ConnectionManager {
            inner: Arc::new(Inner { supervisor, db, resp3 }),
        })
    }

    /// What happened to this manager's connections so far.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats::of(&self.inner.supervisor.shared.counters)
    }

    /// Subscribes to `channel` (RESP3): messages reach the configured push sender, and
    /// the subscription is made again on every new connection.
    pub async fn subscribe(&mut self, channel: impl redis::ToRedisArgs) -> RedisResult<()> {
        let names = channel.to_redis_args();
        self.change(Change::Subscribe, names).await
    }

    /// Unsubscribes from `channel`, on this connection and the ones to come.
    pub async fn unsubscribe(&mut self, channel: impl redis::ToRedisArgs) -> RedisResult<()> {
        let names = channel.to_redis_args();
        self.change(Change::Unsubscribe, names).await
    }

    /// Subscribes to the channels matching `pattern` (RESP3); see [`subscribe`](Self::subscribe).
    pub async fn psubscribe(&mut self, pattern: impl redis::ToRedisArgs) -> RedisResult<()> {
        let names = pattern.to_redis_args();
        self.change(Change::PSubscribe, names).await
    }

    /// Unsubscribes from `pattern`, on this connection and the ones to come.
    pub async fn punsubscribe(&mut self, pattern: impl redis::ToRedisArgs) -> RedisResult<()> {
        let names = pattern.to_redis_args();
        self.change(Change::PUnsubscribe, names).await
    }

    /// Hands `change` to the manager's task, which makes it on the connection in use and
    /// records it for the connections to come once the server confirmed it (or the
    /// connection dropped under it: the next one makes it). A refused or timed-out change
    /// is not recorded. With no connection in use it is recorded, made by the next one,
    /// and the caller is told why it is not in force yet.
    async fn change(&self, change: Change, names: Vec<Vec<u8>>) -> RedisResult<()> {
        if !self.inner.resp3 {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "subscriptions on a ConnectionManager need RESP3",
                "add ?protocol=resp3 to the URL and set a push sender, or use \
                 redis_entraid::aio::PubSub (RESP2 or RESP3)"
                    .to_owned(),
            )));
        }
        let Some(changes) = &self.inner.supervisor.shared.of.changes else {
            return Err(stopped_error("connection manager"));
        };
        request_change(changes, change, names, "connection manager").await
    }

    /// Runs `send` on the connection in use; fails it if the machine closes that
    /// connection first, and reports it if it dropped.
    async fn send<T>(
        &self,
        blocking: Option<Option<Duration>>,
        send: impl AsyncFnOnce(&mut MultiplexedConnection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let (id, mut live) = self.inner.supervisor.live().await?;
        let blocked = &self.inner.supervisor.shared.of.blocked;
        if let Some(time) = blocking {
            blocked.hold(now(), time);
        }
        let result = if live.watch_close {
            tokio::select! {
                biased;
                result = send(&mut live.connection) => result,
                error = self.inner.supervisor.shared.of.closures.closed(id) => Err(error),
            }
        } else {
            send(&mut live.connection).await
        };
        if blocking == Some(None) {
            blocked.release_for_ever();
        }
        // A command that timed out behind a blocking one (or the blocking one itself) met
        // a busy connection, not a silent path: no health PING is queued behind it.
        let timed_out = result.as_ref().is_err_and(RedisError::is_timeout);
        if !(timed_out && (blocking.is_some() || blocked.holds(now()))) {
            self.inner.supervisor.report(id, &result);
        }
        result
    }
}

impl ConnectionManager {
    /// What `cmd` does to the connection: an error for a command a swap would undo
    /// (session state that cannot be carried, a transaction that is not one pipeline).
    fn effect(cmd: &Cmd, in_atomic_pipeline: bool) -> RedisResult<Effect> {
        let mut args = cmd.args_iter().map(arg_bytes);
        let Some(name) = args.next() else {
            return Ok(Effect::Plain);
        };
        match session::effect(name, args.next()) {
            Effect::Refused(what, instead) => Err(session::refused(what, instead)),
            Effect::Multi | Effect::Exec | Effect::Discard | Effect::Watch | Effect::Unwatch if !in_atomic_pipeline => {
                Err(session::refused(
                    "MULTI, EXEC, DISCARD and WATCH are refused on a multiplexed connection: other \
                     tasks' commands and a renewal AUTH would land inside the transaction",
                    "send the transaction as one pipeline (redis::pipe().atomic()), or use \
                     redis_entraid::Connection for WATCH",
                ))
            }
            effect => Ok(effect),
        }
    }

    /// The server accepted `cmd`, of `effect`: session state is recorded for the
    /// connections to come.
    fn accepted(&self, cmd: &Cmd, effect: Effect) {
        if let Effect::Setting(setting) = effect {
            let args: Vec<&[u8]> = cmd.args_iter().skip(1).map(arg_bytes).collect();
            self.inner
                .supervisor
                .shared
                .of
                .session
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_default()
                .record(setting, &args);
        }
    }
}

impl redis::aio::ConnectionLike for ConnectionManager {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let effect = Self::effect(cmd, false)?;
            let blocking = session::blocking_time(cmd.args_iter().map(arg_bytes));
            let result = self
                .send(blocking, async move |c: &mut MultiplexedConnection| {
                    c.send_packed_command(cmd).await
                })
                .await;
            if result.as_ref().is_ok_and(|v| !matches!(v, Value::ServerError(_))) {
                self.accepted(cmd, effect);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let effects = pipeline
                .cmd_iter()
                .map(|cmd| Self::effect(cmd, pipeline.is_transaction()))
                .collect::<RedisResult<Vec<_>>>()?;
            // The longest any command of the pipeline may block.
            let blocking = pipeline
                .cmd_iter()
                .filter_map(|cmd| session::blocking_time(cmd.args_iter().map(arg_bytes)))
                .reduce(|a, b| a.zip(b).map(|(a, b)| a.max(b)));
            let result = self
                .send(blocking, async move |c: &mut MultiplexedConnection| {
                    c.send_packed_commands(pipeline, offset, count).await
                })
                .await;
            if let Ok(replies) = &result {
                let accepted = session::accepted(replies, effects.len(), pipeline.is_transaction());
                for ((cmd, effect), accepted) in pipeline.cmd_iter().zip(effects).zip(accepted) {
                    if accepted {
                        self.accepted(cmd, effect);
                    }
                }
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}

/// An argument's bytes (a cursor, which no command we look at has, as none).
fn arg_bytes(arg: redis::Arg<&[u8]>) -> &[u8] {
    match arg {
        redis::Arg::Simple(bytes) => bytes,
        // `Arg` is the redis crate's, and `non_exhaustive`.
        _ => &[],
    }
}

/// The response timeout commands get: the configured one, or during announced
/// maintenance the relaxed one if that is longer. Maintenance never shortens a timeout,
/// and no timeout stays none (a `BLPOP key 12` on a manager without one must not fail
/// at the relaxed 10 s).
fn relaxed_timeout(configured: Option<Duration>, relaxed: Option<Duration>) -> Option<Duration> {
    match (configured, relaxed) {
        (Some(configured), Some(relaxed)) => Some(configured.max(relaxed)),
        (configured, _) => configured,
    }
}

/// What a command gets when the machine closes its connection (before the token expires)
/// with its reply still outstanding. It may have run, so it is a client error, which no
/// retry loop repeats on its own (`RetryMethod::NoRetry`, not an I/O error).
fn closed_error() -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "connection closed before its Entra ID token expired, with this command's reply outstanding",
        "the command may have run: repeat it only if it is safe to run twice. A blocking command \
         longer than the token's remaining life? Give it a timeout shorter than the replace margin"
            .to_owned(),
    ))
}

/// Forwards a connection's RESP3 pushes to the user and reports its disconnection.
struct PushForwarder {
    id: ConnectionId,
    user: Option<Arc<dyn AsyncPushSender>>,
    supervisor: Arc<Shared<ManagerShared>>,
}

impl AsyncPushSender for PushForwarder {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::Disconnection {
            // The manager reconnects by itself; the user's sender does not need this.
            self.supervisor.reports.report(self.id, Report::Lost);
            return Ok(());
        }
        // The server's maintenance notifications are the supervisor's, not the user's.
        if let Some(notice) = maintenance::notice(&info.kind, &info.data) {
            self.supervisor.reports.report(self.id, Report::Maintenance(notice));
            return Ok(());
        }
        match &self.user {
            Some(user) => user.send(info),
            None => Ok(()),
        }
    }
}

/// The manager's I/O on `MultiplexedConnection`s.
struct ManagerTransport {
    resp3: bool,
    shared: Arc<Shared<ManagerShared>>,
    /// The RESP3 subscription record (boxed; `None` on RESP2, which refuses them).
    subscriptions: Option<Box<SubscriptionActor>>,
}

/// The connection commands go to.
#[derive(Clone)]
struct Live {
    connection: MultiplexedConnection,
    /// Whether a command may outlive the close of its connection: then it is failed at
    /// the close, so the socket closes before the server would cut it.
    watch_close: bool,
}

/// A manager's connection, with what it subscribed to when it opened.
struct Managed {
    connection: MultiplexedConnection,
    /// `None` for none (most managers subscribe to nothing, and one lives beside every
    /// connection); the record follows the connection in use once it takes over.
    subscribed: Option<Box<Subscribed>>,
}

/// What a new connection made of the subscription record, and what the server refused.
#[derive(Default)]
struct Subscribed {
    applied: Subscriptions,
    refused: Subscriptions,
}

impl Managed {
    /// Subscribes `connection` from `from` to `to`, keeping what the server refused.
    async fn subscribe(
        connection: MultiplexedConnection,
        from: Subscriptions,
        to: Subscriptions,
    ) -> RedisResult<Managed> {
        if from == to {
            return Ok(Managed {
                connection,
                subscribed: None,
            });
        }
        // Subscription commands have no timeout of their own beyond the connection's.
        let refused = Subscriber::Resp3(connection.clone())
            .reconcile(&from, &to, Duration::MAX)
            .await?;
        let mut applied = to;
        applied.remove(&refused);
        Ok(Managed {
            connection,
            subscribed: Some(Box::new(Subscribed { applied, refused })),
        })
    }
}

impl ManagerTransport {
    /// The opt-in a new connection sends, unless maintenance notifications are off: by
    /// configuration, on RESP2 (no pushes), or after the server refused them in `Auto`.
    fn maintenance_opt_in(&self) -> Option<(MaintenanceNotifications, Cmd)> {
        let mode = self.shared.of.maintenance;
        let refused = Counters::get(&self.shared.counters.maintenance_refused) > 0;
        match mode {
            MaintenanceNotifications::Disabled => None,
            _ if !self.resp3 || (refused && mode == MaintenanceNotifications::Auto) => None,
            MaintenanceNotifications::Auto | MaintenanceNotifications::Enabled => {
                Some((mode, maintenance::opt_in(self.shared.of.moving_endpoint_type)))
            }
        }
    }
}

impl Transport for ManagerTransport {
    type Shared = ManagerShared;
    type Conn = Managed;
    type Handle = Live;

    /// Authenticated in its handshake, with the user's session state and subscriptions.
    fn open(&mut self, open: OpenRequest) -> BoxFuture<RedisResult<Managed>> {
        let OpenRequest {
            id, client, timeout, ..
        } = open;
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(self.shared.of.response_timeout);
        if self.resp3 {
            config = config.set_push_sender(PushForwarder {
                id,
                user: self.shared.of.push_sender.clone(),
                supervisor: self.shared.clone(),
            });
        }
        let shared = self.shared.clone();
        let target = self.subscriptions.as_ref().map(|s| s.target()).unwrap_or_default();
        let opt_in = self.maintenance_opt_in();
        let replay = self
            .shared
            .of
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|session| session.replay())
            .unwrap_or_default();
        Box::pin(async move {
            let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
            // Maintenance notifications, asked for before the connection takes a command.
            if let Some((mode, command)) = opt_in {
                let answer = command.query_async::<Value>(&mut connection).await;
                if maintenance::opt_in_outcome(mode, answer)? == OptIn::Refused {
                    Counters::bump_once(&shared.counters.maintenance_refused);
                }
            }
            // The user's session state, before the connection takes a command; what the
            // server refuses is dropped from the record (it would fail every connection).
            for (setting, command) in replay {
                if let Err(error) = command.query_async::<()>(&mut connection).await {
                    session::refused_on_replay(setting, error)?;
                    if let Some(session) = shared
                        .of
                        .session
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_mut()
                    {
                        session.forget(setting);
                    }
                    Counters::bump(&shared.counters.settings_refused);
                }
            }
            Managed::subscribe(connection, Subscriptions::default(), target).await
        })
    }

    /// Makes the subscriptions changed while it was being opened, so none misses the
    /// connection that takes over.
    fn catch_up(&mut self, _id: ConnectionId, mut conn: Managed) -> CatchUp<Managed> {
        let Some(subscriptions) = &mut self.subscriptions else {
            return CatchUp::Ready(conn);
        };
        let Subscribed { applied, refused } = conn.subscribed.take().map(|s| *s).unwrap_or_default();
        match subscriptions.catch_up(&applied, refused, &self.shared.counters) {
            None => {
                conn.subscribed = (!applied.is_empty()).then(|| {
                    Box::new(Subscribed {
                        applied,
                        refused: Subscriptions::default(),
                    })
                });
                CatchUp::Ready(conn)
            }
            Some((from, to)) => CatchUp::Pending(Box::pin(Managed::subscribe(conn.connection, from, to))),
        }
    }

    fn took_over(&mut self, id: ConnectionId, conn: &Managed) {
        if let Some(subscriptions) = &mut self.subscriptions {
            let applied = conn.subscribed.as_ref().map(|s| s.applied.clone()).unwrap_or_default();
            let subscriber = Subscriber::Resp3(conn.connection.clone());
            subscriptions.took_over(id, subscriber, applied, &self.shared.counters);
        }
    }

    fn auth(&self, conn: &Managed, auth: Cmd, timeout: Duration) -> BoxFuture<RedisResult<()>> {
        let mut connection = conn.connection.clone();
        // Its own timeout, not the commands' (500 ms by default): a stall of a few
        // seconds at a rotation is survived by waiting.
        connection.set_response_timeout(timeout);
        Box::pin(async move {
            auth.query_async::<Value>(&mut connection)
                .await
                .and_then(commands::auth_accepted)
        })
    }

    fn probe(&self, conn: &Managed, timeout: Duration) -> BoxFuture<RedisResult<()>> {
        let mut connection = conn.connection.clone();
        connection.set_response_timeout(timeout);
        Box::pin(async move { commands::health_ping().query_async::<()>(&mut connection).await })
    }

    /// A command whose response timeout is shorter than the close grace ends (its reply
    /// or its timeout) before the server would cut a closed connection: it needs no watch
    /// on the close, which costs two lock round trips per command.
    fn handle(&self, conn: &Managed, view: HandleView) -> Live {
        let HandleView { close_grace, relaxed } = view;
        let configured = self.shared.of.response_timeout;
        let timeout = relaxed_timeout(configured, relaxed);
        let outlives_close = match (timeout, close_grace) {
            (Some(timeout), Some(grace)) => timeout >= grace,
            (None, _) | (_, None) => true,
        };
        let mut connection = conn.connection.clone();
        if let Some(timeout) = timeout.filter(|_| timeout != configured) {
            connection.set_response_timeout(timeout);
        }
        Live {
            connection,
            watch_close: outlives_close,
        }
    }

    /// A retired subscribed connection may hold messages the server sent before the new
    /// connection's subscriptions were confirmed, still unread in its socket: a `PING`
    /// (answered after every push sent before it) reads them before the connection goes.
    /// Messages published in that overlap may arrive twice, never not at all. Otherwise
    /// it closes when the commands still holding it end. The `PING` waits the
    /// connection's response timeout; a connection that answers nothing goes at the
    /// machine's close, at the latest.
    fn retire(&mut self, id: ConnectionId, conn: Managed) -> Retirement {
        let subscribed = self
            .subscriptions
            .as_ref()
            .and_then(|s| s.applied(id))
            .is_some_and(|applied| !applied.is_empty());
        if !subscribed {
            return Retirement::Linger(None);
        }
        let mut conn = conn.connection;
        Retirement::Linger(Some(Box::pin(async move {
            let _ = commands::health_ping().query_async::<()>(&mut conn).await;
        })))
    }

    fn gone(&mut self, id: ConnectionId, why: Gone) {
        match why {
            Gone::Closed => self.shared.of.closures.close(id),
            Gone::Lost | Gone::Drained => {}
        }
        if let Some(subscriptions) = &mut self.subscriptions {
            subscriptions.gone(id, &self.shared.counters);
        }
    }

    /// Boxed, built only with a subscription record: the supervisor's task (one beside
    /// every connection) keeps only a pointer for it.
    fn own_work(&mut self) -> impl Future<Output = ConnectionId> + Send + '_ {
        let shared = &self.shared;
        let work = match (&mut self.subscriptions, &shared.of.changes) {
            (Some(subscriptions), Some(changes)) => Some(Box::pin(subscriptions.work(changes, &shared.counters))),
            _ => None,
        };
        async move {
            match work {
                Some(work) => work.await,
                None => std::future::pending().await,
            }
        }
    }

    fn published(&mut self, slot: &Slot<Live>) {
        if let Some(subscriptions) = &mut self.subscriptions {
            let unavailable = match slot {
                Slot::Unavailable { error, .. } => Some(error.clone()),
                Slot::Connecting | Slot::Ready(..) | Slot::Stopped => None,
            };
            subscriptions.unavailable(unavailable, &self.shared.counters);
        }
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        self.subscriptions.as_ref().and_then(|s| s.deadline())
    }

    fn handle_timeout(&mut self, now: std::time::Instant) {
        if let Some(subscriptions) = &mut self.subscriptions {
            subscriptions.handle_timeout(now, &self.shared.counters);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_command_holds_the_replies_for_its_time_or_until_it_ends() {
        let t0 = std::time::Instant::now();
        let ms = Duration::from_millis;
        let blocked = Blocked::default();
        // A hold first: the origin must not be its deadline.
        blocked.hold(t0, Some(ms(3000)));
        assert!(blocked.holds(t0));
        assert!(blocked.holds(t0 + ms(2999)));
        assert!(!blocked.holds(t0 + ms(3000)), "its own timeout ends it");
        // A shorter one later does not cut the longer one short.
        blocked.hold(t0 + ms(10), Some(ms(100)));
        assert!(blocked.holds(t0 + ms(2000)));
        blocked.hold(t0, None);
        assert!(blocked.holds(t0 + Duration::from_secs(3600)), "for ever, while it runs");
        blocked.release_for_ever();
        assert!(!blocked.holds(t0 + ms(1)));
        // A time from the user past `Instant`'s range holds for ever, never panics.
        blocked.hold(t0, Some(Duration::MAX));
        assert!(blocked.holds(t0 + Duration::from_secs(3600)));
        blocked.release_for_ever();
    }

    #[test]
    fn maintenance_lengthens_a_timeout_and_never_shortens_or_adds_one() {
        let s = Duration::from_secs;
        assert_eq!(relaxed_timeout(Some(s(1)), Some(s(10))), Some(s(10)));
        assert_eq!(relaxed_timeout(Some(s(30)), Some(s(10))), Some(s(30)));
        assert_eq!(relaxed_timeout(None, Some(s(10))), None, "no timeout stays none");
        assert_eq!(relaxed_timeout(Some(s(1)), None), Some(s(1)));
        assert_eq!(relaxed_timeout(None, None), None);
    }

    #[test]
    fn the_per_manager_state_stays_small() {
        // One supervisor lives beside every connection (bench figure 3: no more than
        // redis's ConnectionManager with our provider). The `redis::Client` it holds grows
        // with the redis features the build unifies (TLS settings), so it is left out.
        type Supervisor = super::super::supervisor::Supervisor<ManagerTransport>;
        let own = std::mem::size_of::<Supervisor>() - std::mem::size_of::<redis::Client>();
        // The task's future: the supervisor and what its loop awaits.
        fn returned<F: FnOnce(Supervisor) -> R, R>(_: F) -> usize {
            std::mem::size_of::<R>()
        }
        let task = returned(Supervisor::run) - std::mem::size_of::<redis::Client>();
        eprintln!("supervisor {own}, its task {task}");

        assert!(own <= 760, "{own} {}", std::mem::size_of::<redis::Client>());
    }
}
