//! Pipeline unit tests: byte fixtures in, actions and rewritten bytes out.

use super::*;
use crate::table::PortInfo;
use crate::testutil::node::{node_config, TestNode};
use crate::testutil::*;
use crate::wire::virtio::GsoType;

/// A TSO superframe's virtio-net header with segment size `gso_size`.
fn tso(gso_size: u16) -> VnetHdr {
    VnetHdr {
        gso_type: GsoType::TcpV4,
        gso_size,
        ..VnetHdr::default()
    }
}

const R: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const PEER_VTEP: [u8; 6] = [0x02, 0xee, 0, 0, 0, 2];

struct Node {
    p: Pipeline,
}

impl Node {
    /// The test node (`testutil::node`): pods .10, .11 and .12 on ports 0-2 (MACs learned,
    /// not static), a trunk on port 3 and the peer node-b.
    fn new() -> Self {
        let mut p = TestNode::new(node_config())
            .with_pods_unlearned(3)
            .with_port(3, "trunk", PortKind::Trunk)
            .with_peer()
            .pipeline();
        p.begin_batch();
        Node { p }
    }

    fn run(&mut self, port: PortId, frame: &mut [u8]) -> Action {
        self.p.begin_batch();
        let a = self.p.process(port, frame, VnetHdr::default());
        self.p.end_batch();
        a
    }
}

fn pod_mac(last: u8) -> [u8; 6] {
    [0x02, 0x42, 10, 244, 1, last]
}

fn pod_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, last)
}

fn gw() -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 1)
}

#[test]
fn l2_unicast_learning_and_flood() {
    let mut n = Node::new();
    let mut f = eth(
        pod_mac(11),
        pod_mac(10),
        0x0800,
        &ipv4(pod_ip(10), pod_ip(11), 17, 64, &udp(1, 2, b"hi")),
    );
    assert_eq!(
        n.run(0, &mut f),
        Action::Forward(1),
        "b not learned yet, but its MAC is a pod's: known from the topology"
    );
    let mut back = eth(
        pod_mac(10),
        pod_mac(11),
        0x0800,
        &ipv4(pod_ip(11), pod_ip(10), 17, 64, &udp(2, 1, b"yo")),
    );
    assert_eq!(
        n.run(1, &mut back),
        Action::Forward(0),
        "a was learned from its first frame"
    );
    assert_eq!(n.run(0, &mut f), Action::Forward(1));
    let table = n.p.tables().mac.load();
    assert_eq!(table.get(mac_key(&pod_mac(10))).map(|e| e.port), Some(0));
    // A MAC learned on the trunk that shows up again on the trunk as a destination.
    let host = [0x02, 0x99, 0, 0, 0, 1];
    let mut from_trunk = eth([0xff; 6], host, 0x88b5, b"x");
    assert_eq!(n.run(3, &mut from_trunk), Action::Flood);
    let mut to_host = eth(host, [0x02, 0x99, 0, 0, 0, 2], 0x88b5, b"x");
    assert_eq!(
        n.run(3, &mut to_host),
        Action::Drop(DropReason::SameSegment)
    );
    assert_eq!(n.p.counts().forwarded, 4);
}

#[test]
fn answers_arp_for_gateway_and_floods_other_arp() {
    let mut n = Node::new();
    let mut req = eth(
        [0xff; 6],
        pod_mac(10),
        0x0806,
        &arp(1, pod_mac(10), pod_ip(10), [0; 6], gw()),
    );
    assert_eq!(n.run(0, &mut req), Action::Reply);
    let want = eth(
        pod_mac(10),
        R,
        0x0806,
        &arp(2, R, gw(), pod_mac(10), pod_ip(10)),
    );
    assert_eq!(req, want);
    let mut other = eth(
        [0xff; 6],
        pod_mac(10),
        0x0806,
        &arp(1, pod_mac(10), pod_ip(10), [0; 6], pod_ip(11)),
    );
    assert_eq!(n.run(0, &mut other), Action::Flood);
    // Unicast ARP refresh to the router MAC is answered too.
    let mut uni = eth(
        R,
        pod_mac(10),
        0x0806,
        &arp(1, pod_mac(10), pod_ip(10), R, gw()),
    );
    assert_eq!(n.run(0, &mut uni), Action::Reply);
    assert_eq!(n.p.counts().delivered_locally, 2);
}

#[test]
fn gateway_answers_ping() {
    let mut n = Node::new();
    let mut f = eth(
        R,
        pod_mac(10),
        0x0800,
        &ipv4(
            pod_ip(10),
            gw(),
            1,
            64,
            &icmp_echo(8, 0x1234, 7, b"abcdefgh"),
        ),
    );
    assert_eq!(n.run(0, &mut f), Action::Reply);
    let want = eth(
        pod_mac(10),
        R,
        0x0800,
        &ipv4(
            gw(),
            pod_ip(10),
            1,
            64,
            &icmp_echo(0, 0x1234, 7, b"abcdefgh"),
        ),
    );
    assert_eq!(f, want);
    // UDP to the gateway is not something it serves.
    let mut u = eth(
        R,
        pod_mac(10),
        0x0800,
        &ipv4(pod_ip(10), gw(), 17, 64, &udp(5, 53, b"q")),
    );
    assert_eq!(
        n.run(0, &mut u),
        Action::Drop(DropReason::GatewayUnsupported)
    );
}

#[test]
fn routes_to_local_pod_with_mac_rewrite_and_ttl() {
    let mut n = Node::new();
    let payload = udp(1000, 2000, b"routed");
    let mut f = eth(
        R,
        pod_mac(10),
        0x0800,
        &ipv4(pod_ip(10), pod_ip(12), 17, 64, &payload),
    );
    assert_eq!(n.run(0, &mut f), Action::Forward(2));
    assert_eq!(
        f,
        eth(
            pod_mac(12),
            R,
            0x0800,
            &ipv4(pod_ip(10), pod_ip(12), 17, 63, &payload)
        )
    );
}

#[test]
fn routes_to_peer_cidr_as_encap() {
    let mut n = Node::new();
    let dst = Ipv4Addr::new(10, 244, 2, 5);
    let payload = udp(1000, 2000, b"remote");
    let mut f = eth(
        R,
        pod_mac(10),
        0x0800,
        &ipv4(pod_ip(10), dst, 17, 64, &payload),
    );
    assert_eq!(n.run(0, &mut f), Action::Encap(0));
    assert_eq!(
        f,
        eth(
            PEER_VTEP,
            R,
            0x0800,
            &ipv4(pod_ip(10), dst, 17, 63, &payload)
        )
    );
}

#[test]
fn icmp_errors_for_unroutable_packets() {
    let mut n = Node::new();
    let payload = udp(1000, 2000, b"nowhere");
    let cases = [
        (
            Ipv4Addr::new(10, 245, 0, 1),
            64,
            DropReason::NoRoute,
            (3, 0),
        ),
        (pod_ip(99), 64, DropReason::NoSuchPod, (3, 1)),
        (pod_ip(12), 1, DropReason::TtlExceeded, (11, 0)),
    ];
    for (dst, ttl, reason, (ty, code)) in cases {
        let original = ipv4(pod_ip(10), dst, 17, ttl, &payload);
        let mut f = eth(R, pod_mac(10), 0x0800, &original);
        let Action::Reject(r, len) = n.run(0, &mut f) else {
            panic!("expected a reject for {dst}")
        };
        assert_eq!(r, reason);
        let mut quoted = original[..28].to_vec();
        quoted.truncate(28);
        let want = eth(
            pod_mac(10),
            R,
            0x0800,
            &ipv4_tos(
                gw(),
                pod_ip(10),
                1,
                64,
                0xc0,
                false,
                &icmp_error_bytes(ty, code, 0, &quoted),
            ),
        );
        assert_eq!(
            &n.p.scratch()[..usize::from(len)],
            &want[..],
            "ICMP error for {dst}"
        );
    }
}

#[test]
fn fragmentation_needed_for_tunnel() {
    let mut n = Node::new();
    n.p.set_tunnel_mtu(1000);
    let dst = Ipv4Addr::new(10, 244, 2, 5);
    let big = ipv4_tos(pod_ip(10), dst, 17, 64, 0, true, &udp(1, 2, &[0u8; 1200]));
    let mut f = eth(R, pod_mac(10), 0x0800, &big);
    let Action::Reject(DropReason::TooBigForTunnel, len) = n.run(0, &mut f) else {
        panic!("expected frag needed")
    };
    let icmp = &n.p.scratch()[34..usize::from(len)];
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1000);
    // Without DF the packet goes on (the underlay may fragment it).
    let small_df = ipv4_tos(pod_ip(10), dst, 17, 64, 0, false, &udp(1, 2, &[0u8; 1200]));
    assert_eq!(
        n.run(0, &mut eth(R, pod_mac(10), 0x0800, &small_df)),
        Action::Encap(0)
    );
}

#[test]
fn anti_spoofing() {
    let mut n = Node::new();
    let p = ipv4(pod_ip(10), pod_ip(11), 17, 64, &udp(1, 2, b"x"));
    assert_eq!(
        n.run(0, &mut eth(pod_mac(11), pod_mac(12), 0x0800, &p)),
        Action::Drop(DropReason::SpoofedMac)
    );
    let spoofed_ip = ipv4(pod_ip(12), pod_ip(11), 17, 64, &udp(1, 2, b"x"));
    assert_eq!(
        n.run(0, &mut eth(pod_mac(11), pod_mac(10), 0x0800, &spoofed_ip)),
        Action::Drop(DropReason::SpoofedIp)
    );
    let arp_spoof = arp(2, pod_mac(10), pod_ip(11), pod_mac(12), pod_ip(12));
    assert_eq!(
        n.run(0, &mut eth([0xff; 6], pod_mac(10), 0x0806, &arp_spoof)),
        Action::Drop(DropReason::SpoofedIp)
    );
    let arp_sha = arp(1, pod_mac(11), pod_ip(10), [0; 6], gw());
    assert_eq!(
        n.run(0, &mut eth([0xff; 6], pod_mac(10), 0x0806, &arp_sha)),
        Action::Drop(DropReason::SpoofedMac)
    );
    let probe = arp(1, pod_mac(10), Ipv4Addr::UNSPECIFIED, [0; 6], pod_ip(10));
    assert_eq!(
        n.run(0, &mut eth([0xff; 6], pod_mac(10), 0x0806, &probe)),
        Action::Flood,
        "RFC 5227 probe allowed"
    );
    let c = n.p.counts();
    assert_eq!(c.dropped(DropReason::SpoofedMac), 2);
    assert_eq!(c.dropped(DropReason::SpoofedIp), 2);
    assert!(
        n.p.tables().mac.load().get(mac_key(&pod_mac(12))).is_none(),
        "spoofed source not learned"
    );
}

#[test]
fn size_limits_and_gso() {
    let mut n = Node::new();
    let p = ipv4(
        pod_ip(10),
        pod_ip(11),
        17,
        64,
        &udp(1, 2, &[0u8; 1450 - 28]),
    );
    let mut ok = eth(pod_mac(11), pod_mac(10), 0x0800, &p);
    assert_eq!(ok.len(), 1464);
    assert_eq!(n.run(0, &mut ok), Action::Forward(1));
    let big = ipv4(
        pod_ip(10),
        pod_ip(11),
        17,
        64,
        &udp(1, 2, &[0u8; 1451 - 28]),
    );
    let mut too_big = eth(pod_mac(11), pod_mac(10), 0x0800, &big);
    assert_eq!(n.run(0, &mut too_big), Action::Drop(DropReason::Oversize));
    n.p.begin_batch();
    assert_eq!(
        n.p.process(0, &mut too_big, tso(1448)),
        Action::Forward(1),
        "a GSO superframe may exceed the MTU"
    );
}

#[test]
fn tunnel_decapsulation_rules() {
    let mut n = Node::new();
    let peer: SocketAddrV4 = "192.168.77.2:40000".parse().expect("addr");
    let inner_ip = ipv4(Ipv4Addr::new(10, 244, 2, 5), pod_ip(11), 6, 64, &[0u8; 20]);
    let inner = eth(R, PEER_VTEP, 0x0800, &inner_ip);
    let mut dgram = vxlan_wrap(1, &inner);
    n.p.begin_batch();
    assert_eq!(n.p.process_tunnel(peer, &mut dgram), Action::Forward(1));
    let delivered = &dgram[vxlan::HEADER_LEN..];
    assert_eq!(
        delivered,
        &eth(
            pod_mac(11),
            R,
            0x0800,
            &ipv4(Ipv4Addr::new(10, 244, 2, 5), pod_ip(11), 6, 63, &[0u8; 20])
        )[..]
    );

    let stranger: SocketAddrV4 = "192.168.77.9:40000".parse().expect("addr");
    assert_eq!(
        n.p.process_tunnel(stranger, &mut vxlan_wrap(1, &inner)),
        Action::Drop(DropReason::VxlanUnknownPeer)
    );
    assert_eq!(
        n.p.process_tunnel(peer, &mut vxlan_wrap(2, &inner)),
        Action::Drop(DropReason::VxlanBadVni)
    );
    let mut no_flag = vxlan_wrap(1, &inner);
    no_flag[0] = 0;
    assert_eq!(
        n.p.process_tunnel(peer, &mut no_flag),
        Action::Drop(DropReason::VxlanMalformed)
    );
    let to_nobody = eth(
        R,
        PEER_VTEP,
        0x0800,
        &ipv4(Ipv4Addr::new(10, 244, 2, 5), pod_ip(77), 6, 64, &[0u8; 20]),
    );
    assert_eq!(
        n.p.process_tunnel(peer, &mut vxlan_wrap(1, &to_nobody)),
        Action::Drop(DropReason::VxlanNotForPod)
    );
    let arp_inner = eth(
        [0xff; 6],
        PEER_VTEP,
        0x0806,
        &arp(
            1,
            PEER_VTEP,
            Ipv4Addr::new(10, 244, 2, 0),
            [0; 6],
            pod_ip(11),
        ),
    );
    assert_eq!(
        n.p.process_tunnel(peer, &mut vxlan_wrap(1, &arp_inner)),
        Action::Drop(DropReason::VxlanNotForPod)
    );
    assert_eq!(
        n.p.process_tunnel(peer, &mut [0x08, 0, 0, 0, 0, 0, 1, 0]),
        Action::Drop(DropReason::VxlanMalformed)
    );
}

#[test]
fn malformed_frames_are_counted_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut n = Node::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let good = eth(
        R,
        pod_mac(10),
        0x0800,
        &ipv4(pod_ip(10), pod_ip(12), 17, 64, &udp(1, 2, b"data")),
    );
    for i in 0..50_000u32 {
        let mut f: Vec<u8> = match i % 4 {
            // Random bytes.
            0 => (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect(),
            // A good frame, truncated.
            1 => good[..rng.random_range(0..good.len())].to_vec(),
            // A good frame with random bytes flipped (lengths, IHL, checksum...).
            2 => {
                let mut f = good.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..f.len());
                    f[at] = rng.random();
                }
                f
            }
            // A good header claiming more bytes than it has.
            _ => {
                let mut f = good.clone();
                f[16..18].copy_from_slice(&rng.random::<u16>().to_be_bytes());
                f
            }
        };
        let port = rng.random_range(0..6);
        n.p.begin_batch();
        let vnet = if rng.random_bool(0.1) {
            tso(rng.random_range(0..2000))
        } else {
            VnetHdr::default()
        };
        let _ = n.p.process(port, &mut f, vnet);
        let mut d = f.clone();
        let _ =
            n.p.process_tunnel("192.168.77.2:1".parse().expect("addr"), &mut d);
        n.p.end_batch();
    }
    let c = n.p.counts();
    assert_eq!(c.rx, 100_000);
    assert_eq!(c.rx, c.forwarded + c.delivered_locally + c.dropped_total());
    assert!(c.dropped(DropReason::Malformed) > 0);
    assert!(c.dropped(DropReason::BadIpv4) > 0);
    assert!(c.dropped(DropReason::UnknownPort) > 0);
    // Truncated Ethernet headers are "malformed", never forwarded.
    let mut short = good[..13].to_vec();
    assert_eq!(n.run(0, &mut short), Action::Drop(DropReason::Malformed));
}

/// Every frame counted once: `rx = forwarded + local + dropped`.
fn assert_accounted(n: &Node) {
    let c = n.p.counts();
    assert_eq!(c.rx, c.forwarded + c.delivered_locally + c.dropped_total());
}

#[test]
fn pods_may_send_only_ipv4_and_arp() {
    let mut n = Node::new();
    // A VLAN-tagged frame whose inner IPv4 source is another pod's: before, the tag hid the
    // spoofed address and the frame reached the neighbour.
    let spoofed = ipv4(pod_ip(12), pod_ip(11), 17, 64, &udp(1, 2, b"x"));
    let mut tagged = [0x00, 0x05, 0x08, 0x00].to_vec(); // VID 5, then EtherType IPv4
    tagged.extend_from_slice(&spoofed);
    for dst in [pod_mac(11), [0xff; 6]] {
        for tpid in [0x8100, 0x88a8, 0x9100] {
            assert_eq!(
                n.run(0, &mut eth(dst, pod_mac(10), tpid, &tagged)),
                Action::Drop(DropReason::Vlan),
                "tag {tpid:#06x} to {dst:02x?}"
            );
        }
    }
    // IPv6 (not configured for pods), LLDP and an experimental EtherType: unicast to a
    // neighbour and broadcast/multicast alike.
    let v6_all_nodes = [0x33, 0x33, 0, 0, 0, 1];
    let lldp = [0x01, 0x80, 0xc2, 0, 0, 0x0e];
    for (dst, ty) in [
        (pod_mac(11), 0x86dd),
        (v6_all_nodes, 0x86dd),
        (lldp, 0x88cc),
        ([0xff; 6], 0x88b5),
        (pod_mac(11), 0x88b5),
        (R, 0x86dd),
    ] {
        assert_eq!(
            n.run(0, &mut eth(dst, pod_mac(10), ty, &[0u8; 60])),
            Action::Drop(DropReason::EtherType),
            "EtherType {ty:#06x} to {dst:02x?}"
        );
    }
    let c = n.p.counts();
    assert_eq!(c.dropped(DropReason::Vlan), 6);
    assert_eq!(c.dropped(DropReason::EtherType), 6);
    assert_eq!(c.forwarded, 0, "nothing reached another pod");
    // What a pod may send still goes: its own IPv4, its own ARP.
    let own = ipv4(pod_ip(10), pod_ip(11), 17, 64, &udp(1, 2, b"x"));
    assert_eq!(
        n.run(0, &mut eth(pod_mac(11), pod_mac(10), 0x0800, &own)),
        Action::Forward(1)
    );
    let who_has = arp(1, pod_mac(10), pod_ip(10), [0; 6], pod_ip(11));
    assert_eq!(
        n.run(0, &mut eth([0xff; 6], pod_mac(10), 0x0806, &who_has)),
        Action::Flood
    );
    // A trunk is a segment of many hosts: its EtherTypes are not policed.
    let mut from_trunk = eth([0xff; 6], [0x02, 0x99, 0, 0, 0, 1], 0x88b5, b"x");
    assert_eq!(n.run(3, &mut from_trunk), Action::Flood);
    assert_accounted(&n);
}

#[test]
fn unicast_to_an_unknown_or_removed_pod_mac_is_dropped_not_flooded() {
    let mut n = Node::new();
    let ping = |to_mac: [u8; 6]| {
        eth(
            to_mac,
            pod_mac(10),
            0x0800,
            &ipv4(pod_ip(10), pod_ip(12), 1, 64, &icmp_echo(8, 1, 1, b"x")),
        )
    };
    assert_eq!(n.run(0, &mut ping(pod_mac(12))), Action::Forward(2));
    // Pod 12 learned (it answers), then its namespace is deleted: the port goes away, and
    // with it the pod's entries.
    let mut answer = eth(
        pod_mac(10),
        pod_mac(12),
        0x0800,
        &ipv4(pod_ip(12), pod_ip(10), 1, 64, &[]),
    );
    assert_eq!(n.run(2, &mut answer), Action::Forward(0));
    let tables = Arc::clone(n.p.tables());
    tables
        .update_topology(|t| t.remove_port(2).map(|_| ()))
        .expect("remove");
    tables.mac.flush_port(2);
    // With a trunk attached, the MAC may be a host behind it (learned, not known): the frame
    // goes to the trunk ports only, never to the other pods.
    assert_eq!(
        n.run(0, &mut ping(pod_mac(12))),
        Action::FloodTrunks,
        "with a trunk: to the trunk only"
    );
    assert_eq!(n.p.topology().trunk_ports(), &[3]);
    tables
        .update_topology(|t| t.remove_port(3).map(|_| ()))
        .expect("remove trunk");
    assert_eq!(
        n.run(0, &mut ping(pod_mac(12))),
        Action::Drop(DropReason::UnknownUnicast),
        "the removed pod's MAC is not flooded to the other pods"
    );
    assert_eq!(
        n.run(0, &mut ping([0x02, 0x42, 10, 244, 1, 99])),
        Action::Drop(DropReason::UnknownUnicast),
        "a MAC nobody has"
    );
    // Broadcast and multicast still flood.
    let mut bcast = ping([0xff; 6]);
    assert_eq!(n.run(0, &mut bcast), Action::Flood);
    let mut mcast = ping([0x01, 0x00, 0x5e, 0, 0, 0xfb]);
    assert_eq!(n.run(0, &mut mcast), Action::Flood);
    assert_eq!(n.p.counts().dropped(DropReason::UnknownUnicast), 2);
    assert_accounted(&n);
}

#[test]
fn absurd_gso_segment_sizes_are_refused() {
    let mut n = Node::new();
    // A 3 KB TCP superframe (the payload is opaque to the pipeline).
    let tcp = [[0u8; 20].as_slice(), &[0x50, 0x10], &[0u8; 3000 - 22]].concat();
    let to_peer = ipv4_tos(
        pod_ip(10),
        Ipv4Addr::new(10, 244, 2, 5),
        6,
        64,
        0,
        true,
        &tcp,
    );
    let to_pod = ipv4_tos(pod_ip(10), pod_ip(11), 6, 64, 0, true, &tcp);
    for size in [0, 1, crate::gso::MIN_GSO_SIZE - 1] {
        for (dst, ip) in [(R, &to_peer), (R, &to_pod), (pod_mac(11), &to_pod)] {
            let mut f = eth(dst, pod_mac(10), 0x0800, ip);
            n.p.begin_batch();
            assert_eq!(
                n.p.process(0, &mut f, tso(size)),
                Action::Drop(DropReason::BadGsoSize),
                "gso_size {size}"
            );
        }
    }
    assert_eq!(n.p.counts().dropped(DropReason::BadGsoSize), 9);
    let mut f = eth(R, pod_mac(10), 0x0800, &to_peer);
    assert_eq!(
        n.p.process(0, &mut f, tso(crate::gso::MIN_GSO_SIZE)),
        Action::Encap(0),
        "the minimum itself goes on"
    );
    let mut f = eth(R, pod_mac(10), 0x0800, &to_pod);
    assert_eq!(n.p.process(0, &mut f, tso(1448)), Action::Forward(1));
    assert_accounted(&n);
}

/// An IPv4 total length of 0 means "to the end of the buffer" only in a GSO superframe (BIG
/// TCP); in a plain frame, routed from a pod or received through the tunnel, it is malformed.
#[test]
fn a_total_length_of_zero_is_a_superframe_only() {
    let mut n = Node::new();
    let tcp = tcp_segment_bytes(pod_ip(10), 1, pod_ip(11), 2, 0, 0, 0x10, &[7; 100]);
    let mut ip = ipv4(pod_ip(10), pod_ip(11), 6, 64, &tcp);
    ip[2..4].fill(0);
    ip[10..12].fill(0);
    let c = !crate::wire::checksum_sum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let frame = eth(R, pod_mac(10), 0x0800, &ip);
    let mut f = frame.clone();
    assert_eq!(n.run(0, &mut f), Action::Drop(DropReason::BadIpv4));
    let mut f = frame.clone();
    n.p.begin_batch();
    assert_eq!(n.p.process(0, &mut f, tso(1448)), Action::Forward(1));
    let inner = eth(R, PEER_VTEP, 0x0800, &ip);
    let mut d = vxlan_wrap(1, &inner);
    let from = "192.168.77.2:8472".parse().expect("addr");
    assert_eq!(
        n.p.process_tunnel(from, &mut d),
        Action::Drop(DropReason::VxlanNotForPod)
    );
    assert_accounted(&n);
}

const HOST: [u8; 6] = [0x02, 0xef, 0, 0, 0, 1];
const HOST_PORT: PortId = 4;

impl Node {
    /// The node with its host port (port 4) attached.
    fn with_host() -> Self {
        let mut n = Node::new();
        n.p.tables
            .update_topology(|t| {
                t.add_port(
                    HOST_PORT,
                    PortInfo {
                        name: "podsw0".into(),
                        kind: PortKind::Host {
                            mac: EthernetAddress(HOST),
                        },
                    },
                )
            })
            .expect("host port");
        n.p.begin_batch();
        n
    }
}

#[test]
fn pods_reach_the_node_and_the_outside_through_the_host_port() {
    let mut n = Node::with_host();
    let outside = Ipv4Addr::new(198, 51, 100, 1);
    let payload = udp(1000, 80, b"out");
    // Outside every pod network: routed to the host port (MACs rewritten, TTL - 1).
    let mut f = eth(
        R,
        pod_mac(10),
        0x0800,
        &ipv4(pod_ip(10), outside, 17, 64, &payload),
    );
    assert_eq!(n.run(0, &mut f), Action::Forward(HOST_PORT));
    assert_eq!(
        f,
        eth(
            HOST,
            R,
            0x0800,
            &ipv4(pod_ip(10), outside, 17, 63, &payload)
        )
    );
    // The gateway address, other than the ping the switch answers: the node's own.
    let mut f = eth(
        R,
        pod_mac(10),
        0x0800,
        &ipv4(pod_ip(10), gw(), 6, 64, &[0u8; 20]),
    );
    assert_eq!(n.run(0, &mut f), Action::Forward(HOST_PORT));
    // Peers and pods still go where they went.
    let mut f = eth(
        R,
        pod_mac(10),
        0x0800,
        &ipv4(pod_ip(10), Ipv4Addr::new(10, 244, 2, 5), 17, 64, &payload),
    );
    assert_eq!(n.run(0, &mut f), Action::Encap(0));
    // Without a host port, outside is unreachable (ICMP net unreachable).
    let mut plain = Node::new();
    let mut f = eth(
        R,
        pod_mac(10),
        0x0800,
        &ipv4(pod_ip(10), outside, 17, 64, &payload),
    );
    assert!(matches!(
        plain.run(0, &mut f),
        Action::Reject(DropReason::NoRoute, _)
    ));
}

#[test]
fn the_node_reaches_local_and_remote_pods_through_the_host_port() {
    let mut n = Node::with_host();
    // ARP from the node: a local pod's MAC, the router's for a peer's address; pods never see it.
    let mut req = eth(
        [0xff; 6],
        HOST,
        0x0806,
        &arp(1, HOST, gw(), [0; 6], pod_ip(11)),
    );
    assert_eq!(n.run(HOST_PORT, &mut req), Action::Reply);
    assert_eq!(
        req,
        eth(
            HOST,
            pod_mac(11),
            0x0806,
            &arp(2, pod_mac(11), pod_ip(11), HOST, gw())
        )
    );
    let remote = Ipv4Addr::new(10, 244, 2, 5);
    let mut req = eth([0xff; 6], HOST, 0x0806, &arp(1, HOST, gw(), [0; 6], remote));
    assert_eq!(n.run(HOST_PORT, &mut req), Action::Reply);
    assert_eq!(req, eth(HOST, R, 0x0806, &arp(2, R, remote, HOST, gw())));
    let nobody = Ipv4Addr::new(10, 244, 1, 99);
    let mut req = eth([0xff; 6], HOST, 0x0806, &arp(1, HOST, gw(), [0; 6], nobody));
    assert_eq!(
        n.run(HOST_PORT, &mut req),
        Action::Drop(DropReason::ArpUnanswered)
    );
    // To a local pod: plain L2 to its MAC.
    let mut f = eth(
        pod_mac(11),
        HOST,
        0x0800,
        &ipv4(gw(), pod_ip(11), 6, 64, &[0u8; 20]),
    );
    assert_eq!(n.run(HOST_PORT, &mut f), Action::Forward(1));
    // To a remote pod: routed into the tunnel.
    let mut f = eth(R, HOST, 0x0800, &ipv4(gw(), remote, 6, 64, &[0u8; 20]));
    assert_eq!(n.run(HOST_PORT, &mut f), Action::Encap(0));
    // Its reply from the other node, to the gateway address: to the host port.
    let peer: SocketAddrV4 = "192.168.77.2:40000".parse().expect("addr");
    let inner = eth(R, PEER_VTEP, 0x0800, &ipv4(remote, gw(), 6, 64, &[0u8; 20]));
    let mut dgram = vxlan_wrap(1, &inner);
    n.p.begin_batch();
    assert_eq!(
        n.p.process_tunnel(peer, &mut dgram),
        Action::Forward(HOST_PORT)
    );
    assert_eq!(
        &dgram[vxlan::HEADER_LEN..],
        &eth(HOST, R, 0x0800, &ipv4(remote, gw(), 6, 63, &[0u8; 20]))[..]
    );
    // A local pod's reply to the node: routed to the host port.
    let mut f = eth(
        R,
        pod_mac(11),
        0x0800,
        &ipv4(pod_ip(11), gw(), 6, 64, &[0u8; 20]),
    );
    assert_eq!(n.run(1, &mut f), Action::Forward(HOST_PORT));
    // Nothing loops back: the node's own packet for the outside is refused, not returned.
    let mut f = eth(
        R,
        HOST,
        0x0800,
        &ipv4(gw(), Ipv4Addr::new(198, 51, 100, 1), 6, 64, &[0u8; 20]),
    );
    assert!(matches!(
        n.run(HOST_PORT, &mut f),
        Action::Reject(DropReason::NoRoute, _)
    ));
    assert_accounted(&n);
}

#[test]
fn the_host_port_may_not_claim_a_pods_address_or_another_mac() {
    let mut n = Node::with_host();
    let mut f = eth(
        pod_mac(11),
        HOST,
        0x0800,
        &ipv4(pod_ip(10), pod_ip(11), 6, 64, &[0u8; 20]),
    );
    assert_eq!(
        n.run(HOST_PORT, &mut f),
        Action::Drop(DropReason::SpoofedIp)
    );
    let mut f = eth(
        [0xff; 6],
        HOST,
        0x0806,
        &arp(1, HOST, pod_ip(10), [0; 6], pod_ip(11)),
    );
    assert_eq!(
        n.run(HOST_PORT, &mut f),
        Action::Drop(DropReason::SpoofedIp)
    );
    let mut f = eth(
        pod_mac(11),
        pod_mac(10),
        0x0800,
        &ipv4(gw(), pod_ip(11), 6, 64, &[0u8; 20]),
    );
    assert_eq!(
        n.run(HOST_PORT, &mut f),
        Action::Drop(DropReason::SpoofedMac)
    );
    // Nor a free address of the pod CIDR, nor a peer's.
    for claimed in [pod_ip(99), Ipv4Addr::new(10, 244, 2, 5)] {
        let mut f = eth(
            R,
            HOST,
            0x0800,
            &ipv4(claimed, pod_ip(11), 6, 64, &[0u8; 20]),
        );
        assert_eq!(
            n.run(HOST_PORT, &mut f),
            Action::Drop(DropReason::SpoofedIp),
            "{claimed}"
        );
    }
    // The kernel re-checks a cached entry with unicast ARP to the router: answered too.
    let remote = Ipv4Addr::new(10, 244, 2, 5);
    let mut req = eth(R, HOST, 0x0806, &arp(1, HOST, gw(), R, remote));
    assert_eq!(n.run(HOST_PORT, &mut req), Action::Reply);
    assert_eq!(req, eth(HOST, R, 0x0806, &arp(2, R, remote, HOST, gw())));
    let mut f = eth([0x33, 0x33, 0, 0, 0, 1], HOST, 0x86dd, &[0u8; 40]);
    assert_eq!(
        n.run(HOST_PORT, &mut f),
        Action::Drop(DropReason::EtherType)
    );
    // A second host port is refused.
    let second = n.p.tables.update_topology(|t| {
        t.add_port(
            5,
            PortInfo {
                name: "again".into(),
                kind: PortKind::Host {
                    mac: EthernetAddress([2, 0xef, 0, 0, 0, 2]),
                },
            },
        )
    });
    assert!(second.is_err());
    assert_accounted(&n);
}

mod services {
    use super::*;
    use crate::table::{Affinity, Flow, Proto, Service, HAIRPIN_PORTS};
    use crate::wire::checksum::checksum_sum;

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);

    fn set_service(n: &mut Node, backends: &[&str], proto: Proto) {
        let service = Service {
            name: "web".into(),
            vip: VIP,
            port: 80,
            proto,
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
            affinity: Affinity::None,
        };
        n.p.tables
            .update_topology(|t| t.upsert_service(service))
            .unwrap();
        n.p.begin_batch();
    }

    fn l4_ok(ip: &[u8]) -> bool {
        let seg = &ip[20..];
        let mut p = ip[12..20].to_vec();
        p.extend_from_slice(&[0, ip[9]]);
        p.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        p.extend_from_slice(seg);
        checksum_sum(&p) == 0xffff && checksum_sum(&ip[..20]) == 0xffff
    }

    fn syn(src: Ipv4Addr, sport: u16) -> Vec<u8> {
        let seg = tcp_segment_bytes(src, sport, VIP, 80, 1000, 0, 0x02, b"");
        eth(
            R,
            pod_mac(src.octets()[3]),
            0x0800,
            &ipv4(src, VIP, 6, 64, &seg),
        )
    }

    fn ends(f: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
        let ip = &f[14..];
        let a = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
        let p = |o: usize| u16::from_be_bytes([ip[20 + o], ip[21 + o]]);
        (a(12), p(0), a(16), p(2))
    }

    #[test]
    fn new_flows_are_translated_to_a_backend_and_keep_it_and_replies_get_the_vip() {
        let mut n = Node::new();
        set_service(&mut n, &["10.244.1.11:8080", "10.244.2.5:8080"], Proto::Tcp);
        let mut seen = std::collections::BTreeSet::new();
        for sport in 40000..40064u16 {
            let mut f = syn(pod_ip(10), sport);
            let a = n.run(0, &mut f);
            let (_, _, dst, dport) = ends(&f);
            assert_eq!(dport, 8080);
            assert!(l4_ok(&f[14..]), "checksums after DNAT");
            match a {
                Action::Forward(1) => assert_eq!(dst, pod_ip(11)),
                Action::Encap(0) => assert_eq!(dst, REMOTE),
                other => panic!("{other:?}"),
            }
            seen.insert(dst);
            // The flow keeps its backend.
            let mut again = syn(pod_ip(10), sport);
            assert_eq!(n.run(0, &mut again), a);
        }
        assert_eq!(seen.len(), 2, "both backends get flows");
        assert_eq!(n.p.tables.conntrack.len(), 64);

        // Replies: from the local backend at L2, from the remote one through the tunnel.
        let mut f = syn(pod_ip(10), 40000);
        let a = n.run(0, &mut f);
        let (_, _, b, _) = ends(&f);
        let reply_seg = tcp_segment_bytes(b, 8080, pod_ip(10), 40000, 5, 1001, 0x12, b"");
        if a == Action::Forward(1) {
            let mut r = eth(
                pod_mac(10),
                pod_mac(11),
                0x0800,
                &ipv4(b, pod_ip(10), 6, 64, &reply_seg),
            );
            assert_eq!(n.run(1, &mut r), Action::Forward(0));
            assert_eq!(ends(&r), (VIP, 80, pod_ip(10), 40000));
            assert!(l4_ok(&r[14..]));
        } else {
            let inner = eth(
                R,
                PEER_VTEP,
                0x0800,
                &ipv4(b, pod_ip(10), 6, 64, &reply_seg),
            );
            let mut d = vxlan_wrap(1, &inner);
            n.p.begin_batch();
            let peer: SocketAddrV4 = "192.168.77.2:40000".parse().unwrap();
            assert_eq!(n.p.process_tunnel(peer, &mut d), Action::Forward(0));
            let r = &d[vxlan::HEADER_LEN..];
            assert_eq!(ends(r), (VIP, 80, pod_ip(10), 40000));
            assert!(l4_ok(&r[14..]));
        }
    }

    /// A fast path that counts the flows it is given.
    #[derive(Default)]
    struct Installs(std::sync::atomic::AtomicUsize);

    impl crate::table::FlowOffload for Installs {
        fn install(&self, _: &crate::table::OffloadedFlow, _: u32) -> bool {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true
        }
        fn remove(&self, _: &crate::table::OffloadedFlow) {}
        fn idle_secs(&self, _: &crate::table::OffloadedFlow) -> Option<u32> {
            None
        }
        fn drain_events(&self, _: &mut Vec<crate::table::OffloadEvent>) {}
    }

    #[test]
    fn a_decided_flow_is_compiled_after_its_batch_once() {
        let mut n = Node::new();
        let installs = std::sync::Arc::new(Installs::default());
        assert!(n.p.tables.conntrack.offload_to(installs.clone()));
        set_service(&mut n, &["10.244.1.11:8080"], Proto::Tcp);
        let count = || installs.0.load(std::sync::atomic::Ordering::Relaxed);
        n.p.begin_batch();
        let mut f = syn(pod_ip(10), 40000);
        assert_eq!(
            n.p.process(0, &mut f, VnetHdr::default()),
            Action::Forward(1)
        );
        assert_eq!(count(), 0, "not before the batch ends");
        n.p.end_batch();
        assert_eq!(count(), 1);
        // Its reply, and the client's next segment, belong to a compiled flow.
        let seg = tcp_segment_bytes(pod_ip(11), 8080, pod_ip(10), 40000, 5, 1001, 0x12, b"");
        let mut r = eth(
            pod_mac(10),
            pod_mac(11),
            0x0800,
            &ipv4(pod_ip(11), pod_ip(10), 6, 64, &seg),
        );
        assert_eq!(n.run(1, &mut r), Action::Forward(0));
        assert_eq!(count(), 1);
        assert_eq!(n.p.tables.conntrack.compiled(), 1);
    }

    #[test]
    fn no_backends_answers_tcp_with_a_reset_and_udp_with_port_unreachable() {
        let mut n = Node::new();
        set_service(&mut n, &[], Proto::Tcp);
        let mut f = syn(pod_ip(10), 40000);
        let Action::Reject(DropReason::NoBackends, len) = n.run(0, &mut f) else {
            panic!("no reset")
        };
        let rst = &n.p.scratch()[..usize::from(len)];
        assert_eq!(&rst[0..6], &pod_mac(10));
        assert_eq!(ends(rst), (VIP, 80, pod_ip(10), 40000));
        assert_eq!(rst[14 + 20 + 13], 0x14, "RST|ACK");
        assert_eq!(
            &rst[14 + 20 + 8..14 + 20 + 12],
            &1001u32.to_be_bytes(),
            "acks the SYN"
        );
        assert!(l4_ok(&rst[14..]));

        set_service(&mut n, &[], Proto::Udp);
        let seg = udp_with_checksum(pod_ip(10), 5353, VIP, 80, b"q");
        let mut f = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 17, 64, &seg));
        let Action::Reject(DropReason::NoBackends, len) = n.run(0, &mut f) else {
            panic!("no ICMP")
        };
        let icmp = &n.p.scratch()[14 + 20..usize::from(len)];
        assert_eq!((icmp[0], icmp[1]), (3, 3), "port unreachable");
        // No service on that port at all.
        let seg = tcp_segment_bytes(pod_ip(10), 1, VIP, 81, 0, 0, 0x02, b"");
        let mut f = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 6, 64, &seg));
        assert_eq!(n.run(0, &mut f), Action::Drop(DropReason::NoService));
        assert_accounted(&n);
    }

    /// Found by the `pipeline` fuzz target (fuzz/regressions/pipeline/): a TCP packet for a
    /// service whose header ends before its checksum field got a backend and a tracked flow,
    /// then failed translation and was dropped without being counted.
    #[test]
    fn a_service_packet_cut_short_of_its_checksum_is_a_counted_drop_and_tracks_nothing() {
        // As the fuzzer sent it: IPv4 total length 0, 12 bytes of TCP header.
        const FRAME: [u8; 46] = [
            0x02, 0xee, 0x00, 0x00, 0x00, 0x01, 0x02, 0x42, 0x0a, 0xf4, 0x01, 0x0a, 0x08, 0x00,
            0x45, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x06, 0x64, 0x69, 0x0a, 0xf4,
            0x01, 0x0a, 0x0a, 0x60, 0x00, 0x0a, 0x9c, 0x21, 0x00, 0x50, 0x00, 0x02, 0xee, 0x00,
            0xc4, 0x94, 0xff, 0x12,
        ];
        let mut n = Node::new();
        set_service(&mut n, &["10.244.1.11:8080", "10.244.2.5:8080"], Proto::Tcp);
        let mut f = FRAME;
        assert_eq!(n.run(0, &mut f), Action::Drop(DropReason::BadIpv4));
        // The same with a consistent total length, and UDP cut short of its checksum.
        let tcp = tcp_segment_bytes(pod_ip(10), 40000, VIP, 80, 1, 0, 0x02, b"");
        let mut f = eth(
            R,
            pod_mac(10),
            0x0800,
            &ipv4(pod_ip(10), VIP, 6, 64, &tcp[..17]),
        );
        assert_eq!(n.run(0, &mut f), Action::Drop(DropReason::BadIpv4));
        set_service(&mut n, &["10.244.1.11:8080"], Proto::Udp);
        let mut f = eth(
            R,
            pod_mac(10),
            0x0800,
            &ipv4(pod_ip(10), VIP, 17, 64, &[0, 1, 0, 80, 0, 8, 0]),
        );
        assert_eq!(n.run(0, &mut f), Action::Drop(DropReason::BadIpv4));
        assert_eq!(n.p.counts().dropped(DropReason::BadIpv4), 3);
        assert!(n.p.tables.conntrack.is_empty(), "no flow tracked");
        assert_accounted(&n);
        // A whole header still goes through.
        set_service(&mut n, &["10.244.1.11:8080"], Proto::Tcp);
        let mut f = syn(pod_ip(10), 40000);
        assert!(matches!(
            n.run(0, &mut f),
            Action::Forward(_) | Action::Encap(_)
        ));
    }

    #[test]
    fn one_client_port_to_two_vips_of_one_backend_gets_a_free_port_not_a_refusal() {
        let mut n = Node::new();
        set_service(&mut n, &["10.244.1.11:8080"], Proto::Tcp);
        const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
        let other = Service {
            name: "web2".into(),
            vip: VIP2,
            port: 80,
            proto: Proto::Tcp,
            backends: vec!["10.244.1.11:8080".parse().unwrap()],
            affinity: Affinity::None,
        };
        n.p.tables
            .update_topology(|t| t.upsert_service(other))
            .unwrap();
        n.p.begin_batch();
        let mut f = syn(pod_ip(10), 40000);
        assert_eq!(n.run(0, &mut f), Action::Forward(1));
        assert_eq!(ends(&f), (pod_ip(10), 40000, pod_ip(11), 8080));
        // The same client port to the second VIP: the same backend, so the same reply tuple.
        let seg = tcp_segment_bytes(pod_ip(10), 40000, VIP2, 80, 1000, 0, 0x02, b"");
        let mut g = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP2, 6, 64, &seg));
        assert_eq!(n.run(0, &mut g), Action::Forward(1), "not refused");
        let (src, port, dst, dport) = ends(&g);
        assert_eq!((src, dst, dport), (pod_ip(10), pod_ip(11), 8080));
        assert!(HAIRPIN_PORTS.contains(&port), "a free port: {port}");
        assert!(l4_ok(&g[14..]));
        // Each flow's reply finds its own VIP and the client's own port.
        for (from_port, vip) in [(40000, VIP), (port, VIP2)] {
            let seg =
                tcp_segment_bytes(pod_ip(11), 8080, pod_ip(10), from_port, 5, 1001, 0x12, b"");
            let mut r = eth(
                pod_mac(10),
                pod_mac(11),
                0x0800,
                &ipv4(pod_ip(11), pod_ip(10), 6, 64, &seg),
            );
            assert_eq!(n.run(1, &mut r), Action::Forward(0));
            assert_eq!(ends(&r), (vip, 80, pod_ip(10), 40000));
            assert!(l4_ok(&r[14..]));
        }
        assert_eq!(n.p.tables.conntrack.len(), 2);
        assert_accounted(&n);
    }

    #[test]
    fn hairpin_and_a_removed_backend() {
        let mut n = Node::new();
        set_service(&mut n, &["10.244.1.10:8080"], Proto::Tcp);
        let mut f = syn(pod_ip(10), 40000);
        assert_eq!(
            n.run(0, &mut f),
            Action::Forward(0),
            "back to the client itself"
        );
        let (src, hairpin_port, dst, dport) = ends(&f);
        assert_eq!(
            (src, dst, dport),
            (gw(), pod_ip(10), 8080),
            "source: the gateway"
        );
        assert!(
            HAIRPIN_PORTS.contains(&hairpin_port),
            "a hairpin port: {hairpin_port}"
        );
        assert!(l4_ok(&f[14..]));
        // The node's own connection from the gateway address, with the client's port, to the
        // same backend: its replies are not taken for the hairpin flow's.
        let seg = tcp_segment_bytes(pod_ip(10), 8080, gw(), 40000, 5, 1001, 0x12, b"");
        let mut own = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), gw(), 6, 64, &seg));
        n.run(0, &mut own);
        assert_eq!(ends(&own), (pod_ip(10), 8080, gw(), 40000), "untouched");
        // The hairpin flow's reply, to the gateway, through the router: back to VIP -> client.
        let seg = tcp_segment_bytes(pod_ip(10), 8080, gw(), hairpin_port, 5, 1001, 0x12, b"");
        let mut r = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), gw(), 6, 64, &seg));
        assert_eq!(n.run(0, &mut r), Action::Forward(0));
        assert_eq!(ends(&r), (VIP, 80, pod_ip(10), 40000));
        assert!(l4_ok(&r[14..]));
        // Each hairpin flow to the backend has a port of its own.
        let mut ports = std::collections::BTreeSet::from([hairpin_port]);
        for sport in 40001..40101 {
            let mut f = syn(pod_ip(10), sport);
            assert_eq!(n.run(0, &mut f), Action::Forward(0));
            assert!(ports.insert(ends(&f).1), "port reused");
        }

        // The backend removed (another takes its place): the flow is reset.
        set_service(&mut n, &["10.244.1.11:8080"], Proto::Tcp);
        let seg = tcp_segment_bytes(pod_ip(10), 40000, VIP, 80, 1001, 6, 0x10, b"more");
        let mut f = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 6, 64, &seg));
        let Action::Reject(DropReason::BackendGone, len) = n.run(0, &mut f) else {
            panic!("no reset")
        };
        let rst = &n.p.scratch()[..usize::from(len)];
        assert_eq!(rst[14 + 20 + 13], 0x04, "RST");
        assert_eq!(
            &rst[14 + 20 + 4..14 + 20 + 8],
            &6u32.to_be_bytes(),
            "seq = its ack"
        );
        // A new connection goes to the new backend.
        let mut f = syn(pod_ip(10), 40200);
        assert_eq!(n.run(0, &mut f), Action::Forward(1));
        assert_accounted(&n);
    }

    #[test]
    fn a_hairpin_flow_is_refused_by_name_when_its_ports_are_taken() {
        let mut n = Node::new();
        set_service(&mut n, &["10.244.1.10:8080"], Proto::Tcp);
        let id = n.p.topology().services().by_name("web").unwrap().id;
        let backend: SocketAddrV4 = "10.244.1.10:8080".parse().unwrap();
        for port in HAIRPIN_PORTS {
            let flow = Flow::new(
                SocketAddrV4::new(pod_ip(10), port),
                SocketAddrV4::new(VIP, 80),
                backend,
                Some(SocketAddrV4::new(gw(), port)),
                6,
                id,
                0,
            );
            assert!(n.p.tables.conntrack.insert(flow));
        }
        let mut f = syn(pod_ip(10), 1234);
        assert_eq!(n.run(0, &mut f), Action::Drop(DropReason::HairpinPortsBusy));
        // Another client's flows are no hairpin: they go on.
        set_service(&mut n, &["10.244.1.10:8080"], Proto::Tcp);
        let mut f = syn(pod_ip(11), 1234);
        assert_eq!(n.run(1, &mut f), Action::Forward(0));
        assert_accounted(&n);
    }

    #[test]
    fn an_idle_client_of_a_removed_backend_is_probed_and_its_answer_reset() {
        let mut n = Node::new();
        set_service(&mut n, &["10.244.1.11:8080"], Proto::Tcp);
        let mut f = syn(pod_ip(10), 40000);
        assert_eq!(n.run(0, &mut f), Action::Forward(1));
        // The backend's SYN-ACK, straight to the client at L2, and the client's ACK: the
        // flow is established.
        let seg = tcp_segment_bytes(pod_ip(11), 8080, pod_ip(10), 40000, 5000, 1001, 0x12, b"");
        let mut r = eth(
            pod_mac(10),
            pod_mac(11),
            0x0800,
            &ipv4(pod_ip(11), pod_ip(10), 6, 64, &seg),
        );
        assert_eq!(n.run(1, &mut r), Action::Forward(0));
        let seg = tcp_segment_bytes(pod_ip(10), 40000, VIP, 80, 1001, 5001, 0x10, b"");
        let mut a = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 6, 64, &seg));
        assert_eq!(n.run(0, &mut a), Action::Forward(1));
        let id = n.p.topology().services().by_name("web").unwrap().id;
        let client: SocketAddrV4 = "10.244.1.10:40000".parse().unwrap();
        let vip = SocketAddrV4::new(VIP, 80);
        let ct = &n.p.tables.conntrack;
        assert!(
            ct.stranded(id, |b| b.port() == 8080).is_empty(),
            "its backend kept"
        );
        assert_eq!(ct.stranded(id, |_| false), vec![(client, vip)]);
        assert!(
            ct.stranded(id + 1, |_| false).is_empty(),
            "another service's"
        );

        // The probes: bare ACKs from the VIP to the client, sequence numbers 2^31 apart.
        let mut buf = [0u8; 2 * TCP_SEGMENT_FRAME_LEN];
        let len = tcp_probes(
            &mut buf,
            vip,
            client,
            EthernetAddress(pod_mac(10)),
            EthernetAddress(R),
        );
        assert_eq!(len, 2 * TCP_SEGMENT_FRAME_LEN);
        let seqs: Vec<u32> = buf
            .chunks(TCP_SEGMENT_FRAME_LEN)
            .map(|p| {
                assert_eq!(&p[..6], &pod_mac(10), "to the client MAC");
                assert_eq!(&p[6..12], &R, "from the router");
                assert_eq!(ends(p), (VIP, 80, pod_ip(10), 40000));
                assert_eq!(p[14 + 20 + 13], 0x10, "ACK alone");
                assert!(l4_ok(&p[14..]), "checksums");
                u32::from_be_bytes([p[38], p[39], p[40], p[41]])
            })
            .collect();
        assert_eq!(seqs[0] ^ seqs[1], 0x8000_0000);

        // The service deleted; the client's answer (its ACK says what it expects: 777) is
        // reset from the VIP with exactly that sequence number, and the flow forgotten.
        n.p.tables
            .update_topology(|t| t.remove_service("web"))
            .unwrap();
        n.p.begin_batch();
        // Until its flows are ended (a service not back yet after an upgrade), dropped.
        let seg = tcp_segment_bytes(pod_ip(10), 40000, VIP, 80, 1001, 777, 0x10, b"");
        let mut f = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 6, 64, &seg));
        assert_eq!(n.run(0, &mut f), Action::Drop(DropReason::NoService));
        assert_eq!(
            n.p.tables.conntrack.end_service(id),
            vec![(client, vip)],
            "the established flows ended"
        );
        let mut f = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 6, 64, &seg));
        let Action::Reject(DropReason::BackendGone, len) = n.run(0, &mut f) else {
            panic!("no reset")
        };
        let rst = &n.p.scratch()[..usize::from(len)];
        assert_eq!(ends(rst), (VIP, 80, pod_ip(10), 40000));
        assert_eq!(rst[14 + 20 + 13], 0x04, "RST");
        assert_eq!(&rst[38..42], &777u32.to_be_bytes(), "seq = its ack");
        assert!(l4_ok(&rst[14..]));
        assert!(n.p.tables.conntrack.is_empty());
        let mut f = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 6, 64, &seg));
        let again = n.run(0, &mut f);
        assert!(
            !matches!(
                again,
                Action::Forward(_) | Action::Reject(DropReason::BackendGone, _)
            ),
            "the flow is gone: {again:?}"
        );
        assert_accounted(&n);
    }

    #[test]
    fn a_backends_icmp_error_reaches_the_client_about_the_vip() {
        let mut n = Node::new();
        set_service(&mut n, &["10.244.1.11:5353"], Proto::Udp);
        let seg = udp_with_checksum(pod_ip(10), 5000, VIP, 80, b"q");
        let mut f = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 17, 64, &seg));
        assert_eq!(n.run(0, &mut f), Action::Forward(1));
        // Port unreachable from the backend, quoting the datagram it got, to the client at L2.
        let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&f[14..]);
        let c = !checksum_sum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        let mut e = eth(
            pod_mac(10),
            pod_mac(11),
            0x0800,
            &ipv4(pod_ip(11), pod_ip(10), 1, 64, &m),
        );
        assert_eq!(n.run(1, &mut e), Action::Forward(0));
        let ip = &e[14..];
        assert_eq!(&ip[12..16], &VIP.octets(), "from the VIP");
        assert_eq!(checksum_sum(&ip[..20]), 0xffff);
        assert_eq!(checksum_sum(&ip[20..]), 0xffff, "ICMP checksum");
        assert_eq!(ends(&e[28..]), (pod_ip(10), 5000, VIP, 80), "about the VIP");
        assert!(l4_ok(&ip[28..]));
        let flows = n.p.tables.conntrack.list(0);
        assert_eq!(flows[0].state, "unreplied", "an error is no reply");
        assert_accounted(&n);
    }

    #[test]
    fn icmp_errors_about_a_service_flow_quote_what_the_client_sent() {
        let mut n = Node::new();
        set_service(&mut n, &["10.244.2.5:8080"], Proto::Udp);
        n.p.set_tunnel_mtu(1000);
        let seg = udp_with_checksum(pod_ip(10), 5000, VIP, 80, &[0u8; 1200]);
        let mut big = ipv4(pod_ip(10), VIP, 17, 64, &seg);
        big[6] |= 0x40; // DF
        let c = checksum_sum(&{
            let mut h = big[..20].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        big[10..12].copy_from_slice(&(!c).to_be_bytes());
        let mut f = eth(R, pod_mac(10), 0x0800, &big);
        let Action::Reject(DropReason::TooBigForTunnel, len) = n.run(0, &mut f) else {
            panic!("no fragmentation needed")
        };
        let err = &n.p.scratch()[..usize::from(len)];
        // The quoted header is the client's own: to the VIP.
        assert_eq!(&err[14 + 20 + 8 + 16..14 + 20 + 8 + 20], &VIP.octets());
        let seg = udp_with_checksum(pod_ip(10), 5001, VIP, 80, b"x");
        let mut f = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 17, 1, &seg));
        let Action::Reject(DropReason::TtlExceeded, len) = n.run(0, &mut f) else {
            panic!("no time exceeded")
        };
        let err = &n.p.scratch()[..usize::from(len)];
        assert_eq!(&err[14 + 20 + 8 + 16..14 + 20 + 8 + 20], &VIP.octets());
        assert!(
            n.p.tables.conntrack.is_empty(),
            "nothing tracked for refused packets"
        );
    }

    #[test]
    fn partial_checksums_stay_partial_through_dnat() {
        let mut n = Node::new();
        set_service(&mut n, &["10.244.1.11:8080"], Proto::Tcp);
        let mut seg = tcp_segment_bytes(pod_ip(10), 40000, VIP, 80, 1, 0, 0x18, &[1u8; 64]);
        let pseudo = |src: Ipv4Addr, dst: Ipv4Addr, len: usize| {
            let mut p = src.octets().to_vec();
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&[0, 6]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
            checksum_sum(&p)
        };
        let s = pseudo(pod_ip(10), VIP, seg.len());
        seg[16..18].copy_from_slice(&s.to_be_bytes());
        let mut f = eth(R, pod_mac(10), 0x0800, &ipv4(pod_ip(10), VIP, 6, 64, &seg));
        let vnet = VnetHdr {
            flags: crate::wire::virtio::FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        n.p.begin_batch();
        assert_eq!(n.p.process(0, &mut f, vnet), Action::Forward(1));
        let ip = &f[14..];
        assert_eq!(
            u16::from_be_bytes([ip[36], ip[37]]),
            pseudo(pod_ip(10), pod_ip(11), seg.len())
        );
    }
}
