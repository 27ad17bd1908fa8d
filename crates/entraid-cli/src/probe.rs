//! The cache, step by step: TCP, TLS, `AUTH <oid> <token>`, `PING`; each failure is
//! named for the step it happened in, with its cause and fix.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::checks::{Check, Report};
use crate::time_text::duration;

/// Where the cache is and how to speak to it.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    /// Extra CA certificates (PEM) to trust besides the platform's.
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) timeout: Duration,
}

/// What the cache's port numbers mean, for fixes.
const PORTS: &str = "Azure Managed Redis listens on 10000 (TLS); Azure Cache for Redis on 6380 (TLS) \
                     and, only if enabled, 6379 (plain)";

/// The longest reply line read: replies to AUTH and PING are short.
const MAX_REPLY: usize = 64 * 1024;

/// Runs the connection checks; `username` and `secret` are sent as `AUTH`, the secret
/// is never shown.
pub(crate) async fn probe(report: &mut Report, target: &Target, username: &str, secret: &str) {
    const LATER: [&str; 3] = ["tls", "auth", "ping"];
    let address = format!("{}:{}", target.host, target.port);
    let started = Instant::now();
    let tcp = match tokio::time::timeout(target.timeout, TcpStream::connect((target.host.as_str(), target.port))).await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            report.push(connect_failure(&address, &e));
            report.skip(&LATER, "needs a TCP connection");
            return;
        }
        Err(_) => {
            report.push(Check::failed(
                "connect",
                format!("{address}: no TCP connection within {}", duration(target.timeout)),
                "the host is unreachable from here, or a firewall drops the packets",
                format!(
                    "check the host name and port ({PORTS}), the cache's firewall rules, private endpoint \
                     DNS and network security groups"
                ),
            ));
            report.skip(&LATER, "needs a TCP connection");
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    report.push(Check::passed(
        "connect",
        format!("{address} in {}", duration(started.elapsed())),
    ));

    if !target.tls {
        report.push(Check::skipped("tls", "--no-tls: plain TCP"));
        converse(report, tcp, target, username, secret).await;
        return;
    }
    let connector = match tls_connector(target.ca_pem.as_deref()) {
        Ok(connector) => connector,
        Err(problem) => {
            report.push(Check::failed(
                "tls",
                "no TLS configuration",
                problem,
                "check the file given to --ca-file (PEM certificates) and SSL_CERT_FILE",
            ));
            report.skip(&["auth", "ping"], "needs TLS");
            return;
        }
    };
    let Ok(name) = ServerName::try_from(target.host.clone()) else {
        report.push(Check::failed(
            "tls",
            format!("{:?} is not a host name TLS can check", target.host),
            "a TLS server name must be a DNS name or an IP address",
            "use the cache's host name as shown in the portal",
        ));
        report.skip(&["auth", "ping"], "needs TLS");
        return;
    };
    let started = Instant::now();
    let stream = match tokio::time::timeout(target.timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            report.push(tls_failure(&target.host, &e));
            report.skip(&["auth", "ping"], "needs TLS");
            return;
        }
        Err(_) => {
            report.push(Check::failed(
                "tls",
                format!("no TLS handshake within {}", duration(target.timeout)),
                "the server accepted the connection but did not answer the TLS handshake",
                format!("check the port ({PORTS}) and any proxy in between"),
            ));
            report.skip(&["auth", "ping"], "needs TLS");
            return;
        }
    };
    let version = stream
        .get_ref()
        .1
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS");
    report.push(Check::passed(
        "tls",
        format!(
            "{version}, certificate trusted for {} in {}",
            target.host,
            duration(started.elapsed())
        ),
    ));
    converse(report, stream, target, username, secret).await;
}

/// `AUTH` then `PING`.
async fn converse<S>(report: &mut Report, mut stream: S, target: &Target, username: &str, secret: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let auth = command(&[b"AUTH", username.as_bytes(), secret.as_bytes()]);
    let reply = match exchange(&mut stream, &auth, target.timeout).await {
        Ok(reply) => reply,
        Err(failure) => {
            report.push(no_reply("auth", failure, target));
            report.skip(&["ping"], "needs an authenticated connection");
            return;
        }
    };
    let auth_check = auth_verdict(&reply, username);
    let authenticated = auth_check.status == crate::Status::Passed;
    report.push(auth_check);
    if !authenticated {
        report.skip(&["ping"], "needs an authenticated connection");
        return;
    }
    let started = Instant::now();
    match exchange(&mut stream, &command(&[b"PING"]), target.timeout).await {
        Ok(reply) => report.push(ping_verdict(&reply, started.elapsed())),
        Err(failure) => report.push(no_reply("ping", failure, target)),
    };
}

/// Why no reply line came back.
#[derive(Debug, PartialEq, Eq)]
enum NoReply {
    /// The bytes that came back are a TLS record: this port speaks TLS.
    TlsRecord,
    /// The server closed the connection.
    Closed,
    /// Nothing within the timeout.
    Silent,
    /// The connection failed.
    Io(String),
    /// Something that is not RESP.
    Garbage,
}

async fn exchange<S>(stream: &mut S, request: &[u8], timeout: Duration) -> Result<String, NoReply>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |e: io::Error| NoReply::Io(e.to_string());
    stream.write_all(request).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    match tokio::time::timeout(timeout, read_line(stream)).await {
        Ok(result) => result,
        Err(_) => Err(NoReply::Silent),
    }
}

/// One reply line, without its `\r\n`.
async fn read_line<S: AsyncRead + Unpin>(stream: &mut S) -> Result<String, NoReply> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(0) => return Err(NoReply::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(NoReply::Closed),
            Err(e) => return Err(NoReply::Io(e.to_string())),
        }
        if line.is_empty() && matches!(byte[0], 0x14..=0x17) {
            return Err(NoReply::TlsRecord);
        }
        line.push(byte[0]);
        if line.ends_with(b"\r\n") {
            line.truncate(line.len() - 2);
            return String::from_utf8(line).map_err(|_| NoReply::Garbage);
        }
        if line.len() > MAX_REPLY {
            return Err(NoReply::Garbage);
        }
    }
}

fn command(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn no_reply(name: &'static str, failure: NoReply, target: &Target) -> Check {
    let plain_at_tls = "this port expects TLS, but --no-tls spoke plain TCP to it";
    let use_tls = format!("drop --no-tls (clients: rediss:// URLs or TLS on); {PORTS}");
    match failure {
        NoReply::TlsRecord if !target.tls => {
            Check::failed(name, "the server answered with a TLS record", plain_at_tls, use_tls)
        }
        NoReply::Closed | NoReply::Silent if !target.tls => Check::failed(
            name,
            if failure == NoReply::Closed {
                "the server closed the connection without a Redis reply".to_owned()
            } else {
                format!("no Redis reply within {}", duration(target.timeout))
            },
            format!("{plain_at_tls}, most likely (a Redis server always answers)"),
            use_tls,
        ),
        NoReply::Silent => Check::failed(
            name,
            format!("no reply within {}", duration(target.timeout)),
            "the server is stalled or overloaded",
            "look at the cache's metrics (server load, CPU) and try again",
        ),
        NoReply::Closed => Check::failed(
            name,
            "the server closed the connection without a reply",
            "something between here and the cache (a proxy, a firewall) ended the connection",
            "check the network path; a Redis server always answers",
        ),
        NoReply::Io(e) => Check::failed(
            name,
            format!("connection failed: {e}"),
            "the connection broke",
            "check the network path and try again",
        ),
        NoReply::TlsRecord | NoReply::Garbage => Check::failed(
            name,
            "the reply is not Redis's protocol",
            "this port is not a Redis server",
            format!("check the host and port ({PORTS})"),
        ),
    }
}

/// What the reply to `AUTH <username> <token>` means.
fn auth_verdict(reply: &str, username: &str) -> Check {
    if reply == "+OK" {
        return Check::passed("auth", format!("AUTH {username} <token> accepted"));
    }
    let error = reply.strip_prefix('-').unwrap_or(reply);
    if error.starts_with("WRONGPASS") || error.contains("invalid username-password") {
        return Check::failed(
            "auth",
            format!("AUTH {username} <token> refused: {error}"),
            format!(
                "the cache does not accept this token for user {username}: the identity has no data access \
                 policy assignment on this cache, Entra ID authentication is off, or the username is not the \
                 token's oid"
            ),
            format!(
                "in the portal, open the cache > Authentication > Microsoft Entra ID and add this identity \
                 (object id {username}) with an access policy; send the token's oid as the username"
            ),
        );
    }
    if error.contains("without any password configured") || error.contains("no password is set") {
        return Check::failed(
            "auth",
            format!("AUTH refused: {error}"),
            "this server has no authentication: it is not an Azure cache with Entra ID enabled",
            "check the host and port point at your Azure cache",
        );
    }
    Check::failed(
        "auth",
        format!("AUTH refused: {error}"),
        "the server refused the token",
        "check that Entra ID authentication is enabled on the cache and the identity has an access policy",
    )
}

fn ping_verdict(reply: &str, took: Duration) -> Check {
    match reply {
        "+PONG" => Check::passed("ping", format!("PONG in {}", duration(took))),
        error if error.starts_with("-NOPERM") => Check::failed(
            "ping",
            format!("PING refused: {}", &error[1..]),
            "the identity is authenticated, but its access policy does not allow PING",
            "assign an access policy that allows the commands your app runs (e.g. Data Contributor)",
        ),
        other => Check::failed(
            "ping",
            format!("PING answered {other:?}"),
            "the server did not answer PONG",
            "run the command again; if it persists, check the cache's health in the portal",
        ),
    }
}

fn connect_failure(address: &str, e: &io::Error) -> Check {
    let (cause, fix) = match e.kind() {
        io::ErrorKind::ConnectionRefused => (
            "nothing listens on that port".to_owned(),
            format!("check the port ({PORTS})"),
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => (
            "the host is unreachable from here".to_owned(),
            "check firewall rules, private endpoints and network security groups".to_owned(),
        ),
        _ if e.to_string().contains("lookup") || e.to_string().contains("resolve") => (
            "the host name does not resolve".to_owned(),
            "check the host name (name.region.redis.azure.net or name.redis.cache.windows.net) and, \
             with a private endpoint, the private DNS zone"
                .to_owned(),
        ),
        _ => (
            "the connection failed".to_owned(),
            format!("check the host and port ({PORTS})"),
        ),
    };
    Check::failed("connect", format!("{address}: {e}"), cause, fix)
}

fn tls_failure(host: &str, e: &io::Error) -> Check {
    use rustls::{CertificateError, Error};
    let not_tls = (
        "this port does not speak TLS (a plain Redis port?)".to_owned(),
        format!("connect to the TLS port, or pass --no-tls for a plain port; {PORTS}"),
    );
    let untrusted = (
        "the server's certificate is not signed by a CA this machine trusts".to_owned(),
        "install the CA in the system store, or point SSL_CERT_FILE (or --ca-file) at its PEM file; \
         a TLS-inspecting proxy needs its own CA trusted"
            .to_owned(),
    );
    let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>());
    let (cause, fix) = match rustls_error {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => untrusted,
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => (
            format!("the server's certificate does not name {host}"),
            "connect with the cache's host name as the portal shows it, not an IP address or alias".to_owned(),
        ),
        Some(Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => (
            "the server's certificate is outside its validity period by this machine's clock".to_owned(),
            "check this machine's clock (NTP)".to_owned(),
        ),
        Some(Error::InvalidMessage(_)) => not_tls,
        Some(Error::InvalidCertificate(_)) => untrusted,
        _ if e.kind() == io::ErrorKind::UnexpectedEof => (
            "the server closed the connection during the TLS handshake".to_owned(),
            format!("check the port ({PORTS}) and that TLS 1.2 or later is allowed"),
        ),
        _ => (
            "the TLS handshake failed".to_owned(),
            format!("check the port ({PORTS}) and any proxy in between"),
        ),
    };
    Check::failed("tls", format!("handshake with {host} failed: {e}"), cause, fix)
}

/// The platform's roots (which honour `SSL_CERT_FILE`), plus `ca_pem`.
fn tls_connector(ca_pem: Option<&[u8]>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(pem) = ca_pem {
        let mut count = 0;
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| format!("the CA file is not PEM: {e}"))?;
            roots
                .add(certificate)
                .map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
            count += 1;
        }
        if count == 0 {
            return Err("the CA file holds no certificate".to_owned());
        }
    } else if added == 0 {
        return Err("this machine has no trusted CA certificates (install ca-certificates)".to_owned());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    #[test]
    fn auth_replies_name_their_cause() {
        assert_eq!(auth_verdict("+OK", "oid").status, Status::Passed);
        let wrongpass = auth_verdict(
            "-WRONGPASS invalid username-password pair or user is disabled.",
            "0000-oid",
        );
        assert_eq!(wrongpass.status, Status::Failed);
        assert!(wrongpass.cause.unwrap().contains("access policy assignment"));
        assert!(wrongpass.fix.unwrap().contains("0000-oid"));
        let open = auth_verdict(
            "-ERR AUTH <password> called without any password configured for the default user.",
            "oid",
        );
        assert!(open.cause.unwrap().contains("no authentication"));
    }

    #[test]
    fn ping_replies_name_their_cause() {
        assert_eq!(ping_verdict("+PONG", Duration::ZERO).status, Status::Passed);
        let noperm = ping_verdict(
            "-NOPERM this user has no permissions to run the 'ping' command",
            Duration::ZERO,
        );
        assert!(noperm.cause.unwrap().contains("access policy"));
    }

    #[tokio::test]
    async fn a_tls_record_or_silence_in_plain_mode_means_the_port_wants_tls() {
        let target = Target {
            host: "h".into(),
            port: 1,
            tls: false,
            ca_pem: None,
            timeout: Duration::from_millis(50),
        };
        let (mut client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32])
            .await
            .unwrap();
        let failure = exchange(&mut client, b"PING\r\n", target.timeout).await.unwrap_err();
        assert_eq!(failure, NoReply::TlsRecord);
        let check = no_reply("auth", failure, &target);
        assert!(
            check.cause.as_deref().unwrap_or_default().contains("expects TLS"),
            "{check:?}"
        );
        drop(server);
        let closed = exchange(&mut client, b"PING\r\n", target.timeout).await.unwrap_err();
        assert!(matches!(closed, NoReply::Closed | NoReply::Io(_)), "{closed:?}");
    }

    #[tokio::test]
    async fn replies_are_read_line_by_line() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        server.write_all(b"+OK\r\n+PONG\r\n").await.unwrap();
        assert_eq!(read_line(&mut client).await.unwrap(), "+OK");
        assert_eq!(read_line(&mut client).await.unwrap(), "+PONG");
        assert_eq!(
            command(&[b"AUTH", b"u", b"p"]),
            b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$1\r\np\r\n"
        );
    }
}
