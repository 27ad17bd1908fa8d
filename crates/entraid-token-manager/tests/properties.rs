//! Properties over random configurations and random event sequences.

use std::time::{Duration, Instant, UNIX_EPOCH};

use entraid_identity::{IdentityError, Token};
use entraid_test_support::FakeClock;
use entraid_token_manager::{DEFAULT_REFRESH_JITTER, Output, RequestId, TokenManagerConfig, TokenStateMachine};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Event {
    /// Let this many milliseconds pass, then call `handle_timeout`.
    Advance(u64),
    /// Jump to the announced timeout.
    ToNextTimeout,
    /// Answer the request in flight with a token of this lifetime (ms, at least 1).
    Token(u64),
    /// Answer with the current token again.
    SameToken,
    Transient(Option<u64>),
    Permanent,
    /// Answer a request that is no longer in flight.
    Stale,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => (0u64..120_000).prop_map(Event::Advance),
        3 => Just(Event::ToNextTimeout),
        2 => prop_oneof![1u64..50, 50u64..300_000, 300_000u64..14_400_000].prop_map(Event::Token),
        1 => Just(Event::SameToken),
        2 => proptest::option::of(0u64..60_000).prop_map(Event::Transient),
        1 => Just(Event::Permanent),
        1 => Just(Event::Stale),
    ]
}

fn config() -> impl Strategy<Value = TokenManagerConfig> {
    (
        (0.05f64..=1.0, prop_oneof![Just(0.0), 0.0f64..0.9]),
        0u64..600_000,
        1u64..30_000,
        (1u32..8, 1u64..2_000, 1u64..20, 1.0f64..4.0, 0.0f64..0.9),
    )
        .prop_map(
            |((ratio, refresh_jitter), bound, timeout, (attempts, initial, max_factor, multiplier, jitter))| {
                let mut config = TokenManagerConfig::default();
                config.expiration_refresh_ratio = ratio;
                config.lower_refresh_bound = Duration::from_millis(bound);
                config.refresh_jitter = refresh_jitter;
                config.token_request_timeout = Duration::from_millis(timeout);
                config.retry.max_attempts = attempts;
                config.retry.initial_delay = Duration::from_millis(initial);
                config.retry.max_delay = Duration::from_millis(initial * max_factor);
                config.retry.backoff_multiplier = multiplier;
                config.retry.jitter = jitter;
                config
            },
        )
}

fn token(secret: u64, lifetime: Duration) -> Token {
    let received = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    Token::new(format!("secret-{secret}"), "oid", received + lifetime, received)
}

/// What the checker knows about the run.
struct Model {
    ratio: f64,
    timeout: Duration,
    min_gap: Duration,
    outstanding: Option<(RequestId, Instant)>,
    last_request_at: Option<Instant>,
    /// When the current token arrived and when it expires.
    token: Option<(Instant, Instant)>,
    next_timeout: Option<Instant>,
    requests: u64,
}

impl Model {
    fn drain(&mut self, sm: &mut TokenStateMachine, now: Instant) -> Result<(), TestCaseError> {
        loop {
            match sm.poll_output() {
                Output::RequestToken(id) => {
                    if let Some((old, deadline)) = self.outstanding {
                        prop_assert!(
                            now >= deadline,
                            "{id:?} issued while {old:?} in flight until {deadline:?}"
                        );
                    }
                    if let Some(previous) = self.last_request_at {
                        prop_assert!(
                            now - previous >= self.min_gap,
                            "requests {:?} apart, less than {:?}",
                            now - previous,
                            self.min_gap
                        );
                    }
                    self.outstanding = Some((id, now + self.timeout));
                    self.last_request_at = Some(now);
                    self.requests += 1;
                }
                Output::TokenExpired => {
                    let (received, expires) = self
                        .token
                        .take()
                        .ok_or_else(|| TestCaseError::fail("expired without a token"))?;
                    prop_assert!(now >= expires, "expiry reported before the expiry instant");
                    let refreshed = self.last_request_at.ok_or_else(|| TestCaseError::fail("no request"))?;
                    prop_assert!(refreshed > received, "no refresh was attempted before expiry");
                }
                Output::Timeout(at) => {
                    prop_assert!(at > now, "timeout {at:?} not after now {now:?}");
                    self.next_timeout = Some(at);
                    return Ok(());
                }
                Output::NotStarted => return Err(TestCaseError::fail("not started after start")),
                Output::TokenRenewed(_) | Output::Error(_) => {}
                other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn safety_and_liveness_hold_for_any_event_sequence(
        config in config(),
        seed in any::<u64>(),
        events in proptest::collection::vec(event(), 1..200),
    ) {
        let retry = &config.retry;
        // The refresh jitter brings a refresh up to `refresh_jitter` earlier, so the
        // shortest gap after a 1 ms token shrinks by that factor too.
        let min_gap = Duration::from_millis(1)
            .mul_f64(config.expiration_refresh_ratio * (1.0 - config.refresh_jitter))
            .min(retry.initial_delay.mul_f64(1.0 - retry.jitter));
        let mut model = Model {
            ratio: config.expiration_refresh_ratio,
            timeout: config.token_request_timeout,
            min_gap,
            outstanding: None,
            last_request_at: None,
            token: None,
            next_timeout: None,
            requests: 0,
        };
        let mut sm = TokenStateMachine::with_seed(config, seed).unwrap();
        let mut clock = FakeClock::new();
        sm.start(clock.now());
        model.drain(&mut sm, clock.now())?;
        let mut secrets = 0u64;
        let mut stale: Option<RequestId> = None;

        for event in events {
            let now = clock.now();
            let in_flight = sm.in_flight_request();
            let answer = |result| (in_flight, result);
            let (target, result): (Option<RequestId>, Option<Result<Token, IdentityError>>) = match event {
                Event::Advance(ms) => {
                    sm.handle_timeout(clock.advance(Duration::from_millis(ms)));
                    (None, None)
                }
                Event::ToNextTimeout => {
                    let at = model.next_timeout.unwrap();
                    sm.handle_timeout(clock.set(at));
                    (None, None)
                }
                Event::Token(ms) => {
                    secrets += 1;
                    answer(Some(Ok(token(secrets, Duration::from_millis(ms)))))
                }
                Event::SameToken => match sm.current_token() {
                    Some(current) => {
                        // The same secret with whatever life it has left (at least 1 ms).
                        let left = sm.current_token_expires_at().unwrap().saturating_duration_since(now);
                        let left = left.max(Duration::from_millis(1));
                        let received = UNIX_EPOCH;
                        answer(Some(Ok(Token::new(current.secret(), "oid", received + left, received))))
                    }
                    None => (None, None),
                },
                Event::Transient(after) => {
                    let mut e = IdentityError::transient("down");
                    if let Some(ms) = after {
                        e = e.with_retry_after(Duration::from_millis(ms));
                    }
                    answer(Some(Err(e)))
                }
                Event::Permanent => answer(Some(Err(IdentityError::permanent("bad secret")))),
                Event::Stale => (stale, Some(Ok(token(u64::MAX, Duration::from_secs(3600))))),
            };
            if let (Some(id), Some(result)) = (target, result) {
                let accepted = sm.in_flight_request() == Some(id);
                let lifetime = result.as_ref().ok().map(Token::lifetime);
                sm.handle_response(now, id, result);
                if accepted && model.outstanding.is_some_and(|(o, deadline)| o == id && now < deadline) {
                    model.outstanding = None;
                    stale = Some(id);
                    if let Some(lifetime) = lifetime {
                        model.token = Some((now, now + lifetime));
                        // A refresh is scheduled before the token expires (at it, for ratio 1).
                        model.drain(&mut sm, now)?;
                        let refresh_at = model.next_timeout.unwrap();
                        if model.ratio < 1.0 {
                            prop_assert!(refresh_at < now + lifetime, "refresh {refresh_at:?} not before expiry");
                        } else {
                            prop_assert!(refresh_at <= now + lifetime);
                        }
                    }
                }
            }
            model.drain(&mut sm, clock.now())?;
            // The state machine's view matches the model.
            prop_assert_eq!(sm.in_flight_request().is_some(), model.outstanding.is_some_and(|(_, d)| clock.now() < d));
        }
        prop_assert!(model.requests >= 1);
    }

    #[test]
    fn the_request_rate_is_bounded_for_any_lifetime(
        lifetime_ms in 1u64..1_000_000,
        ratio in 0.05f64..=1.0,
        bound_ms in 0u64..600_000,
    ) {
        // A provider that always answers at once with the same lifetime: count requests
        // over a simulated hour. At most one per (1 − refresh_jitter)·ratio·min(L, bound)
        // (bound 0: L): the default refresh jitter may bring each refresh that much earlier.
        let config = {
            let mut config = TokenManagerConfig::default();
            config.expiration_refresh_ratio = ratio;
            config.lower_refresh_bound = Duration::from_millis(bound_ms);
            config
        };
        let lifetime = Duration::from_millis(lifetime_ms);
        let floor = if bound_ms == 0 { lifetime } else { lifetime.min(Duration::from_millis(bound_ms)) };
        let min_interval = floor.mul_f64(ratio * (1.0 - DEFAULT_REFRESH_JITTER));
        let hour = Duration::from_secs(3600);
        let limit = (hour.as_secs_f64() / min_interval.as_secs_f64()).ceil() as u64 + 1;
        let mut sm = TokenStateMachine::with_seed(config, 1).unwrap();
        let mut clock = FakeClock::new();
        sm.start(clock.now());
        let mut requests = 0u64;
        let mut n = 0u64;
        while clock.elapsed() < hour && requests <= limit {
            match sm.poll_output() {
                Output::RequestToken(id) => {
                    requests += 1;
                    n += 1;
                    sm.handle_response(clock.now(), id, Ok(token(n, lifetime)));
                }
                Output::Timeout(at) => sm.handle_timeout(clock.set(at)),
                Output::NotStarted => prop_assert!(false, "not started after start"),
                _ => {}
            }
        }
        prop_assert!(requests <= limit, "{requests} requests in an hour for {lifetime:?} tokens, limit {limit}");
        prop_assert!(requests >= 2, "refreshes happen: {requests}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Extreme but valid values never panic: huge delays, lifetimes, retry_after values,
    /// wall clocks far apart from the monotonic one.
    #[test]
    fn extreme_values_never_panic(
        max_delay_secs in prop_oneof![Just(u64::MAX), Just(u64::MAX / 2), 1u64..u64::MAX],
        multiplier in prop_oneof![Just(f64::MAX), 1.0f64..1e300],
        jitter in 0.0f64..0.999,
        lifetime_secs in prop_oneof![Just(u64::MAX), Just(u64::MAX / 4), 0u64..u64::MAX],
        retry_after_ms in prop_oneof![Just(u64::MAX), 0u64..u64::MAX],
        wall_offset_secs in prop_oneof![Just(0u64), Just(u64::MAX / 8), 0u64..1 << 40],
        wall_ahead in any::<bool>(),
        attempts in 1u32..4,
    ) {
        let config = {
            let mut config = TokenManagerConfig::default();
            config.retry.max_attempts = attempts;
            config.retry.initial_delay = Duration::from_millis(1);
            config.retry.max_delay = Duration::from_secs(max_delay_secs);
            config.retry.backoff_multiplier = multiplier;
            config.retry.jitter = jitter;
            config
        };
        prop_assert!(config.validate().is_ok());
        let mut sm = TokenStateMachine::with_seed(config, 3).unwrap();
        let mut clock = FakeClock::new();
        let received = UNIX_EPOCH + Duration::from_secs(1 << 40);
        let offset = Duration::from_secs(wall_offset_secs);
        let wall = if wall_ahead { received.checked_add(offset) } else { received.checked_sub(offset) };
        let wall = wall.unwrap_or(received);
        sm.start(clock.now());
        for round in 0..6u64 {
            let mut request = None;
            loop {
                match sm.poll_output() {
                    Output::RequestToken(id) => request = Some(id),
                    Output::Timeout(at) => {
                        prop_assert!(at > clock.now());
                        break;
                    }
                    Output::NotStarted => break,
                    _ => {}
                }
            }
            if let Some(id) = request {
                let result = if round % 2 == 0 {
                    Err(IdentityError::transient("down").with_retry_after(Duration::from_millis(retry_after_ms)))
                } else {
                    let expires = received.checked_add(Duration::from_secs(lifetime_secs)).unwrap_or(received);
                    Ok(Token::new(format!("s{round}"), "oid", expires, received))
                };
                sm.handle_response(clock.now(), id, result);
            }
            sm.handle_wall_clock(clock.advance(Duration::from_millis(1)), wall);
        }
    }
}
