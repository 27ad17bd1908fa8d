//! End to end through the emulator: what a user puts on a connection survives the swaps
//! our types make. A subscription made while a new connection is being opened reaches
//! the one that takes over; one the server refuses never breaks a later connection.

use std::time::Duration;

use entraid_emulator::Faults;
use redis::{PushInfo, RedisResult};
use redis_entraid::ConnectionConfig;
use redis_entraid::aio::{ConnectionManager, PubSub};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

mod support;
use support::{emulator, exact_renewals, quick_retries, secret_provider, started, stat, tls_client, watchdog};

/// Polls `condition` every 20 ms until it holds or `limit` passes.
async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// A message on `channel` from `pushes`, within `limit`.
async fn push_on(pushes: &mut mpsc::UnboundedReceiver<PushInfo>, channel: &str, limit: Duration) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while let Ok(Some(push)) = tokio::time::timeout_at(end, pushes.recv()).await {
        if let Some(msg) = redis::Msg::from_push_info(push)
            && msg.get_channel_name() == channel
        {
            return true;
        }
    }
    false
}

async fn publisher(emulator: &entraid_emulator::Emulator) -> ConnectionManager {
    let provider = started(secret_provider(emulator), quick_retries());
    ConnectionManager::new_with_config(
        tls_client(emulator, false),
        provider,
        ConnectionConfig::new().set_response_timeout(None),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_while_a_replacement_opens_reaches_the_connection_that_takes_over() {
    watchdog(Duration::from_secs(120), async {
        // 20 s tokens renewed at 14 s; every re-authentication refused, so the manager
        // replaces its connection at the replace margin (2 s, a tenth of the life) before
        // expiry, at 18 s; the old one closes at 19.5 s.
        let emulator = emulator(Duration::from_secs(20), None).await;
        let provider = started(secret_provider(&emulator), exact_renewals());
        let (tx, mut pushes) = mpsc::unbounded_channel();
        let mut manager = ConnectionManager::new_with_config(
            tls_client(&emulator, true),
            provider.clone(),
            ConnectionConfig::new().set_push_sender(tx),
        )
        .await
        .unwrap();
        manager.subscribe("early").await.unwrap();
        // A RESP2 subscriber swaps at every renewal (14 s + its spread).
        let mut pubsub = PubSub::new(tls_client(&emulator, false), provider).await.unwrap();
        pubsub.subscribe("early").await.unwrap();
        emulator.set_faults(Faults::new().fail_reauth(1_000_000)).unwrap();
        // New connections are held 1 s before their handshake: the window in which a
        // subscription is confirmed on the old connection only.
        emulator
            .set_faults(Faults::new().hold_handshakes(Duration::from_secs(1)))
            .unwrap();
        let (sink, mut stream) = pubsub.split();
        let mut sink_for_swap = sink.clone();
        assert!(
            eventually(Duration::from_secs(20), || sink.stats().swaps == 1).await,
            "the RESP2 subscriber started its swap: {:?}",
            sink.stats()
        );
        sink_for_swap.subscribe("late").await.unwrap();
        assert!(
            eventually(Duration::from_secs(10), || manager.stats().replacements == 1).await,
            "the manager started its replacement: {:?}",
            manager.stats()
        );
        manager.subscribe("late").await.unwrap();
        // Both new connections took over, then "late" is published.
        assert!(eventually(Duration::from_secs(5), || manager.stats().connections_opened == 2).await);
        assert!(eventually(Duration::from_secs(5), || sink.stats().connections_opened == 2).await);
        emulator.set_faults(Faults::reset()).unwrap();
        let mut publisher = publisher(&emulator).await;
        let _: u64 = redis::cmd("PUBLISH")
            .arg("late")
            .arg("x")
            .query_async(&mut publisher)
            .await
            .unwrap();
        let manager_got_it = push_on(&mut pushes, "late", Duration::from_secs(3)).await;
        let mut pubsub_got_it = false;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
            if msg.get_channel_name() == "late" {
                pubsub_got_it = true;
                break;
            }
        }
        eprintln!(
            "change during a swap: manager {:?} got it {manager_got_it}; pubsub {:?} got it {pubsub_got_it}",
            manager.stats(),
            sink.stats()
        );
        assert!(manager_got_it, "the manager's new connection is subscribed to \"late\"");
        assert!(
            pubsub_got_it,
            "the subscriber's new connection is subscribed to \"late\""
        );
        assert_eq!(stat(&emulator, "cut_connections"), 0);
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_server_refuses_never_breaks_a_later_connection() {
    watchdog(Duration::from_secs(90), async {
        let emulator = emulator(Duration::from_secs(60), None).await;
        let provider = started(secret_provider(&emulator), quick_retries());
        // On RESP2 a manager cannot subscribe: refused up front, nothing recorded.
        let mut resp2 = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
            .await
            .unwrap();
        let refused = resp2.subscribe("x").await.unwrap_err();
        assert_eq!(refused.kind(), redis::ErrorKind::InvalidClientConfig, "{refused}");
        assert!(refused.to_string().contains("protocol=resp3"), "{refused}");
        // A RESP2 subscriber and a RESP3 manager, each on "ok-1" and "news".
        let mut pubsub = PubSub::new(tls_client(&emulator, false), provider.clone())
            .await
            .unwrap();
        pubsub.subscribe(&["ok-1", "news"]).await.unwrap();
        let (tx, mut pushes) = mpsc::unbounded_channel();
        let mut resp3 = ConnectionManager::new_with_config(
            tls_client(&emulator, true),
            provider,
            ConnectionConfig::new().set_push_sender(tx),
        )
        .await
        .unwrap();
        resp3.subscribe(&["ok-1", "news"]).await.unwrap();
        // The server's access policy stops allowing "news": Redis disconnects the
        // clients subscribed to it, and refuses it when they subscribe again.
        let mut admin = publisher(&emulator).await;
        let () = redis::cmd("ACL")
            .arg(&["SETUSER", "default", "resetchannels", "&ok-*"])
            .query_async(&mut admin)
            .await
            .unwrap();
        let (sink, mut stream) = pubsub.split();
        assert!(
            eventually(Duration::from_secs(10), || sink.stats().subscriptions_refused == 1
                && resp3.stats().subscriptions_refused == 1)
            .await,
            "the refused channel left each record: {:?} {:?}",
            sink.stats(),
            resp3.stats()
        );
        // Every later connection works, with the channels still allowed.
        let _: u64 = redis::cmd("PUBLISH")
            .arg("ok-1")
            .arg("still here")
            .query_async(&mut admin)
            .await
            .unwrap();
        let mut pubsub_got_it = false;
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
            if msg.get_channel_name() == "ok-1" {
                pubsub_got_it = true;
                break;
            }
        }
        assert!(pubsub_got_it, "{:?}", sink.stats());
        assert!(push_on(&mut pushes, "ok-1", Duration::from_secs(3)).await);
        // A server-side kill of every client: each reconnects and serves commands.
        let _: RedisResult<u64> = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal"])
            .query_async(&mut admin)
            .await;
        let mut back = false;
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        while !back && tokio::time::Instant::now() < end {
            let a: RedisResult<()> = redis::cmd("SET").arg("a").arg(1).query_async(&mut resp2).await;
            let b: RedisResult<()> = redis::cmd("SET").arg("b").arg(1).query_async(&mut resp3).await;
            back = a.is_ok() && b.is_ok();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "refused subscription: pubsub {:?}, manager {:?}",
            sink.stats(),
            resp3.stats()
        );
        assert!(back, "both managers serve commands after the kill");
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_transaction_is_never_split_by_a_renewal() {
    watchdog(Duration::from_secs(90), async {
        // 6 s tokens renewed every 4.2 s; the gateway follows MULTI/EXEC, so an AUTH
        // queued in a transaction would not renew the connection (as the server does).
        let emulator = emulator(Duration::from_secs(6), None).await;
        let provider = started(secret_provider(&emulator), quick_retries());
        let client = tls_client(&emulator, false);
        let report = tokio::task::spawn_blocking(move || {
            let mut connection = redis_entraid::Connection::new(client, provider).unwrap();
            let (mut ran, mut failed, mut wrong) = (0u32, 0u32, Vec::new());
            let end = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < end {
                let exec: RedisResult<Vec<redis::Value>> = (|| {
                    redis::cmd("MULTI").query::<()>(&mut connection)?;
                    redis::cmd("INCR").arg("t").query::<()>(&mut connection)?;
                    std::thread::sleep(Duration::from_millis(250));
                    redis::cmd("INCR").arg("t").query::<()>(&mut connection)?;
                    redis::cmd("EXEC").query(&mut connection)
                })();
                match exec {
                    Ok(replies) if replies.len() == 2 => ran += 1,
                    Ok(replies) => wrong.push(replies),
                    Err(_) => failed += 1,
                }
            }
            (ran, failed, wrong)
        })
        .await
        .unwrap();
        let (ran, failed, wrong) = report;
        eprintln!(
            "transactions across renewals: {ran} ran, {failed} failed, {} with other replies; emulator {}",
            wrong.len(),
            emulator.stats().to_json()
        );
        assert!(wrong.is_empty(), "an EXEC answered other replies: {wrong:?}");
        assert_eq!(failed, 0);
        assert!(ran >= 40, "{ran}");
        assert!(stat(&emulator, "reauthentications") >= 3, "renewals went through");
        assert_eq!(stat(&emulator, "cut_connections"), 0);
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_lost_in_a_swap_fails_its_transaction() {
    watchdog(Duration::from_secs(60), async {
        let emulator = emulator(Duration::from_secs(4), None).await;
        let provider = started(secret_provider(&emulator), quick_retries());
        let client = tls_client(&emulator, false);
        let mut other = publisher(&emulator).await;
        let mut connection = tokio::task::spawn_blocking(move || {
            let mut connection = redis_entraid::Connection::new(client, provider).unwrap();
            let () = redis::cmd("SET").arg("k").arg("mine").query(&mut connection).unwrap();
            let () = redis::cmd("WATCH").arg("k").query(&mut connection).unwrap();
            // Idle past the token: the next command goes to a new connection.
            std::thread::sleep(Duration::from_secs(5));
            connection
        })
        .await
        .unwrap();
        let () = redis::cmd("SET")
            .arg("k")
            .arg("theirs")
            .query_async(&mut other)
            .await
            .unwrap();
        let (multi, value) = tokio::task::spawn_blocking(move || {
            let multi: RedisResult<()> = redis::cmd("MULTI").query(&mut connection);
            // What an application would send next, were MULTI not refused.
            let value: String = redis::cmd("GET").arg("k").query(&mut connection).unwrap();
            (multi, value)
        })
        .await
        .unwrap();
        let error = multi.unwrap_err();
        assert!(error.to_string().contains("WATCH lost"), "{error}");
        assert_eq!(value, "theirs", "the other client's write stands");
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_is_carried_to_every_new_connection_or_refused_up_front() {
    watchdog(Duration::from_secs(60), async {
        let emulator = emulator(Duration::from_secs(4), None).await;
        let provider = started(secret_provider(&emulator), quick_retries());
        let client = tls_client(&emulator, false);
        let sync_provider = provider.clone();
        // The sync connection: SELECT refused with the alternative; the client name set
        // once, then found again after idling past the token (a new connection).
        let (select, name) = tokio::task::spawn_blocking(move || {
            let mut connection = redis_entraid::Connection::new(client, sync_provider).unwrap();
            let select: RedisResult<()> = redis::cmd("SELECT").arg(5).query(&mut connection);
            let () = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg("sync-app")
                .query(&mut connection)
                .unwrap();
            std::thread::sleep(Duration::from_secs(5));
            let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut connection).unwrap();
            (select, name)
        })
        .await
        .unwrap();
        let select = select.unwrap_err();
        assert!(select.to_string().contains("URL"), "{select}");
        assert_eq!(name, "sync-app");
        assert!(stat(&emulator, "authentications") >= 2, "a new connection was opened");

        // The manager: the same, across a server-side kill; a transaction as one
        // pipeline works, MULTI alone is refused.
        let mut manager = ConnectionManager::new(tls_client(&emulator, false), provider)
            .await
            .unwrap();
        let select: RedisResult<()> = redis::cmd("SELECT").arg(5).query_async(&mut manager).await;
        assert!(select.is_err());
        let multi: RedisResult<()> = redis::cmd("MULTI").query_async(&mut manager).await;
        assert!(multi.unwrap_err().to_string().contains("atomic"));
        let (a, b): (i64, i64) = redis::pipe()
            .atomic()
            .incr("p", 1)
            .incr("p", 1)
            .query_async(&mut manager)
            .await
            .unwrap();
        assert_eq!(b, a + 1);
        let () = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("async-app")
            .query_async(&mut manager)
            .await
            .unwrap();
        let mut admin = publisher(&emulator).await;
        let _: RedisResult<u64> = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal"])
            .query_async(&mut admin)
            .await;
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        let name = loop {
            let name: RedisResult<String> = redis::cmd("CLIENT").arg("GETNAME").query_async(&mut manager).await;
            match name {
                Ok(name) => break name,
                Err(error) => assert!(tokio::time::Instant::now() < end, "{error}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(name, "async-app");
        assert!(manager.stats().connections_lost >= 1, "{:?}", manager.stats());
        emulator.stop().await;
    })
    .await;
}

/// Runs `CLIENT KILL TYPE normal` (every client connection closed by the server, as at
/// a failover or the end of a maintenance window) through a connection of its own.
async fn kill_every_connection(emulator: &entraid_emulator::Emulator) {
    let mut admin = publisher(emulator).await;
    let _: RedisResult<u64> = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"])
        .query_async(&mut admin)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_the_server_refuses_inside_a_pipeline_is_never_replayed() {
    watchdog(Duration::from_secs(60), async {
        let emulator = emulator(Duration::from_secs(30), None).await;
        let provider = started(secret_provider(&emulator), quick_retries());
        // A client name with a space is refused; beneath the pipeline's error, the
        // connection answers `Ok` with the server's error inside (what we see).
        let bad_name = || {
            redis::pipe()
                .cmd("CLIENT")
                .arg("SETNAME")
                .arg("has space")
                .cmd("PING")
                .clone()
        };

        let mut manager = ConnectionManager::new(tls_client(&emulator, false), provider.clone())
            .await
            .unwrap();
        let refused: RedisResult<Vec<redis::Value>> = bad_name().query_async(&mut manager).await;
        assert!(refused.is_err_and(|e| e.to_string().contains("names cannot contain spaces")));
        let client = tls_client(&emulator, false);
        let sync_provider = provider.clone();
        let sync = tokio::task::spawn_blocking(move || {
            let mut connection = redis_entraid::Connection::new(client, sync_provider).unwrap();
            let refused: RedisResult<Vec<redis::Value>> = bad_name().query(&mut connection);
            assert!(refused.is_err_and(|e| e.to_string().contains("names cannot contain spaces")));
            connection
        })
        .await
        .unwrap();

        kill_every_connection(&emulator).await;
        // Every reconnect would replay the refused name and fail, if it were recorded.
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut failed = 0;
        let mut answered = 0;
        while tokio::time::Instant::now() < end && answered < 20 {
            match redis::cmd("PING").query_async::<String>(&mut manager).await {
                Ok(_) => answered += 1,
                Err(_) => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stats = manager.stats();
        eprintln!("after the kill: {answered} PINGs answered, {failed} failed; {stats:?}");
        assert_eq!(answered, 20, "the manager reconnects: {failed} failed, {stats:?}");
        assert_eq!(stats.connect_failures, 0, "{stats:?}");
        assert_eq!(stats.settings_refused, 0, "nothing refused was recorded");
        let (sync_ok, sync_stats) = tokio::task::spawn_blocking(move || {
            let mut connection = sync;
            let ok = (0..20)
                .filter(|_| redis::cmd("PING").query::<String>(&mut connection).is_ok())
                .count();
            (ok, connection.stats())
        })
        .await
        .unwrap();
        eprintln!("sync after the kill: {sync_ok} of 20 PINGs answered; {sync_stats:?}");
        // The first may meet the killed socket; every one after it reconnects and works.
        assert!(sync_ok >= 19, "{sync_ok} of 20; {sync_stats:?}");
        assert_eq!(sync_stats.connect_failures, 0, "{sync_stats:?}");
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_transaction_the_server_aborts_holds_no_renewal_back() {
    watchdog(Duration::from_secs(60), async {
        // 4 s tokens: renewals every 2.8 s, the replace margin 0.4 s before expiry.
        let emulator = emulator(Duration::from_secs(4), None).await;
        let provider = started(secret_provider(&emulator), exact_renewals());
        let client = tls_client(&emulator, false);
        let (failed, stats) = tokio::task::spawn_blocking(move || {
            let mut connection = redis_entraid::Connection::new(client, provider).unwrap();
            // A command with the wrong arity is queued as an error: EXEC answers EXECABORT.
            redis::cmd("MULTI").query::<()>(&mut connection).unwrap();
            let _: RedisResult<()> = redis::cmd("SET").arg("only-a-key").query(&mut connection);
            let exec: RedisResult<redis::Value> = redis::cmd("EXEC").query(&mut connection);
            assert!(
                exec.is_err() || matches!(exec, Ok(redis::Value::ServerError(_))),
                "{exec:?}"
            );
            // Two token lives of commands: a transaction left open in our record would
            // hold the renewal to the margin, then abort it and fail what follows.
            let mut failed = Vec::new();
            let end = std::time::Instant::now() + Duration::from_secs(9);
            while std::time::Instant::now() < end {
                if let Err(error) = redis::cmd("PING").query::<String>(&mut connection) {
                    failed.push(error.to_string());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (failed, connection.stats())
        })
        .await
        .unwrap();
        eprintln!("after EXECABORT: {} failed; {stats:?}", failed.len());
        assert!(failed.is_empty(), "{failed:?}");
        assert!(stats.reauthentications >= 2, "renewals sent in place: {stats:?}");
        assert_eq!(stats.replacements, 0, "{stats:?}");
        assert_eq!(stat(&emulator, "cut_connections"), 0);
        emulator.stop().await;
    })
    .await;
}
