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

mod maintenance;
mod relay;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use self::relay::relay;
use crate::serve::{Shutdown, serve_connections};
use crate::stats::GatewayStats;
use crate::token_service::TokenService;

/// The read buffer of a connection.
pub(crate) const READ_BUFFER: usize = 16 * 1024;
/// How long closing may take to send the TLS `close_notify` to a client that does not read.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

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

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::stats::Stats;

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
