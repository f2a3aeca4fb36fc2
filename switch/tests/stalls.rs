//! The stall detector: a data plane that does not run for a while under traffic (here: the
//! daemon stopped with SIGSTOP, as a thread that does not get its CPU) counts a stall and
//! says so in `status` and its log.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{config, netns_add, tempdir, Daemon};
use podswitch::testutil::{root_or_skip, unique, wait_for};

#[test]
#[cfg_attr(
    skip_root_tests,
    ignore = "needs root: PODSWITCH_SKIP_ROOT_TESTS=1 is set"
)]
fn a_data_plane_that_does_not_run_under_traffic_counts_a_stall() {
    if !root_or_skip("a_data_plane_that_does_not_run_under_traffic_counts_a_stall") {
        return;
    }
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
    // Pod a sends datagrams to pod b without pause for 3 s: the worker never sleeps.
    let mut blast = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            "python3",
            "-c",
            "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nend = time.time() + 3\nwhile time.time() < end:\n    s.sendto(b'x' * 64, ('10.244.1.11', 9))\n",
        ])
        .spawn()
        .expect("python3");
    wait_for("traffic through the switch", || {
        String::from_utf8_lossy(&d.ctl(&["pod", "list"]).stdout).contains("10.244.1.10")
    });
    std::thread::sleep(Duration::from_millis(500));
    let pid = d.pid() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let _ = blast.wait();
    wait_for("the stall counted", || {
        status(&d).contains("data-plane stalls")
    });
    let out = d.stop();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("data plane stalled"), "logged: {log}");
}
