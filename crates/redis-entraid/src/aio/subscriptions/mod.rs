//! Subscriptions, shared by [`PubSub`](super::PubSub) and the
//! [`ConnectionManager`](super::ConnectionManager)'s RESP3 subscriptions:
//! - here, [`Subscriptions`] as a value: what a connection is subscribed to or should be,
//!   and the changes that turn one set into another;
//! - `machine`: `SubscriptionMachine`, the sans-IO record (changes in flight, catch-up
//!   of a connection taking over, refusals, the wait for a connection);
//! - `actor`: its executor inside the supervisor's task, and the mailbox handles post
//!   changes to;
//! - `subscriber`: the I/O on one connection, RESP2 or RESP3.

mod actor;
mod machine;
mod subscriber;

use std::collections::BTreeSet;

pub(crate) use self::actor::{ChangeRequest, SubscriptionActor, request_change};
pub(crate) use self::subscriber::Subscriber;

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
