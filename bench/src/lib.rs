//! Shared helpers for the benchmarks: a node of in-memory pods driven by hand, frame builders of
//! exact sizes, and pseudo-random MAC keys.
//!
//! Everything here panics (with a message) on a setup that does not work: a benchmark that would
//! silently measure a drop path is worse than none.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use podswitch_dataplane::pipeline::{Metrics, NodeConfig, Pipeline, PortMetrics};
use podswitch_dataplane::port::{mem_port, MemEndpoint, Waker, DEFAULT_BATCH};
use podswitch_dataplane::switch::Dataplane;
use podswitch_dataplane::table::{PortId, Tables};
use podswitch_dataplane::testutil::node::TestNode;
use podswitch_dataplane::testutil::{eth, ipv4, udp};
use podswitch_dataplane::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;

/// The benchmarked node is the test node: its MACs, addresses and peer.
pub use podswitch_dataplane::testutil::node::{
    pod_ip, pod_mac, PEER_UNDERLAY, PEER_VTEP_MAC, ROUTER_MAC,
};
/// Frames per batch, as the runtime moves them.
pub const BATCH: usize = DEFAULT_BATCH;
/// EtherType of IPv4.
pub use podswitch_dataplane::wire::ethernet::ethertype::IPV4 as ETHERTYPE_IPV4;
/// Bytes of Ethernet + IPv4 + UDP headers in the frames built here.
const HEADERS: usize = ETHERNET_HEADER_LEN + 20 + 8;

/// An IP in the peer node's CIDR (10.244.2.0/24).
pub fn remote_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 2, 5)
}

/// The node settings: the test node's (`testutil::node`), with pod and tunnel MTU 1500 so that
/// the 1500-byte frames of the benchmarks pass the size check (1500 <= mtu + 14).
pub fn node_config() -> NodeConfig {
    let mut cfg = podswitch_dataplane::testutil::node::node_config();
    cfg.mtu = 1500;
    cfg.tunnel_mtu = 1500;
    cfg
}

/// Tables holding `pods` pods on ports `0..pods` (topology and static MAC entries, as
/// `Switch::attach` would install them) and one peer node (10.244.2.0/24 at [`PEER_UNDERLAY`]).
pub fn node_tables(cfg: &NodeConfig, pods: usize) -> Arc<Tables> {
    TestNode::new(cfg.clone())
        .with_attached_pods(pods)
        .with_peer()
        .tables
}

/// An Ethernet/IPv4/UDP frame of exactly `len` bytes (no FCS), TTL 64, valid IPv4 checksum.
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    len: usize,
) -> Vec<u8> {
    let data_len = len.checked_sub(HEADERS).expect("frame holds its headers");
    let data: Vec<u8> = (0..data_len).map(|i| i as u8).collect();
    let f = eth(
        dst_mac,
        src_mac,
        ETHERTYPE_IPV4,
        &ipv4(src, dst, 17, 64, &udp(40000, 5201, &data)),
    );
    assert_eq!(f.len(), len);
    f
}

/// What `frame` becomes when the node routes it to `next_hop`: MACs rewritten (source the
/// router), TTL decremented, IPv4 checksum patched.
pub fn routed(frame: &[u8], next_hop: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&next_hop);
    f[6..12].copy_from_slice(&ROUTER_MAC);
    let ip = &mut f[ETHERNET_HEADER_LEN..];
    ip[8] -= 1;
    ip[10..12].fill(0);
    let c = !podswitch_dataplane::wire::checksum_sum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f
}

/// A node driven by hand: a [`Dataplane`] with in-memory pod ports `0..pods`, their endpoints
/// held by the benchmark.
pub struct MemNode {
    /// The forwarding tables.
    pub tables: Arc<Tables>,
    /// Switch-wide counters.
    pub metrics: Arc<Metrics>,
    /// The data plane; call [`Dataplane::poll_once`].
    pub dataplane: Dataplane,
    /// Endpoint (pod side) of port `i`.
    pub endpoints: Vec<MemEndpoint>,
    /// Counters of port `i`.
    pub port_metrics: Vec<Arc<PortMetrics>>,
    // Kept alive for the endpoints (they ring it on send; nobody sleeps on it).
    _waker: Arc<Waker>,
}

impl MemNode {
    /// A node with `pods` in-memory pods (see [`node_tables`]).
    pub fn new(pods: usize) -> Self {
        let cfg = node_config();
        let tables = node_tables(&cfg, pods);
        let metrics = Arc::new(Metrics::default());
        let mut dataplane = Dataplane::new(
            Pipeline::new(cfg, Arc::clone(&tables)),
            Arc::clone(&metrics),
        );
        let waker = Arc::new(Waker::new().expect("eventfd for the waker"));
        let mut endpoints = Vec::with_capacity(pods);
        let mut port_metrics = Vec::with_capacity(pods);
        for i in 0..pods {
            let (port, endpoint) = mem_port(Arc::clone(&waker));
            let m = Arc::new(PortMetrics::default());
            dataplane.add_port(
                PortId::try_from(i).expect("port id"),
                Box::new(port),
                Arc::clone(&m),
            );
            endpoints.push(endpoint);
            port_metrics.push(m);
        }
        Self {
            tables,
            metrics,
            dataplane,
            endpoints,
            port_metrics,
            _waker: waker,
        }
    }

    /// Queues `batches` batches of [`BATCH`] copies of `frame` at the endpoint of `ingress`.
    pub fn fill(&mut self, ingress: usize, frame: &[u8], batches: usize) {
        let ep = &mut self.endpoints[ingress];
        for _ in 0..batches {
            let mut b = ep.take_empty();
            for _ in 0..BATCH {
                b.push(frame);
            }
            ep.send_batch(b).expect("ingress queue has room");
        }
    }

    /// Takes every batch waiting at every endpoint, gives the buffers back for reuse, and
    /// returns the number of frames each endpoint received.
    pub fn drain(&mut self) -> Vec<usize> {
        self.drain_with(|_, _| {})
    }

    /// [`MemNode::drain`], showing each received frame to `seen(endpoint, frame)` first.
    pub fn drain_with(&mut self, mut seen: impl FnMut(usize, &[u8])) -> Vec<usize> {
        let mut counts = vec![0; self.endpoints.len()];
        for (i, ep) in self.endpoints.iter().enumerate() {
            while let Some(b) = ep.try_recv().expect("switch side open") {
                counts[i] += b.len();
                for (frame, _) in b.iter() {
                    seen(i, frame);
                }
                ep.recycle(b);
            }
        }
        counts
    }

    /// Sends one batch of `frame` from `ingress`, runs one round and checks that exactly the
    /// endpoints in `to` got a batch each, every frame equal to `expected`, and that nothing
    /// was dropped. Counters are left as they were (cumulative).
    pub fn verify_round(&mut self, ingress: usize, frame: &[u8], to: &[usize], expected: &[u8]) {
        let before = self.metrics.snapshot();
        self.fill(ingress, frame, 1);
        let n = self.dataplane.poll_once();
        assert_eq!(n, BATCH, "the round received the batch");
        let mut wrong = 0usize;
        let counts = self.drain_with(|_, f| wrong += usize::from(f != expected));
        assert_eq!(wrong, 0, "frames arrived with unexpected bytes");
        for (i, &c) in counts.iter().enumerate() {
            let want = if to.contains(&i) { BATCH } else { 0 };
            assert_eq!(c, want, "frames at endpoint {i}");
        }
        let after = self.metrics.snapshot();
        assert_eq!(after.dropped_total(), 0, "switch counted drops: {after:?}");
        assert_eq!(after.rx - before.rx, BATCH as u64);
        assert_eq!(after.forwarded - before.forwarded, BATCH as u64);
    }

    /// Asserts that the switch has dropped nothing so far and forwarded everything it got.
    pub fn assert_no_drops(&self) {
        let m = self.metrics.snapshot();
        assert_eq!(m.dropped_total(), 0, "switch counted drops: {m:?}");
        assert_eq!(m.rx, m.forwarded, "every received frame was forwarded");
        for (i, p) in self.port_metrics.iter().enumerate() {
            let s = p.snapshot();
            assert_eq!(
                (s.rx_dropped, s.tx_dropped),
                (0, 0),
                "port {i} dropped frames"
            );
        }
    }
}

/// A splitmix64 step: a fast, well-mixed sequence for choosing keys and lookups.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` distinct, locally administered unicast MAC keys, scattered over the 40 low bits (an odd
/// multiplier is a bijection modulo 2^40, so no two keys are equal for `n <= 2^40`).
pub fn mac_keys(n: usize) -> Vec<u64> {
    const LOW40: u64 = (1 << 40) - 1;
    (0..n as u64)
        .map(|i| (0x02 << 40) | (i.wrapping_mul(0x9e37_79b9_7f4b) & LOW40))
        .collect()
}

/// Warm-up time of every benchmark (quick, for a noisy 2-core machine).
pub const WARM_UP: Duration = Duration::from_secs(1);
/// Measurement time of every benchmark.
pub const MEASUREMENT: Duration = Duration::from_secs(3);
/// Samples per benchmark.
pub const SAMPLES: usize = 20;

/// The criterion settings every benchmark here uses (short runs: the machine is shared).
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLES)
}
