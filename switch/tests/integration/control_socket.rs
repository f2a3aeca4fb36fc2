//! The control socket of a real daemon under a leak: idle connections never lock the CLI or
//! the CNI plugin out.
//! Needs root (the daemon makes namespaces and TAPs).

use crate::common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{config, netns_add, tempdir, Daemon};
use podswitch::control::{Request, Response};
use podswitch_dataplane::testutil::{root_test, unique};

const PLUGIN: &str = env!("CARGO_BIN_EXE_podswitch-cni");

/// `podswitch-cni` with `CNI_COMMAND=command` for container `id` in namespace `ns`, the
/// network config on stdin naming the daemon at `control` and host-local's data in `data`.
fn cni(
    command: &str,
    id: &str,
    ns: &str,
    control: &std::path::Path,
    data: &std::path::Path,
) -> Output {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "podnet",
        "type": "podswitch-cni",
        "control": control,
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.244.1.0/24"}]]},
    })
    .to_string();
    let mut child = Command::new(PLUGIN)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run podswitch-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("write config");
    child.wait_with_output().expect("podswitch-cni exits")
}

#[root_test]
fn the_cli_and_the_cni_plugin_are_served_while_200_idle_connections_are_held_open() {
    let (web, cnins) = (unique("csweb"), unique("cscni"));
    let dir = tempdir("pscs");
    let control = dir.join("node.sock");
    let cfg = config("node-cs", &control, &[("web", &web, "10.244.1.10")]);
    netns_add(&cnins);
    let d = Daemon::start(&cfg, control.clone(), dir.clone(), vec![web, cnins.clone()]);
    // A leaking client: 200 connections that never send a byte, all held open meanwhile.
    let idle: Vec<_> = (0..200)
        .map(|i| {
            std::os::unix::net::UnixStream::connect(&control)
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    for args in [&["pod", "list"][..], &["status"], &["peer", "list"]] {
        let out = d.ctl(args);
        assert!(
            out.status.success(),
            "{args:?} with 200 idle connections open: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        String::from_utf8_lossy(&d.ctl(&["pod", "list"]).stdout).contains("10.244.1.10/24"),
        "pod list answers with the pod"
    );
    // The CNI plugin too: an ADD and a DEL.
    let (id, data) = (unique("cscontainer"), dir.join("ipam"));
    for command in ["ADD", "DEL"] {
        let out = cni(command, &id, &cnins, &control, &data);
        assert!(
            out.status.success(),
            "CNI {command} with 200 idle connections open: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The library client, and a request over the limit gets the node's message naming it.
    let huge = "x".repeat(podswitch::control::MAX_LINE + 1024);
    match podswitch::control::call(
        &control,
        &Request::PodDel { name: huge },
        Duration::from_secs(30),
    ) {
        Ok(Response::Error { message, .. }) => assert!(
            message.contains("longer than the control socket's limit of 16 MiB"),
            "{message}"
        ),
        other => panic!("a request over the limit: {other:?}"),
    }
    drop(idle);
}
