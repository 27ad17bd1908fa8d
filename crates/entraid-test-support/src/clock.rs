//! A clock that moves only when a test says so.

use std::time::{Duration, Instant};

/// Hands out instants for a sans-IO state machine: it starts at an arbitrary instant
/// and moves only through [`advance`](FakeClock::advance) or [`set`](FakeClock::set).
#[derive(Debug, Clone, Copy)]
pub struct FakeClock {
    start: Instant,
    now: Instant,
}

impl Default for FakeClock {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeClock {
    /// A clock at its start.
    pub fn new() -> FakeClock {
        let start = Instant::now();
        FakeClock { start, now: start }
    }

    /// The current fake instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Moves forward by `by` and returns the new instant.
    pub fn advance(&mut self, by: Duration) -> Instant {
        self.now += by;
        self.now
    }

    /// Moves to `to` (never backwards) and returns the new instant.
    pub fn set(&mut self, to: Instant) -> Instant {
        self.now = self.now.max(to);
        self.now
    }
}
