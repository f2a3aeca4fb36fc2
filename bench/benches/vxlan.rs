//! VXLAN encapsulation and decapsulation, frames/s, for 64- and 1500-byte inner frames.
//!
//! One iteration handles one batch of 64 frames, each in its own slot of a contiguous buffer (as
//! the runtime's batches hold them):
//!
//! - `encap`: [`vxlan::encapsulate`] only: the 8-byte VXLAN header plus a copy of the inner
//!   frame into the output slot. The outer IPv4/UDP headers are the kernel's (UDP socket) and
//!   are not included.
//! - `encap_routed`: what a frame from a pod to a remote pod costs before the UDP send: the
//!   pipeline's decision ([`Pipeline::process`]: validation, learning, route lookup, MAC rewrite,
//!   TTL decrement) and then [`vxlan::encapsulate`] into the output slot. Because the pipeline
//!   rewrites the frame in place, the 16 bytes it changes (both MACs, TTL, checksum) are restored
//!   from the template before each frame; that restore is included.
//! - `decap`: [`Pipeline::process_tunnel`]: peer check, VXLAN header check, inner IPv4
//!   validation (checksum), neighbour lookup, in-place MAC rewrite and TTL decrement. The TTL and
//!   checksum bytes (4 bytes) are restored from the template before each datagram (the MAC
//!   rewrite is idempotent); that restore is included. The copy of the inner frame into the
//!   pod's transmit batch is not (the forwarding benchmark measures that copy).
//!
//! `begin_batch`/`end_batch` run once per batch of 64, as in the runtime.
//!
//! The offload paths toward and from a peer, in bytes/s of TCP payload:
//! - `segment_tso_64k`: a 64 KiB TSO superframe from a pod (partial checksum, MSS 1448) cut into
//!   45 wire-ready segments ([`Segmenter`]): headers rewritten, checksums computed, payload
//!   copied once.
//! - `coalesce_45`: the reverse on receive: 45 segments checked (IPv4 and TCP checksums) and
//!   merged into one superframe for the pod's TAP ([`Coalescer`]).

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use podswitch_bench::{
    node_config, node_tables, pod_ip, pod_mac, remote_ip, routed, udp_frame, BATCH, PEER_UNDERLAY,
    PEER_VTEP_MAC, ROUTER_MAC,
};
use podswitch_dataplane::pipeline::{Action, Pipeline};
use podswitch_dataplane::table::Peer;
use podswitch_dataplane::testutil::vxlan_wrap;
use podswitch_dataplane::wire::vxlan;
use podswitch_dataplane::wire::EthernetAddress;

const VNI: u32 = 1;
/// Offset of the TTL in an Ethernet/IPv4 frame; TTL, protocol, checksum follow.
const TTL_AT: usize = 14 + 8;

fn pipeline() -> Pipeline {
    pipeline_with_peers(0)
}

/// A pipeline whose node also has `extra` peers (`/26`s of 10.245.0.0/16, each on its own
/// underlay address) besides node-b, as a node in a 1000-node cluster has: their routes are
/// more specific than node-b's /24, so a scan in prefix order meets them all first.
fn pipeline_with_peers(extra: usize) -> Pipeline {
    let cfg = node_config();
    let tables = node_tables(&cfg, 1);
    for i in 0..extra {
        let i = u32::try_from(i).expect("peer index");
        let net = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 0)) + i * 64);
        tables
            .update_topology(|t| {
                t.add_peer(Peer {
                    name: format!("extra-{i}"),
                    underlay: SocketAddrV4::new(
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 80, 0)) + i),
                        8472,
                    ),
                    pod_cidr: format!("{net}/26").parse().expect("extra CIDR"),
                    vtep_mac: EthernetAddress([2, 0xaa, 0, 0, (i >> 8) as u8, i as u8]),
                })
            })
            .expect("extra peer");
    }
    let mut p = Pipeline::new(cfg, tables);
    p.begin_batch();
    p
}

fn encap(c: &mut Criterion) {
    let mut group = c.benchmark_group("vxlan");
    group.throughput(Throughput::Elements(BATCH as u64));
    for len in [64usize, 1500] {
        // An inner frame as the router emits it towards the peer's VTEP.
        let inner = udp_frame(PEER_VTEP_MAC, ROUTER_MAC, pod_ip(0), remote_ip(), len);
        let slot = vxlan::HEADER_LEN + len;
        let mut out = vec![0u8; BATCH * slot];
        let run = |out: &mut [u8]| {
            for o in out.chunks_exact_mut(slot) {
                black_box(vxlan::encapsulate(black_box(VNI), black_box(&inner), o));
            }
        };
        run(&mut out);
        for o in out.chunks_exact(slot) {
            assert_eq!(vxlan::decapsulate(o), Ok((VNI, &inner[..])));
        }
        group.bench_function(BenchmarkId::new("encap", len), |b| b.iter(|| run(&mut out)));
    }
    group.finish();
}

fn encap_routed(c: &mut Criterion) {
    let mut group = c.benchmark_group("vxlan");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (len, extra) in [(64usize, 0usize), (1500, 0), (64, 999)] {
        let mut p = pipeline_with_peers(extra);
        let template = udp_frame(ROUTER_MAC, pod_mac(0), pod_ip(0), remote_ip(), len);
        let expected = routed(&template, PEER_VTEP_MAC);
        let mut frames = template.repeat(BATCH);
        let slot = vxlan::HEADER_LEN + len;
        let mut out = vec![0u8; BATCH * slot];
        let mut not_encap = 0u64;
        let mut run = |p: &mut Pipeline, frames: &mut [u8], out: &mut [u8]| {
            p.begin_batch();
            for (f, o) in frames.chunks_exact_mut(len).zip(out.chunks_exact_mut(slot)) {
                f[..12].copy_from_slice(&template[..12]);
                f[TTL_AT..TTL_AT + 4].copy_from_slice(&template[TTL_AT..TTL_AT + 4]);
                match p.process(0, f, Default::default()) {
                    Action::Encap(_) => {
                        black_box(vxlan::encapsulate(VNI, f, o));
                    }
                    _ => not_encap += 1,
                }
            }
            p.end_batch();
        };
        run(&mut p, &mut frames, &mut out);
        for o in out.chunks_exact(slot) {
            assert_eq!(vxlan::decapsulate(o), Ok((VNI, &expected[..])));
        }
        let id = match extra {
            0 => BenchmarkId::new("encap_routed", len),
            n => BenchmarkId::new(format!("encap_routed_{}_peers", n + 1), len),
        };
        group.bench_function(id, |b| b.iter(|| run(&mut p, &mut frames, &mut out)));
        assert_eq!(not_encap, 0, "every frame was encapsulated");
        assert_eq!(p.counts().dropped_total(), 0, "{:?}", p.counts());
        assert_eq!(p.counts().rx, p.counts().forwarded);
    }
    group.finish();
}

fn decap(c: &mut Criterion) {
    let mut group = c.benchmark_group("vxlan");
    group.throughput(Throughput::Elements(BATCH as u64));
    for len in [64usize, 1500] {
        let mut p = pipeline();
        let inner = udp_frame(ROUTER_MAC, PEER_VTEP_MAC, remote_ip(), pod_ip(0), len);
        let expected = routed(&inner, pod_mac(0));
        let template = vxlan_wrap(VNI, &inner);
        let slot = template.len();
        let mut datagrams = template.repeat(BATCH);
        let ttl_at = vxlan::HEADER_LEN + TTL_AT;
        let mut not_forwarded = 0u64;
        let mut run = |p: &mut Pipeline, datagrams: &mut [u8]| {
            p.begin_batch();
            for d in datagrams.chunks_exact_mut(slot) {
                d[ttl_at..ttl_at + 4].copy_from_slice(&template[ttl_at..ttl_at + 4]);
                if p.process_tunnel(PEER_UNDERLAY, d) != Action::Forward(0) {
                    not_forwarded += 1;
                }
            }
            p.end_batch();
        };
        run(&mut p, &mut datagrams);
        for d in datagrams.chunks_exact(slot) {
            assert_eq!(&d[vxlan::HEADER_LEN..], &expected[..]);
        }
        group.bench_function(BenchmarkId::new("decap", len), |b| {
            b.iter(|| run(&mut p, &mut datagrams))
        });
        assert_eq!(not_forwarded, 0, "every datagram was delivered");
        assert_eq!(p.counts().dropped_total(), 0, "{:?}", p.counts());
        assert_eq!(p.counts().rx, p.counts().forwarded);
    }
    group.finish();
}

/// What a datagram the tunnel refuses costs (a stranger flooding the VXLAN port): from an
/// address that is no peer, and from the peer with garbage after the UDP header (truncated,
/// no I flag); each must be dropped and counted, never delivered.
fn drop_garbage(c: &mut Criterion) {
    let mut group = c.benchmark_group("vxlan");
    group.throughput(Throughput::Elements(BATCH as u64));
    let inner = udp_frame(ROUTER_MAC, PEER_VTEP_MAC, remote_ip(), pod_ip(0), 64);
    let good = vxlan_wrap(VNI, &inner);
    let stranger = SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 99), 8472);
    let mut garbage = good.clone();
    garbage[0] = 0; // no I flag
    for (name, from, template) in [
        ("drop_unknown_peer", stranger, good),
        ("drop_malformed", PEER_UNDERLAY, garbage),
    ] {
        let mut p = pipeline();
        let slot = template.len();
        let mut datagrams = template.repeat(BATCH);
        let mut forwarded = 0u64;
        group.bench_function(BenchmarkId::new(name, 64), |b| {
            b.iter(|| {
                p.begin_batch();
                for d in datagrams.chunks_exact_mut(slot) {
                    if matches!(p.process_tunnel(from, d), Action::Forward(_)) {
                        forwarded += 1;
                    }
                }
                p.end_batch();
            })
        });
        assert_eq!(forwarded, 0, "{name}: nothing delivered");
        assert_eq!(
            p.counts().rx,
            p.counts().dropped_total(),
            "{name}: every datagram counted"
        );
    }
    group.finish();
}

/// A TCP/IPv4 frame with a timestamp option, from pod 10.244.1.10 to 10.244.2.10.
fn tcp_frame(seq: u32, payload: &[u8], partial: bool) -> Vec<u8> {
    use podswitch_dataplane::testutil::{eth, ipv4_tos};
    use podswitch_dataplane::wire::checksum_sum;
    let mut t = vec![0u8; 32];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 8 << 4;
    t[13] = 0x10;
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
    t.extend_from_slice(payload);
    let (src, dst) = (pod_ip(0), remote_ip());
    let mut f = eth(
        [2; 6],
        [4; 6],
        0x0800,
        &ipv4_tos(src, dst, 6, 64, 0, true, &t),
    );
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&(t.len() as u16).to_be_bytes());
    let p = checksum_sum(&pseudo);
    let c = if partial {
        p
    } else {
        let mut sum = u32::from(p) + u32::from(checksum_sum(&t));
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    };
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

fn segment_tso(c: &mut Criterion) {
    use podswitch_dataplane::gso::Segmenter;
    use podswitch_dataplane::wire::virtio::{GsoType, VnetHdr, FLAG_NEEDS_CSUM};
    let payload = vec![0x5au8; 45 * 1448];
    let frame = tcp_frame(1, &payload, true);
    let vnet = VnetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        ecn: false,
        hdr_len: 66,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut seg = Segmenter::default();
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("segment_tso_64k", |b| {
        b.iter(|| {
            let mut n = 0usize;
            let segs = seg
                .segment(black_box(&frame), &vnet, 1448, |h: &[u8], b: &[u8]| {
                    n += h.len() + b.len()
                })
                .expect("segments");
            assert_eq!(segs, 45);
            black_box(n)
        })
    });
    g.finish();
}

fn coalesce(c: &mut Criterion) {
    use podswitch_dataplane::gso::Coalescer;
    // The segments back to back, as they sit in a receive batch.
    let mut source = Vec::new();
    let mut ranges = Vec::new();
    for i in 0..45u32 {
        let f = tcp_frame(1 + i * 1448, &[0x5a; 1448], false);
        ranges.push(source.len()..source.len() + f.len());
        source.extend_from_slice(&f);
    }
    let mut co = Coalescer::default();
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(45 * 1448));
    g.bench_function("coalesce_45", |b| {
        b.iter(|| {
            let mut out = 0usize;
            let mut count =
                |_, parts: &[&[u8]], _| out += parts.iter().map(|p| p.len()).sum::<usize>();
            for r in &ranges {
                co.push(1, black_box(&source), r.clone(), &mut count);
            }
            co.flush(&source, &mut count);
            assert_eq!(out, 14 + 20 + 32 + 45 * 1448, "one superframe");
            black_box(out)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = podswitch_bench::criterion_config();
    targets = encap, encap_routed, decap, drop_garbage, segment_tso, coalesce
}
criterion_main!(benches);
