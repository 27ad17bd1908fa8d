//! The certificate credential (feature `certificate`) against a local mock of Entra ID:
//! a signed client assertion, and each bad certificate refused with its reason.
#![cfg(feature = "certificate")]

mod support;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use entraid_azure::{AzureConfigError, AzureIdentityProvider};
use entraid_identity::IdentityProvider;
use entraid_test_support::test_certificate;
use support::*;

#[tokio::test]
async fn client_certificate_sends_a_signed_assertion() {
    let cert = test_certificate("entraid-azure-test", "pfx-password");
    let mut server = mockito::Server::new_async().await;
    let captured = Arc::new(Mutex::new(String::new()));
    let capture = captured.clone();
    let jwt = access_token("oid-cert");
    let body = entra_token_body(&jwt, 3599);
    let mock = server
        .mock("POST", TOKEN_PATH)
        .match_body(form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("scope", "https://redis.azure.com/.default"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
        ]))
        .with_body_from_request(move |request| {
            *capture.lock().unwrap() = String::from_utf8_lossy(request.body().unwrap()).into_owned();
            body.clone().into_bytes()
        })
        .create_async()
        .await;
    let (options, _) = options_to(&server);
    let provider = AzureIdentityProvider::client_certificate_base64(
        TENANT,
        CLIENT,
        &STANDARD.encode(&cert.pkcs12),
        Some("pfx-password"),
    )
    .unwrap()
    .with_client_options(options);
    let token = provider.request_token().await.unwrap();
    mock.assert_async().await;
    assert_eq!(token.username(), "oid-cert");

    // The assertion: an RS256 JWT for our client, for the token endpoint, signed by the key.
    let form_body = captured.lock().unwrap().clone();
    let assertion = url::form_urlencoded::parse(form_body.as_bytes())
        .find(|(k, _)| k == "client_assertion")
        .map(|(_, v)| v.into_owned())
        .expect("client_assertion sent");
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(claims["iss"], CLIENT);
    assert_eq!(claims["sub"], CLIENT);
    assert_eq!(claims["aud"], format!("https://login.microsoftonline.com{TOKEN_PATH}"));
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    let mut verifier = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &cert.public_key).unwrap();
    verifier
        .update(format!("{}.{}", parts[0], parts[1]).as_bytes())
        .unwrap();
    assert!(
        verifier.verify(&signature).unwrap(),
        "signed with the certificate's key"
    );
}

#[test]
fn bad_certificates_are_refused_with_the_reason() {
    let cert = test_certificate("entraid-azure-test", "right");
    let wrong =
        AzureIdentityProvider::client_certificate(TENANT, CLIENT, cert.pkcs12.clone(), Some("wrong")).unwrap_err();
    assert!(
        matches!(&wrong, AzureConfigError::Certificate { problem } if problem.contains("password")),
        "{wrong}"
    );
    let no_key =
        AzureIdentityProvider::client_certificate(TENANT, CLIENT, cert.pkcs12_without_key.clone(), Some("right"))
            .unwrap_err();
    assert!(
        matches!(&no_key, AzureConfigError::Certificate { problem } if problem.contains("private key")),
        "{no_key}"
    );
    let garbage = AzureIdentityProvider::client_certificate(TENANT, CLIENT, b"not a pfx".to_vec(), None).unwrap_err();
    assert!(
        matches!(&garbage, AzureConfigError::Certificate { problem } if problem.contains("PKCS12")),
        "{garbage}"
    );
    let b64 = AzureIdentityProvider::client_certificate_base64(TENANT, CLIENT, "%%%not base64%%%", None).unwrap_err();
    assert!(matches!(b64, AzureConfigError::CertificateBase64 { .. }), "{b64}");
    let empty = AzureIdentityProvider::client_certificate(TENANT, CLIENT, Vec::new(), None).unwrap_err();
    assert!(matches!(empty, AzureConfigError::Empty { .. }));
    // The right password works, and Debug does not show the certificate.
    let ok = AzureIdentityProvider::client_certificate(TENANT, CLIENT, cert.pkcs12.clone(), Some("right")).unwrap();
    assert!(!format!("{ok:?}").contains("right"));
}
