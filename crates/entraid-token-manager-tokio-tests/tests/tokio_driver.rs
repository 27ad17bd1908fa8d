//! The tokio driver under paused time: fan-out, one request per refresh, errors, stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use entraid_identity::IdentityError;
use entraid_test_support::{ScriptedProvider, Step};
use entraid_token_manager::{
    ConfigError, StartError, TokenManager, TokenManagerBuilder, TokenManagerConfig, TokenManagerError,
    TokenStateMachine, TokenStream,
};
use tokio_stream::StreamExt;

const SEC: Duration = Duration::from_secs(1);

fn config() -> TokenManagerConfig {
    TokenManagerConfig::default()
}

/// Lets paused time run forward by `by`, running every task that becomes ready.
async fn run_for(by: Duration) {
    tokio::time::sleep(by).await;
}

#[test]
fn handles_are_clone_send_sync_and_streams_unpin_send_static() {
    fn manager<T: Clone + Send + Sync + 'static>() {}
    fn stream<T: Unpin + Send + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    manager::<TokenManager>();
    stream::<TokenStream>();
    error::<TokenManagerError>();
    error::<ConfigError>();
    error::<StartError>();
}

#[test]
fn start_outside_a_runtime_is_a_typed_error() {
    let err = TokenManager::start(ScriptedProvider::always("oid", 60 * SEC), config()).unwrap_err();
    assert_eq!(err, StartError::NoTokioRuntime);
    let text = err.to_string();
    assert!(
        text.contains(".runtime(handle)") && text.contains("start_on_own_runtime"),
        "names the fixes: {text}"
    );
}

#[test]
fn a_builder_with_a_runtime_handle_works_outside_the_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let provider = ScriptedProvider::always("oid-h", 3600 * SEC);
    let manager = TokenManager::builder(provider.clone())
        .config(config())
        .runtime(runtime.handle().clone())
        .start()
        .unwrap();
    let token = runtime.block_on(manager.token()).unwrap();
    assert_eq!(token.username(), "oid-h");
    assert_eq!(provider.calls(), 1);
}

#[test]
fn start_on_own_runtime_runs_without_a_caller_runtime_and_its_thread_ends_on_stop() {
    let provider = ScriptedProvider::always("oid-own", 3600 * SEC);
    let manager = TokenManager::builder(provider.clone())
        .config(config())
        .start_on_own_runtime()
        .unwrap();
    assert_eq!(manager.blocking_token().unwrap().username(), "oid-own");
    assert!(!manager.lost_its_runtime());
    let threads = || {
        std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .filter_map(Result::ok)
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|name| name.trim() == "entraid-token-m")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(threads(), 1, "one thread of its own (named entraid-token-manager)");
    manager.stop();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while threads() > 0 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(threads(), 0, "the thread ends with the manager");
    let bad = {
        let mut config = TokenManagerConfig::default();
        config.expiration_refresh_ratio = 2.0;
        config
    };
    let refused = TokenManager::builder(provider)
        .config(bad)
        .start_on_own_runtime()
        .unwrap_err();
    assert_eq!(refused, StartError::InvalidConfig(ConfigError::RefreshRatio(2.0)));
}

#[tokio::test(start_paused = true)]
async fn a_builder_takes_a_config_or_a_state_machine_and_the_last_one_given_wins() {
    let bad = {
        let mut config = TokenManagerConfig::default();
        config.expiration_refresh_ratio = 0.0;
        config
    };
    // Refreshed at exactly half their life: the state machine's own configuration.
    let halfway = {
        let mut config = TokenManagerConfig::default();
        config.expiration_refresh_ratio = 0.5;
        config.lower_refresh_bound = Duration::ZERO;
        config.refresh_jitter = 0.0;
        config
    };
    let provider = ScriptedProvider::always("oid-sm", 100 * SEC);
    let builder = TokenManager::builder(provider.clone())
        .config(bad.clone())
        .state_machine(TokenStateMachine::with_seed(halfway, 7).unwrap());
    let debug = format!("{builder:?}");
    assert!(debug.starts_with("TokenManagerBuilder"), "{debug}");
    let manager = builder.start().unwrap();
    manager.token().await.unwrap();
    run_for(49 * SEC).await;
    assert_eq!(provider.calls(), 1);
    run_for(2 * SEC).await;
    assert_eq!(provider.calls(), 2, "refreshed at 50 s, as the given machine says");

    let refused = TokenManager::builder(provider)
        .state_machine(TokenStateMachine::new(config()).unwrap())
        .config(bad)
        .start()
        .unwrap_err();
    assert_eq!(refused, StartError::InvalidConfig(ConfigError::RefreshRatio(0.0)));

    // Neither: the default configuration (60 s tokens are refreshed by 42 s).
    let provider = ScriptedProvider::always("oid-default", 60 * SEC);
    let builder: TokenManagerBuilder<_> = TokenManager::builder(provider.clone());
    let manager = builder.start().unwrap();
    assert_eq!(manager.token().await.unwrap().username(), "oid-default");
    run_for(43 * SEC).await;
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalid_config_is_refused() {
    let bad = {
        let mut config = TokenManagerConfig::default();
        config.expiration_refresh_ratio = 0.0;
        config
    };
    let err = TokenManager::start(ScriptedProvider::always("oid", SEC), bad).unwrap_err();
    assert_eq!(err, StartError::InvalidConfig(ConfigError::RefreshRatio(0.0)));
}

#[tokio::test(start_paused = true)]
async fn token_waits_for_the_first_token_and_current_follows_renewals() {
    let provider = ScriptedProvider::always("oid-1", 60 * SEC);
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    assert!(manager.current().is_none());
    let first = manager.token().await.unwrap();
    assert_eq!(first.username(), "oid-1");
    assert_eq!(manager.current().as_ref().map(|t| t.secret()), Some(first.secret()));
    // 60 s tokens are refreshed at 42 s.
    run_for(43 * SEC).await;
    let second = manager.current().unwrap();
    assert_ne!(second.secret(), first.secret());
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_subscribers_get_every_renewal_from_one_request_each() {
    const SUBSCRIBERS: usize = 10_000;
    const RENEWALS: usize = 3;
    let provider = ScriptedProvider::always("oid-fan", 60 * SEC);
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    manager.token().await.unwrap();

    let received = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let mut stream = manager.subscribe();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut secrets = Vec::new();
            while secrets.len() < RENEWALS + 1 {
                let token = stream.next().await.unwrap().unwrap();
                received.fetch_add(1, Ordering::Relaxed);
                secrets.push(token.secret().to_owned());
            }
            secrets
        }));
    }
    // Three refreshes, at 42, 84 and 126 s.
    run_for(127 * SEC).await;
    let mut first: Option<Vec<String>> = None;
    for task in tasks {
        let secrets = task.await.unwrap();
        match &first {
            None => first = Some(secrets),
            Some(expected) => assert_eq!(&secrets, expected, "every subscriber sees the same tokens in order"),
        }
    }
    let secrets = first.unwrap();
    let distinct: std::collections::HashSet<_> = secrets.iter().collect();
    assert_eq!(distinct.len(), RENEWALS + 1);
    assert_eq!(received.load(Ordering::Relaxed), SUBSCRIBERS * (RENEWALS + 1));
    assert_eq!(
        provider.calls(),
        (RENEWALS + 1) as u64,
        "one identity request per refresh, whatever the subscriber count"
    );
}

#[tokio::test(start_paused = true)]
async fn subscribe_yields_the_current_token_first_and_errors_do_not_end_the_stream() {
    let provider = ScriptedProvider::always("oid", 60 * SEC);
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let first = manager.token().await.unwrap();
    let mut stream = manager.subscribe();
    assert_eq!(stream.next().await.unwrap().unwrap().secret(), first.secret());

    // The identity provider goes down before the 42 s refresh.
    provider.set_then(Step::Fail(IdentityError::transient("Entra ID unreachable")));
    let item = tokio::time::timeout(60 * SEC, stream.next()).await.unwrap().unwrap();
    match item {
        Err(TokenManagerError::RequestFailed {
            attempts, retryable, ..
        }) => {
            assert_eq!(attempts, 5);
            assert!(retryable);
        }
        other => panic!("expected the reported failure, got {other:?}"),
    }
    // The token expires at 60 s with no replacement.
    let item = tokio::time::timeout(60 * SEC, stream.next()).await.unwrap().unwrap();
    assert!(matches!(
        item,
        Err(TokenManagerError::TokenExpired) | Err(TokenManagerError::RequestFailed { .. })
    ));
    // It comes back: the stream is still alive and gets the new token.
    provider.set_then(Step::Token(60 * SEC));
    let renewed = loop {
        match tokio::time::timeout(60 * SEC, stream.next()).await.unwrap().unwrap() {
            Ok(token) => break token,
            Err(_) => continue,
        }
    };
    assert_ne!(renewed.secret(), first.secret());
    assert_eq!(manager.current().unwrap().secret(), renewed.secret());
}

#[tokio::test(start_paused = true)]
async fn a_new_subscriber_during_a_first_outage_gets_the_error_not_a_hang() {
    let provider = ScriptedProvider::failing(IdentityError::transient("down"));
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let started = tokio::time::Instant::now();
    let err = manager.token().await.unwrap_err();
    assert!(
        matches!(err, TokenManagerError::RequestFailed { attempts: 5, .. }),
        "{err:?}"
    );
    // 0.5 + 1 + 2 + 4 s of backoff (±20 %) before the 5th failure.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs_f64(7.5 * 0.8) && waited <= Duration::from_secs_f64(7.5 * 1.2),
        "{waited:?}"
    );
    assert_eq!(provider.calls(), 5);
    let mut stream = manager.subscribe();
    assert!(matches!(
        stream.next().await,
        Some(Err(TokenManagerError::RequestFailed { .. }))
    ));
    // It keeps trying in the background.
    run_for(120 * SEC).await;
    assert!(provider.calls() >= 8, "{}", provider.calls());
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_fails_token_at_once() {
    let provider =
        ScriptedProvider::failing(IdentityError::permanent("AADSTS7000215: wrong secret").with_code("AADSTS7000215"));
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let started = tokio::time::Instant::now();
    let err = manager.token().await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    match &err {
        TokenManagerError::RequestFailed {
            error,
            attempts: 1,
            retryable: false,
        } => {
            assert_eq!(error.code(), Some("AADSTS7000215"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("AADSTS7000215"));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_request_times_out_and_is_retried() {
    let provider = ScriptedProvider::new("oid", [Step::Hang], Step::Token(3600 * SEC));
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let started = tokio::time::Instant::now();
    let token = manager.token().await.unwrap();
    assert_eq!(token.username(), "oid");
    let waited = started.elapsed();
    // 10 s timeout, then a retry after 0.5 s ± 20 %.
    assert!(
        waited >= Duration::from_millis(10_400) && waited <= Duration::from_millis(10_600),
        "{waited:?}"
    );
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_is_ignored() {
    // The first answer comes after the 10 s timeout; the retry answers at once.
    let provider = ScriptedProvider::new(
        "oid",
        [Step::Delay(15 * SEC, Box::new(Step::Token(3600 * SEC)))],
        Step::Token(3600 * SEC),
    );
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let token = manager.token().await.unwrap();
    run_for(20 * SEC).await;
    assert_eq!(
        manager.current().unwrap().secret(),
        token.secret(),
        "the late token never replaced the current one"
    );
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_provider_becomes_an_error_and_the_manager_survives() {
    let provider = ScriptedProvider::new("oid", [Step::Panic], Step::Token(3600 * SEC));
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let token = manager.token().await.unwrap();
    assert_eq!(token.username(), "oid");
    assert_eq!(provider.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_clone_stops_the_task() {
    let provider = ScriptedProvider::always("oid", 60 * SEC);
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let clone = manager.clone();
    manager.token().await.unwrap();
    let mut stream = manager.subscribe();
    assert!(stream.next().await.unwrap().is_ok());
    drop(manager);
    run_for(43 * SEC).await;
    assert_eq!(provider.calls(), 2, "a clone keeps it running");
    // The stream still holds the renewal from 42 s.
    assert!(stream.next().await.unwrap().is_ok());
    drop(clone);
    assert!(matches!(stream.next().await, Some(Err(TokenManagerError::Stopped))));
    assert!(stream.next().await.is_none(), "the stream ends after Stopped");
    run_for(600 * SEC).await;
    assert_eq!(provider.calls(), 2, "no request after the last clone was dropped");
}

#[tokio::test(start_paused = true)]
async fn stop_stops_every_clone() {
    let provider = ScriptedProvider::always("oid", 60 * SEC);
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let clone = manager.clone();
    manager.token().await.unwrap();
    clone.stop();
    tokio::task::yield_now().await;
    let mut stream = manager.subscribe();
    assert!(matches!(stream.next().await, Some(Err(TokenManagerError::Stopped))));
    assert!(stream.next().await.is_none());
    assert!(matches!(manager.token().await, Err(TokenManagerError::Stopped)));
    assert!(manager.is_stopped());
    run_for(600 * SEC).await;
    assert_eq!(provider.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn debug_output_never_shows_the_secret() {
    let provider = ScriptedProvider::always("oid-dbg", 60 * SEC);
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let token = manager.token().await.unwrap();
    let shown = format!("{manager:?} {:?}", manager.subscribe());
    assert!(shown.contains("oid-dbg"), "{shown}");
    assert!(!shown.contains(token.secret()), "{shown}");
}

#[test]
fn a_manager_whose_runtime_shut_down_says_so_instead_of_ending_quietly() {
    let temporary = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (manager, mut stream) = temporary.block_on(async {
        let manager = TokenManager::start(ScriptedProvider::always("oid", 3600 * SEC), config()).unwrap();
        manager.token().await.unwrap();
        let mut stream = manager.subscribe();
        stream.next().await.unwrap().unwrap();
        (manager, stream)
    });
    assert!(!manager.lost_its_runtime());
    drop(temporary);
    assert!(manager.lost_its_runtime());
    assert!(manager.is_stopped());

    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    other.block_on(async {
        assert!(matches!(manager.token().await, Err(TokenManagerError::RuntimeShutDown)));
        assert!(matches!(
            stream.next().await,
            Some(Err(TokenManagerError::RuntimeShutDown))
        ));
        assert!(stream.next().await.is_none(), "then the stream ends");
        let error = TokenManagerError::RuntimeShutDown.to_string();
        assert!(error.contains("start_on_own_runtime"), "names the fix: {error}");
    });

    // An explicit stop is not a lost runtime.
    other.block_on(async {
        let manager = TokenManager::start(ScriptedProvider::always("oid", 3600 * SEC), config()).unwrap();
        manager.token().await.unwrap();
        manager.stop();
        let mut stream = manager.subscribe();
        while let Some(item) = stream.next().await {
            if let Err(error) = item {
                assert!(matches!(error, TokenManagerError::Stopped), "{error:?}");
            }
        }
        assert!(manager.is_stopped() && !manager.lost_its_runtime());
    });
}

#[tokio::test(start_paused = true)]
async fn status_tells_fine_retrying_and_stopped_apart_without_a_secret() {
    use entraid_token_manager::RefreshOutcome;
    let provider = ScriptedProvider::new(
        "oid-status",
        [Step::Token(600 * SEC)],
        Step::Fail(IdentityError::transient("token endpoint down").with_code("http_503")),
    );
    let manager = TokenManager::start(provider.clone(), config()).unwrap();
    let status = manager.status();
    assert!(status.running && status.username.is_none());

    let token = manager.token().await.unwrap();
    let status = manager.status();
    assert_eq!(status.username.as_deref(), Some("oid-status"));
    assert_eq!(status.expires_at, Some(token.expires_at()));
    assert_eq!(status.received_at, Some(token.received_at()));
    assert!(matches!(status.last_outcome, Some(RefreshOutcome::Renewed { .. })));
    assert_eq!(status.consecutive_failures, 0);
    assert!(status.has_valid_token(std::time::SystemTime::now()));
    // The refresh is due after 70 % of 600 s, less the refresh jitter (10 %).
    let due_in = status.next_attempt_at.unwrap() - status.last_outcome.as_ref().unwrap().at();
    assert!(due_in > 378 * SEC - SEC && due_in <= 420 * SEC, "{due_in:?}");
    let text = format!("{status:?}");
    assert!(!text.contains(token.secret()), "no secret in {text}");

    // The refresh fails twice: retrying, with the error's code.
    run_for(420 * SEC + 2 * SEC).await;
    let status = manager.status();
    assert!(status.consecutive_failures >= 2, "{status:?}");
    assert_eq!(status.successful_requests, 1);
    assert_eq!(status.failed_requests, u64::from(status.consecutive_failures));
    match &status.last_outcome {
        Some(RefreshOutcome::Failed { error, .. }) => assert_eq!(error.code(), Some("http_503")),
        other => panic!("{other:?}"),
    }
    assert!(status.next_attempt_at.is_some());
    assert_eq!(
        status.username.as_deref(),
        Some("oid-status"),
        "the old token is still valid"
    );

    manager.stop();
    tokio::task::yield_now().await;
    assert!(!manager.status().running);
}
