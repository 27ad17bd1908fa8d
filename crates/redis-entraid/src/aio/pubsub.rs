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
//! [`PubSubTransport`] is an actor inside the supervisor's task: it alone owns the
//! subscription record and the live subscriber. Sinks send a change over a channel and
//! get the reply on a oneshot; no lock is held across an await, no task is detached.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use entraid_identity::Token;
use entraid_token_manager::{ConnectReason, ConnectionId, Renewal};
use redis::aio::{AsyncPushSender, SendError};
use redis::{AsyncConnectionConfig, ErrorKind, Msg, PushInfo, PushKind, RedisError, RedisResult};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::{Stream, StreamExt};

use super::delivery::Delivery;
use super::subscriptions::{Change, Subscriber, Subscriptions};
use super::supervision::{BoxFuture, Report};
use super::supervisor::{
    CatchUp, Counters, Gone, Retirement, Shared, Slot, Start, SupervisorHandle, Transport, start, stopped_error,
};
use crate::EntraIdCredentialsProvider;
use crate::connection_config::{ConnectionConfig, ConnectionType};
use crate::token_feed::auth_accepted;

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
    /// server sent before a `PING` that was answered), waiting at most `timeout`.
    async fn finish(mut self, timeout: Duration) {
        if let Some(finish) = self.finish.take() {
            let _ = finish.send(());
        }
        let _ = tokio::time::timeout(timeout, &mut self.task).await;
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the handles, the readers and the transport share.
struct PubSubShared {
    delivery: Mutex<Delivery<ConnectionId>>,
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
    supervisor: SupervisorHandle<(), ()>,
    shared: Arc<PubSubShared>,
    changes: mpsc::UnboundedSender<ChangeRequest>,
}

impl Inner {
    fn stats(&self) -> PubSubStats {
        let c = &self.supervisor.shared.counters;
        // One lock: a second `delivery()` in this expression would wait for the first.
        let (duplicates, messages) = {
            let delivery = self.shared.delivery();
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
    /// Connects with the provider's current token (waiting for the first one) and keeps
    /// the subscriber authenticated from then on. RESP2 or RESP3 as the client's URL
    /// says (`?protocol=resp3`). Needs a tokio runtime.
    pub async fn new(client: redis::Client, provider: EntraIdCredentialsProvider) -> RedisResult<Self> {
        Self::new_with_config(client, provider, ConnectionConfig::new()).await
    }

    /// Like [`new`](Self::new), with timeouts, spread and policy.
    pub async fn new_with_config(
        client: redis::Client,
        provider: EntraIdCredentialsProvider,
        config: ConnectionConfig,
    ) -> RedisResult<Self> {
        let resp3 = client
            .get_connection_info()
            .redis_settings()
            .protocol()
            .supports_resp3();
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let (changes, requests) = mpsc::unbounded_channel();
        let shared = Arc::new(PubSubShared {
            delivery: Mutex::new(Delivery::new(messages_tx)),
        });
        let supervisor_shared = Shared::new(());
        // `None` waits for ever; the drain `PING` still needs a bound.
        let response_timeout = config.response_timeout(ConnectionType::PubSub).unwrap_or(Duration::MAX);
        let transport = PubSubTransport {
            resp3,
            response_timeout,
            connect_wait: config.policy(&provider).connect_timeout,
            shared: shared.clone(),
            supervisor: Arc::downgrade(&supervisor_shared),
            requests,
            record: Subscriptions::default(),
            live: None,
            queue: VecDeque::new(),
            waiting: VecDeque::new(),
            wait_timer: None,
            in_flight: None,
            unavailable: None,
        };
        let supervisor = start(Start {
            client,
            provider: &provider,
            config: &config,
            kind: ConnectionType::PubSub,
            renewal: if resp3 { Renewal::InPlace } else { Renewal::Replace },
            transport,
            shared: supervisor_shared,
            what: "subscriber",
        })
        .await?;
        let inner = Arc::new(Inner {
            supervisor,
            shared,
            changes,
        });
        Ok(PubSub {
            sink: PubSubSink { inner: inner.clone() },
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
        self.inner.stats()
    }

    /// Hands the change to the subscriber's task and waits for its answer: the server's
    /// reply on the connection in use, or, with none in use, the change recorded (made by
    /// the next connection) and why it is not in force yet.
    async fn change(&self, change: Change, names: Vec<Vec<u8>>) -> RedisResult<()> {
        if names.is_empty() && matches!(change, Change::Subscribe | Change::PSubscribe) {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "nothing to subscribe to",
                "name at least one channel or pattern".to_owned(),
            )));
        }
        let (reply, answer) = oneshot::channel();
        let request = ChangeRequest { change, names, reply };
        if self.inner.changes.send(request).is_err() {
            return Err(stopped_error("subscriber"));
        }
        answer.await.unwrap_or_else(|_| Err(stopped_error("subscriber")))
    }
}

impl Stream for PubSubStream {
    type Item = Msg;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Msg>> {
        self.messages.poll_recv(cx)
    }
}

/// Hands a RESP3 connection's messages to the delivery and reports its disconnection.
/// Weak: the connection lives inside what it points to.
struct PushForwarder {
    id: ConnectionId,
    shared: Weak<PubSubShared>,
    supervisor: Weak<Shared<()>>,
}

impl AsyncPushSender for PushForwarder {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        if info.kind == PushKind::Disconnection {
            if let Some(supervisor) = self.supervisor.upgrade() {
                supervisor.reports.report(self.id, Report::Lost);
            }
            return Ok(());
        }
        let Some(shared) = self.shared.upgrade() else {
            return Err(SendError);
        };
        if let Some(msg) = Msg::from_push_info(info) {
            shared.delivery().accept(self.id, msg);
        }
        Ok(())
    }
}

/// Reads a RESP2 connection's messages until it closes, or until told to finish: then it
/// takes what was already received, and ends.
async fn read_messages(
    id: ConnectionId,
    mut stream: redis::aio::PubSubStream,
    shared: Weak<PubSubShared>,
    supervisor: Weak<Shared<()>>,
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
                    shared.delivery().accept(id, msg);
                }
                return;
            }
        };
        let Some(msg) = msg else { break };
        let Some(shared) = shared.upgrade() else { return };
        shared.delivery().accept(id, msg);
    }
    if let Some(supervisor) = supervisor.upgrade() {
        supervisor.reports.report(id, Report::Lost);
    }
}

/// A subscription change from a sink, answered on `reply`.
struct ChangeRequest {
    change: Change,
    names: Vec<Vec<u8>>,
    reply: oneshot::Sender<RedisResult<()>>,
}

/// The connection subscription changes go to.
struct Live {
    id: ConnectionId,
    subscriber: Subscriber,
    applied: Subscriptions,
}

/// A change under way on connection `id`.
struct InFlight {
    id: ConnectionId,
    /// What the connection is subscribed to once it succeeds.
    target: Subscriptions,
    /// The sink's request; `None` for the transport's own reconciliation.
    request: Option<ChangeRequest>,
    /// What the server refused, on success.
    future: BoxFuture<RedisResult<Subscriptions>>,
}

/// The subscriber's I/O: RESP3 `MultiplexedConnection`s or RESP2 `redis::aio::PubSub`s,
/// and the actor that owns the subscription record.
struct PubSubTransport {
    resp3: bool,
    response_timeout: Duration,
    /// How long a change waits for a connection being opened.
    connect_wait: Duration,
    shared: Arc<PubSubShared>,
    supervisor: Weak<Shared<()>>,
    requests: mpsc::UnboundedReceiver<ChangeRequest>,
    /// What every connection subscribes to: the changes the server confirmed, and those
    /// made while no connection was in use.
    record: Subscriptions,
    live: Option<Live>,
    /// Changes waiting for the one in flight.
    queue: VecDeque<ChangeRequest>,
    /// Changes recorded while no connection was in use, answered when one takes over.
    waiting: VecDeque<(tokio::time::Instant, ChangeRequest)>,
    wait_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    in_flight: Option<InFlight>,
    /// Why no connection can be opened now, while that is so.
    unavailable: Option<RedisError>,
}

impl PubSubTransport {
    /// What a connection should be subscribed to: the record, with the change in flight.
    fn target(&self) -> Subscriptions {
        match &self.in_flight {
            Some(InFlight {
                request: Some(request), ..
            }) => self.record.with(request.change, &request.names),
            _ => self.record.clone(),
        }
    }

    /// Subscriptions the server refused when a connection made them again leave the
    /// record, so they do not fail every later connection.
    fn drop_refused(&mut self, refused: &Subscriptions) {
        if refused.is_empty() {
            return;
        }
        self.record.remove(refused);
        if let Some(supervisor) = self.supervisor.upgrade() {
            Counters::add(&supervisor.counters.subscriptions_refused, refused.len());
        }
    }

    /// No connection is in use any more (lost or closed, with none taking over): the
    /// changes queued for it are recorded for the next one.
    fn lose_live(&mut self) {
        self.live = None;
        for request in std::mem::take(&mut self.queue) {
            self.accept(request);
        }
    }

    /// A change from a sink.
    fn accept(&mut self, request: ChangeRequest) {
        if self.live.is_some() {
            self.queue.push_back(request);
            return;
        }
        self.record.apply(request.change, &request.names);
        match &self.unavailable {
            Some(error) => {
                let _ = request.reply.send(Err(not_in_force(error)));
            }
            None => {
                let deadline = tokio::time::Instant::now() + self.connect_wait;
                self.waiting.push_back((deadline, request));
            }
        }
    }

    /// Starts the next change on the live connection, if nothing is in flight.
    fn start_next(&mut self) {
        let Some(live) = &self.live else { return };
        if self.in_flight.is_some() {
            return;
        }
        let timeout = self.response_timeout;
        let mut subscriber = live.subscriber.clone();
        if let Some(request) = self.queue.pop_front() {
            let (change, names) = (request.change, request.names.clone());
            self.in_flight = Some(InFlight {
                id: live.id,
                target: live.applied.with(change, &names),
                request: Some(request),
                future: Box::pin(async move {
                    subscriber.change(change, names, timeout).await?;
                    Ok(Subscriptions::default())
                }),
            });
        } else if live.applied != self.record {
            // A change refused or lost on an earlier connection: converge on the record.
            let (from, to) = (live.applied.clone(), self.record.clone());
            self.in_flight = Some(InFlight {
                id: live.id,
                target: to.clone(),
                request: None,
                future: Box::pin(async move { subscriber.reconcile(&from, &to, timeout).await }),
            });
        }
    }

    /// The change in flight ended with `result`; a connection found lost is returned.
    fn finish(&mut self, in_flight: InFlight, result: RedisResult<Subscriptions>) -> Option<ConnectionId> {
        let InFlight {
            id, target, request, ..
        } = in_flight;
        let on_live = self.live.as_ref().is_some_and(|l| l.id == id);
        match (result, request) {
            (Ok(refused), request) => {
                self.drop_refused(&refused);
                if on_live && let Some(live) = &mut self.live {
                    live.applied = target;
                    live.applied.remove(&refused);
                }
                if let Some(request) = request {
                    self.record.apply(request.change, &request.names);
                    let _ = request.reply.send(Ok(()));
                }
                None
            }
            (Err(error), request) if error.is_unrecoverable_error() => {
                // Dropped under us: recorded, the next connection makes it.
                if on_live {
                    self.lose_live();
                }
                if let Some(request) = request {
                    self.accept(request);
                }
                Some(id)
            }
            (Err(error), Some(request)) => {
                // Refused, or no reply in time: not recorded, the caller is told.
                let _ = request.reply.send(Err(error));
                None
            }
            (Err(error), None) => {
                // The record cannot be made on this connection: take what it has as
                // made, so this is not retried in a loop; the next connection tries again.
                tracing::warn!(connection = %id, %error, "subscriptions could not be made again on this connection");
                if on_live && let Some(live) = &mut self.live {
                    live.applied = self.record.clone();
                }
                None
            }
        }
    }

    /// Answers the waiting changes whose time is up, and sets the timer for the next.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) {
        loop {
            let now = tokio::time::Instant::now();
            while self.waiting.front().is_some_and(|(deadline, _)| *deadline <= now) {
                if let Some((_, request)) = self.waiting.pop_front() {
                    let error = RedisError::from((
                        ErrorKind::Io,
                        "no connection",
                        format!("no connection to Redis could be opened within {:?}", self.connect_wait),
                    ));
                    let _ = request.reply.send(Err(not_in_force(&error)));
                }
            }
            let Some((deadline, _)) = self.waiting.front() else {
                self.wait_timer = None;
                return;
            };
            let timer = self
                .wait_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*deadline)));
            timer.as_mut().reset(*deadline);
            if timer.as_mut().poll(cx).is_pending() {
                return;
            }
        }
    }

    fn poll_lost(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionId> {
        loop {
            while let Poll::Ready(Some(request)) = self.requests.poll_recv(cx) {
                self.accept(request);
            }
            if let Some(in_flight) = &mut self.in_flight
                && let Poll::Ready(result) = in_flight.future.as_mut().poll(cx)
                && let Some(in_flight) = self.in_flight.take()
            {
                if let Some(lost) = self.finish(in_flight, result) {
                    return Poll::Ready(lost);
                }
                continue;
            }
            let idle = self.in_flight.is_none();
            self.start_next();
            if idle && self.in_flight.is_some() {
                continue;
            }
            self.poll_waiting(cx);
            return Poll::Pending;
        }
    }
}

/// A change recorded while no connection is in use, and why none is.
fn not_in_force(error: &RedisError) -> RedisError {
    RedisError::from((
        error.kind(),
        "subscription change recorded, not yet in force",
        format!("{error}; it is made as soon as a connection is back"),
    ))
}

impl Transport for PubSubTransport {
    /// Its shared state has an allocation of its own, held weakly by the readers.
    type Shared = ();
    type Conn = Physical;
    type Handle = ();

    /// Authenticated in its handshake and subscribed to everything recorded.
    fn open(
        &mut self,
        id: ConnectionId,
        client: redis::Client,
        _reason: ConnectReason,
        timeout: Duration,
    ) -> BoxFuture<RedisResult<Physical>> {
        self.shared.delivery().open(id);
        let shared = Arc::downgrade(&self.shared);
        let supervisor = self.supervisor.clone();
        let (resp3, response_timeout) = (self.resp3, self.response_timeout);
        let target = self.target();
        Box::pin(async move {
            let mut physical = if resp3 {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(response_timeout))
                    .set_push_sender(PushForwarder { id, shared, supervisor });
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
                            task: tokio::spawn(read_messages(id, stream, shared, supervisor, finishing)),
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
        self.drop_refused(&refused);
        let target = self.target();
        if conn.applied == target {
            return CatchUp::Ready(conn);
        }
        let timeout = self.response_timeout;
        CatchUp::Pending(Box::pin(async move {
            conn.refused = conn.subscriber.reconcile(&conn.applied, &target, timeout).await?;
            conn.applied = target;
            conn.applied.remove(&conn.refused);
            Ok(conn)
        }))
    }

    fn auth(&self, conn: &Physical, token: &Token, timeout: Duration) -> BoxFuture<RedisResult<()>> {
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
        let auth = redis::cmd("AUTH").arg(token.username()).arg(token.secret()).to_owned();
        Box::pin(async move {
            auth.query_async::<redis::Value>(&mut connection)
                .await
                .and_then(auth_accepted)
        })
    }

    fn probe(&self, conn: &Physical, timeout: Duration) -> BoxFuture<RedisResult<()>> {
        let mut subscriber = conn.subscriber.clone();
        Box::pin(async move { subscriber.ping(timeout).await })
    }

    fn take_over(&mut self, id: ConnectionId, conn: &Physical) {
        self.live = Some(Live {
            id,
            subscriber: conn.subscriber.clone(),
            applied: conn.applied.clone(),
        });
        if self.in_flight.as_ref().is_some_and(|f| f.request.is_none()) {
            // A reconciliation of the connection before: the new one is caught up.
            self.in_flight = None;
        }
        // Recorded while none was in use, caught up by this one.
        for (_, request) in self.waiting.drain(..) {
            let _ = request.reply.send(Ok(()));
        }
        tracing::info!(connection = %id, "subscriber connection in use");
    }

    fn handle(&self, _conn: &Physical, _close_grace: Option<Duration>, _relaxed: Option<Duration>) {}

    /// Reads what the server sent it before its `PING`, then closes it; the new
    /// connection's messages follow.
    fn retire(&mut self, id: ConnectionId, mut conn: Physical) -> Retirement {
        if self.live.as_ref().is_some_and(|l| l.id == id) {
            self.live = None;
        }
        let timeout = self.response_timeout;
        Retirement::Drain(Box::pin(async move {
            if let Err(error) = conn.subscriber.ping(timeout).await {
                tracing::warn!(connection = %id, %error, "draining a swapped-out connection failed");
            }
            // The PING's answer proves every earlier message reached the stream's
            // buffer, not that the reader took it: it takes them before the close.
            if let Some(reader) = conn.reader.take() {
                reader.finish(timeout).await;
            }
            drop(conn);
        }))
    }

    fn gone(&mut self, id: ConnectionId, _why: Gone) {
        self.shared.delivery().finish(id);
        if self.live.as_ref().is_some_and(|l| l.id == id) {
            self.lose_live();
        }
    }

    async fn next_lost(&mut self) -> ConnectionId {
        std::future::poll_fn(|cx| self.poll_lost(cx)).await
    }

    fn published(&mut self, slot: &Slot<()>) {
        self.unavailable = match slot {
            Slot::Unavailable { error, .. } => Some(error.clone()),
            Slot::Connecting | Slot::Ready(..) | Slot::Stopped => None,
        };
        if let Some(error) = &self.unavailable {
            for (_, request) in self.waiting.drain(..) {
                let _ = request.reply.send(Err(not_in_force(error)));
            }
        }
    }
}
