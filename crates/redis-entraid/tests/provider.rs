//! The provider's lifecycle: start inside or outside a runtime, lazy start, shared
//! manager, invalid configuration, no secrets in Debug.

use std::time::Duration;

use entraid_test_support::{ScriptedProvider, Step};
use entraid_token_manager::TokenManagerError;
use redis::auth::StreamingCredentialsProvider;
use redis_entraid::{EntraIdCredentialsProvider, RetryConfig, TokenManagerConfig};
use tokio_stream::StreamExt;

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn start_outside_a_runtime_fetches_at_once_on_its_own_thread() {
    let scripted = ScriptedProvider::new("oid-outside", [], Step::Token(HOUR));
    let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone());
    provider.start(RetryConfig::default());
    // Later, from a runtime of the application's, connections subscribe.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = runtime.block_on(async {
        let mut stream = provider.subscribe();
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    });
    assert_eq!(first.username(), "oid-outside");
    assert_eq!(scripted.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_provider_never_started_starts_with_defaults_on_first_use() {
    let scripted = ScriptedProvider::new("oid-lazy", [], Step::Token(HOUR));
    let provider = EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone());
    assert!(provider.current_token().is_none());
    assert_eq!(scripted.calls(), 0, "nothing happens before first use");
    let mut stream = provider.subscribe();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.username(), "oid-lazy");
    assert_eq!(scripted.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_manager() {
    let scripted = ScriptedProvider::new("oid", [], Step::Token(HOUR));
    let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone());
    provider.start(RetryConfig::default());
    let clones: Vec<_> = (0..50).map(|_| provider.clone()).collect();
    for clone in &clones {
        let mut stream = clone.subscribe();
        stream.next().await.unwrap().unwrap();
    }
    assert_eq!(scripted.calls(), 1);
    // Starting a clone again changes nothing.
    let mut again = clones[0].clone();
    again.start(RetryConfig::default().set_number_of_retries(1));
    assert_eq!(scripted.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_configuration_is_reported_not_clamped() {
    let scripted = ScriptedProvider::new("oid", [], Step::Token(HOUR));
    let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone());
    let bad = {
        let mut config = TokenManagerConfig::default();
        config.expiration_refresh_ratio = 1.5;
        config
    };
    let error = provider.try_start_with_config(bad.clone()).unwrap_err();
    assert!(error.to_string().contains("expiration_refresh_ratio"));
    // Connections then fail with the reason.
    let mut stream = provider.subscribe();
    let item = stream.next().await.unwrap().unwrap_err();
    assert_eq!(item.kind(), redis::ErrorKind::InvalidClientConfig);
    assert!(item.to_string().contains("expiration_refresh_ratio"), "{item}");
    assert!(matches!(provider.token().await, Err(TokenManagerError::NotStarted(_))));
    assert_eq!(scripted.calls(), 0);
    // The exponent base of the page's RetryConfig is validated too.
    let mut other = EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone());
    other.start(RetryConfig::default().set_exponent_base(0.5));
    assert!(other.token().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn debug_never_shows_a_secret() {
    let scripted = ScriptedProvider::new("oid-debug", [], Step::Token(HOUR));
    let provider = EntraIdCredentialsProvider::new_with_identity_provider(scripted);
    let token = provider.token().await.unwrap();
    let shown = format!("{provider:?}");
    assert!(shown.contains("oid-debug"), "{shown}");
    assert!(!shown.contains(token.secret()), "{shown}");
    let mut stream = provider.subscribe();
    let auth = stream.next().await.unwrap().unwrap();
    assert!(!format!("{auth:?}").contains(token.secret()));
}

#[cfg(feature = "azure")]
#[test]
fn azure_constructors_refuse_bad_input_with_redis_errors() {
    let error =
        EntraIdCredentialsProvider::new_client_secret(String::new(), "client".into(), "secret".into()).unwrap_err();
    assert_eq!(error.kind(), redis::ErrorKind::InvalidClientConfig);
    assert!(error.to_string().contains("tenant id"), "{error}");
    let error = EntraIdCredentialsProvider::new_client_certificate(
        "tenant".into(),
        "client".into(),
        redis_entraid::ClientCertificate {
            base64_pkcs12: "not base64!".into(),
            password: Some("pfx-password".into()),
        },
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("base64") && !text.contains("pfx-password"), "{text}");
    let error = EntraIdCredentialsProvider::new_client_secret_with_scopes(
        "tenant".into(),
        "client".into(),
        "secret".into(),
        vec![" ".into()],
        None,
    )
    .unwrap_err();
    assert!(error.to_string().contains("blank"), "{error}");
    let certificate = redis_entraid::ClientCertificate {
        base64_pkcs12: "AAAA".into(),
        password: Some("hidden".into()),
    };
    assert!(!format!("{certificate:?}").contains("hidden"));
}

/// A provider started inside a runtime that then shuts down (a temporary `block_on`, a
/// test's runtime) keeps working from the application's next runtime.
#[test]
fn a_provider_whose_runtime_shut_down_restarts_on_a_runtime_of_its_own() {
    let scripted = ScriptedProvider::new("oid-rt", [], Step::Token(Duration::from_millis(600)));
    let provider =
        EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone()).with_reauth_spread(Duration::ZERO);
    let temporary = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    temporary.block_on(async {
        let mut started = provider.clone();
        started.start_with_config(fast_config());
        provider.token().await.unwrap();
    });
    drop(temporary);

    let application = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    application.block_on(async {
        let calls_before = scripted.calls();
        let first = provider.token().await.expect("a token after the runtime shut down");
        let mut stream = provider.subscribe();
        let mut secrets = vec![first.secret().to_owned()];
        // Renewals keep coming: the restarted manager really refreshes.
        while secrets.len() < 3 {
            let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap()
                .unwrap();
            let auth = item.unwrap();
            if !secrets.iter().any(|s| s == auth.password()) {
                secrets.push(auth.password().to_owned());
            }
        }
        assert!(scripted.calls() > calls_before + 1);
    });
}

/// Refresh at half a token's life, fast retries: for the real-time tests here.
fn fast_config() -> TokenManagerConfig {
    let mut config = TokenManagerConfig::default();
    config.expiration_refresh_ratio = 0.5;
    config.lower_refresh_bound = Duration::ZERO;
    config
}

#[tokio::test(start_paused = true)]
async fn stop_then_start_starts_again() {
    let scripted = ScriptedProvider::new("oid-restart", [], Step::Token(HOUR));
    let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone());
    provider.start(RetryConfig::default());
    provider.token().await.unwrap();
    provider.stop();
    tokio::task::yield_now().await;
    assert!(matches!(provider.token().await, Err(TokenManagerError::Stopped)));
    provider.start(RetryConfig::default());
    let token = provider.token().await.expect("started again");
    assert_eq!(token.username(), "oid-restart");
    assert_eq!(scripted.calls(), 2, "the new manager fetched its own token");
}

/// One failed refresh reaches the application once (the token manager's log line), not
/// once per connection: a connection that has credentials gets no error item, so the
/// redis crate does not log one per connection.
#[tokio::test(start_paused = true)]
async fn a_failed_refresh_is_no_item_on_a_connection_that_has_credentials() {
    let scripted = ScriptedProvider::new(
        "oid-quiet",
        [Step::Token(Duration::from_secs(600))],
        Step::Fail(entraid_identity::IdentityError::permanent("refused")),
    );
    let mut provider =
        EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone()).with_reauth_spread(Duration::ZERO);
    provider.start(RetryConfig::default());
    let mut streams: Vec<_> = (0..100).map(|_| provider.subscribe()).collect();
    for stream in &mut streams {
        stream.next().await.unwrap().unwrap();
    }
    // Refresh at 7 minutes fails (reported at once: permanent); the next attempt, 30 s
    // later, succeeds.
    tokio::time::sleep(Duration::from_secs(7 * 60 + 5)).await;
    assert!(scripted.calls() >= 2, "the refresh was tried and failed");
    scripted.set_then(Step::Token(Duration::from_secs(600)));
    for stream in &mut streams {
        let item = tokio::time::timeout(Duration::from_secs(120), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            item.is_ok(),
            "the first item after the failure is the renewal: {item:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn far_future_tokens_never_panic_in_a_connection_stream() {
    let scripted = ScriptedProvider::new("oid-far", [], Step::Token(Duration::from_secs(u64::MAX / 4)));
    let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone());
    provider.start(RetryConfig::default());
    let mut stream = provider.subscribe();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.username(), "oid-far");
    // Nothing is due for years: the stream just waits, without overflowing.
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), stream.next())
            .await
            .is_err()
    );
}
