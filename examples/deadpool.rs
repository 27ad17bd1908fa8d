//! A deadpool-redis pool whose connections all share one Entra ID provider.
//!
//! ```text
//! REDIS_HOST=… cargo run --example deadpool
//! ```

#[path = "common/mod.rs"]
mod common;

use deadpool_redis::{Manager, Pool};
use redis::{AsyncCommands, AsyncConnectionConfig};
use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut provider = EntraIdCredentialsProvider::new_from_env()?;
    provider.start(RetryConfig::default());
    provider.token().await?;

    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(common::CONNECTION_TIMEOUT))
        .set_credentials_provider(provider);
    let manager = Manager::new_with_config(common::redis_url()?, config)?;
    let pool = Pool::builder(manager).max_size(8).build()?;

    let mut tasks = Vec::new();
    for i in 0..16 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut connection = pool.get().await?;
            connection.set::<_, _, ()>(format!("entraid:deadpool:{i}"), i).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!("16 writes through a pool of {} connections", pool.status().size);
    Ok(())
}
