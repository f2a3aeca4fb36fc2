//! A service flow translated to a backend of this node's pod CIDR that no pod has (yet): a
//! backend named before its pod exists, or whose pod went. Routing finds no pod there
//! (`no_such_pod`); an ICMP error about the translated packet (to the backend's address) would
//! match no socket of the client, which connected to the VIP, so the client would wait out
//! its timeouts. Instead the translation is undone and the client is answered about the
//! packet it sent, as a service without backends answers: a TCP connection attempt (SYN) with
//! a reset from the VIP, a UDP datagram with ICMP port unreachable quoting its packet to the
//! VIP (not host unreachable: Linux reports that soft error to a UDP socket only with
//! `IP_RECVERR`, so the client would still wait), so the client fails at once. The flow is
//! forgotten.
//!
//! A TCP segment of a connection under way is not: its backend's pod may be away for a moment
//! (re-attached by a restart or an upgrade, whose connections must live on), so it is answered
//! as before (an error the client's stack ignores: it retransmits) and its flow is kept.

use super::reply::{self, IcmpError};
use super::{Action, Core, DropReason};
use crate::table::FlowKey;
use crate::wire::ethernet;
use crate::wire::ipv4::protocol::TCP;
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::nat::{self, End};
use crate::wire::tcp::{flags, TcpPacket};

impl Core {
    /// The answer to `frame`, translated by the service path to an address of the pod CIDR
    /// that no pod has (counted as `no_such_pod`). `partial`: its L4 checksum is partial.
    #[cold]
    #[inline(never)]
    pub(super) fn no_such_backend(&mut self, frame: &mut [u8], partial: bool) -> Action {
        const REASON: DropReason = DropReason::NoSuchPod;
        let ct = &self.tables.conntrack;
        // The translated packet goes (client, or the hairpin source) -> backend: reversed, it
        // is its flow's reply key.
        let hit = frame
            .get(ethernet::HEADER_LEN..)
            .and_then(nat::endpoints)
            .and_then(|(proto, src, sport, dst, dport)| {
                let hit = ct.peek_reply(&FlowKey::new(dst, dport, src, sport, proto))?;
                Some((proto, hit))
            });
        let Some((proto, hit)) = hit else {
            return self.reject(REASON, frame, IcmpError::HostUnreachable);
        };
        if proto == TCP && !is_connection_attempt(frame) {
            return self.reject(REASON, frame, IcmpError::HostUnreachable);
        }
        let (client, vip) = (hit.client, hit.vip);
        ct.remove(&FlowKey::new(
            *client.ip(),
            client.port(),
            *vip.ip(),
            vip.port(),
            proto,
        ));
        // Back to what the client sent.
        let Some(ip) = frame.get_mut(ethernet::HEADER_LEN..) else {
            return self.drop(REASON);
        };
        let undone = nat::rewrite(ip, End::Destination, *vip.ip(), vip.port(), partial).is_ok()
            && (hit.snat.is_none()
                || nat::rewrite(ip, End::Source, *client.ip(), client.port(), partial).is_ok());
        if !undone {
            return self.drop(REASON);
        }
        if proto != TCP {
            return self.reject(REASON, frame, IcmpError::PortUnreachable);
        }
        self.counts.dropped[REASON as usize] += 1;
        match reply::tcp_reset(&mut self.scratch, frame, self.cfg.router_mac) {
            // A reset is never answered.
            0 => Action::Drop(REASON),
            len => Action::Reject(REASON, len as u16),
        }
    }
}

/// True if `frame` holds a TCP segment opening a connection (SYN without ACK).
fn is_connection_attempt(frame: &[u8]) -> bool {
    let Some(ip) = frame
        .get(ethernet::HEADER_LEN..)
        .and_then(|b| Ipv4Packet::new_checked_header(b).ok())
    else {
        return false;
    };
    TcpPacket::new_checked(ip.payload())
        .is_ok_and(|t| t.flags() & (flags::SYN | flags::ACK) == flags::SYN)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use ipnet::Ipv4Net;

    use super::super::{Action, DropReason, NodeConfig, Pipeline};
    use crate::table::{Affinity, MacTableConfig, PortInfo, PortKind, Proto, Service};
    use crate::table::{Tables, Topology};
    use crate::testutil::{eth, ipv4, tcp_segment_bytes, udp_with_checksum};
    use crate::wire::virtio::VnetHdr;
    use crate::wire::EthernetAddress;

    const ROUTER: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
    const CLIENT_MAC: [u8; 6] = [0x02, 0x42, 10, 244, 1, 10];
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    /// A node with one pod (the client, port 0) and a service whose only backend is an
    /// address of the node's pod CIDR that no pod has.
    fn node(proto: Proto) -> Pipeline {
        let cidr: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let cfg = NodeConfig::new(cidr, EthernetAddress(ROUTER));
        let tables = Arc::new(Tables::new(
            Topology::new(cidr, cfg.gateway),
            MacTableConfig::default(),
        ));
        let client = PortInfo {
            name: "client".into(),
            kind: PortKind::Pod {
                mac: EthernetAddress(CLIENT_MAC),
                ip: CLIENT,
            },
        };
        tables.update_topology(|t| t.add_port(0, client)).unwrap();
        let service = Service {
            name: "web".into(),
            vip: VIP,
            port: 80,
            proto,
            backends: vec!["10.244.1.200:8080".parse().unwrap()],
            affinity: Affinity::None,
        };
        tables
            .update_topology(|t| t.upsert_service(service))
            .unwrap();
        Pipeline::new(cfg, tables)
    }

    fn run(p: &mut Pipeline, frame: &mut [u8]) -> Action {
        p.begin_batch();
        let a = p.process(0, frame, VnetHdr::default());
        p.end_batch();
        a
    }

    /// (source, source port, destination, destination port) of the IPv4 packet in `f`.
    fn ends(f: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
        let ip = &f[14..];
        let a = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let p = |o: usize| u16::from_be_bytes([ip[ihl + o], ip[ihl + o + 1]]);
        (a(12), p(0), a(16), p(2))
    }

    #[test]
    fn a_tcp_client_of_a_backend_without_its_pod_is_reset_from_the_vip() {
        let mut p = node(Proto::Tcp);
        let seg = tcp_segment_bytes(CLIENT, 40000, VIP, 80, 1000, 0, 0x02, b"");
        let mut syn = eth(ROUTER, CLIENT_MAC, 0x0800, &ipv4(CLIENT, VIP, 6, 64, &seg));
        let Action::Reject(DropReason::NoSuchPod, len) = run(&mut p, &mut syn) else {
            panic!("not answered")
        };
        let rst = &p.scratch()[..usize::from(len)];
        assert_eq!(&rst[0..6], &CLIENT_MAC, "back to the client");
        assert_eq!(rst[14 + 9], 6, "a TCP segment, not an ICMP error");
        assert_eq!(
            ends(rst),
            (VIP, 80, CLIENT, 40000),
            "from the VIP the client connected to"
        );
        assert_eq!(rst[14 + 20 + 13], 0x14, "RST|ACK");
        assert_eq!(&rst[14 + 20 + 8..14 + 20 + 12], &1001u32.to_be_bytes());
        // The flow never reached a backend: nothing is left tracked for it.
        assert_eq!(p.tables().conntrack.len(), 0);
        // Every try is answered alike.
        let mut again = eth(ROUTER, CLIENT_MAC, 0x0800, &ipv4(CLIENT, VIP, 6, 64, &seg));
        assert!(matches!(
            run(&mut p, &mut again),
            Action::Reject(DropReason::NoSuchPod, _)
        ));
        assert_eq!(p.counts().dropped[DropReason::NoSuchPod as usize], 2);
    }

    #[test]
    fn an_established_flow_whose_backend_pod_is_away_is_left_to_retransmit() {
        // A segment of a connection under way (not a SYN: here one this node picks up
        // mid-stream, as after a restart that lost the flow) while the backend's pod is away
        // for a moment (re-attached by a restart or an upgrade): not reset. The error about
        // the translated packet matches no socket of the client, which retransmits, and the
        // flow stays. (The SYN before it, on another port, was refused at once.)
        let mut p = node(Proto::Tcp);
        let syn = tcp_segment_bytes(CLIENT, 40001, VIP, 80, 1000, 0, 0x02, b"");
        let mut f = eth(ROUTER, CLIENT_MAC, 0x0800, &ipv4(CLIENT, VIP, 6, 64, &syn));
        assert!(matches!(
            run(&mut p, &mut f),
            Action::Reject(DropReason::NoSuchPod, _)
        ));
        let ack = tcp_segment_bytes(CLIENT, 40002, VIP, 80, 1001, 5001, 0x18, b"data");
        let mut f = eth(ROUTER, CLIENT_MAC, 0x0800, &ipv4(CLIENT, VIP, 6, 64, &ack));
        let Action::Reject(DropReason::NoSuchPod, len) = run(&mut p, &mut f) else {
            panic!("not counted as no_such_pod")
        };
        let err = &p.scratch()[..usize::from(len)];
        assert_eq!(err[14 + 9], 1, "an ICMP error, not a reset");
        assert_eq!((err[14 + 20], err[14 + 20 + 1]), (3, 1), "host unreachable");
        assert_eq!(p.tables().conntrack.len(), 1, "the flow is kept");
    }

    #[test]
    fn a_udp_client_of_a_backend_without_its_pod_gets_port_unreachable_about_the_vip() {
        let mut p = node(Proto::Udp);
        let dgram = udp_with_checksum(CLIENT, 5353, VIP, 80, b"q");
        let mut f = eth(
            ROUTER,
            CLIENT_MAC,
            0x0800,
            &ipv4(CLIENT, VIP, 17, 64, &dgram),
        );
        let Action::Reject(DropReason::NoSuchPod, len) = run(&mut p, &mut f) else {
            panic!("not answered")
        };
        let err = &p.scratch()[..usize::from(len)];
        assert_eq!(&err[0..6], &CLIENT_MAC);
        let icmp = &err[14 + 20..];
        assert_eq!(
            (icmp[0], icmp[1]),
            (3, 3),
            "port unreachable (a hard error)"
        );
        // The quote is the packet the client sent: to the VIP, which its socket matches.
        let quoted = &icmp[8..];
        let q = |o: usize| Ipv4Addr::new(quoted[o], quoted[o + 1], quoted[o + 2], quoted[o + 3]);
        assert_eq!((q(12), q(16)), (CLIENT, VIP));
        assert_eq!(u16::from_be_bytes([quoted[22], quoted[23]]), 80);
        assert_eq!(p.tables().conntrack.len(), 0);
    }
}
