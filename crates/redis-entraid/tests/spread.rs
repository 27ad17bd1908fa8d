//! Re-authentication spread under paused tokio time.

use std::time::Duration;

use entraid_test_support::{ScriptedProvider, Step};
use redis::auth::StreamingCredentialsProvider;
use redis_entraid::{EntraIdCredentialsProvider, TokenManagerConfig};
use tokio_stream::StreamExt;

const SEC: Duration = Duration::from_secs(1);

fn provider(lifetime: Duration, spread: Duration) -> (ScriptedProvider, EntraIdCredentialsProvider) {
    let scripted = ScriptedProvider::new("oid-spread", [], Step::Token(lifetime));
    let mut credentials =
        EntraIdCredentialsProvider::new_with_identity_provider(scripted.clone()).with_reauth_spread(spread);
    credentials.start_with_config(TokenManagerConfig::default());
    (scripted, credentials)
}

/// Subscribes `n` streams, takes their first item, and returns the instants at which
/// each delivers its second.
async fn second_item_times(
    credentials: &EntraIdCredentialsProvider,
    n: usize,
) -> (tokio::time::Instant, Vec<Duration>) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut stream = credentials.subscribe();
        let first = stream.next().await.unwrap().unwrap();
        tasks.push(tokio::spawn(async move {
            let second = stream.next().await.unwrap().unwrap();
            assert_ne!(second.password(), first.password(), "the renewal, not the same token");
            tokio::time::Instant::now()
        }));
    }
    let started = tokio::time::Instant::now();
    let mut times = Vec::new();
    for task in tasks {
        times.push(task.await.unwrap() - started);
    }
    (started, times)
}

#[tokio::test(start_paused = true)]
async fn renewals_reach_every_connection_spread_inside_the_window() {
    // One-hour tokens renew after 42 min; the spread is 5 s.
    let (scripted, credentials) = provider(3600 * SEC, 5 * SEC);
    credentials.token().await.unwrap();
    let (_, times) = second_item_times(&credentials, 500).await;
    let refresh = Duration::from_secs(42 * 60);
    assert_eq!(times.len(), 500, "every subscriber got the renewal");
    assert!(
        times.iter().all(|t| *t >= refresh && *t < refresh + 5 * SEC),
        "inside [refresh, refresh + 5 s)"
    );
    let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(spread > 4 * SEC, "spread over the window, not a burst: {spread:?}");
    assert_eq!(scripted.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_delay_never_exceeds_a_tenth_of_the_replaced_tokens_remaining_life() {
    // 10 s tokens renew at 7 s, with 3 s left: at most 300 ms of spread, though 5 s is allowed.
    let (_, credentials) = provider(10 * SEC, 5 * SEC);
    credentials.token().await.unwrap();
    let (_, times) = second_item_times(&credentials, 200).await;
    let refresh = 7 * SEC;
    assert!(
        times
            .iter()
            .all(|t| *t >= refresh && *t < refresh + Duration::from_millis(300)),
        "{:?}",
        times.iter().max()
    );
}

#[tokio::test(start_paused = true)]
async fn zero_spread_delivers_at_once_and_first_credentials_are_never_delayed() {
    let (_, credentials) = provider(60 * SEC, Duration::ZERO);
    credentials.token().await.unwrap();
    let (_, times) = second_item_times(&credentials, 100).await;
    assert!(times.iter().all(|t| *t == 42 * SEC), "{:?}", times.iter().max());

    let (_, spread) = provider(60 * SEC, 30 * SEC);
    spread.token().await.unwrap();
    let before = tokio::time::Instant::now();
    let mut stream = spread.subscribe();
    stream.next().await.unwrap().unwrap();
    assert_eq!(before.elapsed(), Duration::ZERO);
}
