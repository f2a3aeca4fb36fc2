//! Zero-copy, checked views of the headers the switch reads and writes, one file per header.
//!
//! Each view follows smoltcp's shape: a `field` module names the byte ranges, `new_checked`
//! validates the buffer's lengths once, and the accessors and setters after it cannot panic.
//! This is the only module that reads or writes a header field by byte offset; the pipeline,
//! the GSO/GRO path (`gso`) and the tunnel's flow hash all go through these views.
//! Every protocol constant (header lengths, EtherTypes, IP protocol numbers, TCP flags,
//! fragment bits) is defined here once.
//!
//! - [`ethernet`]: Ethernet II (and the `u64` MAC keys of the forwarding tables);
//! - [`arp`]: ARP for Ethernet/IPv4;
//! - `ipv4`: IPv4 (the one IPv4 parser, header checksum writer and TTL decrement);
//! - `tcp`, `udp`, `icmp`: the L4 headers the switch segments, merges or answers;
//! - [`vxlan`]: the VXLAN header (RFC 7348) and the outer source-port flow hash;
//! - [`virtio`]: the virtio-net header of TAPs opened with `IFF_VNET_HDR`;
//! - `checksum`: the Internet checksum (RFC 1071), vectorised.
//!
//! Invariant: no function in this module panics on any input.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod nat;
pub mod tcp;
pub mod udp;
pub mod virtio;
pub mod vxlan;

/// A MAC address: smoltcp's type, shared with the smoltcp pods of `podstack`.
pub use smoltcp::wire::EthernetAddress;

pub use checksum::checksum_sum;
pub use ethernet::mac_key;
pub use ethernet::{is_group_mac, mac_from_key};

/// Why a view refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer ends before the header (or the length it declares).
    #[error("truncated header")]
    Truncated,
    /// A field holds a value the header cannot have (version, header length below minimum,
    /// total length shorter than the header).
    #[error("malformed header")]
    Malformed,
}
