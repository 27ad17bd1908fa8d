//! One node's IMDS: 20 requests/s and 5 concurrent, 429 with `Retry-After` beyond;
//! managed-identity tokens served from a cache (the same token until near expiry),
//! renewed from Entra by one fetch that every request arriving meanwhile waits for.

use std::time::Duration;

use crate::endpoint::{Answer, Outage, Reply, whole_seconds};
use crate::entra::{EntraModel, Requester};
use crate::rate_limit::SlidingWindow;
use crate::rng::SimRng;

/// The knobs of the IMDS model.
#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// Accepted requests per second on one node.
    pub rate_per_second: usize,
    /// Requests being answered at once on one node.
    pub max_concurrent: usize,
    /// The cached token is renewed once it has less than this left.
    pub renew_before: Duration,
    /// Latency of a cache hit, uniform in this range.
    pub hit_latency: (Duration, Duration),
    /// Latency of a 429.
    pub throttle_latency: Duration,
    /// How long IMDS waits for Entra before answering 500.
    pub upstream_timeout: Duration,
}

impl Default for ImdsConfig {
    fn default() -> Self {
        ImdsConfig {
            rate_per_second: 20,
            max_concurrent: 5,
            renew_before: Duration::from_secs(5 * 60),
            hit_latency: (Duration::from_millis(5), Duration::from_millis(30)),
            throttle_latency: Duration::from_millis(2),
            upstream_timeout: Duration::from_secs(10),
        }
    }
}

/// What IMDS does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImdsDecision {
    /// 429 at this instant; the request did not take a slot.
    Throttled {
        /// When the answer arrives.
        at: Duration,
        /// Its `Retry-After`.
        retry_after: Duration,
    },
    /// Served from the cache at this instant; call [`ImdsNode::finished`] then.
    Served {
        /// When the answer arrives.
        at: Duration,
        /// The cached token.
        reply: Reply,
    },
    /// Waits for the cache's renewal; answered by [`ImdsNode::fetch_done`].
    Waiting,
    /// IMDS is down: no answer.
    Silent,
}

/// A renewal of the cache from Entra that started with this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchStarted {
    /// What Entra answers (for the Entra counters).
    pub entra: Answer,
    /// When IMDS has the result: call [`ImdsNode::fetch_done`] then.
    pub done_at: Duration,
}

/// One node's metadata endpoint. `W` identifies a waiting request.
#[derive(Debug)]
pub struct ImdsNode<W> {
    config: ImdsConfig,
    window: SlidingWindow,
    rng: SimRng,
    in_flight: usize,
    cached: Option<(u64, Duration)>,
    fetch: Option<Reply>,
    waiting: Vec<W>,
    outage: Option<Outage>,
}

impl<W> ImdsNode<W> {
    /// A node with an empty cache.
    pub fn new(config: ImdsConfig, outage: Option<Outage>, seed: u64) -> ImdsNode<W> {
        ImdsNode {
            window: SlidingWindow::per_second(config.rate_per_second),
            config,
            rng: SimRng::new(seed),
            in_flight: 0,
            cached: None,
            fetch: None,
            waiting: Vec::new(),
            outage,
        }
    }

    /// A request from a process on this node, arriving at `now`. A cache renewal goes to
    /// `entra`, and is returned so the caller can schedule [`fetch_done`](Self::fetch_done).
    pub fn request(
        &mut self,
        now: Duration,
        waiter: W,
        entra: &mut EntraModel,
    ) -> (ImdsDecision, Option<FetchStarted>) {
        if self.outage.is_some_and(|o| o.covers(now)) {
            return (ImdsDecision::Silent, None);
        }
        let throttled = |retry_after| ImdsDecision::Throttled {
            at: now + self.config.throttle_latency,
            retry_after,
        };
        if self.in_flight >= self.config.max_concurrent {
            return (throttled(Duration::from_secs(1)), None);
        }
        if let Err(wait) = self.window.try_accept(now) {
            return (throttled(whole_seconds(wait)), None);
        }
        self.in_flight += 1;
        if let Some((secret, expires_at)) = self.cached.filter(|(_, exp)| *exp > now + self.config.renew_before) {
            let (low, high) = self.config.hit_latency;
            let latency = Duration::from_secs_f64(self.rng.between(low.as_secs_f64(), high.as_secs_f64()));
            let reply = Reply::Token { secret, expires_at };
            return (
                ImdsDecision::Served {
                    at: now + latency,
                    reply,
                },
                None,
            );
        }
        self.waiting.push(waiter);
        if self.fetch.is_some() {
            return (ImdsDecision::Waiting, None);
        }
        let entra_answer = entra.request(now, Requester::ManagedIdentity);
        let give_up_at = now + self.config.upstream_timeout;
        let (done_at, reply) = match entra_answer {
            Answer::At(at, reply) if at < give_up_at => (at, reply),
            _ => (give_up_at, Reply::Failed),
        };
        self.fetch = Some(reply);
        (
            ImdsDecision::Waiting,
            Some(FetchStarted {
                entra: entra_answer,
                done_at,
            }),
        )
    }

    /// The renewal finished: the cache takes a token, and every waiting request gets
    /// the token or a 500. Each answered request is [`finished`](Self::finished) by the
    /// caller when its answer is delivered.
    pub fn fetch_done(&mut self) -> (Reply, Vec<W>) {
        let reply = match self.fetch.take() {
            Some(Reply::Token { secret, expires_at }) => {
                self.cached = Some((secret, expires_at));
                Reply::Token { secret, expires_at }
            }
            // IMDS answers its own 500 when Entra throttles or fails it.
            _ => Reply::Failed,
        };
        (reply, std::mem::take(&mut self.waiting))
    }

    /// An accepted request has been answered: its slot is free.
    pub fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entra::EntraConfig;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);
    const HOUR: Duration = Duration::from_secs(3600);

    fn entra() -> EntraModel {
        EntraModel::new(EntraConfig::default(), 2)
    }

    fn node() -> ImdsNode<u32> {
        ImdsNode::new(ImdsConfig::default(), None, 4)
    }

    /// Fills the cache with a token expiring at `expires_at`.
    fn warm(node: &mut ImdsNode<u32>, entra: &mut EntraModel) -> (u64, Duration) {
        let (decision, fetch) = node.request(Duration::ZERO, 0, entra);
        assert_eq!(decision, ImdsDecision::Waiting);
        assert!(fetch.is_some());
        let (reply, waiting) = node.fetch_done();
        assert_eq!(waiting, vec![0]);
        node.finished();
        let Reply::Token { secret, expires_at } = reply else {
            panic!("{reply:?}");
        };
        (secret, expires_at)
    }

    #[test]
    fn the_cache_serves_the_same_token_until_near_expiry() {
        let (mut entra, mut node) = (entra(), node());
        let (secret, expires_at) = warm(&mut node, &mut entra);
        assert!(expires_at > 23 * HOUR);
        for at in [2 * SEC, HOUR, expires_at - 5 * 60 * SEC - MS] {
            let (decision, fetch) = node.request(at, 1, &mut entra);
            let ImdsDecision::Served { at: answered, reply } = decision else {
                panic!("{decision:?}");
            };
            assert!(answered >= at + 5 * MS && answered <= at + 30 * MS);
            assert_eq!(reply, Reply::Token { secret, expires_at });
            assert_eq!(fetch, None);
            node.finished();
        }
        // Within 5 minutes of expiry it renews, and the next caller gets a new token.
        let (decision, fetch) = node.request(expires_at - 5 * 60 * SEC, 2, &mut entra);
        assert_eq!(decision, ImdsDecision::Waiting);
        assert!(fetch.is_some());
        let (reply, _) = node.fetch_done();
        assert!(matches!(reply, Reply::Token { secret: s, .. } if s != secret));
    }

    #[test]
    fn requests_during_a_renewal_wait_for_the_one_fetch() {
        let (mut entra, mut node) = (entra(), node());
        let (_, fetch) = node.request(Duration::ZERO, 10, &mut entra);
        let done_at = fetch.map(|f| f.done_at);
        assert!(done_at.is_some());
        assert_eq!(node.request(MS, 11, &mut entra), (ImdsDecision::Waiting, None));
        assert_eq!(node.request(2 * MS, 12, &mut entra), (ImdsDecision::Waiting, None));
        assert_eq!(node.in_flight(), 3);
        let (reply, waiting) = node.fetch_done();
        assert!(matches!(reply, Reply::Token { .. }));
        assert_eq!(waiting, vec![10, 11, 12]);
    }

    #[test]
    fn a_sixth_concurrent_request_gets_429_retry_after_1s() {
        let (mut entra, mut node) = (entra(), node());
        warm(&mut node, &mut entra);
        let now = 10 * SEC;
        for i in 0..5 {
            assert!(matches!(
                node.request(now, i, &mut entra).0,
                ImdsDecision::Served { .. }
            ));
        }
        assert_eq!(
            node.request(now, 5, &mut entra).0,
            ImdsDecision::Throttled {
                at: now + 2 * MS,
                retry_after: SEC
            }
        );
        node.finished();
        assert!(matches!(
            node.request(now, 6, &mut entra).0,
            ImdsDecision::Served { .. }
        ));
    }

    #[test]
    fn a_21st_request_in_a_second_gets_429_until_the_window_slides() {
        let (mut entra, mut node) = (entra(), node());
        warm(&mut node, &mut entra); // one request at 0
        let start = 10 * SEC;
        for i in 0..20u32 {
            let at = start + i * 40 * MS;
            assert!(matches!(node.request(at, i, &mut entra).0, ImdsDecision::Served { .. }));
            node.finished();
        }
        let (decision, _) = node.request(start + 900 * MS, 99, &mut entra);
        assert_eq!(
            decision,
            ImdsDecision::Throttled {
                at: start + 902 * MS,
                retry_after: SEC
            }
        );
        assert!(matches!(
            node.request(start + SEC, 100, &mut entra).0,
            ImdsDecision::Served { .. }
        ));
    }

    #[test]
    fn entra_down_means_a_500_after_the_upstream_timeout_and_imds_down_means_silence() {
        let mut entra = EntraModel::new(
            EntraConfig {
                outage: Some(Outage {
                    start: Duration::ZERO,
                    end: HOUR,
                }),
                ..EntraConfig::default()
            },
            1,
        );
        let mut node = node();
        let (_, fetch) = node.request(SEC, 1, &mut entra);
        assert_eq!(
            fetch,
            Some(FetchStarted {
                entra: Answer::Never,
                done_at: 11 * SEC
            })
        );
        assert_eq!(node.fetch_done(), (Reply::Failed, vec![1]));

        let mut down: ImdsNode<u32> = ImdsNode::new(
            ImdsConfig::default(),
            Some(Outage {
                start: Duration::ZERO,
                end: HOUR,
            }),
            1,
        );
        assert_eq!(down.request(SEC, 1, &mut entra), (ImdsDecision::Silent, None));
        assert_eq!(down.in_flight(), 0);
    }
}
