//! The identity side of Entra ID authentication for Redis, with nothing else attached.
//!
//! This crate defines what every other crate of the workspace agrees on:
//!
//! - [`Token`]: an access token, the username Redis expects with it (the token's `oid`),
//!   and when it was received and expires. Its `Debug` never shows the secret.
//! - [`IdentityProvider`]: anything that can trade an identity for a fresh [`Token`].
//!   Azure credentials implement it in `entraid-azure`; your own provider can too.
//! - [`IdentityError`]: why a request failed, whether retrying can help, and how long
//!   the identity service asked us to wait; [`ErrorOrigin`] says whether the service
//!   answered (its code is [`IdentityError::code`]) or the failure was seen on this side.
//!
//! It has no runtime and does no I/O, so a custom provider depends on nothing more
//! than this crate and whatever it needs itself.
//!
//! ```
//! use entraid_identity::{IdentityError, IdentityProvider, Token};
//! use std::time::{Duration, SystemTime};
//!
//! /// Hands out tokens from a secret store of your own.
//! struct Vault;
//!
//! #[async_trait::async_trait]
//! impl IdentityProvider for Vault {
//!     async fn request_token(&self) -> Result<Token, IdentityError> {
//!         let now = SystemTime::now();
//!         Ok(Token::new("secret-from-vault", "object-id", now + Duration::from_secs(3600), now))
//!     }
//! }
//! # let token = futures_executor_block_on(Vault.request_token()).unwrap();
//! # assert_eq!(token.username(), "object-id");
//! # assert_eq!(token.lifetime(), Duration::from_secs(3600));
//! # fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     use std::task::{Context, Poll, Waker};
//! #     let mut f = std::pin::pin!(f);
//! #     let mut cx = Context::from_waker(Waker::noop());
//! #     loop { if let Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

// The crates.io page's code blocks are compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

mod error;
mod jwt;
mod provider;
mod token;

pub use error::{ErrorKind, ErrorOrigin, IdentityError};
pub use jwt::TokenParseError;
pub use provider::IdentityProvider;
pub use token::Token;

/// The scope that asks Entra ID for a token Azure Managed Redis and Azure Cache for Redis accept.
pub const REDIS_SCOPE: &str = "https://redis.azure.com/.default";
