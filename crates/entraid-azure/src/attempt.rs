//! One HTTP attempt per token request, and a record of how it went.
//!
//! A per-try pipeline policy sits just before the transport. It lets the first attempt
//! through and records the outcome: on success, the response's `expires_in` (so the token's
//! lifetime does not depend on this machine's clock); on failure, the status, `Retry-After`
//! and body, or the transport error. It then fails any further attempt at once and turns
//! every failure into an error the SDK's retry policy does not retry, so a request never
//! waits inside the SDK (IMDS alone would otherwise retry for up to 72 s).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::http::headers::{HeaderName, Headers, RETRY_AFTER};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{AsyncRawResponse, Context, Request};

/// How the one attempt went.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Success {
        /// `expires_in` from the response body, when it had one.
        expires_in: Option<Duration>,
    },
    Status {
        status: u16,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
    Transport {
        message: String,
    },
    /// A success whose `expires_in` no real token has: refused before the SDK computes
    /// an expiry from it (which panics past the year 9999).
    AbsurdLifetime {
        expires_in: Duration,
    },
}

/// Longer than any token Entra or a managed-identity endpoint issues (hours, a day), and
/// far below what date arithmetic can hold.
pub(crate) const MAX_ANNOUNCED_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Records the outcome of the first attempt and refuses the others.
#[derive(Debug, Default)]
pub(crate) struct SingleAttempt {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    attempts: u32,
    outcome: Option<Outcome>,
}

impl SingleAttempt {
    pub(crate) fn new() -> Arc<SingleAttempt> {
        Arc::new(SingleAttempt::default())
    }

    pub(crate) fn outcome(&self) -> Option<Outcome> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .outcome
            .clone()
    }

    fn record(&self, outcome: Outcome) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).outcome = Some(outcome);
    }
}

// The trait's signature elides Context's lifetime; matching it exactly is required.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl Policy for SingleAttempt {
    async fn send(&self, ctx: &Context, request: &mut Request, next: &[Arc<dyn Policy>]) -> PolicyResult {
        let attempt = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.attempts += 1;
            state.attempts
        };
        if attempt > 1 {
            return Err(azure_core::Error::with_message(
                ErrorKind::Other,
                "SDK retry suppressed: the token manager owns retries",
            ));
        }
        let Some((transport, rest)) = next.split_first() else {
            return Err(azure_core::Error::with_message(
                ErrorKind::Other,
                "no transport in the pipeline",
            ));
        };
        let response = match transport.send(ctx, request, rest).await {
            Ok(response) => response,
            Err(error) => {
                self.record(Outcome::Transport {
                    message: error.to_string(),
                });
                // Not Io/Connection, so the SDK's retry policy gives up at once.
                return Err(azure_core::Error::with_error(
                    ErrorKind::Other,
                    error,
                    "the token request failed before a response arrived",
                ));
            }
        };
        let (status, headers, body) = response.deconstruct();
        let bytes = match body.collect().await {
            Ok(bytes) => bytes,
            Err(error) => {
                self.record(Outcome::Transport {
                    message: format!("reading the response failed: {error}"),
                });
                return Err(azure_core::Error::with_error(
                    ErrorKind::Other,
                    error,
                    "reading the token response failed",
                ));
            }
        };
        let code = u16::from(status);
        if status.is_success() {
            let expires_in = expires_in(&bytes);
            if let Some(expires_in) = expires_in.filter(|d| *d > MAX_ANNOUNCED_LIFETIME) {
                self.record(Outcome::AbsurdLifetime { expires_in });
                return Err(azure_core::Error::with_message(
                    ErrorKind::Other,
                    "the token endpoint announced an impossible token lifetime",
                ));
            }
            self.record(Outcome::Success { expires_in });
            return Ok(AsyncRawResponse::from_bytes(status, headers, bytes));
        }
        self.record(Outcome::Status {
            status: code,
            retry_after: retry_after(&headers),
            body: bytes.to_vec(),
        });
        Err(azure_core::Error::with_message(
            ErrorKind::HttpResponse {
                status,
                error_code: None,
                raw_response: None,
            },
            format!("the token endpoint answered HTTP {code}"),
        ))
    }
}

/// `expires_in` as Entra (a number) and IMDS (a string of digits) send it.
fn expires_in(body: &[u8]) -> Option<Duration> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let seconds = match value.get("expires_in")? {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// `Retry-After` in seconds (the form Entra and IMDS use), or `x-ms-retry-after-ms`.
fn retry_after(headers: &Headers) -> Option<Duration> {
    const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-ms-retry-after-ms");
    if let Some(ms) = headers
        .get_optional_str(&RETRY_AFTER_MS)
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(Duration::from_millis(ms));
    }
    headers
        .get_optional_str(&RETRY_AFTER)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_expires_in_as_number_or_string() {
        assert_eq!(expires_in(br#"{"expires_in":3599}"#), Some(Duration::from_secs(3599)));
        assert_eq!(
            expires_in(br#"{"expires_in":"86399"}"#),
            Some(Duration::from_secs(86399))
        );
        assert_eq!(expires_in(br#"{"expires_on":"1"}"#), None);
        assert_eq!(expires_in(b"not json"), None);
    }

    #[test]
    fn reads_retry_after() {
        let mut headers = Headers::new();
        headers.insert(RETRY_AFTER, "17");
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(17)));
        headers.insert(HeaderName::from_static("x-ms-retry-after-ms"), "1500");
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        assert_eq!(retry_after(&Headers::new()), None);
    }
}
