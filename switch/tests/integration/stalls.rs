//! The stall detector: a data plane that does not run for a while under traffic (here: the
//! daemon stopped with SIGSTOP, as a thread that does not get its CPU) counts a stall and
//! says so in `status` and its log.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{config, netns_add, tempdir, Daemon};
use podswitch_dataplane::testutil::{root_test, unique, wait_for};

#[root_test]
fn a_data_plane_that_does_not_run_under_traffic_counts_a_stall() {
    let dir = tempdir("stall");
    let control = dir.join("ctl.sock");
    let (a, b) = (unique("sta"), unique("stb"));
    netns_add(&a);
    netns_add(&b);
    let cfg = config(
        &unique("stall"),
        &control,
        &[("a", &a, "10.244.1.10"), ("b", &b, "10.244.1.11")],
    );
    let mut d = Daemon::start(&cfg, control, dir, vec![a.clone(), b.clone()]);
    let status = |d: &Daemon| String::from_utf8_lossy(&d.ctl(&["status"]).stdout).to_string();
    assert!(!status(&d).contains("stalls"), "none yet: {}", status(&d));
    // Pod a sends datagrams to the gateway without pause (until killed, 20 s at most): the
    // worker never sleeps. (The gateway, not pod b: in veth mode the kernel would carry pod
    // to pod traffic without the switch.)
    let mut blast = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            "python3",
            "-c",
            "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nend = time.time() + 20\nwhile time.time() < end:\n    s.sendto(b'x' * 64, ('10.244.1.1', 9))\n",
        ])
        .spawn()
        .expect("python3");
    let rx = |d: &Daemon| -> u64 {
        let s = status(d);
        s.split("frames rx ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    wait_for("traffic through the switch", || rx(&d) > 10_000);
    let pid = d.pid() as libc::pid_t;
    // Stopped while it works (the traffic leaves it no time to sleep; should it be asleep at
    // that instant all the same, its wake-up is no stall: tried again, up to five times).
    for _ in 0..5 {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(400));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        std::thread::sleep(Duration::from_millis(100));
        if status(&d).contains("data-plane stalls") {
            break;
        }
    }
    let _ = blast.kill();
    let _ = blast.wait();
    assert!(status(&d).contains("data-plane stalls"), "{}", status(&d));
    let out = d.stop();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("data plane stalled"), "logged: {log}");
}
