//! [`Connection`]: a synchronous connection that stays authenticated, driven by the same
//! per-connection state machine as the async types, one step before each command.
//!
//! The sync executor of the [`SupervisionCore`]: it has no task to run the async
//! supervisor in (it works outside any runtime, and between two calls nothing may touch
//! the socket), so it steps the same core inline before each command and does its I/O on
//! `redis::Connection`s. Counting, logging, tracing and health are the core's, as for
//! the async types.

use std::fmt;
use std::time::{Duration, Instant};

use entraid_token_manager::{ConnectionId, Renewal, TokenManager, TokenManagerError};
use redis::{ErrorKind, RedisError, RedisResult, Value};

use crate::EntraIdCredentialsProvider;
use crate::commands;
use crate::connection_config::{ConnectionConfig, ConnectionType};
use crate::session::{self, Effect, SessionState};
use crate::supervision::{ConnectionStats, Counters, IdMap, Io, OpenRequest, Shared, SupervisionCore};
use crate::token_feed::no_token_error;

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
///   sent once more on a new connection; a write or read that fails otherwise or times
///   out is returned, and the connection is never used again (part of a command, or a
///   reply, may still be on the wire): the next command goes to a new connection;
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
    core: SupervisionCore<()>,
    manager: TokenManager,
    connections: IdMap<redis::Connection>,
    response_timeout: Option<Duration>,
    db: i64,
    /// Session state the user set, replayed on every new connection.
    session: SessionState,
    /// The user's transaction or `WATCH`, which must not straddle a swap or an `AUTH`.
    transaction: Transaction,
}

/// Where the user's `MULTI`/`WATCH` stands.
#[derive(Debug, Default)]
struct Transaction {
    /// The connection it runs on.
    on: Option<ConnectionId>,
    multi: bool,
    watch: bool,
    /// A `MULTI` that can no longer run, and why: commands fail until `EXEC`/`DISCARD`.
    aborted: Option<&'static str>,
    /// A `WATCH` lost in a swap: the next `MULTI` or `EXEC` fails.
    watch_lost: bool,
}

impl Transaction {
    fn pins(&self) -> bool {
        self.multi || self.watch
    }

    /// The command is about to run on `id`: a swap since `MULTI` aborts the transaction,
    /// one since `WATCH` loses the watch.
    fn follow(&mut self, id: ConnectionId) {
        if !self.pins() || self.on == Some(id) {
            return;
        }
        if self.multi {
            self.aborted =
                Some("the connection was replaced during the transaction (its token could not be renewed in place)");
        }
        self.watch_lost |= self.watch;
        self.multi = false;
        self.watch = false;
    }

    /// What a command of `effect` gets before it is sent, if it must not be.
    fn refuse(&mut self, effect: Effect) -> Option<RedisResult<Value>> {
        if let Some(why) = self.aborted {
            return Some(match effect {
                Effect::Discard => {
                    self.aborted = None;
                    Ok(Value::Okay)
                }
                Effect::Exec => {
                    self.aborted = None;
                    Err(transaction_aborted(why))
                }
                _ => Err(transaction_aborted(why)),
            });
        }
        if self.watch_lost {
            match effect {
                Effect::Multi | Effect::Exec => {
                    self.watch_lost = false;
                    return Some(Err(watch_lost()));
                }
                Effect::Unwatch => self.watch_lost = false,
                _ => {}
            }
        }
        None
    }

    /// The server accepted a command of `effect` on `id`.
    fn accepted(&mut self, effect: Effect, id: ConnectionId) {
        match effect {
            Effect::Multi => {
                self.multi = true;
                self.on = Some(id);
            }
            Effect::Watch => {
                self.watch = true;
                self.on = Some(id);
            }
            Effect::Exec | Effect::Discard => {
                self.multi = false;
                self.watch = false;
            }
            Effect::Unwatch => self.watch = false,
            Effect::Plain | Effect::Setting(_) | Effect::Refused(..) => {}
        }
    }
}

fn transaction_aborted(why: &'static str) -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "transaction aborted, nothing of it ran",
        format!("{why}; send DISCARD or EXEC, then run the transaction again"),
    ))
}

fn watch_lost() -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "WATCH lost: the transaction did not run",
        "the connection was replaced after WATCH (its token had to be renewed), so the watched \
         keys are no longer watched; run the WATCH and the transaction again"
            .to_owned(),
    ))
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("availability", &self.core.availability())
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
        config.check(ConnectionType::Sync, &client)?;
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
        let machine = config.state_machine(&provider, Renewal::InPlace)?;
        let db = client.get_connection_info().redis_settings().db();
        let mut connection = Connection {
            core: SupervisionCore::new(machine, client, provider.manager_handle(), Shared::new(())),
            manager,
            connections: IdMap::with_capacity(1),
            response_timeout: config.response_timeout(ConnectionType::Sync),
            db,
            session: SessionState::default(),
            transaction: Transaction::default(),
        };
        connection.core.handle_token(Instant::now(), first);
        connection.step()?;
        Ok(connection)
    }

    /// Whether this connection can take a command now without reconnecting.
    pub fn is_connected(&self) -> bool {
        self.core.is_connected()
    }

    /// What happened to this connection's physical connections so far.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats::of(&self.core.shared().counters)
    }

    /// Brings the connection up to date (newest token, a connection whose token has
    /// time left) and returns the one to use.
    fn step(&mut self) -> RedisResult<ConnectionId> {
        let now = Instant::now();
        // A manager whose runtime shut down, or that was stopped and started again.
        if (self.manager.lost_its_runtime() || self.manager.is_stopped())
            && let Some(manager) = self.core.manager().restarted_manager()
        {
            self.manager = manager;
        }
        match self.manager.current() {
            Some(token) => self.core.handle_token(now, token),
            None => self.core.handle_token_lost(now, TokenManagerError::TokenExpired),
        }
        self.core.handle_timeout(now);
        self.act();
        match self.core.for_callers() {
            Ok(Some(id)) => Ok(id),
            // Connecting is done inline: still connecting means the attempt is over.
            Ok(None) => Err(RedisError::from((
                ErrorKind::Io,
                "not connected",
                "the next command reconnects".to_owned(),
            ))),
            Err(error) => Err(error),
        }
    }

    /// Does the I/O the core asks for, inline, until it waits for time.
    fn act(&mut self) {
        loop {
            match self.core.poll_io(Instant::now()) {
                Io::Open(OpenRequest {
                    id, client, timeout, ..
                }) => match self.open(&client, timeout) {
                    Ok(connection) => {
                        self.connections.insert(id, connection);
                        self.core.handle_opened(Instant::now(), id);
                    }
                    Err(error) => self.core.handle_open_failed(Instant::now(), id, error),
                },
                Io::Auth(request) => {
                    if self.transaction.multi {
                        // The renewal could not wait longer: end the transaction first, so
                        // the AUTH is not queued inside it.
                        self.abort_transaction(request.id);
                    }
                    let result = self
                        .query_within(request.id, &request.command, request.timeout)
                        .and_then(commands::auth_accepted);
                    self.core
                        .handle_auth_result(Instant::now(), request.id, request.generation, result);
                }
                // Never asked here (a sync connection that times out is retired), but
                // answered as asked: a PING within the timeout.
                Io::Probe { id, timeout } => {
                    let result = self.query_within(id, &commands::health_ping(), timeout).map(drop);
                    self.core.handle_probe_result(Instant::now(), id, result);
                }
                // Commands go to the core's choice, read after each step.
                Io::TakeOver(_) => {}
                // No command is in flight between two calls: a retired connection is
                // done at once.
                Io::Retire(id) => {
                    self.connections.remove(&id);
                    self.core.handle_drained(Instant::now(), id);
                }
                Io::Gone { id, .. } => {
                    self.connections.remove(&id);
                }
                Io::Wait(_) => {
                    self.core.publish_health(self.connections.len());
                    return;
                }
            }
        }
    }

    /// Sends `command` on `id` and reads its reply, waiting at most `timeout`.
    fn query_within(&mut self, id: ConnectionId, command: &redis::Cmd, timeout: Duration) -> RedisResult<Value> {
        let response_timeout = self.response_timeout;
        let connection = self.connection(id)?;
        let _ = connection.set_read_timeout(Some(timeout));
        let result = command.query::<Value>(connection);
        let _ = connection.set_read_timeout(response_timeout);
        result
    }

    fn open(&mut self, client: &redis::Client, timeout: Duration) -> RedisResult<redis::Connection> {
        let mut connection = client.get_connection_with_timeout(timeout)?;
        connection.set_read_timeout(self.response_timeout)?;
        connection.set_write_timeout(Some(timeout))?;
        for (setting, command) in self.session.replay() {
            if let Err(error) = command.query::<()>(&mut connection) {
                session::refused_on_replay(setting, error)?;
                self.session.forget(setting);
                Counters::bump(&self.core.shared().counters.settings_refused);
            }
        }
        Ok(connection)
    }

    /// Ends the user's transaction on `id` (`DISCARD`); its commands then fail until they
    /// send `EXEC` or `DISCARD`.
    fn abort_transaction(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.get_mut(&id) {
            let _: RedisResult<()> = redis::cmd("DISCARD").query(connection);
        }
        self.transaction.multi = false;
        self.transaction.aborted =
            Some("the token had to be renewed and the transaction did not end within the renewal margin");
        tracing::warn!(connection = %id, "a transaction was aborted so the connection could re-authenticate");
    }

    /// Tells the machine whether the connection holds the user's transaction or `WATCH`.
    fn pin(&mut self, id: ConnectionId) {
        self.core.handle_pinned(Instant::now(), id, self.transaction.pins());
    }

    /// The server accepted a command of `effect` (arguments `args`) on `id`.
    fn accepted(&mut self, effect: Effect, args: &[&[u8]], id: ConnectionId) {
        if let Effect::Setting(setting) = effect {
            self.session.record(setting, args.get(1..).unwrap_or_default());
        }
        let pinned = self.transaction.pins();
        self.transaction.accepted(effect, id);
        if pinned != self.transaction.pins() {
            self.pin(id);
        }
    }

    /// After an I/O error or a timeout the connection is out of step (a reply still to
    /// come, part of a command sent): it is never used again, the next command gets a
    /// new one. A server's error reply leaves it as it was.
    fn lost_if_unusable(&mut self, id: ConnectionId, error: &RedisError) {
        if error.is_unrecoverable_error() || error.is_io_error() || error.is_timeout() {
            self.lost(id);
        }
    }

    fn lost(&mut self, id: ConnectionId) {
        self.connections.remove(&id);
        self.core.handle_lost(Instant::now(), id);
    }

    fn connection(&mut self, id: ConnectionId) -> RedisResult<&mut redis::Connection> {
        self.connections
            .get_mut(&id)
            .ok_or_else(|| RedisError::from((ErrorKind::Client, "connection missing")))
    }
}

impl redis::ConnectionLike for Connection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        let parsed = session::commands(cmd).unwrap_or_default();
        let args = parsed.first().map(Vec::as_slice).unwrap_or_default();
        let effect = args
            .first()
            .map_or(Effect::Plain, |name| session::effect(name, args.get(1).copied()));
        if let Effect::Refused(what, instead) = effect {
            return Err(session::refused(what, instead));
        }
        let mut id = self.step()?;
        self.transaction.follow(id);
        if let Some(refused) = self.transaction.refuse(effect) {
            self.pin(id);
            return refused;
        }
        if let Err(error) = self.connection(id)?.send_packed_command(cmd) {
            // Whatever went wrong, the connection is not used again: a write that timed
            // out may have sent part of the command, which the next one would complete.
            self.lost(id);
            if !error.is_unrecoverable_error() || self.transaction.pins() {
                return Err(error);
            }
            // Not written: the connection was broken before it. Once more on a new one.
            tracing::info!(connection = %id, %error, "connection found broken before a command; reconnecting");
            id = self.step()?;
            if let Err(error) = self.connection(id)?.send_packed_command(cmd) {
                self.lost(id);
                return Err(error);
            }
        }
        loop {
            match self.connection(id)?.recv_response() {
                // RESP3 pushes between replies are not this command's reply.
                Ok(Value::Push { .. }) => continue,
                Ok(value) => {
                    // An `EXEC` answered `EXECABORT`, or a `DISCARD` refused, still leaves
                    // no transaction open on the server: a stale one would hold renewals
                    // back to the replace margin.
                    let ends_transaction = matches!(effect, Effect::Exec | Effect::Discard);
                    if !matches!(value, Value::ServerError(_)) || ends_transaction {
                        self.accepted(effect, args, id);
                    }
                    return Ok(value);
                }
                Err(error) => {
                    self.lost_if_unusable(id, &error);
                    return Err(error);
                }
            }
        }
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let parsed = session::commands(cmd).unwrap_or_default();
        let effects: Vec<Effect> = parsed
            .iter()
            .filter_map(|args| Some(session::effect(args.first()?, args.get(1).copied())))
            .collect();
        if let Some(Effect::Refused(what, instead)) = effects.iter().find(|e| matches!(e, Effect::Refused(..))) {
            return Err(session::refused(what, instead));
        }
        let id = self.step()?;
        self.transaction.follow(id);
        for effect in &effects {
            if let Some(refused) = self.transaction.refuse(*effect) {
                self.pin(id);
                return refused.map(|value| vec![value]);
            }
        }
        let result = self.connection(id)?.req_packed_commands(cmd, offset, count);
        match &result {
            Ok(replies) => {
                // A transaction's replies are EXEC's array, for the commands inside it.
                let transaction = effects.len() >= 2
                    && effects.first() == Some(&Effect::Multi)
                    && effects.last() == Some(&Effect::Exec);
                let inside = if transaction { effects.len() - 2 } else { effects.len() };
                let mut accepted = session::accepted(replies, inside, transaction);
                if transaction {
                    // MULTI and EXEC: the transaction ended, whatever ran inside it.
                    accepted.insert(0, true);
                    accepted.push(true);
                }
                for ((effect, args), accepted) in effects.into_iter().zip(&parsed).zip(accepted) {
                    if accepted {
                        self.accepted(effect, args, id);
                    }
                }
            }
            Err(error) => self.lost_if_unusable(id, error),
        }
        result
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        crate::commands::health_ping().query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.is_connected()
    }
}
