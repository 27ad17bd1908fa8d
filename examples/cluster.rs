//! Azure Managed Redis with the OSS cluster policy: every shard's connection is
//! authenticated and re-authenticated on its own, from one shared provider.
//!
//! ```text
//! REDIS_HOST=… cargo run --example cluster
//! # Against the local emulator in cluster mode, with traffic on keys of every shard:
//! cargo xtask demo --cluster
//! ```
//!
//! The seed nodes are `REDIS_CLUSTER_NODES` (`host:port,…`, as `entraid-emulator --cluster N`
//! prints it) when set, else `REDIS_HOST:REDIS_PORT`. With `--duration SECONDS` it keeps 8
//! tasks of SET/GET going on keys across all slots, prints a status line every 5 s, and
//! exits non-zero if any command failed.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis::cluster::ClusterClientBuilder;
use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};

/// `rediss://` URLs of the seed nodes.
fn seed_urls() -> Result<Vec<String>, String> {
    match std::env::var("REDIS_CLUSTER_NODES") {
        Ok(nodes) => {
            let tls = !matches!(std::env::var("REDIS_TLS").as_deref(), Ok("0" | "false" | "no"));
            let scheme = if tls { "rediss" } else { "redis" };
            Ok(nodes
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| format!("{scheme}://{n}"))
                .collect())
        }
        Err(_) => Ok(vec![common::redis_url()?]),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let duration = common::duration_arg()?;
    let mut provider = EntraIdCredentialsProvider::new_from_env()?;
    provider.start(RetryConfig::default());
    provider.token().await?;

    let mut builder = ClusterClientBuilder::new(seed_urls()?)
        .connection_timeout(common::CONNECTION_TIMEOUT)
        // A bound per request that is not also each shard connection's timeout: a stall
        // then never costs a shard its re-authentication (see the user guide's Cluster).
        .overall_response_timeout(Some(Duration::from_secs(5)))
        .set_credentials_provider(provider.clone());
    // A local emulator's CA, trusted the standard way (the usual web roots otherwise).
    if let Ok(path) = std::env::var("SSL_CERT_FILE") {
        let root_cert = std::fs::read(&path).map_err(|e| format!("cannot read SSL_CERT_FILE {path}: {e}"))?;
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    let client = builder.build()?;
    let mut connection = client.get_async_connection().await?;
    for key in ["a", "b", "c", "d"] {
        let () = connection.set(format!("entraid:cluster:{key}"), key).await?;
    }
    let values: Vec<String> = connection.mget(&["entraid:cluster:a", "entraid:cluster:d"]).await?;
    println!("keys on different shards read back: {values:?}");

    let Some(duration) = duration else { return Ok(()) };
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (mut connection, ok, failed) = (connection.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while tokio::time::Instant::now() < deadline {
                    i += 1;
                    // 8 × 512 keys: every shard's slots.
                    let key = format!("entraid:cluster:{task}:{}", i % 512);
                    let set: redis::RedisResult<()> = connection.set(&key, i).await;
                    let get: redis::RedisResult<u64> = connection.get(&key).await;
                    for result in [set.map(drop), get.map(drop)] {
                        match result {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(error) => {
                                eprintln!("command failed: {error}");
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                }
            })
        })
        .collect();
    let started = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep((deadline - tokio::time::Instant::now()).min(Duration::from_secs(5))).await;
        let status = provider.status();
        println!(
            "{:>4} s: {} commands, {} failed; token expires in {:?}; {} lost re-authentication(s)",
            started.elapsed().as_secs(),
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            status
                .token
                .expires_at
                .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
                .map(|d| Duration::from_secs(d.as_secs())),
            provider.lost_reauthentications(),
        );
    }
    for task in tasks {
        task.await?;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "cluster: {} s, {ok} commands, {failed} failed, {} lost re-authentication(s)",
        duration.as_secs(),
        provider.lost_reauthentications()
    );
    if failed > 0 {
        return Err(format!("{failed} command(s) failed").into());
    }
    Ok(())
}
