//! Microsoft Entra ID authentication for the [`redis`] crate.
//!
//! [`EntraIdCredentialsProvider`] implements `redis::auth::StreamingCredentialsProvider`:
//! give it to a connection configuration and every connection made from it is
//! authenticated with a fresh Entra ID token, and re-authenticated before each token
//! expires, for as long as the program runs.
//!
//! For long-lived connections, [`aio::ConnectionManager`] (async) and [`Connection`]
//! (sync) own re-authentication instead of leaving it to the redis crate: a failed
//! `AUTH` is retried, and a connection that cannot re-authenticate in time is replaced
//! before the server would cut it.
//!
//! It is a drop-in for the examples on the redis.io "Connect to Azure Managed Redis" page:
//! import `EntraIdCredentialsProvider`, `RetryConfig` and `ClientCertificate` from this
//! crate instead of `redis` (and do not enable redis's own `entra-id` feature).
//!
//! ```no_run
//! use redis::{AsyncConnectionConfig, AsyncCommands, Client};
//! use redis_entraid::{EntraIdCredentialsProvider, RetryConfig};
//!
//! # async fn run() -> redis::RedisResult<()> {
//! let mut provider = EntraIdCredentialsProvider::new_system_assigned_managed_identity()?;
//! provider.start(RetryConfig::default());
//!
//! let client = Client::open("rediss://my-cache.region.redis.azure.net:10000")?;
//! let config = AsyncConnectionConfig::new().set_credentials_provider(provider);
//! let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
//! let () = connection.set("foo", "bar").await?;
//! # Ok(()) }
//! ```
//!
//! Any identity works, Azure or not, through [`EntraIdCredentialsProvider::new_with_identity_provider`]
//! and the [`IdentityProvider`] trait. Refresh and retry are done by
//! [`entraid_token_manager`]; this crate only adapts its tokens to the `redis` crate.
//!
//! # Feature flags
//!
#![doc = document_features::document_features!()]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(feature = "azure")]
mod azure;
mod commands;
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
pub mod aio;
mod connection;
mod connection_config;
mod credentials_stream;
mod health;
mod maintenance;
#[cfg(feature = "metrics")]
pub mod metrics;
mod plaintext_check;
mod provider;
#[cfg(feature = "r2d2")]
pub mod r2d2;
mod retry_config;
mod session;
mod supervision;
mod token_feed;

#[cfg(feature = "certificate")]
pub use azure::ClientCertificate;
pub use connection::Connection;
pub use connection_config::ConnectionConfig;
pub use health::{ConnectionsStatus, ProviderStatus};
pub use maintenance::{MaintenanceNotifications, MovingEndpointType};
pub use provider::{DEFAULT_REAUTH_SPREAD, EntraIdCredentialsProvider};
pub use retry_config::RetryConfig;
pub use supervision::ConnectionStats;

#[cfg(feature = "azure")]
pub use entraid_azure::{AzureConfigError, AzureIdentityProvider, ManagedIdentityId};
/// The `azure_core` and `azure_identity` versions the Azure constructors take types of
/// (`ClientOptions`, the `*CredentialOptions`, `TokenCredential`), so they always match.
#[cfg(feature = "azure")]
pub use entraid_azure::{azure_core, azure_identity};
pub use entraid_identity::{ErrorOrigin, IdentityError, IdentityProvider, Token};
pub use entraid_token_manager::{ConnectionPolicy, RefreshOutcome, RetryPolicy, TokenManagerConfig, TokenStatus};
/// The `redis` version this crate is built on: its types are in our signatures.
pub use redis;
