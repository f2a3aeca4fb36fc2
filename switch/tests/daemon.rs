//! The `podswitch` binary as a user runs it: `run --config`, the control subcommands, signals.
//! Needs root (namespaces, TAPs); see `root_or_skip`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use podswitch::testutil::{root_or_skip, unique, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_podswitch");

fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn netns_list() -> String {
    String::from_utf8_lossy(&run(&["ip", "netns", "list"]).stdout).into_owned()
}

/// A running `podswitch run`; killed (SIGKILL) and cleaned up if a test fails midway.
struct Daemon {
    child: Option<Child>,
    control: PathBuf,
    dir: PathBuf,
    namespaces: Vec<String>,
}

impl Daemon {
    fn start(config: &str, control: PathBuf, dir: PathBuf, namespaces: Vec<String>) -> Self {
        let path = dir.join("node.toml");
        std::fs::write(&path, config).expect("write config");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn podswitch run");
        let d = Daemon {
            child: Some(child),
            control,
            dir,
            namespaces,
        };
        wait_for("the control socket", || {
            d.control.exists() && d.ctl(&["status"]).status.success()
        });
        d
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).env("PODSWITCH_CONTROL", &self.control);
        cmd.output().expect("run podswitch client")
    }

    fn stop(&mut self) -> Output {
        let child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait_with_output().expect("daemon exits")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn config(node: &str, control: &Path, pods: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        "[node]\nname = \"{node}\"\npod_cidr = \"10.244.1.0/24\"\nmtu = 1450\ncontrol = \"{}\"\n",
        control.display()
    );
    for (name, netns, ip) in pods {
        s += &format!("\n[[pods]]\nname = \"{name}\"\nnetns = \"{netns}\"\nip = \"{ip}\"\n");
    }
    s
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

#[test]
fn daemon_runs_pods_serves_control_and_cleans_up_on_sigterm() {
    if !root_or_skip("daemon_runs_pods_serves_control_and_cleans_up_on_sigterm") {
        return;
    }
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
        fdb.contains("02:42:0a:f4:01:0a") && fdb.contains("static"),
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
}

#[test]
fn bad_config_names_the_field_and_creates_nothing() {
    if !root_or_skip("bad_config_names_the_field_and_creates_nothing") {
        return;
    }
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
    let out = Command::new(BIN)
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

/// Tears a lab down on drop (also when the test fails midway).
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["lab", "down", "--name", &self.0])
            .output();
    }
}

fn ping_from(ns: &str, ip: &str) -> bool {
    run(&[
        "ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "2", ip,
    ])
    .status
    .success()
}

#[test]
fn lab_builds_a_two_node_cluster_and_tears_it_down() {
    if !root_or_skip("lab_builds_a_two_node_cluster_and_tears_it_down") {
        return;
    }
    let name = unique("lab");
    let guard = LabGuard(name.clone());
    let up = Command::new(BIN)
        .args([
            "lab",
            "up",
            "--name",
            &name,
            "--nodes",
            "2",
            "--pods-per-node",
            "2",
        ])
        .output()
        .expect("lab up");
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
        let mut cmd = Command::new(BIN);
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
    let _ = n1p2;

    let down = Command::new(BIN)
        .args(["lab", "down", "--name", &name])
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
    drop(guard);
}
