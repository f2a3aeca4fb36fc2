//! The `pipeline` target: a node's forwarding decisions, frame after frame, on one
//! [`PipelineHarness`] (learning and connection tracking carry from one frame to the next);
//! every frame that enters is accounted for.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use crate::gso::{self, Coalescer, Segmenter};
use crate::pipeline::{Action, NodeConfig, Pipeline};
use crate::table::{
    Affinity, MacTableConfig, Peer, PortId, PortInfo, PortKind, Proto, Service, Tables, Topology,
};
use crate::wire::ethernet::{self};
use crate::wire::virtio::{self, VnetHdr};
use crate::wire::{mac_key, vxlan, EthernetAddress};

use super::{check_parts, records};

/// The node of the pipeline target: 10.244.1.0/24 with three pods (ports 0-2), a trunk
/// (port 3) and the host port (port 4); a peer node, 10.244.2.0/24 at 192.168.77.2; a TCP
/// service 10.96.0.10:80 (a local and a remote backend) and a UDP one 10.96.0.11:53 with
/// client-IP affinity. Port 5 is unknown.
pub struct PipelineHarness {
    pipeline: Pipeline,
    segmenter: Segmenter,
    coalescer: Coalescer,
    tunnel_mtu: usize,
}

/// The router MAC of [`PipelineHarness`]'s node.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
/// The VTEP MAC of its peer node.
pub const PEER_VTEP_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 2];
/// The host port's MAC.
pub const HOST_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 9];
/// The peer's underlay address.
pub const PEER_UNDERLAY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 2), 8472);
/// A VXLAN source that is no peer.
const STRANGER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 9), 8472);
/// Ports of the node, and one more that is unknown.
const PORTS: u8 = 6;

/// The MAC of pod `i` (0-2) of the harness node.
pub fn pod_mac(i: u8) -> [u8; 6] {
    [0x02, 0x42, 10, 244, 1, 10 + i]
}

/// The IP of pod `i` (0-2) of the harness node.
pub fn pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 10 + i)
}

impl Default for PipelineHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl PipelineHarness {
    /// The node described on the type.
    pub fn new() -> Self {
        let cidr = "10.244.1.0/24".parse().unwrap_or_default();
        let cfg = NodeConfig::new(cidr, EthernetAddress(ROUTER_MAC));
        let tunnel_mtu = usize::from(cfg.tunnel_mtu);
        let tables = Arc::new(Tables::new(
            Topology::new(cidr, cfg.gateway),
            MacTableConfig::default(),
        ));
        let mut ports: Vec<(PortId, PortInfo)> = (0..3)
            .map(|i| {
                let kind = PortKind::Pod {
                    mac: EthernetAddress(pod_mac(i)),
                    ip: pod_ip(i),
                };
                let name = format!("pod{i}");
                (PortId::from(i), PortInfo { name, kind })
            })
            .collect();
        ports.push((3, info("trunk", PortKind::Trunk)));
        let host = PortKind::Host {
            mac: EthernetAddress(HOST_MAC),
        };
        ports.push((4, info("host", host)));
        let peer = Peer {
            name: "node-b".into(),
            underlay: PEER_UNDERLAY,
            pod_cidr: "10.244.2.0/24".parse().unwrap_or_default(),
            vtep_mac: EthernetAddress(PEER_VTEP_MAC),
        };
        let services = [
            service("web", [10, 96, 0, 10], 80, Proto::Tcp, Affinity::None),
            service("dns", [10, 96, 0, 11], 53, Proto::Udp, Affinity::ClientIp),
        ];
        let setup = tables.update_topology(|t| {
            for (id, info) in ports {
                t.add_port(id, info)?;
            }
            t.add_peer(peer)?;
            services.into_iter().try_for_each(|s| t.upsert_service(s))
        });
        assert!(setup.is_ok(), "harness topology: {setup:?}");
        for i in 0..3 {
            tables
                .mac
                .insert_static(mac_key(&pod_mac(i)), PortId::from(i));
        }
        Self {
            pipeline: Pipeline::new(cfg, tables),
            segmenter: Segmenter::default(),
            coalescer: Coalescer::default(),
            tunnel_mtu,
        }
    }

    /// One frame from `ingress`, then what the data plane does with the action: an ICMP
    /// error is read from the scratch buffer, a frame for the peer is made wire-ready
    /// (checksum completed or superframe segmented for the tunnel MTU). Invariants: every
    /// frame is accounted for once; a reject's length lies within the scratch buffer; a
    /// segment fits the tunnel MTU.
    pub fn frame(&mut self, ingress: PortId, frame: &mut [u8], vnet: VnetHdr) -> Action {
        self.pipeline.begin_batch();
        let action = self.pipeline.process(ingress, frame, vnet);
        self.pipeline.end_batch();
        match action {
            Action::Reject(_, len) => {
                let reply = self.pipeline.scratch().get(..usize::from(len));
                assert!(
                    reply.is_some(),
                    "reject of {len} bytes overruns the scratch"
                );
            }
            Action::Encap(_) if !vnet.is_gso() => {
                let _ = vxlan::flow_hash(frame);
                if vnet.needs_csum() {
                    let _ = gso::complete_checksum(frame, &vnet);
                }
            }
            Action::Encap(_) => {
                let mtu = self.tunnel_mtu;
                let _ = self
                    .segmenter
                    .segment_for_mtu(frame, &vnet, mtu, |head, body| {
                        let ip_len = (head.len() + body.len()).saturating_sub(ethernet::HEADER_LEN);
                        assert!(
                            ip_len <= mtu,
                            "segment of {ip_len} bytes > tunnel MTU {mtu}"
                        );
                    });
            }
            _ => {}
        }
        self.assert_accounted();
        action
    }

    /// One VXLAN datagram from the peer (`from_peer`) or from an unknown address; a frame
    /// forwarded to a pod goes through the coalescer as on a TAP that takes superframes.
    pub fn datagram(&mut self, from_peer: bool, datagram: &mut [u8]) -> Action {
        let source = if from_peer { PEER_UNDERLAY } else { STRANGER };
        self.pipeline.begin_batch();
        let action = self.pipeline.process_tunnel(source, datagram);
        self.pipeline.end_batch();
        if let Action::Forward(to) = action {
            let inner = vxlan::HEADER_LEN..datagram.len();
            assert!(
                inner.start <= inner.end,
                "forwarded a datagram without header"
            );
            let c = &mut self.coalescer;
            c.push(to, &*datagram, inner, &mut |_, parts, _| check_parts(parts));
            c.flush(&*datagram, &mut |_, parts, _| check_parts(parts));
        }
        self.assert_accounted();
        action
    }

    fn assert_accounted(&self) {
        let c = self.pipeline.counts();
        let out = c.forwarded + c.delivered_locally + c.dropped_total();
        assert_eq!(c.rx, out, "every frame counted once: {c:?}");
    }
}

fn info(name: &str, kind: PortKind) -> PortInfo {
    PortInfo {
        name: name.into(),
        kind,
    }
}

fn service(name: &str, vip: [u8; 4], port: u16, proto: Proto, affinity: Affinity) -> Service {
    Service {
        name: name.into(),
        vip: Ipv4Addr::from(vip),
        port,
        proto,
        backends: vec![
            SocketAddrV4::new(pod_ip(1), 8080),
            SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 5), 8080),
        ],
        affinity,
    }
}

/// The pipeline target. `data` is a sequence of records `[kind, selector, len (u16 LE),
/// body]`, processed in order by one [`PipelineHarness`] (so learning and connection
/// tracking carry from one frame to the next):
/// - `kind` even: a frame from port `selector % 6` (5 is unknown); the body is a virtio-net
///   header (10 bytes; an unknown `gso_type` reads as none, as the TAP port does) and the
///   frame;
/// - `kind` odd: a VXLAN datagram, from the peer if `selector` is even, else from an
///   unknown address.
pub fn fuzz_pipeline(data: &[u8]) {
    let mut node = PipelineHarness::new();
    for (head, body) in records(data, 2) {
        let mut bytes = data[body].to_vec();
        if head[0] % 2 == 0 {
            let vnet = VnetHdr::parse(&bytes).unwrap_or_default();
            let at = virtio::HEADER_LEN.min(bytes.len());
            node.frame(PortId::from(head[1] % PORTS), &mut bytes[at..], vnet);
        } else {
            node.datagram(head[1] % 2 == 0, &mut bytes);
        }
    }
}
