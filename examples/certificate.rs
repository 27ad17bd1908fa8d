//! A service principal with a certificate (PKCS12), as on the redis.io page.
//!
//! ```text
//! AZURE_TENANT_ID=… AZURE_CLIENT_ID=… AZURE_CLIENT_CERTIFICATE_PATH=cert.pfx \
//!   [AZURE_CLIENT_CERTIFICATE_PASSWORD=…] REDIS_HOST=… cargo run --example certificate
//! ```

#[path = "common/mod.rs"]
mod common;

use base64::Engine as _;
use redis::{AsyncCommands, AsyncConnectionConfig};
use redis_entraid::{ClientCertificate, EntraIdCredentialsProvider, RetryConfig};

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = env("AZURE_CLIENT_CERTIFICATE_PATH")?;
    let pkcs12 = std::fs::read(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut provider = EntraIdCredentialsProvider::new_client_certificate(
        env("AZURE_TENANT_ID")?,
        env("AZURE_CLIENT_ID")?,
        ClientCertificate {
            base64_pkcs12: base64::engine::general_purpose::STANDARD.encode(pkcs12),
            password: std::env::var("AZURE_CLIENT_CERTIFICATE_PASSWORD").ok(),
        },
    )?;
    provider.start(RetryConfig::default());

    let client = common::redis_client()?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(common::CONNECTION_TIMEOUT))
        .set_credentials_provider(provider);
    let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
    let pong: String = redis::cmd("PING").query_async(&mut connection).await?;
    let () = connection.set("entraid:certificate", "ok").await?;
    println!("PING -> {pong}; signed in with the certificate");
    Ok(())
}
