//! Rules that were missing, as a user meets them: refused at runtime by field (a peer pod CIDR
//! on the service CIDR, a peer underlay on loopback or a pod's address, a loopback backend, a
//! pod interface named `lo`), more workers than CPUs refused at start, and a client of a
//! Service whose backend is an address of the node's pod CIDR no pod has (yet) refused at once
//! instead of waiting out its timeouts. Real daemons; needs root (see `#[root_test]`).

use crate::common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use common::{config, run, tempdir, Daemon};
use podswitch::netns::NetNs;
use podswitch_dataplane::testutil::{root_test, unique};

/// A namespace of the test's, deleted on drop (also when the test fails midway).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0]);
    }
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `podswitch <args>` against `d`, which must refuse: its message.
fn refused(d: &Daemon, args: &[&str]) -> String {
    let out = d.ctl(args);
    assert!(!out.status.success(), "{args:?} accepted");
    stderr(&out).trim().to_string()
}

#[root_test]
fn the_missing_rules_are_refused_at_runtime_by_field() {
    let (a, b) = (unique("mra"), unique("mrb"));
    let guard = Netns(unique("mrn"));
    let node_ns = &guard.0;
    let dir = tempdir("psmr");
    let control = dir.join("node.sock");
    // The node in a namespace of its own, with an underlay address there (not loopback).
    assert!(run(&["ip", "netns", "add", node_ns]).status.success());
    let setup = [
        vec!["ip", "-n", node_ns, "link", "set", "lo", "up"],
        vec![
            "ip",
            "-n",
            node_ns,
            "addr",
            "add",
            "192.168.77.1/32",
            "dev",
            "lo",
        ],
    ];
    for cmd in &setup {
        let out = run(cmd);
        assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    }
    let text = config("node-mr", &control, &[("a", &a, "10.244.1.10")]).replace(
        "host_interface = \"\"\n",
        // The node's own interface (its routes to Services and peers), in its namespace.
        &format!("host_interface = \"podsw0\"\nmasquerade = false\nnetns = \"{node_ns}\"\nunderlay = \"192.168.77.1\"\n"),
    );
    let d = Daemon::start(&text, control, dir, vec![a.clone(), b.clone()]);
    let daemon = &d;

    // A pod interface the kernel would refuse, or that every namespace already has.
    assert_eq!(
        refused(
            daemon,
            &["pod", "add", "--name", "b", "--netns", &b, "--ifname", "lo"]
        ),
        "podswitch: pod.ifname: \"lo\" is the loopback interface every namespace already has"
    );
    assert!(
        !Path::new("/run/netns").join(&b).exists(),
        "namespace made for a refused pod"
    );
    let peer = |underlay: &str, cidr: &str| {
        refused(
            daemon,
            &[
                "peer",
                "add",
                "--name",
                "p",
                "--underlay",
                underlay,
                "--pod-cidr",
                cidr,
            ],
        )
    };
    // A peer CIDR in, equal to or around the Services' range: routed to the peer, it would
    // take the node's way to every Service (and `peer del` would remove it).
    for cidr in ["10.96.0.0/24", "10.96.0.0/12", "10.64.0.0/10"] {
        assert_eq!(
            peer("192.168.77.2", cidr),
            format!("podswitch: peer.pod_cidr: {cidr} overlaps node.service_cidr 10.96.0.0/12 (the Services' virtual IPs: they are translated on this node, never routed to a peer)")
        );
    }
    assert_eq!(
        peer("127.0.0.1", "10.244.2.0/24"),
        "podswitch: peer.underlay: 127.0.0.1 is a loopback address (127.0.0.0/8): VXLAN sent there never leaves this machine (node.underlay 192.168.77.1 is not on loopback)"
    );
    assert_eq!(
        peer("10.244.1.10", "10.244.2.0/24"),
        "podswitch: peer.underlay: 10.244.1.10 is inside node.pod_cidr 10.244.1.0/24 (an address of this node's pods, not another node's tunnel endpoint)"
    );
    assert_eq!(
        refused(
            daemon,
            &["service", "add", "--name", "web", "--vip", "10.96.0.10", "--port", "80", "--backend", "127.0.0.1:8080"],
        ),
        "podswitch: service.backends[0]: 127.0.0.1:8080 is a loopback address (127.0.0.0/8): it would be each client's own namespace, not a pod"
    );
    // Nothing refused was added; a good peer still is.
    let peers = daemon.ctl(&["peer", "list"]);
    assert_eq!(String::from_utf8_lossy(&peers.stdout).lines().count(), 1);
    let ok = daemon.ctl(&[
        "peer",
        "add",
        "--name",
        "p",
        "--underlay",
        "192.168.77.2",
        "--pod-cidr",
        "10.244.2.0/24",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // The node's route to every Service is still there, also once a peer is deleted.
    let del = daemon.ctl(&["peer", "del", "--name", "p"]);
    assert!(del.status.success(), "{}", stderr(&del));
    let routes = run(&["ip", "-n", node_ns, "route", "show", "10.96.0.0/12"]);
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("podsw0"),
        "no route to the Services: {}",
        String::from_utf8_lossy(&routes.stdout)
    );
}

#[root_test]
fn more_workers_than_cpus_are_refused_at_start() {
    let allowed = podswitch::switch::allowed_cpus();
    let workers = allowed.len() + 1;
    let dir = tempdir("psmw");
    let control = dir.join("node.sock");
    let text = config("node-mw", &control, &[]) + &format!("workers = {workers}\n");
    // (`workers` lands in [node]: the config has no other table.)
    let path = dir.join("node.toml");
    std::fs::write(&path, &text).expect("config");
    let out = crate::common::podswitch()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success(), "accepted:\n{text}");
    let last = stderr(&out).lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with(&format!(
            "podswitch: config error: node.workers: {workers} is more than the {} CPUs this process may run on (",
        allowed.len())),
        "{last}"
    );
    assert!(!control.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[root_test]
fn a_client_of_a_backend_without_its_pod_is_refused_at_once() {
    let c = unique("mrc");
    let dir = tempdir("psmc");
    let control = dir.join("node.sock");
    // Backends at an address of the node's pod CIDR that no pod has: allowed (a pod to come).
    let text = config("node-mc", &control, &[("c", &c, "10.244.1.10")])
        + "\n[[services]]\nname = \"web\"\nvip = \"10.96.0.10\"\nport = 80\nbackends = [\"10.244.1.200:8080\"]\n"
        + "\n[[services]]\nname = \"dns\"\nvip = \"10.96.0.53\"\nport = 53\nproto = \"udp\"\nbackends = [\"10.244.1.200:53\"]\n";
    let d = Daemon::start(&text, control, dir, vec![c.clone()]);
    let wait = Duration::from_secs(10);
    let (tcp, udp) = NetNs::open(&c)
        .expect("client namespace")
        .run(|| {
            let vip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
            let tcp = TcpStream::connect_timeout(&vip.into(), wait).map(drop);
            let udp = UdpSocket::bind("0.0.0.0:0").and_then(|s| {
                s.connect("10.96.0.53:53")?;
                s.set_read_timeout(Some(wait))?;
                s.send(b"q")?;
                s.recv(&mut [0u8; 64]).map(drop)
            });
            (tcp, udp)
        })
        .expect("in the client's namespace");
    // Refused, not timed out (which is what a client waiting on nothing gets).
    let tcp = tcp.expect_err("connected to nothing");
    assert_eq!(
        tcp.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "TCP: {tcp}"
    );
    let udp = udp.expect_err("an answer from nothing");
    assert_eq!(
        udp.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "UDP: {udp}"
    );
    let status = d.ctl(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("no_such_pod 2"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}
