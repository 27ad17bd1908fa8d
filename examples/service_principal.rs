//! A service principal with a client secret, as on the redis.io page.
//!
//! ```text
//! AZURE_TENANT_ID=… AZURE_CLIENT_ID=… AZURE_CLIENT_SECRET=… REDIS_HOST=… cargo run --example service_principal
//! ```

#[path = "common/mod.rs"]
mod common;

use redis::{AsyncCommands, AsyncConnectionConfig};
use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut provider = EntraIdCredentialsProvider::new_client_secret(
        env("AZURE_TENANT_ID")?,
        env("AZURE_CLIENT_ID")?,
        env("AZURE_CLIENT_SECRET")?,
    )?;
    provider.start(RetryConfig::default());

    let client = common::redis_client()?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(common::CONNECTION_TIMEOUT))
        .set_credentials_provider(provider);
    let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
    let count: i64 = connection.incr("entraid:service_principal:runs", 1).await?;
    println!("this example ran {count} time(s) against this cache");
    Ok(())
}
