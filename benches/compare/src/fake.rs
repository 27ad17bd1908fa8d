//! The identity side both providers share: JWT-shaped tokens for one `oid`, a call
//! counter, and a gate so the benchmark decides when a rotation happens.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis::AsyncConnectionConfig;
use redis_entraid::TokenManagerConfig;

use crate::AnyError;

/// The object id of the benchmark's principal: an ACL user with `nopass`.
pub(crate) const OID: &str = "bench-oid";

/// Counts token requests; when gated, every request after the first waits for a release.
#[derive(Clone)]
pub(crate) struct Gate {
    permits: Option<Arc<tokio::sync::Semaphore>>,
    calls: Arc<AtomicU64>,
    waiting: Arc<AtomicU64>,
    /// The lifetime ungated tokens announce.
    lifetime: Duration,
}

impl Gate {
    pub(crate) fn gated() -> Gate {
        Gate {
            permits: Some(Arc::new(tokio::sync::Semaphore::new(0))),
            calls: Arc::default(),
            waiting: Arc::default(),
            lifetime: Duration::ZERO,
        }
    }

    pub(crate) fn ungated(lifetime: Duration) -> Gate {
        Gate {
            permits: None,
            calls: Arc::default(),
            waiting: Arc::default(),
            lifetime,
        }
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Requests waiting at the gate now.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Lets one waiting (or the next) request through: one rotation.
    pub(crate) fn release(&self) {
        if let Some(permits) = &self.permits {
            permits.add_permits(1);
        }
    }

    pub(crate) async fn wait_first_token(&self) {
        while self.calls() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Until the provider's refresh is waiting at the gate, so a release rotates at once.
    pub(crate) async fn wait_blocked(&self) {
        while self.waiting.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn pass(&self) -> u64 {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n > 0
            && let Some(permits) = &self.permits
        {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            if let Ok(permit) = permits.acquire().await {
                permit.forget();
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        n
    }
}

/// A password as long as the tokens, for the static-credential floors and baselines, so
/// every variant sends AUTHs of the same size.
pub(crate) fn token_sized_password() -> String {
    jwt(SystemTime::now() + Duration::from_secs(3600), 0)
}

fn jwt(exp: SystemTime, n: u64) -> String {
    let exp = exp.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"oid":"{OID}","exp":{exp},"n":{n},"pad":"{}"}}"#,
            "x".repeat(900)
        )),
        URL_SAFE_NO_PAD.encode(format!("signature-{n}")),
    )
}

/// A's identity: gated tokens. Gated tokens live 600 s and A refreshes them after 1.2 s,
/// so the refresh waits at the gate long before expiry.
struct GatedIdentity(Gate);

#[async_trait::async_trait]
impl redis_entraid::IdentityProvider for GatedIdentity {
    async fn request_token(&self) -> Result<redis_entraid::Token, redis_entraid::IdentityError> {
        let n = self.0.pass().await;
        let lifetime = if self.0.permits.is_some() {
            Duration::from_secs(600)
        } else {
            self.0.lifetime
        };
        let now = SystemTime::now();
        Ok(redis_entraid::Token::new(
            jwt(now + lifetime, n),
            OID,
            now + lifetime,
            now,
        ))
    }
}

/// B's identity: the same gate behind azure_core 0.31's `TokenCredential`. Gated tokens
/// live 242 s, which B (refreshing 240 s before expiry) renews after 2 s.
#[derive(Debug)]
struct GatedCredential(Gate);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for GatedCredential {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let gate = &self.0;
        let n = gate.pass().await;
        let lifetime = if gate.permits.is_some() {
            Duration::from_secs(242)
        } else {
            gate.lifetime
        };
        let expires = azure_core::time::OffsetDateTime::now_utc() + lifetime;
        Ok(azure_core::credentials::AccessToken::new(
            jwt(SystemTime::now() + lifetime, n),
            expires,
        ))
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Variant {
    A { spread: Duration },
    B,
}

impl Variant {
    pub(crate) fn name(&self) -> String {
        match self {
            Variant::A { .. } => "A".into(),
            Variant::B => "B".into(),
        }
    }

    pub(crate) fn label(&self) -> String {
        match self {
            Variant::A { spread } if spread.is_zero() => "A (spread off)".into(),
            Variant::A { spread } => format!("A (spread {spread:?})"),
            Variant::B => "B".into(),
        }
    }

    pub(crate) fn provider(&self, gate: &Gate) -> Result<Provider, AnyError> {
        Ok(match self {
            Variant::A { spread } => {
                let mut provider =
                    redis_entraid::EntraIdCredentialsProvider::new_with_identity_provider(GatedIdentity(gate.clone()))
                        .with_reauth_spread(*spread);
                let config = if gate.permits.is_some() {
                    let mut config = TokenManagerConfig::default();
                    config.expiration_refresh_ratio = 0.002;
                    config.lower_refresh_bound = Duration::ZERO;
                    config.token_request_timeout = Duration::from_secs(3600);
                    config
                } else {
                    TokenManagerConfig::default()
                };
                provider.try_start_with_config(config)?;
                Provider::A(provider)
            }
            Variant::B => {
                let mut provider = redis::EntraIdCredentialsProvider::new_with_credential(
                    Arc::new(GatedCredential(gate.clone())),
                    vec!["https://redis.azure.com/.default".to_owned()],
                )?;
                provider.start(redis::RetryConfig::default());
                Provider::B(provider)
            }
        })
    }
}

pub(crate) enum Provider {
    A(redis_entraid::EntraIdCredentialsProvider),
    B(redis::EntraIdCredentialsProvider),
}

impl Provider {
    pub(crate) fn configure(&self, config: AsyncConnectionConfig) -> AsyncConnectionConfig {
        match self {
            Provider::A(p) => config.set_credentials_provider(p.clone()),
            Provider::B(p) => config.set_credentials_provider(p.clone()),
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Provider::A(p) = self {
            p.stop();
        }
    }
}

/// Yields one credential, then stays pending: isolates the redis crate's own
/// per-connection re-auth task for the memory figure.
#[derive(Clone)]
pub(crate) struct NoopProvider;

impl redis::auth::StreamingCredentialsProvider for NoopProvider {
    fn subscribe(
        &self,
    ) -> Pin<Box<dyn futures_util::Stream<Item = redis::RedisResult<redis::auth::BasicAuth>> + Send + 'static>> {
        use futures_util::StreamExt;
        let first =
            futures_util::stream::once(async { Ok(redis::auth::BasicAuth::new(OID.to_owned(), "noop".to_owned())) });
        Box::pin(first.chain(futures_util::stream::pending()))
    }
}
