//! The control socket of a real daemon under a leak: idle connections never lock the CLI out.
//! Needs root (the daemon makes namespaces and TAPs).

mod common;

use std::time::Duration;

use common::{config, tempdir, Daemon};
use podswitch::control::{Request, Response};
use podswitch::testutil::{root_or_skip, unique};

#[test]
#[cfg_attr(
    skip_root_tests,
    ignore = "needs root: PODSWITCH_SKIP_ROOT_TESTS=1 is set"
)]
fn the_cli_is_served_while_200_idle_connections_are_held_open() {
    if !root_or_skip("the_cli_is_served_while_200_idle_connections_are_held_open") {
        return;
    }
    let web = unique("csweb");
    let dir = tempdir("pscs");
    let control = dir.join("node.sock");
    let cfg = config("node-cs", &control, &[("web", &web, "10.244.1.10")]);
    let d = Daemon::start(&cfg, control.clone(), dir, vec![web]);
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
    // The library client (the CNI plugin's) too, and a request over the limit gets the
    // node's message naming it.
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
