//! The std-thread driver: the same state machine with no async runtime at all.
//!
//! These tests run on real time with tokens of a few hundred milliseconds; together they
//! take well under a second. Every wait has a watchdog, so a bug fails instead of hanging.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use entraid_identity::{ErrorOrigin, IdentityError};
use entraid_test_support::{ScriptedProvider, Step};
use entraid_token_manager::blocking::TokenManager;
use entraid_token_manager::{
    ConfigError, RetryPolicy, StartError, TokenManagerConfig, TokenManagerError, TokenStateMachine,
};

const MS: Duration = Duration::from_millis(1);
const WATCHDOG: Duration = Duration::from_secs(10);

/// Refresh halfway through the token's life; fast retries.
fn fast_config() -> TokenManagerConfig {
    let mut config = TokenManagerConfig::default();
    config.expiration_refresh_ratio = 0.5;
    config.lower_refresh_bound = Duration::ZERO;
    config.refresh_jitter = 0.0;
    config.token_request_timeout = 200 * MS;
    config.retry = {
        let mut policy = RetryPolicy::default();
        policy.max_attempts = 3;
        policy.initial_delay = 5 * MS;
        policy.max_delay = 20 * MS;
        policy
    };
    config
}

/// Runs `f` on another thread and fails the test if it does not finish in time.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WATCHDOG).expect("finished before the watchdog")
}

#[test]
fn renews_and_every_subscriber_sees_each_token_with_one_request_per_refresh() {
    let provider = ScriptedProvider::always("oid-b", 200 * MS);
    let manager = TokenManager::start(provider.clone(), fast_config()).unwrap();
    let first = manager.token_timeout(WATCHDOG).unwrap();
    assert_eq!(first.username(), "oid-b");

    // Four subscribers read at once, each on its own thread.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let items = manager.subscribe();
            thread::spawn(move || {
                items
                    .take(3)
                    .map(|item| item.unwrap().secret().to_owned())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let seen = within(move || readers.into_iter().map(|r| r.join().unwrap()).collect::<Vec<_>>());
    // Each: the current token first, then two renewals (100 ms apart).
    for secrets in &seen {
        assert_eq!(secrets.len(), 3);
        assert_ne!(secrets[1], secrets[0]);
        assert_ne!(secrets[2], secrets[1]);
    }
    // No token was fetched twice: calls equal tokens issued.
    assert_eq!(provider.calls(), provider.issued());
    assert!(provider.issued() >= 3);
}

#[test]
fn failures_are_reported_after_max_attempts_and_token_does_not_hang() {
    let provider = ScriptedProvider::failing(IdentityError::transient("connection refused"));
    let manager = TokenManager::start(provider.clone(), fast_config()).unwrap();
    let started = Instant::now();
    let err = within(move || manager.token()).unwrap_err();
    assert!(
        matches!(
            err,
            TokenManagerError::RequestFailed {
                attempts: 3,
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(provider.calls(), 3);
}

#[test]
fn a_permanent_error_is_reported_at_once() {
    let provider = ScriptedProvider::failing(IdentityError::permanent("unknown client").with_code("AADSTS700016"));
    let manager = TokenManager::start(provider.clone(), fast_config()).unwrap();
    let err = manager.token_timeout(WATCHDOG).unwrap_err();
    assert!(
        matches!(
            err,
            TokenManagerError::RequestFailed {
                attempts: 1,
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("AADSTS700016"));
}

#[test]
fn recovers_after_failures_and_the_iterator_survives_errors() {
    let failure = Step::Fail(IdentityError::transient("down"));
    let provider = ScriptedProvider::new(
        "oid",
        [failure.clone(), failure.clone(), failure],
        Step::Token(Duration::from_secs(3600)),
    );
    let manager = TokenManager::start(provider.clone(), fast_config()).unwrap();
    let mut items = manager.subscribe();
    let (error, token) = within(move || {
        let error = items.next().unwrap();
        let token = items.next().unwrap();
        (error, token)
    });
    assert!(
        matches!(error, Err(TokenManagerError::RequestFailed { attempts: 3, .. })),
        "{error:?}"
    );
    assert_eq!(token.unwrap().username(), "oid");
    assert_eq!(provider.calls(), 4);
}

#[test]
fn a_hanging_provider_times_out_and_token_timeout_gives_up() {
    let provider = ScriptedProvider::new("oid", [], Step::Hang);
    let manager = TokenManager::start(provider.clone(), fast_config()).unwrap();
    let err = manager.token_timeout(50 * MS).unwrap_err();
    assert!(
        matches!(err, TokenManagerError::WaitTimedOut(d) if d == 50 * MS),
        "{err:?}"
    );
}

#[test]
fn a_builder_takes_a_config_or_a_state_machine_and_the_last_one_given_wins() {
    let bad = {
        let mut config = fast_config();
        config.expiration_refresh_ratio = 0.0;
        config
    };
    let provider = ScriptedProvider::always("oid-sm", Duration::from_secs(3600));
    let builder = TokenManager::builder(provider.clone())
        .config(bad.clone())
        .state_machine(TokenStateMachine::with_seed(fast_config(), 7).unwrap());
    let debug = format!("{builder:?}");
    assert!(debug.starts_with("blocking::TokenManagerBuilder"), "{debug}");
    let manager = builder.start().unwrap();
    assert_eq!(manager.token_timeout(WATCHDOG).unwrap().username(), "oid-sm");

    let refused = TokenManager::builder(provider.clone())
        .state_machine(TokenStateMachine::new(fast_config()).unwrap())
        .config(bad)
        .start()
        .unwrap_err();
    assert_eq!(refused, StartError::InvalidConfig(ConfigError::RefreshRatio(0.0)));

    let defaults = TokenManager::builder(provider).start().unwrap();
    assert_eq!(defaults.token_timeout(WATCHDOG).unwrap().username(), "oid-sm");
}

#[test]
fn a_panicking_provider_becomes_an_error() {
    let provider = ScriptedProvider::new("oid", [Step::Panic], Step::Token(Duration::from_secs(3600)));
    let manager = TokenManager::start(provider.clone(), fast_config()).unwrap();
    let token = manager.token_timeout(WATCHDOG).unwrap();
    assert_eq!(token.username(), "oid");
    assert_eq!(provider.calls(), 2);
}

#[test]
fn dropping_the_last_clone_stops_the_thread() {
    let provider = ScriptedProvider::always("oid", Duration::from_secs(3600));
    let manager = TokenManager::start(provider.clone(), fast_config()).unwrap();
    let clone = manager.clone();
    manager.token_timeout(WATCHDOG).unwrap();
    let items = manager.subscribe();
    drop(manager);
    drop(clone);
    let rest: Vec<_> = within(move || items.collect());
    // Maybe the current token (if the thread had not stopped yet), then Stopped, then the end.
    assert!(rest.len() <= 2, "{rest:?}");
    assert!(matches!(rest.last(), Some(Err(TokenManagerError::Stopped))), "{rest:?}");
}

#[test]
fn stop_is_seen_by_token() {
    let provider = ScriptedProvider::always("oid", Duration::from_secs(3600));
    let manager = TokenManager::start(provider, fast_config()).unwrap();
    manager.token_timeout(WATCHDOG).unwrap();
    manager.stop();
    let m = manager.clone();
    let result = within(move || {
        // Wait for the Stopped event to be published.
        let mut items = m.subscribe();
        items.find(|item| matches!(item, Err(TokenManagerError::Stopped)))
    });
    assert!(result.is_some());
    assert!(matches!(manager.token(), Err(TokenManagerError::Stopped)));
}

#[test]
fn a_provider_that_always_hangs_holds_at_most_four_threads_through_a_thousand_timeouts() {
    let provider = ScriptedProvider::new("oid-hang", [], Step::Hang);
    let config = {
        let mut config = TokenManagerConfig::default();
        config.token_request_timeout = MS;
        config.retry.max_attempts = 1;
        config.retry.initial_delay = MS;
        config.retry.max_delay = MS;
        config.retry.jitter = 0.0;
        config
    };
    let manager = TokenManager::start(provider.clone(), config).unwrap();
    // Each hung request holds its thread for ever, so the requests that reached the
    // provider are the request threads still alive (other tests in this binary run
    // threads of the same name, so /proc cannot tell them apart).
    let failures = within(move || {
        // Each reported failure counts every failure in a row so far (a slow reader
        // skips some, never the newest).
        for item in manager.subscribe() {
            match item {
                Err(TokenManagerError::RequestFailed { error, attempts, .. }) => {
                    // Timed out, or refused while every request thread is held.
                    assert!(
                        matches!(error.origin(), Some(ErrorOrigin::Timeout | ErrorOrigin::ProviderHung)),
                        "{error}"
                    );
                    assert_eq!(error.code(), None, "{error}");
                    if attempts >= 1_000 {
                        return attempts;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("the stream ended")
    });
    assert!(failures >= 1_000);
    assert_eq!(
        provider.calls(),
        entraid_token_manager::blocking::MAX_REQUEST_THREADS as u64,
        "hung requests, each holding a thread"
    );
}
