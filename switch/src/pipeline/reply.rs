//! Frames the switch writes itself: ARP replies and ICMP echo replies for the gateway (built in
//! place over the request), and ICMP errors (built into a small scratch buffer).

use std::net::Ipv4Addr;

use crate::wire::arp::{self, ArpPacket};
use crate::wire::ethernet::{self, ethertype, EthernetFrame};
use crate::wire::icmp::{self, msg_type, IcmpPacket};
use crate::wire::ipv4::{self, protocol, Ipv4Packet, Ipv4Repr};
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
}

impl IcmpError {
    fn type_code(self) -> (u8, u8) {
        match self {
            Self::NetUnreachable => (msg_type::DST_UNREACHABLE, 0),
            Self::HostUnreachable => (msg_type::DST_UNREACHABLE, 1),
            Self::FragmentationNeeded { .. } => (msg_type::DST_UNREACHABLE, 4),
            Self::TtlExceeded => (msg_type::TIME_EXCEEDED, 0),
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
