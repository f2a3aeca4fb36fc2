//! The `segment` and `coalesce` targets: the offload paths (segmentation of superframes,
//! receive coalescing); every segment is a well-formed frame within the limit.

use crate::gso::{self, Coalescer, Segmenter};
use crate::table::PortId;
use crate::wire::checksum::{checksum_accumulate, checksum_fold};
use crate::wire::ethernet::{self};
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::virtio::{self, VnetHdr};

use super::{check_parts, records};

/// The segmentation target: `data` is a virtio-net header (10 bytes; unparseable ones are
/// skipped), a limit (u16 LE) and the frame. The frame's checksum is completed in place (on a
/// copy) and it is segmented with the limit as the payload per segment and as the IP MTU.
/// Invariants: each segment of a superframe is checked by [`check_segment`]; the payloads of
/// the segments, back to back, are as long as the superframe's payload.
pub fn fuzz_segment(data: &[u8]) {
    let Some((head, frame)) = data.split_at_checked(virtio::HEADER_LEN + 2) else {
        return;
    };
    let Ok(vnet) = VnetHdr::parse(head) else {
        return;
    };
    let limit = usize::from(u16::from_le_bytes([head[10], head[11]]));
    let mut copy = frame.to_vec();
    let _ = gso::complete_checksum(&mut copy, &vnet);
    let mut s = Segmenter::default();
    let _ = s.segment(frame, &vnet, limit, |head, body| {
        if vnet.is_gso() {
            check_segment(&[head, body].concat(), usize::MAX);
        }
    });
    let (mut payload, mut headers) = (0, 0);
    let cut = s.segment_for_mtu(frame, &vnet, limit, |head, body| {
        if vnet.is_gso() {
            check_segment(
                &[head, frame.get(body.clone()).unwrap_or_default()].concat(),
                limit,
            );
            payload += body.len();
            headers = head.len();
        }
    });
    if cut.is_ok() && vnet.is_gso() {
        let whole = Ipv4Packet::new_checked(frame.get(ethernet::HEADER_LEN..).unwrap_or_default());
        let end = ethernet::HEADER_LEN + whole.map(|p| p.packet_len()).unwrap_or_default();
        assert_eq!(payload, end - headers, "payload bytes segmented");
    }
}

/// Checks one segment cut from a superframe: an IPv4 packet of at most `mtu` bytes whose
/// total length is its length and whose IPv4 and L4 checksums are complete and valid.
pub fn check_segment(frame: &[u8], mtu: usize) {
    let ip = frame.get(ethernet::HEADER_LEN..).unwrap_or_default();
    assert!(ip.len() <= mtu, "segment of {} bytes > MTU {mtu}", ip.len());
    let p = Ipv4Packet::new_checked(ip);
    assert!(p.is_ok(), "segment is not IPv4: {p:?}");
    if let Ok(p) = p {
        assert!(p.verify_checksum(), "segment's IPv4 checksum");
        assert_eq!(
            usize::from(p.total_len()),
            ip.len(),
            "segment's total length"
        );
        let l4 = p.payload();
        let sum = p.pseudo_header_accumulate(l4.len()) + checksum_accumulate(l4);
        assert_eq!(checksum_fold(sum), 0xffff, "segment's L4 checksum");
    }
}

/// The coalescing target: `data` is a sequence of records `[port, len (u16 LE), frame]`; the
/// frames are pushed in order (port `port % 4`) from one source buffer, then flushed.
/// Invariants: every output has between one and `MAX_PARTS` parts; a superframe it makes is
/// one the segmenter cuts back into as many segments as it merged.
pub fn fuzz_coalesce(data: &[u8]) {
    let mut c = Coalescer::default();
    let mut s = Segmenter::default();
    let mut emit = |_: PortId, parts: &[&[u8]], vnet: VnetHdr| {
        check_parts(parts);
        if vnet.is_gso() && vnet.gso_size >= gso::MIN_GSO_SIZE {
            let frame = parts.concat();
            let cut = s.segment(&frame, &vnet, usize::MAX, |_, _| {});
            assert_eq!(
                cut,
                Ok(parts.len() - 1),
                "re-segmenting a superframe: {vnet:?}"
            );
        }
    };
    for (head, frame) in records(data, 1) {
        c.push(PortId::from(head[0] % 4), data, frame, &mut emit);
    }
    c.flush(data, &mut emit);
}
