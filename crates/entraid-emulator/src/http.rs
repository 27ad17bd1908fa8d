//! What the two HTTP endpoints (the token service and the admin endpoint) share: serving
//! one HTTP/1.1 connection with a header timeout, reading a request body within bounds of
//! size and time, and JSON replies.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::serve::Shutdown;

/// How long the token service and the admin endpoint wait for a request's headers (a
/// client trickling them would hold its connection forever). hyper's own default once it
/// has a timer; it also closes a keep-alive connection idle this long, as servers do.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

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

/// What both endpoints answer.
pub(crate) type Reply = Response<Full<Bytes>>;

/// A JSON reply with this status.
pub(crate) fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

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
pub(crate) async fn read_body(request: Request<Incoming>) -> Result<Bytes, Reply> {
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

/// One HTTP/1.1 connection, with a timeout on the request headers, until it ends or the
/// emulator stops. (Bodies are bounded in size and time by [`read_body`].)
pub(crate) async fn serve_http<I, S>(io: I, handler: S, mut shutdown: Shutdown)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(io, handler);
    tokio::select! {
        _ = connection => {}
        () = shutdown.wait() => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn http_headers_that_never_finish_are_cut_at_the_header_timeout() {
        let (mut client, server) = tokio::io::duplex(4096);
        let (_stop, shutdown) = Shutdown::new();
        let handler = hyper::service::service_fn(|_request| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
        });
        let serving = tokio::spawn(serve_http(hyper_util::rt::TokioIo::new(server), handler, shutdown));
        let started = tokio::time::Instant::now();
        client
            .write_all(b"POST /faults HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(600), client.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection was closed");
        serving.await.unwrap();
        assert_eq!(started.elapsed(), HEADER_TIMEOUT);
    }
}
