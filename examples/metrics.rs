//! Exports the provider's figures to Prometheus: token requests by outcome, the token's
//! remaining life, connections re-authenticated or replaced (see the user guide's
//! "Operating it"). `metrics-exporter-prometheus` serves them; any `metrics` exporter
//! (StatsD, OpenTelemetry) works the same way.
//!
//! ```text
//! REDIS_HOST=… cargo run --example metrics -- --duration 30
//! curl -s http://127.0.0.1:9464/metrics | grep ^entraid_      # while it runs
//! ```
//! `METRICS_ADDR` moves the endpoint (default `127.0.0.1:9464`). Against the local
//! emulator: `cargo xtask demo` shows the variables to export.

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use redis::AsyncCommands;
use redis_entraid::EntraIdCredentialsProvider;
use redis_entraid::aio::ConnectionManager;
use redis_entraid::metrics::MetricsReporter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let duration = common::duration_arg()?.unwrap_or(Duration::from_secs(10));
    let address: SocketAddr = std::env::var("METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9464".to_owned())
        .parse()
        .map_err(|e| format!("METRICS_ADDR: not an address such as 127.0.0.1:9464: {e}"))?;
    let (recorder, exporter) = PrometheusBuilder::new().with_http_listener(address).build()?;
    let scrape = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    tokio::spawn(exporter);
    println!("metrics on http://{address}/metrics");

    let provider = EntraIdCredentialsProvider::new_from_env()?;
    // Records every second until the provider is dropped; `identity` labels the series.
    MetricsReporter::new(&provider, "metrics-example").spawn(Duration::from_secs(1));
    let mut connection = ConnectionManager::new(common::redis_client()?, provider).await?;

    let deadline = tokio::time::Instant::now() + duration;
    let mut commands = 0u64;
    while tokio::time::Instant::now() < deadline {
        let () = connection.set("entraid:metrics", commands).await?;
        commands += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{commands} commands in {} s; what a scrape shows now:",
        duration.as_secs()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for line in scrape.render().lines().filter(|l| l.starts_with("entraid_")) {
        println!("  {line}");
    }
    Ok(())
}
