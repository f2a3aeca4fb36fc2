//! The kernel fast path (veth mode) doing its job: traffic between pods carried by the kernel,
//! not the switch; packets for a peer encapsulated by the program; both counted; and nothing
//! of it left attached once the daemon stops.

use crate::common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::transfer::Transfer;
use common::{netns_add, run, spawn_in, tempdir, Daemon, UDP_ECHO};
use podswitch::control::{Request, Response};
use podswitch::netns::NetNs;
use podswitch_dataplane::testutil::{root_test, unique};

/// Runs `cmd` with `sh -c` in namespace `ns`; fails the test if it fails.
fn sh(ns: &str, cmd: &str) {
    let out = run(&["ip", "netns", "exec", ns, "sh", "-c", cmd]);
    assert!(
        out.status.success(),
        "{cmd} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The programs attached at tcx ingress of `ifname` in namespace `ns`.
fn programs(ns: &str, ifname: &str) -> Vec<String> {
    NetNs::open(ns)
        .expect("namespace")
        .run(|| podswitch_fastpath::attached_programs(ifname))
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("{ifname} in {ns}: {e}"))
}

/// The links of namespace `ns` whose names start with `prefix`.
fn links(ns: &str, prefix: &str) -> Vec<String> {
    let out = run(&["ip", "-netns", ns, "-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// A counter of namespace `ns`'s `/proc/net/snmp` (`Udp`, `NoPorts`).
fn snmp(ns: &str, group: &str, name: &str) -> u64 {
    let out = run(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut rows = text
        .lines()
        .filter(|l| l.starts_with(&format!("{group}: ")));
    let (names, values) = (rows.next().unwrap_or(""), rows.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

#[root_test(veth_only)]
fn veth_pods_talk_through_the_kernel_and_nothing_is_left_attached_after_sigterm() {
    let dir = tempdir("fastpath");
    let control = dir.join("ctl.sock");
    let (node, far, a, b) = (unique("fpn"), unique("fpf"), unique("fpa"), unique("fpb"));
    netns_add(&node);
    netns_add(&far);
    // The node's underlay: ul0 (192.168.77.1) to a namespace that answers nothing on 8472.
    assert!(run(&[
        "ip", "link", "add", "ul0", "netns", &node, "type", "veth", "peer", "name", "eth0",
        "netns", &far,
    ])
    .status
    .success());
    sh(
        &node,
        "ip link set lo up && ip link set ul0 up && ip addr add 192.168.77.1/24 dev ul0",
    );
    sh(
        &far,
        "ip link set lo up && ip link set eth0 up && ip addr add 192.168.77.2/24 dev eth0",
    );
    let cfg = format!(
        "[node]\nname = \"{node}\"\npod_cidr = \"10.244.1.0/24\"\ncontrol = \"{}\"\nnetns = \"{node}\"\n\
         host_interface = \"\"\nunderlay = \"192.168.77.1\"\npod_interface = \"veth\"\n\n\
         [[peers]]\nname = \"far\"\nunderlay = \"192.168.77.2\"\npod_cidr = \"10.244.2.0/24\"\n\n\
         [[pods]]\nname = \"a\"\nnetns = \"{a}\"\nip = \"10.244.1.10\"\n\n\
         [[pods]]\nname = \"b\"\nnetns = \"{b}\"\nip = \"10.244.1.11\"\n",
        control.display()
    );
    let mut d = Daemon::start(&cfg, control.clone(), dir, vec![node.clone(), far.clone()]);

    // Attached where they belong: the underlay, each pod's host veth and upcall TAP.
    assert_eq!(programs(&node, "ul0"), ["from_underlay"]);
    let (veths, upcalls) = (links(&node, "psv"), links(&node, "psu"));
    assert_eq!(
        (veths.len(), upcalls.len()),
        (2, 2),
        "{veths:?} {upcalls:?}"
    );
    for v in &veths {
        assert_eq!(programs(&node, v), ["from_pod"], "{v}");
    }
    for u in &upcalls {
        assert_eq!(programs(&node, u), ["to_pod"], "{u}");
    }

    // Pod to pod: every byte arrives, and the kernel, not the switch, carried it.
    let status = || status(&control);
    let t = Transfer::start(
        &a,
        &b,
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 11), 5301),
    );
    t.wait_flowing("a transfer between the pods", 16 << 20);
    let done = t.finish();
    assert_eq!(done.first_bad, None, "bytes intact: {done:?}");
    assert_eq!(done.sent, done.received, "{done:?}");
    let (switch_frames, fast) = status();
    let local = fast.packets.get("local").copied().unwrap_or(0);
    assert!(local > 100, "the kernel forwarded the transfer: {fast:?}");
    assert!(
        switch_frames * 10 < local,
        "the switch saw a small share ({switch_frames} frames) of what the kernel forwarded ({local})"
    );
    assert_eq!(fast.pods, 2);

    // To the peer: encapsulated by the program, out of ul0, to 192.168.77.2's VXLAN port (where
    // nothing listens: the datagrams are counted there as NoPorts).
    let no_ports = snmp(&far, "Udp", "NoPorts");
    let ping = run(&[
        "ip",
        "netns",
        "exec",
        &a,
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "10.244.2.10",
    ]);
    assert!(!ping.status.success(), "nobody answers behind the peer");
    let (_, fast) = status();
    assert!(
        fast.packets.get("encap").copied().unwrap_or(0) >= 3,
        "{fast:?}"
    );
    assert!(
        snmp(&far, "Udp", "NoPorts") >= no_ports + 3,
        "the peer's underlay got them"
    );

    // SIGTERM: nothing of the fast path stays.
    let out = d.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        programs(&node, "ul0"),
        Vec::<String>::new(),
        "nothing on the underlay"
    );
    assert_eq!(
        links(&node, "psv"),
        Vec::<String>::new(),
        "no host veth left"
    );
    assert_eq!(
        links(&node, "psu"),
        Vec::<String>::new(),
        "no upcall TAP left"
    );
}

/// Frames the switch's workers have seen, and the fast path's state.
fn status(control: &std::path::Path) -> (u64, podswitch::node::FastPathStatus) {
    match podswitch::control::call(control, &Request::Status, Duration::from_secs(10)) {
        Ok(Response::Status {
            workers, fast_path, ..
        }) => (
            workers.iter().sum::<u64>(),
            fast_path.expect("a veth node reports its fast path"),
        ),
        other => panic!("status: {other:?}"),
    }
}

/// The flows connection tracking lists, as (client, backend, state).
fn flows(control: &std::path::Path) -> Vec<(SocketAddrV4, SocketAddrV4, String)> {
    match podswitch::control::call(control, &Request::Conntrack, Duration::from_secs(10)) {
        Ok(Response::Flows(flows)) => flows
            .into_iter()
            .map(|f| (f.client, f.backend, f.state))
            .collect(),
        other => panic!("conntrack: {other:?}"),
    }
}

/// A TCP server on `ip:port` writing `hello` to each connection and closing it first.
const HELLO_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(b"hello")
    c.close()
"#;

/// A client connecting `n` times to `ip:port` from the same source port, reading to the end
/// each time: prints what each connection read, one per line.
const SAME_PORT_CLIENT: &str = r#"
import socket, sys, time
ip, port, n, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.settimeout(5)
    c.bind(("0.0.0.0", sport))
    c.connect((ip, port))
    data = b""
    while True:
        d = c.recv(100)
        if not d: break
        data += d
    c.close()
    print(data.decode(), flush=True)
    time.sleep(0.05)
"#;

/// A UDP client sending `n` datagrams from one socket to `addr`, each answered: prints the
/// answers' sources and bodies, one per line.
const UDP_ROUNDS: &str = r#"
import socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for i in range(n):
    s.sendto(b"ping %d" % i, (ip, port))
    data, src = s.recvfrom(2048)
    print(src[0], src[1], data.decode(), flush=True)
"#;

#[root_test(veth_only)]
fn service_flows_stay_in_the_kernel_after_their_first_packet_and_conntrack_follows_them() {
    let dir = tempdir("fastflows");
    let control = dir.join("ctl.sock");
    let (node, a, b, c) = (unique("ffn"), unique("ffa"), unique("ffb"), unique("ffc"));
    netns_add(&node);
    let cfg = format!(
        "[node]\nname = \"{node}\"\npod_cidr = \"10.244.1.0/24\"\ncontrol = \"{}\"\nnetns = \"{node}\"\n\
         host_interface = \"\"\npod_interface = \"veth\"\n\n\
         [[pods]]\nname = \"a\"\nnetns = \"{a}\"\nip = \"10.244.1.10\"\n\n\
         [[pods]]\nname = \"b\"\nnetns = \"{b}\"\nip = \"10.244.1.11\"\n\n\
         [[pods]]\nname = \"c\"\nnetns = \"{c}\"\nip = \"10.244.1.12\"\n\n\
         [[services]]\nname = \"web\"\nvip = \"10.96.0.10\"\nport = 80\nbackends = [\"10.244.1.11:8080\"]\n\n\
         [[services]]\nname = \"dns\"\nvip = \"10.96.0.53\"\nport = 53\nproto = \"udp\"\nbackends = [\"10.244.1.12:5353\"]\n",
        control.display()
    );
    let namespaces = vec![node.clone(), a.clone(), b.clone(), c.clone()];
    let _d = Daemon::start(&cfg, control.clone(), dir, namespaces);
    let status = || status(&control);
    let (switch_before, before) = status();
    let path =
        |f: &podswitch::node::FastPathStatus, p: &str| f.packets.get(p).copied().unwrap_or(0);

    // TCP through the VIP: every byte arrives, the SYN went up, the rest was translated by
    // the kernel (the client's packets to the backend, the backend's back from the VIP).
    let (client, backend) = (
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 10), 0),
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 11), 8080),
    );
    let t = Transfer::start_via(
        &a,
        &b,
        backend,
        SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80),
    );
    t.wait_flowing("a transfer through the VIP", 16 << 20);
    let (switch_during, during) = status();
    assert_eq!(during.flows, 1, "the flow is compiled: {during:?}");
    let translated = path(&during, "translated") - path(&before, "translated");
    let by_switch = switch_during - switch_before;
    assert!(
        translated >= 200 && by_switch * 4 < translated,
        "the kernel translated {translated} packets, the switch saw {by_switch} frames: {during:?}"
    );
    assert!(
        path(&during, "up_miss") > path(&before, "up_miss"),
        "the SYN went up (no flow compiled yet)"
    );
    let ours =
        |f: &(SocketAddrV4, SocketAddrV4, String)| *f.0.ip() == *client.ip() && f.1 == backend;
    let state = flows(&control).into_iter().find(ours).map(|f| f.2);
    assert_eq!(
        state.as_deref(),
        Some("established"),
        "conntrack heard the handshake's end from the kernel"
    );
    let done = t.finish();
    assert_eq!(done.first_bad, None, "bytes intact: {done:?}");
    assert_eq!(done.sent, done.received, "{done:?}");
    // The close (FINs both ways) was carried by the kernel and is in conntrack's state.
    podswitch_dataplane::testutil::wait_for("the flow's close heard from the kernel", || {
        flows(&control)
            .into_iter()
            .find(ours)
            .is_some_and(|f| f.2 == "time_wait")
    });

    // The client's port reused for new connections once it closed (its FIN carried by the
    // kernel): the SYN stays in the kernel too, to the backend the switch chose; conntrack
    // follows each connection from the kernel's reports.
    let hello = spawn_in(&b, HELLO_SERVER, "10.244.1.11", 8080, false);
    let (_, before_reuse) = status();
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &a,
        "python3",
        "-c",
        SAME_PORT_CLIENT,
        "10.96.0.10",
        "80",
        "3",
        "45000",
    ]);
    drop(hello);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["hello"; 3],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, after_reuse) = status();
    let up = |p: &str| path(&after_reuse, p) - path(&before_reuse, p);
    assert_eq!(
        (up("up_miss"), up("up_flow_control")),
        (1, 0),
        "only the first connection's SYN went up: {after_reuse:?}"
    );
    let reused = SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 10), 45000);
    let state = flows(&control)
        .into_iter()
        .find(|f| f.0 == reused)
        .map(|f| f.2);
    assert_eq!(
        state.as_deref(),
        Some("time_wait"),
        "the third connection's close heard"
    );

    // UDP through its VIP: answers come from the VIP; after the first exchange, the kernel
    // carries both ways, and conntrack knows the flow was replied.
    let server = spawn_in(&c, UDP_ECHO, "10.244.1.12", 5353, true);
    let (_, before_udp) = status();
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &a,
        "python3",
        "-c",
        UDP_ROUNDS,
        "10.96.0.53",
        "53",
        "10",
    ]);
    drop(server);
    let answers = String::from_utf8_lossy(&out.stdout).into_owned();
    let expected: Vec<String> = (0..10)
        .map(|i| format!("10.96.0.53 53 10.244.1.12 ping {i}"))
        .collect();
    assert_eq!(
        answers.lines().collect::<Vec<_>>(),
        expected,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, after_udp) = status();
    let udp_translated = path(&after_udp, "translated") - path(&before_udp, "translated");
    assert!(
        udp_translated >= 17,
        "19 of the 20 datagrams at least may be in the kernel: {udp_translated}"
    );
    let udp = flows(&control)
        .into_iter()
        .find(|f| f.1 == SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 12), 5353))
        .map(|f| f.2);
    assert_eq!(udp.as_deref(), Some("replied"));
}

/// `transmitted` and `received` from ping's summary line.
fn ping_summary(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary: {out}"));
    let number = |word: &str| {
        line.split(", ")
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{word} in {line}"))
    };
    (number("transmitted"), number("received"))
}

#[root_test(veth_only)]
fn an_upgrade_hands_the_programs_over_and_pods_lose_no_packet_meanwhile() {
    let dir = tempdir("fastpath-upgrade");
    let control = dir.join("ctl.sock");
    let (node, a, b) = (unique("fun"), unique("fua"), unique("fub"));
    netns_add(&node);
    let cfg = format!(
        "[node]\nname = \"{node}\"\npod_cidr = \"10.244.1.0/24\"\ncontrol = \"{}\"\nnetns = \"{node}\"\n\
         host_interface = \"\"\npod_interface = \"veth\"\n\n\
         [[pods]]\nname = \"a\"\nnetns = \"{a}\"\nip = \"10.244.1.10\"\n",
        control.display()
    );
    let namespaces = vec![node.clone(), a.clone(), b.clone()];
    let mut d = Daemon::start(&cfg, control.clone(), dir, namespaces);
    // One pod of the config, one added at runtime (restored after the config's at a start).
    netns_add(&b);
    let add = d.ctl(&[
        "pod",
        "add",
        "--name",
        "b",
        "--netns",
        &b,
        "--ip",
        "10.244.1.11",
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    sh(&a, "ping -c 1 -W 5 10.244.1.11 >/dev/null");
    // A ping every 2 ms, the upgrade in the middle: pod to pod stays in the kernel
    // throughout (the old process's programs until the new one's replace them). `-w` makes
    // ping wait for every reply, however late.
    let mut ping = std::process::Command::new("ip")
        .args([
            "netns", "exec", &a, "ping", "-q", "-i", "0.002", "-c", "3000", "-w", "60",
        ])
        .arg("10.244.1.11")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(1000));
    let up = d.ctl(&["upgrade"]);
    assert!(
        up.status.success(),
        "upgrade: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        ping.try_wait().expect("ping").is_none(),
        "the upgrade was over before the pings were: not a test of the gap (make them longer)"
    );
    let out = ping.wait_with_output().expect("ping");
    let (sent, received) = ping_summary(&String::from_utf8_lossy(&out.stdout));
    // Without the handover, the gap lost 29 of them (measured).
    assert_eq!(
        (sent, received),
        (3000, 3000),
        "no ping lost across the upgrade"
    );
    // The new process's programs, once each; no pin left behind.
    for v in links(&node, "psv") {
        assert_eq!(programs(&node, &v), ["from_pod"], "{v}");
    }
    for u in links(&node, "psu") {
        assert_eq!(programs(&node, &u), ["to_pod"], "{u}");
    }
    let leftovers: Vec<_> = std::fs::read_dir("/sys/fs/bpf/podswitch")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| links(&node, "ps").contains(n))
        .collect();
    assert!(leftovers.is_empty(), "pins left: {leftovers:?}");
    let (_, fast) = status(&control);
    assert_eq!(fast.pods, 2);
    let out = d.stop();
    assert!(
        out.status.success(),
        "SIGTERM: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
