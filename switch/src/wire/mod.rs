//! Zero-copy, checked views of the headers the switch reads and writes.
//!
//! Ethernet, ARP, IPv4, ICMPv4, UDP and TCP come from `smoltcp::wire` (re-exported here so the
//! rest of the crate names one module). VXLAN (RFC 7348) and the virtio-net header that travels
//! with every frame on a TAP opened with `IFF_VNET_HDR` are small and written here.
//!
//! Invariant: no function in this module panics on any input. Every view has a `new_checked`
//! constructor that validates lengths before any accessor is used; helpers that take raw byte
//! slices return `None`/`Err` on short input.

pub mod virtio;
pub mod vxlan;

pub use smoltcp::wire::{
    ArpOperation, ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet,
    IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket, UdpPacket,
};

/// Length of an Ethernet II header (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of an ARP packet for Ethernet/IPv4.
pub const ARP_IPV4_LEN: usize = 28;
/// Offset of the EtherType in an Ethernet II frame.
const ETHERTYPE_OFFSET: usize = 12;

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
pub fn format_mac(mac: EthernetAddress) -> String {
    let b = mac.0;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

/// Destination and source MAC keys and the EtherType of a frame, or `None` if the frame is
/// shorter than an Ethernet header. This is the only parsing the L2 fast path does.
#[inline]
pub fn ethernet_fast(frame: &[u8]) -> Option<(u64, u64, u16)> {
    let hdr: &[u8; ETHERNET_HEADER_LEN] = frame.get(..ETHERNET_HEADER_LEN)?.try_into().ok()?;
    let dst = u64::from_be_bytes([0, 0, hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5]]);
    let src = u64::from_be_bytes([0, 0, hdr[6], hdr[7], hdr[8], hdr[9], hdr[10], hdr[11]]);
    let ethertype = u16::from_be_bytes([hdr[ETHERTYPE_OFFSET], hdr[ETHERTYPE_OFFSET + 1]]);
    Some((dst, src, ethertype))
}

/// True for broadcast and multicast MAC keys (the group bit of the first octet).
#[inline]
pub fn is_group_mac(key: u64) -> bool {
    key & (1 << 40) != 0
}

/// The Internet checksum (RFC 1071) of `data`, folded, not complemented.
#[inline]
pub fn checksum_sum(data: &[u8]) -> u16 {
    checksum_fold(checksum_accumulate(data))
}

/// The one's complement sum of `data` as big-endian 16-bit words (an odd tail padded with a
/// zero), for callers that add several parts before folding. Parts must start at even offsets
/// of the checksummed region. The result is at most `0xffff`, so sums of parts cannot overflow.
///
/// Speed matters here (every byte sent to or received from a peer is checksummed once): the
/// sum is taken over native-endian 64-bit words split into 32-bit halves, in four independent
/// accumulators the compiler vectorises, and byte-swapped once at the end; one's complement
/// addition commutes with byte swapping (RFC 1071, section 2(B)). About 3x the speed of summing
/// big-endian 32-bit words (46 vs 15 GB/s on 1400-byte segments on the development machine).
#[inline]
pub fn checksum_accumulate(data: &[u8]) -> u64 {
    let (blocks, rest) = data.as_chunks::<32>();
    let mut lanes = [0u64; 4];
    for block in blocks {
        let (words, _) = block.as_chunks::<8>();
        for (lane, w) in lanes.iter_mut().zip(words) {
            let w = u64::from_ne_bytes(*w);
            // Each lane gains under 2^33 per block: no overflow below 2^31 blocks (64 GiB).
            *lane += (w & 0xffff_ffff) + (w >> 32);
        }
    }
    let mut acc = lanes.iter().fold(0u64, |a, &l| {
        // Fold each lane to 32 bits first so the four cannot overflow together.
        a + (l & 0xffff_ffff) + (l >> 32)
    });
    let (words, rest) = rest.as_chunks::<4>();
    for w in words {
        acc += u64::from(u32::from_ne_bytes(*w));
    }
    let mut tail = [0u8; 4];
    if let Some(dst) = tail.get_mut(..rest.len()) {
        dst.copy_from_slice(rest);
    }
    acc += u64::from(u32::from_ne_bytes(tail));
    // Summed natively, the folded result is the big-endian sum in native byte order.
    u64::from(u16::from_be(checksum_fold(acc)))
}

/// True if the IPv4 header `hdr` (exactly the header: IHL x 4 bytes) has a valid checksum.
/// The common 20-byte header is summed as five native words (one compare against all-ones,
/// which byte order does not change); the general routine costs three times as much there.
#[inline]
pub fn ipv4_header_checksum_ok(hdr: &[u8]) -> bool {
    if let Ok(h) = <&[u8; IPV4_HEADER_LEN]>::try_from(hdr) {
        let (words, _) = h.as_chunks::<4>();
        let sum: u64 = words
            .iter()
            .map(|w| u64::from(u32::from_ne_bytes(*w)))
            .sum();
        return checksum_fold(sum) == 0xffff;
    }
    checksum_sum(hdr) == 0xffff
}

/// Folds a one's complement sum to 16 bits (end-around carry), not complemented.
#[inline]
pub fn checksum_fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The unfolded sum of the IPv4 pseudo-header of an L4 segment of `l4_len` bytes with protocol
/// `proto`, for the IPv4 header `ip` (addresses at bytes 12..20, which must be present).
#[inline]
pub fn ipv4_pseudo_accumulate(ip: &[u8], proto: u8, l4_len: usize) -> u64 {
    checksum_accumulate(&ip[12..20]) + u64::from(proto) + l4_len as u64
}

fn fold(sum: u32) -> u16 {
    checksum_fold(u64::from(sum))
}

/// Decrements the TTL of the IPv4 header at the start of `ip` and patches its checksum
/// incrementally (RFC 1624). Returns the TTL before the decrement, or `None` if `ip` is shorter
/// than an IPv4 header. The caller has validated the header.
#[inline]
pub fn ipv4_decrement_ttl(ip: &mut [u8]) -> Option<u8> {
    let hdr = ip.get_mut(..IPV4_HEADER_LEN)?;
    let ttl = hdr[8];
    if ttl == 0 {
        return Some(0);
    }
    hdr[8] = ttl - 1;
    // The TTL is the high byte of the 16-bit word at offset 8: it went down by 0x0100, so the
    // one's complement checksum goes up by 0x0100 (HC' = HC + 0x0100, with end-around carry).
    let csum = u16::from_be_bytes([hdr[10], hdr[11]]);
    let new = fold(u32::from(csum) + 0x0100);
    hdr[10..12].copy_from_slice(&new.to_be_bytes());
    Some(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_key_roundtrip_and_group_bit() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let key = mac_key(&mac);
        assert_eq!(key, 0x0211_2233_4455);
        assert_eq!(mac_from_key(key).0, mac);
        assert!(!is_group_mac(key));
        assert!(is_group_mac(mac_key(&[0xff; 6])));
        assert!(is_group_mac(mac_key(&[0x01, 0x00, 0x5e, 0, 0, 1])));
        assert!(is_group_mac(mac_key(&[0x33, 0x33, 0, 0, 0, 1])));
    }

    #[test]
    fn ethernet_fast_rejects_short_frames() {
        assert_eq!(ethernet_fast(&[0u8; 13]), None);
        let mut f = [0u8; 14];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            ethernet_fast(&f),
            Some((0xffff_ffff_ffff, 0x0200_0000_0001, 0x0806))
        );
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        // A real IPv4 header (ping 10.244.1.10 -> 10.244.1.11, TTL 64).
        let mut hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 244, 1, 10,
            10, 244, 1, 11,
        ];
        let c = !checksum_sum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum_sum(&hdr), 0xffff);
        for expected in (1..=64u8).rev() {
            assert_eq!(ipv4_decrement_ttl(&mut hdr), Some(expected));
            assert_eq!(
                checksum_sum(&hdr),
                0xffff,
                "checksum broken at ttl {}",
                hdr[8]
            );
        }
        assert_eq!(ipv4_decrement_ttl(&mut hdr), Some(0));
        assert_eq!(hdr[8], 0);
        assert_eq!(ipv4_decrement_ttl(&mut [0u8; 19]), None);
    }

    #[test]
    fn checksum_matches_rfc1071_reference_at_every_length() {
        // RFC 1071's definition: big-endian 16-bit words, an odd byte padded with zero.
        fn reference(data: &[u8]) -> u16 {
            let mut sum: u64 = data
                .chunks(2)
                .map(|c| u64::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            sum as u16
        }
        let mut x: u32 = 0x1234_5678;
        let data: Vec<u8> = (0..3000)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect();
        for len in 0..300 {
            assert_eq!(
                checksum_sum(&data[..len]),
                reference(&data[..len]),
                "len {len}"
            );
        }
        for len in [1400, 1401, 1448, 2999, 3000] {
            assert_eq!(
                checksum_sum(&data[..len]),
                reference(&data[..len]),
                "len {len}"
            );
        }
        let ones = [0xffu8; 1500];
        assert_eq!(checksum_sum(&ones), reference(&ones));
        assert_eq!(checksum_sum(&[0u8; 64]), 0);
    }

    #[test]
    fn header_check_agrees_with_the_general_sum() {
        let mut x: u32 = 7;
        for len in [20usize, 24, 60] {
            for _ in 0..2000 {
                let mut hdr: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (x >> 24) as u8
                    })
                    .collect();
                assert_eq!(ipv4_header_checksum_ok(&hdr), checksum_sum(&hdr) == 0xffff);
                hdr[10..12].fill(0);
                let c = !checksum_sum(&hdr);
                hdr[10..12].copy_from_slice(&c.to_be_bytes());
                assert!(ipv4_header_checksum_ok(&hdr), "len {len}");
                hdr[3] ^= 1;
                assert!(!ipv4_header_checksum_ok(&hdr), "len {len}: corruption seen");
            }
        }
    }

    #[test]
    fn checksum_odd_length() {
        assert_eq!(checksum_sum(&[0x01]), 0x0100);
        assert_eq!(checksum_sum(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
    }
}
