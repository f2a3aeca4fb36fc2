//! One node, in one process, no root: a switch with three smoltcp pods, showing the pod model.
//!
//! `cargo run --release -p podstack --example node`

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use podstack::Pod;
use podswitch_dataplane::pipeline::NodeConfig;
use podswitch_dataplane::switch::{Switch, SwitchConfig};
use podswitch_dataplane::wire::EthernetAddress;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cidr = "10.244.1.0/24".parse()?;
    let node = NodeConfig::new(cidr, EthernetAddress([0x02, 0xee, 0, 0, 0, 1]));
    println!(
        "node: pod CIDR {cidr}, gateway {} ({})",
        node.gateway, node.router_mac
    );
    let sw = Switch::start(SwitchConfig::new(node))?;

    let web = Pod::attach(&sw, "web", Ipv4Addr::new(10, 244, 1, 10))?;
    let db = Pod::attach(&sw, "db", Ipv4Addr::new(10, 244, 1, 11))?;
    let _cache = Pod::attach(&sw, "cache", Ipv4Addr::new(10, 244, 1, 12))?;

    // Two containers of "web" share one IP and port space and talk over localhost.
    let nginx = web.container("nginx");
    let curl = web.container("curl");
    let mut listener = nginx.tcp_listen(80)?;
    let server = std::thread::spawn(move || -> Result<(), podstack::NetError> {
        loop {
            let conn = listener.accept()?;
            let peer = conn.peer_addr()?;
            let mut req = [0u8; 4];
            conn.read_exact(&mut req)?;
            conn.write_all(format!("hello {peer}").as_bytes())?;
            conn.shutdown_write()?;
        }
    });
    let before = sw.port("web").map(|p| p.metrics.snapshot());
    let c = curl.tcp_connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 80))?;
    c.write_all(b"GET ")?;
    let mut reply = Vec::new();
    c.read_to_end(&mut reply)?;
    let after = sw.port("web").map(|p| p.metrics.snapshot());
    println!(
        "web/curl -> 127.0.0.1:80 (web/nginx): {:?}; switch saw {} frames",
        String::from_utf8_lossy(&reply),
        after.map_or(0, |a| a.rx_frames) - before.map_or(0, |b| b.rx_frames)
    );
    println!(
        "web/sidecar binding :80 again: {:?}",
        web.container("sidecar").tcp_listen(80).err()
    );

    // A container of another pod goes through the switch to reach web.
    let client = db.container("app");
    let c = client.tcp_connect(SocketAddrV4::new(web.ip(), 80))?;
    c.write_all(b"GET ")?;
    let mut reply = Vec::new();
    c.read_to_end(&mut reply)?;
    println!(
        "db/app -> {}:80: {:?}",
        web.ip(),
        String::from_utf8_lossy(&reply)
    );

    // Bulk transfer db -> web.
    let mut sink = web.container("sink").tcp_listen(5201)?;
    let receiver = std::thread::spawn(move || -> Result<usize, podstack::NetError> {
        let conn = sink.accept()?;
        let mut all = Vec::new();
        conn.read_to_end(&mut all)
    });
    let data = vec![0x5a; 32 << 20];
    let start = Instant::now();
    let c = client.tcp_connect(SocketAddrV4::new(web.ip(), 5201))?;
    c.write_all(&data)?;
    c.shutdown_write()?;
    let got = receiver.join().map_err(|_| "receiver panicked")??;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "db -> web: {} MiB in {secs:.2} s = {:.2} Gbit/s (smoltcp to smoltcp through the switch)",
        got >> 20,
        got as f64 * 8.0 / secs / 1e9
    );

    for p in sw.ports() {
        let c = p.metrics.snapshot();
        println!(
            "port {:>2} {:<6} rx {:>7} frames  tx {:>7} frames",
            p.id, p.info.name, c.rx_frames, c.tx_frames
        );
    }
    let m = sw.metrics().snapshot();
    println!(
        "switch: rx {} forwarded {} local {} dropped {}",
        m.rx,
        m.forwarded,
        m.delivered_locally,
        m.dropped_total()
    );
    drop(server);
    Ok(())
}
