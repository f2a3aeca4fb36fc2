//! The pod network model, in one process and without root: smoltcp pods on an in-memory switch.
//!
//! Each test reproduces one of the pod experiments (docs/design.md, "The network model") and asserts its outcome.
//! Waits are bounded polls for a condition (a guard against hangs), never timing assertions.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use podstack::{NetError, Pod};
use podswitch_dataplane::pipeline::{DropReason, NodeConfig};
use podswitch_dataplane::port::MemEndpoint;
use podswitch_dataplane::switch::{Switch, SwitchConfig};
use podswitch_dataplane::table::{PortInfo, PortKind};
use podswitch_dataplane::testutil::{arp, eth, icmp_echo, ipv4, pattern, udp, wait_for};
use podswitch_dataplane::wire::EthernetAddress;

const ROUTER_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];

fn node() -> Switch {
    let cidr = "10.244.1.0/24".parse().expect("cidr");
    Switch::start(SwitchConfig::new(NodeConfig::new(
        cidr,
        EthernetAddress(ROUTER_MAC),
    )))
    .expect("switch starts")
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, last)
}

fn gateway() -> Ipv4Addr {
    ip(1)
}

/// A pod that speaks raw frames (for exact byte checks).
struct RawPod {
    ep: MemEndpoint,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

impl RawPod {
    fn attach(sw: &Switch, name: &str, last: u8) -> Self {
        let mac = [0x02, 0x42, 10, 244, 1, last];
        let (_, ep) = sw
            .attach_mem_pod(PortInfo {
                name: name.into(),
                kind: PortKind::Pod {
                    mac: EthernetAddress(mac),
                    ip: ip(last),
                },
            })
            .expect("attach");
        Self {
            ep,
            mac,
            ip: ip(last),
        }
    }

    fn send(&mut self, frame: &[u8]) {
        self.queue(frame);
        self.ep.flush().expect("flush");
    }

    /// Queues a frame; frames leave in batches of 64 or on the next `send`/flush.
    fn queue(&mut self, frame: &[u8]) {
        self.ep.send_frame(frame).expect("queue");
    }

    fn recv(&self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(b) = self
                .ep
                .recv_timeout(Duration::from_millis(50))
                .expect("port open")
            {
                let f = b.get(0).map(|(f, _)| f.to_vec()).expect("non-empty batch");
                self.ep.recycle(b);
                return f;
            }
            assert!(Instant::now() < deadline, "no frame arrived");
        }
    }

    fn nothing_waiting(&self) -> bool {
        matches!(self.ep.try_recv(), Ok(None))
    }
}

#[test]
fn containers_of_a_pod_share_ip_and_mac() {
    let sw = node();
    let web = Pod::attach(&sw, "web", ip(10)).expect("pod");
    let other = Pod::attach(&sw, "other", ip(11)).expect("pod");
    let nginx = web.container("nginx");
    let sidecar = web.container("sidecar");
    let a = nginx.addresses().expect("addresses");
    let b = sidecar.addresses().expect("addresses");
    assert_eq!(a, b, "containers of one pod see one IP and one MAC");
    assert_eq!(a, (ip(10), web.mac()));
    let c = other.container("app").addresses().expect("addresses");
    assert_ne!(c.0, a.0);
    assert_ne!(c.1, a.1);
}

#[test]
fn containers_talk_over_localhost_without_touching_the_switch() {
    let sw = node();
    let web = Pod::attach(&sw, "web", ip(10)).expect("pod");
    let nginx = web.container("nginx");
    let curl = web.container("curl");
    let port = sw.port("web").expect("port");
    let before = (port.metrics.snapshot(), web.device_counts());

    let mut listener = nginx.tcp_listen(80).expect("listen");
    let server = std::thread::spawn(move || {
        let conn = listener.accept().expect("accept");
        let peer = conn.peer_addr().expect("peer");
        let mut req = [0u8; 18];
        conn.read_exact(&mut req).expect("request");
        conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello")
            .expect("response");
        conn.shutdown_write().expect("close");
        (peer, req)
    });
    let client = curl
        .tcp_connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80))
        .expect("connect to 127.0.0.1:80");
    assert_eq!(
        client.local_addr().expect("local").ip(),
        &Ipv4Addr::LOCALHOST
    );
    client
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut body = Vec::new();
    client.read_to_end(&mut body).expect("response");
    let (peer, req) = server.join().expect("server");
    assert_eq!(&req, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(body, b"HTTP/1.0 200 OK\r\n\r\nhello");
    assert_eq!(
        peer.ip(),
        &Ipv4Addr::LOCALHOST,
        "the server sees the client as 127.0.0.1"
    );

    let after = (port.metrics.snapshot(), web.device_counts());
    assert_eq!(
        after.0, before.0,
        "switch port counters moved for localhost traffic"
    );
    assert_eq!(
        after.1.to_switch, before.1.to_switch,
        "a localhost frame left the pod"
    );
    assert!(
        after.1.looped > before.1.looped + 6,
        "the exchange looped inside the pod"
    );
}

#[test]
fn localhost_of_another_pod_is_its_own() {
    let sw = node();
    let web = Pod::attach(&sw, "web", ip(10)).expect("pod");
    let other = Pod::attach(&sw, "other", ip(11)).expect("pod");
    let nginx = web.container("nginx");
    let _listener = nginx.tcp_listen(80).expect("listen");
    let client = other.container("client");
    let r = client.tcp_connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80));
    assert_eq!(r.err(), Some(NetError::ConnectionRefused));
    // The same port is reachable through the pod IP.
    let ok = client.tcp_connect(SocketAddrV4::new(ip(10), 80));
    assert!(ok.is_ok(), "pod IP reachable: {:?}", ok.err());
}

#[test]
fn ports_are_shared_inside_a_pod_and_separate_between_pods() {
    let sw = node();
    let web = Pod::attach(&sw, "web", ip(10)).expect("pod");
    let other = Pod::attach(&sw, "other", ip(11)).expect("pod");
    let nginx = web.container("nginx");
    let apache = web.container("apache");
    let first = nginx.tcp_listen(80).expect("first bind");
    assert_eq!(apache.tcp_listen(80).err(), Some(NetError::AddrInUse(80)));
    assert_eq!(
        nginx.tcp_listen(80).err(),
        Some(NetError::AddrInUse(80)),
        "same container, same rule"
    );
    let _udp = apache.udp_bind(80).expect("UDP has its own port space");
    let other_nginx = other.container("nginx");
    let _elsewhere = other_nginx
        .tcp_listen(80)
        .expect("another pod, another port space");
    drop(first);
    let _second = apache
        .tcp_listen(80)
        .expect("port free again once released");
}

/// Runs a 4 MiB exchange each way between `client` and `server_addr` (served by `listener`).
fn exchange_4mib(
    client: &podstack::Container,
    mut listener: podstack::TcpListener,
    server_addr: SocketAddrV4,
) {
    const LEN: usize = 4 << 20;
    let server = std::thread::spawn(move || {
        let conn = listener.accept().expect("accept");
        let reader = conn.clone();
        let rx = std::thread::spawn(move || {
            let mut got = vec![0u8; LEN];
            reader.read_exact(&mut got).expect("server reads");
            got
        });
        conn.write_all(&pattern(2, LEN)).expect("server writes");
        rx.join().expect("server reader")
    });
    let conn = client.tcp_connect(server_addr).expect("connect");
    let reader = conn.clone();
    let rx = std::thread::spawn(move || {
        let mut got = vec![0u8; LEN];
        reader.read_exact(&mut got).expect("client reads");
        got
    });
    conn.write_all(&pattern(1, LEN)).expect("client writes");
    let client_got = rx.join().expect("client reader");
    let server_got = server.join().expect("server");
    assert!(
        server_got == pattern(1, LEN),
        "server received corrupted bytes"
    );
    assert!(
        client_got == pattern(2, LEN),
        "client received corrupted bytes"
    );
}

#[test]
fn pod_to_pod_tcp_through_the_switch_4mib_each_way() {
    let sw = node();
    let a = Pod::attach(&sw, "a", ip(10)).expect("pod");
    let b = Pod::attach(&sw, "b", ip(11)).expect("pod");
    let server = b.container("server");
    let listener = server.tcp_listen(5201).expect("listen");
    exchange_4mib(
        &a.container("client"),
        listener,
        SocketAddrV4::new(ip(11), 5201),
    );
    let pa = sw.port("a").expect("a").metrics.snapshot();
    let pb = sw.port("b").expect("b").metrics.snapshot();
    assert!(
        pa.rx_bytes > 4 << 20 && pb.rx_bytes > 4 << 20,
        "the data crossed the switch"
    );
    // Port counters are published mid-round, switch-wide ones at its end: wait until both
    // describe the same frames, then every frame must be accounted for.
    let port_rx = || {
        ["a", "b"]
            .iter()
            .map(|p| sw.port(p).map_or(0, |r| r.metrics.snapshot().rx_frames))
            .sum::<u64>()
    };
    wait_for("switch-wide counters caught up with the ports", || {
        sw.metrics().snapshot().rx == port_rx()
    });
    let m = sw.metrics().snapshot();
    assert_eq!(m.rx, m.forwarded + m.delivered_locally + m.dropped_total());
    assert_eq!(
        m.dropped_total(),
        0,
        "a clean transfer drops nothing: {m:?}"
    );
}

#[test]
fn gateway_answers_arp_and_ping() {
    let sw = node();
    let mut p = RawPod::attach(&sw, "raw", 10);
    p.send(&eth(
        [0xff; 6],
        p.mac,
        0x0806,
        &arp(1, p.mac, p.ip, [0; 6], gateway()),
    ));
    let reply = p.recv();
    assert_eq!(
        reply,
        eth(
            p.mac,
            ROUTER_MAC,
            0x0806,
            &arp(2, ROUTER_MAC, gateway(), p.mac, p.ip)
        )
    );
    let data = b"podswitch ping payload";
    p.send(&eth(
        ROUTER_MAC,
        p.mac,
        0x0800,
        &ipv4(p.ip, gateway(), 1, 64, &icmp_echo(8, 77, 1, data)),
    ));
    let pong = p.recv();
    assert_eq!(
        pong,
        eth(
            p.mac,
            ROUTER_MAC,
            0x0800,
            &ipv4(gateway(), p.ip, 1, 64, &icmp_echo(0, 77, 1, data))
        )
    );
    assert_eq!(sw.metrics().snapshot().delivered_locally, 2);

    // A smoltcp pod resolves the gateway too: it reaches an address outside the node only
    // through it, and gets ICMP "net unreachable" back (the switch has no route there).
    let pod = Pod::attach(&sw, "stack", ip(11)).expect("pod");
    let app = pod.container("app");
    let u = app.udp_bind(9000).expect("bind");
    u.send_to(b"x", SocketAddrV4::new(Ipv4Addr::new(10, 245, 0, 1), 9))
        .expect("send");
    wait_for("routed attempt refused", || {
        sw.metrics().snapshot().dropped(DropReason::NoRoute) == 1
    });
}

#[test]
fn dropping_the_infra_breaks_its_containers_only() {
    let sw = node();
    let a = Pod::attach(&sw, "a", ip(10)).expect("pod");
    let b = Pod::attach(&sw, "b", ip(11)).expect("pod");
    let c = Pod::attach(&sw, "c", ip(12)).expect("pod");
    let b_app = b.container("app");
    let mut b_listener = b_app.tcp_listen(80).expect("listen");
    let a_client = a.container("client");
    let accept = std::thread::spawn(move || (b_listener.accept(), b_listener));
    let to_b = a_client
        .tcp_connect(SocketAddrV4::new(ip(11), 80))
        .expect("connect a->b");
    let (b_side, _listener) = accept.join().expect("accept thread");
    let b_side = b_side.expect("accepted");
    to_b.write_all(b"before").expect("write");
    let mut buf = [0u8; 6];
    b_side.read_exact(&mut buf).expect("read");

    drop(b); // the infra container dies
    assert_eq!(b_side.write(b"after").err(), Some(NetError::NetworkDown));
    assert_eq!(b_side.read(&mut buf).err(), Some(NetError::NetworkDown));
    assert_eq!(b_app.tcp_listen(8080).err(), Some(NetError::NetworkDown));
    assert_eq!(b_app.addresses().err(), Some(NetError::NetworkDown));
    wait_for("b's port removed from the switch", || {
        sw.port("b").is_none()
    });
    assert!(sw.tables().topology().neighbour(ip(11)).is_none());

    // Other pods keep working.
    let c_server = c.container("server");
    let listener = c_server.tcp_listen(80).expect("listen on c");
    exchange_small(&a_client, listener, SocketAddrV4::new(ip(12), 80));
    // And b's IP can be given to a new pod.
    let b2 = Pod::attach(&sw, "b2", ip(11)).expect("IP reusable after the infra is gone");
    let b2_server = b2.container("server");
    let listener = b2_server.tcp_listen(80).expect("listen on b2");
    exchange_small(
        &a.container("client2"),
        listener,
        SocketAddrV4::new(ip(11), 80),
    );
}

fn exchange_small(
    client: &podstack::Container,
    mut listener: podstack::TcpListener,
    addr: SocketAddrV4,
) {
    let server = std::thread::spawn(move || {
        let conn = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).expect("read");
        conn.write_all(&buf).expect("echo");
    });
    let conn = client.tcp_connect(addr).expect("connect");
    conn.write_all(b"hello").expect("write");
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).expect("read echo");
    assert_eq!(&buf, b"hello");
    server.join().expect("server");
}

#[test]
fn restarting_a_container_keeps_the_pod_ip() {
    let sw = node();
    let web = Pod::attach(&sw, "web", ip(10)).expect("pod");
    let client_pod = Pod::attach(&sw, "client", ip(11)).expect("pod");
    let nginx = web.container("nginx");
    let before = nginx.addresses().expect("addresses");
    let listener = nginx.tcp_listen(80).expect("listen");
    drop(listener);
    drop(nginx); // the container exits; the pod stays
    let nginx2 = web.container("nginx");
    assert_eq!(nginx2.addresses().expect("addresses"), before);
    let listener = nginx2
        .tcp_listen(80)
        .expect("port 80 was released with the old container");
    exchange_small(
        &client_pod.container("curl"),
        listener,
        SocketAddrV4::new(ip(10), 80),
    );
    // A container that exits with an open listener releases its port too.
    let sidecar = web.container("sidecar");
    let l = sidecar.tcp_listen(9090).expect("listen");
    std::mem::forget(l); // its process died without closing: the container drop must clean up
    drop(sidecar);
    let sidecar2 = web.container("sidecar2");
    let _again = sidecar2
        .tcp_listen(9090)
        .expect("port released by container exit");
}

#[test]
fn spoofed_frames_are_dropped_and_counted() {
    let sw = node();
    let mut evil = RawPod::attach(&sw, "evil", 10);
    let victim = RawPod::attach(&sw, "victim", 11);
    let payload = ipv4(evil.ip, victim.ip, 17, 64, &udp(1, 2, b"x"));
    let spoof_mac = [0x02, 0x42, 10, 244, 1, 99];
    evil.send(&eth(victim.mac, spoof_mac, 0x0800, &payload));
    let spoof_ip = ipv4(ip(12), victim.ip, 17, 64, &udp(1, 2, b"x"));
    evil.send(&eth(victim.mac, evil.mac, 0x0800, &spoof_ip));
    evil.send(&eth(
        [0xff; 6],
        evil.mac,
        0x0806,
        &arp(2, evil.mac, ip(12), [0xff; 6], ip(12)),
    ));
    wait_for("three frames processed", || sw.metrics().snapshot().rx == 3);
    let m = sw.metrics().snapshot();
    assert_eq!(m.dropped(DropReason::SpoofedMac), 1);
    assert_eq!(m.dropped(DropReason::SpoofedIp), 2);
    assert_eq!(m.forwarded, 0);
    let port = sw.port("evil").expect("port").metrics.snapshot();
    assert_eq!((port.rx_frames, port.rx_dropped), (3, 3));
    assert!(
        victim.nothing_waiting(),
        "a spoofed frame reached the victim"
    );
    assert!(sw
        .tables()
        .mac
        .load()
        .get(podswitch_dataplane::wire::mac_key(&spoof_mac))
        .is_none());
    // The honest frame still goes through.
    evil.send(&eth(victim.mac, evil.mac, 0x0800, &payload));
    assert_eq!(victim.recv(), eth(victim.mac, evil.mac, 0x0800, &payload));
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    use rand::{Rng, SeedableRng};
    let sw = node();
    let mut p = RawPod::attach(&sw, "fuzz", 10);
    let peer = RawPod::attach(&sw, "peer", 11);
    let good = eth(
        ROUTER_MAC,
        p.mac,
        0x0800,
        &ipv4(p.ip, peer.ip, 17, 64, &udp(1, 2, b"routed")),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut sent = 0u64;
    // Truncated headers (Ethernet, IPv4), lying lengths, a bad checksum, random bytes.
    for len in 0..34 {
        p.queue(&good[..len]);
        sent += 1;
    }
    for bad_len in [0u16, 19, 21, 1000, 0xffff] {
        let mut f = good.clone();
        f[16..18].copy_from_slice(&bad_len.to_be_bytes());
        p.queue(&f);
        sent += 1;
    }
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x4f;
    p.queue(&bad_ihl);
    let mut bad_csum = good.clone();
    bad_csum[24] ^= 0xff;
    p.queue(&bad_csum);
    sent += 2;
    for _ in 0..500 {
        let len = rng.random_range(0..100);
        let mut f: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if len >= 12 {
            f[6..12].copy_from_slice(&p.mac); // get past anti-spoofing, into the parsers
        }
        p.queue(&f);
        sent += 1;
    }
    p.ep.flush().expect("flush");
    wait_for("all frames processed", || {
        sw.metrics().snapshot().rx == sent
    });
    let m = sw.metrics().snapshot();
    assert_eq!(
        m.rx,
        m.forwarded + m.delivered_locally + m.dropped_total(),
        "every frame accounted for: {m:?}"
    );
    assert!(
        m.dropped(DropReason::Malformed) >= 14,
        "truncated Ethernet headers"
    );
    assert!(
        m.dropped(DropReason::BadIpv4) >= 7 + 20,
        "bad IPv4 headers: {}",
        m.dropped(DropReason::BadIpv4)
    );
    // The switch still routes a good frame (once the peer has drained the floods it got).
    while let Ok(Some(b)) = peer.ep.try_recv() {
        peer.ep.recycle(b);
    }
    p.send(&good);
    let got = peer.recv_matching(|f| f.len() == good.len() && f[12..14] == [8, 0] && f[23] == 17);
    assert_eq!(&got[..6], &peer.mac);
    assert_eq!(got[22], 63, "routed: TTL decremented");
}

impl RawPod {
    /// The next frame satisfying `pred` (random frames may have been flooded here before it).
    fn recv_matching(&self, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        loop {
            let f = self.recv();
            if pred(&f) {
                return f;
            }
        }
    }
}
