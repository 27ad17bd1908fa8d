//! The executor of a [`SubscriptionMachine`], inside the supervisor's task: handles post
//! changes to a [`Mailbox`]; the actor hands them to the machine and makes the changes it
//! asks for on the connection in use. Its one deadline (a change waiting for a
//! connection) is the supervisor's timer; the actor keeps none of its own.

use std::future::Future;
use std::time::{Duration, Instant};

use entraid_token_manager::ConnectionId;
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::sync::oneshot;

use super::machine::{SubscriptionMachine, SubscriptionOutput, Ticket};
use super::{Change, Subscriber, Subscriptions};
use crate::aio::supervision::{BoxFuture, now, wait_pending};
use crate::aio::supervisor::stopped_error;
use crate::supervision::{Counters, Mailbox};

/// A subscription change from a handle, answered on `reply`.
pub(crate) struct ChangeRequest {
    change: Change,
    names: Vec<Vec<u8>>,
    reply: oneshot::Sender<RedisResult<()>>,
}

/// Posts a change to the supervisor's task and waits for its answer: the server's reply
/// on the connection in use, or, with none in use, the change recorded (made by the next
/// connection) and why it is not in force yet. `what` names the owner in errors.
pub(crate) async fn request_change(
    mailbox: &Mailbox<ChangeRequest>,
    change: Change,
    names: Vec<Vec<u8>>,
    what: &'static str,
) -> RedisResult<()> {
    if names.is_empty() && matches!(change, Change::Subscribe | Change::PSubscribe) {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "nothing to subscribe to",
            "name at least one channel or pattern".to_owned(),
        )));
    }
    let (reply, answer) = oneshot::channel();
    mailbox.post(ChangeRequest { change, names, reply });
    answer.await.unwrap_or_else(|_| Err(stopped_error(what)))
}

/// Makes a [`SubscriptionMachine`]'s changes on the connection in use.
pub(crate) struct SubscriptionActor {
    machine: SubscriptionMachine<oneshot::Sender<RedisResult<()>>>,
    /// The subscribing half of the connection in use.
    live: Option<(ConnectionId, Subscriber)>,
    in_flight: Option<(Ticket, BoxFuture<RedisResult<Subscriptions>>)>,
    /// How long one change may wait for the server's reply.
    response_timeout: Duration,
    /// A connection a change found lost, for the supervisor.
    lost: Option<ConnectionId>,
}

impl SubscriptionActor {
    /// Changes made while no connection is in use wait `connect_wait` for one; each
    /// change waits `response_timeout` for its reply.
    pub(crate) fn new(connect_wait: Duration, response_timeout: Duration) -> Self {
        SubscriptionActor {
            machine: SubscriptionMachine::new(connect_wait),
            live: None,
            in_flight: None,
            response_timeout,
            lost: None,
        }
    }

    /// What a connection opened now subscribes to.
    pub(crate) fn target(&self) -> Subscriptions {
        self.machine.target()
    }

    /// What the connection in use is subscribed to, if it is `id`.
    pub(crate) fn applied(&self, id: ConnectionId) -> Option<&Subscriptions> {
        self.machine.applied(id)
    }

    /// A connection opened subscribed to `applied`, the server having refused `refused`:
    /// what it must still make before it takes over (`from`, `to`), if anything.
    pub(crate) fn catch_up(
        &mut self,
        applied: &Subscriptions,
        refused: Subscriptions,
        counters: &Counters,
    ) -> Option<(Subscriptions, Subscriptions)> {
        self.machine.handle_refused(refused);
        self.execute(counters);
        let target = self.machine.target();
        (*applied != target).then(|| (applied.clone(), target))
    }

    /// Connection `id`, subscribed to `applied`, takes over.
    pub(crate) fn took_over(
        &mut self,
        id: ConnectionId,
        subscriber: Subscriber,
        applied: Subscriptions,
        counters: &Counters,
    ) {
        self.live = Some((id, subscriber));
        self.machine.handle_take_over(id, applied);
        self.execute(counters);
    }

    /// Connection `id` is gone.
    pub(crate) fn gone(&mut self, id: ConnectionId, counters: &Counters) {
        if self.live.as_ref().is_some_and(|(live, _)| *live == id) {
            self.live = None;
        }
        self.machine.handle_gone(now(), id);
        self.execute(counters);
    }

    /// Why no connection can be opened now (`None`: one can, or is in use).
    pub(crate) fn unavailable(&mut self, error: Option<RedisError>, counters: &Counters) {
        self.machine.handle_unavailable(error);
        self.execute(counters);
    }

    /// When the actor must be woken, for the supervisor's timer.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.machine.deadline()
    }

    /// The supervisor's timer fired.
    pub(crate) fn handle_timeout(&mut self, now: Instant, counters: &Counters) {
        self.machine.handle_timeout(now);
        self.execute(counters);
    }

    /// Takes changes from `mailbox` and runs them; resolves with a connection a change
    /// found lost. Cancel-safe: each step completes within one poll.
    pub(crate) async fn work(&mut self, mailbox: &Mailbox<ChangeRequest>, counters: &Counters) -> ConnectionId {
        loop {
            if let Some(lost) = self.lost.take() {
                return lost;
            }
            tokio::select! {
                requests = mailbox.take() => {
                    for request in requests {
                        self.machine.handle_request(now(), request.change, request.names, request.reply);
                    }
                }
                (ticket, result) = wait_pending(&mut self.in_flight) => {
                    self.in_flight = None;
                    self.machine.handle_done(now(), ticket, result);
                }
            }
            self.execute(counters);
        }
    }

    /// Does what the machine asks.
    fn execute(&mut self, counters: &Counters) {
        while let Some(output) = self.machine.poll_output() {
            match output {
                SubscriptionOutput::Change {
                    ticket,
                    on,
                    change,
                    names,
                } => self.start(ticket, on, move |mut subscriber, timeout| async move {
                    subscriber.change(change, names, timeout).await?;
                    Ok(Subscriptions::default())
                }),
                SubscriptionOutput::Reconcile { ticket, on, from, to } => {
                    self.start(ticket, on, move |mut subscriber, timeout| async move {
                        subscriber.reconcile(&from, &to, timeout).await
                    });
                }
                SubscriptionOutput::Answer { reply, result } => {
                    let _ = reply.send(result);
                }
                SubscriptionOutput::Dropped(refused) => {
                    Counters::add(&counters.subscriptions_refused, refused.len());
                }
                SubscriptionOutput::Lost(on) => self.lost = Some(on),
                SubscriptionOutput::NotReconciled { on, error } => {
                    tracing::warn!(connection = %on, %error, "subscriptions could not be made again on this connection");
                }
            }
        }
    }

    /// Starts `work` on the subscribing half of `on`, the connection in use, as the
    /// work of `ticket`; it fails at once if `on` is no longer in use.
    fn start<F>(&mut self, ticket: Ticket, on: ConnectionId, work: impl FnOnce(Subscriber, Duration) -> F)
    where
        F: Future<Output = RedisResult<Subscriptions>> + Send + 'static,
    {
        let future: BoxFuture<RedisResult<Subscriptions>> = match &self.live {
            Some((live, subscriber)) if *live == on => Box::pin(work(subscriber.clone(), self.response_timeout)),
            _ => Box::pin(std::future::ready(Err(RedisError::from((
                ErrorKind::Client,
                "the connection is no longer in use",
            ))))),
        };
        self.in_flight = Some((ticket, future));
    }
}
