//! The recommended async connection: `redis_entraid::aio::ConnectionManager`, which
//! owns re-authentication (retries a failed `AUTH`, replaces a connection before its
//! token expires, recovers by itself after an identity outage).
//!
//! ```text
//! REDIS_HOST=… cargo run --example supervised
//! # Traffic for 30 s (8 tasks), then what happened to the connection:
//! REDIS_HOST=… cargo run --example supervised -- --duration 30
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use redis::AsyncCommands;
use redis_entraid::EntraIdCredentialsProvider;
use redis_entraid::aio::ConnectionManager;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let duration = common::duration_arg()?;
    // AZURE_* variables choose the identity: secret, certificate, workload or managed identity.
    let provider = EntraIdCredentialsProvider::new_from_env()?;
    let mut connection = ConnectionManager::new(common::redis_client()?, provider).await?;

    let () = connection.set("entraid:supervised", "ok").await?;
    let value: String = connection.get("entraid:supervised").await?;
    println!("GET entraid:supervised = {value:?}");

    let Some(duration) = duration else { return Ok(()) };
    let deadline = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let mut connection = connection.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while tokio::time::Instant::now() < deadline {
                    let result: redis::RedisResult<()> = connection.set(format!("entraid:supervised:{task}"), ok).await;
                    match result {
                        Ok(()) => ok += 1,
                        Err(error) => {
                            failed += 1;
                            eprintln!("command failed: {error}");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await?;
        ok += o;
        failed += f;
    }
    println!(
        "supervised: {} s, {ok} commands, {failed} failed; {:?}",
        duration.as_secs(),
        connection.stats()
    );
    if failed > 0 {
        return Err(format!("{failed} commands failed").into());
    }
    Ok(())
}
