//! [`ConnectionManager`]: a multiplexed connection that owns its re-authentication.
//!
//! A supervisor task drives one [`ConnectionStateMachine`]: it feeds it tokens from the
//! provider's token manager and the results of connects and `AUTH`s, and carries out
//! what it says (open, send `AUTH`, use, retire, close). Commands only read which
//! connection is in use and report the ones that dropped.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use entraid_token_manager::{
    Availability, ConnectionId, ConnectionOutput, ConnectionPolicy, ConnectionStateMachine, Generation,
    TokenManagerError, TokenStream,
};
use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, PushInfo, PushKind, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::{Notify, watch};

use super::supervision::{BoxFuture, IdMap, LostReports, PendingAuth, next_token, now, sleep_until, wait_pending};
use crate::EntraIdCredentialsProvider;
use crate::health::GaugeShare;
use crate::plaintext_check::refuse_plaintext_to_azure;
use crate::provider::ManagerHandle;
use crate::token_feed::{TokenFeed, no_token_error, state_machine};

/// How a [`ConnectionManager`] connects, times out and re-authenticates.
///
/// Mirrors `redis::aio::ConnectionManagerConfig` where the two overlap.
#[derive(Clone)]
pub struct ConnectionManagerConfig {
    policy: ConnectionPolicy,
    response_timeout: Option<Duration>,
    push_sender: Option<Arc<dyn AsyncPushSender>>,
    reauth_spread: Option<Duration>,
    allow_plaintext_to_azure: bool,
}

impl Default for ConnectionManagerConfig {
    fn default() -> Self {
        ConnectionManagerConfig {
            policy: ConnectionPolicy::default(),
            response_timeout: Some(Duration::from_millis(500)),
            push_sender: None,
            reauth_spread: None,
            allow_plaintext_to_azure: false,
        }
    }
}

impl fmt::Debug for ConnectionManagerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionManagerConfig")
            .field("policy", &self.policy)
            .field("response_timeout", &self.response_timeout)
            .field("push_sender", &self.push_sender.is_some())
            .field("reauth_spread", &self.reauth_spread)
            .field("allow_plaintext_to_azure", &self.allow_plaintext_to_azure)
            .finish()
    }
}

impl ConnectionManagerConfig {
    /// The defaults: 500 ms per command (as redis's manager), 5 s to connect, the
    /// provider's re-auth spread, and [`ConnectionPolicy::default`] for the rest.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a command waits for its reply; `None` waits for ever. Re-authentication
    /// `AUTH`s have their own timeout ([`set_auth_timeout`](Self::set_auth_timeout)).
    pub fn set_response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long opening a connection (TCP, TLS, `HELLO`/`AUTH`) may take. Default 5 s.
    pub fn set_connection_timeout(mut self, timeout: Duration) -> Self {
        self.policy.connect_timeout = timeout;
        self
    }

    /// Waits between reconnection attempts: `min` after the first failure, doubling up
    /// to `max`. Defaults 100 ms and 10 s.
    pub fn set_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.policy.reconnect_initial = min;
        self.policy.reconnect_max = max;
        self
    }

    /// How long one re-authentication `AUTH` may wait for its reply before it is retried.
    /// Default 5 s.
    pub fn set_auth_timeout(mut self, timeout: Duration) -> Self {
        self.policy.auth_timeout = timeout;
        self
    }

    /// How long before its token's expiry a connection that could not re-authenticate is
    /// replaced by a new one (capped at a tenth of the token's lifetime). Default 30 s.
    pub fn set_replace_margin(mut self, margin: Duration) -> Self {
        self.policy.replace_margin = margin;
        self
    }

    /// Spreads each renewal's `AUTH` over `[0, spread)`. Default: the provider's
    /// [`with_reauth_spread`](EntraIdCredentialsProvider::with_reauth_spread).
    pub fn set_reauth_spread(mut self, spread: Duration) -> Self {
        self.reauth_spread = Some(spread);
        self
    }

    /// Receives RESP3 pushes (pub/sub messages) from every connection the manager opens.
    /// Subscriptions made through [`ConnectionManager::subscribe`] and
    /// [`ConnectionManager::psubscribe`] are made again on each new connection.
    pub fn set_push_sender(mut self, sender: impl AsyncPushSender) -> Self {
        self.push_sender = Some(Arc::new(sender));
        self
    }

    /// Allows `redis://` (plain TCP) to an Azure cache host, which is refused by default
    /// because the token would travel in clear.
    pub fn allow_plaintext_to_azure(mut self, allow: bool) -> Self {
        self.allow_plaintext_to_azure = allow;
        self
    }

    /// The full re-authentication policy, for settings without a setter of their own.
    pub fn set_policy(mut self, policy: ConnectionPolicy) -> Self {
        self.policy = policy;
        self
    }
}

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
}

#[derive(Debug, Default)]
struct Counters {
    connections_opened: AtomicU64,
    connect_failures: AtomicU64,
    reauthentications: AtomicU64,
    failed_auths: AtomicU64,
    replacements: AtomicU64,
    closed_before_expiry: AtomicU64,
    connections_lost: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ConnectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnectionStats {
            connections_opened: get(&self.connections_opened),
            connect_failures: get(&self.connect_failures),
            reauthentications: get(&self.reauthentications),
            failed_auths: get(&self.failed_auths),
            replacements: get(&self.replacements),
            closed_before_expiry: get(&self.closed_before_expiry),
            connections_lost: get(&self.connections_lost),
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

/// What the handles and the supervisor share.
#[derive(Default)]
struct SharedState {
    counters: Counters,
    lost: LostReports,
    closures: Closures,
    subscriptions: Mutex<Subscriptions>,
}

/// The connection commands go to, as the supervisor publishes it.
#[derive(Clone)]
enum Slot {
    Connecting,
    Ready(Live),
    Unavailable(RedisError),
    Stopped,
}

#[derive(Clone)]
struct Live {
    id: ConnectionId,
    connection: MultiplexedConnection,
}

/// Channels and patterns to subscribe every new connection to.
#[derive(Debug, Default, Clone)]
struct Subscriptions {
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
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
    slot: watch::Receiver<Slot>,
    shared: Arc<SharedState>,
    db: i64,
    /// How long a command waits for a connection being opened.
    connect_wait: Duration,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.inner.slot.borrow() {
            Slot::Connecting => "connecting".to_owned(),
            Slot::Ready(live) => format!("using {}", live.id),
            Slot::Unavailable(error) => format!("unavailable: {error}"),
            Slot::Stopped => "stopped".to_owned(),
        };
        f.debug_struct("ConnectionManager")
            .field("state", &state)
            .field("stats", &self.inner.shared.counters.snapshot())
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
        refuse_plaintext_to_azure(client.get_connection_info(), config.allow_plaintext_to_azure)?;
        let resp3 = client
            .get_connection_info()
            .redis_settings()
            .protocol()
            .supports_resp3();
        if config.push_sender.is_some() && !resp3 {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "a push sender needs RESP3",
                "add ?protocol=resp3 to the URL (RESP2 connections receive no pushes)".to_owned(),
            )));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "redis_entraid::aio::ConnectionManager needs a tokio runtime",
                "create it inside one, or use redis_entraid::Connection in synchronous code".to_owned(),
            ))
        })?;
        let manager = provider.token_manager()?;
        // The first token, or the reason there is none, within the manager's attempts.
        let first_token = manager.token().await.map_err(no_token_error)?;

        let mut policy = config.policy.clone();
        policy.reauth_spread = config.reauth_spread.unwrap_or(provider.reauth_spread());
        let machine = state_machine(policy.clone())?;

        let (slot_tx, slot) = watch::channel(Slot::Connecting);
        let shared = Arc::new(SharedState::default());
        let db = client.get_connection_info().redis_settings().db();
        let mut supervisor = Supervisor {
            machine,
            client,
            response_timeout: config.response_timeout,
            push_sender: config.push_sender.clone(),
            resp3,
            tokens: Some(manager.subscribe()),
            manager: provider.manager_handle(),
            feed: TokenFeed::default(),
            token_error: None,
            connect_error: None,
            connections: IdMap::with_capacity(1),
            retired: Vec::new(),
            pending_connect: None,
            pending_auth: None,
            slot: slot_tx,
            shared: shared.clone(),
            trouble: None,
            health: GaugeShare::default(),
        };
        // Fed before the task starts, so callers never see "no token" at the start.
        supervisor.feed.offer(&mut supervisor.machine, now(), first_token);
        let supervisor = runtime.spawn(supervisor.run());
        let manager = ConnectionManager {
            inner: Arc::new(Inner {
                slot,
                shared,
                db,
                connect_wait: policy.connect_timeout,
                supervisor,
            }),
        };
        manager.live().await?;
        Ok(manager)
    }

    /// What happened to this manager's connections so far.
    pub fn stats(&self) -> ConnectionStats {
        self.inner.shared.counters.snapshot()
    }

    /// Subscribes to `channel` (RESP3): messages reach the configured push sender, and
    /// the subscription is made again on every new connection.
    pub async fn subscribe(&mut self, channel: impl redis::ToRedisArgs) -> RedisResult<()> {
        let names = channel.to_redis_args();
        self.with_subscriptions(|s| s.channels.extend(names.iter().cloned()));
        self.live().await?.connection.subscribe(names).await
    }

    /// Unsubscribes from `channel`, on this connection and the ones to come.
    pub async fn unsubscribe(&mut self, channel: impl redis::ToRedisArgs) -> RedisResult<()> {
        let names = channel.to_redis_args();
        self.with_subscriptions(|s| s.channels.retain(|c| !names.contains(c)));
        self.live().await?.connection.unsubscribe(names).await
    }

    /// Subscribes to the channels matching `pattern` (RESP3); see [`subscribe`](Self::subscribe).
    pub async fn psubscribe(&mut self, pattern: impl redis::ToRedisArgs) -> RedisResult<()> {
        let names = pattern.to_redis_args();
        self.with_subscriptions(|s| s.patterns.extend(names.iter().cloned()));
        self.live().await?.connection.psubscribe(names).await
    }

    /// Unsubscribes from `pattern`, on this connection and the ones to come.
    pub async fn punsubscribe(&mut self, pattern: impl redis::ToRedisArgs) -> RedisResult<()> {
        let names = pattern.to_redis_args();
        self.with_subscriptions(|s| s.patterns.retain(|p| !names.contains(p)));
        self.live().await?.connection.punsubscribe(names).await
    }

    fn with_subscriptions(&self, change: impl FnOnce(&mut Subscriptions)) {
        change(
            &mut self
                .inner
                .shared
                .subscriptions
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// The connection in use, waiting (at most the connection timeout) while one is
    /// being opened; the reason at once when there is none.
    async fn live(&self) -> RedisResult<Live> {
        let mut slot = self.inner.slot.clone();
        let wait = async move {
            loop {
                match &*slot.borrow_and_update() {
                    Slot::Ready(live) => return Ok(live.clone()),
                    Slot::Unavailable(error) => return Err(error.clone()),
                    Slot::Stopped => return Err(stopped_error()),
                    Slot::Connecting => {}
                }
                if slot.changed().await.is_err() {
                    return Err(stopped_error());
                }
            }
        };
        match tokio::time::timeout(self.inner.connect_wait, wait).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from((
                ErrorKind::Io,
                "no connection",
                format!(
                    "no connection to Redis could be opened within {:?}; the manager keeps trying",
                    self.inner.connect_wait
                ),
            ))),
        }
    }

    /// A dropped connection is reported, so the supervisor opens another at once.
    fn report<T>(&self, id: ConnectionId, result: &RedisResult<T>) {
        if let Err(error) = result
            && error.is_unrecoverable_error()
        {
            self.inner.shared.lost.report(id);
        }
    }
}

impl redis::aio::ConnectionLike for ConnectionManager {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut live = self.live().await?;
            let result = tokio::select! {
                result = live.connection.send_packed_command(cmd) => result,
                error = self.inner.shared.closures.closed(live.id) => Err(error),
            };
            self.report(live.id, &result);
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
            let mut live = self.live().await?;
            let result = tokio::select! {
                result = live.connection.send_packed_commands(pipeline, offset, count) => result,
                error = self.inner.shared.closures.closed(live.id) => Err(error),
            };
            self.report(live.id, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}

fn stopped_error() -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "the connection manager stopped",
        "its background task ended; create a new ConnectionManager".to_owned(),
    ))
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
    shared: Arc<SharedState>,
}

impl AsyncPushSender for PushForwarder {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::Disconnection {
            // The manager reconnects by itself; the user's sender does not need this.
            self.shared.lost.report(self.id);
            return Ok(());
        }
        match &self.user {
            Some(user) => user.send(info),
            None => Ok(()),
        }
    }
}

enum Wake {
    Token(Option<Result<entraid_identity::Token, TokenManagerError>>),
    Connected(ConnectionId, RedisResult<MultiplexedConnection>),
    Auth(ConnectionId, Generation, RedisResult<()>),
    Lost(Vec<ConnectionId>),
    Timer,
}

struct Supervisor {
    machine: ConnectionStateMachine,
    client: redis::Client,
    response_timeout: Option<Duration>,
    push_sender: Option<Arc<dyn AsyncPushSender>>,
    resp3: bool,
    /// `None` once the token manager stopped.
    tokens: Option<TokenStream>,
    /// Keeps the token manager running; a new stream if it had to be started again.
    manager: ManagerHandle,
    feed: TokenFeed,
    /// Why there is no token, for the error commands get meanwhile (boxed: rarely set).
    token_error: Option<Box<TokenManagerError>>,
    connect_error: Option<Box<RedisError>>,
    /// Open connections.
    connections: IdMap<MultiplexedConnection>,
    /// Retired connections: only their ids, so they close when their commands end.
    retired: Vec<ConnectionId>,
    pending_connect: Option<(ConnectionId, BoxFuture<RedisResult<MultiplexedConnection>>)>,
    pending_auth: PendingAuth,
    slot: watch::Sender<Slot>,
    shared: Arc<SharedState>,
    /// A failing re-authentication or a replacement under way: rare, so boxed (one
    /// supervisor lives beside every manager).
    trouble: Option<Box<Trouble>>,
    /// This manager's share of the provider's connection figures.
    health: GaugeShare,
}

impl Supervisor {
    async fn run(mut self) {
        loop {
            let deadline = self.act();
            self.publish();
            let wake = tokio::select! {
                item = next_token(&mut self.tokens) => Wake::Token(item),
                (id, result) = wait_pending(&mut self.pending_connect) => Wake::Connected(id, result),
                ((id, generation), result) = wait_pending(&mut self.pending_auth) => Wake::Auth(id, generation, result),
                ids = self.shared.lost.next() => Wake::Lost(ids),
                () = sleep_until(deadline) => Wake::Timer,
            };
            let now = now();
            match wake {
                Wake::Token(Some(Ok(token))) => {
                    self.token_error = None;
                    self.feed.offer(&mut self.machine, now, token);
                }
                Wake::Token(Some(Err(TokenManagerError::TokenExpired))) => {
                    self.token_error = Some(Box::new(TokenManagerError::TokenExpired));
                    self.machine.handle_token_lost(now);
                }
                Wake::Token(Some(Err(TokenManagerError::RuntimeShutDown))) => {
                    // The provider starts the manager again on a runtime of its own.
                    self.tokens = self.manager.resubscribe();
                }
                Wake::Token(Some(Err(error))) => self.token_error = Some(Box::new(error)),
                Wake::Token(None) => {
                    // The token manager stopped: the connection lives until its token ends.
                    self.token_error = Some(Box::new(TokenManagerError::Stopped));
                    self.machine.handle_token_lost(now);
                    self.tokens = None;
                }
                Wake::Connected(id, Ok(connection)) => {
                    self.pending_connect = None;
                    self.connect_error = None;
                    Counters::bump(&self.shared.counters.connections_opened);
                    self.connections.insert(id, connection);
                    self.machine.handle_connected(now, id);
                }
                Wake::Connected(id, Err(error)) => {
                    self.pending_connect = None;
                    tracing::warn!(connection = %id, %error, "connecting to Redis failed");
                    Counters::bump(&self.shared.counters.connect_failures);
                    self.connect_error = Some(Box::new(error));
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
                    if let Err(error) = &result
                        && error.is_unrecoverable_error()
                    {
                        self.connections.remove(&id);
                        self.retired.retain(|r| *r != id);
                        self.machine.handle_connection_lost(now, id);
                    } else {
                        self.machine.handle_auth_result(now, id, generation, result.is_ok());
                    }
                }
                Wake::Lost(ids) => {
                    for id in ids {
                        if self.connections.remove(&id).is_some() {
                            Counters::bump(&self.shared.counters.connections_lost);
                        }
                        self.retired.retain(|r| *r != id);
                        self.machine.handle_connection_lost(now, id);
                    }
                }
                Wake::Timer => self.machine.handle_timeout(now),
            }
        }
    }

    /// Carries out the machine's outputs; returns when to wake it next.
    fn act(&mut self) -> Option<tokio::time::Instant> {
        loop {
            match self.machine.poll_output() {
                ConnectionOutput::Connect {
                    id,
                    generation,
                    timeout,
                } => {
                    if let Some(trouble) = &mut self.trouble {
                        trouble.replacement = None;
                    }
                    if self.machine.is_behind() {
                        Counters::bump(&self.shared.counters.replacements);
                        self.manager.health().replaced();
                        let span = tracing::info_span!("entraid.connection_replacement", new = %id);
                        span.in_scope(|| {
                            tracing::info!(connection = %id, "replacing a connection that could not re-authenticate");
                        });
                        self.trouble_mut().replacement = Some(span);
                    }
                    match self.feed.get(generation).cloned() {
                        Some(token) => self.pending_connect = Some((id, self.open(id, &token, timeout))),
                        None => self.machine.handle_connect_failed(now(), id),
                    }
                }
                ConnectionOutput::SendAuth {
                    id,
                    generation,
                    timeout,
                } => match (self.connections.get(&id), self.feed.get(generation)) {
                    (Some(connection), Some(token)) => {
                        let mut connection = connection.clone();
                        connection.set_response_timeout(timeout);
                        let auth = redis::cmd("AUTH").arg(token.username()).arg(token.secret()).to_owned();
                        let future: BoxFuture<RedisResult<()>> =
                            Box::pin(async move { auth.query_async::<()>(&mut connection).await });
                        self.pending_auth = Some(((id, generation), future));
                    }
                    _ => self.machine.handle_auth_result(now(), id, generation, false),
                },
                ConnectionOutput::Use(id) if self.trouble.as_ref().is_some_and(|t| t.replacement.is_some()) => {
                    if let Some(span) = self.trouble.as_mut().and_then(|t| t.replacement.take()) {
                        span.in_scope(|| tracing::info!(connection = %id, "replacement connection in use"));
                    }
                }
                ConnectionOutput::Retire(id) => {
                    if let Some(old) = self.connections.remove(&id) {
                        self.retired.push(id);
                        self.drain(old);
                    }
                    if self.pending_auth.as_ref().is_some_and(|((a, _), _)| *a == id) {
                        self.pending_auth = None;
                    }
                }
                ConnectionOutput::Close(id) => {
                    let open = self.connections.remove(&id).is_some();
                    let retired = self
                        .retired
                        .iter()
                        .position(|r| *r == id)
                        .map(|at| self.retired.swap_remove(at));
                    if open || retired.is_some() {
                        Counters::bump(&self.shared.counters.closed_before_expiry);
                        tracing::info!(connection = %id, "connection closed before its token expires");
                        self.shared.closures.close(id);
                    }
                    if self.pending_auth.as_ref().is_some_and(|((a, _), _)| *a == id) {
                        self.pending_auth = None;
                    }
                }
                ConnectionOutput::Timeout(at) => return Some(tokio::time::Instant::from_std(at)),
                ConnectionOutput::Idle => return None,
                ConnectionOutput::Use(_) | _ => {}
            }
        }
    }

    /// A retired subscribed connection may hold messages the server sent before the new
    /// connection's subscriptions were confirmed, still unread in its socket: a `PING`
    /// (answered after every push sent before it) reads them before the connection goes.
    /// Messages published in that overlap may arrive twice, never not at all.
    fn drain(&self, mut old: MultiplexedConnection) {
        let subscribed = {
            let s = self.shared.subscriptions.lock().unwrap_or_else(PoisonError::into_inner);
            !s.channels.is_empty() || !s.patterns.is_empty()
        };
        if !self.resp3 || !subscribed {
            return;
        }
        tokio::spawn(async move {
            let ping = redis::cmd("PING");
            let _ = tokio::time::timeout(Duration::from_secs(1), ping.query_async::<()>(&mut old)).await;
        });
    }

    /// Opens a connection authenticated with `token` in its handshake, subscribed to the
    /// manager's channels.
    fn open(
        &self,
        id: ConnectionId,
        token: &entraid_identity::Token,
        timeout: Duration,
    ) -> BoxFuture<RedisResult<MultiplexedConnection>> {
        let info = self.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_username(token.username())
            .set_password(token.secret());
        let client = redis::Client::open(info.set_redis_settings(settings));
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(self.response_timeout);
        if self.resp3 {
            config = config.set_push_sender(PushForwarder {
                id,
                user: self.push_sender.clone(),
                shared: self.shared.clone(),
            });
        }
        let subscriptions = self
            .shared
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Box::pin(async move {
            let connect = async {
                let mut connection = client?.get_multiplexed_async_connection_with_config(&config).await?;
                if !subscriptions.channels.is_empty() {
                    connection.subscribe(Vec::from_iter(subscriptions.channels)).await?;
                }
                if !subscriptions.patterns.is_empty() {
                    connection.psubscribe(Vec::from_iter(subscriptions.patterns)).await?;
                }
                Ok(connection)
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(result) => result,
                Err(_) => Err(RedisError::from((
                    ErrorKind::Io,
                    "connecting timed out",
                    format!("no connection within {timeout:?}"),
                ))),
            }
        })
    }

    /// Tells commands where to go, when that changed.
    fn publish(&mut self) {
        let connections = &self.connections;
        if let Some(trouble) = &mut self.trouble {
            if trouble.retrying.is_some_and(|id| connections.get(&id).is_none()) {
                trouble.retrying = None;
            }
            if trouble.retrying.is_none() && trouble.replacement.is_none() {
                self.trouble = None;
            }
        }
        let retrying = self.trouble.as_ref().is_some_and(|t| t.retrying.is_some());
        let retrying = usize::from(retrying);
        self.health.set(self.manager.health(), self.connections.len(), retrying);
        let slot = match self.machine.availability() {
            Availability::Connected(id) => match self.connections.get(&id) {
                Some(connection) => Slot::Ready(Live {
                    id,
                    connection: connection.clone(),
                }),
                None => Slot::Connecting,
            },
            Availability::Connecting => Slot::Connecting,
            Availability::NoValidToken => Slot::Unavailable(no_token_error(
                self.token_error
                    .as_deref()
                    .cloned()
                    .unwrap_or(TokenManagerError::TokenExpired),
            )),
            Availability::Reconnecting => {
                Slot::Unavailable(self.connect_error.as_deref().cloned().unwrap_or_else(|| {
                    RedisError::from((
                        ErrorKind::Io,
                        "reconnecting",
                        "the last connection attempt failed".to_owned(),
                    ))
                }))
            }
        };
        self.slot.send_if_modified(|current| {
            let same = match (&*current, &slot) {
                (Slot::Ready(a), Slot::Ready(b)) => a.id == b.id,
                (Slot::Connecting, Slot::Connecting) => true,
                (Slot::Unavailable(a), Slot::Unavailable(b)) => a.to_string() == b.to_string(),
                _ => false,
            };
            if !same {
                *current = slot;
            }
            !same
        });
    }
}

/// What goes wrong now and then on a manager's connections.
#[derive(Default)]
struct Trouble {
    /// The connection whose last re-authentication failed (retried meanwhile).
    retrying: Option<ConnectionId>,
    /// `entraid.connection_replacement`, from the replacement's connect to its use.
    replacement: Option<tracing::Span>,
}

impl Supervisor {
    fn trouble_mut(&mut self) -> &mut Trouble {
        self.trouble.get_or_insert_with(Box::default)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.health.release(self.manager.health());
        self.slot.send_replace(Slot::Stopped);
        for id in self.connections.ids().chain(self.retired.iter().copied()) {
            self.shared.closures.close(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_manager_state_stays_small() {
        // One supervisor lives beside every connection (bench figure 3: no more than
        // redis's ConnectionManager with our provider). The `redis::Client` it holds grows
        // with the redis features the build unifies (TLS settings), so it is left out.
        let own = std::mem::size_of::<Supervisor>() - std::mem::size_of::<redis::Client>();
        assert!(own <= 760, "{own} {}", std::mem::size_of::<redis::Client>());
        assert!(std::mem::size_of::<Live>() <= 96, "{}", std::mem::size_of::<Live>());
    }
}
