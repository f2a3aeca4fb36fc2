//! The `pipeline` target: a node's forwarding decisions, frame after frame, on one
//! [`PipelineHarness`] (learning and connection tracking carry from one frame to the next);
//! every frame that enters is accounted for.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::gso::{self, Coalescer, Segmenter};
use crate::pipeline::{Action, Pipeline};
use crate::table::{Affinity, PortId, PortKind, Proto, Service};
use crate::testutil::node::{node_config, TestNode};
use crate::wire::ethernet::{self};
use crate::wire::virtio::{self, VnetHdr};
use crate::wire::{vxlan, EthernetAddress};

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

pub use crate::testutil::node::{
    pod_ip, pod_mac, HOST_MAC, PEER_UNDERLAY, PEER_VTEP_MAC, ROUTER_MAC,
};
/// A VXLAN source that is no peer.
const STRANGER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 9), 8472);
/// Ports of the node, and one more that is unknown.
const PORTS: u8 = 6;

impl Default for PipelineHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl PipelineHarness {
    /// The node described on the type.
    pub fn new() -> Self {
        let node = TestNode::new(node_config())
            .with_attached_pods(3)
            .with_port(3, "trunk", PortKind::Trunk)
            .with_port(
                4,
                "host",
                PortKind::Host {
                    mac: EthernetAddress(HOST_MAC),
                },
            )
            .with_peer()
            .with_service(service(
                "web",
                [10, 96, 0, 10],
                80,
                Proto::Tcp,
                Affinity::None,
            ))
            .with_service(service(
                "dns",
                [10, 96, 0, 11],
                53,
                Proto::Udp,
                Affinity::ClientIp,
            ));
        let tunnel_mtu = usize::from(node.cfg.tunnel_mtu);
        Self {
            pipeline: node.pipeline(),
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
