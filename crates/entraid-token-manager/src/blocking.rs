//! A driver on plain std threads, for programs without an async runtime.
//!
//! It runs the same [`TokenStateMachine`] as the tokio driver: one manager thread that
//! waits on a channel with the state machine's deadline, and one short-lived thread per
//! token request that polls the provider's future to completion (at most
//! [`MAX_REQUEST_THREADS`] at once, so a provider that hangs cannot pile up threads).
//!
//! The provider's future is polled by a minimal executor, not inside a runtime, so the
//! provider must not need one: a provider built on reqwest/hyper (as the Azure ones are)
//! needs the tokio driver. A provider that panics (as those do without a runtime) is
//! reported as a transient error, not a dead thread.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant, SystemTime};

use entraid_identity::{ErrorOrigin, IdentityError, IdentityProvider, Token};

use crate::catch_panic::{request, request_span};
use crate::config::TokenManagerConfig;
use crate::error::{StartError, TokenManagerError};
use crate::snapshot::Snapshot;
use crate::state_machine::{MachineSource, Output, RequestId, TokenStateMachine};
use crate::status::TokenStatus;

/// Keeps a token fresh on a background thread; the blocking twin of
/// [`crate::TokenManager`].
///
/// Clones share the thread; dropping the last clone (or calling
/// [`stop`](TokenManager::stop)) stops it.
///
/// ```
/// # use entraid_identity::{IdentityError, IdentityProvider, Token};
/// # use std::time::{Duration, SystemTime};
/// use entraid_token_manager::{blocking::TokenManager, TokenManagerConfig};
/// # struct MyProvider;
/// # #[async_trait::async_trait]
/// # impl IdentityProvider for MyProvider {
/// #     async fn request_token(&self) -> Result<Token, IdentityError> {
/// #         let now = SystemTime::now();
/// #         Ok(Token::new("secret", "oid", now + Duration::from_secs(3600), now))
/// #     }
/// # }
///
/// let manager = TokenManager::start(MyProvider, TokenManagerConfig::default())?;
/// let token = manager.token()?;
/// assert_eq!(token.username(), "oid");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    messages: mpsc::Sender<Message>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.messages.send(Message::Stop);
    }
}

/// The published snapshot, with a sequence number so waiters know it changed.
struct Shared {
    state: Mutex<Published>,
    changed: Condvar,
}

struct Published {
    seq: u64,
    snapshot: Snapshot,
    /// Written after every event, read by [`TokenManager::status`].
    status: TokenStatus,
}

enum Message {
    Response(RequestId, Result<Token, IdentityError>),
    Stop,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Published> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, update: impl FnOnce(&mut Snapshot) -> bool) {
        let mut published = self.lock();
        if update(&mut published.snapshot) {
            published.seq += 1;
            drop(published);
            self.changed.notify_all();
        }
    }

    /// Waits until `ready` returns an item or `deadline` passes.
    fn wait<T>(&self, deadline: Option<Instant>, mut ready: impl FnMut(&Published) -> Option<T>) -> Option<T> {
        let mut published = self.lock();
        loop {
            if let Some(item) = ready(&published) {
                return Some(item);
            }
            published = match deadline {
                None => self.changed.wait(published).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline
                        .checked_duration_since(Instant::now())
                        .filter(|d| !d.is_zero())?;
                    self.changed
                        .wait_timeout(published, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

impl TokenManager {
    /// Validates `config` and starts the manager thread: the short form of
    /// `TokenManager::builder(provider).config(config).start()`.
    pub fn start(provider: impl IdentityProvider, config: TokenManagerConfig) -> Result<TokenManager, StartError> {
        Self::builder(provider).config(config).start()
    }

    /// A manager for `provider`, to configure before it starts: the configuration, or a
    /// state machine built by the caller.
    ///
    /// ```
    /// # use entraid_identity::{IdentityError, IdentityProvider, Token};
    /// # use std::time::{Duration, SystemTime};
    /// use entraid_token_manager::{blocking::TokenManager, TokenManagerConfig, TokenStateMachine};
    /// # struct MyProvider;
    /// # #[async_trait::async_trait]
    /// # impl IdentityProvider for MyProvider {
    /// #     async fn request_token(&self) -> Result<Token, IdentityError> {
    /// #         let now = SystemTime::now();
    /// #         Ok(Token::new("secret", "oid", now + Duration::from_secs(3600), now))
    /// #     }
    /// # }
    ///
    /// let manager = TokenManager::builder(MyProvider)
    ///     .state_machine(TokenStateMachine::with_seed(TokenManagerConfig::default(), 7)?)
    ///     .start()?;
    /// assert_eq!(manager.token()?.username(), "oid");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder<P: IdentityProvider>(provider: P) -> TokenManagerBuilder<P> {
        TokenManagerBuilder {
            provider,
            machine: MachineSource::default(),
        }
    }

    /// The current token, blocking until the first one arrives or the first
    /// `max_attempts` requests have failed.
    pub fn token(&self) -> Result<Token, TokenManagerError> {
        self.inner
            .shared
            .wait(None, |p| p.snapshot.first_item())
            .unwrap_or(Err(TokenManagerError::Stopped))
    }

    /// Like [`token`](Self::token), giving up after `timeout`.
    pub fn token_timeout(&self, timeout: Duration) -> Result<Token, TokenManagerError> {
        let deadline = Instant::now().checked_add(timeout);
        self.inner
            .shared
            .wait(deadline, |p| p.snapshot.first_item())
            .unwrap_or(Err(TokenManagerError::WaitTimedOut(timeout)))
    }

    /// The current token, if there is one, without waiting.
    pub fn current(&self) -> Option<Token> {
        self.inner.shared.lock().snapshot.valid_token().cloned()
    }

    /// A blocking iterator: the current token first (if there is one), then every renewal
    /// and reported error; it ends after [`TokenManagerError::Stopped`].
    pub fn subscribe(&self) -> TokenIter {
        TokenIter {
            shared: self.inner.shared.clone(),
            seen: None,
            done: false,
        }
    }

    /// Stops the manager thread.
    pub fn stop(&self) {
        let _ = self.inner.messages.send(Message::Stop);
    }

    /// Health at a glance; see [`TokenStatus`]. Cheap: no allocation per connection.
    pub fn status(&self) -> TokenStatus {
        let published = self.inner.shared.lock();
        let mut status = published.status.clone();
        status.running = !published.snapshot.is_stopped();
        status
    }
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let published = self.inner.shared.lock();
        f.debug_struct("blocking::TokenManager")
            .field("token", &published.snapshot.token)
            .field("event", &published.snapshot.event)
            .finish()
    }
}

/// Configures a blocking [`TokenManager`] before it starts; from
/// [`TokenManager::builder`].
///
/// Without [`config`](Self::config) or [`state_machine`](Self::state_machine) the
/// manager uses [`TokenManagerConfig::default`].
#[must_use = "a builder does nothing until `start` is called"]
pub struct TokenManagerBuilder<P> {
    provider: P,
    machine: MachineSource,
}

impl<P: IdentityProvider> TokenManagerBuilder<P> {
    /// The configuration, validated when the manager starts. Replaces a state machine
    /// given before.
    pub fn config(mut self, config: TokenManagerConfig) -> Self {
        self.machine = MachineSource::Config(config);
        self
    }

    /// A state machine built by the caller (for example one with a fixed jitter seed,
    /// [`TokenStateMachine::with_seed`]), instead of a [`config`](Self::config): it
    /// carries its own, already validated.
    pub fn state_machine(mut self, machine: TokenStateMachine) -> Self {
        self.machine = MachineSource::StateMachine(Box::new(machine));
        self
    }

    /// Starts the manager thread.
    ///
    /// Fails with [`StartError::InvalidConfig`] for a configuration it refuses, and with
    /// [`StartError::ThreadSpawn`] when the operating system refuses a thread.
    pub fn start(self) -> Result<TokenManager, StartError> {
        let machine = self.machine.build()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Published {
                seq: 0,
                snapshot: Snapshot::initial(),
                status: TokenStatus::default(),
            }),
            changed: Condvar::new(),
        });
        let (messages, inbox) = mpsc::channel();
        let driver = Driver {
            provider: Arc::new(self.provider),
            machine,
            shared: shared.clone(),
            outbox: messages.clone(),
            request_threads: Arc::new(AtomicUsize::new(0)),
        };
        thread::Builder::new()
            .name("entraid-token-manager".into())
            .spawn(move || driver.run(inbox))
            .map_err(|e| StartError::ThreadSpawn(e.to_string()))?;
        Ok(TokenManager {
            inner: Arc::new(Inner { shared, messages }),
        })
    }
}

impl<P> fmt::Debug for TokenManagerBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::TokenManagerBuilder")
            .field("machine", &self.machine)
            .finish_non_exhaustive()
    }
}

/// Tokens and errors from a blocking [`TokenManager`]; see [`TokenManager::subscribe`].
pub struct TokenIter {
    shared: Arc<Shared>,
    /// The sequence number of the last snapshot handed out; `None` before the first.
    seen: Option<u64>,
    done: bool,
}

impl Iterator for TokenIter {
    type Item = Result<Token, TokenManagerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let seen = self.seen;
        let (seq, item, stopped) = self.shared.wait(None, |p| {
            let item = match seen {
                None => p.snapshot.first_item(),
                Some(seq) if seq != p.seq => p.snapshot.change_item(),
                Some(_) => None,
            };
            item.map(|item| (p.seq, item, p.snapshot.is_stopped()))
        })?;
        self.seen = Some(seq);
        self.done = stopped;
        Some(item)
    }
}

impl fmt::Debug for TokenIter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIter")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

struct Driver<P> {
    provider: Arc<P>,
    machine: TokenStateMachine,
    shared: Arc<Shared>,
    outbox: mpsc::Sender<Message>,
    /// Request threads still running (a hung provider's stay).
    request_threads: Arc<AtomicUsize>,
}

impl<P: IdentityProvider> Driver<P> {
    fn run(mut self, inbox: mpsc::Receiver<Message>) {
        loop {
            let deadline = loop {
                match self.machine.poll_output() {
                    // A machine that has not started yet: start it on this driver's clock.
                    Output::NotStarted => {
                        self.machine.start(Instant::now());
                        self.machine.handle_wall_clock(Instant::now(), SystemTime::now());
                    }
                    Output::RequestToken(id) => self.spawn_request(id),
                    Output::Timeout(at) => break at,
                    output => self.shared.publish(|snapshot| snapshot.apply(output)),
                }
            };
            self.shared.lock().status = self.machine.status();
            let message = inbox.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            match message {
                Ok(Message::Response(id, result)) => self.machine.handle_response(Instant::now(), id, result),
                Err(RecvTimeoutError::Timeout) => self.machine.handle_wall_clock(Instant::now(), SystemTime::now()),
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.shared.publish(|snapshot| {
            snapshot.stop();
            true
        });
        tracing::info!("token manager stopped");
    }

    /// One thread per request, at most [`MAX_REQUEST_THREADS`] at once: a provider that
    /// hangs holds only its own thread while the state machine's timeout moves on, and a
    /// provider that hangs every time holds no more than that many. With all of them
    /// still busy, a request fails at once (transient) instead of starting another.
    fn spawn_request(&self, id: RequestId) {
        let Some(slot) = RequestSlot::take(&self.request_threads) else {
            let failure = IdentityError::transient(format!(
                "the identity provider has not answered {MAX_REQUEST_THREADS} earlier requests (each holds a \
                 thread); no new request is started until one of them returns: check the provider for a \
                 request that never finishes"
            ))
            .with_origin(ErrorOrigin::ProviderHung);
            let _ = self.outbox.send(Message::Response(id, Err(failure)));
            return;
        };
        let future = request(&self.provider);
        let outbox = self.outbox.clone();
        let span = request_span(id, &self.machine);
        let spawned = thread::Builder::new()
            .name("entraid-token-request".into())
            .spawn(move || {
                let result = span.in_scope(|| block_on(future));
                span.record("outcome", if result.is_ok() { "token" } else { "failed" });
                drop(slot);
                let _ = outbox.send(Message::Response(id, result));
            });
        if let Err(error) = spawned {
            let failure = IdentityError::transient(format!("could not start a thread for the token request: {error}"));
            let _ = self.outbox.send(Message::Response(id, Err(failure)));
        }
    }
}

/// The most request threads the blocking driver runs at once.
pub const MAX_REQUEST_THREADS: usize = 4;

/// One of the [`MAX_REQUEST_THREADS`] places, given back when dropped.
struct RequestSlot(Arc<AtomicUsize>);

impl RequestSlot {
    fn take(live: &Arc<AtomicUsize>) -> Option<RequestSlot> {
        live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_REQUEST_THREADS).then_some(n + 1)
        })
        .ok()
        .map(|_| RequestSlot(live.clone()))
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Polls a future to completion on this thread, parking between wake-ups.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct ThreadWaker(Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}
