//! `podswitch capture` against a real node (root): pods in namespaces pinging each other, the
//! capture written to a file or piped into tshark, which must decode what the switch saw.
//! Needs `tshark` (scripts/setup installs it): a test fails, never skips, without it.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};

use podswitch_dataplane::testutil::{root_test, unique, wait_for};

use crate::common;

use common::{config, tempdir, Daemon};

/// Panics with a clear message unless tshark can run.
fn need_tshark() {
    let ok = Command::new("tshark")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "these tests need tshark to decode the captures: run scripts/setup (Debian package tshark)"
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A process killed (and reaped) when dropped: a ping running in the background.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ping` from namespace `ns` to `ip` every 0.1 s until dropped.
fn ping_forever(ns: &str, ip: &str) -> Background {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-i", "0.1", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    Background(child)
}

/// Waits for `child` to exit (30 s at most) and returns its output.
fn finish(mut child: Child, what: &str) -> Output {
    wait_for(what, || child.try_wait().is_ok_and(|s| s.is_some()));
    child.wait_with_output().expect("output")
}

/// Spawns `cmd` with its standard output and error piped.
fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Lets the capture `cap` run while namespace `ns` pings `ip`; asserts that it ends well.
fn while_pinging(cap: Child, ns: &str, ip: &str) -> Output {
    let ping = ping_forever(ns, ip);
    let out = finish(cap, "the capture to end");
    drop(ping);
    assert!(out.status.success(), "capture: {}", text(&out.stderr));
    out
}

/// tshark's `ip.src ip.dst icmp.type` lines of the pcap file `file`.
fn decode(file: &str) -> String {
    let decoded = common::run(&[&["tshark", "-r", file][..], &TSHARK_FIELDS[..]].concat());
    assert!(
        decoded.status.success(),
        "tshark -r: {}",
        text(&decoded.stderr)
    );
    text(&decoded.stdout)
}

/// A node (daemon in the test's namespace) with pods a (10.244.1.10) and b (10.244.1.11),
/// which have reached each other once (their ARP caches are warm).
fn two_pods() -> (Daemon, String, String) {
    let (a, b) = (unique("cpa"), unique("cpb"));
    let dir = tempdir("pscap");
    let control = dir.join("node.sock");
    let cfg = config(
        "node-c",
        &control,
        &[("a", &a, "10.244.1.10"), ("b", &b, "10.244.1.11")],
    );
    let d = Daemon::start(&cfg, control, dir, vec![a.clone(), b.clone()]);
    assert!(
        common::cluster::ping(&a, "10.244.1.11"),
        "a pings b before the capture"
    );
    (d, a, b)
}

/// `podswitch capture ARGS` against `d`'s node.
fn capture_cmd(d: &Daemon, args: &[&str]) -> Command {
    let mut cmd = crate::common::podswitch();
    cmd.arg("capture")
        .args(args)
        .env("PODSWITCH_CONTROL", &d.control)
        .stdin(Stdio::null());
    cmd
}

/// tshark's `ip.src ip.dst icmp.type` lines of the ICMP packets in its output `fields`.
fn icmp_lines(fields: &str) -> Vec<(String, String, String)> {
    fields
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            match f.as_slice() {
                [src, dst, ty] if !ty.is_empty() => {
                    Some((src.to_string(), dst.to_string(), ty.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// Asserts that `fields` (tshark's fields output) holds echo requests from `from` to `to` and
/// replies back, and no other ICMP.
fn assert_echoes(fields: &str, from: &str, to: &str) {
    let icmp = icmp_lines(fields);
    let request = (from.to_string(), to.to_string(), "8".to_string());
    let reply = (to.to_string(), from.to_string(), "0".to_string());
    assert!(
        icmp.contains(&request),
        "no echo request {from} -> {to} in:\n{fields}"
    );
    assert!(
        icmp.contains(&reply),
        "no echo reply {to} -> {from} in:\n{fields}"
    );
    assert!(
        icmp.iter().all(|l| *l == request || *l == reply),
        "other ICMP in:\n{fields}"
    );
}

const TSHARK_FIELDS: [&str; 8] = [
    "-T",
    "fields",
    "-e",
    "ip.src",
    "-e",
    "ip.dst",
    "-e",
    "icmp.type",
];

#[root_test]
fn a_pod_capture_written_to_a_file_is_decoded_by_tshark() {
    need_tshark();
    let (d, a, _b) = two_pods();
    let file = d.dir.join("a.pcap");
    let file_arg = file.to_str().expect("utf-8 path");
    let cap = spawn_piped(&mut capture_cmd(
        &d,
        &["--pod", "a", "--count", "6", "-w", file_arg],
    ));
    let out = while_pinging(cap, &a, "10.244.1.11");
    let said = text(&out.stderr);
    assert!(
        said.contains("6 packets captured") && said.contains("packets dropped by the capture"),
        "capture's counts: {said}"
    );

    let fields = decode(file_arg);
    assert_eq!(
        fields.lines().count(),
        6,
        "six packets in the file:\n{fields}"
    );
    assert_echoes(&fields, "10.244.1.10", "10.244.1.11");

    // The same file as JSON: Ethernet frames with the pods' MACs.
    let json = common::run(&["tshark", "-r", file_arg, "-T", "json"]);
    let json = text(&json.stdout);
    assert!(
        json.contains("02:42:0a:f4:01:0a") && json.contains("02:42:0a:f4:01:0b"),
        "the pods' MACs in the frames"
    );
}

#[root_test]
fn a_capture_streams_to_tshark_through_a_pipe() {
    need_tshark();
    let (d, a, _b) = two_pods();
    let mut cap = spawn_piped(&mut capture_cmd(
        &d,
        &["--pod", "b", "--count", "4", "-w", "-"],
    ));
    let pipe = cap.stdout.take().expect("capture's stdout");
    let tshark = spawn_piped(
        Command::new("tshark")
            .args([&["-r", "-"][..], &TSHARK_FIELDS[..]].concat())
            .stdin(pipe),
    );
    while_pinging(cap, &a, "10.244.1.11");
    let decoded = finish(tshark, "tshark reading the pipe");
    assert!(
        decoded.status.success(),
        "tshark -r -: {}",
        text(&decoded.stderr)
    );
    let fields = text(&decoded.stdout);
    assert_eq!(fields.lines().count(), 4, "four packets:\n{fields}");
    assert_echoes(&fields, "10.244.1.10", "10.244.1.11");
}

#[root_test]
fn a_closed_reader_or_ctrl_c_stops_the_capture_and_the_node_stops_copying() {
    let (mut d, a, _b) = two_pods();
    let mut cap = spawn_piped(&mut capture_cmd(&d, &["--pod", "a"]));
    let ping = ping_forever(&a, "10.244.1.11");
    // Read the global header and the first record, then go away like `| head -c 100`.
    let mut pipe = cap.stdout.take().expect("capture's stdout");
    let mut first = [0u8; 40];
    pipe.read_exact(&mut first)
        .expect("the pcap header and a record header");
    assert_eq!(&first[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "pcap magic");
    drop(pipe);
    let out = finish(cap, "the capture to notice its closed output");
    drop(ping);
    assert!(out.status.success(), "capture: {}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("output closed"), "{said}");

    // Ctrl-C (SIGINT) while writing a file: a clean stop, the records so far kept.
    let file = d.dir.join("int.pcap");
    let file_arg = file.to_str().expect("utf-8 path");
    let cap = spawn_piped(&mut capture_cmd(&d, &["--pod", "b", "-w", file_arg]));
    let ping = ping_forever(&a, "10.244.1.11");
    wait_for("a record in the file", || {
        std::fs::metadata(&file).is_ok_and(|m| m.len() > 24)
    });
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(cap.id() as libc::pid_t, libc::SIGINT) };
    let out = finish(cap, "the capture to stop on SIGINT");
    drop(ping);
    assert!(out.status.success(), "capture: {}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("stopped by the client"), "{said}");

    // The node says when it stopped copying, for both.
    let log = d.stop();
    let log = text(&log.stderr);
    for pod in ["a", "b"] {
        assert!(
            log.contains(&format!("capture of pod \"{pod}\" started"))
                && log.contains(&format!("capture of pod \"{pod}\" stopped")),
            "daemon log:\n{log}"
        );
    }
}

#[root_test]
fn captures_of_what_is_not_there_are_refused_by_name() {
    let (d, _a, _b) = two_pods();
    let refused = |args: &[&str], needle: &str| {
        let out = capture_cmd(&d, args)
            .args(["-w", "/dev/null"])
            .output()
            .expect("podswitch capture");
        let said = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(said.contains(needle), "{args:?}: {said}");
    };
    refused(&[], "name the pod (--pod NAME) or the peer (--peer NAME)");
    refused(&["--pod", "nope"], "no pod named \"nope\"");
    refused(&["--peer", "nope"], "no peer named \"nope\"");
    refused(
        &["--pod", "a", "--snaplen", "0"],
        "snaplen 0 is not between 1 and 262144",
    );
    refused(
        &["--pod", "a", "--snaplen", "1000000"],
        "snaplen 1000000 is not between 1 and 262144",
    );
    // A terminal is no place for pcap: without -w, standard output must not be one. (The
    // test's standard output is a pipe, so this only checks that -w is optional.)
    let out = capture_cmd(&d, &["--pod", "a", "--count", "0"])
        .output()
        .expect("podswitch capture");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        &out.stdout[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "pcap on stdout"
    );
}

#[root_test]
fn a_peer_capture_shows_the_inner_frames_of_the_tunnel() {
    need_tshark();
    let name = unique("clab");
    let (_guard, up) = common::lab_up(&name, 2, 1);
    assert!(up.status.success(), "lab up: {}", text(&up.stderr));
    let n1p1 = format!("{name}-n1p1");
    assert!(
        common::cluster::ping(&n1p1, "10.244.2.10"),
        "node 1's pod pings node 2's"
    );
    let dir = tempdir("pscapl");
    let file = dir.join("peer.pcap");
    let file_arg = file.to_str().expect("utf-8 path");
    let control = format!("/run/podswitch/{name}/node1.sock");
    let cap = spawn_piped(
        crate::common::podswitch()
            .args([
                "capture",
                "--peer",
                &format!("{name}-node2"),
                "--count",
                "6",
            ])
            .args(["-w", file_arg, "--control", &control])
            .stdin(Stdio::null()),
    );
    while_pinging(cap, &n1p1, "10.244.2.10");
    let fields = decode(file_arg);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(fields.lines().count(), 6, "six inner frames:\n{fields}");
    assert_echoes(&fields, "10.244.1.10", "10.244.2.10");
}

#[root_test]
fn tcp_superframes_are_captured_as_one_large_packet_each() {
    need_tshark();
    let (d, a, b) = two_pods();
    let server = Background(
        Command::new("ip")
            .args(["netns", "exec", &b, "iperf3", "-s", "-1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
    );
    wait_for("iperf3 server", || {
        common::run(&[
            "ip",
            "netns",
            "exec",
            &b,
            "sh",
            "-c",
            "ss -ltn | grep -q 5201",
        ])
        .status
        .success()
    });
    let file = d.dir.join("tcp.pcap");
    let file_arg = file.to_str().expect("utf-8 path");
    let cap = spawn_piped(&mut capture_cmd(
        &d,
        &[
            "--pod",
            "a",
            "--count",
            "200",
            "--snaplen",
            "128",
            "-w",
            file_arg,
        ],
    ));
    let client = common::run(&[
        "ip",
        "netns",
        "exec",
        &a,
        "iperf3",
        "-c",
        "10.244.1.11",
        "-t",
        "2",
    ]);
    assert!(client.status.success(), "iperf3: {}", text(&client.stderr));
    let out = finish(cap, "the capture of 200 frames");
    drop(server);
    assert!(out.status.success(), "capture: {}", text(&out.stderr));
    let decoded = common::run(&[
        "tshark",
        "-r",
        file_arg,
        "-T",
        "fields",
        "-e",
        "frame.len",
        "-e",
        "frame.cap_len",
    ]);
    assert!(
        decoded.status.success(),
        "tshark: {}",
        text(&decoded.stderr)
    );
    let lens: Vec<(u32, u32)> = text(&decoded.stdout)
        .lines()
        .filter_map(|l| {
            let (len, cap) = l.split_once('\t')?;
            Some((len.parse().ok()?, cap.parse().ok()?))
        })
        .collect();
    assert_eq!(lens.len(), 200, "every record decoded");
    assert!(
        lens.iter().all(|&(len, cap)| cap == len.min(128)),
        "cut to the snap length: {lens:?}"
    );
    assert!(
        lens.iter().any(|&(len, _)| len > 1514),
        "a superframe (longer than a wire frame) among them: {lens:?}"
    );
}
