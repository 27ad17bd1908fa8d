//! What every example shares: where Redis is, from the environment.

use std::time::Duration;

/// `rediss://REDIS_HOST:REDIS_PORT` (port 10000, Azure Managed Redis's, by default);
/// `REDIS_TLS=false` gives `redis://` for a local server.
pub(crate) fn redis_url() -> Result<String, String> {
    let host = std::env::var("REDIS_HOST").map_err(|_| {
        "set REDIS_HOST to your cache's host name (e.g. my-cache.westeurope.redis.azure.net)".to_owned()
    })?;
    let port = std::env::var("REDIS_PORT").unwrap_or_else(|_| "10000".to_owned());
    let tls = !matches!(std::env::var("REDIS_TLS").as_deref(), Ok("0" | "false" | "no"));
    let scheme = if tls { "rediss" } else { "redis" };
    Ok(format!("{scheme}://{host}:{port}"))
}

/// Long enough for a first token request that is slow (the redis default is 1 s).
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
