//! Azure identities as [`entraid_identity::IdentityProvider`]s, on `azure_identity` 1.x.
//!
//! One type, [`AzureIdentityProvider`], built for the identity your program has:
//!
//! | identity | constructor |
//! | --- | --- |
//! | service principal with a client secret | [`AzureIdentityProvider::client_secret`] |
//! | service principal with a certificate (PKCS12) | [`AzureIdentityProvider::client_certificate`], [`AzureIdentityProvider::client_certificate_base64`] |
//! | system-assigned managed identity | [`AzureIdentityProvider::managed_identity`] with [`ManagedIdentityId::SystemAssigned`] |
//! | user-assigned managed identity (client, object or resource id) | [`AzureIdentityProvider::managed_identity`] |
//! | workload identity (AKS) | [`AzureIdentityProvider::workload_identity`] |
//! | Azure CLI / Azure Developer CLI on a developer machine | [`AzureIdentityProvider::developer_tools`] |
//! | any `azure_core` `TokenCredential` | [`AzureIdentityProvider::from_credential`] |
//! | whatever the `AZURE_*` environment variables describe | [`AzureIdentityProvider::from_env`] |
//!
//! Tokens are requested for `https://redis.azure.com/.default` unless
//! [`with_scopes`](AzureIdentityProvider::with_scopes) says otherwise. The Redis username is
//! the token's `oid` claim.
//!
//! Three things differ from using `azure_identity` directly, on purpose:
//!
//! - **Every request reaches Entra ID.** `azure_identity` caches a token until 5 minutes
//!   before it expires, which would turn the token manager's "refresh at 70 %" into
//!   "refresh 5 minutes before expiry". A fresh credential is built per request (they are
//!   cheap: no I/O until the request).
//! - **One request is one attempt.** The SDK's retries (up to 72 s for IMDS) are cut off,
//!   so `token_request_timeout` holds and the token manager's backoff is the only one.
//! - **Errors are classified** as transient (network, timeout, 408, 429 with its
//!   `Retry-After`, 5xx) or permanent (wrong secret, unknown client or tenant, bad
//!   certificate), with the Entra error code and a hint.
//!
//! ```no_run
//! use entraid_azure::AzureIdentityProvider;
//! use entraid_identity::IdentityProvider;
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let provider = AzureIdentityProvider::client_secret("my-tenant-id", "my-client-id", "my-secret")?;
//! let token = provider.request_token().await?;
//! println!("AUTH {} <token>", token.username());
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
#![doc = document_features::document_features!()]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

#[cfg(not(any(feature = "rustls", feature = "native-tls")))]
compile_error!(
    "entraid-azure needs a TLS backend for Entra ID traffic: enable its `rustls` feature (the default) \
     or `native-tls` (through redis-entraid: features = [\"azure\", \"rustls\"] or [\"azure\", \"native-tls\"])"
);

// The crates.io page's code blocks are compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

mod attempt;
mod classify;
mod endpoints;
mod env;
mod error;
mod provider;
mod validate;

pub use env::{EnvIdentityKind, EnvLookup, EnvSelection, IDENTITY_VARIABLES, user_assigned_client_id_from_env};
pub use error::AzureConfigError;
pub use provider::{AzureIdentityProvider, ManagedIdentityId};

/// The `azure_core` version this crate is built on.
pub use azure_core;
/// The `azure_identity` version this crate is built on, re-exported so option types match.
pub use azure_identity;
pub use entraid_identity::REDIS_SCOPE;
