//! Frames the switch writes itself: ARP replies and ICMP echo replies for the gateway (built in
//! place over the request), and ICMP errors (built into a small scratch buffer).

use std::net::Ipv4Addr;

use crate::wire::{checksum_sum, EthernetAddress, ETHERNET_HEADER_LEN as ETH, IPV4_HEADER_LEN};

/// Largest ICMP error the switch builds: Ethernet + IPv4 + ICMP + the offending IPv4 header
/// (up to 60 bytes with options) + 8 bytes of its payload (RFC 792).
pub const ICMP_ERROR_MAX: usize = ETH + IPV4_HEADER_LEN + 8 + 60 + 8;

/// ICMP types and codes the switch sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
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
            Self::NetUnreachable => (3, 0),
            Self::HostUnreachable => (3, 1),
            Self::FragmentationNeeded { .. } => (3, 4),
            Self::TtlExceeded => (11, 0),
        }
    }
}

/// Turns the ARP request in `frame` (validated: Ethernet/IPv4, 28 bytes after the Ethernet
/// header) into the reply "`ip` is at `mac`", in place.
pub fn arp_reply_in_place(frame: &mut [u8], mac: EthernetAddress, ip: Ipv4Addr) {
    let Some(arp) = frame.get_mut(ETH..ETH + 28) else {
        return;
    };
    let mut requester = [0u8; 10];
    requester.copy_from_slice(&arp[8..18]); // sender hardware + protocol address
    arp[6..8].copy_from_slice(&2u16.to_be_bytes()); // operation: reply
    arp[8..14].copy_from_slice(&mac.0);
    arp[14..18].copy_from_slice(&ip.octets());
    arp[18..28].copy_from_slice(&requester);
    frame[0..6].copy_from_slice(&requester[..6]);
    frame[6..12].copy_from_slice(&mac.0);
}

/// Turns the ICMP echo request in `frame` (validated IPv4 header of length `ihl`, total length
/// `total`) into the echo reply from `ip`/`mac`, in place.
pub fn echo_reply_in_place(
    frame: &mut [u8],
    ihl: usize,
    total: usize,
    mac: EthernetAddress,
    ip: Ipv4Addr,
) {
    let Some(pkt) = frame.get_mut(ETH..ETH + total) else {
        return;
    };
    let mut src = [0u8; 4];
    src.copy_from_slice(&pkt[12..16]);
    pkt[8] = 64; // TTL
    pkt[12..16].copy_from_slice(&ip.octets());
    pkt[16..20].copy_from_slice(&src);
    set_ipv4_checksum(&mut pkt[..ihl]);
    let icmp = &mut pkt[ihl..];
    icmp[0] = 0; // echo reply
    icmp[2..4].fill(0);
    let c = !checksum_sum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut requester = [0u8; 6];
    requester.copy_from_slice(&frame[6..12]);
    frame[0..6].copy_from_slice(&requester);
    frame[6..12].copy_from_slice(&mac.0);
}

/// Builds, in `out`, the ICMP error `kind` from `ip`/`mac` about the IPv4 packet in `frame`
/// (validated header of length `ihl`). Returns the frame length.
pub fn icmp_error(
    out: &mut [u8; ICMP_ERROR_MAX],
    frame: &[u8],
    ihl: usize,
    kind: IcmpError,
    mac: EthernetAddress,
    ip: Ipv4Addr,
) -> usize {
    let quoted_len = (ihl + 8).min(frame.len().saturating_sub(ETH));
    let quoted = &frame[ETH..ETH + quoted_len];
    let ip_len = IPV4_HEADER_LEN + 8 + quoted_len;
    let len = ETH + ip_len;
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&mac.0);
    out[12..14].copy_from_slice(&[0x08, 0x00]);
    let hdr = &mut out[ETH..ETH + IPV4_HEADER_LEN];
    hdr.copy_from_slice(&[
        0x45, 0xc0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    hdr[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    hdr[12..16].copy_from_slice(&ip.octets());
    hdr[16..20].copy_from_slice(&quoted[12..16]);
    set_ipv4_checksum(hdr);
    let icmp = &mut out[ETH + IPV4_HEADER_LEN..len];
    let (t, c) = kind.type_code();
    icmp[..8].fill(0);
    icmp[0] = t;
    icmp[1] = c;
    if let IcmpError::FragmentationNeeded { mtu } = kind {
        icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    }
    icmp[8..].copy_from_slice(quoted);
    let sum = !checksum_sum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    len
}

fn set_ipv4_checksum(hdr: &mut [u8]) {
    hdr[10..12].fill(0);
    let c = !checksum_sum(hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
}
