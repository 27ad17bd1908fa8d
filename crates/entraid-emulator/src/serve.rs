//! What the three listeners share: an accept loop that backs off when `accept()` fails
//! (EMFILE, ENFILE, ENOBUFS… would otherwise fail again at once, in a hot loop), one task
//! per connection kept in a set, and a shutdown signal that ends them all.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The first pause after a failed `accept()`; it doubles at each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause: a listener retries at least once a second.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long stopping waits for connections to close themselves before aborting them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Tells every task of the emulator to stop: when [`Emulator::stop`](crate::Emulator::stop)
/// says so, or when the emulator is dropped (the sender with it).
#[derive(Debug, Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// The sender (keep it: dropping it stops everything too) and the first receiver.
    pub(crate) fn new() -> (watch::Sender<bool>, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (sender, Shutdown(receiver))
    }

    /// Returns once the emulator stops.
    pub(crate) async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// A source of connections: a [`TcpListener`], or a fake in tests.
pub(crate) trait Accept {
    type Connection;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Connection, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Connection = TcpStream;
    fn accept(&self) -> impl Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

/// Accepts with a backoff after failures, logging once per run of failures.
#[derive(Debug)]
pub(crate) struct AcceptLoop {
    name: &'static str,
    failures: u32,
    /// No `accept()` before this instant (after a failure).
    retry_at: Option<Instant>,
}

impl AcceptLoop {
    pub(crate) fn new(name: &'static str) -> AcceptLoop {
        AcceptLoop {
            name,
            failures: 0,
            retry_at: None,
        }
    }

    /// The pause after `failures` failures in a row: 100 ms, 200 ms, 400 ms, 800 ms, then 1 s.
    fn backoff(failures: u32) -> Duration {
        FIRST_BACKOFF
            .saturating_mul(1 << failures.saturating_sub(1).min(10))
            .min(MAX_BACKOFF)
    }

    /// The next connection. Cancel-safe: cancelled during a pause, the next call waits out
    /// the rest of it.
    pub(crate) async fn next<A: Accept>(&mut self, listener: &A) -> (A::Connection, SocketAddr) {
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            match listener.accept().await {
                Ok(accepted) => {
                    if self.failures > 0 {
                        tracing::info!(
                            listener = self.name,
                            failures = self.failures,
                            "accepting connections again"
                        );
                        self.failures = 0;
                    }
                    return accepted;
                }
                Err(error) => {
                    self.failures = self.failures.saturating_add(1);
                    if self.failures == 1 {
                        tracing::warn!(
                            listener = self.name,
                            %error,
                            "accept failed; retrying every 100 ms to 1 s until it works again"
                        );
                    }
                    self.retry_at = Some(Instant::now() + Self::backoff(self.failures));
                }
            }
        }
    }
}

/// Accepts connections until `shutdown`, running `handle` for each in a task of its own;
/// then stops accepting, gives the connections [`STOP_GRACE`] to close (each is handed the
/// same shutdown signal) and aborts what is left. Returns when every connection task has
/// ended.
pub(crate) async fn serve_connections<A, F, Fut>(listener: A, name: &'static str, mut shutdown: Shutdown, mut handle: F)
where
    A: Accept,
    F: FnMut(A::Connection, SocketAddr, Shutdown) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    enum Event<C> {
        Accepted(C, SocketAddr),
        Ended,
        Stop,
    }
    let mut connections = JoinSet::new();
    let mut accept = AcceptLoop::new(name);
    loop {
        let event = tokio::select! {
            (connection, peer) = accept.next(&listener) => Event::Accepted(connection, peer),
            Some(_) = connections.join_next(), if !connections.is_empty() => Event::Ended,
            () = shutdown.wait() => Event::Stop,
        };
        match event {
            Event::Accepted(connection, peer) => {
                connections.spawn(handle(connection, peer, shutdown.clone()));
            }
            Event::Ended => {}
            Event::Stop => break,
        }
    }
    drop(listener);
    let open = connections.len();
    let closed = tokio::time::timeout(STOP_GRACE, async { while connections.join_next().await.is_some() {} }).await;
    if closed.is_err() {
        tracing::warn!(
            listener = name,
            left = connections.len(),
            "connections still open after {STOP_GRACE:?}: aborted"
        );
    }
    connections.shutdown().await;
    tracing::debug!(listener = name, open, "stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A listener whose `accept()` always fails, as under EMFILE.
    struct Failing(Arc<AtomicU32>);

    impl Accept for Failing {
        type Connection = ();
        fn accept(&self) -> impl Future<Output = std::io::Result<((), SocketAddr)>> + Send {
            let calls = self.0.clone();
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                // Lets a hot loop be seen (and the test end) instead of hanging the runtime.
                tokio::task::yield_now().await;
                Err(std::io::Error::other("Too many open files (os error 24)"))
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failing_accepts_back_off_from_100_ms_to_1_s() {
        let calls = Arc::new(AtomicU32::new(0));
        let listener = Failing(calls.clone());
        let mut accept = AcceptLoop::new("test");
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), accept.next(&listener)).await;
        assert!(outcome.is_err(), "never accepted");
        // Retries at 0, 0.1, 0.3, 0.7, 1.5, 2.5, … 9.5 s: 13 calls in 10 s, not millions.
        let calls = calls.load(Ordering::Relaxed);
        assert_eq!(calls, 13, "accept() calls in 10 s");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(accept.failures, 13);
    }

    #[test]
    fn backoff_doubles_up_to_a_second() {
        let pauses: Vec<u64> = (1..=7).map(|n| AcceptLoop::backoff(n).as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(AcceptLoop::backoff(u32::MAX), MAX_BACKOFF);
    }

    /// A listener that hands out one connection, then nothing.
    struct Once(std::sync::Mutex<Option<tokio::io::DuplexStream>>);

    impl Accept for Once {
        type Connection = tokio::io::DuplexStream;
        fn accept(&self) -> impl Future<Output = std::io::Result<(tokio::io::DuplexStream, SocketAddr)>> + Send {
            let next = self.0.lock().unwrap().take();
            async move {
                match next {
                    Some(stream) => Ok((stream, SocketAddr::from(([127, 0, 0, 1], 1)))),
                    None => std::future::pending().await,
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_connections_that_listen_to_it_and_aborts_the_others() {
        use tokio::io::AsyncReadExt as _;
        for obedient in [true, false] {
            let (server_end, mut client_end) = tokio::io::duplex(64);
            let (stop, shutdown) = Shutdown::new();
            let serving = tokio::spawn(serve_connections(
                Once(std::sync::Mutex::new(Some(server_end))),
                "test",
                shutdown,
                move |stream, _, mut shutdown| async move {
                    if obedient {
                        shutdown.wait().await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                    drop(stream);
                },
            ));
            tokio::task::yield_now().await;
            let started = Instant::now();
            stop.send(true).unwrap();
            serving.await.unwrap();
            let mut buf = [0u8; 1];
            assert_eq!(client_end.read(&mut buf).await.unwrap(), 0, "the connection is closed");
            let expected = if obedient { Duration::ZERO } else { STOP_GRACE };
            assert_eq!(started.elapsed(), expected);
        }
    }
}
