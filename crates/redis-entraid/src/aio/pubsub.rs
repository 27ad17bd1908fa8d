//! [`PubSub`]: a subscriber that stays authenticated with Entra ID on RESP2 and RESP3.
//!
//! A supervisor task drives one [`ConnectionStateMachine`], as the
//! [`ConnectionManager`](super::ConnectionManager)'s does. On RESP3 a renewal is an
//! `AUTH` on the subscribed connection. On RESP2 the server refuses `AUTH` in subscribed
//! mode, so the machine runs with [`Renewal::Replace`]: each renewal opens a connection
//! with the new token, subscribes it to everything recorded, and once every
//! subscription is confirmed it takes over; the old one is drained (`PING`, answered
//! after every message sent before it) and closed. [`Delivery`] keeps the two
//! connections' messages in order and counts the ones both received.

use std::collections::BTreeSet;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use entraid_token_manager::{
    Availability, ConnectionId, ConnectionOutput, ConnectionPolicy, ConnectionStateMachine, Generation, Renewal,
    TokenManagerError, TokenStream,
};
use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, ErrorKind, Msg, PushInfo, PushKind, RedisError, RedisResult};
use tokio::sync::{OwnedMutexGuard, mpsc, watch};
use tokio_stream::{Stream, StreamExt};

use super::delivery::Delivery;
use super::supervision::{BoxFuture, IdMap, LostReports, PendingAuth, next_token, now, sleep_until, wait_pending};
use crate::EntraIdCredentialsProvider;
use crate::health::GaugeShare;
use crate::plaintext_check::refuse_plaintext_to_azure;
use crate::provider::ManagerHandle;
use crate::token_feed::{TokenFeed, no_token_error, state_machine};

/// How a [`PubSub`] connects, times out and re-authenticates.
#[derive(Debug, Clone)]
pub struct PubSubConfig {
    policy: ConnectionPolicy,
    response_timeout: Duration,
    reauth_spread: Option<Duration>,
    allow_plaintext_to_azure: bool,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            policy: ConnectionPolicy::default(),
            response_timeout: Duration::from_secs(5),
            reauth_spread: None,
            allow_plaintext_to_azure: false,
        }
    }
}

impl PubSubConfig {
    /// The defaults: 5 s for a subscription change, 5 s to connect, the provider's
    /// re-auth spread, and [`ConnectionPolicy::default`] for the rest.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a `SUBSCRIBE`-like command (and the `PING` that drains a connection
    /// being swapped out) waits for the server's confirmation. Default 5 s.
    pub fn set_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long opening a connection, with all its subscriptions, may take. Default 5 s.
    pub fn set_connection_timeout(mut self, timeout: Duration) -> Self {
        self.policy.connect_timeout = timeout;
        self
    }

    /// Spreads each renewal over `[0, spread)` (on RESP2, the swap). Default: the
    /// provider's [`with_reauth_spread`](EntraIdCredentialsProvider::with_reauth_spread).
    pub fn set_reauth_spread(mut self, spread: Duration) -> Self {
        self.reauth_spread = Some(spread);
        self
    }

    /// Allows `redis://` (plain TCP) to an Azure cache host, which is refused by default
    /// because the token would travel in clear.
    pub fn allow_plaintext_to_azure(mut self, allow: bool) -> Self {
        self.allow_plaintext_to_azure = allow;
        self
    }

    /// The full re-authentication policy (backoff, margins, timeouts).
    pub fn set_policy(mut self, policy: ConnectionPolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// What happened to a subscriber's connections so far. Cheap to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PubSubStats {
    /// Connections opened (each authenticated once, in its handshake).
    pub connections_opened: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// RESP3 renewals accepted by the server on the subscribed connection.
    pub reauthentications: u64,
    /// RESP3 re-authentication `AUTH`s refused or timed out (each was retried).
    pub failed_auths: u64,
    /// Connections that took over from a live one: every renewal on RESP2, and on
    /// RESP3 a connection that could not re-authenticate in time.
    pub swaps: u64,
    /// Messages delivered twice because both connections of a swap received them.
    pub duplicates: u64,
    /// Connections closed before their token expired, so the server did not cut them.
    pub closed_before_expiry: u64,
    /// Connections found dropped (I/O errors, server restarts).
    pub connections_lost: u64,
    /// Messages handed to the stream.
    pub messages: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections_opened: AtomicU64,
    connect_failures: AtomicU64,
    reauthentications: AtomicU64,
    failed_auths: AtomicU64,
    swaps: AtomicU64,
    closed_before_expiry: AtomicU64,
    connections_lost: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Channels and patterns to subscribe every new connection to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Subscriptions {
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
}

impl Subscriptions {
    /// Records `change`; unsubscribing with no names drops every one of its kind.
    fn apply(&mut self, change: Change, names: &[Vec<u8>]) {
        let set = match change {
            Change::Subscribe | Change::Unsubscribe => &mut self.channels,
            Change::PSubscribe | Change::PUnsubscribe => &mut self.patterns,
        };
        match change {
            Change::Subscribe | Change::PSubscribe => set.extend(names.iter().cloned()),
            Change::Unsubscribe | Change::PUnsubscribe if names.is_empty() => set.clear(),
            Change::Unsubscribe | Change::PUnsubscribe => set.retain(|n| !names.contains(n)),
        }
    }

    /// The commands that turn `self` into `target`.
    fn changes_to(&self, target: &Subscriptions) -> Vec<(Change, Vec<Vec<u8>>)> {
        let diff = |a: &BTreeSet<Vec<u8>>, b: &BTreeSet<Vec<u8>>| a.difference(b).cloned().collect::<Vec<_>>();
        [
            (Change::Subscribe, diff(&target.channels, &self.channels)),
            (Change::PSubscribe, diff(&target.patterns, &self.patterns)),
            (Change::Unsubscribe, diff(&self.channels, &target.channels)),
            (Change::PUnsubscribe, diff(&self.patterns, &target.patterns)),
        ]
        .into_iter()
        .filter(|(_, names)| !names.is_empty())
        .collect()
    }
}

/// The subscribing half of one physical connection.
#[derive(Clone)]
enum Subscriber {
    Resp2(redis::aio::PubSubSink),
    Resp3(MultiplexedConnection),
}

impl Subscriber {
    async fn change(&mut self, change: Change, names: Vec<Vec<u8>>, timeout: Duration) -> RedisResult<()> {
        let sent = async {
            match (self, change) {
                (Subscriber::Resp2(sink), Change::Subscribe) => sink.subscribe(names).await,
                (Subscriber::Resp2(sink), Change::Unsubscribe) => sink.unsubscribe(names).await,
                (Subscriber::Resp2(sink), Change::PSubscribe) => sink.psubscribe(names).await,
                (Subscriber::Resp2(sink), Change::PUnsubscribe) => sink.punsubscribe(names).await,
                (Subscriber::Resp3(c), Change::Subscribe) => c.subscribe(names).await,
                (Subscriber::Resp3(c), Change::Unsubscribe) => c.unsubscribe(names).await,
                (Subscriber::Resp3(c), Change::PSubscribe) => c.psubscribe(names).await,
                (Subscriber::Resp3(c), Change::PUnsubscribe) => c.punsubscribe(names).await,
            }
        };
        within(timeout, "a subscription change", sent).await
    }

    /// Turns this connection's subscriptions from `from` into `to`.
    async fn reconcile(&mut self, from: &Subscriptions, to: &Subscriptions, timeout: Duration) -> RedisResult<()> {
        for (change, names) in from.changes_to(to) {
            self.change(change, names, timeout).await?;
        }
        Ok(())
    }

    /// Answered after every message the server sent before it.
    async fn ping(&mut self, timeout: Duration) -> RedisResult<()> {
        let pinged = async {
            match self {
                Subscriber::Resp2(sink) => sink.ping::<redis::Value>().await.map(drop),
                Subscriber::Resp3(c) => redis::cmd("PING").query_async::<()>(c).await,
            }
        };
        within(timeout, "PING", pinged).await
    }
}

async fn within<T>(timeout: Duration, what: &str, f: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from((
            ErrorKind::Io,
            "timed out",
            format!("no reply to {what} within {timeout:?}"),
        ))),
    }
}

/// One physical connection: dropping it closes it.
struct Physical {
    subscriber: Subscriber,
    /// The task reading a RESP2 connection's messages (it owns the socket's reader).
    _reader: Option<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a subscription change and a take-over must see together: a connection becomes
/// the one changes go to only while holding this, after making up for the changes
/// recorded since it subscribed, so no change misses the connection that survives.
#[derive(Default)]
struct SubscriptionState {
    recorded: Subscriptions,
    live: Option<(ConnectionId, Subscriber)>,
}

/// What the handles, the readers and the supervisor share.
struct Shared {
    counters: Counters,
    lost: LostReports,
    /// Swapped-out connections whose drain ended.
    drained: LostReports,
    delivery: Mutex<Delivery<ConnectionId>>,
    subscriptions: Arc<tokio::sync::Mutex<SubscriptionState>>,
}

impl Shared {
    fn delivery(&self) -> std::sync::MutexGuard<'_, Delivery<ConnectionId>> {
        self.delivery.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> PubSubStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        // One lock: a second `self.delivery()` in this expression would wait for the first.
        let (duplicates, messages) = {
            let delivery = self.delivery();
            (delivery.duplicates(), delivery.delivered())
        };
        PubSubStats {
            connections_opened: get(&c.connections_opened),
            connect_failures: get(&c.connect_failures),
            reauthentications: get(&c.reauthentications),
            failed_auths: get(&c.failed_auths),
            swaps: get(&c.swaps),
            duplicates,
            closed_before_expiry: get(&c.closed_before_expiry),
            connections_lost: get(&c.connections_lost),
            messages,
        }
    }

    /// Connection `id` delivers nothing more; the next one's messages follow.
    fn finish(&self, id: ConnectionId) {
        self.delivery().finish(id);
    }
}

/// Whether subscription changes can reach a connection, as the supervisor publishes it.
#[derive(Clone)]
enum LiveState {
    Connecting,
    Live,
    Unavailable(RedisError),
    Stopped,
}

/// A subscriber that stays authenticated with Entra ID for as long as it lives, on
/// RESP2 as on RESP3. Mirrors `redis::aio::PubSub`.
///
/// - On RESP3 each renewal is an `AUTH` on the subscribed connection (retried, and the
///   connection replaced if none succeeds in time, as
///   [`ConnectionManager`](super::ConnectionManager) does).
/// - On RESP2, where the server refuses `AUTH` in subscribed mode, each renewal swaps
///   connections, make-before-break: a new connection authenticated with the new token
///   subscribes to every channel and pattern; once all are confirmed it takes over, and
///   the old one is drained and closed, well before its token expires. No message is
///   lost in a swap; one published while both were subscribed is delivered twice
///   ([`PubSubStats::duplicates`] counts them, and a log line names each swap's count).
///   Each connection's messages keep their order.
/// - A dropped connection is opened again and resubscribed; messages published while
///   none was subscribed are lost, as with any Redis subscriber. While no valid token
///   exists nothing is received; the subscriber recovers by itself once one is.
/// - Subscriptions are recorded: changes made during a swap reach the connection that
///   survives, and every new connection makes them again.
///
/// The stream never ends while the subscriber lives. Sharded pub/sub (`SSUBSCRIBE`) is
/// not offered: `redis::aio::PubSub` has no such method to build on.
///
/// ```no_run
/// use redis_entraid::EntraIdCredentialsProvider;
/// use tokio_stream::StreamExt;
///
/// # async fn run() -> redis::RedisResult<()> {
/// let provider = EntraIdCredentialsProvider::new_system_assigned_managed_identity()?;
/// let client = redis::Client::open("rediss://my-cache.westeurope.redis.azure.net:10000")?;
/// let mut pubsub = redis_entraid::aio::PubSub::new(client, provider).await?;
/// pubsub.subscribe("orders").await?;
/// while let Some(message) = pubsub.on_message().next().await {
///     let order: String = message.get_payload()?;
///     println!("{order}");
/// }
/// # Ok(()) }
/// ```
pub struct PubSub {
    sink: PubSubSink,
    stream: PubSubStream,
}

/// The half of a [`PubSub`] that changes subscriptions; cloneable.
#[derive(Clone)]
pub struct PubSubSink {
    inner: Arc<Inner>,
}

/// The half of a [`PubSub`] that yields its messages. Keeps the subscriber running.
pub struct PubSubStream {
    messages: mpsc::UnboundedReceiver<Msg>,
    _inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    live: watch::Receiver<LiveState>,
    response_timeout: Duration,
    /// How long a change waits for a connection being opened.
    connect_wait: Duration,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.sink.fmt(f)
    }
}

impl fmt::Debug for PubSubSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.inner.live.borrow() {
            LiveState::Connecting => "connecting".to_owned(),
            LiveState::Live => "subscribed".to_owned(),
            LiveState::Unavailable(error) => format!("unavailable: {error}"),
            LiveState::Stopped => "stopped".to_owned(),
        };
        f.debug_struct("PubSub")
            .field("state", &state)
            .field("stats", &self.inner.shared.snapshot())
            .finish()
    }
}

impl fmt::Debug for PubSubStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubStream")
            .field("stats", &self._inner.shared.snapshot())
            .finish()
    }
}

impl PubSub {
    /// Connects with the provider's current token (waiting for the first one) and keeps
    /// the subscriber authenticated from then on. RESP2 or RESP3 as the client's URL
    /// says (`?protocol=resp3`). Needs a tokio runtime.
    pub async fn new(client: redis::Client, provider: EntraIdCredentialsProvider) -> RedisResult<Self> {
        Self::new_with_config(client, provider, PubSubConfig::new()).await
    }

    /// Like [`new`](Self::new), with timeouts, spread and policy.
    pub async fn new_with_config(
        client: redis::Client,
        provider: EntraIdCredentialsProvider,
        config: PubSubConfig,
    ) -> RedisResult<Self> {
        refuse_plaintext_to_azure(client.get_connection_info(), config.allow_plaintext_to_azure)?;
        if config.response_timeout.is_zero() {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "invalid pub/sub configuration",
                "response_timeout must be greater than zero".to_owned(),
            )));
        }
        let resp3 = client
            .get_connection_info()
            .redis_settings()
            .protocol()
            .supports_resp3();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "redis_entraid::aio::PubSub needs a tokio runtime",
                "create it inside one".to_owned(),
            ))
        })?;
        let manager = provider.token_manager()?;
        let first_token = manager.token().await.map_err(no_token_error)?;

        let mut policy = config.policy.clone();
        policy.reauth_spread = config.reauth_spread.unwrap_or(provider.reauth_spread());
        let renewal = if resp3 { Renewal::InPlace } else { Renewal::Replace };
        let machine = state_machine(policy.clone())?.with_renewal(renewal);

        let (messages_tx, messages) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            lost: LostReports::default(),
            drained: LostReports::default(),
            delivery: Mutex::new(Delivery::new(messages_tx)),
            subscriptions: Arc::default(),
        });
        let (live_tx, live) = watch::channel(LiveState::Connecting);
        let mut supervisor = Supervisor {
            machine,
            client,
            resp3,
            response_timeout: config.response_timeout,
            tokens: Some(manager.subscribe()),
            manager: provider.manager_handle(),
            feed: TokenFeed::default(),
            token_error: None,
            connect_error: None,
            connections: IdMap::with_capacity(2),
            draining: IdMap::with_capacity(1),
            pending_connect: None,
            pending_auth: None,
            takeover: None,
            live: live_tx,
            shared: shared.clone(),
            swapping: false,
            retrying: None,
            health: GaugeShare::default(),
        };
        supervisor.feed.offer(&mut supervisor.machine, now(), first_token);
        let supervisor = runtime.spawn(supervisor.run());
        let inner = Arc::new(Inner {
            shared,
            live,
            response_timeout: config.response_timeout,
            connect_wait: policy.connect_timeout,
            supervisor,
        });
        let sink = PubSubSink { inner: inner.clone() };
        sink.wait_live(&mut sink.inner.live.clone(), false).await?;
        Ok(PubSub {
            sink,
            stream: PubSubStream {
                messages,
                _inner: inner,
            },
        })
    }

    /// Subscribes to `channel`, on this connection and every one to come.
    pub async fn subscribe(&mut self, channel: impl redis::ToRedisArgs) -> RedisResult<()> {
        self.sink.subscribe(channel).await
    }

    /// Unsubscribes from `channel` (from every channel if none is named).
    pub async fn unsubscribe(&mut self, channel: impl redis::ToRedisArgs) -> RedisResult<()> {
        self.sink.unsubscribe(channel).await
    }

    /// Subscribes to the channels matching `pattern`, on this connection and every one
    /// to come.
    pub async fn psubscribe(&mut self, pattern: impl redis::ToRedisArgs) -> RedisResult<()> {
        self.sink.psubscribe(pattern).await
    }

    /// Unsubscribes from `pattern` (from every pattern if none is named).
    pub async fn punsubscribe(&mut self, pattern: impl redis::ToRedisArgs) -> RedisResult<()> {
        self.sink.punsubscribe(pattern).await
    }

    /// The messages of every subscription, across swaps and reconnections.
    pub fn on_message(&mut self) -> impl Stream<Item = Msg> + '_ {
        &mut self.stream
    }

    /// The messages, owning the subscriber (it stops when the stream is dropped).
    pub fn into_on_message(self) -> PubSubStream {
        self.stream
    }

    /// Splits into a cloneable sink for subscription changes and the message stream.
    pub fn split(self) -> (PubSubSink, PubSubStream) {
        (self.sink, self.stream)
    }

    /// What happened to this subscriber's connections so far.
    pub fn stats(&self) -> PubSubStats {
        self.sink.stats()
    }
}

impl PubSubSink {
    /// Subscribes to `channel`; see [`PubSub::subscribe`].
    pub async fn subscribe(&mut self, channel: impl redis::ToRedisArgs) -> RedisResult<()> {
        self.change(Change::Subscribe, channel.to_redis_args()).await
    }

    /// Unsubscribes from `channel`; see [`PubSub::unsubscribe`].
    pub async fn unsubscribe(&mut self, channel: impl redis::ToRedisArgs) -> RedisResult<()> {
        self.change(Change::Unsubscribe, channel.to_redis_args()).await
    }

    /// Subscribes to `pattern`; see [`PubSub::psubscribe`].
    pub async fn psubscribe(&mut self, pattern: impl redis::ToRedisArgs) -> RedisResult<()> {
        self.change(Change::PSubscribe, pattern.to_redis_args()).await
    }

    /// Unsubscribes from `pattern`; see [`PubSub::punsubscribe`].
    pub async fn punsubscribe(&mut self, pattern: impl redis::ToRedisArgs) -> RedisResult<()> {
        self.change(Change::PUnsubscribe, pattern.to_redis_args()).await
    }

    /// What happened to the subscriber's connections so far.
    pub fn stats(&self) -> PubSubStats {
        self.inner.shared.snapshot()
    }

    /// Records the change, then makes it on the connection in use, waiting (at most the
    /// connection timeout) for one if none is. On an error the change stays recorded:
    /// the next connection makes it.
    async fn change(&self, change: Change, names: Vec<Vec<u8>>) -> RedisResult<()> {
        if names.is_empty() && matches!(change, Change::Subscribe | Change::PSubscribe) {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "nothing to subscribe to",
                "name at least one channel or pattern".to_owned(),
            )));
        }
        let shared = &self.inner.shared;
        let mut live = self.inner.live.clone();
        let mut recorded = false;
        loop {
            let mut state = shared.subscriptions.lock().await;
            if !recorded {
                state.recorded.apply(change, &names);
                recorded = true;
            }
            if let Some((id, subscriber)) = &mut state.live {
                let id = *id;
                let result = subscriber
                    .change(change, names.clone(), self.inner.response_timeout)
                    .await;
                match result {
                    Err(error) if error.is_unrecoverable_error() => {
                        // Dropped under us: the supervisor opens another, which makes
                        // the recorded change.
                        shared.lost.report(id);
                        state.live = None;
                    }
                    result => return result,
                }
            }
            drop(state);
            self.wait_live(&mut live, true).await.map_err(|error| {
                RedisError::from((
                    error.kind(),
                    "subscription change recorded, not yet in force",
                    format!("{error}; it is made as soon as a connection is back"),
                ))
            })?;
        }
    }

    /// Resolves when a connection is in use; the reason at once when none can be. With
    /// `stale`, the state's current word is not taken: a change found no connection
    /// although it said there was one, so the supervisor's next word is awaited.
    async fn wait_live(&self, live: &mut watch::Receiver<LiveState>, stale: bool) -> RedisResult<()> {
        let mut stale = stale;
        let wait = async {
            loop {
                match &*live.borrow_and_update() {
                    LiveState::Live if !stale => return Ok(()),
                    LiveState::Unavailable(error) => return Err(error.clone()),
                    LiveState::Stopped => return Err(stopped_error()),
                    LiveState::Live | LiveState::Connecting => {}
                }
                stale = false;
                if live.changed().await.is_err() {
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
                    "no connection to Redis could be opened within {:?}; the subscriber keeps trying",
                    self.inner.connect_wait
                ),
            ))),
        }
    }
}

impl Stream for PubSubStream {
    type Item = Msg;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Msg>> {
        self.messages.poll_recv(cx)
    }
}

fn stopped_error() -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "the subscriber stopped",
        "its background task ended; create a new PubSub".to_owned(),
    ))
}

/// Hands a RESP3 connection's messages to the delivery and reports its disconnection.
/// Weak: the connection lives inside what it points to.
struct PushForwarder {
    id: ConnectionId,
    shared: Weak<Shared>,
}

impl AsyncPushSender for PushForwarder {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let Some(shared) = self.shared.upgrade() else {
            return Err(SendError);
        };
        if info.kind == PushKind::Disconnection {
            shared.lost.report(self.id);
        } else if let Some(msg) = Msg::from_push_info(info) {
            shared.delivery().accept(self.id, msg);
        }
        Ok(())
    }
}

/// Reads a RESP2 connection's messages until it closes.
async fn read_messages(id: ConnectionId, mut stream: redis::aio::PubSubStream, shared: Weak<Shared>) {
    while let Some(msg) = stream.next().await {
        let Some(shared) = shared.upgrade() else { return };
        shared.delivery().accept(id, msg);
    }
    if let Some(shared) = shared.upgrade() {
        shared.lost.report(id);
    }
}

/// A connection opened and subscribed, with the subscription state held so it can take
/// over before any other change is made.
struct Opened {
    physical: Physical,
    takeover: OwnedMutexGuard<SubscriptionState>,
}

enum Wake {
    Token(Option<Result<entraid_identity::Token, TokenManagerError>>),
    Connected(ConnectionId, RedisResult<Opened>),
    Auth(ConnectionId, Generation, RedisResult<()>),
    Lost(Vec<ConnectionId>),
    Drained(Vec<ConnectionId>),
    Timer,
}

struct Supervisor {
    machine: ConnectionStateMachine,
    client: redis::Client,
    resp3: bool,
    response_timeout: Duration,
    /// `None` once the token manager stopped.
    tokens: Option<TokenStream>,
    /// Keeps the token manager running; a new stream if it had to be started again.
    manager: ManagerHandle,
    feed: TokenFeed,
    token_error: Option<TokenManagerError>,
    connect_error: Option<RedisError>,
    connections: IdMap<Physical>,
    /// Swapped-out connections being drained, by the task that drains each.
    draining: IdMap<AbortOnDrop>,
    pending_connect: Option<(ConnectionId, BoxFuture<RedisResult<Opened>>)>,
    pending_auth: PendingAuth,
    /// Held from a connection's last subscription check until it is in use.
    takeover: Option<OwnedMutexGuard<SubscriptionState>>,
    live: watch::Sender<LiveState>,
    shared: Arc<Shared>,
    /// The connection being opened takes over from a live one.
    swapping: bool,
    /// The connection whose last re-authentication failed (retried meanwhile).
    retrying: Option<ConnectionId>,
    /// This subscriber's share of the provider's connection figures.
    health: GaugeShare,
}

impl Supervisor {
    async fn run(mut self) {
        loop {
            let deadline = self.act();
            // A take-over not followed by `Use` (the machine closed it) is let go.
            self.takeover = None;
            self.publish();
            let wake = tokio::select! {
                item = next_token(&mut self.tokens) => Wake::Token(item),
                (id, result) = wait_pending(&mut self.pending_connect) => Wake::Connected(id, result),
                ((id, generation), result) = wait_pending(&mut self.pending_auth) => Wake::Auth(id, generation, result),
                ids = self.shared.lost.next() => Wake::Lost(ids),
                ids = self.shared.drained.next() => Wake::Drained(ids),
                () = sleep_until(deadline) => Wake::Timer,
            };
            let now = now();
            match wake {
                Wake::Token(Some(Ok(token))) => {
                    self.token_error = None;
                    self.feed.offer(&mut self.machine, now, token);
                }
                Wake::Token(Some(Err(TokenManagerError::TokenExpired))) => {
                    self.token_error = Some(TokenManagerError::TokenExpired);
                    self.machine.handle_token_lost(now);
                }
                Wake::Token(Some(Err(TokenManagerError::RuntimeShutDown))) => {
                    // The provider starts the manager again on a runtime of its own.
                    self.tokens = self.manager.resubscribe();
                }
                Wake::Token(Some(Err(error))) => self.token_error = Some(error),
                Wake::Token(None) => {
                    self.token_error = Some(TokenManagerError::Stopped);
                    self.machine.handle_token_lost(now);
                    self.tokens = None;
                }
                Wake::Connected(id, Ok(opened)) => {
                    self.pending_connect = None;
                    self.connect_error = None;
                    bump(&self.shared.counters.connections_opened);
                    self.connections.insert(id, opened.physical);
                    self.takeover = Some(opened.takeover);
                    self.machine.handle_connected(now, id);
                }
                Wake::Connected(id, Err(error)) => {
                    self.pending_connect = None;
                    tracing::warn!(connection = %id, %error, "opening a subscriber connection failed");
                    bump(&self.shared.counters.connect_failures);
                    self.shared.finish(id);
                    self.connect_error = Some(error);
                    self.machine.handle_connect_failed(now, id);
                }
                Wake::Auth(id, generation, result) => {
                    self.pending_auth = None;
                    self.retrying = self.retrying.filter(|r| *r != id);
                    match &result {
                        Ok(()) => {
                            bump(&self.shared.counters.reauthentications);
                            if let Some(token) = self.feed.get(generation) {
                                self.manager.health().reauthenticated(token);
                            }
                        }
                        Err(error) => {
                            self.retrying = Some(id);
                            bump(&self.shared.counters.failed_auths);
                            tracing::warn!(connection = %id, %error, "re-authentication failed; retrying");
                        }
                    }
                    match result {
                        Err(error) if error.is_unrecoverable_error() => self.lost(now, id),
                        result => self.machine.handle_auth_result(now, id, generation, result.is_ok()),
                    }
                }
                Wake::Lost(ids) => {
                    for id in ids {
                        self.lost(now, id);
                    }
                }
                Wake::Drained(ids) => {
                    for id in ids {
                        self.draining.remove(&id);
                        self.machine.handle_connection_lost(now, id);
                    }
                }
                Wake::Timer => self.machine.handle_timeout(now),
            }
        }
    }

    fn lost(&mut self, now: std::time::Instant, id: ConnectionId) {
        if self.connections.remove(&id).is_some() {
            bump(&self.shared.counters.connections_lost);
            tracing::warn!(connection = %id, "subscriber connection lost; opening another");
        }
        self.draining.remove(&id);
        self.shared.finish(id);
        self.forget_live(id);
        self.machine.handle_connection_lost(now, id);
    }

    /// Subscription changes stop going to `id` (later, if one is being made on it).
    fn forget_live(&self, id: ConnectionId) {
        let subscriptions = self.shared.subscriptions.clone();
        tokio::spawn(async move {
            let mut state = subscriptions.lock().await;
            if state.live.as_ref().is_some_and(|(live, _)| *live == id) {
                state.live = None;
            }
        });
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
                    self.swapping = self.machine.is_behind();
                    if self.swapping {
                        bump(&self.shared.counters.swaps);
                        // On RESP2 every renewal swaps; only a RESP3 swap is a replacement.
                        if self.resp3 {
                            self.manager.health().replaced();
                        }
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
                    (
                        Some(Physical {
                            subscriber: Subscriber::Resp3(connection),
                            ..
                        }),
                        Some(token),
                    ) => {
                        let mut connection = connection.clone();
                        let auth = redis::cmd("AUTH").arg(token.username()).arg(token.secret()).to_owned();
                        let future: BoxFuture<RedisResult<()>> =
                            Box::pin(
                                async move { within(timeout, "AUTH", auth.query_async::<()>(&mut connection)).await },
                            );
                        self.pending_auth = Some(((id, generation), future));
                    }
                    _ => self.machine.handle_auth_result(now(), id, generation, false),
                },
                ConnectionOutput::Use(id) => {
                    let subscriber = self.connections.get(&id).map(|p| p.subscriber.clone());
                    match (self.takeover.take(), subscriber) {
                        (Some(mut state), Some(subscriber)) => state.live = Some((id, subscriber)),
                        _ => tracing::error!(connection = %id, "a connection in use without its take-over"),
                    }
                    if self.swapping {
                        tracing::info!(connection = %id, "swap: the new subscriber connection took over");
                    }
                }
                ConnectionOutput::Retire(id) => {
                    if let Some(old) = self.connections.remove(&id) {
                        let drain = self.drain(id, old);
                        self.draining.insert(id, drain);
                    }
                    if self.pending_auth.as_ref().is_some_and(|((a, _), _)| *a == id) {
                        self.pending_auth = None;
                    }
                }
                ConnectionOutput::Close(id) => {
                    let open = self.connections.remove(&id).is_some();
                    let draining = self.draining.remove(&id).is_some();
                    if open || draining {
                        bump(&self.shared.counters.closed_before_expiry);
                        tracing::info!(connection = %id, "subscriber connection closed before its token expires");
                    }
                    self.shared.finish(id);
                    self.forget_live(id);
                    if self.pending_auth.as_ref().is_some_and(|((a, _), _)| *a == id) {
                        self.pending_auth = None;
                    }
                }
                ConnectionOutput::Timeout(at) => return Some(tokio::time::Instant::from_std(at)),
                ConnectionOutput::Idle => return None,
                _ => {}
            }
        }
    }

    /// Reads what the server sent a swapped-out connection before its `PING`, then
    /// closes it; the new connection's messages follow.
    fn drain(&self, id: ConnectionId, mut old: Physical) -> AbortOnDrop {
        let shared = Arc::downgrade(&self.shared);
        let timeout = self.response_timeout;
        AbortOnDrop(tokio::spawn(async move {
            if let Err(error) = old.subscriber.ping(timeout).await {
                tracing::warn!(connection = %id, %error, "draining a swapped-out connection failed");
            }
            drop(old);
            if let Some(shared) = shared.upgrade() {
                shared.finish(id);
                shared.drained.report(id);
            }
        }))
    }

    /// Opens a connection authenticated with `token` in its handshake and subscribed to
    /// everything recorded, holding the subscription state once it is.
    fn open(
        &self,
        id: ConnectionId,
        token: &entraid_identity::Token,
        timeout: Duration,
    ) -> BoxFuture<RedisResult<Opened>> {
        let info = self.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_username(token.username())
            .set_password(token.secret());
        let client = redis::Client::open(info.set_redis_settings(settings));
        self.shared.delivery().open(id);
        let shared = Arc::downgrade(&self.shared);
        let subscriptions = self.shared.subscriptions.clone();
        let (resp3, response_timeout) = (self.resp3, self.response_timeout);
        Box::pin(async move {
            let connect = async {
                let client = client?;
                let mut physical = if resp3 {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(response_timeout))
                        .set_push_sender(PushForwarder {
                            id,
                            shared: shared.clone(),
                        });
                    Physical {
                        subscriber: Subscriber::Resp3(
                            client.get_multiplexed_async_connection_with_config(&config).await?,
                        ),
                        _reader: None,
                    }
                } else {
                    let (sink, stream) = client.get_async_pubsub().await?.split();
                    Physical {
                        subscriber: Subscriber::Resp2(sink),
                        _reader: Some(AbortOnDrop(tokio::spawn(read_messages(id, stream, shared)))),
                    }
                };
                // Everything recorded, then, holding the record, whatever changed since.
                let snapshot = subscriptions.lock().await.recorded.clone();
                physical
                    .subscriber
                    .reconcile(&Subscriptions::default(), &snapshot, response_timeout)
                    .await?;
                let takeover = subscriptions.lock_owned().await;
                physical
                    .subscriber
                    .reconcile(&snapshot, &takeover.recorded, response_timeout)
                    .await?;
                Ok(Opened { physical, takeover })
            };
            within(timeout, "opening a subscriber connection", connect).await
        })
    }

    /// Tells subscription changes whether a connection is in use, when that changed.
    fn publish(&mut self) {
        let connections = &self.connections;
        self.retrying = self.retrying.filter(|id| connections.get(id).is_some());
        let retrying = usize::from(self.retrying.is_some());
        let live = self.connections.len() + self.draining.len();
        self.health.set(self.manager.health(), live, retrying);
        let state = match self.machine.availability() {
            Availability::Connected(_) => LiveState::Live,
            Availability::Connecting => LiveState::Connecting,
            Availability::NoValidToken => LiveState::Unavailable(no_token_error(
                self.token_error.clone().unwrap_or(TokenManagerError::TokenExpired),
            )),
            Availability::Reconnecting => LiveState::Unavailable(self.connect_error.clone().unwrap_or_else(|| {
                RedisError::from((
                    ErrorKind::Io,
                    "reconnecting",
                    "the last connection attempt failed".to_owned(),
                ))
            })),
        };
        self.live.send_if_modified(|current| {
            let same = match (&*current, &state) {
                (LiveState::Live, LiveState::Live) | (LiveState::Connecting, LiveState::Connecting) => true,
                (LiveState::Unavailable(a), LiveState::Unavailable(b)) => a.to_string() == b.to_string(),
                _ => false,
            };
            if !same {
                *current = state;
            }
            !same
        });
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.health.release(self.manager.health());
        self.live.send_replace(LiveState::Stopped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    #[test]
    fn changes_are_recorded_and_unsubscribing_nothing_named_drops_the_kind() {
        let mut s = Subscriptions::default();
        s.apply(Change::Subscribe, &names(&["a", "b"]));
        s.apply(Change::PSubscribe, &names(&["p*"]));
        s.apply(Change::Unsubscribe, &names(&["a"]));
        assert_eq!(s.channels, names(&["b"]).into_iter().collect());
        s.apply(Change::Unsubscribe, &[]);
        assert!(s.channels.is_empty());
        assert_eq!(s.patterns.len(), 1, "patterns are another kind");
    }

    #[test]
    fn a_new_connection_makes_up_exactly_the_changes_recorded_since_its_snapshot() {
        let mut snapshot = Subscriptions::default();
        snapshot.apply(Change::Subscribe, &names(&["a", "b"]));
        snapshot.apply(Change::PSubscribe, &names(&["p*"]));
        let mut now = snapshot.clone();
        now.apply(Change::Unsubscribe, &names(&["a"]));
        now.apply(Change::Subscribe, &names(&["c"]));
        now.apply(Change::PUnsubscribe, &[]);
        assert_eq!(
            snapshot.changes_to(&now),
            vec![
                (Change::Subscribe, names(&["c"])),
                (Change::Unsubscribe, names(&["a"])),
                (Change::PUnsubscribe, names(&["p*"])),
            ]
        );
        assert!(now.changes_to(&now).is_empty());
    }
}
