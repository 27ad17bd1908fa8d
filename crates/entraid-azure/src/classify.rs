//! Turns a failed request into a transient or permanent [`IdentityError`] that names the
//! Entra error code, the principal, and what to do about it.

use std::time::Duration;

use entraid_identity::{ErrorOrigin, IdentityError};

use crate::attempt::Outcome;

/// Which kind of endpoint was asked: hints differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// The Entra token endpoint (`/{tenant}/oauth2/v2.0/token`).
    Entra,
    /// A managed-identity endpoint (IMDS, App Service).
    ManagedIdentity,
    /// A developer tool (az, azd) or a credential we did not build.
    Other,
}

/// What the failed request was for, for the message: never a secret.
pub(crate) struct Context<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) principal: &'a str,
}

/// Builds the error from what the single attempt recorded, or else from the SDK's error.
pub(crate) fn classify(outcome: Option<Outcome>, sdk_error: &azure_core::Error, ctx: &Context<'_>) -> IdentityError {
    match outcome {
        Some(Outcome::Status {
            status,
            retry_after,
            body,
        }) => from_status(status, retry_after, &body, ctx),
        Some(Outcome::Transport { message }) => IdentityError::transient(format!(
            "could not reach the token endpoint for {}: {message}",
            ctx.principal
        ))
        .with_origin(ErrorOrigin::Network)
        .with_hint(
            "check DNS, proxy and firewall rules, and AZURE_AUTHORITY_HOST or IDENTITY_ENDPOINT if set \
             (managed identity only works on an Azure host)",
        ),
        Some(Outcome::AbsurdLifetime { expires_in }) => IdentityError::permanent(format!(
            "the token endpoint for {} announced a token lifetime of {} s, which no Entra ID token has",
            ctx.principal,
            expires_in.as_secs()
        ))
        .with_origin(ErrorOrigin::InvalidToken)
        .with_hint(
            "check that AZURE_AUTHORITY_HOST (or the managed identity endpoint) is the real one and that \
             no proxy rewrites its responses",
        ),
        Some(Outcome::Success { .. }) | None => from_sdk_error(sdk_error, ctx),
    }
}

fn from_status(status: u16, retry_after: Option<Duration>, body: &[u8], ctx: &Context<'_>) -> IdentityError {
    let details = EntraErrorBody::parse(body);
    let code = details.code();
    let description = details.description();
    let transient = is_transient_status(status, ctx.endpoint);
    let hint = hint(status, code.as_deref(), ctx.endpoint);
    let mut message = format!("HTTP {status} from the token endpoint for {}", ctx.principal);
    if !description.is_empty() {
        message.push_str(": ");
        message.push_str(&description);
    }
    let error = if transient {
        IdentityError::transient(message)
    } else {
        IdentityError::permanent(message)
    };
    let mut error = error.with_code(code.unwrap_or_else(|| format!("http_{status}")));
    if let Some(hint) = hint {
        error = error.with_hint(hint);
    }
    match retry_after {
        Some(after) => error.with_retry_after(after),
        None => error,
    }
}

fn hint(status: u16, code: Option<&str>, endpoint: Endpoint) -> Option<&'static str> {
    let by_code = match code? {
        "AADSTS7000215" => {
            "the client secret is wrong: use the secret's Value (not its Secret ID) from 'Certificates & secrets'"
        }
        "AADSTS7000222" => "the client secret has expired: create a new one under 'Certificates & secrets'",
        "AADSTS700016" => {
            "no application with this client id exists in the tenant: check the client id and the tenant id"
        }
        "AADSTS90002" => "the tenant was not found: check the tenant id (AZURE_TENANT_ID)",
        "AADSTS900023" => "the tenant id is malformed: use the directory (tenant) GUID",
        "AADSTS700027" | "AADSTS700023" => {
            "the certificate assertion was rejected: upload this certificate's public key to the app registration"
        }
        "AADSTS700024" => "the client assertion is outside its valid time range: check this machine's clock",
        "AADSTS70021" | "AADSTS700213" | "AADSTS700211" => {
            "no federated credential matches this workload's token: check the federated credential's issuer and subject"
        }
        "AADSTS500011" => "the resource was not found: request the scope https://redis.azure.com/.default",
        "AADSTS50034" | "AADSTS700054" => "the principal is not set up for this flow: check the app registration",
        "invalid_client" => "the client credentials were rejected: check the client id, secret or certificate",
        "unauthorized_client" => "this client is not authorized in the tenant: check the client id and tenant id",
        _ => "",
    };
    if !by_code.is_empty() {
        return Some(by_code);
    }
    match (endpoint, status) {
        (Endpoint::ManagedIdentity, 400) => Some(
            "the managed identity is not assigned to this resource, or the id is wrong: assign it to this resource or pass the right client/object/resource id",
        ),
        (_, 429) => Some("throttled: the token manager waits as asked and retries"),
        _ => None,
    }
}

/// The parts of an Entra (or IMDS) error body that help.
struct EntraErrorBody {
    error: Option<String>,
    error_codes: Vec<i64>,
    description: Option<String>,
}

impl EntraErrorBody {
    fn parse(body: &[u8]) -> EntraErrorBody {
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        EntraErrorBody {
            error: text("error"),
            error_codes: value
                .get("error_codes")
                .and_then(|v| v.as_array())
                .map(|codes| codes.iter().filter_map(serde_json::Value::as_i64).collect())
                .unwrap_or_default(),
            description: text("error_description").or_else(|| text("message")),
        }
    }

    /// `AADSTS<n>` when Entra gave a numeric code, else its `error` string.
    fn code(&self) -> Option<String> {
        if let Some(first) = self.error_codes.first() {
            return Some(format!("AADSTS{first}"));
        }
        if let Some(code) = self.description.as_deref().and_then(aadsts_in) {
            return Some(code);
        }
        self.error.clone()
    }

    /// The first line of the description, trimmed to a readable length.
    fn description(&self) -> String {
        let description = self.description.as_deref().unwrap_or_default();
        let first_line = description.lines().next().unwrap_or_default().trim();
        let mut short: String = first_line.chars().take(300).collect();
        if short.len() < first_line.len() {
            short.push('…');
        }
        match (&self.error, short.is_empty()) {
            (Some(error), true) => error.clone(),
            (Some(error), false) if !short.starts_with(error.as_str()) => format!("{error}: {short}"),
            _ => short,
        }
    }
}

/// The `AADSTS12345` code at the start of a description, if any.
fn aadsts_in(text: &str) -> Option<String> {
    let start = text.find("AADSTS")?;
    let digits: String = text[start + 6..].chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty()).then(|| format!("AADSTS{digits}"))
}

/// Whether an HTTP status may clear up by itself: timeouts, throttling, server errors;
/// and, from a managed-identity endpoint, 404/410 (IMDS answers them while the identity
/// is still being set up on a new host).
fn is_transient_status(status: u16, endpoint: Endpoint) -> bool {
    matches!(status, 408 | 429 | 500..=599) || (endpoint == Endpoint::ManagedIdentity && matches!(status, 404 | 410))
}

fn from_sdk_error(error: &azure_core::Error, ctx: &Context<'_>) -> IdentityError {
    use azure_core::error::ErrorKind;
    let message = format!("{} could not get a token: {error}", ctx.principal);
    match error.kind() {
        ErrorKind::Io | ErrorKind::Connection => IdentityError::transient(message).with_origin(ErrorOrigin::Network),
        ErrorKind::HttpResponse { status, .. } => {
            let status = u16::from(*status);
            if is_transient_status(status, ctx.endpoint) {
                IdentityError::transient(message).with_code(format!("http_{status}"))
            } else {
                IdentityError::permanent(message).with_code(format!("http_{status}"))
            }
        }
        ErrorKind::DataConversion => {
            IdentityError::transient(format!("{message}; the response was not a token (a proxy in the way?)"))
                .with_origin(ErrorOrigin::InvalidToken)
        }
        ErrorKind::Credential if ctx.endpoint == Endpoint::Other => IdentityError::permanent(format!(
            "{message}; on a developer machine install the Azure CLI and run `az login` (or `azd auth login`)"
        ))
        .with_origin(ErrorOrigin::Credential),
        _ => IdentityError::permanent(message).with_origin(ErrorOrigin::Credential),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context<'static> {
        Context {
            endpoint: Endpoint::Entra,
            principal: "client 1111",
        }
    }

    #[test]
    fn wrong_secret_is_permanent_with_code_and_hint() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.\r\nTrace ID: x","error_codes":[7000215]}"#;
        let e = from_status(401, None, body, &ctx());
        assert!(!e.is_transient());
        assert_eq!(e.code(), Some("AADSTS7000215"));
        let text = e.to_string();
        assert!(
            text.contains("client 1111") && text.contains("Invalid client secret") && text.contains("Value"),
            "{text}"
        );
        assert!(!text.contains("Trace ID"), "only the first line: {text}");
        assert!(
            e.hint().is_some_and(|h| h.contains("Value")),
            "the fix on its own: {e:?}"
        );
        assert!(
            !e.message().contains("Value"),
            "the message says what went wrong: {e:?}"
        );
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        let e = from_status(429, Some(Duration::from_secs(9)), b"", &ctx());
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(9)));
        assert_eq!(e.code(), Some("http_429"));
        for status in [408, 500, 502, 503, 504] {
            assert!(from_status(status, None, b"{}", &ctx()).is_transient(), "{status}");
        }
        assert!(!from_status(403, None, b"{}", &ctx()).is_transient());
    }

    #[test]
    fn managed_identity_404_is_transient_and_400_names_the_assignment() {
        let mi = Context {
            endpoint: Endpoint::ManagedIdentity,
            principal: "system-assigned managed identity",
        };
        assert!(from_status(404, None, b"", &mi).is_transient());
        let e = from_status(
            400,
            None,
            br#"{"error":"invalid_request","error_description":"Identity not found"}"#,
            &mi,
        );
        assert!(!e.is_transient());
        assert_eq!(e.code(), Some("invalid_request"));
        assert!(e.to_string().contains("not assigned"), "{e}");
    }

    #[test]
    fn failures_without_an_answer_have_a_typed_origin_and_no_code() {
        use azure_core::error::{Error, ErrorKind};
        let ctx = ctx();
        let cases = [
            (ErrorKind::Io, ErrorOrigin::Network, true),
            (ErrorKind::Connection, ErrorOrigin::Network, true),
            (ErrorKind::DataConversion, ErrorOrigin::InvalidToken, true),
            (ErrorKind::Credential, ErrorOrigin::Credential, false),
        ];
        for (kind, origin, transient) in cases {
            let e = from_sdk_error(&Error::with_message(kind.clone(), "boom"), &ctx);
            assert_eq!(e.origin(), Some(origin), "{kind:?}");
            assert_eq!(e.code(), None, "{kind:?}: the service gave no code");
            assert_eq!(e.is_transient(), transient, "{kind:?}");
        }
        let transport = classify(
            Some(Outcome::Transport {
                message: "connection refused".into(),
            }),
            &Error::with_message(ErrorKind::Io, "x"),
            &ctx,
        );
        assert_eq!(transport.origin(), Some(ErrorOrigin::Network));
        assert!(transport.to_string().contains("(network)"), "{transport}");
        let status = from_status(503, None, b"", &ctx);
        assert_eq!(status.origin(), Some(ErrorOrigin::Service));
        assert_eq!(status.code(), Some("http_503"));
    }

    #[test]
    fn codes_come_from_error_codes_or_the_description() {
        let body = EntraErrorBody::parse(
            br#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found."}"#,
        );
        assert_eq!(body.code().as_deref(), Some("AADSTS90002"));
        let body = EntraErrorBody::parse(b"<html>");
        assert_eq!(body.code(), None);
        assert_eq!(body.description(), "");
    }
}
