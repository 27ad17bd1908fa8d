//! What an identity endpoint answers, and when: shared by the IMDS and Entra models.

use std::time::Duration;

/// The body of an answer, as the process sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reply {
    /// 200: a token (identified by `secret`) that expires at `expires_at` on the virtual clock.
    Token {
        /// Which token: equal numbers are the same token (a cache hit).
        secret: u64,
        /// Virtual expiry instant.
        expires_at: Duration,
    },
    /// 429 with this `Retry-After`.
    Throttled {
        /// The `Retry-After` header.
        retry_after: Duration,
    },
    /// 5xx: a transient failure without `Retry-After`.
    Failed,
}

/// When the answer arrives, if ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// This reply at this virtual instant.
    At(Duration, Reply),
    /// No answer at all (an outage that swallows requests): the caller times out.
    Never,
}

/// A span of virtual time during which an endpoint is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// First instant of the outage.
    pub start: Duration,
    /// First instant after it.
    pub end: Duration,
}

impl Outage {
    /// Whether `now` falls inside the outage.
    pub fn covers(&self, now: Duration) -> bool {
        self.start <= now && now < self.end
    }

    /// How long it lasts.
    pub fn length(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }
}

/// A `Retry-After` header carries whole seconds: a wait is rounded up, to at least 1 s.
pub fn whole_seconds(wait: Duration) -> Duration {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_at_least_one() {
        assert_eq!(whole_seconds(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(whole_seconds(Duration::from_millis(10)), Duration::from_secs(1));
        assert_eq!(whole_seconds(Duration::from_millis(1001)), Duration::from_secs(2));
        assert_eq!(whole_seconds(Duration::from_secs(60)), Duration::from_secs(60));
    }

    #[test]
    fn an_outage_covers_its_start_not_its_end() {
        let o = Outage {
            start: Duration::from_secs(10),
            end: Duration::from_secs(20),
        };
        assert!(!o.covers(Duration::from_secs(9)));
        assert!(o.covers(Duration::from_secs(10)));
        assert!(!o.covers(Duration::from_secs(20)));
        assert_eq!(o.length(), Duration::from_secs(10));
    }
}
