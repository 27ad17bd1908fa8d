//! The order in which a [`PubSub`](super::PubSub)'s connections hand messages to the user.
//!
//! During a swap two connections are subscribed at once. The one opened first delivers;
//! the newer one's messages wait in a buffer until the first is finished (drained, lost
//! or closed), then follow it. Each connection's messages keep their order, and none is
//! dropped. A message published while both were subscribed arrives on both and is
//! delivered twice; the number of such duplicates is counted (not removed: two equal
//! messages may be two real ones). The newer connection may still be reading its copies
//! when the older one finishes, so a swap's count settles once the newer one has
//! delivered as many messages again as the older one did during the overlap (or at the
//! next swap); until then [`Delivery::duplicates`] counts what has arrived.

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

/// A finished swap whose duplicates are still being counted.
#[derive(Debug)]
struct Settling {
    /// What the older connection delivered during the overlap.
    earlier: Vec<Fingerprint>,
    /// What the newer one delivered since it took over.
    later: Vec<Fingerprint>,
}

impl Settling {
    fn count(&self) -> u64 {
        count_duplicates(&self.earlier, &self.later)
    }

    fn settled(&self) -> bool {
        self.later.len() >= 2 * self.earlier.len() + 16
    }
}

/// The connections of one subscriber (by id, `K`), in delivery order.
#[derive(Debug)]
pub(crate) struct Delivery<K> {
    sender: UnboundedSender<Msg>,
    queue: Vec<Feed<K>>,
    delivered: u64,
    /// Duplicates of the swaps that settled.
    duplicates: u64,
    settling: Option<Settling>,
}

impl<K: Copy + PartialEq> Delivery<K> {
    pub(crate) fn new(sender: UnboundedSender<Msg>) -> Self {
        Delivery {
            sender,
            queue: Vec::with_capacity(2),
            delivered: 0,
            duplicates: 0,
            settling: None,
        }
    }

    /// Connection `id` is being opened: its messages come after those of every
    /// connection opened before it.
    pub(crate) fn open(&mut self, id: K) {
        self.settle();
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

    /// Connection `id` will deliver nothing more; the next one's messages follow.
    pub(crate) fn finish(&mut self, id: K) {
        let Some(feed) = self.queue.iter_mut().find(|f| f.id == id) else {
            return;
        };
        feed.finished = true;
        while self.queue.first().is_some_and(|f| f.finished) {
            let done = self.queue.remove(0);
            let Some(next) = self.queue.first_mut() else { break };
            let buffered = std::mem::take(&mut next.buffered);
            self.settle();
            if !done.overlap.is_empty() {
                self.settling = Some(Settling {
                    earlier: done.overlap,
                    later: Vec::new(),
                });
            }
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
    }

    /// Messages delivered twice so far, because both connections of a swap had them.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates + self.settling.as_ref().map_or(0, Settling::count)
    }

    /// Messages handed to the user so far.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    fn deliver(&mut self, msg: Msg) {
        let overlapping =
            self.queue.len() > 1 && self.queue.first().is_some_and(|f| f.overlap.len() < OVERLAP_LOG_LIMIT);
        if overlapping || self.settling.is_some() {
            let print = fingerprint(&msg);
            if overlapping && let Some(first) = self.queue.first_mut() {
                first.overlap.push(print);
            }
            if let Some(settling) = &mut self.settling {
                settling.later.push(print);
                if settling.settled() {
                    self.settle();
                }
            }
        }
        self.delivered += 1;
        // The user dropped the stream: nothing to deliver to.
        let _ = self.sender.send(msg);
    }

    /// Counts the swap being settled for good.
    fn settle(&mut self) {
        if let Some(settling) = self.settling.take() {
            let duplicates = settling.count();
            self.duplicates += duplicates;
            if duplicates > 0 {
                tracing::info!(
                    duplicates,
                    "swap: messages both connections received were delivered twice"
                );
            }
        }
    }
}

/// Per channel (and pattern), the longest run that ends what `earlier` delivered and
/// starts what `later` received: the messages published while both were subscribed.
/// `later` may still be growing, so a run it matches only as far as it goes counts for
/// what it has.
fn count_duplicates(earlier: &[Fingerprint], later: &[Fingerprint]) -> u64 {
    if earlier.is_empty() || later.is_empty() {
        return 0;
    }
    let mut by_key: HashMap<u64, (Vec<u64>, Vec<u64>)> = HashMap::new();
    for (key, payload) in earlier {
        by_key.entry(*key).or_default().0.push(*payload);
    }
    for (key, payload) in later {
        if let Some(entry) = by_key.get_mut(key) {
            entry.1.push(*payload);
        }
    }
    by_key
        .values()
        .map(|(a, b)| {
            (1..=a.len())
                .rev()
                .map(|k| (k, k.min(b.len())))
                .find(|(k, m)| a[a.len() - k..a.len() - k + m] == b[..*m])
                .map_or(0, |(_, m)| m as u64)
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

    /// A swap under way: connection `OLD` delivering, `NEW` opened behind it.
    const OLD: u32 = 1;
    const NEW: u32 = 2;
    fn swapping() -> (Delivery<u32>, UnboundedReceiver<Msg>) {
        let (tx, rx) = unbounded_channel();
        let mut delivery = Delivery::new(tx);
        delivery.open(OLD);
        delivery.open(NEW);
        (delivery, rx)
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
        delivery.finish(old);
        assert_eq!(delivery.duplicates(), 2);
        delivery.accept(new, msg("a", "5"));
        assert_eq!(received(&mut rx), ["a:2", "a:3", "a:4", "a:5"]);
        assert_eq!(delivery.duplicates(), 2);
        assert_eq!(delivery.delivered(), 7);
        // A late message from the finished one is not delivered.
        delivery.accept(old, msg("a", "6"));
        assert!(received(&mut rx).is_empty());
    }

    #[test]
    fn duplicates_are_counted_per_channel_and_equal_payloads_elsewhere_do_not_count() {
        let (mut delivery, mut rx) = swapping();
        let (old, new) = (OLD, NEW);
        for m in [msg("a", "x"), msg("b", "1"), msg("a", "y"), msg("b", "2")] {
            delivery.accept(old, m);
        }
        // The new one subscribed after "a:x" and "b:1": it has "a:y" and "b:2", then more.
        for m in [msg("a", "y"), msg("b", "2"), msg("b", "x")] {
            delivery.accept(new, m);
        }
        delivery.finish(old);
        assert_eq!(delivery.duplicates(), 2);
        assert_eq!(received(&mut rx).len(), 7);
    }

    #[test]
    fn a_newer_connection_lost_before_the_older_one_finished_still_delivers_what_it_had() {
        let (mut delivery, mut rx) = swapping();
        let (old, new) = (OLD, NEW);
        delivery.accept(old, msg("a", "1"));
        delivery.accept(new, msg("a", "2"));
        delivery.finish(new);
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
        delivery.finish(stranger);
        assert_eq!(delivery.duplicates(), 0);
    }

    #[test]
    fn a_duplicate_the_new_connection_reads_after_the_old_one_finished_still_counts() {
        let (mut delivery, mut rx) = swapping();
        let (old, new) = (OLD, NEW);
        for payload in ["1", "2", "3"] {
            delivery.accept(old, msg("a", payload));
        }
        delivery.accept(new, msg("a", "2"));
        delivery.finish(old);
        assert_eq!(delivery.duplicates(), 1);
        // Its copy of "3" was still in its socket.
        delivery.accept(new, msg("a", "3"));
        assert_eq!(delivery.duplicates(), 2);
        for i in 4..40 {
            delivery.accept(new, msg("a", &i.to_string()));
        }
        assert_eq!(delivery.duplicates(), 2, "settled");
        assert_eq!(received(&mut rx).len(), 3 + 2 + 36);
        // The next swap starts from a settled count.
        delivery.open(3);
        assert_eq!(delivery.duplicates(), 2);
    }
}
