//! Real pods: network namespaces with TAP `eth0`s bridged by podswitch, driven by the kernel's
//! own TCP/IP stacks and real processes. Needs root (see `common::root_or_skip`).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};

use common::*;
use podswitch::netns::NetNs;
use podswitch::node::{Node, NodeSettings, PodPlan};
use podswitch::pipeline::NodeConfig;
use podswitch::table::MacTableConfig;
use podswitch::wire::EthernetAddress;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, last)
}

fn plan(netns: &str, last: u8) -> PodPlan {
    PodPlan {
        name: format!("pod{last}"),
        netns: netns.into(),
        ip: ip(last),
        mac: EthernetAddress([0x02, 0x42, 10, 244, 1, last]),
    }
}

fn start(pods: &[PodPlan]) -> Node {
    let cidr = "10.244.1.0/24".parse().expect("cidr");
    let settings = NodeSettings {
        name: unique("node"),
        node: NodeConfig::new(cidr, EthernetAddress([0x02, 0xee, 0, 0, 0, 1])),
        mac_table: MacTableConfig::default(),
    };
    Node::start(settings, pods).expect("node starts")
}

#[test]
fn ping_and_tcp_between_real_pods() {
    if !root_or_skip("ping_and_tcp_between_real_pods") {
        return;
    }
    let (na, nb) = (unique("psa"), unique("psb"));
    let node = start(&[plan(&na, 10), plan(&nb, 11)]);
    assert!(ping(&na, "10.244.1.11", 3), "pod a cannot ping pod b");
    assert!(ping(&nb, "10.244.1.1", 2), "pod b cannot ping the gateway");

    // 16 MiB each way between kernel TCP stacks, bytes verified.
    const LEN: usize = 16 << 20;
    let ns_b = NetNs::open(&nb).expect("b");
    let listener = ns_b
        .run(|| TcpListener::bind(SocketAddrV4::new(ip(11), 5201)))
        .expect("ns")
        .expect("bind");
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        let mut w = conn.try_clone().expect("clone");
        let tx = std::thread::spawn(move || w.write_all(&pattern(2, LEN)).expect("server writes"));
        let mut got = vec![0u8; LEN];
        conn.read_exact(&mut got).expect("server reads");
        tx.join().expect("server writer");
        (peer, got)
    });
    let ns_a = NetNs::open(&na).expect("a");
    let mut conn = ns_a
        .run(|| TcpStream::connect(SocketAddrV4::new(ip(11), 5201)))
        .expect("ns")
        .expect("connect");
    let mut r = conn.try_clone().expect("clone");
    let rx = std::thread::spawn(move || {
        let mut got = vec![0u8; LEN];
        r.read_exact(&mut got).expect("client reads");
        got
    });
    conn.write_all(&pattern(1, LEN)).expect("client writes");
    let client_got = rx.join().expect("client reader");
    let (peer, server_got) = server.join().expect("server");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(ip(10)));
    assert!(server_got == pattern(1, LEN), "server got corrupted bytes");
    assert!(client_got == pattern(2, LEN), "client got corrupted bytes");
    let a = node.pod("pod10").expect("pod a");
    assert!(
        a.counters.rx_bytes > LEN as u64,
        "the transfer went through the switch: {:?}",
        a.counters
    );
    drop(node);
    let left = netns_list();
    assert!(
        !left.contains(&na) && !left.contains(&nb),
        "namespaces left behind: {left:?}"
    );
}
