//! The programs' decisions, run by the kernel on crafted frames (`BPF_PROG_TEST_RUN`): no
//! namespace, no device, made-up ifindexes. Each case says what the program does with one
//! frame (forwarded, rewritten as the pipeline would, handed up, passed on) and which path
//! counter says so. Needs root (loading BPF).

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};
use podswitch_dataplane::testutil::{
    arp, eth, icmp_echo, ipv4, root_test, tcp_segment_bytes, udp_with_checksum,
};

use super::*;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const ROUTER: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const PEER_VTEP: [u8; 6] = [0x02, 0xee, 0, 0, 0, 2];
const UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const PEER_UNDERLAY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const UNDERLAY_IFINDEX: u32 = 3000;
/// Path counters that note something of a packet counted under another path.
const NOTES: [&str; 2] = ["translated", "event_lost"];

/// A pod as the maps hold it.
struct Pod {
    name: &'static str,
    veth: u32,
    upcall: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

const A: Pod = Pod {
    name: "a",
    veth: 1001,
    upcall: 2001,
    mac: [0x02, 0x42, 10, 244, 1, 10],
    ip: Ipv4Addr::new(10, 244, 1, 10),
};
const B: Pod = Pod {
    name: "b",
    veth: 1002,
    upcall: 2002,
    mac: [0x02, 0x42, 10, 244, 1, 11],
    ip: Ipv4Addr::new(10, 244, 1, 11),
};

/// A fast path with pods A and B compiled, a tunnel, and one peer owning 10.244.2.0/24.
fn fast_path() -> FastPath {
    let mut f = FastPath::load(ROUTER).expect("the programs load");
    for (slot, p) in [&A, &B].into_iter().enumerate() {
        let pod = VethPod {
            name: p.name,
            veth: "",
            upcall: "",
            mac: p.mac,
            ip: p.ip,
        };
        f.write_entries(&pod, slot as u16, p.veth, p.upcall)
            .expect("entries");
    }
    let tunnel = Tunnel {
        underlay: UNDERLAY,
        ifname: "",
        vni: 1,
        port: 8472,
    };
    f.write_tunnel(&tunnel, UNDERLAY_IFINDEX).expect("tunnel");
    f.add_peer(&Peer {
        name: "far",
        underlay: PEER_UNDERLAY,
        vtep_mac: PEER_VTEP,
        cidr: (Ipv4Addr::new(10, 244, 2, 0), 24),
    })
    .expect("peer");
    f
}

/// Runs `program` on `frame` as received on `ingress` (a superframe when `gso_size` is not
/// 0): its verdict, the frame as it left, and the one path counter that moved.
fn run(
    f: &mut FastPath,
    program_name: &'static str,
    ingress: u32,
    frame: &[u8],
    gso_size: u32,
) -> (u32, Vec<u8>, Option<&'static str>) {
    // `struct __sk_buff`: ingress_ifindex at 36, gso_size at 176 (192 bytes).
    let mut ctx = [0u8; 192];
    ctx[36..40].copy_from_slice(&ingress.to_ne_bytes());
    ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    let before = f.path_stats();
    let mut out = vec![0u8; frame.len() + 128];
    let prog = program(&mut f.bpf, program_name).expect("program");
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    let after = f.path_stats();
    let moved: Vec<&'static str> = after
        .by_path
        .iter()
        .zip(&before.by_path)
        .filter(|((l, n), (_, m))| n != m && !NOTES.contains(l))
        .map(|((l, _), _)| *l)
        .collect();
    assert!(moved.len() <= 1, "one path per packet: {moved:?}");
    (r.return_value, out, moved.first().copied())
}

fn tcp_frame(from: &Pod, dst_mac: [u8; 6], dst: Ipv4Addr, ttl: u8, sport: u16) -> Vec<u8> {
    let seg = tcp_segment_bytes(from.ip, sport, dst, 80, 1, 0, 0x10, b"data");
    eth(dst_mac, from.mac, 0x0800, &ipv4(from.ip, dst, 6, ttl, &seg))
}

#[root_test(veth_only)]
fn from_pod_forwards_only_what_is_compiled_and_hands_the_rest_up_by_reason() {
    let mut f = fast_path();
    // Bridged to B's MAC: forwarded unchanged.
    let frame = tcp_frame(&A, B.mac, B.ip, 64, 40000);
    let (verdict, out, path) = run(&mut f, FROM_POD, A.veth, &frame, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("local")));
    assert_eq!(out, frame);

    // Routed through the gateway: TTL - 1 (checksum updated), MACs router -> B.
    let frame = tcp_frame(&A, ROUTER, B.ip, 64, 40000);
    let (verdict, out, path) = run(&mut f, FROM_POD, A.veth, &frame, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("local")));
    let want = {
        let mut w = tcp_frame(&A, B.mac, B.ip, 63, 40000);
        w[6..12].copy_from_slice(&ROUTER);
        w
    };
    assert_eq!(out, want, "as the pipeline rewrites a routed frame");

    // Handed up, each for its reason (the frame untouched).
    let mut spoofed_mac = tcp_frame(&A, B.mac, B.ip, 64, 40000);
    spoofed_mac[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    let spoofed_ip = {
        let seg = tcp_segment_bytes(Ipv4Addr::new(10, 244, 1, 99), 1, B.ip, 80, 1, 0, 0x10, b"");
        eth(
            B.mac,
            A.mac,
            0x0800,
            &ipv4(Ipv4Addr::new(10, 244, 1, 99), B.ip, 6, 64, &seg),
        )
    };
    let mut bad_checksum = tcp_frame(&A, B.mac, B.ip, 64, 40000);
    bad_checksum[14 + 10] ^= 0xff;
    let arp_request = eth([0xff; 6], A.mac, 0x0806, &arp(1, A.mac, A.ip, [0; 6], B.ip));
    let icmp_error = {
        let quoted = ipv4(B.ip, A.ip, 17, 64, &[0; 8]);
        let mut m = vec![3, 3, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&quoted);
        eth(B.mac, A.mac, 0x0800, &ipv4(A.ip, B.ip, 1, 64, &m))
    };
    let echo = eth(
        B.mac,
        A.mac,
        0x0800,
        &ipv4(A.ip, B.ip, 1, 64, &icmp_echo(8, 1, 1, b"hi")),
    );
    let fragment = {
        let mut fr = tcp_frame(&A, B.mac, B.ip, 64, 40000);
        fr[14 + 6] = 0x20; // more fragments
        fr[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let sum = !podswitch_dataplane::wire::checksum_sum(&fr[14..34]);
        fr[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
        fr
    };
    let cases: [(&str, Vec<u8>, &str); 9] = [
        ("a foreign source MAC", spoofed_mac, "up_spoofed"),
        ("a foreign source address", spoofed_ip, "up_spoofed"),
        ("a bad header checksum", bad_checksum, "up_malformed"),
        ("ARP", arp_request, "up_not_ipv4"),
        ("an ICMP error", icmp_error, "up_icmp"),
        ("a TCP fragment", fragment, "up_fragment"),
        (
            "no pod and no peer there",
            tcp_frame(&A, ROUTER, Ipv4Addr::new(10, 96, 0, 10), 64, 40000),
            "up_miss",
        ),
        (
            "a TTL that would expire",
            tcp_frame(&A, ROUTER, B.ip, 1, 40000),
            "up_ttl",
        ),
        (
            "an unknown destination MAC",
            tcp_frame(&A, [0x02, 0, 0, 0, 0, 0x77], B.ip, 64, 40000),
            "up_miss",
        ),
    ];
    for (what, frame, reason) in cases {
        let (verdict, out, path) = run(&mut f, FROM_POD, A.veth, &frame, 0);
        assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some(reason)), "{what}");
        assert_eq!(out, frame, "{what}: handed up untouched");
    }
    // An echo request is carried.
    let (verdict, _, path) = run(&mut f, FROM_POD, A.veth, &echo, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("local")));

    // From a Service backend's address and port: up (its replies are translated by the
    // switch); from another port of the same pod: carried.
    let backend = BTreeSet::from([Endpoint {
        ip: B.ip,
        port: 8080,
        proto: 6,
    }]);
    f.set_endpoints(backend).expect("endpoints");
    let reply = tcp_frame(&B, A.mac, A.ip, 64, 8080);
    assert_eq!(
        run(&mut f, FROM_POD, B.veth, &reply, 0).2,
        Some("up_service")
    );
    let other = tcp_frame(&B, A.mac, A.ip, 64, 8081);
    assert_eq!(run(&mut f, FROM_POD, B.veth, &other, 0).2, Some("local"));

    // Withdrawn (a capture of B runs): to B goes up, as does what B sends.
    f.set_flags(B.veth, ip_key(B.ip), F_SLOW, true)
        .expect("withdraw");
    let to_b = tcp_frame(&A, B.mac, B.ip, 64, 40000);
    assert_eq!(
        run(&mut f, FROM_POD, A.veth, &to_b, 0).2,
        Some("up_withdrawn")
    );
    assert_eq!(
        run(&mut f, FROM_POD, B.veth, &other, 0).2,
        Some("up_withdrawn")
    );

    // A device the maps do not know: dropped, never into the node's stack.
    let (verdict, _, path) = run(&mut f, FROM_POD, 4242, &to_b, 0);
    assert_eq!((verdict, path), (TC_ACT_SHOT, Some("drop_unknown_device")));
}

/// Offsets in an encapsulated frame: outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8, inner
/// Ethernet 14.
const OUTER_IP: usize = 14;
const OUTER_UDP: usize = 34;
const VXLAN: usize = 42;
const INNER: usize = 50;

#[root_test(veth_only)]
fn from_pod_encapsulates_for_a_peer_as_the_kernel_vxlan_does() {
    let mut f = fast_path();
    let dst = Ipv4Addr::new(10, 244, 2, 10);
    let frame = tcp_frame(&A, ROUTER, dst, 64, 40000);
    let (verdict, out, path) = run(&mut f, FROM_POD, A.veth, &frame, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("encap")));
    assert_eq!(out.len(), frame.len() + 50);
    let ip = &out[OUTER_IP..OUTER_UDP];
    assert_eq!(ip[0], 0x45, "IPv4, no options");
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        out.len() - 14
    );
    assert_eq!(ip[6] & 0x40, 0, "DF clear, as flannel's device sends");
    assert_eq!((ip[8], ip[9]), (64, 17), "TTL 64, UDP");
    assert_eq!(&ip[12..16], &UNDERLAY.octets());
    assert_eq!(&ip[16..20], &PEER_UNDERLAY.octets());
    assert!(podswitch_dataplane::wire::checksum::header_sums_to_ones(ip));
    let udp = &out[OUTER_UDP..VXLAN];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    assert!(
        (32768..61000).contains(&sport),
        "source port {sport} in the local range"
    );
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 8472);
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        out.len() - 34
    );
    assert_eq!(&udp[6..8], &[0, 0], "no UDP checksum");
    assert_eq!(
        &out[VXLAN..INNER],
        &[0x08, 0, 0, 0, 0, 0, 1, 0],
        "I flag, VNI 1"
    );
    let mut inner = frame.clone();
    inner[..6].copy_from_slice(&PEER_VTEP);
    inner[6..12].copy_from_slice(&ROUTER);
    let routed = tcp_frame(&A, ROUTER, dst, 63, 40000);
    inner[14..].copy_from_slice(&routed[14..]);
    assert_eq!(
        &out[INNER..],
        &inner[..],
        "inner frame VTEP to VTEP, TTL - 1"
    );
    // The same flow, the same port; the peer's counters count it.
    assert_eq!(
        run(&mut f, FROM_POD, A.veth, &frame, 0).1[OUTER_UDP..OUTER_UDP + 2],
        out[OUTER_UDP..OUTER_UDP + 2]
    );
    assert_eq!(f.peer_stats("far").expect("peer").tx_packets, 2);
}

/// A VXLAN datagram from `from` (underlay) carrying `inner`, as Linux's vxlan sends it.
fn vxlan_frame(from: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let mut udp = vec![0xc0, 0x00, 0x21, 0x18];
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    eth(
        [0x02, 0, 0, 0, 0, 1],
        [0x02, 0, 0, 0, 0, 2],
        0x0800,
        &ipv4(from, UNDERLAY, 17, 64, &udp),
    )
}

#[root_test(veth_only)]
fn from_underlay_decapsulates_for_its_pods_and_leaves_the_rest_to_the_switch() {
    let mut f = fast_path();
    let remote = Ipv4Addr::new(10, 244, 2, 10);
    let seg = tcp_segment_bytes(remote, 80, A.ip, 40000, 1, 0, 0x10, b"reply");
    let inner = eth(ROUTER, PEER_VTEP, 0x0800, &ipv4(remote, A.ip, 6, 63, &seg));
    let frame = vxlan_frame(PEER_UNDERLAY, 1, &inner);
    let (verdict, out, path) = run(&mut f, FROM_UNDERLAY, UNDERLAY_IFINDEX, &frame, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("decap")));
    let want = eth(A.mac, ROUTER, 0x0800, &ipv4(remote, A.ip, 6, 62, &seg));
    assert_eq!(out, want, "the inner frame, router -> pod, TTL - 1");
    assert_eq!(f.peer_stats("far").expect("peer").rx_packets, 1);

    // Left to the switch's socket: another VNI, an unknown sender, a destination that is no
    // pod here, a UDP GSO train (its inner length covers only the first datagram).
    let others = [
        ("another VNI", vxlan_frame(PEER_UNDERLAY, 7, &inner), 0),
        (
            "an unknown sender",
            vxlan_frame(Ipv4Addr::new(192, 168, 77, 9), 1, &inner),
            0,
        ),
        (
            "a train of datagrams",
            vxlan_frame(PEER_UNDERLAY, 1, &inner),
            100,
        ),
    ];
    for (what, frame, gso_size) in others {
        let (verdict, out, path) = run(&mut f, FROM_UNDERLAY, UNDERLAY_IFINDEX, &frame, gso_size);
        assert_eq!(
            (verdict, path),
            (TC_ACT_OK, Some("underlay_pass")),
            "{what}"
        );
        assert_eq!(out, frame, "{what}: untouched");
    }
    let seg = tcp_segment_bytes(
        remote,
        80,
        Ipv4Addr::new(10, 244, 1, 99),
        1,
        1,
        0,
        0x10,
        b"",
    );
    let no_pod = eth(
        ROUTER,
        PEER_VTEP,
        0x0800,
        &ipv4(remote, Ipv4Addr::new(10, 244, 1, 99), 6, 63, &seg),
    );
    let (verdict, _, path) = run(
        &mut f,
        FROM_UNDERLAY,
        UNDERLAY_IFINDEX,
        &vxlan_frame(PEER_UNDERLAY, 1, &no_pod),
        0,
    );
    assert_eq!((verdict, path), (TC_ACT_OK, Some("underlay_pass")));
    // Not VXLAN at all: none of the program's business, not even counted.
    let dns = eth(
        [0x02, 0, 0, 0, 0, 1],
        [0x02, 0, 0, 0, 0, 2],
        0x0800,
        &ipv4(
            PEER_UNDERLAY,
            UNDERLAY,
            17,
            64,
            &udp_with_checksum(PEER_UNDERLAY, 5353, UNDERLAY, 53, b"q"),
        ),
    );
    assert_eq!(
        run(&mut f, FROM_UNDERLAY, UNDERLAY_IFINDEX, &dns, 0),
        (TC_ACT_OK, dns.clone(), None)
    );
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn sock(ip: Ipv4Addr, port: u16) -> std::net::SocketAddrV4 {
    std::net::SocketAddrV4::new(ip, port)
}

fn tuple(proto: u8, src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> FlowTuple {
    FlowTuple { proto, src, dst }
}

/// Compiles the flow A:40000 -> VIP:80 balanced to B:8080 (`proto`), under epoch 7.
fn compile_flow(f: &FastPath, proto: u8) {
    let (client, vip, backend) = (sock(A.ip, 40000), sock(VIP, 80), sock(B.ip, 8080));
    let forward = FlowRewrite {
        from: tuple(proto, client, vip),
        to: tuple(proto, client, backend),
    };
    let reply = FlowRewrite {
        from: tuple(proto, backend, client),
        to: tuple(proto, vip, client),
    };
    f.flows().install(7, &forward, &reply).expect("install");
}

fn tcp(
    from: (&Pod, [u8; 6]),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    flags: u8,
) -> Vec<u8> {
    let seg = tcp_segment_bytes(src.0, src.1, dst.0, dst.1, 1, 1, flags, b"data");
    eth(
        from.1,
        from.0.mac,
        0x0800,
        &ipv4(src.0, dst.0, 6, ttl, &seg),
    )
}

fn events(f: &FastPath) -> Vec<FlowEvent> {
    let mut v = Vec::new();
    f.flows().drain_events(|e| v.push(e));
    v
}

#[root_test(veth_only)]
fn a_compiled_service_flow_is_translated_both_ways_and_reports_what_it_carried() {
    let mut f = fast_path();
    // Before the flow is compiled: the client's packet to the VIP is the switch's (a miss),
    // and so is the backend's reply (it comes from a Service endpoint).
    f.set_endpoints(
        [Endpoint {
            ip: B.ip,
            port: 8080,
            proto: 6,
        }]
        .into(),
    )
    .expect("endpoints");
    let to_vip = tcp((&A, ROUTER), (A.ip, 40000), (VIP, 80), 64, 0x10);
    let (verdict, out, path) = run(&mut f, FROM_POD, A.veth, &to_vip, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("up_miss")));
    assert_eq!(out, to_vip);
    let reply = tcp((&B, A.mac), (B.ip, 8080), (A.ip, 40000), 64, 0x10);
    let (_, _, path) = run(&mut f, FROM_POD, B.veth, &reply, 0);
    assert_eq!(path, Some("up_service"));

    compile_flow(&f, 6);
    let translated = |f: &FastPath| f.path_stats().get("translated");
    let client = tuple(6, sock(A.ip, 40000), sock(VIP, 80));
    let backend = tuple(6, sock(B.ip, 8080), sock(A.ip, 40000));
    let first = |t: FlowTuple, reply: bool| FlowEvent {
        tuple: t,
        epoch: 7,
        reply,
        syn: false,
        ack: true,
        fin: false,
    };
    // The backend's SYN-ACK answering the SYN that compiled the flow: from the VIP, in the
    // kernel, reported (SYN and ACK); a second one is the switch's.
    let syn_ack = tcp((&B, A.mac), (B.ip, 8080), (A.ip, 40000), 64, 0x12);
    let (verdict, out, path) = run(&mut f, FROM_POD, B.veth, &syn_ack, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("local")));
    assert_eq!(out, tcp((&B, A.mac), (VIP, 80), (A.ip, 40000), 64, 0x12));
    assert_eq!(
        events(&f),
        [FlowEvent {
            syn: true,
            ..first(backend, true)
        }]
    );
    let (_, out, path) = run(&mut f, FROM_POD, B.veth, &syn_ack, 0);
    assert_eq!((out, path), (syn_ack.clone(), Some("up_flow_control")));
    assert_eq!(translated(&f), 1);
    // The client's segment: to the backend, routed (TTL - 1, MACs router -> B), checksums
    // as if built so (the bytes equal a segment made for the backend).
    let (verdict, out, path) = run(&mut f, FROM_POD, A.veth, &to_vip, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("local")));
    let mut want = tcp((&A, B.mac), (A.ip, 40000), (B.ip, 8080), 63, 0x10);
    want[6..12].copy_from_slice(&ROUTER);
    assert_eq!(out, want);
    assert_eq!(translated(&f), 2);
    // The backend's reply: from the VIP again, bridged to A (no TTL change).
    let (verdict, out, path) = run(&mut f, FROM_POD, B.veth, &reply, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("local")));
    assert_eq!(out, tcp((&B, A.mac), (VIP, 80), (A.ip, 40000), 64, 0x10));
    assert_eq!(translated(&f), 3);

    // What each direction carried for the first time, once: the client's first packet (an
    // ACK); the backend's ACK was carried with its SYN-ACK already.
    assert_eq!(events(&f), [first(client, false)]);
    run(&mut f, FROM_POD, A.veth, &to_vip, 0);
    assert_eq!(events(&f), [], "nothing new");
    // A SYN (or SYN-ACK, or RST) from the client of an open connection goes up as the pod
    // sent it: conntrack decides every opening and sees every reset.
    for flags in [0x02, 0x12, 0x04, 0x14] {
        let frame = tcp((&A, ROUTER), (A.ip, 40000), (VIP, 80), 64, flags);
        let (verdict, out, path) = run(&mut f, FROM_POD, A.veth, &frame, 0);
        assert_eq!(
            (verdict, path),
            (TC_ACT_REDIRECT, Some("up_flow_control")),
            "{flags:#x}"
        );
        assert_eq!(out, frame);
    }
    let fin = tcp((&A, ROUTER), (A.ip, 40000), (VIP, 80), 64, 0x11);
    let (_, _, path) = run(&mut f, FROM_POD, A.veth, &fin, 0);
    assert_eq!(path, Some("local"));
    assert_eq!(
        events(&f),
        [FlowEvent {
            ack: false,
            fin: true,
            ..first(client, false)
        }],
        "only what is new: the FIN"
    );
    assert!(f
        .flows()
        .idle(&client, &backend)
        .is_some_and(|d| d.as_secs() < 5));

    // Once the client closed, its SYN from the same port is a new connection to the same
    // backend: carried here, both directions reported anew (the backend's SYN-ACK too).
    let syn = tcp((&A, ROUTER), (A.ip, 40000), (VIP, 80), 64, 0x02);
    let (verdict, out, path) = run(&mut f, FROM_POD, A.veth, &syn, 0);
    assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("local")));
    let mut want = tcp((&A, B.mac), (A.ip, 40000), (B.ip, 8080), 63, 0x02);
    want[6..12].copy_from_slice(&ROUTER);
    assert_eq!(out, want);
    let (_, out, path) = run(&mut f, FROM_POD, B.veth, &syn_ack, 0);
    assert_eq!(path, Some("local"));
    assert_eq!(out, tcp((&B, A.mac), (VIP, 80), (A.ip, 40000), 64, 0x12));
    assert_eq!(
        events(&f),
        [
            FlowEvent {
                syn: true,
                ack: false,
                ..first(client, false)
            },
            FlowEvent {
                syn: true,
                ..first(backend, true)
            },
        ]
    );
    // The client's ACK of the new connection: reported as what it is, an ACK.
    run(&mut f, FROM_POD, A.veth, &to_vip, 0);
    assert_eq!(events(&f), [first(client, false)]);
    // Removed: the switch's again.
    f.flows().remove(&client, &backend);
    let (_, _, path) = run(&mut f, FROM_POD, A.veth, &to_vip, 0);
    assert_eq!(path, Some("up_miss"));
    assert_eq!(f.flows().entries(), 0);
}

#[root_test(veth_only)]
fn a_compiled_udp_flow_keeps_a_missing_checksum_missing_and_fixes_a_present_one() {
    let mut f = fast_path();
    compile_flow(&f, 17);
    let datagram = |src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), ttl, to_mac, checksum: bool| {
        let mut u = udp_with_checksum(src.0, src.1, dst.0, dst.1, b"ask");
        if !checksum {
            u[6..8].copy_from_slice(&[0, 0]);
        }
        eth(to_mac, A.mac, 0x0800, &ipv4(src.0, dst.0, 17, ttl, &u))
    };
    for checksum in [true, false] {
        let frame = datagram((A.ip, 40000), (VIP, 80), 64, ROUTER, checksum);
        let (verdict, out, path) = run(&mut f, FROM_POD, A.veth, &frame, 0);
        assert_eq!((verdict, path), (TC_ACT_REDIRECT, Some("local")));
        let mut want = datagram((A.ip, 40000), (B.ip, 8080), 63, B.mac, checksum);
        want[6..12].copy_from_slice(&ROUTER);
        assert_eq!(out, want, "checksum present: {checksum}");
    }
}
