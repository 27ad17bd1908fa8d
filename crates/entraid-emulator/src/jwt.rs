//! RS256 JSON Web Tokens and the token-signing key. [`SigningKey`] is made here at each
//! start (an RSA key from `pki.rs`'s generator, `Emulator::start` makes it); the token
//! service signs the tokens it issues with it and publishes it in its JWKS, and the
//! gateway verifies presented tokens with it (`access_token.rs`). [`verify_rs256`] also
//! verifies client assertions against a registered certificate.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::hash::MessageDigest;
use openssl::pkey::{HasPublic, PKey, PKeyRef, Private};
use openssl::sign::{Signer, Verifier};
use serde_json::{Value, json};

use crate::EmulatorError;

/// The token service's signing key, with what a JWKS publishes of it.
pub(crate) struct SigningKey {
    key: PKey<Private>,
    pub(crate) kid: String,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SigningKey {
    pub(crate) fn generate() -> Result<SigningKey, EmulatorError> {
        let key = crate::pki::rsa_key()?;
        let der = key
            .public_key_to_der()
            .map_err(|e| EmulatorError::Crypto(e.to_string()))?;
        let digest =
            openssl::hash::hash(MessageDigest::sha256(), &der).map_err(|e| EmulatorError::Crypto(e.to_string()))?;
        let kid = URL_SAFE_NO_PAD.encode(&digest[..16]);
        Ok(SigningKey { key, kid })
    }

    /// `header.payload.signature` for these claims.
    pub(crate) fn sign(&self, claims: &Value) -> Result<String, EmulatorError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signer =
            Signer::new(MessageDigest::sha256(), &self.key).map_err(|e| EmulatorError::Crypto(e.to_string()))?;
        signer
            .update(signing_input.as_bytes())
            .map_err(|e| EmulatorError::Crypto(e.to_string()))?;
        let signature = signer.sign_to_vec().map_err(|e| EmulatorError::Crypto(e.to_string()))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// Checks the signature and returns the claims.
    pub(crate) fn verify(&self, jwt: &str) -> Result<Value, JwtError> {
        verify_rs256(&self.key, jwt)
    }

    /// The JWKS entry for this key.
    pub(crate) fn jwk(&self) -> Value {
        let rsa = self.key.rsa().ok();
        let n = rsa
            .as_ref()
            .map(|r| URL_SAFE_NO_PAD.encode(r.n().to_vec()))
            .unwrap_or_default();
        let e = rsa
            .as_ref()
            .map(|r| URL_SAFE_NO_PAD.encode(r.e().to_vec()))
            .unwrap_or_default();
        json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": n, "e": e})
    }
}

/// Why a JWT was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwtError {
    #[error("not a JWT (expected three dot-separated parts)")]
    NotAJwt,
    #[error("the JWT header is not base64url JSON")]
    Header,
    #[error("the JWT is not signed with RS256")]
    NotRs256,
    #[error("the JWT signature is not base64url")]
    SignatureEncoding,
    #[error("the JWT signature does not verify")]
    BadSignature,
    #[error("the JWT payload is not base64url JSON")]
    Payload,
    /// OpenSSL could not run the verification.
    #[error(transparent)]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// Verifies an RS256 JWT with `key` and returns its claims; the error says what failed.
pub(crate) fn verify_rs256<T: HasPublic>(key: &PKeyRef<T>, jwt: &str) -> Result<Value, JwtError> {
    let parts: Vec<&str> = jwt.trim().split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err(JwtError::NotAJwt);
    };
    let header: Value = decode_json(header).ok_or(JwtError::Header)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(JwtError::NotRs256);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::SignatureEncoding)?;
    let mut verifier = Verifier::new(MessageDigest::sha256(), key)?;
    verifier.update(format!("{}.{}", parts[0], parts[1]).as_bytes())?;
    if !verifier.verify(&signature).unwrap_or(false) {
        return Err(JwtError::BadSignature);
    }
    decode_json(payload).ok_or(JwtError::Payload)
}

fn decode_json(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key() -> &'static SigningKey {
        static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate().unwrap())
    }

    #[test]
    fn signs_and_verifies() {
        let jwt = key().sign(&json!({"oid": "x"})).unwrap();
        assert_eq!(key().verify(&jwt).unwrap()["oid"], "x");
        assert!(key().verify(&jwt.replacen('.', "..", 1)).is_err());
    }

    proptest! {
        /// Any text as a JWT: an error saying why, no panic.
        #[test]
        fn random_text_is_refused(text in ".{0,400}") {
            prop_assert!(key().verify(&text).is_err());
        }

        /// Three base64url parts of random bytes (so decoding gets past the split): refused.
        #[test]
        fn random_parts_are_refused(header in proptest::collection::vec(any::<u8>(), 0..64), payload in proptest::collection::vec(any::<u8>(), 0..64), signature in proptest::collection::vec(any::<u8>(), 0..300)) {
            let jwt = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(&header), URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(&signature));
            prop_assert!(key().verify(&jwt).is_err());
            let rs256 = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#), URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(&signature));
            prop_assert!(key().verify(&rs256).is_err());
        }
    }
}
