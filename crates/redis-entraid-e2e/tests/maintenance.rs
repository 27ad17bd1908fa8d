//! Maintenance notifications end to end: the gateway announces `MOVING` or `MIGRATING`
//! (as Redis Enterprise does) to every connection that opted in, and closes a moved
//! connection when the announced time is up. `aio::ConnectionManager` on RESP3 moves
//! before that, authenticated with the current token, and relaxes its command timeouts
//! through a migration; under load on 6 s tokens, no command fails and the server cuts
//! nothing.

mod support;

use std::time::Duration;

use entraid_emulator::{Emulator, Faults, Maintenance};
use redis_entraid::aio::{ConnectionManager, ConnectionManagerConfig};
use redis_entraid::{EntraIdCredentialsProvider, MaintenanceNotifications};
use support::{emulator, exact_renewals, load, secret_provider, stall_server, started, stat, tls_client, watchdog};

/// Tokens of a few seconds, so every run crosses renewals too.
const LIFETIME: Duration = Duration::from_secs(6);

async fn start_manager(
    emulator: &Emulator,
    config: ConnectionManagerConfig,
) -> (ConnectionManager, EntraIdCredentialsProvider) {
    let provider = started(secret_provider(emulator), exact_renewals());
    let manager = ConnectionManager::new_with_config(tls_client(emulator, true), provider.clone(), config)
        .await
        .unwrap();
    (manager, provider)
}

fn handoff_stat(emulator: &Emulator, name: &str) -> u64 {
    emulator.handoff_stats().unwrap().to_json()[name].as_u64().unwrap()
}

/// Load for `for_`, with `maintenance` announced `after` into it: (ok, failed, errors).
async fn load_through(
    emulator: &Emulator,
    manager: &ConnectionManager,
    after: Duration,
    maintenance: Maintenance,
    for_: Duration,
) -> (u64, u64, Vec<String>) {
    let traffic = tokio::spawn(load(manager.clone(), 8, for_));
    tokio::time::sleep(after).await;
    emulator.set_faults(Faults::new().maintenance(maintenance)).unwrap();
    traffic.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_with_an_endpoint_is_a_handoff_before_the_server_closes_the_connection() {
    watchdog(Duration::from_secs(90), async {
        let emulator = emulator(LIFETIME, None).await;
        let (manager, provider) = start_manager(&emulator, ConnectionManagerConfig::new()).await;
        assert_eq!(stat(&emulator, "maintenance_opt_ins"), 1, "the connection opted in");
        // The control: the same manager without notifications, as a client that ignores
        // the pushes (redis's own ConnectionManager) meets the move.
        let (control, _control_provider) = start_manager(
            &emulator,
            ConnectionManagerConfig::new().set_maintenance_notifications(MaintenanceNotifications::Disabled),
        )
        .await;
        let control_traffic = tokio::spawn(load(control.clone(), 8, Duration::from_secs(14)));
        // The window (4 s) is shorter than a token: the move must not wait for a renewal.
        let moving = Maintenance::Moving {
            time: Duration::from_secs(4),
            endpoint: true,
        };
        let (ok, failed, errors) = load_through(&emulator, &manager, Duration::from_secs(1), moving, Duration::from_secs(14)).await;
        let (control_ok, control_failed, control_errors) = control_traffic.await.unwrap();
        let stats = manager.stats();
        eprintln!(
            "MOVING to the second gateway under load: {ok} ok, {failed} failed {errors:?}; {stats:?}; \
             without notifications: {control_ok} ok, {control_failed} failed {control_errors:?}, {:?}; emulator {}; second gateway {}",
            control.stats(),
            emulator.stats().to_json(),
            emulator.handoff_stats().unwrap().to_json()
        );
        assert_eq!(failed, 0, "{errors:?}");
        assert_eq!(stats.handoffs, 1);
        assert_eq!(provider.status().connections.handed_off, 1, "in the provider's status too");
        // Only the control's connection was still there when the server moved.
        assert_eq!(stat(&emulator, "moved_connections_closed"), 1, "ours left before the deadline");
        assert_eq!(control.stats().connections_lost, 1, "{:?}", control.stats());
        assert_eq!(stat(&emulator, "cut_connections"), 0);
        // The new connection went to the announced endpoint, authenticated once there,
        // and took the renewals after it.
        assert!(handoff_stat(&emulator, "authentications") >= 1);
        assert!(handoff_stat(&emulator, "reauthentications") >= 1, "renewed on the new endpoint");
        assert!(stats.relaxed_windows >= 1);
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_without_an_endpoint_reconnects_to_the_same_address_in_time() {
    watchdog(Duration::from_secs(90), async {
        let emulator = emulator(LIFETIME, None).await;
        let (manager, _provider) = start_manager(&emulator, ConnectionManagerConfig::new()).await;
        let moving = Maintenance::Moving {
            time: Duration::from_secs(4),
            endpoint: false,
        };
        let (ok, failed, errors) = load_through(
            &emulator,
            &manager,
            Duration::from_secs(1),
            moving,
            Duration::from_secs(10),
        )
        .await;
        let stats = manager.stats();
        eprintln!(
            "MOVING with no endpoint: {ok} ok, {failed} failed {errors:?}; {stats:?}; emulator {}",
            emulator.stats().to_json()
        );
        assert_eq!(failed, 0, "{errors:?}");
        assert_eq!(stats.handoffs, 1);
        assert_eq!(stat(&emulator, "moved_connections_closed"), 0);
        assert_eq!(stat(&emulator, "cut_connections"), 0);
        assert_eq!(
            handoff_stat(&emulator, "connections"),
            0,
            "no endpoint named: the same address"
        );
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_relaxes_timeouts_through_a_server_stall() {
    watchdog(Duration::from_secs(90), async {
        let emulator = support::stallable_emulator(LIFETIME).await;
        // The manager's default 500 ms response timeout: a 3 s stall fails commands,
        // unless a migration announced it.
        let (manager, _provider) = start_manager(&emulator, ConnectionManagerConfig::new()).await;
        // The control: the same manager, its timeouts never relaxed.
        let (control, _control_provider) =
            start_manager(&emulator, ConnectionManagerConfig::new().set_relaxed_timeout(None)).await;
        let control_traffic = tokio::spawn(load(control.clone(), 8, Duration::from_secs(8)));
        let traffic = tokio::spawn(load(manager.clone(), 8, Duration::from_secs(8)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        emulator
            .set_faults(Faults::new().maintenance(Maintenance::Migrating {
                time: Duration::from_secs(5),
            }))
            .unwrap();
        // Let the notification reach the manager before the server stalls.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stall_server(&emulator, 3.0).await;
        let (ok, failed, errors) = traffic.await.unwrap();
        let (control_ok, control_failed, _) = control_traffic.await.unwrap();
        let stats = manager.stats();
        eprintln!(
            "MIGRATING then a 3 s stall: {ok} ok, {failed} failed {errors:?}; {stats:?}; \
             timeouts not relaxed: {control_ok} ok, {control_failed} failed"
        );
        assert_eq!(failed, 0, "{errors:?}");
        assert!(
            control_failed > 0,
            "without relaxing, the stall fails commands (500 ms timeout)"
        );
        assert_eq!(stats.relaxed_windows, 1);
        assert_eq!(
            stats.replacements + stats.unresponsive + stats.connections_lost,
            0,
            "{stats:?}"
        );
        assert!(stat(&emulator, "maintenance_pushes") >= 2, "MIGRATING and MIGRATED");
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_the_opt_in_is_used_without_it_unless_it_is_required() {
    watchdog(Duration::from_secs(60), async {
        let emulator = emulator(LIFETIME, None).await;
        emulator
            .set_faults(Faults::new().reject_maint_notifications(true))
            .unwrap();
        // Auto: the connection works, the feature is off, later connections do not ask.
        let (manager, provider) = start_manager(&emulator, ConnectionManagerConfig::new()).await;
        let (ok, failed, errors) = load(manager.clone(), 4, Duration::from_secs(8)).await;
        let stats = manager.stats();
        assert!(ok > 0 && failed == 0, "{errors:?}");
        assert!(stats.maintenance_refused, "{stats:?}");
        assert_eq!(stat(&emulator, "maintenance_opt_ins"), 0);
        // Enabled: refused up front, saying what to do.
        let error = ConnectionManager::new_with_config(
            tls_client(&emulator, true),
            provider,
            ConnectionManagerConfig::new().set_maintenance_notifications(MaintenanceNotifications::Enabled),
        )
        .await
        .unwrap_err();
        assert!(error.to_string().contains("MaintenanceNotifications::Auto"), "{error}");
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_during_a_renewal_and_one_during_an_identity_outage() {
    watchdog(Duration::from_secs(90), async {
        let emulator = emulator(LIFETIME, None).await;
        let (manager, provider) = start_manager(&emulator, ConnectionManagerConfig::new()).await;
        let traffic = tokio::spawn(load(manager.clone(), 8, Duration::from_secs(16)));
        // At the renewal: the new connection opens with the newest token while the old one
        // re-authenticates.
        tokio::time::sleep_until(support::next_renewal(&provider).await).await;
        let moving = |endpoint| Maintenance::Moving {
            time: Duration::from_secs(3),
            endpoint,
        };
        emulator.set_faults(Faults::new().maintenance(moving(true))).unwrap();
        // Then the identity service stops answering, and the server moves the endpoint
        // again: the handoff (after half of 3 s, to the same address) authenticates with
        // the token in force, renewed just before, and the service is back (3 s later)
        // before that token's own renewal is due (4.2 s after it was issued).
        tokio::time::sleep(Duration::from_millis(500)).await;
        emulator.set_faults(Faults::new().stop_answering(true)).unwrap();
        emulator.set_faults(Faults::new().maintenance(moving(false))).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        emulator.set_faults(Faults::new().stop_answering(false)).unwrap();
        let (ok, failed, errors) = traffic.await.unwrap();
        let stats = manager.stats();
        eprintln!(
            "MOVING at a renewal, then during an identity outage: {ok} ok, {failed} failed {errors:?}; {stats:?}; emulator {}",
            emulator.stats().to_json()
        );
        assert_eq!(failed, 0, "{errors:?}");
        assert_eq!(stats.handoffs, 2);
        assert_eq!(stat(&emulator, "moved_connections_closed"), 0);
        assert_eq!(stat(&emulator, "cut_connections"), 0);
        // Every connection authenticated once, in its handshake: the first, and one per
        // handoff.
        assert_eq!(stats.connections_opened, 3, "{stats:?}");
        emulator.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_never_shortens_a_timeout_nor_adds_one() {
    watchdog(Duration::from_secs(60), async {
        // Long tokens: nothing but the migration happens during the blocking command.
        let emulator = emulator(Duration::from_secs(60), None).await;
        let (mut manager, _provider) =
            start_manager(&emulator, ConnectionManagerConfig::new().set_response_timeout(None)).await;
        emulator
            .set_faults(Faults::new().maintenance(Maintenance::Migrating {
                time: Duration::from_secs(40),
            }))
            .unwrap();
        let relaxed = tokio::time::Instant::now() + Duration::from_secs(5);
        while manager.stats().relaxed_windows == 0 {
            assert!(
                tokio::time::Instant::now() < relaxed,
                "the migration reached the manager"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Longer than the relaxed 10 s: with no response timeout configured, it waits.
        let started = tokio::time::Instant::now();
        let popped: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
            .arg("never-pushed")
            .arg(12)
            .query_async(&mut manager)
            .await;
        let took = started.elapsed();
        eprintln!(
            "BLPOP 12 during MIGRATING: {popped:?} after {took:?}; {:?}",
            manager.stats()
        );
        assert_eq!(popped.unwrap(), None, "the server's own timeout answered it");
        assert!(took >= Duration::from_secs(11), "{took:?}");
        emulator.stop().await;
    })
    .await;
}
