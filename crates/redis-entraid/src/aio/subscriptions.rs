//! Subscriptions as a value: what a connection is subscribed to or should be, the
//! commands that turn one set into another, and the subscribing half of a connection
//! that runs them. Shared by [`PubSub`](super::PubSub) and the
//! [`ConnectionManager`](super::ConnectionManager)'s RESP3 subscriptions.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult};

use super::supervision::within;

/// The server answered with an error (a refusal), as opposed to no answer: the
/// connection is fine.
fn is_refusal(error: &RedisError) -> bool {
    !(error.is_unrecoverable_error() || error.is_io_error() || error.is_timeout())
}

/// Channels and patterns a connection is subscribed to, or should be.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Subscriptions {
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
}

impl Subscriptions {
    /// Records `change`; unsubscribing with no names drops every one of its kind.
    pub(crate) fn apply(&mut self, change: Change, names: &[Vec<u8>]) {
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

    /// Leaves out everything in `other`.
    pub(crate) fn remove(&mut self, other: &Subscriptions) {
        self.channels.retain(|c| !other.channels.contains(c));
        self.patterns.retain(|p| !other.patterns.contains(p));
    }

    /// How many channels and patterns.
    pub(crate) fn len(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn with(&self, change: Change, names: &[Vec<u8>]) -> Subscriptions {
        let mut next = self.clone();
        next.apply(change, names);
        next
    }

    /// The commands that turn `self` into `target`.
    pub(crate) fn changes_to(&self, target: &Subscriptions) -> Vec<(Change, Vec<Vec<u8>>)> {
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
pub(crate) enum Subscriber {
    Resp2(redis::aio::PubSubSink),
    Resp3(MultiplexedConnection),
}

impl Subscriber {
    pub(crate) async fn change(&mut self, change: Change, names: Vec<Vec<u8>>, timeout: Duration) -> RedisResult<()> {
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

    /// Turns this connection's subscriptions from `from` into `to`. A subscription the
    /// server refuses (an ACL `NOPERM` on one channel) is left out with a log line
    /// instead of failing the connection, so one refused channel never breaks every
    /// later connection; returns those left out. A lost connection or a timeout fails it.
    pub(crate) async fn reconcile(
        &mut self,
        from: &Subscriptions,
        to: &Subscriptions,
        timeout: Duration,
    ) -> RedisResult<Subscriptions> {
        let mut refused = Subscriptions::default();
        for (change, names) in from.changes_to(to) {
            let Err(error) = self.change(change, names.clone(), timeout).await else {
                continue;
            };
            if !is_refusal(&error) {
                return Err(error);
            }
            // One by one, to keep every name the server accepts.
            for name in names {
                match self.change(change, vec![name.clone()], timeout).await {
                    Ok(()) => {}
                    Err(error) if is_refusal(&error) => {
                        tracing::warn!(
                            name = %String::from_utf8_lossy(&name),
                            %error,
                            "the server refused a subscription; it is dropped from the record"
                        );
                        if matches!(change, Change::Subscribe | Change::PSubscribe) {
                            refused.apply(change, &[name]);
                        }
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(refused)
    }

    /// Answered after every message the server sent before it.
    pub(crate) async fn ping(&mut self, timeout: Duration) -> RedisResult<()> {
        let pinged = async {
            match self {
                Subscriber::Resp2(sink) => sink.ping::<redis::Value>().await.map(drop),
                Subscriber::Resp3(c) => redis::cmd("PING").query_async::<()>(c).await,
            }
        };
        within(timeout, "PING", pinged).await
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
