//! A plug-in identity provider with no Azure dependency at all.
//!
//! Anything that can produce a token implements `IdentityProvider`; the token manager
//! renews it and every connection re-authenticates. This one runs against a local
//! `redis-server` (default user, no password, which accepts any `AUTH default …`):
//!
//! ```text
//! redis-server --port 6379 &
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example custom_provider
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use redis::{AsyncConnectionConfig, Client};
use redis_entraid::{EntraIdCredentialsProvider, IdentityError, IdentityProvider, Token, TokenManagerConfig};

/// Stands in for a vault, a sidecar or a token exchange of your own.
struct SidecarTokens {
    issued: AtomicU64,
}

#[async_trait::async_trait]
impl IdentityProvider for SidecarTokens {
    async fn request_token(&self) -> Result<Token, IdentityError> {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let now = SystemTime::now();
        // One attempt per call: the manager owns retries. Say whether a failure is transient.
        Ok(Token::new(
            format!("sidecar-token-{n}"),
            "default",
            now + Duration::from_secs(4),
            now,
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(SidecarTokens {
        issued: AtomicU64::new(0),
    });
    provider.start_with_config({
        let mut config = TokenManagerConfig::default();
        config.expiration_refresh_ratio = 0.5;
        config
    });

    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let client = Client::open(url)?;
    let config = AsyncConnectionConfig::new().set_credentials_provider(provider.clone());
    let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
    for second in 0..6 {
        let n: i64 = redis::cmd("INCR")
            .arg("entraid:custom")
            .query_async(&mut connection)
            .await?;
        let token = provider
            .current_token()
            .map(|t| t.secret().to_owned())
            .unwrap_or_default();
        // A custom example token is no secret; never print real ones.
        println!("t={second}s INCR -> {n} (current token: {token})");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
