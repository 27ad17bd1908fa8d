//! [`SubscriptionMachine`]: the sans-IO record of a subscriber's subscriptions, shared by
//! [`PubSub`](crate::aio::PubSub) and the [`ConnectionManager`](crate::aio::ConnectionManager)'s
//! RESP3 subscriptions. It decides which change goes to which connection and when, what
//! a connection that takes over must be caught up with, what callers are answered, and
//! when a change recorded while no connection is in use gives up waiting; its executor
//! (the transport, inside the supervisor's task) does the I/O.
//!
//! Inputs are `handle_*` with `now`; outputs come from [`poll_output`](SubscriptionMachine::poll_output)
//! and say why. The reply to a caller is an opaque `R` the machine hands back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use entraid_token_manager::ConnectionId;
use redis::{ErrorKind, RedisError, RedisResult};

use super::{Change, Subscriptions};

/// Identifies one piece of work the machine handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

/// A caller's change, with where its answer goes.
#[derive(Debug)]
struct Request<R> {
    change: Change,
    names: Vec<Vec<u8>>,
    reply: R,
}

/// Work under way on connection `on`.
#[derive(Debug)]
struct InFlight<R> {
    ticket: Ticket,
    on: ConnectionId,
    /// What `on` is subscribed to once it succeeds.
    target: Subscriptions,
    /// The caller's request; `None` for the machine's own reconciliation.
    request: Option<Request<R>>,
}

/// What the machine asks its executor to do.
#[derive(Debug)]
pub(crate) enum SubscriptionOutput<R> {
    /// Make `change` of `names` on connection `on`; report with
    /// [`handle_done`](SubscriptionMachine::handle_done) (`Ok` with nothing refused).
    Change {
        ticket: Ticket,
        on: ConnectionId,
        change: Change,
        names: Vec<Vec<u8>>,
    },
    /// Turn `on`'s subscriptions from `from` into `to` (a change refused or lost before
    /// left them apart); report with [`handle_done`](SubscriptionMachine::handle_done)
    /// and what the server refused.
    Reconcile {
        ticket: Ticket,
        on: ConnectionId,
        from: Subscriptions,
        to: Subscriptions,
    },
    /// Answer a caller.
    Answer { reply: R, result: RedisResult<()> },
    /// The server refused these when a connection made them again (an ACL change, say):
    /// they left the record, so they do not fail every later connection.
    Dropped(Subscriptions),
    /// A change found connection `on` lost.
    Lost(ConnectionId),
    /// The record could not be made again on `on`: what it has is taken as made, so this
    /// is not retried in a loop; the next connection tries again.
    NotReconciled { on: ConnectionId, error: RedisError },
}

/// The record, the connection changes go to, and the changes under way or waiting.
#[derive(Debug)]
pub(crate) struct SubscriptionMachine<R> {
    /// What every connection subscribes to: the changes the server confirmed, and those
    /// made while no connection was in use.
    record: Subscriptions,
    /// The connection changes go to, with what it is subscribed to (as confirmed).
    live: Option<(ConnectionId, Subscriptions)>,
    /// Changes waiting for the one in flight.
    queue: VecDeque<Request<R>>,
    /// Changes recorded while no connection was in use: answered when one takes over, or
    /// at their deadline.
    waiting: VecDeque<(Instant, Request<R>)>,
    in_flight: Option<InFlight<R>>,
    /// Why no connection can be opened now, while that is so.
    unavailable: Option<RedisError>,
    /// How long a change made while no connection is in use waits for one.
    connect_wait: Duration,
    next_ticket: u64,
    outputs: VecDeque<SubscriptionOutput<R>>,
}

impl<R> SubscriptionMachine<R> {
    pub(crate) fn new(connect_wait: Duration) -> Self {
        SubscriptionMachine {
            record: Subscriptions::default(),
            live: None,
            queue: VecDeque::new(),
            waiting: VecDeque::new(),
            in_flight: None,
            unavailable: None,
            connect_wait,
            next_ticket: 0,
            outputs: VecDeque::new(),
        }
    }

    /// What a connection should be subscribed to: the record, with the change in flight.
    pub(crate) fn target(&self) -> Subscriptions {
        match &self.in_flight {
            Some(InFlight {
                request: Some(request), ..
            }) => self.record.with(request.change, &request.names),
            _ => self.record.clone(),
        }
    }

    /// What the connection in use is subscribed to, if it is `id`.
    pub(crate) fn applied(&self, id: ConnectionId) -> Option<&Subscriptions> {
        self.live
            .as_ref()
            .filter(|(live, _)| *live == id)
            .map(|(_, applied)| applied)
    }

    /// A caller's change.
    pub(crate) fn handle_request(&mut self, now: Instant, change: Change, names: Vec<Vec<u8>>, reply: R) {
        self.accept(now, Request { change, names, reply });
        self.start_next();
    }

    /// A new connection made these subscriptions and the server refused `refused`.
    pub(crate) fn handle_refused(&mut self, refused: Subscriptions) {
        if refused.is_empty() {
            return;
        }
        self.record.remove(&refused);
        self.outputs.push_back(SubscriptionOutput::Dropped(refused));
    }

    /// Connection `id`, subscribed to `applied`, takes over.
    pub(crate) fn handle_take_over(&mut self, id: ConnectionId, applied: Subscriptions) {
        self.live = Some((id, applied));
        if self.in_flight.as_ref().is_some_and(|f| f.request.is_none()) {
            // A reconciliation of the connection before: the new one is caught up.
            self.in_flight = None;
        }
        // Recorded while none was in use, caught up by this one.
        for (_, request) in self.waiting.drain(..) {
            self.outputs.push_back(SubscriptionOutput::Answer {
                reply: request.reply,
                result: Ok(()),
            });
        }
        self.start_next();
    }

    /// Connection `id` is gone. If it was the one in use, with none taking over, the
    /// changes queued for it are recorded for the next one.
    pub(crate) fn handle_gone(&mut self, now: Instant, id: ConnectionId) {
        if self.live.as_ref().is_some_and(|(live, _)| *live == id) {
            self.lose_live(now);
        }
    }

    /// Why no connection can be opened now (`None`: one can, or is in use). Changes
    /// waiting for a connection are told at once.
    pub(crate) fn handle_unavailable(&mut self, error: Option<RedisError>) {
        self.unavailable = error;
        if let Some(error) = &self.unavailable {
            for (_, request) in self.waiting.drain(..) {
                self.outputs.push_back(SubscriptionOutput::Answer {
                    reply: request.reply,
                    result: Err(not_in_force(error)),
                });
            }
        }
    }

    /// The work of `ticket` ended: what the server refused, or why it failed.
    pub(crate) fn handle_done(&mut self, now: Instant, ticket: Ticket, result: RedisResult<Subscriptions>) {
        let Some(InFlight {
            on, target, request, ..
        }) = self.in_flight.take_if(|f| f.ticket == ticket)
        else {
            return;
        };
        let on_live = self.live.as_ref().is_some_and(|(live, _)| *live == on);
        match (result, request) {
            (Ok(refused), request) => {
                if on_live && let Some((_, applied)) = &mut self.live {
                    *applied = target;
                    applied.remove(&refused);
                }
                self.handle_refused(refused);
                if let Some(request) = request {
                    self.record.apply(request.change, &request.names);
                    self.outputs.push_back(SubscriptionOutput::Answer {
                        reply: request.reply,
                        result: Ok(()),
                    });
                }
            }
            (Err(error), request) if error.is_unrecoverable_error() => {
                // Dropped under us: recorded, the next connection makes it, and the ones
                // queued behind it after it, in the callers' order.
                let queued = if on_live {
                    self.live = None;
                    std::mem::take(&mut self.queue)
                } else {
                    VecDeque::new()
                };
                for request in request.into_iter().chain(queued) {
                    self.accept(now, request);
                }
                self.outputs.push_back(SubscriptionOutput::Lost(on));
            }
            (Err(error), Some(request)) => {
                // Refused, or no reply in time: not recorded, the caller is told.
                self.outputs.push_back(SubscriptionOutput::Answer {
                    reply: request.reply,
                    result: Err(error),
                });
            }
            (Err(error), None) => {
                if on_live && let Some((_, applied)) = &mut self.live {
                    *applied = self.record.clone();
                }
                self.outputs.push_back(SubscriptionOutput::NotReconciled { on, error });
            }
        }
        self.start_next();
    }

    /// Time has passed: changes that waited too long for a connection are told.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while self.waiting.front().is_some_and(|(deadline, _)| *deadline <= now) {
            if let Some((_, request)) = self.waiting.pop_front() {
                let error = RedisError::from((
                    ErrorKind::Io,
                    "no connection",
                    format!("no connection to Redis could be opened within {:?}", self.connect_wait),
                ));
                self.outputs.push_back(SubscriptionOutput::Answer {
                    reply: request.reply,
                    result: Err(not_in_force(&error)),
                });
            }
        }
    }

    /// The next deadline: the first change waiting for a connection gives up.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.waiting.front().map(|(deadline, _)| *deadline)
    }

    /// The next thing to do, if any.
    pub(crate) fn poll_output(&mut self) -> Option<SubscriptionOutput<R>> {
        let output = self.outputs.pop_front();
        if output.is_none() {
            // Keep nothing allocated between changes.
            self.outputs = VecDeque::new();
        }
        output
    }

    /// No connection is in use any more: the changes queued for it are recorded for the
    /// next one.
    fn lose_live(&mut self, now: Instant) {
        self.live = None;
        for request in std::mem::take(&mut self.queue) {
            self.accept(now, request);
        }
    }

    /// Queues a change for the connection in use, or records it for the next one.
    fn accept(&mut self, now: Instant, request: Request<R>) {
        if self.live.is_some() {
            self.queue.push_back(request);
            return;
        }
        self.record.apply(request.change, &request.names);
        match &self.unavailable {
            Some(error) => self.outputs.push_back(SubscriptionOutput::Answer {
                reply: request.reply,
                result: Err(not_in_force(error)),
            }),
            None => self.waiting.push_back((now + self.connect_wait, request)),
        }
    }

    /// Starts the next change on the connection in use, if nothing is in flight.
    fn start_next(&mut self) {
        let Some((on, applied)) = &self.live else { return };
        if self.in_flight.is_some() {
            return;
        }
        let on = *on;
        let ticket = Ticket(self.next_ticket);
        if let Some(request) = self.queue.pop_front() {
            self.next_ticket += 1;
            let target = applied.with(request.change, &request.names);
            self.outputs.push_back(SubscriptionOutput::Change {
                ticket,
                on,
                change: request.change,
                names: request.names.clone(),
            });
            self.in_flight = Some(InFlight {
                ticket,
                on,
                target,
                request: Some(request),
            });
        } else if *applied != self.record {
            // A change refused or lost on an earlier connection: converge on the record.
            self.next_ticket += 1;
            let (from, to) = (applied.clone(), self.record.clone());
            self.in_flight = Some(InFlight {
                ticket,
                on,
                target: to.clone(),
                request: None,
            });
            self.outputs
                .push_back(SubscriptionOutput::Reconcile { ticket, on, from, to });
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn names(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    fn set(channels: &[&str]) -> Subscriptions {
        Subscriptions::default().with(Change::Subscribe, &names(channels))
    }

    /// The machine's connection ids come from the connection machine; tests take them
    /// from a connection machine too.
    fn ids() -> (ConnectionId, ConnectionId) {
        use entraid_token_manager::{ConnectionOutput, ConnectionPolicy, ConnectionStateMachine};
        let mut sm = ConnectionStateMachine::with_seed(ConnectionPolicy::default(), 1).unwrap();
        let now = Instant::now();
        let connect = |sm: &mut ConnectionStateMachine| loop {
            match sm.poll_output() {
                ConnectionOutput::Connect { id, .. } => return id,
                ConnectionOutput::Timeout(_) | ConnectionOutput::Idle => panic!("no connect"),
                ConnectionOutput::Use(_)
                | ConnectionOutput::SendAuth { .. }
                | ConnectionOutput::Probe { .. }
                | ConnectionOutput::Retire { .. }
                | ConnectionOutput::Close { .. }
                | ConnectionOutput::HandoffMissed(_)
                | ConnectionOutput::RelaxTimeouts(_) => {}
            }
        };
        sm.handle_token(now, now + 60 * S, 60 * S);
        let first = connect(&mut sm);
        sm.handle_connected(now, first);
        sm.handle_connection_lost(now + 2 * S, first);
        (first, connect(&mut sm))
    }

    fn drain(m: &mut SubscriptionMachine<u32>) -> Vec<SubscriptionOutput<u32>> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    fn answers(outputs: &[SubscriptionOutput<u32>]) -> Vec<(u32, bool)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                SubscriptionOutput::Answer { reply, result } => Some((*reply, result.is_ok())),
                _ => None,
            })
            .collect()
    }

    fn work(outputs: &[SubscriptionOutput<u32>]) -> Option<(Ticket, ConnectionId)> {
        outputs.iter().find_map(|o| match o {
            SubscriptionOutput::Change { ticket, on, .. } | SubscriptionOutput::Reconcile { ticket, on, .. } => {
                Some((*ticket, *on))
            }
            _ => None,
        })
    }

    fn refused() -> RedisError {
        RedisError::from((ErrorKind::Client, "NOPERM"))
    }

    fn dropped() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }

    #[test]
    fn a_change_goes_to_the_connection_in_use_and_is_recorded_once_confirmed() {
        let (a, _) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.handle_take_over(a, Subscriptions::default());
        m.handle_request(now, Change::Subscribe, names(&["x"]), 1);
        let out = drain(&mut m);
        let (ticket, on) = work(&out).unwrap();
        assert_eq!(on, a);
        assert!(answers(&out).is_empty(), "answered only once the server confirmed it");
        assert_eq!(m.target(), set(&["x"]), "a connection opened meanwhile makes it too");
        m.handle_done(now, ticket, Ok(Subscriptions::default()));
        assert_eq!(answers(&drain(&mut m)), vec![(1, true)]);
        assert_eq!(m.applied(a), Some(&set(&["x"])));
        assert_eq!(m.target(), set(&["x"]));
    }

    #[test]
    fn changes_queue_behind_the_one_in_flight_in_order() {
        let (a, _) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.handle_take_over(a, Subscriptions::default());
        m.handle_request(now, Change::Subscribe, names(&["x"]), 1);
        m.handle_request(now, Change::Subscribe, names(&["y"]), 2);
        let out = drain(&mut m);
        assert_eq!(out.len(), 1, "one change at a time: {out:?}");
        let (first, _) = work(&out).unwrap();
        m.handle_done(now, first, Ok(Subscriptions::default()));
        let out = drain(&mut m);
        assert_eq!(answers(&out), vec![(1, true)]);
        let (second, _) = work(&out).unwrap();
        assert_ne!(first, second);
        m.handle_done(now, second, Ok(Subscriptions::default()));
        assert_eq!(answers(&drain(&mut m)), vec![(2, true)]);
        assert_eq!(m.applied(a), Some(&set(&["x", "y"])));
    }

    #[test]
    fn a_change_refused_by_the_server_is_not_recorded_and_the_caller_is_told() {
        let (a, _) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.handle_take_over(a, Subscriptions::default());
        m.handle_request(now, Change::Subscribe, names(&["x"]), 1);
        let (ticket, _) = work(&drain(&mut m)).unwrap();
        m.handle_done(now, ticket, Err(refused()));
        assert_eq!(answers(&drain(&mut m)), vec![(1, false)]);
        assert!(m.target().is_empty());
    }

    #[test]
    fn without_a_connection_a_change_is_recorded_and_waits_exactly_the_connect_wait() {
        let (a, _) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.handle_request(now, Change::Subscribe, names(&["x"]), 1);
        m.handle_request(now + S, Change::Subscribe, names(&["y"]), 2);
        assert!(drain(&mut m).is_empty());
        assert_eq!(m.target(), set(&["x", "y"]), "the next connection makes them");
        assert_eq!(m.deadline(), Some(now + 5 * S));
        m.handle_timeout(now + 5 * S - Duration::from_millis(1));
        assert!(drain(&mut m).is_empty());
        m.handle_timeout(now + 5 * S);
        assert_eq!(answers(&drain(&mut m)), vec![(1, false)]);
        assert_eq!(m.deadline(), Some(now + 6 * S));
        // The second is still waiting when a connection takes over: it is in force.
        m.handle_take_over(a, set(&["x", "y"]));
        assert_eq!(answers(&drain(&mut m)), vec![(2, true)]);
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn while_no_connection_can_be_opened_waiting_changes_are_told_at_once() {
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.handle_request(now, Change::Subscribe, names(&["x"]), 1);
        m.handle_unavailable(Some(refused()));
        let out = drain(&mut m);
        assert_eq!(answers(&out), vec![(1, false)]);
        let SubscriptionOutput::Answer { result: Err(error), .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert!(error.to_string().contains("recorded, not yet in force"), "{error}");
        m.handle_request(now, Change::Subscribe, names(&["y"]), 2);
        assert_eq!(answers(&drain(&mut m)), vec![(2, false)]);
        assert_eq!(m.target(), set(&["x", "y"]), "both stay recorded");
    }

    #[test]
    fn a_change_in_flight_during_a_takeover_reaches_the_new_connection() {
        let (old, new) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        // (The record follows what connections confirmed; seed it as the old one has.)
        m.record = set(&["x"]);
        m.handle_take_over(old, set(&["x"]));
        m.handle_request(now, Change::Subscribe, names(&["y"]), 1);
        let (ticket, on) = work(&drain(&mut m)).unwrap();
        assert_eq!(on, old);
        // A new connection opens and catches up now: the change in flight is in its target.
        assert_eq!(m.target(), set(&["x", "y"]));
        m.handle_take_over(new, set(&["x", "y"]));
        m.handle_done(now, ticket, Ok(Subscriptions::default()));
        let out = drain(&mut m);
        assert_eq!(answers(&out), vec![(1, true)]);
        assert!(work(&out).is_none(), "nothing left to converge: {out:?}");
        assert_eq!(m.applied(new), Some(&set(&["x", "y"])));
    }

    #[test]
    fn a_change_made_after_the_catch_up_is_converged_on_the_new_connection() {
        let (old, new) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.handle_take_over(old, Subscriptions::default());
        m.handle_request(now, Change::Subscribe, names(&["y"]), 1);
        let (ticket, _) = work(&drain(&mut m)).unwrap();
        // The new connection caught up before the change: it lacks it.
        m.handle_take_over(new, Subscriptions::default());
        m.handle_done(now, ticket, Ok(Subscriptions::default()));
        let out = drain(&mut m);
        assert_eq!(answers(&out), vec![(1, true)]);
        let Some(SubscriptionOutput::Reconcile { on, from, to, ticket }) = out
            .into_iter()
            .find(|o| matches!(o, SubscriptionOutput::Reconcile { .. }))
        else {
            panic!("no reconciliation")
        };
        assert_eq!((on, from, to.clone()), (new, Subscriptions::default(), set(&["y"])));
        m.handle_done(now, ticket, Ok(Subscriptions::default()));
        assert_eq!(m.applied(new), Some(&to));
    }

    #[test]
    fn a_connection_dropped_under_a_change_keeps_it_for_the_next_one() {
        let (a, b) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.handle_take_over(a, Subscriptions::default());
        m.handle_request(now, Change::Subscribe, names(&["x"]), 1);
        m.handle_request(now, Change::Subscribe, names(&["y"]), 2);
        let (ticket, _) = work(&drain(&mut m)).unwrap();
        m.handle_done(now, ticket, Err(dropped()));
        let out = drain(&mut m);
        assert!(
            matches!(out.as_slice(), [SubscriptionOutput::Lost(on)] if *on == a),
            "{out:?}"
        );
        assert_eq!(m.target(), set(&["x", "y"]));
        m.handle_take_over(b, set(&["x", "y"]));
        assert_eq!(answers(&drain(&mut m)), vec![(1, true), (2, true)]);
    }

    #[test]
    fn the_connection_in_use_gone_records_what_was_queued_for_it() {
        let (a, _) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.handle_take_over(a, Subscriptions::default());
        m.handle_request(now, Change::Subscribe, names(&["x"]), 1);
        m.handle_request(now, Change::PSubscribe, names(&["p*"]), 2);
        drain(&mut m);
        m.handle_gone(now, a);
        assert_eq!(m.deadline(), Some(now + 5 * S), "the queued one waits for a connection");
        assert!(m.target().len() >= 2, "{:?}", m.target());
    }

    #[test]
    fn what_the_server_refuses_when_a_connection_subscribes_again_leaves_the_record() {
        let (a, _) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.handle_request(now, Change::Subscribe, names(&["x", "secret"]), 1);
        m.handle_refused(set(&["secret"]));
        let out = drain(&mut m);
        assert!(
            matches!(&out[..], [SubscriptionOutput::Dropped(d)] if *d == set(&["secret"])),
            "{out:?}"
        );
        assert_eq!(m.target(), set(&["x"]));
        m.handle_take_over(a, set(&["x"]));
        assert_eq!(answers(&drain(&mut m)), vec![(1, true)]);
    }

    #[test]
    fn a_reconciliation_that_fails_is_not_retried_in_a_loop() {
        let (a, _) = ids();
        let now = Instant::now();
        let mut m = SubscriptionMachine::new(5 * S);
        m.record = set(&["x"]);
        m.handle_take_over(a, Subscriptions::default());
        let (ticket, _) = work(&drain(&mut m)).unwrap();
        m.handle_done(now, ticket, Err(refused()));
        let out = drain(&mut m);
        assert!(
            matches!(&out[..], [SubscriptionOutput::NotReconciled { on, .. }] if *on == a),
            "{out:?}"
        );
        assert_eq!(m.applied(a), Some(&set(&["x"])));
    }
}
