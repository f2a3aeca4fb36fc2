//! The virtio-net header (`struct virtio_net_hdr`, 10 bytes) that precedes every frame read from
//! or written to a TAP opened with `IFF_VNET_HDR`.
//!
//! It describes checksum and segmentation offload: a frame with `gso_type != NONE` is a
//! superframe (up to 64 KiB) that the receiver must segment into `gso_size` payload chunks, or
//! hand to a device that can. `csum_start`/`hdr_len` count from the start of the Ethernet header
//! on a TAP. Fields are little-endian (the legacy virtio layout the kernel uses on x86 and arm64
//! unless `TUNSETVNETBE` is set).

/// Byte ranges of the header fields (little-endian 16-bit words).
pub(crate) mod field {
    use std::ops::Range;
    pub(crate) const FLAGS: usize = 0;
    pub(crate) const GSO_TYPE: usize = 1;
    pub(crate) const HDR_LEN: Range<usize> = 2..4;
    pub(crate) const GSO_SIZE: Range<usize> = 4..6;
    pub(crate) const CSUM_START: Range<usize> = 6..8;
    pub(crate) const CSUM_OFFSET: Range<usize> = 8..10;
}

/// Length of `struct virtio_net_hdr` (without the `num_buffers` field of the mergeable variant).
pub const HEADER_LEN: usize = field::CSUM_OFFSET.end;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` must be completed.
pub const FLAG_NEEDS_CSUM: u8 = 1;

/// `gso_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GsoType {
    /// Not a superframe.
    #[default]
    None,
    /// TCP over IPv4 (TSO4).
    TcpV4,
    /// UDP fragmentation offload (UFO, legacy).
    Udp,
    /// TCP over IPv6 (TSO6).
    TcpV6,
    /// UDP segmentation (USO, `VIRTIO_NET_HDR_GSO_UDP_L4`).
    UdpL4,
}

const GSO_ECN: u8 = 0x80;

impl GsoType {
    fn from_raw(v: u8) -> Option<Self> {
        Some(match v & !GSO_ECN {
            0 => Self::None,
            1 => Self::TcpV4,
            3 => Self::Udp,
            4 => Self::TcpV6,
            5 => Self::UdpL4,
            _ => return None,
        })
    }

    fn to_raw(self) -> u8 {
        match self {
            Self::None => 0,
            Self::TcpV4 => 1,
            Self::Udp => 3,
            Self::TcpV6 => 4,
            Self::UdpL4 => 5,
        }
    }
}

/// Why a virtio-net header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VnetError {
    /// Fewer than 10 bytes.
    #[error("virtio-net header truncated")]
    Truncated,
    /// A `gso_type` the switch does not know.
    #[error("unknown virtio-net gso_type {0}")]
    UnknownGsoType(u8),
}

/// A parsed virtio-net header. The all-zero value means "plain frame, checksums complete".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Segmentation type.
    pub gso_type: GsoType,
    /// ECN bit of `gso_type`.
    pub ecn: bool,
    /// Length of all headers (Ethernet + IP + L4) of a superframe.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts, from the start of the Ethernet header.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first 10 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, VnetError> {
        let b: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(VnetError::Truncated)?;
        let raw_type = b[field::GSO_TYPE];
        let gso_type = GsoType::from_raw(raw_type).ok_or(VnetError::UnknownGsoType(raw_type))?;
        let le = |r: std::ops::Range<usize>| u16::from_le_bytes([b[r.start], b[r.start + 1]]);
        Ok(Self {
            flags: b[field::FLAGS],
            gso_type,
            ecn: raw_type & GSO_ECN != 0,
            hdr_len: le(field::HDR_LEN),
            gso_size: le(field::GSO_SIZE),
            csum_start: le(field::CSUM_START),
            csum_offset: le(field::CSUM_OFFSET),
        })
    }

    /// The 10-byte wire form.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[field::FLAGS] = self.flags;
        b[field::GSO_TYPE] = self.gso_type.to_raw() | if self.ecn { GSO_ECN } else { 0 };
        b[field::HDR_LEN].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[field::GSO_SIZE].copy_from_slice(&self.gso_size.to_le_bytes());
        b[field::CSUM_START].copy_from_slice(&self.csum_start.to_le_bytes());
        b[field::CSUM_OFFSET].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// True if the frame is a GSO superframe.
    pub fn is_gso(&self) -> bool {
        self.gso_type != GsoType::None
    }

    /// True if a checksum still has to be completed.
    pub fn needs_csum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uso_superframe_header_seen_on_a_tap() {
        // Seen on a TAP: a 14000-byte UDP_SEGMENT=1400 send arrived as gso_type=5, gso_size=1400,
        // csum_start=34, flags=NEEDS_CSUM (UDP checksum field at offset 6).
        let raw = [0x01, 0x05, 0x2a, 0x00, 0x78, 0x05, 0x22, 0x00, 0x06, 0x00];
        let h = VnetHdr::parse(&raw).expect("valid");
        assert_eq!(h.gso_type, GsoType::UdpL4);
        assert_eq!(h.gso_size, 1400);
        assert_eq!(h.csum_start, 34);
        assert_eq!(h.csum_offset, 6);
        assert_eq!(h.hdr_len, 42);
        assert!(h.needs_csum() && h.is_gso());
        assert_eq!(h.to_bytes(), raw);
    }

    #[test]
    fn zero_header_is_plain_frame() {
        let h = VnetHdr::parse(&[0u8; 10]).expect("valid");
        assert_eq!(h, VnetHdr::default());
        assert!(!h.is_gso() && !h.needs_csum());
    }

    #[test]
    fn ecn_bit_roundtrips_and_bad_types_fail() {
        let raw = [0, 0x81, 0, 0, 0, 0, 0, 0, 0, 0];
        let h = VnetHdr::parse(&raw).expect("valid");
        assert_eq!(h.gso_type, GsoType::TcpV4);
        assert!(h.ecn);
        assert_eq!(h.to_bytes(), raw);
        assert_eq!(
            VnetHdr::parse(&[0, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(VnetError::UnknownGsoType(2))
        );
        assert_eq!(VnetHdr::parse(&[0; 9]), Err(VnetError::Truncated));
    }
}
