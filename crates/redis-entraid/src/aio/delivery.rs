//! The order in which a [`PubSub`](super::PubSub)'s connections hand messages to the user.
//!
//! During a swap two connections are subscribed at once. The one opened first delivers;
//! the newer one's messages wait in a buffer until the first is finished (drained, lost
//! or closed), then follow it. Each connection's messages keep their order, and none is
//! dropped. A message published while both were subscribed arrives on both and is
//! delivered twice; the number of such duplicates is counted (not removed: two equal
//! messages may be two real ones).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use redis::Msg;
use tokio::sync::mpsc::UnboundedSender;

/// How many messages of the delivering connection are remembered, during an overlap, to
/// count duplicates. Past this the count is a lower bound.
const OVERLAP_LOG_LIMIT: usize = 4096;

/// A message reduced to what identifies it: (channel and pattern, payload) hashes.
type Fingerprint = (u64, u64);

fn fingerprint(msg: &Msg) -> Fingerprint {
    let mut key = DefaultHasher::new();
    msg.get_channel::<Vec<u8>>().unwrap_or_default().hash(&mut key);
    if msg.from_pattern() {
        msg.get_pattern::<Vec<u8>>().unwrap_or_default().hash(&mut key);
    }
    let mut payload = DefaultHasher::new();
    msg.get_payload_bytes().hash(&mut payload);
    (key.finish(), payload.finish())
}

#[derive(Debug)]
struct Feed<K> {
    id: K,
    finished: bool,
    /// Messages waiting for the connections ahead to finish.
    buffered: Vec<Msg>,
    /// What this connection delivered while another was queued behind it.
    overlap: Vec<Fingerprint>,
}

/// The connections of one subscriber (by id, `K`), in delivery order.
#[derive(Debug)]
pub(crate) struct Delivery<K> {
    sender: UnboundedSender<Msg>,
    queue: Vec<Feed<K>>,
    delivered: u64,
}

impl<K: Copy + PartialEq> Delivery<K> {
    pub(crate) fn new(sender: UnboundedSender<Msg>) -> Self {
        Delivery {
            sender,
            queue: Vec::with_capacity(2),
            delivered: 0,
        }
    }

    /// Connection `id` is being opened: its messages come after those of every
    /// connection opened before it.
    pub(crate) fn open(&mut self, id: K) {
        if !self.queue.iter().any(|f| f.id == id) {
            self.queue.push(Feed {
                id,
                finished: false,
                buffered: Vec::new(),
                overlap: Vec::new(),
            });
        }
    }

    /// A message read from connection `id`. Messages of a finished or unknown connection
    /// are dropped: they arrived after it was given up, and its successor has them.
    pub(crate) fn accept(&mut self, id: K, msg: Msg) {
        match self.queue.iter().position(|f| f.id == id) {
            Some(0) => self.deliver(msg),
            Some(at) if !self.queue[at].finished => self.queue[at].buffered.push(msg),
            _ => {}
        }
    }

    /// Connection `id` will deliver nothing more. Returns how many messages the
    /// connections that took over had in common with it (duplicates delivered).
    pub(crate) fn finish(&mut self, id: K) -> u64 {
        let Some(feed) = self.queue.iter_mut().find(|f| f.id == id) else {
            return 0;
        };
        feed.finished = true;
        let mut duplicates = 0;
        while self.queue.first().is_some_and(|f| f.finished) {
            let done = self.queue.remove(0);
            let Some(next) = self.queue.first_mut() else { break };
            let buffered = std::mem::take(&mut next.buffered);
            duplicates += count_duplicates(&done.overlap, &buffered);
            for msg in buffered {
                self.deliver(msg);
            }
        }
        if self.queue.len() <= 1
            && let Some(first) = self.queue.first_mut()
        {
            // Nothing queued behind it any more: no overlap to remember.
            first.overlap = Vec::new();
        }
        duplicates
    }

    /// Messages handed to the user so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    fn deliver(&mut self, msg: Msg) {
        if self.queue.len() > 1
            && let Some(first) = self.queue.first_mut()
            && first.overlap.len() < OVERLAP_LOG_LIMIT
        {
            first.overlap.push(fingerprint(&msg));
        }
        self.delivered += 1;
        // The user dropped the stream: nothing to deliver to.
        let _ = self.sender.send(msg);
    }
}

/// Per channel (and pattern), the longest run that ends what `earlier` delivered and
/// starts what `later` received: the messages published while both were subscribed.
fn count_duplicates(earlier: &[Fingerprint], later: &[Msg]) -> u64 {
    if earlier.is_empty() || later.is_empty() {
        return 0;
    }
    let mut by_key: HashMap<u64, (Vec<u64>, Vec<u64>)> = HashMap::new();
    for (key, payload) in earlier {
        by_key.entry(*key).or_default().0.push(*payload);
    }
    for (key, payload) in later.iter().map(fingerprint) {
        if let Some(entry) = by_key.get_mut(&key) {
            entry.1.push(payload);
        }
    }
    by_key
        .values()
        .map(|(a, b)| {
            (1..=a.len().min(b.len()))
                .rev()
                .find(|k| a[a.len() - k..] == b[..*k])
                .unwrap_or(0) as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    fn msg(channel: &str, payload: &str) -> Msg {
        Msg::from_owned_value(Value::Array(vec![
            Value::BulkString(b"message".to_vec()),
            Value::BulkString(channel.as_bytes().to_vec()),
            Value::BulkString(payload.as_bytes().to_vec()),
        ]))
        .unwrap()
    }

    fn received(rx: &mut UnboundedReceiver<Msg>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(format!(
                "{}:{}",
                m.get_channel_name(),
                String::from_utf8_lossy(m.get_payload_bytes())
            ));
        }
        out
    }

    #[test]
    fn a_swap_delivers_the_old_connection_first_then_the_new_one_and_counts_the_overlap() {
        let (tx, mut rx) = unbounded_channel();
        let mut delivery = Delivery::new(tx);
        let (old, new) = (1, 2);
        delivery.open(old);
        delivery.accept(old, msg("a", "1"));
        delivery.open(new);
        // Published 2 and 3 while both were subscribed: both get them.
        delivery.accept(new, msg("a", "2"));
        delivery.accept(old, msg("a", "2"));
        delivery.accept(new, msg("a", "3"));
        delivery.accept(old, msg("a", "3"));
        delivery.accept(new, msg("a", "4"));
        assert_eq!(received(&mut rx), ["a:1", "a:2", "a:3"], "the new one waits");
        assert_eq!(delivery.finish(old), 2);
        delivery.accept(new, msg("a", "5"));
        assert_eq!(received(&mut rx), ["a:2", "a:3", "a:4", "a:5"]);
        assert_eq!(delivery.delivered(), 7);
        // A late message from the finished one is not delivered.
        delivery.accept(old, msg("a", "6"));
        assert!(received(&mut rx).is_empty());
    }

    #[test]
    fn duplicates_are_counted_per_channel_and_equal_payloads_elsewhere_do_not_count() {
        let (tx, mut rx) = unbounded_channel();
        let mut delivery = Delivery::new(tx);
        let (old, new) = (1, 2);
        delivery.open(old);
        delivery.open(new);
        for m in [msg("a", "x"), msg("b", "1"), msg("a", "y"), msg("b", "2")] {
            delivery.accept(old, m);
        }
        // The new one subscribed after "a:x" and "b:1": it has "a:y" and "b:2", then more.
        for m in [msg("a", "y"), msg("b", "2"), msg("b", "x")] {
            delivery.accept(new, m);
        }
        assert_eq!(delivery.finish(old), 2);
        assert_eq!(received(&mut rx).len(), 7);
    }

    #[test]
    fn a_newer_connection_lost_before_the_older_one_finished_still_delivers_what_it_had() {
        let (tx, mut rx) = unbounded_channel();
        let mut delivery = Delivery::new(tx);
        let (old, new) = (1, 2);
        delivery.open(old);
        delivery.open(new);
        delivery.accept(old, msg("a", "1"));
        delivery.accept(new, msg("a", "2"));
        assert_eq!(delivery.finish(new), 0);
        assert_eq!(received(&mut rx), ["a:1"]);
        delivery.finish(old);
        assert_eq!(received(&mut rx), ["a:2"], "kept, in order, after the old one");
    }

    #[test]
    fn the_first_connection_delivers_at_once_and_unknown_ones_deliver_nothing() {
        let (tx, mut rx) = unbounded_channel();
        let mut delivery = Delivery::new(tx);
        let (first, stranger) = (1, 2);
        delivery.accept(first, msg("a", "0"));
        delivery.open(first);
        delivery.accept(first, msg("a", "1"));
        delivery.accept(stranger, msg("a", "2"));
        assert_eq!(received(&mut rx), ["a:1"]);
        assert_eq!(delivery.finish(stranger), 0);
    }
}
