//! A `ConnectionManager`: reconnects by itself, each time with fresh credentials.
//!
//! ```text
//! REDIS_HOST=… cargo run --example connection_manager
//! ```

#[path = "common/mod.rs"]
mod common;

use redis::AsyncCommands;
use redis::aio::ConnectionManagerConfig;
use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut provider = EntraIdCredentialsProvider::new_from_env()?;
    provider.start(RetryConfig::default());
    provider.token().await?;

    let client = common::redis_client()?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(common::CONNECTION_TIMEOUT))
        .set_credentials_provider(provider);
    let mut manager = client.get_connection_manager_with_config(config).await?;
    let () = manager.set("entraid:connection_manager", "ok").await?;
    let value: String = manager.get("entraid:connection_manager").await?;
    println!("GET entraid:connection_manager = {value:?}");
    Ok(())
}
