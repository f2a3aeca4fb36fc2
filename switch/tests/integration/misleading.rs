//! Small things that misled users: each error says what is wrong, and a listing piped into a
//! reader that goes away ends quietly.

use crate::common;

use std::process::Command;

use common::{config, netns_add, run, tempdir, Daemon, BIN, LAB};
use podswitch_dataplane::testutil::{root_test, unique};

#[test]
fn lab_down_of_a_lab_that_is_not_up_fails_and_says_so() {
    let name = unique("nolab");
    let out = run(&[LAB, "down", "--name", &name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains(&format!("no lab called {name:?} is up")),
        "{err}"
    );
}

#[root_test]
fn a_listing_piped_into_a_reader_that_goes_ends_quietly() {
    let dir = tempdir("epipe");
    let control = dir.join("ctl.sock");
    let pods: Vec<(String, String, String)> = (0..3)
        .map(|i| {
            (
                format!("p{i}"),
                unique("ep"),
                format!("10.244.1.{}", 10 + i),
            )
        })
        .collect();
    for p in &pods {
        netns_add(&p.1);
    }
    let list: Vec<(&str, &str, &str)> = pods
        .iter()
        .map(|(n, ns, ip)| (n.as_str(), ns.as_str(), ip.as_str()))
        .collect();
    let d = Daemon::start(
        &config(&unique("epipe"), &control, &list),
        control.clone(),
        dir,
        pods.iter().map(|p| p.1.clone()).collect(),
    );
    // `true` reads nothing and exits at once: the listing writes into a closed pipe.
    let err_file = d.dir.join("stderr");
    for cmd in [
        "pod list",
        "fdb",
        "status",
        "conntrack",
        "service list",
        "peer list",
    ] {
        let script = format!(
            "PODSWITCH_CONTROL={} {BIN} {cmd} 2>{} | true",
            control.display(),
            err_file.display()
        );
        Command::new("bash")
            .args(["-c", &script])
            .status()
            .expect("bash");
        let said = std::fs::read_to_string(&err_file).unwrap_or_default();
        assert!(
            !said.contains("panicked") && !said.contains("Broken pipe"),
            "{cmd}: {said}"
        );
    }
    drop(d);
}

#[root_test]
fn a_mistyped_control_path_and_a_taken_host_interface_name_say_what_is_wrong() {
    let dir = tempdir("typo");
    // A control socket in a directory that does not exist: refused, nothing made.
    let typo = dir.join("no/such/dir/node.sock");
    let cfg = config(&unique("typo"), &typo, &[]);
    std::fs::write(dir.join("node.toml"), &cfg).expect("config");
    let out = run(&[
        BIN,
        "run",
        "--config",
        &dir.join("node.toml").to_string_lossy(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not exist"), "{err}");
    assert!(!dir.join("no").exists(), "no directory made");
    // A host interface named like an interface the node's namespace has (eth0).
    let ns = unique("typons");
    netns_add(&ns);
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _ns = Ns(ns.clone());
    assert!(
        run(&["ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"])
            .status
            .success()
    );
    let cfg = config(&unique("typo"), &dir.join("ctl.sock"), &[]).replace(
        "host_interface = \"\"\n",
        &format!("host_interface = \"eth0\"\nnetns = \"{ns}\"\n"),
    );
    std::fs::write(dir.join("node.toml"), &cfg).expect("config");
    let out = run(&[
        BIN,
        "run",
        "--config",
        &dir.join("node.toml").to_string_lossy(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("eth0 is an interface of this namespace already"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[root_test]
fn a_clean_stop_leaves_no_empty_state_file_behind() {
    let dir = tempdir("cleanstop");
    let control = dir.join("ctl.sock");
    let ns = unique("csp");
    let mut d = Daemon::start(
        &config(&unique("cleanstop"), &control, &[]),
        control,
        dir.clone(),
        vec![ns.clone()],
    );
    // A runtime pod in a namespace the node makes: recorded while it runs.
    let out = d.ctl(&[
        "pod",
        "add",
        "--name",
        "rt",
        "--netns",
        &ns,
        "--ip",
        "10.244.1.20",
    ]);
    assert!(out.status.success(), "{out:?}");
    let recorded = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        recorded(&dir).iter().any(|n| n.ends_with(".pods.json")),
        "{:?}",
        recorded(&dir)
    );
    let out = d.stop();
    assert!(out.status.success(), "{out:?}");
    // Nothing left to remember: no state file, no handover, no flows file.
    assert_eq!(recorded(&dir), Vec::<String>::new());
}
