//! Turns a panicking identity provider into an error instead of a dead manager.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use entraid_identity::{ErrorOrigin, IdentityError, IdentityProvider, Token};

/// The boxed, owned future of one token request.
pub(crate) type RequestFuture = Pin<Box<dyn Future<Output = Result<Token, IdentityError>> + Send>>;

/// Starts one request on a shared provider; a panic inside it becomes a transient error.
pub(crate) fn request<P: IdentityProvider + ?Sized>(provider: &std::sync::Arc<P>) -> RequestFuture {
    let provider = provider.clone();
    Box::pin(CatchPanic(Box::pin(async move { provider.request_token().await })))
}

struct CatchPanic(RequestFuture);

impl Future for CatchPanic {
    type Output = Result<Token, IdentityError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Err(IdentityError::transient(
                "the identity provider panicked while requesting a token; this is a bug in the provider",
            )
            .with_origin(ErrorOrigin::ProviderPanicked))),
        }
    }
}

/// `entraid.token_request`: one span per request, with its attempt number (1 after a
/// success) and, once known, its outcome (`token`, `failed`, `timed_out`), so a trace
/// shows every attempt of a rotation.
pub(crate) fn request_span(id: crate::RequestId, machine: &crate::TokenStateMachine) -> tracing::Span {
    tracing::info_span!(
        "entraid.token_request",
        request = %id,
        attempt = machine.consecutive_failures() + 1,
        outcome = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, SystemTime};

    /// Panics at its first request, then hands out tokens. Written here rather than taken
    /// from the workspace's test support, so the unit tests build from the published package.
    struct PanicsOnce(AtomicBool);

    #[async_trait::async_trait]
    impl IdentityProvider for PanicsOnce {
        async fn request_token(&self) -> Result<Token, IdentityError> {
            if !self.0.swap(true, Ordering::SeqCst) {
                panic!("the provider's bug");
            }
            let now = SystemTime::now();
            Ok(Token::new("secret", "oid", now + Duration::from_secs(60), now))
        }
    }

    #[test]
    fn a_panic_becomes_a_transient_error_with_its_origin() {
        let provider = std::sync::Arc::new(PanicsOnce(AtomicBool::new(false)));
        let error = crate::blocking::block_on(request(&provider)).unwrap_err();
        assert!(error.is_transient());
        assert_eq!(error.origin(), Some(ErrorOrigin::ProviderPanicked));
        assert_eq!(error.code(), None);
        assert!(error.to_string().contains("(provider panicked)"), "{error}");
        assert!(
            crate::blocking::block_on(request(&provider)).is_ok(),
            "the next request works"
        );
    }
}
