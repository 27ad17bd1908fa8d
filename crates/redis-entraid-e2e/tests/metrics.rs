//! The provider's figures through the `metrics` facade, scraped from a Prometheus
//! endpoint as an operator's Prometheus would, across a rotation and a failed refresh.
//! (Its own test binary: a `metrics` recorder is global to the process.)

mod support;

use std::time::Duration;

use entraid_emulator::Faults;
use redis::AsyncCommands;
use redis_entraid::aio::ConnectionManager;
use redis_entraid::metrics::MetricsReporter;
use support::*;

/// The value of the series `name{labels}` in a Prometheus text exposition.
fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
        let matches = series_name == name
            && labels
                .iter()
                .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_across_a_rotation_and_a_failed_refresh() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], port))
        .install()
        .unwrap();

    // 4 s tokens, refreshed at 2.8 s; failures retried every 200 ms at most.
    let emulator = emulator(Duration::from_secs(4), None).await;
    let provider = started(secret_provider(&emulator), quick_retries());
    let mut manager = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
        .await
        .unwrap();
    let reporter = MetricsReporter::new(&provider, "e2e");
    reporter.clone().spawn(Duration::from_millis(100));
    let success = |s: &str| {
        value(
            s,
            "entraid_token_requests_total",
            &[("identity", "e2e"), ("outcome", "success")],
        )
    };
    let failure = |s: &str| {
        value(
            s,
            "entraid_token_requests_total",
            &[("identity", "e2e"), ("outcome", "failure")],
        )
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = scrape(port).await;
    assert_eq!(success(&first), Some(1.0), "{first}");
    assert_eq!(failure(&first), Some(0.0));
    assert_eq!(value(&first, "entraid_token_valid", &[("identity", "e2e")]), Some(1.0));
    assert_eq!(value(&first, "entraid_connections", &[("identity", "e2e")]), Some(1.0));
    let left = value(&first, "entraid_token_expires_in_seconds", &[("identity", "e2e")]).unwrap();
    assert!(left > 2.0 && left <= 4.0, "{left}");

    // A rotation: the success counter moves, the connection is re-authenticated.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let () = manager.set("metrics:k", "v").await.unwrap();
    let rotated = scrape(port).await;
    assert!(success(&rotated).unwrap() >= 2.0, "{rotated}");
    assert_eq!(
        value(
            &rotated,
            "entraid_connections_reauthenticated_latest",
            &[("identity", "e2e")]
        ),
        Some(1.0),
        "{rotated}"
    );

    // Failed refreshes: the failure counter moves, the token is still valid.
    emulator.set_faults(Faults::new().fail_next(3).status(503)).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failed = scrape(port).await;
    assert!(failure(&failed).unwrap() >= 1.0, "{failed}");
    assert!(
        success(&failed).unwrap() > success(&rotated).unwrap(),
        "recovered after the failures"
    );
    assert_eq!(
        value(&failed, "entraid_connection_replacements_total", &[("identity", "e2e")]),
        Some(0.0)
    );
    assert_eq!(stat(&emulator, "cut_connections"), 0);

    // The reporter stops when the provider and its connections are gone.
    drop((manager, provider));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!reporter.record());
    emulator.stop().await;
}
