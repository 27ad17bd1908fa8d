//! `entraid doctor`: every step from the environment to a `PONG`, each failure with its
//! cause and fix.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use entraid_azure::{AzureIdentityProvider, EnvIdentityKind, EnvSelection};
use entraid_identity::{ErrorOrigin, IdentityError, IdentityProvider, Token};

use crate::checks::{Check, Report};
use crate::claims::ClaimsSummary;
use crate::probe::{Target, probe};
use crate::time_text::duration;

/// What to check.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// The cache's host; without it only the identity side is checked.
    pub host: Option<String>,
    /// The cache's port.
    pub port: u16,
    /// Speak plain TCP instead of TLS.
    pub no_tls: bool,
    /// A CA file (PEM) to trust besides the platform's, for the cache and the identity
    /// endpoints.
    pub ca_file: Option<PathBuf>,
    /// The Redis username; default: the token's `oid`.
    pub username: Option<String>,
    /// How long each step may take.
    pub timeout: Duration,
}

/// Runs every check against the identity the process environment selects.
pub async fn run(options: &DoctorOptions) -> Report {
    let mut report = Report::default();
    let selection = EnvSelection::from_env();
    let Some(token) = identity_and_token(&mut report, &selection, options).await else {
        return report;
    };
    let claims = match ClaimsSummary::of(&token) {
        Ok(claims) => claims,
        Err(problem) => {
            report.push(Check::failed(
                "claims",
                "the token is not a JWT",
                problem,
                "Entra ID tokens are JWTs: check AZURE_AUTHORITY_HOST points at Entra ID",
            ));
            return report;
        }
    };
    report.push(Check::passed("claims", claims.line()));
    report.push(claims.audience_check());
    report.push(claims.clock_check());
    report.claims = Some(claims);

    let Some(host) = options.host.clone() else {
        report.skip(
            &["connect", "tls", "auth", "ping"],
            "no cache given: pass --host (or set REDIS_HOST) to check the connection too",
        );
        return report;
    };
    let ca_pem = match read_ca(options) {
        Ok(pem) => pem,
        Err(check) => {
            report.push(check);
            return report;
        }
    };
    let target = Target {
        host,
        port: options.port,
        tls: !options.no_tls,
        ca_pem,
        timeout: options.timeout,
    };
    let username = options.username.clone().unwrap_or_else(|| token.username().to_owned());
    probe(&mut report, &target, &username, token.secret()).await;
    report
}

/// The `identity` and `token` checks; the token when both passed.
pub(crate) async fn identity_and_token(
    report: &mut Report,
    selection: &EnvSelection,
    options: &DoctorOptions,
) -> Option<Token> {
    const LATER: [&str; 7] = ["claims", "audience", "clock", "connect", "tls", "auth", "ping"];
    let variables = if selection.variables_set.is_empty() {
        "no identity variables set".to_owned()
    } else {
        format!("set: {}", selection.variables_set.join(", "))
    };
    let provider = AzureIdentityProvider::from_env().and_then(|provider| match &options.ca_file {
        Some(path) => {
            let pem = std::fs::read_to_string(path).map_err(|e| entraid_azure::AzureConfigError::UnreadableFile {
                what: "CA file (--ca-file)",
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            provider.with_root_certificate_pem(&pem)
        }
        None => Ok(provider),
    });
    let provider = match provider {
        Ok(provider) => provider,
        Err(e) => {
            report.push(Check::failed(
                "identity",
                format!("{} ({variables})", selection.kind.describe()),
                e.to_string(),
                "set the variables the error names, or unset the ones that select this identity",
            ));
            report.skip(&["token"], "needs an identity");
            report.skip(&LATER, "needs a token");
            return None;
        }
    };
    report.push(Check::passed(
        "identity",
        format!("{}: {} ({variables})", selection.kind.describe(), selection.reason),
    ));

    let started = Instant::now();
    let result = tokio::time::timeout(options.timeout, provider.request_token()).await;
    let check = match &result {
        Ok(Ok(token)) => Check::passed(
            "token",
            format!(
                "for object id {}, lives {}, received in {}",
                token.username(),
                duration(token.lifetime()),
                duration(started.elapsed())
            ),
        ),
        Ok(Err(error)) => token_failure(error, selection.kind),
        Err(_) => Check::failed(
            "token",
            format!("no answer within {}", duration(options.timeout)),
            format!("the identity endpoint ({}) did not answer", endpoint(selection.kind)),
            format!(
                "check that {} is reachable from here (DNS, proxy, firewall); {}",
                endpoint(selection.kind),
                if is_managed(selection.kind) {
                    "managed identity only works on an Azure host"
                } else {
                    "Entra ID may be having an outage: the library retries until it answers"
                }
            ),
        ),
    };
    report.push(check);
    match result {
        Ok(Ok(token)) => Some(token),
        _ => {
            report.skip(&LATER, "needs a token");
            None
        }
    }
}

fn is_managed(kind: EnvIdentityKind) -> bool {
    matches!(
        kind,
        EnvIdentityKind::SystemAssignedManagedIdentity | EnvIdentityKind::UserAssignedManagedIdentity
    )
}

fn endpoint(kind: EnvIdentityKind) -> &'static str {
    if is_managed(kind) {
        "the managed identity endpoint (IDENTITY_ENDPOINT, or IMDS at 169.254.169.254)"
    } else {
        "Entra ID (AZURE_AUTHORITY_HOST, default https://login.microsoftonline.com)"
    }
}

/// An identity error as cause and fix: the provider's hint when it has one.
fn token_failure(error: &IdentityError, kind: EnvIdentityKind) -> Check {
    // The service's code when it answered, else where the failure came from, in words.
    let label = match (error.code(), error.origin()) {
        (Some(code), _) => format!(" [{code}]"),
        (None, Some(origin)) if origin != ErrorOrigin::Service => format!(" ({origin})"),
        _ => String::new(),
    };
    let fix = match (error.hint(), error.origin(), error.code()) {
        (Some(hint), _, _) => hint.to_owned(),
        (None, _, Some("http_400")) if is_managed(kind) => {
            "the managed identity is not assigned to this resource, or the id is wrong: assign it, or set \
             AZURE_CLIENT_ID to the right client id"
                .to_owned()
        }
        (None, Some(ErrorOrigin::Network), _) => format!(
            "check that {} is reachable from here (DNS, proxy, firewall)",
            endpoint(kind)
        ),
        (None, Some(ErrorOrigin::InvalidToken), _) => format!(
            "check that {} is the real one and that no proxy rewrites its responses",
            endpoint(kind)
        ),
        _ if error.is_transient() => {
            "a transient failure: run again; if it persists, check the network path to the identity endpoint".to_owned()
        }
        _ => "check the identity's configuration (client id, tenant id, secret or certificate)".to_owned(),
    };
    let kind_word = if error.is_transient() { "transient" } else { "permanent" };
    Check::failed(
        "token",
        format!("{kind_word} failure{label}"),
        error.message().to_owned(),
        fix,
    )
}

fn read_ca(options: &DoctorOptions) -> Result<Option<Vec<u8>>, Check> {
    let Some(path) = &options.ca_file else {
        return Ok(None);
    };
    std::fs::read(path).map(Some).map_err(|e| {
        Check::failed(
            "tls",
            format!("cannot read {}: {e}", path.display()),
            "the CA file given with --ca-file is not readable",
            "give the path of a PEM file",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_failure_shows_the_service_code_or_the_origin_in_words() {
        let kind = EnvIdentityKind::SystemAssignedManagedIdentity;
        let service = token_failure(&IdentityError::permanent("HTTP 400").with_code("http_400"), kind);
        assert_eq!(service.detail, "permanent failure [http_400]");
        assert!(
            service.fix.as_deref().is_some_and(|f| f.contains("not assigned")),
            "{service:?}"
        );

        let network = token_failure(
            &IdentityError::transient("connection refused").with_origin(ErrorOrigin::Network),
            kind,
        );
        assert_eq!(network.detail, "transient failure (network)");
        assert!(
            network.fix.as_deref().is_some_and(|f| f.contains("reachable")),
            "{network:?}"
        );

        let hinted = token_failure(
            &IdentityError::permanent("no oid")
                .with_origin(ErrorOrigin::InvalidToken)
                .with_hint("request the Redis scope"),
            kind,
        );
        assert_eq!(hinted.detail, "permanent failure (unusable token)");
        assert_eq!(hinted.fix.as_deref(), Some("request the Redis scope"));

        let plain = token_failure(&IdentityError::transient("x"), kind);
        assert_eq!(plain.detail, "transient failure");
    }
}
