#![allow(dead_code)] // each example uses what it needs
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

/// A client for `redis_url()`: trusts the CA in `SSL_CERT_FILE` when it is set (a local
/// emulator's, the same variable the identity side's HTTPS honours), the usual web roots
/// otherwise.
pub(crate) fn redis_client() -> Result<redis::Client, Box<dyn std::error::Error>> {
    let url = redis_url()?;
    match std::env::var("SSL_CERT_FILE") {
        Ok(path) => {
            let root_cert = std::fs::read(&path).map_err(|e| format!("cannot read SSL_CERT_FILE {path}: {e}"))?;
            Ok(redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?)
        }
        Err(_) => Ok(redis::Client::open(url)?),
    }
}

/// `--duration SECONDS` (with or without an `s`), if given.
pub(crate) fn duration_arg() -> Result<Option<Duration>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(None),
        [flag, value] if flag == "--duration" => value
            .trim_end_matches('s')
            .parse()
            .map(|s| Some(Duration::from_secs(s)))
            .map_err(|_| format!("--duration {value:?}: a number of seconds")),
        _ => Err("usage: [--duration SECONDS]".to_owned()),
    }
}
