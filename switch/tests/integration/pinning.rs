//! The data-plane threads run on the CPUs they are pinned to, and only when asked. The one
//! module of its test binary that starts a switch in the test process itself, so no other
//! switch's threads share the names looked for.

use crate::common;

use podswitch::pipeline::NodeConfig;
use podswitch::switch::{allowed_cpus, Switch, SwitchConfig};
use podswitch::wire::EthernetAddress;

/// `Cpus_allowed_list` of every thread of this process named `name`.
fn affinity_of_threads(name: &str) -> Vec<String> {
    affinity_of_threads_of("self", name)
}

/// `Cpus_allowed_list` of every thread of process `pid` named `name`.
fn affinity_of_threads_of(pid: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            out.push(line["Cpus_allowed_list:".len()..].trim().to_string());
        }
    }
    out
}

#[test]
fn workers_run_on_the_cpus_they_are_pinned_to() {
    let allowed = allowed_cpus();
    assert!(!allowed.is_empty(), "the process runs on some CPU");
    let last = *allowed.last().expect("a CPU");
    let first = allowed[0];
    let mut cfg = SwitchConfig::new(NodeConfig::new(
        "10.244.1.0/24".parse().expect("cidr"),
        EthernetAddress([2, 0xee, 0, 0, 0, 1]),
    ));
    cfg.workers = 2;
    cfg.cpus = vec![last, first];
    let sw = Switch::start(cfg).expect("switch");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let want = (vec![last.to_string()], vec![first.to_string()]);
    let mut got = (Vec::new(), Vec::new());
    while std::time::Instant::now() < deadline {
        got = (
            affinity_of_threads("podswitch-dp"),
            affinity_of_threads("podswitch-dp1"),
        );
        if got == want {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(got, want, "worker 0 on CPU {last}, worker 1 on CPU {first}");
    drop(sw);
    assert!(
        affinity_of_threads("podswitch-dp").is_empty(),
        "the workers stop with the switch"
    );
}

#[podswitch_dataplane::testutil::root_test]
fn a_node_pins_its_worker_only_when_asked() {
    use podswitch_dataplane::testutil::{unique, wait_for};
    let mine = std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| {
            l.strip_prefix("Cpus_allowed_list:")
                .map(|v| v.trim().to_string())
        })
        .expect("Cpus_allowed_list");
    let allowed = allowed_cpus();
    let last = *allowed.last().expect("a CPU");
    // Two nodes on one machine (as `lab` runs them): by default neither worker is pinned,
    // so neither is tied to a CPU the other (or anything else) keeps busy.
    let mut nodes = Vec::new();
    for cpus in ["", &format!("cpus = [{last}]\n")] {
        let dir = common::tempdir("pin");
        let control = dir.join("ctl.sock");
        let cfg = common::config(&unique("pin"), &control, &[])
            .replace("mtu = 1450\n", &format!("mtu = 1450\n{cpus}"));
        nodes.push(common::Daemon::start(&cfg, control, dir, Vec::new()));
    }
    let mut got = Vec::new();
    wait_for("the workers' affinity", || {
        got = nodes
            .iter()
            .map(|d| affinity_of_threads_of(&d.pid().to_string(), "podswitch-dp"))
            .collect();
        got.iter().all(|a| a.len() == 1)
    });
    assert_eq!(got[0], vec![mine.clone()], "unpinned by default");
    assert_eq!(got[1], vec![last.to_string()], "pinned when asked");
}
