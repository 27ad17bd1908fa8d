//! Hostile clients against the emulator: oversized and malformed commands before `AUTH`,
//! garbage, slowloris, a thousand silent connections, oversized HTTP bodies, accept
//! errors; a predictable CA path; connections left behind by `stop()` or by a dead
//! upstream; bad command-line arguments. Honest clients must keep working through all of
//! it. Everything is on 127.0.0.1.

use std::io::{BufRead as _, Read as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entraid_emulator::{Emulator, EmulatorConfig, Upstream};
use entraid_identity::IdentityProvider as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The value the emulator announces for `key` (`AZURE_TENANT_ID`, …).
fn env(emulator: &Emulator, key: &str) -> String {
    emulator
        .env()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("the emulator announces no {key}"))
}

/// The default service principal, trusting the emulator's CA.
fn secret_provider(emulator: &Emulator) -> entraid_azure::AzureIdentityProvider {
    entraid_azure::AzureIdentityProvider::client_secret(
        &env(emulator, "AZURE_TENANT_ID"),
        &env(emulator, "AZURE_CLIENT_ID"),
        &env(emulator, "AZURE_CLIENT_SECRET"),
    )
    .and_then(|p| p.with_authority_host(emulator.authority_host()))
    .and_then(|p| p.with_root_certificate_pem(emulator.ca_pem()))
    .unwrap()
}

/// A RESP2 client whose password is `token`.
fn token_client(emulator: &Emulator, token: &entraid_identity::Token) -> redis::Client {
    let url = format!(
        "rediss://{}:{}@127.0.0.1:{}",
        token.username(),
        token.secret(),
        emulator.redis_port()
    );
    let root_cert = Some(emulator.ca_pem().as_bytes().to_vec());
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert,
        },
    )
    .unwrap()
}

/// How long a test waits for something that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(3);

/// One test at a time: they share this process, whose memory one of them measures, and
/// whose CPU the timing ones need.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(config: EmulatorConfig) -> Emulator {
    Emulator::start(config)
        .await
        .expect("the emulator starts (redis-server on PATH)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS client for the gateway, trusting the emulator's CA, and the gateway's port.
fn tls_connector(emulator: &Emulator) -> (tokio_rustls::TlsConnector, u16) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(emulator.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        emulator.redis_port(),
    )
}

async fn tls_connect_to(connector: tokio_rustls::TlsConnector, port: u16) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    connector
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// A TLS connection to the gateway.
async fn tls_connect(emulator: &Emulator) -> TlsStream<TcpStream> {
    let (connector, port) = tls_connector(emulator);
    tls_connect_to(connector, port).await
}

/// Everything the peer sends until it closes the connection (`true`), or until `limit`
/// passes (`false`). A reset counts as closed.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (out, false),
            Ok(Ok(0) | Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A real client: a token from the emulator's token service, `AUTH`, then PING, SET, GET.
async fn honest_round_trip(emulator: &Emulator, key: &str) {
    let token = secret_provider(emulator).request_token().await.unwrap();
    let client = token_client(emulator, &token);
    let mut connection = tokio::time::timeout(PROMPTLY, client.get_multiplexed_async_connection())
        .await
        .expect("an honest client connects promptly")
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut connection).await.unwrap();
    assert_eq!(pong, "PONG");
    let () = redis::cmd("SET")
        .arg(key)
        .arg("honest value")
        .query_async(&mut connection)
        .await
        .unwrap();
    let value: String = redis::cmd("GET").arg(key).query_async(&mut connection).await.unwrap();
    assert_eq!(value, "honest value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_commands_before_auth_get_redis_protocol_errors_and_a_closed_connection() {
    let _serial = SERIAL.lock().await;
    let emulator = start(EmulatorConfig::default()).await;

    // A 100 MB bulk string: refused from its `$` line, before any of it is buffered.
    let mut stream = tls_connect(&emulator).await;
    let started = Instant::now();
    stream.write_all(b"*2\r\n$4\r\nAUTH\r\n$104857600\r\n").await.unwrap();
    stream.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    let (reply, closed) = read_until_closed(&mut stream, PROMPTLY).await;
    eprintln!("100 MB bulk before AUTH refused in {:?}", started.elapsed());
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: unauthenticated bulk length\r\n"
    );
    assert!(closed, "the connection is closed after the protocol error");

    // Eleven arguments.
    let mut stream = tls_connect(&emulator).await;
    stream.write_all(b"*11\r\n").await.unwrap();
    let (reply, closed) = read_until_closed(&mut stream, PROMPTLY).await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    assert!(closed);

    // Redis's own limits are inclusive: 10 arguments and 16384 bytes are fine.
    let mut stream = tls_connect(&emulator).await;
    let mut command = b"*10\r\n$4\r\nPING\r\n".to_vec();
    for _ in 0..9 {
        command.extend_from_slice(b"$16384\r\n");
        command.extend_from_slice(&[b'y'; 16384]);
        command.extend_from_slice(b"\r\n");
    }
    stream.write_all(&command).await.unwrap();
    let mut reply = [0u8; 64];
    let n = tokio::time::timeout(PROMPTLY, stream.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..n], b"-NOAUTH Authentication required.\r\n");

    honest_round_trip(&emulator, "hostile:oversized").await;
    emulator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_file_lives_in_a_private_directory_and_a_planted_symlink_is_not_followed() {
    let _serial = SERIAL.lock().await;
    let token_port = free_port();
    // Where the emulator used to write its CA: plant a symlink there to a file of ours.
    let old_path = std::env::temp_dir().join(format!("entraid-emulator-ca-{}-{token_port}.pem", std::process::id()));
    let victim = std::env::temp_dir().join(format!(
        "entraid-emulator-test-victim-{}-{token_port}",
        std::process::id()
    ));
    std::fs::write(&victim, "untouched").unwrap();
    let _ = std::fs::remove_file(&old_path);
    std::os::unix::fs::symlink(&victim, &old_path).unwrap();

    let emulator = start(EmulatorConfig::new().token_port(Some(token_port))).await;
    let ca_file = PathBuf::from(env(&emulator, "ENTRAID_EMULATOR_CA_FILE"));
    let victim_text = std::fs::read_to_string(&victim).unwrap();
    let _ = std::fs::remove_file(&old_path);
    let _ = std::fs::remove_file(&victim);
    assert_eq!(victim_text, "untouched", "the planted symlink was not followed");
    assert_ne!(ca_file, old_path);
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap(), emulator.ca_pem());

    let dir = ca_file.parent().unwrap().to_owned();
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir() && !meta.file_type().is_symlink());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700, "the directory is private");
    let ours = std::fs::symlink_metadata(std::env::current_exe().unwrap())
        .unwrap()
        .uid();
    let uid = own_uid();
    assert_eq!(
        meta.uid(),
        uid,
        "the directory is ours (uid {uid}, test binary's owner {ours})"
    );

    emulator.stop().await;
    assert!(!dir.exists(), "{} is removed at stop", dir.display());
}

/// Our real uid, from /proc/self/status (`Uid: real effective saved fs`).
fn own_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// A redis-server of the test's own, so `stop()` cannot end connections by killing it.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let redis = OwnRedis { child, port };
        for _ in 0..200 {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                s.write_all(b"PING\r\n").await.unwrap();
                let mut b = [0u8; 7];
                if s.read_exact(&mut b).await.is_ok() && &b == b"+PONG\r\n" {
                    return redis;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {port}");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_every_connection_promptly() {
    let _serial = SERIAL.lock().await;
    let redis = OwnRedis::start().await;
    let emulator = start(EmulatorConfig::new().upstream(Upstream::Existing(format!("127.0.0.1:{}", redis.port)))).await;
    // One authenticated connection and one that never spoke.
    let token = secret_provider(&emulator).request_token().await.unwrap();
    let mut authenticated = tls_connect(&emulator).await;
    let auth = format!(
        "*3\r\n$4\r\nAUTH\r\n${}\r\n{}\r\n${}\r\n{}\r\n",
        token.username().len(),
        token.username(),
        token.secret().len(),
        token.secret()
    );
    authenticated.write_all(auth.as_bytes()).await.unwrap();
    let mut reply = [0u8; 5];
    authenticated.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"+OK\r\n");
    let mut silent = tls_connect(&emulator).await;

    let stopping = Instant::now();
    emulator.stop().await;
    let (_, closed) = read_until_closed(&mut authenticated, PROMPTLY).await;
    assert!(closed, "stop() closed the authenticated connection");
    let (_, closed) = read_until_closed(&mut silent, PROMPTLY).await;
    assert!(closed, "stop() closed the silent connection");
    eprintln!("stop() and both connections closed in {:?}", stopping.elapsed());
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_beyond_64_kib_get_413() {
    let _serial = SERIAL.lock().await;
    let emulator = start(EmulatorConfig::default()).await;
    let admin = emulator.admin_url();
    let admin_port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();

    // Announced by Content-Length beyond 1 MiB: refused before the body is read.
    let mut socket = TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap();
    socket
        .write_all(b"POST /faults HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 16777216\r\n\r\n")
        .await
        .unwrap();
    socket.write_all(&vec![b' '; 128 * 1024]).await.unwrap();
    let (reply, closed) = read_until_closed(&mut socket, PROMPTLY).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(closed);

    // Chunked, no length: 128 KiB, read to the end and refused.
    let mut socket = TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap();
    socket
        .write_all(b"POST /faults HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n20000\r\n")
        .await
        .unwrap();
    socket.write_all(&vec![b' '; 0x20000]).await.unwrap();
    socket.write_all(b"\r\n0\r\n\r\n").await.unwrap();
    let (reply, closed) = read_until_closed(&mut socket, PROMPTLY).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(closed);

    // The token service, over HTTPS, from a client that sends its whole 512 KiB body
    // before it reads the answer.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(emulator.ca_pem().as_bytes()).unwrap())
        .timeout(PROMPTLY)
        .build()
        .unwrap();
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        emulator.authority_host(),
        env(&emulator, "AZURE_TENANT_ID")
    );
    let response = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&pad={}", "a".repeat(512 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // Ordinary requests still work.
    let stats = http.get(format!("{admin}/stats")).send().await.unwrap();
    assert_eq!(stats.status(), 200);
    honest_round_trip(&emulator, "hostile:bodies").await;
    emulator.stop().await;
}

/// CPU time (user + system, in clock ticks) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_instead_of_spinning() {
    let _serial = SERIAL.lock().await;
    // The binary with 64 file descriptors: a hundred connections exhaust them, and every
    // accept() then fails with EMFILE while connections wait in the backlog.
    let mut child = std::process::Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\"")
        .arg(env!("CARGO_BIN_EXE_entraid-emulator"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut redis_port = None;
    let mut line = String::new();
    while stdout.read_line(&mut line).unwrap() > 0 {
        if let Some(port) = line.trim().strip_prefix("REDIS_PORT=") {
            redis_port = Some(port.parse::<u16>().unwrap());
        }
        if line.trim() == "READY" {
            break;
        }
        line.clear();
    }
    let port = redis_port.expect("the emulator printed REDIS_PORT");
    let pid = child.id();

    let mut sockets = Vec::new();
    for _ in 0..100 {
        sockets.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    drop(sockets);

    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let warnings = stderr.lines().filter(|l| l.contains("accept failed")).count();
    eprintln!("accept errors: {used} CPU ticks in 2 s, {warnings} warning(s) logged");
    // A hot loop burns a whole core: ~200 ticks (at 100 Hz) in 2 s.
    assert!(used < 40, "{used} ticks of CPU in 2 s while accept() fails");
    assert_eq!(warnings, 1, "one warning for the whole run of failures:\n{stderr}");
}

/// The process's resident memory, from /proc/self/status, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// The soft and hard limits on open files, from /proc/self/limits.
fn open_file_limits() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// Makes sure `needed` files can be open at once: raises the soft limit to the hard one
/// (as `cargo xtask` does) with prlimit(1) if it is lower.
fn ensure_open_files(needed: u64) {
    let (soft, hard) = open_file_limits();
    if soft < needed && hard >= needed {
        let _ = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
    let (soft, _) = open_file_limits();
    assert!(
        soft >= needed,
        "this test needs {needed} open files; the limit is {soft} (run `ulimit -Sn $(ulimit -Hn)` first)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_tls_connections_cost_bounded_memory_and_honest_clients_go_on() {
    let _serial = SERIAL.lock().await;
    const SILENT: usize = 1000;
    // Both ends of each connection are in this process, plus some margin.
    ensure_open_files(2 * SILENT as u64 + 200);
    let emulator = start(EmulatorConfig::default()).await;
    honest_round_trip(&emulator, "hostile:warm-up").await;
    let before = rss_kib();

    let started = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    let (connector, port) = tls_connector(&emulator);
    for _ in 0..SILENT / 50 {
        let batch = (0..50).map(|_| tls_connect_to(connector.clone(), port));
        silent.extend(futures_join_all(batch).await);
    }
    let connected_in = started.elapsed();
    let after = rss_kib();
    let growth_kib = after.saturating_sub(before);

    let honest_started = Instant::now();
    honest_round_trip(&emulator, "hostile:during-silence").await;
    let honest_took = honest_started.elapsed();
    eprintln!(
        "{SILENT} silent TLS connections: set up in {connected_in:?}; RSS {before} KiB -> {after} KiB (+{growth_kib} KiB, {} KiB each, both ends); an honest AUTH+PING+SET+GET meanwhile took {honest_took:?}",
        growth_kib / SILENT as u64
    );
    // Measured on a 2-core dev machine: +28 MiB for 1 000 in three runs (28 KiB per
    // connection, the client's and the emulator's ends together: TLS state, a 16 KiB read
    // buffer each side; no upstream connection before AUTH). The bound, 64 MiB, leaves
    // more than 2x margin for allocator and runtime differences.
    assert!(
        growth_kib < 64 * 1024,
        "RSS grew by {growth_kib} KiB for {SILENT} silent connections"
    );
    assert!(honest_took < Duration::from_secs(3), "the emulator stayed responsive");

    // They are still open (the pre-AUTH timeout is 30 s): a PING gets NOAUTH.
    let mut last = silent.pop().unwrap();
    last.write_all(b"PING\r\n").await.unwrap();
    let mut reply = [0u8; 34];
    tokio::time::timeout(PROMPTLY, last.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"-NOAUTH Authentication required.\r\n");
    drop(silent);
    emulator.stop().await;
}

/// Runs the futures concurrently, in order of their results.
async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_slowloris_and_stalled_handshakes_are_cut_while_honest_clients_go_on() {
    let _serial = SERIAL.lock().await;
    const AUTH_TIMEOUT: Duration = Duration::from_secs(2);
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
    let emulator = Arc::new(
        start(
            EmulatorConfig::new()
                .auth_timeout(AUTH_TIMEOUT)
                .handshake_timeout(HANDSHAKE_TIMEOUT),
        )
        .await,
    );

    // Honest clients, one after another, for as long as the hostile ones run.
    let honest = {
        let emulator = emulator.clone();
        tokio::spawn(async move {
            let mut rounds = 0;
            let until = Instant::now() + AUTH_TIMEOUT + Duration::from_secs(2);
            while Instant::now() < until {
                honest_round_trip(&emulator, &format!("hostile:honest:{rounds}")).await;
                rounds += 1;
            }
            rounds
        })
    };

    // Slowloris: one byte every 100 ms of a command it never finishes.
    let slowloris = {
        let mut stream = tls_connect(&emulator).await;
        tokio::spawn(async move {
            let started = Instant::now();
            for byte in b"*2\r\n$4\r\nAUTH\r\n$16000\r\n".iter().cycle() {
                if stream.write_all(std::slice::from_ref(byte)).await.is_err() || stream.flush().await.is_err() {
                    break;
                }
                let mut probe = [0u8; 1];
                if let Ok(read) = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut probe)).await {
                    assert!(matches!(read, Ok(0) | Err(_)), "no reply to a partial command");
                    break;
                }
                assert!(started.elapsed() < AUTH_TIMEOUT + PROMPTLY, "slowloris was never cut");
            }
            started.elapsed()
        })
    };

    // A TCP connection that never starts TLS, and one that stops half-way into its
    // ClientHello: each is closed at the handshake timeout.
    let stalled_handshakes: Vec<_> = [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00]]
        .into_iter()
        .map(|start| {
            let port = emulator.redis_port();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                stream.write_all(start).await.unwrap();
                let started = Instant::now();
                let (_, closed) = read_until_closed(&mut stream, HANDSHAKE_TIMEOUT + PROMPTLY).await;
                (closed, started.elapsed())
            })
        })
        .collect();

    // Garbage: not TLS at all (refused by the handshake); inside TLS, a line too long for
    // an inline command, and a bad array element.
    let mut not_tls = TcpStream::connect(("127.0.0.1", emulator.redis_port())).await.unwrap();
    not_tls.write_all(b"\x00\xffGET / HTTP/1.1\r\n\r\n").await.unwrap();
    let (_, closed) = read_until_closed(&mut not_tls, PROMPTLY).await;
    assert!(closed, "not TLS: closed");
    let mut long_line = tls_connect(&emulator).await;
    let garbage: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
        .filter(|b| *b != b'\n' && *b != b'*')
        .collect();
    long_line.write_all(&garbage).await.unwrap();
    let (reply, closed) = read_until_closed(&mut long_line, PROMPTLY).await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: too big inline request\r\n"
    );
    assert!(closed);
    let mut bad_element = tls_connect(&emulator).await;
    bad_element.write_all(b"*1\r\n:12\r\n").await.unwrap();
    let (reply, closed) = read_until_closed(&mut bad_element, PROMPTLY).await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: expected '$', got ':'\r\n"
    );
    assert!(closed);

    let mut handshake_cuts = Vec::new();
    for (name, stalled) in ["silent TCP", "half a ClientHello"].into_iter().zip(stalled_handshakes) {
        let (closed, after) = stalled.await.unwrap();
        assert!(closed, "{name}: closed at the handshake timeout");
        assert!(
            after >= HANDSHAKE_TIMEOUT - Duration::from_millis(100) && after < HANDSHAKE_TIMEOUT + PROMPTLY,
            "{name}: closed after {after:?}"
        );
        handshake_cuts.push(after);
    }
    let cut_after = slowloris.await.unwrap();
    eprintln!(
        "slowloris cut after {cut_after:?} (pre-AUTH timeout {AUTH_TIMEOUT:?}); stalled handshakes cut after {handshake_cuts:?} (timeout {HANDSHAKE_TIMEOUT:?})"
    );
    assert!(
        cut_after >= AUTH_TIMEOUT - Duration::from_millis(200),
        "cut at {cut_after:?}"
    );
    let rounds = honest.await.unwrap();
    assert!(rounds >= 2, "honest clients kept working: {rounds} rounds");
    Arc::try_unwrap(emulator).unwrap().stop().await;
}

#[test]
fn the_binary_answers_help_and_refuses_bad_arguments_with_a_usage_error() {
    let _serial = SERIAL.blocking_lock();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_entraid-emulator"))
            .args(args)
            .output()
            .unwrap()
    };
    let help = run(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert_eq!(help.status.code(), Some(0), "{text}");
    assert!(text.contains("Usage: entraid-emulator [OPTIONS]"), "{text}");
    for flag in [
        "--token-lifetime <DURATION>",
        "--env-file <PATH>",
        "--redis-server <PATH>",
        "--upstream <HOST:PORT>",
        "--token-port <N>",
        "--redis-port <N>",
        "--principals <FILE>",
        "--cluster <N>",
        "--help",
        "--version",
    ] {
        assert!(text.contains(flag), "{flag}: {text}");
    }
    let refused = [
        (&["--bogus"][..], "unexpected argument '--bogus'"),
        (&["--token-lifetime", "25h"][..], "must be between 1s and 24h"),
        (&["--token-lifetime", "10"][..], "use a number with ms, s, m or h"),
        (&["--cluster", "2"][..], "a Redis cluster needs at least 3 nodes"),
        // Refused by the library rather than the parser, with the same exit status.
        (&["--cluster", "65"][..], "a cluster has 3 to 64 nodes"),
        (&["--token-port", "x"][..], "invalid value 'x' for '--token-port <N>'"),
        (
            &["--upstream", "127.0.0.1:1", "--redis-server", "redis-server"][..],
            "cannot be used with",
        ),
    ];
    let bogus = run(&["--bogus"]);
    assert!(
        String::from_utf8_lossy(&bogus.stderr).contains("Usage: entraid-emulator [OPTIONS]"),
        "an unknown flag shows the usage"
    );
    for (args, says) in refused {
        let output = run(args);
        let error = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {error}");
        assert!(error.contains(says), "{args:?}: {error}");
        assert!(error.contains("--help"), "{args:?}: where to read more: {error}");
        assert!(output.stdout.is_empty(), "{args:?}: nothing started");
    }
}
