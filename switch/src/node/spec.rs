//! What a node, a pod and a peer are, and every rule about them: one type per concept, used by
//! the config file, the CLI, the control protocol and the running [`Node`](super::Node).
//!
//! - [`NodeSpec`]: the node's settings (the file's `[node]` table).
//! - [`PodSpec`]: a pod (a `[[pods]]` entry, `podswitch pod add`, `Request::PodAdd`).
//! - [`PeerSpec`]: another node (a `[[peers]]` entry, `podswitch peer add`,
//!   `Request::PeerAdd`).
//!
//! The rules ([`NodeSpec::validate`], [`PodSpec::check`], [`PeerSpec::check`]) are the only
//! place where a node, pod or peer is refused, so the file and the runtime refuse the same
//! things with the same reason; only the field's location differs (`pods[1].ip` in the file,
//! `pod.ip` at runtime). Derived values (gateway, router MAC, pod MAC, VTEP MAC, pod MTU,
//! control socket, CPUs) are computed here too, and compiled into the data plane's forms
//! ([`NodeConfig`], [`SwitchConfig`], [`Peer`], [`PortInfo`]).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::pipeline::NodeConfig;
use crate::switch::SwitchConfig;
use crate::table::{MacTableConfig, Peer, PortInfo, PortKind};
use crate::wire::EthernetAddress;

/// Default underlay MTU.
pub const DEFAULT_UNDERLAY_MTU: u16 = 1500;
/// What VXLAN over IPv4 adds to an inner IP packet on the underlay: the inner Ethernet header,
/// VXLAN, UDP and outer IPv4 headers (14 + 8 + 8 + 20).
pub const VXLAN_OVERHEAD: u16 = 50;
/// Smallest MTU IPv4 allows (RFC 791).
pub const MIN_MTU: u16 = 68;
/// Largest pod MTU accepted.
pub const MAX_MTU: u16 = 65521;
/// Default VXLAN UDP destination port (Linux and flannel; IANA's is 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = 0xFF_FFFF;
/// Most data-plane threads (a TAP has at most 256 queues; more threads than cores only
/// compete).
pub const MAX_WORKERS: usize = 64;
/// Directory of the default control socket, `<dir>/<node name>.sock`.
pub const CONTROL_DIR: &str = "/run/podswitch";
/// Longest node or peer name.
const MAX_NODE_NAME: usize = 63;
/// Longest pod name (a DNS subdomain, as Kubernetes pod names).
const MAX_POD_NAME: usize = 253;
/// Longest network namespace name (a file name in `/run/netns`).
const MAX_NETNS_NAME: usize = 255;
/// Longest Unix socket path (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A broken rule: the field (`node.mtu`, `pods[1].ip`, `pod.ip`, `peer.name`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// Where the field is.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A MAC address, written and parsed as `aa:bb:cc:dd:ee:ff` (`-` accepted as separator).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a MAC address (expected six hex pairs like 02:42:0a:f4:01:0a)")]
pub struct MacParseError {
    input: String,
}

impl FromStr for Mac {
    type Err = MacParseError;

    /// `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`: hex digits of either case, exactly two per
    /// octet, one separator used throughout. Anything else is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError { input: s.into() };
        let bytes = s.as_bytes();
        if bytes.len() != 17 || !matches!(bytes[2], b':' | b'-') {
            return Err(err());
        }
        let sep = bytes[2];
        let mut mac = [0u8; 6];
        for (i, octet) in mac.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && bytes[at - 1] != sep {
                return Err(err());
            }
            let pair = std::str::from_utf8(&bytes[at..at + 2]).map_err(|_| err())?;
            if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *octet = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl From<Mac> for EthernetAddress {
    fn from(m: Mac) -> Self {
        EthernetAddress(m.0)
    }
}

impl From<EthernetAddress> for Mac {
    fn from(m: EthernetAddress) -> Self {
        Mac(m.0)
    }
}

/// FNV-1a, 32 bits (offset basis 0x811c9dc5, prime 0x01000193): stable across builds and
/// platforms, so every node derives the same MAC from the same name.
fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The router (and VTEP) MAC of a node that does not configure one: `02:ee` followed by the
/// FNV-1a 32-bit hash of the node name, big-endian. Locally administered, unicast.
pub fn derived_router_mac(node_name: &str) -> Mac {
    let h = fnv1a32(node_name.as_bytes()).to_be_bytes();
    Mac([0x02, 0xee, h[0], h[1], h[2], h[3]])
}

/// The MAC of a pod that does not configure one: `02:42` followed by the four octets of its IP
/// (as `podstack::PodConfig::derived_mac`). Unique as long as the IPs are.
pub fn derived_pod_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
}

/// A node's settings: the config file's `[node]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name: `[a-zA-Z0-9._-]`, at most 63 characters.
    pub name: String,
    /// The node's pod CIDR (prefix length at most 30, no host bits set).
    pub pod_cidr: Ipv4Net,
    /// Pods' default gateway; see [`NodeSpec::gateway`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Pod MTU; see [`NodeSpec::pod_mtu`] (default: `underlay_mtu` minus VXLAN's 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// MTU of the underlay network the tunnel crosses.
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u16,
    /// Network namespace the switch itself runs in (its "host" namespace: where the underlay
    /// address lives and the TAPs are made before they move into pods). Default: the one it is
    /// started in. `podswitch lab` uses this to run several nodes on one machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Control socket path; see [`NodeSpec::control_path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
    /// Router MAC; see [`NodeSpec::router_mac`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_mac: Option<Mac>,
    /// Most learned MAC table entries.
    #[serde(default = "default_mac_table_size")]
    pub mac_table_size: usize,
    /// Seconds a learned MAC lives without being seen.
    #[serde(default = "default_mac_ageing_secs")]
    pub mac_ageing_secs: u64,
    /// Data-plane threads, 1 to [`MAX_WORKERS`]. Each pod's TAP gets one queue per worker
    /// (`IFF_MULTI_QUEUE`); the kernel spreads a pod's flows over the queues.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// CPUs the workers are pinned to (worker `k` on `cpus[k % len]`); see
    /// [`NodeSpec::dataplane_cpus`] for the default. `[]`: not pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<usize>>,
    /// This node's underlay (VXLAN) address. Required when peers are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<Ipv4Addr>,
    /// VXLAN UDP destination port.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// VXLAN network identifier of the cluster (24 bits).
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// VTEP MAC. The router MAC is the VTEP MAC, so this is another name for `router_mac`:
    /// giving both with different values is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<Mac>,
}

fn default_underlay_mtu() -> u16 {
    DEFAULT_UNDERLAY_MTU
}
fn default_workers() -> usize {
    1
}
fn default_mac_table_size() -> usize {
    MacTableConfig::default().capacity
}
fn default_mac_ageing_secs() -> u64 {
    MacTableConfig::default().ageing.as_secs()
}
fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}
fn default_vni() -> u32 {
    1
}

/// A pod: a `[[pods]]` entry, or a runtime `pod add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    /// Pod name: letters, digits, '.', '_', '-', at most 253 characters.
    #[arg(long)]
    pub name: String,
    /// Network namespace (/run/netns/NAME): created if absent, adopted if present.
    #[arg(long)]
    pub netns: String,
    /// Pod IP, inside the node's pod CIDR.
    #[arg(long)]
    pub ip: Ipv4Addr,
    /// Pod MAC (default: 02:42 + the IP's octets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub mac: Option<Mac>,
}

/// Another node and the pod CIDR it owns: a `[[peers]]` entry, or a runtime `peer add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// Peer node name (same rules as node.name).
    #[arg(long)]
    pub name: String,
    /// Its underlay (tunnel endpoint) address.
    #[arg(long)]
    pub underlay: Ipv4Addr,
    /// The pod CIDR it owns; must not overlap this node's or another peer's.
    #[arg(long)]
    pub pod_cidr: Ipv4Net,
    /// Its VTEP MAC (default: derived from its name, as a podswitch node does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub vtep_mac: Option<Mac>,
}

/// An integer setting's allowed range, and why; used by [`NodeSpec::validate`] and to explain
/// numbers the file's types cannot even hold (`mtu = 70000`).
struct Range {
    field: &'static str,
    min: i128,
    max: i128,
    why: &'static str,
}

const RANGES: &[Range] = &[
    Range {
        field: "node.mtu",
        min: MIN_MTU as i128,
        max: MAX_MTU as i128,
        why: "the IPv4 minimum to the largest pod MTU",
    },
    Range {
        field: "node.underlay_mtu",
        min: (MIN_MTU + VXLAN_OVERHEAD) as i128,
        max: u16::MAX as i128,
        why: "room for the IPv4 minimum 68 after VXLAN's 50 bytes",
    },
    Range {
        field: "node.workers",
        min: 1,
        max: MAX_WORKERS as i128,
        why: "data-plane threads",
    },
    Range {
        field: "node.mac_table_size",
        min: 1,
        max: u32::MAX as i128,
        why: "MAC table entries",
    },
    Range {
        field: "node.mac_ageing_secs",
        min: 1,
        max: u32::MAX as i128,
        why: "seconds",
    },
    Range {
        field: "node.vxlan_port",
        min: 1,
        max: u16::MAX as i128,
        why: "a UDP port",
    },
    Range {
        field: "node.vni",
        min: 0,
        max: MAX_VNI as i128,
        why: "VXLAN's 24 bits",
    },
    Range {
        field: "node.cpus",
        min: 0,
        max: 1023,
        why: "CPU numbers",
    },
];

/// Checks `value` against the range of `field` (`node.mtu`; `node.cpus[2]` uses `node.cpus`'s).
/// Fields without a range pass.
pub(crate) fn check_range(field: &str, value: i128) -> Result<(), SpecError> {
    let base = field.split('[').next().unwrap_or(field);
    match RANGES.iter().find(|r| r.field == base) {
        Some(r) if !(r.min..=r.max).contains(&value) => Err(SpecError::new(
            field,
            format!("{value} is not between {} and {} ({})", r.min, r.max, r.why),
        )),
        _ => Ok(()),
    }
}

impl NodeSpec {
    /// A node called `name` owning `pod_cidr`, every other setting at its default.
    pub fn new(name: impl Into<String>, pod_cidr: Ipv4Net) -> Self {
        Self {
            name: name.into(),
            pod_cidr,
            gateway: None,
            mtu: None,
            underlay_mtu: DEFAULT_UNDERLAY_MTU,
            netns: None,
            control: None,
            router_mac: None,
            mac_table_size: default_mac_table_size(),
            mac_ageing_secs: default_mac_ageing_secs(),
            workers: default_workers(),
            cpus: None,
            underlay: None,
            vxlan_port: DEFAULT_VXLAN_PORT,
            vni: default_vni(),
            vtep_mac: None,
        }
    }

    /// The pods' gateway: `gateway` if given, else the first host address of `pod_cidr`
    /// (network + 1).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(self.pod_cidr.network()).wrapping_add(1)))
    }

    /// The router MAC (also the VTEP MAC): `router_mac`, else `vtep_mac`, else
    /// [`derived_router_mac`] of the node name.
    pub fn router_mac(&self) -> Mac {
        self.router_mac
            .or(self.vtep_mac)
            .unwrap_or_else(|| derived_router_mac(&self.name))
    }

    /// The control socket: `control` if given, else `/run/podswitch/<name>.sock`.
    pub fn control_path(&self) -> PathBuf {
        match &self.control {
            Some(p) => p.clone(),
            None => Path::new(CONTROL_DIR).join(format!("{}.sock", self.name)),
        }
    }

    /// Pod MTU: explicit, or the underlay MTU minus VXLAN's overhead, so that every pod packet
    /// fits the tunnel.
    pub fn pod_mtu(&self) -> u16 {
        self.mtu.unwrap_or_else(|| self.tunnel_mtu())
    }

    /// Largest inner IPv4 packet the tunnel carries without fragmenting the underlay.
    pub fn tunnel_mtu(&self) -> u16 {
        self.underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
    }

    /// Where the VXLAN tunnel listens (`underlay:vxlan_port`); `None`: a node without peers.
    pub fn tunnel_addr(&self) -> Option<SocketAddrV4> {
        self.underlay
            .map(|ip| SocketAddrV4::new(ip, self.vxlan_port))
    }

    /// The CPUs to pin the workers to, given the CPUs this process may run on: `cpus` if given
    /// (each must be allowed: a worker cannot run elsewhere), else the last `workers` allowed
    /// CPUs (the first ones usually take the machine's interrupts), reused round-robin when
    /// there are fewer. Empty: not pinned.
    pub fn dataplane_cpus(&self, allowed: &[usize]) -> Result<Vec<usize>, SpecError> {
        match &self.cpus {
            Some(cpus) => {
                if let Some(cpu) = cpus.iter().find(|c| !allowed.contains(c)) {
                    return Err(SpecError::new(
                        "node.cpus",
                        format!(
                            "CPU {cpu} is not one this process may run on (allowed: {})",
                            cpu_list(allowed)
                        ),
                    ));
                }
                Ok(cpus.clone())
            }
            None => {
                let n = self.workers.min(allowed.len());
                Ok(allowed[allowed.len() - n..].to_vec())
            }
        }
    }

    /// The data-plane settings: CIDR, gateway, router MAC, VNI, pod and tunnel MTU.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            cidr: self.pod_cidr,
            gateway: self.gateway(),
            router_mac: self.router_mac().into(),
            vni: self.vni,
            mtu: self.pod_mtu(),
            tunnel_mtu: self.tunnel_mtu(),
        }
    }

    /// The MAC table settings.
    pub fn mac_table_config(&self) -> MacTableConfig {
        MacTableConfig {
            capacity: self.mac_table_size,
            ageing: Duration::from_secs(self.mac_ageing_secs),
        }
    }

    /// The switch's settings on a machine whose process may run on `allowed` CPUs.
    pub fn switch_config(&self, allowed: &[usize]) -> Result<SwitchConfig, SpecError> {
        Ok(SwitchConfig {
            node: self.node_config(),
            mac: self.mac_table_config(),
            workers: self.workers,
            cpus: self.dataplane_cpus(allowed)?,
        })
    }

    /// Checks the node's own rules (fields are named `node.*`).
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("node.name", &self.name, MAX_NODE_NAME)?;
        check_cidr("node.pod_cidr", self.pod_cidr)?;
        if self.pod_cidr.prefix_len() > 30 {
            return Err(SpecError::new(
                "node.pod_cidr",
                format!(
                    "{} has no room for a gateway and pods (the prefix length must be at most 30)",
                    self.pod_cidr
                ),
            ));
        }
        if let Some(gw) = self.gateway {
            check_host_address("node.gateway", gw, self.pod_cidr)?;
        }
        check_range("node.underlay_mtu", self.underlay_mtu.into())?;
        check_range("node.mtu", self.pod_mtu().into())?;
        if let Some(ns) = &self.netns {
            check_netns("node.netns", ns)?;
        }
        let control = self.control_path();
        let len = control.as_os_str().len();
        if len == 0 {
            return Err(SpecError::new("node.control", "is empty"));
        }
        if len > MAX_SOCKET_PATH {
            return Err(SpecError::new(
                "node.control",
                format!(
                    "{} is {len} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket path can have",
                    control.display()
                ),
            ));
        }
        if let Some(mac) = self.router_mac {
            check_unicast_mac("node.router_mac", mac)?;
        }
        if let Some(mac) = self.vtep_mac {
            check_unicast_mac("node.vtep_mac", mac)?;
            if let Some(router) = self.router_mac.filter(|r| *r != mac) {
                return Err(SpecError::new(
                    "node.vtep_mac",
                    format!("{mac} differs from node.router_mac {router} (the router MAC is the VTEP MAC; give one)"),
                ));
            }
        }
        check_range("node.mac_table_size", self.mac_table_size as i128)?;
        check_range("node.mac_ageing_secs", self.mac_ageing_secs.into())?;
        check_range("node.workers", self.workers as i128)?;
        for (i, cpu) in self.cpus.iter().flatten().enumerate() {
            check_range(&format!("node.cpus[{i}]"), *cpu as i128)?;
        }
        if let Some(ip) = self.underlay {
            check_unicast_ip("node.underlay", ip)?;
        }
        check_range("node.vxlan_port", self.vxlan_port.into())?;
        check_range("node.vni", self.vni.into())
    }
}

impl PodSpec {
    /// The pod MAC: `mac` if given, else [`derived_pod_mac`] of the IP.
    pub fn mac(&self) -> Mac {
        self.mac.unwrap_or_else(|| derived_pod_mac(self.ip))
    }

    /// The switch port identity of the pod.
    pub fn port_info(&self) -> PortInfo {
        PortInfo {
            name: self.name.clone(),
            kind: PortKind::Pod {
                mac: self.mac().into(),
                ip: self.ip,
            },
        }
    }

    /// Checks the pod against `node` and the pods already there (`others`). Fields are named
    /// `<at>.name`, `<at>.ip`, ... (`at` is `pods[1]` in the file, `pod` at runtime).
    pub fn check<'a>(
        &self,
        node: &NodeSpec,
        others: impl IntoIterator<Item = &'a PodSpec> + Clone,
        at: &str,
    ) -> Result<(), SpecError> {
        let f = |name: &str| format!("{at}.{name}");
        let others = || others.clone().into_iter();
        check_name(&f("name"), &self.name, MAX_POD_NAME)?;
        if others().any(|o| o.name == self.name) {
            return Err(SpecError::new(
                f("name"),
                format!("{:?} is already the name of another pod", self.name),
            ));
        }
        check_netns(&f("netns"), &self.netns)?;
        if let Some(owner) = others().find(|o| o.netns == self.netns) {
            return Err(SpecError::new(
                f("netns"),
                format!(
                    "namespace {:?} already belongs to pod {:?} (a pod is one namespace: two pods cannot share it)",
                    self.netns, owner.name
                ),
            ));
        }
        let ip = self.ip;
        check_host_address(&f("ip"), ip, node.pod_cidr)?;
        if ip == node.gateway() {
            return Err(SpecError::new(
                f("ip"),
                format!("{ip} is the gateway address"),
            ));
        }
        if let Some(owner) = others().find(|o| o.ip == ip) {
            return Err(SpecError::new(
                f("ip"),
                format!("{ip} is already the address of pod {:?}", owner.name),
            ));
        }
        let mac = self.mac();
        check_unicast_mac(&f("mac"), mac)?;
        if mac == node.router_mac() {
            return Err(SpecError::new(
                f("mac"),
                format!("{mac} is the node's router MAC"),
            ));
        }
        if let Some(owner) = others().find(|o| o.mac() == mac) {
            return Err(SpecError::new(
                f("mac"),
                format!("{mac} is already the MAC of pod {:?}", owner.name),
            ));
        }
        Ok(())
    }
}

impl PeerSpec {
    /// The peer's VTEP MAC: `vtep_mac` if given, else [`derived_router_mac`] of the peer name
    /// (what a podswitch node of that name uses when it configures no MAC).
    pub fn vtep_mac(&self) -> Mac {
        self.vtep_mac
            .unwrap_or_else(|| derived_router_mac(&self.name))
    }

    /// The data plane's form of the peer; the tunnel uses `node`'s VXLAN port.
    pub fn to_peer(&self, node: &NodeSpec) -> Peer {
        Peer {
            name: self.name.clone(),
            underlay: SocketAddrV4::new(self.underlay, node.vxlan_port),
            pod_cidr: self.pod_cidr,
            vtep_mac: self.vtep_mac().into(),
        }
    }

    /// Checks the peer against `node` and the peers already there (`others`). Fields are
    /// named `<at>.name`, ... (`at` is `peers[1]` in the file, `peer` at runtime); the node's
    /// own fields keep their names (`node.underlay`, `node.mtu`).
    pub fn check<'a>(
        &self,
        node: &NodeSpec,
        others: impl IntoIterator<Item = &'a PeerSpec> + Clone,
        at: &str,
    ) -> Result<(), SpecError> {
        let f = |name: &str| format!("{at}.{name}");
        let others = || others.clone().into_iter();
        let Some(underlay) = node.underlay else {
            return Err(SpecError::new(
                "node.underlay",
                "is required when peers are configured (the address peers send VXLAN to)",
            ));
        };
        if node.pod_mtu() > node.tunnel_mtu() {
            return Err(SpecError::new(
                "node.mtu",
                format!(
                    "{} is above the {} bytes the tunnel to peers carries (node.underlay_mtu {} minus VXLAN's {VXLAN_OVERHEAD}): lower node.mtu or raise node.underlay_mtu",
                    node.pod_mtu(),
                    node.tunnel_mtu(),
                    node.underlay_mtu
                ),
            ));
        }
        check_name(&f("name"), &self.name, MAX_NODE_NAME)?;
        if self.name == node.name {
            return Err(SpecError::new(
                f("name"),
                format!("{:?} is this node's name", self.name),
            ));
        }
        if others().any(|o| o.name == self.name) {
            return Err(SpecError::new(
                f("name"),
                format!("{:?} is already the name of another peer", self.name),
            ));
        }
        check_unicast_ip(&f("underlay"), self.underlay)?;
        if self.underlay == underlay {
            return Err(SpecError::new(
                f("underlay"),
                format!("{} is this node's node.underlay", self.underlay),
            ));
        }
        if let Some(owner) = others().find(|o| o.underlay == self.underlay) {
            return Err(SpecError::new(
                f("underlay"),
                format!(
                    "{} is already the underlay of peer {:?}",
                    self.underlay, owner.name
                ),
            ));
        }
        check_cidr(&f("pod_cidr"), self.pod_cidr)?;
        if overlaps(self.pod_cidr, node.pod_cidr) {
            return Err(SpecError::new(
                f("pod_cidr"),
                format!("{} overlaps node.pod_cidr {}", self.pod_cidr, node.pod_cidr),
            ));
        }
        if let Some(owner) = others().find(|o| overlaps(o.pod_cidr, self.pod_cidr)) {
            return Err(SpecError::new(
                f("pod_cidr"),
                format!(
                    "{} overlaps {}, the pod CIDR of peer {:?}",
                    self.pod_cidr, owner.pod_cidr, owner.name
                ),
            ));
        }
        let mac = self.vtep_mac();
        check_unicast_mac(&f("vtep_mac"), mac)?;
        if mac == node.router_mac() {
            return Err(SpecError::new(
                f("vtep_mac"),
                format!("{mac} is this node's router MAC"),
            ));
        }
        if let Some(owner) = others().find(|o| o.vtep_mac() == mac) {
            return Err(SpecError::new(
                f("vtep_mac"),
                format!("{mac} is already the VTEP MAC of peer {:?}", owner.name),
            ));
        }
        Ok(())
    }
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `1, 3-5, 7`: a CPU list as the kernel writes one.
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

/// Node, peer and pod names: non-empty, `[a-zA-Z0-9._-]`, at most `max` characters.
fn check_name(field: &str, name: &str, max: usize) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(SpecError::new(
            field,
            format!("{name:?} contains {c:?} (allowed: letters, digits, '.', '_', '-')"),
        ));
    }
    if name.len() > max {
        return Err(SpecError::new(
            field,
            format!("{name:?} is {} characters long (at most {max})", name.len()),
        ));
    }
    Ok(())
}

/// Namespace names: a file name in `/run/netns`.
fn check_netns(field: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    if name == "." || name == ".." {
        return Err(SpecError::new(
            field,
            format!("{name:?} is not a namespace name (it names a directory)"),
        ));
    }
    if let Some(c) = name.chars().find(|c| *c == '/' || *c == '\0') {
        return Err(SpecError::new(
            field,
            format!("{name:?} contains {c:?} (a namespace name is a file name in /run/netns)"),
        ));
    }
    if name.len() > MAX_NETNS_NAME {
        return Err(SpecError::new(
            field,
            format!(
                "{} bytes is longer than a file name can be ({MAX_NETNS_NAME})",
                name.len()
            ),
        ));
    }
    Ok(())
}

fn check_cidr(field: &str, cidr: Ipv4Net) -> Result<(), SpecError> {
    if cidr.addr() != cidr.network() {
        return Err(SpecError::new(
            field,
            format!("{cidr} has host bits set (did you mean {}?)", cidr.trunc()),
        ));
    }
    Ok(())
}

/// An address of `cidr` usable by a host: inside it, neither its network nor its broadcast
/// address.
fn check_host_address(field: &str, ip: Ipv4Addr, cidr: Ipv4Net) -> Result<(), SpecError> {
    let which = if !cidr.contains(&ip) {
        return Err(SpecError::new(
            field,
            format!("{ip} is outside node.pod_cidr {cidr}"),
        ));
    } else if ip == cidr.network() {
        "network"
    } else if ip == cidr.broadcast() {
        "broadcast"
    } else {
        return Ok(());
    };
    Err(SpecError::new(
        field,
        format!("{ip} is the {which} address of node.pod_cidr {cidr}"),
    ))
}

fn check_unicast_mac(field: &str, mac: Mac) -> Result<(), SpecError> {
    if mac.0 == [0; 6] {
        return Err(SpecError::new(
            field,
            "00:00:00:00:00:00 is not a usable MAC",
        ));
    }
    if mac.0[0] & 1 != 0 {
        return Err(SpecError::new(
            field,
            format!("{mac} is a group (multicast or broadcast) MAC; a unicast MAC has the low bit of the first octet clear"),
        ));
    }
    Ok(())
}

fn check_unicast_ip(field: &str, ip: Ipv4Addr) -> Result<(), SpecError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(SpecError::new(
            field,
            format!("{ip} is not a unicast address"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_router_mac_is_fnv1a_of_the_name() {
        // FNV-1a 32 of "" is the offset basis; of "a" is 0xe40c292c (published test vectors).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(
            derived_router_mac("a"),
            Mac([0x02, 0xee, 0xe4, 0x0c, 0x29, 0x2c])
        );
        assert_ne!(derived_router_mac("node-a"), derived_router_mac("node-b"));
    }

    #[test]
    fn mac_parses_colons_and_dashes_only_and_prints_colons() {
        let want = Mac([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x0a]);
        assert_eq!("02:42:0a:f4:01:0a".parse::<Mac>().unwrap(), want);
        assert_eq!("02-42-0A-F4-01-0A".parse::<Mac>().unwrap(), want);
        for bad in [
            "",
            "02:42:0a:f4:01",
            "02:42:0a:f4:01:0a:00",
            "02:42:0a-f4:01:0a",
            "02.42.0a.f4.01.0a",
            "0242.0af4.010a",
            "02:42:0a:f4:01:0g",
            "2:42:0a:f4:01:0a0",
            " 02:42:0a:f4:01:0a",
            "02:42:0a:f4:01:+a",
            "02:42:0a:f4:01:é",
        ] {
            let e = bad.parse::<Mac>().unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "{bad:?} is not a MAC address (expected six hex pairs like 02:42:0a:f4:01:0a)"
                )
            );
        }
        assert_eq!(want.to_string(), "02:42:0a:f4:01:0a");
        assert_eq!(format!("{want:?}"), "02:42:0a:f4:01:0a");
        assert_eq!(
            serde_json::to_string(&want).unwrap(),
            "\"02:42:0a:f4:01:0a\""
        );
        assert_eq!(
            serde_json::from_str::<Mac>("\"02-42-0a-f4-01-0a\"").unwrap(),
            want
        );
    }

    #[test]
    fn cpu_lists_are_compact() {
        assert_eq!(cpu_list(&[0, 1]), "0-1");
        assert_eq!(cpu_list(&[0, 2, 3, 4, 7]), "0, 2-4, 7");
        assert_eq!(cpu_list(&[]), "none");
    }

    #[test]
    fn cpus_must_be_ones_the_process_may_run_on() {
        let mut n = NodeSpec::new("n", "10.244.1.0/24".parse().unwrap());
        n.workers = 4;
        assert_eq!(n.dataplane_cpus(&[0, 1, 2, 3, 4, 5]).unwrap(), [2, 3, 4, 5]);
        assert_eq!(n.dataplane_cpus(&[0, 1]).unwrap(), [0, 1]);
        assert!(n.dataplane_cpus(&[]).unwrap().is_empty());
        n.cpus = Some(vec![1, 0]);
        assert_eq!(n.dataplane_cpus(&[0, 1]).unwrap(), [1, 0]);
        n.cpus = Some(vec![]);
        assert!(n.dataplane_cpus(&[0, 1]).unwrap().is_empty());
        n.cpus = Some(vec![99]);
        assert_eq!(
            n.dataplane_cpus(&[0, 1]).unwrap_err().to_string(),
            "node.cpus: CPU 99 is not one this process may run on (allowed: 0-1)"
        );
    }
}
