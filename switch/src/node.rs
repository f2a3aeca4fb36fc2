//! A node: the switch plus real pods (network namespaces with a TAP `eth0`), as the daemon runs
//! it. (Being written: the API below is what the control plane uses.)

use std::net::Ipv4Addr;

use crate::pipeline::PortCounts;
use crate::table::PortId;
use crate::wire::EthernetAddress;

/// A pod as `podswitch pod list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodStatus {
    /// Pod name.
    pub name: String,
    /// Network namespace name (`/run/netns/<netns>`).
    pub netns: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Prefix length of the pod address (the node CIDR's).
    pub prefix_len: u8,
    /// Pod MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Switch port.
    pub port: PortId,
    /// True if the switch created the namespace (and removes it with the pod).
    pub created_netns: bool,
    /// Port counters.
    pub counters: Counters,
}

/// Port counters, serialisable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Frames received from the pod.
    pub rx_frames: u64,
    /// Bytes received from the pod.
    pub rx_bytes: u64,
    /// Received frames dropped.
    pub rx_dropped: u64,
    /// Frames sent to the pod.
    pub tx_frames: u64,
    /// Bytes sent to the pod.
    pub tx_bytes: u64,
    /// Frames for the pod dropped at egress.
    pub tx_dropped: u64,
}

impl From<PortCounts> for Counters {
    fn from(c: PortCounts) -> Self {
        Self {
            rx_frames: c.rx_frames,
            rx_bytes: c.rx_bytes,
            rx_dropped: c.rx_dropped,
            tx_frames: c.tx_frames,
            tx_bytes: c.tx_bytes,
            tx_dropped: c.tx_dropped,
        }
    }
}

/// One MAC table entry as `podswitch fdb` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FdbEntry {
    /// MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Port id.
    pub port: PortId,
    /// Name of the port (pod name), if the port is still attached.
    pub port_name: Option<String>,
    /// Static (pod identity) or learned.
    pub is_static: bool,
    /// Seconds since the MAC was last seen as a source.
    pub age_secs: u32,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff` (smoltcp's Display uses dashes).
pub fn format_mac(mac: EthernetAddress) -> String {
    let b = mac.0;
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
}
