//! Real pods on an in-process node: the node (in the test's mode, `#[root_test]`), pod plans
//! and sockets opened inside pods.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};

use podswitch::netns::NetNs;
use podswitch::node::{Mac, Node, NodeSpec, PodSpec};
use podswitch_dataplane::testutil::{pod_interface, unique};

pub(crate) fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, last)
}

pub(crate) fn plan(netns: &str, last: u8) -> PodSpec {
    PodSpec {
        name: format!("pod{last}"),
        netns: netns.into(),
        ip: Some(ip(last)),
        mac: Some(Mac([0x02, 0x42, 10, 244, 1, last])),
        container_id: None,
        ifname: "eth0".into(),
    }
}

pub(crate) fn start(pods: &[PodSpec]) -> Node {
    start_with_workers(pods, 1)
}

pub(crate) fn start_with_workers(pods: &[PodSpec], workers: usize) -> Node {
    let mut spec = NodeSpec::new(unique("node"), "10.244.1.0/24".parse().expect("cidr"));
    // The test's own namespace is the machine's: no host interface there.
    spec.host_interface = String::new();
    spec.router_mac = Some(Mac([0x02, 0xee, 0, 0, 0, 1]));
    spec.workers = workers;
    spec.cpus = Some(Vec::new());
    spec.pod_interface = Some(pod_interface().parse().expect("a mode"));
    Node::start(spec, pods, &[]).expect("node starts")
}

/// Runs `open` (a socket constructor) inside namespace `ns`; the socket keeps working from
/// any thread afterwards.
pub(crate) fn socket_in<T: Send>(ns: &str, open: impl FnOnce() -> std::io::Result<T> + Send) -> T {
    NetNs::open(ns)
        .expect("namespace")
        .run(open)
        .expect("enter namespace")
        .expect("socket")
}

pub(crate) fn listen_in(ns: &str, addr: SocketAddrV4) -> TcpListener {
    socket_in(ns, || TcpListener::bind(addr))
}

pub(crate) fn connect_from(ns: &str, addr: SocketAddrV4) -> TcpStream {
    socket_in(ns, || TcpStream::connect(addr))
}
