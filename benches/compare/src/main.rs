//! redis-entraid (A) against redis-rs's built-in `entra-id` provider (B), on the same
//! redis-server and the same fake identity provider, in the same run, with the floors the
//! machine allows. See `cargo xtask bench`.
//!
//! ```text
//! redis-entraid-bench [--quick] [--out DIR]
//! redis-entraid-bench --memory-child VARIANT N PORT   (internal: one memory measurement)
//! ```

mod fake;
mod report;
mod server;
mod stats;
mod supervised;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use fake::{Gate, Variant};
use report::{
    AuthsPerConnection, Fanout, Floors, IdpCalls, Machine, Memory, MemoryRow, Probe, Report, Throughput, ThroughputRow,
};
use server::Server;
use stats::{Summary, client_cpu_ns, rss_bytes};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

struct Plan {
    quick: bool,
    fanout_sizes: Vec<usize>,
    pairs: usize,
    idle_connections: usize,
    memory_connections: usize,
    throughput_secs: u64,
    idp_window_secs: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                fanout_sizes: vec![1_000],
                pairs: 1,
                idle_connections: 1_000,
                memory_connections: 1_000,
                throughput_secs: 3,
                idp_window_secs: 2,
            }
        } else {
            Plan {
                quick,
                fanout_sizes: vec![1_000, 10_000],
                pairs: 5,
                idle_connections: 10_000,
                memory_connections: 10_000,
                throughput_secs: 15,
                idp_window_secs: 10,
            }
        }
    }
}

fn main() -> Result<(), AnyError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--memory-child") {
        return memory_child(&args[1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "target/bench".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(Plan::new(quick), only))?;
    std::fs::create_dir_all(&out)?;
    std::fs::write(format!("{out}/report.json"), serde_json::to_string_pretty(&report)?)?;
    let markdown = report.markdown();
    std::fs::write(format!("{out}/report.md"), &markdown)?;
    println!("{markdown}");
    println!("written: {out}/report.md, {out}/report.json");
    Ok(())
}

async fn run(plan: Plan, only: Option<String>) -> Result<Report, AnyError> {
    let wanted = |figure: &str| only.as_deref().is_none_or(|o| o == figure);
    let server = server::start()?;
    let mut report = Report {
        machine: Machine {
            // The machine's, not this process's: xtask pins the client to one core.
            cores: std::env::var("BENCH_MACHINE_CORES")
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)),
            redis_server: server.version(),
            quick: plan.quick,
            pairs: plan.pairs,
            server_cpus: std::env::var("BENCH_SERVER_CPUS").ok(),
        },
        fanout: None,
        probe: None,
        memory: None,
        throughput: None,
        auths_per_connection: None,
        stall: None,
        idp_calls: None,
    };
    eprintln!("== figure 1 and 7: re-auth fan-out");
    if wanted("fanout") {
        report.fanout = Some(fanout(&server, &plan).await?);
    }
    eprintln!("== figure 2: a rotation and other traffic");
    if wanted("probe") {
        report.probe = Some(probe(&server, &plan).await?);
    }
    eprintln!("== figure 3: memory per connection");
    if wanted("memory") {
        report.memory = Some(memory(&server, &plan)?);
    }
    eprintln!("== figure 4: throughput under rotation");
    if wanted("throughput") {
        report.throughput = Some(throughput(&server, &plan).await?);
    }
    eprintln!("== figure 5: AUTHs per new connection");
    if wanted("auths") {
        report.auths_per_connection = Some(auths_per_connection(&server).await?);
    }
    eprintln!("== figure 8: a server stall during a rotation");
    if wanted("stall") {
        report.stall = Some(supervised::stall(&server, if plan.quick { 20 } else { 200 }).await?);
    }
    eprintln!("== figure 6: identity-provider calls");
    if wanted("idp") {
        report.idp_calls = Some(idp_calls(&plan).await?);
    }
    Ok(report)
}

async fn connect_many(
    server: &Server,
    config: &AsyncConnectionConfig,
    n: usize,
) -> Result<Vec<MultiplexedConnection>, AnyError> {
    let client = redis::Client::open(server.url())?;
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        connections.push(client.get_multiplexed_async_connection_with_config(config).await?);
    }
    Ok(connections)
}

/// Waits (on its own OS thread and connection) until the server ran `n` more AUTHs than
/// `base`; returns how long that took from `from`, and the exact growth a moment later.
fn until_auths(
    server: &Server,
    base: u64,
    n: u64,
    from: Instant,
) -> std::thread::JoinHandle<Result<(Duration, u64), String>> {
    let port = server.port;
    std::thread::spawn(move || {
        let watcher = Server::attach(port);
        let deadline = from + Duration::from_secs(60);
        loop {
            let now = watcher.auth_calls().map_err(|e| e.to_string())?;
            if now >= base + n {
                let took = from.elapsed();
                std::thread::sleep(Duration::from_millis(300));
                let settled = watcher.auth_calls().map_err(|e| e.to_string())?;
                return Ok((took, settled - base));
            }
            if Instant::now() > deadline {
                return Err(format!("only {} of {n} AUTHs after 60 s", now - base));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    })
}

/// One measurement of figure 1: a variant's rotation reaching N connections.
struct FanoutRun {
    took: Duration,
    cpu_us_per_conn: f64,
    /// Identity-provider calls the refresh made.
    idp_calls: u64,
}

/// Figure 1 (and 7): one rotation reaching N live connections.
async fn fanout(server: &Server, plan: &Plan) -> Result<Vec<Fanout>, AnyError> {
    let mut out = Vec::new();
    for &n in &plan.fanout_sizes {
        let (mut a, mut b, mut f1, mut f2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for pair in 0..plan.pairs {
            // A-B, then B-A: neither always runs first.
            let order = if pair % 2 == 0 {
                [Variant::A { spread: Duration::ZERO }, Variant::B]
            } else {
                [Variant::B, Variant::A { spread: Duration::ZERO }]
            };
            for variant in order {
                let gate = Gate::gated();
                let provider = variant.provider(&gate)?;
                gate.wait_first_token().await;
                let config = AsyncConnectionConfig::new().set_connection_timeout(Some(Duration::from_secs(30)));
                let connections = connect_many(server, &provider.configure(config), n).await?;
                gate.wait_blocked().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                // The refresh waiting at the gate serves every connection: count it, and any
                // request made while the rotation reaches the connections.
                let calls_before = gate.calls() - gate.waiting();
                let base = server.auth_calls()?;
                let cpu_before = client_cpu_ns();
                let from = Instant::now();
                let watcher = until_auths(server, base, n as u64, from);
                gate.release();
                let (took, grew) = tokio::task::spawn_blocking(move || watcher.join())
                    .await?
                    .map_err(|_| "watcher panicked")??;
                let cpu = (client_cpu_ns() - cpu_before) as f64 / n as f64 / 1000.0;
                let calls = gate.calls() - calls_before;
                eprintln!(
                    "  N={n} pair {pair} {}: {:.1} ms, {cpu:.1} µs CPU/conn, AUTH +{grew}, {calls} IdP call(s)",
                    variant.name(),
                    took.as_secs_f64() * 1e3
                );
                if grew != n as u64 {
                    eprintln!("  warning: expected exactly +{n} AUTHs, saw +{grew}");
                }
                let run = FanoutRun {
                    took,
                    cpu_us_per_conn: cpu,
                    idp_calls: calls,
                };
                match variant {
                    Variant::A { .. } => a.push(run),
                    Variant::B => b.push(run),
                }
                drop(connections);
                drop(provider);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // Floors in the same run.
            let static_floor = floor_static(server, n).await?;
            let raw_floor = floor_raw(server, n).await?;
            eprintln!(
                "  N={n} pair {pair} floors: F1 {:.1} ms, F2 {:.1} ms",
                static_floor.as_secs_f64() * 1e3,
                raw_floor.as_secs_f64() * 1e3
            );
            f1.push(static_floor);
            f2.push(raw_floor);
        }
        let ms = |took: &[Duration]| Summary::of(took.iter().map(|t| t.as_secs_f64() * 1e3));
        let runs_ms = |runs: &[FanoutRun]| Summary::of(runs.iter().map(|r| r.took.as_secs_f64() * 1e3));
        let cpu = |runs: &[FanoutRun]| Summary::of(runs.iter().map(|r| r.cpu_us_per_conn));
        let idp_calls = |runs: &[FanoutRun]| runs.iter().map(|r| r.idp_calls).max();
        out.push(Fanout {
            n,
            a_ms: runs_ms(&a),
            b_ms: runs_ms(&b),
            floors: Floors {
                f1_ms: ms(&f1),
                f2_ms: ms(&f2),
            },
            a_cpu_us_per_conn: cpu(&a),
            b_cpu_us_per_conn: cpu(&b),
            // A and B alternate within a pair: the i-th of each are the same pair.
            a_over_b_per_pair: a
                .iter()
                .zip(&b)
                .map(|(a, b)| a.took.as_secs_f64() / b.took.as_secs_f64())
                .collect(),
            a_idp_calls_per_refresh: idp_calls(&a),
            b_idp_calls_per_refresh: idp_calls(&b),
        });
    }
    Ok(out)
}

/// F1: the same N multiplexed connections with static credentials; the benchmark sends the
/// N AUTHs itself, concurrently.
async fn floor_static(server: &Server, n: usize) -> Result<Duration, AnyError> {
    let password = fake::token_sized_password();
    let client = redis::Client::open(format!("redis://{}:{password}@127.0.0.1:{}", fake::OID, server.port))?;
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        connections.push(client.get_multiplexed_async_connection().await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = server.auth_calls()?;
    let from = Instant::now();
    let watcher = until_auths(server, base, n as u64, from);
    let password = Arc::new(password);
    let sends: Vec<_> = connections
        .iter()
        .cloned()
        .map(|mut c| {
            let password = password.clone();
            tokio::spawn(async move {
                redis::cmd("AUTH")
                    .arg(fake::OID)
                    .arg(password.as_str())
                    .query_async::<()>(&mut c)
                    .await
            })
        })
        .collect();
    for send in sends {
        send.await??;
    }
    let (took, _) = tokio::task::spawn_blocking(move || watcher.join())
        .await?
        .map_err(|_| "watcher panicked")??;
    Ok(took)
}

/// F2: N raw sockets, one task each, writing the AUTH and reading the reply.
async fn floor_raw(server: &Server, n: usize) -> Result<Duration, AnyError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?);
    }
    // The same AUTH as the providers send: the same user, a token-sized password.
    let password = fake::token_sized_password();
    let command = format!(
        "*3\r\n$4\r\nAUTH\r\n${}\r\n{}\r\n${}\r\n{password}\r\n",
        fake::OID.len(),
        fake::OID,
        password.len()
    )
    .into_bytes();
    let command = Arc::new(command);
    let base = server.auth_calls()?;
    let from = Instant::now();
    let watcher = until_auths(server, base, n as u64, from);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let command = command.clone();
            tokio::spawn(async move {
                socket.write_all(&command).await?;
                let mut reply = [0u8; 5]; // +OK\r\n
                socket.read_exact(&mut reply).await?;
                Ok::<_, std::io::Error>(socket)
            })
        })
        .collect();
    let mut keep = Vec::new();
    for task in tasks {
        keep.push(task.await??);
    }
    let (took, _) = tokio::task::spawn_blocking(move || watcher.join())
        .await?
        .map_err(|_| "watcher panicked")??;
    Ok(took)
}

/// Figure 2: probe latency around a rotation of N idle connections.
async fn probe(server: &Server, plan: &Plan) -> Result<BTreeMap<String, Probe>, AnyError> {
    let n = plan.idle_connections;
    let mut out = BTreeMap::new();
    let variants = [
        Variant::A {
            spread: redis_entraid::DEFAULT_REAUTH_SPREAD,
        },
        Variant::A {
            spread: Duration::from_secs(5),
        },
        Variant::A { spread: Duration::ZERO },
        Variant::B,
    ];
    for variant in variants {
        if out.contains_key(&variant.label()) {
            continue;
        }
        let gate = Gate::gated();
        let provider = variant.provider(&gate)?;
        gate.wait_first_token().await;
        let config =
            provider.configure(AsyncConnectionConfig::new().set_connection_timeout(Some(Duration::from_secs(30))));
        let idle = connect_many(server, &config, n).await?;
        gate.wait_blocked().await;
        let probe_client = redis::Client::open(format!("redis://{}:p@127.0.0.1:{}", fake::OID, server.port))?;
        let mut probe = probe_client.get_multiplexed_async_connection().await?;
        let start = Instant::now();
        let rotate_at = Duration::from_secs(3);
        let gate2 = gate.clone();
        let rotation = tokio::spawn(async move {
            tokio::time::sleep(rotate_at).await;
            gate2.release();
        });
        let mut samples: Vec<(Duration, Duration)> = Vec::new();
        while start.elapsed() < Duration::from_secs(4) {
            let t = Instant::now();
            let _: () = redis::cmd("SET").arg("probe").arg(1).query_async(&mut probe).await?;
            let _: i64 = redis::cmd("GET").arg("probe").query_async(&mut probe).await?;
            samples.push((t - start, t.elapsed()));
        }
        rotation.await?;
        let window = |from: Duration, to: Duration| {
            Summary::of(
                samples
                    .iter()
                    .filter(|s| s.0 >= from && s.0 < to)
                    .map(|s| s.1.as_secs_f64() * 1e3),
            )
        };
        let quiet = window(Duration::ZERO, Duration::from_secs(2));
        let rotating = window(Duration::from_secs(2), Duration::from_secs(4));
        eprintln!(
            "  {}: quiet p99 {:.2} ms, around rotation p99 {:.2} ms max {:.2} ms",
            variant.label(),
            quiet.p99,
            rotating.p99,
            rotating.max
        );
        out.insert(
            variant.label(),
            Probe {
                quiet_ms: quiet,
                rotation_ms: rotating,
                p99_ratio: rotating.p99 / quiet.p99,
            },
        );
        drop(idle);
        drop(provider);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(out)
}

/// Figure 3: each variant measured in a fresh process, so freed memory of one run cannot
/// hide the next one's growth.
fn memory(server: &Server, plan: &Plan) -> Result<Memory, AnyError> {
    let exe = std::env::current_exe()?;
    let mut results: Vec<(&str, PerConnection)> = Vec::new();
    let pairs = if plan.quick { 1 } else { 3 };
    for _ in 0..pairs {
        for variant in ["A", "B", "static", "noop", "A-manager", "A-redis"] {
            let output = std::process::Command::new(&exe)
                .args([
                    "--memory-child",
                    variant,
                    &plan.memory_connections.to_string(),
                    &server.port.to_string(),
                ])
                .output()?;
            let text = String::from_utf8_lossy(&output.stdout);
            let parsed: Vec<f64> = text.split_whitespace().filter_map(|n| n.parse().ok()).collect();
            let [rss, allocated] = parsed[..] else {
                return Err(format!(
                    "memory child {variant} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
                .into());
            };
            eprintln!("  {variant}: RSS {rss:.0} bytes, allocated {allocated:.0} bytes per connection");
            results.push((variant, PerConnection { rss, allocated }));
        }
    }
    let row = |measure: fn(&PerConnection) -> f64| {
        let of = |name: &str| Summary::of(results.iter().filter(|r| r.0 == name).map(|r| measure(&r.1)));
        let (a, noop) = (of("A"), of("noop"));
        MemoryRow {
            a,
            b: of("B"),
            static_password: of("static"),
            noop,
            a_minus_noop: a.median - noop.median,
            a_manager: of("A-manager"),
            a_redis_manager: of("A-redis"),
        }
    };
    Ok(Memory {
        rss: row(|m| m.rss),
        allocated: row(|m| m.allocated),
    })
}

fn memory_child(args: &[String]) -> Result<(), AnyError> {
    let [variant, n, port] = args else {
        return Err("usage: --memory-child VARIANT N PORT".into());
    };
    let n: usize = n.parse()?;
    let port: u16 = port.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(kind) = supervised::Kind::parse(variant) {
        let bytes = runtime.block_on(async move {
            let server = Server::attach(port);
            let gate = Gate::ungated(Duration::from_secs(3600));
            let provider = match kind {
                supervised::Kind::BRedis => Variant::B.provider(&gate)?,
                _ => Variant::A {
                    spread: redis_entraid::DEFAULT_REAUTH_SPREAD,
                }
                .provider(&gate)?,
            };
            gate.wait_first_token().await;
            let (server, provider) = (&server, &provider);
            per_connection(n, || supervised::Handle::open(kind, server, provider)).await
        })?;
        println!("{} {}", bytes.rss, bytes.allocated);
        return Ok(());
    }
    let bytes = runtime.block_on(async move {
        let server = Server::attach(port);
        let gate = Gate::ungated(Duration::from_secs(3600));
        let (config, _keep) = match variant.as_str() {
            "A" => {
                let p = Variant::A {
                    spread: redis_entraid::DEFAULT_REAUTH_SPREAD,
                }
                .provider(&gate)?;
                gate.wait_first_token().await;
                (p.configure(AsyncConnectionConfig::new()), Some(p))
            }
            "B" => {
                let p = Variant::B.provider(&gate)?;
                gate.wait_first_token().await;
                (p.configure(AsyncConnectionConfig::new()), Some(p))
            }
            "noop" => (
                AsyncConnectionConfig::new().set_credentials_provider(fake::NoopProvider),
                None,
            ),
            _ => (AsyncConnectionConfig::new(), None),
        };
        let url = if variant == "static" {
            format!(
                "redis://{}:{}@127.0.0.1:{port}",
                fake::OID,
                fake::token_sized_password()
            )
        } else {
            server.url()
        };
        let client = redis::Client::open(url)?;
        let (client, config) = (&client, &config);
        per_connection(n, || async move {
            Ok(client.get_multiplexed_async_connection_with_config(config).await?)
        })
        .await
    })?;
    println!("{} {}", bytes.rss, bytes.allocated);
    Ok(())
}

/// Memory per connection, in bytes: RSS growth, and bytes allocated and still held (glibc's
/// mallinfo2, main arena), which separates live state from where the allocator put it.
struct PerConnection {
    rss: f64,
    allocated: f64,
}

/// Memory per connection for `n` connections from `open`, after a warm-up of 50.
async fn per_connection<T, F, Fut>(n: usize, open: F) -> Result<PerConnection, AnyError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, AnyError>>,
{
    // Warm up the allocator and the runtime with a few connections first.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(open().await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes();
    // SAFETY: mallinfo2 only reads glibc's allocator statistics.
    let heap_before = unsafe { libc::mallinfo2() }.uordblks;
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        connections.push(open().await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    // SAFETY: as above.
    let heap_after = unsafe { libc::mallinfo2() }.uordblks;
    drop(connections);
    Ok(PerConnection {
        rss: (after as f64 - before as f64) / n as f64,
        allocated: (heap_after as f64 - heap_before as f64) / n as f64,
    })
}

/// What figure 4's tasks send on: redis's multiplexed connection, our manager, or
/// redis's manager, each with its credentials.
#[derive(Clone)]
enum Target {
    Multiplexed(MultiplexedConnection),
    Ours(redis_entraid::aio::ConnectionManager),
    Redis(redis::aio::ConnectionManager),
}

impl redis::aio::ConnectionLike for Target {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Target::Multiplexed(c) => c.req_packed_command(cmd),
            Target::Ours(c) => c.req_packed_command(cmd),
            Target::Redis(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Target::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Target::Ours(c) => c.req_packed_commands(pipeline, offset, count),
            Target::Redis(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Target::Multiplexed(c) => c.get_db(),
            Target::Ours(c) => c.get_db(),
            Target::Redis(c) => c.get_db(),
        }
    }
}

/// One run of figure 4.
struct ThroughputRun {
    label: &'static str,
    ops_per_s: f64,
    latency_ms: Summary,
    failed: u64,
    /// Rotations released during the run.
    rotations: u64,
}

/// Figure 4: one connection, 64 tasks, rotations every 2 s, against static credentials.
async fn throughput(server: &Server, plan: &Plan) -> Result<Throughput, AnyError> {
    let seconds = plan.throughput_secs;
    let rounds: &[&'static str] = if plan.quick {
        &["static", "A", "manager", "redis-manager"]
    } else {
        &[
            "static",
            "noop",
            "A",
            "manager",
            "redis-manager",
            "redis-manager",
            "manager",
            "A",
            "noop",
            "static",
        ]
    };
    let mut runs: Vec<ThroughputRun> = Vec::new();
    for &label in rounds {
        let gate = Gate::gated();
        // Every connection is made the same way; only the credentials differ.
        let (connection, provider) = match label {
            "A" | "manager" | "redis-manager" => {
                let provider = Variant::A {
                    spread: redis_entraid::DEFAULT_REAUTH_SPREAD,
                }
                .provider(&gate)?;
                gate.wait_first_token().await;
                let client = redis::Client::open(server.url())?;
                let connection = match (label, &provider) {
                    ("manager", fake::Provider::A(p)) => {
                        Target::Ours(redis_entraid::aio::ConnectionManager::new(client, p.clone()).await?)
                    }
                    ("redis-manager", fake::Provider::A(p)) => Target::Redis(
                        client
                            .get_connection_manager_with_config(
                                redis::aio::ConnectionManagerConfig::new().set_credentials_provider(p.clone()),
                            )
                            .await?,
                    ),
                    _ => Target::Multiplexed(
                        client
                            .get_multiplexed_async_connection_with_config(&provider.configure(AsyncConnectionConfig::new()))
                            .await?,
                    ),
                };
                (connection, Some(provider))
            }
            "noop" => (
                Target::Multiplexed(
                    redis::Client::open(server.url())?
                        .get_multiplexed_async_connection_with_config(
                            &AsyncConnectionConfig::new().set_credentials_provider(fake::NoopProvider),
                        )
                        .await?,
                ),
                None,
            ),
            _ => (
                Target::Multiplexed(
                    redis::Client::open(format!("redis://{}:s@127.0.0.1:{}", fake::OID, server.port))?
                        .get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new())
                        .await?,
                ),
                None,
            ),
        };
        let rotations = if provider.is_some() {
            let gate = gate.clone();
            Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    gate.release();
                }
            }))
        } else {
            None
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let failed = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|task| {
                let mut connection = connection.clone();
                let failed = failed.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut i = 0u64;
                    while tokio::time::Instant::now() < deadline {
                        i = i.wrapping_mul(6364136223846793005).wrapping_add(task + 1);
                        let key = format!("t:{}", i % 10_000);
                        let t = Instant::now();
                        let set: redis::RedisResult<()> =
                            redis::cmd("SET").arg(&key).arg(i).query_async(&mut connection).await;
                        let get: redis::RedisResult<Option<u64>> =
                            redis::cmd("GET").arg(&key).query_async(&mut connection).await;
                        if set.is_err() || get.is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        latencies.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await?);
        }
        if let Some(r) = rotations {
            r.abort();
        }
        let rate = latencies.len() as f64 * 2.0 / seconds as f64;
        let summary = Summary::of(latencies.iter().copied());
        eprintln!(
            "  {label}: {rate:.0} ops/s, p99 {:.2} ms, max {:.2} ms, {} failed, {} IdP calls",
            summary.p99,
            summary.max,
            failed.load(Ordering::Relaxed),
            gate.calls()
        );
        runs.push(ThroughputRun {
            label,
            ops_per_s: rate,
            latency_ms: summary,
            failed: failed.load(Ordering::Relaxed),
            rotations: gate.calls().saturating_sub(1),
        });
        drop(provider);
    }
    // A label without a run (the quick run has no no-op round) has no row: a mean of
    // nothing would be NaN.
    let row = |label: &str| {
        let mine: Vec<_> = runs.iter().filter(|r| r.label == label).collect();
        if mine.is_empty() {
            return None;
        }
        Some(ThroughputRow {
            ops_per_s: mine.iter().map(|r| r.ops_per_s).sum::<f64>() / mine.len() as f64,
            // The run with the worse p99 stands for the label (the conservative choice).
            latency_ms: mine
                .iter()
                .map(|r| r.latency_ms)
                .fold(Summary::default(), |acc, s| if s.p99 > acc.p99 { s } else { acc }),
            failed: mine.iter().map(|r| r.failed).sum(),
            rotations: mine.iter().map(|r| r.rotations).sum(),
            runs: mine.len(),
        })
    };
    let (static_password, noop, a) = (row("static"), row("noop"), row("A"));
    let (manager, redis_manager) = (row("manager"), row("redis-manager"));
    let over = |a: &Option<ThroughputRow>, b: &Option<ThroughputRow>| match (a, b) {
        (Some(a), Some(b)) => Some(a.ops_per_s / b.ops_per_s),
        _ => None,
    };
    Ok(Throughput {
        ratio: over(&a, &static_password),
        manager_ratio: over(&manager, &redis_manager),
        static_password,
        noop,
        a,
        manager,
        redis_manager,
    })
}

/// Figure 5: AUTH commands the server runs per new connection.
async fn auths_per_connection(server: &Server) -> Result<AuthsPerConnection, AnyError> {
    let a = auths_per_new_connection(
        server,
        Variant::A {
            spread: redis_entraid::DEFAULT_REAUTH_SPREAD,
        },
    )
    .await?;
    let b = auths_per_new_connection(server, Variant::B).await?;
    let a_manager = supervised::auths_per_manager(server).await?;
    eprintln!("  A-manager: {a_manager} AUTHs per new connection");
    Ok(AuthsPerConnection { a, a_manager, b })
}

/// Figure 5 for one variant with redis's own connections.
async fn auths_per_new_connection(server: &Server, variant: Variant) -> Result<f64, AnyError> {
    let gate = Gate::ungated(Duration::from_secs(3600));
    let provider = variant.provider(&gate)?;
    gate.wait_first_token().await;
    let config = provider.configure(AsyncConnectionConfig::new());
    let base = server.auth_calls()?;
    let connections = connect_many(server, &config, 20).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = (server.auth_calls()? - base) as f64 / 20.0;
    eprintln!("  {}: {per} AUTHs per new connection", variant.name());
    drop(connections);
    Ok(per)
}

/// Figure 6: identity-provider calls in a window, for 60-second and 1-hour tokens.
async fn idp_calls(plan: &Plan) -> Result<IdpCalls, AnyError> {
    let a = || Variant::A {
        spread: redis_entraid::DEFAULT_REAUTH_SPREAD,
    };
    let window = plan.idp_window_secs;
    Ok(IdpCalls {
        a_60s: idp_calls_in(a(), 60, window).await?,
        b_60s: idp_calls_in(Variant::B, 60, window).await?,
        a_3600s: idp_calls_in(a(), 3600, window).await?,
        b_3600s: idp_calls_in(Variant::B, 3600, window).await?,
        window_s: window,
    })
}

/// Figure 6 for one variant: its identity-provider calls in `window` seconds of tokens that
/// live `lifetime` seconds.
async fn idp_calls_in(variant: Variant, lifetime: u64, window: u64) -> Result<u64, AnyError> {
    let gate = Gate::ungated(Duration::from_secs(lifetime));
    let provider = variant.provider(&gate)?;
    tokio::time::sleep(Duration::from_secs(window)).await;
    let calls = gate.calls();
    eprintln!(
        "  {} with {lifetime} s tokens: {calls} calls in {window} s",
        variant.name()
    );
    drop(provider);
    Ok(calls)
}
