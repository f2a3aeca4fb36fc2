//! Memory under a flood, in a test binary of its own: it measures this process's resident
//! memory, which tests running beside it in one process would change (each binary's tests run
//! in parallel; cargo runs the binaries one after the other). Needs root (`#[root_test]`).

#[path = "pods/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::SocketAddrV4;

use common::real::*;
use common::*;

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .expect("VmRSS")
}

/// Sends `count` broadcast frames out of `eth0` in namespace `ns`, each from another source
/// MAC (locally administered, unicast); returns how many the kernel took.
fn flood_source_macs(ns: &str, count: u32) -> u32 {
    let fd = socket_in(ns, || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let name = std::ffi::CString::new("eth0").expect("name");
        // SAFETY: if_nametoindex reads the NUL-terminated name it is given.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: bind(2) with a pointer to a live sockaddr_ll and its size.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    });
    let mut frame = [0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let mut sent = 0;
    for i in 0..count {
        frame[6..12].copy_from_slice(&[
            0x06,
            0xaa,
            (i >> 24) as u8,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ]);
        // SAFETY: send(2) from a live buffer of its length on an open socket.
        let n = unsafe {
            libc::send(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                frame.as_ptr().cast(),
                frame.len(),
                0,
            )
        };
        if n == frame.len() as isize {
            sent += 1;
        }
    }
    sent
}

/// Held by the tests that measure this process's memory: two of them at once (the same test in
/// both pod interface modes) would count each other's buffers.
static MEASURES_MEMORY: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[root_test]
fn a_pod_sending_from_a_million_source_macs_is_dropped_bounded_and_isolated() {
    use podswitch::control::{ControlHandler, Request, Response};
    let _alone = MEASURES_MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    let (na, nb, nc) = (unique("pfa"), unique("pfb"), unique("pfc"));
    let node = std::sync::Arc::new(start(&[plan(&na, 10), plan(&nb, 11), plan(&nc, 12)]));
    let handler = podswitch::control::NodeHandler::new(std::sync::Arc::clone(&node));
    let fdb = || match handler.handle(Request::Fdb) {
        Response::Fdb(entries) => entries.len(),
        other => panic!("fdb: {other:?}"),
    };
    assert!(ping(&nb, "10.244.1.12", 1));
    // Pods b and c move 32 MiB, bytes verified, while pod a floods. The test's own buffers
    // exist (touched) before the memory is measured and live until it is measured again: only
    // what the switch takes counts.
    const LEN: usize = 32 << 20;
    let sent_bytes = pattern(3, LEN);
    let got = vec![1u8; LEN];
    let (entries, rss) = (fdb(), rss_kib());

    let listener = listen_in(&nc, SocketAddrV4::new(ip(12), 5301));
    let server = std::thread::spawn(move || {
        let mut got = got;
        let (mut conn, _) = listener.accept().expect("accept");
        conn.read_exact(&mut got).expect("server reads");
        got
    });
    let mut conn = connect_from(&nb, SocketAddrV4::new(ip(12), 5301));
    let flood_ns = na.clone();
    let flood = std::thread::spawn(move || flood_source_macs(&flood_ns, 1_000_000));
    conn.write_all(&sent_bytes)
        .expect("b writes during the flood");
    let sent = flood.join().expect("flood");
    let got = server.join().expect("server");
    assert!(got == sent_bytes, "b -> c bytes intact");

    let a = node.pod("pod10").expect("pod a").counters;
    let spoofed = node
        .drops()
        .into_iter()
        .find(|(r, _)| r.label() == "spoofed_mac")
        .map_or(0, |(_, n)| n);
    assert!(sent > 900_000, "the flood left pod a: {sent}");
    assert!(
        a.rx_frames > 100_000 && spoofed + 10 >= a.rx_frames,
        "what the switch read from pod a was dropped as spoofed: rx {} spoofed {spoofed}",
        a.rx_frames
    );
    assert_eq!(fdb(), entries, "nothing learned from a pod's port");
    let grown = rss_kib().saturating_sub(rss);
    assert!(grown < 32 * 1024, "memory bounded: grew {grown} KiB");
    drop((got, sent_bytes));
    assert!(ping(&nb, "10.244.1.12", 1), "b still reaches c");
    assert!(
        ping(&na, "10.244.1.11", 1),
        "and a, with its own MAC, still reaches b"
    );
}
