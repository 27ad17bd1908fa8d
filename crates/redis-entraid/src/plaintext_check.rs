//! Refuses to send an Entra ID token over plain TCP to an Azure cache.

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult};

/// Host name suffixes of Azure Managed Redis and Azure Cache for Redis.
const AZURE_CACHE_SUFFIXES: [&str; 3] = [
    ".redis.azure.net",
    ".redis.cache.windows.net",
    ".redisenterprise.cache.azure.net",
];

/// An error when `info` is plain TCP (`redis://`) to an Azure cache host: the token
/// would cross the network in clear. `allow` is the user's explicit opt-out.
pub(crate) fn refuse_plaintext_to_azure(info: &ConnectionInfo, allow: bool) -> RedisResult<()> {
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Ok(());
    };
    let host = host.to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    if allow || !AZURE_CACHE_SUFFIXES.iter().any(|suffix| host.ends_with(suffix)) {
        return Ok(());
    }
    Err(RedisError::from((
        ErrorKind::InvalidClientConfig,
        "refusing to send an Entra ID token in clear text",
        format!(
            "{host}:{port} is an Azure cache, which accepts TLS only: use rediss://{host}:{port} \
             (or call allow_plaintext_to_azure(true) on the configuration if you really mean it)"
        ),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::IntoConnectionInfo;

    fn check(url: &str, allow: bool) -> RedisResult<()> {
        refuse_plaintext_to_azure(&url.into_connection_info().unwrap(), allow)
    }

    #[test]
    fn plain_tcp_to_azure_hosts_is_refused_unless_allowed() {
        for host in [
            "cache.westeurope.redis.azure.net",
            "Cache.Redis.Cache.Windows.Net",
            "x.eastus.redisenterprise.cache.azure.net",
        ] {
            let error = check(&format!("redis://{host}:10000"), false).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidClientConfig);
            assert!(error.to_string().contains("rediss://"), "{error}");
            assert!(check(&format!("redis://{host}:10000"), true).is_ok());
        }
        let tls = "redis://127.0.0.1"
            .into_connection_info()
            .unwrap()
            .set_addr(ConnectionAddr::TcpTls {
                host: "cache.westeurope.redis.azure.net".to_owned(),
                port: 10000,
                insecure: false,
                tls_params: None,
            });
        assert!(refuse_plaintext_to_azure(&tls, false).is_ok());
        assert!(check("redis://127.0.0.1:6379", false).is_ok());
        assert!(check("redis://notredis.azure.net.example.com:6379", false).is_ok());
    }
}
