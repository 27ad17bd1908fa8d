//! [`EntraIdCredentialsProvider`]: one token manager shared by every connection.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use entraid_identity::{IdentityProvider, Token};
use entraid_token_manager::{
    RenewalSpread, StartError, TokenManager, TokenManagerConfig, TokenManagerError, TokenStatus, TokenStream,
};
use futures_core::Stream;
use redis::auth::{BasicAuth, StreamingCredentialsProvider};
use redis::{ErrorKind, RedisError, RedisResult};

use crate::RetryConfig;
use crate::credentials_stream::CredentialsStream;
use crate::health::{ConnectionHealth, ProviderStatus};

/// How long a renewal may wait, at most, before it is sent to a connection, by default.
/// Each connection draws its own delay in `[0, spread)`, so a rotation does not hit the
/// server with every connection's `AUTH` at once. Never more than a tenth of the time the
/// replaced token had left (with the default 3-minute lower refresh bound, at least 18 s
/// are allowed, so 5 s always fits).
///
/// Chosen from `cargo xtask bench`, figure 2 (10 000 idle connections, a probe doing
/// SET+GET): spread off, a rotation stalls the probe for up to 140–290 ms; 1 s brings the
/// worst case to about 15–20 ms; 5 s to 6–12 ms with the probe's p99 unchanged.
pub const DEFAULT_REAUTH_SPREAD: Duration = Duration::from_secs(5);

/// Entra ID credentials for the `redis` crate's connections.
///
/// Build one per identity, [`start`](Self::start) it (or let the first connection start
/// it with defaults), and pass it (or clones: they share everything) to
/// `AsyncConnectionConfig::set_credentials_provider`,
/// `aio::ConnectionManagerConfig::set_credentials_provider` or
/// `cluster::ClusterClientBuilder::set_credentials_provider`.
///
/// One identity-provider request per refresh serves every connection. Each connection
/// gets the current token at once when it connects, then every renewal. A connection
/// with no credentials yet gets the reason as an error item; later refresh failures are
/// logged once by the token manager, not handed to every connection.
///
/// The redis crate's own connections send whatever the URL says: with `redis://` (plain
/// TCP) the token crosses the network in clear, and nothing here can refuse it. Always
/// use `rediss://` for Azure caches; this crate's own connection types
/// ([`crate::aio::ConnectionManager`], [`crate::Connection`], [`crate::aio::PubSub`])
/// refuse plain TCP to Azure cache hosts.
#[derive(Clone)]
pub struct EntraIdCredentialsProvider {
    shared: Arc<Shared>,
    reauth_spread: Duration,
}

struct Shared {
    identity: Arc<dyn IdentityProvider>,
    state: Mutex<State>,
    /// Per-process random keys: each connection's spread delay is a hash of its id.
    random: RandomState,
    next_stream: AtomicU64,
    /// What the connections report (see `status`).
    health: Arc<ConnectionHealth>,
    /// Bumped whenever a token manager starts (anew after `stop`, or again after its
    /// runtime shut down): connections whose token stream ended follow it.
    starts: tokio::sync::watch::Sender<u64>,
}

enum State {
    NotStarted,
    /// The manager, and the configuration it was started with (to start it again if
    /// its runtime shuts down).
    Running(TokenManager, Box<TokenManagerConfig>),
    /// `start` was given a configuration the token manager refused, or it could not
    /// start.
    Invalid(StartError),
}

impl EntraIdCredentialsProvider {
    /// A provider for any identity: your own [`IdentityProvider`], or one from
    /// `entraid-azure`.
    pub fn new_with_identity_provider(provider: impl IdentityProvider) -> Self {
        EntraIdCredentialsProvider {
            shared: Arc::new(Shared {
                identity: Arc::new(provider),
                state: Mutex::new(State::NotStarted),
                random: RandomState::new(),
                next_stream: AtomicU64::new(0),
                health: Arc::default(),
                starts: tokio::sync::watch::Sender::new(0),
            }),
            reauth_spread: DEFAULT_REAUTH_SPREAD,
        }
    }

    /// Starts fetching tokens with this retry configuration and the other settings at
    /// their defaults. See [`start_with_config`](Self::start_with_config).
    pub fn start(&mut self, retry: RetryConfig) {
        self.start_with_config(retry.to_token_manager_config());
    }

    /// Starts fetching tokens now, so the first connection finds one ready.
    ///
    /// Works inside or outside a tokio runtime: outside one, the manager runs on a small
    /// runtime of its own on a background thread. If the runtime it was started on shuts
    /// down (a temporary runtime, a test's), the next use starts it again on a runtime of
    /// its own, with a warning. An invalid configuration is logged and every connection
    /// attempt then fails with the reason (use
    /// [`try_start_with_config`](Self::try_start_with_config) to get it here). Starting a
    /// running provider again does nothing; starting one that was
    /// [`stop`](Self::stop)ped starts it anew.
    pub fn start_with_config(&mut self, config: TokenManagerConfig) {
        if let Err(error) = self.try_start_with_config(config) {
            tracing::error!(%error, "the Entra ID credentials provider was not started");
        }
    }

    /// Like [`start_with_config`](Self::start_with_config), returning why the manager did
    /// not start (a refused configuration, or no thread or runtime to be had).
    pub fn try_start_with_config(&mut self, config: TokenManagerConfig) -> Result<(), StartError> {
        self.shared.start(config).map(drop)
    }

    /// Spreads each renewal's `AUTH`s over `[0, spread)` per connection; zero sends them
    /// all at once. Default [`DEFAULT_REAUTH_SPREAD`]. A connection's first credentials
    /// are never delayed.
    pub fn with_reauth_spread(mut self, spread: Duration) -> Self {
        self.reauth_spread = spread;
        self
    }

    /// The current token, waiting for the first one (starting with defaults if needed).
    /// Returns an error once the first attempts have failed, so it never hangs for ever.
    ///
    /// Awaiting this before connecting keeps the first connection from waiting for the
    /// identity provider inside the redis client's connection timeout (1 s by default).
    pub async fn token(&self) -> Result<Token, TokenManagerError> {
        self.shared.manager()?.token().await
    }

    /// The current token, if one has arrived, without waiting.
    pub fn current_token(&self) -> Option<Token> {
        match &*self.shared.lock() {
            State::Running(manager, _) => manager.current(),
            State::NotStarted | State::Invalid(_) => None,
        }
    }

    /// Connections made through the redis crate's own paths (`AsyncConnectionConfig`,
    /// redis's `ConnectionManager`, the cluster client) whose re-authentication ended:
    /// the redis crate stops re-authenticating a connection after one failed `AUTH` (a
    /// timeout under load, a server stall), and the server closes it when its token
    /// expires. Each is also logged once at `error`. [`crate::aio::ConnectionManager`]
    /// retries instead, and replaces a connection before its token expires.
    pub fn lost_reauthentications(&self) -> u64 {
        self.shared.health.lost_reauthentications.load(Ordering::Relaxed)
    }

    /// Health at a glance, for health checks and dashboards: the token manager's status
    /// (the current token's username and expiry, never the secret; the latest refresh
    /// outcome and error; failures in a row; when the next attempt is due) and the
    /// connections' figures (live, re-authenticated on the latest renewal, retrying a
    /// failed `AUTH`, replaced, lost on the redis crate's own paths). Cheap: nothing is
    /// visited per connection. `Debug` shows no secret.
    ///
    /// ```
    /// # async fn f(provider: redis_entraid::EntraIdCredentialsProvider) {
    /// let status = provider.status();
    /// if !status.token.has_valid_token(std::time::SystemTime::now()) {
    ///     eprintln!("no valid Entra ID token: {:?}", status.token.last_outcome);
    /// }
    /// # }
    /// ```
    pub fn status(&self) -> ProviderStatus {
        let token = match &*self.shared.lock() {
            State::Running(manager, _) => manager.status(),
            State::NotStarted | State::Invalid(_) => TokenStatus::default(),
        };
        ProviderStatus {
            token,
            connections: self.shared.health.snapshot(),
        }
    }

    /// Stops refreshing tokens for every clone; connections then keep their current token
    /// until it expires. [`start`](Self::start) starts it again.
    pub fn stop(&self) {
        if let State::Running(manager, _) = &*self.shared.lock() {
            manager.stop();
        }
    }
}

impl EntraIdCredentialsProvider {
    /// The running token manager, started with defaults if nobody started it.
    pub(crate) fn token_manager(&self) -> RedisResult<TokenManager> {
        self.shared.manager().map_err(invalid_config)
    }

    /// A handle that does not keep the provider alive.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakProvider {
        WeakProvider {
            shared: Arc::downgrade(&self.shared),
            reauth_spread: self.reauth_spread,
        }
    }

    /// A connection's hold on this provider's token manager.
    pub(crate) fn manager_handle(&self) -> ManagerHandle {
        ManagerHandle(self.shared.clone())
    }

    /// The spread this provider's connections use for renewals.
    pub(crate) fn reauth_spread(&self) -> Duration {
        self.reauth_spread
    }
}

/// A provider that may be gone: for observers, which must not keep it alive.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct WeakProvider {
    shared: std::sync::Weak<Shared>,
    reauth_spread: Duration,
}

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
impl WeakProvider {
    pub(crate) fn upgrade(&self) -> Option<EntraIdCredentialsProvider> {
        Some(EntraIdCredentialsProvider {
            shared: self.shared.upgrade()?,
            reauth_spread: self.reauth_spread,
        })
    }
}

/// A connection's hold on its provider: keeps the token manager running while the
/// connection lives, and gives the connection a new token stream when the manager had to
/// be started again because the runtime it ran on shut down.
#[derive(Clone)]
pub(crate) struct ManagerHandle(Arc<Shared>);

impl ManagerHandle {
    /// A stream from the provider's running manager, after the previous one ended with
    /// [`TokenManagerError::RuntimeShutDown`]; `None` if the manager was stopped.
    pub(crate) fn resubscribe(&self) -> Option<TokenStream> {
        self.restarted_manager().map(|manager| manager.subscribe())
    }

    /// The figures every connection of this provider reports into.
    pub(crate) fn health(&self) -> &Arc<ConnectionHealth> {
        &self.0.health
    }

    /// The provider's running manager, started again if its runtime shut down; `None` if
    /// it was stopped.
    pub(crate) fn restarted_manager(&self) -> Option<TokenManager> {
        let manager = self.0.manager().ok()?;
        (!manager.is_stopped()).then_some(manager)
    }

    /// A stream from the provider's manager as soon as one runs: at once if one does,
    /// else when the provider is started again after a `stop`. Never ends otherwise.
    pub(crate) async fn next_start(&self) -> TokenStream {
        let mut starts = self.0.starts.subscribe();
        loop {
            if let Some(stream) = self.resubscribe() {
                return stream;
            }
            if starts.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start(&self, config: TokenManagerConfig) -> Result<TokenManager, StartError> {
        let mut state = self.lock();
        match &*state {
            State::Running(manager, _) if !manager.is_stopped() => {
                tracing::warn!(
                    "the Entra ID credentials provider is already started; the new configuration is ignored"
                );
                return Ok(manager.clone());
            }
            // A refused configuration may be followed by a valid one; a stopped manager
            // is started anew.
            State::Running(..) | State::Invalid(_) | State::NotStarted => {}
        }
        match start_manager(self.identity.clone(), config.clone(), Runtime::CallersIfAny) {
            Ok(manager) => {
                *state = State::Running(manager.clone(), Box::new(config));
                self.starts.send_modify(|n| *n += 1);
                Ok(manager)
            }
            Err(error) => {
                *state = State::Invalid(error.clone());
                Err(error)
            }
        }
    }

    /// The running manager, started with defaults if nobody started it, and started
    /// again on a runtime of its own if the runtime it ran on shut down. A manager the
    /// user stopped stays stopped. An invalid configuration stays an error here: it is
    /// never replaced by the defaults.
    fn manager(&self) -> Result<TokenManager, StartError> {
        let mut state = self.lock();
        match &*state {
            State::Running(manager, config) if manager.lost_its_runtime() => {
                tracing::warn!(
                    "the tokio runtime the Entra ID token manager ran on was shut down; it now runs on a \
                     runtime of its own (start the provider from a runtime that lives as long as the program \
                     to avoid this)"
                );
                let config = (**config).clone();
                let manager = start_manager(self.identity.clone(), config.clone(), Runtime::OwnThread)?;
                *state = State::Running(manager.clone(), Box::new(config));
                self.starts.send_modify(|n| *n += 1);
                return Ok(manager);
            }
            State::Running(manager, _) => return Ok(manager.clone()),
            State::Invalid(error) => return Err(error.clone()),
            State::NotStarted => {}
        }
        drop(state);
        self.start(TokenManagerConfig::default())
    }
}

/// Where a token manager runs.
#[derive(Clone, Copy)]
enum Runtime {
    /// On the caller's runtime when there is one, else on a thread of its own.
    CallersIfAny,
    /// On a runtime of its own, whatever the caller runs on.
    OwnThread,
}

/// On the caller's runtime when there is one; else on a runtime of its own.
fn start_manager(
    identity: Arc<dyn IdentityProvider>,
    config: TokenManagerConfig,
    runtime: Runtime,
) -> Result<TokenManager, StartError> {
    let manager = TokenManager::builder(identity).config(config);
    match (runtime, tokio::runtime::Handle::try_current()) {
        (Runtime::CallersIfAny, Ok(handle)) => manager.runtime(handle).start(),
        _ => manager.start_on_own_runtime(),
    }
}

impl StreamingCredentialsProvider for EntraIdCredentialsProvider {
    fn subscribe(&self) -> Pin<Box<dyn Stream<Item = RedisResult<BasicAuth>> + Send + 'static>> {
        match self.shared.manager() {
            Ok(manager) => {
                let id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
                let spread = RenewalSpread::new(self.reauth_spread, self.shared.random.hash_one(id));
                Box::pin(CredentialsStream::new(
                    manager.subscribe(),
                    self.manager_handle(),
                    spread,
                ))
            }
            Err(error) => Box::pin(tokio_stream::once(Err(invalid_config(error)))),
        }
    }
}

fn invalid_config(error: StartError) -> RedisError {
    RedisError::from((
        ErrorKind::InvalidClientConfig,
        "the Entra ID token manager did not start",
        error.to_string(),
    ))
}

impl fmt::Debug for EntraIdCredentialsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.shared.lock() {
            State::NotStarted => "not started".to_owned(),
            State::Running(manager, _) => format!("{manager:?}"),
            State::Invalid(error) => format!("invalid configuration: {error}"),
        };
        f.debug_struct("EntraIdCredentialsProvider")
            .field("state", &state)
            .field("reauth_spread", &self.reauth_spread)
            .finish()
    }
}
