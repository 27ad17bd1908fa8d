//! The admin endpoint (plain HTTP, loopback only): `POST /faults` sets faults from a JSON
//! body (read into a [`Faults`] change here, and only here), `GET /stats` shows the
//! counters.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::faults::{Faults, FaultsError, Maintenance};
use crate::http::{Reply, json_reply, read_body, serve_http};
use crate::serve::{Shutdown, serve_connections};
use crate::token_service::TokenService;

/// Serves the admin endpoint on `listener` until the emulator stops.
pub(crate) async fn serve(listener: tokio::net::TcpListener, service: Arc<TokenService>, shutdown: Shutdown) {
    serve_connections(listener, "admin", shutdown, move |socket, _, shutdown| {
        let service = service.clone();
        async move {
            let handler = hyper::service::service_fn(move |request| handle(service.clone(), request));
            serve_http(hyper_util::rt::TokioIo::new(socket), handler, shutdown).await;
        }
    })
    .await;
}

/// One request: `POST /faults` with a JSON body, `GET /stats`.
async fn handle(service: Arc<TokenService>, request: Request<Incoming>) -> Result<Reply, Infallible> {
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
            match faults_from_json(&parsed).and_then(|change| service.faults.apply(&change)) {
                Ok(faults) => {
                    tracing::info!(?faults, "faults set");
                    json_reply(
                        StatusCode::OK,
                        &json!({"fail_next": faults.fail_next, "status": faults.status, "latency_ms": faults.latency.as_millis() as u64, "stop_answering": faults.stop_answering}),
                    )
                }
                Err(e) => json_reply(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
            }
        }
        _ => json_reply(
            StatusCode::NOT_FOUND,
            &json!({"error": "use GET /stats or POST /faults"}),
        ),
    })
}

/// A `POST /faults` body as a [`Faults`] change: any of `fail_next`, `status`,
/// `retry_after`, `aadsts`, `latency_ms`, `stop_answering`, `fail_reauth`, `drop_after_auth`, `hold_handshakes_ms`, `silence_connections` (true),
/// `reject_maint_notifications`, `moving` (`{"time_s": 15, "endpoint": true}`) or `migrating` (`{"time_s": 15}`);
/// `"reset": true` clears everything first. `retry_after` and `aadsts` given as `null`
/// clear those; fields of another type than these, and other fields, are ignored.
fn faults_from_json(body: &Value) -> Result<Faults, FaultsError> {
    let Some(body) = body.as_object() else {
        return Err(FaultsError::NotAnObject);
    };
    let number = |field: &str| body.get(field).and_then(Value::as_u64);
    let count = |field: &'static str| {
        number(field)
            .map(|value| u32::try_from(value).map_err(|_| FaultsError::TooLarge { field, value }))
            .transpose()
    };
    let mut faults = if body.get("reset").and_then(Value::as_bool) == Some(true) {
        Faults::reset()
    } else {
        Faults::new()
    };
    if let Some(n) = count("fail_next")? {
        faults = faults.fail_next(n);
    }
    if let Some(n) = count("fail_reauth")? {
        faults = faults.fail_reauth(n);
    }
    if let Some(status) = number("status") {
        faults = faults.status(u16::try_from(status).map_err(|_| FaultsError::Status { status })?);
    }
    if body.contains_key("retry_after") {
        faults = faults.retry_after(number("retry_after"));
    }
    if body.contains_key("aadsts") {
        faults = faults.aadsts(number("aadsts"));
    }
    if let Some(ms) = number("latency_ms") {
        faults = faults.latency(Duration::from_millis(ms));
    }
    if let Some(stop) = body.get("stop_answering").and_then(Value::as_bool) {
        faults = faults.stop_answering(stop);
    }
    if let Some(drop) = body.get("drop_after_auth").and_then(Value::as_bool) {
        faults = faults.drop_after_auth(drop);
    }
    if let Some(ms) = number("hold_handshakes_ms") {
        faults = faults.hold_handshakes(Duration::from_millis(ms));
    }
    if body.get("silence_connections").and_then(Value::as_bool) == Some(true) {
        faults = faults.silence_connections();
    }
    if let Some(reject) = body.get("reject_maint_notifications").and_then(Value::as_bool) {
        faults = faults.reject_maint_notifications(reject);
    }
    let seconds = |object: &Value| Duration::from_secs(object.get("time_s").and_then(Value::as_u64).unwrap_or(15));
    if let Some(moving) = body.get("moving") {
        faults = faults.maintenance(Maintenance::Moving {
            time: seconds(moving),
            endpoint: moving.get("endpoint").and_then(Value::as_bool).unwrap_or(true),
        });
    } else if let Some(migrating) = body.get("migrating") {
        faults = faults.maintenance(Maintenance::Migrating {
            time: seconds(migrating),
        });
    }
    Ok(faults)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::faults::FaultState;

    #[test]
    fn the_json_fields_are_the_typed_settings() {
        let body = json!({"reset": true, "fail_next": 5, "status": 429, "retry_after": 2, "aadsts": null, "latency_ms": 1500, "stop_answering": false, "fail_reauth": 1, "drop_after_auth": true, "hold_handshakes_ms": 250});
        let expected = Faults::reset()
            .fail_next(5)
            .status(429)
            .retry_after(Some(2))
            .aadsts(None)
            .latency(Duration::from_millis(1500))
            .stop_answering(false)
            .fail_reauth(1)
            .drop_after_auth(true)
            .hold_handshakes(Duration::from_millis(250));
        assert_eq!(faults_from_json(&body), Ok(expected));
        assert_eq!(faults_from_json(&json!({})), Ok(Faults::new()));
        assert_eq!(faults_from_json(&Value::Null), Err(FaultsError::NotAnObject));
        assert_eq!(
            faults_from_json(&json!({"status": 70_000})),
            Err(FaultsError::Status { status: 70_000 })
        );
        assert_eq!(
            faults_from_json(&json!({"fail_next": 1u64 << 40})),
            Err(FaultsError::TooLarge {
                field: "fail_next",
                value: 1 << 40
            })
        );
    }

    proptest! {
        /// Random admin bodies, as JSON: applied or refused, no panic.
        #[test]
        fn random_fault_settings_never_panic(status: u64, fail_next: u64, latency_ms: u64, retry_after: Option<u64>, stop: bool) {
            let faults = FaultState::default();
            let body = json!({"status": status, "fail_next": fail_next, "latency_ms": latency_ms, "retry_after": retry_after, "stop_answering": stop, "fail_reauth": fail_next});
            let _ = faults_from_json(&body).and_then(|change| faults.apply(&change));
            let _ = faults.plan();
            let _ = faults.take_reauth_failure();
        }
    }
}
