//! The renewal spread: when a connection passes a renewal on, so that a fleet's
//! connections do not all send `AUTH` in the same millisecond.

use std::time::Duration;

use crate::jitter::Jitter;

/// A renewal waits a random delay in `[0, min(window, left / 10))`, where `left` is
/// what the token it replaces had left: spread enough to flatten the burst, never long
/// enough to put the connection at risk. Whole milliseconds, rounded down: timers round
/// up to the millisecond, and the delay must stay inside the window after that.
pub(crate) fn spread_delay(window: Duration, left_on_replaced: Duration, unit: f64) -> Duration {
    let bound = window.min(left_on_replaced / 10);
    Duration::from_millis((bound.as_millis() as f64 * unit.clamp(0.0, 1.0)) as u64).min(bound)
}

/// One connection's renewal spread, for code that hands renewals to connections it does
/// not drive with a [`ConnectionStateMachine`](crate::ConnectionStateMachine) (which
/// applies the same rule itself). Sixteen bytes: one lives beside every connection.
#[derive(Debug, Clone)]
pub struct RenewalSpread {
    /// The window, in milliseconds (up to 49 days).
    window_ms: u32,
    jitter: Jitter,
}

impl RenewalSpread {
    /// A spread over `window` (zero: no delay), drawing from `seed`: give each connection
    /// its own (a per-process random hash of its id).
    pub fn new(window: Duration, seed: u64) -> RenewalSpread {
        RenewalSpread {
            window_ms: u32::try_from(window.as_millis()).unwrap_or(u32::MAX),
            jitter: Jitter::from_seed(seed),
        }
    }

    /// How long to hold the next renewal, given what the token it replaces has left.
    pub fn next_delay(&mut self, left_on_replaced: Duration) -> Duration {
        let window = Duration::from_millis(u64::from(self.window_ms));
        if window.min(left_on_replaced).is_zero() {
            return Duration::ZERO;
        }
        spread_delay(window, left_on_replaced, self.jitter.unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_inside_the_window_and_the_tenth_of_life_bound() {
        let mut spread = RenewalSpread::new(Duration::from_secs(1), 7);
        let delays: Vec<Duration> = (0..1000).map(|_| spread.next_delay(Duration::from_secs(600))).collect();
        assert!(delays.iter().all(|d| *d < Duration::from_secs(1)));
        assert!(
            delays.iter().any(|d| *d > Duration::from_millis(900))
                && delays.iter().any(|d| *d < Duration::from_millis(100))
        );
        // A replaced token with 2 s left: less than 200 ms.
        assert!((0..1000).all(|_| spread.next_delay(Duration::from_secs(2)) < Duration::from_millis(200)));
        assert_eq!(spread.next_delay(Duration::ZERO), Duration::ZERO);
        let mut off = RenewalSpread::new(Duration::ZERO, 1);
        assert_eq!(off.next_delay(Duration::from_secs(3600)), Duration::ZERO);
        // Different seeds draw differently (five draws: one pair may collide at
        // millisecond resolution, five will not).
        let draws = |s: &mut RenewalSpread| {
            (0..5)
                .map(|_| s.next_delay(Duration::from_secs(600)))
                .collect::<Vec<_>>()
        };
        let (mut a, mut b) = (
            RenewalSpread::new(Duration::from_secs(1), 1),
            RenewalSpread::new(Duration::from_secs(1), 2),
        );
        assert_ne!(draws(&mut a), draws(&mut b));
        assert_eq!(std::mem::size_of::<RenewalSpread>(), 16);
    }

    #[test]
    fn the_rule_is_bounded_for_any_draw() {
        let window = Duration::from_secs(5);
        for unit in [0.0, 0.5, 0.999_999, 1.0, 7.0, -1.0] {
            let delay = spread_delay(window, Duration::from_secs(30), unit);
            assert!(delay <= Duration::from_secs(3), "{unit}: {delay:?}");
        }
        assert_eq!(spread_delay(window, Duration::MAX, 0.5), Duration::from_millis(2500));
    }
}
