//! Properties of the per-connection machine over random event sequences: whatever the
//! wire says (maintenance pushes with any time, in any order, on any connection) and
//! whatever the driver reports, it never panics, never asks to be woken in the past, and
//! never tells callers there is no valid token while there is one.

use std::time::{Duration, Instant};

use entraid_test_support::FakeClock;
use entraid_token_manager::{
    Availability, ConnectionId, ConnectionOutput, ConnectionPolicy, ConnectionStateMachine, Endpoint, MaintenanceNotice,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Event {
    /// Let this many milliseconds pass, then call `handle_timeout`.
    Advance(u64),
    /// Jump to the announced timeout.
    ToNextTimeout,
    /// A maintenance push on the connection in use (or a stale one).
    Notice(MaintenanceNotice, bool),
    /// The connection in use drops.
    Lost,
    /// A command on the connection in use got no reply in time.
    ReplyTimeout,
    /// A renewed token of this lifetime (seconds).
    Token(u64),
}

/// Any duration a push can carry: from nothing to `i64::MAX` seconds (and beyond).
fn any_time() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..120).prop_map(Duration::from_secs),
        (0u64..=i64::MAX as u64).prop_map(Duration::from_secs),
        Just(Duration::MAX),
    ]
}

fn notice() -> impl Strategy<Value = MaintenanceNotice> {
    let seq = 0u64..4;
    let endpoint = proptest::option::of(Just(Endpoint::new("10.0.0.9", 6379)));
    prop_oneof![
        (seq.clone(), any_time(), endpoint).prop_map(|(seq, time, endpoint)| MaintenanceNotice::Moving {
            seq,
            time,
            endpoint
        }),
        (seq.clone(), any_time()).prop_map(|(seq, time)| MaintenanceNotice::Migrating { seq, time }),
        seq.clone().prop_map(|seq| MaintenanceNotice::Migrated { seq }),
        (seq.clone(), any_time()).prop_map(|(seq, time)| MaintenanceNotice::FailingOver { seq, time }),
        seq.prop_map(|seq| MaintenanceNotice::FailedOver { seq }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => (0u64..30_000).prop_map(Event::Advance),
        2 => Just(Event::ToNextTimeout),
        4 => (notice(), any::<bool>()).prop_map(|(notice, stale)| Event::Notice(notice, stale)),
        1 => Just(Event::Lost),
        1 => Just(Event::ReplyTimeout),
        1 => (10u64..7200).prop_map(Event::Token),
    ]
}

/// Drains the machine, opening every connection it asks for at once; returns the
/// deadline it gave.
fn drive(sm: &mut ConnectionStateMachine, clock: &FakeClock, in_use: &mut Option<ConnectionId>) -> Option<Instant> {
    loop {
        match sm.poll_output() {
            ConnectionOutput::Connect { id, .. } => sm.handle_connected(clock.now(), id),
            ConnectionOutput::Use(id) => *in_use = Some(id),
            ConnectionOutput::SendAuth { id, generation, .. } => {
                sm.handle_auth_result(clock.now(), id, generation, true)
            }
            ConnectionOutput::Probe { id, .. } => sm.handle_probe_result(clock.now(), id, true),
            ConnectionOutput::Close { id, .. } if Some(id) == *in_use => *in_use = None,
            ConnectionOutput::Retire { .. }
            | ConnectionOutput::Close { .. }
            | ConnectionOutput::HandoffMissed(_)
            | ConnectionOutput::RelaxTimeouts(_) => {}
            ConnectionOutput::Timeout(at) => return Some(at),
            ConnectionOutput::Idle => return None,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_push_and_no_sequence_of_events_makes_the_machine_panic(events in proptest::collection::vec(event(), 1..60)) {
        let mut clock = FakeClock::new();
        let mut sm = ConnectionStateMachine::with_seed(ConnectionPolicy::default(), 11).unwrap();
        let mut life = Duration::from_secs(3600);
        let mut expires = clock.now() + life;
        sm.handle_token(clock.now(), expires, life);
        let mut in_use = None;
        let mut stale = None;
        let mut deadline = drive(&mut sm, &clock, &mut in_use);
        for event in events {
            match event {
                Event::Advance(ms) => {
                    let now = clock.advance(Duration::from_millis(ms));
                    sm.handle_timeout(now);
                }
                Event::ToNextTimeout => {
                    if let Some(at) = deadline {
                        prop_assert!(at >= clock.now(), "a deadline in the past: {at:?}");
                        let now = clock.set(at);
                        sm.handle_timeout(now);
                    }
                }
                Event::Notice(notice, on_stale) => {
                    let on = if on_stale { stale.or(in_use) } else { in_use };
                    if let Some(id) = on {
                        sm.handle_maintenance(clock.now(), id, notice);
                    }
                }
                Event::Lost => {
                    if let Some(id) = in_use.take() {
                        stale = Some(id);
                        sm.handle_connection_lost(clock.now(), id);
                    }
                }
                Event::ReplyTimeout => {
                    if let Some(id) = in_use {
                        sm.handle_reply_timeout(clock.now(), id);
                    }
                }
                Event::Token(seconds) => {
                    life = Duration::from_secs(seconds);
                    expires = clock.now() + life;
                    sm.handle_token(clock.now(), expires, life);
                }
            }
            deadline = drive(&mut sm, &clock, &mut in_use);
            // While the newest token has more than its close margin left (a fortieth of
            // its life at most), callers are never told there is none.
            if expires.saturating_duration_since(clock.now()) > life / 10 {
                prop_assert_ne!(sm.availability(), Availability::NoValidToken);
            }
        }
    }
}
