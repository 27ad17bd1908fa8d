//! Bench figure: commands through a server's `MOVING`, for `redis_entraid::aio::ConnectionManager`
//! (which hands its connection off before the server closes it) against redis's own
//! `ConnectionManager` with our provider (which ignores the push and is closed). Both on
//! RESP3 through the local emulator, 8 tasks of SET/GET each, one client at a time.
//!
//! ```text
//! cargo run --release -p redis-entraid-examples --example handoff_bench -- [--quick] [--out DIR]
//! ```
//! `cargo xtask bench` runs it and adds its table to `target/bench/report.md`.

use std::time::{Duration, Instant};

use entraid_azure::AzureIdentityProvider;
use entraid_emulator::{Emulator, EmulatorConfig, Faults, Maintenance};
use redis::aio::ConnectionLike;
use redis_entraid::EntraIdCredentialsProvider;

/// What one client saw.
struct Run {
    ok: u64,
    failed: u64,
    /// Latencies of the commands that started within the `MOVING` window (and a second
    /// after it), successes and failures alike.
    window: Vec<Duration>,
    all: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// SET/GET from 8 tasks for `length`, with `MOVING` announced `at` into it for `window`.
async fn run<C>(emulator: &Emulator, connection: C, length: Duration, at: Duration, window: Duration) -> Run
where
    C: ConnectionLike + Clone + Send + 'static,
{
    let start = Instant::now();
    let (window_start, window_end) = (start + at, start + at + window + Duration::from_secs(1));
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let mut connection = connection.clone();
            tokio::spawn(async move {
                let mut run = Run {
                    ok: 0,
                    failed: 0,
                    window: Vec::new(),
                    all: Vec::new(),
                };
                let mut i = 0u64;
                while start.elapsed() < length {
                    i += 1;
                    let sent = Instant::now();
                    let result: redis::RedisResult<()> = redis::cmd("SET")
                        .arg(format!("handoff:{task}:{}", i % 97))
                        .arg(i)
                        .query_async(&mut connection)
                        .await;
                    let took = sent.elapsed();
                    run.all.push(took);
                    if sent >= window_start && sent < window_end {
                        run.window.push(took);
                    }
                    match result {
                        Ok(()) => run.ok += 1,
                        Err(_) => {
                            run.failed += 1;
                            // A dead connection fails at once: let the others run.
                            tokio::task::yield_now().await;
                        }
                    }
                }
                run
            })
        })
        .collect();
    tokio::time::sleep(at).await;
    emulator
        .set_faults(Faults::new().maintenance(Maintenance::Moving {
            time: window,
            endpoint: true,
        }))
        .expect("the emulator takes the maintenance");
    let mut total = Run {
        ok: 0,
        failed: 0,
        window: Vec::new(),
        all: Vec::new(),
    };
    for task in tasks {
        let run = task.await.expect("a load task");
        total.ok += run.ok;
        total.failed += run.failed;
        total.window.extend(run.window);
        total.all.extend(run.all);
    }
    total.window.sort_unstable();
    total.all.sort_unstable();
    total
}

fn client(emulator: &Emulator) -> redis::Client {
    redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{}/?protocol=resp3", emulator.redis_port()),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(emulator.ca_pem().as_bytes().to_vec()),
        },
    )
    .expect("a client for the emulator")
}

fn provider(emulator: &Emulator) -> Result<EntraIdCredentialsProvider, Box<dyn std::error::Error>> {
    let env = |key: &str| {
        emulator
            .env()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .unwrap_or_default()
    };
    let identity = AzureIdentityProvider::client_secret(
        &env("AZURE_TENANT_ID"),
        &env("AZURE_CLIENT_ID"),
        &env("AZURE_CLIENT_SECRET"),
    )?
    .with_authority_host(emulator.authority_host())?
    .with_root_certificate_pem(emulator.ca_pem())?;
    let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(identity);
    provider.try_start_with_config(redis_entraid::TokenManagerConfig::default())?;
    Ok(provider)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    // A token outlives the run: only the move is measured.
    let emulator = Emulator::start(EmulatorConfig::new().token_lifetime(Duration::from_secs(300))).await?;
    let provider = provider(&emulator)?;
    provider.token().await?;
    let (length, at, window) = if quick {
        (Duration::from_secs(5), Duration::from_secs(1), Duration::from_secs(2))
    } else {
        (Duration::from_secs(15), Duration::from_secs(3), Duration::from_secs(5))
    };

    let ours = redis_entraid::aio::ConnectionManager::new(client(&emulator), provider.clone()).await?;
    let a = run(&emulator, ours.clone(), length, at, window).await;
    let handoffs = ours.stats().handoffs;
    drop(ours);
    let closed_before = emulator.stats().to_json()["moved_connections_closed"]
        .as_u64()
        .unwrap_or(0);
    let theirs = client(&emulator)
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new().set_credentials_provider(provider.clone()),
        )
        .await?;
    let b = run(&emulator, theirs, length, at, window).await;
    let closed = emulator.stats().to_json()["moved_connections_closed"]
        .as_u64()
        .unwrap_or(0);

    let mut table = format!(
        "## Handoff: commands through a server's `MOVING`\n\n\
         8 tasks of `SET` on RESP3 through the emulator, {}-second runs, `MOVING` to a second \
         gateway {} s in with a {} s window (the server closes every connection still open at \
         its end); latencies of the commands sent from the push to a second after the window{}.\n\n\
         | client | ok | failed | p50 ms | p99 ms | max ms | p99 ms, whole run | handoffs | closed by the server |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        length.as_secs(),
        at.as_secs(),
        window.as_secs(),
        if quick {
            " (--quick: a smoke run, not a measurement)"
        } else {
            ""
        }
    );
    for (name, run, handoffs, closed) in [
        (
            "A-manager (redis_entraid::aio::ConnectionManager)",
            &a,
            handoffs.to_string(),
            closed_before,
        ),
        (
            "redis ConnectionManager + our provider",
            &b,
            "—".to_owned(),
            closed - closed_before,
        ),
    ] {
        table.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {handoffs} | {closed} |\n",
            run.ok,
            run.failed,
            ms(percentile(&run.window, 0.5)),
            ms(percentile(&run.window, 0.99)),
            ms(run.window.last().copied().unwrap_or_default()),
            ms(percentile(&run.all, 0.99)),
        ));
    }
    println!("{table}");
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("handoff.md"), &table)?;
    }
    emulator.stop().await;
    Ok(())
}
