//! The rules' unit tests.

use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn free(cidr: &str, gw: &str, taken: &[&str]) -> Result<Ipv4Addr, SpecError> {
    free_pod_ip(net(cidr), ip(gw), taken.iter().map(|t| ip(t)), "pod.ip")
}

#[test]
fn the_free_address_is_the_lowest_host_address_not_the_gateway() {
    assert_eq!(
        free("10.244.1.0/24", "10.244.1.1", &[]),
        Ok(ip("10.244.1.2"))
    );
    // A gateway elsewhere leaves .1 free.
    assert_eq!(
        free("10.244.1.0/24", "10.244.1.254", &[]),
        Ok(ip("10.244.1.1"))
    );
}

#[test]
fn the_free_address_skips_taken_ones_and_fills_holes_lowest_first() {
    assert_eq!(
        free("10.244.1.0/24", "10.244.1.1", &["10.244.1.2", "10.244.1.3"]),
        Ok(ip("10.244.1.4"))
    );
    assert_eq!(
        free(
            "10.244.1.0/24",
            "10.244.1.1",
            &["10.244.1.3", "10.244.1.2", "10.244.1.5"]
        ),
        Ok(ip("10.244.1.4"))
    );
    // Addresses outside the range neither count nor matter.
    assert_eq!(
        free("10.244.1.0/24", "10.244.1.1", &["10.244.2.2", "10.244.1.2"]),
        Ok(ip("10.244.1.3"))
    );
}

#[test]
fn a_slash_30_has_one_pod_address_besides_the_gateway() {
    assert_eq!(free("10.0.0.4/30", "10.0.0.5", &[]), Ok(ip("10.0.0.6")));
    // Never the network (.4) or broadcast (.7) address.
    let e = free("10.0.0.4/30", "10.0.0.5", &["10.0.0.6"]).unwrap_err();
    assert_eq!(e.field, "pod.ip");
    assert_eq!(
        e.reason,
        "the node's range 10.0.0.4/30 has no free address left (1 pod holds addresses in it, 10.0.0.5 is the gateway): give the pod a free ip, remove a pod, or give the node a wider node.pod_cidr"
    );
    // A /31 or /32 has no host address at all.
    assert!(free("10.0.0.4/31", "10.0.0.4", &[]).is_err());
    assert!(free("255.255.255.255/32", "255.255.255.255", &[]).is_err());
}

#[test]
fn a_full_slash_24_says_so_and_the_last_free_one_is_the_top() {
    let taken: Vec<String> = (2..=253).map(|i| format!("10.244.1.{i}")).collect();
    let taken_ref: Vec<&str> = taken.iter().map(String::as_str).collect();
    assert_eq!(
        free("10.244.1.0/24", "10.244.1.1", &taken_ref),
        Ok(ip("10.244.1.254"))
    );
    let mut full = taken_ref.clone();
    full.push("10.244.1.254");
    let e = free_pod_ip(
        net("10.244.1.0/24"),
        ip("10.244.1.1"),
        full.iter().map(|t| ip(t)),
        "pods[3].ip",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "pods[3].ip: the node's range 10.244.1.0/24 has no free address left (253 pods hold addresses in it, 10.244.1.1 is the gateway): give the pod a free ip, remove a pod, or give the node a wider node.pod_cidr"
    );
}

fn pod(name: &str, ip: Option<&str>) -> PodSpec {
    PodSpec {
        name: name.into(),
        netns: name.into(),
        ip: ip.map(|s| s.parse().unwrap()),
        mac: None,
        container_id: None,
        ifname: DEFAULT_IFNAME.into(),
    }
}

#[test]
fn file_pods_get_addresses_in_order_after_the_fixed_ones_are_reserved() {
    let node = NodeSpec::new("n", net("10.244.1.0/24"));
    let pods = [
        pod("a", None),
        pod("b", Some("10.244.1.2")),
        pod("c", None),
        pod("d", Some("10.244.1.3")),
    ];
    let got: Vec<Option<Ipv4Addr>> = assign_pod_ips(&node, &pods, &[])
        .unwrap()
        .iter()
        .map(|p| p.ip)
        .collect();
    assert_eq!(
        got,
        [
            Some(ip("10.244.1.4")),
            Some(ip("10.244.1.2")),
            Some(ip("10.244.1.5")),
            Some(ip("10.244.1.3"))
        ]
    );
}

#[test]
fn reserved_addresses_are_left_to_their_owners() {
    let node = NodeSpec::new("n", net("10.244.1.0/24"));
    let pods = [pod("a", None), pod("b", None)];
    let got: Vec<Option<Ipv4Addr>> = assign_pod_ips(&node, &pods, &[ip("10.244.1.2")])
        .unwrap()
        .iter()
        .map(|p| p.ip)
        .collect();
    assert_eq!(got, [Some(ip("10.244.1.3")), Some(ip("10.244.1.4"))]);
}

#[test]
fn file_pods_past_the_end_of_the_range_are_named() {
    let node = NodeSpec::new("n", net("10.0.0.4/30"));
    let e = assign_pod_ips(&node, &[pod("a", None), pod("b", None)], &[]).unwrap_err();
    assert_eq!(e.field, "pods[1].ip");
    assert!(e
        .reason
        .starts_with("the node's range 10.0.0.4/30 has no free address left (1 pod holds"));
}

#[test]
fn a_pod_without_an_address_is_checked_on_what_it_has() {
    let node = NodeSpec::new("n", net("10.244.1.0/24"));
    let a = pod("a", Some("10.244.1.2"));
    assert_eq!(pod("b", None).check(&node, [&a], "pod"), Ok(()));
    assert_eq!(pod("b", None).mac(), None);
    // An explicit MAC is still checked.
    let mut b = pod("b", None);
    b.mac = a.mac();
    assert_eq!(
        b.check(&node, [&a], "pod").unwrap_err().to_string(),
        "pod.mac: 02:42:0a:f4:01:02 is already the MAC of pod \"a\""
    );
    // Given its address, its MAC follows it.
    assert_eq!(
        pod("c", None).with_ip(ip("10.244.1.7")).mac(),
        Some(derived_pod_mac(ip("10.244.1.7")))
    );
}

/// A node with an underlay (so it may have peers) on `underlay`.
fn node_on(underlay: &str) -> NodeSpec {
    let mut n = NodeSpec::new("n", net("10.244.1.0/24"));
    n.underlay = Some(ip(underlay));
    n
}

fn peer(underlay: &str, pod_cidr: &str) -> PeerSpec {
    PeerSpec {
        name: "b".into(),
        underlay: ip(underlay),
        pod_cidr: net(pod_cidr),
        vtep_mac: None,
    }
}

fn peer_error(node: &NodeSpec, p: &PeerSpec) -> String {
    p.check(node, [], "peer").expect_err("refused").to_string()
}

#[test]
fn a_peer_pod_cidr_in_or_around_the_service_cidr_is_refused() {
    let node = node_on("192.168.77.1");
    assert_eq!(
        peer("192.168.77.2", "10.244.2.0/24").check(&node, [], "peer"),
        Ok(())
    );
    // Inside, equal to, and containing the service CIDR (10.96.0.0/12).
    for cidr in ["10.96.0.0/24", "10.96.0.0/12", "10.64.0.0/10"] {
        assert_eq!(
            peer_error(&node, &peer("192.168.77.2", cidr)),
            format!("peer.pod_cidr: {cidr} overlaps node.service_cidr 10.96.0.0/12 (the Services' virtual IPs: they are translated on this node, never routed to a peer)")
        );
    }
    // The file names the entry.
    let e = peer("192.168.77.2", "10.96.0.0/12")
        .check(&node, [], "peers[0]")
        .unwrap_err();
    assert_eq!(e.field, "peers[0].pod_cidr");
}

#[test]
fn a_peer_underlay_on_loopback_or_in_the_pod_network_is_refused() {
    let node = node_on("192.168.77.1");
    for lo in ["127.0.0.1", "127.1.2.3"] {
        assert_eq!(
            peer_error(&node, &peer(lo, "10.244.2.0/24")),
            format!("peer.underlay: {lo} is a loopback address (127.0.0.0/8): VXLAN sent there never leaves this machine (node.underlay 192.168.77.1 is not on loopback)")
        );
    }
    // A local pod's address, or any address of the node's pod CIDR.
    for own in ["10.244.1.10", "10.244.1.1"] {
        assert_eq!(
            peer_error(&node, &peer(own, "10.244.2.0/24")),
            format!("peer.underlay: {own} is inside node.pod_cidr 10.244.1.0/24 (an address of this node's pods, not another node's tunnel endpoint)")
        );
    }
    assert_eq!(
        peer_error(&node, &peer("10.244.2.7", "10.244.2.0/24")),
        "peer.underlay: 10.244.2.7 is inside the peer's own pod_cidr 10.244.2.0/24 (the tunnel to it would be routed into itself)"
    );
    assert_eq!(
        peer_error(&node, &peer("10.96.0.1", "10.244.2.0/24")),
        "peer.underlay: 10.96.0.1 is inside node.service_cidr 10.96.0.0/12 (a Service address, not another node's tunnel endpoint)"
    );
    // A node whose own underlay is on loopback (one machine, as the in-process tests run)
    // may have peers there.
    assert_eq!(
        peer("127.0.0.2", "10.244.2.0/24").check(&node_on("127.0.0.1"), [], "peer"),
        Ok(())
    );
}

fn service(backends: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        vip: ip("10.96.0.10"),
        port: 80,
        proto: ServiceProto::Tcp,
        backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        affinity: None,
    }
}

#[test]
fn a_loopback_backend_is_refused_a_pod_cidr_one_without_a_pod_is_not() {
    let node = NodeSpec::new("n", net("10.244.1.0/24"));
    assert_eq!(
        service(&["10.244.1.10:80", "127.0.0.1:80"])
            .check(&node, [], "service")
            .unwrap_err()
            .to_string(),
        "service.backends[1]: 127.0.0.1:80 is a loopback address (127.0.0.0/8): it would be each client's own namespace, not a pod"
    );
    assert_eq!(
        service(&["127.3.0.1:80"])
            .check(&node, [], "services[2]")
            .unwrap_err()
            .field,
        "services[2].backends[0]"
    );
    // An address of the node's pod CIDR that no pod has (yet) is a backend to come.
    assert_eq!(
        service(&["10.244.1.200:80"]).check(&node, [], "service"),
        Ok(())
    );
}

#[test]
fn more_backends_than_the_maglev_table_holds_are_refused_not_dropped() {
    let node = NodeSpec::new("n", net("10.244.1.0/24"));
    let backends: Vec<String> = (0..=crate::table::MAX_BACKENDS)
        .map(|i| format!("10.244.{}.{}:80", 2 + i / 250, 1 + i % 250))
        .collect();
    let all: Vec<&str> = backends.iter().map(String::as_str).collect();
    assert_eq!(
        service(&all)
            .check(&node, [], "service")
            .unwrap_err()
            .to_string(),
        "service.backends: 6553 backends: a service has at most 6552 (its Maglev table's size)"
    );
    assert_eq!(
        service(&all[..crate::table::MAX_BACKENDS]).check(&node, [], "service"),
        Ok(())
    );
}

#[test]
fn more_workers_than_cpus_are_refused() {
    let mut n = NodeSpec::new("n", net("10.244.1.0/24"));
    n.workers = 2;
    assert_eq!(n.check_workers(&[0, 1]), Ok(()));
    n.workers = 3;
    assert_eq!(
        n.check_workers(&[0, 1]).unwrap_err().to_string(),
        "node.workers: 3 is more than the 2 CPUs this process may run on (0-1): workers sharing a CPU stall each other"
    );
    // Given CPUs do not change what the machine has.
    n.cpus = Some(vec![0]);
    assert!(n.check_workers(&[0, 1]).is_err());
    // Unknown (the affinity could not be read): nothing to compare with.
    assert_eq!(n.check_workers(&[]), Ok(()));
}

#[test]
fn a_pod_interface_name_the_kernel_would_refuse_is_refused_by_field() {
    let node = NodeSpec::new("n", net("10.244.1.0/24"));
    let with = |ifname: &str| {
        let mut p = pod("p", Some("10.244.1.10"));
        p.ifname = ifname.into();
        p.check(&node, [], "pod").map_err(|e| e.to_string())
    };
    assert_eq!(with("eth1"), Ok(()));
    assert_eq!(
        with("lo"),
        Err("pod.ifname: \"lo\" is the loopback interface every namespace already has".into())
    );
    assert_eq!(with(""), Err("pod.ifname: must not be empty".into()));
    assert_eq!(
        with("a234567890123456"),
        Err(
            "pod.ifname: \"a234567890123456\" is 16 bytes long (an interface name has at most 15)"
                .into()
        )
    );
    for bad in ["a/b", "a b", "a\tb"] {
        assert!(
            with(bad).is_err_and(|e| e.starts_with("pod.ifname: ") && e.contains("contains")),
            "{bad:?}"
        );
    }
}

#[test]
fn the_file_refuses_more_workers_than_the_machine_has() {
    let cfg = crate::config::Config::from_toml_str(
        "[node]\nname = \"n\"\npod_cidr = \"10.244.1.0/24\"\nworkers = 3\n",
    )
    .unwrap();
    assert_eq!(
        cfg.check_machine(&[0, 1]).unwrap_err().to_string(),
        "config error: node.workers: 3 is more than the 2 CPUs this process may run on (0-1): workers sharing a CPU stall each other"
    );
    cfg.check_machine(&[0, 1, 2]).unwrap();
}
