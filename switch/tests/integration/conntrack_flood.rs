//! Connection tracking under a SYN flood from pods (real daemon, real pod kernels): one pod
//! floods a Service's address with SYNs and resets the backend's answers (as a pod's kernel
//! does), another floods and never resets (its RSTs dropped by nftables, as a hostile pod
//! would); a third pod's connections through the same Service still work, and no client holds
//! more than its share of the table.
//!
//! Before the fix, a backend's SYN-ACK alone made a flow `established` for a day: the flood
//! filled the table and every new Service connection on the node timed out.

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{config, netns_add, tempdir, Daemon};
use podswitch_dataplane::testutil::{root_test, unique};

const VIP: &str = "10.96.0.10";
/// `node.conntrack_max` here: small enough for a flood of a few seconds to fill it.
const MAX: usize = 1024;

/// Sends `count` TCP SYNs from random source ports to VIP:80, from inside `ns` (a raw
/// socket: no connect, no retransmission).
fn syn_flood(ns: &str, src: &str, count: u32) {
    let script = format!(
        r#"
import random, socket, struct
src, dst = "{src}", "{VIP}"
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
for _ in range({count}):
    sport = random.randint(1024, 65535)
    h = struct.pack("!HHIIBBHHH", sport, 80, random.getrandbits(32), 0, 5 << 4, 0x02, 65535, 0, 0)
    h = h[:16] + struct.pack("!H", csum(pseudo + h)) + h[18:]
    s.sendto(h, (dst, 0))
"#
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "flood from {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Opens a TCP connection to VIP:80 from `ns`, sends a line and reads the backend's answer.
fn ask(ns: &str) -> Result<String, String> {
    let script = format!(
        r#"
import socket
c = socket.create_connection(("{VIP}", 80), timeout=5)
c.sendall(b"hello\n")
print(c.recv(100).decode().strip())
"#
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// Flows per client address, from `podswitch conntrack`.
fn flows_per_client(d: &Daemon) -> BTreeMap<String, usize> {
    let out = d.ctl(&["conntrack"]);
    assert!(out.status.success(), "conntrack: {out:?}");
    let mut per = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        if let Some(client) = line.split_whitespace().nth(1) {
            let ip = client.split(':').next().unwrap_or_default().to_string();
            *per.entry(ip).or_default() += 1;
        }
    }
    per
}

#[root_test]
fn a_syn_flood_from_pods_leaves_other_pods_service_connections_working() {
    let dir = tempdir("ctflood");
    let control = dir.join("ctl.sock");
    let (resets, silent, client, backend) =
        (unique("ctr"), unique("cts"), unique("ctc"), unique("ctb"));
    for ns in [&resets, &silent, &client, &backend] {
        netns_add(ns);
    }
    let pods = [
        ("resets", resets.as_str(), "10.244.1.10"),
        ("silent", silent.as_str(), "10.244.1.11"),
        ("client", client.as_str(), "10.244.1.12"),
        ("backend", backend.as_str(), "10.244.1.13"),
    ];
    let cfg = format!(
        "{}\n[[services]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nbackends = [\"10.244.1.13:8080\"]\n",
        config(&unique("ctflood"), &control, &pods).replace(
            "mtu = 1450\n",
            &format!("mtu = 1450\nconntrack_max = {MAX}\n")
        )
    );
    let d = Daemon::start(
        &cfg,
        control,
        dir,
        vec![
            resets.clone(),
            silent.clone(),
            client.clone(),
            backend.clone(),
        ],
    );
    // The backend: answers each connection with a line; a large backlog (the flood's
    // half-open connections are the kernel's, SYN cookies answer past it).
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &backend,
            "python3",
            "-c",
            r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4096)
while True:
    c, _ = s.accept()
    try:
        c.recv(100); c.sendall(b"served\n")
    except OSError:
        pass
    c.close()
"#,
        ])
        .spawn()
        .expect("backend server");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(server);
    podswitch_dataplane::testutil::wait_for("the service to answer", || {
        ask(&client).is_ok_and(|a| a == "served")
    });
    // The silent pod never resets: its kernel's RSTs are dropped on the way out.
    let nft = Command::new("ip")
        .args([
            "netns", "exec", &silent, "nft", "add table ip f; add chain ip f out { type filter hook output priority 0; }; add rule ip f out tcp flags rst drop",
        ])
        .output()
        .expect("nft");
    assert!(nft.status.success(), "nft: {nft:?}");

    // Each floods with eight times the whole table.
    for _ in 0..2 {
        syn_flood(&resets, "10.244.1.10", (MAX * 4) as u32);
        syn_flood(&silent, "10.244.1.11", (MAX * 4) as u32);
    }
    // The flood's last frames are still queued at the pods' TAPs when the senders exit: the
    // table is read once the switch has taken them all (a listing is no snapshot: a flow
    // evicted for a new one while it is read may show beside it).
    let rx = |d: &Daemon| -> String {
        let s = String::from_utf8_lossy(&d.ctl(&["status"]).stdout).to_string();
        s.split("frames rx ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .unwrap_or("")
            .to_string()
    };
    let mut last = rx(&d);
    podswitch_dataplane::testutil::wait_for("the switch to take the whole flood", || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = rx(&d);
        std::mem::replace(&mut last, now) == last
    });
    let per = flows_per_client(&d);
    let total: usize = per.values().sum();
    assert!(total <= MAX, "at most the table: {per:?}");
    for flooder in ["10.244.1.10", "10.244.1.11"] {
        assert!(
            per.get(flooder).copied().unwrap_or(0) <= MAX / 4,
            "{flooder} holds at most its share: {per:?}"
        );
    }
    // No flooder's flow is established: the backend's SYN-ACK alone does not.
    let list = String::from_utf8_lossy(&d.ctl(&["conntrack"]).stdout).to_string();
    assert!(
        !list
            .lines()
            .any(|l| l.contains("10.244.1.11:") && l.contains("established")),
        "{list}"
    );
    // The other pod's connections through the service work, each of them, during a flood.
    for i in 0..20 {
        if i % 5 == 0 {
            syn_flood(&silent, "10.244.1.11", (MAX / 2) as u32);
        }
        assert_eq!(ask(&client), Ok("served".into()), "connection {i}");
    }
    // The flood was refused or evicted, never let to take the others' room: the node counts
    // evictions.
    let status = String::from_utf8_lossy(&d.ctl(&["status"]).stdout).to_string();
    assert!(
        !status.contains("conntrack_full"),
        "no new flow found the table full: {status}"
    );
}
