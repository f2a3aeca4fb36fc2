//! Helpers for tests that need root: real namespaces, TAPs and kernel stacks.

#![allow(dead_code)]

#[allow(unused_imports)] // each test binary uses a different subset
pub(crate) use podswitch_dataplane::testutil::{pattern, root_test, unique, wait_for};
use std::process::{Command, Output};

pub(crate) mod real;

/// Runs a command, returning its output (never panics on failure; the caller asserts).
pub(crate) fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` inside namespace `ns` (`ip netns exec`).
pub(crate) fn in_ns(ns: &str, cmd: &[&str]) -> Output {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(cmd);
    run(&full)
}

/// `ping -c count` from namespace `ns` to `ip`; true if every reply came back.
pub(crate) fn ping(ns: &str, ip: &str, count: u32) -> bool {
    let out = in_ns(
        ns,
        &["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "2", ip],
    );
    out.status.success()
}

/// Names of existing network namespaces.
pub(crate) fn netns_list() -> Vec<String> {
    let out = run(&["ip", "netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Deletes the named namespaces on drop (also on panic), for tests that make their own.
pub(crate) struct NsGuard(pub Vec<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            if let Ok(n) = podswitch::netns::NetNs::named(ns) {
                let _ = n.delete();
            }
        }
    }
}
