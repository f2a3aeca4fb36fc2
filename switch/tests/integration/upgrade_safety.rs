//! An upgrade cannot kill the node: a new binary that refuses the node's config is refused
//! before the handover (with its own message), and one that exits after the `exec` gives the
//! pods back to the old binary, started again from the handover (the guard, see
//! `node/guard.rs`); the CLI says so at once, with the daemon's last log lines. Real daemons,
//! pods in namespaces, pings between them. Needs root.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{netns_add, run, tempdir, BIN};
use podswitch::control;
use podswitch_dataplane::testutil::{root_test, unique, wait_for};

/// A node in its own namespace with pods `a` (10.244.1.10) and `b` (10.244.1.11), its log in
/// a file (as a supervisor would keep it). Dropped: whichever process serves its socket then
/// (the one started, or the old binary started again by the guard) is stopped, and its
/// namespaces and directory are removed.
struct Node {
    child: Option<Child>,
    dir: PathBuf,
    control: PathBuf,
    log: PathBuf,
    namespaces: Vec<String>,
    a: String,
}

impl Node {
    fn start(tag: &str) -> Node {
        let (node_ns, a, b) = (unique(&format!("{tag}n")), unique("usa"), unique("usb"));
        let dir = tempdir(&format!("psus{tag}"));
        let control = dir.join("node.sock");
        let text = format!(
            "[node]\nname = \"{tag}\"\npod_cidr = \"10.244.1.0/24\"\ncontrol = \"{}\"\nnetns = \"{node_ns}\"\ncpus = []\n\n[[pods]]\nname = \"a\"\nnetns = \"{a}\"\nip = \"10.244.1.10\"\n\n[[pods]]\nname = \"b\"\nnetns = \"{b}\"\nip = \"10.244.1.11\"\n",
            control.display()
        );
        netns_add(&node_ns);
        std::fs::write(dir.join("node.toml"), text).expect("config");
        let log = dir.join("node.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = crate::common::podswitch()
            .args(["run", "--config"])
            .arg(dir.join("node.toml"))
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn podswitch run");
        let node = Node {
            child: Some(child),
            dir,
            control,
            log,
            namespaces: vec![node_ns, a.clone(), b],
            a,
        };
        wait_for("the node to answer", || {
            node.ctl(&["status"]).status.success()
        });
        node
    }

    fn ctl(&self, args: &[&str]) -> Output {
        crate::common::podswitch()
            .args(args)
            .env("PODSWITCH_CONTROL", &self.control)
            .output()
            .expect("run podswitch client")
    }

    /// `podswitch upgrade --binary binary`.
    fn upgrade(&self, binary: &Path) -> Output {
        crate::common::podswitch()
            .args(["upgrade", "--binary"])
            .arg(binary)
            .arg("--control")
            .arg(&self.control)
            .output()
            .expect("podswitch upgrade")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A ping from pod a to pod b.
    fn forwards(&self) -> bool {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.a,
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "2",
            "10.244.1.11",
        ])
        .status
        .success()
    }

    /// Pod a's `eth0` as `ip link` shows it (its index and MAC: another TAP would differ).
    fn eth0(&self) -> String {
        let out = run(&["ip", "-n", &self.a, "-o", "link", "show", "eth0"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let index = text.split(':').next().unwrap_or("").trim().to_string();
        let mac = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or("");
        assert!(out.status.success() && !index.is_empty(), "ip link: {text}");
        format!("{index} {mac}")
    }

    /// `pod list` answers with both pods.
    fn lists_its_pods(&self) -> bool {
        let out = self.ctl(&["pod", "list"]);
        let text = String::from_utf8_lossy(&out.stdout);
        out.status.success() && text.contains("10.244.1.10/24") && text.contains("10.244.1.11/24")
    }

    /// A script at `dir/name` with `body` (after the shebang), executable.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }
}

/// The pid of the process serving `control`, if one answers (as a pid for kill(2)).
fn server_pid(control: &Path) -> Option<i32> {
    control::server_pid(control).and_then(|p| i32::try_from(p).ok())
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(control::process_alive)
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of the node ---\n{}--- end of log ---", self.log());
        }
        // Whoever serves the socket now, then the process started (if it still runs).
        if let Some(pid) = server_pid(&self.control) {
            // SAFETY: kill(2) on a pid; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}; stdout: {}; stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[root_test]
fn an_upgrade_to_a_binary_that_refuses_the_config_is_refused_with_its_message() {
    let node = Node::start("usref");
    assert!(node.forwards(), "a -> b before any upgrade");
    let pid = server_pid(&node.control).expect("the node's pid");
    // A release that refuses this config, and a wrapper that exits 1 to anything but
    // --version (it cannot check a config, so it is no podswitch to hand the node to).
    let refuses = node.script(
        "refuses",
        "case \"$*\" in *--version*) echo 'podswitch 99.0.0'; exit 0;; esac\n\
         case \"$*\" in *--check-config*) echo 'podswitch: config error: node.workers: 99.0.0 wants at least 2' >&2; exit 1;; esac\n\
         exit 1\n",
    );
    let exits = node.script(
        "exits",
        "case \"$*\" in *--version*) echo 'podswitch 99.0.0'; exit 0;; esac\nexit 1\n",
    );
    for (binary, says) in [
        (
            &refuses,
            "podswitch: config error: node.workers: 99.0.0 wants at least 2",
        ),
        (&exits, "exit status: 1"),
    ] {
        let out = node.upgrade(binary);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("refuses the node's config")
                && err.contains(says),
            "{}: {}",
            binary.display(),
            text(&out)
        );
        // Refused before the handover: the same process serves on.
        assert_eq!(server_pid(&node.control), Some(pid), "{}", binary.display());
        assert!(node.lists_its_pods(), "pod list after {}", binary.display());
        assert!(node.forwards(), "a -> b after {}", binary.display());
    }
}

#[root_test]
fn a_binary_that_exits_after_the_exec_gives_the_pods_back_to_the_old_one() {
    let node = Node::start("usdie");
    assert!(node.forwards(), "a -> b before any upgrade");
    let eth0 = node.eth0();
    // Passes every check, then exits at start, as a release that panics would; and a real
    // podswitch that fails at start (it reads the handover, then cannot read its config).
    let dies = node.script(
        "dies",
        "case \"$*\" in *--version*) echo 'podswitch 99.0.0'; exit 0;; esac\n\
         case \"$*\" in *--check-config*) exit 0;; esac\n\
         echo 'thread main panicked: 99.0.0 cannot start' >&2\nexit 1\n",
    );
    let fails = node.script(
        "fails",
        &format!(
            "case \"$*\" in *--version*|*--check-config*) exec {BIN} \"$@\";; esac\n\
             exec {BIN} run --config /nonexistent/podswitch-99.toml\n"
        ),
    );
    // A real podswitch that fails later, once it holds the node's lock (its config asks for
    // more workers than the machine has): the old binary must still get the lock back.
    let fails_locked = node.script(
        "fails-locked",
        &format!(
            "case \"$*\" in *--version*|*--check-config*) exec {BIN} \"$@\";; esac\n\
             sed 's/^\\[node\\]$/[node]\\nworkers = 64/' \"$3\" > \"$3.w64.toml\"\n\
             exec {BIN} run --config \"$3.w64.toml\"\n"
        ),
    );
    let mut back = server_pid(&node.control).expect("the node's pid");
    for (binary, said) in [
        (&dies, "thread main panicked: 99.0.0 cannot start"),
        (&fails, "/nonexistent/podswitch-99.toml"),
        (&fails_locked, "node.workers"),
    ] {
        let shown = binary.display();
        let started = Instant::now();
        let out = node.upgrade(binary);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{shown}: {}", text(&out));
        // The CLI says what happened and shows what the daemon logged since the request (the
        // dead binary's words among them), rather than waiting for a minute.
        assert!(
            err.contains("exited") && err.contains("given back to the old binary"),
            "{shown}: {}",
            text(&out)
        );
        assert!(
            err.contains(said),
            "{shown}: the log's last lines: {}",
            text(&out)
        );
        assert!(
            started.elapsed() < Duration::from_secs(55),
            "{shown}: the CLI noticed before its 60 s wait"
        );
        // The node is back: the old binary, from the handover, with the pods' interfaces (the
        // same TAPs, held by the guard meanwhile).
        assert!(
            node.lists_its_pods(),
            "{shown}: pod list after the failed upgrade"
        );
        assert!(node.forwards(), "{shown}: a -> b after the failed upgrade");
        assert_eq!(
            node.eth0(),
            eth0,
            "{shown}: pod a's interface is the one it had"
        );
        let now = server_pid(&node.control).expect("a pid");
        assert_ne!(
            now, back,
            "{shown}: the old binary runs again, in the guard's process"
        );
        back = now;
    }
    let log = node.log();
    assert!(
        log.contains("starting the old binary again from the handover"),
        "{log}"
    );
    assert!(!log.contains("not adopted"), "the TAPs were adopted: {log}");
    // And that node upgrades as any: to the real binary, same pid, still forwarding.
    let out = node.upgrade(Path::new(BIN));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is back with its 2 pods"),
        "{}",
        text(&out)
    );
    assert_eq!(server_pid(&node.control), Some(back));
    assert!(node.forwards(), "a -> b after the next upgrade");
    // Its guard stood down once the node was up: its copy of the handover is gone.
    wait_for("the guard to stand down", || {
        std::fs::read_dir(&node.dir)
            .map(|rd| {
                !rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".guard"))
            })
            .unwrap_or(false)
    });
}

#[test]
fn check_config_answers_without_touching_anything() {
    // No root needed: nothing is created. A good config, then one a field of which is wrong.
    let dir = tempdir("psuscheck");
    let control = dir.join("sub").join("node.sock");
    let good = format!(
        "[node]\nname = \"uscheck\"\npod_cidr = \"10.244.1.0/24\"\ncontrol = \"{}\"\nhost_interface = \"\"\ncpus = []\n\n[[pods]]\nname = \"a\"\nnetns = \"{}\"\nip = \"10.244.1.10\"\n",
        control.display(),
        unique("usnever")
    );
    let path = dir.join("node.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).expect("config");
        crate::common::podswitch()
            .args(["run", "--check-config", "--config"])
            .arg(&path)
            .output()
            .expect("podswitch run --check-config")
    };
    let out = check(&good);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is good for node uscheck: 1 pods"),
        "{}",
        text(&out)
    );
    let bad = good.replace("10.244.1.10", "10.9.9.9");
    let out = check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(
                "config error: pods[0].ip: 10.9.9.9 is outside node.pod_cidr 10.244.1.0/24"
            ),
        "{}",
        text(&out)
    );
    assert!(
        !dir.join("sub").exists(),
        "no control socket or state directory was made"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
