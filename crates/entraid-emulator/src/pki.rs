//! A throwaway certificate authority and a server certificate for 127.0.0.1 and
//! localhost, made fresh at each start, for the TLS of the token service and the gateways;
//! and `rsa_key`, the RSA key generator they share with the token-signing key (which is
//! `jwt.rs`'s `SigningKey`).

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

use crate::EmulatorError;

/// The CA (PEM, for clients to trust) and the server's certificate chain and key.
#[derive(Clone)]
pub struct Pki {
    /// The CA certificate, PEM: give it to clients.
    pub ca_pem: String,
    pub(crate) server_cert_pem: String,
    pub(crate) server_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn err(what: &'static str) -> impl Fn(openssl::error::ErrorStack) -> EmulatorError {
    move |e| EmulatorError::Crypto(format!("{what}: {e}"))
}

/// A fresh 2048-bit RSA key: the CA's, the server's, and the token-signing key's.
pub(crate) fn rsa_key() -> Result<PKey<Private>, EmulatorError> {
    let rsa = Rsa::generate(2048).map_err(err("generating an RSA key"))?;
    PKey::from_rsa(rsa).map_err(err("wrapping the RSA key"))
}

fn serial() -> Result<openssl::asn1::Asn1Integer, EmulatorError> {
    let mut bn = BigNum::new().map_err(err("serial"))?;
    bn.rand(64, MsbOption::MAYBE_ZERO, false).map_err(err("serial"))?;
    bn.to_asn1_integer().map_err(err("serial"))
}

impl Pki {
    /// Makes a CA valid for 30 days and a server certificate for `127.0.0.1` and `localhost`.
    pub fn generate() -> Result<Pki, EmulatorError> {
        let ca_key = rsa_key()?;
        let mut name = X509NameBuilder::new().map_err(err("CA name"))?;
        name.append_entry_by_text("CN", "entraid-emulator local CA (testing only)")
            .map_err(err("CA name"))?;
        let ca_name = name.build();
        let mut ca = X509::builder().map_err(err("CA"))?;
        ca.set_version(2).map_err(err("CA"))?;
        ca.set_serial_number(&*serial()?).map_err(err("CA"))?;
        ca.set_subject_name(&ca_name).map_err(err("CA"))?;
        ca.set_issuer_name(&ca_name).map_err(err("CA"))?;
        ca.set_pubkey(&ca_key).map_err(err("CA"))?;
        ca.set_not_before(&*Asn1Time::days_from_now(0).map_err(err("CA"))?)
            .map_err(err("CA"))?;
        ca.set_not_after(&*Asn1Time::days_from_now(30).map_err(err("CA"))?)
            .map_err(err("CA"))?;
        ca.append_extension(BasicConstraints::new().critical().ca().build().map_err(err("CA"))?)
            .map_err(err("CA"))?;
        ca.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .map_err(err("CA"))?,
        )
        .map_err(err("CA"))?;
        ca.sign(&ca_key, MessageDigest::sha256())
            .map_err(err("signing the CA"))?;
        let ca = ca.build();

        let server_key = rsa_key()?;
        let mut name = X509NameBuilder::new().map_err(err("server name"))?;
        name.append_entry_by_text("CN", "127.0.0.1")
            .map_err(err("server name"))?;
        let server_name = name.build();
        let mut server = X509::builder().map_err(err("server"))?;
        server.set_version(2).map_err(err("server"))?;
        server.set_serial_number(&*serial()?).map_err(err("server"))?;
        server.set_subject_name(&server_name).map_err(err("server"))?;
        server.set_issuer_name(ca.subject_name()).map_err(err("server"))?;
        server.set_pubkey(&server_key).map_err(err("server"))?;
        server
            .set_not_before(&*Asn1Time::days_from_now(0).map_err(err("server"))?)
            .map_err(err("server"))?;
        server
            .set_not_after(&*Asn1Time::days_from_now(30).map_err(err("server"))?)
            .map_err(err("server"))?;
        let context = server.x509v3_context(Some(&ca), None);
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&context)
            .map_err(err("server SAN"))?;
        server.append_extension(san).map_err(err("server"))?;
        server
            .append_extension(ExtendedKeyUsage::new().server_auth().build().map_err(err("server"))?)
            .map_err(err("server"))?;
        server
            .append_extension(BasicConstraints::new().build().map_err(err("server"))?)
            .map_err(err("server"))?;
        server
            .sign(&ca_key, MessageDigest::sha256())
            .map_err(err("signing the server certificate"))?;
        let server = server.build();

        let pem = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|e| EmulatorError::Crypto(e.to_string()));
        Ok(Pki {
            ca_pem: pem(ca.to_pem().map_err(err("CA PEM"))?)?,
            server_cert_pem: pem(server.to_pem().map_err(err("server PEM"))?)?,
            server_key_pem: pem(server_key.private_key_to_pem_pkcs8().map_err(err("server key PEM"))?)?,
        })
    }

    /// A rustls server configuration serving the server certificate.
    pub(crate) fn rustls_server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, EmulatorError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EmulatorError::Crypto(format!("server certificate PEM: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(|e| EmulatorError::Crypto(format!("server key PEM: {e}")))?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EmulatorError::Crypto(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| EmulatorError::Crypto(e.to_string()))?;
        Ok(std::sync::Arc::new(config))
    }

    /// A rustls client configuration trusting the CA only (the emulator's own checks of
    /// its gateways).
    pub(crate) fn rustls_client_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, EmulatorError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| EmulatorError::Crypto(format!("CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| EmulatorError::Crypto(format!("CA certificate: {e}")))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EmulatorError::Crypto(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(std::sync::Arc::new(config))
    }
}
