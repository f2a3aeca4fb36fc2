//! TCP header (RFC 9293), as far as segmentation, receive coalescing, connection tracking and
//! the segments the switch sends itself (resets, probes) need it.
//!
//! ```text
//! | src port (2) | dst port (2) | sequence (4) | acknowledgment (4) |
//! | data offset / reserved | flags | window (2) | checksum (2) | urgent (2) | options ... |
//! ```

use std::net::SocketAddrV4;

use super::checksum::{checksum_accumulate, checksum_fold};
use super::Error;

/// Byte ranges of the header fields.
pub(crate) mod field {
    use std::ops::Range;
    pub(crate) const PORTS: Range<usize> = 0..4;
    pub(crate) const SEQ_NUM: Range<usize> = 4..8;
    pub(crate) const ACK_NUM: Range<usize> = 8..12;
    pub(crate) const DATA_OFFSET: usize = 12;
    pub(crate) const FLAGS: usize = 13;
    pub(crate) const WINDOW: Range<usize> = 14..16;
    pub(crate) const CHECKSUM: Range<usize> = 16..18;
    pub(crate) const URGENT: Range<usize> = 18..20;
}

/// Length of a TCP header without options (the minimum).
pub(crate) const HEADER_LEN: usize = field::URGENT.end;
/// Offset of the checksum field in the header (virtio-net's `csum_offset` for TCP).
pub(crate) const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;
/// Linux's `TCP_MIN_GSO_SIZE`: the least payload per segment a Linux TCP sender cuts (its
/// floor on the send MSS, `TCP_MIN_SND_MSS` = 48 bytes, less 40 bytes of TCP options).
pub(crate) const MIN_GSO_SIZE: u16 = 8;

/// TCP flag bits (the byte at offset 13): the one definition the whole data plane uses.
pub(crate) mod flags {
    /// No more data from the sender.
    pub(crate) const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub(crate) const SYN: u8 = 0x02;
    /// Reset the connection.
    pub(crate) const RST: u8 = 0x04;
    /// Push the buffered data to the application.
    pub(crate) const PSH: u8 = 0x08;
    /// The acknowledgment number is valid.
    pub(crate) const ACK: u8 = 0x10;
    /// The urgent pointer is valid.
    pub(crate) const URG: u8 = 0x20;
    /// ECN echo.
    pub(crate) const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub(crate) const CWR: u8 = 0x80;
}

/// A checked view of a TCP segment: the whole header (options included) present.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Checks that `buffer` holds a TCP header: data offset at least 5 and the whole header
    /// present.
    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(b[field::DATA_OFFSET] >> 4) * 4;
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len > b.len() {
            return Err(Error::Truncated);
        }
        Ok(Self { buffer })
    }

    /// Header length in bytes (data offset x 4), options included.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// Source and destination ports as they lie on the wire (one compare for a flow match).
    #[inline(always)]
    pub fn ports(&self) -> [u8; 4] {
        let mut p = [0; 4];
        p.copy_from_slice(&self.buffer.as_ref()[field::PORTS]);
        p
    }

    /// Source port.
    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::PORTS.start)
    }

    /// Destination port.
    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::PORTS.start + 2)
    }

    /// Sequence number.
    #[inline(always)]
    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ_NUM.start)
    }

    /// Acknowledgment number.
    #[inline(always)]
    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK_NUM.start)
    }

    /// The flag bits (see [`flags`]).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The window field (unscaled).
    #[inline(always)]
    pub fn window(&self) -> u16 {
        self.u16_at(field::WINDOW.start)
    }

    /// The checksum field.
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM.start)
    }

    /// The options (empty without).
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The header, options included.
    #[inline(always)]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The payload (everything after the header).
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    #[inline(always)]
    fn u16_at(&self, at: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    #[inline(always)]
    fn u32_at(&self, at: usize) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
}

impl<'a> TcpPacket<&'a [u8]> {
    /// The options, borrowed from the buffer rather than the view.
    #[inline(always)]
    pub fn into_options(self) -> &'a [u8] {
        let end = self.header_len();
        self.buffer.get(HEADER_LEN..end).unwrap_or_default()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the sequence number.
    #[inline(always)]
    pub fn set_seq_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the flag bits.
    #[inline(always)]
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets the window field.
    #[inline(always)]
    pub fn set_window(&mut self, v: u16) {
        self.buffer.as_mut()[field::WINDOW].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the checksum field.
    #[inline(always)]
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }
}

/// A bare TCP header (no options, no payload) the switch writes itself: a reset, a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpRepr {
    pub(crate) src: SocketAddrV4,
    pub(crate) dst: SocketAddrV4,
    pub(crate) seq: u32,
    pub(crate) ack: u32,
    pub(crate) flags: u8,
}

impl TcpRepr {
    /// Writes the header into `buf` (at least [`HEADER_LEN`] bytes; the rest is left alone),
    /// window and urgent pointer 0, the checksum filled in over `pseudo_header` (the unfolded
    /// sum of the IPv4 pseudo-header: `Ipv4Packet::pseudo_header_accumulate`) and the header.
    pub(crate) fn emit(&self, buf: &mut [u8], pseudo_header: u64) -> Result<(), Error> {
        let t = buf.get_mut(..HEADER_LEN).ok_or(Error::Truncated)?;
        t[field::PORTS.start..field::PORTS.start + 2]
            .copy_from_slice(&self.src.port().to_be_bytes());
        t[field::PORTS.start + 2..field::PORTS.end].copy_from_slice(&self.dst.port().to_be_bytes());
        t[field::SEQ_NUM].copy_from_slice(&self.seq.to_be_bytes());
        t[field::ACK_NUM].copy_from_slice(&self.ack.to_be_bytes());
        t[field::DATA_OFFSET] = ((HEADER_LEN / 4) as u8) << 4;
        t[field::FLAGS] = self.flags;
        t[field::WINDOW].fill(0);
        t[field::CHECKSUM].fill(0);
        t[field::URGENT].fill(0);
        let c = !checksum_fold(pseudo_header + checksum_accumulate(t));
        t[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reset from 10.96.0.10:80 to 10.244.1.10:40000, seq 77: written by hand, checksum
    /// computed independently (RFC 1071 over the pseudo-header and the header).
    const RESET: [u8; 20] = [
        0x00, 0x50, 0x9c, 0x40, 0x00, 0x00, 0x00, 0x4d, 0x00, 0x00, 0x00, 0x00, 0x50, 0x04, 0x00,
        0x00, 0xfc, 0x9b, 0x00, 0x00,
    ];

    #[test]
    fn repr_emits_the_fixture_and_refuses_a_short_buffer() {
        let repr = TcpRepr {
            src: "10.96.0.10:80".parse().expect("addr"),
            dst: "10.244.1.10:40000".parse().expect("addr"),
            seq: 77,
            ack: 0,
            flags: flags::RST,
        };
        // 10.96.0.10, 10.244.1.10, protocol 6, length 20.
        let pseudo = checksum_accumulate(&[10, 96, 0, 10, 10, 244, 1, 10]) + 6 + 20;
        let mut buf = [0xaa; 24];
        repr.emit(&mut buf, pseudo).expect("room");
        assert_eq!(buf[..20], RESET);
        assert_eq!(buf[20..], [0xaa; 4], "bytes past the header are left alone");
        assert_eq!(repr.emit(&mut [0; 19], pseudo), Err(Error::Truncated));
    }

    /// An ACK+PSH segment header with NOP NOP timestamps (doff 8), 40000 -> 5201.
    const HEADER: [u8; 32] = [
        0x9c, 0x40, 0x14, 0x51, 0x00, 0x00, 0x13, 0x88, 0x00, 0x00, 0x00, 0x4d, 0x80, 0x18, 0x01,
        0xf5, 0xab, 0xcd, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x03,
    ];

    #[test]
    fn fixture_fields() {
        let mut buf = HEADER.to_vec();
        buf.extend_from_slice(b"data");
        let t = TcpPacket::new_checked(&buf[..]).expect("valid");
        assert_eq!((t.src_port(), t.dst_port()), (40000, 5201));
        assert_eq!(t.ports(), [0x9c, 0x40, 0x14, 0x51]);
        assert_eq!((t.seq_number(), t.ack_number()), (5000, 77));
        assert_eq!(t.header_len(), 32);
        assert_eq!(t.flags(), flags::ACK | flags::PSH);
        assert_eq!(t.window(), 501);
        assert_eq!(t.checksum(), 0xabcd);
        assert_eq!(t.options(), &HEADER[20..]);
        assert_eq!(t.header(), &HEADER[..]);
        assert_eq!(t.payload(), b"data");
    }

    #[test]
    fn setters_write_the_fields() {
        let mut buf = HEADER;
        let mut t = TcpPacket::new_checked(&mut buf[..]).expect("valid");
        t.set_seq_number(0x0102_0304);
        t.set_flags(flags::ACK);
        t.set_window(7);
        t.set_checksum(0xbeef);
        assert_eq!(&buf[4..8], &[1, 2, 3, 4]);
        assert_eq!(&buf[13..18], &[0x10, 0, 7, 0xbe, 0xef]);
    }

    #[test]
    fn truncated_or_bad_offset_is_an_error() {
        for len in 0..32 {
            assert_eq!(
                TcpPacket::new_checked(&HEADER[..len]).err(),
                Some(Error::Truncated),
                "len {len}"
            );
        }
        let mut bad = HEADER;
        bad[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&bad[..]).err(),
            Some(Error::Malformed)
        );
    }
}
