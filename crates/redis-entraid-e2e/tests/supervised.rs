//! End to end through the emulator: `redis_entraid::aio::ConnectionManager` survives
//! what production throws at it (a server stall during a rotation, refused `AUTH`s, an
//! identity outage longer than a token) without the gateway ever cutting a connection.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use entraid_emulator::Faults;
use redis::aio::ConnectionManagerConfig as RedisManagerConfig;
use redis::{AsyncConnectionConfig, PushKind, RedisResult};
use redis_entraid::TokenManagerConfig;
use redis_entraid::aio::{ConnectionManager, ConnectionManagerConfig};

mod support;
use support::{
    back_after_outage, emulator, exact_renewals, next_renewal, outage_longer_than_a_token, quick_retries,
    secret_provider, stall_server, stallable_emulator, started, stat, tls_client, watchdog,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stall_during_a_rotation_costs_no_command_after_it_and_no_cut() {
    // 10 s tokens renewed at 7 s; the server sleeps 1.5 s from 100 ms before the renewal:
    // redis's own re-auth task gives up on its 500 ms timeout here, and the gateway cuts
    // that connection at 10 s (issue's case 1). Ours waits for the AUTH or retries it.
    let emulator = stallable_emulator(Duration::from_secs(10)).await;
    let provider = started(secret_provider(&emulator), exact_renewals());
    let renewal = next_renewal(&provider).await;
    let manager = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
        .await
        .unwrap();
    let load = tokio::spawn(entraid_test_support::set_get_load(
        manager.clone(),
        16,
        Duration::from_secs(18),
    ));
    tokio::time::sleep_until(renewal - Duration::from_millis(100)).await;
    stall_server(&emulator, 1.5).await;
    let stall_end = tokio::time::Instant::now() + Duration::from_millis(1500);
    let report = load.await.unwrap();
    let stats = manager.stats();
    eprintln!(
        "stall: {} ok, {} failed (last {:?} after the stall), manager {stats:?}, emulator {}",
        report.ok,
        report.failed,
        report.last_failure_at.map(|at| at.saturating_duration_since(stall_end)),
        emulator.stats().to_json()
    );
    // Commands in flight during the stall may time out (500 ms); none after it.
    if let Some(last) = report.last_failure_at {
        assert!(
            last <= stall_end + Duration::from_millis(700),
            "a command failed {:?} after the stall: {:?}",
            last - stall_end,
            report.first_errors
        );
    }
    assert!(report.ok > 1000);
    assert_eq!(stat(&emulator, "cut_connections"), 0, "the gateway cut no connection");
    assert!(
        stats.reauthentications + stats.replacements >= 2,
        "rotations at 7 s and 14 s reached the connection: {stats:?}"
    );
    // The provider's health figures say the same.
    let status = provider.status();
    eprintln!("stall: provider status {status:?}");
    assert_eq!(status.connections.live, 1, "{status:?}");
    assert_eq!(status.connections.retrying_auth, 0);
    assert_eq!(status.connections.replaced, stats.replacements);
    assert!(status.token.has_valid_token(std::time::SystemTime::now()));
    assert_eq!(
        status.token.username,
        provider.current_token().map(|t| t.username().to_owned())
    );
    if stats.replacements == 0 {
        assert_eq!(status.connections.reauthenticated_on_latest_renewal, 1, "{status:?}");
    }
    drop(manager);
    tokio::task::yield_now().await;
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reauthentications_replace_the_connection_before_its_token_expires() {
    // Every re-authentication is refused (WRONGPASS): each rotation must replace the
    // connection, make-before-break, with no failed command and no cut.
    let emulator = stallable_emulator(Duration::from_secs(6)).await;
    let provider = started(secret_provider(&emulator), TokenManagerConfig::default());
    provider.token().await.unwrap();
    let manager = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
        .await
        .unwrap();
    emulator.set_faults(Faults::new().fail_reauth(1_000_000)).unwrap();
    // Samples the provider's health while the AUTHs are refused.
    let sampler = {
        let provider = provider.clone();
        tokio::spawn(async move {
            let mut most_retrying = 0;
            for _ in 0..280 {
                most_retrying = most_retrying.max(provider.status().connections.retrying_auth);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            most_retrying
        })
    };
    let report = entraid_test_support::set_get_load(manager.clone(), 16, Duration::from_secs(14)).await;
    let stats = manager.stats();
    let most_retrying = sampler.await.unwrap();
    let status = provider.status();
    eprintln!("refused AUTH: at most {most_retrying} retrying; provider status {status:?}");
    assert!(most_retrying >= 1, "a refused AUTH shows as retrying");
    assert_eq!(status.connections.replaced, stats.replacements);
    assert_eq!(
        status.connections.reauthenticated_on_latest_renewal, 0,
        "every AUTH was refused"
    );
    eprintln!(
        "refused AUTH: {} ok, {} failed, manager {stats:?}, emulator {}",
        report.ok,
        report.failed,
        emulator.stats().to_json()
    );
    assert_eq!(report.failed, 0, "{:?}", report.first_errors);
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    assert!(stats.replacements >= 2, "rotations at ~4 s and ~8 s: {stats:?}");
    assert!(stats.failed_auths >= stats.replacements, "{stats:?}");
    assert!(stat(&emulator, "auth_failures") >= 2);
    emulator.stop().await;
}

/// Polls `PING` until it answers, at most `limit`; returns how long it took.
async fn until_ping(connection: &mut (impl redis::aio::ConnectionLike + Send), limit: Duration) -> Option<Duration> {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        let pong: RedisResult<String> = redis::cmd("PING").query_async(connection).await;
        if pong.is_ok() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_outage_longer_than_a_token_fails_fast_then_recovers_by_itself() {
    let emulator = stallable_emulator(Duration::from_secs(4)).await;
    let provider = started(secret_provider(&emulator), quick_retries());
    let mut manager = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
        .await
        .unwrap();
    outage_longer_than_a_token(&emulator, &provider).await;
    // No valid token: commands fail at once, saying so.
    let started_at = tokio::time::Instant::now();
    let error = redis::cmd("PING")
        .query_async::<String>(&mut manager)
        .await
        .unwrap_err();
    assert!(
        started_at.elapsed() < Duration::from_millis(100),
        "{:?}",
        started_at.elapsed()
    );
    assert!(error.to_string().contains("no valid Entra ID token"), "{error}");
    back_after_outage(&emulator, &provider).await;
    let took = until_ping(&mut manager, Duration::from_secs(5)).await;
    eprintln!(
        "outage: our manager answered {took:?} after a token was back; {:?}; emulator {}",
        manager.stats(),
        emulator.stats().to_json()
    );
    assert!(took.is_some(), "recovered within 5 s of a token");
    assert_eq!(
        stat(&emulator, "cut_connections"),
        0,
        "closed by us before expiry, never cut"
    );
    assert!(manager.stats().closed_before_expiry >= 1);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connection_manager_with_our_provider_recovers_after_an_outage_longer_than_a_token() {
    // The case 2 on the redis.io path: the first item of a stream when no token
    // exists is an I/O-kind error, so redis's manager reconnects on a later command.
    let emulator = stallable_emulator(Duration::from_secs(4)).await;
    let provider = started(secret_provider(&emulator), quick_retries());
    let mut manager = tls_client(&emulator, false)
        .get_connection_manager_with_config(
            RedisManagerConfig::new()
                .set_credentials_provider(provider.clone())
                .set_number_of_retries(1),
        )
        .await
        .unwrap();
    outage_longer_than_a_token(&emulator, &provider).await;
    let _ = redis::cmd("PING").query_async::<String>(&mut manager).await;
    let _ = redis::cmd("PING").query_async::<String>(&mut manager).await;
    back_after_outage(&emulator, &provider).await;
    let took = until_ping(&mut manager, Duration::from_secs(10)).await;
    eprintln!("outage, redis's manager: answered {took:?} after a token was back");
    assert!(took.is_some(), "redis's ConnectionManager recovered");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_new_connections_send_twenty_auths() {
    let emulator = stallable_emulator(Duration::from_secs(60)).await;
    let provider = started(secret_provider(&emulator), TokenManagerConfig::default());
    provider.token().await.unwrap();
    let before = stat(&emulator, "authentications") + stat(&emulator, "reauthentications");
    let mut managers = Vec::new();
    for _ in 0..20 {
        let mut manager = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
            .await
            .unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut manager).await.unwrap();
        assert_eq!(pong, "PONG");
        managers.push(manager);
    }
    let after = stat(&emulator, "authentications") + stat(&emulator, "reauthentications");
    assert_eq!(after - before, 20, "one AUTH per connection, in its handshake");
    assert_eq!(stat(&emulator, "reauthentications"), 0);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_subscriptions_keep_receiving_across_replacements() {
    // 12 s tokens, every re-auth refused: a replacement at the replace margin (1.2 s, a
    // tenth of the life) before expiry, and the old connection closed at a quarter of it
    // (0.3 s) before expiry. The new connection (TLS, AUTH, two subscriptions) has the
    // 0.9 s between to take over; with 6 s tokens it had 0.45 s, and a loaded CI machine
    // once took longer (2 messages missed). Replacements at about 10.8 s and 21.6 s.
    let emulator = stallable_emulator(Duration::from_secs(12)).await;
    let provider = started(secret_provider(&emulator), TokenManagerConfig::default());
    provider.token().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut subscriber = ConnectionManager::new_with_config(
        tls_client(&emulator, true),
        provider.clone(),
        ConnectionManagerConfig::new().set_push_sender(tx),
    )
    .await
    .unwrap();
    subscriber.subscribe("numbers").await.unwrap();
    subscriber.psubscribe("num*").await.unwrap();
    let mut publisher = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
        .await
        .unwrap();
    emulator.set_faults(Faults::new().fail_reauth(1_000_000)).unwrap();
    let sent = 25_000 / 20;
    for i in 0..sent {
        let _: u64 = redis::cmd("PUBLISH")
            .arg("numbers")
            .arg(i)
            .query_async(&mut publisher)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut channel, mut pattern) = (Vec::new(), Vec::new());
    while let Ok(Some(push)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
        let value = |i: usize| redis::from_redis_value_ref::<u64>(&push.data[i]).unwrap();
        match push.kind {
            PushKind::Message => channel.push(value(1)),
            PushKind::PMessage => pattern.push(value(2)),
            _ => {}
        }
    }
    let stats = subscriber.stats();
    for (name, received) in [("channel", &channel), ("pattern", &pattern)] {
        let distinct: BTreeSet<u64> = received.iter().copied().collect();
        eprintln!(
            "RESP3 {name}: {} received, {} distinct of {sent}, {} duplicated; {stats:?}",
            received.len(),
            distinct.len(),
            received.len() - distinct.len()
        );
        assert_eq!(distinct, (0..sent as u64).collect(), "no {name} message lost");
    }
    assert!(stats.replacements >= 2, "{stats:?}");
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_on_one_provider_through_a_stall_at_rotation() {
    const N: usize = 1000;
    // 20 s tokens, renewed at 14 s.
    let emulator = stallable_emulator(Duration::from_secs(20)).await;
    let provider = started(secret_provider(&emulator), exact_renewals());
    provider.token().await.unwrap();
    // 50 handshakes at a time: a thousand at once exceed the 5 s connection timeout in
    // a debug build on two cores.
    let started_at = tokio::time::Instant::now();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..N {
        let (client, provider, permits) = (tls_client(&emulator, false), provider.clone(), permits.clone());
        opening.spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            ConnectionManager::new(client, provider).await.unwrap()
        });
    }
    let mut managers = opening.join_all().await;
    eprintln!("{N} connections opened in {:?}", started_at.elapsed());
    // The renewal of the token now current (if opening took longer than one, some
    // connections were opened with its successor already).
    let mut renewal = next_renewal(&provider).await;
    while renewal < tokio::time::Instant::now() + Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        renewal = next_renewal(&provider).await;
    }
    tokio::time::sleep_until(renewal - Duration::from_millis(100)).await;
    stall_server(&emulator, 1.5).await;
    // After the stall and the old token's expiry (6 s after the renewal), every
    // connection still answers.
    tokio::time::sleep_until(renewal + Duration::from_secs(7)).await;
    let mut failed = 0;
    for manager in &mut managers {
        let pong: RedisResult<String> = redis::cmd("PING").query_async(manager).await;
        failed += usize::from(pong.is_err());
    }
    let replaced: u64 = managers.iter().map(|m| m.stats().replacements).sum();
    let reauthenticated: u64 = managers.iter().map(|m| m.stats().reauthentications).sum();
    eprintln!(
        "{N} connections through a stall: {failed} failed PINGs, {reauthenticated} re-authenticated, {replaced} replaced; emulator {}",
        emulator.stats().to_json()
    );
    assert_eq!(failed, 0);
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    assert!(reauthenticated + replaced >= N as u64);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_whose_reauthentication_ended_is_counted_once() {
    // The redis crate's own task ends on the first refused AUTH; the provider notices.
    let emulator = stallable_emulator(Duration::from_secs(4)).await;
    let provider = started(secret_provider(&emulator), exact_renewals());
    let renewal = next_renewal(&provider).await;
    let mut connection = tls_client(&emulator, false)
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_credentials_provider(provider.clone()),
        )
        .await
        .unwrap();
    // The redis crate's re-auth task first re-sends the token the connection was set up
    // with: let that happen before refusing, so the renewal's AUTH is the refused one.
    while stat(&emulator, "reauthentications") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    emulator.set_faults(Faults::new().fail_reauth(1)).unwrap();
    assert_eq!(provider.lost_reauthentications(), 0);
    tokio::time::sleep_until(renewal + Duration::from_millis(800)).await;
    assert_eq!(provider.lost_reauthentications(), 1);
    let _: RedisResult<String> = redis::cmd("PING").query_async(&mut connection).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(provider.lost_reauthentications(), 1, "reported once");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_longer_than_the_token_fails_before_expiry_and_nothing_is_cut() {
    // BLPOP with no timeout holds the connection's replies, so the renewal's AUTH queued
    // behind it never gets one: the connection is replaced, and closed (failing the BLPOP)
    // before its token expires, instead of being cut by the server.
    let emulator = stallable_emulator(Duration::from_secs(6)).await;
    let provider = started(secret_provider(&emulator), TokenManagerConfig::default());
    let token = provider.token().await.unwrap();
    let manager = ConnectionManager::new_with_config(
        tls_client(&emulator, false),
        provider.clone(),
        ConnectionManagerConfig::new().set_response_timeout(None),
    )
    .await
    .unwrap();
    let mut blocked = manager.clone();
    let blpop = tokio::spawn(async move {
        let result: RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
            .arg("never-pushed")
            .arg(0)
            .query_async(&mut blocked)
            .await;
        (result, SystemTime::now())
    });
    let (result, failed_at) = blpop.await.unwrap();
    let error = result.unwrap_err();
    assert!(
        error.to_string().contains("closed before its Entra ID token expired"),
        "{error}"
    );
    // It may have run: not an error retry loops treat as safe to repeat.
    assert!(matches!(error.retry_method(), redis::RetryMethod::NoRetry), "{error}");
    assert!(!error.is_io_error(), "{error}");
    assert!(failed_at < token.expires_at(), "closed before the token expired");
    let mut after = manager.clone();
    let pong: String = redis::cmd("PING").query_async(&mut after).await.unwrap();
    assert_eq!(pong, "PONG");
    eprintln!("blocking command: {error}; {:?}", manager.stats());
    assert_eq!(manager.stats().replacements, 1);
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_is_not_taken_for_a_silent_path() {
    watchdog(Duration::from_secs(60), async {
        let emulator = emulator(Duration::from_secs(60), None).await;
        let provider = started(secret_provider(&emulator), quick_retries());
        // A 1 s response timeout, shorter than the 5 s the server holds the BLPOP: it
        // times out client-side, and a health PING would wait behind the BLPOP's reply
        // past the 2 s probe timeout, replacing a healthy connection.
        let mut manager = ConnectionManager::new_with_config(
            tls_client(&emulator, false),
            provider,
            ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(1))),
        )
        .await
        .unwrap();
        let blpop: RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
            .arg("never-pushed")
            .arg(5)
            .query_async(&mut manager)
            .await;
        assert!(blpop.is_err_and(|e| e.is_timeout()), "its own 1 s timeout");
        // A command queued behind it times out too.
        let get: RedisResult<Option<String>> = redis::cmd("GET").arg("k").query_async(&mut manager).await;
        assert!(get.is_err_and(|e| e.is_timeout()));
        // Past the server's 5 s and the probe's 2 s: nothing was taken for a silent path.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pong: String = redis::cmd("PING").query_async(&mut manager).await.unwrap();
        assert_eq!(pong, "PONG");
        let stats = manager.stats();
        eprintln!("BLPOP 5 with a 1 s response timeout: {stats:?}");
        assert_eq!(stats.unresponsive, 0, "{stats:?}");
        assert_eq!(stats.connections_opened, 1, "the healthy connection kept: {stats:?}");
        emulator.stop().await;
    })
    .await;
}
