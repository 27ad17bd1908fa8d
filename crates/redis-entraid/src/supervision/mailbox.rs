//! [`Mailbox`]: what handles on any task post to their supervisor's task. A `Mutex` held
//! only to push or take, and a `Notify`, rather than a channel: one lives beside every
//! connection, and tokio's unbounded channel allocates a block of slots up front.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

/// Items posted by handles, taken in order by the supervisor's task.
#[derive(Debug)]
pub(crate) struct Mailbox<T> {
    items: Mutex<VecDeque<T>>,
    notify: Notify,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            items: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
        }
    }
}

impl<T> Mailbox<T> {
    /// Posts `item`, unless `same` finds an equal one waiting.
    pub(crate) fn post_unless(&self, item: T, same: impl Fn(&T, &T) -> bool) {
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        if !items.iter().any(|waiting| same(waiting, &item)) {
            items.push_back(item);
        }
        drop(items);
        self.notify.notify_one();
    }

    /// Posts `item`.
    pub(crate) fn post(&self, item: T) {
        self.post_unless(item, |_, _| false);
    }

    /// Everything posted so far, once there is something. Cancel-safe: items are taken
    /// only in the poll that returns them.
    pub(crate) async fn take(&self) -> VecDeque<T> {
        loop {
            let items = std::mem::take(&mut *self.items.lock().unwrap_or_else(PoisonError::into_inner));
            if !items.is_empty() {
                return items;
            }
            self.notify.notified().await;
        }
    }
}
