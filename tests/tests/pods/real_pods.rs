//! Real pods: network namespaces with TAP `eth0`s bridged by podswitch, driven by the kernel's
//! own TCP/IP stacks and real processes. Needs root (see `#[root_test]`).

use crate::common;

use std::io::{Read, Write};
use std::net::SocketAddrV4;

use common::real::*;
use common::*;
use podswitch::node::{Mac, PodSpec};

#[root_test]
fn ping_and_tcp_between_real_pods() {
    let (na, nb) = (unique("psa"), unique("psb"));
    let node = start(&[plan(&na, 10), plan(&nb, 11)]);
    assert!(ping(&na, "10.244.1.11", 3), "pod a cannot ping pod b");
    assert!(ping(&nb, "10.244.1.1", 2), "pod b cannot ping the gateway");

    // 16 MiB each way between kernel TCP stacks, bytes verified.
    const LEN: usize = 16 << 20;
    let listener = listen_in(&nb, SocketAddrV4::new(ip(11), 5201));
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        let mut w = conn.try_clone().expect("clone");
        let tx = std::thread::spawn(move || w.write_all(&pattern(2, LEN)).expect("server writes"));
        let mut got = vec![0u8; LEN];
        conn.read_exact(&mut got).expect("server reads");
        tx.join().expect("server writer");
        (peer, got)
    });
    let mut conn = connect_from(&na, SocketAddrV4::new(ip(11), 5201));
    let mut r = conn.try_clone().expect("clone");
    let rx = std::thread::spawn(move || {
        let mut got = vec![0u8; LEN];
        r.read_exact(&mut got).expect("client reads");
        got
    });
    conn.write_all(&pattern(1, LEN)).expect("client writes");
    let client_got = rx.join().expect("client reader");
    let (peer, server_got) = server.join().expect("server");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(ip(10)));
    assert!(server_got == pattern(1, LEN), "server got corrupted bytes");
    assert!(client_got == pattern(2, LEN), "client got corrupted bytes");
    let a = node.pod("pod10").expect("pod a");
    assert!(
        a.counters.rx_bytes > LEN as u64,
        "the transfer went through the switch: {:?}",
        a.counters
    );
    drop(node);
    let left = netns_list();
    assert!(
        !left.contains(&na) && !left.contains(&nb),
        "namespaces left behind: {left:?}"
    );
}

#[root_test(
    tap_only = "the workers share the queues of the pods' TAPs; veth pods' flows between each other stay in the kernel"
)]
fn two_workers_share_the_flows_of_multi_queue_taps() {
    let (na, nb) = (unique("psa"), unique("psb"));
    let node = start_with_workers(&[plan(&na, 10), plan(&nb, 11)], 2);
    let queues = stdout_of(run(&[
        "ip",
        "netns",
        "exec",
        &na,
        "ls",
        "/sys/class/net/eth0/queues",
    ]));
    assert_eq!(
        queues.split_whitespace().collect::<Vec<_>>(),
        ["rx-0", "rx-1", "tx-0", "tx-1"],
        "one TAP queue per worker"
    );
    assert!(ping(&na, "10.244.1.11", 2), "pod a cannot ping pod b");
    // 32 connections at once: the kernel spreads flows over the two queues by hash (all on one
    // queue: probability 2^-31). Every byte is checked, both ways.
    const FLOWS: usize = 32;
    const LEN: usize = 512 << 10;
    let listener = listen_in(&nb, SocketAddrV4::new(ip(11), 5202));
    let server = std::thread::spawn(move || {
        let conns: Vec<_> = (0..FLOWS)
            .map(|_| listener.accept().expect("accept").0)
            .collect();
        let echo: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                std::thread::spawn(move || {
                    let mut got = vec![0u8; LEN];
                    c.read_exact(&mut got).expect("server reads");
                    c.write_all(&got).expect("server echoes");
                })
            })
            .collect();
        for t in echo {
            t.join().expect("echo");
        }
    });
    let clients: Vec<_> = (0..FLOWS)
        .map(|i| {
            let mut conn = connect_from(&na, SocketAddrV4::new(ip(11), 5202));
            std::thread::spawn(move || {
                let sent = pattern(i as u8, LEN);
                conn.write_all(&sent).expect("client writes");
                let mut back = vec![0u8; LEN];
                conn.read_exact(&mut back).expect("client reads");
                back == sent
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert!(c.join().expect("client"), "flow {i} came back corrupted");
    }
    server.join().expect("server");
    let per_worker = node.worker_frames();
    assert_eq!(per_worker.len(), 2);
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers carried traffic: {per_worker:?}"
    );
    drop(node);
    let left = netns_list();
    assert!(
        !left.contains(&na) && !left.contains(&nb),
        "left behind: {left:?}"
    );
}

/// Spawns `python3 -c script` inside namespace `ns`, with stdout piped.
fn spawn_py(ns: &str, script: &str) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-u", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn python3 in the pod")
}

const SERVER_PY: &str = r#"
import socket
s = socket.socket()
s.bind(("127.0.0.1", 8080))
s.listen()
print("listening", flush=True)
c, peer = s.accept()
data = c.recv(100)
c.sendall(b"pong:" + data)
c.close()
print("peer", peer[0], flush=True)
"#;

const CLIENT_PY: &str = r#"
import socket
c = socket.create_connection(("127.0.0.1", 8080), timeout=10)
c.sendall(b"ping")
print(c.recv(100).decode(), flush=True)
"#;

const BIND_PY: &str = r#"
import socket, errno
s = socket.socket()
try:
    s.bind(("127.0.0.1", 8080))
    s.listen()
    print("bound", flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
"#;

fn stdout_of(out: std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[root_test]
fn processes_of_one_pod_share_localhost_and_ports() {
    let (na, nb) = (unique("psl"), unique("psm"));
    let node = start(&[plan(&na, 10), plan(&nb, 11)]);
    let before = node.pod("pod10").expect("pod").counters;

    let mut server = spawn_py(&na, SERVER_PY);
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = server.stdout.as_mut().expect("server stdout");
        let mut reader = std::io::BufReader::new(stdout);
        reader.read_line(&mut line).expect("server output");
    }
    assert_eq!(line.trim(), "listening");
    // A second process of the same pod cannot take the port; a process of another pod can.
    assert_eq!(
        stdout_of(in_ns(&na, &["python3", "-c", BIND_PY])),
        "EADDRINUSE"
    );
    assert_eq!(stdout_of(in_ns(&nb, &["python3", "-c", BIND_PY])), "bound");
    // The client process reaches the server on 127.0.0.1.
    assert_eq!(
        stdout_of(in_ns(&na, &["python3", "-c", CLIENT_PY])),
        "pong:ping"
    );
    let out = server.wait_with_output().expect("server exits");
    assert!(
        out.status.success(),
        "server failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout_of(out),
        "peer 127.0.0.1",
        "the server sees the client as 127.0.0.1"
    );

    let after = node.pod("pod10").expect("pod").counters;
    assert_eq!(after, before, "localhost traffic reached the switch");
    drop(node);
    assert!(!netns_list().contains(&na));
}

/// A stream of numbered 64 KiB chunks: the receiver checks every byte and the order.
fn chunk(seq: u64) -> Vec<u8> {
    let mut c = vec![(seq % 251) as u8; 64 * 1024];
    c[..8].copy_from_slice(&seq.to_be_bytes());
    c
}

#[root_test]
fn pods_added_and_removed_while_others_transfer() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let (na, nb, nc, nd) = (unique("psa"), unique("psb"), unique("psc"), unique("psd"));
    let node = start(&[plan(&na, 10), plan(&nb, 11), plan(&nd, 13)]);
    let listener = listen_in(&nb, SocketAddrV4::new(ip(11), 5202));
    let received = Arc::new(AtomicU64::new(0));
    let server = {
        let received = Arc::clone(&received);
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 64 * 1024];
            let mut seq = 0u64;
            loop {
                match conn.read_exact(&mut buf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return seq,
                    Err(e) => panic!("transfer broken after {seq} chunks: {e}"),
                }
                assert!(buf == chunk(seq), "chunk {seq} corrupted or out of order");
                seq += 1;
                received.store(seq, Ordering::Relaxed);
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut conn = connect_from(&na, SocketAddrV4::new(ip(11), 5202));
    let client = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                conn.write_all(&chunk(seq)).expect("send chunk");
                seq += 1;
            }
            conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
            seq
        })
    };
    wait_for("transfer under way", || {
        received.load(Ordering::Relaxed) > 20
    });
    let at_change = received.load(Ordering::Relaxed);
    node.add_pod(&plan(&nc, 12)).expect("add pod c at runtime");
    node.del_pod("pod13").expect("remove pod d at runtime");
    assert!(ping(&nc, "10.244.1.10", 2), "the new pod is reachable");
    wait_for("transfer continues after the changes", || {
        received.load(Ordering::Relaxed) > at_change + 50
    });
    stop.store(true, Ordering::Relaxed);
    let sent = client.join().expect("client");
    let got = server.join().expect("server");
    assert_eq!(got, sent, "every chunk sent arrived, intact and in order");
    assert!(
        !netns_list().contains(&nd),
        "the removed pod's namespace is gone"
    );
    drop(node);
    let left = netns_list();
    for ns in [&na, &nb, &nc, &nd] {
        assert!(!left.contains(ns), "{ns} left behind");
    }
}

#[root_test]
fn namespace_deleted_from_outside_removes_only_that_pod() {
    let (na, nb, nc) = (unique("psa"), unique("psb"), unique("psc"));
    let node = start(&[plan(&na, 10), plan(&nb, 11), plan(&nc, 12)]);
    assert!(ping(&na, "10.244.1.12", 1));
    let out = run(&["ip", "netns", "del", &nc]);
    assert!(
        out.status.success(),
        "ip netns del: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reaped = Vec::new();
    wait_for("the switch notices the vanished pod", || {
        reaped.extend(node.reap_vanished());
        !reaped.is_empty()
    });
    assert_eq!(reaped, vec!["pod12".to_string()]);
    assert!(node.pod("pod12").is_none());
    assert_eq!(node.pods().len(), 2);
    assert!(ping(&na, "10.244.1.11", 2), "other pods keep working");
    assert!(
        !ping(&na, "10.244.1.12", 1),
        "the deleted pod is unreachable"
    );
    drop(node);
    assert!(netns_list()
        .iter()
        .all(|n| n != &na && n != &nb && n != &nc));
}

#[root_test]
fn adopted_namespace_is_left_as_found() {
    let (na, nb) = (unique("psa"), unique("psb"));
    let _guard = NsGuard(vec![na.clone()]);
    assert!(run(&["ip", "netns", "add", &na]).status.success());
    let node = start(&[plan(&na, 10), plan(&nb, 11)]);
    let a = node.pod("pod10").expect("pod");
    assert!(!a.created_netns, "an existing namespace is adopted");
    assert!(ping(&na, "10.244.1.11", 1));
    drop(node);
    let left = netns_list();
    assert!(left.contains(&na), "the adopted namespace must stay");
    assert!(!left.contains(&nb), "the created namespace must go");
    let links = stdout_of(run(&["ip", "-n", &na, "-o", "link"]));
    assert!(
        !links.contains("eth0"),
        "the TAP must go with the switch: {links}"
    );
}

#[root_test]
fn failed_pod_setup_leaves_nothing_behind() {
    let (na, nb, nc) = (unique("psa"), unique("psb"), unique("psc"));
    let _guard = NsGuard(vec![nb.clone()]);
    let node = start(&[plan(&na, 10)]);
    // An adopted namespace that already has an eth0: the TAP cannot be created there.
    assert!(run(&["ip", "netns", "add", &nb]).status.success());
    assert!(
        run(&["ip", "-n", &nb, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
            .status
            .success()
    );
    let err = node.add_pod(&plan(&nb, 11)).expect_err("eth0 exists");
    assert_eq!(
        err.to_string(),
        format!("pod \"pod11\": namespace {nb:?} already has an eth0 (another podswitch or network plugin runs a pod there?): remove that pod first, or pick another namespace or interface name"),
        "the error says what exists and what to do"
    );
    assert!(node.pod("pod11").is_none());
    // The same namespace by path, as a CNI attachment: refused alike, nothing made, the
    // namespace never deleted (a path is only adopted).
    let by_path = PodSpec {
        netns: format!("/run/netns/{nb}"),
        container_id: Some("ctr11".into()),
        ..plan(&nb, 11)
    };
    let err = node.add_pod(&by_path).expect_err("eth0 exists");
    assert!(err.to_string().contains("already has an eth0"), "{err}");
    assert!(node.pod("pod11").is_none());
    assert!(netns_list().contains(&nb), "an adopted path was deleted");
    let host_links = stdout_of(run(&["ip", "-o", "link"]));
    assert!(
        !host_links.contains(&format!("pst{:x}.", std::process::id() & 0xfffff)),
        "a temporary TAP was left behind: {host_links}"
    );
    let links = stdout_of(run(&["ip", "-n", &nb, "-o", "link"]));
    assert!(
        links.contains("eth0@eth1"),
        "the adopted namespace is untouched: {links}"
    );
    // A pod the switch refuses (duplicate IP) creates no namespace at all.
    let mut dup = plan(&nc, 10);
    dup.name = "dup".into();
    dup.mac = Some(Mac([0x02, 0x42, 1, 2, 3, 4]));
    let err = node.add_pod(&dup).expect_err("duplicate IP");
    assert_eq!(
        err.to_string(),
        "pod.ip: 10.244.1.10 is already the address of pod \"pod10\""
    );
    assert!(
        !netns_list().contains(&nc),
        "a refused pod created a namespace"
    );
    assert!(ping(&na, "10.244.1.1", 1), "the node still works");
}

/// Captures every frame on `eth0` until the sentinel (an ICMP echo request 10.244.1.10 ->
/// 10.244.1.11) arrives, then prints how many frames mentioned the deleted pod's address
/// (10.244.1.12), the spoofed one (10.244.1.50), or carried a VLAN tag. Frames from one pod
/// are forwarded in order, so whatever was sent before the sentinel has arrived by then.
const CAPTURE_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.settimeout(30)
print("ready", flush=True)
deleted = spoofed = tagged = 0
while True:
    f = s.recv(65535)
    if f[12:14] == b"\x81\x00":
        tagged += 1
    if b"\x0a\xf4\x01\x0c" in f[14:]:
        deleted += 1
    if b"\x0a\xf4\x01\x32" in f[14:]:
        spoofed += 1
    if (f[12:14] == b"\x08\x00" and f[23] == 1 and f[26:30] == b"\x0a\xf4\x01\x0a"
            and f[30:34] == b"\x0a\xf4\x01\x0b" and f[34] == 8):
        break
print(deleted, spoofed, tagged, flush=True)
"#;

/// Sends three VLAN-tagged (id 7) UDP packets from the spoofed 10.244.1.50 to pod b's MAC.
const SEND_TAGGED_PY: &str = r#"
import socket, struct
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s > 0xffff:
        s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
udp = struct.pack("!HHHH", 4000, 4001, 12, 0) + b"spam"
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 bytes([10, 244, 1, 50]), bytes([10, 244, 1, 11]))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = (bytes.fromhex("02420af4010b") + bytes.fromhex("02420af4010a")
         + b"\x81\x00" + struct.pack("!H", 7) + b"\x08\x00" + ip + udp)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(3):
    s.send(frame)
"#;

#[root_test]
fn a_deleted_pods_mac_and_vlan_tagged_spoofing_reach_no_other_pod() {
    let (na, nb, nc) = (unique("pva"), unique("pvb"), unique("pvc"));
    let node = start(&[plan(&na, 10), plan(&nb, 11), plan(&nc, 12)]);
    assert!(ping(&na, "10.244.1.12", 1));
    assert!(ping(&na, "10.244.1.11", 1));
    let out = run(&["ip", "netns", "del", &nc]);
    assert!(out.status.success(), "ip netns del");
    wait_for("the switch notices the vanished pod", || {
        node.reap_vanished();
        node.pod("pod12").is_none()
    });
    let mut capture = spawn_py(&nb, CAPTURE_PY);
    let mut stdout = std::io::BufReader::new(capture.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("capture starts");
    assert_eq!(line.trim(), "ready");

    // Pod a still knows the deleted pod's MAC and keeps sending to it.
    let deleted_mac = "02:42:0a:f4:01:0c";
    let sh = |cmd: &str| {
        let out = in_ns(&na, &["sh", "-c", cmd]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&format!(
        "ip neigh replace 10.244.1.12 lladdr {deleted_mac} dev eth0 nud permanent"
    ));
    assert!(
        !ping(&na, "10.244.1.12", 3),
        "the deleted pod answers nothing"
    );
    // A VLAN-tagged frame with a spoofed source address, unicast to pod b's MAC, sent the way
    // a process in the pod can (a packet socket).
    let out = in_ns(&na, &["python3", "-c", SEND_TAGGED_PY]);
    assert!(
        out.status.success(),
        "send tagged: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The sentinel: an ordinary ping from a to b.
    assert!(ping(&na, "10.244.1.11", 1), "ordinary traffic still flows");
    let out = capture.wait_with_output().expect("capture ends");
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("counts");
    assert!(
        out.status.success(),
        "capture: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<u64> = line
        .split_whitespace()
        .map(|n| n.parse().expect("count"))
        .collect();
    assert_eq!(
        counts,
        vec![0, 0, 0],
        "frames at pod b: for the deleted pod, from the spoofed address, VLAN-tagged"
    );
    let drops: std::collections::BTreeMap<_, _> = node
        .drops()
        .into_iter()
        .map(|(r, n)| (r.label(), n))
        .collect();
    assert!(
        drops.get("unknown_unicast").copied().unwrap_or(0) >= 3,
        "echo requests to the deleted pod dropped as unknown unicast: {drops:?}"
    );
    assert!(
        drops.get("vlan").copied().unwrap_or(0) >= 1,
        "tagged frames dropped as vlan: {drops:?}"
    );
}

/// The receive-buffer errors of UDP in namespace `ns` (`/proc/net/snmp`'s `RcvbufErrors`).
fn udp_rcvbuf_errors(ns: &str) -> u64 {
    let out = in_ns(ns, &["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[root_test]
fn a_pod_that_stops_reading_does_not_hold_up_the_others() {
    let (na, nb, nc) = (unique("pra"), unique("prb"), unique("prc"));
    let node = start(&[plan(&na, 10), plan(&nb, 11), plan(&nc, 12)]);
    // Pod c has a socket it never reads: its buffer fills, then its kernel drops.
    let deaf = socket_in(&nc, || {
        std::net::UdpSocket::bind(SocketAddrV4::new(ip(12), 9999))
    });
    let blast_ns = na.clone();
    let blast = std::thread::spawn(move || {
        let s = socket_in(&blast_ns, || std::net::UdpSocket::bind("0.0.0.0:0"));
        let payload = [7u8; 1400];
        let mut sent = 0u32;
        for _ in 0..100_000 {
            if s.send_to(&payload, SocketAddrV4::new(ip(12), 9999)).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    // Meanwhile pod b sends pod a 32 MiB over TCP, bytes verified.
    const LEN: usize = 32 << 20;
    let listener = listen_in(&na, SocketAddrV4::new(ip(10), 5302));
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut got = vec![0u8; LEN];
        conn.read_exact(&mut got).expect("a reads");
        got
    });
    let mut conn = connect_from(&nb, SocketAddrV4::new(ip(10), 5302));
    conn.write_all(&pattern(4, LEN)).expect("b writes");
    assert!(
        server.join().expect("server") == pattern(4, LEN),
        "b -> a bytes intact"
    );
    let sent = blast.join().expect("blast");
    assert!(sent > 50_000, "the blast left pod a: {sent}");
    // What reached pod c overflowed its socket there, in its own kernel: the switch wrote
    // every frame and moved on.
    let c = node.pod("pod12").expect("pod c").counters;
    assert!(c.tx_frames > 1000, "the switch delivered to pod c: {c:?}");
    assert!(udp_rcvbuf_errors(&nc) > 0, "pod c's socket overflowed");
    drop(deaf);
    assert!(ping(&nb, "10.244.1.12", 1), "pod c still reachable");
}
