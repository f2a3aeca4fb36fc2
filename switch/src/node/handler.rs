//! The control socket's requests, carried out on the running node. The rules live in
//! [`super::spec`] and are applied by [`Node`] itself: this is only the mapping from requests
//! to node calls and from results to responses.

use std::sync::Arc;

use super::Node;
use crate::control::{ControlHandler, Request, Response};

/// Serves control requests against a running node.
pub struct NodeHandler {
    node: Arc<Node>,
}

impl NodeHandler {
    /// A handler for `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn done<T>(r: Result<T, super::NodeError>, ok: impl FnOnce(T) -> Response) -> Response {
    match r {
        Ok(v) => ok(v),
        Err(e) => Response::error(e.to_string()),
    }
}

impl ControlHandler for NodeHandler {
    fn handle(&self, req: Request) -> Response {
        let node = &self.node;
        match req {
            Request::PodAdd(spec) => done(node.add_pod(&spec), Response::Pod),
            Request::PodDel { name } => done(node.del_pod(&name), |()| Response::Ok),
            Request::PodList => Response::Pods(node.pods()),
            Request::PeerAdd(spec) => done(node.add_peer(&spec), |()| Response::Ok),
            Request::PeerDel { name } => done(node.del_peer(&name), |()| Response::Ok),
            Request::PeerList => Response::Peers(node.peers()),
            Request::Fdb => Response::Fdb(node.fdb()),
            Request::Status => {
                let (rx, forwarded, delivered_locally, dropped) = node.totals();
                Response::Status {
                    node: node.name().into(),
                    pods: node.pods().len(),
                    rx,
                    forwarded,
                    delivered_locally,
                    dropped,
                    workers: node.worker_frames(),
                }
            }
        }
    }
}
