//! Routes the Azure SDK's requests to a local mock server, whatever host they name.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::http::{AsyncRawResponse, ClientOptions, HttpClient, Request, Transport};
use entraid_azure::azure_core;
use mockito::Matcher;

pub(crate) const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub(crate) const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
pub(crate) const TOKEN_PATH: &str = "/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token";

/// Matches a form body holding every one of these pairs.
pub(crate) fn form(pairs: &[(&str, &str)]) -> Matcher {
    Matcher::AllOf(
        pairs
            .iter()
            .map(|(k, v)| Matcher::UrlEncoded((*k).into(), (*v).into()))
            .collect(),
    )
}

/// An HTTP client that sends every request to `mock` instead, remembering the URL it was
/// meant for.
#[derive(Debug)]
pub(crate) struct ToMock {
    port: u16,
    inner: Arc<dyn HttpClient>,
    pub(crate) seen: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl HttpClient for ToMock {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        self.seen.lock().unwrap().push(request.url().to_string());
        let mut forwarded = request.clone();
        let url = forwarded.url_mut();
        url.set_scheme("http").unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(self.port)).unwrap();
        self.inner.execute_request(&forwarded).await
    }
}

/// Client options whose transport goes to the mock server; the returned handle tells
/// which URLs the SDK asked for.
pub(crate) fn options_to(server: &mockito::ServerGuard) -> (ClientOptions, Arc<ToMock>) {
    options_to_port(server.socket_address().port())
}

/// Client options whose transport goes to 127.0.0.1:`port`.
pub(crate) fn options_to_port(port: u16) -> (ClientOptions, Arc<ToMock>) {
    let to_mock = Arc::new(ToMock {
        port,
        inner: azure_core::http::new_http_client(None),
        seen: Mutex::new(Vec::new()),
    });
    let options = ClientOptions {
        transport: Some(Transport::new(to_mock.clone())),
        ..ClientOptions::default()
    };
    (options, to_mock)
}

/// A JWT-shaped access token for `oid`, valid for an hour.
pub(crate) fn access_token(oid: &str) -> String {
    entraid_test_support::jwt(oid, SystemTime::now() + Duration::from_secs(3600), 1)
}

/// Entra's token response.
pub(crate) fn entra_token_body(jwt: &str, expires_in: u64) -> String {
    serde_json::json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": jwt,
    })
    .to_string()
}

/// Entra's error response.
pub(crate) fn entra_error_body(error: &str, code: i64, description: &str) -> String {
    serde_json::json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}\r\nTrace ID: 0000\r\nCorrelation ID: 1111"),
        "error_codes": [code],
        "timestamp": "2026-11-24 07:00:00Z",
    })
    .to_string()
}

/// A managed-identity response (IMDS shape when `expires_in` is given; App Service's has only `expires_on`).
pub(crate) fn mi_token_body(jwt: &str, expires_in: Option<u64>, expires_on: u64) -> String {
    let mut body = serde_json::json!({
        "access_token": jwt,
        "expires_on": expires_on.to_string(),
        "resource": "https://redis.azure.com",
        "token_type": "Bearer",
    });
    if let Some(expires_in) = expires_in {
        body["expires_in"] = serde_json::Value::String(expires_in.to_string());
    }
    body.to_string()
}
