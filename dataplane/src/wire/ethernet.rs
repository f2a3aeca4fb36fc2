//! Ethernet II header (IEEE 802.3 with an EtherType; no FCS).
//!
//! ```text
//! | destination (6) | source (6) | EtherType (2) | payload ...
//! ```

use super::{Error, EthernetAddress};

/// Byte ranges of the header fields.
pub(crate) mod field {
    use std::ops::{Range, RangeFrom};
    pub(crate) const DESTINATION: Range<usize> = 0..6;
    pub(crate) const SOURCE: Range<usize> = 6..12;
    pub(crate) const ETHERTYPE: Range<usize> = 12..14;
    pub(crate) const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Length of an Ethernet II header (no VLAN tag).
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// EtherTypes the switch knows.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IEEE 802.1Q VLAN tag.
    pub(crate) const VLAN: u16 = 0x8100;
    /// IEEE 802.1ad service tag (Q-in-Q).
    pub(crate) const QINQ: u16 = 0x88a8;
    /// Pre-standard Q-in-Q tag some switches still send.
    pub(crate) const QINQ_LEGACY: u16 = 0x9100;

    /// True for the EtherTypes of a VLAN tag (802.1Q, 802.1ad and the legacy Q-in-Q one).
    #[inline(always)]
    pub(crate) fn is_vlan_tag(t: u16) -> bool {
        matches!(t, VLAN | QINQ | QINQ_LEGACY)
    }
}

/// A checked view of an Ethernet II frame: at least [`HEADER_LEN`] bytes.
///
/// Accessors index the header directly: `new_checked` proved it present, so the indexing
/// cannot fail (and the compiler drops the bounds checks where the view is inlined).
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Checks that `buffer` holds an Ethernet header.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The destination MAC as a table key ([`mac_key`]).
    #[inline(always)]
    pub fn dst_key(&self) -> u64 {
        let h = self.buffer.as_ref();
        u64::from_be_bytes([0, 0, h[0], h[1], h[2], h[3], h[4], h[5]])
    }

    /// The source MAC as a table key ([`mac_key`]).
    #[inline(always)]
    pub fn src_key(&self) -> u64 {
        let h = self.buffer.as_ref();
        u64::from_be_bytes([0, 0, h[6], h[7], h[8], h[9], h[10], h[11]])
    }

    /// The destination MAC.
    #[inline(always)]
    pub fn dst_addr(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        m
    }

    /// The source MAC.
    #[inline(always)]
    pub fn src_addr(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        m
    }

    /// The EtherType.
    #[inline(always)]
    pub fn ethertype(&self) -> u16 {
        let h = self.buffer.as_ref();
        u16::from_be_bytes([h[field::ETHERTYPE.start], h[field::ETHERTYPE.start + 1]])
    }

    /// Everything after the header.
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD).unwrap_or_default()
    }
}

impl<'a> EthernetFrame<&'a [u8]> {
    /// The payload, borrowed from the buffer rather than the view.
    #[inline(always)]
    pub fn into_payload(self) -> &'a [u8] {
        self.buffer.get(field::PAYLOAD).unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    #[inline(always)]
    pub fn set_dst_addr(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac);
    }

    /// Sets the source MAC.
    #[inline(always)]
    pub(crate) fn set_src_addr(&mut self, mac: [u8; 6]) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac);
    }

    /// Sets the EtherType.
    #[inline(always)]
    pub fn set_ethertype(&mut self, t: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&t.to_be_bytes());
    }

    /// Sets both MACs from table keys (a routed frame's next hop and the router).
    #[inline(always)]
    pub fn set_addr_keys(&mut self, dst: u64, src: u64) {
        let h = self.buffer.as_mut();
        h[field::DESTINATION].copy_from_slice(&dst.to_be_bytes()[2..]);
        h[field::SOURCE].copy_from_slice(&src.to_be_bytes()[2..]);
    }

    /// Everything after the header, mutable.
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::PAYLOAD)
            .unwrap_or_default()
    }
}

/// A MAC address as a `u64` (the six bytes, big-endian, in the low 48 bits): the key of the
/// forwarding tables, cheap to hash and compare.
#[inline]
pub fn mac_key(mac: &[u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

/// The inverse of [`mac_key`].
#[inline]
pub fn mac_from_key(key: u64) -> EthernetAddress {
    let b = key.to_be_bytes();
    EthernetAddress([b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff` (smoltcp's `Display` uses dashes; `ip` and the
/// config file use colons).
#[cfg(test)]
pub(crate) fn format_mac(mac: EthernetAddress) -> String {
    let b = mac.0;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

/// True for broadcast and multicast MAC keys (the group bit of the first octet).
#[inline]
pub fn is_group_mac(key: u64) -> bool {
    key & (1 << 40) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ARP request as captured on a pod's eth0 (broadcast, from 02:42:0a:f4:01:0a).
    const FIXTURE: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0xf4, 0x01, 0x0a, 0x08, 0x06, 0x00,
        0x01,
    ];

    #[test]
    fn fixture_fields() {
        let f = EthernetFrame::new_checked(&FIXTURE[..]).expect("valid");
        assert_eq!(f.dst_key(), 0xffff_ffff_ffff);
        assert_eq!(f.src_key(), 0x0242_0af4_010a);
        assert_eq!(f.src_addr(), [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x0a]);
        assert_eq!(f.dst_addr(), [0xff; 6]);
        assert_eq!(f.ethertype(), ethertype::ARP);
        assert_eq!(f.payload(), &[0, 1]);
        assert!(is_group_mac(f.dst_key()) && !is_group_mac(f.src_key()));
        assert_eq!(f.into_payload(), &[0, 1]);
    }

    #[test]
    fn setters_write_the_fields() {
        let mut b = FIXTURE;
        let mut f = EthernetFrame::new_checked(&mut b[..]).expect("valid");
        f.set_addr_keys(0x0211_2233_4455, 0x02ee_0000_0001);
        f.set_ethertype(ethertype::IPV4);
        f.payload_mut()[0] = 9;
        assert_eq!(f.dst_addr(), [2, 0x11, 0x22, 0x33, 0x44, 0x55]);
        f.set_dst_addr([1; 6]);
        f.set_src_addr([2; 6]);
        assert_eq!(&b[..14], &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 8, 0]);
        assert_eq!(b[14], 9);
    }

    #[test]
    fn truncated_is_an_error() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&FIXTURE[..len]).err(),
                Some(Error::Truncated)
            );
        }
        let f = EthernetFrame::new_checked(&FIXTURE[..14]).expect("header only");
        assert!(f.payload().is_empty());
    }

    #[test]
    fn mac_key_roundtrip_and_group_bit() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let key = mac_key(&mac);
        assert_eq!(key, 0x0211_2233_4455);
        assert_eq!(mac_from_key(key).0, mac);
        assert_eq!(format_mac(mac_from_key(key)), "02:11:22:33:44:55");
        assert!(!is_group_mac(key));
        assert!(is_group_mac(mac_key(&[0xff; 6])));
        assert!(is_group_mac(mac_key(&[0x01, 0x00, 0x5e, 0, 0, 1])));
        assert!(is_group_mac(mac_key(&[0x33, 0x33, 0, 0, 0, 1])));
    }
}
