//! SIGTERM during a start: the daemon stops, and leaves nothing of what it made (the
//! namespaces it created for its pods).

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{config, tempdir};
use podswitch_dataplane::testutil::{root_test, unique, wait_for};

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip")
            .stdout,
    )
    .to_string()
}

/// `n` pods (name, namespace with a unique prefix, address from .10).
fn many_pods(prefix: &str, n: usize) -> Vec<(String, String, String)> {
    let prefix = unique(prefix);
    (0..n)
        .map(|i| {
            (
                format!("p{i}"),
                format!("{prefix}p{i}"),
                format!("10.244.1.{}", 10 + i),
            )
        })
        .collect()
}

/// `pods` as [`config`] takes them.
fn as_config(pods: &[(String, String, String)]) -> Vec<(&str, &str, &str)> {
    pods.iter()
        .map(|(n, ns, ip)| (n.as_str(), ns.as_str(), ip.as_str()))
        .collect()
}

#[root_test]
fn sigterm_while_pods_are_being_made_leaves_none_behind() {
    let dir = tempdir("startstop");
    let control = dir.join("ctl.sock");
    let names = many_pods("ss", 40);
    let pods = as_config(&names);
    std::fs::write(
        dir.join("node.toml"),
        config(&unique("ss"), &control, &pods),
    )
    .expect("config");
    struct Cleanup(Vec<String>, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _cleanup = Cleanup(names.iter().map(|n| n.1.clone()).collect(), dir.clone());
    let mut child = crate::common::podswitch()
        .args(["run", "--config"])
        .arg(dir.join("node.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podswitch run");
    // Once the first pod's namespace exists, the start is under way.
    wait_for("the first pod's namespace", || {
        namespaces().contains(&names[0].1)
    });
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not stop within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut log);
    }
    assert!(status.success(), "a clean stop: {status:?}\n{log}");
    let left = namespaces();
    let leftover: Vec<&str> = names
        .iter()
        .map(|n| n.1.as_str())
        .filter(|ns| left.contains(ns))
        .collect();
    assert!(leftover.is_empty(), "left behind: {leftover:?}\n{log}");
    assert!(!control.exists(), "the control socket is gone");
}

#[root_test]
fn the_control_socket_goes_last_on_a_clean_stop() {
    let dir = tempdir("socklast");
    let control = dir.join("ctl.sock");
    let names = many_pods("sl", 30);
    let pods = as_config(&names);
    let mut d = common::Daemon::start(
        &config(&unique("sl"), &control, &pods),
        control.clone(),
        dir,
        names.iter().map(|n| n.1.clone()).collect(),
    );
    let pid = d.pid();
    assert!(control.exists());
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    // The moment the socket is gone (a CNI plugin or the CLI would say "no node"), the pods
    // it made are gone too.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while control.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "still there after 60 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let left = namespaces();
    let still: Vec<&str> = names
        .iter()
        .map(|n| n.1.as_str())
        .filter(|ns| left.contains(ns))
        .collect();
    assert!(
        still.is_empty(),
        "pods still there without a socket: {still:?}"
    );
    // (A second SIGTERM while stopping changes nothing.)
    let out = d.stop();
    assert!(out.status.success(), "{out:?}");
}
