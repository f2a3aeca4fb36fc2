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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// A server of the sample state on its own thread; its address.
    fn server() -> SocketAddr {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                serve(listener, super::super::tests::sample).await;
            });
        });
        rx.recv().expect("address")
    }

    /// Sends `request` on a new connection and reads the answer until the server closes it.
    fn ask(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    }

    #[test]
    fn routes_methods_and_content_types() {
        let addr = server();
        let metrics = ask(addr, &get("/metrics"));
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains(PROMETHEUS_TEXT), "{metrics}");
        assert!(metrics.contains("podswitch_pod_rx_packets_total{pod=\"web\"} 10"));
        let open = ask(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n",
        );
        assert!(
            open.contains(OPENMETRICS_TEXT) && open.ends_with("# EOF\n"),
            "{open}"
        );
        let state = ask(addr, &get("/api/v1/state"));
        assert!(state.contains("application/json"), "{state}");
        let body = state
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["pods"][0]["name"], "web");
        let page = ask(addr, &get("/"));
        assert!(
            page.contains("text/html") && page.contains("/api/v1/state"),
            "{page}"
        );
        assert!(ask(addr, &get("/etc/passwd")).starts_with("HTTP/1.1 404"));
        let post = ask(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(
            post.to_ascii_lowercase().contains("allow: get, head"),
            "{post}"
        );
        let head = ask(
            addr,
            "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body for HEAD: {head}");
        // A head larger than the bound is refused, not read without end.
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES * 2)
        );
        let refused = ask(addr, &huge);
        assert!(
            refused.is_empty() || refused.starts_with("HTTP/1.1 431"),
            "{refused}"
        );
    }

    #[test]
    fn a_taken_address_names_node_metrics() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _runtime = rt.enter();
        let e = bind(addr).expect_err("taken").to_string();
        assert!(
            e.starts_with(&format!("node.metrics: cannot listen on {addr}: ")),
            "{e}"
        );
    }

    #[test]
    fn connections_beyond_the_bound_wait_for_a_free_slot() {
        let addr = server();
        // Every slot held by a client that says nothing.
        let mut idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut late = TcpStream::connect(addr).expect("connect (listen backlog)");
        late.write_all(get("/metrics").as_bytes()).expect("write");
        late.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        assert!(
            late.read(&mut buf).is_err(),
            "answered while every slot was taken"
        );
        // One idle client leaves: the waiting request is served.
        drop(idle.pop());
        late.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut out = String::new();
        late.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert_eq!(
            idle.len(),
            MAX_CONNECTIONS - 1,
            "the others still hold theirs"
        );
    }
}
