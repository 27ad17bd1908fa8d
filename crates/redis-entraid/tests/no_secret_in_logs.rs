//! No token ever reaches a log line, at any level, from us or from the redis crate: a
//! rotation through every connection type with every target at `TRACE` (the redis
//! crate's `log` records included) prints none of the secrets issued.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entraid_identity::{IdentityError, IdentityProvider, Token};
use redis::AsyncConnectionConfig;
use redis_entraid::aio::{ConnectionManager, PubSub};
use redis_entraid::{EntraIdCredentialsProvider, TokenManagerConfig};
use support::{AclProvider, RedisServer};

/// Everything logged, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The test's identity, remembering every secret it hands out.
#[derive(Clone)]
struct Recording {
    inner: AclProvider,
    secrets: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl IdentityProvider for Recording {
    async fn request_token(&self) -> Result<Token, IdentityError> {
        let token = self.inner.request_token().await?;
        self.secrets.lock().unwrap().push(token.secret().to_owned());
        Ok(token)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_at_trace_level_logs_no_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_log::LogTracer::builder()
        .with_max_level(tracing_log::log::LevelFilter::Trace)
        .init()
        .unwrap();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = RedisServer::start(&[]);
    // 3 s tokens, renewed at 2.1 s: a rotation in the run.
    let identity = Recording {
        inner: AclProvider::new("oid-logs", Duration::from_secs(3), vec![server.port]),
        secrets: Arc::default(),
    };
    let mut provider = EntraIdCredentialsProvider::new_with_identity_provider(identity.clone());
    provider
        .try_start_with_config({
            let mut config = TokenManagerConfig::default();
            config.refresh_jitter = 0.0;
            config
        })
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut manager = ConnectionManager::new(client.clone(), provider.clone()).await.unwrap();
    let mut pubsub = PubSub::new(client.clone(), provider.clone()).await.unwrap();
    pubsub.subscribe("logs").await.unwrap();
    let mut redis_own = client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new().set_credentials_provider(provider.clone()),
        )
        .await
        .unwrap();
    let sync_provider = provider.clone();
    let sync_client = client.clone();
    let sync = tokio::task::spawn_blocking(move || {
        let mut connection = redis_entraid::Connection::new(sync_client, sync_provider).unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < end {
            let _: redis::RedisResult<()> = redis::cmd("SET").arg("s").arg(1).query(&mut connection);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < end {
        let _: redis::RedisResult<()> = redis::cmd("SET").arg("a").arg(1).query_async(&mut manager).await;
        let _: redis::RedisResult<()> = redis::cmd("SET").arg("b").arg(1).query_async(&mut redis_own).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sync.await.unwrap();
    let secrets = identity.secrets.lock().unwrap().clone();
    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(secrets.len() >= 2, "a rotation happened: {} tokens", secrets.len());
    // Our lines and the redis crate's (through the `log` bridge) were recorded: the
    // redis crate's own re-authentication logs at DEBUG.
    assert!(
        log.contains("Re-authenticated async connection"),
        "the redis crate's records: {log}"
    );
    assert!(log.contains("Entra ID token renewed"), "ours: {log}");
    assert!(manager.stats().reauthentications >= 1, "{:?}", manager.stats());
    for secret in &secrets {
        // The whole token, and its signature alone (a log may cut a long value).
        let signature = secret.rsplit('.').next().unwrap_or(secret);
        assert!(
            !log.contains(secret.as_str()) && !log.contains(signature),
            "a token reached the log"
        );
    }
    eprintln!(
        "{} bytes of TRACE logs, {} tokens, none logged",
        log.len(),
        secrets.len()
    );
}
