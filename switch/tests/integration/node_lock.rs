//! One node name, one daemon: a daemon holds a lock on its node's state (`<state dir>/<name>.lock`,
//! the state dir being its control socket's) from before it reads or changes anything, and
//! keeps it across an upgrade's `exec`. A second daemon of the same name, with the same or
//! another control socket, is refused naming the first one's pid and socket, and touches
//! nothing. Real daemons; needs root (see `#[root_test]`).

use crate::common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{config, run, tempdir, Daemon};
use podswitch_dataplane::testutil::{root_test, unique};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `podswitch run --config <text>` (written to `dir/<file>`), which must be refused: its
/// last line of standard error. One still running after 10 s was accepted: it is stopped
/// (SIGTERM, then SIGKILL) and the test fails.
fn refused(dir: &Path, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write config");
    let mut child = crate::common::podswitch()
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("accepted:\n{text}\n{}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success(), "accepted:\n{text}");
    stderr(&out).lines().last().unwrap_or_default().to_string()
}

/// What a second daemon of node `name` is told while `pid` runs it on `control`.
fn taken(name: &str, pid: u32, control: &Path, dir: &Path) -> String {
    format!(
        "podswitch: node {name:?} already runs here: pid {pid}, control socket {} (lock {}): one daemon per node name; stop that one first, or give this node another node.name",
        control.display(),
        dir.join(format!("{name}.lock")).display()
    )
}

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Pings the gateway from namespace `ns`.
fn pings_gateway(ns: &str) -> bool {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "10.244.1.1",
    ])
    .status
    .success()
}

#[root_test]
fn a_second_daemon_of_the_same_node_is_refused_and_touches_nothing() {
    let (a, fresh) = (unique("lka"), unique("lkz"));
    let dir = tempdir("pslk");
    let control = dir.join("node.sock");
    let first = config("node-lk", &control, &[("a", &a, "10.244.1.10")]);
    let mut d = Daemon::start(
        &first,
        control.clone(),
        dir.clone(),
        vec![a.clone(), fresh.clone()],
    );
    let state = std::fs::read(dir.join("node-lk.pods.json")).expect("state file");

    // The same config: refused by the lock, naming the running daemon.
    assert_eq!(
        refused(&dir, "same.toml", &first),
        taken("node-lk", d.pid(), &control, &dir)
    );
    // Another control socket, and a pod of its own in a namespace nobody made yet.
    let other = dir.join("other.sock");
    let second = config(
        "node-lk",
        &other,
        &[("a", &a, "10.244.1.10"), ("z", &fresh, "10.244.1.20")],
    );
    assert_eq!(
        refused(&dir, "other.toml", &second),
        taken("node-lk", d.pid(), &control, &dir)
    );
    // It touched nothing: no socket, no namespace made, the state file as it was, the first
    // node's pod still there and working.
    assert!(!other.exists(), "the second daemon bound its socket");
    assert!(!ns_exists(&fresh), "the second daemon made a namespace");
    assert_eq!(
        std::fs::read(dir.join("node-lk.pods.json")).expect("state"),
        state
    );
    assert!(ns_exists(&a), "the first node's pod namespace is gone");
    assert!(pings_gateway(&a), "the first node's pod no longer works");
    let list = d.ctl(&["pod", "list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&a));

    // Once the first has stopped, the node may run again, from either config.
    let out = d.stop();
    assert!(out.status.success(), "SIGTERM: {}", stderr(&out));
    std::fs::write(dir.join("node.toml"), &second).expect("config");
    d.control = other.clone();
    d.restart();
    assert!(pings_gateway(&fresh));
}

/// The descriptors of process `pid` open on `file`.
fn fds_on(pid: u32, file: &Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == file))
                .count()
        })
        .unwrap_or(0)
}

#[root_test]
fn the_lock_is_held_across_upgrades() {
    let a = unique("lku");
    let dir = tempdir("pslku");
    let control = dir.join("node.sock");
    let text = config("node-lku", &control, &[("a", &a, "10.244.1.10")]);
    let mut d = Daemon::start(&text, control.clone(), dir.clone(), vec![a.clone()]);
    let lock = dir.join("node-lku.lock");
    let other = dir.join("other.sock");
    let second = config("node-lku", &other, &[]);
    for upgrade in 1..=2 {
        let up = d.ctl(&["upgrade"]);
        assert!(up.status.success(), "upgrade {upgrade}: {}", stderr(&up));
        // The same process (exec keeps the pid) holds the lock: one descriptor, inherited.
        assert_eq!(
            refused(&dir, "other.toml", &second),
            taken("node-lku", d.pid(), &control, &dir),
            "after upgrade {upgrade}"
        );
        assert_eq!(fds_on(d.pid(), &lock), 1, "after upgrade {upgrade}");
        assert!(pings_gateway(&a), "after upgrade {upgrade}");
    }
    assert!(!other.exists());
    // Held throughout, not taken again after each exec (which would leave a moment for
    // another daemon): each new image found the descriptor its previous one left open.
    let out = d.stop();
    assert!(out.status.success(), "SIGTERM: {}", stderr(&out));
    let log = stderr(&out);
    assert_eq!(
        log.matches("node lock held across the upgrade's exec")
            .count(),
        2,
        "{log}"
    );
    // A stopped node's lock names nobody.
    assert_eq!(std::fs::read_to_string(&lock).expect("lock file"), "");
}
