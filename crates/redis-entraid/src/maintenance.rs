//! Server maintenance notifications (smart client handoffs): the opt-in each RESP3
//! connection sends, the pushes it reads, and the address a handoff connects to. What to
//! do about a notification is the connection machine's decision
//! (`ConnectionStateMachine::handle_maintenance`); this is only the wire.

use std::net::IpAddr;

use entraid_token_manager::{Endpoint, MaintenanceNotice};
use redis::{ConnectionAddr, ErrorKind, PushKind, RedisError, RedisResult, Value};

/// Whether a connection asks the server for maintenance notifications
/// (`CLIENT MAINT_NOTIFICATIONS ON`), on RESP3 connections of
/// [`aio::ConnectionManager`](crate::aio::ConnectionManager).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MaintenanceNotifications {
    /// Ask; a server that does not know the command (open-source Redis answers `-ERR
    /// unknown subcommand`) leaves the connection working and the feature off for this
    /// connection type's later connections. The default, as in the other Redis clients.
    #[default]
    Auto,
    /// Ask, and fail the connection if the server refuses.
    Enabled,
    /// Never ask.
    Disabled,
}

/// The kind of address a server should name in `MOVING` (`moving-endpoint-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MovingEndpointType {
    /// A private IP address.
    InternalIp,
    /// A private host name.
    InternalFqdn,
    /// A public IP address.
    ExternalIp,
    /// A public host name: what TLS needs to check the server's certificate.
    ExternalFqdn,
    /// No address: the client reconnects to the one it has.
    None,
}

impl MovingEndpointType {
    /// The command's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            MovingEndpointType::InternalIp => "internal-ip",
            MovingEndpointType::InternalFqdn => "internal-fqdn",
            MovingEndpointType::ExternalIp => "external-ip",
            MovingEndpointType::ExternalFqdn => "external-fqdn",
            MovingEndpointType::None => "none",
        }
    }

    /// The peers' rule: a host name over TLS (its certificate names it), an IP address
    /// otherwise; internal for loopback, private and link-local addresses and
    /// `localhost`. No DNS lookup: a host name that is not `localhost` counts as external.
    pub(crate) fn for_address(addr: &ConnectionAddr) -> MovingEndpointType {
        let (host, tls) = match addr {
            ConnectionAddr::Tcp(host, _) => (host.as_str(), false),
            ConnectionAddr::TcpTls { host, .. } => (host.as_str(), true),
            _ => return MovingEndpointType::None,
        };
        let internal = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
            Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local(),
            Err(_) => host.eq_ignore_ascii_case("localhost"),
        };
        match (tls, internal) {
            (true, true) => MovingEndpointType::InternalFqdn,
            (true, false) => MovingEndpointType::ExternalFqdn,
            (false, true) => MovingEndpointType::InternalIp,
            (false, false) => MovingEndpointType::ExternalIp,
        }
    }
}

/// `CLIENT MAINT_NOTIFICATIONS ON moving-endpoint-type <type>`.
pub(crate) fn opt_in(endpoint_type: MovingEndpointType) -> redis::Cmd {
    let mut command = redis::cmd("CLIENT");
    command
        .arg("MAINT_NOTIFICATIONS")
        .arg("ON")
        .arg("moving-endpoint-type")
        .arg(endpoint_type.as_str());
    command
}

/// What an opt-in's reply means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OptIn {
    /// The server will notify this connection.
    On,
    /// The server does not offer it; the connection goes on without.
    Refused,
}

/// Reads the opt-in's outcome: a server error is a refusal in `Auto` mode and a failed
/// connection in `Enabled` mode; a lost connection fails it in either.
pub(crate) fn opt_in_outcome(mode: MaintenanceNotifications, result: RedisResult<Value>) -> RedisResult<OptIn> {
    match result {
        Ok(Value::Okay) => Ok(OptIn::On),
        Ok(Value::SimpleString(s)) if s.eq_ignore_ascii_case("OK") => Ok(OptIn::On),
        Ok(other) => refused(mode, format!("the server answered {other:?}")),
        Err(error) if error.is_unrecoverable_error() || error.is_timeout() => Err(error),
        Err(error) => refused(mode, error.to_string()),
    }
}

fn refused(mode: MaintenanceNotifications, answer: String) -> RedisResult<OptIn> {
    match mode {
        MaintenanceNotifications::Enabled => Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "the server refused maintenance notifications",
            format!(
                "CLIENT MAINT_NOTIFICATIONS: {answer}; this server does not send them (open-source Redis \
                 does not): use MaintenanceNotifications::Auto, which goes on without them, or Disabled"
            ),
        ))),
        MaintenanceNotifications::Auto | MaintenanceNotifications::Disabled => {
            tracing::debug!(answer, "the server does not offer maintenance notifications");
            Ok(OptIn::Refused)
        }
    }
}

/// A maintenance notification in a RESP3 push, or `None` for any other push (or a
/// malformed one, logged).
pub(crate) fn notice(kind: &PushKind, data: &[Value]) -> Option<MaintenanceNotice> {
    let PushKind::Other(name) = kind else {
        return None;
    };
    let int = |i: usize| match data.get(i) {
        Some(Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    let seconds = |i: usize| int(i).map(std::time::Duration::from_secs);
    let parsed = match name.to_ascii_uppercase().as_str() {
        "MOVING" => {
            let endpoint = match data.get(2) {
                None | Some(Value::Nil) => Some(None),
                Some(Value::BulkString(bytes)) => endpoint(&String::from_utf8_lossy(bytes)),
                Some(Value::SimpleString(text)) => endpoint(text),
                Some(_) => None,
            };
            match (int(0), seconds(1), endpoint) {
                (Some(seq), Some(time), Some(endpoint)) => Some(MaintenanceNotice::Moving { seq, time, endpoint }),
                _ => None,
            }
        }
        "MIGRATING" => int(0)
            .zip(seconds(1))
            .map(|(seq, time)| MaintenanceNotice::Migrating { seq, time }),
        "FAILING_OVER" => int(0)
            .zip(seconds(1))
            .map(|(seq, time)| MaintenanceNotice::FailingOver { seq, time }),
        "MIGRATED" => int(0).map(|seq| MaintenanceNotice::Migrated { seq }),
        "FAILED_OVER" => int(0).map(|seq| MaintenanceNotice::FailedOver { seq }),
        _ => return None,
    };
    if parsed.is_none() {
        tracing::warn!(push = %name, "a maintenance notification that cannot be read was ignored");
    }
    parsed
}

/// `host:port`, or the literal `null` (Lettuce's reading) for none; `None` if unreadable.
fn endpoint(text: &str) -> Option<Option<Endpoint>> {
    if text == "null" {
        return Some(None);
    }
    Endpoint::parse(text).map(Some).ok()
}

/// `client` pointed at `endpoint` instead of its own address: same TLS settings,
/// credentials and database.
pub(crate) fn client_at(client: &redis::Client, endpoint: &Endpoint) -> RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let mut addr = info.addr().clone();
    match &mut addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            *host = endpoint.host().to_owned();
            *port = endpoint.port();
        }
        _ => {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "a MOVING endpoint for a connection that is not TCP",
            )));
        }
    }
    redis::Client::open(info.set_addr(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn pushes_read_as_the_peers_send_them() {
        let moving = PushKind::Other("MOVING".to_owned());
        assert_eq!(
            notice(&moving, &[Value::Int(17), Value::Int(15), bulk("10.0.0.2:12000")]),
            Some(MaintenanceNotice::Moving {
                seq: 17,
                time: std::time::Duration::from_secs(15),
                endpoint: Some(Endpoint::new("10.0.0.2", 12000)),
            })
        );
        for none in [Value::Nil, bulk("null")] {
            assert!(matches!(
                notice(&moving, &[Value::Int(1), Value::Int(4), none]),
                Some(MaintenanceNotice::Moving { endpoint: None, .. })
            ));
        }
        let migrating = PushKind::Other("MIGRATING".to_owned());
        assert_eq!(
            notice(&migrating, &[Value::Int(18), Value::Int(10), bulk("1,2")]),
            Some(MaintenanceNotice::Migrating {
                seq: 18,
                time: std::time::Duration::from_secs(10)
            })
        );
        assert_eq!(
            notice(&PushKind::Other("FAILED_OVER".to_owned()), &[Value::Int(21), bulk("3")]),
            Some(MaintenanceNotice::FailedOver { seq: 21 })
        );
        // Not integers (as go-redis, refused), and pushes of other kinds: none.
        assert_eq!(notice(&migrating, &[bulk("18"), Value::Int(10)]), None);
        assert_eq!(notice(&PushKind::Message, &[bulk("ch"), bulk("x")]), None);
        assert_eq!(
            notice(&PushKind::Other("SMIGRATING".to_owned()), &[Value::Int(1)]),
            None
        );
    }

    #[test]
    fn the_endpoint_type_follows_tls_and_the_address() {
        let tls = |host: &str| ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port: 10000,
            insecure: false,
            tls_params: None,
        };
        assert_eq!(
            MovingEndpointType::for_address(&tls("cache.westeurope.redis.azure.net")),
            MovingEndpointType::ExternalFqdn
        );
        assert_eq!(
            MovingEndpointType::for_address(&tls("127.0.0.1")),
            MovingEndpointType::InternalFqdn
        );
        assert_eq!(
            MovingEndpointType::for_address(&ConnectionAddr::Tcp("10.1.2.3".to_owned(), 6379)),
            MovingEndpointType::InternalIp
        );
        assert_eq!(
            MovingEndpointType::for_address(&ConnectionAddr::Tcp("20.1.2.3".to_owned(), 6379)),
            MovingEndpointType::ExternalIp
        );
    }

    #[test]
    fn a_refused_opt_in_is_tolerated_or_fatal_as_the_mode_says() {
        let unknown = || {
            Err(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "unknown subcommand 'MAINT_NOTIFICATIONS'",
            )))
        };
        assert_eq!(
            opt_in_outcome(MaintenanceNotifications::Auto, unknown()).unwrap(),
            OptIn::Refused
        );
        let error = opt_in_outcome(MaintenanceNotifications::Enabled, unknown()).unwrap_err();
        assert!(error.to_string().contains("MaintenanceNotifications::Auto"), "{error}");
        assert_eq!(
            opt_in_outcome(MaintenanceNotifications::Enabled, Ok(Value::Okay)).unwrap(),
            OptIn::On
        );
        let lost = Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(opt_in_outcome(MaintenanceNotifications::Auto, lost).is_err());
    }

    #[test]
    fn a_handoff_client_keeps_everything_but_the_address() {
        // (The unit tests build redis without TLS: `redis://`; the end-to-end suite moves
        // a `rediss://` connection.)
        let client = redis::Client::open("redis://user:secret@cache.example:6380/3?protocol=resp3").unwrap();
        let moved = client_at(&client, &Endpoint::new("moved.example", 12000)).unwrap();
        let info = moved.get_connection_info();
        assert!(matches!(info.addr(), ConnectionAddr::Tcp(host, 12000) if host == "moved.example"));
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert!(info.redis_settings().protocol().supports_resp3());
    }
}
