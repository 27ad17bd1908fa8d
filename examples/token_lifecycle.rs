//! A token's life with a custom identity provider and no Azure at all.
//!
//! The provider issues 4-second tokens; the manager renews each halfway through its life
//! and every subscriber (one per Redis connection, in real use) sees each renewal.
//!
//! ```text
//! cargo run -p redis-entraid-examples --example token_lifecycle
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use entraid_identity::{IdentityError, IdentityProvider, Token};
use entraid_token_manager::{TokenManager, TokenManagerConfig};
use tokio_stream::StreamExt;

/// Stands in for a secret store or a workload-identity exchange of your own.
struct CountingProvider {
    issued: AtomicU64,
}

#[async_trait::async_trait]
impl IdentityProvider for CountingProvider {
    async fn request_token(&self) -> Result<Token, IdentityError> {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let now = SystemTime::now();
        Ok(Token::new(
            format!("token-{n}"),
            "00000000-0000-0000-0000-000000000001",
            now + Duration::from_secs(4),
            now,
        ))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();
    let config = {
        let mut config = TokenManagerConfig::default();
        config.expiration_refresh_ratio = 0.5;
        config.lower_refresh_bound = Duration::ZERO;
        config
    };
    let manager = TokenManager::start(
        CountingProvider {
            issued: AtomicU64::new(0),
        },
        config,
    )?;
    let mut tokens = manager.subscribe();
    for _ in 0..3 {
        let token = tokens.next().await.ok_or("the manager stopped")??;
        let left = token.expires_at().duration_since(SystemTime::now()).unwrap_or_default();
        println!(
            "token for {} (expires in {:.1} s)",
            token.username(),
            left.as_secs_f64()
        );
    }
    manager.stop();
    Ok(())
}
