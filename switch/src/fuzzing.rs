//! Entry points of the `cargo fuzz` targets in `fuzz/` (not an API: hidden from the docs).
//!
//! Each `fuzz_*` function takes the raw bytes libFuzzer generates, decodes them as documented
//! on the function, drives one part of the switch the way the runtime does, and panics only
//! if an invariant of that part breaks. The switch itself must never panic on any input: a
//! malformed frame is dropped and counted. Keeping the drivers here, inside the crate, lets
//! them reach the crate-private header views without making those public; the targets in
//! `fuzz/fuzz_targets/` are one line each.
//!
//! [`seeds`] builds the seed corpora (`fuzz/corpus/<target>/`) from real frames; the test
//! `committed_seeds_are_the_generated_ones` checks the committed files are those (and writes
//! them with `PODSWITCH_WRITE_SEEDS=1`), and `replay_corpus` runs every committed corpus and
//! regression input through its target in the ordinary `cargo test`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::sync::Arc;

use crate::gso::{self, Coalescer, Segmenter, MAX_PARTS};
use crate::pipeline::{Action, NodeConfig, Pipeline};
use crate::table::{
    Affinity, MacTableConfig, Peer, PortId, PortInfo, PortKind, Proto, Service, Tables, Topology,
};
use crate::wire::arp::ArpPacket;
use crate::wire::checksum::{checksum_accumulate, checksum_fold, header_sums_to_ones};
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::icmp::IcmpPacket;
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::nat::{self, End};
use crate::wire::tcp::TcpPacket;
use crate::wire::udp::UdpPacket;
use crate::wire::virtio::{self, VnetHdr};
use crate::wire::{checksum_sum, mac_key, vxlan, EthernetAddress};

/// The fuzz targets, by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpora).
pub const TARGETS: [&str; 6] = [
    "wire_views",
    "pipeline",
    "segment",
    "coalesce",
    "control_request",
    "config",
];

/// Runs target `name` on `data` (for the corpus replay test; the fuzz targets call the
/// functions directly). Unknown names do nothing.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "wire_views" => fuzz_wire_views(data),
        "pipeline" => fuzz_pipeline(data),
        "segment" => fuzz_segment(data),
        "coalesce" => fuzz_coalesce(data),
        "control_request" => fuzz_control_request(data),
        "config" => fuzz_config(data),
        _ => {}
    }
}

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

fn check_parts(parts: &[&[u8]]) {
    assert!(
        !parts.is_empty() && parts.len() <= MAX_PARTS,
        "{} parts",
        parts.len()
    );
}

/// Splits `data` into records of `head` fixed bytes and a body whose length is the
/// little-endian `u16` after them (cut short at the end of `data`).
fn records(data: &[u8], head: usize) -> Vec<(&[u8], Range<usize>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = data.get(at..at + head + 2) {
        let start = at + head + 2;
        let len = usize::from(u16::from_le_bytes([h[head], h[head + 1]]));
        let end = (start + len).min(data.len());
        out.push((&h[..head], start..end));
        at = end;
    }
    out
}

/// Encodes one record of [`fuzz_pipeline`] or [`fuzz_coalesce`] input: `head`, the body's
/// length, the body.
pub fn record(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut r = head.to_vec();
    r.extend_from_slice(&(body.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    r.extend_from_slice(body);
    r
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

/// The segmentation target: `data` is a virtio-net header (10 bytes; unparseable ones are
/// skipped), a limit (u16 LE) and the frame. The frame's checksum is completed in place (on a
/// copy) and it is segmented with the limit as the payload per segment and as the IP MTU.
/// Invariants: each segment of a superframe is checked by [`check_segment`]; the payloads of
/// the segments, back to back, are as long as the superframe's payload.
pub fn fuzz_segment(data: &[u8]) {
    let Some((head, frame)) = data.split_at_checked(virtio::HEADER_LEN + 2) else {
        return;
    };
    let Ok(vnet) = VnetHdr::parse(head) else {
        return;
    };
    let limit = usize::from(u16::from_le_bytes([head[10], head[11]]));
    let mut copy = frame.to_vec();
    let _ = gso::complete_checksum(&mut copy, &vnet);
    let mut s = Segmenter::default();
    let _ = s.segment(frame, &vnet, limit, |head, body| {
        if vnet.is_gso() {
            check_segment(&[head, body].concat(), usize::MAX);
        }
    });
    let (mut payload, mut headers) = (0, 0);
    let cut = s.segment_for_mtu(frame, &vnet, limit, |head, body| {
        if vnet.is_gso() {
            check_segment(
                &[head, frame.get(body.clone()).unwrap_or_default()].concat(),
                limit,
            );
            payload += body.len();
            headers = head.len();
        }
    });
    if cut.is_ok() && vnet.is_gso() {
        let whole = Ipv4Packet::new_checked(frame.get(ethernet::HEADER_LEN..).unwrap_or_default());
        let end = ethernet::HEADER_LEN + whole.map(|p| p.packet_len()).unwrap_or_default();
        assert_eq!(payload, end - headers, "payload bytes segmented");
    }
}

/// Checks one segment cut from a superframe: an IPv4 packet of at most `mtu` bytes whose
/// total length is its length and whose IPv4 and L4 checksums are complete and valid.
pub fn check_segment(frame: &[u8], mtu: usize) {
    let ip = frame.get(ethernet::HEADER_LEN..).unwrap_or_default();
    assert!(ip.len() <= mtu, "segment of {} bytes > MTU {mtu}", ip.len());
    let p = Ipv4Packet::new_checked(ip);
    assert!(p.is_ok(), "segment is not IPv4: {p:?}");
    if let Ok(p) = p {
        assert!(p.verify_checksum(), "segment's IPv4 checksum");
        assert_eq!(
            usize::from(p.total_len()),
            ip.len(),
            "segment's total length"
        );
        let l4 = p.payload();
        let sum = p.pseudo_header_accumulate(l4.len()) + checksum_accumulate(l4);
        assert_eq!(checksum_fold(sum), 0xffff, "segment's L4 checksum");
    }
}

/// The coalescing target: `data` is a sequence of records `[port, len (u16 LE), frame]`; the
/// frames are pushed in order (port `port % 4`) from one source buffer, then flushed.
/// Invariants: every output has between one and `MAX_PARTS` parts; a superframe it makes is
/// one the segmenter cuts back into as many segments as it merged.
pub fn fuzz_coalesce(data: &[u8]) {
    let mut c = Coalescer::default();
    let mut s = Segmenter::default();
    let mut emit = |_: PortId, parts: &[&[u8]], vnet: VnetHdr| {
        check_parts(parts);
        if vnet.is_gso() && vnet.gso_size >= gso::MIN_GSO_SIZE {
            let frame = parts.concat();
            let cut = s.segment(&frame, &vnet, usize::MAX, |_, _| {});
            assert_eq!(
                cut,
                Ok(parts.len() - 1),
                "re-segmenting a superframe: {vnet:?}"
            );
        }
    };
    for (head, frame) in records(data, 1) {
        c.push(PortId::from(head[0] % 4), data, frame, &mut emit);
    }
    c.flush(data, &mut emit);
}

/// The control protocol target: a request line as the control socket reads it. Invariant:
/// a request that parses serializes to JSON that parses back to the same request.
pub fn fuzz_control_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<crate::control::Request>(data) else {
        return;
    };
    let line = serde_json::to_string(&req);
    assert!(line.is_ok(), "request {req:?} does not serialize: {line:?}");
    if let Ok(line) = line {
        let back = serde_json::from_str::<crate::control::Request>(&line);
        assert_eq!(back.ok().as_ref(), Some(&req), "round trip of {line}");
    }
}

/// The configuration target: `data` as the text of a configuration file (not UTF-8: skipped).
/// Invariant: a configuration that parses and validates writes out TOML that reads back as
/// the same configuration.
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = crate::config::Config::from_toml_str(text) else {
        return;
    };
    let out = config.to_toml();
    assert!(out.is_ok(), "config {config:?} does not serialize: {out:?}");
    if let Ok(out) = out {
        let back = crate::config::Config::from_toml_str(&out);
        assert_eq!(
            back.as_ref().ok(),
            Some(&config),
            "round trip of {out}: {back:?}"
        );
    }
}

/// The seed corpora: `(target, file name, bytes)`, real frames and files in each target's
/// input format (see the `fuzz_*` functions).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use crate::testutil::{arp, eth, icmp_echo, ipv4, tcp_segment_bytes, udp, vxlan_wrap};
    const IPV4: u16 = ethernet::ethertype::IPV4;
    let gw = Ipv4Addr::new(10, 244, 1, 1);
    let remote = Ipv4Addr::new(10, 244, 2, 5);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let (a, b) = (pod_ip(0), pod_ip(1));

    let arp_req = eth(
        [0xff; 6],
        pod_mac(0),
        ethernet::ethertype::ARP,
        &arp(1, pod_mac(0), a, [0; 6], gw),
    );
    let ping = eth(
        ROUTER_MAC,
        pod_mac(0),
        IPV4,
        &ipv4(a, gw, 1, 64, &icmp_echo(8, 7, 1, b"ping")),
    );
    let syn_seg = tcp_segment_bytes(a, 40000, vip, 80, 1000, 0, 0x02, b"");
    let syn = eth(ROUTER_MAC, pod_mac(0), IPV4, &ipv4(a, vip, 6, 64, &syn_seg));
    let syn_ack_seg = tcp_segment_bytes(b, 8080, a, 40000, 5000, 1001, 0x12, b"");
    let syn_ack = eth(
        ROUTER_MAC,
        pod_mac(1),
        IPV4,
        &ipv4(b, a, 6, 64, &syn_ack_seg),
    );
    // The backend's "port unreachable" about the translated SYN (its 8 bytes of TCP).
    let syn_translated = ipv4(
        a,
        b,
        6,
        63,
        &tcp_segment_bytes(a, 40000, b, 8080, 1000, 0, 0x02, b""),
    );
    let icmp_error = {
        let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&syn_translated[..28]);
        let c = !crate::wire::checksum::checksum_sum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        eth(pod_mac(0), pod_mac(1), IPV4, &ipv4(b, a, 1, 64, &m))
    };
    let pod_to_pod = eth(
        pod_mac(1),
        pod_mac(0),
        IPV4,
        &ipv4(a, b, 17, 64, &udp(1, 2, b"hi")),
    );
    let to_remote = eth(
        ROUTER_MAC,
        pod_mac(0),
        IPV4,
        &ipv4(a, remote, 17, 64, &udp(1, 2, b"x")),
    );
    let dns = ipv4(
        a,
        Ipv4Addr::new(10, 96, 0, 11),
        17,
        64,
        &udp(5353, 53, b"q"),
    );
    let dns = eth(ROUTER_MAC, pod_mac(0), IPV4, &dns);
    let from_remote = ipv4(
        remote,
        b,
        6,
        63,
        &tcp_segment_bytes(remote, 80, b, 40001, 1, 1, 0x10, b"data"),
    );
    let inner = eth(ROUTER_MAC, PEER_VTEP_MAC, IPV4, &from_remote);
    let datagram = vxlan_wrap(1, &inner);
    let host_arp = eth(
        [0xff; 6],
        HOST_MAC,
        ethernet::ethertype::ARP,
        &arp(1, HOST_MAC, gw, [0; 6], b),
    );
    let trunk = eth([0xff; 6], [2, 0x99, 0, 0, 0, 1], 0x88b5, b"lldp-ish");
    let (tso_vnet, tso) = superframe(6, 3000, 1448);
    let (uso_vnet, uso) = superframe(17, 2000, 1000);
    let plain_csum = VnetHdr {
        gso_type: virtio::GsoType::None,
        ..tso_vnet
    };
    let small = superframe(6, 100, 1448).1;

    let frame_rec =
        |port: u8, vnet: VnetHdr, f: &[u8]| record(&[0, port], &[&vnet.to_bytes()[..], f].concat());
    let plain = VnetHdr::default();
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |t: &'static str, name: &str, bytes: Vec<u8>| out.push((t, name.into(), bytes));

    for (name, f) in [
        ("arp-request", &arp_req),
        ("ping", &ping),
        ("tcp-syn", &syn),
        ("udp", &pod_to_pod),
        ("vxlan", &datagram),
        ("tso-superframe", &tso),
        ("icmp-error", &icmp_error),
    ] {
        add("wire_views", name, f.clone());
    }
    add(
        "wire_views",
        "vnet-tso",
        [&tso_vnet.to_bytes()[..], &tso].concat(),
    );

    add("pipeline", "arp-request", frame_rec(0, plain, &arp_req));
    add("pipeline", "ping-gateway", frame_rec(0, plain, &ping));
    add("pipeline", "pod-to-pod", frame_rec(0, plain, &pod_to_pod));
    add("pipeline", "to-peer", frame_rec(0, plain, &to_remote));
    add("pipeline", "tso-to-peer", frame_rec(0, tso_vnet, &tso));
    add("pipeline", "host-arp", frame_rec(4, plain, &host_arp));
    add("pipeline", "trunk", frame_rec(3, plain, &trunk));
    add("pipeline", "vxlan-from-peer", record(&[1, 0], &datagram));
    let service = [frame_rec(0, plain, &syn), frame_rec(1, plain, &syn_ack)].concat();
    add("pipeline", "service-syn-and-reply", service);
    let refused = [frame_rec(0, plain, &syn), frame_rec(1, plain, &icmp_error)].concat();
    add("pipeline", "service-icmp-error", refused);
    add("pipeline", "udp-service", frame_rec(0, plain, &dns));

    let seg_in =
        |vnet: VnetHdr, mtu: u16, f: &[u8]| [&vnet.to_bytes()[..], &mtu.to_le_bytes(), f].concat();
    add("segment", "tso", seg_in(tso_vnet, 1450, &tso));
    add("segment", "uso", seg_in(uso_vnet, 1450, &uso));
    add("segment", "needs-csum", seg_in(plain_csum, 1450, &small));
    add("segment", "plain", seg_in(plain, 1450, &pod_to_pod));

    // Three segments of one flow (merged) and one of another (alone).
    let flow = |seq: u32, data: &[u8], flags: u8| {
        let t = tcp_segment_bytes(remote, 80, b, 40001, seq, 1, flags, data);
        eth(pod_mac(1), ROUTER_MAC, IPV4, &ipv4(remote, b, 6, 63, &t))
    };
    let run: Vec<u8> = [
        record(&[1], &flow(1, &[1; 100], 0x10)),
        record(&[1], &flow(101, &[2; 100], 0x10)),
        record(&[1], &flow(201, &[3; 60], 0x18)),
        record(&[2], &pod_to_pod),
    ]
    .concat();
    add("coalesce", "three-segments", run);
    add(
        "coalesce",
        "one-segment",
        record(&[1], &flow(1, b"data", 0x10)),
    );

    for (name, line) in [
        (
            "pod-add",
            r#"{"op":"pod_add","name":"web","netns":"web","ip":"10.244.1.10"}"#,
        ),
        ("status", r#"{"op":"status"}"#),
        (
            "peer-add",
            r#"{"op":"peer_add","name":"node-b","underlay":"192.168.77.2","pod_cidr":"10.244.2.0/24","vtep_mac":"02:ee:00:00:00:02"}"#,
        ),
        (
            "service-add",
            r#"{"op":"service_add","name":"web","vip":"10.96.0.10","port":80,"proto":"tcp","backends":["10.244.1.10:8080"],"affinity":"client_ip"}"#,
        ),
        ("capture", r#"{"op":"capture","pod":"a","snaplen":64}"#),
        (
            "pod-del-by-container",
            r#"{"op":"pod_del_by_container","container_id":"c0ffee","ifname":"net1"}"#,
        ),
    ] {
        add("control_request", name, line.as_bytes().to_vec());
    }
    add("config", "peers-services", CONFIG_SEED.as_bytes().to_vec());
    out
}

/// A configuration with every section but `[cluster]` (the example files cover the rest).
const CONFIG_SEED: &str = r#"[node]
name = "node-a"
pod_cidr = "10.244.1.0/24"
mtu = 1400
underlay = "192.168.77.1"
vni = 42

[[pods]]
name = "web"
netns = "web"
ip = "10.244.1.10"

[[peers]]
name = "node-b"
underlay = "192.168.77.2"
pod_cidr = "10.244.2.0/24"
vtep_mac = "02-ee-00-00-00-02"

[[services]]
name = "dns"
vip = "10.96.0.53"
port = 53
proto = "udp"
backends = ["10.244.1.10:53"]
affinity = "client_ip"
"#;

/// A GSO superframe from pod 0 to the peer (protocol 6 or 17) with `len` bytes of payload,
/// its checksum partial, and its virtio-net header for segments of `gso_size`.
fn superframe(proto: u8, len: usize, gso_size: u16) -> (VnetHdr, Vec<u8>) {
    use crate::testutil::{eth, ipv4, tcp_segment_bytes, udp};
    let (src, dst) = (pod_ip(0), Ipv4Addr::new(10, 244, 2, 5));
    let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let (mut l4, offset, gso_type) = match proto {
        6 => (
            tcp_segment_bytes(src, 40000, dst, 5201, 1, 1, 0x18, &data),
            16,
            virtio::GsoType::TcpV4,
        ),
        _ => (udp(40000, 5201, &data), 6, virtio::GsoType::UdpL4),
    };
    let ip = ipv4(src, dst, proto, 64, &l4);
    let pseudo = Ipv4Packet::new_checked_header(&ip[..])
        .map(|p| checksum_fold(p.pseudo_header_accumulate(l4.len())))
        .unwrap_or_default();
    l4[offset..offset + 2].copy_from_slice(&pseudo.to_be_bytes());
    let ip = [&ip[..ipv4::HEADER_LEN], &l4].concat();
    let frame = eth(ROUTER_MAC, pod_mac(0), ethernet::ethertype::IPV4, &ip);
    let l4_at = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
    let vnet = VnetHdr {
        flags: virtio::FLAG_NEEDS_CSUM,
        gso_type,
        ecn: false,
        hdr_len: (l4_at + if proto == 6 { 20 } else { 8 }) as u16,
        gso_size,
        csum_start: l4_at as u16,
        csum_offset: offset as u16,
    };
    (vnet, frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// The seed corpora in `fuzz/corpus/` are the ones [`seeds`] makes (and the example
    /// configs). `PODSWITCH_WRITE_SEEDS=1 cargo test -p podswitch committed_seeds` writes
    /// them after a change to the seeds.
    #[test]
    fn committed_seeds_are_the_generated_ones() {
        let write = std::env::var("PODSWITCH_WRITE_SEEDS").as_deref() == Ok("1");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut all: Vec<(PathBuf, Vec<u8>)> = seeds()
            .into_iter()
            .map(|(target, name, bytes)| (fuzz_dir().join("corpus").join(target).join(name), bytes))
            .collect();
        for e in std::fs::read_dir(examples).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                let to = fuzz_dir()
                    .join("corpus/config")
                    .join(path.file_name().unwrap());
                all.push((to, std::fs::read(&path).unwrap()));
            }
        }
        for (path, bytes) in all {
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == bytes,
                "{} differs from its seed: PODSWITCH_WRITE_SEEDS=1 cargo test -p podswitch committed_seeds",
                path.display()
            );
        }
    }

    #[test]
    fn seeds_do_what_they_are_named_for() {
        let all = seeds();
        assert!(TARGETS
            .iter()
            .all(|t| all.iter().filter(|s| s.0 == *t).count() >= 2 || *t == "config"));
        let mut node = PipelineHarness::new();
        let get = |name: &str| {
            let s = seeds()
                .into_iter()
                .find(|s| s.0 == "pipeline" && s.1 == name);
            s.unwrap().2
        };
        let mut arp = get("arp-request");
        let vnet = VnetHdr::parse(&arp[4..]).unwrap();
        assert_eq!(node.frame(0, &mut arp[14..], vnet), Action::Reply);
        let mut tso = get("tso-to-peer");
        let vnet = VnetHdr::parse(&tso[4..]).unwrap();
        assert!(vnet.is_gso());
        assert!(matches!(
            node.frame(0, &mut tso[14..], vnet),
            Action::Encap(_)
        ));
        let mut vx = get("vxlan-from-peer");
        assert_eq!(node.datagram(true, &mut vx[4..]), Action::Forward(1));
        // The segment seeds cut into several wire-ready segments.
        let (vnet, frame) = superframe(6, 3000, 1448);
        let cut = Segmenter::default().segment(&frame, &vnet, usize::MAX, |_, _| {});
        assert_eq!(cut, Ok(3));
        // The coalescing seed merges its first three frames.
        let input = seeds()
            .into_iter()
            .find(|s| s.1 == "three-segments")
            .unwrap()
            .2;
        let mut outputs = Vec::new();
        let mut c = Coalescer::default();
        let mut emit = |_: PortId, parts: &[&[u8]], v: VnetHdr| outputs.push((parts.len(), v));
        for (head, frame) in records(&input, 1) {
            c.push(PortId::from(head[0]), &input, frame, &mut emit);
        }
        c.flush(&input, &mut emit);
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0].0, 4, "headers and three payloads");
        assert!(outputs[0].1.is_gso());
    }

    /// Every committed corpus file and regression input goes through its target: what once
    /// crashed a target stays fixed.
    #[test]
    fn replay_corpus() {
        let mut ran = 0;
        for kind in ["corpus", "regressions"] {
            for target in TARGETS {
                let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
                    continue;
                };
                for e in dir {
                    let path = e.unwrap().path();
                    run(target, &std::fs::read(&path).unwrap());
                    ran += 1;
                }
            }
        }
        assert!(ran > 0, "no corpus under {}", fuzz_dir().display());
    }
}
