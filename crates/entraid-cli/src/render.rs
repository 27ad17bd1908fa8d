//! The report as a person reads it in a terminal: one line per check, the cause and fix
//! under each failure, a verdict at the end. Plain ASCII, no colours: it is pasted into
//! tickets.

use crate::checks::{Report, Status};

impl Report {
    /// The human-readable report, titled with the command that made it
    /// (`entraid doctor`).
    pub fn to_text(&self, command: &str) -> String {
        let mut out = format!("{command}\n\n");
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for check in &self.checks {
            let mark = match check.status {
                Status::Passed => "ok  ",
                Status::Warning => "warn",
                Status::Failed => "FAIL",
                Status::Skipped => "skip",
            };
            out.push_str(&format!("  {mark}  {:<width$}  {}\n", check.name, check.detail));
            let indent = " ".repeat(width + 10);
            if let Some(cause) = &check.cause {
                out.push_str(&format!("{indent}cause: {cause}\n"));
            }
            if let Some(fix) = &check.fix {
                out.push_str(&format!("{indent}fix:   {fix}\n"));
            }
        }
        out.push('\n');
        let failures = self.failures();
        let ran = self.checks.iter().filter(|c| c.status != Status::Skipped).count();
        if failures.is_empty() {
            out.push_str(&format!("All {ran} checks that ran passed.\n"));
        } else {
            let plural = if failures.len() == 1 { "" } else { "s" };
            out.push_str(&format!(
                "{} check{plural} failed: {}. Apply the fix above and run {command} again.\n",
                failures.len(),
                failures.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::checks::{Check, Report};

    #[test]
    fn failures_show_cause_and_fix_under_their_line() {
        let mut report = Report::default();
        report.push(Check::passed("identity", "service principal"));
        report.push(Check::failed(
            "token",
            "permanent failure",
            "wrong secret",
            "use the Value",
        ));
        report.skip(&["auth"], "needs a token");
        let text = report.to_text("entraid doctor");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "  ok    identity  service principal");
        assert_eq!(lines[3], "  FAIL  token     permanent failure");
        assert_eq!(lines[4].trim(), "cause: wrong secret");
        assert_eq!(lines[5].trim(), "fix:   use the Value");
        assert_eq!(lines[6], "  skip  auth      needs a token");
        assert!(text.ends_with("1 check failed: token. Apply the fix above and run entraid doctor again.\n"));
    }
}
