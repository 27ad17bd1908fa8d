//! The Entra ID token service over HTTPS: client credentials (secret or assertion),
//! managed identity (App Service and IMDS shapes), OpenID configuration and JWKS; and the
//! loopback admin endpoint for fault injection and statistics.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::faults::{FaultState, Planned};
use crate::jwt::{SigningKey, now_secs, verify_rs256};
use crate::principals::{Principals, guid};
use crate::stats::Stats;

/// The emulator's own principal, for checking a cluster through its gateways before
/// `READY`: no client can get a token for it (the token endpoints issue tokens only to
/// the principals they know), and the gateway lets it in whatever the access policies say.
pub(crate) const READINESS_OID: &str = "entraid-emulator-readiness-check";

/// Everything the token service needs to answer.
pub(crate) struct TokenService {
    pub(crate) principals: Principals,
    pub(crate) signer: SigningKey,
    pub(crate) token_lifetime: Duration,
    pub(crate) faults: FaultState,
    pub(crate) identity_header: String,
    /// `https://127.0.0.1:<port>`.
    pub(crate) authority: String,
    pub(crate) stats: Arc<Stats>,
    /// In cluster mode, each gateway's address and counters, for `/stats`.
    pub(crate) nodes: Vec<(String, Arc<Stats>)>,
}

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
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

/// The largest request body either endpoint reads: 64 KiB. A token request is a few KiB
/// at most (a client assertion is its largest field), an admin request a few bytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// A body over [`MAX_BODY`] is still read (and dropped) up to this size before the 413,
/// so a client still sending it gets the answer rather than a broken pipe (a "lingering
/// close"); one announced or sent beyond this gets the 413 at once, then the connection
/// closes.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// How long a body may take to arrive once its headers have (hyper times the headers).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the request body did not arrive within {BODY_TIMEOUT:?}")]
    TooSlow,
}

/// The whole request body, at most [`MAX_BODY`] bytes (empty if it could not be read);
/// `Err` is the reply for a body too large (413) or too slow (408).
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Reply> {
    let announced = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = if announced.is_some_and(|length| length > DRAIN_LIMIT as u64) {
        Err(BodyError::TooLarge)
    } else {
        tokio::time::timeout(BODY_TIMEOUT, collect_limited(request.into_body()))
            .await
            .unwrap_or(Err(BodyError::TooSlow))
    };
    read.map_err(|error| {
        let status = match error {
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow => StatusCode::REQUEST_TIMEOUT,
        };
        json_reply(
            status,
            &json!({"error": "invalid_request", "error_description": error.to_string()}),
        )
    })
}

/// Collects at most [`MAX_BODY`] bytes; reads on, dropping them, up to [`DRAIN_LIMIT`].
async fn collect_limited(mut body: Incoming) -> Result<Bytes, BodyError> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        // A body that breaks off is an empty one, as before.
        let Ok(frame) = frame else {
            return Ok(Bytes::new());
        };
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen <= MAX_BODY {
                kept.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                return Err(BodyError::TooLarge);
            }
        }
    }
    if seen > MAX_BODY {
        return Err(BodyError::TooLarge);
    }
    Ok(Bytes::from(kept))
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The scopes and resources that mean "Azure Cache for Redis".
fn is_redis_resource(resource: &str) -> bool {
    let r = resource.trim_end_matches("/.default").trim_end_matches('/');
    r == "https://redis.azure.com" || r == "acca5fbb-b7e4-4009-81f1-37e38fd66d78"
}

impl TokenService {
    pub(crate) fn issuer(&self) -> String {
        format!("{}/{}/v2.0", self.authority, self.principals.tenant_id)
    }

    fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, self.principals.tenant_id)
    }

    /// A signed access token for `oid`.
    pub(crate) fn issue(&self, oid: &str, client_id: &str) -> Result<(String, u64, u64), String> {
        let now = now_secs();
        let lifetime = self.token_lifetime.as_secs().max(1);
        // `exp` is in whole seconds: round the start up, so the token lives at least the
        // `expires_in` the response announces (as Entra's do), never up to a second less.
        let exp = now + 1 + lifetime;
        let claims = json!({
            "aud": "https://redis.azure.com",
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
        let token = self.signer.sign(&claims).map_err(|e| e.to_string())?;
        Stats::bump(&self.stats.tokens_issued);
        tracing::info!(oid, client_id, lifetime_s = lifetime, "token issued");
        Ok((token, lifetime, exp))
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

        let is_token_request = matches!(
            (&method, segments.as_slice()),
            (&Method::POST, [_, "oauth2", "v2.0", "token"])
                | (&Method::GET, ["msi", "token"])
                | (&Method::GET, ["metadata", "identity", "oauth2", "token"])
        );
        if is_token_request {
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
                    return Ok(reply);
                }
            }
        }

        let reply = match (&method, segments.as_slice()) {
            (&Method::POST, [t, "oauth2", "v2.0", "token"]) => self.client_credentials(t, &body),
            (&Method::GET, ["msi", "token"]) => self.managed_identity(&query, &headers, ManagedShape::AppService),
            (&Method::GET, ["metadata", "identity", "oauth2", "token"]) => {
                self.managed_identity(&query, &headers, ManagedShape::Imds)
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
            Ok((token, lifetime, _)) => json_reply(
                StatusCode::OK,
                &json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
            ),
            Err(e) => json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"error": "server_error", "error_description": e}),
            ),
        }
    }

    fn check_assertion(&self, principal: &crate::principals::ServicePrincipal, assertion: &str) -> Result<(), String> {
        let key = principal
            .certificate_key
            .as_ref()
            .ok_or("this application has no certificate registered")?;
        let claims = verify_rs256(key, assertion)?;
        let text = |k: &str| claims.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        if text("iss") != principal.client_id || text("sub") != principal.client_id {
            return Err("iss and sub must be the client id".into());
        }
        if !text("aud").ends_with(&format!("/{}/oauth2/v2.0/token", self.principals.tenant_id)) {
            return Err(format!("aud {:?} is not this tenant's token endpoint", text("aud")));
        }
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or("no exp claim")?;
        if exp <= now_secs() {
            return Err("the assertion has expired".into());
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
            Ok((token, lifetime, expires_on)) => {
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
                &json!({"error": "server_error", "error_description": e}),
            ),
        }
    }

    /// Checks a token presented to the gateway: our signature, not expired, for Redis,
    /// and issued to `username`. Returns its expiry (seconds since 1970).
    pub(crate) fn validate_access_token(&self, username: &str, token: &str) -> Result<u64, String> {
        let claims = self.signer.verify(token)?;
        if claims.get("aud").and_then(Value::as_str) != Some("https://redis.azure.com") {
            return Err("wrong audience".into());
        }
        if claims.get("oid").and_then(Value::as_str) != Some(username) {
            return Err("the username is not the token's oid".into());
        }
        if username != READINESS_OID && !self.principals.has_redis_access(username) {
            return Err("no data access policy assignment for this object id".into());
        }
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or("no exp")?;
        if exp <= now_secs() {
            return Err("the token has expired".into());
        }
        Ok(exp)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ManagedShape {
    AppService,
    Imds,
}

/// `GET /stats`: the totals; in cluster mode also `"nodes"`, each gateway's own figures
/// (`"gateway": "127.0.0.1:<port>"` first), in slot order.
fn stats_json(service: &TokenService) -> Value {
    let mut json = service.stats.to_json();
    if !service.nodes.is_empty()
        && let Some(map) = json.as_object_mut()
    {
        let nodes = service
            .nodes
            .iter()
            .map(|(address, stats)| {
                let mut node = stats.gateway_json();
                if let Some(node) = node.as_object_mut() {
                    node.insert("gateway".to_owned(), json!(address));
                }
                node
            })
            .collect();
        map.insert("nodes".to_owned(), Value::Array(nodes));
    }
    json
}

/// The admin endpoint (plain HTTP, loopback only): `POST /faults` with a JSON body,
/// `GET /stats`.
pub(crate) async fn admin(service: Arc<TokenService>, request: Request<Incoming>) -> Result<Reply, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(reply) => return Ok(reply),
    };
    Ok(match (method, path.as_str()) {
        (Method::GET, "/stats") => json_reply(StatusCode::OK, &stats_json(&service)),
        (Method::POST, "/faults") => {
            let parsed: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body).unwrap_or(Value::Null)
            };
            if !parsed.is_object() {
                json_reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "the body must be a JSON object"}),
                )
            } else {
                match service.faults.apply(&parsed) {
                    Ok(faults) => {
                        tracing::info!(?faults, "faults set");
                        json_reply(
                            StatusCode::OK,
                            &json!({"fail_next": faults.fail_next, "status": faults.status, "latency_ms": faults.latency.as_millis() as u64, "stop_answering": faults.stop_answering}),
                        )
                    }
                    Err(e) => json_reply(StatusCode::BAD_REQUEST, &json!({"error": e})),
                }
            }
        }
        _ => json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": "use GET /stats or POST /faults"}),
        ),
    })
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
    fn jwt_like() -> impl Strategy<Value = String> {
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

    #[test]
    fn its_own_tokens_validate_and_tampered_ones_do_not() {
        let service = service();
        let principal = &service.principals.service_principals[0];
        let (token, _, exp) = service.issue(&principal.object_id, &principal.client_id).unwrap();
        assert_eq!(service.validate_access_token(&principal.object_id, &token), Ok(exp));
        assert!(service.validate_access_token("someone else", &token).is_err());
        let (rest, signature) = token.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" };
        let tampered = format!("{rest}.{flipped}{}", &signature[1..]);
        assert!(service.validate_access_token(&principal.object_id, &tampered).is_err());
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

        /// Random tokens at the gateway: refused, no panic.
        #[test]
        fn random_tokens_are_refused(token in prop_oneof![jwt_like(), ".{0,300}"], user in ".{0,40}") {
            let service = service();
            prop_assert!(service.validate_access_token(&user, &token).is_err());
        }

        /// Random admin bodies, as JSON: applied or refused, no panic.
        #[test]
        fn random_fault_settings_never_panic(status: u64, fail_next: u64, latency_ms: u64, retry_after: Option<u64>, stop: bool) {
            let faults = FaultState::default();
            let _ = faults.apply(&json!({"status": status, "fail_next": fail_next, "latency_ms": latency_ms, "retry_after": retry_after, "stop_answering": stop, "fail_reauth": fail_next}));
            let _ = faults.plan();
            let _ = faults.take_reauth_failure();
        }
    }
}
