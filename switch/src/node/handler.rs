//! The control socket's requests, carried out on the running node. The rules live in
//! [`super::spec`] and are applied by [`Node`] itself: this is only the mapping from requests
//! to node calls and from results to responses.

use std::sync::Arc;

use super::{Node, NodeError};
use crate::control::{ControlHandler, ErrorKind, Request, Response};

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

fn done<T>(r: Result<T, NodeError>, ok: impl FnOnce(T) -> Response) -> Response {
    match r {
        Ok(v) => ok(v),
        Err(e) => {
            let kind = match &e {
                NodeError::NoSuchPod(_) | NodeError::NoSuchAttachment { .. } => {
                    Some(ErrorKind::NotFound)
                }
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
                pod_cidr: node.spec.pod_cidr,
                gateway: node.spec.gateway(),
                mtu: node.spec.pod_mtu(),
            },
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
