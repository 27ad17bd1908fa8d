//! The one trait every identity (Azure or your own) implements.

use std::sync::Arc;

use crate::{IdentityError, Token};

/// Trades an identity for a fresh access token.
///
/// The token manager calls [`request_token`](IdentityProvider::request_token) when a
/// token is due for renewal and after a failure; it owns timeouts, retries and backoff,
/// so an implementation should make **one** attempt per call and return:
///
/// - a token that was just issued (not one cached from an earlier call: the manager
///   decides when to renew, and a cached token would defeat it);
/// - [`IdentityError::transient`] when trying again later may help (network, timeout,
///   throttling, server errors), with [`IdentityError::with_retry_after`] when the
///   service said how long to wait;
/// - [`IdentityError::permanent`] when it cannot (wrong secret, unknown client).
///
/// Name where a failure came from: [`IdentityError::with_code`] with the service's own
/// code when it answered, else [`IdentityError::with_origin`] (network, credential…).
///
/// It is implemented for `Arc<P>` and `Box<P>`, including `dyn IdentityProvider`.
#[async_trait::async_trait]
pub trait IdentityProvider: Send + Sync + 'static {
    /// Requests a new token from the identity service.
    async fn request_token(&self) -> Result<Token, IdentityError>;
}

#[async_trait::async_trait]
impl<P: IdentityProvider + ?Sized> IdentityProvider for Arc<P> {
    async fn request_token(&self) -> Result<Token, IdentityError> {
        (**self).request_token().await
    }
}

#[async_trait::async_trait]
impl<P: IdentityProvider + ?Sized> IdentityProvider for Box<P> {
    async fn request_token(&self) -> Result<Token, IdentityError> {
        (**self).request_token().await
    }
}
