//! The control socket's requests, carried out on the running node. The rules live in
//! [`super::spec`] and are applied by [`Node`] itself: this is only the mapping from requests
//! to node calls and from results to responses.

use std::sync::{Arc, Mutex};

use crate::cluster::ClusterStatus;

use super::CaptureError;
use super::{Node, NodeError};
use crate::control::{CaptureSource, CaptureSpec, ControlHandler, ErrorKind, Request, Response};

/// Serves control requests against a running node.
pub struct NodeHandler {
    node: Arc<Node>,
    cluster: Option<Arc<Mutex<ClusterStatus>>>,
    upgrade: Option<Arc<super::Upgrade>>,
}

impl NodeHandler {
    /// A handler for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            cluster: None,
            upgrade: None,
        }
    }

    /// Also takes `upgrade` requests (the daemon execs the new binary; see
    /// [`super::Upgrade`]).
    pub fn with_upgrade(mut self, upgrade: Arc<super::Upgrade>) -> Self {
        self.upgrade = Some(upgrade);
        self
    }

    /// Also reports the node's lease and the store's health (`[cluster]`).
    pub fn with_cluster(mut self, status: Arc<Mutex<ClusterStatus>>) -> Self {
        self.cluster = Some(status);
        self
    }
}

fn done<T>(r: Result<T, NodeError>, ok: impl FnOnce(T) -> Response) -> Response {
    match r {
        Ok(v) => ok(v),
        Err(e) => {
            let kind = match &e {
                NodeError::NoSuchPod(_)
                | NodeError::NoSuchAttachment { .. }
                | NodeError::NoSuchService(_) => Some(ErrorKind::NotFound),
                NodeError::Refused(_) => Some(ErrorKind::Refused),
                _ => None,
            };
            match kind {
                Some(kind) => Response::error_of(kind, e.to_string()),
                None => Response::error(e.to_string()),
            }
        }
    }
}

impl ControlHandler for NodeHandler {
    fn handle(&self, req: Request) -> Response {
        let node = &self.node;
        match req {
            Request::PodAdd(spec) => done(node.add_pod(&spec), Response::Pod),
            Request::PodDel { name } => done(node.del_pod(&name), |()| Response::Ok),
            Request::PodDelByContainer {
                container_id,
                ifname,
            } => done(node.del_attachment(&container_id, &ifname), |()| {
                Response::Ok
            }),
            Request::NodeInfo => Response::Node {
                name: node.spec.name.clone(),
                pod_cidr: node.pod_cidr(),
                gateway: node.gateway(),
                mtu: node.spec.pod_mtu(),
            },
            Request::PodList => Response::Pods(node.pods()),
            Request::PeerAdd(spec) => done(node.add_peer(&spec), |()| Response::Ok),
            Request::PeerDel { name } => done(node.del_peer(&name), |()| Response::Ok),
            Request::PeerList => Response::Peers(node.peers()),
            Request::ServiceAdd(spec) => done(node.add_service(&spec), |()| Response::Ok),
            Request::ServiceDel { name } => done(node.del_service(&name), |()| Response::Ok),
            Request::ServiceList => Response::Services(node.services()),
            Request::Conntrack => Response::Flows(node.flows()),
            // Streamed: the server calls `capture` instead.
            Request::Capture(spec) => match self.capture(spec) {
                Ok(_) => Response::error("capture: a stream, not a single response"),
                Err(response) => *response,
            },
            Request::Fdb => Response::Fdb(node.fdb()),
            Request::Upgrade { binary } => match &self.upgrade {
                None => Response::error("this node is not a daemon: it cannot be upgraded"),
                Some(u) => match u.request(binary) {
                    Ok((binary, version)) => Response::Upgrading { binary, version },
                    Err(e) => Response::error(format!("upgrade refused: {e}")),
                },
            },
            Request::Status => {
                let (rx, forwarded, delivered_locally, dropped) = node.totals();
                Response::Status {
                    node: node.name().into(),
                    pods: node.pods().len(),
                    rx,
                    forwarded,
                    delivered_locally,
                    dropped,
                    drops_by_reason: node.drops_by_label(),
                    workers: node.worker_frames(),
                    stalls: node.worker_stalls().iter().sum(),
                    cluster: self
                        .cluster
                        .as_ref()
                        .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).snapshot()),
                }
            }
        }
    }

    fn capture(&self, spec: CaptureSpec) -> Result<Box<dyn CaptureSource>, Box<Response>> {
        match self.node.capture(&spec) {
            Ok(c) => Ok(Box::new(c)),
            Err(e) => {
                let kind = match &e {
                    CaptureError::NoSuchPod(_) | CaptureError::NoSuchPeer(_) => ErrorKind::NotFound,
                    _ => ErrorKind::Refused,
                };
                Err(Box::new(Response::error_of(kind, e.to_string())))
            }
        }
    }
}

/// The control socket's handler from the moment the daemon binds it: while the node is not
/// up yet (it waits for its subnet lease from etcd), `pod add` waits for it (up to
/// [`STARTING_WAIT`]) and other requests are told what the node is waiting for; once
/// [`StartingHandler::ready`] is called, every request goes to the node.
pub struct StartingHandler {
    node: std::sync::OnceLock<NodeHandler>,
    name: String,
    cluster: Option<Arc<Mutex<ClusterStatus>>>,
}

/// How long a `pod add` waits for a node that is still starting.
const STARTING_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

impl StartingHandler {
    /// A handler for node `name`, starting; `cluster`: the lease status it waits on.
    pub fn new(name: &str, cluster: Option<Arc<Mutex<ClusterStatus>>>) -> Self {
        Self {
            node: std::sync::OnceLock::new(),
            name: name.into(),
            cluster,
        }
    }

    /// The node is up: requests go to `handler` from now on.
    pub fn ready(&self, handler: NodeHandler) {
        if self.node.set(handler).is_err() {
            tracing::warn!("the control handler was already set");
        }
    }

    fn waiting(&self) -> Response {
        let why = match &self.cluster {
            Some(c) => {
                let s = c.lock().unwrap_or_else(|e| e.into_inner());
                match &s.last_error {
                    Some(e) => format!(
                        "waiting for its subnet lease from etcd ({}): {e}",
                        s.endpoints.join(",")
                    ),
                    None => format!(
                        "waiting for its subnet lease from etcd ({})",
                        s.endpoints.join(",")
                    ),
                }
            }
            None => "starting".into(),
        };
        Response::error(format!("node {:?} is not up yet: {why}", self.name))
    }
}

impl ControlHandler for StartingHandler {
    fn handle(&self, req: Request) -> Response {
        if let Some(h) = self.node.get() {
            return h.handle(req);
        }
        if matches!(req, Request::PodAdd(_)) {
            let deadline = std::time::Instant::now() + STARTING_WAIT;
            while std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if let Some(h) = self.node.get() {
                    return h.handle(req);
                }
            }
        }
        self.waiting()
    }

    fn capture(&self, spec: CaptureSpec) -> Result<Box<dyn CaptureSource>, Box<Response>> {
        match self.node.get() {
            Some(h) => h.capture(spec),
            None => Err(Box::new(self.waiting())),
        }
    }
}
