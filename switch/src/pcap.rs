//! The classic libpcap file format, as `podswitch capture` writes it: a 24-byte global header,
//! then per packet a 16-byte record header and the captured bytes.
//!
//! Written by hand (it is two fixed headers): little-endian, microsecond timestamps (magic
//! `0xa1b2c3d4`), version 2.4, link type Ethernet (1). Readers (tcpdump, tshark, Wireshark)
//! take the byte order from the magic.
//!
//! Invariants: a record's captured length never exceeds the snap length of the global header,
//! nor its original length; lengths and timestamps that do not fit 32 bits are clamped, never
//! wrapped.

use std::time::Duration;

/// `LINKTYPE_ETHERNET`: every record starts with an Ethernet header.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// The largest snap length readers accept (libpcap's `MAXIMUM_SNAPLEN`); also the default,
/// as tcpdump's: larger than any frame the switch handles (a GSO superframe is under 64 KiB
/// plus headers), so nothing is cut unless asked.
pub const MAX_SNAPLEN: u32 = 262_144;
/// Length of the global header.
pub const GLOBAL_HEADER_LEN: usize = 24;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 16;

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;

/// The file's global header for captures of at most `snaplen` bytes per packet.
pub fn global_header(snaplen: u32) -> [u8; GLOBAL_HEADER_LEN] {
    let mut h = [0u8; GLOBAL_HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    // thiszone (8..12) and sigfigs (12..16) are 0.
    h[16..20].copy_from_slice(&snaplen.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    h
}

/// A record header: `ts` since the Unix epoch, `captured` bytes follow of a packet that was
/// `original` bytes long.
pub fn record_header(ts: Duration, captured: usize, original: usize) -> [u8; RECORD_HEADER_LEN] {
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let secs = u32::try_from(ts.as_secs()).unwrap_or(u32::MAX);
    let original = clamp(original);
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&secs.to_le_bytes());
    h[4..8].copy_from_slice(&ts.subsec_micros().to_le_bytes());
    h[8..12].copy_from_slice(&clamp(captured).min(original).to_le_bytes());
    h[12..16].copy_from_slice(&original.to_le_bytes());
    h
}

/// The captured length a record header announces (the bytes that follow it).
pub fn record_captured_len(header: &[u8; RECORD_HEADER_LEN]) -> u32 {
    u32::from_le_bytes([header[8], header[9], header[10], header[11]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_header_bytes() {
        assert_eq!(
            global_header(65535),
            [
                0xd4, 0xc3, 0xb2, 0xa1, // magic, little-endian, microseconds
                0x02, 0x00, 0x04, 0x00, // version 2.4
                0, 0, 0, 0, // thiszone
                0, 0, 0, 0, // sigfigs
                0xff, 0xff, 0x00, 0x00, // snaplen 65535
                0x01, 0x00, 0x00, 0x00, // LINKTYPE_ETHERNET
            ]
        );
    }

    #[test]
    fn record_header_bytes() {
        let ts = Duration::new(0x6543_2100, 123_456_789);
        let h = record_header(ts, 60, 98);
        assert_eq!(
            h,
            [
                0x00, 0x21, 0x43, 0x65, // seconds
                0x40, 0xe2, 0x01, 0x00, // 123456 microseconds
                60, 0, 0, 0, // captured
                98, 0, 0, 0, // original
            ]
        );
        assert_eq!(record_captured_len(&h), 60);
    }

    #[test]
    fn record_header_clamps_instead_of_wrapping() {
        let h = record_header(Duration::from_secs(u64::MAX), 100, 40);
        assert_eq!(&h[0..4], &[0xff; 4], "seconds clamped");
        assert_eq!(record_captured_len(&h), 40, "never more than the original");
        let h = record_header(Duration::ZERO, usize::MAX, usize::MAX);
        assert_eq!(&h[8..16], &[0xff; 8]);
    }
}
