//! The refresh and retry rules, scenario by scenario, on a fake clock with exact instants.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use entraid_identity::{ErrorOrigin, IdentityError, Token};
use entraid_test_support::FakeClock;
use entraid_token_manager::{
    ConfigError, DEFAULT_REFRESH_JITTER, Output, RETRY_AFTER_CAP, RefreshFailure, RefreshOutcome, RequestId,
    RetryPolicy, TokenManagerConfig, TokenStateMachine, WALL_CLOCK_CHECK_INTERVAL,
};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

/// A token with an exact lifetime, independent of the machine's clock.
fn token(secret: &str, lifetime: Duration) -> Token {
    let received = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    Token::new(secret, "oid-1", received + lifetime, received)
}

/// The defaults without the refresh jitter: the tests of the refresh rule, retries,
/// expiry and the wall clock assert exact instants. The jitter's band has its own tests
/// at the end, on the real defaults.
fn exact() -> TokenManagerConfig {
    let mut config = TokenManagerConfig::default();
    config.refresh_jitter = 0.0;
    config
}

fn transient() -> IdentityError {
    IdentityError::transient("connection refused")
}

/// Where the latest failure came from, as the machine recorded it.
fn last_failure_origin(sm: &TokenStateMachine) -> Option<ErrorOrigin> {
    match sm.status().last_outcome {
        Some(RefreshOutcome::Failed { error, .. }) => {
            assert_eq!(error.code(), None, "the library's own failure carries no service code");
            error.origin()
        }
        other => panic!("no failure recorded: {other:?}"),
    }
}

/// What one drain of the state machine produced.
#[derive(Debug, Default)]
struct Drained {
    requests: Vec<RequestId>,
    renewed: Vec<Token>,
    errors: Vec<RefreshFailure>,
    expired: usize,
    timeout: Option<Instant>,
}

struct Harness {
    sm: TokenStateMachine,
    clock: FakeClock,
}

impl Harness {
    fn new(config: TokenManagerConfig) -> Harness {
        Harness {
            sm: TokenStateMachine::with_seed(config, 7).unwrap(),
            clock: FakeClock::new(),
        }
    }

    fn defaults() -> Harness {
        Harness::new(exact())
    }

    fn drain(&mut self) -> Drained {
        let mut d = Drained::default();
        loop {
            match self.sm.poll_output() {
                Output::RequestToken(id) => d.requests.push(id),
                Output::TokenRenewed(t) => d.renewed.push(t),
                Output::Error(f) => d.errors.push(f),
                Output::TokenExpired => d.expired += 1,
                Output::Timeout(at) => {
                    assert!(
                        at > self.clock.now(),
                        "timeout {at:?} not after now {:?}",
                        self.clock.now()
                    );
                    d.timeout = Some(at);
                    return d;
                }
                Output::NotStarted => return d,
                other => panic!("unexpected output {other:?}"),
            }
        }
    }

    /// Starts and returns the first request.
    fn start(&mut self) -> RequestId {
        self.sm.start(self.clock.now());
        let d = self.drain();
        assert_eq!(d.requests.len(), 1, "{d:?}");
        d.requests[0]
    }

    fn respond(&mut self, id: RequestId, result: Result<Token, IdentityError>) -> Drained {
        self.sm.handle_response(self.clock.now(), id, result);
        self.drain()
    }

    /// Advances to the next timeout and handles it.
    fn advance_to_timeout(&mut self, d: &Drained) -> Drained {
        let at = d.timeout.expect("a timeout is scheduled");
        self.clock.set(at);
        self.sm.handle_timeout(at);
        self.drain()
    }

    /// Fails the request `id` and returns the delay until the next request, checking that
    /// the next timeout is exactly that request.
    fn fail_and_measure(&mut self, id: RequestId, error: IdentityError) -> (Drained, Duration, RequestId) {
        let failed_at = self.clock.now();
        let d = self.respond(id, Err(error));
        let delay = d.timeout.unwrap() - failed_at;
        let next = self.advance_to_timeout(&d);
        assert_eq!(next.requests.len(), 1, "a request at the retry instant: {next:?}");
        (d, delay, next.requests[0])
    }
}

fn assert_in_band(delay: Duration, base: Duration, jitter: f64) {
    let low = base.mul_f64(1.0 - jitter);
    let high = base.mul_f64(1.0 + jitter);
    assert!(
        delay >= low && delay <= high,
        "{delay:?} outside [{low:?}, {high:?}] around {base:?}"
    );
}

#[test]
fn nothing_happens_before_start() {
    let mut h = Harness::defaults();
    assert!(matches!(h.sm.poll_output(), Output::NotStarted));
    h.sm.handle_timeout(h.clock.now());
    assert!(matches!(h.sm.poll_output(), Output::NotStarted));
    assert!(h.sm.current_token().is_none());
}

#[test]
fn start_requests_at_once_and_only_once() {
    let mut h = Harness::defaults();
    let first = h.start();
    h.sm.start(h.clock.now());
    let d = h.drain();
    assert!(d.requests.is_empty(), "second start must not request again: {d:?}");
    assert_eq!(h.sm.in_flight_request(), Some(first));
    // The only deadline is the request timeout (10 s).
    assert_eq!(d.timeout, Some(h.clock.now() + 10 * SEC));
}

#[test]
fn refreshes_at_the_ratio_of_a_long_token() {
    let mut h = Harness::defaults();
    let id = h.start();
    let t0 = h.clock.now();
    let d = h.respond(id, Ok(token("a", 60 * MIN)));
    assert_eq!(d.renewed.len(), 1);
    assert_eq!(d.renewed[0].secret(), "a");
    assert_eq!(h.sm.current_token().map(Token::secret), Some("a"));
    assert_eq!(d.timeout, Some(t0 + 42 * MIN), "70 % of 60 min");
    let d = h.advance_to_timeout(&d);
    assert_eq!(d.requests.len(), 1, "refresh requested at 42 min");
}

#[test]
fn lower_bound_wins_when_it_comes_first() {
    let mut h = Harness::defaults();
    let id = h.start();
    let t0 = h.clock.now();
    let d = h.respond(id, Ok(token("a", 8 * MIN)));
    assert_eq!(
        d.timeout,
        Some(t0 + 5 * MIN),
        "8 min − 3 min bound, before 70 % (5.6 min)"
    );
}

#[test]
fn a_token_shorter_than_the_bound_is_refreshed_at_the_ratio_not_at_once() {
    let mut h = Harness::defaults();
    let id = h.start();
    let t0 = h.clock.now();
    let d = h.respond(id, Ok(token("a", 2 * MIN)));
    assert_eq!(d.renewed.len(), 1);
    assert_eq!(d.timeout, Some(t0 + Duration::from_secs(84)), "70 % of 120 s");
    assert!(d.requests.is_empty(), "no hot loop");
}

#[test]
fn the_ratio_is_honoured_not_ignored() {
    let mut config = exact();
    config.expiration_refresh_ratio = 0.5;
    config.lower_refresh_bound = Duration::ZERO;
    let mut h = Harness::new(config);
    let id = h.start();
    let t0 = h.clock.now();
    let d = h.respond(id, Ok(token("a", 60 * MIN)));
    assert_eq!(d.timeout, Some(t0 + 30 * MIN));
}

#[test]
fn a_zero_lifetime_token_counts_as_a_failure() {
    let mut h = Harness::defaults();
    let id = h.start();
    let t0 = h.clock.now();
    let d = h.respond(id, Ok(token("dead", Duration::ZERO)));
    assert!(d.renewed.is_empty());
    assert!(h.sm.current_token().is_none());
    assert_eq!(h.sm.consecutive_failures(), 1);
    assert_eq!(last_failure_origin(&h.sm), Some(ErrorOrigin::ExpiredToken));
    assert_in_band(d.timeout.unwrap() - t0, 500 * MS, 0.2);
}

#[test]
fn backoff_grows_by_the_multiplier_within_its_jitter_band_and_caps() {
    let mut config = exact();
    config.retry.max_attempts = 20;
    let mut h = Harness::new(config);
    let mut id = h.start();
    let expected_ms = [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000];
    let mut delays = Vec::new();
    for base in expected_ms {
        let (d, delay, next) = h.fail_and_measure(id, transient());
        assert!(d.errors.is_empty(), "not reported before max_attempts: {d:?}");
        assert_in_band(delay, Duration::from_millis(base), 0.2);
        delays.push(delay);
        id = next;
    }
    // Jitter really varies the delays.
    assert!(
        delays
            .windows(2)
            .any(|w| w[0].as_secs_f64() * 2.0 != w[1].as_secs_f64())
    );
}

#[test]
fn jitter_zero_gives_exact_delays() {
    let mut config = exact();
    config.retry.jitter = 0.0;
    let mut h = Harness::new(config);
    let id = h.start();
    let (_, delay, id) = h.fail_and_measure(id, transient());
    assert_eq!(delay, 500 * MS);
    let (_, delay, _) = h.fail_and_measure(id, transient());
    assert_eq!(delay, 1_000 * MS);
}

#[test]
fn retry_after_longer_than_the_backoff_is_honoured() {
    let mut h = Harness::defaults();
    let id = h.start();
    let (_, delay, id) = h.fail_and_measure(id, transient().with_retry_after(10 * SEC));
    assert_eq!(delay, 10 * SEC);
    // A retry_after shorter than the backoff does not shorten it.
    let (_, delay, _) = h.fail_and_measure(id, transient().with_retry_after(MS));
    assert_in_band(delay, 1_000 * MS, 0.2);
}

#[test]
fn after_max_attempts_the_error_is_reported_and_retries_go_on_at_max_delay() {
    let mut h = Harness::defaults();
    let mut id = h.start();
    for attempt in 1..=4 {
        let (d, _, next) = h.fail_and_measure(id, transient());
        assert!(d.errors.is_empty(), "attempt {attempt} reported too early");
        id = next;
    }
    let (d, delay, mut id) = h.fail_and_measure(id, transient());
    assert_eq!(d.errors.len(), 1, "5th failure is reported");
    let failure = &d.errors[0];
    assert_eq!(failure.attempts, 5);
    assert!(failure.retryable);
    assert_eq!(
        failure.next_attempt_at,
        h.clock.now(),
        "the request was made when announced"
    );
    assert!(failure.to_string().contains("5 time(s)"));
    assert_in_band(delay, 30 * SEC, 0.2);
    // It never gives up: 50 more failures, each reported, each followed by a request.
    for attempt in 6..=55 {
        let (d, delay, next) = h.fail_and_measure(id, transient());
        assert_eq!(d.errors.len(), 1);
        assert_eq!(d.errors[0].attempts, attempt);
        assert_in_band(delay, 30 * SEC, 0.2);
        id = next;
    }
}

#[test]
fn a_non_retryable_error_is_reported_at_once_and_retried_at_max_delay() {
    let mut h = Harness::defaults();
    let id = h.start();
    let (d, delay, _) = h.fail_and_measure(id, IdentityError::permanent("AADSTS7000215: invalid client secret"));
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].attempts, 1);
    assert!(!d.errors[0].retryable);
    assert_in_band(delay, 30 * SEC, 0.2);
}

#[test]
fn a_custom_predicate_decides_what_is_retryable() {
    let mut config = exact();
    config.retry = RetryPolicy::default().with_is_retryable(|e| e.code() != Some("fatal"));
    let mut h = Harness::new(config);
    let id = h.start();
    // Permanent but retryable by the predicate: not reported, backoff applies.
    let (d, delay, id) = h.fail_and_measure(id, IdentityError::permanent("x"));
    assert!(d.errors.is_empty());
    assert_in_band(delay, 500 * MS, 0.2);
    let (d, _, _) = h.fail_and_measure(id, IdentityError::transient("y").with_code("fatal"));
    assert_eq!(d.errors.len(), 1);
}

#[test]
fn a_timed_out_request_is_retried_and_its_late_response_ignored() {
    let mut h = Harness::defaults();
    let first = h.start();
    let d = h.drain();
    let d = h.advance_to_timeout(&Drained {
        timeout: d.timeout,
        ..Drained::default()
    });
    assert_eq!(h.clock.elapsed(), 10 * SEC, "timed out at token_request_timeout");
    assert!(d.requests.is_empty() && d.errors.is_empty(), "{d:?}");
    assert_eq!(h.sm.in_flight_request(), None);
    assert_eq!(h.sm.consecutive_failures(), 1);
    assert_eq!(last_failure_origin(&h.sm), Some(ErrorOrigin::Timeout));
    let retry_at = d.timeout.unwrap();
    assert_in_band(retry_at - h.clock.now(), 500 * MS, 0.2);

    // The late answer to the first request arrives: ignored.
    h.clock.advance(100 * MS);
    let late = h.respond(first, Ok(token("late", 60 * MIN)));
    assert!(late.renewed.is_empty(), "{late:?}");
    assert!(h.sm.current_token().is_none());
    assert_eq!(late.timeout, Some(retry_at), "schedule unchanged");

    let d = h.advance_to_timeout(&late);
    assert_eq!(d.requests.len(), 1);
    let second = d.requests[0];
    assert_ne!(second, first);
    let d = h.respond(second, Ok(token("fresh", 60 * MIN)));
    assert_eq!(d.renewed[0].secret(), "fresh");
}

#[test]
fn a_response_exactly_at_the_deadline_counts_as_timed_out() {
    let mut h = Harness::defaults();
    let id = h.start();
    h.clock.advance(10 * SEC);
    let d = h.respond(id, Ok(token("too-late", 60 * MIN)));
    assert!(d.renewed.is_empty());
    assert_eq!(h.sm.consecutive_failures(), 1);
}

#[test]
fn a_response_for_an_unknown_request_is_ignored() {
    let mut h = Harness::defaults();
    let id = h.start();
    let d = h.respond(id, Ok(token("a", 60 * MIN)));
    let d2 = h.respond(id, Ok(token("b", 60 * MIN)));
    assert!(d2.renewed.is_empty(), "a second answer to the same request is ignored");
    assert_eq!(d2.timeout, d.timeout);
    assert_eq!(h.sm.current_token().map(Token::secret), Some("a"));
}

#[test]
fn expiry_without_replacement_is_reported_once_at_the_exact_instant() {
    let mut h = Harness::defaults();
    let id = h.start();
    let t0 = h.clock.now();
    let d = h.respond(id, Ok(token("a", 60 * SEC)));
    assert_eq!(d.timeout, Some(t0 + 42 * SEC));
    let mut d = h.advance_to_timeout(&d);
    let mut id = d.requests[0];
    let mut expired_at = None;
    // Fail every request until well past expiry.
    while h.clock.elapsed() < 200 * SEC {
        if let Some(id_now) = d.requests.first().copied() {
            id = id_now;
            d = h.respond(id, Err(transient()));
        } else {
            d = h.advance_to_timeout(&d);
        }
        if d.expired > 0 {
            assert_eq!(d.expired, 1);
            assert!(expired_at.is_none(), "expiry reported twice");
            expired_at = Some(h.clock.now());
        }
    }
    let _ = id;
    assert_eq!(expired_at, Some(t0 + 60 * SEC), "reported when the token expired");
    assert!(h.sm.current_token().is_none());
}

#[test]
fn the_same_token_again_is_not_announced_but_reschedules() {
    let mut h = Harness::defaults();
    let id = h.start();
    let d = h.respond(id, Ok(token("a", 60 * MIN)));
    assert_eq!(d.renewed.len(), 1);
    let d = h.advance_to_timeout(&d);
    let refresh_at = h.clock.now();
    // A caching provider answers with the same secret and 18 min left.
    let received = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let cached = Token::new("a", "oid-1", received + 18 * MIN, received);
    let d = h.respond(d.requests[0], Ok(cached));
    assert!(d.renewed.is_empty(), "not announced again: {d:?}");
    assert_eq!(h.sm.consecutive_failures(), 0);
    assert_eq!(
        d.timeout,
        Some(refresh_at + Duration::from_secs(756)),
        "70 % of the 18 min left"
    );
    // A real new token is announced.
    let d = h.advance_to_timeout(&d);
    let d = h.respond(d.requests[0], Ok(token("b", 60 * MIN)));
    assert_eq!(d.renewed.len(), 1);
    assert_eq!(d.renewed[0].secret(), "b");
}

#[test]
fn after_a_long_outage_the_next_request_comes_within_max_delay_and_is_announced() {
    let mut h = Harness::defaults();
    let id = h.start();
    let d = h.respond(id, Ok(token("before", 60 * MIN)));
    let mut d = h.advance_to_timeout(&d);
    let outage_start = h.clock.now();
    let mut reported = 0;
    let mut expired = 0;
    while h.clock.now() - outage_start < 3 * 60 * MIN {
        if let Some(id) = d.requests.first().copied() {
            d = h.respond(id, Err(transient()));
        } else {
            d = h.advance_to_timeout(&d);
        }
        reported += d.errors.len();
        expired += d.expired;
    }
    assert_eq!(expired, 1);
    assert!(reported > 300, "each failure after the 5th is reported: {reported}");
    // The identity provider is back: the next request comes within max_delay (+ jitter).
    let recovered_at = h.clock.now();
    let mut d = d;
    let id = loop {
        if let Some(id) = d.requests.first().copied() {
            break id;
        }
        d = h.advance_to_timeout(&d);
    };
    assert!(h.clock.now() - recovered_at <= Duration::from_secs(36));
    let d = h.respond(id, Ok(token("after", 60 * MIN)));
    assert_eq!(d.renewed.len(), 1);
    assert_eq!(h.sm.consecutive_failures(), 0);
    assert_eq!(h.sm.current_token().map(Token::secret), Some("after"));
}

#[test]
fn time_never_goes_backwards() {
    let mut h = Harness::defaults();
    let id = h.start();
    h.clock.advance(5 * SEC);
    let d = h.respond(id, Ok(token("a", 60 * MIN)));
    let t = d.timeout.unwrap();
    // A driver that passes an earlier instant is taken at the latest one seen.
    let earlier = h.clock.now() - 5 * SEC;
    h.sm.handle_timeout(earlier);
    match h.sm.poll_output() {
        Output::Timeout(at) => assert_eq!(at, t),
        other => panic!("{other:?}"),
    }
}

#[test]
fn absurd_lifetimes_and_retry_after_do_not_panic() {
    let mut h = Harness::defaults();
    let id = h.start();
    let received = SystemTime::UNIX_EPOCH;
    let forever = Token::new("f", "o", received + Duration::from_secs(u64::MAX / 4), received);
    let d = h.respond(id, Ok(forever));
    assert_eq!(d.renewed.len(), 1);
    assert!(d.timeout.is_some());
    let mut h = Harness::defaults();
    let id = h.start();
    let d = h.respond(id, Err(transient().with_retry_after(Duration::MAX)));
    assert!(d.timeout.is_some());
}

#[test]
fn invalid_config_is_refused_when_the_machine_is_built() {
    let mut config = exact();
    config.expiration_refresh_ratio = 1.2;
    assert_eq!(
        TokenStateMachine::new(config).unwrap_err(),
        ConfigError::RefreshRatio(1.2)
    );
}

#[test]
fn a_day_long_retry_after_postpones_the_next_attempt_by_five_minutes_at_most() {
    let mut h = Harness::defaults();
    let id = h.start();
    let (_, delay, id) = h.fail_and_measure(id, transient().with_retry_after(86_400 * SEC));
    assert_eq!(delay, RETRY_AFTER_CAP);
    assert_eq!(RETRY_AFTER_CAP, 5 * MIN);
    // The header in milliseconds (x-ms-retry-after-ms) is capped the same way.
    let (_, delay, _) = h.fail_and_measure(id, transient().with_retry_after(Duration::from_millis(u64::MAX)));
    assert_eq!(delay, 5 * MIN);

    // A max_delay above five minutes is the cap instead.
    let mut h = Harness::new({
        let mut config = exact();
        config.retry.max_delay = 20 * MIN;
        config.retry.jitter = 0.0;
        config
    });
    let id = h.start();
    let (_, delay, _) = h.fail_and_measure(id, transient().with_retry_after(86_400 * SEC));
    assert_eq!(delay, 20 * MIN);
}

#[test]
fn a_retry_after_never_postpones_past_the_current_tokens_refresh_margin() {
    // 20-minute tokens refreshed at half their life (10 min): the refresh margin is the
    // 3-minute lower bound, so a retry may wait until 17 minutes, no later.
    let mut h = Harness::new({
        let mut config = exact();
        config.expiration_refresh_ratio = 0.5;
        config.retry.max_delay = 30 * MIN;
        config.retry.jitter = 0.0;
        config
    });
    let id = h.start();
    let t0 = h.clock.now();
    let d = h.respond(id, Ok(token("a", 20 * MIN)));
    assert_eq!(d.timeout, Some(t0 + 10 * MIN));
    let refresh = h.advance_to_timeout(&d).requests[0];
    let d = h.respond(refresh, Err(transient().with_retry_after(86_400 * SEC)));
    assert_eq!(d.timeout, Some(t0 + 17 * MIN), "not the 30-minute cap, not a day");

    // With the margin already reached, the retry_after cannot postpone at all: the
    // backoff alone decides.
    let mut h = Harness::new({
        let mut config = exact();
        config.retry.jitter = 0.0;
        config
    });
    let id = h.start();
    let d = h.respond(id, Ok(token("a", 10 * MIN)));
    let refresh = h.advance_to_timeout(&d).requests[0];
    let (_, delay, _) = h.fail_and_measure(refresh, transient().with_retry_after(86_400 * SEC));
    assert_eq!(delay, 500 * MS);
}

/// A harness whose driver also feeds the wall clock, which moves apart from the
/// monotonic one when the test says so (a suspend).
struct WallHarness {
    h: Harness,
    /// The wall clock at the fake clock's start.
    wall_at_start: SystemTime,
    /// How far the wall clock ran ahead of the monotonic one (time spent suspended).
    suspended: Duration,
}

impl WallHarness {
    fn new() -> WallHarness {
        WallHarness {
            h: Harness::defaults(),
            wall_at_start: UNIX_EPOCH + Duration::from_secs(1_900_000_000),
            suspended: Duration::ZERO,
        }
    }

    fn wall(&self) -> SystemTime {
        self.wall_at_start + self.h.clock.elapsed() + self.suspended
    }

    /// A token received now, by the wall clock, living `lifetime`.
    fn token(&self, secret: &str, lifetime: Duration) -> Token {
        let received = self.wall();
        Token::new(secret, "oid-1", received + lifetime, received)
    }

    fn feed_wall_clock(&mut self) -> Drained {
        self.h.sm.handle_wall_clock(self.h.clock.now(), self.wall());
        self.h.drain()
    }

    /// The machine is suspended for `slept`: the monotonic clock stands still, the wall
    /// clock does not. Then it wakes at the next timeout it asked for.
    fn suspend_then_wake(&mut self, slept: Duration, d: &Drained) -> Drained {
        self.suspended += slept;
        self.h.clock.set(d.timeout.expect("a timeout"));
        self.feed_wall_clock()
    }
}

#[test]
fn once_fed_the_wall_clock_the_machine_checks_it_every_interval() {
    let mut w = WallHarness::new();
    let id = w.h.start();
    let t0 = w.h.clock.now();
    let token = w.token("a", 60 * MIN);
    w.h.respond(id, Ok(token));
    let d = w.feed_wall_clock();
    assert_eq!(d.timeout, Some(t0 + WALL_CLOCK_CHECK_INTERVAL));
    // Without a suspend, the checks change nothing: the refresh comes at 42 minutes.
    let mut d = d;
    while d.requests.is_empty() {
        w.h.clock.set(d.timeout.unwrap());
        d = w.feed_wall_clock();
        assert!(d.timeout.unwrap() - w.h.clock.now() <= WALL_CLOCK_CHECK_INTERVAL);
    }
    assert_eq!(w.h.clock.now(), t0 + 42 * MIN);
    // A driver that only calls handle_timeout afterwards is not woken in a loop: every
    // timeout lies after now (checked by drain).
    let d = w.h.respond(d.requests[0], Ok(w.token("b", 60 * MIN)));
    let d = w.h.advance_to_timeout(&d);
    let d = w.h.advance_to_timeout(&d);
    assert!(d.timeout.unwrap() > w.h.clock.now());
}

#[test]
fn after_a_suspend_past_the_refresh_point_the_token_is_refreshed_at_once() {
    let mut w = WallHarness::new();
    let id = w.h.start();
    w.h.respond(id, Ok(w.token("a", 60 * MIN)));
    let d = w.feed_wall_clock();
    // Suspended for 50 minutes: by the wall clock the token has 10 minutes left, past
    // its refresh point (42 min) though the monotonic clock says 10 s went by.
    let d = w.suspend_then_wake(50 * MIN, &d);
    assert_eq!(d.requests.len(), 1, "refreshed at once: {d:?}");
    assert_eq!(d.expired, 0, "still valid");
    assert!(w.h.sm.current_token().is_some());
    // Its expiry moved too: with every request failing, it is reported when the wall
    // clock says, 10 minutes later, not 50.
    let t_resume = w.h.clock.now();
    let mut d = w.h.respond(d.requests[0], Err(transient()));
    let mut expired_at = None;
    while expired_at.is_none() && w.h.clock.now() < t_resume + 60 * MIN {
        d = match d.requests.first() {
            Some(id) => w.h.respond(*id, Err(transient())),
            None => {
                w.h.clock.set(d.timeout.unwrap());
                w.feed_wall_clock()
            }
        };
        if d.expired > 0 {
            expired_at = Some(w.h.clock.now());
        }
    }
    let expired_after = expired_at.expect("expiry reported") - t_resume;
    assert!(
        expired_after > 9 * MIN && expired_after <= 10 * MIN + SEC,
        "expired {expired_after:?} after the resume"
    );
}

#[test]
fn a_token_expired_during_a_suspend_is_dropped_and_a_new_one_requested() {
    let mut w = WallHarness::new();
    let id = w.h.start();
    w.h.respond(id, Ok(w.token("a", 60 * MIN)));
    let d = w.feed_wall_clock();
    let d = w.suspend_then_wake(3 * 60 * MIN, &d);
    assert_eq!(d.expired, 1, "{d:?}");
    assert_eq!(d.requests.len(), 1);
    assert!(w.h.sm.current_token().is_none(), "an expired token is never handed out");
    let d = w.h.respond(d.requests[0], Ok(w.token("b", 60 * MIN)));
    assert_eq!(d.renewed.len(), 1);
}

#[test]
fn a_wall_clock_set_backwards_postpones_nothing() {
    let mut w = WallHarness::new();
    let id = w.h.start();
    let t0 = w.h.clock.now();
    w.h.respond(id, Ok(w.token("a", 60 * MIN)));
    let d = w.feed_wall_clock();
    // The wall clock goes back an hour (an NTP correction): the schedule stays.
    w.wall_at_start -= 60 * MIN;
    let mut d = d;
    while d.requests.is_empty() {
        w.h.clock.set(d.timeout.unwrap());
        d = w.feed_wall_clock();
    }
    assert_eq!(w.h.clock.now(), t0 + 42 * MIN);
}

#[test]
fn a_small_gap_between_the_clocks_is_not_a_suspend() {
    let mut w = WallHarness::new();
    let id = w.h.start();
    let t0 = w.h.clock.now();
    w.h.respond(id, Ok(w.token("a", 60 * MIN)));
    let mut d = w.feed_wall_clock();
    w.suspended = 900 * MS;
    while d.requests.is_empty() {
        w.h.clock.set(d.timeout.unwrap());
        d = w.feed_wall_clock();
    }
    assert_eq!(w.h.clock.now(), t0 + 42 * MIN, "below the 1 s tolerance nothing moves");
}

// The refresh jitter, on the real defaults.

/// Where a machine with the default configuration and this seed schedules the refresh
/// of a token of `lifetime` received at start.
fn default_refresh_delay(seed: u64, lifetime: Duration) -> Duration {
    let mut h = Harness {
        sm: TokenStateMachine::with_seed(TokenManagerConfig::default(), seed).unwrap(),
        clock: FakeClock::new(),
    };
    let id = h.start();
    let d = h.respond(id, Ok(token("t", lifetime)));
    d.timeout.unwrap() - h.clock.now()
}

#[test]
fn by_default_a_refresh_comes_up_to_a_tenth_before_the_rule_never_after() {
    assert_eq!(DEFAULT_REFRESH_JITTER, 0.1);
    assert_eq!(TokenManagerConfig::default().refresh_jitter, DEFAULT_REFRESH_JITTER);
    // 60 min tokens: the rule says 42 min; the band is [37.8 min, 42 min].
    let delays: Vec<Duration> = (0..500).map(|seed| default_refresh_delay(seed, 60 * MIN)).collect();
    let earliest = Duration::from_secs(2268);
    for d in &delays {
        assert!(
            *d >= earliest - MS && *d <= 42 * MIN,
            "{d:?} outside [37.8 min, 42 min]"
        );
    }
    // Spread over the whole band, not bunched at one end.
    let min = delays.iter().min().unwrap();
    let max = delays.iter().max().unwrap();
    assert!(
        *min < earliest + 10 * SEC && *max > 42 * MIN - 10 * SEC,
        "{min:?}..{max:?}"
    );
    let below_middle = delays.iter().filter(|d| **d < Duration::from_secs(2394)).count();
    assert!(
        (200..300).contains(&below_middle),
        "{below_middle} of 500 in the lower half"
    );
}

#[test]
fn by_default_the_lower_bound_and_the_short_token_floor_are_never_passed() {
    // 8 min tokens: the lower bound says 5 min (3 min before expiry); the band ends there.
    // 2 min tokens: the rule says 84 s; the band is [75.6 s, 84 s], never "at once".
    for seed in 0..200 {
        let d = default_refresh_delay(seed, 8 * MIN);
        assert!(d <= 5 * MIN && d >= Duration::from_secs(270) - MS, "{d:?}");
        let d = default_refresh_delay(seed, 2 * MIN);
        assert!(d <= 84 * SEC && d >= Duration::from_millis(75_600) - MS, "{d:?}");
    }
}

#[test]
fn processes_holding_the_same_token_refresh_apart() {
    // Pods on one node get IMDS's cached token, with one expiry, at the same instant.
    // Without jitter they refresh at one instant; with it, each at its own.
    let shared = token("shared", 24 * 60 * MIN);
    let refresh_at = |config: TokenManagerConfig, seed| {
        let mut h = Harness {
            sm: TokenStateMachine::with_seed(config, seed).unwrap(),
            clock: FakeClock::new(),
        };
        let id = h.start();
        let d = h.respond(id, Ok(shared.clone()));
        d.timeout.unwrap() - h.clock.now()
    };
    let exact_instants: std::collections::HashSet<Duration> = (0..20).map(|seed| refresh_at(exact(), seed)).collect();
    assert_eq!(exact_instants.len(), 1);
    let jittered: std::collections::HashSet<Duration> = (0..20)
        .map(|seed| refresh_at(TokenManagerConfig::default(), seed))
        .collect();
    assert_eq!(jittered.len(), 20, "20 pods, 20 refresh instants");
    // 16.8 h is the rule; the band reaches 10 % (1.68 h) earlier.
    assert!(
        jittered
            .iter()
            .all(|d| *d <= 1008 * MIN && *d >= Duration::from_secs(54_432) - MS)
    );
}

#[test]
fn the_band_is_drawn_again_for_each_token() {
    let mut h = Harness::new(TokenManagerConfig::default());
    let mut id = h.start();
    let mut delays = std::collections::HashSet::new();
    for i in 0..10 {
        let d = h.respond(id, Ok(token(&format!("t{i}"), 60 * MIN)));
        delays.insert(d.timeout.unwrap() - h.clock.now());
        let next = h.advance_to_timeout(&d);
        id = next.requests[0];
    }
    assert_eq!(delays.len(), 10);
}

#[test]
fn a_refresh_jitter_outside_0_to_1_is_refused_by_name() {
    for bad in [1.0, 1.5, -0.1] {
        let config = {
            let mut config = TokenManagerConfig::default();
            config.refresh_jitter = bad;
            config
        };
        let err = TokenStateMachine::new(config).unwrap_err();
        assert_eq!(err, ConfigError::RefreshJitter(bad));
        assert!(err.to_string().contains("refresh_jitter"), "{err}");
    }
}
