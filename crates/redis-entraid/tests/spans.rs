//! A trace shows a rotation end to end: a connection replacement runs in its own
//! `entraid.connection_replacement` span, beside the token manager's
//! `entraid.token_request` spans.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_entraid::EntraIdCredentialsProvider;
use redis_entraid::TokenManagerConfig;
use redis_entraid::aio::ConnectionManager;
use support::{AclProvider, RedisServer};
use tracing::span::{Attributes, Id, Record};

/// A subscriber that keeps the name of every span opened (and nothing else).
#[derive(Clone, Default)]
struct SpanNames(Arc<Mutex<Vec<&'static str>>>);

impl SpanNames {
    fn contains(&self, name: &str) -> bool {
        self.0.lock().unwrap().contains(&name)
    }
}

impl tracing::Subscriber for SpanNames {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut names = self.0.lock().unwrap();
        names.push(attrs.metadata().name());
        Id::from_u64(names.len() as u64)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

// Current-thread runtime: every task of the manager and the connection runs on this
// thread, under this test's subscriber.
#[tokio::test]
async fn a_connection_that_cannot_reauthenticate_is_replaced_inside_its_own_span() {
    let spans = SpanNames::default();
    let _guard = tracing::subscriber::set_default(spans.clone());
    let server = RedisServer::start(&[]);
    // 4 s tokens: renewed at 2.8 s; the renewal's AUTH is refused (the server does not
    // know the new token), retried, and the connection replaced before the old token's
    // expiry, at 3.6 s.
    let provider = AclProvider::new("oid-spans", Duration::from_secs(4), vec![server.port]);
    let mut credentials = EntraIdCredentialsProvider::new_with_identity_provider(provider.clone());
    credentials
        .try_start_with_config({
            let mut config = TokenManagerConfig::default();
            config.refresh_jitter = 0.0;
            config
        })
        .unwrap();
    let manager = ConnectionManager::new(redis::Client::open(server.url()).unwrap(), credentials)
        .await
        .unwrap();
    assert!(spans.contains("entraid.token_request"), "the first token's request");
    assert!(!spans.contains("entraid.connection_replacement"));
    provider.set_unregistered(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while manager.stats().replacements == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(manager.stats().replacements >= 1, "{:?}", manager.stats());
    assert!(manager.stats().failed_auths >= 1, "{:?}", manager.stats());
    assert!(
        spans.contains("entraid.connection_replacement"),
        "spans: {:?}",
        spans.0.lock().unwrap()
    );
}
