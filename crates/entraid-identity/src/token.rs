//! The access token and what Redis needs to know about it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::jwt::{self, TokenParseError};

/// An access token with the username Redis expects beside it.
///
/// Cloning is cheap (the strings are shared), because one token is handed to every
/// connection of a process. `Debug` shows the username and the times, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    secret: Arc<str>,
    username: Arc<str>,
    expires_at: SystemTime,
    received_at: SystemTime,
}

impl Token {
    /// A token from its parts: `secret` is what `AUTH` sends as the password,
    /// `username` the principal's object id (`oid`).
    pub fn new(
        secret: impl Into<String>,
        username: impl Into<String>,
        expires_at: SystemTime,
        received_at: SystemTime,
    ) -> Token {
        Token {
            secret: Arc::from(secret.into()),
            username: Arc::from(username.into()),
            expires_at,
            received_at,
        }
    }

    /// Reads an Entra ID access token (a JWT): the username is its `oid` claim and the
    /// expiry its `exp` claim.
    ///
    /// The signature is not checked: the token comes from the identity service over TLS
    /// and only Redis needs to trust it. When the token endpoint also says how long the
    /// token lives (`expires_in`), prefer [`Token::new`] with that lifetime: it does not
    /// depend on this machine's clock agreeing with Entra's.
    ///
    /// ```
    /// # use entraid_identity::Token;
    /// # use std::time::{Duration, SystemTime, UNIX_EPOCH};
    /// // {"alg":"none"} . {"oid":"3f2a...","exp":2000000000}
    /// let jwt = "eyJhbGciOiJub25lIn0.eyJvaWQiOiIzZjJhLi4uIiwiZXhwIjoyMDAwMDAwMDAwfQ.c2ln";
    /// let token = Token::from_jwt(jwt, UNIX_EPOCH + Duration::from_secs(1_999_996_400))?;
    /// assert_eq!(token.username(), "3f2a...");
    /// assert_eq!(token.lifetime(), Duration::from_secs(3600));
    /// # Ok::<(), entraid_identity::TokenParseError>(())
    /// ```
    pub fn from_jwt(jwt: impl Into<String>, received_at: SystemTime) -> Result<Token, TokenParseError> {
        let jwt = jwt.into();
        let claims = jwt::decode_claims(&jwt)?;
        Ok(Token {
            username: Arc::from(claims.oid),
            expires_at: claims.expires_at,
            received_at,
            secret: Arc::from(jwt),
        })
    }

    /// The secret: what `AUTH` sends as the password. Never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The username Redis expects with this token: the principal's object id.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// When the token stops being accepted.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// When the token arrived from the identity service.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// How long the token lives from its receipt: `expires_at - received_at`, zero if
    /// it arrived already expired.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.received_at)
            .unwrap_or(Duration::ZERO)
    }

    /// The claims of a JWT token (`oid`, `aud`, `tid`, `iss`, `iat`, `exp`…), for
    /// diagnosis: what the issuer says about the token, not the token itself. The
    /// signature is not checked (the server does that); a token that is not a JWT
    /// says why.
    ///
    /// ```
    /// use entraid_identity::Token;
    /// use std::time::UNIX_EPOCH;
    /// let jwt = "eyJhbGciOiJub25lIn0.eyJvaWQiOiJhYmMiLCJleHAiOjIwMDAwMDAwMDAsImF1ZCI6Imh0dHBzOi8vcmVkaXMuYXp1cmUuY29tIn0.c2ln";
    /// let claims = Token::from_jwt(jwt, UNIX_EPOCH)?.claims()?;
    /// assert_eq!(claims["aud"], "https://redis.azure.com");
    /// # Ok::<(), entraid_identity::TokenParseError>(())
    /// ```
    pub fn claims(&self) -> Result<serde_json::Map<String, serde_json::Value>, TokenParseError> {
        jwt::decode_payload(&self.secret)
    }

    /// Whether `other` carries the same secret, i.e. is the same token handed out again.
    pub fn same_secret(&self, other: &Token) -> bool {
        Arc::ptr_eq(&self.secret, &other.secret) || self.secret == other.secret
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"<redacted>")
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .field("received_at", &self.received_at)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let now = SystemTime::now();
        let token = Token::new("s3cr3t-value", "oid-1", now + Duration::from_secs(60), now);
        let shown = format!("{token:?} {token:#?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("oid-1"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn lifetime_is_expiry_minus_receipt_and_never_negative() {
        let now = SystemTime::now();
        let live = Token::new("a", "u", now + Duration::from_secs(90), now);
        assert_eq!(live.lifetime(), Duration::from_secs(90));
        let dead = Token::new("a", "u", now, now + Duration::from_secs(5));
        assert_eq!(dead.lifetime(), Duration::ZERO);
    }

    #[test]
    fn same_secret_compares_the_secret_only() {
        let now = SystemTime::now();
        let a = Token::new("x", "u", now, now);
        let b = Token::new("x", "v", now + Duration::from_secs(1), now);
        let c = Token::new("y", "u", now, now);
        assert!(a.same_secret(&b));
        assert!(!a.same_secret(&c));
        assert!(a.same_secret(&a.clone()));
    }
}
