//! [`ConnectionManager`]: a multiplexed connection that owns its re-authentication.
//!
//! The [`Supervisor`](super::supervisor) drives it; this module is the handle commands
//! go through and [`ManagerTransport`], the I/O on `MultiplexedConnection`s: open with a
//! token and the RESP3 subscriptions, `AUTH`, and failing what still runs on a
//! connection the machine closed.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use entraid_identity::Token;
use entraid_token_manager::{ConnectReason, ConnectionId, Renewal};
use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, PushInfo, PushKind, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::Notify;

use super::subscriptions::{Change, Subscriber, Subscriptions};
use super::supervision::{BoxFuture, Report};
use super::supervisor::{CatchUp, Counters, Gone, Retirement, Shared, Slot, Start, SupervisorHandle, Transport, start};
use crate::EntraIdCredentialsProvider;
use crate::connection_config::{ConnectionConfig, ConnectionType};
use crate::maintenance::{self, MaintenanceNotifications, MovingEndpointType, OptIn};
use crate::session::{self, Effect, SessionState};
use crate::token_feed::auth_accepted;

/// How a [`ConnectionManager`] connects, times out and re-authenticates: the one
/// [`ConnectionConfig`] of every connection type.
pub type ConnectionManagerConfig = ConnectionConfig;

/// What happened to a manager's connections so far. Cheap to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Connections opened (each authenticated once, in its handshake).
    pub connections_opened: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Renewals accepted by the server on a live connection.
    pub reauthentications: u64,
    /// Re-authentication `AUTH`s refused or timed out (each was retried).
    pub failed_auths: u64,
    /// Connections replaced by a new one because they could not re-authenticate in time.
    pub replacements: u64,
    /// Connections closed before their token expired, so the server did not cut them.
    pub closed_before_expiry: u64,
    /// Connections found dropped (I/O errors, server restarts).
    pub connections_lost: u64,
    /// Channels and patterns dropped from the record because the server refused them
    /// when a new connection made them again (an ACL change, say); each is logged.
    pub subscriptions_refused: u64,
    /// Connections replaced because they stopped answering: a command and then a health
    /// `PING` got no reply (a silent network path).
    pub unresponsive: u64,
    /// Connections handed off to the endpoint a server's `MOVING` named (or to the
    /// original address) before the server closed the old one.
    pub handoffs: u64,
    /// Handoff connections that could not be opened (each retried until the server's
    /// deadline).
    pub handoff_failures: u64,
    /// Times command timeouts were relaxed for announced maintenance (`MIGRATING`,
    /// `FAILING_OVER`, `MOVING`).
    pub relaxed_windows: u64,
    /// Whether the server refused maintenance notifications (`CLIENT
    /// MAINT_NOTIFICATIONS`): with [`MaintenanceNotifications::Auto`](crate::MaintenanceNotifications::Auto)
    /// the manager then goes on without them.
    pub maintenance_refused: bool,
}

impl ConnectionStats {
    fn of(c: &Counters) -> Self {
        ConnectionStats {
            connections_opened: Counters::get(&c.connections_opened),
            connect_failures: Counters::get(&c.connect_failures),
            reauthentications: Counters::get(&c.reauthentications),
            failed_auths: Counters::get(&c.failed_auths),
            replacements: Counters::get(&c.replacements),
            closed_before_expiry: Counters::get(&c.closed_before_expiry),
            connections_lost: Counters::get(&c.connections_lost),
            subscriptions_refused: Counters::get(&c.subscriptions_refused),
            unresponsive: Counters::get(&c.unresponsive),
            handoffs: Counters::get(&c.handoffs),
            handoff_failures: Counters::get(&c.handoff_failures),
            relaxed_windows: Counters::get(&c.relaxed_windows),
            maintenance_refused: Counters::get(&c.maintenance_refused) > 0,
        }
    }
}

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

/// What the handles and the transport share beside the supervisor's [`Shared`] (and
/// the settings the transport reads: one supervisor lives beside every connection, so
/// its transport is kept to a pointer).
struct ManagerShared {
    closures: Closures,
    subscriptions: Mutex<Subscriptions>,
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
        Self::new_with_config(client, provider, ConnectionConfig::new()).await
    }

    /// Like [`new`](Self::new), with timeouts, backoff, spread and a RESP3 push sender.
    pub async fn new_with_config(
        client: redis::Client,
        provider: EntraIdCredentialsProvider,
        config: ConnectionConfig,
    ) -> RedisResult<Self> {
        let settings = client.get_connection_info().redis_settings();
        let (resp3, db) = (settings.protocol().supports_resp3(), settings.db());
        let shared = Shared::new(ManagerShared {
            closures: Closures::default(),
            subscriptions: Mutex::default(),
            session: Mutex::default(),
            response_timeout: config.response_timeout(ConnectionType::Manager),
            push_sender: config.push_sender(),
            maintenance: config.maintenance_notifications(),
            moving_endpoint_type: config.moving_endpoint_type(client.get_connection_info().addr()),
        });
        let transport = ManagerTransport {
            resp3,
            shared: shared.clone(),
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

    /// Makes `change` on the connection in use and records it for the connections to
    /// come once the server confirmed it (or the connection dropped under it: the next
    /// one makes it). A refused or timed-out change is not recorded.
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
        let (id, live) = self.inner.supervisor.live().await?;
        // Commands have no timeout of their own beyond the connection's.
        let result = Subscriber::Resp3(live.connection)
            .change(change, names.clone(), Duration::MAX)
            .await;
        let dropped = result.as_ref().is_err_and(|e| e.is_unrecoverable_error());
        if result.is_ok() || dropped {
            self.inner
                .supervisor
                .shared
                .of
                .subscriptions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .apply(change, &names);
        }
        self.inner.supervisor.report(id, &result);
        result
    }

    /// Runs `send` on the connection in use; fails it if the machine closes that
    /// connection first, and reports it if it dropped.
    async fn send<T>(&self, send: impl AsyncFnOnce(&mut MultiplexedConnection) -> RedisResult<T>) -> RedisResult<T> {
        let (id, mut live) = self.inner.supervisor.live().await?;
        let result = if live.watch_close {
            tokio::select! {
                biased;
                result = send(&mut live.connection) => result,
                error = self.inner.supervisor.shared.of.closures.closed(id) => Err(error),
            }
        } else {
            send(&mut live.connection).await
        };
        self.inner.supervisor.report(id, &result);
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
            let result = self
                .send(async move |c: &mut MultiplexedConnection| c.send_packed_command(cmd).await)
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
            let result = self
                .send(async move |c: &mut MultiplexedConnection| c.send_packed_commands(pipeline, offset, count).await)
                .await;
            if result.is_ok() {
                for (cmd, effect) in pipeline.cmd_iter().zip(effects) {
                    self.accepted(cmd, effect);
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

fn closed_error() -> RedisError {
    RedisError::from((
        ErrorKind::Io,
        "connection closed before its Entra ID token expired",
        "the command was still running when the connection had to be closed (a blocking \
         command longer than the token's remaining life?); retry it"
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
}

/// The connection commands go to.
#[derive(Clone)]
struct Live {
    connection: MultiplexedConnection,
    /// Whether a command may outlive the close of its connection: then it is failed at
    /// the close, so the socket closes before the server would cut it.
    watch_close: bool,
}

/// A manager's connection, with what it is subscribed to.
struct Managed {
    connection: MultiplexedConnection,
    /// Boxed: most managers subscribe to nothing, and one lives beside every connection.
    applied: Box<Subscriptions>,
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

    fn record(&self) -> Subscriptions {
        self.shared
            .of
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Subscribes `connection` from `applied` to the record; drops what the server
    /// refuses from the record.
    fn subscribe(
        &self,
        connection: MultiplexedConnection,
        applied: Subscriptions,
    ) -> impl Future<Output = RedisResult<Managed>> + Send + 'static {
        let target = self.record();
        let shared = self.shared.clone();
        async move {
            let refused = Subscriber::Resp3(connection.clone())
                .reconcile(&applied, &target, Duration::MAX)
                .await?;
            let mut applied = target;
            if !refused.is_empty() {
                applied.remove(&refused);
                shared
                    .of
                    .subscriptions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&refused);
                Counters::add(&shared.counters.subscriptions_refused, refused.len());
            }
            Ok(Managed {
                connection,
                applied: Box::new(applied),
            })
        }
    }
}

impl Transport for ManagerTransport {
    type Shared = ManagerShared;
    type Conn = Managed;
    type Handle = Live;

    /// Authenticated in its handshake, with the user's session state and subscriptions.
    fn open(
        &mut self,
        id: ConnectionId,
        client: redis::Client,
        _reason: ConnectReason,
        timeout: Duration,
    ) -> BoxFuture<RedisResult<Managed>> {
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
        let transport = ManagerTransport {
            resp3: self.resp3,
            shared: self.shared.clone(),
        };
        let replay = self
            .shared
            .of
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|session| session.replay())
            .unwrap_or_default();
        let opt_in = transport.maintenance_opt_in();
        Box::pin(async move {
            let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
            // Maintenance notifications, asked for before the connection takes a command.
            if let Some((mode, command)) = opt_in {
                let answer = command.query_async::<Value>(&mut connection).await;
                if maintenance::opt_in_outcome(mode, answer)? == OptIn::Refused {
                    Counters::bump_once(&transport.shared.counters.maintenance_refused);
                }
            }
            // The user's session state, before the connection takes a command.
            for command in replay {
                command.query_async::<()>(&mut connection).await?;
            }
            transport.subscribe(connection, Subscriptions::default()).await
        })
    }

    /// Makes the subscriptions changed while it was being opened, so none misses the
    /// connection that takes over.
    fn catch_up(&mut self, _id: ConnectionId, conn: Managed) -> CatchUp<Managed> {
        if *conn.applied == self.record() {
            return CatchUp::Ready(conn);
        }
        CatchUp::Pending(Box::pin(self.subscribe(conn.connection, *conn.applied)))
    }

    fn auth(&self, conn: &Managed, token: &Token, timeout: Duration) -> BoxFuture<RedisResult<()>> {
        let mut connection = conn.connection.clone();
        // Its own timeout, not the commands' (500 ms by default): a stall of a few
        // seconds at a rotation is survived by waiting.
        connection.set_response_timeout(timeout);
        let auth = redis::cmd("AUTH").arg(token.username()).arg(token.secret()).to_owned();
        Box::pin(async move { auth.query_async::<Value>(&mut connection).await.and_then(auth_accepted) })
    }

    fn probe(&self, conn: &Managed, timeout: Duration) -> BoxFuture<RedisResult<()>> {
        let mut connection = conn.connection.clone();
        connection.set_response_timeout(timeout);
        Box::pin(async move { redis::cmd("PING").query_async::<()>(&mut connection).await })
    }

    fn take_over(&mut self, _id: ConnectionId, _conn: &Managed) {}

    /// A command whose response timeout is shorter than the close grace ends (its reply
    /// or its timeout) before the server would cut a closed connection: it needs no watch
    /// on the close, which costs two lock round trips per command.
    fn handle(&self, conn: &Managed, close_grace: Option<Duration>, relaxed: Option<Duration>) -> Live {
        let timeout = relaxed.or(self.shared.of.response_timeout);
        let outlives_close = match (timeout, close_grace) {
            (Some(timeout), Some(grace)) => timeout >= grace,
            (None, _) | (_, None) => true,
        };
        let mut connection = conn.connection.clone();
        if let Some(relaxed) = relaxed {
            connection.set_response_timeout(relaxed);
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
    /// it closes when the commands still holding it end.
    fn retire(&mut self, _id: ConnectionId, conn: Managed) -> Retirement {
        if !self.resp3 || conn.applied.is_empty() {
            return Retirement::Linger(None);
        }
        let mut conn = conn.connection;
        Retirement::Linger(Some(Box::pin(async move {
            let ping = redis::cmd("PING");
            let _ = tokio::time::timeout(Duration::from_secs(1), ping.query_async::<()>(&mut conn)).await;
        })))
    }

    fn gone(&mut self, id: ConnectionId, why: Gone) {
        match why {
            Gone::Closed => self.shared.of.closures.close(id),
            Gone::Lost | Gone::Drained => {}
        }
    }

    async fn next_lost(&mut self) -> ConnectionId {
        std::future::pending().await
    }

    fn published(&mut self, _slot: &Slot<Live>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

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
