//! End to end: redis-entraid's providers, the emulator's token service and its gateway,
//! all on 127.0.0.1. Tokens live a few seconds, so connections must re-authenticate or be
//! cut.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use entraid_azure::{AzureIdentityProvider, ManagedIdentityId};
use entraid_emulator::{Faults, Principals};
use entraid_identity::{IdentityError, IdentityProvider, Token};
use redis::aio::ConnectionManagerConfig;
use redis::{AsyncConnectionConfig, PushKind, TlsCertificates};
use redis_entraid::TokenManagerConfig;

mod support;
use support::{emulator, env, load, secret_provider, started, stat, tls_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_load_on_multiplexed_manager_and_pubsub_without_a_failure_or_a_cut() {
    let emulator = emulator(Duration::from_secs(4), None).await;
    let credentials = started(secret_provider(&emulator), TokenManagerConfig::default());
    credentials.token().await.unwrap();

    let config = AsyncConnectionConfig::new().set_credentials_provider(credentials.clone());
    let multiplexed = tls_client(&emulator, false)
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let manager = tls_client(&emulator, false)
        .get_connection_manager_with_config(
            ConnectionManagerConfig::new().set_credentials_provider(credentials.clone()),
        )
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sub_config = AsyncConnectionConfig::new()
        .set_credentials_provider(credentials.clone())
        .set_push_sender(tx);
    let mut subscriber = tls_client(&emulator, true)
        .get_multiplexed_async_connection_with_config(&sub_config)
        .await
        .unwrap();
    subscriber.subscribe("e2e").await.unwrap();
    let mut publisher = multiplexed.clone();

    const SECONDS: u64 = 20;
    let publishing = tokio::spawn(async move {
        let mut sent = 0u64;
        for i in 0..SECONDS * 10 {
            let receivers: u64 = redis::cmd("PUBLISH")
                .arg("e2e")
                .arg(i)
                .query_async(&mut publisher)
                .await
                .unwrap();
            assert_eq!(receivers, 1);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sent
    });
    let (mux, mgr) = tokio::join!(
        load(multiplexed, 16, Duration::from_secs(SECONDS)),
        load(manager, 16, Duration::from_secs(SECONDS))
    );
    let sent = publishing.await.unwrap();
    let mut received = 0;
    while received < sent {
        let push = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if push.kind == PushKind::Message {
            received += 1;
        }
    }
    eprintln!(
        "e2e secret: multiplexed {} ok / {} failed, manager {} ok / {} failed, pub/sub {received}/{sent}, stats {}",
        mux.0,
        mux.1,
        mgr.0,
        mgr.1,
        emulator.stats().to_json()
    );
    assert_eq!(mux.1, 0, "{:?}", mux.2);
    assert_eq!(mgr.1, 0, "{:?}", mgr.2);
    assert_eq!(received, sent);
    assert_eq!(stat(&emulator, "cut_connections"), 0, "no connection was cut");
    assert!(stat(&emulator, "tokens_issued") >= 6, "4 s tokens over 20 s");
    assert!(
        stat(&emulator, "reauthentications") >= 3 * 6,
        "each connection re-authenticated at each rotation"
    );
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_never_reauthenticated_is_cut_at_expiry() {
    let emulator = emulator(Duration::from_secs(2), None).await;
    let token = secret_provider(&emulator).request_token().await.unwrap();
    // Plain credentials: authenticated once, never again.
    let info = format!(
        "rediss://{}:{}@127.0.0.1:{}",
        token.username(),
        token.secret(),
        emulator.redis_port()
    );
    let client = redis::Client::build_with_tls(
        info,
        TlsCertificates {
            client_tls: None,
            root_cert: Some(emulator.ca_pem().as_bytes().to_vec()),
        },
    )
    .unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut connection).await.unwrap();
    assert_eq!(pong, "PONG");
    // The token lives at most 3 s (2 s, its `exp` rounded up to the next second).
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let after: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut connection).await;
    assert!(
        after.is_err(),
        "the gateway closed the connection at the token's expiry"
    );
    assert_eq!(stat(&emulator, "cut_connections"), 1);
    // And the expired token is refused for a new connection.
    let retry = client.get_multiplexed_async_connection().await;
    assert!(retry.is_err());
    assert!(stat(&emulator, "auth_failures") >= 1);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_service_outage_inside_the_token_life_changes_nothing() {
    // 10 s tokens refresh at 7 s. The outage runs from 6 s to 8.5 s: past the refresh
    // instant, before the 10 s expiry. Retries every ≤ 0.5 s find it back.
    let emulator = emulator(Duration::from_secs(10), None).await;
    let config = {
        let mut config = TokenManagerConfig::default();
        config.retry.initial_delay = Duration::from_millis(100);
        config.retry.max_delay = Duration::from_millis(500);
        config
    };
    let credentials = started(secret_provider(&emulator), config);
    credentials.token().await.unwrap();
    let connection = tls_client(&emulator, false)
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_credentials_provider(credentials.clone()),
        )
        .await
        .unwrap();
    let running = tokio::spawn(load(connection, 8, Duration::from_secs(13)));
    tokio::time::sleep(Duration::from_secs(6)).await;
    emulator
        .set_faults(Faults::new().fail_next(100_000).status(503))
        .unwrap();
    let issued_before = stat(&emulator, "tokens_issued");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        stat(&emulator, "tokens_issued"),
        issued_before,
        "no token during the outage"
    );
    assert!(
        stat(&emulator, "token_requests_refused") >= 2,
        "the refresh was attempted and refused"
    );
    emulator.set_faults(Faults::reset()).unwrap();
    let (ok, failed, errors) = running.await.unwrap();
    eprintln!(
        "e2e outage: {ok} ok, {failed} failed, stats {}",
        emulator.stats().to_json()
    );
    assert_eq!(failed, 0, "{errors:?}");
    assert!(
        stat(&emulator, "tokens_issued") > issued_before,
        "refresh resumed after the outage"
    );
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_a_permanent_error_naming_aadsts7000215() {
    let emulator = emulator(Duration::from_secs(60), None).await;
    let provider = AzureIdentityProvider::client_secret(
        &env(&emulator, "AZURE_TENANT_ID"),
        &env(&emulator, "AZURE_CLIENT_ID"),
        "not-the-secret",
    )
    .unwrap()
    .with_authority_host(emulator.authority_host())
    .unwrap()
    .with_root_certificate_pem(emulator.ca_pem())
    .unwrap();
    let error = provider.request_token().await.unwrap_err();
    assert!(!error.is_transient());
    assert_eq!(error.code(), Some("AADSTS7000215"));
    assert!(error.to_string().contains("Value"), "{error}");
    assert!(!error.to_string().contains("not-the-secret"));
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_through_the_emulator() {
    let certificate = entraid_test_support::test_certificate("e2e-client", "");
    let principals = Principals::from_json(
        &serde_json::json!({
            "tenant_id": "e2e-tenant",
            "service_principals": [{"client_id": "cert-app", "object_id": "cert-oid", "certificate_pem": certificate.certificate_pem}],
        })
        .to_string(),
    )
    .unwrap();
    let emulator = emulator(Duration::from_secs(60), Some(principals)).await;
    let provider = AzureIdentityProvider::client_certificate("e2e-tenant", "cert-app", certificate.pkcs12, None)
        .unwrap()
        .with_authority_host(emulator.authority_host())
        .unwrap()
        .with_root_certificate_pem(emulator.ca_pem())
        .unwrap();
    let credentials = started(provider, TokenManagerConfig::default());
    let mut connection = tls_client(&emulator, false)
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_credentials_provider(credentials.clone()),
        )
        .await
        .unwrap();
    let who: String = redis::cmd("PING").query_async(&mut connection).await.unwrap();
    assert_eq!(who, "PONG");
    assert_eq!(credentials.current_token().unwrap().username(), "cert-oid");
    emulator.stop().await;
}

/// A plug-in provider with no Azure code: it posts the client-credentials form itself.
struct HandRolled {
    http: reqwest::Client,
    endpoint: String,
    client_id: String,
    secret: String,
    calls: AtomicU64,
}

#[async_trait::async_trait]
impl IdentityProvider for HandRolled {
    async fn request_token(&self) -> Result<Token, IdentityError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.secret.as_str()),
            ("scope", "https://redis.azure.com/.default"),
        ];
        let response = self
            .http
            .post(&self.endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| IdentityError::transient(e.to_string()))?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| IdentityError::transient(e.to_string()))?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| IdentityError::transient(e.to_string()))?;
        let jwt = body["access_token"]
            .as_str()
            .ok_or_else(|| IdentityError::permanent(body.to_string()))?;
        let received = SystemTime::now();
        let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(0));
        let parsed = Token::from_jwt(jwt, received).map_err(|e| IdentityError::permanent(e.to_string()))?;
        Ok(Token::new(jwt, parsed.username(), received + lifetime, received))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_provider_through_the_emulator() {
    let emulator = emulator(Duration::from_secs(3), None).await;
    let provider = Arc::new(HandRolled {
        http: reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(emulator.ca_pem().as_bytes()).unwrap())
            .build()
            .unwrap(),
        endpoint: format!(
            "{}/{}/oauth2/v2.0/token",
            emulator.authority_host(),
            env(&emulator, "AZURE_TENANT_ID")
        ),
        client_id: env(&emulator, "AZURE_CLIENT_ID"),
        secret: env(&emulator, "AZURE_CLIENT_SECRET"),
        calls: AtomicU64::new(0),
    });
    let credentials = started(provider.clone(), TokenManagerConfig::default());
    let connection = tls_client(&emulator, false)
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_credentials_provider(credentials),
        )
        .await
        .unwrap();
    let (ok, failed, errors) = load(connection, 4, Duration::from_secs(7)).await;
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok > 100);
    assert!(provider.calls.load(Ordering::SeqCst) >= 3, "renewed across 3 s tokens");
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_app_service_shape_through_the_emulator() {
    // azure_identity reads IDENTITY_ENDPOINT from the process environment: run the client
    // half in a child process given the emulator's variables.
    if let Ok(ca_file) = std::env::var("E2E_CHILD_CA_FILE") {
        let ca = std::fs::read_to_string(ca_file).unwrap();
        let provider = AzureIdentityProvider::managed_identity(ManagedIdentityId::SystemAssigned)
            .unwrap()
            .with_root_certificate_pem(&ca)
            .unwrap();
        let credentials = started(provider, TokenManagerConfig::default());
        let port = std::env::var("REDIS_PORT").unwrap();
        let client = redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{port}"),
            TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.into_bytes()),
            },
        )
        .unwrap();
        let config = AsyncConnectionConfig::new().set_credentials_provider(credentials.clone());
        let connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let (ok, failed, errors) = load(connection, 4, Duration::from_secs(5)).await;
        assert_eq!(failed, 0, "{errors:?}");
        assert!(ok > 10);
        assert_eq!(
            credentials.current_token().unwrap().username(),
            std::env::var("ENTRAID_EMULATOR_MI_OBJECT_ID").unwrap()
        );
        return;
    }
    let emulator = emulator(Duration::from_secs(3), None).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args([
        "managed_identity_app_service_shape_through_the_emulator",
        "--exact",
        "--nocapture",
    ]);
    for (key, value) in emulator.env() {
        child.env(key, value);
    }
    child.env("E2E_CHILD_CA_FILE", env(&emulator, "ENTRAID_EMULATOR_CA_FILE"));
    let status = tokio::task::spawn_blocking(move || child.status().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the child failed");
    assert!(
        stat(&emulator, "reauthentications") >= 1,
        "re-authenticated across 3 s tokens"
    );
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    emulator.stop().await;
}
