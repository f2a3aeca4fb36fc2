//! podswitch nodes in a cluster kept in a real etcd (Debian's etcd 3.4), in flannel's layout:
//! subnets leased, peers learnt and forgotten, a kernel node configured as flannel would join
//! through a lease written by hand, and the faults (etcd gone, a node killed, our key deleted,
//! a range exhausted). Every node, pod and etcd lives in namespaces these tests create on an
//! underlay of their own (192.168.77.0/24); each test uses its own etcd prefix. Needs root.

use crate::common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::{flannel_network_config, ping, Etcd, KernelFlannelNode, Node, Underlay};
use common::{run, run_with_stdin, tempdir};
use podswitch::control::{Request, Response};
use podswitch::node::{PeerSource, ServiceProto, ServiceSpec};
use podswitch_dataplane::testutil::{root_test, unique, wait_for};

const ETCD_IP: &str = "192.168.77.254";

/// A cluster: an underlay, an etcd on it at .254, and a fresh prefix with flannel's network
/// config for 10.244.0.0/16 in /24s (and a fresh services prefix).
struct Cluster {
    underlay: Underlay,
    etcd: Etcd,
    prefix: String,
    services_prefix: String,
    dir: PathBuf,
}

impl Cluster {
    fn new() -> Self {
        Self::with_network(&flannel_network_config("10.244.0.0/16", 24))
    }

    fn with_network(config: &str) -> Self {
        let mut underlay = Underlay::new();
        let host = underlay.add_host(ETCD_IP);
        let etcd = Etcd::start(&host, ETCD_IP, 2379);
        let base = unique("t");
        let prefix = format!("/{base}/network");
        if !config.is_empty() {
            etcd.put(&format!("{prefix}/config"), config);
        }
        Cluster {
            underlay,
            etcd,
            prefix,
            services_prefix: format!("/{base}/services"),
            dir: tempdir("cluster"),
        }
    }

    /// The subnet keys in etcd with their values.
    fn leases(&self) -> Vec<(String, String)> {
        self.etcd.get_prefix(&format!("{}/subnets/", self.prefix))
    }

    /// A podswitch node on a new underlay host `192.168.77.<i>` with `pods` (no ip: each gets
    /// the next address of the leased range), started and not yet checked.
    fn node(&mut self, i: u8, pods: usize, ttl: u64) -> Node {
        self.node_with(i, pods, ttl, "")
    }

    /// [`Cluster::node`] with `extra` lines in its `[node]` table.
    fn node_with(&mut self, i: u8, pods: usize, ttl: u64, extra: &str) -> Node {
        let host = self.underlay.add_host(&format!("192.168.77.{i}"));
        let name = format!("node{i}");
        let control = self.dir.join(format!("{name}.sock"));
        let mut pod_ns = Vec::new();
        let mut text = format!(
            "[node]\nname = \"{name}\"\nnetns = \"{host}\"\nunderlay = \"192.168.77.{i}\"\ncontrol = \"{}\"\ncpus = []\n{extra}",
            control.display()
        );
        for p in 0..pods {
            let ns = unique(&format!("n{i}p{p}"));
            text += &format!("\n[[pods]]\nname = \"p{p}\"\nnetns = \"{ns}\"\n");
            pod_ns.push(ns);
        }
        text += &format!(
            "\n[cluster]\netcd_endpoints = [\"{}\"]\netcd_prefix = \"{}\"\nservices_prefix = \"{}\"\nlease_ttl_secs = {ttl}\n",
            self.etcd.endpoint(),
            self.prefix,
            self.services_prefix
        );
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config, text).expect("write config");
        let log = self.dir.join(format!("node{i}.log"));
        Node::spawn(
            name,
            format!("192.168.77.{i}"),
            config,
            control,
            log,
            pod_ns,
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The subnet of a key `<prefix>/subnets/10.244.5.0-24`: `10.244.5.0/24`.
fn key_subnet(key: &str) -> String {
    key.rsplit('/').next().unwrap_or(key).replacen('-', "/", 1)
}

/// A JSON string field of a lease value.
fn field(value: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(value).expect("lease JSON");
    let f = v
        .get(name)
        .or_else(|| v.get("BackendData").and_then(|d| d.get(name)));
    f.and_then(|f| f.as_str()).unwrap_or_default().to_string()
}

#[root_test]
fn three_nodes_lease_distinct_subnets_and_reach_each_other_restart_keeps_a_subnet_and_a_killed_node_expires(
) {
    let mut c = Cluster::new();
    // All three start at once: the transactions keep their subnets apart.
    let mut nodes: Vec<Node> = (1..=3).map(|i| c.node(i, 1, 5)).collect();
    let subnets: Vec<String> = nodes.iter().map(Node::subnet).collect();
    let distinct: BTreeSet<&String> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "subnets {subnets:?}");

    // etcd holds one lease per node in flannel's format: PublicIP, vxlan, VNI 1, VTEP MAC.
    let leases = c.leases();
    assert_eq!(leases.len(), 3, "{leases:?}");
    for (node, subnet) in nodes.iter().zip(&subnets) {
        let (key, value) = leases
            .iter()
            .find(|(k, _)| key_subnet(k) == *subnet)
            .unwrap_or_else(|| panic!("no key for {subnet}: {leases:?}"));
        assert!(key.starts_with(&format!("{}/subnets/", c.prefix)), "{key}");
        assert_eq!(field(value, "PublicIP"), node.ip, "{value}");
        assert_eq!(field(value, "BackendType"), "vxlan", "{value}");
        assert!(value.contains(r#""PublicIPv6":null"#), "{value}");
        assert!(value.contains(r#""VNI":1"#), "{value}");
        let mac = field(value, "VtepMAC");
        assert_eq!(mac.len(), 17, "{value}");
        // Every other node knows this one by that lease.
        for other in nodes.iter().filter(|o| o.name != node.name) {
            let others: Vec<&str> = subnets
                .iter()
                .filter(|s| **s != other.subnet())
                .map(String::as_str)
                .collect();
            other.wait_peers(&others, Duration::from_secs(15));
            let peer = other
                .peers()
                .into_iter()
                .find(|p| p.spec.pod_cidr.to_string() == *subnet)
                .expect("peer");
            assert_eq!(peer.spec.underlay.to_string(), node.ip);
            assert_eq!(peer.spec.vtep_mac().to_string(), mac);
            assert!(peer.lease.is_some(), "{peer:?}");
        }
    }
    // Pods reach each other across the three nodes; each pod's address is in its node's subnet.
    let ips: Vec<String> = nodes.iter().map(|n| n.pod_ip(0)).collect();
    for (ip, subnet) in ips.iter().zip(&subnets) {
        let net: ipnet::Ipv4Net = subnet.parse().expect("subnet");
        assert!(
            net.contains(&ip.parse::<Ipv4Addr>().expect("ip")),
            "{ip} in {subnet}"
        );
    }
    for (a, node) in nodes.iter().enumerate() {
        for (b, ip) in ips.iter().enumerate() {
            if a != b {
                assert!(ping(&node.pod_ns[0], ip), "{} pod -> {ip}", node.name);
            }
        }
    }
    let status = nodes[0].status_text();
    assert!(
        status.contains("healthy")
            && status.contains(&format!("subnets/{}", subnets[0].replace('/', "-"))),
        "{status}"
    );

    // A peer learnt from etcd is not deleted by hand (it would come back): its lease is.
    let learnt = nodes[0].peers()[0].spec.name.clone();
    match nodes[0].call(&podswitch::control::Request::PeerDel { name: learnt }) {
        podswitch::control::Response::Error { message, .. } => {
            assert!(message.contains("learnt from etcd"), "{message}")
        }
        other => panic!("peer del of an etcd peer: {other:?}"),
    }
    assert_eq!(nodes[0].etcd_peers().len(), 2);

    // A restarted node gets its subnet back (its own PublicIP's lease) and its pod its address.
    nodes[1].stop();
    nodes[1].start();
    assert_eq!(nodes[1].subnet(), subnets[1]);
    assert_eq!(nodes[1].pod_ip(0), ips[1]);
    assert_eq!(c.leases().len(), 3, "{:?}", c.leases());
    assert!(ping(&nodes[0].pod_ns[0], &ips[1]), "after the restart");

    // A node killed outright: its lease (TTL 5 s) expires and the others forget it.
    nodes[2].kill();
    let rest = [subnets[1].as_str()];
    nodes[0].wait_peers(&rest, Duration::from_secs(20));
    nodes[1].wait_peers(&[subnets[0].as_str()], Duration::from_secs(5));
    assert_eq!(c.leases().len(), 2, "{:?}", c.leases());
    assert!(ping(&nodes[0].pod_ns[0], &ips[1]), "the others still talk");
}

#[root_test]
fn a_kernel_vxlan_node_joins_by_a_hand_written_lease_and_leaves_when_it_is_deleted() {
    let mut c = Cluster::new();
    let nodes: Vec<Node> = (1..=2).map(|i| c.node(i, 1, 30)).collect();
    let subnets: Vec<String> = nodes.iter().map(Node::subnet).collect();
    // The kernel node takes a subnet nobody holds and writes its lease as flannel does.
    let kernel_subnet = "10.244.200.0/24";
    let kernel = KernelFlannelNode::new(
        &mut c.underlay,
        "192.168.77.9",
        kernel_subnet,
        "02:aa:bb:cc:dd:09",
    );
    let key = kernel.subnet_key(&c.prefix);
    c.etcd.put_with_lease(&key, &kernel.lease_value(), 60);
    // ... and configures its side from the podswitch nodes' leases, read back from etcd.
    for (k, value) in c.leases() {
        let subnet = key_subnet(&k);
        if subnet != kernel_subnet {
            kernel.add_remote(
                &subnet,
                &field(&value, "PublicIP"),
                &field(&value, "VtepMAC"),
            );
        }
    }
    let mut want = subnets.clone();
    want.push(kernel_subnet.into());
    for (i, n) in nodes.iter().enumerate() {
        let others: Vec<&str> = want
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, s)| s.as_str())
            .collect();
        n.wait_peers(&others, Duration::from_secs(15));
    }
    // Traffic both ways between the kernel's pod and each podswitch pod.
    for n in &nodes {
        let ip = n.pod_ip(0);
        assert!(ping(kernel.pod_ns(), &ip), "kernel pod -> {ip}");
        assert!(
            ping(&n.pod_ns[0], &kernel.pod_ip()),
            "{} pod -> kernel pod",
            n.name
        );
    }
    // A changed VtepMAC is applied in place.
    let moved = kernel
        .lease_value()
        .replace("02:aa:bb:cc:dd:09", "02:aa:bb:cc:dd:0a");
    c.etcd.put_with_lease(&key, &moved, 60);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nodes[0].peers().iter().any(|p| {
        p.spec.pod_cidr.to_string() == kernel_subnet
            && p.spec.vtep_mac().to_string() == "02:aa:bb:cc:dd:0a"
    }) {
        assert!(
            Instant::now() < deadline,
            "new VtepMAC not applied: {:?}",
            nodes[0].peers()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The lease deleted: the kernel node is no peer any more.
    c.etcd.del(&key);
    nodes[0].wait_peers(&[subnets[1].as_str()], Duration::from_secs(10));
    nodes[1].wait_peers(&[subnets[0].as_str()], Duration::from_secs(10));
}

#[root_test]
fn with_etcd_gone_pods_keep_talking_a_node_restarts_on_its_subnet_and_etcd_back_brings_a_new_node()
{
    let mut c = Cluster::new();
    let mut nodes: Vec<Node> = (1..=2).map(|i| c.node(i, 1, 30)).collect();
    let subnets: Vec<String> = nodes.iter().map(Node::subnet).collect();
    nodes[0].wait_peers(&[subnets[1].as_str()], Duration::from_secs(15));
    nodes[1].wait_peers(&[subnets[0].as_str()], Duration::from_secs(15));
    let ips: Vec<String> = nodes.iter().map(|n| n.pod_ip(0)).collect();

    c.etcd.stop();
    nodes[0].wait_status("etcd unreachable", Duration::from_secs(20), |s| {
        s.contains("unreachable")
    });
    assert!(
        ping(&nodes[0].pod_ns[0], &ips[1]),
        "pods talk with etcd gone"
    );
    assert!(
        ping(&nodes[1].pod_ns[0], &ips[0]),
        "pods talk with etcd gone"
    );
    // A node restarted meanwhile comes back on the subnet it held, its pod on its address.
    nodes[1].stop();
    nodes[1].start();
    assert_eq!(nodes[1].subnet(), subnets[1]);
    assert_eq!(nodes[1].pod_ip(0), ips[1]);

    c.etcd.start_again();
    // Back: the restarted node holds its lease again, both are healthy, and learn each other.
    for n in &nodes {
        n.wait_status("healthy", Duration::from_secs(30), |s| {
            s.contains(": healthy;")
        });
    }
    nodes[1].wait_peers(&[subnets[0].as_str()], Duration::from_secs(15));
    assert!(ping(&nodes[1].pod_ns[0], &ips[0]), "after etcd came back");
    // A new node is seen by the others.
    let third = c.node(3, 1, 30);
    let s3 = third.subnet();
    nodes[0].wait_peers(&[subnets[1].as_str(), s3.as_str()], Duration::from_secs(15));
    assert!(
        ping(&nodes[0].pod_ns[0], &third.pod_ip(0)),
        "to the new node"
    );
}

#[root_test]
fn the_nodes_own_key_deleted_is_recreated() {
    let mut c = Cluster::new();
    let node = c.node(1, 0, 30);
    let subnet = node.subnet();
    let key = format!("{}/subnets/{}", c.prefix, subnet.replace('/', "-"));
    let value = c.etcd.get(&key).expect("our key");
    c.etcd.del(&key);
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.etcd.get(&key).is_none() {
        assert!(
            Instant::now() < deadline,
            "key not recreated\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.etcd.get(&key).as_deref(), Some(value.as_str()));
    // Still attached to a live lease: a keep-alive keeps it there.
    let out = c.etcd.etcdctl_ok(&["get", &key, "-w", "json"]);
    assert!(out.contains("\"lease\""), "{out}");
}

#[root_test]
fn a_missing_config_and_an_exhausted_range_are_said_and_waited_out() {
    // No network config yet.
    let mut c = Cluster::with_network("");
    let node = c.node(1, 1, 30);
    let s = node.wait_status("the missing config", Duration::from_secs(15), |s| {
        s.contains("config: is missing")
    });
    assert!(s.contains(&format!("etcd key {}/config", c.prefix)), "{s}");
    // A network with room for one /24 only (SubnetMin = SubnetMax = 10.244.1.0), already
    // held by someone else.
    c.etcd.put(
        &format!("{}/subnets/10.244.1.0-24", c.prefix),
        r#"{"PublicIP":"192.168.77.50","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:50"}}"#,
    );
    c.etcd.put(
        &format!("{}/config", c.prefix),
        r#"{"Network":"10.244.0.0/22","SubnetLen":24,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.1.0","Backend":{"Type":"vxlan"}}"#,
    );
    let s = node.wait_status("an exhausted range", Duration::from_secs(20), |s| {
        s.contains("no free /24 left")
    });
    assert!(s.contains("SubnetMax"), "{s}");
    // The holder goes away: the node leases the subnet and starts its pod.
    c.etcd.del(&format!("{}/subnets/10.244.1.0-24", c.prefix));
    assert_eq!(node.subnet(), "10.244.1.0/24");
    assert_eq!(node.pod_ip(0), "10.244.1.2");
    assert!(
        ping(&node.pod_ns[0], "10.244.1.1"),
        "the pod reaches its gateway"
    );
}

#[root_test]
fn a_configured_subnet_held_by_another_node_is_waited_for_never_shared() {
    let mut c = Cluster::new();
    let key = format!("{}/subnets/10.244.5.0-24", c.prefix);
    c.etcd.put(
        &key,
        r#"{"PublicIP":"192.168.77.50","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:50"}}"#,
    );
    let node = c.node_with(1, 1, 30, "pod_cidr = \"10.244.5.0/24\"\n");
    let s = node.wait_status("who holds the subnet", Duration::from_secs(15), |s| {
        s.contains("node.pod_cidr 10.244.5.0/24 is held by 192.168.77.50")
    });
    assert!(s.contains("not up yet"), "{s}");
    // The holder goes: the node leases it and starts.
    c.etcd.del(&key);
    assert_eq!(node.subnet(), "10.244.5.0/24");
    let value = c.etcd.get(&key).expect("our lease");
    assert!(value.contains("192.168.77.1"), "{value}");
}

/// An HTTP server answering every GET with `hello from <its address>`.
const HELLO_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("hello from " + sys.argv[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;

/// A [`HELLO_SERVER`] in `ns` on `ip:port`; killed on drop.
struct HelloServer(std::process::Child);

impl HelloServer {
    fn start(ns: &str, ip: &str, port: u16) -> Self {
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", HELLO_SERVER, ip])
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 http server");
        let probe = format!("ss -ltn | grep -q '{ip}:{port} '");
        wait_for("the http server", || {
            run(&["ip", "netns", "exec", ns, "sh", "-c", &probe])
                .status
                .success()
        });
        HelloServer(child)
    }
}

impl Drop for HelloServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `curl url` from namespace `ns`: the body, or None if it failed.
fn fetch(ns: &str, url: &str) -> Option<String> {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-sS",
        "--max-time",
        "5",
        url,
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[root_test]
fn a_service_put_in_etcd_is_applied_on_every_node_reached_through_its_vip_and_removed_with_its_key()
{
    let mut c = Cluster::new();
    let mut nodes: Vec<Node> = (1..=2).map(|i| c.node(i, 1, 30)).collect();
    let subnets: Vec<String> = nodes.iter().map(Node::subnet).collect();
    nodes[0].wait_peers(&[subnets[1].as_str()], Duration::from_secs(15));
    nodes[1].wait_peers(&[subnets[0].as_str()], Duration::from_secs(15));
    let backend = nodes[1].pod_ip(0);
    let _server = HelloServer::start(&nodes[1].pod_ns[0], &backend, 8080);

    // A key whose JSON names another service: not applied (logged, naming the key). Put first:
    // once the valid key after it is applied, this one has been seen and refused.
    let bad_key = format!("{}/other", c.services_prefix);
    let json = format!(
        r#"{{"name":"web","vip":"10.96.0.10","port":80,"proto":"tcp","backends":["{backend}:8080"]}}"#
    );
    c.etcd.put(&bad_key, &json);
    let key = format!("{}/web", c.services_prefix);
    c.etcd.put(&key, &json);
    for n in &nodes {
        let services = n.wait_services(&["web"], Duration::from_secs(10));
        let s = &services[0];
        assert_eq!(s.source, PeerSource::Etcd, "{s:?}");
        assert_eq!(s.spec.vip.to_string(), "10.96.0.10");
        assert_eq!(s.spec.port, 80);
        assert_eq!(
            s.spec.backends,
            vec![format!("{backend}:8080").parse().unwrap()]
        );
        let log = n.log();
        assert!(
            log.contains(&bad_key) && log.contains("is not the key's last segment"),
            "{}: the mismatched key is not reported\n{log}",
            n.name
        );
        n.wait_status("a service from etcd", Duration::from_secs(5), |s| {
            s.contains("1 services from etcd")
        });
    }
    // A pod of node 1 reaches the backend on node 2 through the VIP.
    let want = format!("hello from {backend}");
    let mut body = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while body.as_deref() != Some(want.as_str()) {
        assert!(
            Instant::now() < deadline,
            "curl through the VIP: {body:?}\n{}",
            nodes[0].log()
        );
        body = fetch(&nodes[0].pod_ns[0], "http://10.96.0.10:80/");
    }
    // A runtime service is not replaced by etcd's of the same name (node 1 keeps its own, node
    // 2 takes etcd's); a VIP outside the service CIDR is refused on both.
    let local = ServiceSpec {
        name: "rt".into(),
        vip: "10.96.0.20".parse().unwrap(),
        port: 80,
        proto: ServiceProto::Tcp,
        backends: Vec::new(),
        affinity: None,
    };
    assert!(matches!(
        nodes[0].call(&Request::ServiceAdd(local.clone())),
        Response::Ok
    ));
    let rt_key = format!("{}/rt", c.services_prefix);
    c.etcd
        .put(&rt_key, r#"{"name":"rt","vip":"10.96.0.21","port":80}"#);
    let far_key = format!("{}/far", c.services_prefix);
    c.etcd
        .put(&far_key, r#"{"name":"far","vip":"10.200.0.1","port":80}"#);
    let s = nodes[1].wait_services(&["rt", "web"], Duration::from_secs(10));
    assert_eq!(
        (s[0].source, s[0].spec.vip.to_string().as_str()),
        (PeerSource::Etcd, "10.96.0.21")
    );
    wait_for("node1 to refuse the etcd service rt and far", || {
        let log = nodes[0].log();
        log.contains(&rt_key)
            && log.contains("is already a service from the runtime")
            && log.contains(&far_key)
    });
    let s = nodes[0].wait_services(&["rt", "web"], Duration::from_secs(1));
    assert_eq!((s[0].source, &s[0].spec), (PeerSource::Runtime, &local));
    // A node stopped cleanly (SIGTERM) forgets its runtime services: restarted, it lists
    // etcd's, the one its runtime service kept out included.
    let mut n1 = nodes.remove(0);
    n1.stop();
    n1.start();
    assert_eq!(n1.subnet(), subnets[0]);
    let s = n1.wait_services(&["rt", "web"], Duration::from_secs(15));
    let sources: Vec<_> = s.iter().map(|s| (s.spec.name.as_str(), s.source)).collect();
    assert_eq!(
        sources,
        [("rt", PeerSource::Etcd), ("web", PeerSource::Etcd)],
        "{s:?}"
    );
    assert_eq!(s[0].spec.vip.to_string(), "10.96.0.21", "etcd's rt");
    nodes.insert(0, n1);
    c.etcd.del(&rt_key);
    c.etcd.del(&far_key);

    // The keys deleted: the services are gone from both nodes (the mismatched key never was
    // one).
    c.etcd.del(&key);
    nodes[0].wait_services(&[], Duration::from_secs(10));
    nodes[1].wait_services(&[], Duration::from_secs(10));
    assert_eq!(
        fetch(&nodes[0].pod_ns[0], "http://10.96.0.10:80/"),
        None,
        "the VIP still answers"
    );
}

/// The sample `series` (name and labels as written) of the Prometheus text `text`, if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `node.metrics` on 127.0.0.1 inside each node's own namespace: the etcd lease, and the
/// tunnel traffic of each peer as pods on two nodes ping each other; the text passes promtool.
#[root_test]
fn metrics_in_the_nodes_namespace_show_the_lease_and_each_peers_tunnel_traffic() {
    let mut c = Cluster::new();
    let metrics = "metrics = \"127.0.0.1:9469\"\n";
    let nodes: Vec<Node> = (1..=2).map(|i| c.node_with(i, 1, 30, metrics)).collect();
    let subnets: Vec<String> = nodes.iter().map(Node::subnet).collect();
    nodes[0].wait_peers(&[subnets[1].as_str()], Duration::from_secs(15));
    nodes[1].wait_peers(&[subnets[0].as_str()], Duration::from_secs(15));
    // Scraped from inside the node's namespace, the daemon's.
    let try_scrape = |n: &Node| {
        let pid = n.child.as_ref().expect("running").id().to_string();
        let ns = run(&["ip", "netns", "identify", &pid]);
        let ns = String::from_utf8_lossy(&ns.stdout).trim().to_string();
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "curl",
            "-sf",
            "--max-time",
            "10",
            "http://127.0.0.1:9469/metrics",
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_for("both nodes serve metrics with their lease", || {
        nodes.iter().all(|n| {
            try_scrape(n).is_some_and(|t| sample(&t, "podswitch_etcd_lease_held") == Some(1.0))
        })
    });
    let scrape =
        |n: &Node| try_scrape(n).unwrap_or_else(|| panic!("{}: scrape\n{}", n.name, n.log()));
    assert!(
        ping(&nodes[0].pod_ns[0], &nodes[1].pod_ip(0)),
        "a pod of node1 pings a pod of node2"
    );
    // Node 1 itself pings its pod, through its host interface.
    let pid = nodes[0].child.as_ref().expect("running").id().to_string();
    let ns = run(&["ip", "netns", "identify", &pid]);
    let ns = String::from_utf8_lossy(&ns.stdout).trim().to_string();
    assert!(ping(&ns, &nodes[0].pod_ip(0)), "node 1 pings its pod");
    let text = scrape(&nodes[0]);
    for family in ["rx_packets", "tx_packets"] {
        let series = format!("podswitch_host_{family}_total{{host=\"podsw0\"}}");
        let v = sample(&text, &series).unwrap_or(0.0);
        assert!(v >= 3.0, "{series} = {v}\n{text}");
    }
    for (n, other) in [(&nodes[0], &nodes[1]), (&nodes[1], &nodes[0])] {
        let text = scrape(n);
        let check = run_with_stdin(&["promtool", "check", "metrics"], &text);
        assert!(check.status.success(), "promtool: {check:?}\n{text}");
        assert_eq!(sample(&text, "podswitch_etcd_healthy"), Some(1.0), "{text}");
        let ttl = sample(&text, "podswitch_etcd_lease_ttl_seconds").unwrap_or(0.0);
        let left = sample(&text, "podswitch_etcd_lease_expiry_seconds").unwrap_or(0.0);
        assert!(ttl > 0.0 && ttl <= 30.0 && left > 0.0, "{text}");
        assert_eq!(sample(&text, "podswitch_peers"), Some(1.0), "{text}");
        let peer = n
            .peers()
            .into_iter()
            .find(|p| p.spec.underlay.to_string() == other.ip)
            .expect("the other node is a peer");
        for family in ["tx_packets", "rx_packets"] {
            let series = format!(
                "podswitch_peer_{family}_total{{peer=\"{}\"}}",
                peer.spec.name
            );
            let v = sample(&text, &series).unwrap_or(0.0);
            assert!(v >= 3.0, "{}: {series} = {v}\n{text}", n.name);
        }
    }
}
