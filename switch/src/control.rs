//! The runtime API of a node: JSON lines on a Unix socket (`podswitch pod add|del|list`,
//! `peer ...`, `service add|del|list`, `conntrack`, `fdb`, `status`, `capture` talk to `podswitch run`
//! through it).
//!
//! Protocol: the client writes one [`Request`] object per line and reads one [`Response`]
//! object per line, in order; a connection may carry many requests. Requests are tagged by
//! `op`, responses by `result`:
//!
//! ```text
//! > {"op":"pod_add","name":"web","netns":"web","ip":"10.244.1.10"}
//! < {"result":"pod","data":{"spec":{"name":"web","netns":"web","ip":"10.244.1.10"},...}}
//! > {"op":"status"}
//! < {"result":"status","data":{"node":"node-a","pods":1,"rx":0,...}}
//! > {"op":"pod_del","name":"nope"}
//! < {"result":"error","data":{"message":"no pod named \"nope\""}}
//! ```
//!
//! Invariants of the server ([`ControlSocket`], [`ControlSocket::serve`]):
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
use std::io::{BufRead, BufReader, ErrorKind as IoErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::node::{
    FdbEntry, FlowStatus, PeerSpec, PeerStatus, PodSpec, PodStatus, ServiceSpec, ServiceStatus,
};

#[cfg(test)]
mod leak_tests;
mod peer;
mod slots;
mod upgrade_client;

pub use peer::{log_since, log_size, peer_pid, process_alive, server_pid, stderr_of};
pub use upgrade_client::upgrade;

/// Longest request line the server reads, in bytes without the newline: 16 MiB (a service's
/// at most 6552 backends take some 150 KiB). A connection's buffer grows only as its line arrives.
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Longest response line the client reads, in bytes (a full MAC table fits many times).
pub(crate) const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A request to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Add a pod (CNI ADD).
    PodAdd(PodSpec),
    /// Remove a pod (CNI DEL).
    PodDel {
        /// Pod name.
        name: String,
    },
    /// Remove the pod attached as `ifname` of container `container_id` (CNI DEL knows only
    /// those). A pod the node does not know is an error of kind [`ErrorKind::NotFound`].
    PodDelByContainer {
        /// The container runtime's ID (the pod's `container_id`).
        container_id: String,
        /// The pod's interface name (default `eth0`).
        #[serde(default = "crate::node::spec::default_ifname")]
        ifname: String,
    },
    /// The node's pod network: what a CNI plugin fills an empty IPAM range with and returns.
    NodeInfo,
    /// List the pods.
    PodList,
    /// Dump the MAC table.
    Fdb,
    /// Node-wide counters.
    Status,
    /// Replace the running daemon's binary without stopping its pods: the daemon execs
    /// `binary` (default: the one it was started from) in its own process, handing over the
    /// pods' TAPs and the tracked flows.
    Upgrade {
        /// The new binary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<PathBuf>,
    },
    /// Add a peer node (its pod CIDR becomes reachable through the tunnel).
    PeerAdd(PeerSpec),
    /// Remove a peer node.
    PeerDel {
        /// Peer node name.
        name: String,
    },
    /// List the peer nodes.
    PeerList,
    /// Add a service, or replace the one of the same name.
    ServiceAdd(ServiceSpec),
    /// Remove a service. One the node does not know is an error of kind
    /// [`ErrorKind::NotFound`].
    ServiceDel {
        /// Service name.
        name: String,
    },
    /// List the services ([`Response::Services`]).
    ServiceList,
    /// List the flows connection tracking follows ([`Response::Flows`]).
    Conntrack,
    /// Copy the frames of a pod or a peer: answered by [`Response::Capture`], then a stream
    /// of copies on the same connection until the capture ends (see [`CaptureSpec`]).
    Capture(CaptureSpec),
}

/// What `podswitch capture` asks for: the frames one pod's port receives and sends, or the
/// inner frames exchanged with one peer through the tunnel.
///
/// The stream that follows [`Response::Capture`] is binary: frames, each a tag byte and its
/// body, the last one an end. Tag [`CAPTURE_RECORD`]: a pcap record (16-byte header, then as
/// many bytes as its captured length says, at most the snap length). Tag [`CAPTURE_END`]: a
/// [`CaptureEnd`] as one JSON line; the server closes the connection after it. The client
/// stops a capture by shutting down its side for writing (the server then sends the end), or
/// by closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// The pod whose port to capture on: what it sends and what the switch hands it.
    #[arg(long, conflicts_with = "peer")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The peer node whose tunnel traffic to capture, decapsulated: the inner Ethernet frames
    /// sent to it (after segmentation) and received from it.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Bytes kept of each frame (1 to 262144).
    #[arg(long, default_value_t = crate::pcap::MAX_SNAPLEN)]
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
    /// Stop after this many frames.
    #[arg(long, short = 'c')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

fn default_snaplen() -> u32 {
    crate::pcap::MAX_SNAPLEN
}

/// Tag of a capture stream frame holding one pcap record.
pub const CAPTURE_RECORD: u8 = b'P';
/// Tag of the last frame of a capture stream: a [`CaptureEnd`] JSON line.
pub const CAPTURE_END: u8 = b'E';

/// How a capture ended, as the server tells it last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureEnd {
    /// Copies sent.
    pub captured: u64,
    /// Copies dropped because the reader fell behind.
    pub dropped: u64,
    /// Why it ended (the count was reached, the client stopped it, the pod is gone...).
    pub reason: String,
}

/// A running capture as the server streams it (see [`ControlHandler::capture`]).
pub trait CaptureSource: Send {
    /// Appends the copies waiting, at most `max`, each as a [`CAPTURE_RECORD`] frame, to
    /// `out`; returns how many.
    fn drain(&mut self, out: &mut Vec<u8>, max: u64) -> u64;
    /// Copies dropped so far because the reader fell behind.
    fn dropped(&self) -> u64;
    /// Why no more copies will come (the pod or peer is gone), once none will.
    fn ended(&self) -> Option<String>;
}

/// The node's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "data", rename_all = "snake_case")]
pub enum Response {
    /// Done (pod removed).
    Ok,
    /// One pod (the one added).
    Pod(PodStatus),
    /// Every pod.
    Pods(Vec<PodStatus>),
    /// The MAC table.
    Fdb(Vec<FdbEntry>),
    /// The peer nodes.
    Peers(Vec<PeerStatus>),
    /// The services, by name.
    Services(Vec<ServiceStatus>),
    /// The tracked flows through services.
    Flows(Vec<FlowStatus>),
    /// Node-wide counters: `rx = forwarded + delivered_locally + dropped`.
    Status {
        /// Node name.
        node: String,
        /// Number of pods.
        pods: usize,
        /// Frames received on every port.
        rx: u64,
        /// Frames forwarded to another port or peer.
        forwarded: u64,
        /// Frames answered by the switch itself (ARP, ping of the gateway).
        delivered_locally: u64,
        /// Frames dropped, for any reason.
        dropped: u64,
        /// Frames dropped by reason label (`"spoofed_mac"`), non-zero reasons only; empty from
        /// older nodes.
        #[serde(default)]
        drops_by_reason: std::collections::BTreeMap<String, u64>,
        /// Frames handled by each data-plane thread.
        #[serde(default)]
        workers: Vec<u64>,
        /// Data-plane stalls (rounds over 100 ms), all workers together.
        #[serde(default)]
        stalls: u64,
        /// The node's lease and the store's health (with `[cluster]`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<crate::cluster::ClusterStatus>,
    },
    /// An upgrade is under way ([`Request::Upgrade`]): the daemon execs `binary` once this
    /// response is sent.
    Upgrading {
        /// The new binary.
        binary: PathBuf,
        /// Its `--version`.
        version: String,
    },
    /// The node's pod network ([`Request::NodeInfo`]).
    Node {
        /// Node name.
        name: String,
        /// The node's pod CIDR.
        pod_cidr: ipnet::Ipv4Net,
        /// The pods' default gateway.
        gateway: std::net::Ipv4Addr,
        /// The pods' MTU.
        mtu: u16,
    },
    /// A capture started ([`Request::Capture`]); its stream follows this line.
    Capture {
        /// Bytes kept of each frame at most.
        snaplen: u32,
        /// The pcap link type of the records (1: Ethernet).
        linktype: u32,
    },
    /// The request failed; the message says why, the kind (when there is one) what a program
    /// may act on without reading the message.
    Error {
        /// What went wrong.
        message: String,
        /// What kind of failure, for programs (absent: any other failure).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<ErrorKind>,
    },
}

/// What kind of failure an error response reports (`"not_found"`, `"refused"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such pod, peer or service (a delete of something the node does not know).
    NotFound,
    /// A rule refused the pod or peer (the message names the field).
    Refused,
    /// A kind this client does not know (sent by a newer node).
    #[serde(other)]
    Other,
}

impl Response {
    /// An error response without a kind.
    pub(crate) fn error(message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
            kind: None,
        }
    }

    /// An error response of `kind`.
    pub(crate) fn error_of(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
            kind: Some(kind),
        }
    }
}

/// What the server calls for each request. Implemented by whatever owns the node, so this
/// module does not depend on how the node is built. Called on a blocking thread: it may block.
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

/// Makes the directory of the socket `path` if it is missing and under `own` (mode 0700);
/// elsewhere a missing directory is a mistyped path, refused.
pub(crate) fn make_parent(path: &Path, own: &Path) -> std::io::Result<()> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if !parent.starts_with(own) && !parent.is_dir() {
        return Err(std::io::Error::new(
            IoErrorKind::NotFound,
            format!(
                "{}: directory {} does not exist (podswitch makes directories only under {})",
                path.display(),
                parent.display(),
                own.display()
            ),
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|e| io_context(e, format!("creating directory {}", parent.display())))
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

/// How long a capture with nothing to send waits before looking again (the data plane never
/// wakes the reader: that would cost it a system call per batch).
const CAPTURE_IDLE: Duration = Duration::from_millis(5);
/// Copies sent in one write at most.
const CAPTURE_BATCH: u64 = 256;

/// Writes the capture header, then the copies of `source` as they come, until the count is
/// reached, the client stops it (shuts its side down) or the target is gone; then the end.
/// A client gone (a failed write or read) ends it without an end. Dropping `source` stops the
/// copying in the data plane.
async fn stream_capture(
    read: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    mut source: Box<dyn CaptureSource>,
    spec: &CaptureSpec,
) {
    let header = Response::Capture {
        snaplen: spec.snaplen,
        linktype: crate::pcap::LINKTYPE_ETHERNET,
    };
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    if write.write_all(&out).await.is_err() {
        return;
    }
    let mut sent = 0u64;
    let mut scratch = [0u8; 64];
    let reason = loop {
        let left = spec.count.map_or(u64::MAX, |c| c.saturating_sub(sent));
        if left == 0 {
            break "count reached".to_string();
        }
        // Looked at before draining: what came before the end is still sent.
        let ended = source.ended();
        out.clear();
        let n = source.drain(&mut out, left.min(CAPTURE_BATCH));
        sent += n;
        if !out.is_empty() && write.write_all(&out).await.is_err() {
            return;
        }
        if let (Some(why), 0) = (&ended, n) {
            break why.clone();
        }
        let busy = n == CAPTURE_BATCH;
        tokio::select! {
            biased;
            r = read.read(&mut scratch) => match r {
                Ok(0) => break "stopped by the client".to_string(),
                Ok(_) => {} // Stray bytes: ignored.
                Err(_) => return,
            },
            () = async {
                if busy {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(CAPTURE_IDLE).await;
                }
            } => {}
        }
    };
    let end = CaptureEnd {
        captured: sent,
        dropped: source.dropped(),
        reason,
    };
    drop(source);
    out.clear();
    out.push(CAPTURE_END);
    out.extend_from_slice(&serde_json::to_vec(&end).unwrap_or_default());
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens on the socket (or it does not exist).
    #[error("cannot connect to {path} ({source}): is `podswitch run` running?")]
    NotRunning {
        /// Socket path.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The socket exists but we may not connect to it.
    #[error("cannot connect to {path}: permission denied (the socket is 0600: run as the user that runs `podswitch run`, usually root)")]
    PermissionDenied {
        /// Socket path.
        path: String,
    },
    /// Connecting, sending or receiving failed.
    #[error("talking to {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// No complete response arrived in time.
    #[error("no response from {path} within {timeout:?}: the node may be busy or stuck")]
    Timeout {
        /// Socket path.
        path: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The server closed the connection before answering.
    #[error("{path} closed the connection without answering")]
    Closed {
        /// Socket path.
        path: String,
    },
    /// The server sent something that is not a response.
    #[error("malformed response from {path}: {message}")]
    BadResponse {
        /// Socket path.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The node refused the request (a capture of an unknown pod, say); the message says why.
    #[error("{message}")]
    Failed {
        /// The node's message.
        message: String,
    },
    /// Writing the capture's output failed (other than a closed pipe, which stops it).
    #[error("writing the capture: {0}")]
    Output(std::io::Error),
}

/// Why no default control socket could be chosen ([`find_socket`]).
#[derive(Debug, thiserror::Error)]
pub enum FindSocketError {
    /// No live socket in the directory or its subdirectories: no node runs here.
    #[error("no podswitch node answers on a control socket in {dir} (or a directory in it): is `podswitch run` running?")]
    NoSocket {
        /// The directory looked in.
        dir: String,
    },
    /// Several live sockets: which node is meant must be said.
    #[error("{} nodes run here; say which with --control (or PODSWITCH_CONTROL): {}", .found.len(), .found.join(", "))]
    Many {
        /// The live sockets found.
        found: Vec<String>,
    },
}

/// The control sockets of the nodes running on this machine: every `*.sock` in the directory
/// of the default sockets (`/run/podswitch`, see
/// [`NodeSpec::control_path`](crate::node::NodeSpec::control_path)) and in the directories
/// directly inside it (a lab's, `/run/podswitch/<lab>/`) that a node listens on (a socket file
/// left by a killed daemon refuses the connection and is skipped). Sorted.
pub fn running_sockets() -> Vec<PathBuf> {
    running_sockets_in(Path::new(crate::node::spec::CONTROL_DIR))
}

fn running_sockets_in(dir: &Path) -> Vec<PathBuf> {
    let entries = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let top = entries(dir);
    let nested = top.iter().filter(|p| p.is_dir()).flat_map(|d| entries(d));
    let mut live: Vec<PathBuf> = top
        .iter()
        .cloned()
        .chain(nested)
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        .collect();
    live.sort();
    live
}

/// The control socket a client talks to: `given` if any, else the only running node's
/// ([`running_sockets`]). The one rule of the CLI and the CNI plugin.
pub fn find_socket(given: Option<PathBuf>) -> Result<PathBuf, FindSocketError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let dir = Path::new(crate::node::spec::CONTROL_DIR);
    let mut socks = running_sockets_in(dir);
    match socks.len() {
        1 => Ok(socks.remove(0)),
        0 => Err(FindSocketError::NoSocket {
            dir: dir.display().to_string(),
        }),
        _ => Err(FindSocketError::Many {
            found: socks.iter().map(|p| p.display().to_string()).collect(),
        }),
    }
}

/// Connects to the server at `path`.
fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream, ControlError> {
    let shown = path.display().to_string();
    std::os::unix::net::UnixStream::connect(path).map_err(|source| match source.kind() {
        IoErrorKind::NotFound | IoErrorKind::ConnectionRefused => ControlError::NotRunning {
            path: shown,
            source,
        },
        IoErrorKind::PermissionDenied => ControlError::PermissionDenied { path: shown },
        _ => ControlError::Io {
            path: shown,
            source,
        },
    })
}

/// Sends `req` to the server at `path` and waits for its response, blocking, for at most
/// `timeout` in total (`Duration::ZERO`: no limit).
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let shown = path.display().to_string();
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let io = |source: std::io::Error| -> ControlError {
        if matches!(
            source.kind(),
            IoErrorKind::WouldBlock | IoErrorKind::TimedOut
        ) {
            ControlError::Timeout {
                path: shown.clone(),
                timeout,
            }
        } else {
            ControlError::Io {
                path: shown.clone(),
                source,
            }
        }
    };
    let stream = connect(path)?;
    // Time left before the deadline; `Err(Timeout)` once it has passed.
    let remaining = || -> Result<Option<Duration>, ControlError> {
        match deadline {
            None => Ok(None),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(ControlError::Timeout {
                    path: shown.clone(),
                    timeout,
                }),
            },
        }
    };

    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Io {
        path: shown.clone(),
        source: std::io::Error::other(format!("cannot encode the request: {e}")),
    })?;
    line.push(b'\n');
    stream.set_write_timeout(remaining()?).map_err(io)?;
    // A server that answers before it has read the whole request (one over its limit, a
    // connection it cannot take) closes the connection: the write fails, and the answer it
    // sent first says why, so it is read before the write's error is reported.
    let write_failed = match (&stream).write_all(&line) {
        Ok(()) => None,
        Err(e)
            if matches!(
                e.kind(),
                IoErrorKind::BrokenPipe | IoErrorKind::ConnectionReset
            ) =>
        {
            Some(e)
        }
        Err(e) => return Err(io(e)),
    };
    let answer = read_answer(&stream, &shown, &remaining, &io);
    match (answer, write_failed) {
        (Ok(response), _) => Ok(response),
        (Err(_), Some(e)) => Err(io(e)),
        (Err(e), None) => Err(e),
    }
}

/// Reads one response line from `stream`, each read bounded by `remaining`.
fn read_answer(
    stream: &std::os::unix::net::UnixStream,
    shown: &str,
    remaining: &dyn Fn() -> Result<Option<Duration>, ControlError>,
    io: &dyn Fn(std::io::Error) -> ControlError,
) -> Result<Response, ControlError> {
    let mut reader = BufReader::new(stream);
    let mut response = Vec::new();
    loop {
        stream.set_read_timeout(remaining()?).map_err(io)?;
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            // A signal arrived during the read (a test harness's or a CLI's child exiting):
            // read again, as `read_line` would.
            Err(e) if e.kind() == IoErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if buf.is_empty() {
            return Err(ControlError::Closed {
                path: shown.to_string(),
            });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        if response.len() + chunk.len() > MAX_RESPONSE {
            return Err(ControlError::BadResponse {
                path: shown.to_string(),
                message: format!("longer than {MAX_RESPONSE} bytes"),
            });
        }
        response.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(done);
        reader.consume(used);
        if done {
            break;
        }
    }
    serde_json::from_slice(&response).map_err(|e| ControlError::BadResponse {
        path: shown.to_string(),
        message: e.to_string(),
    })
}

/// How often a capture client looks at its stop flag while nothing comes.
const CAPTURE_POLL: Duration = Duration::from_millis(100);
/// How long a capture client waits for the server's answer, and for its end once stopping.
const CAPTURE_WAIT: Duration = Duration::from_secs(30);

/// One frame of a capture stream.
enum CaptureFrame<'a> {
    /// A pcap record: its header and captured bytes.
    Record(&'a [u8]),
    End(CaptureEnd),
}

/// The first frame of `buf` and its length; `None` if it is not all there yet.
fn capture_frame(buf: &[u8], snaplen: u32) -> Result<Option<(CaptureFrame<'_>, usize)>, String> {
    use crate::pcap::RECORD_HEADER_LEN;
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    match tag {
        CAPTURE_RECORD => {
            let Some(header) = buf
                .get(1..1 + RECORD_HEADER_LEN)
                .and_then(|h| <&[u8; RECORD_HEADER_LEN]>::try_from(h).ok())
            else {
                return Ok(None);
            };
            let len = crate::pcap::record_captured_len(header);
            if len > snaplen {
                return Err(format!(
                    "a record of {len} bytes, over the snap length {snaplen}"
                ));
            }
            let end = 1 + RECORD_HEADER_LEN + len as usize;
            Ok(buf.get(1..end).map(|r| (CaptureFrame::Record(r), end)))
        }
        CAPTURE_END => {
            let Some(i) = buf.iter().position(|b| *b == b'\n') else {
                return Ok(None);
            };
            let end = serde_json::from_slice(&buf[1..i]).map_err(|e| e.to_string())?;
            Ok(Some((CaptureFrame::End(end), i + 1)))
        }
        _ => Err(format!("unknown capture frame tag {tag:#04x}")),
    }
}

/// Runs the capture `spec` on the server at `path`, writing a pcap file to `out`: the global
/// header, then each record as it comes, flushed whenever nothing more is waiting (a pipe
/// reader sees packets promptly). Returns the server's end once it ends the capture (count
/// reached, pod gone), or once `stop` is set (Ctrl-C) or `out` is closed (a broken pipe,
/// reason "output closed"): then the server is told to stop and its end, with the copies it
/// dropped, awaited.
pub fn capture(
    path: &Path,
    spec: &CaptureSpec,
    out: &mut dyn Write,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<CaptureEnd, ControlError> {
    let shown = path.display().to_string();
    let io = |source: std::io::Error| ControlError::Io {
        path: shown.clone(),
        source,
    };
    let bad = |message: String| ControlError::BadResponse {
        path: shown.clone(),
        message,
    };
    let stream = connect(path)?;
    let mut line = serde_json::to_vec(&Request::Capture(spec.clone())).unwrap_or_default();
    line.push(b'\n');
    stream.set_write_timeout(Some(CAPTURE_WAIT)).map_err(io)?;
    (&stream).write_all(&line).map_err(io)?;
    stream.set_read_timeout(Some(CAPTURE_POLL)).map_err(io)?;

    let started = Instant::now();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 18);
    let mut snaplen = None;
    // Set once stopping: since when, and the reason to report instead of the server's.
    let mut stopping: Option<(Instant, Option<&str>)> = None;
    let mut told = false;
    // A closed output stops the capture; any other output error fails it.
    let written = |r: std::io::Result<()>| match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == IoErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(ControlError::Output(e)),
    };
    loop {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            let Some(snap) = snaplen else {
                let Some(i) = rest.iter().position(|b| *b == b'\n') else {
                    break;
                };
                match serde_json::from_slice(&rest[..i]).map_err(|e| bad(e.to_string()))? {
                    Response::Capture { snaplen: s, .. } => {
                        snaplen = Some(s);
                        if !written(out.write_all(&crate::pcap::global_header(s)))? {
                            stopping.get_or_insert((Instant::now(), Some("output closed")));
                        }
                    }
                    Response::Error { message, .. } => {
                        return Err(ControlError::Failed { message })
                    }
                    other => return Err(bad(format!("expected a capture, got {other:?}"))),
                }
                used += i + 1;
                continue;
            };
            match capture_frame(rest, snap).map_err(&bad)? {
                None => break,
                Some((CaptureFrame::Record(record), n)) => {
                    used += n;
                    if stopping.is_none() && !written(out.write_all(record))? {
                        stopping = Some((Instant::now(), Some("output closed")));
                    }
                }
                Some((CaptureFrame::End(mut end), _)) => {
                    if let Some((_, Some(why))) = stopping {
                        end.reason = why.into();
                    }
                    if stopping.is_none() {
                        written(out.flush())?;
                    }
                    return Ok(end);
                }
            }
        }
        buf.drain(..used);
        if stopping.is_none() && !written(out.flush())? {
            stopping = Some((Instant::now(), Some("output closed")));
        }
        if stopping.is_none() && stop.load(std::sync::atomic::Ordering::Relaxed) {
            stopping = Some((Instant::now(), None));
        }
        if stopping.is_some() && !told {
            // The server answers a shut-down side with its end.
            told = true;
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        match stopping {
            Some((since, _)) if since.elapsed() > CAPTURE_WAIT => {
                return Err(ControlError::Timeout {
                    path: shown,
                    timeout: CAPTURE_WAIT,
                });
            }
            None if snaplen.is_none() && started.elapsed() > CAPTURE_WAIT => {
                return Err(ControlError::Timeout {
                    path: shown,
                    timeout: CAPTURE_WAIT,
                });
            }
            _ => {}
        }
        let old = buf.len();
        buf.resize(old + (1 << 16), 0);
        let r = (&stream).read(&mut buf[old..]);
        buf.truncate(old + *r.as_ref().unwrap_or(&0));
        match r {
            Ok(0) => return Err(ControlError::Closed { path: shown }),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    IoErrorKind::WouldBlock | IoErrorKind::TimedOut | IoErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};
    use std::thread::JoinHandle;

    use std::net::Ipv4Addr;

    use super::*;
    use crate::pipeline::PortCounts as Counters;

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "podswitch-control-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn sock(&self) -> PathBuf {
            self.0.join("node.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn running_sockets_are_the_live_ones_here_and_one_directory_down() {
        use std::os::unix::net::UnixListener;
        let dir = TempDir::new("running");
        let lab = dir.0.join("lab");
        let deep = lab.join("deeper");
        std::fs::create_dir_all(&deep).unwrap();
        let _node = UnixListener::bind(dir.0.join("node-a.sock")).unwrap();
        let _lab1 = UnixListener::bind(lab.join("node1.sock")).unwrap();
        // A killed daemon's socket file: nobody listens, connecting is refused.
        drop(UnixListener::bind(lab.join("node2.sock")).unwrap());
        assert!(lab.join("node2.sock").exists());
        // Two levels down, or not named *.sock: not a node's.
        let _deep = UnixListener::bind(deep.join("node3.sock")).unwrap();
        let _other = UnixListener::bind(dir.0.join("other.socket")).unwrap();
        std::fs::write(dir.0.join("fake.sock"), b"not a socket").unwrap();
        assert_eq!(
            running_sockets_in(&dir.0),
            vec![dir.0.join("lab/node1.sock"), dir.0.join("node-a.sock")]
        );
        assert!(running_sockets_in(&dir.0.join("missing")).is_empty());
    }

    fn web(name: &str, mac: Option<crate::node::Mac>) -> PodSpec {
        PodSpec {
            name: name.into(),
            netns: name.into(),
            ip: Some(Ipv4Addr::new(10, 244, 1, 10)),
            mac,
            container_id: None,
            ifname: "eth0".into(),
        }
    }

    fn sample_pod(name: &str) -> PodStatus {
        PodStatus {
            spec: web(name, None),
            mac: crate::node::Mac([2, 0x42, 10, 244, 1, 10]),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            port: 1,
            created_netns: true,
            counters: Counters {
                rx_frames: 3,
                rx_dropped: 1,
                ..Counters::default()
            },
            drops: [("spoofed_mac".to_string(), 1)].into(),
        }
    }

    fn web_service() -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            vip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: crate::node::ServiceProto::Tcp,
            backends: vec![
                "10.244.1.10:8080".parse().unwrap(),
                "10.244.2.10:8080".parse().unwrap(),
            ],
            affinity: None,
        }
    }

    fn sample_service() -> ServiceStatus {
        ServiceStatus {
            spec: web_service(),
            connections: vec![3, 0],
            source: crate::node::PeerSource::Etcd,
        }
    }

    fn sample_flow() -> FlowStatus {
        FlowStatus {
            proto: crate::node::ServiceProto::Tcp,
            client: "10.244.1.11:40000".parse().unwrap(),
            vip: "10.96.0.10:80".parse().unwrap(),
            backend: "10.244.2.10:8080".parse().unwrap(),
            state: "established".into(),
            age_secs: 5,
            expires_in_secs: 86395,
        }
    }

    /// A fake node. `pod_del "hold"` blocks until `pod_del "release"` arrives (to show requests
    /// run concurrently); `pod_del "panic"` panics.
    #[derive(Default)]
    struct Fake {
        gate: Mutex<bool>,
        opened: Condvar,
        calls: AtomicUsize,
    }

    impl ControlHandler for Fake {
        fn handle(&self, req: Request) -> Response {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match req {
                Request::PodAdd(spec) => match spec.mac {
                    Some(m) if m.0[0] & 1 != 0 => Response::error("pod.mac: group"),
                    _ => Response::Pod(sample_pod(&spec.name)),
                },
                Request::PodDel { name } if name == "hold" => {
                    let mut open = self.gate.lock().unwrap();
                    while !*open {
                        open = self.opened.wait(open).unwrap();
                    }
                    Response::Ok
                }
                Request::PodDel { name } if name == "release" => {
                    *self.gate.lock().unwrap() = true;
                    self.opened.notify_all();
                    Response::Ok
                }
                Request::PodDel { name } if name == "panic" => panic!("fake handler panic"),
                Request::PodDel { .. } => Response::Ok,
                Request::PodDelByContainer { container_id, .. } if container_id == "known" => {
                    Response::Ok
                }
                Request::PodDelByContainer {
                    container_id,
                    ifname,
                } => Response::error_of(
                    ErrorKind::NotFound,
                    format!("no pod with container ID {container_id:?} and interface {ifname:?}"),
                ),
                Request::NodeInfo => Response::Node {
                    name: "node-a".into(),
                    pod_cidr: "10.244.1.0/24".parse().unwrap(),
                    gateway: Ipv4Addr::new(10, 244, 1, 1),
                    mtu: 1450,
                },
                Request::PodList => Response::Pods(vec![sample_pod("a"), sample_pod("b")]),
                Request::PeerAdd(_) | Request::PeerDel { .. } => Response::Ok,
                Request::PeerList => Response::Peers(Vec::new()),
                Request::Upgrade { binary } => Response::Upgrading {
                    binary: binary.unwrap_or_else(|| "/usr/local/bin/podswitch".into()),
                    version: "podswitch 0.1.0".into(),
                },
                Request::ServiceAdd(spec) if spec.port == 0 => Response::error_of(
                    ErrorKind::Refused,
                    "service.port: 0 is not between 1 and 65535 (a TCP or UDP port)",
                ),
                Request::ServiceAdd(_) => Response::Ok,
                Request::ServiceDel { name } if name == "web" => Response::Ok,
                Request::ServiceDel { name } => {
                    Response::error_of(ErrorKind::NotFound, format!("no service named {name:?}"))
                }
                Request::ServiceList => Response::Services(vec![sample_service()]),
                Request::Conntrack => Response::Flows(vec![sample_flow()]),
                Request::Capture(_) => Response::error("fake: no capture"),
                Request::Fdb => Response::Fdb(vec![FdbEntry {
                    mac: crate::node::Mac([2, 0x42, 10, 244, 1, 10]),
                    port: 1,
                    port_name: Some("a".into()),
                    is_static: true,
                    age_secs: 0,
                }]),
                Request::Status => Response::Status {
                    node: "node-a".into(),
                    pods: 2,
                    rx: 10,
                    forwarded: 7,
                    delivered_locally: 2,
                    dropped: 1,
                    drops_by_reason: [("malformed".to_string(), 1)].into(),
                    workers: vec![9, 1],
                    stalls: 0,
                    cluster: None,
                },
            }
        }
    }

    /// A server on its own thread (current-thread runtime), stopped on `stop()`.
    struct Server {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<JoinHandle<std::io::Result<()>>>,
    }

    impl Server {
        fn start(path: &Path, handler: Arc<dyn ControlHandler>) -> Server {
            Self::start_with(path, handler, Limits::DEFAULT)
        }

        fn start_with(path: &Path, handler: Arc<dyn ControlHandler>, limits: Limits) -> Server {
            let socket = ControlSocket::bind(path).unwrap().with_limits(limits);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(socket.serve(handler, async {
                    let _ = stopped.await;
                }))
            });
            Server {
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        fn stop(mut self) -> std::io::Result<()> {
            self.shutdown()
        }

        fn shutdown(&mut self) -> std::io::Result<()> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            match self.thread.take() {
                Some(t) => t.join().expect("server thread panicked"),
                None => Ok(()),
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.shutdown();
        }
    }

    const T: Duration = Duration::from_secs(10);

    /// Sends raw bytes on a connection and reads one response line.
    fn raw_exchange(
        stream: &std::os::unix::net::UnixStream,
        reader: &mut BufReader<&std::os::unix::net::UnixStream>,
        bytes: &[u8],
    ) -> Response {
        let mut w = stream;
        w.write_all(bytes).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn raw_connect(path: &Path) -> std::os::unix::net::UnixStream {
        let s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.set_write_timeout(Some(T)).unwrap();
        s
    }

    #[test]
    fn wire_format_is_tagged_json() {
        let req = Request::PodAdd(web("web", None));
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"op":"pod_add","name":"web","netns":"web","ip":"10.244.1.10"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::PodList).unwrap(),
            r#"{"op":"pod_list"}"#
        );
        let parsed: Request = serde_json::from_str(r#"{"op":"pod_del","name":"web"}"#).unwrap();
        assert_eq!(parsed, Request::PodDel { name: "web".into() });
        assert_eq!(
            serde_json::to_string(&Request::Upgrade { binary: None }).unwrap(),
            r#"{"op":"upgrade"}"#
        );
        let parsed: Request =
            serde_json::from_str(r#"{"op":"upgrade","binary":"/usr/local/bin/podswitch"}"#)
                .unwrap();
        assert_eq!(
            parsed,
            Request::Upgrade {
                binary: Some("/usr/local/bin/podswitch".into())
            }
        );
        assert_eq!(
            serde_json::to_string(&Response::Ok).unwrap(),
            r#"{"result":"ok"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::error("no")).unwrap(),
            r#"{"result":"error","data":{"message":"no"}}"#
        );
        for resp in [
            Response::Ok,
            Response::Pod(sample_pod("a")),
            Response::Pods(vec![sample_pod("a")]),
            Response::Fdb(vec![]),
            Fake::default().handle(Request::Status),
            Response::error("x"),
        ] {
            let text = serde_json::to_string(&resp).unwrap();
            assert_eq!(
                serde_json::from_str::<Response>(&text).unwrap(),
                resp,
                "{text}"
            );
        }
        let e = serde_json::from_str::<Request>(r#"{"op":"pod_del","name":"a","x":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `x`"), "{e}");
    }

    #[test]
    fn pod_and_peer_add_carry_the_spec() {
        let peer = Request::PeerAdd(PeerSpec {
            name: "node-b".into(),
            underlay: Ipv4Addr::new(192, 168, 77, 2),
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            vtep_mac: Some(crate::node::Mac([2, 0xee, 0, 0, 0, 2])),
        });
        let text = serde_json::to_string(&peer).unwrap();
        assert_eq!(
            text,
            r#"{"op":"peer_add","name":"node-b","underlay":"192.168.77.2","pod_cidr":"10.244.2.0/24","vtep_mac":"02:ee:00:00:00:02"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), peer);
        let e = serde_json::from_str::<Request>(
            r#"{"op":"pod_add","name":"a","netns":"a","ip":"10.244.1.10","mac":"nope"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"nope\" is not a MAC address"), "{e}");
        let e = serde_json::from_str::<Request>(
            r#"{"op":"peer_add","name":"b","underlay":"192.168.77.2","pod_cidr":"10.244.2.0/24","x":1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `x`"), "{e}");
    }

    #[test]
    fn cni_requests_and_answers_have_a_stable_shape() {
        // What the CNI plugin sends and reads: spelled out, so a change shows here.
        let add = Request::PodAdd(PodSpec {
            container_id: Some("c0ffee".into()),
            ifname: "net1".into(),
            netns: "/proc/42/ns/net".into(),
            ..web("cni-c0ffee", None)
        });
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(
            text,
            r#"{"op":"pod_add","name":"cni-c0ffee","netns":"/proc/42/ns/net","ip":"10.244.1.10","container_id":"c0ffee","ifname":"net1"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), add);
        // A pod without ip: no "ip" key, and back.
        let auto = Request::PodAdd(PodSpec {
            ip: None,
            ..web("a", None)
        });
        let text = serde_json::to_string(&auto).unwrap();
        assert_eq!(text, r#"{"op":"pod_add","name":"a","netns":"a"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), auto);
        // Old requests parse: no container ID, eth0.
        let Request::PodAdd(old) = serde_json::from_str::<Request>(
            r#"{"op":"pod_add","name":"a","netns":"a","ip":"10.244.1.10"}"#,
        )
        .unwrap() else {
            panic!("not a pod_add")
        };
        assert_eq!((old.container_id, old.ifname.as_str()), (None, "eth0"));

        let del = Request::PodDelByContainer {
            container_id: "c0ffee".into(),
            ifname: "net1".into(),
        };
        let text = serde_json::to_string(&del).unwrap();
        assert_eq!(
            text,
            r#"{"op":"pod_del_by_container","container_id":"c0ffee","ifname":"net1"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), del);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"pod_del_by_container","container_id":"c"}"#)
                .unwrap(),
            Request::PodDelByContainer {
                container_id: "c".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::NodeInfo).unwrap(),
            r#"{"op":"node_info"}"#
        );

        let node = Fake::default().handle(Request::NodeInfo);
        let text = serde_json::to_string(&node).unwrap();
        assert_eq!(
            text,
            r#"{"result":"node","data":{"name":"node-a","pod_cidr":"10.244.1.0/24","gateway":"10.244.1.1","mtu":1450}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), node);

        let pod = Response::Pod(sample_pod("a"));
        let text = serde_json::to_string(&pod).unwrap();
        assert!(
            text.contains(r#""mac":"02:42:0a:f4:01:0a","prefix_len":24,"gateway":"10.244.1.1""#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), pod);

        // Errors: a kind when there is one, none otherwise; old and unknown kinds parse.
        let nf = Response::error_of(ErrorKind::NotFound, "gone");
        let text = serde_json::to_string(&nf).unwrap();
        assert_eq!(
            text,
            r#"{"result":"error","data":{"message":"gone","kind":"not_found"}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), nf);
        assert_eq!(
            serde_json::to_string(&Response::error_of(ErrorKind::Refused, "x")).unwrap(),
            r#"{"result":"error","data":{"message":"x","kind":"refused"}}"#
        );
        assert_eq!(
            serde_json::from_str::<Response>(r#"{"result":"error","data":{"message":"old"}}"#)
                .unwrap(),
            Response::error("old")
        );
        assert_eq!(
            serde_json::from_str::<Response>(
                r#"{"result":"error","data":{"message":"new","kind":"on_fire"}}"#
            )
            .unwrap(),
            Response::error_of(ErrorKind::Other, "new")
        );
    }

    #[test]
    fn service_requests_and_answers_have_a_stable_shape() {
        let add = Request::ServiceAdd(ServiceSpec {
            affinity: Some(crate::node::ServiceAffinity::ClientIp),
            ..web_service()
        });
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(
            text,
            r#"{"op":"service_add","name":"web","vip":"10.96.0.10","port":80,"proto":"tcp","backends":["10.244.1.10:8080","10.244.2.10:8080"],"affinity":"client_ip"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), add);
        // proto and backends may be left out: tcp, none.
        let Request::ServiceAdd(min) = serde_json::from_str::<Request>(
            r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53}"#,
        )
        .unwrap() else {
            panic!("not a service_add")
        };
        assert_eq!(
            (min.proto, min.backends.len(), min.affinity),
            (crate::node::ServiceProto::Tcp, 0, None)
        );
        for (text, want) in [
            (
                r#"{"op":"service_del","name":"web"}"#,
                Request::ServiceDel { name: "web".into() },
            ),
            (r#"{"op":"service_list"}"#, Request::ServiceList),
            (r#"{"op":"conntrack"}"#, Request::Conntrack),
        ] {
            assert_eq!(serde_json::to_string(&want).unwrap(), text);
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), want);
        }
        for bad in [
            r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53,"proto":"sctp"}"#,
            r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53,"affinity":"none"}"#,
            r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":70000}"#,
            r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53,"backends":["10.244.1.1"]}"#,
            r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53,"x":1}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }

        let list = Response::Services(vec![sample_service()]);
        let text = serde_json::to_string(&list).unwrap();
        assert_eq!(
            text,
            r#"{"result":"services","data":[{"spec":{"name":"web","vip":"10.96.0.10","port":80,"proto":"tcp","backends":["10.244.1.10:8080","10.244.2.10:8080"]},"connections":[3,0],"source":"etcd"}]}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), list);
        // An answer without a source (an older daemon) still reads: a runtime service.
        let old = r#"{"result":"services","data":[{"spec":{"name":"web","vip":"10.96.0.10","port":80},"connections":[]}]}"#;
        match serde_json::from_str::<Response>(old).unwrap() {
            Response::Services(s) => assert_eq!(s[0].source, crate::node::PeerSource::Runtime),
            other => panic!("{other:?}"),
        }
        let flows = Response::Flows(vec![sample_flow()]);
        let text = serde_json::to_string(&flows).unwrap();
        assert_eq!(
            text,
            r#"{"result":"flows","data":[{"proto":"tcp","client":"10.244.1.11:40000","vip":"10.96.0.10:80","backend":"10.244.2.10:8080","state":"established","age_secs":5,"expires_in_secs":86395}]}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), flows);
    }

    #[test]
    fn drops_by_reason_are_in_the_json_and_optional_for_older_nodes() {
        let pods = Response::Pods(vec![sample_pod("web")]);
        let text = serde_json::to_string(&pods).unwrap();
        assert!(text.contains(r#""drops":{"spoofed_mac":1}"#), "{text}");
        assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), pods);
        // An older node's pod: no drops field.
        let old = text.replace(r#","drops":{"spoofed_mac":1}"#, "");
        match serde_json::from_str::<Response>(&old).unwrap() {
            Response::Pods(p) => assert!(p[0].drops.is_empty()),
            other => panic!("{other:?}"),
        }
        let status = Fake::default().handle(Request::Status);
        let text = serde_json::to_string(&status).unwrap();
        assert!(
            text.contains(r#""drops_by_reason":{"malformed":1}"#),
            "{text}"
        );
        let old = text.replace(r#""drops_by_reason":{"malformed":1},"#, "");
        match serde_json::from_str::<Response>(&old).unwrap() {
            Response::Status {
                drops_by_reason, ..
            } => assert!(drops_by_reason.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn service_requests_round_trip_through_the_socket() {
        let dir = TempDir::new("services");
        let path = dir.sock();
        let server = Server::start(&path, Arc::new(Fake::default()));
        assert_eq!(
            call(&path, &Request::ServiceAdd(web_service()), T).unwrap(),
            Response::Ok
        );
        assert_eq!(
            call(
                &path,
                &Request::ServiceAdd(ServiceSpec {
                    port: 0,
                    ..web_service()
                }),
                T
            )
            .unwrap(),
            Response::error_of(
                ErrorKind::Refused,
                "service.port: 0 is not between 1 and 65535 (a TCP or UDP port)"
            )
        );
        assert_eq!(
            call(&path, &Request::ServiceList, T).unwrap(),
            Response::Services(vec![sample_service()])
        );
        assert_eq!(
            call(&path, &Request::Conntrack, T).unwrap(),
            Response::Flows(vec![sample_flow()])
        );
        assert_eq!(
            call(&path, &Request::ServiceDel { name: "web".into() }, T).unwrap(),
            Response::Ok
        );
        assert_eq!(
            call(
                &path,
                &Request::ServiceDel {
                    name: "nope".into()
                },
                T
            )
            .unwrap(),
            Response::error_of(ErrorKind::NotFound, "no service named \"nope\"")
        );
        server.stop().unwrap();
    }

    /// A handler whose captures are made up: `len` records of 10 bytes (all `i`, from a
    /// 100-byte frame) and 2 dropped, then gone; endless with `len` None.
    struct Streamer {
        len: Option<u64>,
    }

    struct FakeSource {
        sent: u64,
        len: Option<u64>,
    }

    impl CaptureSource for FakeSource {
        fn drain(&mut self, out: &mut Vec<u8>, max: u64) -> u64 {
            let left = self.len.map_or(u64::MAX, |l| l - self.sent);
            let n = left.min(max).min(3);
            for _ in 0..n {
                out.push(CAPTURE_RECORD);
                let ts = Duration::from_secs(self.sent);
                out.extend_from_slice(&crate::pcap::record_header(ts, 10, 100));
                out.extend_from_slice(&[self.sent as u8; 10]);
                self.sent += 1;
            }
            n
        }

        fn dropped(&self) -> u64 {
            2
        }

        fn ended(&self) -> Option<String> {
            (Some(self.sent) == self.len).then(|| "fake is gone".into())
        }
    }

    impl ControlHandler for Streamer {
        fn handle(&self, _: Request) -> Response {
            Response::Ok
        }

        fn capture(&self, spec: CaptureSpec) -> Result<Box<dyn CaptureSource>, Box<Response>> {
            match spec.pod.as_deref() {
                Some("nope") => Err(Box::new(Response::error_of(
                    ErrorKind::NotFound,
                    "capture: no pod named \"nope\"",
                ))),
                _ => Ok(Box::new(FakeSource {
                    sent: 0,
                    len: self.len,
                })),
            }
        }
    }

    fn capture_of(pod: &str, count: Option<u64>) -> CaptureSpec {
        CaptureSpec {
            pod: Some(pod.into()),
            peer: None,
            snaplen: 64,
            count,
        }
    }

    /// A writer that takes `room` bytes, then reports a closed pipe.
    struct Pipe {
        room: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from(IoErrorKind::BrokenPipe));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_capture_streams_pcap_records_until_its_end() {
        let dir = TempDir::new("capture");
        let path = dir.sock();
        let server = Server::start(&path, Arc::new(Streamer { len: Some(7) }));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let text = serde_json::to_string(&Request::Capture(capture_of("a", None))).unwrap();
        assert_eq!(text, r#"{"op":"capture","pod":"a","snaplen":64}"#);

        // The source ends by itself: every record, then its end.
        let mut out = Vec::new();
        let end = capture(&path, &capture_of("a", None), &mut out, &stop).unwrap();
        assert_eq!(
            end,
            CaptureEnd {
                captured: 7,
                dropped: 2,
                reason: "fake is gone".into()
            }
        );
        assert_eq!(out.len(), 24 + 7 * (16 + 10));
        assert_eq!(&out[..24], &crate::pcap::global_header(64));
        let last = &out[24 + 6 * 26..];
        assert_eq!(
            &last[..16],
            &crate::pcap::record_header(Duration::from_secs(6), 10, 100)
        );
        assert_eq!(&last[16..], &[6; 10]);

        // A count stops it there.
        let mut out = Vec::new();
        let end = capture(&path, &capture_of("a", Some(5)), &mut out, &stop).unwrap();
        assert_eq!((end.captured, end.reason.as_str()), (5, "count reached"));
        assert_eq!(out.len(), 24 + 5 * 26);

        // Refused by name, as the handler says.
        let err = capture(&path, &capture_of("nope", None), &mut Vec::new(), &stop).unwrap_err();
        assert_eq!(err.to_string(), "capture: no pod named \"nope\"");
        server.stop().unwrap();
    }

    #[test]
    fn a_capture_stops_on_request_and_when_its_output_closes() {
        let dir = TempDir::new("capstop");
        let path = dir.sock();
        let server = Server::start(&path, Arc::new(Streamer { len: None }));
        // Ctrl-C before anything came: the client says stop, the server ends.
        let stop = std::sync::atomic::AtomicBool::new(true);
        let mut out = Vec::new();
        let end = capture(&path, &capture_of("a", None), &mut out, &stop).unwrap();
        assert_eq!(end.reason, "stopped by the client");
        assert_eq!(&out[..24], &crate::pcap::global_header(64));
        assert_eq!((out.len() - 24) % 26, 0, "whole records only");
        // The reader of the output goes away (a closed pipe): stopped, not failed.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut pipe = Pipe { room: 100 };
        let end = capture(&path, &capture_of("a", None), &mut pipe, &stop).unwrap();
        assert_eq!(end.reason, "output closed");
        assert_eq!(end.dropped, 2);
        server.stop().unwrap();
    }

    #[test]
    fn request_response_round_trips() {
        let dir = TempDir::new("roundtrip");
        let path = dir.sock();
        let fake = Arc::new(Fake::default());
        let server = Server::start(&path, fake.clone());

        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let add = Request::PodAdd(web("web", None));
        assert_eq!(
            call(&path, &add, T).unwrap(),
            Response::Pod(sample_pod("web"))
        );
        let bad = Request::PodAdd(web("web", Some(crate::node::Mac([1, 0, 0, 0, 0, 1]))));
        assert_eq!(
            call(&path, &bad, T).unwrap(),
            Response::error("pod.mac: group")
        );
        assert_eq!(
            call(&path, &Request::PodList, T).unwrap(),
            Response::Pods(vec![sample_pod("a"), sample_pod("b")])
        );
        assert!(matches!(call(&path, &Request::Fdb, T).unwrap(), Response::Fdb(v) if v.len() == 1));
        assert_eq!(
            call(&path, &Request::Status, T).unwrap(),
            fake.handle(Request::Status)
        );
        assert_eq!(
            call(&path, &Request::PodDel { name: "web".into() }, T).unwrap(),
            Response::Ok
        );
        server.stop().unwrap();
    }

    #[test]
    fn one_connection_carries_many_requests_and_survives_malformed_lines() {
        let dir = TempDir::new("malformed");
        let path = dir.sock();
        let fake = Arc::new(Fake::default());
        let server = Server::start(&path, fake.clone());
        let stream = raw_connect(&path);
        let mut reader = BufReader::new(&stream);

        let r = raw_exchange(&stream, &mut reader, b"?? not json\n");
        let Response::Error { message, .. } = r else {
            panic!("{r:?}")
        };
        assert!(
            message.starts_with("malformed request: expected value"),
            "{message}"
        );

        let r = raw_exchange(&stream, &mut reader, b"{\"op\":\"reboot\"}\n");
        let Response::Error { message, .. } = r else {
            panic!("{r:?}")
        };
        assert!(
            message.starts_with("malformed request: unknown variant `reboot`"),
            "{message}"
        );

        let r = raw_exchange(
            &stream,
            &mut reader,
            b"{\"op\":\"pod_add\",\"name\":\"a\"}\n",
        );
        let Response::Error { message, .. } = r else {
            panic!("{r:?}")
        };
        assert!(message.contains("missing field `netns`"), "{message}");

        let r = raw_exchange(
            &stream,
            &mut reader,
            b"{\"op\":\"pod_add\",\"name\":\"a\",\"netns\":\"a\",\"ip\":\"10.244.1.999\"}\n",
        );
        let Response::Error { message, .. } = r else {
            panic!("{r:?}")
        };
        assert!(message.contains("invalid IPv4 address syntax"), "{message}");

        // Blank lines are skipped; the connection still works, several requests in one write.
        let r = raw_exchange(
            &stream,
            &mut reader,
            b"\n  \n{\"op\":\"status\"}\n{\"op\":\"pod_list\"}\n",
        );
        assert!(matches!(r, Response::Status { .. }), "{r:?}");
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            matches!(serde_json::from_str(&line).unwrap(), Response::Pods(_)),
            "{line}"
        );
        // Malformed lines never reached the handler.
        assert_eq!(fake.calls.load(Ordering::Relaxed), 2);

        // A last request without a newline is still answered when the client half-closes.
        (&stream).write_all(b"{\"op\":\"fdb\"}").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(
            matches!(serde_json::from_str(&line).unwrap(), Response::Fdb(_)),
            "{line}"
        );
        line.clear();
        assert_eq!(reader.read_line(&mut line).unwrap(), 0, "{line}");
        server.stop().unwrap();
    }

    /// The one response line a connection gets before the server closes it.
    fn last_words(stream: &std::os::unix::net::UnixStream) -> String {
        stream.set_read_timeout(Some(T)).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut rest = String::new();
        assert_eq!(reader.read_line(&mut rest).unwrap(), 0, "then EOF: {rest}");
        match serde_json::from_str(&line).unwrap() {
            Response::Error { message, .. } => message,
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn connections_over_the_limit_are_told_and_closed_and_a_freed_slot_is_reused() {
        let dir = TempDir::new("limit");
        let path = dir.sock();
        let fake = Arc::new(Fake::default());
        let limits = Limits {
            connections: 4,
            idle: T * 6,
        };
        let server = Server::start_with(&path, fake.clone(), limits);
        // Four connections inside a request each (held in the handler): none can make room.
        let held: Vec<_> = (0..4)
            .map(|_| {
                let s = raw_connect(&path);
                (&s).write_all(b"{\"op\":\"pod_del\",\"name\":\"hold\"}\n")
                    .unwrap();
                s
            })
            .collect();
        crate::testutil::wait_for("four requests in the handler", || {
            fake.calls.load(Ordering::Relaxed) == 4
        });
        for _ in 0..3 {
            let extra = raw_connect(&path);
            let message = last_words(&extra);
            assert!(
                message.contains("serves 4 control connections at once; try again later"),
                "{message}"
            );
        }
        // Answered, the held ones wait for their next request: a new connection takes the
        // slot of the one that has waited longest, which is told so and closed.
        *fake.gate.lock().unwrap() = true;
        fake.opened.notify_all();
        for s in &held {
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            assert_eq!(
                serde_json::from_str::<Response>(&line).unwrap(),
                Response::Ok
            );
        }
        // The first is made the one waiting longest: the others ask again.
        std::thread::sleep(Duration::from_millis(20));
        for s in &held[1..] {
            let r = raw_exchange(s, &mut BufReader::new(s), b"{\"op\":\"fdb\"}\n");
            assert!(matches!(r, Response::Fdb(_)), "{r:?}");
        }
        let fresh = raw_connect(&path);
        let r = raw_exchange(&fresh, &mut BufReader::new(&fresh), b"{\"op\":\"fdb\"}\n");
        assert!(matches!(r, Response::Fdb(_)), "{r:?}");
        let message = last_words(&held[0]);
        assert!(
            message.contains("had waited longest for a request"),
            "{message}"
        );
        // The others still work; closed ones free their slots.
        let r = raw_exchange(
            &held[1],
            &mut BufReader::new(&held[1]),
            b"{\"op\":\"fdb\"}\n",
        );
        assert!(matches!(r, Response::Fdb(_)), "{r:?}");
        drop(held);
        crate::testutil::wait_for("a slot to be free", || {
            let s = raw_connect(&path);
            s.set_read_timeout(Some(T)).unwrap();
            let mut reader = BufReader::new(&s);
            (&s).write_all(b"{\"op\":\"status\"}\n").unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).is_ok()
                && matches!(serde_json::from_str(&line), Ok(Response::Status { .. }))
        });
        drop(fresh);
        server.stop().unwrap();
    }

    #[test]
    fn an_idle_connection_is_told_and_closed_and_others_are_not() {
        let dir = TempDir::new("idle");
        let path = dir.sock();
        let limits = Limits {
            connections: 8,
            idle: Duration::from_secs(1),
        };
        let server = Server::start_with(&path, Arc::new(Fake::default()), limits);
        // Silent, or half a request: both are idle.
        let silent = raw_connect(&path);
        let partial = raw_connect(&path);
        (&partial).write_all(b"{\"op\":").unwrap();
        for s in [&silent, &partial] {
            let message = last_words(s);
            assert!(message.contains("no request for 1s"), "{message}");
        }
        // A busy connection is never idle.
        let busy = raw_connect(&path);
        let mut reader = BufReader::new(&busy);
        for _ in 0..5 {
            let r = raw_exchange(&busy, &mut reader, b"{\"op\":\"status\"}\n");
            assert!(matches!(r, Response::Status { .. }), "{r:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server.stop().unwrap();
    }

    #[test]
    fn overlong_line_is_refused_and_connection_closed() {
        let dir = TempDir::new("long");
        let path = dir.sock();
        let fake = Arc::new(Fake::default());
        let server = Server::start(&path, fake.clone());
        let stream = raw_connect(&path);
        let mut reader = BufReader::new(&stream);

        let mut long = vec![b'a'; MAX_LINE + 10];
        long.push(b'\n');
        // The server stops reading after the limit; the rest of the write may fail once it
        // closes, which is fine.
        let writer = {
            let s = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = (&s).write_all(&long);
            })
        };
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let r: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(
            r,
            Response::error(
                "request longer than the control socket's limit of 16 MiB (16777216 bytes); closing the connection"
            )
        );
        let mut rest = Vec::new();
        match reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
            Err(e) => assert_eq!(e.kind(), IoErrorKind::ConnectionReset, "{e}"),
        }
        writer.join().unwrap();
        assert_eq!(fake.calls.load(Ordering::Relaxed), 0);

        // A line of exactly MAX_LINE bytes (plus the newline) is accepted.
        let stream = raw_connect(&path);
        let mut reader = BufReader::new(&stream);
        let mut exact = vec![b' '; MAX_LINE - 16];
        exact.extend_from_slice(b"{\"op\":\"status\"}");
        assert_eq!(exact.len(), MAX_LINE - 1);
        exact.push(b' ');
        exact.push(b'\n');
        let r = raw_exchange(&stream, &mut reader, &exact);
        assert!(matches!(r, Response::Status { .. }), "{r:?}");
        server.stop().unwrap();
    }

    #[test]
    fn requests_run_concurrently() {
        let dir = TempDir::new("concurrent");
        let path = dir.sock();
        let server = Server::start(&path, Arc::new(Fake::default()));
        let held = {
            let path = path.clone();
            std::thread::spawn(move || {
                call(
                    &path,
                    &Request::PodDel {
                        name: "hold".into(),
                    },
                    T,
                )
            })
        };
        // Served while "hold" blocks its handler; then "hold" completes too. A server that
        // handled one request at a time would time out here instead.
        assert_eq!(
            call(
                &path,
                &Request::PodDel {
                    name: "release".into()
                },
                T
            )
            .unwrap(),
            Response::Ok
        );
        assert_eq!(held.join().unwrap().unwrap(), Response::Ok);
        server.stop().unwrap();
    }

    #[test]
    fn handler_panic_becomes_an_error_response() {
        let dir = TempDir::new("panic");
        let path = dir.sock();
        let server = Server::start(&path, Arc::new(Fake::default()));
        let r = call(
            &path,
            &Request::PodDel {
                name: "panic".into(),
            },
            T,
        )
        .unwrap();
        assert_eq!(
            r,
            Response::error("internal error: the request handler panicked (see the node's log)")
        );
        assert_eq!(
            call(&path, &Request::PodList, T).unwrap(),
            Fake::default().handle(Request::PodList)
        );
        server.stop().unwrap();
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = TempDir::new("stale");
        let path = dir.sock();
        // A socket file nobody listens on, as a crashed run leaves behind.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = Server::start(&path, Arc::new(Fake::default()));
        assert_eq!(
            call(&path, &Request::PodDel { name: "x".into() }, T).unwrap(),
            Response::Ok
        );
        server.stop().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn socket_in_use_is_refused_and_left_alone() {
        let dir = TempDir::new("inuse");
        let path = dir.sock();
        let server = Server::start(&path, Arc::new(Fake::default()));
        let e = ControlSocket::bind(&path).unwrap_err();
        assert_eq!(e.kind(), IoErrorKind::AddrInUse);
        assert_eq!(
            e.to_string(),
            format!(
                "control socket {} is in use by another podswitch",
                path.display()
            )
        );
        // The first server still answers on its socket.
        assert_eq!(
            call(&path, &Request::PodDel { name: "x".into() }, T).unwrap(),
            Response::Ok
        );
        server.stop().unwrap();
    }

    #[test]
    fn non_socket_file_is_not_replaced() {
        let dir = TempDir::new("file");
        let path = dir.sock();
        std::fs::write(&path, "precious").unwrap();
        let e = ControlSocket::bind(&path).unwrap_err();
        assert_eq!(e.kind(), IoErrorKind::AlreadyExists);
        assert!(e.to_string().contains("exists and is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn shutdown_removes_the_socket_and_creates_missing_dirs_only_its_own() {
        // Elsewhere, a missing directory is a mistyped path: refused, not made.
        let dir = TempDir::new("shutdown");
        let typo = dir.0.join("run/podswitch/node.sock");
        let e = ControlSocket::bind(&typo).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!dir.0.join("run").exists());
        // Under its own directory (here the temporary one), made with mode 0700.
        make_parent(&typo, &dir.0).unwrap();
        let mode = std::fs::metadata(dir.0.join("run/podswitch"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = typo;
        let server = Server::start(&path, Arc::new(Fake::default()));
        // An idle open connection does not hold up shutdown.
        let idle = raw_connect(&path);
        assert_eq!(
            call(&path, &Request::PodDel { name: "x".into() }, T).unwrap(),
            Response::Ok
        );
        server.stop().unwrap();
        assert!(!path.exists());
        let mut buf = Vec::new();
        assert_eq!((&idle).read_to_end(&mut buf).unwrap(), 0);
        // A socket bound but never served is removed when dropped.
        let socket = ControlSocket::bind(&path).unwrap();
        assert!(path.exists());
        drop(socket);
        assert!(!path.exists());
    }

    #[test]
    fn serve_function_binds_and_stops() {
        let dir = TempDir::new("servefn");
        let path = dir.sock();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handler: Arc<dyn ControlHandler> = Arc::new(Fake::default());
        // Shutdown already complete: binds, stops, removes the socket.
        rt.block_on(serve(&path, handler.clone(), async {}))
            .unwrap();
        assert!(!path.exists());
        // Binding errors come back from serve.
        std::fs::write(&path, "x").unwrap();
        let e = rt.block_on(serve(&path, handler, async {})).unwrap_err();
        assert_eq!(e.kind(), IoErrorKind::AlreadyExists);
    }

    #[test]
    fn client_errors_say_what_went_wrong() {
        let dir = TempDir::new("client");
        let path = dir.sock();
        let e = call(&path, &Request::Status, T).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot connect to {} (", path.display()))
                && e.ends_with("): is `podswitch run` running?"),
            "{e}"
        );

        // A server that accepts and never answers: the call times out.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = call(&path, &Request::Status, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, ControlError::Timeout { .. }), "{e}");
        assert!(e.to_string().starts_with("no response from"), "{e}");

        // A server that closes without answering, and one that answers garbage.
        let peer = std::thread::spawn(move || {
            let (a, _) = listener.accept().unwrap(); // the timed-out call
            drop(a);
            let (b, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&b).read_line(&mut line).unwrap();
            drop(b);
            let (c, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&c).read_line(&mut line).unwrap();
            (&c).write_all(b"{\"result\":\"maybe\"}\n").unwrap();
        });
        let e = call(&path, &Request::Status, T).unwrap_err();
        assert!(matches!(e, ControlError::Closed { .. }), "{e}");
        let e = call(&path, &Request::Status, T).unwrap_err();
        assert!(matches!(e, ControlError::BadResponse { .. }), "{e}");
        assert!(e.to_string().contains("unknown variant `maybe`"), "{e}");
        peer.join().unwrap();
    }
}
