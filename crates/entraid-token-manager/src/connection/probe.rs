//! The health check of the connection in use: after a command got no reply in time, a
//! `PING`; unanswered, the connection is taken for a silent path and replaced.

use std::time::{Duration, Instant};

/// The probe state of one connection.
#[derive(Debug, Default)]
pub(super) struct Probe {
    /// A health `PING` waiting for its reply, until this instant.
    deadline: Option<Instant>,
    /// It stopped answering: replaced as soon as a connection can be opened.
    unresponsive: bool,
}

impl Probe {
    /// A command got no reply in time: whether to send a `PING` (none is out, and the
    /// connection is not already given up), waiting until `now + timeout`.
    pub(super) fn start(&mut self, now: Instant, timeout: Duration) -> bool {
        if self.deadline.is_some() || self.unresponsive {
            return false;
        }
        self.deadline = Some(now + timeout);
        true
    }

    /// The `PING` was answered, or failed.
    pub(super) fn result(&mut self, answered: bool) {
        if self.deadline.take().is_some() && !answered {
            self.unresponsive = true;
        }
    }

    /// A `PING` unanswered by its deadline gives the connection up.
    pub(super) fn step(&mut self, now: Instant) {
        if self.deadline.is_some_and(|deadline| deadline <= now) {
            self.deadline = None;
            self.unresponsive = true;
        }
    }

    pub(super) fn is_unresponsive(&self) -> bool {
        self.unresponsive
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}
