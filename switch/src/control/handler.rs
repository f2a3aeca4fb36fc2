//! What the control socket serves: [`NodeHandler`] (the running node, with its upgrade and
//! its cluster status when it has them) and [`StartingHandler`] (the daemon's handler from
//! the moment it binds the socket, before the node is up). The mapping from requests to the
//! node's calls is in `dispatch.rs`: the node knows nothing of the protocol or the cluster.
//!
//! Invariant: a starting handler is made ready at most once; from then on it is the node's.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cluster::ClusterStatus;

use crate::node::{Node, Upgrade};

/// Serves control requests against a running node.
pub struct NodeHandler {
    node: Arc<Node>,
    cluster: Option<Arc<Mutex<ClusterStatus>>>,
    upgrade: Option<Arc<Upgrade>>,
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
    /// [`crate::node::Upgrade`]).
    pub fn with_upgrade(mut self, upgrade: Arc<Upgrade>) -> Self {
        self.upgrade = Some(upgrade);
        self
    }

    /// Also reports the node's lease and the store's health (`[cluster]`).
    pub fn with_cluster(mut self, status: Arc<Mutex<ClusterStatus>>) -> Self {
        self.cluster = Some(status);
        self
    }

    /// The node.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// The upgrade it takes requests for, if it does.
    pub(crate) fn upgrade(&self) -> Option<&Upgrade> {
        self.upgrade.as_deref()
    }

    /// The node's lease and the store's health now, with `[cluster]`.
    pub(crate) fn cluster(&self) -> Option<ClusterStatus> {
        self.cluster
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).snapshot())
    }
}

/// The control socket's handler from the moment the daemon binds it: while the node is not
/// up yet (it waits for its subnet lease from etcd), `pod add` waits for it (up to
/// [`STARTING_WAIT`]) and other requests are told what the node is waiting for; once
/// [`StartingHandler::ready`] is called, every request goes to the node.
pub struct StartingHandler {
    node: OnceLock<NodeHandler>,
    name: String,
    cluster: Option<Arc<Mutex<ClusterStatus>>>,
}

/// How long a `pod add` waits for a node that is still starting.
const STARTING_WAIT: Duration = Duration::from_secs(25);

impl StartingHandler {
    /// A handler for node `name`, starting; `cluster`: the lease status it waits on.
    pub fn new(name: &str, cluster: Option<Arc<Mutex<ClusterStatus>>>) -> Self {
        Self {
            node: OnceLock::new(),
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

    /// The node's handler, once it is up.
    pub(crate) fn node(&self) -> Option<&NodeHandler> {
        self.node.get()
    }

    /// The node's handler once it is up, waiting for it up to [`STARTING_WAIT`].
    pub(crate) fn wait_for_node(&self) -> Option<&NodeHandler> {
        let deadline = Instant::now() + STARTING_WAIT;
        while Instant::now() < deadline {
            if let Some(h) = self.node.get() {
                return Some(h);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.node.get()
    }

    /// Why the node cannot answer yet: what it waits for.
    pub(crate) fn waiting(&self) -> String {
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
        format!("node {:?} is not up yet: {why}", self.name)
    }
}
