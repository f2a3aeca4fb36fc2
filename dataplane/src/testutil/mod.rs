//! The test fixture home (the `testutil` feature; tests, benchmarks and fuzz targets use it,
//! the product never does): frame builders (plain byte vectors, checksums filled in), the
//! root-test declaration [`root_test`], and small helpers (unique names, bounded waits).

// `unsafe` is denied crate-wide and allowed in this file only: geteuid, for root_or_skip.
#![allow(unsafe_code)]

/// Declares a test that needs root, in one line: see [`podswitch_test_macros::root_test`].
#[cfg(feature = "testutil")]
pub use podswitch_test_macros::root_test;

pub mod node;

use std::net::Ipv4Addr;

use crate::wire::{checksum_sum, vxlan};

/// An Ethernet II frame.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet (no options, TOS 0, id 0, no DF).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_tos(src, dst, proto, ttl, 0, false, payload)
}

/// An IPv4 packet with a TOS byte and the DF flag as given.
pub fn ipv4_tos(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    tos: u8,
    df: bool,
    payload: &[u8],
) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, tos];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, if df { 0x40 } else { 0 }, 0, ttl, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = !checksum_sum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram with checksum 0 (none).
pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + data.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

/// The complemented L4 checksum of `segment` (checksum field zeroed by the caller) from `src` to
/// `dst` with protocol `proto`.
fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(12 + segment.len());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    p.extend_from_slice(segment);
    !crate::wire::checksum::checksum_sum(&p)
}

/// A UDP datagram from `src:sport` to `dst:dport` with its checksum computed.
pub fn udp_with_checksum(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut u = udp(sport, dport, data);
    let c = match l4_checksum(src, dst, 17, &u) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// A TCP segment (20-byte header, no options, window 65535) from `src:sport` to `dst:dport`
/// with its checksum computed.
#[allow(clippy::too_many_arguments)]
pub fn tcp_segment_bytes(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + data.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(data);
    let c = l4_checksum(src, dst, 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// An ICMP echo message (`ty` 8 request, 0 reply).
pub fn icmp_echo(ty: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(data);
    let c = !checksum_sum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ICMP error message quoting `quoted` (the 4 bytes after the checksum are `0, 0, mtu`).
#[cfg(test)]
pub(crate) fn icmp_error_bytes(ty: u8, code: u8, mtu: u16, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(quoted);
    let c = !checksum_sum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// An Ethernet/IPv4 ARP packet.
pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// A VXLAN datagram (header + inner frame).
pub fn vxlan_wrap(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut d = vxlan::header(vni).to_vec();
    d.extend_from_slice(inner);
    d
}

/// True if a test that needs root may run. Without root: skips visibly when
/// `PODSWITCH_SKIP_ROOT_TESTS=1`, else fails with a message that says why.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("PODSWITCH_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        // Straight to the stderr handle, not `eprintln!`: the test harness captures the
        // macros' output of passing tests, and a skip must be visible.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: needs root (PODSWITCH_SKIP_ROOT_TESTS=1)"
        );
        return false;
    }
    panic!(
        "{test} needs root: it creates network namespaces and TAP devices. Run the tests as root, \
         or set PODSWITCH_SKIP_ROOT_TESTS=1 to skip the root tests visibly."
    );
}

std::thread_local! {
    /// The pod interface mode the running root test is in (`#[root_test]` sets it).
    static POD_INTERFACE: std::cell::Cell<&'static str> = const { std::cell::Cell::new("tap") };
}

/// The pod interface mode (`"tap"` or `"veth"`, as `node.pod_interface` spells it) the root
/// test running on this thread is in: `#[root_test]` runs each test once per mode. Fixtures
/// that start nodes give it to them (`PODSWITCH_POD_INTERFACE` for a `podswitch` process).
/// On other threads: `"tap"`.
pub fn pod_interface() -> &'static str {
    POD_INTERFACE.with(std::cell::Cell::get)
}

/// Runs `test` on this thread in pod interface mode `mode` (what `#[root_test]` expands to).
#[doc(hidden)]
pub fn in_pod_interface_mode(mode: &'static str, test: fn()) {
    POD_INTERFACE.with(|m| m.set(mode));
    test();
}

/// A name unique to this process and call, short enough for namespace and interface names.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `cond` until it holds; panics naming `what` after 30 s. A guard against hangs, not a
/// timing assertion.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Deterministic test data: `len` bytes of stream `seed`.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(u32::from(seed)) as u8
                ^ seed
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// Integration tests that need root are declared with `#[root_test]` (which marks them
    /// ignored when `PODSWITCH_SKIP_ROOT_TESTS=1`, so the harness's summary counts them as
    /// ignored, not passed), never with a hand-written `root_or_skip` call a `#[test]` could
    /// carry without the mark.
    #[test]
    fn root_tests_are_declared_with_the_macro() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut declared = 0;
        let mut dirs = vec![root.join("../switch/tests"), root.join("../tests/tests")];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
            for path in entries.flatten().map(|e| e.path()) {
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|x| x != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("test source");
                assert!(
                    !text.contains("root_or_skip("),
                    "{}: declare root tests with #[root_test], not root_or_skip",
                    path.display()
                );
                declared += text.matches("root_test]").count();
            }
        }
        assert!(declared > 40, "only {declared} root tests found");
    }
}
