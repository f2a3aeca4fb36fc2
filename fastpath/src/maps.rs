//! The map entries, field for field as `bpf/fastpath.h` lays them out (the unit tests below
//! check the sizes against the header's). Addresses are stored in network byte order (`ip` is
//! the address's octets read as a native `u32`), MACs as on the wire.

// `unsafe` is denied crate-wide and allowed in this file only: `aya::Pod` is an unsafe trait.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;

/// Pods (stats slots) one node's fast path holds (`PS_MAX_PODS`).
pub const MAX_PODS: u32 = 4096;

/// `ps_port.flags` / `ps_pod.flags`: the pod is withdrawn; everything goes through the switch.
pub(crate) const F_SLOW: u32 = 1;

/// An IPv4 address as the program compares it: its octets in memory order.
pub(crate) fn ip_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// Peers (stats slots) one node's fast path holds (`PS_MAX_PEERS`).
pub const MAX_PEERS: u32 = 1024;

/// `struct ps_node`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NodeEntry {
    pub(crate) router_mac: [u8; 6],
    /// Network order.
    pub(crate) vxlan_port: u16,
    pub(crate) underlay_ip: u32,
    pub(crate) underlay_ifindex: u32,
    pub(crate) vni: u32,
    pub(crate) port_min: u16,
    pub(crate) port_max: u16,
}

/// `struct ps_peer`, in `routes` and `peers`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PeerEntry {
    pub(crate) vtep_mac: [u8; 6],
    pub(crate) slot: u16,
    pub(crate) underlay_ip: u32,
}

/// `struct ps_peer_stats`: what the fast path carried to and from one peer, summed over CPUs
/// when read.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Packets encapsulated to the peer.
    pub tx_packets: u64,
    /// Their bytes (the inner frames).
    pub tx_bytes: u64,
    /// Packets from the peer decapsulated into pods.
    pub rx_packets: u64,
    /// Their bytes (the inner frames).
    pub rx_bytes: u64,
}

/// `struct ps_port`, keyed by the pod's host-side veth ifindex.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PortEntry {
    pub(crate) mac: [u8; 6],
    pub(crate) slot: u16,
    pub(crate) ip: u32,
    pub(crate) upcall_ifindex: u32,
    pub(crate) flags: u32,
}

/// `struct ps_pod`, keyed by the pod's address.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PodEntry {
    pub(crate) mac: [u8; 6],
    pub(crate) slot: u16,
    pub(crate) ifindex: u32,
    pub(crate) flags: u32,
}

/// `struct ps_downcall`, keyed by the upcall device's ifindex.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DowncallEntry {
    pub(crate) ifindex: u32,
    pub(crate) slot: u32,
}

/// `struct ps_endpoint`: a Service backend (address, port in network order, IP protocol).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EndpointKey {
    pub(crate) ip: u32,
    pub(crate) port: u16,
    pub(crate) proto: u8,
    pub(crate) pad: u8,
}

/// `struct ps_stats`: one pod's packets the fast path forwarded, summed over CPUs when read.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodStats {
    /// Packets from the pod the program forwarded (never seen by the switch).
    pub from_pod_packets: u64,
    /// Their bytes (Ethernet frames; a GSO superframe counts once, whole).
    pub from_pod_bytes: u64,
    /// Packets the program delivered into the pod.
    pub to_pod_packets: u64,
    /// Their bytes.
    pub to_pod_bytes: u64,
}

impl std::ops::AddAssign for PodStats {
    fn add_assign(&mut self, o: Self) {
        self.from_pod_packets += o.from_pod_packets;
        self.from_pod_bytes += o.from_pod_bytes;
        self.to_pod_packets += o.to_pod_packets;
        self.to_pod_bytes += o.to_pod_bytes;
    }
}

/// `struct ps_flow_key`: a packet's addresses, ports (network order) and protocol, as the
/// program looks a compiled Service flow up.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct FlowKeyEntry {
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) proto: u8,
    pub(crate) pad: [u8; 3],
}

/// `ps_flow.seen`: the entry has carried a packet.
pub(crate) const SEEN_PACKET: u32 = 1;
/// `ps_flow.seen`: ... a TCP ACK.
pub(crate) const SEEN_ACK: u32 = 2;
/// `ps_flow.seen`: ... a TCP FIN.
pub(crate) const SEEN_FIN: u32 = 4;
/// `ps_flow.seen`: ... a TCP SYN (the backend's SYN-ACK).
pub(crate) const SEEN_SYN: u32 = 8;
/// `ps_flow.flags`: the backend's direction.
pub(crate) const FLOW_REPLY: u32 = 1;

/// Entries `flows` holds (`PS_MAX_FLOWS`): two per flow.
pub const MAX_FLOW_ENTRIES: u32 = 131_072;

/// `struct ps_flow`: what a compiled flow's packets are rewritten to (network order), and
/// what the program records of them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FlowEntry {
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) epoch: u32,
    pub(crate) flags: u32,
    pub(crate) pad: u32,
    pub(crate) seen: u64,
    pub(crate) last_ns: u64,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
}

/// `struct ps_flow_event`, read from the `flow_events` ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FlowEventEntry {
    pub(crate) key: FlowKeyEntry,
    pub(crate) epoch: u32,
    pub(crate) flags: u32,
    pub(crate) seen: u32,
    pub(crate) pad: u32,
}

// SAFETY: each type is `repr(C)`, `Copy`, made only of integers and byte arrays, with no padding
// (the fields are laid out to need none: see the size tests), so any bit pattern is a valid
// value and the kernel may read and write them as plain bytes.
unsafe impl aya::Pod for NodeEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for PortEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for PodEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for DowncallEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for PodStats {}
// SAFETY: as above.
unsafe impl aya::Pod for EndpointKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerStats {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowKeyEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowEntry {}

/// Indexes of the `paths` counters (`enum ps_path`): what happened to each packet the programs
/// saw, in that order.
pub(crate) const PATHS: [&str; 20] = [
    "local",
    "up_not_ipv4",
    "up_spoofed",
    "up_malformed",
    "up_miss",
    "up_ttl",
    "up_withdrawn",
    "down",
    "drop_unknown_device",
    "up_fragment",
    "up_service",
    "encap",
    "up_tunnel",
    "decap",
    "underlay_pass",
    "up_icmp",
    "up_flow_control",
    "translated",
    "event_lost",
    "drop_translation",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes `bpf/fastpath.h` gives these structs (no padding anywhere).
    #[test]
    fn entries_have_the_header_layout() {
        assert_eq!(std::mem::size_of::<NodeEntry>(), 24);
        assert_eq!(std::mem::size_of::<PeerEntry>(), 12);
        assert_eq!(std::mem::size_of::<PeerStats>(), 32);
        assert_eq!(std::mem::size_of::<PortEntry>(), 20);
        assert_eq!(std::mem::size_of::<PodEntry>(), 16);
        assert_eq!(std::mem::size_of::<DowncallEntry>(), 8);
        assert_eq!(std::mem::size_of::<PodStats>(), 32);
        assert_eq!(std::mem::size_of::<EndpointKey>(), 8);
        assert_eq!(std::mem::offset_of!(PortEntry, ip), 8);
        assert_eq!(std::mem::offset_of!(PodEntry, ifindex), 8);
        assert_eq!(std::mem::size_of::<FlowKeyEntry>(), 16);
        assert_eq!(std::mem::size_of::<FlowEntry>(), 56);
        assert_eq!(std::mem::offset_of!(FlowEntry, seen), 24);
        assert_eq!(std::mem::size_of::<FlowEventEntry>(), 32);
    }

    #[test]
    fn path_names_follow_the_header_enum() {
        let header = include_str!("../bpf/fastpath.h");
        for (i, name) in PATHS.iter().enumerate() {
            let c = format!("PS_PATH_{} = {i},", name.to_uppercase());
            assert!(header.contains(&c), "fastpath.h lacks `{c}`");
        }
        assert!(header.contains(&format!("PS_PATH_COUNT = {},", PATHS.len())));
        assert!(header.contains(&format!("#define PS_MAX_PODS {MAX_PODS}")));
        assert!(header.contains(&format!("#define PS_MAX_PEERS {MAX_PEERS}")));
        assert!(header.contains(&format!("#define PS_MAX_FLOWS {MAX_FLOW_ENTRIES}")));
        for (name, v) in [
            ("PS_SEEN_PACKET", SEEN_PACKET),
            ("PS_SEEN_ACK", SEEN_ACK),
            ("PS_SEEN_FIN", SEEN_FIN),
            ("PS_SEEN_SYN", SEEN_SYN),
            ("PS_FLOW_REPLY", FLOW_REPLY),
        ] {
            assert!(header.contains(&format!("#define {name} {v}u")), "{name}");
        }
    }

    #[test]
    fn addresses_are_keyed_in_wire_order() {
        let k = ip_key(Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(k.to_ne_bytes(), [10, 244, 1, 2]);
    }
}
