//! Refuses to send an Entra ID token to an Azure cache over plain TCP, or over TLS that
//! does not check the server's certificate (`rediss://…#insecure`).

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult};

/// Host name suffixes of Azure Managed Redis and Azure Cache for Redis.
const AZURE_CACHE_SUFFIXES: [&str; 3] = [
    ".redis.azure.net",
    ".redis.cache.windows.net",
    ".redisenterprise.cache.azure.net",
];

/// What the user allowed explicitly, against the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TransportOptOuts {
    /// `redis://` to an Azure cache host.
    pub(crate) plaintext: bool,
    /// `rediss://…#insecure` (no certificate check) to an Azure cache host.
    pub(crate) insecure_tls: bool,
}

/// An error when `info` would send the token to an Azure cache host in clear (plain
/// TCP) or to whoever answers (TLS without certificate checks), unless `allowed`.
pub(crate) fn refuse_plaintext_to_azure(info: &ConnectionInfo, allowed: TransportOptOuts) -> RedisResult<()> {
    let (host, port, insecure_tls) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (host, port, false),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: true,
            ..
        } => (host, port, true),
        _ => return Ok(()),
    };
    let host = host.to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    if !AZURE_CACHE_SUFFIXES.iter().any(|suffix| host.ends_with(suffix)) {
        return Ok(());
    }
    match (insecure_tls, allowed) {
        (false, TransportOptOuts { plaintext: true, .. }) | (true, TransportOptOuts { insecure_tls: true, .. }) => {
            Ok(())
        }
        (false, _) => Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "refusing to send an Entra ID token in clear text",
            format!(
                "{host}:{port} is an Azure cache, which accepts TLS only: use rediss://{host}:{port} \
                 (or call allow_plaintext_to_azure(true) on the configuration if you really mean it)"
            ),
        ))),
        (true, _) => Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "refusing to send an Entra ID token over TLS without certificate checks",
            format!(
                "the URL for {host}:{port} ends in #insecure, so any server could take the token: \
                 remove #insecure (Azure caches have publicly trusted certificates), or call \
                 allow_insecure_tls_to_azure(true) on the configuration if you really mean it"
            ),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::IntoConnectionInfo;

    fn check(url: &str, allow: bool) -> RedisResult<()> {
        let allowed = TransportOptOuts {
            plaintext: allow,
            insecure_tls: allow,
        };
        refuse_plaintext_to_azure(&url.into_connection_info().unwrap(), allowed)
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
        assert!(refuse_plaintext_to_azure(&tls, TransportOptOuts::default()).is_ok());
        assert!(check("redis://127.0.0.1:6379", false).is_ok());
        assert!(check("redis://notredis.azure.net.example.com:6379", false).is_ok());
    }

    #[test]
    fn tls_without_certificate_checks_to_azure_hosts_is_refused_unless_allowed() {
        // `rediss://…#insecure`, built by hand: this crate's redis has no TLS feature.
        let insecure = |host: &str| {
            "redis://127.0.0.1"
                .into_connection_info()
                .unwrap()
                .set_addr(ConnectionAddr::TcpTls {
                    host: host.to_owned(),
                    port: 10000,
                    insecure: true,
                    tls_params: None,
                })
        };
        let info = insecure("cache.westeurope.redis.azure.net");
        let error = refuse_plaintext_to_azure(&info, TransportOptOuts::default()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidClientConfig);
        assert!(error.to_string().contains("#insecure"), "{error}");
        assert!(error.to_string().contains("allow_insecure_tls_to_azure"), "{error}");
        // Each opt-out allows only its own case.
        let plaintext_only = TransportOptOuts {
            plaintext: true,
            insecure_tls: false,
        };
        assert!(refuse_plaintext_to_azure(&info, plaintext_only).is_err());
        let insecure_only = TransportOptOuts {
            plaintext: false,
            insecure_tls: true,
        };
        assert!(refuse_plaintext_to_azure(&info, insecure_only).is_ok());
        // A local test server may skip the check.
        assert!(refuse_plaintext_to_azure(&insecure("127.0.0.1"), TransportOptOuts::default()).is_ok());
    }
}
