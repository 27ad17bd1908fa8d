//! A throwaway self-signed certificate with an RSA key, made at test time.

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509NameBuilder};

/// A certificate for client-certificate flows, in the forms tests need.
pub struct TestCertificate {
    /// PKCS12 (`.pfx`) with the certificate and its private key.
    pub pkcs12: Vec<u8>,
    /// PKCS12 with the certificate only (no private key).
    pub pkcs12_without_key: Vec<u8>,
    /// The certificate, PEM (what an app registration holds).
    pub certificate_pem: String,
    /// The public key, to verify signatures made with the private key.
    pub public_key: PKey<Public>,
}

impl std::fmt::Debug for TestCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCertificate").finish_non_exhaustive()
    }
}

/// A fresh RSA-2048 certificate for `common_name`, valid for a day, its PKCS12 forms
/// protected by `password`. Panics on failure: for tests only.
#[allow(clippy::unwrap_used)]
pub fn test_certificate(common_name: &str, password: &str) -> TestCertificate {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", common_name).unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    builder.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = builder.build();
    let pkcs12 = |with_key: bool| {
        let mut p = Pkcs12::builder();
        p.name(common_name).cert(&cert);
        if with_key {
            p.pkey(&key);
        }
        p.build2(password).unwrap().to_der().unwrap()
    };
    TestCertificate {
        pkcs12: pkcs12(true),
        pkcs12_without_key: pkcs12(false),
        certificate_pem: String::from_utf8(cert.to_pem().unwrap()).unwrap(),
        public_key: PKey::public_key_from_pem(&key.public_key_to_pem().unwrap()).unwrap(),
    }
}
