//! IPv4 header (RFC 791): the one IPv4 parser of the crate, its one header-checksum writer and
//! its TTL decrement.
//!
//! ```text
//! | ver/ihl | dscp/ecn | total length (2) | ident (2) | flags/fragment offset (2) |
//! | ttl | protocol | header checksum (2) | source (4) | destination (4) | options ... |
//! ```

use std::net::Ipv4Addr;

use super::checksum::{checksum_accumulate, checksum_fold, checksum_sum, header_sums_to_ones};
use super::Error;

/// Byte ranges of the header fields.
pub(crate) mod field {
    use std::ops::Range;
    pub(crate) const VER_IHL: usize = 0;
    pub(crate) const DSCP_ECN: usize = 1;
    pub(crate) const LENGTH: Range<usize> = 2..4;
    pub(crate) const IDENT: Range<usize> = 4..6;
    pub(crate) const FLG_OFF: Range<usize> = 6..8;
    pub(crate) const TTL: usize = 8;
    pub(crate) const PROTOCOL: usize = 9;
    pub(crate) const CHECKSUM: Range<usize> = 10..12;
    pub(crate) const SRC_ADDR: Range<usize> = 12..16;
    pub(crate) const DST_ADDR: Range<usize> = 16..20;
    /// Source and destination together (the pseudo-header's addresses).
    pub(crate) const ADDRESSES: Range<usize> = 12..20;
}

/// Length of an IPv4 header without options (the minimum).
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// Length of the longest IPv4 header (IHL 15).
pub(crate) const MAX_HEADER_LEN: usize = 60;
/// Largest IPv4 packet (the total length is 16 bits).
pub(crate) const MAX_PACKET_LEN: usize = 65535;

/// The source address of the IPv4 header at the start of `packet`, without checking the rest
/// of the header; `None` if `packet` is shorter than a header. For anti-spoofing on the bridged
/// path, where nothing else of the header is read: a receiver discards a header whose version
/// or length is wrong, so the source address is all a sender could abuse (and one full header
/// check per frame, repeated by routing, cost 5% of routed forwarding).
#[inline(always)]
pub fn source_address(packet: &[u8]) -> Option<Ipv4Addr> {
    let b: &[u8; 4] = packet.get(field::SRC_ADDR)?.try_into().ok()?;
    Some(Ipv4Addr::from(*b))
}

/// The destination address of an IPv4 packet, read without validating the header (a peek: the
/// caller validates before it trusts anything else).
#[inline(always)]
pub fn destination_address(packet: &[u8]) -> Option<Ipv4Addr> {
    let b: &[u8; 4] = packet.get(field::DST_ADDR)?.try_into().ok()?;
    Some(Ipv4Addr::from(*b))
}

/// IP protocol numbers the switch knows.
pub(crate) mod protocol {
    /// ICMP.
    pub(crate) const ICMP: u8 = 1;
    /// TCP.
    pub(crate) const TCP: u8 = 6;
    /// UDP.
    pub(crate) const UDP: u8 = 17;
}

/// Bits of the flags/fragment-offset word.
pub(crate) mod flags {
    /// Don't fragment.
    pub(crate) const DONT_FRAGMENT: u16 = 0x4000;
    /// More fragments.
    pub(crate) const MORE_FRAGMENTS: u16 = 0x2000;
    /// The fragment offset, in 8-byte units.
    pub(crate) const OFFSET_MASK: u16 = 0x1fff;
}

/// A checked view of an IPv4 packet (or, from [`Ipv4Packet::new_checked_header`], of an IPv4
/// header).
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Checks that `buffer` holds an IPv4 header (version 4, IHL at least 5, the whole header
    /// present) whose total length lies between its header length and the buffer's end.
    /// Bytes after the total length (Ethernet padding) are not part of the packet.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        Self::new_checked_header(buffer)?.with_total_len_checked()
    }

    /// Like [`Ipv4Packet::new_checked`], but a total length of 0 is also accepted and means
    /// "to the end of the buffer": a GSO superframe may carry it so (Linux's BIG TCP leaves
    /// it 0 when the packet is larger than 64 KiB).
    #[inline(always)]
    pub fn new_checked_superframe(buffer: T) -> Result<Self, Error> {
        let p = Self::new_checked_header(buffer)?;
        if p.total_len() == 0 {
            return Ok(p);
        }
        p.with_total_len_checked()
    }

    /// The view, if its total length covers the header and fits the buffer.
    #[inline(always)]
    fn with_total_len_checked(self) -> Result<Self, Error> {
        let total = usize::from(self.total_len());
        if total < self.header_len() {
            return Err(Error::Malformed);
        }
        if total > self.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(self)
    }

    /// Checks the header only: version 4, IHL at least 5, the whole header (options included)
    /// present. The total length is not checked against the buffer (for a buffer holding
    /// headers only, such as a segmentation template, or a flow hash that reads what is
    /// there); [`Ipv4Packet::payload`] then returns what lies in the buffer.
    #[inline(always)]
    pub fn new_checked_header(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let vi = b[field::VER_IHL];
        let ihl = usize::from(vi & 0x0f) * 4;
        if vi >> 4 != 4 || ihl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if ihl > b.len() {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    /// Header length in bytes (IHL x 4), options included.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The DSCP/ECN byte (the old TOS).
    #[inline(always)]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// The total length field.
    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        self.u16_at(field::LENGTH.start)
    }

    /// Where the packet ends: the total length, or the buffer's end when it is 0 (a
    /// superframe, see [`Ipv4Packet::new_checked_superframe`]).
    #[inline(always)]
    pub fn packet_len(&self) -> usize {
        match self.total_len() {
            0 => self.buffer.as_ref().len(),
            t => usize::from(t),
        }
    }

    /// The identification field.
    #[inline(always)]
    pub fn ident(&self) -> u16 {
        self.u16_at(field::IDENT.start)
    }

    /// The flags/fragment-offset word (see [`flags`]).
    #[inline(always)]
    pub fn flags_and_offset(&self) -> u16 {
        self.u16_at(field::FLG_OFF.start)
    }

    /// True if the DF flag is set.
    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        self.flags_and_offset() & flags::DONT_FRAGMENT != 0
    }

    /// True if the packet is a fragment (MF set or a non-zero offset).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.flags_and_offset() & (flags::MORE_FRAGMENTS | flags::OFFSET_MASK) != 0
    }

    /// True if the packet is the first fragment or not a fragment (its L4 header is here).
    #[inline(always)]
    pub fn is_first_fragment(&self) -> bool {
        self.flags_and_offset() & flags::OFFSET_MASK == 0
    }

    /// Time to live.
    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol number (see [`protocol`]).
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum field.
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM.start)
    }

    /// Source address.
    #[inline(always)]
    pub fn src_addr(&self) -> Ipv4Addr {
        self.addr_at(field::SRC_ADDR.start)
    }

    /// Destination address.
    #[inline(always)]
    pub fn dst_addr(&self) -> Ipv4Addr {
        self.addr_at(field::DST_ADDR.start)
    }

    /// Source and destination, as the 8 bytes the pseudo-header and flow hashes use.
    #[inline(always)]
    pub fn addresses(&self) -> [u8; 8] {
        let mut a = [0; 8];
        a.copy_from_slice(&self.buffer.as_ref()[field::ADDRESSES]);
        a
    }

    /// True if the header checksum is valid.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        header_sums_to_ones(self.header())
    }

    /// The header, options included.
    #[inline(always)]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The IP options (empty without).
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: from the end of the header to the end of the packet (or of the buffer,
    /// whichever comes first).
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = self.packet_len().min(b.len());
        b.get(self.header_len()..end).unwrap_or_default()
    }

    /// The source and destination ports of a TCP or UDP packet that is not a later
    /// fragment, as they lie on the wire (4 bytes), if present: the flow part of a hash.
    #[inline(always)]
    pub fn flow_ports(&self) -> Option<[u8; 4]> {
        let p = self.protocol();
        if (p == protocol::TCP || p == protocol::UDP) && self.is_first_fragment() {
            let at = self.header_len();
            let ports = self.buffer.as_ref().get(at..at + 4)?;
            return ports.try_into().ok();
        }
        None
    }

    /// The unfolded sum of the pseudo-header of an L4 segment of `l4_len` bytes carried by
    /// this header (addresses, protocol, length), for TCP and UDP checksums.
    #[inline(always)]
    pub fn pseudo_header_accumulate(&self, l4_len: usize) -> u64 {
        checksum_accumulate(&self.buffer.as_ref()[field::ADDRESSES])
            + u64::from(self.protocol())
            + l4_len as u64
    }

    #[inline(always)]
    fn u16_at(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    #[inline(always)]
    fn addr_at(&self, at: usize) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
    }
}

impl<'a> Ipv4Packet<&'a [u8]> {
    /// The payload (bounded like [`Ipv4Packet::payload`]), borrowed from the buffer rather
    /// than the view.
    #[inline(always)]
    pub fn into_payload(self) -> &'a [u8] {
        let end = self.packet_len().min(self.buffer.len());
        self.buffer.get(self.header_len()..end).unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the total length.
    #[inline(always)]
    pub fn set_total_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the identification.
    #[inline(always)]
    pub fn set_ident(&mut self, v: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the TTL (the checksum is not updated: see [`Ipv4Packet::fill_checksum`]).
    #[inline(always)]
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    /// Sets the source address.
    #[inline(always)]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    #[inline(always)]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Computes and writes the header checksum (options included): the one IPv4 header
    /// checksum writer of the crate.
    #[inline(always)]
    pub fn fill_checksum(&mut self) {
        let ihl = self.header_len();
        let b = self.buffer.as_mut();
        b[field::CHECKSUM].fill(0);
        let c = !checksum_sum(&b[..ihl]);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }

    /// Decrements the TTL and patches the checksum incrementally (RFC 1624). Returns the TTL
    /// before the decrement; a TTL of 0 is left alone.
    #[inline(always)]
    pub fn decrement_ttl(&mut self) -> u8 {
        let b = self.buffer.as_mut();
        let ttl = b[field::TTL];
        if ttl == 0 {
            return 0;
        }
        b[field::TTL] = ttl - 1;
        // The TTL is the high byte of the 16-bit word at offset 8: it went down by 0x0100, so
        // the one's complement checksum goes up by 0x0100 (HC' = HC + 0x0100, end-around
        // carry).
        let c = u16::from_be_bytes([b[field::CHECKSUM.start], b[field::CHECKSUM.start + 1]]);
        let new = checksum_fold(u64::from(c) + 0x0100);
        b[field::CHECKSUM].copy_from_slice(&new.to_be_bytes());
        ttl
    }

    /// The payload, mutable (bounded like [`Ipv4Packet::payload`]).
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (ihl, end) = (self.header_len(), self.packet_len());
        let b = self.buffer.as_mut();
        let end = end.min(b.len());
        b.get_mut(ihl..end).unwrap_or_default()
    }
}

/// The fields of an IPv4 header without options that the switch writes from scratch (its
/// ICMP errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ipv4Repr {
    /// Source address.
    pub(crate) src: Ipv4Addr,
    /// Destination address.
    pub(crate) dst: Ipv4Addr,
    /// Protocol number.
    pub(crate) protocol: u8,
    /// Time to live.
    pub(crate) ttl: u8,
    /// DSCP/ECN byte.
    pub(crate) dscp_ecn: u8,
    /// Payload length (the total length is this plus [`HEADER_LEN`]).
    pub(crate) payload_len: u16,
}

impl Ipv4Repr {
    /// Writes the header (20 bytes, checksum filled, id 0, no flags) at the start of `buf`.
    pub(crate) fn emit(&self, buf: &mut [u8]) -> Result<(), Error> {
        let hdr = buf.get_mut(..HEADER_LEN).ok_or(Error::Truncated)?;
        let total = self
            .payload_len
            .checked_add(HEADER_LEN as u16)
            .ok_or(Error::Malformed)?;
        hdr.fill(0);
        hdr[field::VER_IHL] = 0x45;
        hdr[field::DSCP_ECN] = self.dscp_ecn;
        hdr[field::LENGTH].copy_from_slice(&total.to_be_bytes());
        hdr[field::TTL] = self.ttl;
        hdr[field::PROTOCOL] = self.protocol;
        hdr[field::SRC_ADDR].copy_from_slice(&self.src.octets());
        hdr[field::DST_ADDR].copy_from_slice(&self.dst.octets());
        Ipv4Packet { buffer: hdr }.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real header: ping 10.244.1.10 -> 10.244.1.11, id 0x1234, DF, TTL 64, total 84.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x10, 0x79, 10, 244, 1, 10, 10,
        244, 1, 11,
    ];

    fn packet() -> Vec<u8> {
        let mut p = HEADER.to_vec();
        p.resize(84, 0xab);
        p
    }

    #[test]
    fn fixture_fields() {
        let buf = packet();
        let p = Ipv4Packet::new_checked(&buf[..]).expect("valid");
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 84);
        assert_eq!(p.packet_len(), 84);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_fragment() && !p.is_fragment() && p.is_first_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), protocol::ICMP);
        assert_eq!(p.checksum(), 0x1079);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 244, 1, 10));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 244, 1, 11));
        assert_eq!(p.addresses(), [10, 244, 1, 10, 10, 244, 1, 11]);
        assert_eq!(p.payload().len(), 64);
        assert!(p.options().is_empty());
        assert_eq!(p.flow_ports(), None, "ICMP has no ports");
        assert_eq!(p.into_payload().len(), 64);
        assert_eq!(checksum_sum(p.header()), 0xffff);
    }

    #[test]
    fn source_address_reads_only_the_address() {
        let buf = packet();
        assert_eq!(
            source_address(&buf),
            Some(
                Ipv4Packet::new_checked(&buf[..])
                    .map(|p| p.src_addr())
                    .expect("fixture")
            )
        );
        assert_eq!(
            source_address(&buf[..HEADER_LEN]),
            Some(
                Ipv4Packet::new_checked(&buf[..])
                    .map(|p| p.src_addr())
                    .expect("fixture")
            )
        );
        assert_eq!(source_address(&buf[..HEADER_LEN - 5]), None);
        assert_eq!(source_address(&[]), None);
    }

    #[test]
    fn padding_is_not_payload_and_options_are_header() {
        let mut buf = packet();
        buf.extend_from_slice(&[0xee; 6]);
        let p = Ipv4Packet::new_checked(&buf[..]).expect("valid");
        assert_eq!(p.payload().len(), 64);
        let mut opt = HEADER.to_vec();
        opt[0] = 0x46;
        opt[3] = 24;
        opt.extend_from_slice(&[0x94, 0x04, 0, 0]);
        let p = Ipv4Packet::new_checked(&opt[..]).expect("valid");
        assert_eq!((p.header_len(), p.options()), (24, &[0x94, 4, 0, 0][..]));
        assert!(p.payload().is_empty());
    }

    #[test]
    fn refuses_bad_headers_never_panics() {
        let buf = packet();
        for len in 0..84 {
            assert!(Ipv4Packet::new_checked(&buf[..len]).is_err(), "len {len}");
        }
        for len in 0..20 {
            assert_eq!(
                Ipv4Packet::new_checked_header(&buf[..len]).err(),
                Some(Error::Truncated)
            );
        }
        let mut v6 = packet();
        v6[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&v6[..]).err(),
            Some(Error::Malformed)
        );
        let mut short_ihl = packet();
        short_ihl[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&short_ihl[..]).err(),
            Some(Error::Malformed)
        );
        let mut long_ihl = packet();
        long_ihl[0] = 0x4f;
        assert_eq!(
            Ipv4Packet::new_checked(&long_ihl[..30]).err(),
            Some(Error::Truncated)
        );
        let mut total_short = packet();
        total_short[3] = 19;
        assert_eq!(
            Ipv4Packet::new_checked(&total_short[..]).err(),
            Some(Error::Malformed)
        );
        let mut zero = packet();
        zero[2..4].fill(0);
        assert!(Ipv4Packet::new_checked(&zero[..]).is_err());
        let sf = Ipv4Packet::new_checked_superframe(&zero[..]).expect("superframe");
        assert_eq!((sf.packet_len(), sf.payload().len()), (84, 64));
        // A header view of a template whose total length runs past the buffer.
        let h = Ipv4Packet::new_checked_header(&buf[..20]).expect("header");
        assert!(h.payload().is_empty());
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut hdr = HEADER;
        let mut p = Ipv4Packet::new_checked_header(&mut hdr[..]).expect("valid");
        for expected in (1..=64u8).rev() {
            assert_eq!(p.decrement_ttl(), expected);
            assert!(p.verify_checksum(), "checksum broken at ttl {}", p.ttl());
        }
        assert_eq!(p.decrement_ttl(), 0);
        assert_eq!(p.ttl(), 0);
    }

    #[test]
    fn setters_and_fill_checksum() {
        let mut buf = packet();
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).expect("valid");
        p.set_total_len(80);
        p.set_ident(7);
        p.set_ttl(3);
        p.set_src_addr(Ipv4Addr::new(1, 2, 3, 4));
        p.set_dst_addr(Ipv4Addr::new(5, 6, 7, 8));
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        p.payload_mut()[0] = 1;
        assert_eq!(
            &buf[..20],
            &[0x45, 0, 0, 80, 0, 7, 0x40, 0, 3, 1, buf[10], buf[11], 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(buf[20], 1);
    }

    #[test]
    fn repr_emits_a_valid_header() {
        let mut out = [0u8; 20];
        let repr = Ipv4Repr {
            src: Ipv4Addr::new(10, 244, 1, 10),
            dst: Ipv4Addr::new(10, 244, 1, 11),
            protocol: protocol::ICMP,
            ttl: 64,
            dscp_ecn: 0,
            payload_len: 64,
        };
        repr.emit(&mut out).expect("fits");
        let mut want = HEADER;
        want[4..8].fill(0);
        Ipv4Packet::new_checked_header(&mut want[..])
            .expect("v")
            .fill_checksum();
        assert_eq!(out, want);
        assert_eq!(repr.emit(&mut [0u8; 19]), Err(Error::Truncated));
    }

    #[test]
    fn flow_ports_of_tcp_and_udp_first_fragments() {
        let mut buf = packet();
        buf[9] = protocol::UDP;
        buf[20..24].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        let p = Ipv4Packet::new_checked(&buf[..]).expect("valid");
        assert_eq!(p.flow_ports(), Some([0x9c, 0x40, 0x14, 0x51]));
        buf[7] = 1; // offset 8: a later fragment
        let p = Ipv4Packet::new_checked(&buf[..]).expect("valid");
        assert_eq!(p.flow_ports(), None);
    }
}
