//! The test node: one shape for the pipeline's unit tests, the fuzz harness and the
//! benchmarks. Node 10.244.1.0/24 (gateway .1, router MAC `02:ee:00:00:00:01`), pod `i` at
//! 10.244.1.(10 + i) with MAC `02:42:0a:f4:01:(10 + i)` on port `i`, and one peer node,
//! `node-b`, owning 10.244.2.0/24 behind 192.168.77.2:8472.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use crate::pipeline::{NodeConfig, Pipeline};
use crate::table::{MacTableConfig, Peer, PortId, PortInfo, PortKind, Service, Tables, Topology};
use crate::wire::{mac_key, EthernetAddress};

/// The node's router MAC (the gateway's).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
/// The peer node's VTEP MAC.
pub const PEER_VTEP_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 2];
/// The MAC of the node's host interface, when [`TestNode::with_port`] adds one.
pub const HOST_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 9];
/// Where the peer node's tunnel is.
pub const PEER_UNDERLAY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 2), 8472);
/// The peer node's pod CIDR.
pub const PEER_CIDR: &str = "10.244.2.0/24";

/// The MAC of pod `i`.
pub fn pod_mac(i: usize) -> [u8; 6] {
    [0x02, 0x42, 10, 244, 1, pod_last_octet(i)]
}

/// The IP of pod `i`.
pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, pod_last_octet(i))
}

fn pod_last_octet(i: usize) -> u8 {
    u8::try_from(10 + i).expect("at most 245 test pods")
}

/// The node's settings as a node spec with only a CIDR and a MAC compiles them (MTU 1450).
pub fn node_config() -> NodeConfig {
    NodeConfig::new(
        "10.244.1.0/24".parse().expect("CIDR"),
        EthernetAddress(ROUTER_MAC),
    )
}

/// A node's tables being set up; [`TestNode::pipeline`] makes a pipeline over them.
#[derive(Debug)]
pub struct TestNode {
    /// The node's settings.
    pub cfg: NodeConfig,
    /// Its tables.
    pub tables: Arc<Tables>,
}

impl TestNode {
    /// A node with `cfg` and empty tables.
    pub fn new(cfg: NodeConfig) -> Self {
        let tables = Arc::new(Tables::new(
            Topology::new(cfg.cidr, cfg.gateway),
            MacTableConfig::default(),
        ));
        Self { cfg, tables }
    }

    /// Adds pods `0..n` on ports `0..n` as the switch attaches them: in the topology and as
    /// static MAC entries.
    pub fn with_attached_pods(self, n: usize) -> Self {
        let node = self.with_pods_unlearned(n);
        for i in 0..n {
            node.tables.mac.insert_static(mac_key(&pod_mac(i)), port(i));
        }
        node
    }

    /// Adds pods `0..n` on ports `0..n` to the topology only: the MAC table starts empty, so
    /// learning and flooding show.
    pub fn with_pods_unlearned(self, n: usize) -> Self {
        for i in 0..n {
            let kind = PortKind::Pod {
                mac: EthernetAddress(pod_mac(i)),
                ip: pod_ip(i),
            };
            self.add_port(port(i), format!("pod{i}"), kind);
        }
        self
    }

    /// Adds a port of another kind (a trunk, the host interface) as `id`.
    pub fn with_port(self, id: PortId, name: &str, kind: PortKind) -> Self {
        self.add_port(id, name.to_owned(), kind);
        self
    }

    /// Adds the peer node `node-b` ([`PEER_CIDR`] behind [`PEER_UNDERLAY`]).
    pub fn with_peer(self) -> Self {
        let peer = Peer {
            name: "node-b".into(),
            underlay: PEER_UNDERLAY,
            pod_cidr: PEER_CIDR.parse().expect("peer CIDR"),
            vtep_mac: EthernetAddress(PEER_VTEP_MAC),
        };
        self.tables
            .update_topology(|t| t.add_peer(peer))
            .expect("the test node takes its peer");
        self
    }

    /// Adds `service`.
    pub fn with_service(self, service: Service) -> Self {
        self.tables
            .update_topology(|t| t.upsert_service(service))
            .expect("the test node takes its service");
        self
    }

    /// A pipeline over the node's tables.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline::new(self.cfg.clone(), Arc::clone(&self.tables))
    }

    fn add_port(&self, id: PortId, name: String, kind: PortKind) {
        self.tables
            .update_topology(|t| t.add_port(id, PortInfo { name, kind }))
            .expect("the test node takes its port");
    }
}

fn port(i: usize) -> PortId {
    PortId::try_from(i).expect("port id")
}
