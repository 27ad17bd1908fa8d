//! Helpers shared by the end-to-end suites: an emulator, providers and clients for it.
// Each suite uses some of these.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use entraid_azure::AzureIdentityProvider;
use entraid_emulator::{Emulator, EmulatorConfig, Faults, Principals};
use entraid_identity::IdentityProvider;
use redis::{AsyncConnectionConfig, RedisResult, TlsCertificates};
use redis_entraid::{EntraIdCredentialsProvider, TokenManagerConfig};

pub(crate) async fn emulator(lifetime: Duration, principals: Option<Principals>) -> Emulator {
    start(EmulatorConfig::new().token_lifetime(lifetime).principals(principals)).await
}

async fn start(config: EmulatorConfig) -> Emulator {
    Emulator::start(config)
        .await
        .expect("the emulator starts (redis-server on PATH)")
}

pub(crate) fn env(emulator: &Emulator, key: &str) -> String {
    emulator
        .env()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap()
}

/// The default service principal, trusting the emulator's CA.
pub(crate) fn secret_provider(emulator: &Emulator) -> AzureIdentityProvider {
    AzureIdentityProvider::client_secret(
        &env(emulator, "AZURE_TENANT_ID"),
        &env(emulator, "AZURE_CLIENT_ID"),
        &env(emulator, "AZURE_CLIENT_SECRET"),
    )
    .unwrap()
    .with_authority_host(emulator.authority_host())
    .unwrap()
    .with_root_certificate_pem(emulator.ca_pem())
    .unwrap()
}

pub(crate) fn tls_client(emulator: &Emulator, resp3: bool) -> redis::Client {
    let suffix = if resp3 { "/?protocol=resp3" } else { "" };
    redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{}{suffix}", emulator.redis_port()),
        TlsCertificates {
            client_tls: None,
            root_cert: Some(emulator.ca_pem().as_bytes().to_vec()),
        },
    )
    .unwrap()
}

pub(crate) fn stat(emulator: &Emulator, name: &str) -> u64 {
    emulator.stats().to_json()[name].as_u64().unwrap()
}

pub(crate) fn started(provider: impl IdentityProvider, config: TokenManagerConfig) -> EntraIdCredentialsProvider {
    let mut credentials = EntraIdCredentialsProvider::new_with_identity_provider(provider);
    credentials.try_start_with_config(config).unwrap();
    credentials
}

/// SET/GET from `tasks` tasks for `duration`: (ok, failed, first errors).
pub(crate) async fn load<C>(connection: C, tasks: usize, duration: Duration) -> (u64, u64, Vec<String>)
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    let report = entraid_test_support::set_get_load(connection, tasks, duration).await;
    (report.ok, report.failed, report.first_errors)
}

/// A client whose password is `token`: authenticated once, at connect, and never again.
pub(crate) fn token_client(emulator: &Emulator, token: &entraid_identity::Token, resp3: bool) -> redis::Client {
    let suffix = if resp3 { "/?protocol=resp3" } else { "" };
    redis::Client::build_with_tls(
        format!(
            "rediss://{}:{}@127.0.0.1:{}{suffix}",
            token.username(),
            token.secret(),
            emulator.redis_port()
        ),
        TlsCertificates {
            client_tls: None,
            root_cert: Some(emulator.ca_pem().as_bytes().to_vec()),
        },
    )
    .unwrap()
}

/// Retries every 200 ms at most, so a test's token manager finds the service back fast.
pub(crate) fn quick_retries() -> TokenManagerConfig {
    let mut config = TokenManagerConfig::default();
    config.token_request_timeout = Duration::from_secs(1);
    config.retry.initial_delay = Duration::from_millis(100);
    config.retry.max_delay = Duration::from_millis(200);
    config
}

/// Stops the token service until every token has expired for `past_expiry`, then
/// brings it back; returns once a new token is out.
pub(crate) async fn outage_longer_than_a_token(emulator: &Emulator, provider: &EntraIdCredentialsProvider) {
    let token = provider.token().await.unwrap();
    emulator.set_faults(Faults::new().stop_answering(true)).unwrap();
    let expired = token.expires_at().duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(expired + Duration::from_secs(4)).await;
    assert!(
        provider.current_token().is_none(),
        "the token expired during the outage"
    );
}

pub(crate) async fn back_after_outage(emulator: &Emulator, provider: &EntraIdCredentialsProvider) {
    emulator.set_faults(Faults::reset()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while provider.current_token().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a token within 10 s of the service coming back");
}

/// An emulator whose redis-server lets a test stall it with `DEBUG SLEEP`.
pub(crate) async fn stallable_emulator(lifetime: Duration) -> Emulator {
    start(
        EmulatorConfig::new()
            .token_lifetime(lifetime)
            .redis_args(["--enable-debug-command", "yes"]),
    )
    .await
}

/// The defaults without the refresh jitter, for tests that time something to the renewal
/// instant ([`next_renewal`]).
pub(crate) fn exact_renewals() -> TokenManagerConfig {
    let mut config = TokenManagerConfig::default();
    config.refresh_jitter = 0.0;
    config
}

/// When the token manager will renew the provider's current token (70 % of its life; the
/// provider must run with [`exact_renewals`]).
pub(crate) async fn next_renewal(provider: &EntraIdCredentialsProvider) -> tokio::time::Instant {
    let token = provider.token().await.unwrap();
    let at = token.received_at() + token.lifetime().mul_f64(0.7);
    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::Instant::now() + wait
}

/// Stalls the upstream redis-server for `seconds` (`DEBUG SLEEP` on a connection of its
/// own, so the server, not a client, is what stalls).
pub(crate) async fn stall_server(emulator: &Emulator, seconds: f64) {
    let token = entraid_identity::IdentityProvider::request_token(&secret_provider(emulator))
        .await
        .unwrap();
    let client = token_client(emulator, &token, false);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new().set_response_timeout(None))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _: RedisResult<()> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(seconds)
            .query_async(&mut connection)
            .await;
    });
}

/// Runs `test`, failing fast instead of hanging CI if it deadlocks.
pub(crate) async fn watchdog<F: std::future::Future<Output = ()>>(limit: Duration, test: F) {
    if tokio::time::timeout(limit, test).await.is_err() {
        panic!("the test did not finish within {limit:?}: a deadlock?");
    }
}
