//! Retired connections: they take no new command, and are closed before their token
//! expires (or before the server closes them for a move) if still open then.

use std::collections::VecDeque;
use std::time::Instant;

use super::output::{CloseReason, ConnectionId, ConnectionOutput};

#[derive(Debug)]
struct Retired {
    id: ConnectionId,
    close_at: Instant,
    reason: CloseReason,
}

/// The retired connections still open: one or two at a time.
#[derive(Debug, Default)]
pub(super) struct Retiring(Vec<Retired>);

impl Retiring {
    /// `id` is closed at `close_at` for `reason`, if it has not gone by then.
    pub(super) fn push(&mut self, id: ConnectionId, close_at: Instant, reason: CloseReason) {
        self.0.push(Retired { id, close_at, reason });
    }

    /// `id` went (lost, or its drain ended): nothing to close.
    pub(super) fn remove(&mut self, id: ConnectionId) {
        self.0.retain(|r| r.id != id);
    }

    /// Asks for the close of every one due by `now`.
    pub(super) fn close_due(&mut self, now: Instant, outputs: &mut VecDeque<ConnectionOutput>) {
        self.0.retain(|r| {
            let due = r.close_at <= now;
            if due {
                outputs.push_back(ConnectionOutput::Close {
                    id: r.id,
                    reason: r.reason,
                });
            }
            !due
        });
    }

    /// Their close instants.
    pub(super) fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.0.iter().map(|r| r.close_at)
    }
}
