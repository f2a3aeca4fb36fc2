//! podswitch under a real container runtime: podman 4.3 (Debian) with its CNI backend calls the
//! `podswitch-cni` plugin cargo just built, which attaches pods to a real daemon. Every test has
//! its own daemon, its own `containers.conf` (`CONTAINERS_CONF`), conflist, plugin directory,
//! host-local data and podman storage (`--root`/`--runroot`), all in one temp dir removed on drop.
//! Containers run on an overlay of the host's root (`--rootfs /:O`): no image, no registry.
//! Needs root and `scripts/setup`'s podman packages; see `#[root_test]`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use podswitch_dataplane::testutil::{root_test, unique, wait_for};

mod common;

use common::{config, tempdir, Daemon};

const PLUGIN: &str = env!("CARGO_BIN_EXE_podswitch-cni");
/// Debian's containernetworking-plugins (host-local, bridge).
const DEBIAN_CNI: &str = "/usr/lib/cni";
/// The port of the pods' web servers.
const PORT: u16 = 8080;

/// The test that checks podman leaves no network namespace behind takes it for writing: no
/// other podman test of this binary creates one meanwhile.
static NETNS: RwLock<()> = RwLock::new(());

/// A daemon (pod CIDR 10.244.1.0/24) and a podman set up to attach pods to it through
/// `podswitch-cni`, isolated from the machine's own podman configuration and storage.
struct Podman {
    dir: PathBuf,
    conf: PathBuf,
    /// The podswitch network's name (conflist and host-local directory).
    net: String,
    /// Bridges of stock-`bridge` networks, deleted on drop (the plugin leaves them).
    bridges: Vec<String>,
    daemon: Daemon,
}

impl Podman {
    fn new(tag: &str) -> Self {
        let dir = tempdir(tag);
        let control = dir.join("node.sock");
        let daemon = Daemon::start(
            &config(&unique("pm"), &control, &[]),
            control.clone(),
            dir.clone(),
            vec![],
        );
        for d in ["net", "plugins", "ipam", "root", "run", "tmp"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        for (src, name) in [
            (PathBuf::from(PLUGIN), "podswitch-cni"),
            (Path::new(DEBIAN_CNI).join("host-local"), "host-local"),
            (Path::new(DEBIAN_CNI).join("bridge"), "bridge"),
        ] {
            std::os::unix::fs::symlink(src, dir.join("plugins").join(name)).expect("symlink");
        }
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 runtime = \"runc\"\n\
                 events_logger = \"none\"\n\
                 tmp_dir = \"{tmp}\"\n\
                 [network]\n\
                 network_backend = \"cni\"\n\
                 network_config_dir = \"{net}\"\n\
                 cni_plugin_dirs = [\"{plugins}\"]\n",
                tmp = dir.join("tmp").display(),
                net = dir.join("net").display(),
                plugins = dir.join("plugins").display(),
            ),
        )
        .expect("write containers.conf");
        let net = unique("psnet");
        let p = Podman {
            dir,
            conf,
            net: net.clone(),
            bridges: vec![],
            daemon,
        };
        p.conflist(
            &net,
            serde_json::json!({
                "type": "podswitch-cni",
                "control": control,
                "ipam": p.ipam("10.244.1.0/24"),
            }),
        );
        p
    }

    fn ipam(&self, subnet: &str) -> serde_json::Value {
        serde_json::json!({
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": self.dir.join("ipam"),
        })
    }

    fn conflist(&self, name: &str, plugin: serde_json::Value) {
        let list = serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": [plugin]});
        std::fs::write(
            self.dir.join("net").join(format!("{name}.conflist")),
            list.to_string(),
        )
        .expect("write conflist");
    }

    /// A second network on Debian's stock `bridge` plugin (its own bridge, `subnet`).
    fn bridge_network(&mut self, subnet: &str) -> String {
        let name = unique("brnet");
        let bridge = unique("psbr");
        self.bridges.push(bridge.clone());
        self.conflist(
            &name,
            serde_json::json!({
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipam": self.ipam(subnet),
            }),
        );
        name
    }

    /// `podman ARGS` with this test's configuration and storage.
    fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run podman {args:?}: {e}"))
    }

    /// `podman ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(out.status.success(), "podman {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A pod on `net`, started (podman calls CNI ADD when the infra container starts).
    fn pod(&self, name: &str, net: &str) {
        self.ok(&["pod", "create", "--network", net, "--name", name]);
        self.ok(&["pod", "start", name]);
    }

    /// A web server on `PORT` in pod `pod`, as container `name`, answering once it listens.
    fn web(&self, pod: &str, name: &str) {
        self.ok(&[
            "run",
            "-d",
            "--pod",
            pod,
            "--name",
            name,
            "--rootfs",
            "/:O",
            "python3",
            "-m",
            "http.server",
            &PORT.to_string(),
        ]);
        wait_for(&format!("{name} listening"), || {
            self.fetch_in(name, &format!("http://localhost:{PORT}/")) == "200"
        });
    }

    /// A one-shot container in `pod` running `cmd`; its stdout (it must succeed).
    fn oneshot(&self, pod: &str, cmd: &[&str]) -> String {
        let mut args = vec!["run", "--rm", "--pod", pod, "--rootfs", "/:O"];
        args.extend_from_slice(cmd);
        self.ok(&args)
    }

    /// The HTTP status of `url` fetched from inside running container `container`, or the
    /// error (2 s timeout).
    fn fetch_in(&self, container: &str, url: &str) -> String {
        let out = self.podman(&["exec", container, "python3", "-c", FETCH, url]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The container's log (the web server logs requests on stderr).
    fn logs(&self, container: &str) -> String {
        let out = self.podman(&["logs", container]);
        assert!(out.status.success(), "podman logs: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn infra_id(&self, pod: &str) -> String {
        self.ok(&["pod", "inspect", pod, "--format", "{{.InfraContainerID}}"])
    }

    /// The pod's eth0 address (without the prefix length), seen from container `container`.
    fn eth0_in(&self, container: &str) -> String {
        eth0_of(&self.ok(&[
            "exec", container, "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ]))
    }

    /// `podswitch pod list`'s address of the pod made for container `id`, if listed.
    fn listed_ip(&self, id: &str) -> Option<String> {
        let out = self.daemon.ctl(&["pod", "list"]);
        assert!(out.status.success(), "pod list: {out:?}");
        let name = format!("cni-{id}");
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name.as_str())).then(|| {
                f.next()
                    .expect("IP column")
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
        })
    }

    /// The addresses host-local holds for network `net`.
    fn reserved(&self, net: &str) -> Vec<String> {
        common::host_local_reserved(&self.dir.join("ipam").join(net))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Pods first (CNI DEL while the daemon still runs), then storage; the daemon's own
        // Drop then stops it and removes the temp dir.
        let _ = self.podman(&["pod", "rm", "-a", "-f", "-t", "0"]);
        let _ = self.podman(&["rm", "-a", "-f", "-t", "0"]);
        for b in &self.bridges {
            let _ = Command::new("ip").args(["link", "del", b]).output();
        }
        // Anything podman left mounted under the temp dir (a failed test midway).
        let prefix = self.dir.to_string_lossy().into_owned();
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&prefix))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").args(["-l", p]).output();
            }
        }
    }
}

/// Prints the HTTP status of argv[1], or the error's name; 2 s timeout.
const FETCH: &str = "import sys, urllib.request\n\
try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)\n\
except Exception as e:\n    print(type(e).__name__, e)\n";

/// Binds TCP `PORT` on all addresses; prints `bound` or the errno's name.
const BIND: &str = "import errno, socket, sys\n\
s = socket.socket()\n\
try:\n    s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); print('bound')\n\
except OSError as e:\n    print(errno.errorcode[e.errno])\n";

/// The address of `ip -4 -o addr show dev eth0`'s output, without the prefix length.
fn eth0_of(out: &str) -> String {
    let mut f = out.split_whitespace().skip_while(|w| *w != "inet");
    f.nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no inet address in {out:?}"))
        .to_owned()
}

fn netns_entries() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[root_test]
fn containers_of_a_pod_share_localhost_and_pods_reach_each_other() {
    let _shared = NETNS.read().unwrap_or_else(|e| e.into_inner());
    let pm = Podman::new("pmseed");
    let (p1, web1) = (unique("pa"), unique("weba"));
    pm.pod(&p1, &pm.net);
    pm.web(&p1, &web1);

    // A second container of the pod fetches the server on localhost; the server logged it.
    let status = pm.oneshot(
        &p1,
        &["python3", "-c", FETCH, &format!("http://localhost:{PORT}/")],
    );
    assert_eq!(status, "200");
    let logs = pm.logs(&web1);
    assert!(
        logs.lines()
            .any(|l| l.contains("127.0.0.1") && l.contains("\"GET / ")),
        "{logs}"
    );

    // One network namespace: the same eth0 address, one port space.
    let ip1 = pm.eth0_in(&web1);
    let other = eth0_of(&pm.oneshot(&p1, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]));
    assert_eq!(ip1, other);
    assert!(ip1.starts_with("10.244.1."), "{ip1}");
    assert_eq!(
        pm.oneshot(&p1, &["python3", "-c", BIND, &PORT.to_string()]),
        "EADDRINUSE"
    );
    // podswitch attached the pod for podman's infra container, with that address.
    let infra1 = pm.infra_id(&p1);
    assert_eq!(pm.listed_ip(&infra1), Some(ip1.clone()));
    assert_eq!(pm.reserved(&pm.net), vec![ip1.clone()]);

    // A second pod reaches the first by pod IP, and serves on the same port itself.
    let (p2, web2) = (unique("pb"), unique("webb"));
    pm.pod(&p2, &pm.net);
    pm.web(&p2, &web2);
    let ip2 = pm.eth0_in(&web2);
    assert_ne!(ip1, ip2);
    assert_eq!(pm.listed_ip(&pm.infra_id(&p2)), Some(ip2.clone()));
    assert_eq!(pm.fetch_in(&web2, &format!("http://{ip1}:{PORT}/")), "200");
    assert_eq!(pm.fetch_in(&web1, &format!("http://{ip2}:{PORT}/")), "200");
    let logs2 = pm.logs(&web2);
    assert!(logs2.contains(&ip1), "pod b's server saw pod a: {logs2}");

    // `pod rm` takes the port out of podswitch and gives the address back to host-local;
    // the address answers no more.
    pm.ok(&["pod", "rm", "-f", "-t", "0", &p1]);
    assert_eq!(pm.listed_ip(&infra1), None);
    assert_eq!(pm.reserved(&pm.net), vec![ip2.clone()]);
    let gone = pm.fetch_in(&web2, &format!("http://{ip1}:{PORT}/"));
    assert!(
        gone.starts_with("URLError") || gone.starts_with("TimeoutError"),
        "{gone}"
    );
    assert_eq!(
        pm.fetch_in(&web2, &format!("http://localhost:{PORT}/")),
        "200"
    );
}

#[root_test]
fn pods_get_their_network_back_after_a_daemon_restart() {
    let _shared = NETNS.read().unwrap_or_else(|e| e.into_inner());
    let mut pm = Podman::new("pmrestart");
    let (p1, web1, p2, web2) = (unique("pa"), unique("weba"), unique("pb"), unique("webb"));
    pm.pod(&p1, &pm.net);
    pm.web(&p1, &web1);
    pm.pod(&p2, &pm.net);
    pm.web(&p2, &web2);
    let (ip1, ip2) = (pm.eth0_in(&web1), pm.eth0_in(&web2));
    let url1 = format!("http://{ip1}:{PORT}/");
    assert_eq!(pm.fetch_in(&web2, &url1), "200");
    let (infra1, infra2) = (pm.infra_id(&p1), pm.infra_id(&p2));

    let out = pm.daemon.stop();
    assert!(out.status.success(), "daemon exit: {out:?}");
    pm.daemon.restart();
    wait_for("pod b fetching pod a by IP after the restart", || {
        pm.fetch_in(&web2, &url1) == "200"
    });
    assert_eq!(pm.fetch_in(&web1, &format!("http://{ip2}:{PORT}/")), "200");
    assert_eq!(pm.listed_ip(&infra1), Some(ip1.clone()));
    assert_eq!(pm.listed_ip(&infra2), Some(ip2.clone()));
    assert_eq!(pm.eth0_in(&web1), ip1);
    // podman still removes them cleanly through the restarted daemon.
    pm.ok(&["pod", "rm", "-f", "-t", "0", &p1, &p2]);
    assert_eq!(pm.reserved(&pm.net), Vec::<String>::new());
    assert_eq!(pm.listed_ip(&infra1), None);
}

#[root_test]
fn with_the_daemon_down_a_pod_fails_to_start_and_leaves_nothing() {
    let _alone = NETNS.write().unwrap_or_else(|e| e.into_inner());
    let mut pm = Podman::new("pmdown");
    let before = netns_entries();
    let out = pm.daemon.stop();
    assert!(out.status.success(), "daemon exit: {out:?}");

    let pod = unique("pd");
    pm.ok(&["pod", "create", "--network", &pm.net, "--name", &pod]);
    let start = pm.podman(&["pod", "start", &pod]);
    assert!(!start.status.success(), "{start:?}");
    let err = String::from_utf8_lossy(&start.stderr);
    assert!(
        err.contains("podswitch-cni") && err.contains("the podswitch daemon did not answer"),
        "{err}"
    );
    let infra = pm.infra_id(&pod);
    // Nothing half-made: no address kept, no namespace left by podman.
    assert_eq!(pm.reserved(&pm.net), Vec::<String>::new());
    assert_eq!(netns_entries(), before);
    let results: Vec<_> = std::fs::read_dir("/var/lib/cni/results")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.contains(&infra))
                .collect()
        })
        .unwrap_or_default();
    assert!(results.is_empty(), "libcni cache: {results:?}");
    // The daemon back: it knows no such pod, and a retry works.
    pm.daemon.restart();
    assert_eq!(pm.listed_ip(&infra), None);
    pm.ok(&["pod", "start", &pod]);
    let ip = pm.listed_ip(&infra).expect("attached on retry");
    assert_eq!(pm.reserved(&pm.net), vec![ip]);
    pm.ok(&["pod", "rm", "-f", "-t", "0", &pod]);
    assert_eq!(pm.reserved(&pm.net), Vec::<String>::new());
    assert_eq!(netns_entries(), before);
}

#[root_test]
fn pod_start_time_podswitch_and_stock_bridge() {
    let _shared = NETNS.read().unwrap_or_else(|e| e.into_inner());
    let mut pm = Podman::new("pmtime");
    let bridge = pm.bridge_network("10.244.254.0/24");
    // Podman builds its pause image on the first pod: not part of either measurement.
    let warm = unique("pw");
    pm.ok(&["pod", "create", "--network", "none", "--name", &warm]);
    let mut report = String::new();
    for (label, net) in [("podswitch", pm.net.clone()), ("bridge", bridge)] {
        let mut times = vec![];
        for _ in 0..3 {
            let pod = unique("pt");
            let t = Instant::now();
            pm.pod(&pod, &net);
            times.push(t.elapsed());
            assert!(!pm.reserved(&net).is_empty(), "{label}: no address");
            pm.ok(&["pod", "rm", "-f", "-t", "0", &pod]);
        }
        times.sort();
        report += &format!(
            "{label}: pod create + start {:?} (median of {:?})\n",
            times[1],
            times
                .iter()
                .map(|d| Duration::from_micros(d.as_micros() as u64))
                .collect::<Vec<_>>()
        );
    }
    // Straight to the stderr handle: the harness would capture `eprintln!` of a passing test.
    use std::io::Write;
    let _ = write!(std::io::stderr(), "{report}");
}
