//! Wire compatibility with the Linux kernel's VXLAN, set up the way flannel's VXLAN backend
//! does it. Node A is podswitch; node B is the kernel: a `vxlan` device with `nolearning`, the
//! route `10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink`, a permanent neighbour entry to A's
//! VTEP MAC, an FDB entry to A's underlay address, and a bridge `cni0` with a veth pod. Needs
//! root. The scaffolding of the kernel side uses `ip` (it plays flannel); podswitch itself uses
//! netlink.

use crate::common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use podswitch::netns::NetNs;
use podswitch::node::{Mac, Node, NodeSpec, PeerSpec, PodSpec};
use podswitch_dataplane::testutil::pod_interface;

const VTEP_A: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x0a];
const VTEP_B: &str = "02:ee:00:00:00:0b";
const VTEP_B_BYTES: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x0b];

fn sh(ns: &str, cmd: &str) {
    let out = run(&["ip", "netns", "exec", ns, "sh", "-c", cmd]);
    assert!(
        out.status.success(),
        "in {ns}: `{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Setup {
    node: Option<Node>,
    a: String,
    b: String,
    pod_a: String,
    pod_b: String,
    _guard: NsGuard,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.node.take();
    }
}

fn setup() -> Setup {
    let p = unique("ki");
    let (ul, a, b, pod_a, pod_b) = (
        format!("{p}u"),
        format!("{p}a"),
        format!("{p}b"),
        format!("{p}pa"),
        format!("{p}pb"),
    );
    let guard = NsGuard(vec![
        ul.clone(),
        a.clone(),
        b.clone(),
        pod_a.clone(),
        pod_b.clone(),
    ]);
    for ns in [&ul, &a, &b, &pod_b] {
        assert!(
            run(&["ip", "netns", "add", ns]).status.success(),
            "ip netns add {ns}"
        );
    }
    // Underlay: A and B on a bridge, 192.168.77.1 and .2.
    sh(&ul, "ip link add br0 type bridge && ip link set br0 up");
    for (ns, ip, end) in [(&a, "192.168.77.1", "ua"), (&b, "192.168.77.2", "ub")] {
        let cmd = format!("ip link add {end} type veth peer name eth0 netns {ns} && ip link set {end} master br0 up");
        sh(&ul, &cmd);
        sh(
            ns,
            &format!("ip link set lo up && ip link set eth0 up && ip addr add {ip}/24 dev eth0"),
        );
    }
    // Node B = the kernel, configured like flannel's VXLAN backend, offloads left at their
    // defaults: over a veth underlay it leaves inner TCP/UDP checksums partial for a NIC that
    // never fills them in, and podswitch must deliver them all the same.
    let a_mac = "02:ee:00:00:00:0a";
    sh(&b, &format!(
        "sysctl -qw net.ipv4.ip_forward=1 && \
         ip link add flannel.1 address {VTEP_B} type vxlan id 1 local 192.168.77.2 dev eth0 dstport 8472 nolearning && \
         ip link set flannel.1 mtu 1450 up && ip addr add 10.244.2.0/32 dev flannel.1 && \
         ip route add 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink && \
         ip neigh add 10.244.1.0 lladdr {a_mac} dev flannel.1 nud permanent && \
         bridge fdb append {a_mac} dev flannel.1 dst 192.168.77.1 && \
         ip link add cni0 type bridge && ip addr add 10.244.2.1/24 dev cni0 && ip link set cni0 mtu 1450 up && \
         ip link add vpb type veth peer name eth0 netns {pod_b} && ip link set vpb mtu 1450 master cni0 up"
    ));
    sh(&pod_b, "ip link set lo up && ip link set eth0 mtu 1450 up && ip addr add 10.244.2.10/24 dev eth0 && ip route add default via 10.244.2.1");
    // Node A = podswitch, running in A's namespace.
    let mut spec = NodeSpec::new("node-a", "10.244.1.0/24".parse().expect("cidr"));
    spec.router_mac = Some(Mac(VTEP_A));
    spec.cpus = Some(Vec::new());
    spec.pod_interface = Some(pod_interface().parse().expect("a mode"));
    spec.underlay = Some(Ipv4Addr::new(192, 168, 77, 1));
    let peers = [PeerSpec {
        name: "node-b".into(),
        underlay: Ipv4Addr::new(192, 168, 77, 2),
        pod_cidr: "10.244.2.0/24".parse().expect("cidr"),
        vtep_mac: Some(Mac(VTEP_B_BYTES)),
    }];
    let pods = [PodSpec {
        name: "pa".into(),
        netns: pod_a.clone(),
        ip: Some(Ipv4Addr::new(10, 244, 1, 10)),
        mac: None,
        container_id: None,
        ifname: "eth0".into(),
    }];
    let node = NetNs::open(&a)
        .expect("ns a")
        .run(|| Node::start(spec, &pods, &peers))
        .expect("run in a")
        .expect("node A");
    Setup {
        node: Some(node),
        a,
        b,
        pod_a,
        pod_b,
        _guard: guard,
    }
}

/// Opens a raw packet socket on `ifname` inside `ns` (AF_PACKET, all protocols).
fn capture_socket(ns: &str, ifname: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let ifname = std::ffi::CString::new(ifname).expect("name");
    NetNs::open(ns)
        .expect("ns")
        .run(move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2) call; the result is checked before use.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is a fresh, owned descriptor.
            let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            // SAFETY: ifname is a valid NUL-terminated string.
            let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            assert!(index > 0, "no interface {ifname:?}");
            // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: sll lives for the call; the length matches its type.
            let rc = unsafe {
                libc::bind(
                    fd,
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            // SAFETY: tv lives for the call; the length matches its type.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            owned
        })
        .expect("run")
}

/// What a captured underlay frame says, decoded by hand (independently of podswitch's parsers).
#[derive(Debug, PartialEq, Eq)]
struct Vxlan {
    outer_src: Ipv4Addr,
    outer_dst: Ipv4Addr,
    dst_port: u16,
    flags: u8,
    vni: u32,
    inner_src_mac: [u8; 6],
    inner_dst_mac: [u8; 6],
    inner_src: Ipv4Addr,
    inner_dst: Ipv4Addr,
}

fn decode(f: &[u8]) -> Option<Vxlan> {
    if f.len() < 14 + 20 + 8 + 8 + 14 + 20 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let udp = 14 + ihl;
    let vx = udp + 8;
    let inner = vx + 8;
    let ip = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    let mac = |o: usize| -> [u8; 6] { f[o..o + 6].try_into().unwrap_or([0; 6]) };
    if f.len() < inner + 34 || f[inner + 12..inner + 14] != [0x08, 0x00] {
        return None;
    }
    Some(Vxlan {
        outer_src: ip(14 + 12),
        outer_dst: ip(14 + 16),
        dst_port: u16::from_be_bytes([f[udp + 2], f[udp + 3]]),
        flags: f[vx],
        vni: u32::from_be_bytes([0, f[vx + 4], f[vx + 5], f[vx + 6]]),
        inner_dst_mac: mac(inner),
        inner_src_mac: mac(inner + 6),
        inner_src: ip(inner + 14 + 12),
        inner_dst: ip(inner + 14 + 16),
    })
}

#[root_test]
fn podswitch_and_kernel_vxlan_interoperate() {
    let s = setup();
    let cap = capture_socket(&s.b, "eth0");
    assert!(
        ping(&s.pod_a, "10.244.2.10", 3),
        "podswitch pod -> kernel pod"
    );
    assert!(
        ping(&s.pod_b, "10.244.1.10", 3),
        "kernel pod -> podswitch pod"
    );

    // What crossed the underlay decodes as VXLAN, VNI 1, port 8472, both directions.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && seen.len() < 4 {
        use std::os::fd::AsRawFd;
        // SAFETY: buf is valid for its length; fd is open.
        let n = unsafe { libc::recv(cap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            if let Some(v) = decode(&buf[..n as usize]) {
                seen.push(v);
            }
        }
    }
    // The capture started before the pings; they are long done, but the socket buffered them.
    let a_to_b = seen
        .iter()
        .find(|v| v.outer_src == Ipv4Addr::new(192, 168, 77, 1));
    let b_to_a = seen
        .iter()
        .find(|v| v.outer_src == Ipv4Addr::new(192, 168, 77, 2));
    let a_to_b =
        a_to_b.unwrap_or_else(|| panic!("no VXLAN frame from podswitch captured: {seen:?}"));
    let b_to_a =
        b_to_a.unwrap_or_else(|| panic!("no VXLAN frame from the kernel captured: {seen:?}"));
    for v in [a_to_b, b_to_a] {
        assert_eq!((v.dst_port, v.flags, v.vni), (8472, 0x08, 1), "{v:?}");
    }
    assert_eq!(
        (a_to_b.inner_src_mac, a_to_b.inner_dst_mac),
        (VTEP_A, VTEP_B_BYTES)
    );
    assert_eq!(
        (a_to_b.inner_src, a_to_b.inner_dst),
        (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 2, 10))
    );
    assert_eq!(
        (b_to_a.inner_src_mac, b_to_a.inner_dst_mac),
        (VTEP_B_BYTES, VTEP_A)
    );

    // TCP both ways, 4 MiB each, bytes verified (podswitch segments the pod's TSO superframes).
    const LEN: usize = 4 << 20;
    let listener = NetNs::open(&s.pod_b)
        .expect("ns")
        .run(|| TcpListener::bind("10.244.2.10:5201"))
        .expect("run")
        .expect("bind");
    let server = std::thread::spawn(move || {
        let (mut c, peer) = listener.accept().expect("accept");
        let mut w = c.try_clone().expect("clone");
        let tx =
            std::thread::spawn(move || w.write_all(&pattern(4, LEN)).expect("kernel pod writes"));
        let mut got = vec![0u8; LEN];
        c.read_exact(&mut got).expect("kernel pod reads");
        tx.join().expect("writer");
        (peer, got)
    });
    let mut c = NetNs::open(&s.pod_a)
        .expect("ns")
        .run(|| TcpStream::connect("10.244.2.10:5201"))
        .expect("run")
        .expect("connect");
    let mut r = c.try_clone().expect("clone");
    let rx = std::thread::spawn(move || {
        let mut got = vec![0u8; LEN];
        r.read_exact(&mut got).expect("podswitch pod reads");
        got
    });
    c.write_all(&pattern(3, LEN)).expect("podswitch pod writes");
    let got_a = rx.join().expect("reader");
    let (peer, got_b) = server.join().expect("server");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(Ipv4Addr::new(10, 244, 1, 10)),
        "no NAT across nodes"
    );
    assert!(
        got_b == pattern(3, LEN),
        "podswitch -> kernel bytes corrupted"
    );
    assert!(
        got_a == pattern(4, LEN),
        "kernel -> podswitch bytes corrupted"
    );
    let _ = &s.a;
}
