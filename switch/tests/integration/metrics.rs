//! `node.metrics` on a real node (`podswitch run`, pods in namespaces behind TAPs): the
//! Prometheus text passes `promtool check metrics` and its counters follow real traffic and
//! real drops; the web view, in a real headless Chromium, shows the pods and live counters.
//! Needs root (see `#[root_test]`), `promtool` (Debian's `prometheus`) and `chromium`
//! (`scripts/setup` installs both): a missing tool fails the test, it is never skipped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use podswitch::control::{Request, Response};
use podswitch_dataplane::testutil::{root_test, unique, wait_for};

use crate::common;

use common::{config, run, run_with_stdin, tempdir, Daemon};

/// A port free on 127.0.0.1 now (the daemon binds it a moment later).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("addr").port()
}

/// A node with pods `a` (10.244.1.10) and `b` (10.244.1.11), serving metrics on a free port.
fn node(tag: &str) -> (Daemon, SocketAddr, String, String) {
    let (na, nb) = (unique(&format!("{tag}a")), unique(&format!("{tag}b")));
    let dir = tempdir(tag);
    let control = dir.join("node.sock");
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let cfg = config(
        "node-m",
        &control,
        &[("a", &na, "10.244.1.10"), ("b", &nb, "10.244.1.11")],
    )
    .replace(
        "host_interface = \"\"\n",
        &format!("host_interface = \"\"\nmetrics = \"{addr}\"\n"),
    );
    let d = Daemon::start(&cfg, control, dir, vec![na.clone(), nb.clone()]);
    wait_for("the metrics endpoint", || {
        get(addr, "GET", "/metrics").is_ok_and(|(status, _)| status == 200)
    });
    (d, addr, na, nb)
}

/// One HTTP/1.1 request (`Connection: close`): the status and the body.
fn get(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "GET", "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `series` (name and labels, as written) in `text`; 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn ping(ns: &str, ip: &str, count: u32) -> bool {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        ip,
    ])
    .status
    .success()
}

/// Runs `promtool check metrics` on `text` (Debian's prometheus package; a missing promtool
/// fails the test).
fn promtool_check(text: &str) {
    let out = run_with_stdin(&["promtool", "check", "metrics"], text);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the text ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `count` frames with a source MAC that is not the pod's out of `eth0` of namespace
/// `ns` (a packet socket, as any process in the pod could).
const SEND_SPOOFED_PY: &str = r#"
import socket, sys
count = int(sys.argv[1])
frame = bytes.fromhex("ffffffffffff" + "020000000099" + "0800") + bytes(46)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(count):
    s.send(frame)
"#;

#[root_test]
fn metrics_pass_promtool_and_follow_pod_traffic_and_drops_by_reason() {
    let (d, addr, na, _nb) = node("pm");
    let before = scrape(addr);
    promtool_check(&before);
    assert!(
        before.contains("podswitch_build_info{version=\""),
        "{before}"
    );
    assert_eq!(value(&before, "podswitch_pods"), 2.0);

    // Traffic: pod a pings pod b.
    assert!(ping(&na, "10.244.1.11", 3), "a pings b");
    let after = scrape(addr);
    promtool_check(&after);
    for (series, at_least) in [
        ("podswitch_pod_rx_packets_total{pod=\"a\"}", 3.0),
        ("podswitch_pod_tx_packets_total{pod=\"a\"}", 3.0),
        ("podswitch_pod_rx_packets_total{pod=\"b\"}", 3.0),
        ("podswitch_pod_tx_packets_total{pod=\"b\"}", 3.0),
        ("podswitch_pod_rx_bytes_total{pod=\"a\"}", 3.0 * 98.0),
        ("podswitch_frames_forwarded_total", 6.0),
    ] {
        let moved = value(&after, series) - value(&before, series);
        assert!(
            moved >= at_least,
            "{series} moved by {moved}, want >= {at_least}\n{after}"
        );
    }

    // The worker's time: some in rounds that moved frames, most of it idle.
    let busy = value(&after, "podswitch_worker_busy_seconds_total{worker=\"0\"}");
    let idle = value(&after, "podswitch_worker_idle_seconds_total{worker=\"0\"}");
    assert!(busy > 0.0 && idle > busy, "busy {busy} s, idle {idle} s");

    // Frames from pod a with a MAC that is not its own: dropped as spoofed_mac, counted
    // node-wide and for pod a.
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &na,
        "python3",
        "-c",
        SEND_SPOOFED_PY,
        "5",
    ]);
    assert!(
        out.status.success(),
        "send spoofed frames: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod_series = "podswitch_pod_dropped_total{pod=\"a\",reason=\"spoofed_mac\"}";
    let node_series = "podswitch_frames_dropped_total{reason=\"spoofed_mac\"}";
    wait_for("the spoofed frames counted", || {
        value(&scrape(addr), pod_series) >= 5.0
    });
    let dropped = scrape(addr);
    promtool_check(&dropped);
    assert_eq!(value(&dropped, pod_series), 5.0, "{dropped}");
    assert_eq!(value(&dropped, node_series), 5.0, "{dropped}");
    assert_eq!(
        value(
            &dropped,
            "podswitch_pod_dropped_total{pod=\"b\",reason=\"spoofed_mac\"}"
        ),
        0.0,
        "pod b dropped nothing"
    );

    // The control protocol says the same.
    let call = |req: &Request| {
        podswitch::control::call(&d.control, req, Duration::from_secs(10)).expect("control")
    };
    match call(&Request::PodList) {
        Response::Pods(pods) => {
            let a = pods.iter().find(|p| p.spec.name == "a").expect("pod a");
            assert_eq!(a.drops.get("spoofed_mac"), Some(&5), "{:?}", a.drops);
            let b = pods.iter().find(|p| p.spec.name == "b").expect("pod b");
            assert!(b.drops.is_empty(), "{:?}", b.drops);
        }
        other => panic!("{other:?}"),
    }
    match call(&Request::Status) {
        Response::Status {
            drops_by_reason, ..
        } => assert_eq!(drops_by_reason.get("spoofed_mac"), Some(&5)),
        other => panic!("{other:?}"),
    }
    // And the command line, as an operator reads it.
    let text = |args: &[&str]| String::from_utf8_lossy(&d.ctl(args).stdout).into_owned();
    let status = text(&["status"]);
    assert!(
        status.contains("dropped by reason: ") && status.contains("spoofed_mac 5"),
        "{status}"
    );
    let drops = text(&["pod", "list", "--drops"]);
    let line = |pod: &str| {
        drops
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pod))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    // (Other reasons may show up too: a pod's first frames can race its attachment.)
    let shown = |pod: &str| -> (u64, Vec<(String, u64)>) {
        let l = line(pod).unwrap_or_else(|| panic!("no line for pod {pod}: {drops}"));
        let mut words = l.split_whitespace().skip(1);
        let total = words.next().and_then(|w| w.parse().ok()).expect("total");
        let rest: Vec<&str> = words.collect();
        let reasons = rest
            .join(" ")
            .split(", ")
            .filter(|r| *r != "-" && !r.is_empty())
            .map(|r| {
                let (name, n) = r.rsplit_once(' ').expect("reason and count");
                (name.to_string(), n.parse().expect("count"))
            })
            .collect();
        (total, reasons)
    };
    let (total_a, reasons_a) = shown("a");
    assert!(reasons_a.contains(&("spoofed_mac".into(), 5)), "{drops}");
    assert_eq!(
        total_a,
        reasons_a.iter().map(|r| r.1).sum::<u64>(),
        "{drops}"
    );
    let (total_b, reasons_b) = shown("b");
    assert!(reasons_b.iter().all(|r| r.0 != "spoofed_mac"), "{drops}");
    assert_eq!(
        total_b,
        reasons_b.iter().map(|r| r.1).sum::<u64>(),
        "{drops}"
    );

    // The JSON state, and what the server refuses.
    let (status, body) = get(addr, "GET", "/api/v1/state").expect("state");
    assert_eq!(status, 200);
    let state: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(state["node"]["name"], "node-m");
    assert_eq!(state["pods"][0]["name"], "a");
    assert_eq!(state["pods"][0]["drops"]["spoofed_mac"], 5);
    assert_eq!(get(addr, "GET", "/nowhere").expect("404").0, 404);
    assert_eq!(get(addr, "POST", "/metrics").expect("405").0, 405);
    assert_eq!(get(addr, "HEAD", "/").expect("head").0, 200);
}

/// Chromium's DOM of the page after its script has fetched the state (fails loudly if
/// chromium is missing).
fn dump_dom(addr: SocketAddr, profile: &Path) -> String {
    let out = chromium(addr, profile, &["--dump-dom"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chromium(addr: SocketAddr, profile: &Path, extra: &[&str]) -> std::process::Output {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("http://{addr}/"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): install Debian's chromium package (scripts/setup)")
        });
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The number in the element whose id is `id` (`<td id="..." ...>123</td>`).
fn shown(dom: &str, id: &str) -> u64 {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id} in the page:\n{dom}"));
    let rest = &dom[at..];
    let text = rest
        .split_once('>')
        .and_then(|(_, t)| t.split_once('<'))
        .map(|(t, _)| t)
        .unwrap_or_default();
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{id} shows {text:?}"))
}

#[root_test]
fn web_view_shows_the_pods_and_live_counters_in_headless_chromium() {
    let (_d, addr, na, _nb) = node("pw");
    let profile = tempdir("chromium");
    let first = dump_dom(addr, &profile);
    assert!(
        first.contains("node-m"),
        "the node's name is shown:\n{first}"
    );
    for name in ["a", "b"] {
        assert!(
            first.contains(&format!("<td class=\"pod-name\">{name}</td>")),
            "pod {name} is shown:\n{first}"
        );
    }
    let rx_before = shown(&first, "pod-a-rx-packets");

    assert!(ping(&na, "10.244.1.11", 3), "a pings b");
    let second = dump_dom(addr, &profile);
    let rx_after = shown(&second, "pod-a-rx-packets");
    assert!(
        rx_after >= rx_before + 3,
        "pod a's rx packets shown went from {rx_before} to {rx_after}"
    );

    let shot = profile.join("page.png");
    chromium(
        addr,
        &profile,
        &[
            "--window-size=1280,900",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot is written");
    assert!(png.len() > 1000, "a screenshot of {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let _ = std::fs::remove_dir_all(&profile);
}

#[root_test]
fn a_node_in_a_bare_namespace_serves_metrics_there_with_its_host_interface() {
    // `ip netns add` leaves the namespace's loopback down: the daemon brings it up, so the
    // metrics on 127.0.0.1 answer there.
    let (node_ns, pod_ns) = (unique("mbare"), unique("mbarep"));
    common::netns_add(&node_ns);
    let dir = tempdir("mbare");
    let control = dir.join("node.sock");
    let cfg = format!(
        "[node]\nname = \"node-bare\"\npod_cidr = \"10.244.1.0/24\"\ncontrol = \"{}\"\nnetns = \"{node_ns}\"\nmetrics = \"127.0.0.1:9469\"\n\n[[pods]]\nname = \"a\"\nnetns = \"{pod_ns}\"\nip = \"10.244.1.10\"\n",
        control.display()
    );
    let _d = Daemon::start(&cfg, control, dir, vec![node_ns.clone(), pod_ns]);
    let state = || {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &node_ns,
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:9469/api/v1/state",
        ]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten()
    };
    wait_for("the state on 127.0.0.1 in the node's namespace", || {
        state().is_some()
    });
    // The node itself pings its pod, through its host interface: counted there.
    assert!(ping(&node_ns, "10.244.1.10", 3), "the node pings its pod");
    let s = state().expect("state");
    assert_eq!(s["host"]["ifname"], "podsw0", "{s}");
    let rx = s["host"]["traffic"]["rx_packets"].as_u64().unwrap_or(0);
    let tx = s["host"]["traffic"]["tx_packets"].as_u64().unwrap_or(0);
    assert!(rx >= 3 && tx >= 3, "host interface counters: {}", s["host"]);
    // The web view, in headless chromium run in the node's namespace, has a row for it.
    let profile = tempdir("chromium");
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &node_ns,
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--virtual-time-budget=3000",
        &format!("--user-data-dir={}", profile.display()),
        "--dump-dom",
        "http://127.0.0.1:9469/",
    ]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<td class=\"host-name\">podsw0</td>"),
        "the host interface's row:\n{dom}"
    );
    assert!(shown(&dom, "pod-podsw0-rx-packets") >= 3, "{dom}");
    let _ = std::fs::remove_dir_all(&profile);
}
