//! `entraid token`: one token from the identity the environment selects, shown as its
//! claims; the token itself only when asked for by name.

use serde_json::{Value, json};

use crate::checks::{Report, Status};
use crate::claims::ClaimsSummary;
use crate::doctor::{DoctorOptions, identity_and_token};

/// What `entraid token` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// The claims that matter (oid, aud, tid, iss, iat, exp, lifetime, clock).
    Summary,
    /// Every claim in the token's payload.
    AllClaims,
    /// The token itself, for a tool that needs it (with a warning on stderr).
    Token,
}

/// The outcome: either what to print, or the failed checks.
#[derive(Debug)]
pub enum TokenOutcome {
    /// Text for stdout (never a secret unless [`Show::Token`] was asked for).
    Printed(String),
    /// No token: the report says why.
    Failed(Report),
}

/// Gets one token and renders it as `show` asks, as text or JSON.
pub async fn run(options: &DoctorOptions, show: Show, json_output: bool) -> TokenOutcome {
    let mut report = Report::default();
    let selection = entraid_azure::EnvSelection::from_env();
    let Some(token) = identity_and_token(&mut report, &selection, options).await else {
        report.checks.retain(|c| c.status != Status::Skipped);
        return TokenOutcome::Failed(report);
    };
    if show == Show::Token {
        return TokenOutcome::Printed(format!("{}\n", token.secret()));
    }
    let summary = match ClaimsSummary::of(&token) {
        Ok(summary) => summary,
        Err(problem) => {
            report.push(crate::Check::failed(
                "claims",
                "the token is not a JWT",
                problem,
                "Entra ID tokens are JWTs: check AZURE_AUTHORITY_HOST points at Entra ID",
            ));
            return TokenOutcome::Failed(report);
        }
    };
    let all_claims = || Value::Object(token.claims().unwrap_or_default());
    let text = match (show, json_output) {
        (Show::AllClaims, true) => format!("{:#}\n", all_claims()),
        (Show::AllClaims, false) => {
            let mut out = String::new();
            if let Value::Object(claims) = all_claims() {
                let width = claims.keys().map(String::len).max().unwrap_or(0);
                for (name, value) in claims {
                    let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
                    out.push_str(&format!("{name:<width$}  {value}\n"));
                }
            }
            out
        }
        (_, true) => format!("{:#}\n", json!({ "claims": summary.to_json() })),
        (_, false) => summary
            .rows()
            .into_iter()
            .map(|(name, value)| format!("{name:<8}  {value}\n"))
            .collect(),
    };
    TokenOutcome::Printed(text)
}
