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
//! Limits, for a gateway any local process can reach: the TLS handshake must finish
//! within [`Timeouts::handshake`] (10 s by default) and `AUTH` succeed within
//! [`Timeouts::auth`] (30 s; Redis has no such limit). Commands are read incrementally
//! with Redis's limits before `AUTH` (10 arguments of 16 KiB at most) and the emulator's
//! after (64 MiB; see [`crate::resp`]); a protocol error is answered in Redis's words and
//! the connection closed. The upstream connection is opened by the first command that
//! goes there, so clients that never authenticate cost the redis-server nothing.
//!
//! Replies stay in order because `AUTH`/`HELLO` are forwarded too, rewritten: a valid one
//! becomes `AUTH default <anything>` (the upstream's default user has no password, so it
//! answers `+OK`), an invalid one `AUTH <no such user> x` (the upstream answers
//! `-WRONGPASS …`).

use std::borrow::Cow;
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::access_token;
use crate::faults::Maintenance;
use crate::reply_frames::{Frames, whole_frames};
use crate::resp::{CommandReader, encode_command};
use crate::serve::{Shutdown, serve_connections};
use crate::stats::GatewayStats;
use crate::token_service::TokenService;

const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
const INVALID_USER: &[u8] = b"entraid-emulator-no-such-user";
/// The read buffer of a connection.
const READ_BUFFER: usize = 16 * 1024;
/// How long closing may take to send the TLS `close_notify` to a client that does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connection may take before it is useful.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From accept to the end of the TLS handshake.
    pub(crate) handshake: Duration,
    /// From the end of the handshake to a successful `AUTH`.
    pub(crate) auth: Duration,
}

pub(crate) async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    upstream: String,
    service: Arc<TokenService>,
    stats: GatewayStats,
    timeouts: Timeouts,
    shutdown: Shutdown,
) {
    serve_connections(listener, "gateway", shutdown, move |socket, peer, shutdown| {
        connection(
            socket,
            peer,
            tls.clone(),
            upstream.clone(),
            service.clone(),
            stats.clone(),
            timeouts,
            shutdown,
        )
    })
    .await;
}

/// One client: the TLS handshake (within its timeout), then [`relay`].
#[allow(clippy::too_many_arguments)]
async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    upstream: String,
    service: Arc<TokenService>,
    stats: GatewayStats,
    timeouts: Timeouts,
    mut shutdown: Shutdown,
) {
    let hold = service.faults.hold_handshakes();
    if !hold.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            () = shutdown.wait() => return,
        }
    }
    let Some(client) = handshake(&tls, socket, timeouts.handshake, &mut shutdown, peer).await else {
        return;
    };
    let id = stats.next_connection_id();
    tracing::info!(connection = id, %peer, "connection accepted");
    // Upstream is reached when the first command goes there: a client that never
    // authenticates costs the redis-server nothing.
    let connect = move || {
        let upstream = upstream.clone();
        async move {
            TcpStream::connect(&upstream).await.inspect_err(|e| {
                tracing::warn!(upstream, error = %e, "cannot reach the upstream redis-server");
            })
        }
    };
    relay(id, client, connect, service, stats, timeouts.auth, shutdown).await;
}

/// The TLS handshake, given at most `timeout`: a client that connects and sends nothing
/// (or stalls half-way) would otherwise hold its socket forever.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &tokio_rustls::TlsAcceptor,
    socket: S,
    timeout: Duration,
    shutdown: &mut Shutdown,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<S>> {
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(timeout, tls.accept(socket)) => accepted,
        () = shutdown.wait() => return None,
    };
    match accepted {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, ?timeout, "TLS handshake not finished in time: connection closed");
            None
        }
    }
}

/// What one client connection has proven.
struct Session {
    id: u64,
    authenticated: bool,
    /// When the token that authenticated this connection expires.
    expires_at: Option<Instant>,
    /// When the `drop_after_auth` fault closes it.
    drop_at: Option<Instant>,
    /// Inside `MULTI`: an `AUTH` is queued, and moves the deadline only at `EXEC`.
    in_multi: bool,
    /// The deadline an `AUTH` queued in the transaction sets at `EXEC`.
    queued_expiry: Option<Instant>,
    /// The connection speaks RESP3 (after a successful `HELLO 3`).
    resp3: bool,
    /// Channels, patterns and shard channels it is subscribed to, by kind.
    subscriptions: HashSet<(SubscriptionKind, Vec<u8>)>,
    /// It asked for maintenance notifications (`CLIENT MAINT_NOTIFICATIONS ON`).
    maintenance: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SubscriptionKind {
    Channel,
    Pattern,
    Shard,
}

/// Aborts the task when dropped, so a relay that is itself dropped takes its task along.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection between a client and the upstream.
struct Relay<C, S, F> {
    session: Session,
    service: Arc<TokenService>,
    stats: GatewayStats,
    reader: CommandReader,
    buf: Vec<u8>,
    client_read: ReadHalf<C>,
    client_write: Arc<Mutex<WriteHalf<C>>>,
    connect: F,
    upstream: Option<WriteHalf<S>>,
    /// Copies the server's bytes to the client, once connected.
    downstream: Option<AbortOnDrop>,
    /// Held by `downstream`: dropped when it ends, which wakes the relay.
    downstream_alive: Option<oneshot::Sender<()>>,
    /// The gateway's own pushes, which `downstream` writes between two whole replies.
    pushes: mpsc::UnboundedSender<Vec<u8>>,
    /// Taken by `downstream` when it starts.
    pushes_out: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
}

/// Relays one authenticated-or-not client connection until one of: the client closes,
/// the server closes, the token expires, the client did not authenticate within
/// `auth_timeout`, a protocol error, `QUIT`, a write fails either way, or the emulator
/// stops. Whichever it is, the connection is closed the same way (TLS `close_notify`,
/// then the socket) and one line logs why.
async fn relay<C, S, F, Fut>(
    id: u64,
    client: C,
    connect: F,
    service: Arc<TokenService>,
    stats: GatewayStats,
    auth_timeout: Duration,
    mut shutdown: Shutdown,
) where
    C: AsyncRead + AsyncWrite + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = std::io::Result<S>> + Send,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (alive, mut downstream_ended) = oneshot::channel::<()>();
    let (pushes, pushes_out) = mpsc::unbounded_channel();
    let mut relay = Relay {
        session: Session {
            id,
            authenticated: false,
            expires_at: None,
            drop_at: None,
            in_multi: false,
            queued_expiry: None,
            resp3: false,
            subscriptions: HashSet::new(),
            maintenance: false,
        },
        service,
        stats: stats.clone(),
        reader: CommandReader::default(),
        buf: vec![0u8; READ_BUFFER],
        client_read,
        client_write: Arc::new(Mutex::new(client_write)),
        connect,
        upstream: None,
        downstream: None,
        downstream_alive: Some(alive),
        pushes,
        pushes_out: Some(pushes_out),
    };
    let auth_deadline = Instant::now() + auth_timeout;
    let mut silences = relay.service.faults.silences();
    let mut maintenances = relay.service.faults.maintenances();
    // When a `MOVING` window ends (the connection is closed), and when a migration's
    // end is announced (with its sequence number).
    let mut moved_at: Option<Instant> = None;
    let mut migrated: Option<(Instant, u64)> = None;
    let reason: Cow<'static, str> = loop {
        let authenticated = relay.session.authenticated;
        let deadline = match relay.session.expires_at {
            Some(at) if authenticated => at,
            _ => auth_deadline,
        };
        let drop_at = relay.session.drop_at;
        tokio::select! {
            () = sleep_until_some(drop_at) => {
                stats.bump(|s| &s.dropped_connections);
                break "closed right after authentication (injected fault)".into();
            }
            step = relay.step() => if let Err(reason) = step {
                break reason;
            },
            () = tokio::time::sleep_until(deadline) => {
                if authenticated {
                    stats.bump(|s| &s.cut_connections);
                    break "token expired: connection closed without a reply, as Azure Managed Redis does".into();
                }
                break format!("not authenticated within {auth_timeout:?}").into();
            }
            _ = &mut downstream_ended => break "the server closed the connection".into(),
            Ok(()) = silences.changed() => {
                // A silent path: nothing more either way, the sockets left open.
                tracing::info!(connection = id, "connection silenced (injected fault)");
                relay.downstream = None;
                shutdown.wait().await;
                break "the emulator is stopping".into();
            }
            Ok((seq, maintenance)) = maintenances.recv(), if relay.session.authenticated => {
                let now = Instant::now();
                let push = match maintenance {
                    // The server closes every connection when the time is up, told or not.
                    Maintenance::Moving { time, endpoint } => {
                        moved_at = Some(now + time);
                        let endpoint = relay.service.handoff_endpoint.as_deref().filter(|_| endpoint);
                        moving_push(seq, time, endpoint)
                    }
                    Maintenance::Migrating { time } => {
                        migrated = Some((now + time, seq + 1));
                        migrating_push(seq, time)
                    }
                };
                if relay.session.listens_for_maintenance() {
                    stats.bump(|s| &s.maintenance_pushes);
                    let _ = relay.pushes.send(push);
                }
            }
            () = sleep_until_some(migrated.map(|(at, _)| at)) => {
                if let Some((_, seq)) = migrated.take()
                    && relay.session.listens_for_maintenance()
                {
                    stats.bump(|s| &s.maintenance_pushes);
                    let _ = relay.pushes.send(migrated_push(seq));
                }
            }
            () = sleep_until_some(moved_at) => {
                stats.bump(|s| &s.moved_connections_closed);
                break "the endpoint moved (MOVING): the connection is closed at the announced time".into();
            }
            () = shutdown.wait() => break "the emulator is stopping".into(),
        }
    };
    relay.close(&reason).await;
}

/// `MOVING <seq> <time> <endpoint>`, the endpoint `_` (null) when there is none.
fn moving_push(seq: u64, time: Duration, endpoint: Option<&str>) -> Vec<u8> {
    let endpoint = match endpoint {
        Some(e) => format!("${}\r\n{e}\r\n", e.len()),
        None => "_\r\n".to_owned(),
    };
    format!(">4\r\n$6\r\nMOVING\r\n:{seq}\r\n:{}\r\n{endpoint}", time.as_secs()).into_bytes()
}

/// `MIGRATING <seq> <time> <shards>` (one shard, `1`).
fn migrating_push(seq: u64, time: Duration) -> Vec<u8> {
    format!(">4\r\n$9\r\nMIGRATING\r\n:{seq}\r\n:{}\r\n$1\r\n1\r\n", time.as_secs()).into_bytes()
}

/// `MIGRATED <seq> <shards>`.
fn migrated_push(seq: u64) -> Vec<u8> {
    format!(">3\r\n$8\r\nMIGRATED\r\n:{seq}\r\n$1\r\n1\r\n").into_bytes()
}

/// Copies the server's bytes to the client until either side ends, writing each push of
/// `pushes` at the first point where no reply is half-written.
async fn downstream<S, C>(
    mut server_read: ReadHalf<S>,
    to_client: Arc<Mutex<WriteHalf<C>>>,
    pushes: Option<mpsc::UnboundedReceiver<Vec<u8>>>,
) where
    S: AsyncRead + Send,
    C: AsyncWrite + Send,
{
    let mut buf = vec![0u8; READ_BUFFER];
    // The start of a reply not yet whole, and pushes waiting for its end.
    let mut partial: Vec<u8> = Vec::new();
    let mut waiting: Vec<Vec<u8>> = Vec::new();
    // After bytes the frame scanner cannot follow: copy only, inject nothing.
    let mut framing = true;
    let mut pushes = pushes;
    loop {
        let next_push = async {
            match pushes.as_mut() {
                Some(pushes) => pushes.recv().await,
                None => std::future::pending().await,
            }
        };
        let write: Vec<u8> = tokio::select! {
            read = server_read.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) if !framing => buf[..n].to_vec(),
                Ok(n) => {
                    partial.extend_from_slice(&buf[..n]);
                    let whole = match whole_frames(&partial) {
                        Frames::Whole(whole) => whole,
                        Frames::Unreadable => {
                            framing = false;
                            partial.len()
                        }
                    };
                    let mut out: Vec<u8> = partial.drain(..whole).collect();
                    if partial.is_empty() {
                        for push in waiting.drain(..) {
                            out.extend_from_slice(&push);
                        }
                    }
                    out
                }
            },
            push = next_push => match push {
                Some(push) if partial.is_empty() && framing => push,
                Some(push) => {
                    waiting.push(push);
                    continue;
                }
                None => {
                    pushes = None;
                    continue;
                }
            },
        };
        if !write.is_empty() && to_client.lock().await.write_all(&write).await.is_err() {
            return;
        }
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<C, S, F, Fut> Relay<C, S, F>
where
    C: AsyncRead + AsyncWrite + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = std::io::Result<S>> + Send,
{
    /// Reads once from the client and handles every command now complete. `Err` says why
    /// the connection must close.
    async fn step(&mut self) -> Result<(), Cow<'static, str>> {
        let n = match self.client_read.read(&mut self.buf).await {
            Ok(0) | Err(_) => return Err("the client closed the connection".into()),
            Ok(n) => n,
        };
        self.reader.feed(&self.buf[..n]);
        loop {
            let args = match self.reader.next_command(self.session.authenticated) {
                Ok(Some(args)) => args,
                Ok(None) => return Ok(()),
                Err(error) => {
                    // Redis answers, then closes the connection.
                    let _ = self.write_client(&error.reply()).await;
                    return Err(format!("{error}").into());
                }
            };
            match self.session.route(args, &self.service, &self.stats) {
                Route::Forward(bytes) => self.forward(&bytes).await?,
                Route::Reply(bytes) => self.write_client(bytes).await?,
                Route::ReplyAndClose(bytes) => {
                    let _ = self.write_client(bytes).await;
                    return Err("the client sent QUIT".into());
                }
            }
        }
    }

    /// Writes to the client (`&mut self`: a `&self` held across the write would need the
    /// whole relay to be `Sync`).
    async fn write_client(&mut self, bytes: &[u8]) -> Result<(), Cow<'static, str>> {
        let mut client = self.client_write.lock().await;
        client
            .write_all(bytes)
            .await
            .map_err(|_| "cannot write to the client")?;
        Ok(())
    }

    /// Sends a command upstream, connecting first if this is the first one.
    async fn forward(&mut self, bytes: &[u8]) -> Result<(), Cow<'static, str>> {
        if self.upstream.is_none() {
            let server = (self.connect)()
                .await
                .map_err(|_| "cannot reach the upstream redis-server")?;
            let (server_read, server_write) = tokio::io::split(server);
            let to_client = self.client_write.clone();
            let alive = self.downstream_alive.take();
            let pushes = self.pushes_out.take();
            // Server to client: bytes through, unchanged, with the gateway's own pushes
            // between two whole replies.
            self.downstream = Some(AbortOnDrop(tokio::spawn(async move {
                let _alive = alive;
                downstream(server_read, to_client, pushes).await;
            })));
            self.upstream = Some(server_write);
        }
        let Some(server) = self.upstream.as_mut() else {
            return Err("no upstream connection".into());
        };
        server
            .write_all(bytes)
            .await
            .map_err(|_| "cannot write to the server: it closed the connection")?;
        Ok(())
    }

    /// The one way out: stop copying, say goodbye to the client (bounded: it may not be
    /// reading), close both sockets, log why.
    async fn close(self, reason: &str) {
        let Relay {
            session,
            client_write,
            downstream,
            upstream,
            ..
        } = self;
        if let Some(mut downstream) = downstream {
            downstream.0.abort();
            // Wait for it, so it lets go of the client's write half.
            let _ = (&mut downstream.0).await;
        }
        drop(upstream);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async { client_write.lock().await.shutdown().await }).await;
        tracing::info!(connection = session.id, reason, "connection closed");
    }
}

enum Route {
    Forward(Vec<u8>),
    Reply(&'static [u8]),
    ReplyAndClose(&'static [u8]),
}

impl Session {
    fn route(&mut self, mut args: Vec<Vec<u8>>, service: &TokenService, stats: &GatewayStats) -> Route {
        let name = args[0].to_ascii_uppercase();
        match name.as_slice() {
            b"AUTH" if self.authenticated && self.cannot_authenticate() => {
                self.refuse_in_subscribed_mode(stats);
                Route::Forward(encode_command(&upstream_auth(true)))
            }
            b"AUTH" => {
                let (user, token) = match args.len() {
                    2 => ("default".to_owned(), args[1].clone()),
                    3 => (String::from_utf8_lossy(&args[1]).into_owned(), args[2].clone()),
                    _ => return Route::Forward(encode_command(&args)),
                };
                let valid = self.check(&user, &token, service, stats);
                Route::Forward(encode_command(&upstream_auth(valid)))
            }
            b"HELLO" => {
                let auth_at = args.iter().position(|a| a.eq_ignore_ascii_case(b"AUTH"));
                match auth_at {
                    Some(i) if args.len() > i + 2 && self.authenticated && self.cannot_authenticate() => {
                        self.refuse_in_subscribed_mode(stats);
                        let auth = upstream_auth(true);
                        args[i + 1] = auth[1].clone();
                        args[i + 2] = auth[2].clone();
                        Route::Forward(encode_command(&args))
                    }
                    Some(i) if args.len() > i + 2 => {
                        let user = String::from_utf8_lossy(&args[i + 1]).into_owned();
                        let valid = self.check(&user, &args[i + 2].clone(), service, stats);
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
            b"CLIENT"
                if args
                    .get(1)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"MAINT_NOTIFICATIONS")) =>
            {
                if service.faults.reject_maint_notifications() {
                    // The upstream is open-source Redis: it refuses the subcommand itself.
                    return Route::Forward(encode_command(&args));
                }
                // The gateway sends the notifications; the upstream answers `+OK` in
                // its place, so replies stay in order.
                self.maintenance = args.get(2).is_some_and(|a| a.eq_ignore_ascii_case(b"ON"));
                if self.maintenance {
                    stats.bump(|s| &s.maintenance_opt_ins);
                }
                Route::Forward(encode_command(&[b"CLIENT".to_vec(), b"REPLY".to_vec(), b"ON".to_vec()]))
            }
            _ => {
                self.track(&name, &args);
                self.follow_transaction(&name);
                Route::Forward(encode_command(&args))
            }
        }
    }

    /// Whether maintenance notifications go to this connection: asked for, on RESP3.
    fn listens_for_maintenance(&self) -> bool {
        self.authenticated && self.maintenance && self.resp3
    }

    /// Follows `MULTI`/`EXEC`/`DISCARD`, as the server runs them: an `AUTH` queued in a
    /// transaction takes effect at `EXEC`, and not at all after `DISCARD`.
    fn follow_transaction(&mut self, name: &[u8]) {
        match name {
            b"MULTI" => self.in_multi = true,
            b"EXEC" => {
                self.in_multi = false;
                if let Some(at) = self.queued_expiry.take() {
                    self.expires_at = Some(at);
                }
            }
            b"DISCARD" | b"RESET" => {
                self.in_multi = false;
                self.queued_expiry = None;
            }
            _ => {}
        }
    }

    /// Validates a token; on success the connection is authenticated until its expiry.
    fn check(&mut self, user: &str, token: &[u8], service: &TokenService, stats: &GatewayStats) -> bool {
        if self.authenticated && service.faults.take_reauth_failure() {
            stats.bump(|s| &s.auth_failures);
            tracing::info!(connection = self.id, user, "re-authentication refused (injected fault)");
            return false;
        }
        let token = String::from_utf8_lossy(token);
        match access_token::validate(&service.signer, &service.principals, user, &token) {
            Ok(exp) => {
                // The connection lives until the instant `exp` names.
                let left = (UNIX_EPOCH + Duration::from_secs(exp))
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                let at = Instant::now() + left;
                if self.authenticated && self.in_multi {
                    // Queued by the server: in force only if the transaction runs.
                    self.queued_expiry = Some(at);
                } else {
                    self.expires_at = Some(at);
                }
                if self.authenticated {
                    stats.bump(|s| &s.reauthentications);
                    tracing::info!(
                        connection = self.id,
                        user,
                        expires_in_s = left.as_secs(),
                        "re-authenticated"
                    );
                } else {
                    stats.bump(|s| &s.authentications);
                    if service.faults.drop_after_auth() {
                        self.drop_at = Some(Instant::now() + Duration::from_millis(100));
                    }
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
                stats.bump(|s| &s.auth_failures);
                tracing::info!(connection = self.id, user, %why, "AUTH refused");
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
    fn refuse_in_subscribed_mode(&self, stats: &GatewayStats) {
        stats.bump(|s| &s.auth_failures);
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{DuplexStream, ReadBuf};

    use super::*;
    use crate::stats::Stats;

    fn service() -> Arc<TokenService> {
        crate::token_service::tests::service()
    }

    /// `AUTH <oid> <token>` with a valid token for the default service principal.
    fn auth_command(service: &TokenService) -> Vec<u8> {
        let principal = &service.principals.service_principals[0];
        let token = service.issue(&principal.object_id, &principal.client_id).unwrap().token;
        encode_command(&[
            b"AUTH".to_vec(),
            principal.object_id.as_bytes().to_vec(),
            token.into_bytes(),
        ])
    }

    /// An upstream that accepts nothing: every write fails, reads never end.
    struct BrokenUpstream;

    impl AsyncRead for BrokenUpstream {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for BrokenUpstream {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Starts a relay for a client at the other end of the returned stream, with the
    /// upstream `connect` gives.
    fn start_relay<S, F, Fut>(
        service: &Arc<TokenService>,
        connect: F,
        auth_timeout: Duration,
    ) -> (DuplexStream, tokio::sync::watch::Sender<bool>, JoinHandle<()>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<S>> + Send + 'static,
    {
        let (client, server_side) = tokio::io::duplex(64 * 1024);
        let (stop, shutdown) = Shutdown::new();
        let stats = GatewayStats {
            total: service.stats.clone(),
            node: Arc::new(Stats::default()),
        };
        let task = tokio::spawn(relay(
            1,
            server_side,
            connect,
            service.clone(),
            stats,
            auth_timeout,
            shutdown,
        ));
        (client, stop, task)
    }

    /// What the relay sends until it closes the connection; `None` if it has not closed
    /// it within `limit`.
    async fn until_closed(client: &mut DuplexStream, limit: Duration) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        tokio::time::timeout(limit, client.read_to_end(&mut out))
            .await
            .ok()?
            .ok()?;
        Some(out)
    }

    fn no_upstream() -> impl FnMut() -> std::future::Ready<std::io::Result<DuplexStream>> + Send + 'static {
        || std::future::ready(Err(std::io::ErrorKind::ConnectionRefused.into()))
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_write_error_closes_the_client() {
        let service = service();
        let (mut client, _stop, task) = start_relay(
            &service,
            || std::future::ready(Ok::<_, std::io::Error>(BrokenUpstream)),
            Duration::from_secs(30),
        );
        client.write_all(&auth_command(&service)).await.unwrap();
        let sent = until_closed(&mut client, Duration::from_secs(5)).await;
        assert_eq!(sent, Some(Vec::new()), "closed, not left hanging");
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_dies_mid_connection_closes_the_client() {
        let service = service();
        let (upstream, mut redis) = tokio::io::duplex(64 * 1024);
        let mut upstream = Some(upstream);
        let connect =
            move || std::future::ready(upstream.take().ok_or(std::io::Error::from(std::io::ErrorKind::Other)));
        let (mut client, _stop, task) = start_relay(&service, connect, Duration::from_secs(30));
        client.write_all(&auth_command(&service)).await.unwrap();
        let mut seen = vec![0u8; 64];
        let n = redis.read(&mut seen).await.unwrap();
        assert!(
            seen[..n].starts_with(b"*3\r\n$4\r\nAUTH\r\n$7\r\ndefault"),
            "AUTH rewritten"
        );
        redis.write_all(b"+OK\r\n").await.unwrap();
        let mut ok = [0u8; 5];
        client.read_exact(&mut ok).await.unwrap();
        assert_eq!(&ok, b"+OK\r\n");
        drop(redis);
        assert_eq!(
            until_closed(&mut client, Duration::from_secs(5)).await,
            Some(Vec::new())
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_authenticates_is_cut_at_the_auth_timeout_even_trickling() {
        let service = service();
        // Silent.
        let (mut client, _stop, task) = start_relay(&service, no_upstream(), Duration::from_secs(30));
        let started = Instant::now();
        assert_eq!(
            until_closed(&mut client, Duration::from_secs(60)).await,
            Some(Vec::new())
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        task.await.unwrap();

        // Slowloris: a byte a second of a command it never finishes.
        let (mut client, _stop, task) = start_relay(&service, no_upstream(), Duration::from_secs(30));
        let started = Instant::now();
        let trickle = async {
            for byte in b"*2\r\n$4\r\nAUTH\r\n$16000\r\n".iter().cycle() {
                if client.write_all(std::slice::from_ref(byte)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), trickle).await;
        assert!(started.elapsed() <= Duration::from_secs(31), "{:?}", started.elapsed());
        assert_eq!(
            until_closed(&mut client, Duration::from_secs(1)).await,
            Some(Vec::new())
        );
        task.await.unwrap();

        // Authenticated in time: the deadline is then the token's.
        let (upstream, mut redis) = tokio::io::duplex(64 * 1024);
        let mut upstream = Some(upstream);
        let connect =
            move || std::future::ready(upstream.take().ok_or(std::io::Error::from(std::io::ErrorKind::Other)));
        let (mut client, _stop, task) = start_relay(&service, connect, Duration::from_secs(30));
        client.write_all(&auth_command(&service)).await.unwrap();
        let mut seen = vec![0u8; 256];
        let _ = redis.read(&mut seen).await.unwrap();
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert!(!task.is_finished(), "still open after the auth timeout");
        drop(client);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn protocol_errors_and_quit_reply_then_close() {
        let service = service();
        let cases: [(&[u8], &[u8]); 4] = [
            (b"*11\r\n", b"-ERR Protocol error: unauthenticated multibulk length\r\n"),
            (
                b"*2\r\n$4\r\nAUTH\r\n$104857600\r\n",
                b"-ERR Protocol error: unauthenticated bulk length\r\n",
            ),
            (b"*1\r\n\x01", b"-ERR Protocol error: expected '$', got '\x01'\r\n"),
            (b"PING\r\nQUIT\r\n", b"-NOAUTH Authentication required.\r\n+OK\r\n"),
        ];
        for (input, expected) in cases {
            let (mut client, _stop, task) = start_relay(&service, no_upstream(), Duration::from_secs(30));
            client.write_all(input).await.unwrap();
            let sent = until_closed(&mut client, Duration::from_secs(1)).await;
            assert_eq!(
                sent.as_deref().map(String::from_utf8_lossy),
                Some(String::from_utf8_lossy(expected))
            );
            task.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_a_connection_at_once() {
        let service = service();
        let (mut client, stop, task) = start_relay(&service, no_upstream(), Duration::from_secs(30));
        tokio::task::yield_now().await;
        let started = Instant::now();
        stop.send(true).unwrap();
        assert_eq!(
            until_closed(&mut client, Duration::from_secs(1)).await,
            Some(Vec::new())
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_tls_handshake_is_timed() {
        let pki = crate::Pki::generate().unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(pki.rustls_server_config().unwrap());
        let (_stop, mut shutdown) = Shutdown::new();
        // A client that connects and sends nothing.
        let (_client, socket) = tokio::io::duplex(1024);
        let started = Instant::now();
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let outcome = handshake(&tls, socket, Duration::from_secs(10), &mut shutdown, peer).await;
        assert!(outcome.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn connection_ids_are_unique_under_contention() {
        let stats = GatewayStats {
            total: Arc::new(Stats::default()),
            node: Arc::new(Stats::default()),
        };
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || (0..10_000).map(|_| stats.next_connection_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut ids: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 80_000);
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&80_000));
        assert_eq!(
            stats.node.connections.load(std::sync::atomic::Ordering::Relaxed),
            80_000
        );
    }
}
