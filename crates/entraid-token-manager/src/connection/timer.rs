//! The machine's timer table: every deadline it may wake for, by what it is for, built on
//! the stack from the machine's state at each poll (no allocation, and no second copy of
//! the state to keep in step with it).

use std::time::Instant;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// A retired connection's close, before its token expires (the earliest of them).
    RetiredClose,
    /// The connection being opened gives up.
    Connect,
    /// The newest token comes too close to expiry to open a connection with.
    TokenUnusable,
    /// The connection in use is closed before its token expires.
    ActiveClose,
    /// A renewal's `AUTH` is due (spread or retry backoff), or the one in flight times out.
    Auth,
    /// The health `PING` in flight times out.
    Probe,
    /// The connection in use reaches its replace margin with a newer token at hand.
    Replace,
    /// The next connection attempt may start, after failures.
    Reconnect,
    /// Announced maintenance: a handoff starts or ends, relaxed timeouts end, a `MOVING`
    /// window closes (the earliest of them).
    Maintenance,
}

impl Timer {
    const COUNT: usize = 9;

    fn index(self) -> usize {
        match self {
            Timer::RetiredClose => 0,
            Timer::Connect => 1,
            Timer::TokenUnusable => 2,
            Timer::ActiveClose => 3,
            Timer::Auth => 4,
            Timer::Probe => 5,
            Timer::Replace => 6,
            Timer::Reconnect => 7,
            Timer::Maintenance => 8,
        }
    }
}

/// The deadlines ahead of `now`, the earliest per [`Timer`]. Instants at or before `now`
/// were acted on already (or wait for an event), so they are left out.
#[derive(Debug)]
pub(crate) struct TimerTable {
    now: Instant,
    at: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    pub(crate) fn new(now: Instant) -> TimerTable {
        TimerTable {
            now,
            at: [None; Timer::COUNT],
        }
    }

    /// Sets `timer` to `at` if that is ahead and earlier than what it holds.
    pub(crate) fn set(&mut self, timer: Timer, at: impl IntoIterator<Item = Instant>) {
        let slot = &mut self.at[timer.index()];
        for at in at.into_iter().filter(|at| *at > self.now) {
            *slot = Some(slot.map_or(at, |held| held.min(at)));
        }
    }

    /// The earliest deadline, and what it is for.
    pub(crate) fn next(&self) -> Option<(Timer, Instant)> {
        const ALL: [Timer; Timer::COUNT] = [
            Timer::RetiredClose,
            Timer::Connect,
            Timer::TokenUnusable,
            Timer::ActiveClose,
            Timer::Auth,
            Timer::Probe,
            Timer::Replace,
            Timer::Reconnect,
            Timer::Maintenance,
        ];
        ALL.into_iter()
            .filter_map(|timer| self.at[timer.index()].map(|at| (timer, at)))
            .min_by_key(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_earliest_deadline_ahead_wins_and_past_ones_are_left_out() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let mut table = TimerTable::new(now);
        assert_eq!(table.next(), None);
        table.set(Timer::Auth, Some(now + 5 * s));
        table.set(Timer::RetiredClose, [now, now + 7 * s, now + 3 * s]);
        table.set(Timer::Probe, Some(now));
        assert_eq!(table.next(), Some((Timer::RetiredClose, now + 3 * s)));
        table.set(Timer::Connect, Some(now + 2 * s));
        assert_eq!(table.next(), Some((Timer::Connect, now + 2 * s)));
    }
}
