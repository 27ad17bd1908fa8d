//! What a driver reports to the code waiting for tokens.

use entraid_identity::IdentityError;

use crate::config::ConfigError;
use crate::state_machine::RefreshFailure;

/// Why a token could not be handed out.
///
/// Cloning is cheap: one error reaches every subscriber.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TokenManagerError {
    /// Token requests failed `attempts` times in a row (or once, with an error the retry
    /// policy does not retry). The manager keeps trying in the background.
    #[error("could not get an Entra ID token ({attempts} failed attempt(s) in a row; still retrying): {error}")]
    RequestFailed {
        /// The last error from the identity provider. Its text is in this error's own
        /// (most callers show only that, and redis errors keep only text), so it is not
        /// also returned by `source()`, where reporters would print it twice.
        error: IdentityError,
        /// Consecutive failed attempts.
        attempts: u32,
        /// Whether the retry policy considers the error retryable.
        retryable: bool,
    },
    /// The token expired and no new one could be obtained yet. The manager keeps trying.
    #[error(
        "the Entra ID token expired and no new one could be obtained yet; the manager keeps \
         trying: check the identity provider's errors logged before this"
    )]
    TokenExpired,
    /// The manager was stopped (explicitly, or because every handle to it was dropped).
    #[error(
        "the token manager was stopped; start a new one (keep a TokenManager clone alive for as long as you need tokens)"
    )]
    Stopped,
    /// The tokio runtime the manager ran on was shut down (a temporary runtime, a
    /// `#[tokio::test]` that ended) while handles to it were still in use. Nothing
    /// refreshes the token any more.
    #[error(
        "the tokio runtime the token manager ran on was shut down, so nothing refreshes the token any more; \
         start the manager on a runtime that lives as long as the program \
         (TokenManager::builder(provider).runtime(handle).start()) or on one of its own \
         (.start_on_own_runtime()), or let redis_entraid's provider run it on a runtime of its own"
    )]
    RuntimeShutDown,
    /// The manager could not start: its configuration was refused, or its runtime or
    /// thread could not be had.
    /// Its text includes the cause; `source()` is empty so that it is not printed twice.
    #[error("the token manager did not start: {0}")]
    NotStarted(StartError),
    /// No token arrived within the time the caller was willing to wait.
    #[error("no Entra ID token arrived within {0:?}; the identity provider may be slow or unreachable")]
    WaitTimedOut(std::time::Duration),
}

/// Why a driver could not start. Validation errors are [`ConfigError`]s; the rest is
/// about where the driver runs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration was refused.
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    /// The tokio driver was started outside a tokio runtime.
    #[cfg(feature = "tokio")]
    #[error(
        "the token manager was started outside a tokio runtime; start it from async code, \
         give it a runtime (TokenManager::builder(provider).runtime(handle).start()), \
         let it run one of its own (TokenManager::builder(provider).start_on_own_runtime()), \
         or use blocking::TokenManager"
    )]
    NoTokioRuntime,
    /// The operating system refused a thread (the blocking driver's, or the one that
    /// runs a runtime of the manager's own).
    #[error("could not start the token manager's thread: {0}")]
    ThreadSpawn(String),
    /// A tokio runtime of the manager's own could not be built.
    #[cfg(feature = "tokio")]
    #[error("could not build the token manager's own tokio runtime: {0}")]
    RuntimeBuild(String),
}

impl From<RefreshFailure> for TokenManagerError {
    fn from(failure: RefreshFailure) -> Self {
        TokenManagerError::RequestFailed {
            error: failure.error,
            attempts: failure.attempts,
            retryable: failure.retryable,
        }
    }
}

impl From<StartError> for TokenManagerError {
    fn from(error: StartError) -> Self {
        TokenManagerError::NotStarted(error)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// An error whose text holds its cause returns no `source()`, so reporters that walk
    /// the chain (`anyhow`'s `{:#}`, `tracing`'s error fields) do not print it twice.
    #[test]
    fn no_cause_is_printed_twice() {
        let errors = [
            TokenManagerError::RequestFailed {
                error: IdentityError::permanent("AADSTS7000215: invalid client secret"),
                attempts: 3,
                retryable: false,
            },
            TokenManagerError::NotStarted(StartError::InvalidConfig(ConfigError::RefreshRatio(2.0))),
        ];
        for error in errors {
            let text = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                assert!(!text.contains(&cause.to_string()), "{text:?} repeats its cause {cause}");
                source = cause.source();
            }
        }
    }
}
