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
    // The spread is measured from the exact refresh instant: no refresh jitter.
    credentials.start_with_config({
        let mut config = TokenManagerConfig::default();
        config.refresh_jitter = 0.0;
        config
    });
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

/// Hands out a token late in its life first (a reconnect, a cached token: 10 s left of
/// 600 s), then fresh ones.
struct LateThenFresh(std::sync::atomic::AtomicU64);

#[async_trait::async_trait]
impl entraid_identity::IdentityProvider for LateThenFresh {
    async fn request_token(&self) -> Result<entraid_identity::Token, entraid_identity::IdentityError> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now();
        let (received, expires) = if n == 0 {
            (now - Duration::from_secs(590), now + 10 * SEC)
        } else {
            (now, now + 600 * SEC)
        };
        Ok(entraid_identity::Token::new(
            format!("secret-{n}"),
            "oid-late",
            expires,
            received,
        ))
    }
}

#[tokio::test(start_paused = true)]
async fn the_spread_bound_uses_what_the_first_token_has_left_not_its_lifetime() {
    let mut credentials = EntraIdCredentialsProvider::new_with_identity_provider(LateThenFresh(Default::default()))
        .with_reauth_spread(5 * SEC);
    credentials.start_with_config(TokenManagerConfig::default());
    credentials.token().await.unwrap();
    // The token manager notices the first token is nearly spent (by the wall clock, at its
    // first check) and renews it. Each connection's first token had 10 s left when it
    // was handed over, so by then nothing is left to spread over: the renewal reaches
    // every connection at once. Had the bound used the token's 600 s lifetime, up to 5 s.
    let (_, times) = second_item_times(&credentials, 100).await;
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    assert!(first <= 10 * SEC, "renewed at the first wall-clock check: {first:?}");
    assert_eq!(last - first, Duration::ZERO, "no spread past what the token had left");
}
