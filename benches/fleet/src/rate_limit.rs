//! A sliding one-second window: at most `limit` accepted requests in any second.

use std::collections::VecDeque;
use std::time::Duration;

/// Counts accepted requests over the last second. Rejected requests do not count, as
/// with IMDS and Entra: a 429 costs the caller, not the quota.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    limit: usize,
    window: Duration,
    accepted: VecDeque<Duration>,
}

impl SlidingWindow {
    /// At most `limit` requests in any one-second window.
    pub fn per_second(limit: usize) -> SlidingWindow {
        SlidingWindow {
            limit,
            window: Duration::from_secs(1),
            accepted: VecDeque::new(),
        }
    }

    /// Accepts a request at `now` when the window has room; otherwise says when the oldest
    /// accepted request leaves it (the earliest a retry can succeed).
    pub fn try_accept(&mut self, now: Duration) -> Result<(), Duration> {
        while self.accepted.front().is_some_and(|at| *at + self.window <= now) {
            self.accepted.pop_front();
        }
        if self.accepted.len() < self.limit {
            self.accepted.push_back(now);
            Ok(())
        } else {
            let oldest = self.accepted.front().copied().unwrap_or(now);
            Err((oldest + self.window).saturating_sub(now))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn twenty_per_second_then_room_again_as_the_window_slides() {
        let mut w = SlidingWindow::per_second(20);
        for i in 0..20 {
            assert_eq!(w.try_accept(i * 10 * MS), Ok(()), "request {i}");
        }
        // The 21st within the same second is refused until the first leaves (at 1000 ms).
        assert_eq!(w.try_accept(500 * MS), Err(500 * MS));
        assert_eq!(w.try_accept(999 * MS), Err(MS));
        assert_eq!(w.try_accept(1000 * MS), Ok(()));
        // Refused requests did not use the quota: the second one leaves at 1010 ms.
        assert_eq!(w.try_accept(1000 * MS), Err(10 * MS));
        assert_eq!(w.try_accept(1010 * MS), Ok(()));
    }
}
