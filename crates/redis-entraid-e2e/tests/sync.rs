//! End to end through the emulator: `redis_entraid::Connection` (synchronous, no
//! runtime of the caller's) and its r2d2 pool stay authenticated across rotations,
//! refused `AUTH`s, idle periods longer than a token and identity outages.

use std::thread;
use std::time::{Duration, Instant, SystemTime};

use entraid_emulator::{Emulator, EmulatorConfig, Faults};
use redis::{Commands, RedisResult};
use redis_entraid::{Connection, EntraIdCredentialsProvider, TokenManagerConfig};

mod support;
use support::{secret_provider, stat, tls_client};

/// The emulator on a runtime of its own: the code under test is synchronous.
struct Harness {
    runtime: tokio::runtime::Runtime,
    emulator: Option<Emulator>,
}

impl Harness {
    fn start(lifetime: Duration) -> Harness {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let emulator = runtime
            .block_on(Emulator::start(EmulatorConfig::new().token_lifetime(lifetime)))
            .expect("the emulator starts (redis-server on PATH)");
        Harness {
            runtime,
            emulator: Some(emulator),
        }
    }

    fn emulator(&self) -> &Emulator {
        self.emulator.as_ref().unwrap()
    }

    /// A provider started outside any runtime: its manager runs on a thread of its own.
    fn provider(&self, config: TokenManagerConfig) -> EntraIdCredentialsProvider {
        let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(secret_provider(self.emulator()));
        provider.try_start_with_config(config).unwrap();
        provider
    }

    fn connection(&self, provider: &EntraIdCredentialsProvider) -> Connection {
        Connection::new(tls_client(self.emulator(), false), provider.clone()).unwrap()
    }

    fn stat(&self, name: &str) -> u64 {
        stat(self.emulator(), name)
    }

    fn faults(&self, faults: Faults) {
        self.emulator().set_faults(faults).unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(emulator) = self.emulator.take() {
            self.runtime.block_on(emulator.stop());
        }
    }
}

/// SET/GET back to back on one thread for `duration`: (ok, failed, first errors).
fn load(connection: &mut impl redis::ConnectionLike, duration: Duration) -> (u64, u64, Vec<String>) {
    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
    let end = Instant::now() + duration;
    let mut i = 0u64;
    while Instant::now() < end {
        i += 1;
        let set: RedisResult<()> = connection.set("sync", i);
        let get: RedisResult<u64> = connection.get("sync");
        for result in [set.map(drop), get.map(drop)] {
            match result {
                Ok(()) => ok += 1,
                Err(error) => {
                    failed += 1;
                    if errors.len() < 3 {
                        errors.push(error.to_string());
                    }
                }
            }
        }
    }
    (ok, failed, errors)
}

#[test]
fn a_busy_sync_connection_reauthenticates_at_every_rotation_without_a_cut() {
    let harness = Harness::start(Duration::from_secs(4));
    let provider = harness.provider(TokenManagerConfig::default());
    let mut connection = harness.connection(&provider);
    let (ok, failed, errors) = load(&mut connection, Duration::from_secs(12));
    eprintln!(
        "sync busy: {ok} ok, {failed} failed, emulator {}",
        harness.emulator().stats().to_json()
    );
    assert_eq!(failed, 0, "{errors:?}");
    assert!(ok > 1000);
    assert_eq!(harness.stat("cut_connections"), 0);
    assert!(
        harness.stat("reauthentications") >= 3,
        "rotations at 2.8 s, 5.6 s, 8.4 s"
    );
    assert_eq!(harness.stat("authentications"), 1, "one connection all along");
    let status = provider.status();
    assert_eq!(status.connections.live, 1, "{status:?}");
    assert_eq!(status.connections.reauthenticated_on_latest_renewal, 1, "{status:?}");
    drop(connection);
    assert_eq!(
        provider.status().connections.live,
        0,
        "a dropped connection is no longer counted"
    );
}

#[test]
fn refused_reauthentications_replace_a_sync_connection_before_its_token_expires() {
    let harness = Harness::start(Duration::from_secs(4));
    let provider = harness.provider(TokenManagerConfig::default());
    let mut connection = harness.connection(&provider);
    harness.faults(Faults::new().fail_reauth(1_000_000));
    let (ok, failed, errors) = load(&mut connection, Duration::from_secs(10));
    eprintln!(
        "sync refused AUTH: {ok} ok, {failed} failed, emulator {}",
        harness.emulator().stats().to_json()
    );
    assert_eq!(failed, 0, "{errors:?}");
    assert_eq!(harness.stat("cut_connections"), 0);
    assert!(harness.stat("authentications") >= 3, "replaced at each rotation");
    let status = provider.status();
    assert!(status.connections.replaced >= 2, "{status:?}");
    assert_eq!(status.connections.live, 1, "{status:?}");
}

#[test]
fn an_idle_sync_connection_reconnects_before_its_next_command() {
    // Nothing runs while it is idle, so the server closes it when its token expires;
    // the next command finds its token expired and reconnects first: nothing fails.
    let harness = Harness::start(Duration::from_secs(2));
    let provider = harness.provider(TokenManagerConfig::default());
    let mut connection = harness.connection(&provider);
    let () = connection.set("idle", 1).unwrap();
    for round in 2..5 {
        thread::sleep(Duration::from_millis(3500));
        let () = connection.set("idle", round).unwrap();
        let value: u64 = connection.get("idle").unwrap();
        assert_eq!(value, round);
    }
    assert_eq!(
        harness.stat("authentications"),
        4,
        "a new connection after each idle period"
    );
}

#[test]
fn a_sync_connection_fails_fast_without_a_token_and_recovers_by_itself() {
    let harness = Harness::start(Duration::from_secs(3));
    let provider = harness.provider({
        let mut config = TokenManagerConfig::default();
        config.token_request_timeout = Duration::from_secs(1);
        config.retry.initial_delay = Duration::from_millis(100);
        config.retry.max_delay = Duration::from_millis(200);
        config
    });
    let mut connection = harness.connection(&provider);
    let token = provider.current_token().unwrap();
    harness.faults(Faults::new().stop_answering(true));
    thread::sleep(token.expires_at().duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(2));
    let started = Instant::now();
    let error = connection.get::<_, Option<u64>>("x").unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert!(error.to_string().contains("no valid Entra ID token"), "{error}");
    harness.faults(Faults::reset());
    let back = Instant::now();
    while provider.current_token().is_none() {
        assert!(back.elapsed() < Duration::from_secs(10), "a token within 10 s");
        thread::sleep(Duration::from_millis(50));
    }
    let pong: String = redis::cmd("PING").query(&mut connection).unwrap();
    assert_eq!(pong, "PONG");
    // It sat idle through the outage, so the server closed it at its token's expiry (no
    // thread runs between commands); what matters is that no command met that.
    assert_eq!(harness.stat("cut_connections"), 1);
}

#[test]
fn an_r2d2_pool_used_from_four_threads_stays_authenticated() {
    let harness = Harness::start(Duration::from_secs(4));
    let provider = harness.provider(TokenManagerConfig::default());
    let pool = r2d2::Pool::builder()
        .max_size(4)
        .test_on_check_out(false)
        .build(redis_entraid::r2d2::EntraIdConnectionManager::new(
            tls_client(harness.emulator(), false),
            provider,
        ))
        .unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                let end = Instant::now() + Duration::from_secs(10);
                while Instant::now() < end {
                    let mut connection = pool.get().unwrap();
                    let (o, f, errors) = load(&mut *connection, Duration::from_millis(200));
                    assert!(errors.is_empty(), "{errors:?}");
                    ok += o;
                    failed += f;
                }
                (ok, failed)
            })
        })
        .collect();
    let (ok, failed) = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    eprintln!(
        "r2d2: {ok} ok, {failed} failed, emulator {}",
        harness.emulator().stats().to_json()
    );
    assert_eq!(failed, 0);
    assert_eq!(harness.stat("cut_connections"), 0);
    assert!(harness.stat("reauthentications") >= 4 * 2);
}
