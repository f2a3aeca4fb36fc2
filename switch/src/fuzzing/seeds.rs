//! The seed corpora of the targets: real frames and files in each target's input format.

use std::net::Ipv4Addr;

use crate::wire::checksum::checksum_fold;
use crate::wire::ethernet::{self};
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::virtio::{self, VnetHdr};

use super::*;

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
pub(super) fn superframe(proto: u8, len: usize, gso_size: u16) -> (VnetHdr, Vec<u8>) {
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
