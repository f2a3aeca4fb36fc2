//! The config file is the truth after a clean stop: SIGTERM forgets the services added at
//! runtime (as it forgets the pods it made at runtime; a crash or an upgrade keeps them), and a
//! runtime service may not shadow a service of the file (refused, naming both). Real daemons;
//! needs root (see `#[root_test]`).

use crate::common;

use std::time::Duration;

use common::{config, tempdir, Daemon};
use podswitch::control::{Request, Response};
use podswitch::node::{PeerSource, ServiceStatus};
use podswitch_dataplane::testutil::root_test;

/// The file's service.
const WEB: &str = "\n[[services]]\nname = \"web\"\nvip = \"10.96.0.10\"\nport = 80\nbackends = [\"10.244.1.10:8080\"]\n";

/// A daemon of node `name` (no pods), with `extra` appended to its config.
fn daemon(name: &str, prefix: &str, extra: &str) -> Daemon {
    let dir = tempdir(prefix);
    let control = dir.join("node.sock");
    let text = config(name, &control, &[]) + extra;
    Daemon::start(&text, control, dir, Vec::new())
}

/// Each service as (name, VIP, source), by name.
fn services(d: &Daemon) -> Vec<(String, String, PeerSource)> {
    let list: Vec<ServiceStatus> =
        match podswitch::control::call(&d.control, &Request::ServiceList, Duration::from_secs(30))
            .expect("service list")
        {
            Response::Services(s) => s,
            other => panic!("service list: {other:?}"),
        };
    list.into_iter()
        .map(|s| (s.spec.name, s.spec.vip.to_string(), s.source))
        .collect()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `podswitch service add --name NAME --vip VIP --port 80 --backend 10.244.1.11:8080`.
fn service_add(d: &Daemon, name: &str, vip: &str) -> std::process::Output {
    d.ctl(&[
        "service",
        "add",
        "--name",
        name,
        "--vip",
        vip,
        "--port",
        "80",
        "--backend",
        "10.244.1.11:8080",
    ])
}

fn web_of_the_file() -> (String, String, PeerSource) {
    ("web".into(), "10.96.0.10".into(), PeerSource::Config)
}

#[root_test]
fn a_runtime_service_may_not_shadow_one_of_the_config_file() {
    let d = daemon("node-shadow", "pscts", WEB);
    let out = service_add(&d, "web", "10.96.0.99");
    assert!(!out.status.success(), "accepted: {}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "podswitch: service.name: \"web\" (10.96.0.99:80/tcp) would shadow the config file's service \"web\" (10.96.0.10:80/tcp): change that one in the file (and restart), or give this one another name\n"
    );
    assert_eq!(
        services(&d),
        [web_of_the_file()],
        "the file's service stays"
    );
    // Another name is a service of its own; and a runtime service may still be replaced.
    for vip in ["10.96.0.20", "10.96.0.21"] {
        let out = service_add(&d, "extra", vip);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(
        services(&d),
        [
            ("extra".into(), "10.96.0.21".into(), PeerSource::Runtime),
            web_of_the_file()
        ]
    );
}

#[root_test]
fn a_clean_stop_forgets_runtime_services_a_crash_keeps_them() {
    let mut d = daemon("node-clean", "psctc", WEB);
    let out = service_add(&d, "extra", "10.96.0.20");
    assert!(out.status.success(), "{}", stderr(&out));
    let both = vec![
        (
            "extra".to_string(),
            "10.96.0.20".to_string(),
            PeerSource::Runtime,
        ),
        web_of_the_file(),
    ];
    d.crash();
    d.restart();
    assert_eq!(services(&d), both, "a crash keeps the runtime service");
    let up = d.ctl(&["upgrade"]);
    assert!(up.status.success(), "upgrade: {}", stderr(&up));
    assert_eq!(services(&d), both, "an upgrade keeps the runtime service");
    let out = d.stop();
    assert!(out.status.success(), "SIGTERM: {}", stderr(&out));
    let state = std::fs::read_to_string(d.dir.join("node-clean.pods.json")).unwrap_or_default();
    assert!(
        !state.contains("extra"),
        "SIGTERM left it recorded: {state}"
    );
    d.restart();
    assert_eq!(
        services(&d),
        [web_of_the_file()],
        "after a clean stop the file is all there is"
    );
}

#[root_test]
fn a_recorded_runtime_service_gives_way_to_the_file_and_says_so() {
    // A runtime "web" recorded (the daemon crashed), then the file gains a "web" of its own.
    let mut d = daemon("node-late", "psctl", "");
    let out = service_add(&d, "web", "10.96.0.99");
    assert!(out.status.success(), "{}", stderr(&out));
    d.crash();
    let file = d.dir.join("node.toml");
    let text = std::fs::read_to_string(&file).expect("config") + WEB;
    std::fs::write(&file, text).expect("config");
    d.restart();
    assert_eq!(services(&d), [web_of_the_file()], "the file's service wins");
    let out = d.stop();
    let log = stderr(&out);
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("\"web\" (10.96.0.99:80/tcp) would shadow the config file's service \"web\" (10.96.0.10:80/tcp)")),
        "no warning naming both:\n{log}"
    );
}
