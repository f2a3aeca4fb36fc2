//! The node and the outside world (Order 8): the host interface (`podsw0`) and pod egress
//! masqueraded to the node's address. Two podswitch nodes on an underlay of their own, each in
//! its own namespace, and an "outside" namespace holding a documentation address
//! (198.51.100.1) that only the nodes route to, through the underlay: the outside has no route
//! back to the pod networks, so a reply reaches a pod only if its request left with the node's
//! address. Needs root.

use crate::common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::cluster::{ping, sh, Node, Underlay};
use common::{run, spawn_in, tempdir, Server, UDP_ECHO};
use podswitch_dataplane::testutil::{root_test, unique};

const OUTSIDE: &str = "198.51.100.1";

/// A server in `ns` on `ip:port` ([`WHO_SERVER`] unless spawned otherwise); killed on drop.
/// The server answering `<server> <client>`, on `ip:port` in `ns`.
fn who_server(ns: &str, ip: &str, port: u16) -> Server {
    spawn_in(ns, WHO_SERVER, ip, port, false)
}

/// The address the server at `ip:port` saw as the client's, fetched from `ns` (None: no
/// answer).
fn seen_from(ns: &str, ip: &str, port: u16) -> Option<String> {
    let body = answer_from(ns, ip, port)?;
    body.split_once(' ').map(|(_, client)| client.to_string())
}

/// The whole answer of the server at `ip:port` (`<server> <client>`), fetched from `ns`.
fn answer_from(ns: &str, ip: &str, port: u16) -> Option<String> {
    let url = format!("http://{ip}:{port}/");
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-sS",
        "--max-time",
        "5",
        &url,
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two nodes (10.244.1.0/24 at .1, 10.244.2.0/24 at .2) with two pods each (.10 and .11),
/// peers of each other, and the outside at .100 holding 198.51.100.1.
struct Site {
    underlay: Underlay,
    hosts: Vec<String>,
    outside: String,
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl Site {
    fn new() -> Self {
        let mut underlay = Underlay::new();
        let hosts: Vec<String> = (1..=2)
            .map(|i| underlay.add_host(&format!("192.168.77.{i}")))
            .collect();
        let outside = underlay.add_host("192.168.77.100");
        sh(&outside, &format!("ip addr add {OUTSIDE}/32 dev lo"));
        for h in &hosts {
            sh(h, "ip route add 198.51.100.0/24 via 192.168.77.100");
        }
        let dir = tempdir("host");
        let nodes = (1..=2u8).map(|i| Self::node(&dir, &hosts, i)).collect();
        Site {
            underlay,
            hosts,
            outside,
            nodes,
            dir,
        }
    }

    fn config(
        dir: &std::path::Path,
        hosts: &[String],
        i: u8,
        pod_ns: &str,
        second_ns: &str,
    ) -> (PathBuf, PathBuf) {
        let other = 3 - i;
        let control = dir.join(format!("node{i}.sock"));
        let text = format!(
            "[node]\nname = \"node{i}\"\nnetns = \"{}\"\npod_cidr = \"10.244.{i}.0/24\"\nunderlay = \"192.168.77.{i}\"\ncontrol = \"{}\"\ncpus = []\n\n[[pods]]\nname = \"p\"\nnetns = \"{pod_ns}\"\nip = \"10.244.{i}.10\"\n\n[[pods]]\nname = \"q\"\nnetns = \"{second_ns}\"\nip = \"10.244.{i}.11\"\n\n[[peers]]\nname = \"node{other}\"\nunderlay = \"192.168.77.{other}\"\npod_cidr = \"10.244.{other}.0/24\"\n",
            hosts[usize::from(i) - 1],
            control.display()
        );
        let config = dir.join(format!("node{i}.toml"));
        std::fs::write(&config, text).expect("config");
        (config, control)
    }

    fn node(dir: &std::path::Path, hosts: &[String], i: u8) -> Node {
        let pod_ns = unique(&format!("hp{i}"));
        let second_ns = unique(&format!("hq{i}"));
        let (config, control) = Self::config(dir, hosts, i, &pod_ns, &second_ns);
        let node = Node::spawn(
            format!("node{i}"),
            format!("192.168.77.{i}"),
            config,
            control,
            dir.join(format!("node{i}.log")),
            vec![pod_ns, second_ns],
        );
        node.subnet();
        node
    }

    /// The masquerade rules in node `i`'s namespace (nft's listing of podswitch's table).
    fn rules(&self, i: usize) -> String {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.hosts[i],
            "nft",
            "list",
            "table",
            "ip",
            &format!("podswitch-node{}", i + 1),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn has_link(&self, i: usize, name: &str) -> bool {
        run(&["ip", "-n", &self.hosts[i], "link", "show", name])
            .status
            .success()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = &self.underlay;
    }
}

#[root_test]
fn pods_reach_the_outside_masqueraded_and_the_node_reaches_its_pods() {
    let site = Site::new();
    let (n1, n2) = (&site.nodes[0], &site.nodes[1]);
    let (pod1, pod2) = (n1.pod_ns[0].clone(), n2.pod_ns[0].clone());

    // A pod fetches a page from the outside, which sees the node's address.
    let _outside = who_server(&site.outside, OUTSIDE, 8080);
    assert_eq!(
        seen_from(&pod1, OUTSIDE, 8080).as_deref(),
        Some("192.168.77.1"),
        "{}",
        n1.log()
    );
    assert_eq!(
        seen_from(&pod2, OUTSIDE, 8080).as_deref(),
        Some("192.168.77.2")
    );

    // Pods serve; across nodes they see each other's pod addresses (never masqueraded).
    let _s1 = who_server(&pod1, "10.244.1.10", 8080);
    let _s2 = who_server(&pod2, "10.244.2.10", 8080);
    assert_eq!(
        seen_from(&pod1, "10.244.2.10", 8080).as_deref(),
        Some("10.244.1.10")
    );
    assert_eq!(
        seen_from(&pod2, "10.244.1.10", 8080).as_deref(),
        Some("10.244.2.10")
    );

    // The node reaches its own pod and the other node's, from its gateway address.
    let node1 = &site.hosts[0];
    assert!(ping(node1, "10.244.1.10"), "node 1 -> its pod");
    assert!(ping(node1, "10.244.2.10"), "node 1 -> node 2's pod");
    assert_eq!(
        seen_from(node1, "10.244.1.10", 8080).as_deref(),
        Some("10.244.1.1")
    );
    assert_eq!(
        seen_from(node1, "10.244.2.10", 8080).as_deref(),
        Some("10.244.1.1")
    );

    // A pod reaches a server on the node's own (underlay) address.
    let _node_server = who_server(node1, "192.168.77.1", 8081);
    assert_eq!(
        seen_from(&pod1, "192.168.77.1", 8081).as_deref(),
        Some("10.244.1.10")
    );

    // One masquerade rule, named so it is recognisable.
    let rules = site.rules(0);
    assert_eq!(rules.matches("masquerade").count(), 1, "{rules}");
    assert!(
        rules.contains("ip saddr 10.244.1.0/24 oifname != \"podsw0\""),
        "{rules}"
    );
}

#[root_test]
fn sigterm_leaves_no_rule_or_interface_and_a_restart_after_sigkill_no_duplicate() {
    let mut site = Site::new();
    assert!(site.has_link(0, "podsw0"));
    assert_eq!(site.rules(0).matches("masquerade").count(), 1);

    // SIGKILL: the rules stay behind (the interface goes with the process) ...
    site.nodes[0].kill();
    assert!(
        !site.has_link(0, "podsw0"),
        "the TAP goes with its descriptors"
    );
    assert_eq!(site.rules(0).matches("masquerade").count(), 1);
    // ... and the next start replaces them instead of adding a second set.
    site.nodes[0].start();
    site.nodes[0].subnet();
    assert_eq!(
        site.rules(0).matches("masquerade").count(),
        1,
        "{}",
        site.rules(0)
    );
    assert!(site.has_link(0, "podsw0"));
    let pod1 = site.nodes[0].pod_ns[0].clone();
    let _outside = who_server(&site.outside, OUTSIDE, 8080);
    assert_eq!(
        seen_from(&pod1, OUTSIDE, 8080).as_deref(),
        Some("192.168.77.1")
    );

    // SIGTERM: nothing left.
    site.nodes[0].stop();
    assert!(!site.has_link(0, "podsw0"));
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &site.hosts[0],
        "nft",
        "list",
        "ruleset",
    ]);
    let ruleset = String::from_utf8_lossy(&out.stdout);
    assert!(!ruleset.contains("podswitch"), "{ruleset}");
}

/// An HTTP server answering every GET with `<its own address> <the client's address>`.
const WHO_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        b = (sys.argv[1] + " " + self.client_address[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;

/// What a connected UDP socket in `ns` gets for a datagram to `ip:port`: "refused" (the ICMP
/// port unreachable reached it, as about its own datagram), "timeout" (nothing in 5 s), or
/// the answer.
fn udp_connected(ns: &str, ip: &str, port: u16) -> String {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(5)\ns.connect(('{ip}',{port}))\ns.send(b'x')\ntry:\n    print(s.recv(2048).decode())\nexcept ConnectionRefusedError:\n    print('refused')\nexcept socket.timeout:\n    print('timeout')"
    );
    let out = run(&["ip", "netns", "exec", ns, "python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A UDP request from `ns` to `ip:port`; the answer (None: none within 2 s).
fn udp_ask(ns: &str, ip: &str, port: u16, what: &str) -> Option<String> {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\ns.sendto(b'{what}',('{ip}',{port}))\nprint(s.recv(2048).decode())"
    );
    let out = run(&["ip", "netns", "exec", ns, "python3", "-c", &script]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[root_test]
fn services_spread_flows_over_backends_across_nodes_with_hairpin_udp_and_reject() {
    let site = Site::new();
    let (n1, pod1, pod2) = (
        &site.nodes[0],
        site.nodes[0].pod_ns[0].clone(),
        site.nodes[1].pod_ns[0].clone(),
    );
    let _b1 = who_server(&pod1, "10.244.1.10", 8080);
    let _b2 = who_server(&pod2, "10.244.2.10", 8080);
    let _u2 = spawn_in(&pod2, UDP_ECHO, "10.244.2.10", 5353, true);
    let ctl = |args: &[&str]| n1.ctl(args);
    // One backend on the client's own node (the client itself: hairpin), one across.
    ctl(&[
        "service",
        "add",
        "--name",
        "web",
        "--vip",
        "10.96.0.10",
        "--port",
        "80",
        "--backend",
        "10.244.1.10:8080",
        "--backend",
        "10.244.2.10:8080",
    ]);
    ctl(&[
        "service",
        "add",
        "--name",
        "dns",
        "--vip",
        "10.96.0.53",
        "--port",
        "53",
        "--proto",
        "udp",
        "--backend",
        "10.244.2.10:5353",
    ]);
    ctl(&[
        "service",
        "add",
        "--name",
        "empty",
        "--vip",
        "10.96.0.99",
        "--port",
        "80",
    ]);

    let mut per_backend = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let body = answer_from(&pod1, "10.96.0.10", 80).expect("an answer through the VIP");
        let (backend, client) = body.split_once(' ').expect("two words");
        // Across nodes the backend sees the client's own address; the client's own server
        // (hairpin) sees the gateway's.
        match backend {
            "10.244.2.10" => assert_eq!(client, "10.244.1.10"),
            "10.244.1.10" => assert_eq!(client, "10.244.1.1"),
            other => panic!("answer from {other}"),
        }
        *per_backend.entry(backend.to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        per_backend.len(),
        2,
        "both backends answer: {per_backend:?}"
    );
    // The node itself reaches the service too (from its gateway address, through podsw0).
    let body = answer_from(&site.hosts[0], "10.96.0.10", 80).expect("the node through the VIP");
    assert!(body.ends_with(" 10.244.1.1"), "{body}");
    let list = ctl(&["service", "list"]);
    assert!(
        list.contains("web") && list.contains("10.244.2.10:8080("),
        "{list}"
    );
    let flows = ctl(&["conntrack"]);
    assert!(flows.contains("10.96.0.10:80"), "{flows}");

    // UDP through its VIP, the answer from the VIP (the client's socket accepts it).
    assert_eq!(
        udp_ask(&pod1, "10.96.0.53", 53, "hello").as_deref(),
        Some("10.244.2.10 hello")
    );
    // No backends: refused at once (a reset), not a timeout.
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &pod1,
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://10.96.0.99/",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "curl: connection refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A backend's ICMP port unreachable (nothing listens on its port) is translated back to
    // be about the client's datagram to the VIP: the client's socket is refused, not left to
    // time out. Across nodes (through the tunnel), and hairpin (the error goes to the
    // gateway address and comes back to the client).
    for (name, vip, backend) in [
        ("closed", "10.96.0.54", "10.244.2.10:5354"),
        ("closed-self", "10.96.0.55", "10.244.1.10:5354"),
    ] {
        ctl(&[
            "service",
            "add",
            "--name",
            name,
            "--vip",
            vip,
            "--port",
            "53",
            "--proto",
            "udp",
            "--backend",
            backend,
        ]);
        assert_eq!(udp_connected(&pod1, vip, 53), "refused", "{name}");
    }
}

/// A TCP server answering every line with `<its own address>` and `n` bytes of a pattern.
const LINE_SERVER: &str = r#"
import socket, sys, threading
ip, port = sys.argv[1], int(sys.argv[2])
body = bytes((i * 7 + 3) % 251 for i in range(20000))
def serve(c):
    f = c.makefile("rb")
    try:
        for line in f:
            c.sendall(ip.encode() + b"\n" + body)
    except OSError:
        pass
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
s.listen(512)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// The client: `connections` connections to `vip:port`, one request each, every answer's
/// bytes checked. Then `marker` appears, holding a number n: it waits, sending nothing, until
/// n connections are reset (at most 30 s), and asks once more on each of the others. Then
/// `marker.2` appears, with another n: it waits again for n more idle resets. Prints JSON:
/// the backend per connection, then what each got after the marker (a backend,
/// "idle_reset", or "reset" when asking), then the connections reset after `marker.2`.
const LINE_CLIENT: &str = r#"
import socket, sys, json, os, time, select
vip, port, n, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
body = bytes((i * 7 + 3) % 251 for i in range(20000))
def ask(c):
    c.sendall(b"x\n")
    data = b""
    while b"\n" not in data:
        d = c.recv(65536)
        if not d: raise ConnectionResetError("closed")
        data += d
    who, rest = data.split(b"\n", 1)
    while len(rest) < len(body):
        d = c.recv(65536)
        if not d: raise ConnectionResetError("closed")
        rest += d
    assert rest == body, "bytes differ"
    return who.decode()
conns, first = [], []
for i in range(n):
    c = socket.create_connection((vip, port), timeout=5)
    conns.append(c)
    first.append(ask(c))
print(json.dumps(first), flush=True)
def idle_resets(marker, live):
    while not os.path.exists(marker) or not open(marker).read(): time.sleep(0.02)
    expected = int(open(marker).read())
    reset = set()
    deadline = time.time() + 30
    while len(reset) < expected and time.time() < deadline:
        waiting = [c for c in live if c not in reset]
        readable, _, _ = select.select(waiting, [], [], max(0, deadline - time.time()))
        for c in readable:
            try:
                got = c.recv(1, socket.MSG_DONTWAIT)
                sys.exit("an idle connection received %r" % got)
            except ConnectionResetError:
                reset.add(c)
            except BlockingIOError:
                pass
    return reset
idle_reset = idle_resets(marker, conns)
second = []
for c in conns:
    if c in idle_reset:
        second.append("idle_reset")
        continue
    try:
        second.append(ask(c))
    except (ConnectionResetError, BrokenPipeError):
        second.append("reset")
print(json.dumps(second), flush=True)
left = [c for c in conns if c not in idle_reset]
print(json.dumps(len(idle_resets(marker + ".2", left))), flush=True)
"#;

#[root_test]
fn three_hundred_connections_over_three_backends_and_a_backend_removed_under_load() {
    let site = Site::new();
    let n1 = &site.nodes[0];
    let client = n1.pod_ns[0].clone();
    let backends = [
        (n1.pod_ns[1].clone(), "10.244.1.11"),
        (site.nodes[1].pod_ns[0].clone(), "10.244.2.10"),
        (site.nodes[1].pod_ns[1].clone(), "10.244.2.11"),
    ];
    let _servers: Vec<Server> = backends
        .iter()
        .map(|(ns, ip)| spawn_in(ns, LINE_SERVER, ip, 9000, false))
        .collect();
    let add = |list: &[&str]| {
        let mut args = vec![
            "service",
            "add",
            "--name",
            "lines",
            "--vip",
            "10.96.0.30",
            "--port",
            "90",
        ];
        for b in list {
            args.push("--backend");
            args.push(b);
        }
        n1.ctl(&args);
    };
    add(&["10.244.1.11:9000", "10.244.2.10:9000", "10.244.2.11:9000"]);
    let marker = site.dir.join("remove-done");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client,
            "python3",
            "-c",
            LINE_CLIENT,
            "10.96.0.30",
            "90",
            "300",
        ])
        .arg(&marker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("first round");
    let first: Vec<String> =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(
        first.len(),
        300,
        "every connection answered with all its bytes"
    );
    let mut count = std::collections::BTreeMap::new();
    for b in &first {
        *count.entry(b.clone()).or_insert(0u32) += 1;
    }
    assert_eq!(count.len(), 3, "all three backends: {count:?}");
    for (b, n) in &count {
        assert!(*n >= 50, "{b} got {n} of 300: {count:?}");
    }
    // Remove one backend while the 300 connections are open and idle: its clients are
    // reset without sending anything (the switch probes them), the others keep their backend.
    add(&["10.244.1.11:9000", "10.244.2.11:9000"]);
    std::fs::write(&marker, count["10.244.2.10"].to_string()).expect("marker");
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).expect("second round");
    // The service deleted: every connection left is reset while idle.
    n1.ctl(&["service", "del", "--name", "lines"]);
    let left = 300 - count["10.244.2.10"];
    let marker2 = site.dir.join("remove-done.2");
    std::fs::write(&marker2, left.to_string()).expect("marker");
    let mut third = String::new();
    std::io::BufRead::read_line(&mut out, &mut third).expect("third round");
    assert_eq!(
        third.trim(),
        left.to_string(),
        "reset after the service went"
    );
    let status = child.wait().expect("client");
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err);
    assert!(status.success(), "client: {err}");
    let second: Vec<String> =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(second.len(), first.len());
    for (before, after) in first.iter().zip(&second) {
        if before == "10.244.2.10" {
            assert_eq!(
                after, "idle_reset",
                "a flow of the removed backend is reset while idle"
            );
        } else {
            assert_eq!(after, before, "the other flows keep their backend");
        }
    }
    let flows = n1.ctl(&["conntrack"]);
    assert!(
        !flows.contains("10.244.2.10:9000"),
        "no flow to the removed backend is left: {flows}"
    );
}
