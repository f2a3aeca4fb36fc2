//! The server's requests carried out on the running node: the mapping from a [`Request`] to
//! the node's calls and from their results to a [`Response`], for the node once it is up
//! ([`NodeHandler`]) and while it starts ([`StartingHandler`]).
//!
//! Invariants: the rules live in the node's specs and are applied by the node itself; this
//! only maps. A node error becomes an error response whose kind a program can act on:
//! [`ErrorKind::NotFound`] for a pod, attachment, service or capture target the node does not
//! know, [`ErrorKind::Refused`] for a rule's refusal; every other failure has no kind.

use super::capture::CaptureSource;
use super::handler::{NodeHandler, StartingHandler};
use super::protocol::{CaptureSpec, ErrorKind, Request, Response};
use super::server::ControlHandler;
use crate::node::{CaptureError, NodeError};

/// The kind of error response `e` becomes.
fn node_error_kind(e: &NodeError) -> Option<ErrorKind> {
    match e {
        NodeError::NoSuchPod(_)
        | NodeError::NoSuchAttachment { .. }
        | NodeError::NoSuchService(_) => Some(ErrorKind::NotFound),
        NodeError::Refused(_) => Some(ErrorKind::Refused),
        _ => None,
    }
}

/// The kind of error response a capture that cannot start becomes.
fn capture_error_kind(e: &CaptureError) -> ErrorKind {
    match e {
        CaptureError::NoSuchPod(_) | CaptureError::NoSuchPeer(_) => ErrorKind::NotFound,
        _ => ErrorKind::Refused,
    }
}

fn done<T>(r: Result<T, NodeError>, ok: impl FnOnce(T) -> Response) -> Response {
    match r {
        Ok(v) => ok(v),
        Err(e) => match node_error_kind(&e) {
            Some(kind) => Response::error_of(kind, e.to_string()),
            None => Response::error(e.to_string()),
        },
    }
}

impl ControlHandler for NodeHandler {
    fn handle(&self, req: Request) -> Response {
        let node = self.node();
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
                name: node.name().into(),
                pod_cidr: node.pod_cidr(),
                gateway: node.gateway(),
                mtu: node.pod_mtu(),
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
            Request::Upgrade { binary } => match self.upgrade() {
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
                    cluster: self.cluster(),
                    fast_path: node.fast_path(),
                }
            }
        }
    }

    fn capture(&self, spec: CaptureSpec) -> Result<Box<dyn CaptureSource>, Box<Response>> {
        let (pod, peer) = (spec.pod.as_deref(), spec.peer.as_deref());
        match self.node().capture(pod, peer, spec.snaplen) {
            Ok(c) => Ok(Box::new(c)),
            Err(e) => Err(Box::new(Response::error_of(
                capture_error_kind(&e),
                e.to_string(),
            ))),
        }
    }
}

impl ControlHandler for StartingHandler {
    fn handle(&self, req: Request) -> Response {
        if let Some(h) = self.node() {
            return h.handle(req);
        }
        // A pod added while the node starts (a CNI ADD at boot) waits for it.
        if matches!(req, Request::PodAdd(_)) {
            if let Some(h) = self.wait_for_node() {
                return h.handle(req);
            }
        }
        Response::error(self.waiting())
    }

    fn capture(&self, spec: CaptureSpec) -> Result<Box<dyn CaptureSource>, Box<Response>> {
        match self.node() {
            Some(h) => h.capture(spec),
            None => Err(Box::new(Response::error(self.waiting()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_errors_map_to_the_kinds_programs_act_on() {
        let refused = NodeError::Refused(crate::node::SpecError::new("pod.ip", "taken"));
        assert_eq!(node_error_kind(&refused), Some(ErrorKind::Refused));
        for missing in [
            NodeError::NoSuchPod("web".into()),
            NodeError::NoSuchService("dns".into()),
            NodeError::NoSuchAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
        ] {
            assert_eq!(node_error_kind(&missing), Some(ErrorKind::NotFound));
        }
        let host = NodeError::Host {
            field: "masquerade",
            message: "iptables failed".into(),
        };
        assert_eq!(node_error_kind(&host), None);
        match done::<()>(Err(NodeError::NoSuchPod("web".into())), |()| Response::Ok) {
            Response::Error { message, kind } => {
                assert_eq!(message, "no pod named \"web\"");
                assert_eq!(kind, Some(ErrorKind::NotFound));
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn capture_errors_are_not_found_or_refused() {
        assert_eq!(
            capture_error_kind(&CaptureError::NoSuchPeer("b".into())),
            ErrorKind::NotFound
        );
        assert_eq!(
            capture_error_kind(&CaptureError::Snaplen(0)),
            ErrorKind::Refused
        );
        assert_eq!(
            capture_error_kind(&CaptureError::Target),
            ErrorKind::Refused
        );
    }

    #[test]
    fn a_starting_node_says_what_it_waits_for() {
        let starting = StartingHandler::new("node-a", None);
        match starting.handle(Request::PodList) {
            Response::Error { message, kind } => {
                assert_eq!(message, "node \"node-a\" is not up yet: starting");
                assert_eq!(kind, None);
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
}
