//! [`ConnectionConfig`]: the one configuration of every connection type that owns its
//! re-authentication (`aio::ConnectionManager`, `aio::PubSub`, `Connection`), so a
//! setting has one name, one default and one meaning whichever type it configures.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use entraid_token_manager::{ConnectionPolicy, ConnectionStateMachine, Renewal};
use redis::aio::AsyncPushSender;
use redis::{ErrorKind, RedisError, RedisResult};

use crate::EntraIdCredentialsProvider;
use crate::maintenance::{MaintenanceNotifications, MovingEndpointType};
use crate::plaintext_check::{TransportOptOuts, refuse_plaintext_to_azure};

/// How a connection type connects, times out and re-authenticates.
///
/// One type for [`aio::ConnectionManager`](crate::aio::ConnectionManager),
/// [`aio::PubSub`](crate::aio::PubSub) and [`Connection`](crate::Connection)
/// (`aio::ConnectionManagerConfig` and `aio::PubSubConfig` are other names for it).
/// Every setter sets one thing; none overrides another.
///
/// | setting | default |
/// |---|---|
/// | [`set_response_timeout`](Self::set_response_timeout) | as the redis type each mirrors: 500 ms for the manager (as `redis::aio::ConnectionManager`), none for the sync `Connection` (as `redis::Connection`), 5 s for a `PubSub` subscription change |
/// | [`set_connection_timeout`](Self::set_connection_timeout) | 5 s |
/// | [`set_reconnect_backoff`](Self::set_reconnect_backoff) | 100 ms doubling to 10 s |
/// | [`set_auth_timeout`](Self::set_auth_timeout) | 5 s |
/// | [`set_auth_retry_backoff`](Self::set_auth_retry_backoff) | 200 ms doubling to 5 s |
/// | [`set_replace_margin`](Self::set_replace_margin) | 30 s (at most a tenth of a token's life) |
/// | [`set_probe_timeout`](Self::set_probe_timeout) | 2 s |
/// | [`set_reauth_spread`](Self::set_reauth_spread) | the provider's [`with_reauth_spread`](EntraIdCredentialsProvider::with_reauth_spread) |
/// | [`set_push_sender`](Self::set_push_sender) | none (`ConnectionManager` on RESP3 only) |
/// | [`allow_plaintext_to_azure`](Self::allow_plaintext_to_azure) | `false` |
/// | [`allow_insecure_tls_to_azure`](Self::allow_insecure_tls_to_azure) | `false` |
/// | [`set_maintenance_notifications`](Self::set_maintenance_notifications) | [`MaintenanceNotifications::Auto`] (`ConnectionManager` on RESP3) |
/// | [`set_moving_endpoint_type`](Self::set_moving_endpoint_type) | from the address: a host name over TLS, an IP address otherwise |
/// | [`set_relaxed_timeout`](Self::set_relaxed_timeout) | 10 s |
#[derive(Clone, Default)]
pub struct ConnectionConfig {
    /// Every timing rule but the spread, which is `reauth_spread`.
    policy: ConnectionPolicy,
    /// `None`: the provider's.
    reauth_spread: Option<Duration>,
    /// `None`: the connection type's default; `Some(None)`: no timeout.
    response_timeout: Option<Option<Duration>>,
    push_sender: Option<Arc<dyn AsyncPushSender>>,
    opt_outs: TransportOptOuts,
    maintenance: MaintenanceNotifications,
    /// `None`: chosen from the address.
    moving_endpoint_type: Option<MovingEndpointType>,
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("policy", &self.policy)
            .field("reauth_spread", &self.reauth_spread)
            .field("response_timeout", &self.response_timeout)
            .field("push_sender", &self.push_sender.is_some())
            .field("allow_plaintext_to_azure", &self.opt_outs.plaintext)
            .field("allow_insecure_tls_to_azure", &self.opt_outs.insecure_tls)
            .field("maintenance_notifications", &self.maintenance)
            .field("moving_endpoint_type", &self.moving_endpoint_type)
            .finish()
    }
}

/// Which connection type a configuration is applied to: the defaults that follow the
/// redis type each one mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionType {
    Manager,
    PubSub,
    Sync,
}

impl ConnectionType {
    fn name(self) -> &'static str {
        match self {
            ConnectionType::Manager => "redis_entraid::aio::ConnectionManager",
            ConnectionType::PubSub => "redis_entraid::aio::PubSub",
            ConnectionType::Sync => "redis_entraid::Connection",
        }
    }

    fn default_response_timeout(self) -> Option<Duration> {
        match self {
            ConnectionType::Manager => Some(Duration::from_millis(500)),
            ConnectionType::PubSub => Some(Duration::from_secs(5)),
            ConnectionType::Sync => None,
        }
    }
}

impl ConnectionConfig {
    /// The defaults (see the type's table).
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a command (for a `PubSub`, a subscription change) waits for its reply;
    /// `None` waits for ever. Re-authentication `AUTH`s have their own timeout
    /// ([`set_auth_timeout`](Self::set_auth_timeout)).
    pub fn set_response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    /// How long opening a connection (TCP, TLS, `HELLO`/`AUTH`, and for a `PubSub` its
    /// subscriptions) may take; also how long a command waits for a connection being
    /// opened. Default 5 s.
    pub fn set_connection_timeout(mut self, timeout: Duration) -> Self {
        self.policy.connect_timeout = timeout;
        self
    }

    /// Waits between reconnection attempts: `min` after the first failure, doubling up
    /// to `max`. Defaults 100 ms and 10 s.
    pub fn set_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.policy.reconnect_initial = min;
        self.policy.reconnect_max = max;
        self
    }

    /// How long one re-authentication `AUTH` may wait for its reply before it counts as
    /// failed and is retried. Default 5 s (a server stall of a few seconds is survived
    /// by waiting).
    pub fn set_auth_timeout(mut self, timeout: Duration) -> Self {
        self.policy.auth_timeout = timeout;
        self
    }

    /// Waits between re-authentication attempts after a failed `AUTH`: `min`, doubling
    /// up to `max`. Defaults 200 ms and 5 s.
    pub fn set_auth_retry_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.policy.auth_retry_initial = min;
        self.policy.auth_retry_max = max;
        self
    }

    /// How long before its token's expiry a connection that could not re-authenticate is
    /// replaced by a new one (capped at a tenth of the token's lifetime). Default 30 s.
    pub fn set_replace_margin(mut self, margin: Duration) -> Self {
        self.policy.replace_margin = margin;
        self
    }

    /// How long a health `PING` may wait once a command got no reply in time; unanswered,
    /// the connection is taken for a silent path and replaced make-before-break.
    /// Default 2 s (longer than a server stall worth waiting out).
    pub fn set_probe_timeout(mut self, timeout: Duration) -> Self {
        self.policy.probe_timeout = timeout;
        self
    }

    /// Spreads each renewal (its `AUTH`, or a RESP2 subscriber's swap) over
    /// `[0, spread)`, so connections do not all re-authenticate at once. Default: the
    /// provider's [`with_reauth_spread`](EntraIdCredentialsProvider::with_reauth_spread).
    pub fn set_reauth_spread(mut self, spread: Duration) -> Self {
        self.reauth_spread = Some(spread);
        self
    }

    /// Receives RESP3 pushes (pub/sub messages) from every connection an
    /// [`aio::ConnectionManager`](crate::aio::ConnectionManager) opens; subscriptions
    /// made through its `subscribe`/`psubscribe` are made again on each new connection.
    /// Refused by the other types (a `PubSub` yields its messages on its stream).
    pub fn set_push_sender(mut self, sender: impl AsyncPushSender) -> Self {
        self.push_sender = Some(Arc::new(sender));
        self
    }

    /// Whether an [`aio::ConnectionManager`](crate::aio::ConnectionManager) on RESP3 asks
    /// the server for maintenance notifications (`CLIENT MAINT_NOTIFICATIONS ON`), so it
    /// moves to a new endpoint before the server moves it (`MOVING`) and relaxes command
    /// timeouts during migrations and failovers. Default [`MaintenanceNotifications::Auto`]:
    /// asked, and done without where the server does not offer them.
    /// [`Enabled`](MaintenanceNotifications::Enabled) is refused up front where they can
    /// never come: on RESP2, and for `aio::PubSub` and the sync `Connection`.
    pub fn set_maintenance_notifications(mut self, mode: MaintenanceNotifications) -> Self {
        self.maintenance = mode;
        self
    }

    /// The kind of address the server should name in `MOVING`. Default: chosen from the
    /// address, as the other Redis clients do (a host name over TLS, so the new
    /// endpoint's certificate can be checked; an IP address otherwise; internal for
    /// loopback and private addresses).
    pub fn set_moving_endpoint_type(mut self, endpoint_type: MovingEndpointType) -> Self {
        self.moving_endpoint_type = Some(endpoint_type);
        self
    }

    /// The response timeout commands get while the server announces maintenance, until
    /// it announces the end (at most three times the announced time); `None` keeps the
    /// usual one throughout. Default 10 s.
    pub fn set_relaxed_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.policy.relaxed_timeout = timeout;
        self
    }

    /// Allows `redis://` (plain TCP) to an Azure cache host, which is refused by default
    /// because the token would travel in clear.
    pub fn allow_plaintext_to_azure(mut self, allow: bool) -> Self {
        self.opt_outs.plaintext = allow;
        self
    }

    /// Allows `rediss://…#insecure` (TLS that does not check the server's certificate) to
    /// an Azure cache host, which is refused by default because any server could then
    /// take the token.
    pub fn allow_insecure_tls_to_azure(mut self, allow: bool) -> Self {
        self.opt_outs.insecure_tls = allow;
        self
    }

    /// Checks this configuration for `kind` on `client`: every refusal names the fix.
    pub(crate) fn check(&self, kind: ConnectionType, client: &redis::Client) -> RedisResult<()> {
        let info = client.get_connection_info();
        refuse_plaintext_to_azure(info, self.opt_outs)?;
        let resp3 = info.redis_settings().protocol().supports_resp3();
        match (self.push_sender.is_some(), kind) {
            (false, _) => {}
            (true, ConnectionType::Manager) if resp3 => {}
            (true, ConnectionType::Manager) => {
                return Err(invalid(
                    "a push sender needs RESP3",
                    "add ?protocol=resp3 to the URL (RESP2 connections receive no pushes)".to_owned(),
                ));
            }
            (true, ConnectionType::PubSub | ConnectionType::Sync) => {
                return Err(invalid(
                    "a push sender is for aio::ConnectionManager only",
                    format!(
                        "{} does not take one: a PubSub yields its messages on its stream; use \
                         aio::ConnectionManager with set_push_sender for RESP3 pushes",
                        kind.name()
                    ),
                ));
            }
        }
        // Required notifications that can never come are refused up front, not ignored.
        if self.maintenance == MaintenanceNotifications::Enabled {
            match kind {
                ConnectionType::Manager if resp3 => {}
                ConnectionType::Manager => {
                    return Err(invalid(
                        "maintenance notifications need RESP3",
                        "add ?protocol=resp3 to the URL, or use MaintenanceNotifications::Auto".to_owned(),
                    ));
                }
                ConnectionType::PubSub | ConnectionType::Sync => {
                    return Err(invalid(
                        "maintenance notifications are for aio::ConnectionManager only",
                        format!(
                            "{} does not ask for them (Redis does not send them to subscribers; the sync \
                             connection reads no pushes): leave the setting at Auto",
                            kind.name()
                        ),
                    ));
                }
            }
        }
        if self.response_timeout(kind).is_some_and(|t| t.is_zero()) {
            return Err(invalid(
                "invalid connection configuration",
                "response_timeout must be greater than zero (None waits for ever)".to_owned(),
            ));
        }
        Ok(())
    }

    /// The response timeout in force for `kind`.
    pub(crate) fn response_timeout(&self, kind: ConnectionType) -> Option<Duration> {
        self.response_timeout.unwrap_or_else(|| kind.default_response_timeout())
    }

    /// The push sender, if one was set.
    pub(crate) fn push_sender(&self) -> Option<Arc<dyn AsyncPushSender>> {
        self.push_sender.clone()
    }

    /// Whether to ask for maintenance notifications.
    pub(crate) fn maintenance_notifications(&self) -> MaintenanceNotifications {
        self.maintenance
    }

    /// The `moving-endpoint-type` for connections to `addr`.
    pub(crate) fn moving_endpoint_type(&self, addr: &redis::ConnectionAddr) -> MovingEndpointType {
        self.moving_endpoint_type
            .unwrap_or_else(|| MovingEndpointType::for_address(addr))
    }

    /// The policy in force with `provider`: its spread unless one was set here.
    pub(crate) fn policy(&self, provider: &EntraIdCredentialsProvider) -> ConnectionPolicy {
        let mut policy = self.policy.clone();
        policy.reauth_spread = self.reauth_spread.unwrap_or(provider.reauth_spread());
        policy
    }

    /// A connection state machine for this configuration, or why it cannot work.
    pub(crate) fn state_machine(
        &self,
        provider: &EntraIdCredentialsProvider,
        renewal: Renewal,
    ) -> RedisResult<ConnectionStateMachine> {
        ConnectionStateMachine::new(self.policy(provider))
            .map(|machine| machine.with_renewal(renewal))
            .map_err(|error| invalid("invalid re-authentication policy", error.to_string()))
    }
}

fn invalid(what: &'static str, fix: String) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, what, fix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> redis::Client {
        redis::Client::open(url).unwrap()
    }

    #[test]
    fn defaults_follow_the_mirrored_redis_type_and_a_set_value_wins_for_every_type() {
        let config = ConnectionConfig::new();
        assert_eq!(
            config.response_timeout(ConnectionType::Manager),
            Some(Duration::from_millis(500))
        );
        assert_eq!(config.response_timeout(ConnectionType::Sync), None);
        assert_eq!(
            config.response_timeout(ConnectionType::PubSub),
            Some(Duration::from_secs(5))
        );
        let config = config.set_response_timeout(None);
        for kind in [ConnectionType::Manager, ConnectionType::PubSub, ConnectionType::Sync] {
            assert_eq!(config.response_timeout(kind), None, "{kind:?}");
        }
    }

    #[test]
    fn required_maintenance_notifications_that_cannot_come_are_refused() {
        let enabled = ConnectionConfig::new().set_maintenance_notifications(MaintenanceNotifications::Enabled);
        let resp2 = client("redis://127.0.0.1:6379");
        let resp3 = client("redis://127.0.0.1:6379/?protocol=resp3");
        assert!(enabled.check(ConnectionType::Manager, &resp3).is_ok());
        let error = enabled.check(ConnectionType::Manager, &resp2).unwrap_err();
        assert!(error.to_string().contains("protocol=resp3"), "{error}");
        for kind in [ConnectionType::PubSub, ConnectionType::Sync] {
            let error = enabled.check(kind, &resp3).unwrap_err();
            assert!(error.to_string().contains("Auto"), "{error}");
        }
        // Auto, the default, is fine everywhere.
        assert!(ConnectionConfig::new().check(ConnectionType::Sync, &resp2).is_ok());
    }

    #[test]
    fn no_setter_overrides_another() {
        let provider = EntraIdCredentialsProvider::new_with_identity_provider(entraid_identity_stub())
            .with_reauth_spread(Duration::from_secs(9));
        let config = ConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_reauth_spread(Duration::from_secs(1))
            .set_auth_timeout(Duration::from_secs(3))
            .set_replace_margin(Duration::from_secs(20));
        let policy = config.policy(&provider);
        assert_eq!(policy.connect_timeout, Duration::from_secs(2));
        assert_eq!(policy.reauth_spread, Duration::from_secs(1));
        assert_eq!(policy.auth_timeout, Duration::from_secs(3));
        assert_eq!(policy.replace_margin, Duration::from_secs(20));
        // Unset, the spread is the provider's.
        assert_eq!(
            ConnectionConfig::new().policy(&provider).reauth_spread,
            Duration::from_secs(9)
        );
    }

    #[test]
    fn refusals_name_the_fix() {
        let resp2 = client("redis://127.0.0.1:6379");
        let resp3 = client("redis://127.0.0.1:6379?protocol=resp3");
        let with_sender = ConnectionConfig::new().set_push_sender(tokio::sync::mpsc::unbounded_channel().0);
        assert!(with_sender.check(ConnectionType::Manager, &resp3).is_ok());
        let error = with_sender.check(ConnectionType::Manager, &resp2).unwrap_err();
        assert!(error.to_string().contains("protocol=resp3"), "{error}");
        let error = with_sender.check(ConnectionType::PubSub, &resp3).unwrap_err();
        assert!(error.to_string().contains("aio::ConnectionManager"), "{error}");
        let error = ConnectionConfig::new()
            .set_response_timeout(Some(Duration::ZERO))
            .check(ConnectionType::Sync, &resp2)
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidClientConfig);
        let error = ConnectionConfig::new()
            .check(
                ConnectionType::Sync,
                &client("redis://x.westeurope.redis.azure.net:10000"),
            )
            .unwrap_err();
        assert!(error.to_string().contains("rediss://"), "{error}");
    }

    #[test]
    fn a_duration_meant_as_no_limit_is_refused_with_its_name_not_a_panic() {
        let provider = EntraIdCredentialsProvider::new_with_identity_provider(entraid_identity_stub());
        for config in [
            ConnectionConfig::new().set_connection_timeout(Duration::MAX),
            ConnectionConfig::new().set_reconnect_backoff(Duration::from_millis(1), Duration::MAX),
            ConnectionConfig::new().set_reauth_spread(Duration::MAX),
        ] {
            let error = config.state_machine(&provider, Renewal::InPlace).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidClientConfig);
            assert!(error.to_string().contains("longer than a day"), "{error}");
        }
    }

    fn entraid_identity_stub() -> impl entraid_identity::IdentityProvider {
        struct Never;
        #[async_trait::async_trait]
        impl entraid_identity::IdentityProvider for Never {
            async fn request_token(&self) -> Result<entraid_identity::Token, entraid_identity::IdentityError> {
                Err(entraid_identity::IdentityError::permanent("never"))
            }
        }
        Never
    }
}
