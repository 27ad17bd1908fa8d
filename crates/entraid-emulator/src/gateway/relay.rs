//! One client connection's relay to the upstream: commands read and routed by the
//! [`Session`](super::session::Session) policy, the server's bytes copied back with the
//! gateway's own pushes between whole replies, and the one way a connection closes.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::maintenance::Announcements;
use super::session::{Route, Session};
use super::{CLOSE_TIMEOUT, READ_BUFFER};
use crate::reply_frames::{Frames, whole_frames};
use crate::resp::CommandReader;
use crate::serve::Shutdown;
use crate::stats::GatewayStats;
use crate::token_service::TokenService;

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
pub(super) async fn relay<C, S, F, Fut>(
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
        session: Session::new(id),
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
    let mut announced = Announcements::default();
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
                let endpoint = relay.service.handoff_endpoint.as_deref();
                let push = announced.start(Instant::now(), seq, maintenance, endpoint);
                if relay.session.listens_for_maintenance() {
                    stats.bump(|s| &s.maintenance_pushes);
                    let _ = relay.pushes.send(push);
                }
            }
            () = sleep_until_some(announced.migrated_at()) => {
                if let Some(push) = announced.take_migrated()
                    && relay.session.listens_for_maintenance()
                {
                    stats.bump(|s| &s.maintenance_pushes);
                    let _ = relay.pushes.send(push);
                }
            }
            () = sleep_until_some(announced.moved_at()) => {
                stats.bump(|s| &s.moved_connections_closed);
                break "the endpoint moved (MOVING): the connection is closed at the announced time".into();
            }
            () = shutdown.wait() => break "the emulator is stopping".into(),
        }
    };
    relay.close(&reason).await;
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{DuplexStream, ReadBuf};

    use super::*;
    use crate::resp::encode_command;
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

    /// An upstream the relay reaches once, and the test's end of it (the "redis-server").
    fn one_upstream() -> (
        impl FnMut() -> std::future::Ready<std::io::Result<DuplexStream>> + Send + 'static,
        DuplexStream,
    ) {
        let (upstream, redis) = tokio::io::duplex(64 * 1024);
        let mut upstream = Some(upstream);
        let connect =
            move || std::future::ready(upstream.take().ok_or(std::io::Error::from(std::io::ErrorKind::Other)));
        (connect, redis)
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
        let (connect, mut redis) = one_upstream();
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
        let (connect, mut redis) = one_upstream();
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
}
