//! The control socket's server: binds the socket, accepts connections into a bounded number
//! of slots (`slots.rs`), reads request lines up to [`MAX_LINE`], hands each request to a
//! [`ControlHandler`] (the node's dispatch, `dispatch.rs`) on tokio's blocking pool and writes
//! its response line; a capture's connection goes on as a stream (`capture.rs`).
//!
//! Invariants ([`ControlSocket`], [`ControlSocket::serve`]):
//! - at most one live server per socket path: binding fails if another server answers there,
//!   and only a socket nobody answers on (left by a crashed run) is replaced;
//! - the socket is mode 0600 (connecting needs write permission: only its owner may control
//!   the node), in a directory created 0700 when missing;
//! - every request line gets exactly one response line, also a malformed one
//!   ([`Response::Error`], the connection stays open); blank lines are ignored; a line longer
//!   than [`MAX_LINE`] (16 MiB; a service's at most 6552 backends take some 150 KiB) gets an error
//!   response naming the limit and the connection is closed; lines past 64 KiB are read
//!   two at a time (`LARGE_AT_ONCE`; small ones never wait for them);
//! - bounded ([`Limits`]): at most 128 connections at once, each closed after 30 s without a
//!   complete request, so a flood of clients costs bounded memory and descriptors; when all are
//!   taken, the connection that has waited longest for a request gives its slot up to the new
//!   one (it is told why and closed, see `slots.rs`), so idle or leaked connections never lock
//!   the CLI or the CNI plugin out; only when every connection is inside a request is one more
//!   told so and closed at once;
//! - the one exception, a capture that starts ([`Request::Capture`]): its response line is
//!   followed by the capture's binary stream (see [`CaptureSpec`]) and the connection closes
//!   after it; copies that wait are looked for every few milliseconds (the data plane never
//!   wakes the server), and a client gone ends the capture;
//! - handlers run on tokio's blocking pool (they block on netlink work), so a slow request does
//!   not hold up other connections;
//! - the socket file is removed when the server stops (shutdown, error or drop), unless another
//!   file has replaced it meanwhile.

use std::future::Future;
use std::io::ErrorKind as IoErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::capture::{stream_capture, CaptureSource};
use super::protocol::{CaptureSpec, Request, Response, MAX_LINE};
use super::slots;
use crate::node::make_parent;

/// What the server calls for each request: implemented for the node in `dispatch.rs` (and by
/// tests' fakes), so the server itself does not depend on how the node is built. Called on a
/// blocking thread: it may block.
pub trait ControlHandler: Send + Sync + 'static {
    /// Carries out `req`. Failures are reported as [`Response::Error`].
    fn handle(&self, req: Request) -> Response;

    /// Starts the capture `spec` (a [`Request::Capture`]); the response if it cannot.
    fn capture(&self, spec: CaptureSpec) -> Result<Box<dyn CaptureSource>, Box<Response>> {
        let _ = spec;
        Err(Box::new(Response::error("this server does not capture")))
    }
}

/// A bound control socket, not yet serving. Binding first lets `podswitch run` refuse to start
/// (before touching any pod) when another instance owns the socket. Dropping it removes the
/// socket file.
#[derive(Debug)]
pub struct ControlSocket {
    listener: Option<std::os::unix::net::UnixListener>,
    file: SocketFile,
    limits: Limits,
}

/// What one client, or many, may hold of the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once; one more is told so and closed.
    pub(crate) connections: usize,
    /// A connection that sends no complete request for this long is closed.
    pub(crate) idle: Duration,
}

impl Limits {
    /// The daemon's: far more than the CLI, a CNI plugin and scripts use at once, few enough
    /// that a flood of clients costs a bounded number of descriptors and blocking-pool
    /// threads (each connection's buffer grows only with the line it is sent, at most
    /// [`MAX_LINE`]). A new connection when all are taken takes the slot of the one that has
    /// waited longest for a request (`slots.rs`).
    pub(crate) const DEFAULT: Limits = Limits {
        connections: 128,
        idle: Duration::from_secs(30),
    };
}

/// The socket file, removed on drop if it is still the one we bound.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), "removing control socket: {e}");
                }
            }
            // Gone already, or replaced by someone else's file: leave it.
            _ => {}
        }
    }
}

fn io_context(e: std::io::Error, what: String) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl ControlSocket {
    /// Binds the control socket at `path`: creates the parent directory if missing (0700) and
    /// under podswitch's own `/run/podswitch` (elsewhere it must exist: a mistyped path is
    /// refused, not made), refuses if another server answers on `path` ([`IoErrorKind::AddrInUse`]) or if `path`
    /// exists and is not a socket, replaces a stale socket, binds and sets mode 0600. Needs no
    /// runtime.
    pub fn bind(path: &Path) -> std::io::Result<ControlSocket> {
        let shown = path.display();
        make_parent(path, Path::new(crate::node::spec::CONTROL_DIR))?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(std::io::Error::new(
                            IoErrorKind::AddrInUse,
                            format!("control socket {shown} is in use by another podswitch"),
                        ));
                    }
                    Err(e) if e.kind() == IoErrorKind::ConnectionRefused => {
                        tracing::info!(path = %shown, "removing stale control socket");
                        std::fs::remove_file(path).map_err(|e| {
                            io_context(e, format!("removing stale control socket {shown}"))
                        })?;
                    }
                    Err(e) if e.kind() == IoErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io_context(
                            e,
                            format!("checking whether control socket {shown} is in use"),
                        ));
                    }
                }
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    IoErrorKind::AlreadyExists,
                    format!("{shown} exists and is not a socket; not replacing it"),
                ));
            }
            Err(e) if e.kind() == IoErrorKind::NotFound => {}
            Err(e) => return Err(io_context(e, format!("checking {shown}"))),
        }
        let listener = std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| io_context(e, format!("binding control socket {shown}")))?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| io_context(e, format!("checking control socket {shown}")))?;
        let file = SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_context(e, format!("setting mode 0600 on {shown}")))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_context(e, format!("control socket {shown}")))?;
        Ok(ControlSocket {
            listener: Some(listener),
            file,
            limits: Limits::DEFAULT,
        })
    }

    /// Other limits than [`Limits::DEFAULT`].
    #[cfg(test)]
    pub(crate) fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The socket path.
    pub(crate) fn path(&self) -> &Path {
        &self.file.path
    }

    /// The socket's file, to be removed when the returned value drops instead of when serving
    /// ends: a daemon removes it last, after its pods (a client that finds no socket finds
    /// no node).
    pub fn keep_file(&mut self) -> SocketFile {
        let disarmed = SocketFile {
            path: self.file.path.clone(),
            // No file has these: the one left here removes nothing.
            dev: u64::MAX,
            ino: u64::MAX,
        };
        std::mem::replace(&mut self.file, disarmed)
    }

    /// Serves connections until `shutdown` completes, then stops accepting, closes open
    /// connections (a request in progress finishes, its response is dropped) and removes the
    /// socket file. Must run inside a tokio runtime.
    pub async fn serve(
        mut self,
        handler: Arc<dyn ControlHandler>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let shown = self.path().display().to_string();
        let std_listener = self.listener.take().ok_or_else(|| {
            std::io::Error::other(format!("control socket {shown} is already served"))
        })?;
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .map_err(|e| io_context(e, format!("control socket {shown}")))?;
        let mut connections = tokio::task::JoinSet::new();
        let slots = slots::Slots::new(self.limits.connections);
        let large = Arc::new(tokio::sync::Semaphore::new(slots::LARGE_AT_ONCE));
        let idle = self.limits.idle;
        tokio::pin!(shutdown);
        tracing::info!(path = %self.path().display(), "control socket listening");
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => match slots.take() {
                        Some(slot) => {
                            let (handler, large) = (handler.clone(), Arc::clone(&large));
                            let limit = self.limits.connections;
                            connections.spawn(async move {
                                serve_connection(stream, handler, idle, &slot, limit, &large)
                                    .await;
                            });
                            // Lets a connection told to make room close before the next accept.
                            tokio::task::yield_now().await;
                        }
                        None => refuse(&stream, self.limits.connections),
                    },
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!("control socket: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        connections.shutdown().await;
        tracing::info!(path = %self.path().display(), "control socket closed");
        Ok(())
        // `self` drops here: the socket file goes.
    }
}

/// Binds `path` ([`ControlSocket::bind`]) and serves it ([`ControlSocket::serve`]) until
/// `shutdown` completes.
#[cfg(test)]
pub(crate) async fn serve(
    path: &Path,
    handler: Arc<dyn ControlHandler>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    ControlSocket::bind(path)?.serve(handler, shutdown).await
}

/// Tells a client over the connection limit why it is closed, without waiting for it (the
/// line fits in a new connection's empty socket buffer): no task, no descriptor kept.
fn refuse(stream: &tokio::net::UnixStream, limit: usize) {
    let response = Response::error(format!(
        "the node serves {limit} control connections at once; try again later"
    ));
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = stream.try_write(&out);
}

/// Serves one connection: one response line per request line, until EOF, an error, an
/// overlong line, `idle` without a complete request, or its slot taken by a new connection
/// while it waits for a request (one of `connections`).
async fn serve_connection(
    stream: tokio::net::UnixStream,
    handler: Arc<dyn ControlHandler>,
    idle: Duration,
    slot: &slots::Slot,
    connections: usize,
    large: &Arc<tokio::sync::Semaphore>,
) {
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    loop {
        // An overlong request's buffer is not kept for the connection's life.
        if line.capacity() > 8 * 1024 {
            line = Vec::new();
        }
        line.clear();
        slot.waiting();
        let got = tokio::select! {
            got = tokio::time::timeout(idle, slots::read_request(&mut read, &mut line, large)) => got,
            () = slot.evicted() => {
                last_words(&mut write, format!("the node serves {connections} control connections at once and a new one came while this one had waited longest for a request; closing it")).await;
                return;
            }
        };
        slot.busy();
        // A large line's permit is held until it is handled (its buffer goes at the next turn).
        let (n, _large) = match got {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::debug!("control connection: read: {e}");
                return;
            }
            Err(_) => {
                last_words(
                    &mut write,
                    format!("no request for {idle:?}; closing the connection"),
                )
                .await;
                return;
            }
        };
        if n == 0 {
            return; // EOF
        }
        let too_long = line.last() != Some(&b'\n') && line.len() > MAX_LINE;
        let response = if too_long {
            Response::error(format!(
                "request longer than the control socket's limit of {} MiB ({MAX_LINE} bytes); closing the connection",
                MAX_LINE >> 20
            ))
        } else {
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Request>(text) {
                Ok(Request::Capture(spec)) => match start_capture(&handler, spec.clone()).await {
                    Ok(source) => {
                        // The connection carries the capture until it ends, then closes.
                        stream_capture(&mut read, &mut write, source, &spec).await;
                        return;
                    }
                    Err(response) => *response,
                },
                Ok(req) => run_handler(&handler, req).await,
                Err(e) => Response::error(format!("malformed request: {e}")),
            }
        };
        let mut out = match serde_json::to_vec(&response) {
            Ok(out) => out,
            Err(e) => {
                let fallback = Response::error(format!("cannot encode the response: {e}"));
                serde_json::to_vec(&fallback).unwrap_or_default()
            }
        };
        out.push(b'\n');
        if let Err(e) = write.write_all(&out).await {
            tracing::debug!("control connection: write: {e}");
            return;
        }
        if too_long {
            return;
        }
    }
}

/// Writes `message` as an error line, waiting at most a second for the client to take it.
async fn last_words(write: &mut tokio::net::unix::OwnedWriteHalf, message: String) {
    let mut out = serde_json::to_vec(&Response::error(message)).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), write.write_all(&out)).await;
}

async fn run_handler(handler: &Arc<dyn ControlHandler>, req: Request) -> Response {
    let handler = handler.clone();
    match tokio::task::spawn_blocking(move || handler.handle(req)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!("control request handler failed: {e}");
            Response::error("internal error: the request handler panicked (see the node's log)")
        }
    }
}

async fn start_capture(
    handler: &Arc<dyn ControlHandler>,
    spec: CaptureSpec,
) -> Result<Box<dyn CaptureSource>, Box<Response>> {
    let handler = handler.clone();
    match tokio::task::spawn_blocking(move || handler.capture(spec)).await {
        Ok(started) => started,
        Err(e) => {
            tracing::error!("control capture handler failed: {e}");
            Err(Box::new(Response::error(
                "internal error: the capture handler panicked (see the node's log)",
            )))
        }
    }
}
