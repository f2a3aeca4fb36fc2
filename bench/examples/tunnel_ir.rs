//! A fixed tunnel workload for instruction counts: two switches joined by VXLAN on 127.0.0.1 and
//! 127.0.0.2; in-memory pod a1 on A sends N 64-byte UDP frames to pod b1 on B, 32 at a time,
//! and waits for each group to arrive. The data plane's tunnel path (encapsulation, the UDP
//! socket both ways, decapsulation, per-peer counters) has no criterion benchmark; this is the
//! workload docs/metrics.md's A/B counts instructions of:
//!
//! ```sh
//! cargo build --profile bench -p podswitch-bench --example tunnel_ir
//! valgrind --tool=callgrind \
//!   --toggle-collect='podswitch_dataplane::switch::tunnel::TunnelSlot::encapsulate' \
//!   --toggle-collect='podswitch_dataplane::switch::tunnel::TunnelSlot::decapsulate' \
//!   target/release/examples/tunnel_ir 20000
//! ```
use std::net::Ipv4Addr;
use std::time::Duration;

use podswitch_dataplane::pipeline::NodeConfig;
use podswitch_dataplane::port::UdpTunnel;
use podswitch_dataplane::switch::{Switch, SwitchConfig};
use podswitch_dataplane::table::{Peer, PortInfo, PortKind};
use podswitch_dataplane::testutil::{eth, ipv4_tos, udp};
use podswitch_dataplane::wire::EthernetAddress;

const VTEP_A: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const VTEP_B: [u8; 6] = [0x02, 0xee, 0, 0, 0, 2];

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let ta = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind A");
    let tb = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 2), 0).expect("bind B");
    let (addr_a, addr_b) = (ta.local_addr(), tb.local_addr());
    let sw = |cidr: &str, mac, t| {
        Switch::start_with_tunnel(
            SwitchConfig::new(NodeConfig::new(cidr.parse().unwrap(), EthernetAddress(mac))),
            Some(t),
        )
        .expect("switch")
    };
    let a = sw("10.244.1.0/24", VTEP_A, ta);
    let b = sw("10.244.2.0/24", VTEP_B, tb);
    a.add_peer(Peer {
        name: "node-b".into(),
        underlay: addr_b,
        pod_cidr: "10.244.2.0/24".parse().unwrap(),
        vtep_mac: EthernetAddress(VTEP_B),
    })
    .unwrap();
    b.add_peer(Peer {
        name: "node-a".into(),
        underlay: addr_a,
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
        vtep_mac: EthernetAddress(VTEP_A),
    })
    .unwrap();
    let (pa_mac, pb_mac) = ([0x02, 0x42, 10, 244, 1, 10], [0x02, 0x42, 10, 244, 2, 10]);
    let (pa_ip, pb_ip) = (Ipv4Addr::new(10, 244, 1, 10), Ipv4Addr::new(10, 244, 2, 10));
    let (_, mut ea) = a
        .attach_mem_pod(PortInfo {
            name: "a1".into(),
            kind: PortKind::Pod {
                mac: EthernetAddress(pa_mac),
                ip: pa_ip,
            },
        })
        .unwrap();
    let (_, eb) = b
        .attach_mem_pod(PortInfo {
            name: "b1".into(),
            kind: PortKind::Pod {
                mac: EthernetAddress(pb_mac),
                ip: pb_ip,
            },
        })
        .unwrap();
    let frame = eth(
        VTEP_A,
        pa_mac,
        0x0800,
        &ipv4_tos(pa_ip, pb_ip, 17, 64, 0, false, &udp(1, 2, &[0u8; 22])),
    );
    assert_eq!(frame.len(), 64);
    let mut received = 0usize;
    while received < n {
        for _ in 0..32 {
            ea.send_frame(&frame).expect("send");
        }
        ea.flush().expect("flush");
        let mut got = 0;
        while got < 32 {
            match eb.recv_timeout(Duration::from_secs(5)).expect("open") {
                Some(batch) => {
                    got += batch.len();
                    eb.recycle(batch);
                }
                None => panic!("frames lost after {received}"),
            }
        }
        received += got;
    }
    println!(
        "{received} frames; A {:?}; B {:?}",
        a.metrics().snapshot().rx,
        b.metrics().snapshot().rx
    );
}
