//! The provider's health through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): the exporter most services already run (Prometheus, StatsD,
//! OpenTelemetry) gets the same figures as [`EntraIdCredentialsProvider::status`].
//!
//! Names follow Prometheus conventions; every series has an `identity` label you choose:
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `entraid_token_requests_total{outcome="success"\|"failure"}` | counter | token requests to the identity provider |
//! | `entraid_token_consecutive_failures` | gauge | failed requests since the last success |
//! | `entraid_token_valid` | gauge | 1 while a token that has not expired is held, else 0 |
//! | `entraid_token_expires_in_seconds` | gauge | what the current token has left (0 without one) |
//! | `entraid_token_expiry_timestamp_seconds` | gauge | when it expires, Unix time |
//! | `entraid_connections` | gauge | open connections of this crate's types |
//! | `entraid_connections_retrying_auth` | gauge | connections retrying a failed re-authentication |
//! | `entraid_connections_reauthenticated_latest` | gauge | re-authentications with the newest token |
//! | `entraid_connection_replacements_total` | counter | connections replaced before their token expired |
//! | `entraid_connection_handoffs_total` | counter | connections handed off before the server moved the endpoint (`MOVING`) |
//! | `entraid_reauthentications_lost_total` | counter | redis-crate connections whose re-authentication ended |
//!
//! ```no_run
//! # async fn f(provider: redis_entraid::EntraIdCredentialsProvider) {
//! use redis_entraid::metrics::MetricsReporter;
//! use std::time::Duration;
//! // With an exporter installed (e.g. metrics_exporter_prometheus::PrometheusBuilder):
//! MetricsReporter::new(&provider, "orders-api").spawn(Duration::from_secs(5));
//! # }
//! ```

use std::time::{Duration, SystemTime};

use metrics::{counter, gauge};

use crate::EntraIdCredentialsProvider;
use crate::provider::WeakProvider;

/// Records one provider's status into the installed `metrics` recorder, on demand
/// ([`record`](Self::record)) or every so often on a task ([`spawn`](Self::spawn)).
#[derive(Debug, Clone)]
pub struct MetricsReporter {
    provider: WeakProvider,
    identity: String,
}

impl MetricsReporter {
    /// A reporter for `provider`, its series labelled `identity="<identity>"`. It does not
    /// keep the provider alive.
    pub fn new(provider: &EntraIdCredentialsProvider, identity: impl Into<String>) -> MetricsReporter {
        MetricsReporter {
            provider: provider.downgrade(),
            identity: identity.into(),
        }
    }

    /// Records the figures now. `false` once the provider and all its connections are
    /// gone (nothing left to report).
    pub fn record(&self) -> bool {
        let Some(provider) = self.provider.upgrade() else {
            return false;
        };
        let status = provider.status();
        let id = self.identity.clone();
        let token = &status.token;
        counter!("entraid_token_requests_total", "identity" => id.clone(), "outcome" => "success")
            .absolute(token.successful_requests);
        counter!("entraid_token_requests_total", "identity" => id.clone(), "outcome" => "failure")
            .absolute(token.failed_requests);
        gauge!("entraid_token_consecutive_failures", "identity" => id.clone())
            .set(f64::from(token.consecutive_failures));
        let now = SystemTime::now();
        gauge!("entraid_token_valid", "identity" => id.clone()).set(if token.has_valid_token(now) { 1.0 } else { 0.0 });
        gauge!("entraid_token_expires_in_seconds", "identity" => id.clone())
            .set(token.expires_in(now).unwrap_or(Duration::ZERO).as_secs_f64());
        if let Some(at) = token
            .expires_at
            .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
        {
            gauge!("entraid_token_expiry_timestamp_seconds", "identity" => id.clone()).set(at.as_secs_f64());
        }
        let connections = &status.connections;
        gauge!("entraid_connections", "identity" => id.clone()).set(connections.live as f64);
        gauge!("entraid_connections_retrying_auth", "identity" => id.clone()).set(connections.retrying_auth as f64);
        gauge!("entraid_connections_reauthenticated_latest", "identity" => id.clone())
            .set(connections.reauthenticated_on_latest_renewal as f64);
        counter!("entraid_connection_replacements_total", "identity" => id.clone()).absolute(connections.replaced);
        counter!("entraid_connection_handoffs_total", "identity" => id.clone()).absolute(connections.handed_off);
        counter!("entraid_reauthentications_lost_total", "identity" => id).absolute(connections.lost_reauthentications);
        true
    }

    /// Records every `every` on a task of the current tokio runtime, until the provider
    /// and all its connections are gone. Needs a tokio runtime.
    pub fn spawn(self, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if !self.record() {
                    return;
                }
            }
        })
    }
}
