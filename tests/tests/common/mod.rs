//! Helpers for tests that need root: real namespaces, TAPs and kernel stacks.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// True if the test may run. Without root: skips visibly when `PODSWITCH_SKIP_ROOT_TESTS=1`,
/// else fails with a message that says why.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("PODSWITCH_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: needs root (PODSWITCH_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!(
        "{test} needs root: it creates network namespaces and TAP devices. Run the tests as root, \
         or set PODSWITCH_SKIP_ROOT_TESTS=1 to skip the root tests visibly."
    );
}

/// A name unique to this process and call, short enough for interface names.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, returning its output (never panics on failure; the caller asserts).
pub fn run(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` inside namespace `ns` (`ip netns exec`).
pub fn in_ns(ns: &str, cmd: &[&str]) -> Output {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(cmd);
    run(&full)
}

/// `ping -c count` from namespace `ns` to `ip`; true if every reply came back.
pub fn ping(ns: &str, ip: &str, count: u32) -> bool {
    let out = in_ns(
        ns,
        &["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "2", ip],
    );
    out.status.success()
}

/// Names of existing network namespaces.
pub fn netns_list() -> Vec<String> {
    let out = run(&["ip", "netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Polls `cond` until true; panics naming `what` after 20 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic data: byte i of stream `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(u32::from(seed)) as u8
                ^ seed
        })
        .collect()
}

/// Deletes the named namespaces on drop (also on panic), for tests that make their own.
pub struct NsGuard(pub Vec<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            if let Ok(n) = podswitch::netns::NetNs::named(ns) {
                let _ = n.delete();
            }
        }
    }
}
