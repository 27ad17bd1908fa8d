//! Helpers shared by the end-to-end suites: an emulator, providers and clients for it.
// Each suite uses some of these.
#![allow(dead_code)]

use std::time::Duration;

use entraid_azure::AzureIdentityProvider;
use entraid_emulator::{Emulator, EmulatorConfig, Principals};
use entraid_identity::IdentityProvider;
use redis::TlsCertificates;
use redis_entraid::{EntraIdCredentialsProvider, TokenManagerConfig};

pub(crate) async fn emulator(lifetime: Duration, principals: Option<Principals>) -> Emulator {
    Emulator::start(EmulatorConfig {
        token_lifetime: lifetime,
        principals,
        ..EmulatorConfig::default()
    })
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
