//! Two nodes in one process, joined by VXLAN over UDP on 127.0.0.0/8: smoltcp pods on each,
//! the tunnel's admission rules, and path-MTU signalling. No root needed.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use podstack::Pod;
use podswitch_dataplane::pipeline::{DropReason, NodeConfig};
use podswitch_dataplane::port::UdpTunnel;
use podswitch_dataplane::switch::{Switch, SwitchConfig};
use podswitch_dataplane::table::{Peer, PortInfo, PortKind};
use podswitch_dataplane::testutil::{eth, ipv4_tos, pattern, udp, vxlan_wrap, wait_for};
use podswitch_dataplane::wire::EthernetAddress;

const VTEP_A: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const VTEP_B: [u8; 6] = [0x02, 0xee, 0, 0, 0, 2];

struct Cluster {
    a: Switch,
    b: Switch,
    addr_a: SocketAddrV4,
    addr_b: SocketAddrV4,
}

/// Node A (10.244.1.0/24) on 127.0.0.1, node B (10.244.2.0/24) on 127.0.0.2, each the other's
/// peer. `tweak` adjusts node A's settings.
fn cluster(tweak: impl FnOnce(&mut NodeConfig)) -> Cluster {
    let ta = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind A");
    let tb = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 2), 0).expect("bind B");
    let (addr_a, addr_b) = (ta.local_addr(), tb.local_addr());
    let mut cfg_a = NodeConfig::new(
        "10.244.1.0/24".parse().expect("cidr"),
        EthernetAddress(VTEP_A),
    );
    tweak(&mut cfg_a);
    let cfg_b = NodeConfig::new(
        "10.244.2.0/24".parse().expect("cidr"),
        EthernetAddress(VTEP_B),
    );
    let a = Switch::start_with_tunnel(SwitchConfig::new(cfg_a), Some(ta)).expect("node A");
    let b = Switch::start_with_tunnel(SwitchConfig::new(cfg_b), Some(tb)).expect("node B");
    a.add_peer(Peer {
        name: "node-b".into(),
        underlay: addr_b,
        pod_cidr: "10.244.2.0/24".parse().expect("cidr"),
        vtep_mac: EthernetAddress(VTEP_B),
    })
    .expect("peer B");
    b.add_peer(Peer {
        name: "node-a".into(),
        underlay: addr_a,
        pod_cidr: "10.244.1.0/24".parse().expect("cidr"),
        vtep_mac: EthernetAddress(VTEP_A),
    })
    .expect("peer A");
    Cluster {
        a,
        b,
        addr_a,
        addr_b,
    }
}

#[test]
fn smoltcp_pods_on_two_nodes_talk_tcp_both_ways() {
    let c = cluster(|_| {});
    let pa = Pod::attach(&c.a, "a1", Ipv4Addr::new(10, 244, 1, 10)).expect("pod on A");
    let pb = Pod::attach(&c.b, "b1", Ipv4Addr::new(10, 244, 2, 10)).expect("pod on B");
    let (ca, cb) = (pa.container("client"), pb.container("server"));
    let mut listener = cb.tcp_listen(7000).expect("listen on B");
    const LEN: usize = 1 << 20;
    let server = std::thread::spawn(move || {
        let conn = listener.accept().expect("accept");
        let peer = conn.peer_addr().expect("peer");
        let reader = conn.clone();
        let rx = std::thread::spawn(move || {
            let mut got = vec![0u8; LEN];
            reader.read_exact(&mut got).expect("server reads");
            got
        });
        conn.write_all(&pattern(9, LEN)).expect("server writes");
        (peer, rx.join().expect("reader"))
    });
    let conn = ca
        .tcp_connect(SocketAddrV4::new(pb.ip(), 7000))
        .expect("connect across nodes");
    let reader = conn.clone();
    let rx = std::thread::spawn(move || {
        let mut got = vec![0u8; LEN];
        reader.read_exact(&mut got).expect("client reads");
        got
    });
    conn.write_all(&pattern(8, LEN)).expect("client writes");
    let client_got = rx.join().expect("client reader");
    let (peer, server_got) = server.join().expect("server");
    assert_eq!(
        peer.ip(),
        &pa.ip(),
        "pod IPs are preserved across nodes (no NAT)"
    );
    assert!(server_got == pattern(8, LEN), "A -> B bytes corrupted");
    assert!(client_got == pattern(9, LEN), "B -> A bytes corrupted");
    let (_, ta) = c.a.tunnel().expect("tunnel A");
    let t = ta.snapshot();
    assert!(
        t.tx_bytes > LEN as u64 && t.rx_bytes > LEN as u64,
        "the data crossed the tunnel: {t:?}"
    );
    for sw in [&c.a, &c.b] {
        let m = sw.metrics().snapshot();
        assert_eq!(
            m.dropped(DropReason::VxlanUnknownPeer) + m.dropped(DropReason::VxlanBadVni),
            0
        );
    }
}

#[test]
fn tunnel_refuses_strangers_and_other_vnis() {
    let c = cluster(|_| {});
    let pb_mac = [0x02, 0x42, 10, 244, 2, 10];
    let (_, mut ep) =
        c.b.attach_mem_pod(PortInfo {
            name: "b1".into(),
            kind: PortKind::Pod {
                mac: EthernetAddress(pb_mac),
                ip: Ipv4Addr::new(10, 244, 2, 10),
            },
        })
        .expect("pod on B");
    let inner = eth(
        VTEP_B,
        VTEP_A,
        0x0800,
        &ipv4_tos(
            Ipv4Addr::new(10, 244, 1, 10),
            Ipv4Addr::new(10, 244, 2, 10),
            17,
            64,
            0,
            false,
            &udp(1, 2, b"hi"),
        ),
    );
    let stranger = UdpSocket::bind("127.0.0.9:0").expect("bind stranger");
    stranger
        .send_to(&vxlan_wrap(1, &inner), c.addr_b)
        .expect("send");
    // From node A's address (another port is fine: peers are known by IP) but the wrong VNI.
    let wrong_vni = UdpSocket::bind("127.0.0.1:0").expect("bind");
    wrong_vni
        .send_to(&vxlan_wrap(2, &inner), c.addr_b)
        .expect("send");
    let mut truncated = vxlan_wrap(1, &inner);
    truncated.truncate(12);
    wrong_vni.send_to(&truncated, c.addr_b).expect("send");
    wait_for("three datagrams judged", || {
        c.b.metrics().snapshot().rx >= 3
    });
    let m = c.b.metrics().snapshot();
    assert_eq!(m.dropped(DropReason::VxlanUnknownPeer), 1);
    assert_eq!(m.dropped(DropReason::VxlanBadVni), 1);
    assert_eq!(m.dropped(DropReason::VxlanMalformed), 1);
    assert_eq!(m.forwarded, 0);
    assert!(
        matches!(ep.try_recv(), Ok(None)),
        "a refused datagram reached the pod"
    );
    // The same frame from the peer with the right VNI is delivered, MACs rewritten, TTL - 1.
    wrong_vni
        .send_to(&vxlan_wrap(1, &inner), c.addr_b)
        .expect("send");
    let got = loop {
        if let Some(b) = ep.recv_timeout(Duration::from_millis(100)).expect("open") {
            break b.get(0).map(|(f, _)| f.to_vec()).expect("frame");
        }
    };
    assert_eq!(&got[..6], &pb_mac);
    assert_eq!(&got[6..12], &VTEP_B);
    assert_eq!(got[22], 63);
    ep.flush().expect("flush");
    let _ = c.addr_a;
}

#[test]
fn oversized_frame_for_the_tunnel_gets_fragmentation_needed() {
    // Pods may send 1500-byte packets, but the tunnel carries 1450 (a 1500-byte underlay).
    let c = cluster(|cfg| {
        cfg.mtu = 1500;
        cfg.tunnel_mtu = 1450;
    });
    let mac = [0x02, 0x42, 10, 244, 1, 10];
    let me = Ipv4Addr::new(10, 244, 1, 10);
    let (_, mut ep) =
        c.a.attach_mem_pod(PortInfo {
            name: "a1".into(),
            kind: PortKind::Pod {
                mac: EthernetAddress(mac),
                ip: me,
            },
        })
        .expect("pod on A");
    let big = ipv4_tos(
        me,
        Ipv4Addr::new(10, 244, 2, 10),
        17,
        64,
        0,
        true,
        &udp(5000, 6000, &[7u8; 1472]),
    );
    assert_eq!(big.len(), 1500);
    ep.send_frame(&eth(VTEP_A, mac, 0x0800, &big))
        .expect("queue");
    ep.flush().expect("flush");
    let reply = loop {
        if let Some(b) = ep.recv_timeout(Duration::from_millis(100)).expect("open") {
            break b.get(0).map(|(f, _)| f.to_vec()).expect("frame");
        }
    };
    // ICMP type 3 code 4 from the gateway, next-hop MTU 1450, quoting our header.
    assert_eq!(&reply[12..14], &[0x08, 0x00]);
    assert_eq!(&reply[26..30], &[10, 244, 1, 1], "from the gateway");
    assert_eq!(&reply[30..34], &me.octets());
    assert_eq!((reply[34], reply[35]), (3, 4));
    assert_eq!(u16::from_be_bytes([reply[40], reply[41]]), 1450);
    assert_eq!(&reply[42..62], &big[..20], "quotes the offending header");
    // The round publishes its counts after it transmits: the reply can be here first.
    wait_for("the drop counted", || {
        c.a.metrics()
            .snapshot()
            .dropped(DropReason::TooBigForTunnel)
            >= 1
    });
    let m = c.a.metrics().snapshot();
    assert_eq!(m.dropped(DropReason::TooBigForTunnel), 1);
    let (_, t) = c.a.tunnel().expect("tunnel");
    assert_eq!(t.snapshot().tx_frames, 0, "nothing oversized went out");
}

/// Each peer's tunnel counters: inner frames and bytes sent to it and received from it, and its
/// datagrams dropped by reason; a stranger's datagram counts for no peer.
/// An in-memory pod `name` (MAC, IP) on switch `sw`: its end of the port.
fn mem_pod(
    sw: &Switch,
    name: &str,
    mac: [u8; 6],
    ip: Ipv4Addr,
) -> podswitch_dataplane::port::MemEndpoint {
    sw.attach_mem_pod(PortInfo {
        name: name.into(),
        kind: PortKind::Pod {
            mac: EthernetAddress(mac),
            ip,
        },
    })
    .expect("pod")
    .1
}

#[test]
fn per_peer_counters_follow_the_tunnel() {
    let c = cluster(|_| {});
    let (pa_mac, pb_mac) = ([0x02, 0x42, 10, 244, 1, 10], [0x02, 0x42, 10, 244, 2, 10]);
    let (pa_ip, pb_ip) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 2, 10));
    let mut ea = mem_pod(&c.a, "a1", pa_mac, pa_ip);
    let eb = mem_pod(&c.b, "b1", pb_mac, pb_ip);
    let frame = eth(
        VTEP_A,
        pa_mac,
        0x0800,
        &ipv4_tos(pa_ip, pb_ip, 17, 64, 0, false, &udp(1, 2, b"hello")),
    );
    for _ in 0..3 {
        ea.send_frame(&frame).expect("send");
    }
    ea.flush().expect("flush");
    // Each side publishes its counters at the end of its round: B may count the frames before
    // A has published that it sent them.
    wait_for(
        "three frames through the tunnel, counted at both ends",
        || {
            let got =
                c.b.peer_counts()
                    .get("node-a")
                    .is_some_and(|p| p.rx_frames >= 3);
            got && c
                .a
                .peer_counts()
                .get("node-b")
                .is_some_and(|p| p.tx_frames >= 3)
        },
    );
    let sent = c.a.peer_counts()["node-b"];
    assert_eq!(sent.tx_frames, 3, "{sent:?}");
    assert_eq!(sent.tx_bytes, 3 * frame.len() as u64, "inner frame bytes");
    assert_eq!((sent.rx_frames, sent.rx_dropped), (0, 0));
    let got = c.b.peer_counts()["node-a"];
    assert_eq!((got.rx_frames, got.rx_dropped, got.tx_frames), (3, 0, 0));
    assert_eq!(got.rx_bytes, sent.tx_bytes, "inner frame bytes both ways");
    // A datagram from node A's address with another VNI: a drop of peer node-a, by reason.
    let from_a = UdpSocket::bind("127.0.0.1:0").expect("bind");
    from_a
        .send_to(&vxlan_wrap(2, &frame), c.addr_b)
        .expect("send");
    let stranger = UdpSocket::bind("127.0.0.9:0").expect("bind stranger");
    stranger
        .send_to(&vxlan_wrap(1, &frame), c.addr_b)
        .expect("send");
    wait_for("both datagrams judged", || {
        let m = c.b.metrics().snapshot();
        m.dropped(DropReason::VxlanBadVni) + m.dropped(DropReason::VxlanUnknownPeer) >= 2
    });
    let got = c.b.peer_counts()["node-a"];
    assert_eq!((got.rx_frames, got.rx_dropped), (4, 1), "{got:?}");
    assert_eq!(got.dropped.get(DropReason::VxlanBadVni), 1);
    assert_eq!(
        got.dropped.get(DropReason::VxlanUnknownPeer),
        0,
        "the stranger is no peer"
    );
    drop(eb);
}

#[test]
fn a_garbage_flood_on_the_tunnel_port_is_counted_and_the_peer_gets_through_after() {
    let c = cluster(|_| {});
    let (pa_mac, pb_mac) = ([0x02, 0x42, 10, 244, 1, 10], [0x02, 0x42, 10, 244, 2, 10]);
    let (pa_ip, pb_ip) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 2, 10));
    let mut ea = mem_pod(&c.a, "a1", pa_mac, pa_ip);
    let eb = mem_pod(&c.b, "b1", pb_mac, pb_ip);
    // 200k datagrams at node B: from a stranger (a VXLAN frame), and from node A's own
    // address with garbage (no I flag, truncated, random bytes).
    const EACH: u32 = 50_000;
    let addr_b = c.addr_b;
    let inner = eth(
        VTEP_B,
        VTEP_A,
        0x0800,
        &ipv4_tos(pa_ip, pb_ip, 17, 64, 0, false, &udp(1, 2, b"flood")),
    );
    let flood = std::thread::spawn(move || {
        let stranger = UdpSocket::bind("127.0.0.9:0").expect("bind stranger");
        let spoof = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let good = vxlan_wrap(1, &inner);
        let mut no_i = good.clone();
        no_i[0] = 0;
        let mut rng = 7u64;
        let mut sent = 0u32;
        for i in 0..EACH {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise: Vec<u8> = (0..(rng >> 59) as usize * 8)
                .map(|k| (rng >> (k % 56)) as u8)
                .collect();
            for (sock, bytes) in [
                (&stranger, &good[..]),
                (&spoof, &no_i[..]),
                (&spoof, &good[..(i % 16) as usize]),
                (&spoof, &noise[..]),
            ] {
                if sock.send_to(bytes, addr_b).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    });
    let sent = flood.join().expect("flood");
    assert!(sent > 150_000, "the flood was sent: {sent}");
    // Everything node B read of it was judged and dropped; nothing reached its pod.
    wait_for("the flood judged", || {
        let m = c.b.metrics().snapshot();
        std::thread::sleep(Duration::from_millis(50));
        let again = c.b.metrics().snapshot();
        m.rx == again.rx && m.rx > 0
    });
    let m = c.b.metrics().snapshot();
    assert_eq!(m.rx, m.dropped_total(), "{m:?}");
    assert_eq!(m.forwarded, 0);
    assert!(
        m.dropped(DropReason::VxlanUnknownPeer) > 0 && m.dropped(DropReason::VxlanMalformed) > 0,
        "{m:?}"
    );
    assert!(matches!(eb.try_recv(), Ok(None)), "garbage reached the pod");
    // The real peer's traffic gets through as before.
    let frame = eth(
        VTEP_A,
        pa_mac,
        0x0800,
        &ipv4_tos(pa_ip, pb_ip, 17, 64, 0, false, &udp(1, 2, b"real")),
    );
    ea.send_frame(&frame).expect("send");
    ea.flush().expect("flush");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        if let Some(b) = eb.recv_timeout(Duration::from_millis(100)).expect("open") {
            break b.get(0).map(|(f, _)| f.to_vec()).expect("frame");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the peer's frame never arrived"
        );
    };
    assert!(got.ends_with(b"real"), "the peer's frame arrived");
}
