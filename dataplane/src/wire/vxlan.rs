//! VXLAN (RFC 7348) header: 8 bytes in front of the inner Ethernet frame, carried in UDP.
//!
//! ```text
//!  0               1               2               3
//! |R|R|R|R|I|R|R|R|            Reserved                          |
//! |                VXLAN Network Identifier (VNI) |   Reserved   |
//! ```
//! The I flag (0x08) must be set for a valid VNI. Receivers ignore the reserved bits (RFC 7348
//! §5), as the Linux kernel does; so do we.

use super::ethernet::{self, ethertype, EthernetFrame};
use super::ipv4::{self, Ipv4Packet};
use super::udp;

/// Byte ranges of the header fields.
pub(crate) mod field {
    use std::ops::{Range, RangeFrom};
    pub(crate) const FLAGS: usize = 0;
    pub(crate) const VNI: Range<usize> = 4..7;
    pub(crate) const PAYLOAD: RangeFrom<usize> = 8..;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// UDP port the Linux kernel's vxlan device and flannel use by default.
pub const LINUX_PORT: u16 = 8472;
/// Bytes VXLAN adds to an inner IPv4 packet within the underlay MTU: the inner Ethernet header,
/// outer IPv4, UDP and VXLAN (50). A pod MTU of `underlay MTU - OVERHEAD` keeps every
/// encapsulated packet within the underlay MTU.
pub const OVERHEAD: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + HEADER_LEN;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

const FLAG_I: u8 = 0x08;

/// Why a VXLAN payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    /// The datagram is shorter than a VXLAN header plus an Ethernet header.
    #[error("VXLAN datagram too short")]
    Truncated,
    /// The I flag is clear, so the VNI is not valid.
    #[error("VXLAN I flag not set")]
    NoVniFlag,
}

/// A checked view of a VXLAN datagram (header + inner frame).
#[derive(Debug, Clone, Copy)]
pub(crate) struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Checks that `buffer` holds a VXLAN header with the I flag and at least an Ethernet header
    /// of payload.
    pub(crate) fn new_checked(buffer: T) -> Result<Self, VxlanError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN + ethernet::HEADER_LEN {
            return Err(VxlanError::Truncated);
        }
        if b[field::FLAGS] & FLAG_I == 0 {
            return Err(VxlanError::NoVniFlag);
        }
        Ok(Self { buffer })
    }

    /// The 24-bit VXLAN Network Identifier.
    pub(crate) fn vni(&self) -> u32 {
        let v = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, v[0], v[1], v[2]])
    }
}

/// The VXLAN header for `vni` (I flag set, reserved bits zero). `vni` is masked to 24 bits;
/// configuration validates it first.
pub(crate) fn header(vni: u32) -> [u8; HEADER_LEN] {
    let v = (vni & MAX_VNI).to_be_bytes();
    let mut h = [0; HEADER_LEN];
    h[field::FLAGS] = FLAG_I;
    h[field::VNI].copy_from_slice(&v[1..]);
    h
}

/// Writes the VXLAN header for `vni` in front of an inner frame: `out` receives header + frame.
/// Returns the encapsulated length, or `None` if `out` is too small.
pub fn encapsulate(vni: u32, inner: &[u8], out: &mut [u8]) -> Option<usize> {
    let total = HEADER_LEN + inner.len();
    let out = out.get_mut(..total)?;
    let (head, body) = out.split_at_mut(HEADER_LEN);
    head.copy_from_slice(&header(vni));
    body.copy_from_slice(inner);
    Some(total)
}

/// Validates a received VXLAN datagram and returns `(vni, inner frame)`.
pub fn decapsulate(datagram: &[u8]) -> Result<(u32, &[u8]), VxlanError> {
    let p = VxlanPacket::new_checked(datagram)?;
    Ok((p.vni(), &datagram[field::PAYLOAD]))
}

/// Same as [`decapsulate`] for a mutable buffer (the switch rewrites the inner frame in place).
pub fn decapsulate_mut(datagram: &mut [u8]) -> Result<(u32, &mut [u8]), VxlanError> {
    let vni = VxlanPacket::new_checked(&*datagram)?.vni();
    Ok((vni, &mut datagram[field::PAYLOAD]))
}

/// Outer UDP source port for an inner frame, as RFC 7348 §5 recommends: a hash of the inner
/// flow (addresses, protocol, L4 ports) mapped into `[low, high]`, so ECMP spreads flows while
/// one flow keeps one path. The Linux kernel uses the ephemeral range 32768..=60999 by default.
#[cfg(test)]
pub(crate) fn source_port(inner: &[u8], low: u16, high: u16) -> u16 {
    let h = flow_hash(inner);
    let span = u32::from(high.saturating_sub(low)) + 1;
    low + ((u64::from(h) * u64::from(span)) >> 32) as u16
}

/// A hash of the inner flow: IPv4 addresses, protocol and TCP/UDP ports when present, else the
/// Ethernet addresses. Never panics; short frames hash what they have.
#[inline]
pub fn flow_hash(inner: &[u8]) -> u32 {
    let mut key = [0u8; 16];
    let ip = EthernetFrame::new_checked(inner)
        .ok()
        .filter(|e| e.ethertype() == ethertype::IPV4)
        .and_then(|e| Ipv4Packet::new_checked_header(e.into_payload()).ok());
    match ip {
        Some(ip) => {
            key[..8].copy_from_slice(&ip.addresses());
            key[8] = ip.protocol();
            if let Some(ports) = ip.flow_ports() {
                key[9..13].copy_from_slice(&ports);
            }
        }
        None => {
            // Not IPv4 (or a header too short to be): the Ethernet addresses, what there is.
            let n = inner.len().min(12);
            key[..n].copy_from_slice(&inner[..n]);
        }
    }
    let a = u64::from_le_bytes(key[..8].try_into().unwrap_or_default());
    let b = u64::from_le_bytes(key[8..].try_into().unwrap_or_default());
    let m = u128::from(a ^ 0x243f_6a88_85a3_08d3) * u128::from(b ^ 0x1319_8a2e_0370_7344);
    let x = (m as u64) ^ ((m >> 64) as u64);
    (x ^ (x >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VXLAN datagram as the Linux kernel emits it (VNI 1), inner ARP request.
    const FIXTURE: [u8; 50] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, // VXLAN, I flag, VNI 1
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0xf4, 0x02, 0x00, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x42, 0x0a, 0xf4, 0x02, 0x00, 10, 244, 2,
        0, 0, 0, 0, 0, 0, 0, 10, 244, 1, 0,
    ];

    #[test]
    fn parses_kernel_fixture() {
        let (vni, inner) = decapsulate(&FIXTURE).expect("valid");
        assert_eq!(vni, 1);
        assert_eq!(inner.len(), 42);
        assert_eq!(&inner[12..14], &[0x08, 0x06]);
    }

    #[test]
    fn encapsulate_roundtrip() {
        let inner = &FIXTURE[8..];
        let mut out = [0u8; 64];
        let n = encapsulate(0x12_3456, inner, &mut out).expect("fits");
        assert_eq!(n, 50);
        assert_eq!(&out[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let (vni, back) = decapsulate(&out[..n]).expect("valid");
        assert_eq!(vni, 0x12_3456);
        assert_eq!(back, inner);
        assert_eq!(encapsulate(1, inner, &mut [0u8; 49]), None);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            decapsulate(&FIXTURE[..21]).err(),
            Some(VxlanError::Truncated)
        );
        assert_eq!(decapsulate(&[]).err(), Some(VxlanError::Truncated));
        let mut no_flag = FIXTURE;
        no_flag[0] = 0;
        assert_eq!(decapsulate(&no_flag).err(), Some(VxlanError::NoVniFlag));
        // Reserved bits are ignored on receive (RFC 7348 §5).
        let mut reserved = FIXTURE;
        reserved[0] = 0xff;
        reserved[7] = 0xff;
        assert_eq!(decapsulate(&reserved).map(|(v, _)| v), Ok(1));
    }

    #[test]
    fn source_port_is_stable_per_flow_and_in_range() {
        let a = source_port(&FIXTURE[8..], 32768, 60999);
        assert_eq!(a, source_port(&FIXTURE[8..], 32768, 60999));
        assert!((32768..=60999).contains(&a));
        for len in 0..FIXTURE.len() {
            let p = source_port(&FIXTURE[..len], 4000, 4000);
            assert_eq!(p, 4000);
        }
    }

    #[test]
    fn different_tcp_flows_spread() {
        let mut frame = [0u8; 54];
        frame[12] = 0x08;
        frame[14] = 0x45;
        frame[23] = 6;
        let mut ports = std::collections::HashSet::new();
        for sport in 0..64u16 {
            frame[34..36].copy_from_slice(&(40000 + sport).to_be_bytes());
            ports.insert(source_port(&frame, 32768, 60999));
        }
        assert!(ports.len() > 50, "only {} distinct ports", ports.len());
    }

    #[test]
    fn never_panics_on_random_input() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let len = rng.random_range(0..80);
            let buf: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = decapsulate(&buf);
            let _ = flow_hash(&buf);
        }
    }
}
