//! The per-connection state machine on a fake clock: every branch at exact instants.

use std::time::{Duration, Instant};

use entraid_test_support::FakeClock;
use entraid_token_manager::{
    Availability, CloseReason, ConnectReason, ConnectionId, ConnectionOutput as Out, ConnectionPolicy,
    ConnectionPolicyError, ConnectionStateMachine, Endpoint, Generation, MAX_POLICY_DURATION, MaintenanceNotice,
    Renewal,
};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);
/// A 60-second token: replace margin 6 s (a tenth), close margin 1.5 s.
const LIFE: Duration = Duration::from_secs(60);

fn machine() -> ConnectionStateMachine {
    ConnectionStateMachine::with_seed(ConnectionPolicy::default(), 7).unwrap()
}

/// Every output until the machine says when to call again.
fn drain(sm: &mut ConnectionStateMachine) -> (Vec<Out>, Option<Instant>) {
    let mut outputs = Vec::new();
    loop {
        match sm.poll_output() {
            Out::Timeout(at) => return (outputs, Some(at)),
            Out::Idle => return (outputs, None),
            other => outputs.push(other),
        }
    }
}

/// The reason of the first `Connect` in `outputs`.
fn connect_reason(outputs: &[Out]) -> Option<ConnectReason> {
    outputs.iter().find_map(|o| match o {
        Out::Connect { reason, .. } => Some(*reason),
        _ => None,
    })
}

fn connect_id(outputs: &[Out]) -> ConnectionId {
    outputs
        .iter()
        .find_map(|o| match o {
            Out::Connect { id, .. } => Some(*id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Connect in {outputs:?}"))
}

fn auth_of(outputs: &[Out]) -> Option<(ConnectionId, Generation, Duration)> {
    outputs.iter().find_map(|o| match o {
        Out::SendAuth {
            id,
            generation,
            timeout,
        } => Some((*id, *generation, *timeout)),
        _ => None,
    })
}

/// A connected machine at t0 with one 60 s token: (clock, machine, connection).
fn connected() -> (FakeClock, ConnectionStateMachine, ConnectionId) {
    let mut clock = FakeClock::new();
    let mut sm = machine();
    let now = clock.now();
    sm.handle_token(now, now + LIFE, LIFE);
    let (outputs, _) = drain(&mut sm);
    let id = connect_id(&outputs);
    assert_eq!(sm.availability(), Availability::Connecting);
    let now = clock.advance(10 * MS);
    sm.handle_connected(now, id);
    let (outputs, _) = drain(&mut sm);
    assert_eq!(outputs, vec![Out::Use(id)]);
    assert_eq!(sm.availability(), Availability::Connected(id));
    (clock, sm, id)
}

/// Advances the clock to each deadline until `f` finds what it looks for.
fn run_until<T>(
    clock: &mut FakeClock,
    sm: &mut ConnectionStateMachine,
    limit: Duration,
    mut f: impl FnMut(&[Out]) -> Option<T>,
) -> (Instant, T) {
    let end = clock.now() + limit;
    loop {
        let (outputs, next) = drain(sm);
        if let Some(found) = f(&outputs) {
            return (clock.now(), found);
        }
        let next = next.expect("the machine keeps a deadline while waiting");
        assert!(next <= end, "nothing found before the limit");
        let now = clock.set(next);
        sm.handle_timeout(now);
    }
}

#[test]
fn the_first_token_opens_one_connection_authenticated_in_its_handshake() {
    let mut clock = FakeClock::new();
    let mut sm = machine();
    assert_eq!(sm.availability(), Availability::NoValidToken);
    assert_eq!(drain(&mut sm), (vec![], None));
    let now = clock.now();
    let generation = sm.handle_token(now, now + LIFE, LIFE);
    let (outputs, _) = drain(&mut sm);
    assert_eq!(
        outputs,
        vec![Out::Connect {
            id: connect_id(&outputs),
            generation,
            timeout: 5 * S,
            reason: ConnectReason::First,
            endpoint: None,
        }]
    );
    // Nothing else while it connects: one connection, one AUTH.
    let now = clock.advance(100 * MS);
    sm.handle_timeout(now);
    assert!(drain(&mut sm).0.is_empty());
}

#[test]
fn a_renewal_is_sent_once_after_a_spread_delay_within_a_tenth_of_the_time_left() {
    let (mut clock, mut sm, id) = connected();
    // The connection is closed a quarter of the 6 s replace margin before expiry.
    assert_eq!(sm.close_grace(), Some(1500 * MS));
    let renewal_at = clock.advance(42 * S);
    let generation = sm.handle_token(renewal_at, renewal_at + LIFE, LIFE);
    let (sent_at, (auth_id, auth_generation, timeout)) = run_until(&mut clock, &mut sm, 10 * S, auth_of);
    assert_eq!((auth_id, auth_generation), (id, generation));
    // The old token has 18 s left: the 5 s spread is capped at a tenth of that.
    assert!(
        sent_at - renewal_at < Duration::from_millis(1800),
        "{:?}",
        sent_at - renewal_at
    );
    assert_eq!(timeout, 5 * S);
    let now = clock.advance(3 * MS);
    sm.handle_auth_result(now, id, generation, true);
    // Nothing more until the new token's own margins: no replacement.
    let (outputs, next) = drain(&mut sm);
    assert!(outputs.is_empty(), "{outputs:?}");
    assert!(next.unwrap() > renewal_at + 50 * S);
}

#[test]
fn spread_delays_differ_between_machines_and_stay_inside_the_window() {
    let mut delays = Vec::new();
    for seed in 0..50 {
        let mut clock = FakeClock::new();
        let mut sm = ConnectionStateMachine::with_seed(ConnectionPolicy::default(), seed).unwrap();
        let long = Duration::from_secs(3600);
        let now = clock.now();
        sm.handle_token(now, now + long, long);
        let id = connect_id(&drain(&mut sm).0);
        sm.handle_connected(now, id);
        drain(&mut sm);
        let renewal = clock.advance(2520 * S);
        sm.handle_token(renewal, renewal + long, long);
        let (at, _) = run_until(&mut clock, &mut sm, 10 * S, auth_of);
        delays.push(at - renewal);
    }
    assert!(delays.iter().all(|d| *d < 5 * S));
    assert!(delays.iter().any(|d| *d > 4 * S) && delays.iter().any(|d| *d < S));
}

#[test]
fn a_failed_auth_is_retried_with_backoff_then_the_connection_is_replaced_make_before_break() {
    let (mut clock, mut sm, old) = connected();
    let t0 = clock.now() - 10 * MS;
    let renewal = clock.set(t0 + 42 * S);
    let generation = sm.handle_token(renewal, renewal + LIFE, LIFE);
    // Every AUTH fails (WRONGPASS, a busy server): retried, waits growing.
    let mut sent = Vec::new();
    let replacement = loop {
        let (outputs, next) = drain(&mut sm);
        if let Some((id, g, _)) = auth_of(&outputs) {
            assert_eq!((id, g), (old, generation));
            sent.push(clock.now());
            sm.handle_auth_result(clock.now(), id, g, false);
            continue;
        }
        if outputs.iter().any(|o| matches!(o, Out::Connect { .. })) {
            assert_eq!(connect_reason(&outputs), Some(ConnectReason::Replacement));
            break connect_id(&outputs);
        }
        let now = clock.set(next.unwrap());
        sm.handle_timeout(now);
    };
    // Replaced at the margin: 6 s before the old token's expiry (t0 + 60 s).
    assert_eq!(clock.now(), t0 + 54 * S);
    assert!(sent.len() >= 5, "{} AUTH attempts", sent.len());
    let gaps: Vec<Duration> = sent.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] < 300 * MS && gaps.last().unwrap() > &(2 * S), "{gaps:?}");
    assert!(gaps.iter().all(|g| *g <= 5 * S));
    // The old connection serves commands until the new one is up.
    assert_eq!(sm.availability(), Availability::Connected(old));
    let now = clock.advance(50 * MS);
    sm.handle_connected(now, replacement);
    let (outputs, next) = drain(&mut sm);
    assert_eq!(
        outputs,
        vec![
            Out::Retire {
                id: old,
                reason: ConnectReason::Replacement
            },
            Out::Use(replacement)
        ]
    );
    assert_eq!(sm.availability(), Availability::Connected(replacement));
    // If its commands keep it open, it is closed 1.5 s before its token expires.
    assert_eq!(next, Some(t0 + 60 * S - 1500 * MS));
    let now = clock.set(next.unwrap());
    sm.handle_timeout(now);
    assert_eq!(
        drain(&mut sm).0,
        vec![Out::Close {
            id: old,
            reason: CloseReason::TokenExpiring
        }]
    );
}

#[test]
fn an_auth_without_a_reply_times_out_and_counts_as_failed() {
    let (mut clock, mut sm, id) = connected();
    let renewal = clock.advance(42 * S);
    let generation = sm.handle_token(renewal, renewal + LIFE, LIFE);
    let (sent_at, _) = run_until(&mut clock, &mut sm, 5 * S, auth_of);
    let (outputs, next) = drain(&mut sm);
    assert!(outputs.is_empty());
    assert_eq!(next, Some(sent_at + 5 * S), "the AUTH's deadline");
    let now = clock.set(sent_at + 5 * S);
    sm.handle_timeout(now);
    assert_eq!(sm.auth_failures(), 1);
    let (again, (again_id, again_generation, _)) = run_until(&mut clock, &mut sm, S, auth_of);
    assert_eq!((again_id, again_generation), (id, generation));
    assert!(again - now < 300 * MS);
}

#[test]
fn a_late_auth_success_after_its_timeout_still_counts() {
    let (mut clock, mut sm, id) = connected();
    let renewal = clock.advance(42 * S);
    let generation = sm.handle_token(renewal, renewal + LIFE, LIFE);
    let (sent_at, _) = run_until(&mut clock, &mut sm, 5 * S, auth_of);
    sm.handle_timeout(clock.set(sent_at + 5 * S));
    drain(&mut sm);
    // The server was stalled: the reply to the first AUTH comes now.
    sm.handle_auth_result(clock.advance(10 * MS), id, generation, true);
    let (outputs, _) = drain(&mut sm);
    assert!(outputs.is_empty(), "{outputs:?}");
    // And no replacement at the margin.
    sm.handle_timeout(clock.set(renewal + 13 * S));
    assert!(drain(&mut sm).0.is_empty());
}

#[test]
fn a_renewal_while_connecting_is_sent_as_soon_as_the_connection_is_up() {
    let mut clock = FakeClock::new();
    let mut sm = machine();
    let now = clock.now();
    sm.handle_token(now, now + LIFE, LIFE);
    let id = connect_id(&drain(&mut sm).0);
    let now = clock.advance(100 * MS);
    let newer = sm.handle_token(now, now + LIFE, LIFE);
    assert!(drain(&mut sm).0.is_empty(), "no second connection");
    let now = clock.advance(100 * MS);
    sm.handle_connected(now, id);
    let (outputs, _) = drain(&mut sm);
    assert_eq!(outputs[0], Out::Use(id));
    assert_eq!(auth_of(&outputs).map(|(i, g, _)| (i, g)), Some((id, newer)));
}

#[test]
fn a_lost_connection_reconnects_at_once_then_backs_off_while_attempts_fail() {
    let (mut clock, mut sm, id) = connected();
    let now = clock.advance(S);
    sm.handle_connection_lost(now, id);
    let outputs = drain(&mut sm).0;
    assert_eq!(connect_reason(&outputs), Some(ConnectReason::Reconnect));
    let first = connect_id(&outputs);
    assert_eq!(sm.availability(), Availability::Connecting);
    let mut failed_at = clock.advance(20 * MS);
    sm.handle_connect_failed(failed_at, first);
    assert_eq!(sm.availability(), Availability::Reconnecting);
    let mut waits = Vec::new();
    for _ in 0..8 {
        let (at, id) = run_until(&mut clock, &mut sm, 20 * S, |o| {
            o.iter()
                .any(|o| matches!(o, Out::Connect { .. }))
                .then(|| connect_id(o))
        });
        waits.push(at - failed_at);
        failed_at = clock.advance(MS);
        sm.handle_connect_failed(failed_at, id);
    }
    assert!(waits[0] >= 80 * MS && waits[0] <= 120 * MS, "{waits:?}");
    assert!(waits.iter().all(|w| *w <= 10 * S));
    assert!(waits[7] >= 8 * S, "{waits:?}");
    // Success resets the backoff.
    let (_, id) = run_until(&mut clock, &mut sm, 20 * S, |o| {
        o.iter()
            .any(|o| matches!(o, Out::Connect { .. }))
            .then(|| connect_id(o))
    });
    sm.handle_connected(clock.advance(MS), id);
    assert_eq!(sm.availability(), Availability::Connected(id));
    sm.handle_connection_lost(clock.advance(S), id);
    assert!(drain(&mut sm).0.iter().any(|o| matches!(o, Out::Connect { .. })));
}

#[test]
fn a_connect_that_hangs_past_its_timeout_fails_and_its_late_success_is_closed() {
    let mut clock = FakeClock::new();
    let mut sm = machine();
    let now = clock.now();
    sm.handle_token(now, now + LIFE, LIFE);
    let (outputs, next) = drain(&mut sm);
    let id = connect_id(&outputs);
    assert_eq!(next, Some(now + 5 * S));
    sm.handle_timeout(clock.set(now + 5 * S));
    assert_eq!(sm.availability(), Availability::Reconnecting);
    sm.handle_connected(clock.advance(MS), id);
    assert_eq!(
        drain(&mut sm).0,
        vec![Out::Close {
            id,
            reason: CloseReason::NotWanted
        }]
    );
    let (_, again) = run_until(&mut clock, &mut sm, S, |o| {
        o.iter()
            .any(|o| matches!(o, Out::Connect { .. }))
            .then(|| connect_id(o))
    });
    assert_ne!(again, id);
}

#[test]
fn an_identity_outage_longer_than_the_token_closes_the_connection_before_expiry_then_recovers() {
    let (mut clock, mut sm, id) = connected();
    let t0 = clock.now() - 10 * MS;
    // No renewal ever comes: closed 1.5 s before expiry, not cut by the server.
    let (at, _) = run_until(&mut clock, &mut sm, 70 * S, |o| {
        o.contains(&Out::Close {
            id,
            reason: CloseReason::TokenExpiring,
        })
        .then_some(())
    });
    assert_eq!(at, t0 + 60 * S - 1500 * MS);
    assert_eq!(sm.availability(), Availability::NoValidToken);
    assert_eq!(drain(&mut sm), (vec![], None), "nothing to do without a token");
    sm.handle_token_lost(clock.advance(2 * S));
    assert_eq!(sm.availability(), Availability::NoValidToken);
    // Hours later a token comes: a connection at once.
    let now = clock.advance(3 * 3600 * S);
    sm.handle_token(now, now + LIFE, LIFE);
    let fresh = connect_id(&drain(&mut sm).0);
    sm.handle_connected(clock.advance(MS), fresh);
    assert_eq!(sm.availability(), Availability::Connected(fresh));
}

#[test]
fn replies_and_losses_from_retired_connections_change_nothing() {
    let (mut clock, mut sm, old) = connected();
    let renewal = clock.advance(42 * S);
    let generation = sm.handle_token(renewal, renewal + LIFE, LIFE);
    sm.handle_connection_lost(clock.advance(MS), old);
    let new = connect_id(&drain(&mut sm).0);
    sm.handle_connected(clock.advance(MS), new);
    drain(&mut sm);
    // A reply from the dead connection, and a second loss report for it.
    sm.handle_auth_result(clock.advance(MS), old, generation, false);
    sm.handle_connection_lost(clock.advance(MS), old);
    assert_eq!(sm.availability(), Availability::Connected(new));
    assert_eq!(sm.auth_failures(), 0);
    assert!(drain(&mut sm).0.is_empty());
}

#[test]
fn a_retired_connection_that_drops_is_not_closed_again() {
    let (mut clock, mut sm, old) = connected();
    let t0 = clock.now() - 10 * MS;
    sm.handle_token(clock.set(t0 + 42 * S), t0 + 102 * S, LIFE);
    // Its AUTHs go unanswered: replaced at the margin.
    let (_, new) = run_until(&mut clock, &mut sm, 20 * S, |o| {
        o.iter()
            .any(|o| matches!(o, Out::Connect { .. }))
            .then(|| connect_id(o))
    });
    sm.handle_connected(clock.advance(MS), new);
    drain(&mut sm);
    sm.handle_connection_lost(clock.advance(MS), old);
    sm.handle_timeout(clock.set(t0 + 61 * S));
    assert!(!drain(&mut sm).0.contains(&Out::Close {
        id: old,
        reason: CloseReason::TokenExpiring
    }));
}

#[test]
fn short_tokens_scale_the_margins_down() {
    // A 10 s token renewed at 7 s (3 s left): AUTH spread at most 300 ms, replace at
    // 9 s, close at 9.75 s.
    let mut clock = FakeClock::new();
    let mut sm = machine();
    let life = 10 * S;
    let t0 = clock.now();
    sm.handle_token(t0, t0 + life, life);
    let id = connect_id(&drain(&mut sm).0);
    sm.handle_connected(t0, id);
    drain(&mut sm);
    let renewal = clock.set(t0 + 7 * S);
    let generation = sm.handle_token(renewal, renewal + life, life);
    let (sent, (_, _, timeout)) = run_until(&mut clock, &mut sm, S, auth_of);
    assert!(sent - renewal < 300 * MS);
    assert!(timeout <= t0 + 9750 * MS - sent, "{timeout:?}");
    // Never answered: replaced at 9 s.
    let (at, _) = run_until(&mut clock, &mut sm, 3 * S, |o| {
        if let Some((i, g, _)) = auth_of(o) {
            assert_eq!((i, g), (id, generation));
        }
        o.iter().any(|o| matches!(o, Out::Connect { .. })).then_some(())
    });
    assert_eq!(at, t0 + 9 * S);
}

#[test]
fn time_going_backwards_is_taken_as_the_latest_instant() {
    let (mut clock, mut sm, id) = connected();
    let later = clock.advance(30 * S);
    sm.handle_timeout(later);
    sm.handle_timeout(later - 20 * S);
    let (_, next) = drain(&mut sm);
    assert!(next.unwrap() > later);
    assert_eq!(sm.availability(), Availability::Connected(id));
}

#[test]
fn invalid_policies_are_refused_with_the_value_to_fix() {
    let zero = {
        let mut policy = ConnectionPolicy::default();
        policy.auth_timeout = Duration::ZERO;
        policy
    };
    assert_eq!(
        ConnectionStateMachine::new(zero).unwrap_err(),
        ConnectionPolicyError::Zero("auth_timeout")
    );
    let inverted = {
        let mut policy = ConnectionPolicy::default();
        policy.reconnect_max = 10 * MS;
        policy
    };
    let error = ConnectionStateMachine::new(inverted).unwrap_err();
    assert!(error.to_string().contains("reconnect_max"), "{error}");
}

/// A connected machine that renews by replacement (a RESP2 subscriber).
fn connected_replacing() -> (FakeClock, ConnectionStateMachine, ConnectionId) {
    let mut clock = FakeClock::new();
    let mut sm = machine().with_renewal(Renewal::Replace);
    let now = clock.now();
    sm.handle_token(now, now + LIFE, LIFE);
    let id = connect_id(&drain(&mut sm).0);
    let now = clock.advance(10 * MS);
    sm.handle_connected(now, id);
    assert_eq!(drain(&mut sm).0, vec![Out::Use(id)]);
    (clock, sm, id)
}

#[test]
fn with_replace_renewal_a_new_connection_takes_over_after_the_spread_and_no_auth_is_sent() {
    let (mut clock, mut sm, old) = connected_replacing();
    let renewal_at = clock.advance(42 * S);
    let generation = sm.handle_token(renewal_at, renewal_at + LIFE, LIFE);
    let mut outputs_seen = Vec::new();
    let (opened_at, (new, connect_generation)) = run_until(&mut clock, &mut sm, 10 * S, |outputs| {
        outputs_seen.extend_from_slice(outputs);
        outputs.iter().find_map(|o| match o {
            Out::Connect {
                id, generation, reason, ..
            } => {
                assert_eq!(*reason, ConnectReason::RenewalSwap);
                Some((*id, *generation))
            }
            _ => None,
        })
    });
    assert_eq!(connect_generation, generation);
    // The old token has 18 s left: within the spread, capped at a tenth of that.
    assert!(opened_at - renewal_at < 1800 * MS, "{:?}", opened_at - renewal_at);
    assert!(auth_of(&outputs_seen).is_none(), "{outputs_seen:?}");
    // The old connection serves until the new one is up, then retires.
    assert_eq!(sm.availability(), Availability::Connected(old));
    let now = clock.advance(50 * MS);
    sm.handle_connected(now, new);
    let (outputs, _) = drain(&mut sm);
    assert_eq!(
        outputs,
        vec![
            Out::Retire {
                id: old,
                reason: ConnectReason::RenewalSwap
            },
            Out::Use(new)
        ]
    );
    // The retired one is closed before its token expires if its driver has not dropped it.
    let (closed_at, ()) = run_until(&mut clock, &mut sm, 20 * S, |outputs| {
        outputs
            .contains(&Out::Close {
                id: old,
                reason: CloseReason::TokenExpiring,
            })
            .then_some(())
    });
    assert!(closed_at < renewal_at + 18 * S, "{:?}", closed_at - renewal_at);
    // No second replacement, no AUTH: the new connection holds the newest token.
    let later = clock.advance(5 * S);
    sm.handle_timeout(later);
    let (outputs, _) = drain(&mut sm);
    assert!(outputs.is_empty(), "{outputs:?}");
}

#[test]
fn with_replace_renewal_a_failed_takeover_is_retried_with_backoff_while_the_old_connection_serves() {
    let (mut clock, mut sm, old) = connected_replacing();
    let renewal_at = clock.advance(42 * S);
    sm.handle_token(renewal_at, renewal_at + LIFE, LIFE);
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (at, id) = run_until(&mut clock, &mut sm, 20 * S, |outputs| {
            outputs.iter().find_map(|o| match o {
                Out::Connect { id, .. } => Some(*id),
                _ => None,
            })
        });
        attempts.push(at);
        let now = clock.advance(5 * MS);
        sm.handle_connect_failed(now, id);
        assert_eq!(
            sm.availability(),
            Availability::Connected(old),
            "the old one still serves"
        );
    }
    // 100 ms then 200 ms (±20 %) between attempts: backoff, not a busy loop.
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[0] >= 80 * MS && gaps[1] >= 160 * MS, "{gaps:?}");
    let (_, new) = run_until(&mut clock, &mut sm, 20 * S, |outputs| {
        outputs.iter().find_map(|o| match o {
            Out::Connect { id, .. } => Some(*id),
            _ => None,
        })
    });
    let now = clock.advance(5 * MS);
    sm.handle_connected(now, new);
    assert_eq!(
        drain(&mut sm).0,
        vec![
            Out::Retire {
                id: old,
                reason: ConnectReason::RenewalSwap
            },
            Out::Use(new)
        ]
    );
}

#[test]
fn far_future_and_absurd_lifetimes_never_panic() {
    for lifetime in [
        Duration::MAX,
        Duration::from_secs(u64::MAX / 4),
        Duration::from_secs(1 << 40),
    ] {
        let mut clock = FakeClock::new();
        let mut sm = machine();
        let now = clock.now();
        let expires_at = now
            .checked_add(lifetime)
            .unwrap_or(now + Duration::from_secs(10 * 365 * 24 * 3600));
        sm.handle_token(now, expires_at, lifetime);
        let (outputs, _) = drain(&mut sm);
        let id = connect_id(&outputs);
        sm.handle_connected(clock.advance(10 * MS), id);
        let (_, next) = drain(&mut sm);
        let next = next.expect("a deadline");
        assert!(next > clock.now());
        sm.handle_timeout(clock.set(next));
        let generation = sm.handle_token(clock.now(), expires_at, lifetime);
        let _ = generation;
        drain(&mut sm);
    }
}

#[test]
fn durations_past_a_day_are_refused_and_a_day_everywhere_never_panics() {
    // `Duration::MAX` meant as "no limit" overflowed an instant inside the machine.
    let unbounded = {
        let mut policy = ConnectionPolicy::default();
        policy.connect_timeout = Duration::MAX;
        policy
    };
    let error = ConnectionStateMachine::new(unbounded).unwrap_err();
    assert!(
        matches!(
            error,
            ConnectionPolicyError::TooLong {
                name: "connect_timeout",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("at most"), "{error}");
    // Every duration at the limit: a whole life of failures, replacements and losses.
    let day = MAX_POLICY_DURATION;
    let policy = {
        let mut policy = ConnectionPolicy::default();
        policy.reauth_spread = day;
        policy.auth_timeout = day;
        policy.auth_retry_initial = day;
        policy.auth_retry_max = day;
        policy.replace_margin = day;
        policy.connect_timeout = day;
        policy.reconnect_initial = day;
        policy.reconnect_max = day;
        policy.stable_after = day;
        policy.probe_timeout = day;
        policy
    };
    let mut clock = FakeClock::new();
    let mut sm = ConnectionStateMachine::with_seed(policy, 3).unwrap();
    let now = clock.now();
    sm.handle_token(now, now + 30 * day, 30 * day);
    for round in 0..20 {
        let (outputs, next) = drain(&mut sm);
        for output in &outputs {
            match output {
                Out::Connect { id, .. } if round % 3 == 0 => sm.handle_connect_failed(clock.now(), *id),
                Out::Connect { id, .. } => sm.handle_connected(clock.now(), *id),
                Out::SendAuth { id, generation, .. } => sm.handle_auth_result(clock.now(), *id, *generation, false),
                _ => {}
            }
        }
        if let Availability::Connected(id) = sm.availability()
            && round % 4 == 1
        {
            sm.handle_connection_lost(clock.now(), id);
        }
        if round % 5 == 2 {
            let now = clock.now();
            sm.handle_token(now, now + 30 * day, 30 * day);
        }
        if let Some(next) = next {
            sm.handle_timeout(clock.set(next));
        }
    }
}

#[test]
fn a_connection_dropped_right_after_it_opens_backs_off_and_a_stable_one_reconnects_at_once() {
    let (mut clock, mut sm, mut id) = connected();
    // A server that drops every connection 50 ms after it opens.
    let mut opened_at = Vec::new();
    for _ in 0..6 {
        sm.handle_connection_lost(clock.advance(50 * MS), id);
        let (at, next) = run_until(&mut clock, &mut sm, 30 * S, |o| {
            o.iter()
                .any(|o| matches!(o, Out::Connect { .. }))
                .then(|| connect_id(o))
        });
        opened_at.push(at);
        id = next;
        sm.handle_connected(clock.advance(5 * MS), id);
    }
    let gaps: Vec<Duration> = opened_at.windows(2).map(|w| w[1] - w[0]).collect();
    // The first loss reconnects at once; the next wait 100 ms, 200 ms, 400 ms… (±20 %).
    assert!(gaps[0] >= 120 * MS && gaps[0] <= 200 * MS, "{gaps:?}");
    assert!(gaps.windows(2).all(|w| w[1] > w[0]), "growing: {gaps:?}");
    assert!(gaps[4] >= 1300 * MS, "{gaps:?}");
    // Once one lives past `stable_after` (1 s), a loss reconnects at once again.
    let now = clock.advance(2 * S);
    sm.handle_connection_lost(now, id);
    let outputs = drain(&mut sm).0;
    assert_eq!(connect_reason(&outputs), Some(ConnectReason::Reconnect), "{outputs:?}");
}

#[test]
fn a_renewal_waits_for_the_users_transaction_but_not_past_the_replace_margin() {
    let (mut clock, mut sm, id) = connected();
    let t0 = clock.now() - 10 * MS;
    // MULTI sent: the connection is pinned.
    sm.handle_pinned(clock.now(), id, true);
    let renewal = clock.set(t0 + 42 * S);
    let generation = sm.handle_token(renewal, renewal + LIFE, LIFE);
    // The spread (at most 1.8 s here) passes: no AUTH inside the transaction.
    sm.handle_timeout(clock.set(t0 + 45 * S));
    assert!(auth_of(&drain(&mut sm).0).is_none());
    // EXEC answered: the AUTH goes at once.
    sm.handle_pinned(clock.advance(MS), id, false);
    assert_eq!(
        auth_of(&drain(&mut sm).0).map(|(i, g, _)| (i, g)),
        Some((id, generation))
    );

    // A transaction that never ends holds the renewal only until the replace margin
    // (6 s before the old token's expiry), then the AUTH goes (the driver fails the
    // transaction).
    let (mut clock, mut sm, id) = connected();
    let t0 = clock.now() - 10 * MS;
    sm.handle_pinned(clock.now(), id, true);
    let renewal = clock.set(t0 + 42 * S);
    sm.handle_token(renewal, renewal + LIFE, LIFE);
    let (sent_at, (auth_id, _, _)) = run_until(&mut clock, &mut sm, 20 * S, auth_of);
    assert_eq!((auth_id, sent_at), (id, t0 + 54 * S));
}

#[test]
fn a_renewal_swap_waits_for_the_users_transaction_too() {
    let (mut clock, mut sm, old) = connected_replacing();
    let t0 = clock.now() - 10 * MS;
    sm.handle_pinned(clock.now(), old, true);
    let renewal = clock.set(t0 + 42 * S);
    sm.handle_token(renewal, renewal + LIFE, LIFE);
    sm.handle_timeout(clock.set(t0 + 45 * S));
    assert_eq!(
        connect_reason(&drain(&mut sm).0),
        None,
        "no swap inside the transaction"
    );
    sm.handle_pinned(clock.advance(MS), old, false);
    assert_eq!(connect_reason(&drain(&mut sm).0), Some(ConnectReason::RenewalSwap));
}

#[test]
fn a_command_without_a_reply_is_probed_and_a_silent_connection_replaced_make_before_break() {
    let (mut clock, mut sm, old) = connected();
    // A slow reply: one health PING, not two, and an answer changes nothing.
    sm.handle_reply_timeout(clock.advance(S), old);
    assert_eq!(
        drain(&mut sm).0,
        vec![Out::Probe {
            id: old,
            timeout: 2 * S
        }]
    );
    sm.handle_reply_timeout(clock.advance(10 * MS), old);
    assert!(drain(&mut sm).0.is_empty(), "a probe is already out");
    sm.handle_probe_result(clock.advance(100 * MS), old, true);
    assert!(drain(&mut sm).0.is_empty());
    assert_eq!(sm.availability(), Availability::Connected(old));
    // A silent path: the PING gets no answer within its 2 s.
    let probed_at = clock.advance(S);
    sm.handle_reply_timeout(probed_at, old);
    assert!(matches!(drain(&mut sm).0[..], [Out::Probe { .. }]));
    let (replaced_at, (reason, new)) = run_until(&mut clock, &mut sm, 5 * S, |o| {
        connect_reason(o).map(|reason| (reason, connect_id(o)))
    });
    assert_eq!((replaced_at, reason), (probed_at + 2 * S, ConnectReason::Unresponsive));
    // The old connection serves (its commands may still be answered) until the new one
    // is up; then it retires.
    assert_eq!(sm.availability(), Availability::Connected(old));
    sm.handle_connected(clock.advance(50 * MS), new);
    assert_eq!(
        drain(&mut sm).0,
        vec![
            Out::Retire {
                id: old,
                reason: ConnectReason::Unresponsive
            },
            Out::Use(new)
        ]
    );
    // No second replacement for the new one.
    sm.handle_timeout(clock.advance(5 * S));
    assert!(connect_reason(&drain(&mut sm).0).is_none());
}

// ---------- maintenance notifications ----------

fn moving(seq: u64, time: Duration, endpoint: Option<&str>) -> MaintenanceNotice {
    MaintenanceNotice::Moving {
        seq,
        time,
        endpoint: endpoint.map(|e| Endpoint::parse(e).unwrap()),
    }
}

/// The `Connect` in `outputs`: (id, reason, endpoint).
fn connect_of(outputs: &[Out]) -> Option<(ConnectionId, ConnectReason, Option<Endpoint>)> {
    outputs.iter().find_map(|o| match o {
        Out::Connect {
            id, reason, endpoint, ..
        } => Some((*id, *reason, endpoint.clone())),
        _ => None,
    })
}

#[test]
fn moving_with_an_endpoint_hands_off_at_once_and_closes_the_old_connection_by_the_deadline() {
    let (mut clock, mut sm, old) = connected();
    let notified = clock.advance(S);
    sm.handle_maintenance(notified, old, moving(7, 15 * S, Some("10.0.0.2:12000")));
    let (outputs, _) = drain(&mut sm);
    let (new, reason, endpoint) = connect_of(&outputs).expect("a handoff connection at once");
    assert_eq!(reason, ConnectReason::Handoff);
    assert_eq!(endpoint, Some(Endpoint::new("10.0.0.2", 12000)));
    // Replies slow down while the endpoint moves: relaxed, 10 s by default.
    assert!(outputs.contains(&Out::RelaxTimeouts(Some(10 * S))), "{outputs:?}");
    // The old connection serves commands until the new one is up.
    assert_eq!(sm.availability(), Availability::Connected(old));
    // The same notification again (a replay) starts nothing.
    sm.handle_maintenance(clock.advance(MS), old, moving(7, 15 * S, Some("10.0.0.2:12000")));
    assert!(connect_of(&drain(&mut sm).0).is_none());
    sm.handle_connected(clock.advance(20 * MS), new);
    let (outputs, next) = drain(&mut sm);
    assert_eq!(
        outputs,
        vec![
            Out::Retire {
                id: old,
                reason: ConnectReason::Handoff
            },
            Out::Use(new)
        ]
    );
    // Still open near the server's deadline (a command holds it): closed a tenth of the
    // announced time before it.
    assert_eq!(next, Some(notified + 13500 * MS));
    sm.handle_timeout(clock.set(notified + 13500 * MS));
    assert_eq!(
        drain(&mut sm).0,
        vec![Out::Close {
            id: old,
            reason: CloseReason::ServerMoving
        }]
    );
    // Timeouts stay relaxed until the window ends.
    sm.handle_timeout(clock.set(notified + 15 * S));
    assert_eq!(drain(&mut sm).0, vec![Out::RelaxTimeouts(None)]);
}

#[test]
fn moving_without_an_endpoint_reconnects_to_the_original_address_after_half_the_time() {
    let (mut clock, mut sm, old) = connected();
    let notified = clock.advance(S);
    sm.handle_maintenance(notified, old, moving(3, 10 * S, None));
    let (at, (new, reason, endpoint)) = run_until(&mut clock, &mut sm, 10 * S, connect_of);
    assert_eq!(at, notified + 5 * S);
    assert_eq!((reason, endpoint), (ConnectReason::Handoff, None));
    sm.handle_connected(clock.advance(10 * MS), new);
    assert_eq!(
        drain(&mut sm).0,
        vec![
            Out::Retire {
                id: old,
                reason: ConnectReason::Handoff
            },
            Out::Use(new)
        ]
    );
}

#[test]
fn connections_opened_during_the_moving_window_go_to_the_new_endpoint_and_after_it_back() {
    let (mut clock, mut sm, old) = connected();
    let notified = clock.advance(S);
    sm.handle_maintenance(notified, old, moving(1, 15 * S, Some("moved.example:6380")));
    let (handoff, _, _) = connect_of(&drain(&mut sm).0).unwrap();
    sm.handle_connected(clock.advance(10 * MS), handoff);
    drain(&mut sm);
    // The new connection drops inside the window: its replacement goes to the endpoint.
    sm.handle_connection_lost(clock.advance(2 * S), handoff);
    let (_, reason, endpoint) = connect_of(&drain(&mut sm).0).unwrap();
    assert_eq!(reason, ConnectReason::Reconnect);
    assert_eq!(endpoint, Some(Endpoint::new("moved.example", 6380)));
    // After the window, back to the configured address.
    let (mut clock2, mut sm2, old2) = connected();
    let notified2 = clock2.advance(S);
    sm2.handle_maintenance(notified2, old2, moving(1, 15 * S, Some("moved.example:6380")));
    let (handoff2, _, _) = connect_of(&drain(&mut sm2).0).unwrap();
    sm2.handle_connected(clock2.advance(10 * MS), handoff2);
    drain(&mut sm2);
    sm2.handle_connection_lost(clock2.set(notified2 + 16 * S), handoff2);
    let (_, _, endpoint) = connect_of(&drain(&mut sm2).0).unwrap();
    assert_eq!(endpoint, None);
}

#[test]
fn a_failed_handoff_is_retried_until_the_deadline_then_given_up() {
    let (mut clock, mut sm, old) = connected();
    let notified = clock.advance(S);
    sm.handle_maintenance(notified, old, moving(9, 4 * S, Some("10.0.0.9:6379")));
    let mut attempts = 0;
    let mut missed = Vec::new();
    loop {
        let (outputs, next) = drain(&mut sm);
        missed.extend(outputs.iter().filter_map(|o| match o {
            Out::HandoffMissed(id) => Some((*id, clock.now())),
            _ => None,
        }));
        if let Some((id, reason, _)) = connect_of(&outputs) {
            assert_eq!(reason, ConnectReason::Handoff);
            attempts += 1;
            sm.handle_connect_failed(clock.advance(10 * MS), id);
            continue;
        }
        match next {
            Some(at) if at <= notified + 4 * S => {
                let now = clock.set(at);
                sm.handle_timeout(now);
            }
            _ => break,
        }
    }
    assert!(attempts >= 3, "{attempts} attempts in 4 s");
    // The driver is told once, at nine tenths of the announced time.
    assert_eq!(missed, vec![(old, notified + 3600 * MS)]);
    // Past the deadline the old connection is still the one in use; the server closes it
    // and the usual reconnect follows.
    assert_eq!(sm.availability(), Availability::Connected(old));
    sm.handle_connection_lost(clock.set(notified + 4 * S + 10 * MS), old);
    assert_eq!(
        connect_of(&drain(&mut sm).0).map(|c| c.1),
        Some(ConnectReason::Reconnect)
    );
}

#[test]
fn moving_on_a_connection_not_in_use_moves_nothing() {
    let (mut clock, mut sm, old) = connected();
    sm.handle_maintenance(clock.advance(S), old, moving(1, 15 * S, Some("10.0.0.2:12000")));
    let (new, _, _) = connect_of(&drain(&mut sm).0).unwrap();
    sm.handle_connected(clock.advance(10 * MS), new);
    drain(&mut sm);
    // The retired connection hears of another move: it goes anyway, nothing to hand off.
    sm.handle_maintenance(clock.advance(S), old, moving(2, 10 * S, None));
    assert!(connect_of(&drain(&mut sm).0).is_none());
    assert_eq!(sm.availability(), Availability::Connected(new));
}

#[test]
fn migrations_relax_timeouts_until_they_end_without_pairing_by_sequence_number() {
    let (mut clock, mut sm, id) = connected();
    sm.handle_maintenance(
        clock.advance(S),
        id,
        MaintenanceNotice::Migrating { seq: 10, time: 5 * S },
    );
    assert_eq!(drain(&mut sm).0, vec![Out::RelaxTimeouts(Some(10 * S))]);
    // A failover starts too; the migration's end (another sequence number) does not end it.
    sm.handle_maintenance(
        clock.advance(S),
        id,
        MaintenanceNotice::FailingOver { seq: 11, time: 5 * S },
    );
    assert!(drain(&mut sm).0.is_empty());
    sm.handle_maintenance(clock.advance(S), id, MaintenanceNotice::Migrated { seq: 12 });
    assert!(drain(&mut sm).0.is_empty(), "one window still open");
    sm.handle_maintenance(clock.advance(S), id, MaintenanceNotice::FailedOver { seq: 13 });
    assert_eq!(drain(&mut sm).0, vec![Out::RelaxTimeouts(None)]);
}

#[test]
fn a_migration_whose_end_never_comes_is_unrelaxed_by_the_backstop() {
    let (mut clock, mut sm, id) = connected();
    let started = clock.advance(S);
    sm.handle_maintenance(started, id, MaintenanceNotice::Migrating { seq: 1, time: 8 * S });
    drain(&mut sm);
    // Three times the announced time (24 s; more than twice the relaxed timeout).
    let (at, ()) = run_until(&mut clock, &mut sm, 30 * S, |o| {
        o.contains(&Out::RelaxTimeouts(None)).then_some(())
    });
    assert_eq!(at, started + 24 * S);
}

#[test]
fn relaxing_can_be_turned_off() {
    let mut policy = ConnectionPolicy::default();
    policy.relaxed_timeout = None;
    let mut sm = ConnectionStateMachine::with_seed(policy, 7).unwrap();
    let mut clock = FakeClock::new();
    let now = clock.now();
    sm.handle_token(now, now + LIFE, LIFE);
    let id = connect_id(&drain(&mut sm).0);
    sm.handle_connected(now, id);
    drain(&mut sm);
    sm.handle_maintenance(
        clock.advance(S),
        id,
        MaintenanceNotice::Migrating { seq: 1, time: 8 * S },
    );
    assert!(drain(&mut sm).0.is_empty());
    let mut zero = ConnectionPolicy::default();
    zero.relaxed_timeout = Some(Duration::ZERO);
    assert!(matches!(zero.validate(), Err(ConnectionPolicyError::Zero(_))));
}

#[test]
fn an_announced_time_past_a_day_is_taken_as_a_day() {
    let (mut clock, mut sm, old) = connected();
    let notified = clock.advance(S);
    // A push may carry up to `i64::MAX` seconds; `Instant + Duration::MAX` would panic.
    sm.handle_maintenance(notified, old, moving(1, Duration::MAX, None));
    sm.handle_maintenance(
        notified,
        old,
        MaintenanceNotice::Migrating {
            seq: 2,
            time: Duration::from_secs(i64::MAX as u64),
        },
    );
    let (outputs, next) = drain(&mut sm);
    assert!(outputs.contains(&Out::RelaxTimeouts(Some(10 * S))), "{outputs:?}");
    // No endpoint named: the handoff starts after half the (clamped) time; the token's
    // own deadlines come first.
    assert!(next.is_some_and(|at| at <= notified + LIFE), "{next:?}");
    assert_eq!(sm.availability(), Availability::Connected(old));
}
