//! [`Connection`]: a synchronous connection that stays authenticated, driven by the same
//! per-connection state machine as the async manager, one step before each command.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use entraid_token_manager::{
    Availability, ConnectionId, ConnectionOutput, ConnectionPolicy, ConnectionStateMachine, TokenManager,
    TokenManagerError,
};
use redis::{ErrorKind, RedisError, RedisResult, Value};

use crate::EntraIdCredentialsProvider;
use crate::health::GaugeShare;
use crate::plaintext_check::refuse_plaintext_to_azure;
use crate::provider::ManagerHandle;
use crate::token_feed::{TokenFeed, no_token_error, state_machine};

/// How a [`Connection`] connects, times out and re-authenticates.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    policy: ConnectionPolicy,
    response_timeout: Option<Duration>,
    allow_plaintext_to_azure: bool,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            policy: ConnectionPolicy {
                // One connection, one thread: nothing to spread.
                reauth_spread: Duration::ZERO,
                ..ConnectionPolicy::default()
            },
            response_timeout: None,
            allow_plaintext_to_azure: false,
        }
    }
}

impl ConnectionConfig {
    /// The defaults: no read timeout for commands (as `redis::Connection`), 5 s to
    /// connect, 5 s per re-authentication `AUTH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a command waits for its reply; `None` waits for ever.
    pub fn set_response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long opening a connection may take. Default 5 s.
    pub fn set_connection_timeout(mut self, timeout: Duration) -> Self {
        self.policy.connect_timeout = timeout;
        self
    }

    /// Allows `redis://` (plain TCP) to an Azure cache host, refused by default.
    pub fn allow_plaintext_to_azure(mut self, allow: bool) -> Self {
        self.allow_plaintext_to_azure = allow;
        self
    }

    /// The full re-authentication policy.
    pub fn set_policy(mut self, policy: ConnectionPolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// A synchronous Redis connection that stays authenticated with Entra ID, for code that
/// uses `redis::Commands` (and `r2d2` pools, with the `r2d2` feature).
///
/// `redis::Client::get_connection` never consults a credentials provider; this does,
/// before every command, with no thread of its own:
///
/// - if a newer token exists, it is sent as `AUTH` first (retried on the next commands
///   if refused);
/// - if the token that authenticated the connection is about to expire (the connection
///   sat idle, or every `AUTH` failed), the connection is replaced before the command,
///   so the server never cuts it under a command;
/// - a command whose write fails (the connection was found broken before it was sent) is
///   sent once more on a new connection; a failure while reading its reply is returned,
///   and the next command reconnects;
/// - while no valid token exists, commands fail at once saying so; the first command
///   after a token is back reconnects.
///
/// Works outside any runtime: the provider's token manager then runs on a thread of its
/// own.
///
/// ```no_run
/// use redis::Commands;
/// use redis_entraid::EntraIdCredentialsProvider;
///
/// # fn run() -> redis::RedisResult<()> {
/// let provider = EntraIdCredentialsProvider::new_system_assigned_managed_identity()?;
/// let client = redis::Client::open("rediss://my-cache.westeurope.redis.azure.net:10000")?;
/// let mut connection = redis_entraid::Connection::new(client, provider)?;
/// let () = connection.set("foo", "bar")?;
/// # Ok(()) }
/// ```
pub struct Connection {
    client: redis::Client,
    manager: TokenManager,
    /// The provider, for a restarted manager if `manager`'s runtime shut down.
    provider: ManagerHandle,
    /// This connection's share of the provider's connection figures.
    health: GaugeShare,
    /// Whether the last re-authentication `AUTH` failed (retried before later commands).
    retrying: bool,
    machine: ConnectionStateMachine,
    feed: TokenFeed,
    connections: HashMap<ConnectionId, redis::Connection>,
    response_timeout: Option<Duration>,
    connect_error: Option<RedisError>,
    token_error: Option<TokenManagerError>,
    db: i64,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.health.release(self.provider.health());
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("availability", &self.machine.availability())
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects with the provider's current token, waiting for the first one (bounded by
    /// the token manager's attempts). Blocks: call it from synchronous code.
    pub fn new(client: redis::Client, provider: EntraIdCredentialsProvider) -> RedisResult<Self> {
        Self::new_with_config(client, provider, ConnectionConfig::new())
    }

    /// Like [`new`](Self::new), with timeouts and the re-authentication policy.
    pub fn new_with_config(
        client: redis::Client,
        provider: EntraIdCredentialsProvider,
        config: ConnectionConfig,
    ) -> RedisResult<Self> {
        refuse_plaintext_to_azure(client.get_connection_info(), config.allow_plaintext_to_azure)?;
        if let Ok(handle) = tokio::runtime::Handle::try_current()
            && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
        {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "redis_entraid::Connection blocks, and this thread runs a tokio runtime",
                "use redis_entraid::aio::ConnectionManager in async code, or open the connection \
                 in tokio::task::spawn_blocking"
                    .to_owned(),
            )));
        }
        let manager = provider.token_manager()?;
        let first = match manager.current() {
            Some(token) => token,
            None => manager.blocking_token().map_err(no_token_error)?,
        };
        let machine = state_machine(config.policy)?;
        let db = client.get_connection_info().redis_settings().db();
        let mut connection = Connection {
            client,
            manager,
            provider: provider.manager_handle(),
            health: GaugeShare::default(),
            retrying: false,
            machine,
            feed: TokenFeed::default(),
            connections: HashMap::new(),
            response_timeout: config.response_timeout,
            connect_error: None,
            token_error: None,
            db,
        };
        connection.feed.offer(&mut connection.machine, Instant::now(), first);
        connection.step()?;
        Ok(connection)
    }

    /// Whether this connection can take a command now without reconnecting.
    pub fn is_connected(&self) -> bool {
        matches!(self.machine.availability(), Availability::Connected(_))
    }

    /// Brings the connection up to date (newest token, a connection whose token has
    /// time left) and returns the one to use.
    fn step(&mut self) -> RedisResult<ConnectionId> {
        let now = Instant::now();
        if self.manager.lost_its_runtime()
            && let Some(manager) = self.provider.restarted_manager()
        {
            self.manager = manager;
        }
        match self.manager.current() {
            Some(token) => {
                self.token_error = None;
                self.feed.offer(&mut self.machine, now, token);
            }
            None => self.machine.handle_token_lost(now),
        }
        self.machine.handle_timeout(now);
        self.act();
        match self.machine.availability() {
            Availability::Connected(id) => Ok(id),
            Availability::NoValidToken => Err(no_token_error(
                self.token_error.clone().unwrap_or(TokenManagerError::TokenExpired),
            )),
            Availability::Connecting | Availability::Reconnecting => {
                Err(self.connect_error.clone().unwrap_or_else(|| {
                    RedisError::from((ErrorKind::Io, "not connected", "the next command reconnects".to_owned()))
                }))
            }
        }
    }

    /// Carries out the machine's outputs, synchronously, until it waits for time.
    fn act(&mut self) {
        loop {
            match self.machine.poll_output() {
                ConnectionOutput::Connect {
                    id,
                    generation,
                    timeout,
                } => {
                    if self.machine.is_behind() {
                        self.provider.health().replaced();
                    }
                    let opened = match self.feed.get(generation) {
                        Some(token) => self.open(token, timeout),
                        None => Err(RedisError::from((ErrorKind::Client, "no token to connect with"))),
                    };
                    match opened {
                        Ok(connection) => {
                            self.connect_error = None;
                            self.connections.insert(id, connection);
                            self.machine.handle_connected(Instant::now(), id);
                        }
                        Err(error) => {
                            tracing::warn!(connection = %id, %error, "connecting to Redis failed");
                            self.connect_error = Some(error);
                            self.machine.handle_connect_failed(Instant::now(), id);
                        }
                    }
                }
                ConnectionOutput::SendAuth {
                    id,
                    generation,
                    timeout,
                } => {
                    let result = match (self.connections.get_mut(&id), self.feed.get(generation)) {
                        (Some(connection), Some(token)) => {
                            let auth = redis::cmd("AUTH").arg(token.username()).arg(token.secret()).to_owned();
                            let _ = connection.set_read_timeout(Some(timeout));
                            let result = auth.query::<()>(connection);
                            let _ = connection.set_read_timeout(self.response_timeout);
                            result
                        }
                        _ => Err(RedisError::from((ErrorKind::Client, "no such connection"))),
                    };
                    match result {
                        Err(error) if error.is_unrecoverable_error() => {
                            self.connections.remove(&id);
                            self.machine.handle_connection_lost(Instant::now(), id);
                        }
                        result => {
                            self.retrying = result.is_err();
                            match (&result, self.feed.get(generation)) {
                                (Ok(()), Some(token)) => self.provider.health().reauthenticated(token),
                                (Ok(()), None) => {}
                                (Err(error), _) => {
                                    tracing::warn!(connection = %id, %error, "re-authentication failed; retrying");
                                }
                            }
                            self.machine
                                .handle_auth_result(Instant::now(), id, generation, result.is_ok());
                        }
                    }
                }
                ConnectionOutput::Retire(id) | ConnectionOutput::Close(id) => {
                    // No command is in flight between two calls: closing is immediate.
                    self.connections.remove(&id);
                }
                ConnectionOutput::Timeout(_) | ConnectionOutput::Idle => {
                    self.retrying &= !self.connections.is_empty();
                    self.health.set(
                        self.provider.health(),
                        self.connections.len(),
                        usize::from(self.retrying),
                    );
                    return;
                }
                ConnectionOutput::Use(_) | _ => {}
            }
        }
    }

    fn open(&self, token: &entraid_identity::Token, timeout: Duration) -> RedisResult<redis::Connection> {
        let info = self.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_username(token.username())
            .set_password(token.secret());
        let client = redis::Client::open(info.set_redis_settings(settings))?;
        let connection = client.get_connection_with_timeout(timeout)?;
        connection.set_read_timeout(self.response_timeout)?;
        connection.set_write_timeout(Some(timeout))?;
        Ok(connection)
    }

    fn lost(&mut self, id: ConnectionId) {
        self.connections.remove(&id);
        self.machine.handle_connection_lost(Instant::now(), id);
    }

    fn connection(&mut self, id: ConnectionId) -> RedisResult<&mut redis::Connection> {
        self.connections
            .get_mut(&id)
            .ok_or_else(|| RedisError::from((ErrorKind::Client, "connection missing")))
    }
}

impl redis::ConnectionLike for Connection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        let mut id = self.step()?;
        if let Err(error) = self.connection(id)?.send_packed_command(cmd) {
            if !error.is_unrecoverable_error() {
                return Err(error);
            }
            // Not written: the connection was broken before it. Once more on a new one.
            tracing::info!(connection = %id, %error, "connection found broken before a command; reconnecting");
            self.lost(id);
            id = self.step()?;
            self.connection(id)?.send_packed_command(cmd)?;
        }
        loop {
            match self.connection(id)?.recv_response() {
                // RESP3 pushes between replies are not this command's reply.
                Ok(Value::Push { .. }) => continue,
                Ok(value) => return Ok(value),
                Err(error) => {
                    if error.is_unrecoverable_error() {
                        self.lost(id);
                    }
                    return Err(error);
                }
            }
        }
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let id = self.step()?;
        let result = self.connection(id)?.req_packed_commands(cmd, offset, count);
        if let Err(error) = &result
            && error.is_unrecoverable_error()
        {
            self.lost(id);
        }
        result
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.is_connected()
    }
}
