//! The commands the library itself sends on a connection, built in one place each.

use entraid_identity::Token;
use redis::{Cmd, ErrorKind, RedisError, RedisResult, Value};

/// A re-authentication: `AUTH <oid> <token>`.
pub(crate) fn auth(token: &Token) -> Cmd {
    redis::cmd("AUTH").arg(token.username()).arg(token.secret()).to_owned()
}

/// The health check: a `PING`, answered after everything the server sent before it
/// (which is what a drain relies on too).
pub(crate) fn health_ping() -> Cmd {
    redis::cmd("PING")
}

/// A re-authentication `AUTH` succeeded only if the server answered `OK`: inside a
/// transaction it would answer `QUEUED`, which is not a renewal.
pub(crate) fn auth_accepted(reply: Value) -> RedisResult<()> {
    match reply {
        Value::Okay => Ok(()),
        Value::SimpleString(s) if s == "OK" => Ok(()),
        other => Err(RedisError::from((
            ErrorKind::AuthenticationFailed,
            "re-authentication not confirmed",
            format!("the server answered {other:?} instead of OK"),
        ))),
    }
}

/// The server answered with an error (a refusal), as opposed to no answer: the
/// connection is fine.
pub(crate) fn is_refusal(error: &RedisError) -> bool {
    !(error.is_unrecoverable_error() || error.is_io_error() || error.is_timeout())
}
