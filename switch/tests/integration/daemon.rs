//! The `podswitch` binary as a user runs it: `run --config`, the control subcommands, signals.
//! Needs root (namespaces, TAPs); see `#[root_test]`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use std::time::Duration;

use podswitch::control::{ErrorKind, Request, Response};
use podswitch::node::{PeerSource, PodSpec, PodStatus, ServiceProto, ServiceStatus};
use podswitch_dataplane::testutil::{pod_interface, root_test, unique, wait_for};

use crate::common;

use common::{config, netns_add, run, tempdir, Daemon, LabGuard, BIN};

fn netns_list() -> String {
    String::from_utf8_lossy(&run(&["ip", "netns", "list"]).stdout).into_owned()
}

/// The HTTP status `curl` gets for `url` from inside namespace `ns`.
fn http_status(ns: &str, url: &str) -> String {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        url,
    ]);
    stdout(&out)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[root_test]
fn daemon_runs_pods_serves_control_and_cleans_up_on_sigterm() {
    let (web, api, extra) = (unique("dweb"), unique("dapi"), unique("dext"));
    let dir = tempdir("psd");
    let control = dir.join("node.sock");
    let cfg = config(
        "node-t",
        &control,
        &[("web", &web, "10.244.1.10"), ("api", &api, "10.244.1.11")],
    );
    let mut d = Daemon::start(
        &cfg,
        control.clone(),
        dir,
        vec![web.clone(), api.clone(), extra.clone()],
    );

    // Pods reach each other and the gateway.
    assert!(run(&[
        "ip",
        "netns",
        "exec",
        &web,
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "2",
        "10.244.1.11"
    ])
    .status
    .success());
    assert!(run(&[
        "ip",
        "netns",
        "exec",
        &api,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.244.1.1"
    ])
    .status
    .success());

    // An HTTP server in one pod: reached by curl from another pod and from its own pod's localhost.
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &web,
            "python3",
            "-u",
            "-m",
            "http.server",
            "--bind",
            "0.0.0.0",
            "8000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("http.server");
    let ready = {
        let mut line = String::new();
        let mut r = BufReader::new(server.stdout.as_mut().expect("stdout"));
        r.read_line(&mut line).map(|_| line).unwrap_or_default()
    };
    assert!(
        ready.contains("Serving HTTP"),
        "http.server did not start: {ready:?}"
    );
    let from_api = http_status(&api, "http://10.244.1.10:8000/");
    assert_eq!(from_api, "200", "curl from another pod");
    let from_own = http_status(&web, "http://127.0.0.1:8000/");
    assert_eq!(from_own, "200", "curl over the pod's own localhost");
    let _ = server.kill();
    let _ = server.wait();

    // Runtime pods over the control socket.
    let add = d.ctl(&[
        "pod",
        "add",
        "--name",
        "extra",
        "--netns",
        &extra,
        "--ip",
        "10.244.1.12",
    ]);
    assert!(
        add.status.success(),
        "pod add: {}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(run(&[
        "ip",
        "netns",
        "exec",
        &extra,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.244.1.10"
    ])
    .status
    .success());
    let list = stdout(&d.ctl(&["pod", "list"]));
    for needle in ["web", "api", "extra", "10.244.1.12/24", "02:42:0a:f4:01:0c"] {
        assert!(list.contains(needle), "pod list lacks {needle}: {list}");
    }
    let dup = d.ctl(&[
        "pod",
        "add",
        "--name",
        "dup",
        "--netns",
        "dupns",
        "--ip",
        "10.244.1.12",
    ]);
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("10.244.1.12"),
        "duplicate IP refused with a reason"
    );
    assert!(!netns_list().contains("dupns"));
    let fdb = stdout(&d.ctl(&["fdb"]));
    assert!(
        fdb.contains("02:42:0a:f4:01:0a") && fdb.contains("static") && fdb.contains("AGE(s)"),
        "fdb: {fdb}"
    );
    let del = d.ctl(&["pod", "del", "--name", "extra"]);
    assert!(
        del.status.success(),
        "pod del: {}",
        String::from_utf8_lossy(&del.stderr)
    );
    assert!(
        !netns_list().contains(&extra),
        "the deleted pod's namespace is gone"
    );

    // SIGTERM: clean exit, namespaces and socket removed.
    let out = d.stop();
    assert!(
        out.status.success(),
        "daemon exit: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let left = netns_list();
    assert!(
        !left.contains(&web) && !left.contains(&api),
        "namespaces left behind: {left}"
    );
    assert!(!control.exists(), "control socket left behind");
    // The log (a pipe here, not a terminal) is plain text with one line per change and why.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains('\x1b'),
        "terminal escapes in a log that is not a terminal: {log}"
    );
    let line = |words: &[&str]| log.lines().any(|l| words.iter().all(|w| l.contains(w)));
    assert!(line(&["pod added", "pod=extra", "ip=10.244.1.12"]), "{log}");
    assert!(
        line(&["pod removed", "pod=\"extra\"", "why=\"pod del\""]),
        "{log}"
    );
    assert!(
        line(&["pod removed", "pod=\"web\"", "why=\"the node stops\""]),
        "{log}"
    );
}

#[root_test]
fn bad_config_names_the_field_and_creates_nothing() {
    let (a, b) = (unique("dbad"), unique("dbad"));
    let dir = tempdir("psb");
    let control = dir.join("node.sock");
    // The second pod's IP is outside the node's CIDR.
    let cfg = config(
        "node-bad",
        &control,
        &[("a", &a, "10.244.1.10"), ("b", &b, "10.244.2.10")],
    );
    let path = dir.join("bad.toml");
    std::fs::write(&path, cfg).expect("write");
    let out = crate::common::podswitch()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pods[1].ip"),
        "the error names the field: {err}"
    );
    assert!(err.contains("10.244.2.10"), "and the value: {err}");
    let left = netns_list();
    assert!(
        !left.contains(&a) && !left.contains(&b),
        "a bad config created namespaces: {left}"
    );
    assert!(!control.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn ping_from(ns: &str, ip: &str) -> bool {
    run(&[
        "ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", ip,
    ])
    .status
    .success()
}

#[root_test]
fn lab_builds_a_two_node_cluster_and_tears_it_down() {
    let name = unique("lab");
    let (guard, up) = common::lab_up(&name, 2, 2);
    let text = stdout(&up);
    assert!(
        up.status.success(),
        "lab up failed: {}\n{}",
        text,
        String::from_utf8_lossy(&up.stderr)
    );
    let (n1p1, n1p2, n2p1) = (
        format!("{name}-n1p1"),
        format!("{name}-n1p2"),
        format!("{name}-n2p1"),
    );
    assert!(
        text.contains(&n1p1) && text.contains("10.244.2.10"),
        "lab up says how to reach the pods: {text}"
    );

    // Across nodes (VXLAN between two podswitch daemons) and within a node.
    assert!(ping_from(&n1p1, "10.244.2.10"), "node 1 pod -> node 2 pod");
    assert!(ping_from(&n2p1, "10.244.1.11"), "node 2 pod -> node 1 pod");
    assert!(ping_from(&n1p1, "10.244.1.11"), "pods of one node");
    // The lab's nodes reach their pods and the other node's through their host interface.
    let node1 = format!("{name}-node1");
    assert!(ping_from(&node1, "10.244.1.10"), "node 1 -> its pod");
    assert!(ping_from(&node1, "10.244.2.10"), "node 1 -> node 2's pod");
    let mut web = Command::new("ip")
        .args([
            "netns",
            "exec",
            &n1p1,
            "python3",
            "-m",
            "http.server",
            "-b",
            "10.244.1.10",
            "8080",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http server");
    wait_for("http server", || {
        run(&[
            "ip",
            "netns",
            "exec",
            &n1p1,
            "sh",
            "-c",
            "ss -ltn | grep -q 8080",
        ])
        .status
        .success()
    });
    let page = run(&[
        "ip",
        "netns",
        "exec",
        &node1,
        "curl",
        "-sS",
        "--max-time",
        "5",
        "http://10.244.1.10:8080/",
    ]);
    let _ = web.kill();
    let _ = web.wait();
    assert!(
        page.status.success() && stdout(&page).contains("Directory listing"),
        "node 1 fetches from its pod: {}",
        stderr(&page)
    );
    let mut server = Command::new("ip")
        .args(["netns", "exec", &n2p1, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    wait_for("iperf3 server", || {
        run(&[
            "ip",
            "netns",
            "exec",
            &n2p1,
            "sh",
            "-c",
            "ss -ltn | grep -q 5201",
        ])
        .status
        .success()
    });
    let client = run(&[
        "ip",
        "netns",
        "exec",
        &n1p1,
        "iperf3",
        "-c",
        "10.244.2.10",
        "-t",
        "1",
    ]);
    assert!(
        client.status.success(),
        "iperf3 across nodes: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    let _ = server.wait();

    // Peers at runtime: removing node 2 cuts only the flows to node 2; adding it back restores them.
    let control1 = format!("/run/podswitch/{name}/node1.sock");
    let ctl = |args: &[&str]| {
        let mut cmd = crate::common::podswitch();
        cmd.args(args).args(["--control", &control1]);
        cmd.output().expect("podswitch client")
    };
    let peers = stdout(&ctl(&["peer", "list"]));
    assert!(
        peers.contains(&format!("{name}-node2")) && peers.contains("10.244.2.0/24"),
        "peer list: {peers}"
    );
    assert!(ctl(&["peer", "del", "--name", &format!("{name}-node2")])
        .status
        .success());
    assert!(
        !ping_from(&n1p1, "10.244.2.10"),
        "node 2 unreachable once its peer entry is gone"
    );
    assert!(ping_from(&n1p1, "10.244.1.11"), "local pods undisturbed");
    let add = ctl(&[
        "peer",
        "add",
        "--name",
        &format!("{name}-node2"),
        "--underlay",
        "192.168.77.2",
        "--pod-cidr",
        "10.244.2.0/24",
    ]);
    assert!(
        add.status.success(),
        "peer add: {}",
        String::from_utf8_lossy(&add.stderr)
    );
    let overlap = ctl(&[
        "peer",
        "add",
        "--name",
        "other",
        "--underlay",
        "192.168.77.9",
        "--pod-cidr",
        "10.244.2.128/25",
    ]);
    assert!(
        !overlap.status.success(),
        "an overlapping pod CIDR is refused"
    );
    assert!(
        String::from_utf8_lossy(&overlap.stderr).contains("overlaps"),
        "{}",
        String::from_utf8_lossy(&overlap.stderr)
    );
    assert!(ping_from(&n1p1, "10.244.2.10"), "node 2 reachable again");

    // `podswitch nodes` names each running node with the --control that reaches it.
    let nodes = stdout(&run(&[BIN, "nodes"]));
    for i in 1..=2 {
        assert!(
            nodes
                .lines()
                .any(|l| l.starts_with(&format!("{name}-node{i} "))
                    && l.contains(&format!("--control /run/podswitch/{name}/node{i}.sock"))),
            "nodes lists node {i}: {nodes}"
        );
    }

    // A server left running in a pod (as a README walk-through leaves `iperf3 -s -D`) is
    // stopped by `lab down`, not left holding a nameless namespace.
    let pidfile = std::env::temp_dir().join(format!("{name}-iperf3.pid"));
    let daemon = run(&[
        "ip",
        "netns",
        "exec",
        &n1p2,
        "iperf3",
        "-s",
        "-D",
        "-p",
        "5301",
        "--pidfile",
        &pidfile.display().to_string(),
    ]);
    assert!(daemon.status.success(), "iperf3 -s -D: {}", stderr(&daemon));
    let mut stray_pid = None;
    wait_for("iperf3 pid file", || {
        stray_pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().trim_end_matches('\0').parse::<i32>().ok());
        stray_pid.is_some()
    });
    let stray_pid = stray_pid.unwrap_or_default();
    assert!(Path::new(&format!("/proc/{stray_pid}")).exists());

    let down = crate::common::lab()
        .args(["down", "--name", &name])
        .output()
        .expect("lab down");
    assert!(
        down.status.success(),
        "lab down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    let left: Vec<String> = netns_list()
        .lines()
        .filter(|l| l.starts_with(&name))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "lab down left namespaces: {left:?}");
    assert!(
        !Path::new(&format!("/run/podswitch/{name}")).exists(),
        "lab state left behind"
    );
    assert!(
        stdout(&down).contains(&format!("iperf3 ({stray_pid})")),
        "lab down says what it stopped: {}",
        stdout(&down)
    );
    wait_for("the stray iperf3 to be reaped", || {
        !Path::new(&format!("/proc/{stray_pid}")).exists()
    });
    let _ = std::fs::remove_file(&pidfile);
    drop(guard);
}

/// The pod IPs `lab up` printed for node `i` (lines `  pod NAME-n<i>p<j> IP ...`).
fn lab_pod_ips(text: &str, name: &str, i: usize) -> Vec<String> {
    let prefix = format!("{name}-n{i}p");
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("pod") && w.next()?.starts_with(&prefix))
                .then(|| w.next().map(str::to_string))
                .flatten()
        })
        .collect()
}

#[root_test]
fn lab_with_etcd_leases_subnets_and_learns_peers_there() {
    let name = unique("labe");
    let guard = LabGuard(name.clone());
    let up = crate::common::lab()
        .args([
            "up",
            "--etcd",
            "--name",
            &name,
            "--nodes",
            "3",
            "--pods-per-node",
            "1",
        ])
        .output()
        .expect("lab up --etcd");
    let text = stdout(&up);
    assert!(
        up.status.success(),
        "lab up --etcd failed: {}\n{}",
        text,
        stderr(&up)
    );
    let dir = format!("/run/podswitch/{name}");
    let etcd_pid: i32 = std::fs::read_to_string(format!("{dir}/etcd.pid"))
        .expect("etcd.pid")
        .trim()
        .parse()
        .expect("etcd.pid holds a pid");

    // Three leases in flannel's layout, one per node's underlay address.
    let etcd_ns = format!("{name}-etcd");
    let keys = run(&[
        "ip",
        "netns",
        "exec",
        &etcd_ns,
        "etcdctl",
        "--endpoints",
        "http://192.168.77.254:2379",
        "get",
        "--prefix",
        "/coreos.com/network/subnets/",
    ]);
    let listing = stdout(&keys);
    assert!(keys.status.success(), "etcdctl: {}", stderr(&keys));
    let subnet_keys = listing
        .lines()
        .filter(|l| l.starts_with("/coreos.com/network/subnets/"))
        .count();
    assert_eq!(subnet_keys, 3, "subnet keys: {listing}");
    for i in 1..=3 {
        assert!(
            listing.contains(&format!("\"PublicIP\":\"192.168.77.{i}\"")),
            "node {i}'s lease: {listing}"
        );
    }

    // Each node has the two others as peers from etcd.
    for i in 1..=3 {
        let peers = crate::common::podswitch()
            .args(["peer", "list", "--control", &format!("{dir}/node{i}.sock")])
            .output()
            .expect("peer list");
        let peers = stdout(&peers);
        let from_etcd = peers
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == "etcd"))
            .count();
        assert_eq!(from_etcd, 2, "node {i} peer list: {peers}");
    }

    // The printed addresses are the real ones, in the leased subnets: pods talk right away.
    let ips: Vec<Vec<String>> = (1..=3).map(|i| lab_pod_ips(&text, &name, i)).collect();
    assert!(
        ips.iter().all(|v| v.len() == 1 && v[0].ends_with(".10")),
        "pod addresses in: {text}"
    );
    let n1p1 = format!("{name}-n1p1");
    assert!(ping_from(&n1p1, &ips[1][0]), "node 1 pod -> node 2 pod");
    assert!(ping_from(&n1p1, &ips[2][0]), "node 1 pod -> node 3 pod");

    let down = crate::common::lab()
        .args(["down", "--name", &name])
        .output()
        .expect("lab down");
    assert!(down.status.success(), "lab down: {}", stderr(&down));
    assert!(
        stdout(&down).contains("etcd"),
        "lab down says it stopped etcd: {}",
        stdout(&down)
    );
    let left: Vec<String> = netns_list()
        .lines()
        .filter(|l| l.starts_with(&name))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "lab down left namespaces: {left:?}");
    wait_for("etcd to be gone", || {
        !Path::new(&format!("/proc/{etcd_pid}")).exists()
    });
    assert!(!Path::new(&dir).exists(), "lab state left behind");
    drop(guard);
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error of `podswitch run --config` of `text` (expected to be refused before anything
/// starts).
fn run_refused(dir: &Path, text: &str) -> String {
    // The error is the last line (log lines may come before it).
    refused_log(dir, text)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// All `podswitch run --config` of `text` writes to stderr (it must be refused).
fn refused_log(dir: &Path, text: &str) -> String {
    let path = dir.join("refused.toml");
    std::fs::write(&path, text).expect("write config");
    let out = crate::common::podswitch()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success(), "accepted:\n{text}");
    stderr(&out)
}

/// A node with a tunnel on the loopback (a UDP port of its own), one peer and one pod.
fn node_with_peer(control: &Path, netns: &str, port: u16) -> String {
    format!(
        "[node]\nname = \"node-r\"\npod_cidr = \"10.244.1.0/24\"\nunderlay = \"127.0.0.1\"\nvxlan_port = {port}\ncontrol = \"{}\"\nhost_interface = \"\"\n\n[[pods]]\nname = \"a\"\nnetns = \"{netns}\"\nip = \"10.244.1.10\"\n\n[[peers]]\nname = \"b\"\nunderlay = \"127.0.0.2\"\npod_cidr = \"10.244.2.0/24\"\n",
        control.display()
    )
}

/// `podswitch <kind> add <args>` against the running daemon, and a daemon started on `base`
/// plus the same entry as a `[[<kind>s]]` table: both refuse, with the same reason for the same
/// field (`<kind>.x` at runtime, `<kind>s[1].x` in the file), and the runtime error is not
/// called a config error nor says its subject twice.
fn refused_alike(d: &Daemon, dir: &Path, base: &str, kind: &str, args: &[&str], entry: &str) {
    let mut cmd = vec![kind, "add"];
    cmd.extend_from_slice(args);
    let out = d.ctl(&cmd);
    assert!(!out.status.success(), "{kind} add {args:?} accepted");
    let runtime = stderr(&out).trim().to_string();
    let file = run_refused(dir, &format!("{base}\n[[{kind}s]]\n{entry}\n"));
    let reason = runtime
        .strip_prefix("podswitch: ")
        .unwrap_or(&runtime)
        .replacen(&format!("{kind}."), &format!("{kind}s[1]."), 1);
    assert_eq!(
        file,
        format!("podswitch: config error: {reason}"),
        "runtime said: {runtime}"
    );
    assert!(!runtime.contains("config error"), "{runtime}");
    assert!(
        !runtime.contains(&format!("{kind} \"c\": {kind}")),
        "{runtime}"
    );
}

#[root_test]
fn runtime_pod_and_peer_add_refuse_what_the_file_refuses_with_the_same_message() {
    let a = unique("drule");
    let dir = tempdir("psr");
    let control = dir.join("node.sock");
    let port = 20000 + (std::process::id() % 20000) as u16;
    let base = node_with_peer(&control, &a, port);
    let d = Daemon::start(&base, control.clone(), dir.clone(), vec![a.clone()]);

    // (CLI arguments of `peer add`, the same peer as a [[peers]] entry.)
    let peers: [(&[&str], &str); 6] = [
        (
            &["--name", "node-r", "--underlay", "127.0.0.3", "--pod-cidr", "10.244.3.0/24"],
            "name = \"node-r\"\nunderlay = \"127.0.0.3\"\npod_cidr = \"10.244.3.0/24\"",
        ),
        (
            &["--name", "c", "--underlay", "127.0.0.1", "--pod-cidr", "10.244.3.0/24"],
            "name = \"c\"\nunderlay = \"127.0.0.1\"\npod_cidr = \"10.244.3.0/24\"",
        ),
        (
            &[
                "--name", "c", "--underlay", "127.0.0.3", "--pod-cidr", "10.244.3.0/24",
                "--vtep-mac", "01:00:5e:00:00:01",
            ],
            "name = \"c\"\nunderlay = \"127.0.0.3\"\npod_cidr = \"10.244.3.0/24\"\nvtep_mac = \"01:00:5e:00:00:01\"",
        ),
        (
            &["--name", "c", "--underlay", "127.0.0.3", "--pod-cidr", "10.244.2.128/25"],
            "name = \"c\"\nunderlay = \"127.0.0.3\"\npod_cidr = \"10.244.2.128/25\"",
        ),
        (
            &["--name", "c", "--underlay", "127.0.0.3", "--pod-cidr", "10.244.3.1/24"],
            "name = \"c\"\nunderlay = \"127.0.0.3\"\npod_cidr = \"10.244.3.1/24\"",
        ),
        (
            &["--name", "b", "--underlay", "127.0.0.3", "--pod-cidr", "10.244.3.0/24"],
            "name = \"b\"\nunderlay = \"127.0.0.3\"\npod_cidr = \"10.244.3.0/24\"",
        ),
    ];
    for (args, entry) in peers {
        refused_alike(&d, &dir, &base, "peer", args, entry);
    }
    let list = stdout(&d.ctl(&["peer", "list"]));
    assert_eq!(list.lines().count(), 2, "only peer b: {list}");

    // The same for pods (refused before any namespace is made).
    let pods: [(&[&str], &str); 4] = [
        (
            &["--name", "a", "--netns", "zz", "--ip", "10.244.1.11"],
            "name = \"a\"\nnetns = \"zz\"\nip = \"10.244.1.11\"",
        ),
        (
            &["--name", "c", "--netns", "zz", "--ip", "10.244.2.5"],
            "name = \"c\"\nnetns = \"zz\"\nip = \"10.244.2.5\"",
        ),
        (
            &["--name", "c", "--netns", "zz", "--ip", "10.244.1.10"],
            "name = \"c\"\nnetns = \"zz\"\nip = \"10.244.1.10\"",
        ),
        (
            &[
                "--name",
                "c",
                "--netns",
                "zz",
                "--ip",
                "10.244.1.11",
                "--mac",
                "ff:ff:ff:ff:ff:ff",
            ],
            "name = \"c\"\nnetns = \"zz\"\nip = \"10.244.1.11\"\nmac = \"ff:ff:ff:ff:ff:ff\"",
        ),
    ];
    for (args, entry) in pods {
        refused_alike(&d, &dir, &base, "pod", args, entry);
    }
    assert!(
        !netns_list().contains("zz"),
        "a refused pod made a namespace"
    );
    // A malformed MAC is refused by the CLI itself, naming the flag.
    let out = d.ctl(&[
        "pod",
        "add",
        "--name",
        "c",
        "--netns",
        "zz",
        "--ip",
        "10.244.1.11",
        "--mac",
        "nope",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--mac") && stderr(&out).contains("is not a MAC address"),
        "{}",
        stderr(&out)
    );
}

#[root_test]
fn a_second_daemon_says_what_is_taken() {
    let a = unique("dtwice");
    let dir = tempdir("pst");
    let control = dir.join("node.sock");
    let port = 20000 + (std::process::id() % 20000) as u16 + 1;
    let first = node_with_peer(&control, &a, port);
    let d = Daemon::start(&first, control.clone(), dir.clone(), vec![a.clone()]);

    // Same node (node_lock.rs): the running daemon named, once.
    let err = run_refused(&dir, &first);
    assert_eq!(
        err,
        format!(
            "podswitch: node \"node-r\" already runs here: pid {}, control socket {} (lock {}): one daemon per node name; stop that one first, or give this node another node.name",
            d.pid(),
            control.display(),
            dir.join("node-r.lock").display()
        )
    );
    // Another socket and tunnel port, the same pod namespace: says which namespace and what to
    // do, not a bare "File exists".
    let other = dir.join("other.sock");
    let second = node_with_peer(&other, &a, port + 2).replace("node-r", "node-s");
    let err = run_refused(&dir, &second);
    assert_eq!(
        err,
        format!("podswitch: pod \"a\": namespace {a:?} already has an eth0 (another podswitch or network plugin runs a pod there?): remove that pod first, or pick another namespace or interface name")
    );
    // The first daemon's pod is untouched.
    assert!(stdout(&d.ctl(&["pod", "list"])).contains(&a));
    assert!(run(&[
        "ip",
        "netns",
        "exec",
        &a,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.244.1.1"
    ])
    .status
    .success());
}

#[test]
fn settings_that_cannot_work_are_refused_at_start() {
    let dir = tempdir("psc");
    let control = dir.join("node.sock");
    let node = |extra: &str| {
        format!(
            "[node]\nname = \"n\"\npod_cidr = \"10.244.1.0/24\"\ncontrol = \"{}\"\n{extra}\n",
            control.display()
        )
    };
    assert_eq!(
        run_refused(&dir, &node("mtu = 70000")),
        "podswitch: config error: node.mtu: 70000 is not between 68 and 65521 (the IPv4 minimum to the largest pod MTU) (line 5, column 7)"
    );
    // More CPUs than any machine here has: refused, not a warning and an unpinned run.
    let err = run_refused(&dir, &node("cpus = [1023]"));
    assert!(
        err.starts_with(
            "podswitch: config error: node.cpus: CPU 1023 is not one this process may run on (allowed: "
        ),
        "{err}"
    );
    // Steering to the CPUs without a worker, with the workers not pinned: nowhere to steer to.
    // Refused before it touches the host-wide RFS table (which it would raise, and log, on a
    // machine where RFS is off).
    let log = refused_log(&dir, &node("cpus = []\nrx_steering = true"));
    assert!(
        log.ends_with("podswitch: config error: node.rx_steering: needs the workers pinned (node.cpus is []): it steers to the CPUs they are not on\n"),
        "{log}"
    );
    assert!(!log.contains("rps_sock_flow_entries"), "{log}");
    // A pod MTU the tunnel cannot carry, with peers.
    let peer = "underlay = \"127.0.0.1\"\nmtu = 1500\n\n[[peers]]\nname = \"b\"\nunderlay = \"127.0.0.2\"\npod_cidr = \"10.244.2.0/24\"";
    assert_eq!(
        run_refused(&dir, &node(peer)),
        "podswitch: config error: node.mtu: 1500 is above the 1450 bytes the tunnel to peers carries (node.underlay_mtu 1500 minus VXLAN's 50): lower node.mtu or raise node.underlay_mtu"
    );
    assert!(!control.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process in a network namespace of its own (`unshare -n sleep 60`), as a container
/// runtime's infra container holds one; killed on drop.
struct Infra {
    child: Option<Child>,
}

impl Infra {
    fn start() -> Self {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "60"])
            .spawn()
            .expect("unshare -n sleep 60");
        let pid = child.id();
        let own = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        wait_for("the infra process in its own namespace", || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != own)
        });
        Infra { child: Some(child) }
    }

    /// `/proc/PID/ns/net`.
    fn netns(&self) -> String {
        format!(
            "/proc/{}/ns/net",
            self.child.as_ref().expect("running").id()
        )
    }

    /// Runs `cmd` inside the namespace.
    fn exec(&self, cmd: &[&str]) -> Output {
        let net = format!("--net={}", self.netns());
        let mut all = vec!["nsenter", net.as_str()];
        all.extend_from_slice(cmd);
        run(&all)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        self.kill();
    }
}

fn control_call(d: &Daemon, req: &Request) -> Response {
    podswitch::control::call(&d.control, req, Duration::from_secs(30)).expect("control call")
}

fn pod_status(d: &Daemon, name: &str) -> Option<PodStatus> {
    match control_call(d, &Request::PodList) {
        Response::Pods(pods) => pods.into_iter().find(|p| p.spec.name == name),
        other => panic!("pod list: {other:?}"),
    }
}

#[root_test]
fn pods_attach_by_path_with_a_container_id_and_an_interface_name() {
    let named = unique("dcni");
    let missing = unique("dgone");
    let dir = tempdir("pscni");
    let control = dir.join("node.sock");
    let d = Daemon::start(
        &config("node-c", &control, &[]),
        control.clone(),
        dir,
        vec![named.clone(), missing.clone()],
    );
    netns_add(&named);
    let infra = Infra::start();
    let named_path = format!("/run/netns/{named}");

    let out = d.ctl(&[
        "pod",
        "add",
        "--name",
        "a",
        "--netns",
        &named_path,
        "--ip",
        "10.244.1.20",
        "--container-id",
        "ctr-a",
        "--ifname",
        "net1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.ctl(&[
        "pod",
        "add",
        "--name",
        "b",
        "--netns",
        &infra.netns(),
        "--ip",
        "10.244.1.21",
        "--container-id",
        "ctr-b",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Inside: the interface, its address, the default route via the gateway, lo up.
    let addr = stdout(&run(&["ip", "-n", &named, "addr", "show", "net1"]));
    assert!(addr.contains("inet 10.244.1.20/24"), "{addr}");
    let route = stdout(&run(&["ip", "-n", &named, "route"]));
    assert!(route.contains("default via 10.244.1.1 dev net1"), "{route}");
    let addr = stdout(&infra.exec(&["ip", "addr", "show", "eth0"]));
    assert!(addr.contains("inet 10.244.1.21/24"), "{addr}");
    assert!(addr.contains("mtu 1450"), "{addr}");
    let lo = stdout(&infra.exec(&["ip", "link", "show", "lo"]));
    assert!(lo.contains("UP"), "{lo}");
    // Through the switch, both ways.
    assert!(ping_from(&named, "10.244.1.21"));
    assert!(infra
        .exec(&["ping", "-c", "1", "-W", "2", "10.244.1.20"])
        .status
        .success());

    // What a CNI result needs comes back with the pod.
    let a = pod_status(&d, "a").expect("pod a listed");
    assert_eq!(a.spec.container_id.as_deref(), Some("ctr-a"));
    assert_eq!(
        (a.spec.ifname.as_str(), a.spec.netns.as_str()),
        ("net1", named_path.as_str())
    );
    assert_eq!(a.mac.to_string(), "02:42:0a:f4:01:14");
    assert_eq!(
        (a.prefix_len, a.gateway.to_string().as_str()),
        (24, "10.244.1.1")
    );
    assert!(!a.created_netns);
    let list = stdout(&d.ctl(&["pod", "list"]));
    for needle in [
        "ctr-a",
        "ctr-b",
        "net1",
        named_path.as_str(),
        infra.netns().as_str(),
    ] {
        assert!(list.contains(needle), "pod list lacks {needle}: {list}");
    }

    // What the plugin asks the node.
    assert_eq!(
        control_call(&d, &Request::NodeInfo),
        Response::Node {
            name: "node-c".into(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            gateway: "10.244.1.1".parse().unwrap(),
            mtu: 1450,
        }
    );

    // A path is never created: a missing one is refused, and nothing is left behind.
    let out = d.ctl(&[
        "pod",
        "add",
        "--name",
        "c",
        "--netns",
        &format!("/run/netns/{missing}"),
        "--ip",
        "10.244.1.22",
        "--container-id",
        "ctr-c",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!Path::new(&format!("/run/netns/{missing}")).exists());
    assert!(pod_status(&d, "c").is_none());
    // A second attachment under the same container ID and interface is refused by the rules.
    let r = control_call(
        &d,
        &Request::PodAdd(PodSpec {
            name: "a2".into(),
            netns: unique("dother"),
            ip: Some("10.244.1.23".parse().unwrap()),
            mac: None,
            container_id: Some("ctr-a".into()),
            ifname: "net1".into(),
        }),
    );
    let Response::Error { message, kind } = r else {
        panic!("{r:?}")
    };
    assert_eq!(kind, Some(ErrorKind::Refused));
    assert!(
        message.starts_with("pod.container_id: container \"ctr-a\""),
        "{message}"
    );

    // Deleted by container ID + interface: gone from the switch, the adopted namespace stays.
    let out = d.ctl(&["pod", "del", "--container-id", "ctr-a", "--ifname", "net1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(pod_status(&d, "a").is_none());
    assert!(netns_list().contains(&named));
    wait_for("net1 gone", || {
        !run(&["ip", "-n", &named, "link", "show", "net1"])
            .status
            .success()
    });
    // Deleting what the node does not know says so in a way a program can read.
    for req in [
        Request::PodDelByContainer {
            container_id: "ctr-a".into(),
            ifname: "net1".into(),
        },
        Request::PodDel { name: "a".into() },
    ] {
        let r = control_call(&d, &req);
        assert!(
            matches!(
                r,
                Response::Error {
                    kind: Some(ErrorKind::NotFound),
                    ..
                }
            ),
            "{r:?}"
        );
    }
    // The pod in the infra's namespace goes with the process.
    drop(infra);
    wait_for("pod b reaped", || pod_status(&d, "b").is_none());
}

#[root_test]
fn cni_attachments_survive_a_daemon_restart() {
    let named = unique("drst");
    let dir = tempdir("psrst");
    let control = dir.join("node.sock");
    let state = dir.join("node-r.pods.json");
    // A file pod too: it is not recorded, and it comes back from the file.
    let file_ns = unique("drf");
    let mut d = Daemon::start(
        &config("node-r", &control, &[("f", &file_ns, "10.244.1.5")]),
        control.clone(),
        dir,
        vec![named.clone(), file_ns.clone()],
    );
    netns_add(&named);
    let mut infra = Infra::start();
    let named_path = format!("/run/netns/{named}");
    for (name, netns, ip, id) in [
        ("a", named_path.as_str(), "10.244.1.30", "ctr-a"),
        ("b", &infra.netns(), "10.244.1.31", "ctr-b"),
    ] {
        let out = d.ctl(&[
            "pod",
            "add",
            "--name",
            name,
            "--netns",
            netns,
            "--ip",
            ip,
            "--container-id",
            id,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let recorded = std::fs::read_to_string(&state).expect("state file");
    assert!(
        recorded.contains("ctr-a") && recorded.contains("ctr-b"),
        "{recorded}"
    );
    assert!(!recorded.contains("\"f\""), "{recorded}");

    // SIGTERM: the adopted namespaces stay, and so does the record.
    let out = d.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(netns_list().contains(&named));
    let after = std::fs::read_to_string(&state).unwrap();
    assert!(after.contains("ctr-a"), "{after}");

    d.restart();
    for name in ["a", "b", "f"] {
        assert!(pod_status(&d, name).is_some(), "pod {name} not back");
    }
    assert!(ping_from(&named, "10.244.1.31"));
    assert!(ping_from(&file_ns, "10.244.1.30"));

    // A namespace deleted while the daemon is down: its attachment is forgotten.
    d.stop();
    assert!(run(&["ip", "netns", "del", &named]).status.success());
    d.restart();
    assert!(pod_status(&d, "a").is_none());
    assert!(pod_status(&d, "b").is_some());
    let recorded = std::fs::read_to_string(&state).unwrap();
    assert!(
        !recorded.contains("ctr-a") && recorded.contains("ctr-b"),
        "{recorded}"
    );
    // The infra dies under a running daemon: the pod is reaped and forgotten.
    infra.kill();
    wait_for("pod b reaped and forgotten", || {
        pod_status(&d, "b").is_none() && !std::fs::read_to_string(&state).unwrap().contains("ctr-b")
    });
}

/// The address `pod list` (the control protocol's) gives pod `name`.
fn pod_ip(d: &Daemon, name: &str) -> std::net::Ipv4Addr {
    let status = pod_status(d, name).unwrap_or_else(|| panic!("no pod {name}"));
    status
        .spec
        .ip
        .unwrap_or_else(|| panic!("pod {name} listed without an address"))
}

#[root_test]
fn pods_without_ip_get_the_lowest_free_addresses_and_keep_them() {
    let (auto_ns, fixed_ns, rt_ns, cni_ns) = (
        unique("dauto"),
        unique("dfix"),
        unique("drt"),
        unique("dcni"),
    );
    let (c1_ns, c2_ns, late1_ns, late2_ns) = (
        unique("dc1"),
        unique("dc2"),
        unique("dlate"),
        unique("dlate"),
    );
    let dir = tempdir("psauto");
    let control = dir.join("node.sock");
    // "auto" first in the file, without ip; "fixed" holds .10.
    let cfg = format!(
        "{}\n[[pods]]\nname = \"auto\"\nnetns = \"{auto_ns}\"\n",
        config("node-auto", &control, &[])
    ) + &format!(
        "\n[[pods]]\nname = \"fixed\"\nnetns = \"{fixed_ns}\"\nip = \"10.244.1.10\"\n"
    );
    let mut d = Daemon::start(
        &cfg,
        control.clone(),
        dir.clone(),
        vec![
            auto_ns.clone(),
            fixed_ns.clone(),
            rt_ns.clone(),
            cni_ns.clone(),
            c1_ns.clone(),
            c2_ns.clone(),
            late1_ns.clone(),
            late2_ns.clone(),
        ],
    );
    assert_eq!(pod_ip(&d, "auto").to_string(), "10.244.1.2");
    assert_eq!(pod_ip(&d, "fixed").to_string(), "10.244.1.10");

    // At runtime, without --ip: the next free one.
    let add = d.ctl(&["pod", "add", "--name", "rt", "--netns", &rt_ns]);
    assert!(add.status.success(), "pod add: {}", stderr(&add));
    assert_eq!(pod_ip(&d, "rt").to_string(), "10.244.1.3");
    let list = stdout(&d.ctl(&["pod", "list"]));
    for needle in [
        "10.244.1.2/24",
        "10.244.1.3/24",
        "10.244.1.10/24",
        // The derived MACs follow the chosen addresses.
        "02:42:0a:f4:01:02",
        "02:42:0a:f4:01:03",
    ] {
        assert!(list.contains(needle), "pod list lacks {needle}: {list}");
    }

    // Everyone reaches everyone, on the addresses listed.
    assert!(ping_from(&auto_ns, "10.244.1.3"));
    assert!(ping_from(&rt_ns, "10.244.1.2"));
    assert!(ping_from(&rt_ns, "10.244.1.10"));
    assert!(ping_from(&fixed_ns, "10.244.1.2"));
    // The address is really the pod's, inside its namespace.
    let addrs = stdout(&run(&[
        "ip", "netns", "exec", &rt_ns, "ip", "-o", "-4", "addr", "show", "eth0",
    ]));
    assert!(addrs.contains("10.244.1.3/24"), "{addrs}");

    // A CNI-style attachment without ip is recorded with the address it got, and comes back
    // with it after a restart: .3 is freed before, so a fresh choice would give .3, not .4.
    netns_add(&cni_ns);
    let add = d.ctl(&[
        "pod",
        "add",
        "--name",
        "cni",
        "--netns",
        &format!("/run/netns/{cni_ns}"),
        "--container-id",
        "ctr-auto",
    ]);
    assert!(add.status.success(), "pod add: {}", stderr(&add));
    assert_eq!(pod_ip(&d, "cni").to_string(), "10.244.1.4");
    let state = std::fs::read_to_string(dir.join("node-auto.pods.json")).expect("state file");
    assert!(state.contains("\"10.244.1.4\""), "{state}");
    let del = d.ctl(&["pod", "del", "--name", "rt"]);
    assert!(del.status.success(), "pod del: {}", stderr(&del));
    let out = d.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    d.restart();
    assert_eq!(pod_ip(&d, "cni").to_string(), "10.244.1.4");
    assert_eq!(pod_ip(&d, "auto").to_string(), "10.244.1.2");
    assert!(ping_from(&cni_ns, "10.244.1.2"));
    // The freed .3 is the next one handed out; two pods added at once get distinct ones.
    let add = d.ctl(&["pod", "add", "--name", "rt2", "--netns", &rt_ns]);
    assert!(add.status.success(), "pod add: {}", stderr(&add));
    assert_eq!(pod_ip(&d, "rt2").to_string(), "10.244.1.3");
    std::thread::scope(|s| {
        for (name, ns) in [("c1", &c1_ns), ("c2", &c2_ns)] {
            let d = &d;
            s.spawn(move || {
                let add = d.ctl(&["pod", "add", "--name", name, "--netns", ns]);
                assert!(add.status.success(), "pod add {name}: {}", stderr(&add));
            });
        }
    });
    let mut both = [pod_ip(&d, "c1").to_string(), pod_ip(&d, "c2").to_string()];
    both.sort();
    assert_eq!(both, ["10.244.1.5", "10.244.1.6"]);

    // The file gains two pods without ip: they leave the recorded attachment's .4 alone.
    let out = d.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg = cfg
        + &format!("\n[[pods]]\nname = \"late1\"\nnetns = \"{late1_ns}\"\n")
        + &format!("\n[[pods]]\nname = \"late2\"\nnetns = \"{late2_ns}\"\n");
    std::fs::write(dir.join("node.toml"), cfg).expect("config");
    d.restart();
    assert_eq!(pod_ip(&d, "cni").to_string(), "10.244.1.4");
    assert_eq!(pod_ip(&d, "late1").to_string(), "10.244.1.3");
    assert_eq!(pod_ip(&d, "late2").to_string(), "10.244.1.5");
    assert!(ping_from(&late2_ns, "10.244.1.4"));

    let out = d.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let left = netns_list();
    for ns in [
        &auto_ns, &fixed_ns, &rt_ns, &c1_ns, &c2_ns, &late1_ns, &late2_ns,
    ] {
        assert!(
            !left.contains(ns.as_str()),
            "namespace {ns} left behind: {left}"
        );
    }
    // The adopted one stays (the switch never deletes what it did not create); Daemon's drop
    // removes it.
    assert!(left.contains(&cni_ns));
}

#[root_test]
fn a_full_range_refuses_a_pod_without_ip_by_name() {
    let (a, b) = (unique("dfull"), unique("dfull"));
    let dir = tempdir("psfull");
    let control = dir.join("node.sock");
    let cfg = config("node-full", &control, &[("a", &a, "10.244.1.2")])
        .replace("10.244.1.0/24", "10.244.1.0/30");
    let d = Daemon::start(&cfg, control, dir, vec![a, b.clone()]);
    let add = d.ctl(&["pod", "add", "--name", "b", "--netns", &b]);
    assert!(!add.status.success());
    assert!(
        stderr(&add).contains(
            "pod.ip: the node's range 10.244.1.0/30 has no free address left (1 pod holds addresses in it"
        ),
        "{}",
        stderr(&add)
    );
    assert!(!netns_list().contains(&b), "nothing made for a refused pod");
}

fn service_list(d: &Daemon) -> Vec<ServiceStatus> {
    match control_call(d, &Request::ServiceList) {
        Response::Services(s) => s,
        other => panic!("service list: {other:?}"),
    }
}

#[root_test]
fn services_from_the_file_and_at_runtime_refused_alike() {
    let dir = tempdir("pss");
    let control = dir.join("node.sock");
    let base = format!(
        "{}\n[[services]]\nname = \"web\"\nvip = \"10.96.0.10\"\nport = 80\nbackends = [\"10.244.1.10:8080\", \"10.244.2.10:8080\"]\n",
        config("node-s", &control, &[])
    );
    let d = Daemon::start(&base, control.clone(), dir.clone(), Vec::new());

    // The file's service, as the CLI and the protocol show it.
    let list = stdout(&d.ctl(&["service", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("BACKENDS"),
        "{list}"
    );
    let words: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        words,
        [
            "web",
            "10.96.0.10",
            "80",
            "tcp",
            "-",
            "config",
            "10.244.1.10:8080(0)",
            "10.244.2.10:8080(0)"
        ],
        "{list}"
    );
    let s = service_list(&d);
    assert_eq!(s.len(), 1);
    assert_eq!(
        (
            s[0].spec.name.as_str(),
            s[0].connections.as_slice(),
            s[0].source
        ),
        ("web", &[0, 0][..], PeerSource::Config)
    );

    // A second service at runtime (UDP, client affinity).
    let out = d.ctl(&[
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
        "10.244.1.11:53",
        "--affinity",
        "client_ip",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ok");
    // A runtime service may not shadow the file's (config_truth.rs); deleted, its name is free.
    let out = d.ctl(&["service", "del", "--name", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Added again at runtime, with another backend.
    let out = d.ctl(&[
        "service",
        "add",
        "--name",
        "web",
        "--vip",
        "10.96.0.10",
        "--port",
        "80",
        "--backend",
        "10.244.1.12:8080",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = service_list(&d);
    let names: Vec<&str> = s.iter().map(|s| s.spec.name.as_str()).collect();
    assert_eq!(names, ["dns", "web"]);
    assert_eq!(s[0].spec.proto, ServiceProto::Udp);
    assert_eq!(
        s[0].spec.affinity.map(|a| a.to_string()).as_deref(),
        Some("client_ip")
    );
    assert_eq!(s[1].spec.backends, ["10.244.1.12:8080".parse().unwrap()]);
    assert_eq!(s[1].connections, [0]);
    // Replaced at runtime: now a runtime service, like the new one.
    assert_eq!(
        (s[0].source, s[1].source),
        (PeerSource::Runtime, PeerSource::Runtime)
    );
    let list = stdout(&d.ctl(&["service", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("dns") && l.contains("client_ip") && l.contains("udp")),
        "{list}"
    );

    // No connection tracking yet: a header and no flows.
    let out = d.ctl(&["conntrack"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));

    // Refused at runtime as in the file, with the same message.
    let services: [(&[&str], &str); 6] = [
        (
            &["--name", "c", "--vip", "10.112.0.1", "--port", "80"],
            "name = \"c\"\nvip = \"10.112.0.1\"\nport = 80",
        ),
        (
            &["--name", "c", "--vip", "10.96.0.0", "--port", "80"],
            "name = \"c\"\nvip = \"10.96.0.0\"\nport = 80",
        ),
        (
            &["--name", "c", "--vip", "10.96.0.10", "--port", "80"],
            "name = \"c\"\nvip = \"10.96.0.10\"\nport = 80",
        ),
        (
            &["--name", "c", "--vip", "10.96.0.12", "--port", "0"],
            "name = \"c\"\nvip = \"10.96.0.12\"\nport = 0",
        ),
        (
            &[
                "--name", "c", "--vip", "10.96.0.12", "--port", "80", "--backend",
                "10.96.0.10:80",
            ],
            "name = \"c\"\nvip = \"10.96.0.12\"\nport = 80\nbackends = [\"10.96.0.10:80\"]",
        ),
        (
            &[
                "--name", "c", "--vip", "10.96.0.12", "--port", "80", "--backend",
                "10.244.1.10:80", "--backend", "10.244.1.10:80",
            ],
            "name = \"c\"\nvip = \"10.96.0.12\"\nport = 80\nbackends = [\"10.244.1.10:80\", \"10.244.1.10:80\"]",
        ),
    ];
    for (args, entry) in services {
        refused_alike(&d, &dir, &base, "service", args, entry);
    }
    let out = d.ctl(&[
        "service",
        "add",
        "--name",
        "c",
        "--vip",
        "10.112.0.1",
        "--port",
        "80",
    ]);
    assert_eq!(
        stderr(&out).trim(),
        "podswitch: service.vip: 10.112.0.1 is outside node.service_cidr 10.96.0.0/12"
    );
    // A malformed backend is refused by the CLI itself, naming the flag.
    let out = d.ctl(&[
        "service",
        "add",
        "--name",
        "c",
        "--vip",
        "10.96.0.12",
        "--port",
        "80",
        "--backend",
        "10.244.1.10",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--backend"), "{}", stderr(&out));
    assert_eq!(service_list(&d).len(), 2, "nothing refused was added");

    // Removal; an unknown name is an error of kind not_found.
    let out = d.ctl(&["service", "del", "--name", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names: Vec<String> = service_list(&d).into_iter().map(|s| s.spec.name).collect();
    assert_eq!(names, ["dns"]);
    let out = d.ctl(&["service", "del", "--name", "web"]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim(), "podswitch: no service named \"web\"");
    assert_eq!(
        control_call(&d, &Request::ServiceDel { name: "web".into() }),
        Response::Error {
            message: "no service named \"web\"".into(),
            kind: Some(ErrorKind::NotFound)
        }
    );

    // A service CIDR overlapping the pods' is refused before anything starts.
    let bad = config("node-s2", &dir.join("bad.sock"), &[])
        .replace("mtu = 1450", "mtu = 1450\nservice_cidr = \"10.244.0.0/16\"");
    assert_eq!(
        run_refused(&dir, &bad),
        "podswitch: config error: node.service_cidr: 10.244.0.0/16 overlaps node.pod_cidr 10.244.1.0/24"
    );
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[root_test]
fn control_socket_survives_floods_of_clients_garbage_and_huge_lines() {
    use std::io::Write as _;
    use std::os::unix::net::UnixStream;
    let web = unique("fweb");
    let dir = tempdir("psf");
    let control = dir.join("node.sock");
    let cfg = config("node-f", &control, &[("web", &web, "10.244.1.10")]);
    let d = Daemon::start(&cfg, control.clone(), dir.clone(), vec![web.clone()]);
    let before = rss_kib(d.pid());
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let fds_before = fds(d.pid());

    // 12000 clients at once, from 8 threads: each sends a garbage line and keeps the
    // connection open (18000 idle clients once took a daemon from 16 to 174 MB); 16 more
    // each send 4 MiB without a newline.
    let flooders: Vec<_> = (0..8)
        .map(|t| {
            let control = control.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for i in 0..1500 {
                    let Ok(mut s) = UnixStream::connect(&control) else {
                        continue;
                    };
                    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                    let _ = writeln!(s, "\u{1}garbage {t} {i} {{\"op\":");
                    held.push(s);
                }
                held
            })
        })
        .chain((0..16).map(|_| {
            let control = control.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&control).expect("connect");
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..64 {
                    if s.write_all(&chunk).is_err() {
                        break; // the server read its limit and closed
                    }
                }
                Vec::new()
            })
        }))
        .collect();
    let held: Vec<UnixStream> = flooders
        .into_iter()
        .flat_map(|h| h.join().expect("flooder"))
        .collect();
    assert!(
        held.len() > 10000,
        "the flood reached the daemon: {}",
        held.len()
    );
    assert!(
        fds(d.pid()) <= fds_before + 128 + 16,
        "descriptors bounded while {} clients hold connections: {} (before: {fds_before})",
        held.len(),
        fds(d.pid())
    );
    // Meanwhile the node still answers: told to come back while the slots are taken, served
    // once they are freed; the data plane is not involved.
    let during = d.ctl(&["status"]);
    assert!(
        during.status.success() || stderr(&during).contains("control connections at once"),
        "status during the flood: {}",
        stderr(&during)
    );
    drop(held);
    wait_for("status after the flood", || {
        d.ctl(&["status"]).status.success()
    });
    let after = rss_kib(d.pid());
    assert!(
        after < before + 32 * 1024,
        "memory bounded: {before} KiB before, {after} KiB after the flood"
    );
    eprintln!("RSS {before} KiB before, {after} KiB after the flood");
    assert!(
        ping_from(&web, "10.244.1.1"),
        "the gateway still answers pod web"
    );
}

#[root_test]
fn a_killed_daemon_started_again_takes_its_pods_back_and_connections_live_on() {
    use common::transfer::Transfer;
    use std::net::{Ipv4Addr, SocketAddrV4};
    let (web, api, extra) = (unique("kweb"), unique("kapi"), unique("kext"));
    let dir = tempdir("psk");
    let control = dir.join("node.sock");
    let cfg = config(
        "node-k",
        &control,
        &[("web", &web, "10.244.1.10"), ("api", &api, "10.244.1.11")],
    );
    let mut d = Daemon::start(
        &cfg,
        control.clone(),
        dir.clone(),
        vec![web.clone(), api.clone(), extra.clone()],
    );
    // A pod added at runtime, in a namespace the daemon creates.
    let add = d.ctl(&[
        "pod",
        "add",
        "--name",
        "extra",
        "--netns",
        &extra,
        "--ip",
        "10.244.1.12",
    ]);
    assert!(add.status.success(), "pod add: {}", stderr(&add));
    // And a service added at runtime.
    let add = d.ctl(&[
        "service",
        "add",
        "--name",
        "svc",
        "--vip",
        "10.96.0.10",
        "--port",
        "80",
        "--backend",
        "10.244.1.11:7001",
    ]);
    assert!(add.status.success(), "service add: {}", stderr(&add));

    let t1 = Transfer::start(
        &web,
        &api,
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 11), 7001),
    );
    let t2 = Transfer::start(
        &extra,
        &web,
        SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 10), 7002),
    );
    for (t, what) in [(&t1, "web -> api"), (&t2, "extra -> web")] {
        t.wait_flowing(what, 1 << 20);
    }
    for crash in 1..=2 {
        d.crash();
        d.restart();
        for (t, what) in [(&t1, "web -> api"), (&t2, "extra -> web")] {
            // More than a receive buffer holds (tcp_rmem's 6 MiB): new segments crossed
            // the restarted switch.
            t.wait_flowing(&format!("{what} after crash {crash}"), 8 << 20);
        }
        let pods: Vec<PodStatus> = match control_call(&d, &Request::PodList) {
            Response::Pods(p) => p,
            r => panic!("{r:?}"),
        };
        let owned: Vec<(String, bool)> = pods
            .iter()
            .map(|p| (p.spec.name.clone(), p.created_netns))
            .collect();
        assert_eq!(
            owned,
            [
                ("api".to_string(), true),
                ("extra".to_string(), true),
                ("web".to_string(), true)
            ],
            "after crash {crash}: every pod back, each namespace still known as the daemon's own"
        );
        let services: Vec<String> = service_list(&d).into_iter().map(|s| s.spec.name).collect();
        assert_eq!(
            services,
            ["svc"],
            "after crash {crash}: the runtime service is back"
        );
    }
    for (t, what) in [(t1, "web -> api"), (t2, "extra -> web")] {
        let done = t.finish();
        assert_eq!(done.first_bad, None, "{what}: bytes intact: {done:?}");
        assert_eq!(
            done.sent, done.received,
            "{what}: every byte arrived: {done:?}"
        );
    }
    // SIGTERM now removes every namespace the daemon made, before or after the crashes.
    let out = d.stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = netns_list();
    for ns in [&web, &api, &extra] {
        assert!(!left.contains(ns.as_str()), "{ns} left behind: {left}");
    }
}

/// The CPUs of a sysfs bitmap (`rps_cpus`: hex, 32-bit groups separated by commas).
fn cpus_of_mask(mask: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for (i, group) in mask.trim().rsplit(',').enumerate() {
        let bits = u32::from_str_radix(group, 16).expect("hex group");
        cpus.extend((0..32).filter(|b| bits & (1 << b) != 0).map(|b| i * 32 + b));
    }
    cpus
}

/// The interfaces whose receive queues take what the switch writes to the pods `a` and `b` and
/// to the node of namespace `node_ns`, as `(namespace, interface)`: the pods' `eth0` (TAPs),
/// or their upcall TAPs in the node's namespace (veth mode), and the host interface.
fn steered_interfaces(node_ns: &str, a: &str, b: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if pod_interface() == "veth" {
        let links = run(&["ip", "-netns", node_ns, "-o", "link", "show"]);
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            let name = line.split(": ").nth(1).unwrap_or("");
            if name.starts_with("psu") {
                out.push((node_ns.to_string(), name.to_string()));
            }
        }
    } else {
        out.push((a.to_string(), "eth0".to_string()));
        out.push((b.to_string(), "eth0".to_string()));
    }
    out.push((node_ns.to_string(), "podsw0".to_string()));
    out
}

/// A receive queue setting of `ifname` in namespace `ns`.
fn queue_setting(ns: &str, ifname: &str, queue: usize, file: &str) -> String {
    let path = format!("/sys/class/net/{ifname}/queues/rx-{queue}/{file}");
    let out = run(&["ip", "netns", "exec", ns, "cat", &path]);
    assert!(out.status.success(), "cat {path} in {ns}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[root_test]
fn rx_steering_sets_rps_and_rfs_on_every_receive_queue() {
    const SOCK_FLOWS: &str = "/proc/sys/net/core/rps_sock_flow_entries";
    let allowed = podswitch::switch::allowed_cpus();
    let last = *allowed.last().expect("a CPU");
    let (node_ns, a, b) = (unique("dsn"), unique("dsa"), unique("dsb"));
    let dir = tempdir("psrx");
    let control = dir.join("node.sock");
    // Two workers, both pinned to the last CPU: two queues per TAP, every other CPU free.
    let text = format!(
        "[node]\nname = \"node-rx\"\npod_cidr = \"10.244.1.0/24\"\ncontrol = \"{}\"\nnetns = \"{node_ns}\"\nworkers = 2\ncpus = [{last}, {last}]\nrx_steering = true\n\n[[pods]]\nname = \"a\"\nnetns = \"{a}\"\nip = \"10.244.1.10\"\n\n[[pods]]\nname = \"b\"\nnetns = \"{b}\"\nip = \"10.244.1.11\"\n",
        control.display()
    );
    if allowed.len() < 2 {
        assert_eq!(
            run_refused(&dir, &text),
            format!("podswitch: config error: node.rx_steering: the workers are pinned to every CPU this process may run on ({last}): none is left to steer to")
        );
        return;
    }
    let before = std::fs::read_to_string(SOCK_FLOWS).expect(SOCK_FLOWS);
    // Host-wide: put back what it was, whatever happens below.
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(SOCK_FLOWS, self.0.trim());
        }
    }
    let _restore = Restore(before.clone());
    netns_add(&node_ns);
    let mut d = Daemon::start(
        &text,
        control,
        dir,
        vec![node_ns.clone(), a.clone(), b.clone()],
    );
    let others: Vec<usize> = allowed.iter().copied().filter(|&c| c != last).collect();
    let receivers = steered_interfaces(&node_ns, &a, &b);
    assert_eq!(receivers.len(), 3, "{receivers:?}");
    for (ns, ifname) in &receivers {
        for queue in 0..2 {
            assert_eq!(
                cpus_of_mask(&queue_setting(ns, ifname, queue, "rps_cpus")),
                others,
                "{ifname} rx-{queue} in {ns}: RPS to every CPU but the workers' ({last})"
            );
            assert_eq!(
                queue_setting(ns, ifname, queue, "rps_flow_cnt"),
                "4096",
                "{ifname} rx-{queue} in {ns}: RFS flows"
            );
        }
    }
    let flows: u32 = std::fs::read_to_string(SOCK_FLOWS)
        .expect(SOCK_FLOWS)
        .trim()
        .parse()
        .expect("a number");
    assert!(
        flows >= 32768,
        "RFS's socket flow table raised (was {}, now {flows})",
        before.trim()
    );
    // Steered, frames still arrive: both ways between the pods, and to the node's gateway
    // through the host interface.
    assert!(ping_from(&a, "10.244.1.11"), "a -> b");
    assert!(ping_from(&b, "10.244.1.10"), "b -> a");
    assert!(ping_from(&a, "10.244.1.1"), "a -> the node through podsw0");
    // Turned off across an upgrade: the handed-over TAPs keep their interfaces and are set
    // back to the kernel's default.
    let config = d.dir.join("node.toml");
    std::fs::write(&config, text.replace("rx_steering = true\n", "")).expect("config");
    let up = d.ctl(&["upgrade"]);
    assert!(up.status.success(), "upgrade: {}", stderr(&up));
    for (ns, ifname) in &receivers {
        for queue in 0..2 {
            let mask = queue_setting(ns, ifname, queue, "rps_cpus");
            assert!(
                cpus_of_mask(&mask).is_empty(),
                "{ifname} rx-{queue} in {ns}: {mask}"
            );
            assert_eq!(queue_setting(ns, ifname, queue, "rps_flow_cnt"), "0");
        }
    }
    assert!(ping_from(&a, "10.244.1.11"), "a -> b after the upgrade");
    let out = d.stop();
    assert!(out.status.success(), "SIGTERM: {}", stderr(&out));
}
