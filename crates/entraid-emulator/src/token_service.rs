//! The Entra ID token service over HTTPS: client credentials (secret or assertion),
//! managed identity (App Service and IMDS shapes), OpenID configuration, JWKS and instance
//! discovery; injected faults (`faults.rs`) apply to the token requests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::EmulatorError;
use crate::access_token::{AUDIENCE, IssuedToken};
use crate::faults::{FaultState, Planned};
use crate::http::{Reply, json_reply, read_body, serve_http};
use crate::jwt::{JwtError, SigningKey, now_secs, verify_rs256};
use crate::principals::{Principals, ServicePrincipal, guid};
use crate::serve::{Shutdown, serve_connections};
use crate::stats::Stats;

/// Everything the token service needs to answer.
pub(crate) struct TokenService {
    pub(crate) principals: Principals,
    pub(crate) signer: SigningKey,
    pub(crate) token_lifetime: Duration,
    pub(crate) faults: FaultState,
    pub(crate) identity_header: String,
    /// `https://127.0.0.1:<port>`.
    pub(crate) authority: String,
    /// `127.0.0.1:<port>` of the second gateway, which `MOVING` names.
    pub(crate) handoff_endpoint: Option<String>,
    pub(crate) stats: Arc<Stats>,
    /// In cluster mode, each gateway's address and counters, for `/stats`.
    pub(crate) nodes: Vec<(String, Arc<Stats>)>,
}

/// Entra's error shape.
fn entra_error(status: StatusCode, error: &str, code: u64, description: &str) -> Reply {
    json_reply(
        status,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {description} Trace ID: {} Correlation ID: {} Timestamp: emulator", guid(), guid()),
            "error_codes": [code],
            "timestamp": "emulator",
            "trace_id": guid(),
            "correlation_id": guid(),
        }),
    )
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The scopes and resources that mean "Azure Cache for Redis".
fn is_redis_resource(resource: &str) -> bool {
    let r = resource.trim_end_matches("/.default").trim_end_matches('/');
    r == AUDIENCE || r == "acca5fbb-b7e4-4009-81f1-37e38fd66d78"
}

/// Serves the token service over TLS on `listener` until the emulator stops.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    service: Arc<TokenService>,
    handshake_timeout: Duration,
    shutdown: Shutdown,
) {
    serve_connections(
        listener,
        "token service",
        shutdown,
        move |socket, peer, mut shutdown| {
            let tls = tls.clone();
            let service = service.clone();
            async move {
                let accepted = tokio::select! {
                    accepted = tokio::time::timeout(handshake_timeout, tls.accept(socket)) => accepted,
                    () = shutdown.wait() => return,
                };
                let Ok(Ok(stream)) = accepted else {
                    tracing::debug!(%peer, "token service: TLS handshake failed or timed out");
                    return;
                };
                let handler = hyper::service::service_fn(move |request| service.clone().handle(request));
                serve_http(hyper_util::rt::TokioIo::new(stream), handler, shutdown).await;
            }
        },
    )
    .await;
}

/// A request for a token: what injected faults apply to.
enum TokenRequest<'a> {
    /// `POST /{tenant}/oauth2/v2.0/token`, with its form.
    ClientCredentials { tenant: &'a str, body: &'a [u8] },
    /// `GET /msi/token` (App Service) or `GET /metadata/identity/oauth2/token` (IMDS).
    ManagedIdentity {
        shape: ManagedShape,
        query: &'a HashMap<String, String>,
        headers: &'a hyper::HeaderMap,
    },
}

/// Why a client assertion was refused.
#[derive(Debug, thiserror::Error)]
enum AssertionError {
    #[error("this application has no certificate registered")]
    NoCertificate,
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("iss and sub must be the client id")]
    WrongIssuer,
    #[error("aud {0:?} is not this tenant's token endpoint")]
    WrongAudience(String),
    #[error("no exp claim")]
    NoExpiry,
    #[error("the assertion has expired")]
    Expired,
}

impl TokenService {
    pub(crate) fn issuer(&self) -> String {
        format!("{}/{}/v2.0", self.authority, self.principals.tenant_id)
    }

    fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, self.principals.tenant_id)
    }

    /// A signed access token for `oid`.
    pub(crate) fn issue(&self, oid: &str, client_id: &str) -> Result<IssuedToken, EmulatorError> {
        let now = now_secs();
        let lifetime = self.token_lifetime.as_secs().max(1);
        // `exp` is in whole seconds: round the start up, so the token lives at least the
        // `expires_in` the response announces (as Entra's do), never up to a second less.
        let exp = now + 1 + lifetime;
        let claims = json!({
            "aud": AUDIENCE,
            "iss": self.issuer(),
            "tid": self.principals.tenant_id,
            "oid": oid,
            "sub": oid,
            "azp": client_id,
            "appid": client_id,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": guid(),
            "ver": "2.0",
        });
        let token = self.signer.sign(&claims)?;
        Stats::bump(&self.stats.tokens_issued);
        tracing::info!(oid, client_id, lifetime_s = lifetime, "token issued");
        Ok(IssuedToken { token, lifetime, exp })
    }

    pub(crate) async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Reply, Infallible> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = query_map(request.uri().query());
        let headers = request.headers().clone();
        let body = match read_body(request).await {
            Ok(body) => body,
            Err(reply) => return Ok(reply),
        };
        let tenant = &self.principals.tenant_id;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();

        let managed = |shape| TokenRequest::ManagedIdentity {
            shape,
            query: &query,
            headers: &headers,
        };
        let reply = match (&method, segments.as_slice()) {
            (&Method::POST, [tenant, "oauth2", "v2.0", "token"]) => {
                self.token_request(TokenRequest::ClientCredentials { tenant, body: &body })
                    .await
            }
            (&Method::GET, ["msi", "token"]) => self.token_request(managed(ManagedShape::AppService)).await,
            (&Method::GET, ["metadata", "identity", "oauth2", "token"]) => {
                self.token_request(managed(ManagedShape::Imds)).await
            }
            (&Method::GET, [t, "v2.0", ".well-known", "openid-configuration"]) if t == tenant => json_reply(
                StatusCode::OK,
                &json!({
                    "issuer": self.issuer(),
                    "authorization_endpoint": format!("{}/{tenant}/oauth2/v2.0/authorize", self.authority),
                    "token_endpoint": self.token_endpoint(),
                    "jwks_uri": format!("{}/{tenant}/discovery/v2.0/keys", self.authority),
                    "response_types_supported": ["code", "id_token", "token"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                    "tenant_region_scope": "EU",
                }),
            ),
            (&Method::GET, [t, "discovery", "v2.0", "keys"]) if t == tenant => {
                json_reply(StatusCode::OK, &json!({"keys": [self.signer.jwk()]}))
            }
            (&Method::GET, ["common", "discovery", "instance"]) => json_reply(
                StatusCode::OK,
                &json!({
                    "tenant_discovery_endpoint": format!("{}/{tenant}/v2.0/.well-known/openid-configuration", self.authority),
                    "api-version": "1.1",
                    "metadata": [{"preferred_network": "127.0.0.1", "preferred_cache": "127.0.0.1", "aliases": ["127.0.0.1"]}],
                }),
            ),
            (&Method::GET, [t, "v2.0", ".well-known", "openid-configuration"]) => entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_tenant",
                90002,
                &format!("Tenant '{t}' not found."),
            ),
            _ => json_reply(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "error_description": format!("no such endpoint: {method} {path}")}),
            ),
        };
        Ok(reply)
    }

    /// A token request: first the injected faults (latency, then a failure or silence),
    /// then the answer.
    async fn token_request(&self, request: TokenRequest<'_>) -> Reply {
        let (latency, plan) = self.faults.plan();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match plan {
            Planned::Serve => {}
            Planned::Hang => std::future::pending::<()>().await,
            Planned::Fail {
                status,
                retry_after,
                aadsts,
            } => {
                Stats::bump(&self.stats.token_requests_refused);
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut reply = match aadsts {
                    Some(code) => entra_error(status, "invalid_request", code, "Injected by the emulator."),
                    None => entra_error(
                        status,
                        "temporarily_unavailable",
                        50001,
                        "Injected failure: the service is temporarily unavailable.",
                    ),
                };
                if let Some(value) =
                    retry_after.and_then(|after| hyper::header::HeaderValue::from_str(&after.to_string()).ok())
                {
                    reply.headers_mut().insert(hyper::header::RETRY_AFTER, value);
                }
                tracing::info!(%status, "token request failed by injected fault");
                return reply;
            }
        }
        match request {
            TokenRequest::ClientCredentials { tenant, body } => self.client_credentials(tenant, body),
            TokenRequest::ManagedIdentity { shape, query, headers } => self.managed_identity(query, headers, shape),
        }
    }

    fn client_credentials(&self, tenant: &str, body: &[u8]) -> Reply {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
        let refuse = |reply: Reply| {
            Stats::bump(&self.stats.token_requests_refused);
            reply
        };
        if tenant != self.principals.tenant_id {
            return refuse(entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90002,
                &format!(
                    "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                ),
            ));
        }
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return refuse(entra_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type; the emulator supports client_credentials.",
            ));
        }
        let client_id = form.get("client_id").cloned().unwrap_or_default();
        let Some(principal) = self.principals.service_principal(&client_id) else {
            return refuse(entra_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                &format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'."),
            ));
        };
        let scope = form.get("scope").cloned().unwrap_or_default();
        if !scope.split_whitespace().any(is_redis_resource) {
            return refuse(entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                500011,
                &format!(
                    "The resource principal named {scope} was not found in the tenant; the emulator issues tokens for https://redis.azure.com/.default."
                ),
            ));
        }
        if let Some(secret) = form.get("client_secret") {
            if principal.secret.as_deref() != Some(secret.as_str()) {
                return refuse(entra_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                ));
            }
        } else if let Some(assertion) = form.get("client_assertion") {
            if let Err(problem) = self.check_assertion(principal, assertion) {
                return refuse(entra_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    700027,
                    &format!("Client assertion failed signature validation: {problem}."),
                ));
            }
        } else {
            return refuse(entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
        match self.issue(&principal.object_id, &client_id) {
            Ok(IssuedToken { token, lifetime, .. }) => json_reply(
                StatusCode::OK,
                &json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
            ),
            Err(e) => json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "server_error", "error_description": e.to_string()}),
            ),
        }
    }

    fn check_assertion(&self, principal: &ServicePrincipal, assertion: &str) -> Result<(), AssertionError> {
        let key = principal
            .certificate_key
            .as_ref()
            .ok_or(AssertionError::NoCertificate)?;
        let claims = verify_rs256(key, assertion)?;
        let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        if text("iss") != principal.client_id || text("sub") != principal.client_id {
            return Err(AssertionError::WrongIssuer);
        }
        if !text("aud").ends_with(&format!("/{}/oauth2/v2.0/token", self.principals.tenant_id)) {
            return Err(AssertionError::WrongAudience(text("aud")));
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(AssertionError::NoExpiry)?;
        if exp <= now_secs() {
            return Err(AssertionError::Expired);
        }
        Ok(())
    }

    fn managed_identity(
        &self,
        query: &HashMap<String, String>,
        headers: &hyper::HeaderMap,
        shape: ManagedShape,
    ) -> Reply {
        let refuse = |status: StatusCode, message: &str| {
            Stats::bump(&self.stats.token_requests_refused);
            json_reply(
                status,
                &json!({"error": "invalid_request", "error_description": message}),
            )
        };
        match shape {
            ManagedShape::AppService => {
                let header = headers.get("x-identity-header").and_then(|v| v.to_str().ok());
                if header != Some(self.identity_header.as_str()) {
                    return refuse(StatusCode::UNAUTHORIZED, "missing or wrong X-IDENTITY-HEADER");
                }
            }
            ManagedShape::Imds => {
                if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
                    return refuse(StatusCode::BAD_REQUEST, "Required metadata header not specified");
                }
            }
        }
        let resource = query.get("resource").cloned().unwrap_or_default();
        if !is_redis_resource(&resource) {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("the emulator issues tokens for https://redis.azure.com, not {resource:?}"),
            );
        }
        let get = |k: &str| query.get(k).map(String::as_str);
        let Some(identity) = self.principals.managed_identity(
            get("client_id"),
            get("object_id").or(get("principal_id")),
            get("msi_res_id").or(get("mi_res_id")),
        ) else {
            return refuse(StatusCode::BAD_REQUEST, "Identity not found");
        };
        let client_id = identity
            .client_id
            .clone()
            .unwrap_or_else(|| "system-assigned".to_owned());
        match self.issue(&identity.object_id, &client_id) {
            Ok(IssuedToken {
                token,
                lifetime,
                exp: expires_on,
            }) => {
                let mut body = json!({
                    "access_token": token,
                    "expires_on": expires_on.to_string(),
                    "resource": resource,
                    "token_type": "Bearer",
                    "client_id": client_id,
                });
                if shape == ManagedShape::Imds {
                    body["expires_in"] = Value::String(lifetime.to_string());
                    body["ext_expires_in"] = Value::String(lifetime.to_string());
                    body["not_before"] = Value::String(now_secs().to_string());
                }
                json_reply(StatusCode::OK, &body)
            }
            Err(e) => json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "server_error", "error_description": e.to_string()}),
            ),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ManagedShape {
    AppService,
    Imds,
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::OnceLock;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;

    use super::*;

    /// A token service with generated principals (one for all tests: keys take a while).
    pub(crate) fn service() -> Arc<TokenService> {
        static SERVICE: OnceLock<Arc<TokenService>> = OnceLock::new();
        SERVICE
            .get_or_init(|| {
                Arc::new(TokenService {
                    principals: Principals::generate(),
                    signer: SigningKey::generate().unwrap(),
                    token_lifetime: Duration::from_secs(60),
                    faults: FaultState::default(),
                    identity_header: "header".to_owned(),
                    authority: "https://127.0.0.1:1".to_owned(),
                    handoff_endpoint: None,
                    stats: Arc::new(Stats::default()),
                    nodes: Vec::new(),
                })
            })
            .clone()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Three dot-separated parts: base64url of anything, of JSON, or raw text.
    pub(crate) fn jwt_like() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| b64(&b)),
            (any::<u64>(), ".{0,16}", any::<i64>()).prop_map(|(exp, oid, nbf)| {
                b64(
                    json!({"alg": "RS256", "exp": exp, "oid": oid, "nbf": nbf, "aud": "https://redis.azure.com"})
                        .to_string()
                        .as_bytes(),
                )
            }),
            ".{0,32}",
        ];
        (part.clone(), part.clone(), part).prop_map(|(a, b, c)| format!("{a}.{b}.{c}"))
    }

    proptest! {
        /// Any bytes as a token request body, for any tenant: an answer, no panic.
        #[test]
        fn random_form_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), tenant in ".{0,40}") {
            let service = service();
            let reply = service.client_credentials(&tenant, &body);
            prop_assert!(reply.status().is_client_error());
            let reply = service.client_credentials(&service.principals.tenant_id, &body);
            prop_assert!(reply.status().is_client_error());
        }

        /// Well-formed forms for a real client, with random secrets and assertions: refused,
        /// no panic.
        #[test]
        fn random_credentials_are_refused(secret in ".{0,64}", assertion in jwt_like(), use_assertion: bool) {
            let service = service();
            let principal = &service.principals.service_principals[0];
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials")
                .append_pair("client_id", &principal.client_id)
                .append_pair("scope", "https://redis.azure.com/.default");
            if use_assertion {
                form.append_pair("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                    .append_pair("client_assertion", &assertion);
            } else {
                form.append_pair("client_secret", &secret);
            }
            let reply = service.client_credentials(&service.principals.tenant_id, form.finish().as_bytes());
            prop_assert!(reply.status().is_client_error());
        }

        /// Random query strings for managed identity: an answer, no panic.
        #[test]
        fn random_managed_identity_queries_never_panic(query in ".{0,200}") {
            let service = service();
            let mut headers = hyper::HeaderMap::new();
            headers.insert("metadata", hyper::header::HeaderValue::from_static("true"));
            let query = query_map(Some(&query));
            let _ = service.managed_identity(&query, &headers, ManagedShape::Imds);
        }
    }
}
