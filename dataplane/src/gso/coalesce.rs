//! Receive coalescing: consecutive TCP segments of one flow, decapsulated from the tunnel, are
//! merged into one superframe before the TAP write, like the kernel's GRO.
//!
//! Each TAP write makes the pod's kernel run its TCP receive path for that frame, inline in the
//! switch's `write`; merging 40 segments into one 64 KiB superframe (virtio-net header
//! `TCPV4`, `NEEDS_CSUM`) makes that one run. Rules, after Linux's `tcp_gro_receive`:
//! - IPv4 without options, TCP with identical options and acknowledgement number, same
//!   addresses, ports, TOS and TTL; the next segment's sequence number continues the previous;
//! - every merged segment but the last carries exactly the first one's payload size (the MSS);
//!   PSH, a short segment, 64 segments or 64 KiB close the superframe; SYN, FIN, RST, URG, CWR
//!   or ECE, or no payload, are never merged;
//! - each segment's TCP checksum is verified before it is merged (the pod's kernel trusts a
//!   partial-checksum superframe); a segment that fails goes on alone and the kernel drops it.
//!
//! Frames that do not qualify pass through unchanged, in order.
//!
//! No payload is copied: frames are given as ranges of the caller's receive buffer, the
//! superframe is kept as its rebuilt headers plus the ranges of the merged payloads, and it is
//! handed out as parts (headers, payload, payload, ...) for one gather write to the TAP.

use std::ops::Range;

use crate::table::PortId;
use crate::wire::checksum::{checksum_accumulate, checksum_fold};
use crate::wire::ethernet::{self, ethertype, EthernetFrame};
use crate::wire::ipv4::{self, protocol, Ipv4Packet};
use crate::wire::tcp::{self, flags, TcpPacket};
use crate::wire::virtio::{GsoType, VnetHdr, FLAG_NEEDS_CSUM};

const MAX_SEGMENTS: usize = 64;
/// Most parts of an emitted frame: its headers and one payload per merged segment.
pub const MAX_PARTS: usize = MAX_SEGMENTS + 1;
/// Where the TCP header of a mergeable frame starts (IPv4 without options).
const TCP_AT: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
/// FIN, SYN, RST, URG, ECE, CWR: never merged.
const NO_MERGE: u8 = flags::FIN | flags::SYN | flags::RST | flags::URG | flags::ECE | flags::CWR;

/// What must be equal for two segments to belong to one superframe (besides the TCP
/// options, compared as bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    macs: (u64, u64),
    dscp_ecn: u8,
    /// DF and TTL (a fragment is never merged).
    flags_and_offset: u16,
    ttl: u8,
    addresses: [u8; 8],
    ports: [u8; 4],
    ack: u32,
    tcp_hdr: usize,
}

/// A frame that may start or join a superframe.
#[derive(Debug, Clone, Copy)]
struct Segment<'a> {
    key: FlowKey,
    /// Payload bytes.
    len: usize,
    seq: u32,
    flags: u8,
    window: u16,
    /// The TCP options (must be the same bytes in every segment of a superframe).
    options: &'a [u8],
    /// Its checksum is partial.
    partial: bool,
}

/// The TCP options of a superframe's first segment, kept to compare the next ones with (at
/// most 40 bytes: a TCP header is at most 60).
#[derive(Debug, Clone, Copy)]
struct Options {
    bytes: [u8; 40],
    len: usize,
}

impl Options {
    fn copy(options: &[u8]) -> Self {
        let mut bytes = [0; 40];
        let len = options.len().min(bytes.len());
        bytes[..len].copy_from_slice(&options[..len]);
        Self { bytes, len }
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// What identifies a mergeable segment's flow and position.
#[derive(Debug, Clone, Copy)]
struct Open {
    port: PortId,
    key: FlowKey,
    mss: usize,
    next_seq: u32,
    /// Payload bytes merged so far.
    len: usize,
    closed: bool,
    options: Options,
    /// The first segment's checksum is partial (a run of one then goes with `NEEDS_CSUM`).
    first_partial: bool,
}

/// Merges TCP segments per destination port. One instance per data-plane thread.
#[derive(Debug, Default)]
pub struct Coalescer {
    /// The superframe's headers (the first segment's, updated as segments join).
    head: Vec<u8>,
    /// Where each merged payload lies in the source buffer.
    payloads: Vec<Range<usize>>,
    open: Option<Open>,
}

/// The segment in `frame` if it may start or join a superframe (IPv4 without options, TCP
/// with ACK, payload and none of [`NO_MERGE`]), after verifying its checksums; `None` for
/// anything else.
#[inline]
fn mergeable(frame: &[u8]) -> Option<Segment<'_>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != ethertype::IPV4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.into_payload()).ok()?;
    if ip.header_len() != ipv4::HEADER_LEN || ip.protocol() != protocol::TCP || ip.is_fragment() {
        return None;
    }
    let segment = ip.into_payload();
    let tcp = TcpPacket::new_checked(segment).ok()?;
    let flags = tcp.flags();
    if tcp.payload().is_empty() || flags & NO_MERGE != 0 || flags & flags::ACK == 0 {
        return None;
    }
    if !ip.verify_checksum() {
        return None;
    }
    let partial = tcp_checksum(&ip, segment)?;
    Some(Segment {
        key: FlowKey {
            macs: (eth.dst_key(), eth.src_key()),
            dscp_ecn: ip.dscp_ecn(),
            flags_and_offset: ip.flags_and_offset(),
            ttl: ip.ttl(),
            addresses: ip.addresses(),
            ports: tcp.ports(),
            ack: tcp.ack_number(),
            tcp_hdr: tcp.header_len(),
        },
        len: tcp.payload().len(),
        seq: tcp.seq_number(),
        flags,
        window: tcp.window(),
        options: tcp.into_options(),
        partial,
    })
}

/// The TCP `segment`'s checksum: `Some(false)` valid, `Some(true)` partial (see
/// [`is_partial`]; the pod's kernel gets it, alone or in a superframe, with `NEEDS_CSUM`),
/// `None` wrong. Out of line: inlined into the merging loop, the vectorised sum lost its
/// registers and coalescing ran 15% slower.
#[inline(never)]
fn tcp_checksum(ip: &Ipv4Packet<&[u8]>, segment: &[u8]) -> Option<bool> {
    let sum = ip.pseudo_header_accumulate(segment.len()) + checksum_accumulate(segment);
    if checksum_fold(sum) == 0xffff {
        Some(false)
    } else {
        is_partial(ip, segment, tcp::CHECKSUM_OFFSET).then_some(true)
    }
}

/// True if the L4 checksum of `segment` (at `at`) is partial: it holds the pseudo-header sum,
/// left for an offload that never happened. A kernel VXLAN device over a virtual underlay
/// (veth) sends inner TCP/UDP so; the sender computed nothing, so such a segment is delivered
/// with `NEEDS_CSUM` for the pod's kernel to accept as its own offloaded traffic. A corrupt
/// segment matches this by chance once in 65536; one that does not is left to be dropped.
fn is_partial(ip: &Ipv4Packet<&[u8]>, segment: &[u8], at: usize) -> bool {
    let Some(field) = segment.get(at..at + 2) else {
        return false;
    };
    let field = u16::from_be_bytes([field[0], field[1]]);
    let pseudo = checksum_fold(ip.pseudo_header_accumulate(segment.len()));
    field == pseudo || (field == 0 && pseudo == 0xffff) || (field == 0xffff && pseudo == 0)
}

/// The virtio-net header a frame that is not merged goes to its pod with: `NEEDS_CSUM` if it
/// is IPv4 TCP or UDP whose checksum is partial (see [`is_partial`]) rather than valid;
/// otherwise none (a valid checksum, or a corrupt one for the pod's kernel to drop).
pub(crate) fn alone_vnet(frame: &[u8]) -> VnetHdr {
    let partial = || -> Option<VnetHdr> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != ethertype::IPV4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.into_payload()).ok()?;
        if ip.is_fragment() {
            return None;
        }
        let offset = match ip.protocol() {
            protocol::TCP => tcp::CHECKSUM_OFFSET,
            protocol::UDP => crate::wire::udp::CHECKSUM_OFFSET,
            _ => return None,
        };
        let l4 = ip.payload();
        // The cheap test first (12 bytes); the whole sum only for a field that looks partial
        // (a valid checksum equal to the pseudo-header sum is one in 65536).
        if !is_partial(&ip, l4, offset) {
            return None;
        }
        let sum = ip.pseudo_header_accumulate(l4.len()) + checksum_accumulate(l4);
        if checksum_fold(sum) == 0xffff {
            return None;
        }
        let start = ethernet::HEADER_LEN + ip.header_len();
        Some(VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: start as u16,
            csum_offset: offset as u16,
            ..VnetHdr::default()
        })
    };
    partial().unwrap_or_default()
}

impl Coalescer {
    /// Offers the frame `source[frame]` (a complete, routed inner frame) for `port`. Whatever
    /// can no longer be merged is handed to `emit(port, parts, vnet)`, in arrival order; the
    /// parts, back to back, are the frame. `source` must be the same buffer, unchanged, from
    /// the first `push` to the `flush` that ends a batch.
    pub fn push(
        &mut self,
        port: PortId,
        source: &[u8],
        frame: Range<usize>,
        emit: &mut impl FnMut(PortId, &[&[u8]], VnetHdr),
    ) {
        let Some(bytes) = source.get(frame.clone()) else {
            return;
        };
        let seg = mergeable(bytes);
        // The open superframe is looked at and updated in place (copying it per segment cost
        // a tenth of coalescing).
        if let (Some(open), Some(seg)) = (self.open.as_mut(), seg.as_ref()) {
            if Self::joins(open, port, seg) {
                let start = frame.start + TCP_AT + seg.key.tcp_hdr;
                self.payloads.push(start..start + seg.len);
                let count = self.payloads.len();
                open.closed =
                    seg.flags & flags::PSH != 0 || seg.len < open.mss || count >= MAX_SEGMENTS;
                open.next_seq = seg.seq.wrapping_add(seg.len as u32);
                open.len += seg.len;
                if let Some(mut tcp) = self.head_tcp() {
                    tcp.set_flags(tcp.flags() | (seg.flags & flags::PSH));
                    // The window follows the newest segment.
                    tcp.set_window(seg.window);
                }
                return;
            }
        }
        self.flush(source, emit);
        match seg {
            Some(seg) if seg.flags & flags::PSH == 0 => {
                let hdrs = TCP_AT + seg.key.tcp_hdr;
                self.head.clear();
                self.head
                    .extend_from_slice(bytes.get(..hdrs).unwrap_or_default());
                self.payloads.clear();
                self.payloads
                    .push(frame.start + hdrs..frame.start + hdrs + seg.len);
                self.open = Some(Open {
                    port,
                    key: seg.key,
                    mss: seg.len,
                    next_seq: seg.seq.wrapping_add(seg.len as u32),
                    len: seg.len,
                    closed: false,
                    options: Options::copy(seg.options),
                    first_partial: seg.partial,
                });
            }
            _ => emit(port, &[bytes], alone_vnet(bytes)),
        }
    }

    /// The TCP header of the superframe being built.
    #[inline]
    fn head_tcp(&mut self) -> Option<TcpPacket<&mut [u8]>> {
        TcpPacket::new_checked(self.head.get_mut(TCP_AT..)?).ok()
    }

    fn joins(open: &Open, port: PortId, seg: &Segment<'_>) -> bool {
        !open.closed
            && open.port == port
            && seg.key == open.key
            && seg.seq == open.next_seq
            && seg.len <= open.mss
            && ipv4::HEADER_LEN + seg.key.tcp_hdr + open.len + seg.len <= ipv4::MAX_PACKET_LEN
            && seg.options == open.options.as_slice()
    }

    /// Emits the superframe being built, if any (`source` as given to [`Coalescer::push`]).
    pub fn flush(&mut self, source: &[u8], emit: &mut impl FnMut(PortId, &[&[u8]], VnetHdr)) {
        let Some(open) = self.open.take() else { return };
        let vnet = if self.payloads.len() == 1 {
            if open.first_partial {
                VnetHdr {
                    flags: FLAG_NEEDS_CSUM,
                    csum_start: TCP_AT as u16,
                    csum_offset: tcp::CHECKSUM_OFFSET as u16,
                    ..VnetHdr::default()
                }
            } else {
                VnetHdr::default()
            }
        } else {
            self.finish_head(&open)
        };
        let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
        parts[0] = &self.head;
        let mut n = 1;
        for (slot, range) in parts[1..].iter_mut().zip(&self.payloads) {
            // Ranges were taken from `source` by `push`.
            *slot = source.get(range.clone()).unwrap_or_default();
            n += 1;
        }
        emit(open.port, &parts[..n], vnet);
    }

    /// Makes the headers those of a superframe of `open`; returns its virtio-net header.
    fn finish_head(&mut self, open: &Open) -> VnetHdr {
        let tcp_len = open.key.tcp_hdr + open.len;
        // At most MAX_PACKET_LEN: checked by `joins`.
        let total = (ipv4::HEADER_LEN + tcp_len) as u16;
        let Some((ip, tcp)) = self.head.split_at_mut_checked(TCP_AT) else {
            return VnetHdr::default();
        };
        if let (Some(mut ip), Ok(mut tcp)) = (
            ip.get_mut(ethernet::HEADER_LEN..)
                .and_then(|b| Ipv4Packet::new_checked_header(b).ok()),
            TcpPacket::new_checked(tcp),
        ) {
            ip.set_total_len(total);
            ip.fill_checksum();
            // Partial checksum, as the kernel expects with NEEDS_CSUM: the pseudo-header sum.
            tcp.set_checksum(checksum_fold(ip.pseudo_header_accumulate(tcp_len)));
        }
        VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GsoType::TcpV4,
            ecn: false,
            hdr_len: (TCP_AT + open.key.tcp_hdr) as u16,
            gso_size: open.mss as u16,
            csum_start: TCP_AT as u16,
            csum_offset: tcp::CHECKSUM_OFFSET as u16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gso::Segmenter;
    use crate::wire::checksum_sum;
    use crate::wire::tcp::flags::{ACK, PSH};

    const ETH: usize = 14;
    const IP: usize = 20;
    const MAX_IP_LEN: usize = ipv4::MAX_PACKET_LEN;

    fn pseudo(ip: &[u8], tcp_len: usize) -> u16 {
        let ip = Ipv4Packet::new_checked_header(ip).expect("ipv4");
        checksum_fold(ip.pseudo_header_accumulate(tcp_len))
    }
    use crate::testutil::{eth, ipv4_tos};
    use std::net::Ipv4Addr;

    fn tcp_frame(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 32];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&500u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        t.extend_from_slice(payload);
        let src = Ipv4Addr::new(10, 244, 1, 10);
        let dst = Ipv4Addr::new(10, 244, 2, 10);
        let mut f = eth(
            [2; 6],
            [4; 6],
            0x0800,
            &ipv4_tos(src, dst, 6, 63, 0, true, &t),
        );
        let ip = f[ETH..].to_vec();
        let c = !checksum_fold(u64::from(pseudo(&ip, t.len())) + u64::from(checksum_sum(&t)));
        f[ETH + IP + 16..ETH + IP + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn run(frames: &[Vec<u8>]) -> Vec<(Vec<u8>, VnetHdr)> {
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        // Frames back to back in one buffer, at odd offsets, as in a receive batch.
        let mut source = vec![0xee; 3];
        let mut ranges = Vec::new();
        for f in frames {
            ranges.push(source.len()..source.len() + f.len());
            source.extend_from_slice(f);
            source.push(0xee);
        }
        for r in ranges {
            c.push(3, &source, r, &mut |_, parts: &[&[u8]], v| {
                out.push((parts.concat(), v))
            });
        }
        c.flush(&source, &mut |_, parts: &[&[u8]], v| {
            out.push((parts.concat(), v))
        });
        out
    }

    #[test]
    fn consecutive_segments_merge_and_resegment_to_the_originals() {
        let data: Vec<u8> = (0..4 * 1000 + 300).map(|i| (i % 251) as u8).collect();
        let mut frames: Vec<Vec<u8>> = data
            .chunks(1000)
            .enumerate()
            .map(|(i, c)| tcp_frame(5000 + (i * 1000) as u32, ACK, c))
            .collect();
        let last = frames.len() - 1;
        frames[last] = tcp_frame(5000 + 4000, ACK | PSH, &data[4000..]);
        let out = run(&frames);
        assert_eq!(out.len(), 1, "one superframe");
        let (sf, v) = &out[0];
        assert_eq!(
            (v.gso_type, v.gso_size, v.csum_start, v.csum_offset),
            (GsoType::TcpV4, 1000, 34, 16)
        );
        assert_eq!(sf[ETH + IP + 13] & PSH, PSH);
        // What the pod's kernel would do with it: segment again and get the originals back.
        let mut again = Vec::new();
        Segmenter::default()
            .segment(sf, v, 1000, |h: &[u8], b: &[u8]| {
                again.push([h, b].concat())
            })
            .expect("resegment");
        assert_eq!(again.len(), frames.len());
        for (a, f) in again.iter().zip(&frames) {
            assert_eq!(
                &a[ETH + IP + 4..ETH + IP + 8],
                &f[ETH + IP + 4..ETH + IP + 8],
                "seq"
            );
            assert_eq!(&a[ETH + IP + 32..], &f[ETH + IP + 32..], "payload");
        }
    }

    #[test]
    fn gaps_flags_and_bad_checksums_break_the_run() {
        let p = vec![1u8; 500];
        let a = tcp_frame(0, ACK, &p);
        let gap = tcp_frame(1000, ACK, &p);
        let out = run(&[a.clone(), gap.clone()]);
        assert_eq!(
            out.iter()
                .map(|(f, v)| (f.clone(), v.gso_type))
                .collect::<Vec<_>>(),
            vec![(a.clone(), GsoType::None), (gap, GsoType::None)]
        );
        let fin = tcp_frame(500, ACK | 0x01, &p);
        assert_eq!(run(&[a.clone(), fin.clone()]).len(), 2);
        let mut corrupt = tcp_frame(500, ACK, &p);
        corrupt[100] ^= 0xff;
        let out = run(&[a.clone(), corrupt.clone()]);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1].0, corrupt,
            "a corrupt segment passes unchanged for the kernel to drop"
        );
        let not_tcp = eth([2; 6], [4; 6], 0x0806, &[0u8; 28]);
        assert_eq!(
            run(std::slice::from_ref(&not_tcp)),
            vec![(not_tcp, VnetHdr::default())]
        );
    }

    /// `f` with its TCP checksum left partial, as a kernel VXLAN device on a veth leaves it.
    fn partial(mut f: Vec<u8>) -> Vec<u8> {
        let ip = f[ETH..].to_vec();
        let tcp_len = ip.len() - 20;
        let p = pseudo(&ip, tcp_len);
        f[ETH + 20 + 16..ETH + 20 + 18].copy_from_slice(&p.to_be_bytes());
        f
    }

    #[test]
    fn partial_checksums_are_delivered_for_the_kernel_to_accept() {
        let p = vec![1u8; 500];
        let (a, b) = (
            partial(tcp_frame(0, ACK, &p)),
            partial(tcp_frame(500, ACK, &p)),
        );
        // Merged like valid segments: a superframe goes with NEEDS_CSUM anyway.
        let out = run(&[a.clone(), b]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.gso_type, GsoType::TcpV4);
        // Alone (a run of one, or a segment that never merges): NEEDS_CSUM at the TCP checksum.
        for alone in [
            a.clone(),
            partial(tcp_frame(0, ACK | 0x08, &p)),
            partial(tcp_frame(0, ACK, &[])),
        ] {
            let out = run(std::slice::from_ref(&alone));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, alone, "bytes unchanged");
            let v = out[0].1;
            assert!(v.needs_csum(), "{v:?}");
            assert_eq!((v.csum_start, v.csum_offset), (34, 16));
        }
        // A valid checksum needs nothing; a corrupt one is left to be dropped.
        let valid = tcp_frame(0, ACK | 0x08, &p);
        assert_eq!(run(std::slice::from_ref(&valid))[0].1, VnetHdr::default());
        let mut corrupt = partial(tcp_frame(0, ACK | 0x08, &p));
        corrupt[ETH + 20 + 16] ^= 0x10;
        assert_eq!(run(std::slice::from_ref(&corrupt))[0].1, VnetHdr::default());
    }

    #[test]
    fn random_frames_never_panic_and_come_out_in_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut c = Coalescer::default();
        let mut merged = 0;
        for _ in 0..400 {
            // A batch of 50 frames back to back; ranges may also be wrong (past the end).
            let mut source = Vec::new();
            let mut ranges = Vec::new();
            for _ in 0..50 {
                let mut f = tcp_frame(rng.random_range(0..4) * 100, ACK, &[0u8; 100]);
                if rng.random_bool(0.3) {
                    let at = rng.random_range(0..f.len());
                    f[at] = rng.random();
                }
                if rng.random_bool(0.3) {
                    f.truncate(rng.random_range(0..=f.len()));
                }
                let extra = if rng.random_bool(0.01) { 5 } else { 0 };
                ranges.push(source.len()..source.len() + f.len() + extra);
                source.extend_from_slice(&f);
            }
            let mut check = |_, parts: &[&[u8]], v: VnetHdr| {
                let len: usize = parts.iter().map(|p| p.len()).sum();
                assert!(len <= ETH + MAX_IP_LEN && parts.len() <= MAX_PARTS);
                merged += usize::from(v.is_gso());
            };
            for r in ranges {
                c.push(rng.random_range(0..3), &source, r, &mut check);
            }
            c.flush(&source, &mut check);
        }
        assert!(merged > 0, "some runs of the random stream were merged");
    }
}
