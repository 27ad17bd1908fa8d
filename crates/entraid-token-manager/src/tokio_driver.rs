//! Runs the state machine on tokio and fans tokens out to any number of subscribers.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use entraid_identity::{IdentityProvider, Token};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::WatchStream;

use crate::catch_panic::{RequestFuture, request, request_span};
use crate::config::TokenManagerConfig;
use crate::error::{StartError, TokenManagerError};
use crate::snapshot::Snapshot;
use crate::state_machine::{MachineSource, Output, RequestId, TokenStateMachine};
use crate::status::TokenStatus;

/// Keeps a token fresh in a background tokio task and hands it to everyone who asks.
///
/// One manager serves any number of connections with one identity-provider request per
/// refresh. New tokens reach subscribers through one shared cell (a `tokio::sync::watch`),
/// not a queue per subscriber. Clones share the task; dropping the last clone (or
/// calling [`stop`](TokenManager::stop)) stops it.
///
/// ```
/// # use entraid_identity::{IdentityError, IdentityProvider, Token};
/// # use std::time::{Duration, SystemTime};
/// use entraid_token_manager::{TokenManager, TokenManagerConfig};
///
/// # struct MyProvider;
/// # #[async_trait::async_trait]
/// # impl IdentityProvider for MyProvider {
/// #     async fn request_token(&self) -> Result<Token, IdentityError> {
/// #         let now = SystemTime::now();
/// #         Ok(Token::new("secret", "oid", now + Duration::from_secs(3600), now))
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = TokenManager::start(MyProvider, TokenManagerConfig::default())?;
/// let token = manager.token().await?; // waits for the first token
/// assert_eq!(token.username(), "oid");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenManager {
    inner: Arc<Inner>,
}

struct Inner {
    snapshot: watch::Receiver<Snapshot>,
    /// Written by the task after every event, read by [`TokenManager::status`].
    status: Arc<Mutex<TokenStatus>>,
    /// Sending, or dropping with the last clone, stops the task.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl TokenManager {
    /// Validates `config` and starts the background task on the current tokio runtime:
    /// the short form of `TokenManager::builder(provider).config(config).start()`.
    ///
    /// Fails with [`StartError::NoTokioRuntime`] outside a runtime; there, use
    /// [`builder`](Self::builder) with a [`runtime`](TokenManagerBuilder::runtime) handle
    /// or [`start_on_own_runtime`](TokenManagerBuilder::start_on_own_runtime), or the
    /// thread-based [`blocking::TokenManager`](crate::blocking::TokenManager).
    pub fn start(provider: impl IdentityProvider, config: TokenManagerConfig) -> Result<TokenManager, StartError> {
        Self::builder(provider).config(config).start()
    }

    /// A manager for `provider`, to configure before it starts: the configuration (or a
    /// state machine built by the caller), the runtime it runs on.
    ///
    /// ```
    /// # use entraid_identity::{IdentityError, IdentityProvider, Token};
    /// # use std::time::{Duration, SystemTime};
    /// use entraid_token_manager::{TokenManager, TokenManagerConfig, TokenStateMachine};
    /// # struct MyProvider;
    /// # #[async_trait::async_trait]
    /// # impl IdentityProvider for MyProvider {
    /// #     async fn request_token(&self) -> Result<Token, IdentityError> {
    /// #         let now = SystemTime::now();
    /// #         Ok(Token::new("secret", "oid", now + Duration::from_secs(3600), now))
    /// #     }
    /// # }
    ///
    /// // No runtime here: the manager runs on a current-thread runtime of its own.
    /// let manager = TokenManager::builder(MyProvider)
    ///     .state_machine(TokenStateMachine::with_seed(TokenManagerConfig::default(), 7)?)
    ///     .start_on_own_runtime()?;
    /// assert_eq!(manager.blocking_token()?.username(), "oid");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder<P: IdentityProvider>(provider: P) -> TokenManagerBuilder<P> {
        TokenManagerBuilder {
            provider,
            machine: MachineSource::default(),
            runtime: None,
        }
    }

    fn spawn<P: IdentityProvider>(
        runtime: &tokio::runtime::Handle,
        provider: Arc<P>,
        machine: TokenStateMachine,
    ) -> TokenManager {
        let (publish, snapshot) = watch::channel(Snapshot::initial());
        let (stop_tx, stop_rx) = oneshot::channel();
        let status = Arc::new(Mutex::new(TokenStatus::default()));
        runtime.spawn(
            Driver {
                provider,
                machine,
                publish,
                status: status.clone(),
            }
            .run(stop_rx),
        );
        TokenManager {
            inner: Arc::new(Inner {
                snapshot,
                status,
                stop: Mutex::new(Some(stop_tx)),
            }),
        }
    }

    /// The current token, waiting for the first one if none has arrived yet.
    ///
    /// Never hangs for ever: once the first `max_attempts` requests have failed (or one
    /// has failed with a non-retryable error) it returns that error.
    pub async fn token(&self) -> Result<Token, TokenManagerError> {
        if self.lost_its_runtime() {
            return Err(TokenManagerError::RuntimeShutDown);
        }
        let mut snapshot = self.inner.snapshot.clone();
        loop {
            if let Some(item) = snapshot.borrow_and_update().first_item() {
                return item;
            }
            if snapshot.changed().await.is_err() {
                let ended = snapshot.borrow();
                return if ended.is_stopped() {
                    Err(TokenManagerError::Stopped)
                } else {
                    Err(TokenManagerError::RuntimeShutDown)
                };
            }
        }
    }

    /// Like [`token`](Self::token), blocking the calling thread: for synchronous code.
    ///
    /// The manager's task must run on another thread (a multi-thread runtime, or the
    /// runtime thread of a manager started outside any runtime); never call this from a
    /// task of the runtime the manager runs on.
    pub fn blocking_token(&self) -> Result<Token, TokenManagerError> {
        crate::blocking::block_on(self.token())
    }

    /// The current token, if there is one, without waiting.
    pub fn current(&self) -> Option<Token> {
        self.inner.snapshot.borrow().valid_token().cloned()
    }

    /// A stream of the current token (first, if there is one) and then every renewal and
    /// every reported error. An error never ends the stream; it ends after
    /// [`TokenManagerError::Stopped`] when the manager stops.
    pub fn subscribe(&self) -> TokenStream {
        TokenStream {
            changes: WatchStream::new(self.inner.snapshot.clone()),
            first: true,
            done: false,
        }
    }

    /// Stops the background task. Subscribers receive [`TokenManagerError::Stopped`].
    pub fn stop(&self) {
        let sender = self.inner.stop.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    /// Health at a glance: the current token's username and expiry (never its secret),
    /// the latest request's outcome and error, failures in a row, when the next attempt
    /// is due, and whether the manager still runs. Cheap: no allocation per connection.
    pub fn status(&self) -> TokenStatus {
        let mut status = self.inner.status.lock().unwrap_or_else(PoisonError::into_inner).clone();
        status.running = !self.is_stopped();
        status
    }

    /// Whether the manager was [`stop`](Self::stop)ped (from the call on, before its task
    /// has ended), or its task ended because its runtime shut down.
    pub fn is_stopped(&self) -> bool {
        // A stop asked for counts at once, before the task has seen it: a `start` right
        // after a `stop` must start a new manager, not keep the one about to end.
        let stop_asked = self.inner.stop.lock().unwrap_or_else(PoisonError::into_inner).is_none();
        stop_asked || self.inner.snapshot.has_changed().is_err() || self.inner.snapshot.borrow().is_stopped()
    }

    /// Whether the background task ended without being stopped: the tokio runtime it ran
    /// on was shut down. Handles then get [`TokenManagerError::RuntimeShutDown`]; start a
    /// new manager on a runtime that lives longer.
    pub fn lost_its_runtime(&self) -> bool {
        self.inner.snapshot.has_changed().is_err() && !self.inner.snapshot.borrow().is_stopped()
    }
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.inner.snapshot.borrow();
        f.debug_struct("TokenManager")
            .field("token", &snapshot.token)
            .field("event", &snapshot.event)
            .finish()
    }
}

/// Configures a [`TokenManager`] before it starts; from [`TokenManager::builder`].
///
/// Without [`config`](Self::config) or [`state_machine`](Self::state_machine) the
/// manager uses [`TokenManagerConfig::default`]; without [`runtime`](Self::runtime),
/// [`start`](Self::start) uses the current tokio runtime.
#[must_use = "a builder does nothing until `start` or `start_on_own_runtime` is called"]
pub struct TokenManagerBuilder<P> {
    provider: P,
    machine: MachineSource,
    runtime: Option<tokio::runtime::Handle>,
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

    /// Runs the manager's task on this runtime instead of the current one: so it can
    /// start outside any runtime, and outlive the runtime of the code that starts it.
    pub fn runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Starts the background task on the [`runtime`](Self::runtime) given, else on the
    /// current tokio runtime.
    ///
    /// Fails with [`StartError::InvalidConfig`] for a configuration it refuses, and with
    /// [`StartError::NoTokioRuntime`] when no runtime was given and none is current.
    pub fn start(self) -> Result<TokenManager, StartError> {
        let machine = self.machine.build()?;
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => tokio::runtime::Handle::try_current().map_err(|_| StartError::NoTokioRuntime)?,
        };
        Ok(TokenManager::spawn(&runtime, Arc::new(self.provider), machine))
    }

    /// Starts the manager on a current-thread tokio runtime of its own, on a background
    /// thread that ends when the manager stops: for programs without a runtime, and for
    /// managers that must outlive the runtime they were created on (a temporary
    /// `block_on`, a test's runtime). A [`runtime`](Self::runtime) given before is not
    /// used.
    pub fn start_on_own_runtime(self) -> Result<TokenManager, StartError> {
        let machine = self.machine.build()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("entraid-token-manager")
            .build()
            .map_err(|e| StartError::RuntimeBuild(e.to_string()))?;
        let manager = TokenManager::spawn(runtime.handle(), Arc::new(self.provider), machine);
        let mut until_stopped = manager.subscribe();
        std::thread::Builder::new()
            .name("entraid-token-manager".into())
            .spawn(move || {
                runtime.block_on(async move {
                    use tokio_stream::StreamExt as _;
                    while until_stopped.next().await.is_some() {}
                });
            })
            .map_err(|e| StartError::ThreadSpawn(e.to_string()))?;
        Ok(manager)
    }
}

impl<P> fmt::Debug for TokenManagerBuilder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManagerBuilder")
            .field("machine", &self.machine)
            .field("runtime_given", &self.runtime.is_some())
            .finish_non_exhaustive()
    }
}

/// Tokens and errors from a [`TokenManager`]; see [`TokenManager::subscribe`].
///
/// A slow reader skips intermediate items but always gets the newest token.
pub struct TokenStream {
    changes: WatchStream<Snapshot>,
    first: bool,
    done: bool,
}

impl futures_core::Stream for TokenStream {
    type Item = Result<Token, TokenManagerError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let Some(snapshot) = std::task::ready!(Pin::new(&mut self.changes).poll_next(cx)) else {
                // The task's sender went without saying "stopped": its runtime shut down.
                // Say so once, rather than ending as if all were well.
                self.done = true;
                return Poll::Ready(Some(Err(TokenManagerError::RuntimeShutDown)));
            };
            let item = if std::mem::take(&mut self.first) {
                snapshot.first_item()
            } else {
                snapshot.change_item()
            };
            if let Some(item) = item {
                self.done = snapshot.is_stopped();
                return Poll::Ready(Some(item));
            }
        }
    }
}

impl fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// The background task: owns the provider, the state machine and the publishing side.
struct Driver<P> {
    provider: Arc<P>,
    machine: TokenStateMachine,
    publish: watch::Sender<Snapshot>,
    status: Arc<Mutex<TokenStatus>>,
}

enum Wake {
    Stop,
    Response(RequestId, Result<Token, entraid_identity::IdentityError>),
    Timer,
}

impl<P: IdentityProvider> Driver<P> {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut pending: Option<(RequestId, RequestFuture)> = None;
        // The span of the request under way: a trace shows each attempt and its outcome.
        let mut span = tracing::Span::none();
        loop {
            let deadline = loop {
                match self.machine.poll_output() {
                    // A machine that has not started yet: start it on this driver's clock.
                    Output::NotStarted => {
                        self.machine.start(now());
                        self.machine.handle_wall_clock(now(), SystemTime::now());
                    }
                    Output::RequestToken(id) => {
                        span = request_span(id, &self.machine);
                        let future = request(&self.provider);
                        pending = Some((id, Box::pin(tracing::Instrument::instrument(future, span.clone()))));
                    }
                    Output::Timeout(at) => break Instant::from_std(at),
                    output => {
                        self.publish.send_if_modified(|snapshot| snapshot.apply(output));
                    }
                }
            };
            *self.status.lock().unwrap_or_else(PoisonError::into_inner) = self.machine.status();
            // A request the machine gave up on (timed out) is dropped, not awaited.
            if pending
                .as_ref()
                .is_some_and(|(id, _)| self.machine.in_flight_request() != Some(*id))
            {
                pending = None;
                span.record("outcome", "timed_out");
                span = tracing::Span::none();
            }
            let wake = tokio::select! {
                biased;
                _ = &mut stop => Wake::Stop,
                (id, result) = wait_for(&mut pending) => Wake::Response(id, result),
                () = tokio::time::sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Stop => break,
                Wake::Response(id, result) => {
                    pending = None;
                    span.record("outcome", if result.is_ok() { "token" } else { "failed" });
                    let span = std::mem::replace(&mut span, tracing::Span::none());
                    span.in_scope(|| self.machine.handle_response(now(), id, result));
                }
                Wake::Timer => self.machine.handle_wall_clock(now(), SystemTime::now()),
            }
        }
        self.publish.send_modify(Snapshot::stop);
        tracing::info!("token manager stopped");
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn wait_for(
    pending: &mut Option<(RequestId, RequestFuture)>,
) -> (RequestId, Result<Token, entraid_identity::IdentityError>) {
    match pending {
        Some((id, future)) => (*id, future.await),
        None => std::future::pending().await,
    }
}
