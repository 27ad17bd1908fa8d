//! One check's outcome and the report they make up: what `doctor` prints and returns.

use serde_json::{Value, json};

use crate::claims::ClaimsSummary;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It worked.
    Passed,
    /// It worked, with something worth knowing (a clock a little off).
    Warning,
    /// It did not work: `cause` and `fix` say why and what to do.
    Failed,
    /// Not run: an earlier check failed, or it was not asked for.
    Skipped,
}

impl Status {
    /// The word scripts see in `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Warning => "warning",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// One step of the diagnosis. Never holds a secret: details are built from claims,
/// variable names and server replies, never from a token or a client secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name: `identity`, `token`, `claims`, `audience`, `clock`, `connect`, `tls`,
    /// `auth`, `ping`.
    pub name: &'static str,
    /// How it ended.
    pub status: Status,
    /// What was seen, in one line.
    pub detail: String,
    /// Why it failed (or the warning), when it did.
    pub cause: Option<String>,
    /// What to do about it.
    pub fix: Option<String>,
}

impl Check {
    pub(crate) fn passed(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Passed,
            detail: detail.into(),
            cause: None,
            fix: None,
        }
    }

    pub(crate) fn failed(
        name: &'static str,
        detail: impl Into<String>,
        cause: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: Status::Failed,
            detail: detail.into(),
            cause: Some(cause.into()),
            fix: Some(fix.into()),
        }
    }

    pub(crate) fn warning(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warning,
            detail: detail.into(),
            cause: None,
            fix: Some(fix.into()),
        }
    }

    pub(crate) fn skipped(name: &'static str, why: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Skipped,
            detail: why.into(),
            cause: None,
            fix: None,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "check": self.name,
            "status": self.status.as_str(),
            "detail": self.detail,
            "cause": self.cause,
            "fix": self.fix,
        })
    }
}

/// Everything `doctor` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
    /// The token's claims that matter, when a token was received.
    pub claims: Option<ClaimsSummary>,
}

impl Report {
    /// True when no check failed (warnings and skipped checks pass): the exit code is 0
    /// only then.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Failed)
    }

    /// The names of the failed checks.
    pub fn failures(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Failed)
            .map(|c| c.name)
            .collect()
    }

    /// The report for `--json`.
    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.passed(),
            "checks": self.checks.iter().map(Check::to_json).collect::<Vec<_>>(),
            "claims": self.claims.as_ref().map(ClaimsSummary::to_json),
        })
    }

    pub(crate) fn push(&mut self, check: Check) -> bool {
        let ok = check.status != Status::Failed;
        self.checks.push(check);
        ok
    }

    /// Marks the checks that could not run because an earlier one failed.
    pub(crate) fn skip(&mut self, names: &[&'static str], why: &str) {
        for name in names {
            self.checks.push(Check::skipped(name, why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_passes_unless_a_check_failed() {
        let mut report = Report::default();
        report.push(Check::passed("token", "ok"));
        report.push(Check::warning("clock", "40 s behind", "sync the clock"));
        report.skip(&["auth"], "no --host");
        assert!(report.passed());
        report.push(Check::failed("ping", "refused", "NOPERM", "grant it"));
        assert!(!report.passed());
        assert_eq!(report.failures(), ["ping"]);
        let json = report.to_json();
        assert_eq!(json["ok"], false);
        assert_eq!(json["checks"][1]["status"], "warning");
        assert_eq!(json["checks"][3]["fix"], "grant it");
    }
}
