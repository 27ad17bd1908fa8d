//! The demo's load (`cargo xtask demo` runs it against the emulator): 8 tasks of SET on
//! one connection made as the quickstart makes it, a status line each second (the token in
//! use, the gateway's re-authentications and cuts, commands, failures), then a verdict. It
//! exits non-zero if a command failed or a connection was cut.
//!
//! ```text
//! # with the emulator's variables exported (cargo xtask demo does this):
//! cargo run --example demo_load -- --duration 60
//! ```

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use redis::{AsyncCommands, AsyncConnectionConfig};
use redis_entraid::EntraIdCredentialsProvider;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let duration = common::duration_arg()?.unwrap_or(Duration::from_secs(60));
    let mut provider = EntraIdCredentialsProvider::new_from_env()?;
    provider.start(redis_entraid::RetryConfig::default());
    let token = provider.token().await?;
    println!("signed in as object id {}", token.username());
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(common::CONNECTION_TIMEOUT))
        .set_credentials_provider(provider.clone());
    let connection = common::redis_client()?
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    run_for(duration, connection, provider).await
}

/// Traffic for `duration`, a status line a second, a summary, and the verdict.
async fn run_for(
    duration: Duration,
    connection: redis::aio::MultiplexedConnection,
    provider: EntraIdCredentialsProvider,
) -> Result<(), Box<dyn std::error::Error>> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (mut connection, done, failed) = (connection.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while tokio::time::Instant::now() < deadline {
                i += 1;
                let key = format!("entraid:demo:{task}:{}", i % 100);
                let result: redis::RedisResult<()> = connection.set(&key, i).await;
                match result {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("command failed: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        0
                    }
                };
            }
        }));
    }

    let mut tokens_seen = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while tokio::time::Instant::now() < deadline {
        ticker.tick().await;
        let current = provider.current_token();
        if let Some(token) = &current
            && !tokens_seen.contains(&token.received_at())
        {
            tokens_seen.push(token.received_at());
        }
        let expires_in = current
            .as_ref()
            .and_then(|t| t.expires_at().duration_since(SystemTime::now()).ok())
            .map(|d| format!("{:>3} s", d.as_secs()))
            .unwrap_or_else(|| "  none".to_owned());
        let server = emulator_stats().await;
        println!(
            "t={:>3}s  token #{} expires in {expires_in}  re-auths {:>4}  commands {:>9}  failed {}  cut {}",
            started.elapsed().as_secs(),
            tokens_seen.len(),
            server.as_ref().map(|s| s.0.to_string()).unwrap_or_else(|| "n/a".into()),
            done.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            server.as_ref().map(|s| s.1.to_string()).unwrap_or_else(|| "n/a".into()),
        );
    }
    for task in tasks {
        task.await?;
    }
    let server = emulator_stats().await;
    let (reauths, cut) = server.unwrap_or((0, 0));
    let failures = failed.load(Ordering::Relaxed);
    let verdict = if failures == 0 && cut == 0 { "OK" } else { "FAILED" };
    println!(
        "summary: {} s, {} tokens, {reauths} re-authentications, {} commands, {failures} failed, {cut} connections cut: {verdict}",
        duration.as_secs(),
        tokens_seen.len(),
        done.load(Ordering::Relaxed),
    );
    if verdict == "OK" {
        Ok(())
    } else {
        Err("commands failed or connections were cut".into())
    }
}

/// (re-authentications, connections cut) from the emulator's admin endpoint
/// (`ENTRAID_EMULATOR_ADMIN_URL`), if there is one.
async fn emulator_stats() -> Option<(u64, u64)> {
    let url = std::env::var("ENTRAID_EMULATOR_ADMIN_URL").ok()?;
    let stats: serde_json::Value = reqwest::get(format!("{}/stats", url.trim_end_matches('/')))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some((stats["reauthentications"].as_u64()?, stats["cut_connections"].as_u64()?))
}
