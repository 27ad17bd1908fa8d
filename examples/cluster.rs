//! Azure Managed Redis with the OSS cluster policy: every shard's connection is
//! authenticated and re-authenticated on its own, from one shared provider.
//!
//! ```text
//! REDIS_HOST=… cargo run --example cluster
//! ```

#[path = "common/mod.rs"]
mod common;

use redis::AsyncCommands;
use redis::cluster::ClusterClientBuilder;
use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut provider = EntraIdCredentialsProvider::new_from_env()?;
    provider.start(RetryConfig::default());
    provider.token().await?;

    let client = ClusterClientBuilder::new(vec![common::redis_url()?])
        .connection_timeout(common::CONNECTION_TIMEOUT)
        .set_credentials_provider(provider)
        .build()?;
    let mut connection = client.get_async_connection().await?;
    for key in ["a", "b", "c", "d"] {
        let () = connection.set(format!("entraid:cluster:{key}"), key).await?;
    }
    let values: Vec<String> = connection.mget(&["entraid:cluster:a", "entraid:cluster:d"]).await?;
    println!("keys on different shards read back: {values:?}");
    Ok(())
}
