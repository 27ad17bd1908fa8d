//! End to end through the emulator: pub/sub on RESP2 and RESP3 across token rotations.
//! A RESP2 subscriber cannot send `AUTH`, so `redis_entraid::aio::PubSub` swaps it for a
//! new connection before its token expires; the negative controls show what happens
//! without that.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use entraid_emulator::Faults;
use entraid_identity::IdentityProvider;
use redis_entraid::aio::{ConnectionManager, ConnectionManagerConfig, PubSub, PubSubStream};
use redis_entraid::{EntraIdCredentialsProvider, TokenManagerConfig};
use tokio_stream::StreamExt;

mod support;
use support::{
    back_after_outage, emulator, exact_renewals, next_renewal, outage_longer_than_a_token, quick_retries,
    secret_provider, stall_server, stallable_emulator, started, stat, tls_client, token_client,
};

/// Where the publisher sends message `i`: three channels subscribed by name, and one
/// matched by the subscriber's pattern `pat*`.
const TARGETS: [&str; 4] = ["ch0", "ch1", "ch2", "pattern-matched"];

/// What a subscriber received: per target, every number in arrival order.
type Received = BTreeMap<String, Vec<u64>>;

/// Publishes numbered messages round-robin on [`TARGETS`] at `rate` per second for
/// `duration`; returns how many were sent (a failed `PUBLISH` is retried, so every
/// number is sent once).
async fn publish_numbers(mut publisher: ConnectionManager, rate: u32, duration: Duration) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let end = tokio::time::Instant::now() + duration;
    let mut sent = 0u64;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let target = TARGETS[(sent % 4) as usize];
        loop {
            let published: redis::RedisResult<u64> = redis::cmd("PUBLISH")
                .arg(target)
                .arg(sent)
                .query_async(&mut publisher)
                .await;
            match published {
                Ok(_) => break,
                Err(error) => {
                    eprintln!("publish {sent} failed ({error}); again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        sent += 1;
    }
    sent
}

/// Collects messages until none came for `quiet`.
async fn collect(stream: &mut PubSubStream, received: &mut Received, quiet: Duration) {
    while let Ok(Some(msg)) = tokio::time::timeout(quiet, stream.next()).await {
        let number: u64 = msg.get_payload().unwrap();
        let key = if msg.from_pattern() {
            "pattern-matched".to_owned()
        } else {
            msg.get_channel_name().to_owned()
        };
        received.entry(key).or_default().push(number);
    }
}

async fn subscriber(
    emulator: &entraid_emulator::Emulator,
    provider: &EntraIdCredentialsProvider,
    resp3: bool,
) -> PubSub {
    let mut pubsub = PubSub::new(tls_client(emulator, resp3), provider.clone())
        .await
        .unwrap();
    pubsub.subscribe(&TARGETS[..3]).await.unwrap();
    pubsub.psubscribe("pattern*").await.unwrap();
    pubsub
}

/// What goes wrong while messages flow.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Trouble {
    /// Nothing: renewals only.
    None,
    /// The gateway refuses every re-authentication `AUTH`.
    RefusedReauth,
    /// The server sleeps 1.5 s from 100 ms before the first renewal.
    StallAtRenewal,
}

/// 200 messages a second for `duration` on `lifetime` tokens (renewed at 70 % of their
/// life): every number arrives, the duplicates are the ones counted, at least `renewals`
/// renewals reached the subscriber, and nothing was cut.
async fn every_message_across_rotations(
    resp3: bool,
    trouble: Trouble,
    lifetime: Duration,
    duration: Duration,
    renewals: u64,
) {
    let emulator = stallable_emulator(lifetime).await;
    let provider = started(secret_provider(&emulator), exact_renewals());
    let renewal = next_renewal(&provider).await;
    let pubsub = subscriber(&emulator, &provider, resp3).await;
    if trouble == Trouble::RefusedReauth {
        emulator.set_faults(Faults::new().fail_reauth(1_000_000)).unwrap();
    }
    let stats = pubsub.stats();
    let (sink, mut stream) = pubsub.split();
    // A reply that never came would make the publisher send that number again: wait
    // out a stall instead.
    let publisher = ConnectionManager::new_with_config(
        tls_client(&emulator, false),
        provider.clone(),
        ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(5))),
    )
    .await
    .unwrap();
    let publishing = tokio::spawn(publish_numbers(publisher, 200, duration));
    if trouble == Trouble::StallAtRenewal {
        tokio::time::sleep_until(renewal - Duration::from_millis(100)).await;
        stall_server(&emulator, 1.5).await;
    }
    let mut received = Received::new();
    let collecting = async {
        collect(&mut stream, &mut received, duration + Duration::from_secs(5)).await;
    };
    let sent = tokio::select! {
        sent = publishing => sent.unwrap(),
        () = collecting => unreachable!("the stream went quiet while publishing"),
    };
    collect(&mut stream, &mut received, Duration::from_secs(1)).await;
    let after = sink.stats();
    let protocol = format!("{} ({trouble:?})", if resp3 { "RESP3" } else { "RESP2" });
    let mut total = 0;
    let mut duplicated = 0;
    for (at, target) in TARGETS.iter().enumerate() {
        let numbers = received.get(*target).cloned().unwrap_or_default();
        let distinct: BTreeSet<u64> = numbers.iter().copied().collect();
        let expected: BTreeSet<u64> = (0..sent).filter(|i| *i % 4 == at as u64).collect();
        let missing: Vec<&u64> = expected.difference(&distinct).take(10).collect();
        assert!(missing.is_empty(), "{protocol} {target}: missing {missing:?}");
        assert_eq!(distinct, expected, "{protocol} {target}: nothing extra");
        total += numbers.len();
        duplicated += numbers.len() - distinct.len();
        // Each connection's messages keep their order: a number goes back only at a swap.
        let backwards = numbers.windows(2).filter(|w| w[1] < w[0]).count() as u64;
        assert!(
            backwards <= after.swaps,
            "{protocol} {target}: {backwards} steps back, {} swaps",
            after.swaps
        );
    }
    eprintln!(
        "{protocol}: {sent} published, {total} received, {duplicated} duplicated; stats {after:?} (at start {stats:?}); emulator {}",
        emulator.stats().to_json()
    );
    assert_eq!(
        duplicated as u64, after.duplicates,
        "{protocol}: the duplicates counted are the ones delivered"
    );
    assert_eq!(after.messages, total as u64);
    match (resp3, trouble) {
        (true, Trouble::RefusedReauth) => {
            assert!(after.swaps >= renewals && after.failed_auths >= renewals, "{after:?}");
            assert_eq!(after.reauthentications, 0, "{after:?}");
        }
        (true, _) => {
            assert!(after.reauthentications >= renewals, "{after:?}");
            assert_eq!(after.swaps, 0, "{after:?}");
        }
        (false, _) => {
            assert!(after.swaps >= renewals, "{after:?}");
            assert_eq!(after.failed_auths, 0, "{after:?}");
            assert_eq!(
                stat(&emulator, "auth_failures"),
                0,
                "no AUTH is tried in subscribed mode"
            );
        }
    }
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_subscriber_receives_every_message_across_swaps() {
    let (lifetime, duration) = (Duration::from_secs(6), Duration::from_secs(30));
    every_message_across_rotations(false, Trouble::None, lifetime, duration, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscriber_receives_every_message_across_reauthentications() {
    let (lifetime, duration) = (Duration::from_secs(6), Duration::from_secs(30));
    every_message_across_rotations(true, Trouble::None, lifetime, duration, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscriber_whose_reauthentications_are_refused_is_swapped_without_losing_a_message() {
    let (lifetime, duration) = (Duration::from_secs(6), Duration::from_secs(15));
    every_message_across_rotations(true, Trouble::RefusedReauth, lifetime, duration, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stall_at_a_rotation_loses_no_message_and_cuts_nothing() {
    // 10 s tokens renewed at 7 s and 14 s; the server sleeps from 6.9 s to 8.4 s.
    let (lifetime, duration) = (Duration::from_secs(10), Duration::from_secs(16));
    for resp3 in [false, true] {
        every_message_across_rotations(resp3, Trouble::StallAtRenewal, lifetime, duration, 2).await;
    }
}

/// Waits until the subscriber starts a swap (it counts one when it opens the connection
/// that takes over).
async fn swap_started(pubsub: &PubSub, swaps: u64) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while pubsub.stats().swaps == swaps {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("a swap within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_changed_during_a_swap_reach_the_connection_that_survives() {
    let emulator = emulator(Duration::from_secs(4), None).await;
    let provider = started(secret_provider(&emulator), TokenManagerConfig::default());
    let mut pubsub = PubSub::new(tls_client(&emulator, false), provider.clone())
        .await
        .unwrap();
    let mut publisher = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
        .await
        .unwrap();
    for round in 0..3 {
        let (early, late, early_pattern, late_pattern) = (
            format!("early{round}"),
            format!("late{round}"),
            format!("ep{round}*"),
            format!("lp{round}*"),
        );
        pubsub.subscribe(&early).await.unwrap();
        pubsub.psubscribe(&early_pattern).await.unwrap();
        let swaps = pubsub.stats().swaps;
        swap_started(&pubsub, swaps).await;
        // While the new connection is being opened and subscribed.
        pubsub.subscribe(&late).await.unwrap();
        pubsub.unsubscribe(&early).await.unwrap();
        pubsub.psubscribe(&late_pattern).await.unwrap();
        pubsub.punsubscribe(&early_pattern).await.unwrap();
        // Once the swap is done, only the late ones receive.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for (channel, wanted) in [
            (early.clone(), false),
            (late.clone(), true),
            (format!("ep{round}x"), false),
            (format!("lp{round}x"), true),
        ] {
            let receivers: u64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(round)
                .query_async(&mut publisher)
                .await
                .unwrap();
            assert_eq!(
                receivers,
                u64::from(wanted),
                "round {round}: {channel} has {receivers} subscribers"
            );
        }
        let got: Vec<String> = {
            let mut got = Vec::new();
            let mut messages = pubsub.on_message();
            while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(500), messages.next()).await {
                got.push(msg.get_channel_name().to_owned());
            }
            got
        };
        assert_eq!(got, [late.clone(), format!("lp{round}x")], "round {round}");
        pubsub.unsubscribe(&late).await.unwrap();
        pubsub.punsubscribe(&late_pattern).await.unwrap();
    }
    eprintln!("changes during swaps: {:?}", pubsub.stats());
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_identity_outage_longer_than_a_token_messages_resume_by_themselves() {
    for resp3 in [false, true] {
        let emulator = emulator(Duration::from_secs(4), None).await;
        let provider = started(secret_provider(&emulator), quick_retries());
        let pubsub = subscriber(&emulator, &provider, resp3).await;
        let (_sink, mut stream) = pubsub.split();
        let mut publisher = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
            .await
            .unwrap();
        outage_longer_than_a_token(&emulator, &provider).await;
        back_after_outage(&emulator, &provider).await;
        let token_back = tokio::time::Instant::now();
        // Publish until the subscriber hears one.
        let heard = tokio::time::timeout(Duration::from_secs(5), async {
            let mut i = 0u64;
            loop {
                let _ = redis::cmd("PUBLISH")
                    .arg("ch0")
                    .arg(i)
                    .query_async::<u64>(&mut publisher)
                    .await;
                i += 1;
                if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), stream.next()).await {
                    return token_back.elapsed();
                }
            }
        })
        .await;
        let protocol = if resp3 { "RESP3" } else { "RESP2" };
        eprintln!(
            "{protocol} outage: messages resumed {heard:?} after a token was back; {:?}",
            stream
        );
        assert!(heard.is_ok(), "{protocol}: messages resume within 5 s of a valid token");
        assert_eq!(
            stat(&emulator, "cut_connections"),
            0,
            "{protocol}: closed before expiry, never cut"
        );
        emulator.stop().await;
    }
}

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
