//! The access tokens for Redis: what the token service hands out ([`IssuedToken`]) and
//! the gateway's check of a token presented with `AUTH` ([`validate`]).

use serde_json::Value;

use crate::jwt::{JwtError, SigningKey, now_secs};
use crate::principals::Principals;

/// The audience of every token the token service issues and the gateway accepts.
pub(crate) const AUDIENCE: &str = "https://redis.azure.com";

/// The emulator's own principal, for checking a cluster through its gateways before
/// `READY`: no client can get a token for it (the token endpoints issue tokens only to
/// the principals they know), and the gateway lets it in whatever the access policies say.
pub(crate) const READINESS_OID: &str = "entraid-emulator-readiness-check";

/// A token just signed by the token service. Its `Debug` leaves the token out.
pub(crate) struct IssuedToken {
    /// The JWT.
    pub(crate) token: String,
    /// Its lifetime in seconds: the `expires_in` to announce.
    pub(crate) lifetime: u64,
    /// Its `exp` claim (seconds since 1970).
    pub(crate) exp: u64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("lifetime", &self.lifetime)
            .field("exp", &self.exp)
            .finish_non_exhaustive()
    }
}

/// Why the gateway refused a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessTokenError {
    /// Not a JWT signed by the token service.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("wrong audience")]
    WrongAudience,
    #[error("the username is not the token's oid")]
    NotTheOid,
    #[error("no data access policy assignment for this object id")]
    NoAccessPolicy,
    #[error("no exp")]
    NoExpiry,
    #[error("the token has expired")]
    Expired,
}

/// Checks a token presented to the gateway: the token service's signature, not expired,
/// for Redis, issued to `username`, and `username` allowed in by a data access policy.
/// Returns its expiry (seconds since 1970).
pub(crate) fn validate(
    signer: &SigningKey,
    principals: &Principals,
    username: &str,
    token: &str,
) -> Result<u64, AccessTokenError> {
    let claims = signer.verify(token)?;
    if claims.get("aud").and_then(Value::as_str) != Some(AUDIENCE) {
        return Err(AccessTokenError::WrongAudience);
    }
    if claims.get("oid").and_then(Value::as_str) != Some(username) {
        return Err(AccessTokenError::NotTheOid);
    }
    if username != READINESS_OID && !principals.has_redis_access(username) {
        return Err(AccessTokenError::NoAccessPolicy);
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(AccessTokenError::NoExpiry)?;
    if exp <= now_secs() {
        return Err(AccessTokenError::Expired);
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::token_service::tests::{jwt_like, service};

    #[test]
    fn its_own_tokens_validate_and_tampered_ones_do_not() {
        let service = service();
        let principal = &service.principals.service_principals[0];
        let check = |user: &str, token: &str| validate(&service.signer, &service.principals, user, token);
        let issued = service.issue(&principal.object_id, &principal.client_id).unwrap();
        assert_eq!(check(&principal.object_id, &issued.token).unwrap(), issued.exp);
        assert!(matches!(
            check("someone else", &issued.token),
            Err(AccessTokenError::NotTheOid)
        ));
        let (rest, signature) = issued.token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{rest}.{flipped}{}", &signature[1..]);
        assert!(matches!(
            check(&principal.object_id, &tampered),
            Err(AccessTokenError::Jwt(JwtError::BadSignature))
        ));
        assert!(
            !format!("{issued:?}").contains(&issued.token),
            "Debug leaves the token out"
        );
    }

    proptest! {
        /// Random tokens at the gateway: refused, no panic.
        #[test]
        fn random_tokens_are_refused(token in prop_oneof![jwt_like(), ".{0,300}"], user in ".{0,40}") {
            let service = service();
            prop_assert!(validate(&service.signer, &service.principals, &user, &token).is_err());
        }
    }
}
