//! Restarts that do not drop connections: `podswitch upgrade` (the daemon execs a new binary in
//! its own process, handing over the pods' TAPs and the tracked flows) and a daemon killed
//! (SIGKILL) and started again with the same config. Two real nodes joined by VXLAN on an
//! underlay bridge; long TCP transfers, every byte checked, within a node, across nodes and
//! through a service VIP. Needs root.

use crate::common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use common::cluster::{Node, Underlay};
use common::tempdir;
use common::transfer::Transfer;
use podswitch::control::{Request, Response};
use podswitch_dataplane::testutil::{root_test, unique};

/// Node `i` (1 or 2) of a two-node cluster: underlay 192.168.77.<i>, pods 10.244.<i>.0/24,
/// the other node as its peer, pods `p0` (.10) and `p1` (.11), and on node 1 a service
/// 10.96.0.10:80 -> node 2's p0 port 7003.
fn node(underlay: &mut Underlay, dir: &std::path::Path, i: u8) -> Node {
    let host = underlay.add_host(&format!("192.168.77.{i}"));
    let name = format!("rnode{i}");
    let other = 3 - i;
    let control = dir.join(format!("{name}.sock"));
    let pod_ns: Vec<String> = (0..2).map(|p| unique(&format!("r{i}p{p}"))).collect();
    let mut text = format!(
        "[node]\nname = \"{name}\"\nnetns = \"{host}\"\nunderlay = \"192.168.77.{i}\"\n\
         pod_cidr = \"10.244.{i}.0/24\"\ncontrol = \"{}\"\ncpus = []\nhost_interface = \"\"\n\
         \n[[peers]]\nname = \"rnode{other}\"\nunderlay = \"192.168.77.{other}\"\n\
         pod_cidr = \"10.244.{other}.0/24\"\n",
        control.display()
    );
    for (p, ns) in pod_ns.iter().enumerate() {
        text += &format!(
            "\n[[pods]]\nname = \"p{p}\"\nnetns = \"{ns}\"\nip = \"10.244.{i}.{}\"\n",
            10 + p
        );
    }
    if i == 1 {
        text += "\n[[services]]\nname = \"web\"\nvip = \"10.96.0.10\"\nport = 80\nbackends = [\"10.244.2.10:7003\"]\n";
        text += "\n[[services]]\nname = \"files\"\nvip = \"10.96.0.11\"\nport = 80\nbackends = [\"10.244.2.10:7004\"]\n";
    }
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, text).expect("write config");
    let log = dir.join(format!("{name}.log"));
    Node::spawn(
        name,
        format!("192.168.77.{i}"),
        config,
        control,
        log,
        pod_ns,
    )
}

fn upgrade(node: &Node) -> String {
    let out = crate::common::podswitch()
        .args(["upgrade", "--control"])
        .arg(&node.control)
        .output()
        .expect("podswitch upgrade");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "upgrade of {}: {text}{}\n{}",
        node.name,
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    text
}

#[root_test]
fn transfers_survive_five_upgrades_and_two_crashes() {
    let dir: PathBuf = tempdir("psup");
    let mut underlay = Underlay::new();
    let mut nodes = [node(&mut underlay, &dir, 1), node(&mut underlay, &dir, 2)];
    for n in &nodes {
        n.subnet(); // up, pods made
    }
    let (n1p0, n1p1, n2p0) = (
        nodes[0].pod_ns[0].clone(),
        nodes[0].pod_ns[1].clone(),
        nodes[1].pod_ns[0].clone(),
    );
    let flows = [
        (
            "same node",
            Transfer::start(
                &n1p0,
                &n1p1,
                SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 11), 7001),
            ),
        ),
        (
            "across nodes",
            Transfer::start(
                &n1p1,
                &n2p0,
                SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 10), 7002),
            ),
        ),
        (
            "through the VIP",
            Transfer::start_via(
                &n1p0,
                &n2p0,
                SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 10), 7003),
                SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80),
            ),
        ),
        (
            // The backend sends: after a crash its segments reach the client's node first,
            // and only a flow tracked again gives them the VIP back.
            "a download through the VIP",
            Transfer::download_via(
                &n1p1,
                &n2p0,
                SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 10), 7004),
                SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 11), 80),
            ),
        ),
    ];
    let flowing = |after: &str| {
        for (what, t) in &flows {
            // More than a receive buffer holds: new segments crossed the switch.
            t.wait_flowing(&format!("{what}, after {after}"), 8 << 20);
        }
    };
    flowing("the start");
    // A binary that is not a podswitch, or none: refused, the node untouched.
    for (binary, says) in [
        ("/bin/true", "not a podswitch binary"),
        ("/nonexistent/podswitch", "No such file"),
    ] {
        let out = crate::common::podswitch()
            .args(["upgrade", "--binary", binary, "--control"])
            .arg(&nodes[0].control)
            .output()
            .expect("podswitch upgrade");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{binary}: {err}"
        );
    }
    // Frames received from each pod and node-wide, as the control socket reports them.
    let counted = |n: &Node| -> (Vec<u64>, u64) {
        let pods = n.pods().iter().map(|p| p.counters.rx_frames).collect();
        match n.call(&Request::Status) {
            Response::Status { rx, .. } => (pods, rx),
            other => panic!("{other:?}"),
        }
    };
    for k in 0..5 {
        let n = &nodes[k % 2];
        let before = counted(n);
        let said = upgrade(n);
        assert!(said.contains("is back with its 2 pods"), "{said}");
        // The counters go on from where they were (a restart at zero would be far below:
        // seconds of transfers before, milliseconds after).
        let after = counted(n);
        assert!(
            after.1 >= before.1 && after.0.iter().zip(&before.0).all(|(a, b)| a >= b),
            "{}: counters before {before:?}, after the upgrade {after:?}",
            n.name
        );
        flowing(&format!("upgrade {} of {}", k + 1, n.name));
    }
    let log = nodes[0].log();
    assert!(
        !log.contains("not adopted"),
        "every upgrade adopted the TAPs it was handed:\n{log}"
    );
    assert!(
        log.contains("tracked flows carried over the upgrade flows=2"),
        "node 1's upgrades carried the VIP flow's tracking over:\n{log}"
    );
    assert!(
        !log.contains("connections to removed backends ended"),
        "an upgrade ends no connection:\n{log}"
    );
    for n in &mut nodes {
        n.kill();
        n.start();
        flowing(&format!("a crash of {}", n.name));
    }
    // Node 1 (the clients') tracked both VIP flows again from the file its crashed run wrote.
    let log = nodes[0].log();
    assert!(
        log.contains("tracked flows carried over the crash (flows file) flows=2"),
        "{log}"
    );
    let flows_file = |n: &Node| n.control.with_file_name(format!("{}.flows.json", n.name));
    assert!(flows_file(&nodes[0]).exists());
    for (what, t) in flows {
        let done = t.finish();
        assert_eq!(done.first_bad, None, "{what}: bytes intact: {done:?}");
        assert_eq!(
            done.sent, done.received,
            "{what}: every byte arrived: {done:?}"
        );
    }
    for n in &mut nodes {
        n.stop();
        assert!(
            !flows_file(n).exists(),
            "SIGTERM ends the flows: file removed"
        );
    }
}
