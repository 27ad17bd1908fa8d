//! JWT-shaped tokens: real base64url JSON claims, a dummy signature.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use entraid_identity::Token;

/// An unsigned JWT with claims `oid`, `exp` (seconds since 1970), `aud` and a `jti` that
/// makes each one unique.
pub fn jwt(oid: &str, exp: SystemTime, jti: u64) -> String {
    let exp = exp.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let claims = serde_json::json!({
        "aud": "https://redis.azure.com",
        "oid": oid,
        "exp": exp,
        "jti": jti,
    });
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(format!("test-signature-{jti}")),
    )
}

/// A token whose secret is a unique JWT for `oid`, received now and living `lifetime`.
pub fn token_with_lifetime(oid: &str, lifetime: Duration, jti: u64) -> Token {
    let received = SystemTime::now();
    let expires = received + lifetime;
    Token::new(jwt(oid, expires, jti), oid, expires, received)
}
