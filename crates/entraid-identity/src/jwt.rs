//! Reading the two claims Redis needs (`oid`, `exp`) out of a JWT's payload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// JWTs use unpadded base64url; some issuers pad anyway, so accept both.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a string could not be read as an Entra ID access token.
///
/// No variant carries any part of the token, so the error is safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenParseError {
    /// A JWT is `header.payload.signature`.
    #[error(
        "not a JWT: expected 3 dot-separated parts (header.payload.signature), found {found}; \
         pass the access token itself, not an id token, a refresh token or a JSON response"
    )]
    NotThreeParts {
        /// How many parts the string had.
        found: usize,
    },
    /// The payload is not base64url.
    #[error("the JWT payload is not valid base64url: {reason}; the token was truncated or altered")]
    Base64 {
        /// What the decoder said.
        reason: String,
    },
    /// The payload decoded, but is not a JSON object.
    #[error("the JWT payload is not a JSON object: {reason}")]
    NotJson {
        /// What the JSON parser said.
        reason: String,
    },
    /// There is no `oid` claim, so the username Redis expects is unknown.
    #[error(
        "the token has no `oid` claim, so the Redis username is unknown; request the token \
         for the scope https://redis.azure.com/.default with an identity that has an object id"
    )]
    MissingOid,
    /// The `oid` claim is not a non-empty string.
    #[error("the token's `oid` claim is not a non-empty string")]
    InvalidOid,
    /// There is no `exp` claim, so the expiry is unknown.
    #[error("the token has no `exp` claim, so its expiry is unknown")]
    MissingExp,
    /// The `exp` claim is not a number of seconds since 1970 that this machine can represent.
    #[error("the token's `exp` claim is not a valid time (seconds since 1970): {reason}")]
    InvalidExp {
        /// What is wrong with it.
        reason: String,
    },
}

/// The claims of an access token that this workspace uses.
pub(crate) struct Claims {
    pub(crate) oid: String,
    pub(crate) expires_at: SystemTime,
}

/// The payload of a JWT as a JSON object, for diagnosis (`aud`, `tid`, `iat`…). The
/// signature is not checked: the server does that.
pub(crate) fn decode_payload(jwt: &str) -> Result<serde_json::Map<String, serde_json::Value>, TokenParseError> {
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    let [_, payload, _] = parts.as_slice() else {
        return Err(TokenParseError::NotThreeParts { found: parts.len() });
    };
    let bytes = BASE64URL
        .decode(payload)
        .map_err(|e| TokenParseError::Base64 { reason: e.to_string() })?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| TokenParseError::NotJson { reason: e.to_string() })?;
    match value {
        serde_json::Value::Object(object) => Ok(object),
        other => Err(TokenParseError::NotJson {
            reason: format!("found a JSON {}", json_kind(&other)),
        }),
    }
}

pub(crate) fn decode_claims(jwt: &str) -> Result<Claims, TokenParseError> {
    let object = decode_payload(jwt)?;
    let oid = match object.get("oid") {
        None => return Err(TokenParseError::MissingOid),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(_) => return Err(TokenParseError::InvalidOid),
    };
    let exp = object.get("exp").ok_or(TokenParseError::MissingExp)?;
    let expires_at = exp_to_time(exp)?;
    Ok(Claims { oid, expires_at })
}

fn exp_to_time(exp: &serde_json::Value) -> Result<SystemTime, TokenParseError> {
    let invalid = |reason: &str| TokenParseError::InvalidExp {
        reason: reason.to_owned(),
    };
    let seconds = match exp {
        serde_json::Value::Number(n) => {
            if let Some(s) = n.as_u64() {
                Duration::from_secs(s)
            } else if let Some(f) = n.as_f64() {
                Duration::try_from_secs_f64(f).map_err(|_| invalid("negative or out of range"))?
            } else {
                return Err(invalid("not a number"));
            }
        }
        other => return Err(invalid(&format!("found a JSON {}", json_kind(other)))),
    };
    UNIX_EPOCH
        .checked_add(seconds)
        .ok_or_else(|| invalid("too far in the future"))
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Token;

    fn jwt_with(payload: &str) -> String {
        format!(
            "{}.{}.{}",
            BASE64URL.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            BASE64URL.encode(payload),
            BASE64URL.encode("signature")
        )
    }

    #[test]
    fn reads_oid_and_exp() {
        let jwt = jwt_with(r#"{"oid":"0000-1111","exp":1700003600,"aud":"https://redis.azure.com"}"#);
        let received = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = Token::from_jwt(jwt.clone(), received).unwrap();
        assert_eq!(token.username(), "0000-1111");
        assert_eq!(token.secret(), jwt);
        assert_eq!(token.expires_at(), UNIX_EPOCH + Duration::from_secs(1_700_003_600));
        assert_eq!(token.lifetime(), Duration::from_secs(3600));
    }

    #[test]
    fn accepts_padded_payload_and_fractional_exp() {
        let payload = base64::engine::general_purpose::URL_SAFE.encode(r#"{"oid":"o","exp":10.5}"#);
        let jwt = format!("h.{payload}.s");
        let token = Token::from_jwt(jwt, UNIX_EPOCH).unwrap();
        assert_eq!(token.expires_at(), UNIX_EPOCH + Duration::from_millis(10_500));
    }

    #[test]
    fn rejects_each_malformation_with_its_own_error() {
        let cases: Vec<(String, TokenParseError)> = vec![
            ("abc".into(), TokenParseError::NotThreeParts { found: 1 }),
            ("a.b.c.d".into(), TokenParseError::NotThreeParts { found: 4 }),
            ("".into(), TokenParseError::NotThreeParts { found: 1 }),
            (jwt_with(r#"{"exp":1}"#), TokenParseError::MissingOid),
            (jwt_with(r#"{"oid":"","exp":1}"#), TokenParseError::InvalidOid),
            (jwt_with(r#"{"oid":7,"exp":1}"#), TokenParseError::InvalidOid),
            (jwt_with(r#"{"oid":"o"}"#), TokenParseError::MissingExp),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Token::from_jwt(input.clone(), UNIX_EPOCH).unwrap_err(),
                expected,
                "{input}"
            );
        }
        let bad_b64 = Token::from_jwt("h.!!!.s", UNIX_EPOCH).unwrap_err();
        assert!(matches!(bad_b64, TokenParseError::Base64 { .. }), "{bad_b64:?}");
        let not_json = Token::from_jwt(format!("h.{}.s", BASE64URL.encode("nope")), UNIX_EPOCH).unwrap_err();
        assert!(matches!(not_json, TokenParseError::NotJson { .. }), "{not_json:?}");
        let array = Token::from_jwt(jwt_with("[1,2]"), UNIX_EPOCH).unwrap_err();
        assert!(array.to_string().contains("array"), "{array}");
        for exp in [r#""soon""#, "-5", "null", "1e400"] {
            let err = Token::from_jwt(jwt_with(&format!(r#"{{"oid":"o","exp":{exp}}}"#)), UNIX_EPOCH);
            assert!(
                matches!(
                    err,
                    Err(TokenParseError::InvalidExp { .. }) | Err(TokenParseError::NotJson { .. })
                ),
                "exp {exp}: {err:?}"
            );
        }
    }

    #[test]
    fn errors_never_echo_the_token() {
        let secretish = "h.c2VjcmV0LXBheWxvYWQ.s"; // payload "secret-payload", not JSON
        let err = Token::from_jwt(secretish, UNIX_EPOCH).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("c2VjcmV0LXBheWxvYWQ") && !shown.contains("secret-payload"),
            "{shown}"
        );
    }
}
