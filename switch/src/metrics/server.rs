//! The HTTP server of `node.metrics`: `GET /metrics` (Prometheus text), `GET /api/v1/state`
//! (the [`NodeState`] JSON), `GET /` (the web view). HTTP/1.1 only, GET and HEAD only.
//!
//! Invariants: it runs as tasks of the control plane's tokio runtime, never on a data-plane
//! thread; at most [`MAX_CONNECTIONS`] connections are served at once (more wait in the
//! listen backlog); a request's head is bounded ([`MAX_HEAD_BYTES`]) and must arrive within
//! [`HEAD_TIMEOUT`]; a connection lives at most [`CONNECTION_LIFETIME`]; request bodies are
//! never read. Snapshots are taken on the blocking pool.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{encode_openmetrics, encode_prometheus, NodeState};

/// Where the server takes its snapshots ([`super::StateSource::state`] for a running node).
type Snapshots = Arc<dyn Fn() -> NodeState + Send + Sync>;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time a client has to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection is kept (a browser's keep-alive connection is closed then, and it opens
/// another): an idle client cannot hold a slot for ever.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// The web view, embedded in the binary.
const INDEX_HTML: &str = include_str!("index.html");

/// Content type of the Prometheus text format 0.0.4.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text 1.0.
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// node.metrics: the address could not be listened on.
#[derive(Debug, thiserror::Error)]
#[error("node.metrics: cannot listen on {addr}: {source}")]
pub struct ServerError {
    /// The address.
    addr: SocketAddr,
    /// Why.
    source: std::io::Error,
}

/// Listens on `addr` (called at start, so a taken address stops the daemon with a message
/// naming `node.metrics`). Must run inside a tokio runtime.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(TcpListener::from_std)
        .map_err(|source| ServerError { addr, source })?;
    Ok(listener)
}

/// Serves `listener` until the task is dropped or aborted; `state` takes a snapshot (it may
/// block: it is called on the blocking pool).
pub async fn serve(listener: TcpListener, state: impl Fn() -> NodeState + Send + Sync + 'static) {
    let source: Snapshots = Arc::new(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: wait a little.
                tracing::debug!("metrics server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let source = Arc::clone(&source);
                async move { Ok::<_, Infallible>(respond(req, source).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            // A connection past its lifetime is dropped (closed); an error is the client's.
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                tracing::debug!("metrics server: connection: {e}");
            }
            drop(slot);
        });
    }
}

/// A snapshot, taken on the blocking pool (the pod lock may be held for a while).
async fn snapshot(source: Snapshots) -> Option<NodeState> {
    tokio::task::spawn_blocking(move || source()).await.ok()
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The answer to one request.
async fn respond(req: Request<Incoming>, source: Snapshots) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/metrics" => {
            let openmetrics = req
                .headers()
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            match snapshot(source).await {
                Some(s) if openmetrics => {
                    reply(StatusCode::OK, OPENMETRICS_TEXT, encode_openmetrics(s))
                }
                Some(s) => reply(StatusCode::OK, PROMETHEUS_TEXT, encode_prometheus(s)),
                None => unavailable(),
            }
        }
        "/api/v1/state" => match snapshot(source).await {
            Some(s) => match serde_json::to_vec(&s) {
                Ok(body) => reply(StatusCode::OK, "application/json", body),
                Err(_) => unavailable(),
            },
            None => unavailable(),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /, /metrics or /api/v1/state\n",
        ),
    }
}

fn unavailable() -> Response<Full<Bytes>> {
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/plain; charset=utf-8",
        "the node's state could not be read\n",
    )
}
