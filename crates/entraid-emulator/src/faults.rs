//! Fault injection for the token service, driven over the admin endpoint.

use std::sync::Mutex;
use std::time::Duration;

/// What the next requests should suffer.
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    /// Fail this many of the next token requests.
    pub(crate) fail_next: u32,
    /// With this HTTP status (default 500).
    pub(crate) status: u16,
    /// With this `Retry-After` (seconds), if any.
    pub(crate) retry_after: Option<u64>,
    /// With this AADSTS code in the body (for 400/401), if any.
    pub(crate) aadsts: Option<u64>,
    /// Delay every answer by this much.
    pub(crate) latency: Duration,
    /// Accept connections but never answer.
    pub(crate) stop_answering: bool,
    /// Refuse this many of the gateway's next re-authentications (an `AUTH` on a
    /// connection that is already authenticated), as if the token were bad: the server
    /// answers `WRONGPASS` and the connection's deadline does not move.
    pub(crate) fail_reauth: u32,
}

/// What the next request should do, taken from the fault state.
pub(crate) enum Planned {
    Serve,
    Fail {
        status: u16,
        retry_after: Option<u64>,
        aadsts: Option<u64>,
    },
    Hang,
}

#[derive(Debug, Default)]
pub(crate) struct FaultState(Mutex<Faults>);

impl FaultState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn plan(&self) -> (Duration, Planned) {
        let mut f = self.lock();
        if f.stop_answering {
            return (f.latency, Planned::Hang);
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
            let status = if f.status == 0 { 500 } else { f.status };
            return (
                f.latency,
                Planned::Fail {
                    status,
                    retry_after: f.retry_after,
                    aadsts: f.aadsts,
                },
            );
        }
        (f.latency, Planned::Serve)
    }

    /// Whether the gateway must refuse this re-authentication (and counts it).
    pub(crate) fn take_reauth_failure(&self) -> bool {
        let mut f = self.lock();
        let fail = f.fail_reauth > 0;
        f.fail_reauth = f.fail_reauth.saturating_sub(1);
        fail
    }

    /// Applies an admin request body: any of `fail_next`, `status`, `retry_after`,
    /// `aadsts`, `latency_ms`, `stop_answering`, `fail_reauth`; `{"reset": true}` clears everything.
    pub(crate) fn apply(&self, body: &serde_json::Value) -> Result<Faults, String> {
        let mut f = self.lock();
        if body.get("reset").and_then(serde_json::Value::as_bool) == Some(true) {
            *f = Faults::default();
        }
        let number = |k: &str| body.get(k).and_then(serde_json::Value::as_u64);
        if let Some(n) = number("fail_next") {
            f.fail_next = u32::try_from(n).map_err(|_| "fail_next is too large".to_owned())?;
        }
        if let Some(n) = number("fail_reauth") {
            f.fail_reauth = u32::try_from(n).map_err(|_| "fail_reauth is too large".to_owned())?;
        }
        if let Some(s) = number("status") {
            if !(400..=599).contains(&s) {
                return Err(format!("status {s} is not an HTTP error status (400-599)"));
            }
            f.status = s as u16;
        }
        if body.get("retry_after").is_some() {
            f.retry_after = number("retry_after");
        }
        if body.get("aadsts").is_some() {
            f.aadsts = number("aadsts");
        }
        if let Some(ms) = number("latency_ms") {
            f.latency = Duration::from_millis(ms);
        }
        if let Some(stop) = body.get("stop_answering").and_then(serde_json::Value::as_bool) {
            f.stop_answering = stop;
        }
        Ok(f.clone())
    }
}
