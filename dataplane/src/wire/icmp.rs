//! ICMPv4 (RFC 792): the echo messages the gateway answers and the errors the switch sends.
//!
//! ```text
//! | type | code | checksum (2) | rest of header (4): id/seq, or unused + next-hop MTU | data
//! ```

use super::checksum::checksum_sum;
use super::Error;

/// Byte ranges of the header fields.
pub(crate) mod field {
    use std::ops::Range;
    pub(crate) const TYPE: usize = 0;
    pub(crate) const CODE: usize = 1;
    pub(crate) const CHECKSUM: Range<usize> = 2..4;
    pub(crate) const REST: Range<usize> = 4..8;
    /// Next-hop MTU of "fragmentation needed" (RFC 1191).
    pub(crate) const NEXT_HOP_MTU: Range<usize> = 6..8;
}

/// Length of the ICMP header (type, code, checksum and the 4 bytes after).
pub(crate) const HEADER_LEN: usize = field::REST.end;

/// Message types.
pub(crate) mod msg_type {
    /// Echo reply.
    pub(crate) const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub(crate) const DST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub(crate) const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub(crate) const TIME_EXCEEDED: u8 = 11;
}

/// A checked view of an ICMP message: the 8-byte header present.
#[derive(Debug, Clone, Copy)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Checks that `buffer` holds an ICMP header.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    /// Message type (see [`msg_type`]).
    #[inline(always)]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Code.
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum field.
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::CHECKSUM.start], b[field::CHECKSUM.start + 1]])
    }

    /// The 4 bytes after the checksum (echo id and sequence; the next-hop MTU of an error).
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn rest_of_header(&self) -> [u8; 4] {
        let mut r = [0; 4];
        r.copy_from_slice(&self.buffer.as_ref()[field::REST]);
        r
    }

    /// True if the checksum over the whole message is valid.
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn verify_checksum(&self) -> bool {
        checksum_sum(self.buffer.as_ref()) == 0xffff
    }

    /// The data after the header (echo payload, or the quoted packet of an error).
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets type and code.
    #[inline(always)]
    pub fn set_type_code(&mut self, ty: u8, code: u8) {
        let b = self.buffer.as_mut();
        b[field::TYPE] = ty;
        b[field::CODE] = code;
    }

    /// Sets the 4 bytes after the checksum.
    #[inline(always)]
    pub fn set_rest_of_header(&mut self, rest: [u8; 4]) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&rest);
    }

    /// Sets the next-hop MTU of a "fragmentation needed" error (and zeroes the unused half).
    #[inline(always)]
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        let b = self.buffer.as_mut();
        b[field::REST].fill(0);
        b[field::NEXT_HOP_MTU].copy_from_slice(&mtu.to_be_bytes());
    }

    /// The data after the header, mutable.
    #[inline(always)]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Computes and writes the checksum over the whole buffer (header and data).
    #[inline(always)]
    pub fn fill_checksum(&mut self) {
        let b = self.buffer.as_mut();
        b[field::CHECKSUM].fill(0);
        let c = !checksum_sum(b);
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ping` echo request: id 0x1c46, seq 1, 4 bytes of data.
    const ECHO: [u8; 12] = [
        0x08, 0x00, 0x16, 0xf2, 0x1c, 0x46, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64,
    ];

    #[test]
    fn fixture_fields() {
        let m = IcmpPacket::new_checked(&ECHO[..]).expect("valid");
        assert_eq!((m.msg_type(), m.code()), (msg_type::ECHO_REQUEST, 0));
        assert_eq!(m.rest_of_header(), [0x1c, 0x46, 0, 1]);
        assert_eq!(m.data(), b"abcd");
        assert_eq!(m.checksum(), 0x16f2);
        assert!(m.verify_checksum());
    }

    #[test]
    fn setters_and_checksum() {
        let mut b = ECHO;
        let mut m = IcmpPacket::new_checked(&mut b[..]).expect("valid");
        m.set_type_code(msg_type::ECHO_REPLY, 0);
        m.fill_checksum();
        assert!(m.verify_checksum());
        m.set_type_code(msg_type::DST_UNREACHABLE, 4);
        m.set_next_hop_mtu(1450);
        m.data_mut()[0] = 0;
        m.fill_checksum();
        assert_eq!(m.rest_of_header(), [0, 0, 0x05, 0xaa]);
        assert!(m.verify_checksum());
        m.set_rest_of_header([1, 2, 3, 4]);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
    }

    #[test]
    fn truncated_is_an_error() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                IcmpPacket::new_checked(&ECHO[..len]).err(),
                Some(Error::Truncated)
            );
        }
    }
}
