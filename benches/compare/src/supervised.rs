//! Figure 8 (a server stall during a rotation) and the supervised manager's rows of
//! figures 3 and 5: `redis_entraid::aio::ConnectionManager` ("A-manager") against redis's
//! `ConnectionManager` with A's provider ("A-redis") and with B's ("B-redis").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;

use crate::AnyError;
use crate::fake::{Gate, Provider, Variant};
use crate::report::{Stall, StallRow};
use crate::server::Server;

/// The three ways of holding a connection this figure compares.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// `redis_entraid::aio::ConnectionManager`.
    AManager,
    /// redis's `ConnectionManager` with redis-entraid's provider.
    ARedis,
    /// redis's `ConnectionManager` with redis-rs's `entra-id` provider.
    BRedis,
}

impl Kind {
    pub(crate) const ALL: [Kind; 3] = [Kind::AManager, Kind::ARedis, Kind::BRedis];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::AManager => "A-manager",
            Kind::ARedis => "A-redis",
            Kind::BRedis => "B-redis",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// A provider for this kind; spread off so every renewal lands in the stall, the worst
    /// case (B has no spread).
    pub(crate) fn provider(self, gate: &Gate) -> Result<Provider, AnyError> {
        match self {
            Kind::AManager | Kind::ARedis => Variant::A { spread: Duration::ZERO }.provider(gate),
            Kind::BRedis => Variant::B.provider(gate),
        }
    }
}

/// One connection of `kind`, as a `ConnectionLike` handle.
#[derive(Clone)]
pub(crate) enum Handle {
    Ours(redis_entraid::aio::ConnectionManager),
    Redis(redis::aio::ConnectionManager),
}

impl Handle {
    pub(crate) async fn open(kind: Kind, server: &Server, provider: &Provider) -> Result<Handle, AnyError> {
        let client = redis::Client::open(server.url())?;
        Ok(match (kind, provider) {
            (Kind::AManager, Provider::A(p)) => {
                Handle::Ours(redis_entraid::aio::ConnectionManager::new(client, p.clone()).await?)
            }
            (_, Provider::A(p)) => Handle::Redis(
                client
                    .get_connection_manager_with_config(
                        redis::aio::ConnectionManagerConfig::new().set_credentials_provider(p.clone()),
                    )
                    .await?,
            ),
            (_, Provider::B(p)) => Handle::Redis(
                client
                    .get_connection_manager_with_config(
                        redis::aio::ConnectionManagerConfig::new().set_credentials_provider(p.clone()),
                    )
                    .await?,
            ),
        })
    }

    async fn set(&mut self, i: u64) -> redis::RedisResult<()> {
        let cmd = redis::cmd("SET").arg("stall").arg(i).to_owned();
        match self {
            Handle::Ours(c) => c.req_packed_command(&cmd).await.map(drop),
            Handle::Redis(c) => c.req_packed_command(&cmd).await.map(drop),
        }
    }
}

/// Figure 8: N connections of each kind under light load; the server sleeps 1.5 s and a
/// rotation is released 100 ms into the sleep. Then: commands that failed after the stall,
/// and how many connections still re-authenticate at the next rotation (the others, Azure
/// would cut at their token's expiry).
pub(crate) async fn stall(server: &Server, n: usize) -> Result<Stall, AnyError> {
    Ok(Stall {
        a_manager: stall_row(server, Kind::AManager, n).await?,
        a_redis: stall_row(server, Kind::ARedis, n).await?,
        b_redis: stall_row(server, Kind::BRedis, n).await?,
    })
}

/// Figure 8 for `n` connections of one kind.
async fn stall_row(server: &Server, kind: Kind, n: usize) -> Result<StallRow, AnyError> {
    let gate = Gate::gated();
    let provider = kind.provider(&gate)?;
    gate.wait_first_token().await;
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        handles.push(Handle::open(kind, server, &provider).await?);
    }
    gate.wait_blocked().await;
    let started = Instant::now();
    let failed_after = Arc::new(AtomicU64::new(0));
    let failed_during = Arc::new(AtomicU64::new(0));
    let stall_end = started + Duration::from_millis(1500);
    // Commands still waiting when the stall ends get their reply within a moment.
    let settled = stall_end + Duration::from_millis(600);
    let end = started + Duration::from_secs(6);
    let load: Vec<_> = handles
        .iter()
        .cloned()
        .map(|mut handle| {
            let (after, during) = (failed_after.clone(), failed_during.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < end {
                    i += 1;
                    if handle.set(i).await.is_err() {
                        let counter = if Instant::now() > settled { &after } else { &during };
                        counter.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    let port = server.port;
    let sleeper = std::thread::spawn(move || {
        let _: redis::RedisResult<()> = Server::attach(port)
            .try_admin()
            .and_then(|mut c| redis::cmd("DEBUG").arg("SLEEP").arg(1.5).query(&mut c));
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.release();
    for task in load {
        task.await?;
    }
    let _ = sleeper.join();
    // The next rotation: which connections still re-authenticate?
    gate.wait_blocked().await;
    let base = server.auth_calls()?;
    gate.release();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reauthenticated = (server.auth_calls()? - base).min(n as u64);
    let row = StallRow {
        n,
        failed_during_stall: failed_during.load(Ordering::Relaxed),
        failed_after_stall: failed_after.load(Ordering::Relaxed),
        still_reauthenticating: reauthenticated,
        would_be_cut: n as u64 - reauthenticated,
    };
    eprintln!("  {}: {row:?}", kind.name());
    drop(handles);
    drop(provider);
    Ok(row)
}

/// Figure 5 for the supervised manager: AUTHs the server runs per new connection.
pub(crate) async fn auths_per_manager(server: &Server) -> Result<f64, AnyError> {
    let gate = Gate::ungated(Duration::from_secs(3600));
    let provider = Variant::A {
        spread: redis_entraid::DEFAULT_REAUTH_SPREAD,
    }
    .provider(&gate)?;
    gate.wait_first_token().await;
    let base = server.auth_calls()?;
    let mut handles = Vec::new();
    for _ in 0..20 {
        handles.push(Handle::open(Kind::AManager, server, &provider).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((server.auth_calls()? - base) as f64 / 20.0)
}
