//! [`PubSub`]: a subscriber that stays authenticated with Entra ID on RESP2 and RESP3.
//!
//! The [`Supervisor`](super::supervisor) drives it, as it drives the
//! [`ConnectionManager`](super::ConnectionManager). On RESP3 a renewal is an `AUTH` on
//! the subscribed connection. On RESP2 the server refuses `AUTH` in subscribed mode, so
//! the machine runs with [`Renewal::Replace`]: each renewal opens a connection with the
//! new token, subscribes it to everything recorded, and once it is caught up it takes
//! over; the old one is drained (`PING`, answered after every message sent before it)
//! and closed. [`Delivery`] keeps the two connections' messages in order and counts the
//! ones both received.
//!
//! The subscription record is the shared [`SubscriptionActor`] inside the supervisor's
//! task (as for the manager's RESP3 subscriptions): sinks post a change to its mailbox and
//! get the reply on a oneshot; no lock is held across an await, no task is detached.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use entraid_token_manager::{ConnectionId, Renewal};
use redis::aio::{AsyncPushSender, SendError};
use redis::{AsyncConnectionConfig, ErrorKind, Msg, PushInfo, PushKind, RedisError, RedisResult};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};

use super::delivery::Delivery;
use super::subscriptions::{Change, ChangeRequest, Subscriber, SubscriptionActor, Subscriptions, request_change};
use super::supervision::BoxFuture;
use super::supervisor::{
    CatchUp, Gone, HandleView, OpenRequest, Retirement, Slot, Start, SupervisorHandle, Transport, start,
};
use crate::EntraIdCredentialsProvider;
use crate::commands;
use crate::connection_config::{ConnectionConfig, ConnectionType};
use crate::supervision::{Counters, Mailbox, Report, Shared};

/// How a [`PubSub`] connects, times out and re-authenticates: the one
/// [`ConnectionConfig`] of every connection type. Its response timeout bounds a
/// subscription change (and the `PING` that drains a connection being swapped out).
pub type PubSubConfig = ConnectionConfig;

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
    /// Channels and patterns dropped from the record because the server refused them
    /// when a new connection made them again (an ACL change, say); each is logged.
    pub subscriptions_refused: u64,
}

/// One physical connection: dropping it closes it.
struct Physical {
    subscriber: Subscriber,
    /// What it is subscribed to, as confirmed by the server.
    applied: Subscriptions,
    /// What the server refused when it subscribed, to drop from the record.
    refused: Subscriptions,
    /// The task reading a RESP2 connection's messages (it owns the socket's reader).
    reader: Option<Reader>,
}

/// The task reading a RESP2 connection's messages; aborted when dropped.
struct Reader {
    task: tokio::task::JoinHandle<()>,
    /// Tells it to take what is already received, then end.
    finish: Option<oneshot::Sender<()>>,
}

impl Reader {
    /// Ends the reader once it has taken every message already received (all those the
    /// server sent before a `PING` that was answered): it takes them without waiting for
    /// more, so this ends as soon as the reader runs.
    async fn finish(mut self) {
        if let Some(finish) = self.finish.take() {
            let _ = finish.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the handles, the readers and the transport share, in the supervisor's
/// [`Shared`].
struct PubSubShared {
    delivery: Mutex<Delivery<ConnectionId>>,
    /// Subscription changes from the sinks, for the supervisor's task.
    changes: Mailbox<ChangeRequest>,
}

impl PubSubShared {
    fn delivery(&self) -> std::sync::MutexGuard<'_, Delivery<ConnectionId>> {
        self.delivery.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
    supervisor: SupervisorHandle<(), PubSubShared>,
}

impl Inner {
    fn stats(&self) -> PubSubStats {
        let c = &self.supervisor.shared.counters;
        // One lock: a second `delivery()` in this expression would wait for the first.
        let (duplicates, messages) = {
            let delivery = self.supervisor.shared.of.delivery();
            (delivery.duplicates(), delivery.delivered())
        };
        PubSubStats {
            connections_opened: Counters::get(&c.connections_opened),
            connect_failures: Counters::get(&c.connect_failures),
            reauthentications: Counters::get(&c.reauthentications),
            failed_auths: Counters::get(&c.failed_auths),
            swaps: Counters::get(&c.replacements) + Counters::get(&c.renewal_swaps),
            duplicates,
            closed_before_expiry: Counters::get(&c.closed_before_expiry),
            connections_lost: Counters::get(&c.connections_lost),
            messages,
            subscriptions_refused: Counters::get(&c.subscriptions_refused),
        }
    }
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.sink.fmt(f)
    }
}

impl fmt::Debug for PubSubSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("state", &self.inner.supervisor.state())
            .field("stats", &self.inner.stats())
            .finish()
    }
}

impl fmt::Debug for PubSubStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubStream")
            .field("stats", &self._inner.stats())
            .finish()
    }
}

impl PubSub {
    /// Like [`new`](Self::new), with timeouts, spread and policy.
    pub async fn new_with_config(
        client: redis::Client,
        provider: EntraIdCredentialsProvider,
        config: PubSubConfig,
    ) -> RedisResult<Self> {
        let resp3 = client
            .get_connection_info()
            .redis_settings()
            .protocol()
            .supports_resp3();
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let shared = Shared::new(PubSubShared {
            delivery: Mutex::new(Delivery::new(messages_tx)),
            changes: Mailbox::default(),
        });
        // `None` waits for ever; the drain `PING` still needs a bound.
        let response_timeout = config.response_timeout(ConnectionType::PubSub).unwrap_or(Duration::MAX);
        let transport = PubSubTransport {
            resp3,
            response_timeout,
            shared: shared.clone(),
            subscriptions: SubscriptionActor::new(config.policy(&provider).connect_timeout, response_timeout),
        };
        let supervisor = start(Start {
            client,
            provider: &provider,
            config: &config,
            kind: ConnectionType::PubSub,
            renewal: if resp3 { Renewal::InPlace } else { Renewal::Replace },
            transport,
            shared,
            what: "subscriber",
        })
        .await?;
        let inner = Arc::new(Inner { supervisor });
        Ok(PubSub {
            sink: PubSubSink { inner: inner.clone() },
            stream: PubSubStream {
                messages,
                _inner: inner,
            },
        })
    }

    /// Connects with the provider's current token (waiting for the first one) and keeps
    /// the subscriber authenticated from then on. RESP2 or RESP3 as the client's URL
    /// says (`?protocol=resp3`). Needs a tokio runtime.
    pub async fn new(client: redis::Client, provider: EntraIdCredentialsProvider) -> RedisResult<Self> {
        Self::new_with_config(client, provider, PubSubConfig::new()).await
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
        self.inner.stats()
    }

    /// Hands the change to the subscriber's task and waits for its answer: the server's
    /// reply on the connection in use, or, with none in use, the change recorded (made by
    /// the next connection) and why it is not in force yet.
    async fn change(&self, change: Change, names: Vec<Vec<u8>>) -> RedisResult<()> {
        request_change(&self.inner.supervisor.shared.of.changes, change, names, "subscriber").await
    }
}

impl Stream for PubSubStream {
    type Item = Msg;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Msg>> {
        self.messages.poll_recv(cx)
    }
}

/// Hands a RESP3 connection's messages to the delivery and reports its disconnection.
/// Weak: it lives as long as its connection, which may outlive the subscriber briefly.
struct PushForwarder {
    id: ConnectionId,
    shared: Weak<Shared<PubSubShared>>,
}

impl AsyncPushSender for PushForwarder {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        let Some(shared) = self.shared.upgrade() else {
            return Err(SendError);
        };
        if info.kind == PushKind::Disconnection {
            shared.reports.report(self.id, Report::Lost);
            return Ok(());
        }
        if let Some(msg) = Msg::from_push_info(info) {
            shared.of.delivery().accept(self.id, msg);
        }
        Ok(())
    }
}

/// Reads a RESP2 connection's messages until it closes, or until told to finish: then it
/// takes what was already received, and ends.
async fn read_messages(
    id: ConnectionId,
    mut stream: redis::aio::PubSubStream,
    shared: Weak<Shared<PubSubShared>>,
    mut finishing: oneshot::Receiver<()>,
) {
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = &mut finishing => {
                // Everything already in the stream's buffer, without waiting for more.
                let mut cx = Context::from_waker(std::task::Waker::noop());
                while let Poll::Ready(Some(msg)) = Pin::new(&mut stream).poll_next(&mut cx) {
                    let Some(shared) = shared.upgrade() else { return };
                    shared.of.delivery().accept(id, msg);
                }
                return;
            }
        };
        let Some(msg) = msg else { break };
        let Some(shared) = shared.upgrade() else { return };
        shared.of.delivery().accept(id, msg);
    }
    if let Some(shared) = shared.upgrade() {
        shared.reports.report(id, Report::Lost);
    }
}

/// The subscriber's I/O: RESP3 `MultiplexedConnection`s or RESP2 `redis::aio::PubSub`s,
/// and the subscription record's actor.
struct PubSubTransport {
    resp3: bool,
    response_timeout: Duration,
    shared: Arc<Shared<PubSubShared>>,
    subscriptions: SubscriptionActor,
}

impl Transport for PubSubTransport {
    type Shared = PubSubShared;
    type Conn = Physical;
    type Handle = ();

    /// Authenticated in its handshake and subscribed to everything recorded.
    fn open(&mut self, open: OpenRequest) -> BoxFuture<RedisResult<Physical>> {
        let OpenRequest {
            id, client, timeout, ..
        } = open;
        self.shared.of.delivery().open(id);
        let shared = Arc::downgrade(&self.shared);
        let (resp3, response_timeout) = (self.resp3, self.response_timeout);
        let target = self.subscriptions.target();
        Box::pin(async move {
            let mut physical = if resp3 {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(response_timeout))
                    .set_push_sender(PushForwarder { id, shared });
                Physical {
                    subscriber: Subscriber::Resp3(client.get_multiplexed_async_connection_with_config(&config).await?),
                    applied: Subscriptions::default(),
                    refused: Subscriptions::default(),
                    reader: None,
                }
            } else {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Physical {
                    subscriber: Subscriber::Resp2(sink),
                    applied: Subscriptions::default(),
                    refused: Subscriptions::default(),
                    reader: Some({
                        let (finish, finishing) = oneshot::channel();
                        Reader {
                            task: tokio::spawn(read_messages(id, stream, shared, finishing)),
                            finish: Some(finish),
                        }
                    }),
                }
            };
            physical.refused = physical
                .subscriber
                .reconcile(&Subscriptions::default(), &target, response_timeout)
                .await?;
            physical.applied = target;
            physical.applied.remove(&physical.refused);
            Ok(physical)
        })
    }

    /// Makes up for the changes made while it was being opened, so none misses the
    /// connection that takes over.
    fn catch_up(&mut self, _id: ConnectionId, mut conn: Physical) -> CatchUp<Physical> {
        let refused = std::mem::take(&mut conn.refused);
        let Some((from, to)) = self
            .subscriptions
            .catch_up(&conn.applied, refused, &self.shared.counters)
        else {
            return CatchUp::Ready(conn);
        };
        let timeout = self.response_timeout;
        CatchUp::Pending(Box::pin(async move {
            conn.refused = conn.subscriber.reconcile(&from, &to, timeout).await?;
            conn.applied = to;
            conn.applied.remove(&conn.refused);
            Ok(conn)
        }))
    }

    fn auth(&self, conn: &Physical, auth: redis::Cmd, timeout: Duration) -> BoxFuture<RedisResult<()>> {
        let Subscriber::Resp3(connection) = &conn.subscriber else {
            return Box::pin(std::future::ready(Err(RedisError::from((
                ErrorKind::Client,
                "a RESP2 subscriber cannot send AUTH",
                "it is renewed by a swap".to_owned(),
            )))));
        };
        let mut connection = connection.clone();
        // Its own timeout, not a subscription change's.
        connection.set_response_timeout(timeout);
        Box::pin(async move {
            auth.query_async::<redis::Value>(&mut connection)
                .await
                .and_then(commands::auth_accepted)
        })
    }

    fn probe(&self, conn: &Physical, timeout: Duration) -> BoxFuture<RedisResult<()>> {
        let mut subscriber = conn.subscriber.clone();
        Box::pin(async move { subscriber.ping(timeout).await })
    }

    fn took_over(&mut self, id: ConnectionId, conn: &Physical) {
        self.subscriptions
            .took_over(id, conn.subscriber.clone(), conn.applied.clone(), &self.shared.counters);
        tracing::info!(connection = %id, "subscriber connection in use");
    }

    fn handle(&self, _conn: &Physical, _view: HandleView) {}

    /// Reads what the server sent it before its `PING`, then closes it; the new
    /// connection's messages follow.
    fn retire(&mut self, id: ConnectionId, mut conn: Physical) -> Retirement {
        let timeout = self.response_timeout;
        Retirement::Drain(Box::pin(async move {
            if let Err(error) = conn.subscriber.ping(timeout).await {
                tracing::warn!(connection = %id, %error, "draining a swapped-out connection failed");
            }
            // The PING's answer proves every earlier message reached the stream's
            // buffer, not that the reader took it: it takes them before the close.
            if let Some(reader) = conn.reader.take() {
                reader.finish().await;
            }
            drop(conn);
        }))
    }

    fn gone(&mut self, id: ConnectionId, _why: Gone) {
        self.shared.of.delivery().finish(id);
        self.subscriptions.gone(id, &self.shared.counters);
    }

    async fn own_work(&mut self) -> ConnectionId {
        self.subscriptions
            .work(&self.shared.of.changes, &self.shared.counters)
            .await
    }

    fn published(&mut self, slot: &Slot<()>) {
        let unavailable = match slot {
            Slot::Unavailable { error, .. } => Some(error.clone()),
            Slot::Connecting | Slot::Ready(..) | Slot::Stopped => None,
        };
        self.subscriptions.unavailable(unavailable, &self.shared.counters);
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        self.subscriptions.deadline()
    }

    fn handle_timeout(&mut self, now: std::time::Instant) {
        self.subscriptions.handle_timeout(now, &self.shared.counters);
    }
}
