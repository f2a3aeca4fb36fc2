//! The forwarding core, single thread, between in-memory ports.
//!
//! One iteration is one [`Dataplane::poll_once`] round in which the ingress pod's port yields one
//! batch of 64 frames: the round takes the batch from the port's channel, runs every frame
//! through the pipeline (validation, anti-spoofing, learning, lookup, rewrite when routed),
//! copies it into the egress port's transmit batch (8 of them when flooding), sends those
//! batches down their channels and publishes the counters. Throughput is counted in frames
//! *received* by the switch (a flooded frame counts once, although it leaves 8 times).
//!
//! Not timed: filling the ingress endpoint (the pod's side of the copy) and draining and
//! recycling the egress batches; they run between chunks of [`CHUNK`] rounds. Every chunk
//! checks that all frames arrived, and each case checks once before and once after measuring
//! that the switch counted no drop, so the benchmark cannot silently measure a drop path.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use podswitch_bench::{pod_ip, pod_mac, routed, udp_frame, MemNode, BATCH, ROUTER_MAC};
use std::net::Ipv4Addr;

/// Rounds per timed chunk: 16 batches wait at the ingress, well under the ports' queue bound
/// (256 batches), so nothing is ever dropped for a full queue.
const CHUNK: usize = 16;

struct Case {
    name: &'static str,
    pods: usize,
    frame: Vec<u8>,
    /// Endpoints that must receive every frame.
    to: Vec<usize>,
    /// What they must receive.
    expected: Vec<u8>,
}

fn cases(len: usize) -> Vec<Case> {
    let l2 = udp_frame(pod_mac(1), pod_mac(0), pod_ip(0), pod_ip(1), len);
    let to_router = udp_frame(ROUTER_MAC, pod_mac(0), pod_ip(0), pod_ip(1), len);
    let broadcast = udp_frame(
        [0xff; 6],
        pod_mac(0),
        pod_ip(0),
        Ipv4Addr::new(10, 244, 1, 255),
        len,
    );
    vec![
        Case {
            name: "l2_unicast",
            pods: 2,
            expected: l2.clone(),
            frame: l2,
            to: vec![1],
        },
        Case {
            name: "routed",
            pods: 2,
            expected: routed(&to_router, pod_mac(1)),
            frame: to_router,
            to: vec![1],
        },
        Case {
            name: "flood8",
            pods: 9,
            expected: broadcast.clone(),
            frame: broadcast,
            to: (1..9).collect(),
        },
    ]
}

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("forwarding");
    group.throughput(Throughput::Elements(BATCH as u64));
    for len in [64usize, 1500] {
        for case in cases(len) {
            let mut node = MemNode::new(case.pods);
            node.verify_round(0, &case.frame, &case.to, &case.expected);
            let per_round = BATCH * case.to.len();
            group.bench_function(BenchmarkId::new(case.name, len), |b| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        node.fill(0, &case.frame, n);
                        let mut received = 0;
                        let t = Instant::now();
                        for _ in 0..n {
                            received += black_box(node.dataplane.poll_once());
                        }
                        elapsed += t.elapsed();
                        assert_eq!(received, n * BATCH, "every round took one batch");
                        let delivered: usize = node.drain().iter().sum();
                        assert_eq!(delivered, n * per_round, "every frame arrived");
                        left -= n as u64;
                    }
                    elapsed
                })
            });
            node.assert_no_drops();
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = podswitch_bench::criterion_config();
    targets = forwarding
}
criterion_main!(benches);
