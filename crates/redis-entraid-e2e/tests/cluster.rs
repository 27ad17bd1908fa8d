//! End to end through the emulator in cluster mode, as Azure Managed Redis enforces the
//! OSS cluster policy: each shard behind an endpoint of its own, each shard connection
//! authenticated, and cut at its token's expiry, on its own. Tokens live a few seconds.

use std::time::{Duration, SystemTime};

use entraid_emulator::{Emulator, EmulatorConfig};
use entraid_identity::IdentityProvider as _;
use redis::cluster::ClusterClientBuilder;
use redis::{AsyncConnectionConfig, RedisResult, TlsCertificates, Value};
use redis_entraid::TokenManagerConfig;

mod support;
use support::{exact_renewals, next_renewal, secret_provider, started, stat};

const NODES: usize = 3;

async fn cluster(lifetime: Duration) -> Emulator {
    Emulator::start(
        EmulatorConfig::new()
            .token_lifetime(lifetime)
            .cluster_nodes(Some(NODES))
            .redis_args(["--enable-debug-command", "yes"]),
    )
    .await
    .expect("the cluster emulator starts (redis-server 7 on PATH)")
}

/// A cluster client seeded with every gateway, trusting the emulator's CA.
fn builder(emulator: &Emulator) -> ClusterClientBuilder {
    let urls: Vec<String> = emulator
        .nodes()
        .iter()
        .map(|n| format!("rediss://{}", n.gateway_address()))
        .collect();
    ClusterClientBuilder::new(urls).certs(TlsCertificates {
        client_tls: None,
        root_cert: Some(emulator.ca_pem().as_bytes().to_vec()),
    })
}

/// One node's counter, from its gateway's figures.
fn node_stat(emulator: &Emulator, node: usize, name: &str) -> u64 {
    emulator.nodes()[node].stats().to_json()[name].as_u64().unwrap()
}

/// A plain connection to a node's redis-server (behind its gateway): for the test's own
/// stalls and slot moves, as an operator would.
async fn upstream(emulator: &Emulator, node: usize) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{}", emulator.nodes()[node].upstream()))
        .unwrap()
        .get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new().set_response_timeout(None))
        .await
        .unwrap()
}

/// A single (non-cluster) connection through one node's gateway, with a token.
async fn through_gateway(emulator: &Emulator, node: usize) -> redis::aio::MultiplexedConnection {
    let token = secret_provider(emulator).request_token().await.unwrap();
    let client = redis::Client::build_with_tls(
        format!(
            "rediss://{}:{}@{}",
            token.username(),
            token.secret(),
            emulator.nodes()[node].gateway_address()
        ),
        TlsCertificates {
            client_tls: None,
            root_cert: Some(emulator.ca_pem().as_bytes().to_vec()),
        },
    )
    .unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// `GET /stats` from the admin endpoint.
async fn admin_stats(emulator: &Emulator) -> serde_json::Value {
    let body = reqwest::get(format!("{}/stats", emulator.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// The slot ranges a node serves, from its own line of `CLUSTER NODES`.
async fn owned_slots(connection: &mut redis::aio::MultiplexedConnection) -> Vec<(u16, u16)> {
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(connection)
        .await
        .unwrap();
    let myself = nodes.lines().find(|l| l.contains("myself")).unwrap();
    myself
        .split(' ')
        .skip(8)
        .filter(|r| !r.starts_with('['))
        .map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
            None => (r.parse().unwrap(), r.parse().unwrap()),
        })
        .collect()
}

/// `errorstat_<name>` of a node's `INFO errorstats` (how many such errors it replied).
async fn error_count(connection: &mut redis::aio::MultiplexedConnection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("errorstats")
        .query_async(connection)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("errorstat_{name}:count=")))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_naming_a_node_names_its_gateway() {
    let emulator = cluster(Duration::from_secs(60)).await;
    let gateways: Vec<u16> = emulator.nodes().iter().map(|n| n.gateway_port()).collect();
    let upstreams: Vec<String> = emulator.nodes().iter().map(|n| n.upstream().to_owned()).collect();
    let env = emulator.env();
    let listed = env.iter().find(|(k, _)| *k == "REDIS_CLUSTER_NODES").unwrap().1.clone();
    assert_eq!(
        listed,
        gateways
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(support::env(&emulator, "REDIS_PORT"), gateways[0].to_string());
    // The start-up check's connections do not count.
    assert_eq!(stat(&emulator, "connections"), 0);
    assert_eq!(stat(&emulator, "tokens_issued"), 0);

    for node in 0..NODES {
        let mut connection = through_gateway(&emulator, node).await;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains(&format!("cluster_known_nodes:{NODES}")), "{info}");

        // CLUSTER SLOTS: [[first, last, [ip, port, id, …], …], …]
        let slots: Vec<Vec<Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await
            .unwrap();
        let mut covered = 0;
        let mut ports = Vec::new();
        for range in &slots {
            let first: u32 = redis::from_redis_value_ref(&range[0]).unwrap();
            let last: u32 = redis::from_redis_value_ref(&range[1]).unwrap();
            covered += last - first + 1;
            let master: Vec<Value> = redis::from_redis_value_ref(&range[2]).unwrap();
            let ip: String = redis::from_redis_value_ref(&master[0]).unwrap();
            assert_eq!(ip, "127.0.0.1");
            ports.push(redis::from_redis_value_ref::<u16>(&master[1]).unwrap());
        }
        assert_eq!(covered, 16_384, "all slots assigned");
        ports.sort_unstable();
        let mut sorted = gateways.clone();
        sorted.sort_unstable();
        assert_eq!(ports, sorted, "CLUSTER SLOTS names the gateways");

        // CLUSTER SHARDS: each node's "ip" and "port" are its gateway's.
        let shards: Value = redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query_async(&mut connection)
            .await
            .unwrap();
        let text = format!("{shards:?}");
        for port in &gateways {
            assert!(
                text.contains(&format!("int({port})")),
                "CLUSTER SHARDS lacks {port}: {text}"
            );
        }
        for upstream in &upstreams {
            let port = upstream.rsplit_once(':').unwrap().1;
            assert!(
                !text.contains(&format!("int({port})")),
                "CLUSTER SHARDS names a node's own port: {text}"
            );
        }

        // CLUSTER NODES: `ip:port@bus`, the gateway's port; no node's own port anywhere.
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut connection)
            .await
            .unwrap();
        for port in &gateways {
            assert!(nodes.contains(&format!("127.0.0.1:{port}@")), "{nodes}");
        }
        for upstream in &upstreams {
            assert!(!nodes.contains(&format!("{upstream}@")), "{nodes}");
        }
    }
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_client_keeps_every_shard_authenticated_across_rotations() {
    // 4 s tokens, renewed at about 2.8 s: 20 s of load see 6 or 7 rotations, each of
    // which must reach every shard's connection before its token expires.
    let emulator = cluster(Duration::from_secs(4)).await;
    let provider = started(secret_provider(&emulator), TokenManagerConfig::default());
    provider.token().await.unwrap();
    let client = builder(&emulator)
        .set_credentials_provider(provider.clone())
        .build()
        .unwrap();
    let connection = client.get_async_connection().await.unwrap();
    let issued_before = stat(&emulator, "tokens_issued");
    let report = entraid_test_support::set_get_load(connection, 16, Duration::from_secs(20)).await;
    let rotations = stat(&emulator, "tokens_issued") - issued_before;
    // The last renewal's AUTHs go out within a tenth of the token's remaining life.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = admin_stats(&emulator).await;
    eprintln!(
        "cluster: {} ok, {} failed, {rotations} rotations; /stats {stats}",
        report.ok, report.failed
    );
    assert_eq!(report.failed, 0, "{:?}", report.first_errors);
    assert!(report.ok > 1_000, "{}", report.ok);
    assert!(rotations >= 4, "{rotations} rotations in 20 s of 4 s tokens");
    assert_eq!(stats["cut_connections"], 0, "{stats}");
    let nodes = stats["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), NODES);
    for (node, figures) in emulator.nodes().iter().zip(nodes) {
        assert_eq!(figures["gateway"], node.gateway_address());
        assert_eq!(figures["cut_connections"], 0, "{figures}");
        assert_eq!(figures["auth_failures"], 0, "{figures}");
        let reauths = figures["reauthentications"].as_u64().unwrap();
        assert!(
            reauths >= rotations,
            "{}: {reauths} re-authentications for {rotations} rotations",
            node.gateway_address()
        );
    }
    let total: u64 = nodes.iter().map(|n| n["reauthentications"].as_u64().unwrap()).sum();
    assert_eq!(stats["reauthentications"], total, "the total is the nodes' sum");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_connection_authenticated_once_is_cut_at_its_tokens_expiry() {
    // The negative control: the same cluster client with the token as a static password
    // authenticates each shard connection once, and never again.
    let emulator = cluster(Duration::from_secs(3)).await;
    let token = secret_provider(&emulator).request_token().await.unwrap();
    let client = builder(&emulator)
        .username(token.username())
        .password(token.secret())
        .build()
        .unwrap();
    let connection = client.get_async_connection().await.unwrap();
    // The gateway cuts at the token's `exp`, up to a second after `expires_at` (the
    // service rounds `exp` up): load until well past it.
    let past_expiry =
        token.expires_at().duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(1500);
    let during = entraid_test_support::set_get_load(connection.clone(), 8, past_expiry).await;
    for node in 0..NODES {
        assert!(
            node_stat(&emulator, node, "authentications") >= 1,
            "node {node} was used"
        );
        assert!(
            node_stat(&emulator, node, "cut_connections") >= 1,
            "node {node}'s connection was cut at the token's expiry"
        );
        assert_eq!(node_stat(&emulator, node, "reauthentications"), 0);
    }
    // Reconnecting with the same, now expired, token is refused.
    let after = entraid_test_support::set_get_load(connection, 8, Duration::from_secs(2)).await;
    eprintln!(
        "static password: {} ok then {} failed from the cut on ({:?}); after it {} ok, {} failed; emulator {}",
        during.ok,
        during.failed,
        during.first_errors.first(),
        after.ok,
        after.failed,
        emulator.stats().to_json()
    );
    assert!(
        during.ok > 0 && during.failed > 0,
        "{} ok, {} failed",
        during.ok,
        during.failed
    );
    assert!(after.failed > 0, "commands fail once the token has expired");
    assert!(stat(&emulator, "auth_failures") > 0, "the expired token was refused");
    assert_eq!(after.ok, 0, "no command gets through with an expired token");
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_on_one_node_during_a_rotation() {
    // The stall of supervised.rs's case 1 on one shard: its redis-server sleeps 1.5 s from
    // 100 ms before the renewal at 7 s (10 s tokens). Two cluster clients, each with a
    // provider of its own, through it at once: one with the 500 ms `response_timeout` many
    // applications set (in redis 1.8 it is also each shard connection's timeout, its
    // re-auth `AUTH` included), one with a 500 ms `overall_response_timeout` only (per
    // request; the shard connections have none, as by default). The load runs past the expiry
    // of the token renewed during the stall (about 18 s), when the gateway cuts a shard
    // connection whose re-authentication died there.
    let lifetime = Duration::from_secs(10);
    let emulator = cluster(lifetime).await;
    let timed = started(secret_provider(&emulator), exact_renewals());
    let untimed = started(secret_provider(&emulator), exact_renewals());
    let renewal = next_renewal(&timed).await.min(next_renewal(&untimed).await);
    let timed_client = builder(&emulator)
        .set_credentials_provider(timed.clone())
        .response_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let untimed_client = builder(&emulator)
        .set_credentials_provider(untimed.clone())
        .overall_response_timeout(Some(Duration::from_millis(500)))
        .build()
        .unwrap();
    // The loads end at 1.3 lifetimes after the renewal: past the cut of a connection whose
    // re-authentication died in the stall (its token expires one lifetime after the
    // renewal), and inside the only window with no renewal `AUTH` in flight (renewals at
    // 0.7 and 1.4 lifetimes, each spread over the provider's 5 s): dropping a connection
    // while its renewal `AUTH` is in flight counts as a lost re-authentication, which
    // once made the untimed client's count 1 when the loads ended at 1.4 lifetimes.
    let load_end = renewal + lifetime.mul_f64(1.3);
    let load_for = load_end.saturating_duration_since(tokio::time::Instant::now());
    let timed_load = tokio::spawn(entraid_test_support::set_get_load(
        timed_client.get_async_connection().await.unwrap(),
        8,
        load_for,
    ));
    let untimed_load = tokio::spawn(entraid_test_support::set_get_load(
        untimed_client.get_async_connection().await.unwrap(),
        8,
        load_for,
    ));
    const STALLED: usize = 1;
    let mut stalled = upstream(&emulator, STALLED).await;
    tokio::time::sleep_until(renewal - Duration::from_millis(100)).await;
    let stall_end = tokio::time::Instant::now() + Duration::from_millis(1500);
    let _: () = redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg(1.5)
        .query_async(&mut stalled)
        .await
        .unwrap();
    let connections_before = node_stat(&emulator, STALLED, "connections");
    // When the gateway cuts a connection of the stalled node, if it does, and how many
    // connections that node had by then.
    let mut cut_at = None;
    let mut connections_after_stall = None;
    while tokio::time::Instant::now() < load_end && !timed_load.is_finished() {
        let now = tokio::time::Instant::now();
        if connections_after_stall.is_none() && now > stall_end + Duration::from_millis(500) {
            connections_after_stall = Some(node_stat(&emulator, STALLED, "connections"));
        }
        if cut_at.is_none() && node_stat(&emulator, STALLED, "cut_connections") > 0 {
            cut_at = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let timed_report = timed_load.await.unwrap();
    let untimed_report = untimed_load.await.unwrap();
    let since = |at: Option<tokio::time::Instant>| at.map(|at| at.saturating_duration_since(stall_end));
    eprintln!(
        "cluster stall, 500 ms response timeout: {} ok, {} failed (last {:?} after the stall end; {:?}), {} lost re-authentication(s); \
         500 ms overall timeout only: {} ok, {} failed (last {:?} after the stall end; {:?}), {} lost; stalled node cut {:?} after the stall end; \
         its gateway's connections: {connections_before} before the stall, {connections_after_stall:?} after it; /stats {}",
        timed_report.ok,
        timed_report.failed,
        since(timed_report.last_failure_at),
        timed_report.first_errors.first(),
        timed.lost_reauthentications(),
        untimed_report.ok,
        untimed_report.failed,
        since(untimed_report.last_failure_at),
        untimed_report.first_errors.first(),
        untimed.lost_reauthentications(),
        since(cut_at),
        admin_stats(&emulator).await
    );
    // Without a shard connection timeout the re-authentication waits out the stall:
    // nothing lost; the requests to the stalled node still time out, during the stall only.
    assert_eq!(untimed.lost_reauthentications(), 0);
    if let Some(last) = untimed_report.last_failure_at {
        assert!(
            last <= stall_end + Duration::from_millis(700),
            "{:?}",
            untimed_report.first_errors
        );
    }
    // Other nodes are untouched whatever the client.
    for node in (0..NODES).filter(|&n| n != STALLED) {
        assert_eq!(node_stat(&emulator, node, "cut_connections"), 0, "node {node}");
    }
    // With the 500 ms timeout, the AUTH sent during the stall times out and redis's re-auth
    // task for that shard connection ends: the gateway cuts the connection when the token
    // it had expires, and the cluster client reconnects with fresh credentials.
    let lost = timed.lost_reauthentications();
    assert_eq!(
        node_stat(&emulator, STALLED, "cut_connections"),
        lost,
        "one cut per lost re-authentication"
    );
    assert!(lost <= 1, "only the stalled node's connection of that client: {lost}");
    // Commands fail during the stall (timed out) and, at worst, at the documented cut:
    // the cluster client usually retries what was in flight on a new connection, but a
    // command caught on the cut connection may fail (seen under CPU load). Never anywhere
    // else.
    if let Some(last) = timed_report.last_failure_at {
        let at_the_cut =
            cut_at.is_some_and(|cut| last >= cut - Duration::from_millis(500) && last <= cut + Duration::from_secs(1));
        assert!(
            last <= stall_end + Duration::from_millis(700) || at_the_cut,
            "a command failed {:?} after the stall, not at the cut ({:?}): {:?}",
            last - stall_end,
            since(cut_at),
            timed_report.first_errors
        );
    }
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_between_nodes_mid_run_is_followed_through_the_gateways() {
    // 5 s tokens, so the move happens across rotations. Keys `{tag}:n` share one slot,
    // which moves from its owner to the next node while they are written and read:
    // MIGRATING/IMPORTING (new keys are asked for on the target: -ASK), MIGRATE of the
    // existing keys, then the slot given to the target (-MOVED from the old owner).
    //
    // The moving keys have a cluster client of their own, used by one task: redis's async
    // cluster client follows -ASK by sending ASKING and then the command as two requests
    // on the shared multiplexed connection, so with concurrent tasks another command can
    // take the ASKING; the command then bounces between the nodes until its retries run
    // out (measured: 9 of 5 949 such commands failed with 8 other tasks sharing the
    // client). For the same reason the background load's keys avoid the moving slot.
    let emulator = cluster(Duration::from_secs(5)).await;
    let provider = started(secret_provider(&emulator), TokenManagerConfig::default());
    let client = builder(&emulator)
        .set_credentials_provider(provider.clone())
        .build()
        .unwrap();
    let connection = client.get_async_connection().await.unwrap();
    let mut moving_connection = builder(&emulator)
        .set_credentials_provider(provider.clone())
        .build()
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();

    let mut admins = Vec::new();
    for node in 0..NODES {
        admins.push(upstream(&emulator, node).await);
    }
    const LOAD_TASKS: usize = 8;
    let mut keyslots = redis::pipe();
    for task in 0..LOAD_TASKS {
        for i in 0..97 {
            keyslots.cmd("CLUSTER").arg("KEYSLOT").arg(format!("load:{task}:{i}"));
        }
    }
    let used: Vec<u16> = keyslots.query_async(&mut admins[0]).await.unwrap();
    let mut tag = String::new();
    let mut slot = 0u16;
    for n in 0.. {
        tag = format!("{{moving-{n}}}");
        slot = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&tag)
            .query_async(&mut admins[0])
            .await
            .unwrap();
        if !used.contains(&slot) {
            break;
        }
    }
    let mut source = None;
    for (node, admin) in admins.iter_mut().enumerate() {
        if owned_slots(admin).await.iter().any(|&(a, b)| (a..=b).contains(&slot)) {
            source = Some(node);
        }
    }
    let source = source.expect("a node owns the slot");
    let target = (source + 1) % NODES;
    let id = |node: usize| emulator.nodes()[node].id().unwrap().to_owned();

    // The background load across all slots, and the keys of the moving slot.
    let load = tokio::spawn(entraid_test_support::set_get_load(
        connection,
        LOAD_TASKS,
        Duration::from_secs(12),
    ));
    let moving = {
        let tag = tag.clone();
        tokio::spawn(async move {
            let connection = &mut moving_connection;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
            let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::new());
            let mut i = 0u64;
            while tokio::time::Instant::now() < deadline {
                i += 1;
                let key = format!("{tag}:{i}");
                let set: RedisResult<()> = redis::cmd("SET").arg(&key).arg(i).query_async(connection).await;
                let get: RedisResult<u64> = redis::cmd("GET").arg(&key).query_async(connection).await;
                // Also an old key, written before the move started.
                let old: RedisResult<Option<u64>> = redis::cmd("GET")
                    .arg(format!("{tag}:{}", i % 50 + 1))
                    .query_async(connection)
                    .await;
                for result in [set.map(drop), get.map(|v| assert_eq!(v, i)), old.map(drop)] {
                    match result {
                        Ok(()) => ok += 1,
                        Err(e) => {
                            failed += 1;
                            if errors.len() < 3 {
                                errors.push(e.to_string());
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, failed, errors)
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    let asks_before = error_count(&mut admins[source], "ASK").await;
    let moved_before = error_count(&mut admins[source], "MOVED").await;
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(id(source))
        .query_async(&mut admins[target])
        .await
        .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(id(target))
        .query_async(&mut admins[source])
        .await
        .unwrap();
    // While migrating, a key the source no longer has is asked for on the target's gateway.
    let mut single = through_gateway(&emulator, source).await;
    let asked: RedisResult<Option<String>> = redis::cmd("GET")
        .arg(format!("{tag}:never-written"))
        .query_async(&mut single)
        .await;
    let error = asked.expect_err("-ASK");
    assert_eq!(
        error.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::Ask),
        "{error}"
    );
    assert_eq!(
        error.redirect_node().map(|(address, _)| address.to_owned()),
        Some(emulator.nodes()[target].gateway_address()),
        "-ASK names the target's gateway: {error}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Move the existing keys, in batches, to the target's own address: nodes talk to each
    // other directly, not through the gateways.
    let (host, port) = emulator.nodes()[target].upstream().split_once(':').unwrap();
    let mut migrated = 0;
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut admins[source])
            .await
            .unwrap();
        if keys.is_empty() {
            break;
        }
        migrated += keys.len();
        let _: () = redis::cmd("MIGRATE")
            .arg(host)
            .arg(port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut admins[source])
            .await
            .unwrap();
    }
    for node in [target, source, (target + 1) % NODES] {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(id(target))
            .query_async(&mut admins[node])
            .await
            .unwrap();
    }
    let moved: RedisResult<Option<String>> = redis::cmd("GET").arg(format!("{tag}:1")).query_async(&mut single).await;
    let error = moved.expect_err("-MOVED");
    assert_eq!(
        error.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::Moved),
        "{error}"
    );
    assert_eq!(
        error.redirect_node().map(|(address, _)| address.to_owned()),
        Some(emulator.nodes()[target].gateway_address()),
        "-MOVED names the target's gateway: {error}"
    );
    // A static-token connection: closed before its token expires, or the gateway cuts it.
    drop(single);

    let (ok, failed, errors) = moving.await.unwrap();
    let report = load.await.unwrap();
    let asks = error_count(&mut admins[source], "ASK").await - asks_before;
    let redirects = error_count(&mut admins[source], "MOVED").await - moved_before;
    let bounced = error_count(&mut admins[target], "MOVED").await;
    eprintln!(
        "moved slot {slot} from node {source} to {target} ({migrated} keys): {ok} ok, {failed} failed {errors:?}; \
         {asks} -ASK and {redirects} -MOVED from the old owner, {bounced} -MOVED from the new; background {} ok, {} failed; emulator {}",
        report.ok,
        report.failed,
        admin_stats(&emulator).await
    );
    assert_eq!(failed, 0, "{errors:?}");
    assert_eq!(report.failed, 0, "{:?}", report.first_errors);
    assert!(migrated > 0);
    assert!(asks >= 2, "the client was asked to the target (ours and the client's)");
    assert!(redirects >= 2, "the client was moved to the target");
    let on_target: u64 = redis::cmd("CLUSTER")
        .arg("COUNTKEYSINSLOT")
        .arg(slot)
        .query_async(&mut admins[target])
        .await
        .unwrap();
    assert!(on_target as usize >= migrated, "{on_target} keys on the target");
    assert!(
        owned_slots(&mut admins[target])
            .await
            .iter()
            .any(|&(a, b)| (a..=b).contains(&slot))
    );
    assert_eq!(stat(&emulator, "cut_connections"), 0);
    assert!(
        stat(&emulator, "reauthentications") >= NODES as u64,
        "rotations happened"
    );
    emulator.stop().await;
}
