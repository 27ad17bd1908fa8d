//! The claims of a token that explain authentication failures, and what they say about
//! the audience and this machine's clock.

use std::time::Duration;

use entraid_identity::Token;
use serde_json::{Map, Value, json};

use crate::checks::Check;
use crate::time_text::{duration, offset, unix_seconds, utc};

/// The audiences Azure Managed Redis and Azure Cache for Redis accept: the resource URI
/// (scope `https://redis.azure.com/.default`) and the resource's application id.
pub(crate) const REDIS_AUDIENCES: &[&str] = &[
    "https://redis.azure.com",
    "https://redis.azure.com/",
    "acca5fbb-b7e4-4009-81f1-37e38fd66d78",
];

/// Below this offset between this machine's clock and the token service's, all is well.
const CLOCK_WARNING: i64 = 60;
/// From this offset on, tokens look expired or not yet valid to one side: Entra ID
/// itself allows five minutes.
const CLOCK_FAILURE: i64 = 300;

/// What a token says about itself; never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsSummary {
    /// Object id: the Redis username.
    pub oid: String,
    /// Audience(s).
    pub aud: Vec<String>,
    /// Tenant id.
    pub tid: Option<String>,
    /// Issuer.
    pub iss: Option<String>,
    /// The client the token was issued to (`appid`, or `azp` in v2 tokens).
    pub client_id: Option<String>,
    /// Issued at (seconds since 1970).
    pub iat: Option<i64>,
    /// Expires (seconds since 1970).
    pub exp: Option<i64>,
    /// How long the token lives from its receipt.
    pub lifetime: Duration,
    /// This machine's clock minus the token service's, in seconds (positive: this
    /// machine is ahead), measured from the token's `exp` against its `expires_in`, and
    /// from an `iat` later than the token's receipt.
    pub clock_offset: i64,
    /// When the token was received (seconds since 1970).
    pub received_at: i64,
}

impl ClaimsSummary {
    /// Reads the claims of `token`.
    pub fn of(token: &Token) -> Result<ClaimsSummary, String> {
        let claims = token
            .claims()
            .map_err(|e| format!("the token's claims cannot be read: {e}"))?;
        let received_at = unix_seconds(token.received_at());
        let local_expiry = unix_seconds(token.expires_at());
        let iat = number(&claims, "iat");
        let exp = number(&claims, "exp");
        // exp is the service's clock; local_expiry is ours plus expires_in.
        let by_expiry = exp.map_or(0, |exp| local_expiry.saturating_sub(exp));
        // An iat after we received the token means our clock is behind by at least that.
        let by_issue = iat.map_or(0, |iat| received_at.saturating_sub(iat).min(0));
        let clock_offset = if by_issue.abs() > by_expiry.abs() {
            by_issue
        } else {
            by_expiry
        };
        Ok(ClaimsSummary {
            oid: token.username().to_owned(),
            aud: match claims.get("aud") {
                Some(Value::String(aud)) => vec![aud.clone()],
                Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                _ => Vec::new(),
            },
            tid: text(&claims, "tid"),
            iss: text(&claims, "iss"),
            client_id: text(&claims, "appid").or_else(|| text(&claims, "azp")),
            iat,
            exp,
            lifetime: token.lifetime(),
            clock_offset,
            received_at,
        })
    }

    /// One line for the `claims` check.
    pub(crate) fn line(&self) -> String {
        let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_owned());
        format!(
            "oid {}, tid {}, client {}, iss {}, lifetime {}",
            self.oid,
            or_none(&self.tid),
            or_none(&self.client_id),
            or_none(&self.iss),
            duration(self.lifetime)
        )
    }

    /// `name  value` rows for `entraid token`.
    pub(crate) fn rows(&self) -> Vec<(&'static str, String)> {
        let time = |t: Option<i64>| match t {
            Some(t) => format!(
                "{} ({})",
                utc(t),
                offset(t - self.received_at, "after receipt", "before receipt", "at receipt")
            ),
            None => "(none)".to_owned(),
        };
        vec![
            ("oid", self.oid.clone()),
            ("aud", self.aud.join(", ")),
            ("tid", self.tid.clone().unwrap_or_default()),
            ("iss", self.iss.clone().unwrap_or_default()),
            ("client", self.client_id.clone().unwrap_or_default()),
            ("iat", time(self.iat)),
            ("exp", time(self.exp)),
            ("lifetime", duration(self.lifetime)),
            ("clock", self.clock_text()),
        ]
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "oid": self.oid,
            "aud": self.aud,
            "tid": self.tid,
            "iss": self.iss,
            "client_id": self.client_id,
            "iat": self.iat,
            "exp": self.exp,
            "lifetime_seconds": self.lifetime.as_secs(),
            "clock_offset_seconds": self.clock_offset,
        })
    }

    fn clock_text(&self) -> String {
        offset(
            self.clock_offset,
            "ahead of the token service",
            "behind the token service",
            "in step with the token service (within 1s)",
        )
    }

    /// The `audience` check: Redis accepts only its own audience.
    pub(crate) fn audience_check(&self) -> Check {
        match self.aud.iter().find(|a| REDIS_AUDIENCES.contains(&a.as_str())) {
            Some(aud) => Check::passed("audience", format!("{aud} is Azure Redis's")),
            None => Check::failed(
                "audience",
                format!("aud is {:?}", self.aud.join(", ")),
                "the token is for another resource, so the cache will refuse it",
                "request the scope https://redis.azure.com/.default (the default of this library; \
                 check any scopes you set with with_scopes)",
            ),
        }
    }

    /// The `clock` check: a clock minutes off makes tokens look expired or not yet valid.
    pub(crate) fn clock_check(&self) -> Check {
        let detail = self.clock_text();
        let fix = "synchronise this machine's clock (NTP: timedatectl set-ntp true, or chrony); \
                   on a VM, check the host's time sync";
        match self.clock_offset.abs() {
            o if o < CLOCK_WARNING => Check::passed("clock", format!("this machine's clock is {detail}")),
            o if o < CLOCK_FAILURE => Check::warning("clock", format!("this machine's clock is {detail}"), fix),
            _ => Check::failed(
                "clock",
                format!("this machine's clock is {detail}"),
                "a clock off by minutes makes tokens look expired (or not yet valid) and refreshes late",
                fix,
            ),
        }
    }
}

fn text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn number(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    claims
        .get(name)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::checks::Status;

    const RECEIVED: u64 = 1_800_000_000;

    fn jwt(payload: Value) -> String {
        use std::fmt::Write as _;
        let bytes = payload.to_string().into_bytes();
        // base64url without padding, written out here to keep the test free of crates.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = write!(out, "{}", ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        format!("eyJhbGciOiJSUzI1NiJ9.{out}.c2lnbmF0dXJl")
    }

    /// A token received at RECEIVED with `expires_in` 3600 s, whose issuer's clock
    /// reads RECEIVED + `service_ahead`.
    fn token(aud: Value, service_ahead: i64) -> Token {
        let now = RECEIVED as i64 + service_ahead;
        let secret = jwt(json!({"oid": "object-1", "aud": aud, "tid": "tenant-1", "iat": now, "exp": now + 3600}));
        let received = UNIX_EPOCH + Duration::from_secs(RECEIVED);
        let parsed = Token::from_jwt(secret, received).unwrap();
        Token::new(
            parsed.secret(),
            parsed.username(),
            received + Duration::from_secs(3600),
            received,
        )
    }

    #[test]
    fn redis_audiences_pass_and_others_fail_with_the_scope_to_use() {
        for aud in REDIS_AUDIENCES {
            let summary = ClaimsSummary::of(&token(json!(aud), 0)).unwrap();
            assert_eq!(summary.audience_check().status, Status::Passed, "{aud}");
        }
        let graph = ClaimsSummary::of(&token(json!(["https://graph.microsoft.com"]), 0)).unwrap();
        let check = graph.audience_check();
        assert_eq!(check.status, Status::Failed);
        assert!(check.fix.unwrap().contains("https://redis.azure.com/.default"));
    }

    #[test]
    fn the_clock_offset_is_measured_both_ways_and_judged() {
        let cases = [
            (0, 0, Status::Passed),
            (-90, 90, Status::Warning),
            (600, -600, Status::Failed),
            (-301, 301, Status::Failed),
        ];
        for (service_ahead, expected_offset, status) in cases {
            let summary = ClaimsSummary::of(&token(json!("https://redis.azure.com"), service_ahead)).unwrap();
            assert_eq!(
                summary.clock_offset, expected_offset,
                "service ahead by {service_ahead}"
            );
            let check = summary.clock_check();
            assert_eq!(check.status, status, "{check:?}");
        }
        let behind = ClaimsSummary::of(&token(json!("https://redis.azure.com"), 600)).unwrap();
        assert!(
            behind.clock_check().detail.contains("10m 0s behind"),
            "{:?}",
            behind.clock_check()
        );
    }

    #[test]
    fn the_summary_never_holds_the_token() {
        let token = token(json!("https://redis.azure.com"), 0);
        let summary = ClaimsSummary::of(&token).unwrap();
        let shown = format!(
            "{summary:?} {} {:?} {}",
            summary.line(),
            summary.rows(),
            summary.to_json()
        );
        assert!(!shown.contains(token.secret()));
        assert!(!shown.contains("c2lnbmF0dXJl"), "not even the signature");
        assert!(shown.contains("object-1") && shown.contains("tenant-1"));
    }
}
