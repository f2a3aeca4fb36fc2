use super::*;
use crate::testutil::{eth, ipv4, tcp_segment_bytes};
use crate::wire::checksum_sum;
use crate::wire::ipv4::protocol::{TCP as PROTO_TCP, UDP as PROTO_UDP};
use crate::wire::tcp::flags::{CWR as TCP_CWR, FIN as TCP_FIN, PSH as TCP_PSH};
use crate::wire::virtio::FLAG_NEEDS_CSUM;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::Ipv4Addr;

const SRC_IP: [u8; 4] = [10, 244, 0, 2];
const DST_IP: [u8; 4] = [10, 244, 1, 3];

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Pseudo-header sum (folded, not complemented) as the kernel leaves it in a partial
/// checksum field.
fn pseudo_sum(ip: &[u8], proto: u8, l4_len: usize) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&ip[12..20]);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    checksum_sum(&p)
}

/// Ethernet + IPv4 (with `ip_opts`) + `l4` (header and payload); valid IPv4 checksum.
fn eth_ipv4(proto: u8, ip_opts: &[u8], id: u16, l4: &[u8]) -> Vec<u8> {
    assert_eq!(ip_opts.len() % 4, 0);
    let ihl = 20 + ip_opts.len();
    let mut f = vec![0x02, 0, 0, 0, 0, 0x11, 0x02, 0, 0, 0, 0, 0x22, 0x08, 0x00];
    f.push(0x40 | (ihl / 4) as u8);
    f.push(0x02); // ECT(0)
    f.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&[0x40, 0x00, 64, proto, 0, 0]); // DF
    f.extend_from_slice(&SRC_IP);
    f.extend_from_slice(&DST_IP);
    f.extend_from_slice(ip_opts);
    let c = !checksum_sum(&f[14..14 + ihl]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(l4);
    f
}

/// A TSO superframe as the kernel hands it over a TAP: TCP with a timestamp option, the
/// pseudo-header sum in the checksum field, NEEDS_CSUM.
fn tcp_superframe(
    payload: &[u8],
    ip_opts: &[u8],
    flags: u8,
    seq: u32,
    id: u16,
) -> (Vec<u8>, VnetHdr) {
    let mut tcp = vec![0x9c, 0x40, 0x14, 0x51]; // 40000 -> 5201
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    tcp.extend_from_slice(&[0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]); // doff 8
    tcp.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78]); // NOP NOP TS
    tcp.extend_from_slice(payload);
    let mut f = eth_ipv4(PROTO_TCP, ip_opts, id, &tcp);
    let l4 = 14 + 20 + ip_opts.len();
    let ps = pseudo_sum(&f[14..], PROTO_TCP, tcp.len());
    f[l4 + 16..l4 + 18].copy_from_slice(&ps.to_be_bytes());
    let vnet = VnetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GsoType::TcpV4,
        ecn: false,
        hdr_len: (l4 + 32) as u16,
        gso_size: 1448,
        csum_start: l4 as u16,
        csum_offset: 16,
    };
    (f, vnet)
}

fn udp_frame(payload: &[u8], partial: bool) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut udp = vec![0x30, 0x39, 0x11, 0x5c];
    udp.extend_from_slice(&(len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut f = eth_ipv4(PROTO_UDP, &[], 7, &udp);
    if partial {
        let ps = pseudo_sum(&f[14..], PROTO_UDP, len);
        f[40..42].copy_from_slice(&ps.to_be_bytes());
    }
    f
}

fn uso_vnet(gso_size: u16) -> VnetHdr {
    VnetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: GsoType::UdpL4,
        ecn: false,
        hdr_len: 42,
        gso_size,
        csum_start: 34,
        csum_offset: 6,
    }
}

fn ihl(seg: &[u8]) -> usize {
    usize::from(seg[14] & 0x0f) * 4
}

fn ip_total(seg: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([seg[16], seg[17]]))
}

fn ip_checksum_ok(seg: &[u8]) -> bool {
    checksum_sum(&seg[14..14 + ihl(seg)]) == 0xffff
}

/// Independent check: pseudo-header + L4 segment sums to 0xffff.
fn l4_checksum_ok(seg: &[u8]) -> bool {
    let l4 = &seg[14 + ihl(seg)..14 + ip_total(seg)];
    let mut p = Vec::new();
    p.extend_from_slice(&seg[26..34]);
    p.extend_from_slice(&[0, seg[23]]);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(l4);
    checksum_sum(&p) == 0xffff
}

fn collect(
    seg: &mut Segmenter,
    frame: &[u8],
    vnet: &VnetHdr,
    max: usize,
) -> Result<Vec<Vec<u8>>, OffloadError> {
    let mut out = Vec::new();
    let n = seg.segment(frame, vnet, max, |h: &[u8], b: &[u8]| {
        out.push([h, b].concat())
    })?;
    assert_eq!(n, out.len());
    Ok(out)
}

#[test]
fn tso_superframe_splits_into_valid_segments() {
    let payload = pattern(3 * 1448 + 500);
    let ack_psh_fin = 0x10 | TCP_PSH | TCP_FIN;
    let seq0 = 0xffff_f000; // wraps inside the superframe
    let (frame, vnet) = tcp_superframe(&payload, &[], ack_psh_fin, seq0, 0xfffe);
    let segs = collect(&mut Segmenter::new(), &frame, &vnet, 9000).expect("segments");
    assert_eq!(segs.len(), 4);
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let last = i == segs.len() - 1;
        let len = if last { 500 } else { 1448 };
        assert_eq!(s.len(), 14 + 20 + 32 + len);
        assert_eq!(ip_total(s), 20 + 32 + len);
        assert_eq!(s[..14], frame[..14]);
        assert!(ip_checksum_ok(s), "ip checksum of segment {i}");
        assert!(l4_checksum_ok(s), "tcp checksum of segment {i}");
        let id = u16::from_be_bytes([s[18], s[19]]);
        assert_eq!(id, 0xfffeu16.wrapping_add(i as u16));
        let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
        assert_eq!(seq, seq0.wrapping_add((i * 1448) as u32));
        let flags = s[47];
        assert_eq!(flags & 0x10, 0x10, "ACK kept");
        assert_eq!(flags & (TCP_PSH | TCP_FIN) != 0, last, "PSH/FIN only last");
        if last {
            assert_eq!(flags, ack_psh_fin);
        }
        // Options and everything else in the TCP header copied.
        assert_eq!(s[42..46], frame[42..46]);
        assert_eq!(s[54..66], frame[54..66]);
        joined.extend_from_slice(&s[66..]);
    }
    assert_eq!(joined, payload);
}

#[test]
fn tso_with_ipv4_options_and_cwr_on_first_only() {
    let payload = pattern(2 * 1448 + 1);
    let opts = [0x94, 0x04, 0x00, 0x00]; // Router Alert
    let (frame, mut vnet) = tcp_superframe(&payload, &opts, 0x10 | TCP_CWR, 1000, 5);
    vnet.ecn = true;
    let segs = collect(&mut Segmenter::new(), &frame, &vnet, 1448).expect("segments");
    assert_eq!(segs.len(), 3);
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(ihl(s), 24);
        assert_eq!(s[34..38], opts);
        assert!(ip_checksum_ok(s) && l4_checksum_ok(s), "segment {i}");
        assert_eq!(s[38 + 13] & TCP_CWR != 0, i == 0, "CWR only first");
        assert_eq!(s[14 + 1], 0x02, "TOS kept");
        joined.extend_from_slice(&s[14 + 24 + 32..]);
    }
    assert_eq!(joined, payload);
}

#[test]
fn tso_payload_multiple_of_gso_size_and_padding_ignored() {
    let payload = pattern(2 * 1448);
    let (mut frame, vnet) = tcp_superframe(&payload, &[], 0x18, 1, 1);
    frame.extend_from_slice(&[0xaa; 6]); // trailing garbage past the IPv4 total length
    let segs = collect(&mut Segmenter::new(), &frame, &vnet, usize::MAX).expect("segments");
    assert_eq!(segs.len(), 2);
    assert!(segs
        .iter()
        .all(|s| s.len() == 66 + 1448 && l4_checksum_ok(s)));
    assert_eq!(segs[0][47] & TCP_PSH, 0);
    assert_eq!(segs[1][47] & TCP_PSH, TCP_PSH);
}

#[test]
fn segments_fit_an_ip_mtu_with_the_flows_own_headers() {
    let payload = pattern(3 * 1448 + 500);
    let (frame, vnet) = tcp_superframe(&payload, &[], 0x18, 5, 9);
    let mut segs = Vec::new();
    Segmenter::new()
        .segment_for_mtu(&frame, &vnet, 1450, |h: &[u8], b| {
            segs.push([h, &frame[b]].concat())
        })
        .expect("segments");
    // 20-byte IPv4 + 32-byte TCP header (timestamps): 1398 payload bytes fit 1450.
    assert!(segs
        .iter()
        .all(|s| ip_total(s) <= 1450 && l4_checksum_ok(s)));
    assert_eq!(ip_total(&segs[0]), 1450);
    assert_eq!(segs.len(), payload.len().div_ceil(1398));
}

#[test]
fn max_segment_payload_below_gso_size_yields_smaller_segments() {
    let payload = pattern(3 * 1448 + 500); // 4844 bytes
    let (frame, vnet) = tcp_superframe(&payload, &[], 0x18, 77, 9);
    let segs = collect(&mut Segmenter::new(), &frame, &vnet, 1000).expect("segments");
    assert_eq!(segs.len(), 5);
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let len = if i == 4 { 844 } else { 1000 };
        assert_eq!(ip_total(s), 52 + len);
        assert!(ip_checksum_ok(s) && l4_checksum_ok(s));
        let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
        assert_eq!(seq, 77 + (i * 1000) as u32);
        joined.extend_from_slice(&s[66..]);
    }
    assert_eq!(joined, payload);

    let (uframe, uvnet) = (udp_frame(&pattern(3000), true), uso_vnet(1400));
    let segs = collect(&mut Segmenter::new(), &uframe, &uvnet, 1000).expect("segments");
    assert_eq!(segs.len(), 3);
    assert_eq!(ip_total(&segs[2]), 28 + 1000);
}

#[test]
fn uso_superframe_splits_into_datagrams() {
    // 14000 bytes sent with UDP_SEGMENT=1400 arrive on the TAP as one frame.
    let payload = pattern(14000);
    let frame = udp_frame(&payload, true);
    assert_eq!(frame.len(), 14042);
    let segs = collect(&mut Segmenter::new(), &frame, &uso_vnet(1400), 1450).expect("uso");
    assert_eq!(segs.len(), 10);
    check_uso(&frame, &segs, &payload, 1400);

    let payload = pattern(3 * 1400 + 100);
    let frame = udp_frame(&payload, true);
    let segs = collect(&mut Segmenter::new(), &frame, &uso_vnet(1400), 1450).expect("uso");
    assert_eq!(segs.len(), 4);
    check_uso(&frame, &segs, &payload, 1400);
}

fn check_uso(frame: &[u8], segs: &[Vec<u8>], payload: &[u8], size: usize) {
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let len = (payload.len() - i * size).min(size);
        assert_eq!(s.len(), 42 + len);
        assert_eq!(ip_total(s), 28 + len);
        assert_eq!(usize::from(u16::from_be_bytes([s[38], s[39]])), 8 + len);
        assert_eq!(s[34..38], frame[34..38], "ports");
        assert_eq!(u16::from_be_bytes([s[18], s[19]]), 7 + i as u16);
        assert!(ip_checksum_ok(s), "ip checksum of datagram {i}");
        assert!(l4_checksum_ok(s), "udp checksum of datagram {i}");
        assert_ne!(u16::from_be_bytes([s[40], s[41]]), 0);
        joined.extend_from_slice(&s[42..]);
    }
    assert_eq!(joined, payload);
}

#[test]
fn complete_checksum_on_plain_udp_and_tcp() {
    // UDP, padded to the Ethernet minimum with garbage that must not be summed.
    let mut f = udp_frame(&[1, 2, 3], true);
    f.resize(60, 0xee);
    let vnet = VnetHdr {
        flags: FLAG_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    complete_checksum(&mut f, &vnet).expect("udp");
    assert!(l4_checksum_ok(&f));
    assert!(f[45..].iter().all(|&b| b == 0xee), "padding untouched");

    let (mut t, mut tvnet) = tcp_superframe(&pattern(333), &[], 0x18, 5, 5);
    tvnet.gso_type = GsoType::None;
    tvnet.gso_size = 0;
    complete_checksum(&mut t, &tvnet).expect("tcp");
    assert!(l4_checksum_ok(&t));

    // Through the segmenter: emitted once, completed.
    let (t2, _) = tcp_superframe(&pattern(333), &[], 0x18, 5, 5);
    let segs = collect(&mut Segmenter::new(), &t2, &tvnet, 1).expect("plain");
    assert_eq!(segs, vec![t]);
}

#[test]
fn complete_checksum_without_needs_csum_is_a_no_op() {
    let mut f = vec![0u8; 3];
    assert_eq!(complete_checksum(&mut f, &VnetHdr::default()), Ok(()));
    let segs = collect(&mut Segmenter::new(), &f, &VnetHdr::default(), 0).expect("plain");
    assert_eq!(segs, vec![f]);
}

#[test]
fn udp_checksum_zero_is_sent_as_ffff() {
    // Choose two payload bytes so that the completed checksum comes out as 0.
    let mut f = udp_frame(&[0, 0, 9, 9], true);
    let s = checksum_fold(checksum_accumulate(&f[34..]));
    f[42..44].copy_from_slice(&(!s).to_be_bytes());
    assert_eq!(checksum_fold(checksum_accumulate(&f[34..])), 0xffff);
    let vnet = uso_vnet(0);
    let vnet = VnetHdr {
        gso_type: GsoType::None,
        ..vnet
    };
    complete_checksum(&mut f, &vnet).expect("udp");
    assert_eq!(f[40..42], [0xff, 0xff]);
    assert!(l4_checksum_ok(&f));
}

#[test]
fn sum_matches_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    for len in 0..300 {
        let d: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
        assert_eq!(
            checksum_fold(checksum_accumulate(&d)),
            checksum_sum(&d),
            "len {len}"
        );
    }
}

#[test]
fn rejects_unsupported_and_inconsistent_input() {
    let mut s = Segmenter::new();
    let (frame, vnet) = tcp_superframe(&pattern(3000), &[], 0x10, 1, 1);
    let err = |f: &[u8], v: VnetHdr| s_err(&mut Segmenter::new(), f, &v);
    for g in [GsoType::TcpV6, GsoType::Udp] {
        let v = VnetHdr {
            gso_type: g,
            ..vnet
        };
        assert_eq!(err(&frame, v), OffloadError::UnsupportedGso(g));
    }
    let v = VnetHdr {
        gso_type: GsoType::UdpL4,
        ..vnet
    };
    assert_eq!(err(&frame, v), OffloadError::ProtocolMismatch);
    let v = VnetHdr {
        csum_offset: 6,
        ..vnet
    };
    assert_eq!(err(&frame, v), OffloadError::BadOffsets);
    let v = VnetHdr {
        csum_start: 14,
        ..vnet
    };
    assert_eq!(err(&frame, v), OffloadError::BadOffsets);
    for tiny in [0, 1, MIN_GSO_SIZE - 1] {
        let v = VnetHdr {
            gso_size: tiny,
            ..vnet
        };
        assert_eq!(err(&frame, v), OffloadError::GsoSizeTooSmall(tiny));
    }
    let v = VnetHdr {
        gso_size: MIN_GSO_SIZE,
        ..vnet
    };
    assert_eq!(
        s.segment(&frame, &v, 9000, |_: &[u8], _: &[u8]| ()),
        Ok(3000usize.div_ceil(usize::from(MIN_GSO_SIZE))),
        "the minimum itself is accepted"
    );
    assert_eq!(
        s.segment(&frame, &vnet, 0, |_: &[u8], _: &[u8]| ()),
        Err(OffloadError::ZeroSegmentSize)
    );

    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(err(&arp, vnet), OffloadError::NotIpv4);
    let mut frag = frame.clone();
    frag[20] |= 0x20; // MF
    assert_eq!(err(&frag, vnet), OffloadError::Fragmented);
    let mut bad_ihl = frame.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(err(&bad_ihl, vnet), OffloadError::BadIpv4Header);
    let mut bad_doff = frame.clone();
    bad_doff[46] = 0x40;
    assert_eq!(err(&bad_doff, vnet), OffloadError::BadL4Header);
    let mut big_doff = frame.clone();
    big_doff[16..18].copy_from_slice(&50u16.to_be_bytes()); // TCP header past the end
    assert_eq!(err(&big_doff, vnet), OffloadError::Truncated);

    // Every truncation is refused and emits nothing.
    for len in 0..frame.len() {
        let mut emitted = 0;
        let r = s.segment(&frame[..len], &vnet, 1448, |_: &[u8], _: &[u8]| {
            emitted += 1
        });
        assert!(r.is_err(), "len {len}");
        assert_eq!(emitted, 0);
        let mut t = frame[..len].to_vec();
        assert!(complete_checksum(&mut t, &vnet).is_err(), "len {len}");
    }

    // complete_checksum: field past the end of the IPv4 packet.
    let mut u = udp_frame(&[1, 2], true);
    let v = VnetHdr {
        flags: FLAG_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 9,
        ..VnetHdr::default()
    };
    assert_eq!(complete_checksum(&mut u, &v), Err(OffloadError::BadOffsets));
}

fn s_err(s: &mut Segmenter, f: &[u8], v: &VnetHdr) -> OffloadError {
    let mut emitted = 0;
    let e = s
        .segment(f, v, 9000, |_: &[u8], _: &[u8]| emitted += 1)
        .expect_err("must be refused");
    assert_eq!(emitted, 0);
    e
}

#[test]
fn steady_state_reuses_scratch() {
    let (frame, vnet) = tcp_superframe(&pattern(40_000), &[], 0x18, 1, 1);
    let mut s = Segmenter::new();
    assert_eq!(
        s.segment(&frame, &vnet, 9000, |_: &[u8], _: &[u8]| ()),
        Ok(28)
    );
    let (cap, ptr) = (s.scratch.capacity(), s.scratch.as_ptr());
    for _ in 0..3 {
        assert_eq!(
            s.segment(&frame, &vnet, 9000, |_: &[u8], _: &[u8]| ()),
            Ok(28)
        );
    }
    assert_eq!((s.scratch.capacity(), s.scratch.as_ptr()), (cap, ptr));
}

#[test]
fn fuzz_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x00ff_10ad);
    let gso = [
        GsoType::None,
        GsoType::TcpV4,
        GsoType::Udp,
        GsoType::TcpV6,
        GsoType::UdpL4,
    ];
    let (tcp, _) = tcp_superframe(&pattern(5000), &[0x01; 8], 0x19, 1, 1);
    let udp = udp_frame(&pattern(5000), true);
    let mut s = Segmenter::new();
    let mut ok = 0;
    for round in 0..20_000 {
        let mut f = match round % 3 {
            0 => {
                let len = rng.random_range(0..300);
                let mut f: Vec<u8> = (0..len).map(|_| rng.random::<u8>()).collect();
                // Often make it look like IPv4 so deeper code runs.
                if len >= 15 && rng.random::<bool>() {
                    f[12..15].copy_from_slice(&[0x08, 0x00, 0x45]);
                }
                f
            }
            1 => tcp.clone(),
            _ => udp.clone(),
        };
        if round % 3 != 0 {
            for _ in 0..rng.random_range(0..4) {
                let i = rng.random_range(0..80);
                f[i] = rng.random::<u8>();
            }
            if rng.random::<bool>() {
                let cut = rng.random_range(0..=f.len());
                f.truncate(cut);
            }
        }
        let vnet = VnetHdr {
            flags: rng.random::<u8>() & 3,
            gso_type: gso[rng.random_range(0..gso.len())],
            ecn: rng.random::<bool>(),
            hdr_len: rng.random::<u16>(),
            gso_size: if rng.random::<bool>() {
                rng.random_range(0..2000)
            } else {
                rng.random::<u16>()
            },
            csum_start: if rng.random::<bool>() {
                rng.random_range(30..60)
            } else {
                rng.random::<u16>()
            },
            csum_offset: if rng.random::<bool>() {
                [6, 16][rng.random_range(0..2)]
            } else {
                rng.random::<u16>()
            },
        };
        let max = rng.random_range(0..3000);
        let mut n = 0;
        let r = s.segment(&f, &vnet, max, |h: &[u8], b: &[u8]| {
            let seg = [h, b].concat();
            let seg = seg.as_slice();
            n += 1;
            if vnet.is_gso() {
                assert!(ip_checksum_ok(seg) && l4_checksum_ok(seg));
            }
        });
        if let Ok(count) = r {
            assert_eq!(count, n);
            ok += usize::from(vnet.is_gso());
        }
        let mut g = f.clone();
        let _ = complete_checksum(&mut g, &vnet);
    }
    assert!(
        ok > 100,
        "only {ok} superframes segmented: the fuzz misses the happy path"
    );
}

/// A TCP frame whose checksum field holds the pseudo-header sum, as a sender leaves it partial.
fn partial_tcp_frame() -> (Vec<u8>, Vec<u8>) {
    let (src, dst) = (Ipv4Addr::new(10, 244, 2, 10), Ipv4Addr::new(10, 244, 1, 10));
    let whole = tcp_segment_bytes(src, 8080, dst, 40000, 7, 9, 0x12, b"syn-ack and some data");
    let complete = eth([2; 6], [4; 6], 0x0800, &ipv4(src, dst, 6, 63, &whole));
    let mut partial = complete.clone();
    let ip = Ipv4Packet::new_checked(&partial[14..]).expect("ipv4");
    let pseudo = checksum_fold(ip.pseudo_header_accumulate(whole.len()));
    partial[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&pseudo.to_be_bytes());
    (partial, complete)
}

#[test]
fn a_partial_checksum_left_by_its_sender_is_completed() {
    let (mut partial, complete) = partial_tcp_frame();
    assert_ne!(partial, complete);
    assert!(complete_partial_checksum(&mut partial));
    assert_eq!(
        partial, complete,
        "completed to the checksum the sender's NIC would write"
    );
}

#[test]
fn a_complete_checksum_and_a_udp_without_one_are_left_alone() {
    let (_, mut complete) = partial_tcp_frame();
    let before = complete.clone();
    assert!(!complete_partial_checksum(&mut complete));
    assert_eq!(complete, before);
    let (src, dst) = (Ipv4Addr::new(10, 244, 2, 10), Ipv4Addr::new(10, 244, 1, 10));
    let mut udp = vec![0x13, 0x88, 0x9c, 0x40, 0, 12, 0, 0, 1, 2, 3, 4];
    udp[6..8].copy_from_slice(&[0, 0]);
    let mut frame = eth([2; 6], [4; 6], 0x0800, &ipv4(src, dst, 17, 63, &udp));
    let before = frame.clone();
    assert!(
        !complete_partial_checksum(&mut frame),
        "UDP checksum 0 means none"
    );
    assert_eq!(frame, before);
    // Not IPv4, or too short: nothing happens.
    let mut arp = eth([0xff; 6], [4; 6], 0x0806, &[0; 28]);
    assert!(!complete_partial_checksum(&mut arp));
    assert!(!complete_partial_checksum(&mut [0u8; 10]));
}
