//! The Redis gateway: TLS in front of a real redis-server, enforcing Entra ID tokens the
//! way Azure Managed Redis does.
//!
//! Before authentication only `AUTH`, `HELLO … AUTH …` and `QUIT` are accepted; anything
//! else gets `-NOAUTH`. `AUTH <oid> <token>` succeeds only for an unexpired token signed by
//! the token service, for Redis, whose `oid` is the username. Each connection remembers
//! when its token expires; a later valid `AUTH` moves that instant; when it passes, the
//! connection is closed without a reply. Everything else goes through unchanged, both
//! ways (the server's replies and pushes are copied byte for byte).
//!
//! Like Redis, a RESP2 connection in subscribed mode cannot re-authenticate: its `AUTH`
//! (or `HELLO … AUTH`) is passed on without its token, the server refuses it (`ERR
//! Can't execute 'auth' … in this context`), and the connection's expiry does not move.
//! The gateway follows the commands to know the mode: `SUBSCRIBE`-like commands add
//! channels, `UNSUBSCRIBE`-like ones remove them (all of their kind without arguments),
//! `RESET` clears them, `HELLO 2|3` sets the protocol.
//!
//! Replies stay in order because `AUTH`/`HELLO` are forwarded too, rewritten: a valid one
//! becomes `AUTH default <anything>` (the upstream's default user has no password, so it
//! answers `+OK`), an invalid one `AUTH <no such user> x` (the upstream answers
//! `-WRONGPASS …`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::resp::{Parsed, encode_command, parse_command};
use crate::stats::Stats;
use crate::token_service::TokenService;

const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
const INVALID_USER: &[u8] = b"entraid-emulator-no-such-user";

pub(crate) async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    upstream: String,
    service: Arc<TokenService>,
) {
    loop {
        let Ok((socket, peer)) = listener.accept().await else {
            continue;
        };
        let tls = tls.clone();
        let upstream = upstream.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let Ok(client) = tls.accept(socket).await else {
                tracing::debug!(%peer, "TLS handshake failed");
                return;
            };
            let Ok(server) = TcpStream::connect(&upstream).await else {
                tracing::warn!(upstream, "cannot reach the upstream redis-server");
                return;
            };
            Stats::bump(&service.stats.connections);
            let id = service.stats.connections.load(std::sync::atomic::Ordering::Relaxed);
            tracing::info!(connection = id, %peer, "connection accepted");
            relay(id, client, server, service).await;
        });
    }
}

/// What one client connection has proven.
struct Session {
    id: u64,
    authenticated: bool,
    /// When the token that authenticated this connection expires.
    expires_at: Option<Instant>,
    /// The connection speaks RESP3 (after a successful `HELLO 3`).
    resp3: bool,
    /// Channels, patterns and shard channels it is subscribed to, by kind.
    subscriptions: HashSet<(SubscriptionKind, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SubscriptionKind {
    Channel,
    Pattern,
    Shard,
}

async fn relay<C: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    id: u64,
    client: C,
    server: TcpStream,
    service: Arc<TokenService>,
) {
    let (mut client_read, client_write) = tokio::io::split(client);
    let (mut server_read, server_write) = server.into_split();
    let client_write = Arc::new(tokio::sync::Mutex::new(client_write));
    let server_write = Arc::new(tokio::sync::Mutex::new(server_write));
    let mut session = Session {
        id,
        authenticated: false,
        expires_at: None,
        resp3: false,
        subscriptions: HashSet::new(),
    };

    // Server to client: bytes through, unchanged.
    let to_client = client_write.clone();
    let mut downstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.lock().await.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut pending = Vec::with_capacity(16 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    let reason = loop {
        let expiry = session.expires_at;
        let read = tokio::select! {
            read = client_read.read(&mut buf) => read,
            () = sleep_until(expiry) => {
                Stats::bump(&service.stats.cut_connections);
                break "token expired: connection closed without a reply, as Azure Managed Redis does";
            }
            _ = &mut downstream => break "the server closed the connection",
        };
        let n = match read {
            Ok(0) | Err(_) => break "the client closed the connection",
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        loop {
            match parse_command(&pending) {
                Parsed::Incomplete => break,
                Parsed::Invalid(why) => {
                    let reply = format!("-ERR Protocol error: {why}\r\n");
                    let _ = client_write.lock().await.write_all(reply.as_bytes()).await;
                    pending.clear();
                    break;
                }
                Parsed::Command(args, used) => {
                    pending.drain(..used);
                    if args.is_empty() {
                        continue;
                    }
                    match session.route(args, &service) {
                        Route::Forward(bytes) => {
                            if server_write.lock().await.write_all(&bytes).await.is_err() {
                                break;
                            }
                        }
                        Route::Reply(bytes) => {
                            let _ = client_write.lock().await.write_all(bytes).await;
                        }
                        Route::ReplyAndClose(bytes) => {
                            let _ = client_write.lock().await.write_all(bytes).await;
                            downstream.abort();
                            return;
                        }
                    }
                }
            }
        }
    };
    downstream.abort();
    let _ = client_write.lock().await.shutdown().await;
    tracing::info!(connection = id, reason, "connection closed");
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

enum Route {
    Forward(Vec<u8>),
    Reply(&'static [u8]),
    ReplyAndClose(&'static [u8]),
}

impl Session {
    fn route(&mut self, mut args: Vec<Vec<u8>>, service: &TokenService) -> Route {
        let name = args[0].to_ascii_uppercase();
        match name.as_slice() {
            b"AUTH" if self.authenticated && self.cannot_authenticate() => {
                self.refuse_in_subscribed_mode(service);
                Route::Forward(encode_command(&upstream_auth(true)))
            }
            b"AUTH" => {
                let (user, token) = match args.len() {
                    2 => ("default".to_owned(), args[1].clone()),
                    3 => (String::from_utf8_lossy(&args[1]).into_owned(), args[2].clone()),
                    _ => return Route::Forward(encode_command(&args)),
                };
                let valid = self.check(&user, &token, service);
                Route::Forward(encode_command(&upstream_auth(valid)))
            }
            b"HELLO" => {
                let auth_at = args.iter().position(|a| a.eq_ignore_ascii_case(b"AUTH"));
                match auth_at {
                    Some(i) if args.len() > i + 2 && self.authenticated && self.cannot_authenticate() => {
                        self.refuse_in_subscribed_mode(service);
                        let auth = upstream_auth(true);
                        args[i + 1] = auth[1].clone();
                        args[i + 2] = auth[2].clone();
                        Route::Forward(encode_command(&args))
                    }
                    Some(i) if args.len() > i + 2 => {
                        let user = String::from_utf8_lossy(&args[i + 1]).into_owned();
                        let valid = self.check(&user, &args[i + 2].clone(), service);
                        if valid {
                            self.resp3 = args.get(1).is_some_and(|v| v.as_slice() == b"3");
                        }
                        let auth = upstream_auth(valid);
                        args[i + 1] = auth[1].clone();
                        args[i + 2] = auth[2].clone();
                        Route::Forward(encode_command(&args))
                    }
                    _ if !self.authenticated => Route::Reply(HELLO_NOAUTH),
                    _ => {
                        match args.get(1).map(Vec::as_slice) {
                            Some(b"3") => self.resp3 = true,
                            Some(b"2") => self.resp3 = false,
                            _ => {}
                        }
                        Route::Forward(encode_command(&args))
                    }
                }
            }
            b"QUIT" if !self.authenticated => Route::ReplyAndClose(b"+OK\r\n"),
            _ if !self.authenticated => Route::Reply(NOAUTH),
            _ => {
                self.track(&name, &args);
                Route::Forward(encode_command(&args))
            }
        }
    }

    /// Validates a token; on success the connection is authenticated until its expiry.
    fn check(&mut self, user: &str, token: &[u8], service: &TokenService) -> bool {
        if self.authenticated && service.faults.take_reauth_failure() {
            Stats::bump(&service.stats.auth_failures);
            tracing::info!(connection = self.id, user, "re-authentication refused (injected fault)");
            return false;
        }
        let token = String::from_utf8_lossy(token);
        match service.validate_access_token(user, &token) {
            Ok(exp) => {
                // The connection lives until the instant `exp` names.
                let left = (UNIX_EPOCH + Duration::from_secs(exp))
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                self.expires_at = Some(Instant::now() + left);
                if self.authenticated {
                    Stats::bump(&service.stats.reauthentications);
                    tracing::info!(
                        connection = self.id,
                        user,
                        expires_in_s = left.as_secs(),
                        "re-authenticated"
                    );
                } else {
                    Stats::bump(&service.stats.authentications);
                    tracing::info!(
                        connection = self.id,
                        user,
                        expires_in_s = left.as_secs(),
                        "authenticated"
                    );
                }
                self.authenticated = true;
                true
            }
            Err(why) => {
                Stats::bump(&service.stats.auth_failures);
                tracing::info!(connection = self.id, user, why, "AUTH refused");
                false
            }
        }
    }

    /// In RESP2 subscribed mode the server refuses `AUTH`, as Redis does.
    fn cannot_authenticate(&self) -> bool {
        !self.resp3 && !self.subscriptions.is_empty()
    }

    /// Follows the subscribed mode from the commands, which the server runs in order.
    fn track(&mut self, name: &[u8], args: &[Vec<u8>]) {
        let (kind, subscribe) = match name {
            b"SUBSCRIBE" => (SubscriptionKind::Channel, true),
            b"PSUBSCRIBE" => (SubscriptionKind::Pattern, true),
            b"SSUBSCRIBE" => (SubscriptionKind::Shard, true),
            b"UNSUBSCRIBE" => (SubscriptionKind::Channel, false),
            b"PUNSUBSCRIBE" => (SubscriptionKind::Pattern, false),
            b"SUNSUBSCRIBE" => (SubscriptionKind::Shard, false),
            b"RESET" => {
                self.subscriptions.clear();
                self.resp3 = false;
                return;
            }
            _ => return,
        };
        let names = &args[1..];
        if subscribe {
            self.subscriptions.extend(names.iter().map(|n| (kind, n.clone())));
        } else if names.is_empty() {
            self.subscriptions.retain(|(k, _)| *k != kind);
        } else {
            for n in names {
                self.subscriptions.remove(&(kind, n.clone()));
            }
        }
    }

    /// `AUTH` on a RESP2 subscribed connection: the caller passes it on without the token
    /// so the server answers with its own error, in order; the expiry does not move.
    fn refuse_in_subscribed_mode(&self, service: &TokenService) {
        Stats::bump(&service.stats.auth_failures);
        tracing::info!(
            connection = self.id,
            "AUTH refused: a RESP2 connection in subscribed mode cannot re-authenticate"
        );
    }
}

/// The `AUTH` sent upstream: the default user (no password) accepts any password; a user
/// that does not exist is refused with the server's own `WRONGPASS`.
fn upstream_auth(valid: bool) -> Vec<Vec<u8>> {
    if valid {
        vec![b"AUTH".to_vec(), b"default".to_vec(), b"entraid-emulator".to_vec()]
    } else {
        vec![b"AUTH".to_vec(), INVALID_USER.to_vec(), b"x".to_vec()]
    }
}
