//! Hostile clients against the emulator: oversized and malformed commands before `AUTH`,
//! garbage, slowloris, a thousand silent connections, oversized HTTP bodies, accept
//! errors; a predictable CA path; connections left behind by `stop()` or by a dead
//! upstream. Honest clients must keep working through all of it. Everything is on
//! 127.0.0.1.

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

mod support;
use support::{env, secret_provider, token_client};

/// How long a test waits for something that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(3);

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

/// A TLS connection to the gateway, trusting the emulator's CA.
async fn tls_connect(emulator: &Emulator) -> TlsStream<TcpStream> {
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
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", emulator.redis_port())).await.unwrap();
    connector
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
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
    let client = token_client(emulator, &token, false);
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

    let emulator = start(EmulatorConfig {
        token_port: Some(token_port),
        ..EmulatorConfig::default()
    })
    .await;
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
    let redis = OwnRedis::start().await;
    let emulator = start(EmulatorConfig {
        upstream: Upstream::Existing(format!("127.0.0.1:{}", redis.port)),
        ..EmulatorConfig::default()
    })
    .await;
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
    let emulator = start(EmulatorConfig::default()).await;
    let admin = emulator.admin_url();
    let admin_port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();

    // Announced by Content-Length: refused before the body is read.
    let mut socket = TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap();
    socket
        .write_all(b"POST /faults HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .unwrap();
    socket.write_all(&vec![b' '; 128 * 1024]).await.unwrap();
    let (reply, _) = read_until_closed(&mut socket, PROMPTLY).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // Chunked, no length: refused once 64 KiB have come.
    let mut socket = TcpStream::connect(("127.0.0.1", admin_port)).await.unwrap();
    socket
        .write_all(b"POST /faults HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n20000\r\n")
        .await
        .unwrap();
    socket.write_all(&vec![b' '; 0x20000]).await.unwrap();
    socket.write_all(b"\r\n").await.unwrap();
    let (reply, _) = read_until_closed(&mut socket, PROMPTLY).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // The token service, over HTTPS.
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
        .body(format!("grant_type=client_credentials&pad={}", "a".repeat(1024 * 1024)))
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
