//! Checksum completion and segmentation of virtio-net offload frames (TSO4 and USO) in
//! userspace, for frames that leave through the VXLAN tunnel to a plain kernel.
//!
//! A frame read from a TAP opened with `IFF_VNET_HDR` may be a GSO superframe (up to 64 KiB,
//! `gso_type` TcpV4 or UdpL4) and/or carry a partial L4 checksum (`NEEDS_CSUM`: the
//! pseudo-header sum is in the checksum field). [`complete_checksum`] finishes a partial
//! checksum in place; [`Segmenter::segment`] turns any such frame into wire-ready Ethernet
//! frames.
//!
//! Invariants:
//! - No function here panics on any input. Headers are read and written through the checked
//!   views of [`crate::wire`]; offsets taken from the virtio-net header are bounds-checked
//!   before use; inconsistent input returns an [`OffloadError`] and emits nothing.
//! - Header lengths come from the packet itself (IPv4 IHL, TCP data offset, the fixed UDP
//!   header). The virtio-net `hdr_len` is not trusted: tun reports `skb_headlen()`, which may
//!   include payload. `csum_start`/`csum_offset`, when `NEEDS_CSUM` is set on a superframe,
//!   must point at the L4 checksum field the packet itself describes.
//! - A `gso_size` below [`MIN_GSO_SIZE`] is refused: no real sender cuts segments that
//!   small, and they only multiply packets.
//! - A packet ends where the IPv4 total length says. Ethernet padding after it is never
//!   checksummed and never copied into a segment.
//! - Only IPv4 is handled (the pod network is IPv4). TSO6, legacy UFO, IPv4 fragments and
//!   non-IPv4 frames are reported as errors.
//! - Emitted segments are complete: IPv4 header checksum and L4 checksum are fully computed
//!   (the superframe's partial checksum is not used), so they need no virtio-net header.
//! - Steady state allocates nothing and copies no payload: a segment is handed out as its
//!   headers (built in one reused scratch buffer) and the range of the superframe holding its
//!   payload, which is checksummed where it lies. Callers write the two parts with one gather
//!   I/O (`writev`, `sendmsg`) or copy them once into a batch.

use std::ops::Range;

use super::MIN_GSO_SIZE;
use crate::wire::checksum::{checksum_accumulate, checksum_fold};
use crate::wire::ethernet::{self, ethertype, EthernetFrame};
use crate::wire::ipv4::{protocol, Ipv4Packet};
use crate::wire::tcp::{self, TcpPacket};
use crate::wire::udp::{self, UdpPacket};
use crate::wire::virtio::{GsoType, VnetHdr};
use crate::wire::Error as WireError;

/// Why an offload frame could not be made wire-ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The frame ends before a header it declares, or before its IPv4 total length.
    #[error("offload frame truncated")]
    Truncated,
    /// Not an Ethernet II frame carrying IPv4 (EtherType).
    #[error("offload frame is not IPv4")]
    NotIpv4,
    /// A malformed IPv4 header (version not 4, IHL below 5, total length shorter than the
    /// header).
    #[error("malformed IPv4 header in offload frame")]
    BadIpv4Header,
    /// An IPv4 fragment: its L4 checksum covers bytes that are not here.
    #[error("offload frame is an IPv4 fragment")]
    Fragmented,
    /// A segmentation type the switch does not split (TSO6, legacy UFO).
    #[error("unsupported gso_type {0:?}")]
    UnsupportedGso(GsoType),
    /// The IPv4 protocol does not match the segmentation type.
    #[error("IPv4 protocol does not match gso_type")]
    ProtocolMismatch,
    /// A malformed L4 header (TCP data offset below 5).
    #[error("malformed L4 header in offload frame")]
    BadL4Header,
    /// `csum_start`/`csum_offset` point outside the L4 packet or not at its checksum field.
    #[error("virtio-net checksum offsets inconsistent with the packet")]
    BadOffsets,
    /// The virtio-net `gso_size` is below `MIN_GSO_SIZE`.
    #[error("gso_size {0} below the minimum of {MIN_GSO_SIZE}")]
    GsoSizeTooSmall(u16),
    /// The caller's segment limit leaves no room for payload.
    #[error("zero segment size")]
    ZeroSegmentSize,
}

/// Where the headers of an Ethernet/IPv4 packet are, validated against the frame length.
#[derive(Debug, Clone, Copy)]
struct Ipv4Layout {
    /// Offset of the L4 header: `14 + IHL * 4`, at most `end`.
    l4: usize,
    /// End of the IPv4 packet: `14 + total length`, at most the frame length.
    end: usize,
    /// The IPv4 protocol number.
    proto: u8,
}

/// Validates the Ethernet and IPv4 headers of `frame` and returns their layout.
#[inline]
fn parse_ipv4(frame: &[u8]) -> Result<Ipv4Layout, OffloadError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| OffloadError::Truncated)?;
    if eth.ethertype() != ethertype::IPV4 {
        return Err(OffloadError::NotIpv4);
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|e| match e {
        WireError::Truncated => OffloadError::Truncated,
        WireError::Malformed => OffloadError::BadIpv4Header,
    })?;
    if ip.is_fragment() {
        return Err(OffloadError::Fragmented);
    }
    Ok(Ipv4Layout {
        l4: ethernet::HEADER_LEN + ip.header_len(),
        end: ethernet::HEADER_LEN + ip.packet_len(),
        proto: ip.protocol(),
    })
}

/// Completes the partial L4 checksum of `frame` (Ethernet frame, offsets as on a TAP) in
/// place if `vnet` has `NEEDS_CSUM`; otherwise does nothing.
///
/// The checksum is the complement of the one's complement sum of `frame[csum_start..]` up to
/// the end of the IPv4 packet (not Ethernet padding), summed with the checksum field as it is
/// (it holds the pseudo-header sum). It is stored at `csum_start + csum_offset`; a UDP
/// checksum that comes out as 0 is sent as 0xffff. `csum_start` must not lie before the L4
/// header and the field must lie inside the IPv4 packet.
pub fn complete_checksum(frame: &mut [u8], vnet: &VnetHdr) -> Result<(), OffloadError> {
    if !vnet.needs_csum() {
        return Ok(());
    }
    let lay = parse_ipv4(frame)?;
    let start = usize::from(vnet.csum_start);
    let field = start + usize::from(vnet.csum_offset);
    if start < lay.l4 || field + 2 > lay.end {
        return Err(OffloadError::BadOffsets);
    }
    let region = frame.get(start..lay.end).ok_or(OffloadError::BadOffsets)?;
    let mut csum = !checksum_fold(checksum_accumulate(region));
    if csum == 0 && lay.proto == protocol::UDP && field == lay.l4 + udp::CHECKSUM_OFFSET {
        csum = 0xffff;
    }
    // The place virtio-net names (checked above to lie inside the packet), not a header field.
    if let Some(dst) = frame.get_mut(field..field + 2) {
        dst.copy_from_slice(&csum.to_be_bytes());
    }
    Ok(())
}

/// Completes, in place, the TCP or UDP checksum of a frame whose checksum field holds only the
/// pseudo-header sum: a frame its sender left partial for a NIC to complete, as Linux's vxlan
/// (and a veth-mode node's fast path) leave it over a veth underlay. Returns whether it did.
///
/// A partial checksum is recognised by that value alone. A complete checksum that happens to
/// equal it is recomputed to the same value (the field then holds the pseudo-header sum, which
/// is all `complete_checksum` needs), so nothing whole is ever broken. A UDP checksum of 0
/// (none) is left alone.
pub fn complete_partial_checksum(frame: &mut [u8]) -> bool {
    let Ok(lay) = parse_ipv4(frame) else {
        return false;
    };
    let offset = match lay.proto {
        protocol::TCP => tcp::CHECKSUM_OFFSET,
        protocol::UDP => udp::CHECKSUM_OFFSET,
        _ => return false,
    };
    let field = lay.l4 + offset;
    let Some(&[hi, lo]) = frame.get(field..field + 2) else {
        return false;
    };
    let held = u16::from_be_bytes([hi, lo]);
    if held == 0 && lay.proto == protocol::UDP {
        return false;
    }
    let Ok(ip) = Ipv4Packet::new_checked(&frame[ethernet::HEADER_LEN..]) else {
        return false;
    };
    if checksum_fold(ip.pseudo_header_accumulate(lay.end - lay.l4)) != held {
        return false;
    }
    let vnet = VnetHdr {
        flags: crate::wire::virtio::FLAG_NEEDS_CSUM,
        csum_start: lay.l4 as u16,
        csum_offset: offset as u16,
        ..VnetHdr::default()
    };
    complete_checksum(frame, &vnet).is_ok()
}

/// The L4 protocol of a superframe being split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

/// Splits GSO superframes and completes partial checksums, reusing one scratch buffer.
///
/// Keep one per thread (or per tunnel); after the first few frames the buffer has grown to the
/// largest segment and segmentation no longer allocates.
#[derive(Debug, Default)]
pub struct Segmenter {
    scratch: Vec<u8>,
}
impl Segmenter {
    /// A segmenter with an empty scratch buffer.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Makes the Ethernet frame `frame` (described by `vnet`) wire-ready and hands each
    /// resulting frame to `emit` as two parts to be sent back to back: its headers and its
    /// payload. Returns the number of frames emitted.
    ///
    /// - `gso_type` None: the frame is emitted once, unchanged (no copy: empty headers, the
    ///   whole frame as payload) unless `NEEDS_CSUM`, in which case a copy with the checksum
    ///   completed is emitted as the headers part. Callers that own the
    ///   frame mutably can instead call `complete_checksum` in place and skip the copy.
    /// - TcpV4: the TCP payload is cut into chunks of `min(gso_size, max_segment_payload)`
    ///   bytes. Each segment repeats the Ethernet, IPv4 (options included) and TCP (options
    ///   included) headers with IPv4 total length, id (original + index, wrapping) and header
    ///   checksum set, sequence number advanced by the payload offset, FIN and PSH only on the
    ///   last segment, CWR only on the first, and the TCP checksum fully computed.
    /// - UdpL4 (USO): each chunk becomes its own UDP datagram: UDP length, IPv4 total length,
    ///   id and header checksum set, UDP checksum computed (0 is sent as 0xffff).
    /// - Other types are refused with [`OffloadError::UnsupportedGso`].
    ///
    /// `max_segment_payload` limits the payload bytes per segment (to fit the tunnel MTU; the
    /// caller subtracts the IPv4 and L4 header lengths, options included). A superframe with an
    /// empty payload is emitted as one segment. On error nothing has been emitted.
    pub fn segment<F: FnMut(&[u8], &[u8])>(
        &mut self,
        frame: &[u8],
        vnet: &VnetHdr,
        max_segment_payload: usize,
        mut emit: F,
    ) -> Result<usize, OffloadError> {
        self.segment_within(
            frame,
            vnet,
            max_segment_payload,
            usize::MAX,
            &mut |h, body| emit(h, frame.get(body).unwrap_or_default()),
        )
    }

    /// Like [`Segmenter::segment`], with segments cut so that each IPv4 packet, with this
    /// flow's own IPv4 and L4 headers (options included), is at most `ip_mtu` bytes: what a
    /// tunnel with that inner MTU carries without fragmenting. The payload part is given as
    /// its range in `frame`, for callers that refer to it rather than copy it.
    pub fn segment_for_mtu<F: FnMut(&[u8], Range<usize>)>(
        &mut self,
        frame: &[u8],
        vnet: &VnetHdr,
        ip_mtu: usize,
        mut emit: F,
    ) -> Result<usize, OffloadError> {
        self.segment_within(frame, vnet, usize::MAX, ip_mtu, &mut emit)
    }

    fn segment_within(
        &mut self,
        frame: &[u8],
        vnet: &VnetHdr,
        max_segment_payload: usize,
        ip_mtu: usize,
        emit: &mut dyn FnMut(&[u8], Range<usize>),
    ) -> Result<usize, OffloadError> {
        match vnet.gso_type {
            GsoType::None => {
                if !vnet.needs_csum() {
                    emit(&[], 0..frame.len());
                    return Ok(1);
                }
                self.scratch.clear();
                self.scratch.extend_from_slice(frame);
                complete_checksum(&mut self.scratch, vnet)?;
                emit(&self.scratch, 0..0);
                Ok(1)
            }
            GsoType::TcpV4 => self.split(frame, vnet, max_segment_payload, ip_mtu, L4::Tcp, emit),
            GsoType::UdpL4 => self.split(frame, vnet, max_segment_payload, ip_mtu, L4::Udp, emit),
            other @ (GsoType::Udp | GsoType::TcpV6) => Err(OffloadError::UnsupportedGso(other)),
        }
    }

    fn split(
        &mut self,
        frame: &[u8],
        vnet: &VnetHdr,
        max_segment_payload: usize,
        ip_mtu: usize,
        kind: L4,
        emit: &mut dyn FnMut(&[u8], Range<usize>),
    ) -> Result<usize, OffloadError> {
        let lay = parse_ipv4(frame)?;
        let (proto, csum_offset) = match kind {
            L4::Tcp => (protocol::TCP, tcp::CHECKSUM_OFFSET),
            L4::Udp => (protocol::UDP, udp::CHECKSUM_OFFSET),
        };
        if lay.proto != proto {
            return Err(OffloadError::ProtocolMismatch);
        }
        let packet = frame.get(..lay.end).ok_or(OffloadError::Truncated)?;
        let l4_bytes = packet.get(lay.l4..).ok_or(OffloadError::Truncated)?;
        let l4_hdr_len = match kind {
            L4::Tcp => TcpPacket::new_checked(l4_bytes)
                .map_err(|e| match e {
                    WireError::Truncated => OffloadError::Truncated,
                    WireError::Malformed => OffloadError::BadL4Header,
                })?
                .header_len(),
            L4::Udp => {
                UdpPacket::new_checked(l4_bytes).map_err(|_| OffloadError::Truncated)?;
                udp::HEADER_LEN
            }
        };
        let hdrs = lay.l4 + l4_hdr_len;
        let payload = packet.get(hdrs..).ok_or(OffloadError::Truncated)?;
        if vnet.needs_csum()
            && (usize::from(vnet.csum_start) != lay.l4
                || usize::from(vnet.csum_offset) != csum_offset)
        {
            return Err(OffloadError::BadOffsets);
        }
        if vnet.gso_size < MIN_GSO_SIZE {
            return Err(OffloadError::GsoSizeTooSmall(vnet.gso_size));
        }
        let fits_mtu = ip_mtu.saturating_sub(hdrs - ethernet::HEADER_LEN);
        let mss = usize::from(vnet.gso_size)
            .min(max_segment_payload)
            .min(fits_mtu);
        if mss == 0 {
            return Err(OffloadError::ZeroSegmentSize);
        }

        // Template: all headers, rewritten per segment through views over the scratch
        // buffer. Its length fields (IHL, data offset) are never rewritten, so views that
        // succeed on the template here succeed for every segment.
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.reserve(hdrs);
        scratch.extend_from_slice(packet.get(..hdrs).ok_or(OffloadError::Truncated)?);
        let (id0, pseudo_base, seq0, flags0) = {
            let (ip, l4) = template_views(scratch, lay.l4, kind)?;
            let (seq0, flags0) = match l4 {
                L4Header::Tcp(t) => (t.seq_number(), t.flags()),
                L4Header::Udp(_) => (0, 0),
            };
            // Addresses and protocol; the L4 length is added per segment.
            (ip.ident(), ip.pseudo_header_accumulate(0), seq0, flags0)
        };

        let count = payload.len().div_ceil(mss).max(1);
        let mut offset = 0;
        for i in 0..count {
            let end = (offset + mss).min(payload.len());
            let chunk = payload.get(offset..end).ok_or(OffloadError::Truncated)?;

            let l4_len = l4_hdr_len + chunk.len();
            // Both fit: a segment is never longer than the superframe, whose total length was
            // a u16.
            let l4_len16 = u16::try_from(l4_len).map_err(|_| OffloadError::BadIpv4Header)?;
            let total16 = u16::try_from(lay.l4 - ethernet::HEADER_LEN + l4_len)
                .map_err(|_| OffloadError::BadIpv4Header)?;

            let (mut ip, mut l4) = template_views(scratch, lay.l4, kind)?;
            ip.set_total_len(total16);
            // Truncation intended: the id wraps.
            ip.set_ident(id0.wrapping_add(i as u16));
            ip.fill_checksum();
            match &mut l4 {
                L4Header::Tcp(t) => {
                    // Truncation intended: sequence numbers wrap (offset < 64 KiB anyway).
                    t.set_seq_number(seq0.wrapping_add(offset as u32));
                    let mut flags = flags0;
                    if i > 0 {
                        flags &= !tcp::flags::CWR;
                    }
                    if i + 1 < count {
                        flags &= !(tcp::flags::FIN | tcp::flags::PSH);
                    }
                    t.set_flags(flags);
                    t.set_checksum(0);
                }
                L4Header::Udp(u) => {
                    u.set_len(l4_len16);
                    u.set_checksum(0);
                }
            }
            // The L4 header length is even (TCP: a multiple of 4; UDP: 8), so the payload
            // can be summed on its own, where it lies.
            let sum = pseudo_base
                + u64::from(l4_len16)
                + checksum_accumulate(l4.bytes())
                + checksum_accumulate(chunk);
            let csum = !checksum_fold(sum);
            match &mut l4 {
                L4Header::Tcp(t) => t.set_checksum(csum),
                // 0 means "no checksum" in UDP: a computed 0 is sent as its other form.
                L4Header::Udp(u) => u.set_checksum(if csum == 0 { 0xffff } else { csum }),
            }

            emit(scratch, hdrs + offset..hdrs + end);
            offset = end;
        }
        Ok(count)
    }
}

/// The L4 header of a segmentation template.
enum L4Header<'a> {
    Tcp(TcpPacket<&'a mut [u8]>),
    Udp(UdpPacket<&'a mut [u8]>),
}

impl L4Header<'_> {
    /// The header's bytes (the template ends with the L4 header).
    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Tcp(t) => t.header(),
            Self::Udp(u) => u.header(),
        }
    }
}

/// The IPv4 and L4 views of the template `scratch` (Ethernet, IPv4 and L4 headers; the L4
/// header at `l4`). Always inlined, like [`L4Header::bytes`]: it runs once per segment, and
/// called out of line the two cost 7% of segmentation.
#[inline(always)]
fn template_views(
    scratch: &mut [u8],
    l4: usize,
    kind: L4,
) -> Result<(Ipv4Packet<&mut [u8]>, L4Header<'_>), OffloadError> {
    let (ip, rest) = scratch
        .get_mut(ethernet::HEADER_LEN..)
        .ok_or(OffloadError::Truncated)?
        .split_at_mut_checked(l4.saturating_sub(ethernet::HEADER_LEN))
        .ok_or(OffloadError::Truncated)?;
    let ip = Ipv4Packet::new_checked_header(ip).map_err(|_| OffloadError::Truncated)?;
    let l4 = match kind {
        L4::Tcp => {
            L4Header::Tcp(TcpPacket::new_checked(rest).map_err(|_| OffloadError::Truncated)?)
        }
        L4::Udp => {
            L4Header::Udp(UdpPacket::new_checked(rest).map_err(|_| OffloadError::Truncated)?)
        }
    };
    Ok((ip, l4))
}

#[cfg(test)]
mod tests;
