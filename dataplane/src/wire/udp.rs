//! UDP header (RFC 768).
//!
//! ```text
//! | src port (2) | dst port (2) | length (2) | checksum (2) | payload ...
//! ```

use super::Error;

/// Byte ranges of the header fields.
pub(crate) mod field {
    use std::ops::Range;
    #[cfg(test)]
    pub(crate) const SRC_PORT: Range<usize> = 0..2;
    #[cfg(test)]
    pub(crate) const DST_PORT: Range<usize> = 2..4;
    pub(crate) const LENGTH: Range<usize> = 4..6;
    pub(crate) const CHECKSUM: Range<usize> = 6..8;
}

/// Length of the UDP header.
pub(crate) const HEADER_LEN: usize = field::CHECKSUM.end;
/// Offset of the checksum field (virtio-net's `csum_offset` for UDP).
pub(crate) const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A checked view of a UDP datagram: the header present. The length field is not checked
/// against the buffer: a USO superframe's describes one segment or the whole.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Checks that `buffer` holds a UDP header.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    /// Source port.
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT.start)
    }

    /// Destination port.
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT.start)
    }

    /// The length field (header and payload).
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn len(&self) -> u16 {
        self.u16_at(field::LENGTH.start)
    }

    /// True if the length field is 0 (never valid; for clippy's `len_without_is_empty`).
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The checksum field (0: none).
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM.start)
    }

    /// The header.
    #[inline(always)]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// Everything after the header.
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    #[cfg(test)]
    #[inline(always)]
    fn u16_at(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the length field.
    #[inline(always)]
    pub fn set_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the checksum field.
    #[inline(always)]
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DNS query header: 12345 -> 53, 12 bytes, checksum 0x1c2d.
    const DATAGRAM: [u8; 12] = [
        0x30, 0x39, 0x00, 0x35, 0x00, 0x0c, 0x1c, 0x2d, 0xde, 0xad, 0xbe, 0xef,
    ];

    #[test]
    fn fixture_fields_and_setters() {
        let u = UdpPacket::new_checked(&DATAGRAM[..]).expect("valid");
        assert_eq!((u.src_port(), u.dst_port()), (12345, 53));
        assert_eq!((u.len(), u.checksum()), (12, 0x1c2d));
        assert!(!u.is_empty());
        assert_eq!(u.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(u.header(), &DATAGRAM[..8]);
        let mut b = DATAGRAM;
        let mut u = UdpPacket::new_checked(&mut b[..]).expect("valid");
        u.set_len(9);
        u.set_checksum(0xffff);
        assert_eq!(&b[4..8], &[0, 9, 0xff, 0xff]);
    }

    #[test]
    fn truncated_is_an_error() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                UdpPacket::new_checked(&DATAGRAM[..len]).err(),
                Some(Error::Truncated)
            );
        }
    }
}
