//! The data-plane threads run on the CPUs they are pinned to. In its own test binary (its own
//! process), so no other switch's threads share the names looked for.

use podswitch::dataplane::{allowed_cpus, Switch, SwitchConfig};
use podswitch::pipeline::NodeConfig;
use podswitch::wire::EthernetAddress;

/// `Cpus_allowed_list` of every thread of this process named `name`.
fn affinity_of_threads(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
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
