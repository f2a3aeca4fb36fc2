//! The runtime API of a node: JSON lines on a Unix socket (`podswitch pod add|del|list`,
//! `peer ...`, `service add|del|list`, `conntrack`, `fdb`, `status` talk to `podswitch run`
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
//!   than `MAX_LINE` bytes gets an error response and the connection is closed;
//! - handlers run on tokio's blocking pool (they block on netlink work), so a slow request does
//!   not hold up other connections;
//! - the socket file is removed when the server stops (shutdown, error or drop), unless another
//!   file has replaced it meanwhile.

use std::future::Future;
use std::io::{BufRead, BufReader, ErrorKind as IoErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::node::{
    FdbEntry, FlowStatus, PeerSpec, PeerStatus, PodSpec, PodStatus, ServiceSpec, ServiceStatus,
};

/// Longest request line the server reads, in bytes without the newline.
pub(crate) const MAX_LINE: usize = 64 * 1024;
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
        /// The node's lease and the store's health (with `[cluster]`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<crate::cluster::ClusterStatus>,
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
}

/// A bound control socket, not yet serving. Binding first lets `podswitch run` refuse to start
/// (before touching any pod) when another instance owns the socket. Dropping it removes the
/// socket file.
#[derive(Debug)]
pub struct ControlSocket {
    listener: Option<std::os::unix::net::UnixListener>,
    file: SocketFile,
}

/// The socket file, removed on drop if it is still the one we bound.
#[derive(Debug)]
struct SocketFile {
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
    /// Binds the control socket at `path`: creates the parent directory if missing (0700),
    /// refuses if another server answers on `path` ([`IoErrorKind::AddrInUse`]) or if `path`
    /// exists and is not a socket, replaces a stale socket, binds and sets mode 0600. Needs no
    /// runtime.
    pub fn bind(path: &Path) -> std::io::Result<ControlSocket> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| io_context(e, format!("creating directory {}", parent.display())))?;
        }
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
        })
    }

    /// The socket path.
    pub(crate) fn path(&self) -> &Path {
        &self.file.path
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
        tokio::pin!(shutdown);
        tracing::info!(path = %self.path().display(), "control socket listening");
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(serve_connection(stream, handler.clone()));
                    }
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

/// Serves one connection: one response line per request line.
async fn serve_connection(stream: tokio::net::UnixStream, handler: Arc<dyn ControlHandler>) {
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read at most one byte past the limit: enough to tell a long line from a full one.
        let limit = (MAX_LINE + 1) as u64;
        let n = match (&mut read).take(limit).read_until(b'\n', &mut line).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("control connection: read: {e}");
                return;
            }
        };
        if n == 0 {
            return; // EOF
        }
        let too_long = line.last() != Some(&b'\n') && line.len() > MAX_LINE;
        let response = if too_long {
            Response::error(format!(
                "request line longer than {MAX_LINE} bytes; closing the connection"
            ))
        } else {
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Request>(text) {
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
}

/// Why no default control socket could be chosen ([`find_socket`]).
#[derive(Debug, thiserror::Error)]
pub enum FindSocketError {
    /// No socket in the directory: no node runs here.
    #[error("no control socket in {dir}: is `podswitch run` running?")]
    NoSocket {
        /// The directory looked in.
        dir: String,
    },
    /// Several sockets: which node is meant must be said.
    #[error("{} nodes run here ({}); say which control socket", .found.len(), .found.join(", "))]
    Many {
        /// The sockets found.
        found: Vec<String>,
    },
}

/// The control socket a client talks to: `given` if any, else the only `*.sock` in the
/// directory of the default sockets (`/run/podswitch`, see
/// [`NodeSpec::control_path`](crate::node::NodeSpec::control_path)). The one rule of the CLI
/// and the CNI plugin.
pub fn find_socket(given: Option<PathBuf>) -> Result<PathBuf, FindSocketError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let dir = Path::new(crate::node::spec::CONTROL_DIR);
    let mut socks: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
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
    let stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| match source.kind() {
            IoErrorKind::NotFound | IoErrorKind::ConnectionRefused => ControlError::NotRunning {
                path: shown.clone(),
                source,
            },
            IoErrorKind::PermissionDenied => ControlError::PermissionDenied {
                path: shown.clone(),
            },
            _ => ControlError::Io {
                path: shown.clone(),
                source,
            },
        })?;
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
    (&stream).write_all(&line).map_err(io)?;

    let mut reader = BufReader::new(&stream);
    let mut response = Vec::new();
    loop {
        stream.set_read_timeout(remaining()?).map_err(io)?;
        let buf = reader.fill_buf().map_err(io)?;
        if buf.is_empty() {
            return Err(ControlError::Closed { path: shown });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        if response.len() + chunk.len() > MAX_RESPONSE {
            return Err(ControlError::BadResponse {
                path: shown,
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
        path: shown,
        message: e.to_string(),
    })
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
            let socket = ControlSocket::bind(path).unwrap();
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
            Response::error("request line longer than 65536 bytes; closing the connection")
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
    fn shutdown_removes_the_socket_and_creates_missing_dirs() {
        let dir = TempDir::new("shutdown");
        let path = dir.0.join("run/podswitch/node.sock");
        let server = Server::start(&path, Arc::new(Fake::default()));
        let mode = std::fs::metadata(dir.0.join("run/podswitch"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
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
