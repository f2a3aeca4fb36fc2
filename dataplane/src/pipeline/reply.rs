//! Frames the switch writes itself: ARP replies and ICMP echo replies for the gateway (built in
//! place over the request), and ICMP errors (built into a small scratch buffer).

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::wire::arp::{self, ArpPacket};
use crate::wire::ethernet::{self, ethertype, EthernetFrame};
use crate::wire::icmp::{self, msg_type, IcmpPacket};
use crate::wire::ipv4::{self, protocol, Ipv4Packet, Ipv4Repr};
use crate::wire::tcp::{self, TcpRepr};
use crate::wire::EthernetAddress;

/// Largest ICMP error the switch builds: Ethernet + IPv4 + ICMP + the offending IPv4 header
/// (up to 60 bytes with options) + 8 bytes of its payload (RFC 792).
pub(crate) const ICMP_ERROR_MAX: usize =
    ethernet::HEADER_LEN + ipv4::HEADER_LEN + icmp::HEADER_LEN + ipv4::MAX_HEADER_LEN + QUOTED_L4;

/// Bytes of the offending packet's payload an ICMP error quotes after its header (RFC 792).
const QUOTED_L4: usize = 8;
/// DSCP/ECN of the errors the switch sends: CS6 (network control), as Linux sends them.
const ICMP_ERROR_DSCP: u8 = 0xc0;
/// TTL of the packets the switch originates.
const TTL: u8 = 64;

/// ICMP types and codes the switch sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IcmpError {
    /// Type 3 code 0.
    NetUnreachable,
    /// Type 3 code 1.
    HostUnreachable,
    /// Type 3 code 4, with the next-hop MTU.
    FragmentationNeeded {
        /// MTU of the next hop.
        mtu: u16,
    },
    /// Type 11 code 0.
    TtlExceeded,
    /// Type 3 code 3.
    PortUnreachable,
}

impl IcmpError {
    fn type_code(self) -> (u8, u8) {
        match self {
            Self::NetUnreachable => (msg_type::DST_UNREACHABLE, 0),
            Self::HostUnreachable => (msg_type::DST_UNREACHABLE, 1),
            Self::FragmentationNeeded { .. } => (msg_type::DST_UNREACHABLE, 4),
            Self::TtlExceeded => (msg_type::TIME_EXCEEDED, 0),
            Self::PortUnreachable => (msg_type::DST_UNREACHABLE, 3),
        }
    }
}

/// Turns the ARP request in `frame` (validated: Ethernet/IPv4, 28 bytes after the Ethernet
/// header) into the reply "`ip` is at `mac`", in place.
pub(crate) fn arp_reply_in_place(frame: &mut [u8], mac: EthernetAddress, ip: Ipv4Addr) {
    let Ok(mut eth) = EthernetFrame::new_checked(frame) else {
        return;
    };
    let Ok(mut arp) = ArpPacket::new_checked(eth.payload_mut()) else {
        return;
    };
    let (requester_mac, requester_ip) = (arp.sender_hw_addr(), arp.sender_ip());
    arp.set_operation(arp::OP_REPLY);
    arp.set_sender(mac.0, ip);
    arp.set_target(requester_mac, requester_ip);
    eth.set_dst_addr(requester_mac);
    eth.set_src_addr(mac.0);
}

/// Turns the ICMP echo request in `frame` (validated Ethernet and IPv4 headers) into the echo
/// reply from `ip`/`mac`, in place.
pub(crate) fn echo_reply_in_place(frame: &mut [u8], mac: EthernetAddress, ip: Ipv4Addr) {
    let Ok(mut eth) = EthernetFrame::new_checked(frame) else {
        return;
    };
    let requester_mac = eth.src_addr();
    eth.set_dst_addr(requester_mac);
    eth.set_src_addr(mac.0);
    let Ok(mut pkt) = Ipv4Packet::new_checked_superframe(eth.payload_mut()) else {
        return;
    };
    let requester = pkt.src_addr();
    pkt.set_ttl(TTL);
    pkt.set_src_addr(ip);
    pkt.set_dst_addr(requester);
    pkt.fill_checksum();
    if let Ok(mut icmp) = IcmpPacket::new_checked(pkt.payload_mut()) {
        icmp.set_type_code(msg_type::ECHO_REPLY, 0);
        icmp.fill_checksum();
    }
}

/// Builds, in `out`, the ICMP error `kind` from `ip`/`mac` about the IPv4 packet in `frame`
/// (validated Ethernet and IPv4 headers). Returns the frame length (0 if `frame` is not such
/// a packet).
pub(crate) fn icmp_error(
    out: &mut [u8; ICMP_ERROR_MAX],
    frame: &[u8],
    kind: IcmpError,
    mac: EthernetAddress,
    ip: Ipv4Addr,
) -> usize {
    let Ok(offender_eth) = EthernetFrame::new_checked(frame) else {
        return 0;
    };
    let Ok(offender) = Ipv4Packet::new_checked_header(offender_eth.payload()) else {
        return 0;
    };
    let quoted = offender_eth.payload();
    let quoted = &quoted[..(offender.header_len() + QUOTED_L4).min(quoted.len())];
    let icmp_len = icmp::HEADER_LEN + quoted.len();
    let len = ethernet::HEADER_LEN + ipv4::HEADER_LEN + icmp_len;
    let Some(out) = out.get_mut(..len) else {
        return 0;
    };
    let Ok(mut eth) = EthernetFrame::new_checked(&mut *out) else {
        return 0;
    };
    eth.set_dst_addr(offender_eth.src_addr());
    eth.set_src_addr(mac.0);
    eth.set_ethertype(ethertype::IPV4);
    let repr = Ipv4Repr {
        src: ip,
        dst: offender.src_addr(),
        protocol: protocol::ICMP,
        ttl: TTL,
        dscp_ecn: ICMP_ERROR_DSCP,
        // At most ICMP_ERROR_MAX.
        payload_len: icmp_len as u16,
    };
    let packet = eth.payload_mut();
    if repr.emit(packet).is_err() {
        return 0;
    }
    let Ok(mut icmp) = IcmpPacket::new_checked(&mut packet[ipv4::HEADER_LEN..]) else {
        return 0;
    };
    let (t, c) = kind.type_code();
    icmp.set_type_code(t, c);
    match kind {
        IcmpError::FragmentationNeeded { mtu } => icmp.set_next_hop_mtu(mtu),
        _ => icmp.set_rest_of_header([0; 4]),
    }
    icmp.data_mut().copy_from_slice(quoted);
    icmp.fill_checksum();
    len
}

/// Builds, in `out`, the TCP reset answering the segment in `frame` (validated Ethernet and
/// IPv4 headers), from the segment's destination, sent by `mac` (RFC 793's reset generation:
/// with ACK set in the segment, `seq = SEG.ACK`; else `seq = 0, ack = SEG.SEQ + SEG.LEN` with
/// ACK). Returns the frame length; 0 for a reset (never answered) or a frame that is not a
/// whole TCP segment.
pub(crate) fn tcp_reset(
    out: &mut [u8; ICMP_ERROR_MAX],
    frame: &[u8],
    mac: EthernetAddress,
) -> usize {
    use crate::wire::tcp::flags::{ACK, FIN, RST, SYN};
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return 0;
    };
    let Ok(ip) = Ipv4Packet::new_checked_header(eth.payload()) else {
        return 0;
    };
    let Ok(seg) = tcp::TcpPacket::new_checked(ip.payload()) else {
        return 0;
    };
    let flags = seg.flags();
    if flags & RST != 0 {
        return 0;
    }
    let seg_len =
        seg.payload().len() as u32 + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0);
    let (seq, ack, out_flags) = if flags & ACK != 0 {
        (seg.ack_number(), 0, RST)
    } else {
        (0, seg.seq_number().wrapping_add(seg_len), RST | ACK)
    };
    let segment = TcpRepr {
        src: SocketAddrV4::new(ip.dst_addr(), seg.dst_port()),
        dst: SocketAddrV4::new(ip.src_addr(), seg.src_port()),
        seq,
        ack,
        flags: out_flags,
    };
    write_segment(out, &segment, EthernetAddress(eth.src_addr()), mac)
}

/// Length of a bare TCP header.
const TCP_LEN: usize = tcp::HEADER_LEN;
/// Length of a frame carrying a bare TCP segment.
pub const TCP_SEGMENT_FRAME_LEN: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + TCP_LEN;

/// Writes `segment` in an Ethernet frame from `src_mac` to `dst_mac` at the start of `out`,
/// checksums filled. Returns the frame length, 0 if `out` is too short.
fn write_segment(
    out: &mut [u8],
    segment: &TcpRepr,
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
) -> usize {
    let len = TCP_SEGMENT_FRAME_LEN;
    let Some(out) = out.get_mut(..len) else {
        return 0;
    };
    let Ok(mut o) = EthernetFrame::new_checked(&mut *out) else {
        return 0;
    };
    o.set_dst_addr(dst_mac.0);
    o.set_src_addr(src_mac.0);
    o.set_ethertype(ethertype::IPV4);
    let repr = Ipv4Repr {
        src: *segment.src.ip(),
        dst: *segment.dst.ip(),
        protocol: protocol::TCP,
        ttl: TTL,
        dscp_ecn: 0,
        payload_len: TCP_LEN as u16,
    };
    let packet = o.payload_mut();
    if repr.emit(packet).is_err() {
        return 0;
    }
    let Ok(ip) = Ipv4Packet::new_checked_header(&*packet) else {
        return 0;
    };
    let pseudo_header = ip.pseudo_header_accumulate(TCP_LEN);
    if segment
        .emit(&mut packet[ipv4::HEADER_LEN..], pseudo_header)
        .is_err()
    {
        return 0;
    }
    len
}

/// The two probes that make an idle TCP endpoint show where its connection stands: bare
/// ACKs from `from` to `to` (sent by `src_mac` to `dst_mac`), written one after the other
/// into `out` (room for two frames of [`TCP_SEGMENT_FRAME_LEN`]). Returns the bytes written.
///
/// Their sequence numbers are 2^31 apart and a receive window is smaller than 2^31, so at
/// least one is outside the window, and a TCP receiving a segment outside its window
/// answers with an ACK carrying the sequence number it expects (RFC 793, "If a segment's
/// contents straddle..."; RFC 5961 keeps that answer). That answer is what the switch needs
/// to send a reset the endpoint accepts (its `seq = SEG.ACK`) without having tracked
/// sequence numbers. The other probe, if inside the window, carries no data and an
/// acknowledgement the endpoint ignores or answers the same way.
pub fn tcp_probes(
    out: &mut [u8],
    from: SocketAddrV4,
    to: SocketAddrV4,
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
) -> usize {
    // Any pair 2^31 apart works; a fixed one keeps the probes reproducible in captures.
    let mut written = 0;
    for seq in [0x1234_5678u32, 0x1234_5678 ^ 0x8000_0000] {
        let segment = TcpRepr {
            src: from,
            dst: to,
            seq,
            ack: seq,
            flags: tcp::flags::ACK,
        };
        let Some(rest) = out.get_mut(written..) else {
            return written;
        };
        written += write_segment(rest, &segment, dst_mac, src_mac);
    }
    written
}
