//! Address and port translation of a TCP or UDP packet in place, with incremental checksum
//! updates (RFC 1624): the service path's DNAT and its reverse.
//!
//! The IPv4 header checksum always covers the addresses. The TCP/UDP checksum covers the
//! pseudo-header (addresses) and the ports; how it is updated depends on its form:
//! - complete (the usual case): the field is the complemented sum; address and port changes
//!   are folded in (`HC' = ~(~HC + ~m + m')`);
//! - partial (virtio-net `NEEDS_CSUM`, and every TSO/USO superframe): the field holds the
//!   *uncomplemented* pseudo-header sum, to be completed over the segment later (by
//!   segmentation, the receiving kernel or a NIC); only address changes are folded in, since
//!   the ports are part of the data the completion sums;
//! - UDP's zero ("no checksum") stays zero.
//!
//! Never panics: a packet too short for its headers is refused with [`NatError`].

use std::net::Ipv4Addr;

use super::checksum::checksum_fold;
use super::ipv4::protocol::{TCP, UDP};

mod field {
    use std::ops::Range;
    pub(super) const IHL_BYTE: usize = 0;
    pub(super) const PROTOCOL: usize = 9;
    pub(super) const CHECKSUM: Range<usize> = 10..12;
    pub(super) const SRC_ADDR: Range<usize> = 12..16;
    pub(super) const DST_ADDR: Range<usize> = 16..20;
    // In the L4 header.
    pub(super) const SRC_PORT: Range<usize> = 0..2;
    pub(super) const DST_PORT: Range<usize> = 2..4;
    pub(super) const TCP_CHECKSUM: Range<usize> = 16..18;
    pub(super) const UDP_CHECKSUM: Range<usize> = 6..8;
}

/// Which end of the packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The source address and port.
    Source,
    /// The destination address and port.
    Destination,
}

/// Why a packet cannot be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NatError {
    /// Shorter than its IPv4 header plus the L4 header's ports and checksum, or not TCP/UDP.
    #[error("not a whole TCP or UDP header")]
    Truncated,
}

/// The transport endpoints of an IPv4 TCP/UDP packet: `(protocol, src, sport, dst, dport)`.
/// `None` for other protocols or a packet too short (a non-first fragment has no ports; the
/// caller checks fragments).
#[inline]
pub(crate) fn endpoints(ip: &[u8]) -> Option<(u8, Ipv4Addr, u16, Ipv4Addr, u16)> {
    let ihl = usize::from(*ip.get(field::IHL_BYTE)? & 0x0f) * 4;
    let proto = *ip.get(field::PROTOCOL)?;
    if proto != TCP && proto != UDP {
        return None;
    }
    let l4 = ip.get(ihl..ihl + 4)?;
    let addr = |r: std::ops::Range<usize>| -> Option<Ipv4Addr> {
        let b: [u8; 4] = ip.get(r)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    };
    Some((
        proto,
        addr(field::SRC_ADDR)?,
        u16::from_be_bytes([l4[0], l4[1]]),
        addr(field::DST_ADDR)?,
        u16::from_be_bytes([l4[2], l4[3]]),
    ))
}

/// `sum` with the 16-bit word `old` replaced by `new` (RFC 1624, eqn. 3, on an uncomplemented
/// one's complement sum).
#[inline]
fn replace_word(sum: u16, old: u16, new: u16) -> u16 {
    checksum_fold(u64::from(sum) + u64::from(!old) + u64::from(new))
}

#[inline]
fn replace_addr(sum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let s = replace_word(
        sum,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    replace_word(
        s,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

fn read16(b: &[u8], r: std::ops::Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

/// The IPv4 header length, protocol and L4 checksum range of `ip` if it holds all that
/// [`rewrite`] reads and writes: an IPv4 header of at least 20 bytes, then a TCP or UDP
/// header up to its checksum field.
#[inline]
fn layout(ip: &[u8]) -> Result<(usize, u8, std::ops::Range<usize>), NatError> {
    let ihl = usize::from(*ip.first().ok_or(NatError::Truncated)? & 0x0f) * 4;
    let proto = *ip.get(field::PROTOCOL).ok_or(NatError::Truncated)?;
    let sum_at = match proto {
        TCP => field::TCP_CHECKSUM,
        UDP => field::UDP_CHECKSUM,
        _ => return Err(NatError::Truncated),
    };
    if ihl < 20 || ip.len() < ihl + sum_at.end {
        return Err(NatError::Truncated);
    }
    Ok((ihl, proto, sum_at))
}

/// True if [`rewrite`] can translate `ip` (see `layout`): checked before a flow is tracked,
/// so a packet too short to translate is dropped before it changes any state.
#[inline]
pub(crate) fn translatable(ip: &[u8]) -> bool {
    layout(ip).is_ok()
}

/// Rewrites one end of the TCP/UDP packet `ip` (an IPv4 packet, header first) to
/// `addr:port`, updating both checksums incrementally. `partial`: the L4 checksum is partial
/// (see the module docs).
#[inline]
pub(crate) fn rewrite(
    ip: &mut [u8],
    end: End,
    addr: Ipv4Addr,
    port: u16,
    partial: bool,
) -> Result<(), NatError> {
    let (ihl, proto, sum_at) = layout(ip)?;
    let (addr_at, port_at) = match end {
        End::Source => (field::SRC_ADDR, field::SRC_PORT),
        End::Destination => (field::DST_ADDR, field::DST_PORT),
    };
    let (hdr, l4) = ip.split_at_mut(ihl);
    let new_addr = addr.octets();
    let mut old_addr = [0u8; 4];
    old_addr.copy_from_slice(&hdr[addr_at.clone()]);
    let old_port = read16(l4, port_at.clone());

    // IPv4 header checksum: complemented, covers the address.
    let hc = read16(hdr, field::CHECKSUM);
    let hc = !replace_addr(!hc, old_addr, new_addr);
    hdr[field::CHECKSUM].copy_from_slice(&hc.to_be_bytes());
    hdr[addr_at].copy_from_slice(&new_addr);

    let c = read16(l4, sum_at.clone());
    let c = if proto == UDP && c == 0 && !partial {
        0
    } else if partial {
        replace_addr(c, old_addr, new_addr)
    } else {
        let s = replace_addr(!c, old_addr, new_addr);
        let s = replace_word(s, old_port, port);
        match !s {
            // UDP sends a computed zero as all-ones (zero means "no checksum").
            0 if proto == UDP => 0xffff,
            v => v,
        }
    };
    l4[sum_at].copy_from_slice(&c.to_be_bytes());
    l4[port_at].copy_from_slice(&port.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{ipv4, tcp_segment_bytes, udp_with_checksum};
    use crate::wire::checksum::checksum_sum;

    /// The L4 checksum of `ip` verifies (sum over the pseudo-header and segment is all-ones).
    fn l4_ok(ip: &[u8]) -> bool {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let seg = &ip[ihl..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, ip[9]]);
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(seg);
        checksum_sum(&pseudo) == 0xffff
    }

    fn header_ok(ip: &[u8]) -> bool {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        checksum_sum(&ip[..ihl]) == 0xffff
    }

    const C: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);

    #[test]
    fn translatable_needs_the_l4_checksum_field() {
        let tcp = tcp_segment_bytes(
            Ipv4Addr::new(10, 0, 0, 1),
            1,
            Ipv4Addr::new(10, 0, 0, 2),
            2,
            0,
            0,
            2,
            b"",
        );
        let p = ipv4(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            6,
            64,
            &tcp,
        );
        assert!(translatable(&p));
        for cut in 0..20 + 18 {
            assert!(!translatable(&p[..cut]), "{cut} bytes");
            let mut b = p[..cut].to_vec();
            assert_eq!(
                rewrite(&mut b, End::Source, Ipv4Addr::LOCALHOST, 9, false),
                Err(NatError::Truncated)
            );
        }
        assert!(translatable(&p[..20 + 18]));
    }

    #[test]
    fn dnat_and_back_keep_both_checksums_valid_tcp_and_udp() {
        for (proto, l4) in [
            (
                6u8,
                tcp_segment_bytes(C, 40000, VIP, 80, 1, 0, 0x02, b"GET / HTTP/1.1\r\n"),
            ),
            (17, udp_with_checksum(C, 5353, VIP, 53, b"query?")),
        ] {
            let mut ip = ipv4(C, VIP, proto, 64, &l4);
            assert!(header_ok(&ip) && l4_ok(&ip));
            rewrite(&mut ip, End::Destination, B, 8080, false).unwrap();
            assert_eq!(
                endpoints(&ip),
                Some((proto, C, if proto == 6 { 40000 } else { 5353 }, B, 8080))
            );
            assert!(header_ok(&ip), "header after DNAT");
            assert!(l4_ok(&ip), "L4 after DNAT, proto {proto}");
            // The reply's source back to the VIP.
            rewrite(&mut ip, End::Source, VIP, 80, false).unwrap();
            assert!(header_ok(&ip) && l4_ok(&ip));
        }
    }

    #[test]
    fn a_partial_checksum_stays_the_pseudo_header_sum_of_the_new_addresses() {
        let l4 = tcp_segment_bytes(C, 40000, VIP, 80, 1, 0, 0x18, &[7u8; 100]);
        let mut ip = ipv4(C, VIP, 6, 64, &l4);
        // As a sender leaves it for offload: the uncomplemented pseudo-header sum.
        let pseudo = |ip: &[u8]| {
            let mut p = Vec::new();
            p.extend_from_slice(&ip[12..20]);
            p.extend_from_slice(&[0, 6]);
            p.extend_from_slice(&((ip.len() - 20) as u16).to_be_bytes());
            checksum_sum(&p)
        };
        let s = pseudo(&ip);
        ip[20 + 16..20 + 18].copy_from_slice(&s.to_be_bytes());
        rewrite(&mut ip, End::Destination, B, 8080, true).unwrap();
        assert_eq!(read16(&ip[20..], field::TCP_CHECKSUM), pseudo(&ip));
        assert!(header_ok(&ip));
        assert_eq!(read16(&ip[20..], field::DST_PORT), 8080);
    }

    #[test]
    fn udp_without_a_checksum_keeps_none_and_short_packets_are_refused() {
        let mut l4 = udp_with_checksum(C, 5353, VIP, 53, b"x");
        l4[6] = 0;
        l4[7] = 0;
        let mut ip = ipv4(C, VIP, 17, 64, &l4);
        rewrite(&mut ip, End::Destination, B, 53, false).unwrap();
        assert_eq!(read16(&ip[20..], field::UDP_CHECKSUM), 0);
        assert!(header_ok(&ip));
        for len in 0..(20 + 18) {
            let mut short = ipv4(
                C,
                VIP,
                6,
                64,
                &tcp_segment_bytes(C, 1, VIP, 2, 0, 0, 0x02, b""),
            );
            short.truncate(len);
            let r = rewrite(&mut short, End::Destination, B, 9, false);
            if len < 20 + 18 {
                assert_eq!(r, Err(NatError::Truncated), "len {len}");
            }
        }
        let mut icmp = ipv4(C, VIP, 1, 64, &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            rewrite(&mut icmp, End::Destination, B, 9, false),
            Err(NatError::Truncated)
        );
        assert_eq!(endpoints(&icmp), None);
    }
}
