//! Fixtures of the etcd cluster tests: an underlay of namespaces on a bridge, a real etcd in one
//! of them (driven through `etcdctl`), and kernel nodes configured the way flannel's VXLAN
//! backend configures them. Needs root. Everything a fixture creates is removed in its `Drop`,
//! also when a test panics.
//!
//! Addresses: underlay in 192.168.77.0/24, pods in 10.244.0.0/16.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use podswitch::control::{self, Request, Response};
use podswitch::node::{PeerSource, PeerStatus, PodStatus, ServiceStatus};
use podswitch_dataplane::testutil::{unique, wait_for};

use super::{run, tempdir};

/// The VNI flannel's VXLAN backend uses by default (and the fixtures use).
pub(crate) const VNI: u32 = 1;
/// flannel's VXLAN UDP port (the Linux default, not IANA's 4789).
pub(crate) const VXLAN_PORT: u16 = 8472;

/// Runs `cmd` through `sh -c` inside namespace `ns`; panics with its stderr if it fails.
pub(crate) fn sh(ns: &str, cmd: &str) {
    let out = run(&["ip", "netns", "exec", ns, "sh", "-c", cmd]);
    assert!(
        out.status.success(),
        "in {ns}: `{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `ip` answers pings from namespace `ns` (up to 3 echoes, 2 s each; any reply counts).
pub(crate) fn ping(ns: &str, ip: &str) -> bool {
    run(&[
        "ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", ip,
    ])
    .status
    .success()
}

fn netns_del(ns: &str) {
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// A namespace holding a bridge `br0`, with hosts (namespaces) joined to it by veths.
pub(crate) struct Underlay {
    ns: String,
    hosts: Vec<String>,
}

impl Underlay {
    /// A fresh underlay namespace with `br0` up and no hosts.
    pub(crate) fn new() -> Self {
        let u = Underlay {
            ns: unique("ul"),
            hosts: Vec::new(),
        };
        super::netns_add(&u.ns);
        sh(
            &u.ns,
            "ip link set lo up && ip link add br0 type bridge && ip link set br0 up",
        );
        u
    }

    /// The underlay namespace (the one holding `br0`).
    pub(crate) fn ns(&self) -> &str {
        &self.ns
    }

    /// A new namespace joined to `br0` by a veth: `eth0` inside, `ip`/24 on it, `lo` up.
    /// Returns the namespace's name; it is deleted with the underlay.
    pub(crate) fn add_host(&mut self, ip: &str) -> String {
        let host = unique("uh");
        super::netns_add(&host);
        self.hosts.push(host.clone());
        let end = format!("v{}", self.hosts.len());
        sh(
            &self.ns,
            &format!(
                "ip link add {end} type veth peer name eth0 netns {host} && \
                 ip link set {end} master br0 up"
            ),
        );
        sh(
            &host,
            &format!("ip link set lo up && ip link set eth0 up && ip addr add {ip}/24 dev eth0"),
        );
        host
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for ns in &self.hosts {
            netns_del(ns);
        }
        netns_del(&self.ns);
    }
}

/// The JSON flannel reads at `<prefix>/config`, for a VXLAN network (VNI 1, port 8472):
/// `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`.
pub(crate) fn flannel_network_config(network: &str, subnet_len: u8) -> String {
    format!(
        r#"{{"Network":"{network}","SubnetLen":{subnet_len},"Backend":{{"Type":"vxlan","VNI":{VNI},"Port":{VXLAN_PORT}}}}}"#
    )
}

/// A real single-member etcd (3.4, `/usr/bin/etcd`) running inside a namespace; client URL
/// `http://IP:PORT`, peer URL `http://IP:PORT+1`. Data dir and log live in a temp dir that
/// `Drop` removes (after killing the process). If the test is panicking, `Drop` prints the log.
pub(crate) struct Etcd {
    ns: String,
    ip: String,
    port: u16,
    name: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd in `ns` listening on `ip`:`port` (clients) and `ip`:`port + 1` (peers);
    /// returns once `etcdctl endpoint health` says it is healthy.
    pub(crate) fn start(ns: &str, ip: &str, port: u16) -> Self {
        let mut e = Etcd {
            ns: ns.to_string(),
            ip: ip.to_string(),
            port,
            name: unique("etcd"),
            dir: tempdir("etcd"),
            child: None,
        };
        e.spawn();
        e
    }

    /// `http://IP:PORT`, the client URL.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port + 1)
    }

    /// The namespace etcd runs in.
    pub(crate) fn ns(&self) -> &str {
        &self.ns
    }

    /// The data directory (kept by `stop`, removed by `Drop`).
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The file etcd's stdout and stderr go to (appended to by `start_again`).
    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// Everything etcd has logged so far (all runs).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether the process is running (started and not stopped).
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let log2: File = log.try_clone().expect("etcd log file");
        let (client, peer) = (self.endpoint(), self.peer_url());
        let data = self.data_dir();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "/usr/bin/etcd"])
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{}={peer}", self.name)])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.name])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn ip netns exec etcd");
        self.child = Some(child);
        wait_for("etcd to be healthy", || {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "etcd exited ({st}) before it was healthy; log:\n{}",
                    self.log()
                );
            }
            self.etcdctl(&["endpoint", "health"]).status.success()
        });
    }

    /// SIGTERM, then waits for the exit (bounded). The data dir is kept.
    pub(crate) fn stop(&mut self) {
        let mut child = self.child.take().expect("etcd is running");
        // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs etcd in place).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        wait_for("etcd to exit after SIGTERM", || {
            child.try_wait().expect("wait for etcd").is_some()
        });
    }

    /// Starts etcd again after `stop`: same data dir, same name, same URLs.
    pub(crate) fn start_again(&mut self) {
        self.spawn();
    }

    /// Runs `ETCDCTL_API=3 etcdctl --endpoints ENDPOINT args...` inside the namespace.
    pub(crate) fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcdctl"])
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint()])
            .args(["--dial-timeout", "2s", "--command-timeout", "5s"])
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// Like `etcdctl`, but panics (with etcdctl's stderr) unless it succeeds; returns stdout.
    pub(crate) fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `put key value`.
    pub(crate) fn put(&self, key: &str, value: &str) {
        self.etcdctl_ok(&["put", "--", key, value]);
    }

    /// `lease grant ttl_secs`, then `put --lease`; returns the lease ID (etcdctl shows and takes
    /// it in hex: `format!("{id:x}")`).
    pub(crate) fn put_with_lease(&self, key: &str, value: &str, ttl_secs: u64) -> i64 {
        let granted = self.etcdctl_ok(&["lease", "grant", &ttl_secs.to_string()]);
        // "lease 694d7a8e7c4a8b0f granted with TTL(2s)"
        let hex = granted
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected lease grant output: {granted:?}"));
        let id = i64::from_str_radix(hex, 16)
            .unwrap_or_else(|e| panic!("lease id {hex:?} in {granted:?}: {e}"));
        self.etcdctl_ok(&["put", &format!("--lease={hex}"), "--", key, value]);
        id
    }

    /// The value at `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<String> {
        let kvs = self.get_json(&["get", "-w", "json", "--", key]);
        assert!(kvs.len() <= 1, "get {key} returned {kvs:?}");
        kvs.into_iter().next().map(|(_, v)| v)
    }

    /// Every (key, value) under `prefix`, sorted by key.
    pub(crate) fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.get_json(&["get", "-w", "json", "--prefix", "--", prefix])
    }

    fn get_json(&self, args: &[&str]) -> Vec<(String, String)> {
        let out = self.etcdctl_ok(args);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("etcdctl {args:?} printed {out:?}: {e}"));
        let field = |kv: &serde_json::Value, name: &str| {
            // Absent when empty (omitempty); base64 otherwise.
            let b64 = kv.get(name).and_then(|s| s.as_str()).unwrap_or("");
            String::from_utf8_lossy(&base64_decode(b64)).into_owned()
        };
        v.get("kvs")
            .and_then(|k| k.as_array())
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (field(kv, "key"), field(kv, "value")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `del key`.
    pub(crate) fn del(&self, key: &str) {
        self.etcdctl_ok(&["del", "--", key]);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- etcd log ({}) ---\n{}", self.name, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Standard base64 (with or without padding), as etcdctl's JSON output encodes keys and values.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {s:?}"),
        }
    };
    let digits: Vec<u32> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | (d << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// A node namespace (an underlay host) configured exactly as flannel's VXLAN backend configures
/// a kernel node: `flannel.1` (VNI 1, `local PUBLIC_IP dev eth0 dstport 8472 nolearning`, the
/// given VTEP MAC, mtu 1450, offloads at their defaults) with `<subnet>.0/32`, `ip_forward=1`, a bridge `cni0`
/// with `<subnet>.1/<len>`, and one pod namespace on `cni0` at `<subnet>.10` (default route via
/// `.1`). The node namespace is deleted with the underlay; the pod namespace by `Drop`.
pub(crate) struct KernelFlannelNode {
    ns: String,
    pod: String,
    public_ip: Ipv4Addr,
    subnet: Ipv4Net,
    vtep_mac: String,
}

/// `subnet`'s address `n` (`.0`, `.1`, `.10`).
fn nth(subnet: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n)
}

fn parse_subnet(subnet: &str) -> Ipv4Net {
    let net: Ipv4Net = subnet
        .parse()
        .unwrap_or_else(|e| panic!("subnet {subnet:?}: {e}"));
    assert_eq!(net, net.trunc(), "subnet {subnet} has host bits set");
    net
}

impl KernelFlannelNode {
    /// A new host on `underlay` at `public_ip`, leasing `subnet` (`10.244.9.0/24`), VTEP MAC
    /// `vtep_mac` (`02:aa:bb:cc:dd:ee`, lower case as flannel writes it).
    pub(crate) fn new(
        underlay: &mut Underlay,
        public_ip: &str,
        subnet: &str,
        vtep_mac: &str,
    ) -> Self {
        let subnet = parse_subnet(subnet);
        let public_ip: Ipv4Addr = public_ip.parse().expect("public ip");
        let ns = underlay.add_host(&public_ip.to_string());
        let pod = unique("fp");
        super::netns_add(&pod);
        let node = KernelFlannelNode {
            ns,
            pod,
            public_ip,
            subnet,
            vtep_mac: vtep_mac.to_ascii_lowercase(),
        };
        let (zero, gw, len) = (nth(subnet, 0), nth(subnet, 1), subnet.prefix_len());
        let mac = &node.vtep_mac;
        let pod = &node.pod;
        sh(
            &node.ns,
            &format!(
                "sysctl -qw net.ipv4.ip_forward=1 && \
                 ip link add flannel.1 address {mac} type vxlan id {VNI} local {public_ip} dev eth0 \
                   dstport {VXLAN_PORT} nolearning && \
                 ip link set flannel.1 mtu 1450 up && ip addr add {zero}/32 dev flannel.1 && \
                 ip link add cni0 type bridge && ip addr add {gw}/{len} dev cni0 && \
                 ip link set cni0 mtu 1450 up && \
                 ip link add vpod type veth peer name eth0 netns {pod} && \
                 ip link set vpod mtu 1450 master cni0 up"
            ),
        );
        sh(
            pod,
            &format!(
                "ip link set lo up && ip link set eth0 mtu 1450 up && \
                 ip addr add {}/{len} dev eth0 && ip route add default via {gw}",
                node.pod_ip()
            ),
        );
        node
    }

    /// The node's namespace (holds `eth0`, `flannel.1`, `cni0`).
    pub(crate) fn ns(&self) -> &str {
        &self.ns
    }

    /// The pod's namespace.
    pub(crate) fn pod_ns(&self) -> &str {
        &self.pod
    }

    /// The pod's address, `<subnet>.10`.
    pub(crate) fn pod_ip(&self) -> String {
        nth(self.subnet, 10).to_string()
    }

    /// The node's underlay address.
    pub(crate) fn public_ip(&self) -> String {
        self.public_ip.to_string()
    }

    /// The node's subnet, `10.244.9.0/24`.
    pub(crate) fn subnet(&self) -> String {
        self.subnet.to_string()
    }

    /// The VTEP MAC of `flannel.1`, lower case.
    pub(crate) fn vtep_mac(&self) -> &str {
        &self.vtep_mac
    }

    /// What flannel does for a remote lease: permanent neighbour `<subnet>.0` → `vtep_mac`, FDB
    /// `vtep_mac` → `public_ip`, route `subnet via <subnet>.0 dev flannel.1 onlink`.
    pub(crate) fn add_remote(&self, subnet: &str, public_ip: &str, vtep_mac: &str) {
        let net = parse_subnet(subnet);
        let zero = nth(net, 0);
        sh(
            &self.ns,
            &format!(
                "ip neigh add {zero} lladdr {vtep_mac} dev flannel.1 nud permanent && \
                 bridge fdb append {vtep_mac} dev flannel.1 dst {public_ip} && \
                 ip route add {net} via {zero} dev flannel.1 onlink"
            ),
        );
    }

    /// Undoes `add_remote` (route, neighbour, FDB entry), as flannel does when a lease goes.
    pub(crate) fn remove_remote(&self, subnet: &str, public_ip: &str, vtep_mac: &str) {
        let net = parse_subnet(subnet);
        let zero = nth(net, 0);
        sh(
            &self.ns,
            &format!(
                "ip route del {net} via {zero} dev flannel.1 onlink && \
                 ip neigh del {zero} dev flannel.1 && \
                 bridge fdb del {vtep_mac} dev flannel.1 dst {public_ip}"
            ),
        );
    }

    /// `add_remote` of another kernel node.
    pub(crate) fn add_remote_node(&self, other: &KernelFlannelNode) {
        self.add_remote(&other.subnet(), &other.public_ip(), other.vtep_mac());
    }

    /// The lease value flannel writes for this node, byte for byte:
    /// `{"PublicIP":"192.168.77.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:bb:cc:dd:ee"}}`.
    pub(crate) fn lease_value(&self) -> String {
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{VNI},"VtepMAC":"{}"}}}}"#,
            self.public_ip, self.vtep_mac
        )
    }

    /// This node's lease key: `<prefix>/subnets/10.244.9.0-24` (trailing slashes of `prefix`
    /// ignored).
    pub(crate) fn subnet_key(&self, prefix: &str) -> String {
        format!(
            "{}/subnets/{}-{}",
            prefix.trim_end_matches('/'),
            self.subnet.network(),
            self.subnet.prefix_len()
        )
    }
}

impl Drop for KernelFlannelNode {
    fn drop(&mut self) {
        netns_del(&self.pod);
    }
}

/// One `podswitch run` of a node in its own namespace (its config written by the caller),
/// its log in a file; killed and its pod namespaces deleted on drop.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) ip: String,
    pub(crate) config: PathBuf,
    pub(crate) control: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) child: Option<Child>,
    pub(crate) pod_ns: Vec<String>,
}

impl Node {
    /// Starts `podswitch run --config config` (see [`Node::start`]).
    pub(crate) fn spawn(
        name: String,
        ip: String,
        config: PathBuf,
        control: PathBuf,
        log: PathBuf,
        pod_ns: Vec<String>,
    ) -> Self {
        let mut node = Node {
            name,
            ip,
            config,
            control,
            log,
            child: None,
            pod_ns,
        };
        node.start();
        node
    }

    /// Starts the daemon (its log appended to `log`); returns once its control socket exists.
    pub(crate) fn start(&mut self) {
        assert!(self.child.is_none(), "{} runs already", self.name);
        let _ = std::fs::remove_file(&self.control);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = super::podswitch()
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn podswitch run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // The socket file appears at bind(2), a moment before listen(2): wait until it
        // accepts a connection.
        while std::os::unix::net::UnixStream::connect(&self.control).is_err() {
            assert!(
                Instant::now() < deadline,
                "{}: no control socket\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn call(&self, req: &Request) -> Response {
        control::call(&self.control, req, Duration::from_secs(30)).expect("control call")
    }

    /// Waits (bounded) until the node is up and returns its pod CIDR.
    pub(crate) fn subnet(&self) -> String {
        let mut last;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.call(&Request::NodeInfo) {
                Response::Node { pod_cidr, .. } => return pod_cidr.to_string(),
                other => last = format!("{other:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "{} is not up: {last}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn pods(&self) -> Vec<PodStatus> {
        match self.call(&Request::PodList) {
            Response::Pods(p) => p,
            other => panic!("{}: pod list: {other:?}", self.name),
        }
    }

    /// The address of its pod `i`.
    pub(crate) fn pod_ip(&self, i: usize) -> String {
        let name = format!("p{i}");
        let pod = self.pods().into_iter().find(|p| p.spec.name == name);
        let ip: Option<Ipv4Addr> = pod.and_then(|p| p.spec.ip);
        ip.unwrap_or_else(|| panic!("{}: no pod {name}", self.name))
            .to_string()
    }

    pub(crate) fn peers(&self) -> Vec<PeerStatus> {
        match self.call(&Request::PeerList) {
            Response::Peers(p) => p,
            other => panic!("{}: peer list: {other:?}", self.name),
        }
    }

    /// `service list`.
    pub(crate) fn services(&self) -> Vec<ServiceStatus> {
        match self.call(&Request::ServiceList) {
            Response::Services(s) => s,
            other => panic!("{}: service list: {other:?}", self.name),
        }
    }

    /// Waits (bounded) until the names of its services are exactly `want`; returns them.
    pub(crate) fn wait_services(&self, want: &[&str], within: Duration) -> Vec<ServiceStatus> {
        let deadline = Instant::now() + within;
        loop {
            let have = self.services();
            let names: Vec<&str> = have.iter().map(|s| s.spec.name.as_str()).collect();
            if names == want {
                return have;
            }
            assert!(
                Instant::now() < deadline,
                "{}: services {names:?}, want {want:?}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pod CIDRs of its peers from etcd.
    pub(crate) fn etcd_peers(&self) -> BTreeSet<String> {
        self.peers()
            .into_iter()
            .filter(|p| p.source == PeerSource::Etcd)
            .map(|p| p.spec.pod_cidr.to_string())
            .collect()
    }

    /// Waits (bounded) until its etcd peers are exactly `want`.
    pub(crate) fn wait_peers(&self, want: &[&str], within: Duration) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + within;
        loop {
            let have = self.etcd_peers();
            if have == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: etcd peers {have:?}, want {want:?}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the `podswitch` client with `args` against this node; its output (panics if the
    /// command fails).
    pub(crate) fn ctl(&self, args: &[&str]) -> String {
        let out = super::podswitch()
            .args(args)
            .arg("--control")
            .arg(&self.control)
            .output()
            .expect("podswitch client");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podswitch status` as the user reads it.
    pub(crate) fn status_text(&self) -> String {
        let out = super::podswitch()
            .args(["status", "--control"])
            .arg(&self.control)
            .output()
            .expect("podswitch status");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub(crate) fn wait_status(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status_text();
            if cond(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: status never showed {what}: {s}\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn signal(&mut self, sig: libc::c_int) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let _ = child.wait();
    }

    pub(crate) fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    pub(crate) fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.pod_ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}
