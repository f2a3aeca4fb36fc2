use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::*;
use crate::node::spec::{derived_router_mac, Mac, ServiceAffinity, ServiceProto, ServiceSpec};
use crate::pipeline::NodeConfig;
use crate::table::MacTableConfig;

const GOOD: &str = r#"
[node]
name = "node-a"
pod_cidr = "10.244.1.0/24"
mtu = 1400
control = "/tmp/podswitch-test/node-a.sock"
mac_table_size = 1024
mac_ageing_secs = 60
underlay = "192.168.77.1"
vxlan_port = 4789
vni = 42

[[pods]]
name = "web"
netns = "web"
ip = "10.244.1.10"

[[pods]]
name = "db"
netns = "db-ns"
ip = "10.244.1.11"
mac = "02:42:AA:bb:cc:dd"

[[peers]]
name = "node-b"
underlay = "192.168.77.2"
pod_cidr = "10.244.2.0/24"
vtep_mac = "02-ee-00-00-00-02"
"#;

const MINIMAL: &str = r#"
[node]
name = "node-a"
pod_cidr = "10.244.1.0/24"
"#;

/// A minimal node plus `extra` TOML appended.
fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

/// A node with `node_extra` lines in `[node]`.
fn node_with(node_extra: &str) -> String {
    format!("[node]\nname = \"node-a\"\npod_cidr = \"10.244.1.0/24\"\n{node_extra}\n")
}

fn pod(name: &str, netns: &str, ip: &str) -> String {
    format!("\n[[pods]]\nname = \"{name}\"\nnetns = \"{netns}\"\nip = \"{ip}\"\n")
}

#[track_caller]
fn err(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("accepted: {c:?}\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn assert_err(text: &str, expected: &str) {
    let msg = err(text);
    assert_eq!(msg, expected, "for:\n{text}");
}

#[track_caller]
fn assert_err_starts(text: &str, expected: &str) {
    let msg = err(text);
    assert!(
        msg.starts_with(expected),
        "got {msg:?}, want prefix {expected:?}, for:\n{text}"
    );
}

#[test]
fn good_config_parses() {
    let c = Config::from_toml_str(GOOD).unwrap();
    assert_eq!(c.node.name, "node-a");
    assert_eq!(
        c.node.pod_cidr,
        Some("10.244.1.0/24".parse::<Ipv4Net>().unwrap())
    );
    assert_eq!(c.node.gateway(), Some(Ipv4Addr::new(10, 244, 1, 1)));
    assert_eq!(c.node.mtu, Some(1400));
    assert_eq!(
        c.node.control_path(),
        PathBuf::from("/tmp/podswitch-test/node-a.sock")
    );
    assert_eq!(c.node.vxlan_port, 4789);
    assert_eq!(c.node.vni, 42);
    assert_eq!(c.node.underlay, Some(Ipv4Addr::new(192, 168, 77, 1)));
    assert_eq!(c.pods.len(), 2);
    assert_eq!(c.pods[0].mac(), Some(Mac([0x02, 0x42, 10, 244, 1, 10])));
    assert_eq!(
        c.pods[1].mac(),
        Some(Mac([0x02, 0x42, 0xaa, 0xbb, 0xcc, 0xdd]))
    );
    assert_eq!(c.pods[1].netns, "db-ns");
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.peers[0].vtep_mac(), Mac([2, 0xee, 0, 0, 0, 2]));

    let nc = c.node.node_config().unwrap();
    assert_eq!(Some(nc.cidr), c.node.pod_cidr);
    assert_eq!(nc.gateway, Ipv4Addr::new(10, 244, 1, 1));
    assert_eq!(nc.router_mac, derived_router_mac("node-a").into());
    assert_eq!((nc.vni, nc.mtu, nc.tunnel_mtu), (42, 1400, 1450));
    let mt = c.node.mac_table_config();
    assert_eq!((mt.capacity, mt.ageing), (1024, Duration::from_secs(60)));
}

#[test]
fn good_config_round_trips() {
    let c = Config::from_toml_str(GOOD).unwrap();
    let text = toml::to_string(&c).unwrap();
    let again = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(c, again);
    assert!(text.contains("mac = \"02:42:aa:bb:cc:dd\""), "{text}");
    assert!(text.contains("pod_cidr = \"10.244.1.0/24\""), "{text}");
}

#[test]
fn defaults_applied() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert!(c.pods.is_empty() && c.peers.is_empty());
    let n = &c.node;
    assert_eq!(n.gateway(), Some(Ipv4Addr::new(10, 244, 1, 1)));
    assert_eq!(n.pod_mtu(), 1450);
    assert_eq!(
        n.control_path(),
        PathBuf::from("/run/podswitch/node-a.sock")
    );
    assert_eq!(n.router_mac(), derived_router_mac("node-a"));
    assert_eq!(n.mac_table_config(), MacTableConfig::default());
    assert_eq!((n.vxlan_port, n.vni, n.underlay), (8472, 1, None));
    let nc = n.node_config();
    assert_eq!(
        nc,
        Ok(NodeConfig::new(n.pod_cidr.unwrap(), n.router_mac().into()))
    );
}

#[test]
fn pod_mtu_follows_the_underlay() {
    let c = Config::from_toml_str(&node_with("underlay_mtu = 9000")).expect("valid");
    assert_eq!((c.node.pod_mtu(), c.node.tunnel_mtu()), (8950, 8950));
    let c = Config::from_toml_str(&node_with("underlay_mtu = 9000\nmtu = 1500")).expect("valid");
    assert_eq!((c.node.pod_mtu(), c.node.tunnel_mtu()), (1500, 8950));
    let e = Config::from_toml_str(&node_with("underlay_mtu = 100")).expect_err("too small");
    assert!(e.to_string().contains("node.underlay_mtu"), "{e}");
}

#[test]
fn explicit_gateway_and_router_mac() {
    let c = Config::from_toml_str(&node_with(
        "gateway = \"10.244.1.254\"\nrouter_mac = \"02:00:00:00:00:01\"",
    ))
    .unwrap();
    assert_eq!(c.node.gateway(), Some(Ipv4Addr::new(10, 244, 1, 254)));
    assert_eq!(c.node.router_mac(), Mac([2, 0, 0, 0, 0, 1]));
    // The first host address is then free for a pod.
    Config::from_toml_str(&format!(
        "{}{}",
        node_with("gateway = \"10.244.1.254\""),
        pod("a", "a", "10.244.1.1")
    ))
    .unwrap();
    // vtep_mac alone sets the router MAC too; equal to router_mac is fine.
    let c = Config::from_toml_str(&node_with("vtep_mac = \"02:00:00:00:00:07\"")).unwrap();
    assert_eq!(c.node.router_mac(), Mac([2, 0, 0, 0, 0, 7]));
    Config::from_toml_str(&node_with(
        "vtep_mac = \"02:00:00:00:00:07\"\nrouter_mac = \"02:00:00:00:00:07\"",
    ))
    .unwrap();
}

#[test]
fn toml_errors_name_the_field() {
    assert_err(
        &node_with("mtu = \"big\""),
        "config error: node.mtu: invalid type: string \"big\", expected u16 (line 4, column 7)",
    );
    assert_err_starts(
        &node_with("colour = \"blue\""),
        "config error: node.colour: unknown field (expected one of `name`, `pod_cidr`",
    );
    assert_err_starts(
        &with(&format!("{}speed = 10\n", pod("a", "a", "10.244.1.10"))),
        "config error: pods[0].speed: unknown field",
    );
    assert_err_starts(
        &format!("{MINIMAL}[extra]\nx = 1\n"),
        "config error: extra: unknown field",
    );
    assert_err(
        "",
        "config error: node: is required (a [node] table) (line 1, column 1)",
    );
    assert_err(
        &with("\n[[pods]]\nname = \"a\"\nip = \"10.244.1.10\"\n"),
        "config error: pods[0].netns: is required (line 6, column 1)",
    );
    assert_err(
        &with(&format!("{}{}", pod("a", "a", "10.244.1.10"), pod("b", "b", "10.244.1.300"))),
        "config error: pods[1].ip: \"10.244.1.300\": invalid IPv4 address syntax (line 14, column 6)",
    );
    assert_err(
        "[node]\nname = \"n\"\npod_cidr = \"10.244.1.0\"\n",
        "config error: node.pod_cidr: \"10.244.1.0\": invalid IP address syntax (expected an address and a prefix length, like 10.244.1.0/24) (line 3, column 12)",
    );
    assert_err(
        &with("\n[[pods]]\nname = \"a\"\nnetns = \"a\"\nip = \"10.244.1.10\"\nmac = \"zz:42:0a:f4:01:0a\"\n"),
        "config error: pods[0].mac: \"zz:42:0a:f4:01:0a\" is not a MAC address (expected six hex pairs like 02:42:0a:f4:01:0a) (line 10, column 7)",
    );
    assert_err(
        &node_with("router_mac = 5"),
        "config error: node.router_mac: invalid type: integer `5`, expected a string (line 4, column 14)",
    );
    // Numbers the field's type cannot hold: the field's own range, not the type's.
    assert_err(
        &node_with("mtu = 70000"),
        "config error: node.mtu: 70000 is not between 68 and 65521 (the IPv4 minimum to the largest pod MTU) (line 4, column 7)",
    );
    assert_err(
        &node_with("mtu = -1"),
        "config error: node.mtu: -1 is not between 68 and 65521 (the IPv4 minimum to the largest pod MTU) (line 4, column 7)",
    );
    assert_err(
        &node_with("vxlan_port = 65536"),
        "config error: node.vxlan_port: 65536 is not between 1 and 65535 (a UDP port) (line 4, column 14)",
    );
}

#[test]
fn syntax_errors_give_the_position() {
    let msg = err("[node]\nname = \"node-a\"\npod_cidr = \n");
    assert!(msg.starts_with("config error: line 3, column "), "{msg}");
    let msg = err("[node\n");
    assert!(msg.starts_with("config error: line 1, column "), "{msg}");
    let msg = err(&format!("{MINIMAL}name = \"again\"\n"));
    assert_eq!(msg, "config error: line 5, column 1: duplicate key");
}

#[test]
fn node_name_rules() {
    let bad = |name: &str| format!("[node]\nname = \"{name}\"\npod_cidr = \"10.244.1.0/24\"\n");
    assert_err(&bad(""), "config error: node.name: must not be empty");
    assert_err(
        &bad("node a"),
        "config error: node.name: \"node a\" contains ' ' (allowed: letters, digits, '.', '_', '-')",
    );
    assert_err_starts(&bad("a/b"), "config error: node.name: \"a/b\" contains '/'");
    let long = "n".repeat(64);
    assert_err(
        &bad(&long),
        &format!("config error: node.name: {long:?} is 64 characters long (at most 63)"),
    );
    Config::from_toml_str(&bad(&"n".repeat(63))).unwrap();
    Config::from_toml_str(&bad("Node_1.a-b")).unwrap();
}

#[test]
fn pod_cidr_rules() {
    let cidr = |c: &str| format!("[node]\nname = \"n\"\npod_cidr = \"{c}\"\n");
    assert_err(
        &cidr("10.0.0.0/31"),
        "config error: node.pod_cidr: 10.0.0.0/31 has no room for a gateway and pods (the prefix length must be at most 30)",
    );
    assert_err(
        &cidr("10.244.1.5/24"),
        "config error: node.pod_cidr: 10.244.1.5/24 has host bits set (did you mean 10.244.1.0/24?)",
    );
    let c = Config::from_toml_str(&cidr("10.0.0.0/30")).unwrap();
    assert_eq!(c.node.gateway(), Some(Ipv4Addr::new(10, 0, 0, 1)));
}

#[test]
fn gateway_rules() {
    assert_err(
        &node_with("gateway = \"10.244.2.1\""),
        "config error: node.gateway: 10.244.2.1 is outside node.pod_cidr 10.244.1.0/24",
    );
    assert_err(
        &node_with("gateway = \"10.244.1.0\""),
        "config error: node.gateway: 10.244.1.0 is the network address of node.pod_cidr 10.244.1.0/24",
    );
    assert_err(
        &node_with("gateway = \"10.244.1.255\""),
        "config error: node.gateway: 10.244.1.255 is the broadcast address of node.pod_cidr 10.244.1.0/24",
    );
}

#[test]
fn mtu_rules() {
    assert_err(
        &node_with("mtu = 40"),
        "config error: node.mtu: 40 is not between 68 and 65521 (the IPv4 minimum to the largest pod MTU)",
    );
    assert_err(
        &node_with("mtu = 65522"),
        "config error: node.mtu: 65522 is not between 68 and 65521 (the IPv4 minimum to the largest pod MTU)",
    );
    Config::from_toml_str(&node_with("mtu = 68")).unwrap();
    Config::from_toml_str(&node_with("mtu = 65521")).unwrap();
}

#[test]
fn node_misc_rules() {
    assert_err(
        &node_with("mac_table_size = 0"),
        "config error: node.mac_table_size: 0 is not between 1 and 4294967295 (MAC table entries)",
    );
    assert_err(
        &node_with("mac_ageing_secs = 0"),
        "config error: node.mac_ageing_secs: 0 is not between 1 and 4294967295 (seconds)",
    );
    assert_err(
        &node_with("workers = 0"),
        "config error: node.workers: 0 is not between 1 and 64 (data-plane threads)",
    );
    assert_err(
        &node_with("workers = 65"),
        "config error: node.workers: 65 is not between 1 and 64 (data-plane threads)",
    );
    let cfg = Config::from_toml_str(&node_with("workers = 4")).unwrap();
    assert_eq!(cfg.node.workers, 4);
    // Pinning (see spec's tests for the machine check).
    let pinned = Config::from_toml_str(&node_with("cpus = [7, 3]")).unwrap();
    assert_eq!(pinned.node.dataplane_cpus(&[3, 7]).unwrap(), [7, 3]);
    let unpinned = Config::from_toml_str(&node_with("cpus = []")).unwrap();
    assert!(unpinned.node.dataplane_cpus(&[0, 1]).unwrap().is_empty());
    assert_err(
        &node_with("cpus = [4096]"),
        "config error: node.cpus[0]: 4096 is not between 0 and 1023 (CPU numbers)",
    );
    assert_err(
        &node_with("router_mac = \"01:00:5e:00:00:01\""),
        "config error: node.router_mac: 01:00:5e:00:00:01 is a group (multicast or broadcast) MAC; a unicast MAC has the low bit of the first octet clear",
    );
    assert_err(
        &node_with("router_mac = \"00:00:00:00:00:00\""),
        "config error: node.router_mac: 00:00:00:00:00:00 is not a usable MAC",
    );
    assert_err(
        &node_with("router_mac = \"02:00:00:00:00:01\"\nvtep_mac = \"02:00:00:00:00:02\""),
        "config error: node.vtep_mac: 02:00:00:00:00:02 differs from node.router_mac 02:00:00:00:00:01 (the router MAC is the VTEP MAC; give one)",
    );
    assert_err(
        &node_with("control = \"\""),
        "config error: node.control: is empty",
    );
    assert_err_starts(
        &node_with(&format!("control = \"/{}\"", "s".repeat(120))),
        "config error: node.control: /sss",
    );
    assert_err(
        &node_with("vxlan_port = 0"),
        "config error: node.vxlan_port: 0 is not between 1 and 65535 (a UDP port)",
    );
    assert_err(
        &node_with("vni = 16777216"),
        "config error: node.vni: 16777216 is not between 0 and 16777215 (VXLAN's 24 bits)",
    );
    Config::from_toml_str(&node_with("vni = 16777215")).unwrap();
    assert_err(
        &node_with("underlay = \"0.0.0.0\""),
        "config error: node.underlay: 0.0.0.0 is not a unicast address",
    );
}

#[test]
fn pod_name_rules() {
    assert_err(
        &with(&pod("", "a", "10.244.1.10")),
        "config error: pods[0].name: must not be empty",
    );
    assert_err_starts(
        &with(&pod("we b", "a", "10.244.1.10")),
        "config error: pods[0].name: \"we b\" contains ' '",
    );
    assert_err(
        &with(&format!(
            "{}{}",
            pod("web", "a", "10.244.1.10"),
            pod("web", "b", "10.244.1.11")
        )),
        "config error: pods[1].name: \"web\" is already the name of another pod",
    );
}

#[test]
fn netns_rules() {
    assert_err(
        &with(&format!("{}{}", pod("a", "shared", "10.244.1.10"), pod("b", "shared", "10.244.1.11"))),
        "config error: pods[1].netns: namespace \"shared\" already belongs to pod \"a\" (a pod is one namespace: two pods cannot share it)",
    );
    assert_err(
        &with(&pod("a", "", "10.244.1.10")),
        "config error: pods[0].netns: must not be empty",
    );
    assert_err(
        &with(&pod("a", "..", "10.244.1.10")),
        "config error: pods[0].netns: \"..\" is not a namespace name (it names a directory)",
    );
    assert_err_starts(
        &with(&pod("a", ".", "10.244.1.10")),
        "config error: pods[0].netns: \".\" is not",
    );
    assert_err(
        &with(&pod("a", "x/y", "10.244.1.10")),
        "config error: pods[0].netns: \"x/y\" contains '/' (a namespace name is a file name in /run/netns); a path to a namespace file must be absolute",
    );
    assert_err(
        &with(&pod("a", &"n".repeat(256), "10.244.1.10")),
        "config error: pods[0].netns: 256 bytes is longer than a file name can be (255)",
    );
    // Anything else a file name may hold is fine.
    Config::from_toml_str(&with(&pod("a", "ns with space:é", "10.244.1.10"))).unwrap();
}

/// A pod entry with `extra` lines (container_id, ifname).
fn pod_with(name: &str, netns: &str, ip: &str, extra: &str) -> String {
    format!("{}{extra}\n", pod(name, netns, ip))
}

#[test]
fn namespace_paths_container_ids_and_interface_names() {
    let cfg = Config::from_toml_str(&with(&format!(
        "{}{}",
        pod_with(
            "a",
            "/proc/1234/ns/net",
            "10.244.1.10",
            "container_id = \"c0ffee_1.x-y\"\nifname = \"net1\""
        ),
        pod("b", "b", "10.244.1.11")
    )))
    .unwrap();
    let (a, b) = (&cfg.pods[0], &cfg.pods[1]);
    assert!(a.netns_is_path() && !b.netns_is_path());
    assert_eq!(a.container_id.as_deref(), Some("c0ffee_1.x-y"));
    assert_eq!((a.ifname.as_str(), b.ifname.as_str()), ("net1", "eth0"));
    assert_eq!(b.container_id, None);

    // A path and a name of the same file are one namespace.
    assert_err(
        &with(&format!(
            "{}{}",
            pod("a", "shared", "10.244.1.10"),
            pod("b", "/run/netns/shared", "10.244.1.11")
        )),
        "config error: pods[1].netns: namespace \"/run/netns/shared\" already belongs to pod \"a\" (a pod is one namespace: two pods cannot share it)",
    );
    let id = |v: &str| {
        with(&pod_with(
            "a",
            "a",
            "10.244.1.10",
            &format!("container_id = {v:?}"),
        ))
    };
    assert_err(
        &id(""),
        "config error: pods[0].container_id: must not be empty",
    );
    assert_err(
        &id("-abc"),
        "config error: pods[0].container_id: \"-abc\" starts with '-' (a container ID starts with a letter or digit)",
    );
    assert_err(
        &id("ab/c"),
        "config error: pods[0].container_id: \"ab/c\" contains '/' (allowed: letters, digits, '.', '_', '-')",
    );
    assert_err(
        &id(&"c".repeat(256)),
        "config error: pods[0].container_id: 256 characters is longer than a container ID can be (255)",
    );
    Config::from_toml_str(&id(&"c".repeat(255))).unwrap();
    let ifname = |v: &str| {
        with(&pod_with(
            "a",
            "a",
            "10.244.1.10",
            &format!("ifname = {v:?}"),
        ))
    };
    assert_err(
        &ifname(""),
        "config error: pods[0].ifname: must not be empty",
    );
    assert_err(
        &ifname("sixteen-bytes-xx"),
        "config error: pods[0].ifname: \"sixteen-bytes-xx\" is 16 bytes long (an interface name has at most 15)",
    );
    assert_err(
        &ifname(".."),
        "config error: pods[0].ifname: \"..\" is not an interface name",
    );
    for bad in ["a/b", "a:b", "a b", "a\tb"] {
        assert_err_starts(&ifname(bad), "config error: pods[0].ifname: ");
    }
    Config::from_toml_str(&ifname("fifteen-bytes-x")).unwrap();
    // One interface per container ID: a second pod with the same pair is refused.
    assert_err(
        &with(&format!(
            "{}{}",
            pod_with("a", "a", "10.244.1.10", "container_id = \"c1\""),
            pod_with("b", "b", "10.244.1.11", "container_id = \"c1\"")
        )),
        "config error: pods[1].container_id: container \"c1\" already has interface \"eth0\" (pod \"a\")",
    );
    Config::from_toml_str(&with(&format!(
        "{}{}",
        pod_with("a", "a", "10.244.1.10", "container_id = \"c1\""),
        pod_with(
            "b",
            "b",
            "10.244.1.11",
            "container_id = \"c1\"\nifname = \"net1\""
        )
    )))
    .unwrap();
}

#[test]
fn pod_ip_rules() {
    let two = |ip: &str| {
        with(&format!(
            "{}{}",
            pod("a", "a", "10.244.1.10"),
            pod("b", "b", ip)
        ))
    };
    assert_err(
        &two("10.244.2.5"),
        "config error: pods[1].ip: 10.244.2.5 is outside node.pod_cidr 10.244.1.0/24",
    );
    assert_err(
        &two("10.244.1.0"),
        "config error: pods[1].ip: 10.244.1.0 is the network address of node.pod_cidr 10.244.1.0/24",
    );
    assert_err(
        &two("10.244.1.255"),
        "config error: pods[1].ip: 10.244.1.255 is the broadcast address of node.pod_cidr 10.244.1.0/24",
    );
    assert_err(
        &two("10.244.1.1"),
        "config error: pods[1].ip: 10.244.1.1 is the gateway address",
    );
    assert_err(
        &two("10.244.1.10"),
        "config error: pods[1].ip: 10.244.1.10 is already the address of pod \"a\"",
    );
}

#[test]
fn pod_mac_rules() {
    let with_mac = |mac: &str| {
        with(&format!(
            "{}\n[[pods]]\nname = \"b\"\nnetns = \"b\"\nip = \"10.244.1.11\"\nmac = \"{mac}\"\n",
            pod("a", "a", "10.244.1.10")
        ))
    };
    // Explicit MAC equal to another pod's derived MAC.
    assert_err(
        &with_mac("02:42:0a:f4:01:0a"),
        "config error: pods[1].mac: 02:42:0a:f4:01:0a is already the MAC of pod \"a\"",
    );
    assert_err(
        &with_mac("ff:ff:ff:ff:ff:ff"),
        "config error: pods[1].mac: ff:ff:ff:ff:ff:ff is a group (multicast or broadcast) MAC; a unicast MAC has the low bit of the first octet clear",
    );
    assert_err(
        &with_mac("00-00-00-00-00-00"),
        "config error: pods[1].mac: 00:00:00:00:00:00 is not a usable MAC",
    );
    let router = derived_router_mac("node-a").to_string();
    assert_err(
        &with_mac(&router),
        &format!("config error: pods[1].mac: {router} is the node's router MAC"),
    );
}

#[test]
fn peer_rules() {
    let peer = |name: &str, underlay: &str, cidr: &str| {
        format!(
            "\n[[peers]]\nname = \"{name}\"\nunderlay = \"{underlay}\"\npod_cidr = \"{cidr}\"\n"
        )
    };
    let cfg = |peers: &str| format!("{}{peers}", node_with("underlay = \"192.168.77.1\""));
    Config::from_toml_str(&cfg(&format!(
        "{}{}",
        peer("b", "192.168.77.2", "10.244.2.0/24"),
        peer("c", "192.168.77.3", "10.244.3.0/24")
    )))
    .unwrap();
    assert_err(
        &with(&peer("b", "192.168.77.2", "10.244.2.0/24")),
        "config error: node.underlay: is required when peers are configured (the address peers send VXLAN to)",
    );
    assert_err(
        &cfg(&peer("b", "192.168.77.2", "10.244.0.0/16")),
        "config error: peers[0].pod_cidr: 10.244.0.0/16 overlaps node.pod_cidr 10.244.1.0/24",
    );
    assert_err(
        &cfg(&format!(
            "{}{}",
            peer("b", "192.168.77.2", "10.244.2.0/24"),
            peer("c", "192.168.77.3", "10.244.2.128/25")
        )),
        "config error: peers[1].pod_cidr: 10.244.2.128/25 overlaps 10.244.2.0/24, the pod CIDR of peer \"b\"",
    );
    assert_err(
        &cfg(&format!(
            "{}{}",
            peer("b", "192.168.77.2", "10.244.2.0/24"),
            peer("b", "192.168.77.3", "10.244.3.0/24")
        )),
        "config error: peers[1].name: \"b\" is already the name of another peer",
    );
    assert_err(
        &cfg(&peer("node-a", "192.168.77.2", "10.244.2.0/24")),
        "config error: peers[0].name: \"node-a\" is this node's name",
    );
    assert_err(
        &cfg(&format!(
            "{}{}",
            peer("b", "192.168.77.2", "10.244.2.0/24"),
            peer("c", "192.168.77.2", "10.244.3.0/24")
        )),
        "config error: peers[1].underlay: 192.168.77.2 is already the underlay of peer \"b\"",
    );
    assert_err(
        &cfg(&peer("b", "192.168.77.1", "10.244.2.0/24")),
        "config error: peers[0].underlay: 192.168.77.1 is this node's node.underlay",
    );
    assert_err(
        &cfg(&format!("{}vtep_mac = \"03:00:00:00:00:01\"\n", peer("b", "192.168.77.2", "10.244.2.0/24"))),
        "config error: peers[0].vtep_mac: 03:00:00:00:00:01 is a group (multicast or broadcast) MAC; a unicast MAC has the low bit of the first octet clear",
    );
    assert_err_starts(
        &cfg(&peer("b", "192.168.77.2", "10.244.2.1/24")),
        "config error: peers[0].pod_cidr: 10.244.2.1/24 has host bits set",
    );
}

/// The file and the runtime refuse alike: for each bad pod or peer, the error of a config file
/// holding it and the error of adding it to a node from a good file (what `Node::add_pod` and
/// `Node::add_peer` run) give the same reason, the field named `pods[i].x` / `pod.x`.
#[test]
fn file_and_runtime_refuse_alike() {
    let base = Config::from_toml_str(&format!(
        "{}{}\n[[peers]]\nname = \"b\"\nunderlay = \"192.168.77.2\"\npod_cidr = \"10.244.2.0/24\"\n",
        node_with("underlay = \"192.168.77.1\""),
        pod("a", "a", "10.244.1.10")
    ))
    .unwrap();
    let strip = |field: &str, at: &str, rt: &str| field.replacen(at, rt, 1);
    let pods = [
        ("a", "z", "10.244.1.11", None),
        ("c", "a", "10.244.1.11", None),
        ("c", "c", "10.244.2.5", None),
        ("c", "c", "10.244.1.1", None),
        ("c", "c", "10.244.1.10", None),
        ("c", "c", "10.244.1.11", Some("01:00:5e:00:00:01")),
        ("c c", "c", "10.244.1.11", None),
    ];
    for (name, netns, ip, mac) in pods {
        let spec = PodSpec {
            name: name.into(),
            netns: netns.into(),
            ip: Some(ip.parse().unwrap()),
            mac: mac.map(|m| m.parse().unwrap()),
            container_id: None,
            ifname: "eth0".into(),
        };
        let mut file = base.clone();
        file.pods.push(spec.clone());
        let ConfigError::Field { field, reason, .. } = file.validate().unwrap_err() else {
            panic!("not a field error")
        };
        let runtime = spec.check(&base.node, &base.pods, "pod").unwrap_err();
        assert_eq!(runtime.reason, reason, "{spec:?}");
        assert_eq!(runtime.field, strip(&field, "pods[1]", "pod"), "{spec:?}");
        assert!(!runtime.to_string().contains("config error"), "{runtime}");
    }
    let peers = [
        ("node-a", "192.168.77.3", "10.244.3.0/24", None),
        ("b", "192.168.77.3", "10.244.3.0/24", None),
        ("c", "192.168.77.1", "10.244.3.0/24", None),
        ("c", "192.168.77.2", "10.244.3.0/24", None),
        ("c", "224.0.0.1", "10.244.3.0/24", None),
        ("c", "192.168.77.3", "10.244.2.128/25", None),
        ("c", "192.168.77.3", "10.244.0.0/16", None),
        ("c", "192.168.77.3", "10.244.3.1/24", None),
        (
            "c",
            "192.168.77.3",
            "10.244.3.0/24",
            Some("03:00:00:00:00:01"),
        ),
        (
            "c",
            "192.168.77.3",
            "10.244.3.0/24",
            Some("00:00:00:00:00:00"),
        ),
    ];
    for (name, underlay, cidr, mac) in peers {
        let spec = PeerSpec {
            name: name.into(),
            underlay: underlay.parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
            vtep_mac: mac.map(|m| m.parse().unwrap()),
        };
        let mut file = base.clone();
        file.peers.push(spec.clone());
        let ConfigError::Field { field, reason, .. } = file.validate().unwrap_err() else {
            panic!("not a field error")
        };
        let runtime = spec.check(&base.node, &base.peers, "peer").unwrap_err();
        assert_eq!(runtime.reason, reason, "{spec:?}");
        assert_eq!(runtime.field, strip(&field, "peers[1]", "peer"), "{spec:?}");
        // Each fact once: the peer's name is not repeated in front of the reason.
        assert!(
            !runtime.to_string().contains("peer \"c\": peer"),
            "{runtime}"
        );
    }
    // A node whose pod MTU the tunnel cannot carry refuses peers, in the file and at runtime.
    let mut big = base.clone();
    big.node.mtu = Some(1500);
    let e = big.validate().unwrap_err().to_string();
    assert_eq!(
        e,
        "config error: node.mtu: 1500 is above the 1450 bytes the tunnel to peers carries (node.underlay_mtu 1500 minus VXLAN's 50): lower node.mtu or raise node.underlay_mtu"
    );
    let spec = base.peers[0].clone();
    let runtime = spec.check(&big.node, &[], "peer").unwrap_err().to_string();
    assert_eq!(Some(runtime.as_str()), e.strip_prefix("config error: "));
    // Without peers the same MTU is fine (pods of one node do not cross the tunnel).
    big.peers.clear();
    big.validate().unwrap();
    // No underlay: no peers, at runtime either.
    let mut lone = base.clone();
    lone.node.underlay = None;
    assert_eq!(
        spec.check(&lone.node, &[], "peer").unwrap_err().to_string(),
        "node.underlay: is required when peers are configured (the address peers send VXLAN to)"
    );
}

#[test]
fn cpus_the_machine_does_not_have_are_refused() {
    let c = Config::from_toml_str(&node_with("cpus = [99]")).unwrap();
    assert_eq!(
        c.check_machine(&[0, 1]).unwrap_err().to_string(),
        "config error: node.cpus: CPU 99 is not one this process may run on (allowed: 0-1)"
    );
    c.check_machine(&(0..128).collect::<Vec<_>>()).unwrap();
}

#[test]
fn lab_style_configs_serialise_and_read_back() {
    let mut node = NodeSpec::new("n1", "10.244.1.0/24".parse().unwrap());
    node.underlay = Some(Ipv4Addr::new(192, 168, 77, 1));
    let cfg = Config {
        node,
        pods: vec![PodSpec {
            name: "p".into(),
            netns: "p".into(),
            ip: Some(Ipv4Addr::new(10, 244, 1, 10)),
            mac: None,
            container_id: None,
            ifname: "eth0".into(),
        }],
        peers: vec![PeerSpec {
            name: "n2".into(),
            underlay: Ipv4Addr::new(192, 168, 77, 2),
            pod_cidr: "10.244.2.0/24".parse().unwrap(),
            vtep_mac: Some(Mac([2, 0xee, 0, 0, 0, 2])),
        }],
        services: vec![ServiceSpec {
            name: "web".into(),
            vip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: ServiceProto::Udp,
            backends: vec!["10.244.1.10:8080".parse().unwrap()],
            affinity: Some(ServiceAffinity::ClientIp),
        }],
        cluster: None,
    };
    let text = cfg.to_toml().unwrap();
    assert_eq!(Config::from_toml_str(&text).unwrap(), cfg, "{text}");
    assert!(text.contains("vtep_mac = \"02:ee:00:00:00:02\""), "{text}");
}

#[test]
fn from_file_reads_and_reports_missing_files() {
    let dir = std::env::temp_dir().join(format!("podswitch-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(&file, GOOD).unwrap();
    let c = Config::from_file(&file).unwrap();
    assert_eq!(c.pods.len(), 2);
    std::fs::remove_file(&file).unwrap();
    let e = Config::from_file(&file).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("config error: cannot read {}: ", file.display())),
        "{e}"
    );
    let _ = std::fs::remove_dir(&dir);
}

const CLUSTER_NODE: &str = "[node]\nname = \"node-a\"\nunderlay = \"192.168.77.1\"\n";

#[test]
fn a_cluster_node_may_leave_out_its_pod_cidr() {
    let c = Config::from_toml_str(&format!(
        "{CLUSTER_NODE}\n[cluster]\netcd_endpoints = [\"http://192.168.77.254:2379\"]\n"
    ))
    .unwrap();
    let cluster = c.cluster.expect("cluster");
    assert_eq!(cluster.etcd_prefix, "/coreos.com/network");
    assert_eq!(cluster.lease_ttl_secs, 86400);
    assert_eq!(cluster.services_prefix, "/podswitch/services");
    assert_eq!(c.node.pod_cidr, None);
    // Given anyway: the subnet this node asks for, checked like any pod CIDR.
    let c = Config::from_toml_str(&format!(
        "{CLUSTER_NODE}pod_cidr = \"10.244.5.0/24\"\n[cluster]\netcd_endpoints = [\"http://e:2379\"]\netcd_prefix = \"/my/net/\"\nlease_ttl_secs = 60\n"
    ))
    .unwrap();
    assert_eq!(c.node.pod_cidr, Some("10.244.5.0/24".parse().unwrap()));
    assert_eq!(c.cluster.unwrap().prefix(), "/my/net");
}

#[test]
fn cluster_errors_name_the_field() {
    assert_eq!(
        err("[node]\nname = \"node-a\"\n"),
        "config error: node.pod_cidr: is required (or give a [cluster] table: the node then leases one)"
    );
    let cl = |body: &str| format!("{CLUSTER_NODE}\n[cluster]\n{body}\n");
    assert_eq!(
        err(&cl("etcd_endpoints = []")),
        "config error: cluster.etcd_endpoints: is empty (give etcd's client URL, like \"http://192.168.77.254:2379\")"
    );
    assert_eq!(
        err(&cl("etcd_endpoints = [\"http://a:1\", \"192.168.77.254:2379\"]")),
        "config error: cluster.etcd_endpoints[1]: \"192.168.77.254:2379\" is not an http:// URL (like \"http://192.168.77.254:2379\")"
    );
    assert_eq!(
        err(&cl("etcd_endpoints = [\"https://a:2379\"]")),
        "config error: cluster.etcd_endpoints[0]: \"https://a:2379\": TLS to etcd is not supported; use an http:// endpoint"
    );
    assert_eq!(
        err(&cl("etcd_endpoints = [\"http://a\"]")),
        "config error: cluster.etcd_endpoints[0]: \"http://a\" has no host:port (like \"http://192.168.77.254:2379\")"
    );
    assert_eq!(
        err(&cl("etcd_endpoints = [\"http://a:1\"]\netcd_prefix = \"coreos.com\"")),
        "config error: cluster.etcd_prefix: \"coreos.com\" must start with '/' and name a key (like \"/coreos.com/network\")"
    );
    assert_eq!(
        err(&cl("etcd_endpoints = [\"http://a:1\"]\nservices_prefix = \"/\"")),
        "config error: cluster.services_prefix: \"/\" must start with '/' and name a key (like \"/podswitch/services\")"
    );
    assert_eq!(
        err(&cl("etcd_endpoints = [\"http://a:1\"]\nlease_ttl_secs = 1")),
        "config error: cluster.lease_ttl_secs: 1 is not between 5 and 31536000 (a year)"
    );
    assert_err_starts(
        &cl("etcd_endpoints = [\"http://a:1\"]\nttl = 5"),
        "config error: cluster.ttl: unknown field",
    );
    assert_eq!(
        err("[node]\nname = \"a\"\n[cluster]\netcd_endpoints = [\"http://a:1\"]\n"),
        "config error: node.underlay: is required with [cluster]: it is the address other nodes send VXLAN to (the lease's PublicIP)"
    );
    assert_eq!(
        err(&format!(
            "{}\n[[peers]]\nname = \"b\"\nunderlay = \"192.168.77.2\"\npod_cidr = \"10.244.2.0/24\"\n",
            cl("etcd_endpoints = [\"http://a:1\"]")
        )),
        "config error: peers: are learnt from etcd with [cluster]; remove the [[peers]] entries"
    );
}

/// A pod entry without `ip`.
fn auto_pod(name: &str) -> String {
    format!("\n[[pods]]\nname = \"{name}\"\nnetns = \"{name}\"\n")
}

#[test]
fn pods_without_ip_parse_and_get_the_lowest_free_addresses_in_file_order() {
    let cfg = Config::from_toml_str(&with(&format!(
        "{}{}{}",
        auto_pod("a"),
        pod("b", "b", "10.244.1.10"),
        auto_pod("c")
    )))
    .unwrap();
    assert_eq!(cfg.pods[0].ip, None);
    assert_eq!(cfg.pods[0].mac(), None);
    assert_eq!(cfg.pods[1].ip, Some(Ipv4Addr::new(10, 244, 1, 10)));
    let ips: Vec<Option<Ipv4Addr>> = cfg
        .pods_with_addresses()
        .unwrap()
        .iter()
        .map(|p| p.ip)
        .collect();
    assert_eq!(
        ips,
        [
            Some(Ipv4Addr::new(10, 244, 1, 2)),
            Some(Ipv4Addr::new(10, 244, 1, 10)),
            Some(Ipv4Addr::new(10, 244, 1, 3)),
        ]
    );
    // Written back, a pod without ip stays without one.
    let text = cfg.to_toml().unwrap();
    assert!(!text.contains("10.244.1.2\""), "{text}");
    assert_eq!(Config::from_toml_str(&text).unwrap(), cfg);
}

#[test]
fn a_fixed_ip_later_in_the_file_is_honoured() {
    // Pod "b" wants .2, the first automatic address: "a", before it, does not take it.
    let cfg = Config::from_toml_str(&with(&format!(
        "{}{}",
        auto_pod("a"),
        pod("b", "b", "10.244.1.2")
    )))
    .unwrap();
    let pods = cfg.pods_with_addresses().unwrap();
    assert_eq!(pods[0].ip, Some(Ipv4Addr::new(10, 244, 1, 3)));
    assert_eq!(pods[1].ip, Some(Ipv4Addr::new(10, 244, 1, 2)));
}

#[test]
fn pods_without_ip_beyond_the_range_are_refused_by_name() {
    let text = format!(
        "[node]\nname = \"node-a\"\npod_cidr = \"10.244.1.0/30\"\n{}{}",
        auto_pod("a"),
        auto_pod("b")
    );
    assert_eq!(
        err(&text),
        "config error: pods[1].ip: the node's range 10.244.1.0/30 has no free address left (1 pod holds addresses in it, 10.244.1.1 is the gateway): give the pod a free ip, remove a pod, or give the node a wider node.pod_cidr"
    );
    // A pod without ip whose derived MAC is another pod's explicit one.
    let text = with(&format!(
        "{}{}",
        pod_with("a", "a", "10.244.1.10", "mac = \"02:42:0a:f4:01:02\""),
        auto_pod("b")
    ));
    assert_eq!(
        err(&text),
        "config error: pods[1].mac: 02:42:0a:f4:01:02 is already the MAC of pod \"a\""
    );
    // Pods with an ip are checked as before, before any address is chosen.
    let text = with(&format!("{}{}", auto_pod("a"), pod("b", "b", "10.244.1.1")));
    assert_eq!(
        err(&text),
        "config error: pods[1].ip: 10.244.1.1 is the gateway address"
    );
}

const SERVICES: &str = r#"
[[services]]
name = "web"
vip = "10.96.0.10"
port = 80
proto = "tcp"
backends = ["10.244.1.10:8080", "10.244.2.10:8080"]

[[services]]
name = "dns"
vip = "10.96.0.53"
port = 53
proto = "udp"
backends = ["10.244.1.11:53"]
affinity = "client_ip"

[[services]]
name = "empty"
vip = "10.96.0.11"
port = 80
"#;

/// A `[[services]]` entry with `lines` (`name`, `vip`, `port`, ... as TOML lines).
fn service(lines: &str) -> String {
    format!("\n[[services]]\n{lines}\n")
}

#[test]
fn services_parse_with_their_defaults() {
    let c = Config::from_toml_str(&with(SERVICES)).unwrap();
    assert_eq!(c.node.service_cidr.to_string(), "10.96.0.0/12");
    assert_eq!(c.services.len(), 3);
    let web = &c.services[0];
    assert_eq!(
        (
            web.name.as_str(),
            web.vip,
            web.port,
            web.proto,
            web.affinity
        ),
        (
            "web",
            Ipv4Addr::new(10, 96, 0, 10),
            80,
            ServiceProto::Tcp,
            None
        )
    );
    assert_eq!(
        web.backends,
        [
            "10.244.1.10:8080".parse().unwrap(),
            "10.244.2.10:8080"
                .parse::<std::net::SocketAddrV4>()
                .unwrap()
        ]
    );
    assert_eq!(
        (c.services[1].proto, c.services[1].affinity),
        (ServiceProto::Udp, Some(ServiceAffinity::ClientIp))
    );
    // proto defaults to tcp; no backends is a service that refuses connections.
    assert_eq!(c.services[2].proto, ServiceProto::Tcp);
    assert!(c.services[2].backends.is_empty());
    let s = c.services[1].to_service();
    assert_eq!(
        (s.proto, s.affinity),
        (crate::table::Proto::Udp, crate::table::Affinity::ClientIp)
    );
    // Round trip; the default service CIDR is not written out.
    let text = c.to_toml().unwrap();
    assert_eq!(Config::from_toml_str(&text).unwrap(), c, "{text}");
    assert!(!text.contains("service_cidr"), "{text}");
    // Another service CIDR.
    let c = Config::from_toml_str(&format!(
        "{}{}",
        node_with("service_cidr = \"172.20.0.0/16\""),
        service("name = \"a\"\nvip = \"172.20.0.10\"\nport = 443")
    ))
    .unwrap();
    assert_eq!(c.node.service_cidr.to_string(), "172.20.0.0/16");
    let text = c.to_toml().unwrap();
    assert!(text.contains("service_cidr = \"172.20.0.0/16\""), "{text}");
}

#[test]
fn service_cidr_rules() {
    assert_err(
        &node_with("service_cidr = \"10.244.0.0/16\""),
        "config error: node.service_cidr: 10.244.0.0/16 overlaps node.pod_cidr 10.244.1.0/24",
    );
    assert_err(
        &node_with("service_cidr = \"10.244.1.128/25\""),
        "config error: node.service_cidr: 10.244.1.128/25 overlaps node.pod_cidr 10.244.1.0/24",
    );
    assert_err_starts(
        &node_with("service_cidr = \"10.96.0.1/12\""),
        "config error: node.service_cidr: 10.96.0.1/12 has host bits set",
    );
    assert_err(
        &node_with("service_cidr = \"10.96.0.0/31\""),
        "config error: node.service_cidr: 10.96.0.0/31 has no room for service addresses (the prefix length must be at most 30)",
    );
    assert_err_starts(
        &node_with("service_cidr = \"nope\""),
        "config error: node.service_cidr: ",
    );
}

#[test]
fn service_rules() {
    let ok = "name = \"b\"\nvip = \"10.96.0.11\"\nport = 80";
    let web = service(
        "name = \"web\"\nvip = \"10.96.0.10\"\nport = 80\nbackends = [\"10.244.1.10:8080\"]",
    );
    let two = |second: &str| with(&format!("{web}{}", service(second)));
    Config::from_toml_str(&two(ok)).unwrap();
    // Same VIP and port, other protocol; same VIP, other port: both fine.
    Config::from_toml_str(&two(
        "name = \"b\"\nvip = \"10.96.0.10\"\nport = 80\nproto = \"udp\"",
    ))
    .unwrap();
    Config::from_toml_str(&two("name = \"b\"\nvip = \"10.96.0.10\"\nport = 81")).unwrap();
    for (second, want) in [
        (
            "name = \"web\"\nvip = \"10.96.0.11\"\nport = 80",
            "services[1].name: \"web\" is already the name of another service",
        ),
        (
            "name = \"b c\"\nvip = \"10.96.0.11\"\nport = 80",
            "services[1].name: \"b c\" contains ' ' (allowed: letters, digits, '.', '_', '-')",
        ),
        (
            "name = \"\"\nvip = \"10.96.0.11\"\nport = 80",
            "services[1].name: must not be empty",
        ),
        (
            "name = \"b\"\nvip = \"10.112.0.1\"\nport = 80",
            "services[1].vip: 10.112.0.1 is outside node.service_cidr 10.96.0.0/12",
        ),
        (
            "name = \"b\"\nvip = \"10.96.0.0\"\nport = 80",
            "services[1].vip: 10.96.0.0 is the network address of node.service_cidr 10.96.0.0/12",
        ),
        (
            "name = \"b\"\nvip = \"10.111.255.255\"\nport = 80",
            "services[1].vip: 10.111.255.255 is the broadcast address of node.service_cidr 10.96.0.0/12",
        ),
        (
            "name = \"b\"\nvip = \"10.96.0.11\"\nport = 0",
            "services[1].port: 0 is not between 1 and 65535 (a TCP or UDP port)",
        ),
        (
            "name = \"b\"\nvip = \"10.96.0.10\"\nport = 80",
            "services[1].port: 10.96.0.10:80/tcp is already the address of service \"web\"",
        ),
        (
            "name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\nbackends = [\"10.244.1.10:0\"]",
            "services[1].backends[0]: 10.244.1.10:0 has port 0 (a backend port is 1 to 65535)",
        ),
        (
            "name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\nbackends = [\"10.244.1.10:80\", \"0.0.0.0:80\"]",
            "services[1].backends[1]: 0.0.0.0 is not a unicast address",
        ),
        (
            "name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\nbackends = [\"255.255.255.255:80\"]",
            "services[1].backends[0]: 255.255.255.255 is not a unicast address",
        ),
        (
            "name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\nbackends = [\"224.0.0.1:80\"]",
            "services[1].backends[0]: 224.0.0.1 is not a unicast address",
        ),
        (
            "name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\nbackends = [\"10.96.0.10:80\"]",
            "services[1].backends[0]: 10.96.0.10:80 is inside node.service_cidr 10.96.0.0/12 (a backend is a pod's address, not a service's)",
        ),
        (
            "name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\nbackends = [\"10.244.1.10:80\", \"10.244.2.10:80\", \"10.244.1.10:80\"]",
            "services[1].backends[2]: 10.244.1.10:80 is listed twice (also backends[0])",
        ),
    ] {
        assert_err(&two(second), &format!("config error: {want}"));
    }
}

#[test]
fn service_values_the_types_cannot_hold_name_the_field() {
    let one = |lines: &str| with(&service(lines));
    assert_err(
        &one("name = \"b\"\nvip = \"10.96.0.11\"\nport = 70000"),
        "config error: services[0].port: 70000 is not between 1 and 65535 (a TCP or UDP port) (line 9, column 8)",
    );
    assert_err_starts(
        &one("name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\nproto = \"sctp\""),
        "config error: services[0].proto: \"sctp\": unknown variant `sctp`, expected `tcp` or `udp`",
    );
    assert_err_starts(
        &one("name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\naffinity = \"none\""),
        "config error: services[0].affinity: \"none\": unknown variant `none`, expected `client_ip`",
    );
    assert_err_starts(
        &one("name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\nbackends = [\"10.244.1.10\"]"),
        "config error: services[0].backends[0]: \"10.244.1.10\": ",
    );
    assert_err_starts(
        &one("name = \"b\"\nport = 80"),
        "config error: services[0].vip: is required",
    );
    assert_err_starts(
        &one("name = \"b\"\nvip = \"10.96.0.11\"\nport = 80\nweight = 1"),
        "config error: services[0].weight: unknown field",
    );
}

/// The file and the runtime refuse a service alike (`services[1].x` / `service.x`); at runtime
/// the others passed leave out a service of the same name (it is replaced).
#[test]
fn services_file_and_runtime_refuse_alike() {
    let base = Config::from_toml_str(&with(SERVICES)).unwrap();
    let spec = |name: &str, vip: &str, port: u16, backends: &[&str]| ServiceSpec {
        name: name.into(),
        vip: vip.parse().unwrap(),
        port,
        proto: ServiceProto::Tcp,
        backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        affinity: None,
    };
    for bad in [
        spec("b", "10.112.0.1", 80, &[]),
        spec("b", "10.96.0.10", 80, &[]),
        spec("b", "10.96.0.12", 0, &[]),
        spec("b", "10.96.0.12", 80, &["10.244.1.10:80", "10.244.1.10:80"]),
        spec("b", "10.96.0.12", 80, &["10.96.0.1:80"]),
    ] {
        let mut file = base.clone();
        file.services.push(bad.clone());
        let ConfigError::Field { field, reason, .. } = file.validate().unwrap_err() else {
            panic!("not a field error")
        };
        let runtime = bad
            .check(&base.node, &base.services, "service")
            .unwrap_err();
        assert_eq!(
            runtime.reason.replace("service.", "services[3]."),
            reason,
            "{bad:?}"
        );
        assert_eq!(
            runtime.field,
            field.replacen("services[3]", "service", 1),
            "{bad:?}"
        );
    }
    // Replacing "web" (the others without it) may reuse its own address.
    let moved = spec("web", "10.96.0.10", 80, &["10.244.1.20:8080"]);
    let others: Vec<&ServiceSpec> = base.services.iter().filter(|s| s.name != "web").collect();
    assert_eq!(
        moved.check(&base.node, others.iter().copied(), "service"),
        Ok(())
    );
}

#[test]
fn metrics_address_rules() {
    let c = Config::from_toml_str(&node_with("metrics = \"127.0.0.1:9469\"")).expect("valid");
    assert_eq!(c.node.metrics, Some("127.0.0.1:9469".parse().unwrap()));
    assert_eq!(
        Config::from_toml_str(&node_with(""))
            .expect("valid")
            .node
            .metrics,
        None,
        "off when absent"
    );
    let e = err(&node_with("metrics = \"localhost\""));
    assert!(e.contains("node.metrics"), "{e}");
    assert_err(
        &node_with("metrics = \"127.0.0.1:0\""),
        "config error: node.metrics: 127.0.0.1:0 has port 0: give the port scrapers are told, e.g. 127.0.0.1:9469",
    );
    assert_err(
        &node_with("metrics = \"224.0.0.1:9469\""),
        "config error: node.metrics: 224.0.0.1 is not an address to listen on (multicast or broadcast)",
    );
}
