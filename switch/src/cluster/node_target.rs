//! The node as a [`ClusterTarget`]: peers and services whose source is etcd, by the same rules
//! as `peer add` and `service add`. The only file of `cluster` that knows [`Node`].

use ipnet::Ipv4Net;

use super::ClusterTarget;
use crate::node::{Node, PeerSource, PeerSpec, ServiceSpec};

impl ClusterTarget for Node {
    fn pod_cidr(&self) -> Ipv4Net {
        Node::pod_cidr(self)
    }

    fn etcd_peer_names(&self) -> Vec<String> {
        self.peers()
            .into_iter()
            .filter(|p| p.source == PeerSource::Etcd)
            .map(|p| p.spec.name)
            .collect()
    }

    fn has_etcd_peer(&self, name: &str) -> bool {
        self.etcd_peers(name).1
    }

    fn etcd_peer_count(&self) -> usize {
        self.etcd_peers("").0
    }

    fn apply_peer(&self, peer: &PeerSpec, lease: Option<i64>) -> Result<(), String> {
        self.apply_etcd_peer(peer, lease)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn remove_peer(&self, name: &str, why: &str) -> Result<(), String> {
        Node::remove_peer(self, name, why).map_err(|e| e.to_string())
    }

    fn etcd_service_names(&self) -> Vec<String> {
        self.etcd_services()
    }

    fn apply_service(&self, spec: &ServiceSpec) -> Result<(), String> {
        self.apply_etcd_service(spec)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn remove_service(&self, name: &str) -> Result<bool, String> {
        self.del_etcd_service(name).map_err(|e| e.to_string())
    }
}
