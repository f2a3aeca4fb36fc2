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
//! An ICMP error about a translated packet (destination unreachable, time exceeded, parameter
//! problem) quotes the packet as translated; [`rewrite_icmp_error`] turns the quote (and the
//! error's own addresses) back into what the client sent, so its stack finds the socket.
//!
//! Never panics: a packet too short for its headers is refused with [`NatError`].

use std::net::{Ipv4Addr, SocketAddrV4};

use super::checksum::{checksum_fold, checksum_sum};
use super::ipv4::protocol::{ICMP, TCP, UDP};

mod field {
    use std::ops::Range;
    // In the IPv4 header.
    pub(super) use crate::wire::ipv4::field::{
        CHECKSUM, DST_ADDR, FLG_OFF, PROTOCOL, SRC_ADDR, VER_IHL as IHL_BYTE,
    };
    // In the L4 header.
    pub(super) const SRC_PORT: Range<usize> = 0..2;
    pub(super) const DST_PORT: Range<usize> = 2..4;
    pub(super) const TCP_CHECKSUM: Range<usize> = 16..18;
    pub(super) const UDP_CHECKSUM: Range<usize> = 6..8;
    // In an ICMP message.
    pub(super) const ICMP_TYPE: usize = 0;
    pub(super) const ICMP_CHECKSUM: Range<usize> = 2..4;
    /// Where an error's quoted packet starts.
    pub(super) const ICMP_QUOTE: usize = 8;
}

/// Which end of the packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The source address and port.
    Source,
    /// The destination address and port.
    Destination,
}

/// Why a packet cannot be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    /// Shorter than its IPv4 header plus the L4 header's ports and checksum, or not TCP/UDP.
    #[error("not a whole TCP or UDP header")]
    Truncated,
}

/// The transport endpoints of an IPv4 TCP/UDP packet: `(protocol, src, sport, dst, dport)`.
/// `None` for other protocols or a packet too short (a non-first fragment has no ports; the
/// caller checks fragments).
#[inline]
pub fn endpoints(ip: &[u8]) -> Option<(u8, Ipv4Addr, u16, Ipv4Addr, u16)> {
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
pub fn rewrite(
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
    let old_port = read16(l4, port_at.clone());
    let old_addr = set_addr(hdr, addr_at, addr);

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

/// Writes `new` over the address at `at` of the IPv4 header `hdr`, updating its checksum;
/// returns the address it replaced.
fn set_addr(hdr: &mut [u8], at: std::ops::Range<usize>, new: Ipv4Addr) -> [u8; 4] {
    let mut old = [0u8; 4];
    old.copy_from_slice(&hdr[at.clone()]);
    let hc = read16(hdr, field::CHECKSUM);
    let hc = !replace_addr(!hc, old, new.octets());
    hdr[field::CHECKSUM].copy_from_slice(&hc.to_be_bytes());
    hdr[at].copy_from_slice(&new.octets());
    old
}

/// The header length of the IPv4 packet `ip`, if it holds at least that much (and 20).
fn header_len(ip: &[u8]) -> Option<usize> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    (ihl >= 20 && ip.len() >= ihl).then_some(ihl)
}

/// Where the packet quoted by the ICMP error `ip` starts, if `ip` is one (an IPv4 packet
/// carrying ICMP destination unreachable, time exceeded or parameter problem, not a later
/// fragment) quoting an IPv4 header.
fn quote_at(ip: &[u8]) -> Option<usize> {
    let ihl = header_len(ip)?;
    let not_later_fragment = ip
        .get(field::FLG_OFF)
        .is_some_and(|f| f[0] & 0x1f == 0 && f[1] == 0);
    if *ip.get(field::PROTOCOL)? != ICMP || !not_later_fragment {
        return None;
    }
    // 3: destination unreachable, 11: time exceeded, 12: parameter problem (RFC 792).
    if !matches!(ip.get(ihl + field::ICMP_TYPE)?, 3 | 11 | 12) {
        return None;
    }
    let at = ihl + field::ICMP_QUOTE;
    header_len(ip.get(at..)?)?;
    Some(at)
}

/// The endpoints `(protocol, src, sport, dst, dport)` of the TCP or UDP packet that the ICMP
/// error `ip` quotes; `None` if `ip` is no such error, or quotes less than the ports.
#[inline]
pub fn quoted_endpoints(ip: &[u8]) -> Option<(u8, Ipv4Addr, u16, Ipv4Addr, u16)> {
    endpoints(ip.get(quote_at(ip)?..)?)
}

/// How [`rewrite_icmp_error`] turns an error about a translated packet back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpErrorNat {
    /// The quoted packet's destination: the service address the client sent to.
    pub quoted_dst: SocketAddrV4,
    /// The quoted packet's source, if it was rewritten too (hairpin: the client's own).
    pub quoted_src: Option<SocketAddrV4>,
    /// The error's source, if it came from the backend itself (then: the service address).
    pub outer_src: Option<Ipv4Addr>,
    /// The error's destination, if it went to a rewritten source (hairpin: the client).
    pub outer_dst: Option<Ipv4Addr>,
}

/// Rewrites the ICMP error `ip` (see [`quoted_endpoints`]) as `nat` says: the quoted IPv4
/// header's checksum and, if the quote holds it, the quoted TCP/UDP checksum are updated
/// incrementally; the error's IPv4 header checksum likewise, and the ICMP checksum is
/// computed again over the message.
pub fn rewrite_icmp_error(ip: &mut [u8], nat: &IcmpErrorNat) -> Result<(), NatError> {
    let at = quote_at(ip).ok_or(NatError::Truncated)?;
    endpoints(&ip[at..]).ok_or(NatError::Truncated)?;
    let ihl = at - field::ICMP_QUOTE;
    let quoted = &mut ip[at..];
    for (end, to) in [
        (End::Destination, Some(nat.quoted_dst)),
        (End::Source, nat.quoted_src),
    ] {
        let Some(to) = to else { continue };
        if translatable(quoted) {
            rewrite(quoted, end, *to.ip(), to.port(), false)?;
        } else {
            // A short quote (RFC 792's 8 bytes of TCP): no L4 checksum to update.
            let (addr_at, port_at) = match end {
                End::Source => (field::SRC_ADDR, field::SRC_PORT),
                End::Destination => (field::DST_ADDR, field::DST_PORT),
            };
            let qihl = header_len(quoted).ok_or(NatError::Truncated)?;
            set_addr(quoted, addr_at, *to.ip());
            let port_at = qihl + port_at.start..qihl + port_at.end;
            quoted[port_at].copy_from_slice(&to.port().to_be_bytes());
        }
    }
    if let Some(src) = nat.outer_src {
        set_addr(ip, field::SRC_ADDR, src);
    }
    if let Some(dst) = nat.outer_dst {
        set_addr(ip, field::DST_ADDR, dst);
    }
    let icmp = &mut ip[ihl..];
    icmp[field::ICMP_CHECKSUM].fill(0);
    let c = !checksum_sum(icmp);
    icmp[field::ICMP_CHECKSUM].copy_from_slice(&c.to_be_bytes());
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

    /// An ICMP error of `ty`/`code` from `from` to `to` quoting `quoted`.
    fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
        let mut m = vec![ty, code, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(quoted);
        let c = !checksum_sum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        ipv4(from, to, ICMP, 64, &m)
    }

    fn addr_at(ip: &[u8], at: usize) -> Ipv4Addr {
        Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3])
    }

    #[test]
    fn a_port_unreachable_from_the_backend_is_about_the_vip_again() {
        // What the backend got: the client's datagram after DNAT, quoted whole.
        let sent = ipv4(
            C,
            B,
            UDP,
            63,
            &udp_with_checksum(C, 5000, B, 8080, b"hello"),
        );
        let mut err = icmp_error(B, C, 3, 3, &sent);
        assert_eq!(quoted_endpoints(&err), Some((UDP, C, 5000, B, 8080)));
        let nat = IcmpErrorNat {
            quoted_dst: SocketAddrV4::new(VIP, 80),
            quoted_src: None,
            outer_src: Some(VIP),
            outer_dst: None,
        };
        rewrite_icmp_error(&mut err, &nat).unwrap();
        assert_eq!((addr_at(&err, 12), addr_at(&err, 16)), (VIP, C));
        assert!(header_ok(&err));
        assert_eq!(checksum_sum(&err[20..]), 0xffff, "ICMP checksum");
        let quoted = &err[28..];
        assert_eq!(endpoints(quoted), Some((UDP, C, 5000, VIP, 80)));
        assert!(header_ok(quoted));
        assert!(
            l4_ok(quoted),
            "the quoted datagram's checksum, as the client sent it"
        );
        assert_eq!(&quoted[28..], b"hello");
    }

    #[test]
    fn a_short_quote_of_a_hairpin_flow_gets_both_ends_back() {
        // A hairpin flow (source: the gateway) quoted with RFC 792's 8 bytes of TCP.
        let gw = Ipv4Addr::new(10, 244, 1, 1);
        let seg = tcp_segment_bytes(gw, 40000, C, 8080, 1, 0, 0x02, b"");
        let sent = ipv4(gw, C, TCP, 63, &seg);
        let mut err = icmp_error(Ipv4Addr::new(10, 244, 9, 9), gw, 11, 0, &sent[..28]);
        assert_eq!(quoted_endpoints(&err), Some((TCP, gw, 40000, C, 8080)));
        let nat = IcmpErrorNat {
            quoted_dst: SocketAddrV4::new(VIP, 80),
            quoted_src: Some(SocketAddrV4::new(C, 40000)),
            outer_src: None,
            outer_dst: Some(C),
        };
        rewrite_icmp_error(&mut err, &nat).unwrap();
        assert_eq!(
            (addr_at(&err, 12), addr_at(&err, 16)),
            (Ipv4Addr::new(10, 244, 9, 9), C),
            "a router's error keeps its source"
        );
        assert!(header_ok(&err));
        assert_eq!(checksum_sum(&err[20..]), 0xffff);
        assert_eq!(endpoints(&err[28..]), Some((TCP, C, 40000, VIP, 80)));
        assert!(header_ok(&err[28..]));
    }

    #[test]
    fn only_errors_quoting_tcp_or_udp_are_rewritten() {
        let sent = ipv4(C, B, UDP, 63, &udp_with_checksum(C, 5000, B, 8080, b"x"));
        let nat = IcmpErrorNat {
            quoted_dst: SocketAddrV4::new(VIP, 80),
            quoted_src: None,
            outer_src: None,
            outer_dst: None,
        };
        // An echo request carrying the same bytes is no error.
        let mut echo = icmp_error(B, C, 8, 0, &sent);
        assert_eq!(quoted_endpoints(&echo), None);
        assert_eq!(
            rewrite_icmp_error(&mut echo, &nat),
            Err(NatError::Truncated)
        );
        // A quote cut inside the ports, or of ICMP itself.
        for quoted in [&sent[..22], &icmp_error(C, B, 8, 0, b"ping")[..]] {
            let mut err = icmp_error(B, C, 3, 3, quoted);
            let before = err.clone();
            assert_eq!(quoted_endpoints(&err), None);
            assert_eq!(rewrite_icmp_error(&mut err, &nat), Err(NatError::Truncated));
            assert_eq!(err, before, "left as it was");
        }
        // A later fragment of an error has no quote at its start.
        let mut frag = icmp_error(B, C, 3, 3, &sent);
        frag[7] = 1;
        assert_eq!(quoted_endpoints(&frag), None);
    }
}
