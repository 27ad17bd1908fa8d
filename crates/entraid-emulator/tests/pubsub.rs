//! End to end through the emulator: pub/sub on RESP2 and RESP3 across token rotations.
//! A RESP2 subscriber cannot send `AUTH`, so `redis_entraid::aio::PubSub` swaps it for a
//! new connection before its token expires; the negative controls show what happens
//! without that.

use std::time::Duration;

use entraid_identity::IdentityProvider;
use tokio_stream::StreamExt;

mod support;
use support::{emulator, secret_provider, stat, token_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp2_subscriber_cannot_reauthenticate_and_is_cut_at_expiry() {
    let emulator = emulator(Duration::from_secs(3), None).await;
    let token = secret_provider(&emulator).request_token().await.unwrap();
    let client = token_client(&emulator, &token, false);
    // A fresh token (a later `exp`) sent as AUTH on a RESP2 subscribed connection: the
    // server refuses it, and the connection is still cut at the first token's expiry.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = secret_provider(&emulator).request_token().await.unwrap();
    assert!(fresh.expires_at() > token.expires_at());
    let raw = client.clone();
    let expires_at = token.expires_at();
    let refused = tokio::task::spawn_blocking(move || {
        let mut connection = raw.get_connection().unwrap();
        redis::cmd("SUBSCRIBE").arg("refusal").exec(&mut connection).unwrap();
        let auth = redis::cmd("AUTH")
            .arg(fresh.username())
            .arg(fresh.secret())
            .get_packed_command();
        connection.send_packed_command(&auth).unwrap();
        let refusal = format!("{:?}", connection.recv_response());
        connection.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let closed = connection.recv_response().is_err();
        let late = std::time::SystemTime::now()
            .duration_since(expires_at)
            .unwrap_or_default();
        (refusal, closed, late)
    });
    // Plain redis::aio::PubSub with the token as password: nothing can renew it.
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("news").await.unwrap();
    let started = tokio::time::Instant::now();
    let mut messages = pubsub.into_on_message();
    // The token lives at most 4 s (3 s, its `exp` rounded up): the stream ends then.
    let ended = tokio::time::timeout(Duration::from_secs(8), messages.next()).await;
    assert!(matches!(ended, Ok(None)), "the gateway closed the subscriber at expiry");
    assert!(started.elapsed() <= Duration::from_secs(5), "{:?}", started.elapsed());
    let (refusal, closed, late) = refused.await.unwrap();
    assert!(refusal.contains("Can't execute 'auth'"), "{refusal}");
    assert!(
        closed && late < Duration::from_secs(1),
        "cut at the first token's expiry: {late:?} late"
    );
    assert_eq!(stat(&emulator, "cut_connections"), 2);
    assert_eq!(
        stat(&emulator, "reauthentications"),
        0,
        "the refused AUTH moved nothing"
    );
    emulator.stop().await;
}
