//! `r2d2` pools of [`Connection`]s (feature `r2d2`).

use redis::{ConnectionLike, RedisError};

use crate::{Connection, ConnectionConfig, EntraIdCredentialsProvider};

/// An `r2d2::ManageConnection` that hands out [`Connection`]s: each stays authenticated
/// on its own (re-authenticated or replaced before a command, as needed).
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use redis::Commands;
/// let provider = redis_entraid::EntraIdCredentialsProvider::new_system_assigned_managed_identity()?;
/// let client = redis::Client::open("rediss://my-cache.westeurope.redis.azure.net:10000")?;
/// let pool = r2d2::Pool::builder()
///     .max_size(8)
///     .build(redis_entraid::r2d2::EntraIdConnectionManager::new(client, provider))?;
/// let () = pool.get()?.set("foo", "bar")?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EntraIdConnectionManager {
    client: redis::Client,
    provider: EntraIdCredentialsProvider,
    config: ConnectionConfig,
}

impl EntraIdConnectionManager {
    /// Connections to `client`'s server, authenticated by `provider`.
    pub fn new(client: redis::Client, provider: EntraIdCredentialsProvider) -> Self {
        Self::new_with_config(client, provider, ConnectionConfig::new())
    }

    /// Like [`new`](Self::new), with each connection's configuration.
    pub fn new_with_config(
        client: redis::Client,
        provider: EntraIdCredentialsProvider,
        config: ConnectionConfig,
    ) -> Self {
        EntraIdConnectionManager {
            client,
            provider,
            config,
        }
    }
}

impl r2d2::ManageConnection for EntraIdConnectionManager {
    type Connection = Connection;
    type Error = RedisError;

    fn connect(&self) -> Result<Connection, RedisError> {
        Connection::new_with_config(self.client.clone(), self.provider.clone(), self.config.clone())
    }

    /// A `PING`, after the same re-authentication or replacement as any command.
    fn is_valid(&self, connection: &mut Connection) -> Result<(), RedisError> {
        crate::commands::health_ping().query::<String>(connection).map(drop)
    }

    /// Broken only when it has no usable connection and cannot get one now (no valid
    /// token, a failed reconnect): a connection behind on tokens is brought up to date
    /// by its next command, not thrown away.
    fn has_broken(&self, connection: &mut Connection) -> bool {
        !connection.is_open()
    }
}
