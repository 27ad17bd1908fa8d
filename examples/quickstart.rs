//! The shortest path: the identity from the environment, one connection, SET and GET.
//!
//! ```text
//! # On Azure with a managed identity: nothing to set but where Redis is.
//! REDIS_HOST=my-cache.westeurope.redis.azure.net cargo run --example quickstart
//! # Elsewhere, a service principal:
//! AZURE_TENANT_ID=… AZURE_CLIENT_ID=… AZURE_CLIENT_SECRET=… REDIS_HOST=… cargo run --example quickstart
//! # Against the local emulator, with traffic and a live status line:
//! cargo xtask demo
//! ```

#[path = "common/mod.rs"]
mod common;

use redis::{AsyncCommands, AsyncConnectionConfig};
use redis_entraid::EntraIdCredentialsProvider;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();

    // AZURE_* variables choose the identity: secret, certificate, workload or managed identity.
    let mut provider = EntraIdCredentialsProvider::new_from_env()?;
    provider.start(redis_entraid::RetryConfig::default());
    let token = provider.token().await?;
    println!("signed in as object id {}", token.username());

    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(common::CONNECTION_TIMEOUT))
        .set_credentials_provider(provider);
    let mut connection = common::redis_client()?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;

    let () = connection.set("entraid:quickstart", "hello from Rust").await?;
    let value: String = connection.get("entraid:quickstart").await?;
    println!("SET then GET entraid:quickstart = {value:?}");
    Ok(())
}
