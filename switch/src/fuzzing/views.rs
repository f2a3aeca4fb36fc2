//! The `wire_views` target: every checked header view over arbitrary bytes.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::wire::arp::ArpPacket;
use crate::wire::checksum::{checksum_accumulate, checksum_fold, header_sums_to_ones};
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::icmp::IcmpPacket;
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::nat::{self, End};
use crate::wire::tcp::TcpPacket;
use crate::wire::udp::UdpPacket;
use crate::wire::virtio::VnetHdr;
use crate::wire::{checksum_sum, mac_key, vxlan};

/// Builds every checked view of [`crate::wire`] over `data` (and over `data` after an
/// Ethernet, IPv4 or VXLAN header, where the switch meets them) and reads every field the
/// switch reads; writes through the setters on a copy. Invariants: nothing panics; a
/// virtio-net header parses back from its own bytes; decrementing the TTL of a header with
/// a valid checksum keeps it valid.
pub fn fuzz_wire_views(data: &[u8]) {
    let _ = checksum_sum(data);
    let _ = checksum_fold(checksum_accumulate(data));
    let _ = header_sums_to_ones(data);
    let _ = vxlan::flow_hash(data);
    let _ = ipv4::source_address(data);
    let _ = ipv4::destination_address(data);

    if let Ok(v) = VnetHdr::parse(data) {
        let _ = (v.is_gso(), v.needs_csum());
        assert_eq!(
            VnetHdr::parse(&v.to_bytes()),
            Ok(v),
            "vnet header round trip"
        );
    }
    if let Ok(e) = EthernetFrame::new_checked(data) {
        let _ = (e.dst_key(), e.src_key(), e.dst_addr(), e.src_addr());
        let _ = (e.ethertype(), e.payload().len());
        let payload = e.into_payload();
        read_arp(payload);
        read_ipv4(payload);
    }
    // The views also meet packets at the start of a buffer (the tunnel's inner frame, an
    // IPv4 packet of a service reply).
    read_arp(data);
    read_ipv4(data);
    if let Ok((vni, inner)) = vxlan::decapsulate(data) {
        let _ = vni;
        let _ = EthernetFrame::new_checked(inner).map(|e| e.ethertype());
    }
    let mut copy = data.to_vec();
    let _ = vxlan::decapsulate_mut(&mut copy);
    let mut out = vec![0; data.len() + vxlan::HEADER_LEN];
    let _ = vxlan::encapsulate(1, data, &mut out);
    write_views(&mut copy);
}

fn read_arp(b: &[u8]) {
    if let Ok(a) = ArpPacket::new_checked(b) {
        let _ = (a.is_ethernet_ipv4(), a.operation(), a.sender_hw_addr());
        let _ = (a.sender_ip(), a.target_ip());
    }
}

fn read_ipv4(b: &[u8]) {
    let _ = nat::endpoints(b);
    let _ = nat::quoted_endpoints(b);
    for view in [
        Ipv4Packet::new_checked(b),
        Ipv4Packet::new_checked_superframe(b),
        Ipv4Packet::new_checked_header(b),
    ] {
        let Ok(ip) = view else { continue };
        let _ = (
            ip.header_len(),
            ip.dscp_ecn(),
            ip.total_len(),
            ip.packet_len(),
        );
        let _ = (ip.ident(), ip.flags_and_offset(), ip.dont_fragment());
        let _ = (
            ip.is_fragment(),
            ip.is_first_fragment(),
            ip.ttl(),
            ip.protocol(),
        );
        let _ = (
            ip.src_addr(),
            ip.dst_addr(),
            ip.addresses(),
            ip.verify_checksum(),
        );
        let _ = (ip.header().len(), ip.payload().len(), ip.flow_ports());
        let _ = ip.pseudo_header_accumulate(ip.payload().len());
        read_l4(ip.into_payload());
    }
}

fn read_l4(b: &[u8]) {
    if let Ok(t) = TcpPacket::new_checked(b) {
        let _ = (t.header_len(), t.ports(), t.src_port(), t.dst_port());
        let _ = (t.seq_number(), t.ack_number(), t.flags(), t.window());
        let _ = (t.header().len(), t.payload().len());
        let _ = t.into_options();
    }
    if let Ok(u) = UdpPacket::new_checked(b) {
        let _ = u.header();
    }
    if let Ok(i) = IcmpPacket::new_checked(b) {
        let _ = i.msg_type();
    }
}

/// The setters, on `b` (a copy of the input) at the offsets where the switch uses them.
fn write_views(b: &mut [u8]) {
    if let Ok(mut e) = EthernetFrame::new_checked(&mut *b) {
        e.set_addr_keys(mac_key(&[2, 0, 0, 0, 0, 1]), mac_key(&[2, 0, 0, 0, 0, 2]));
        e.set_dst_addr(e.src_addr());
        e.set_ethertype(e.ethertype());
        let _ = e.payload_mut().len();
    }
    if let Ok(mut a) = ArpPacket::new_checked(&mut *b) {
        a.set_operation(2);
        a.set_sender([2; 6], Ipv4Addr::LOCALHOST);
        a.set_target([3; 6], Ipv4Addr::BROADCAST);
    }
    let ip_at = ethernet::HEADER_LEN.min(b.len());
    let ip = &mut b[ip_at..];
    for end in [End::Source, End::Destination] {
        let _ = nat::rewrite(ip, end, Ipv4Addr::new(10, 96, 0, 10), 80, false);
        let _ = nat::rewrite(ip, end, Ipv4Addr::new(10, 244, 1, 10), 8080, true);
    }
    let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let hairpin = nat::IcmpErrorNat {
        quoted_dst: vip,
        quoted_src: Some(SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 10), 40000)),
        outer_src: Some(*vip.ip()),
        outer_dst: Some(Ipv4Addr::new(10, 244, 1, 10)),
    };
    let _ = nat::rewrite_icmp_error(ip, &hairpin);
    if let Ok(mut p) = Ipv4Packet::new_checked_header(&mut *ip) {
        let valid = p.verify_checksum();
        let ttl = p.decrement_ttl();
        if valid && ttl > 0 {
            assert!(p.verify_checksum(), "TTL decrement broke a valid checksum");
        }
        p.set_ttl(ttl);
        p.set_ident(p.ident().wrapping_add(1));
        p.set_src_addr(p.dst_addr());
        p.set_dst_addr(Ipv4Addr::LOCALHOST);
        p.set_total_len(p.total_len());
        p.fill_checksum();
        assert!(p.verify_checksum(), "fill_checksum writes a valid checksum");
        let l4 = p.payload_mut();
        if let Ok(mut t) = TcpPacket::new_checked(&mut *l4) {
            t.set_seq_number(t.seq_number().wrapping_add(1));
            t.set_flags(t.flags());
            t.set_window(0);
            t.set_checksum(0);
        }
        if let Ok(mut u) = UdpPacket::new_checked(&mut *l4) {
            u.set_len(8);
            u.set_checksum(0);
        }
        if let Ok(mut i) = IcmpPacket::new_checked(&mut *l4) {
            i.set_type_code(3, 4);
            i.set_rest_of_header([0; 4]);
            i.set_next_hop_mtu(1400);
            let _ = i.data_mut().len();
            i.fill_checksum();
        }
    }
}
