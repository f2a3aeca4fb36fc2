//! Helpers of the tests that run the real binaries: the daemon, commands, temp dirs.
//! Each test crate uses a part of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use podswitch_dataplane::testutil::{pod_interface, unique, wait_for};

pub(crate) mod cluster;
pub(crate) mod transfer;

/// The daemon and control binary.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_podswitch");

/// The lab binary (`podswitch-lab up/down`); its nodes run [`BIN`], built beside it.
pub(crate) const LAB: &str = env!("CARGO_BIN_EXE_podswitch-lab");

/// `podswitch` ([`BIN`]) in the running root test's pod interface mode: a node it starts
/// without `node.pod_interface` makes pods of the mode `#[root_test]` runs the test in.
pub(crate) fn podswitch() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env(podswitch::node::POD_INTERFACE_ENV, pod_interface());
    cmd
}

/// `podswitch-lab` ([`LAB`]) in the running root test's pod interface mode (its nodes inherit
/// the environment).
pub(crate) fn lab() -> Command {
    let mut cmd = Command::new(LAB);
    cmd.env(podswitch::node::POD_INTERFACE_ENV, pod_interface());
    cmd
}

/// Runs `cmd` to completion.
pub(crate) fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` to completion with `input` on its standard input. A missing program fails the
/// test (scripts/setup installs every tool the tests use).
pub(crate) fn run_with_stdin(cmd: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/setup installs it)"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("write to stdin");
    }
    child.wait_with_output().expect("wait")
}

/// A running `podswitch run`; killed (SIGKILL) and cleaned up if a test fails midway, and
/// then its log is printed with the failure.
pub(crate) struct Daemon {
    child: Option<Child>,
    /// The daemon's stdout and stderr, read as they come: a pipe nobody reads fills at 64 KiB
    /// and then blocks whichever daemon thread logs next.
    output: Option<Drain>,
    /// What earlier runs (before `crash`) logged, for the failure report.
    earlier_log: Vec<u8>,
    pub(crate) control: PathBuf,
    pub(crate) dir: PathBuf,
    namespaces: Vec<String>,
}

/// Threads that read a child's stdout and stderr to their end.
struct Drain {
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Drain {
    fn start(child: &mut Child) -> Self {
        fn read_all(
            mut r: impl std::io::Read + Send + 'static,
        ) -> std::thread::JoinHandle<Vec<u8>> {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        }
        Drain {
            stdout: read_all(child.stdout.take().expect("piped stdout")),
            stderr: read_all(child.stderr.take().expect("piped stderr")),
        }
    }

    /// Stdout and stderr once the child has exited. A descendant still holding the pipes
    /// (nothing should) is given 10 s, then what was read is lost rather than the test hung.
    fn finish(self) -> (Vec<u8>, Vec<u8>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(self.stdout.is_finished() && self.stderr.is_finished()) {
            if std::time::Instant::now() > deadline {
                return (Vec::new(), b"(the daemon's pipes were still open)".to_vec());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        (
            self.stdout.join().unwrap_or_default(),
            self.stderr.join().unwrap_or_default(),
        )
    }
}

impl Daemon {
    pub(crate) fn start(
        config: &str,
        control: PathBuf,
        dir: PathBuf,
        namespaces: Vec<String>,
    ) -> Self {
        std::fs::write(dir.join("node.toml"), config).expect("write config");
        let mut d = Daemon {
            child: None,
            output: None,
            earlier_log: Vec::new(),
            control,
            dir,
            namespaces,
        };
        d.restart();
        d
    }

    /// Starts the daemon (again) with the config file written by `start`.
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        let child = podswitch()
            .args(["run", "--config"])
            .arg(self.dir.join("node.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn podswitch run");
        let mut child = child;
        self.output = Some(Drain::start(&mut child));
        self.child = Some(child);
        wait_for("the control socket", || {
            self.control.exists() && self.ctl(&["status"]).status.success()
        });
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub(crate) fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = podswitch();
        cmd.args(args).env("PODSWITCH_CONTROL", &self.control);
        cmd.output().expect("run podswitch client")
    }

    /// SIGKILL, as a crash: the daemon cleans up nothing.
    pub(crate) fn crash(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
        self.keep_log();
    }

    pub(crate) fn stop(&mut self) -> Output {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = child.wait().expect("daemon exits");
        let (stdout, stderr) = self.output.take().map(Drain::finish).unwrap_or_default();
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Moves what the exited daemon wrote into `earlier_log`.
    fn keep_log(&mut self) {
        if let Some(drain) = self.output.take() {
            let (stdout, stderr) = drain.finish();
            self.earlier_log.extend_from_slice(&stdout);
            self.earlier_log.extend_from_slice(&stderr);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            self.keep_log();
            eprintln!(
                "--- log of the daemon on {} ---\n{}--- end of log ---",
                self.control.display(),
                String::from_utf8_lossy(&self.earlier_log)
            );
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Tears a `podswitch-lab` lab down on drop (also when the test fails midway).
pub(crate) struct LabGuard(pub(crate) String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The nodes' logs, for the failure report (lab down removes them).
            let dir = Path::new("/run/podswitch").join(&self.0);
            let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
            logs.sort();
            for log in logs {
                eprintln!(
                    "--- {} ---\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
        let _ = lab().args(["down", "--name", &self.0]).output();
    }
}

/// `podswitch-lab up` of `nodes` nodes with `pods` pods each, torn down when the guard drops.
pub(crate) fn lab_up(name: &str, nodes: usize, pods: usize) -> (LabGuard, Output) {
    let guard = LabGuard(name.to_string());
    let up = lab()
        .args(["up", "--name", name])
        .args(["--nodes", &nodes.to_string()])
        .args(["--pods-per-node", &pods.to_string()])
        .output()
        .expect("lab up");
    (guard, up)
}

/// A fresh directory under the temp dir.
pub(crate) fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A node config with `pods` (name, netns, ip), pod CIDR 10.244.1.0/24. The daemon runs in
/// the test's (the machine's) namespace, so it makes no host interface there.
pub(crate) fn config(node: &str, control: &Path, pods: &[(&str, &str, &str)]) -> String {
    let mut s = format!(
        "[node]\nname = \"{node}\"\npod_cidr = \"10.244.1.0/24\"\nmtu = 1450\ncontrol = \"{}\"\nhost_interface = \"\"\n",
        control.display()
    );
    for (name, netns, ip) in pods {
        s += &format!("\n[[pods]]\nname = \"{name}\"\nnetns = \"{netns}\"\nip = \"{ip}\"\n");
    }
    s
}

/// `ip netns add name`.
pub(crate) fn netns_add(name: &str) {
    assert!(
        run(&["ip", "netns", "add", name]).status.success(),
        "ip netns add {name}"
    );
}

/// The addresses host-local holds in `dir` (its data directory for one network): the files
/// named after IPs, sorted.
pub(crate) fn host_local_reserved(dir: &std::path::Path) -> Vec<String> {
    let mut ips: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    ips.sort();
    ips
}

/// A UDP server answering every datagram with `<its own address> <the datagram>`.
pub(crate) const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(sys.argv[1].encode() + b" " + d, a)
"#;

/// A process in a namespace (a test's server), killed when dropped.
pub(crate) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `python3 -c script ip port` in namespace `ns` and waits until it listens on
/// `ip:port` (UDP if `udp`).
pub(crate) fn spawn_in(ns: &str, script: &str, ip: &str, port: u16, udp: bool) -> Server {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", script, ip])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 server");
    let probe = if udp {
        format!("ss -lun | grep -q '{ip}:{port} '")
    } else {
        format!("ss -ltn | grep -q '{ip}:{port} '")
    };
    wait_for("the server", || {
        run(&["ip", "netns", "exec", ns, "sh", "-c", &probe])
            .status
            .success()
    });
    Server(child)
}
