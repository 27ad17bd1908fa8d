//! Why an identity request failed, and whether retrying can help.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Whether a failed request may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Network trouble, a timeout, throttling or a server error: try again later.
    Transient,
    /// Wrong secret, unknown client or tenant, bad certificate: trying again will not help
    /// until someone changes the configuration.
    Permanent,
}

/// Where a failure came from: the identity service's own answer, or something the
/// library saw on this side (a timeout, a network failure, a panicking provider…).
///
/// The service's error code is [`IdentityError::code`]; this says which failures have no
/// such code because the service never gave one. Match on it rather than on message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorOrigin {
    /// The identity service answered with an error; its code, if it gave one, is
    /// [`IdentityError::code`] (`AADSTS7000215`, `invalid_client`, `http_429`…).
    Service,
    /// The request took longer than the token manager's `token_request_timeout`: the
    /// provider or the network is slow or stuck, so the manager gave up on it.
    Timeout,
    /// The provider returned a token that had already expired (lifetime zero): a provider
    /// that sets `expires_at` wrong, or a clock far off.
    ExpiredToken,
    /// The provider has not finished earlier requests, so no new one was started: each
    /// holds a thread of the blocking driver, and a provider that never returns must not
    /// pile them up.
    ProviderHung,
    /// The provider panicked while requesting a token: a bug in the provider, caught so
    /// the manager keeps running.
    ProviderPanicked,
    /// The identity service could not be reached (DNS, connection, TLS, proxy): nothing
    /// answered, so there is no service code.
    Network,
    /// The local credential could not be built or used (its configuration, a missing
    /// developer tool, the SDK): the failure happened before any answer from the service.
    Credential,
    /// The service answered with something that is not a token Redis can use (unreadable,
    /// without an `oid`, or with a lifetime no Entra ID token has).
    InvalidToken,
}

impl ErrorOrigin {
    /// The origin in a few words, for messages: `"request timed out"`, `"network"`…
    pub fn describe(self) -> &'static str {
        match self {
            ErrorOrigin::Service => "identity service",
            ErrorOrigin::Timeout => "request timed out",
            ErrorOrigin::ExpiredToken => "expired token",
            ErrorOrigin::ProviderHung => "provider not answering",
            ErrorOrigin::ProviderPanicked => "provider panicked",
            ErrorOrigin::Network => "network",
            ErrorOrigin::Credential => "credential",
            ErrorOrigin::InvalidToken => "unusable token",
        }
    }
}

impl fmt::Display for ErrorOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A failed token request.
///
/// The message names the cause and, where known, the fix. Providers must keep secrets
/// (client secrets, certificates, tokens) out of it: it is logged and shown to users.
/// Cloning is cheap, because one error is reported to every waiting connection.
///
/// [`origin`](Self::origin) says where the failure came from; [`code`](Self::code) is
/// the identity service's own code, and only ever that.
#[derive(Clone)]
pub struct IdentityError {
    kind: ErrorKind,
    message: Arc<str>,
    origin: Option<ErrorOrigin>,
    /// The service's code: only with `origin == Some(ErrorOrigin::Service)`.
    code: Option<Arc<str>>,
    hint: Option<Arc<str>>,
    retry_after: Option<Duration>,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl IdentityError {
    /// A failure that may go away by itself (network, timeout, 429, 5xx).
    pub fn transient(message: impl Into<String>) -> IdentityError {
        IdentityError::new(ErrorKind::Transient, message.into())
    }

    /// A failure that needs a configuration change (bad secret, unknown client).
    pub fn permanent(message: impl Into<String>) -> IdentityError {
        IdentityError::new(ErrorKind::Permanent, message.into())
    }

    fn new(kind: ErrorKind, message: String) -> IdentityError {
        IdentityError {
            kind,
            message: Arc::from(message),
            origin: None,
            code: None,
            hint: None,
            retry_after: None,
            source: None,
        }
    }

    /// The service asked to wait at least `after` before the next request
    /// (an HTTP `Retry-After`); the token manager honours it.
    pub fn with_retry_after(mut self, after: Duration) -> IdentityError {
        self.retry_after = Some(after);
        self
    }

    /// The identity service's own error code, such as `AADSTS7000215`, `invalid_client`
    /// or `http_503`; it also sets the origin to [`ErrorOrigin::Service`]. Never a code
    /// of the library's own: use [`with_origin`](Self::with_origin) for those.
    pub fn with_code(mut self, code: impl Into<String>) -> IdentityError {
        self.origin = Some(ErrorOrigin::Service);
        self.code = Some(Arc::from(code.into()));
        self
    }

    /// Where the failure came from. Any origin but [`ErrorOrigin::Service`] drops a code
    /// set before: [`code`](Self::code) is the service's, and the service did not answer.
    pub fn with_origin(mut self, origin: ErrorOrigin) -> IdentityError {
        if origin != ErrorOrigin::Service {
            self.code = None;
        }
        self.origin = Some(origin);
        self
    }

    /// What to do about it, in one line ("use the secret's Value, not its ID"): shown
    /// after the message, and on its own by diagnosis tools.
    pub fn with_hint(mut self, hint: impl Into<String>) -> IdentityError {
        self.hint = Some(Arc::from(hint.into()));
        self
    }

    /// The lower-level error that caused this one (it must not carry secrets either).
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> IdentityError {
        self.source = Some(Arc::new(source));
        self
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// Transient or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// How long the service asked to wait before the next request, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Where the failure came from, if the provider said: the service's answer, or one
    /// of the library's own causes (timeout, network, panicking provider…).
    pub fn origin(&self) -> Option<ErrorOrigin> {
        self.origin
    }

    /// The identity service's error code, if it answered with one: never a code of the
    /// library's own (see [`origin`](Self::origin)).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The message (what went wrong), without the kind, code and hint.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What to do about it, if the provider knows.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        };
        write!(f, "{kind} identity error")?;
        match (&self.code, self.origin) {
            (Some(code), _) => write!(f, " [{code}]")?,
            (None, Some(origin)) if origin != ErrorOrigin::Service => write!(f, " ({origin})")?,
            _ => {}
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " — {hint}")?;
        }
        if let Some(after) = self.retry_after {
            write!(f, " (retry after {after:?})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityError")
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("hint", &self.hint)
            .field("retry_after", &self.retry_after)
            .field("source", &self.source)
            .finish()
    }
}

impl StdError for IdentityError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_retry_after_and_code_are_kept() {
        let e = IdentityError::transient("throttled by Entra ID")
            .with_retry_after(Duration::from_secs(7))
            .with_code("429");
        assert!(e.is_transient());
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e.code(), Some("429"));
        assert_eq!(
            e.to_string(),
            "transient identity error [429]: throttled by Entra ID (retry after 7s)"
        );

        let p =
            IdentityError::permanent("wrong client secret; create a new one in the portal").with_code("AADSTS7000215");
        assert!(!p.is_transient());
        assert_eq!(p.retry_after(), None);
        assert!(
            p.to_string()
                .starts_with("permanent identity error [AADSTS7000215]: wrong client secret")
        );
    }

    #[test]
    fn hint_is_kept_apart_and_shown_after_the_message() {
        let e = IdentityError::permanent("HTTP 401 from the token endpoint: invalid client secret")
            .with_code("AADSTS7000215")
            .with_hint("use the secret's Value, not its Secret ID");
        assert_eq!(e.message(), "HTTP 401 from the token endpoint: invalid client secret");
        assert_eq!(e.hint(), Some("use the secret's Value, not its Secret ID"));
        assert_eq!(
            e.to_string(),
            "permanent identity error [AADSTS7000215]: HTTP 401 from the token endpoint: invalid client secret \
             — use the secret's Value, not its Secret ID"
        );
        assert_eq!(IdentityError::transient("x").hint(), None);
    }

    #[test]
    fn origin_is_typed_and_code_stays_the_services() {
        let plain = IdentityError::transient("x");
        assert_eq!((plain.origin(), plain.code()), (None, None));

        let service = IdentityError::permanent("unknown client").with_code("AADSTS700016");
        assert_eq!(service.origin(), Some(ErrorOrigin::Service));
        assert_eq!(service.code(), Some("AADSTS700016"));

        let timeout = IdentityError::transient("the provider did not answer within 10s")
            .with_origin(ErrorOrigin::Timeout)
            .with_hint("raise token_request_timeout");
        assert_eq!(timeout.origin(), Some(ErrorOrigin::Timeout));
        assert_eq!(timeout.code(), None);
        assert_eq!(
            timeout.to_string(),
            "transient identity error (request timed out): the provider did not answer within 10s \
             — raise token_request_timeout"
        );

        let overridden = IdentityError::transient("y")
            .with_code("http_503")
            .with_origin(ErrorOrigin::Network);
        assert_eq!(overridden.code(), None, "a library origin never keeps a service code");
        assert_eq!(overridden.to_string(), "transient identity error (network): y");
        let service_again = IdentityError::transient("z")
            .with_code("http_503")
            .with_origin(ErrorOrigin::Service);
        assert_eq!(service_again.code(), Some("http_503"));
        assert_eq!(service_again.to_string(), "transient identity error [http_503]: z");
        assert_eq!(
            IdentityError::transient("w")
                .with_origin(ErrorOrigin::Service)
                .to_string(),
            "transient identity error: w"
        );
    }

    #[test]
    fn source_is_exposed() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = IdentityError::transient("cannot reach the token endpoint").with_source(io);
        let source = StdError::source(&e).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("refused"));
    }

    #[test]
    fn is_send_sync_static_and_clone() {
        fn check<T: StdError + Send + Sync + Clone + 'static>() {}
        check::<IdentityError>();
        check::<crate::TokenParseError>();
    }
}
