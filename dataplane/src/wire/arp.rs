//! ARP (RFC 826) for Ethernet/IPv4, the only kind the switch reads or answers.
//!
//! ```text
//! | htype (2) | ptype (2) | hlen | plen | oper (2) | sha (6) | spa (4) | tha (6) | tpa (4) |
//! ```

use std::net::Ipv4Addr;

use super::{ethernet::ethertype, Error};

/// Byte ranges of the packet fields.
pub(crate) mod field {
    use std::ops::Range;
    pub(crate) const HTYPE: Range<usize> = 0..2;
    pub(crate) const PTYPE: Range<usize> = 2..4;
    pub(crate) const HLEN: usize = 4;
    pub(crate) const PLEN: usize = 5;
    pub(crate) const OPER: Range<usize> = 6..8;
    pub(crate) const SHA: Range<usize> = 8..14;
    pub(crate) const SPA: Range<usize> = 14..18;
    pub(crate) const THA: Range<usize> = 18..24;
    pub(crate) const TPA: Range<usize> = 24..28;
}

/// Length of an ARP packet for Ethernet/IPv4.
pub(crate) const PACKET_LEN: usize = field::TPA.end;
/// Hardware type Ethernet.
pub(crate) const HTYPE_ETHERNET: u16 = 1;
/// Operation: request.
pub const OP_REQUEST: u16 = 1;
/// Operation: reply.
pub(crate) const OP_REPLY: u16 = 2;

/// A checked view of an ARP packet: `PACKET_LEN` bytes present. The hardware and protocol
/// types are not checked here (see `ArpPacket::is_ethernet_ipv4`).
#[derive(Debug, Clone, Copy)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Checks that `buffer` holds an Ethernet/IPv4-sized ARP packet.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    /// True if the packet is ARP for Ethernet (6-byte) and IPv4 (4-byte) addresses.
    #[inline(always)]
    pub fn is_ethernet_ipv4(&self) -> bool {
        let b = self.buffer.as_ref();
        b[field::HTYPE] == HTYPE_ETHERNET.to_be_bytes()
            && b[field::PTYPE] == ethertype::IPV4.to_be_bytes()
            && b[field::HLEN] == 6
            && b[field::PLEN] == 4
    }

    /// The operation ([`OP_REQUEST`], `OP_REPLY`).
    #[inline(always)]
    pub fn operation(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::OPER.start], b[field::OPER.start + 1]])
    }

    /// The sender hardware address.
    #[inline(always)]
    pub fn sender_hw_addr(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SHA]);
        m
    }

    /// The sender protocol address.
    #[inline(always)]
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::SPA.start)
    }

    /// The target hardware address.
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn target_hw_addr(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::THA]);
        m
    }

    /// The target protocol address.
    #[inline(always)]
    pub fn target_ip(&self) -> Ipv4Addr {
        ip_at(self.buffer.as_ref(), field::TPA.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the operation.
    #[inline(always)]
    pub fn set_operation(&mut self, op: u16) {
        self.buffer.as_mut()[field::OPER].copy_from_slice(&op.to_be_bytes());
    }

    /// Sets the sender addresses.
    #[inline(always)]
    pub fn set_sender(&mut self, mac: [u8; 6], ip: Ipv4Addr) {
        let b = self.buffer.as_mut();
        b[field::SHA].copy_from_slice(&mac);
        b[field::SPA].copy_from_slice(&ip.octets());
    }

    /// Sets the target addresses.
    #[inline(always)]
    pub fn set_target(&mut self, mac: [u8; 6], ip: Ipv4Addr) {
        let b = self.buffer.as_mut();
        b[field::THA].copy_from_slice(&mac);
        b[field::TPA].copy_from_slice(&ip.octets());
    }
}

#[inline]
fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Who has 10.244.1.1? Tell 10.244.1.10", as Linux sends it.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x42, 0x0a, 0xf4, 0x01, 0x0a, 10,
        244, 1, 10, 0, 0, 0, 0, 0, 0, 10, 244, 1, 1,
    ];

    #[test]
    fn fixture_fields() {
        let a = ArpPacket::new_checked(&REQUEST[..]).expect("valid");
        assert!(a.is_ethernet_ipv4());
        assert_eq!(a.operation(), OP_REQUEST);
        assert_eq!(a.sender_hw_addr(), [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x0a]);
        assert_eq!(a.sender_ip(), Ipv4Addr::new(10, 244, 1, 10));
        assert_eq!(a.target_hw_addr(), [0; 6]);
        assert_eq!(a.target_ip(), Ipv4Addr::new(10, 244, 1, 1));
        let mut other = REQUEST;
        other[5] = 16;
        assert!(!ArpPacket::new_checked(&other[..])
            .expect("len")
            .is_ethernet_ipv4());
    }

    #[test]
    fn setters_write_the_fields() {
        let mut b = REQUEST;
        let mut a = ArpPacket::new_checked(&mut b[..]).expect("valid");
        a.set_operation(OP_REPLY);
        a.set_sender([2, 0xee, 0, 0, 0, 1], Ipv4Addr::new(10, 244, 1, 1));
        a.set_target([1; 6], Ipv4Addr::new(10, 244, 1, 10));
        assert_eq!(a.operation(), OP_REPLY);
        assert_eq!(
            &b[6..],
            &[0, 2, 2, 0xee, 0, 0, 0, 1, 10, 244, 1, 1, 1, 1, 1, 1, 1, 1, 10, 244, 1, 10]
        );
    }

    #[test]
    fn truncated_is_an_error() {
        for len in 0..PACKET_LEN {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..len]).err(),
                Some(Error::Truncated)
            );
        }
    }
}
