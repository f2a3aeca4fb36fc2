//! The fixtures of the etcd cluster tests (`common::cluster`), exercised for real: an underlay
//! carries pings, a real etcd stores, expires and keeps keys across a restart, and two kernel
//! nodes configured like flannel's VXLAN backend carry pod traffic. Needs root (see
//! `root_or_skip`).

use crate::common;

use common::cluster::{flannel_network_config, ping, Etcd, KernelFlannelNode, Underlay};
use podswitch_dataplane::testutil::{root_test, wait_for};

#[root_test]
fn underlay_hosts_ping_each_other() {
    let mut ul = Underlay::new();
    let a = ul.add_host("192.168.77.1");
    let b = ul.add_host("192.168.77.2");
    assert!(ping(&a, "192.168.77.2"), "{a} cannot ping 192.168.77.2");
    assert!(ping(&b, "192.168.77.1"), "{b} cannot ping 192.168.77.1");
}

#[root_test]
fn etcd_stores_expires_and_survives_a_restart() {
    let mut ul = Underlay::new();
    let host = ul.add_host("192.168.77.10");
    let mut etcd = Etcd::start(&host, "192.168.77.10", 2379);
    assert_eq!(etcd.endpoint(), "http://192.168.77.10:2379");

    let prefix = "/coreos.com/network";
    let config = flannel_network_config("10.244.0.0/16", 24);
    assert_eq!(
        config,
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#
    );
    etcd.put(&format!("{prefix}/config"), &config);
    etcd.put(&format!("{prefix}/subnets/10.244.5.0-24"), "five");
    etcd.put(&format!("{prefix}/subnets/10.244.3.0-24"), "");
    etcd.put("/other", "x");
    assert_eq!(etcd.get(&format!("{prefix}/config")), Some(config.clone()));
    assert_eq!(etcd.get(&format!("{prefix}/nothing")), None);
    assert_eq!(
        etcd.get_prefix(&format!("{prefix}/subnets/")),
        vec![
            (format!("{prefix}/subnets/10.244.3.0-24"), String::new()),
            (
                format!("{prefix}/subnets/10.244.5.0-24"),
                "five".to_string()
            ),
        ]
    );
    etcd.del(&format!("{prefix}/subnets/10.244.3.0-24"));
    assert_eq!(etcd.get(&format!("{prefix}/subnets/10.244.3.0-24")), None);
    assert_eq!(etcd.get_prefix(&format!("{prefix}/subnets/")).len(), 1);

    // A key on a 2 s lease is there, then gone.
    let leased = format!("{prefix}/subnets/10.244.7.0-24");
    let id = etcd.put_with_lease(&leased, "seven", 2);
    assert_eq!(etcd.get(&leased).as_deref(), Some("seven"));
    let ttl = etcd.etcdctl_ok(&["lease", "timetolive", &format!("{id:x}")]);
    assert!(ttl.contains("granted with TTL(2s)"), "{ttl}");
    let put_at = std::time::Instant::now();
    wait_for("the leased key to expire", || etcd.get(&leased).is_none());
    assert!(
        put_at.elapsed() >= std::time::Duration::from_millis(500),
        "the leased key went too soon"
    );

    // Data survives stop and start again (same data dir and ports).
    etcd.stop();
    assert!(!etcd.is_running());
    assert!(!etcd.etcdctl(&["get", "/other"]).status.success());
    etcd.start_again();
    assert_eq!(etcd.get(&format!("{prefix}/config")), Some(config));
    assert_eq!(etcd.get("/other").as_deref(), Some("x"));
    assert!(etcd.log().contains("etcd"), "the log is captured");
}

#[root_test]
fn kernel_flannel_nodes_carry_pod_traffic() {
    let mut ul = Underlay::new();
    let a = KernelFlannelNode::new(
        &mut ul,
        "192.168.77.21",
        "10.244.21.0/24",
        "02:aa:00:00:00:21",
    );
    let b = KernelFlannelNode::new(
        &mut ul,
        "192.168.77.22",
        "10.244.22.0/24",
        "02:AA:00:00:00:22",
    );
    assert_eq!(
        b.lease_value(),
        r#"{"PublicIP":"192.168.77.22","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:aa:00:00:00:22"}}"#
    );
    assert_eq!(
        a.subnet_key("/coreos.com/network/"),
        "/coreos.com/network/subnets/10.244.21.0-24"
    );
    assert_eq!(a.pod_ip(), "10.244.21.10");

    // No route to the other node's pods yet.
    assert!(!common::run(&[
        "ip",
        "netns",
        "exec",
        a.pod_ns(),
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "10.244.22.10"
    ])
    .status
    .success());

    a.add_remote(&b.subnet(), &b.public_ip(), b.vtep_mac());
    b.add_remote_node(&a);
    assert!(ping(a.pod_ns(), &b.pod_ip()), "pod a cannot ping pod b");
    assert!(ping(b.pod_ns(), &a.pod_ip()), "pod b cannot ping pod a");

    // Removing the remote again takes its route away.
    a.remove_remote(&b.subnet(), &b.public_ip(), b.vtep_mac());
    let routes = common::run(&["ip", "-n", a.ns(), "route", "show", "10.244.22.0/24"]);
    assert!(routes.status.success() && routes.stdout.is_empty());
    let fdb = common::run(&[
        "ip",
        "netns",
        "exec",
        a.ns(),
        "bridge",
        "fdb",
        "show",
        "dev",
        "flannel.1",
    ]);
    assert!(
        !String::from_utf8_lossy(&fdb.stdout).contains("02:aa:00:00:00:22"),
        "fdb entry left"
    );
}
