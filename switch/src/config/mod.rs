//! The node configuration file (TOML), as read by `podswitch run --config FILE`.
//!
//! ```toml
//! [node]
//! name = "node-a"
//! pod_cidr = "10.244.1.0/24"      # required
//! # gateway = "10.244.1.1"        # default: first host address of pod_cidr
//! mtu = 1450                      # pod MTU, default 1450
//! control = "/run/podswitch/node-a.sock"   # default "/run/podswitch/<name>.sock"
//! # router_mac = "02:ee:..."      # default derived from the node name
//! # mac_table_size = 16384
//! # mac_ageing_secs = 300
//! # workers = 1                   # data-plane threads; each pod TAP gets one queue per worker
//! # cpus = [3]                    # pin the workers; default: the last `workers` CPUs; [] = no
//! # underlay = "192.168.77.1"     # this node's VXLAN underlay address (needed with peers)
//! # vxlan_port = 8472             # UDP destination port (Linux and flannel default)
//! # vni = 1
//! # vtep_mac = "02:ee:..."        # same as router_mac: the router MAC is the VTEP MAC
//!
//! [[pods]]
//! name = "web"
//! netns = "web"                   # /run/netns/web; created if absent, adopted if present
//! ip = "10.244.1.10"
//! # mac = "02:42:0a:f4:01:0a"     # default derived from the IP
//!
//! [[peers]]                       # other nodes, reached over VXLAN (not used yet)
//! name = "node-b"
//! underlay = "192.168.77.2"
//! pod_cidr = "10.244.2.0/24"
//! # vtep_mac = "02:ee:..."        # default derived from the peer's name, like router_mac
//! ```
//!
//! Invariants: a [`Config`] returned by [`Config::from_toml_str`] or [`Config::from_file`] has
//! passed [`Config::validate`], so its helpers ([`NodeSection::gateway`],
//! [`NodeSection::node_config`], [`PodSpec::mac`], ...) describe a node the switch accepts:
//! every pod address is a unicast host address of the pod CIDR other than the gateway, and
//! names, namespaces, addresses and MACs are unique. Every [`ConfigError`] names the field it is
//! about (`node.mtu`, `pods[1].ip`, or `pod.ip` for a runtime `pod add`) and the reason.
//!
//! MACs are written `aa:bb:cc:dd:ee:ff` (or with `-`); see [`parse_mac`]. Derived MACs are
//! locally administered unicast addresses: `02:42` + the pod IP's four octets for pods (as
//! `podstack::PodConfig::derived_mac`), and `02:ee` + the FNV-1a 32-bit hash of the node name
//! for router MACs ([`derived_router_mac`]), so a peer's VTEP MAC can be derived from its name.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::pipeline::NodeConfig;
use crate::table::MacTableConfig;
use crate::wire::{format_mac, EthernetAddress};

/// Default pod MTU: a 1500-byte underlay minus VXLAN's 50 bytes.
pub const DEFAULT_MTU: u16 = DEFAULT_UNDERLAY_MTU - VXLAN_OVERHEAD;
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
/// Default VXLAN network identifier.
pub const DEFAULT_VNI: u32 = 1;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = 0xFF_FFFF;
/// Directory of the default control socket, `<dir>/<node name>.sock`.
pub const CONTROL_DIR: &str = "/run/podswitch";
/// Longest node or peer name.
pub const MAX_NODE_NAME: usize = 63;
/// Longest pod name (a DNS subdomain, as Kubernetes pod names).
pub const MAX_POD_NAME: usize = 253;
/// Longest network namespace name (a file name in `/run/netns`).
pub const MAX_NETNS_NAME: usize = 255;
/// Longest Unix socket path (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Example shown in MAC parse errors.
const MAC_EXAMPLE: &str = "02:42:0a:f4:01:0a";

/// Why a configuration was refused. The message always starts with `config error:` and names
/// the field (`node.mtu`, `pods[1].ip`, `pod.mac`) when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config error: cannot read {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What the system said.
        message: String,
    },
    /// A field is missing, unknown, malformed or breaks a rule.
    #[error("config error: {field}: {reason}")]
    Field {
        /// Where the field is: `node.mtu`, `pods[1].ip`, `peers[0].pod_cidr`, `pod.ip`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The text is not TOML (no single field to blame).
    #[error("config error: {}{message}", at_line(*.line_col))]
    Syntax {
        /// Line and column (1-based) of the error, when known.
        line_col: Option<(usize, usize)>,
        /// What the TOML parser said.
        message: String,
    },
}

fn at_line(line_col: Option<(usize, usize)>) -> String {
    match line_col {
        Some((line, col)) => format!("line {line}, column {col}: "),
        None => String::new(),
    }
}

impl ConfigError {
    fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field the error is about, if any.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            ConfigError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a MAC address (expected six hex pairs like {MAC_EXAMPLE})")]
pub struct MacParseError {
    /// The rejected text.
    pub input: String,
}

/// Parses `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff` (hex digits of either case, exactly two
/// per octet, one separator used throughout). Anything else is refused.
pub fn parse_mac(s: &str) -> Result<EthernetAddress, MacParseError> {
    let err = || MacParseError { input: s.into() };
    let bytes = s.as_bytes();
    if bytes.len() != 17 {
        return Err(err());
    }
    let sep = bytes[2];
    if sep != b':' && sep != b'-' {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (i, octet) in mac.iter_mut().enumerate() {
        let at = i * 3;
        if i > 0 && bytes[at - 1] != sep {
            return Err(err());
        }
        let hi = hex_digit(bytes[at]).ok_or_else(err)?;
        let lo = hex_digit(bytes[at + 1]).ok_or_else(err)?;
        *octet = (hi << 4) | lo;
    }
    Ok(EthernetAddress(mac))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
/// FNV-1a, 32 bits (offset basis 0x811c9dc5, prime 0x01000193): stable across builds and
/// platforms, so every node derives the same MAC from the same name.
fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The router (and VTEP) MAC of a node that does not configure one: `02:ee` followed by the
/// FNV-1a 32-bit hash of the node name, big-endian. Locally administered, unicast.
pub fn derived_router_mac(node_name: &str) -> EthernetAddress {
    let h = fnv1a32(node_name.as_bytes()).to_be_bytes();
    EthernetAddress([0x02, 0xee, h[0], h[1], h[2], h[3]])
}

/// The MAC of a pod that does not configure one: `02:42` followed by the four octets of its IP
/// (as `podstack::PodConfig::derived_mac`). Unique as long as the IPs are.
pub fn derived_pod_mac(ip: Ipv4Addr) -> EthernetAddress {
    let o = ip.octets();
    EthernetAddress([0x02, 0x42, o[0], o[1], o[2], o[3]])
}

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node.
    pub node: NodeSection,
    /// Pods started with the node, in order.
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// Other nodes, reached over VXLAN.
    #[serde(default)]
    pub peers: Vec<PeerSpec>,
}

/// The `[node]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node name: `[a-zA-Z0-9._-]`, at most 63 characters.
    pub name: String,
    /// The node's pod CIDR (prefix length at most 30, no host bits set).
    #[serde(with = "text")]
    pub pod_cidr: Ipv4Net,
    /// Pods' default gateway; see [`NodeSection::gateway`].
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Pod MTU; see [`NodeSection::pod_mtu`] (default: `underlay_mtu` minus VXLAN's 50).
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
    /// Control socket path; see [`NodeSection::control_path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<PathBuf>,
    /// Router MAC; see [`NodeSection::router_mac`].
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub router_mac: Option<EthernetAddress>,
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
    /// [`NodeSection::dataplane_cpus`] for the default. `[]`: not pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<usize>>,
    /// This node's underlay (VXLAN) address. Required when peers are configured.
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub underlay: Option<Ipv4Addr>,
    /// VXLAN UDP destination port.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// VXLAN network identifier of the cluster (24 bits).
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// VTEP MAC. The router MAC is the VTEP MAC, so this is another name for `router_mac`:
    /// giving both with different values is an error.
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<EthernetAddress>,
}

/// One `[[pods]]` entry, or a runtime `pod add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    /// Pod name: `[a-zA-Z0-9._-]`, at most 253 characters.
    pub name: String,
    /// Network namespace name (`/run/netns/<netns>`): created if absent, adopted if present.
    pub netns: String,
    /// Pod IP, inside the node's pod CIDR.
    #[serde(with = "text")]
    pub ip: Ipv4Addr,
    /// Pod MAC; see [`PodSpec::mac`].
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub mac: Option<EthernetAddress>,
}

/// One `[[peers]]` entry: another node and the pod CIDR it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    /// Peer node name, same rules as `node.name`.
    pub name: String,
    /// The peer's underlay address (VXLAN packets go there).
    #[serde(with = "text")]
    pub underlay: Ipv4Addr,
    /// The pod CIDR the peer owns; must not overlap ours or another peer's.
    #[serde(with = "text")]
    pub pod_cidr: Ipv4Net,
    /// The peer's VTEP MAC; see [`PeerSpec::vtep_mac`].
    #[serde(default, with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<EthernetAddress>,
}

fn default_underlay_mtu() -> u16 {
    DEFAULT_UNDERLAY_MTU
}
/// Most data-plane threads (a TAP has at most 256 queues; more threads than cores only
/// compete).
pub const MAX_WORKERS: usize = 64;

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
    DEFAULT_VNI
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Config::from_toml_str(&text)
    }

    /// Parses and validates a configuration.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| map_toml_error(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule; the first broken one is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node.validate()?;
        for (i, pod) in self.pods.iter().enumerate() {
            check_pod(&self.node, pod, &self.pods[..i], &format!("pods[{i}]"))?;
        }
        if !self.peers.is_empty() && self.node.underlay.is_none() {
            return Err(ConfigError::field(
                "node.underlay",
                "is required when [[peers]] are configured (the address peers send VXLAN to)",
            ));
        }
        for (i, peer) in self.peers.iter().enumerate() {
            check_peer(&self.node, peer, &self.peers[..i], i)?;
        }
        Ok(())
    }
}

impl NodeSection {
    /// The pods' gateway: `gateway` if given, else the first host address of `pod_cidr`.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(self.pod_cidr.network()).wrapping_add(1)))
    }

    /// The router MAC (also the VTEP MAC): `router_mac`, else `vtep_mac`, else
    /// [`derived_router_mac`] of the node name.
    pub fn router_mac(&self) -> EthernetAddress {
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

    /// The CPUs to pin the workers to: `cpus` if given, else the last `workers` CPUs this
    /// process may run on (the first CPUs usually take the machine's interrupts), reused
    /// round-robin when there are fewer. Empty: not pinned.
    pub fn dataplane_cpus(&self, allowed: &[usize]) -> Vec<usize> {
        match &self.cpus {
            Some(cpus) => cpus.clone(),
            None => {
                let n = self.workers.min(allowed.len());
                allowed[allowed.len() - n..].to_vec()
            }
        }
    }

    /// The data-plane settings: CIDR, gateway, router MAC, VNI, and the MTU (also the tunnel
    /// MTU).
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            cidr: self.pod_cidr,
            gateway: self.gateway(),
            router_mac: self.router_mac(),
            vni: self.vni,
            mtu: self.pod_mtu(),
            tunnel_mtu: self.tunnel_mtu(),
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

    /// The MAC table settings.
    pub fn mac_table_config(&self) -> MacTableConfig {
        MacTableConfig {
            capacity: self.mac_table_size,
            ageing: Duration::from_secs(self.mac_ageing_secs),
        }
    }

    /// Checks the `[node]` rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("node.name", &self.name, MAX_NODE_NAME)?;
        check_cidr("node.pod_cidr", self.pod_cidr)?;
        if self.pod_cidr.prefix_len() > 30 {
            return Err(ConfigError::field(
                "node.pod_cidr",
                format!(
                    "{} has no room for a gateway and pods (the prefix length must be at most 30)",
                    self.pod_cidr
                ),
            ));
        }
        if let Some(gw) = self.gateway {
            if !self.pod_cidr.contains(&gw) {
                return Err(ConfigError::field(
                    "node.gateway",
                    format!("{gw} is outside node.pod_cidr {}", self.pod_cidr),
                ));
            }
            if gw == self.pod_cidr.network() || gw == self.pod_cidr.broadcast() {
                let which = if gw == self.pod_cidr.network() {
                    "network"
                } else {
                    "broadcast"
                };
                return Err(ConfigError::field(
                    "node.gateway",
                    format!(
                        "{gw} is the {which} address of node.pod_cidr {}",
                        self.pod_cidr
                    ),
                ));
            }
        }
        if self.underlay_mtu < MIN_MTU + VXLAN_OVERHEAD {
            return Err(ConfigError::field(
                "node.underlay_mtu",
                format!(
                    "{} leaves less than the IPv4 minimum {MIN_MTU} for pods after VXLAN's {VXLAN_OVERHEAD} bytes",
                    self.underlay_mtu
                ),
            ));
        }
        let mtu = self.pod_mtu();
        if mtu < MIN_MTU {
            return Err(ConfigError::field(
                "node.mtu",
                format!("{mtu} is below the IPv4 minimum {MIN_MTU}"),
            ));
        }
        if mtu > MAX_MTU {
            return Err(ConfigError::field(
                "node.mtu",
                format!("{mtu} is above the maximum {MAX_MTU}"),
            ));
        }
        if let Some(ns) = &self.netns {
            if crate::netns::check_name(ns).is_err() {
                return Err(ConfigError::field(
                    "node.netns",
                    format!("{ns:?} is not a usable namespace name"),
                ));
            }
        }
        let control = self.control_path();
        let len = control.as_os_str().len();
        if len == 0 {
            return Err(ConfigError::field("node.control", "is empty"));
        }
        if len > MAX_SOCKET_PATH {
            return Err(ConfigError::field(
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
                return Err(ConfigError::field(
                    "node.vtep_mac",
                    format!(
                        "{} differs from node.router_mac {} (the router MAC is the VTEP MAC; give one)",
                        format_mac(mac),
                        format_mac(router)
                    ),
                ));
            }
        }
        if self.mac_table_size < 1 {
            return Err(ConfigError::field(
                "node.mac_table_size",
                "must be at least 1",
            ));
        }
        if self.mac_ageing_secs < 1 {
            return Err(ConfigError::field(
                "node.mac_ageing_secs",
                "must be at least 1",
            ));
        }
        if let Some(cpu) = self
            .cpus
            .iter()
            .flatten()
            .find(|&&c| c >= nix::sched::CpuSet::count())
        {
            return Err(ConfigError::field(
                "node.cpus",
                format!(
                    "CPU {cpu} is above the largest CPU number {}",
                    nix::sched::CpuSet::count() - 1
                ),
            ));
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(ConfigError::field(
                "node.workers",
                format!("{} is not between 1 and {MAX_WORKERS}", self.workers),
            ));
        }
        if self.mac_ageing_secs > u64::from(u32::MAX) {
            return Err(ConfigError::field(
                "node.mac_ageing_secs",
                format!("{} is above the maximum {}", self.mac_ageing_secs, u32::MAX),
            ));
        }
        if let Some(ip) = self.underlay {
            check_unicast_ip("node.underlay", ip)?;
        }
        if self.vxlan_port == 0 {
            return Err(ConfigError::field("node.vxlan_port", "must not be 0"));
        }
        if self.vni > MAX_VNI {
            return Err(ConfigError::field(
                "node.vni",
                format!("{} is above the 24-bit maximum {MAX_VNI}", self.vni),
            ));
        }
        Ok(())
    }
}

impl PodSpec {
    /// A pod spec from the fields of a runtime `pod add`; a malformed MAC is reported as
    /// `pod.mac`. Call [`validate_pod`] next.
    pub fn new(
        name: impl Into<String>,
        netns: impl Into<String>,
        ip: Ipv4Addr,
        mac: Option<&str>,
    ) -> Result<PodSpec, ConfigError> {
        let mac = match mac {
            Some(s) => {
                Some(parse_mac(s).map_err(|e| ConfigError::field("pod.mac", e.to_string()))?)
            }
            None => None,
        };
        Ok(PodSpec {
            name: name.into(),
            netns: netns.into(),
            ip,
            mac,
        })
    }

    /// The pod MAC: `mac` if given, else [`derived_pod_mac`] of the IP.
    pub fn mac(&self) -> EthernetAddress {
        self.mac.unwrap_or_else(|| derived_pod_mac(self.ip))
    }
}

impl PeerSpec {
    /// The peer's VTEP MAC: `vtep_mac` if given, else [`derived_router_mac`] of the peer name
    /// (what a podswitch node of that name uses when it configures no MAC).
    pub fn vtep_mac(&self) -> EthernetAddress {
        self.vtep_mac
            .unwrap_or_else(|| derived_router_mac(&self.name))
    }
}

/// Checks a pod against the node and the pods already there (`others`), with the rules of the
/// config file; fields are named `pod.name`, `pod.netns`, `pod.ip`, `pod.mac`. Used for a
/// runtime `pod add`.
pub fn validate_pod(
    node: &NodeSection,
    pod: &PodSpec,
    others: &[PodSpec],
) -> Result<(), ConfigError> {
    check_pod(node, pod, others, "pod")
}

fn check_pod(
    node: &NodeSection,
    pod: &PodSpec,
    others: &[PodSpec],
    at: &str,
) -> Result<(), ConfigError> {
    let f = |name: &str| format!("{at}.{name}");
    check_name(&f("name"), &pod.name, MAX_POD_NAME)?;
    if others.iter().any(|o| o.name == pod.name) {
        return Err(ConfigError::field(
            f("name"),
            format!("{:?} is already the name of another pod", pod.name),
        ));
    }
    check_netns(&f("netns"), &pod.netns)?;
    if let Some(owner) = others.iter().find(|o| o.netns == pod.netns) {
        return Err(ConfigError::field(
            f("netns"),
            format!(
                "namespace {:?} already belongs to pod {:?} (a pod is one namespace: two pods cannot share it)",
                pod.netns, owner.name
            ),
        ));
    }
    let cidr = node.pod_cidr;
    let ip = pod.ip;
    if !cidr.contains(&ip) {
        return Err(ConfigError::field(
            f("ip"),
            format!("{ip} is outside node.pod_cidr {cidr}"),
        ));
    }
    if ip == cidr.network() {
        return Err(ConfigError::field(
            f("ip"),
            format!("{ip} is the network address of node.pod_cidr {cidr}"),
        ));
    }
    if ip == cidr.broadcast() {
        return Err(ConfigError::field(
            f("ip"),
            format!("{ip} is the broadcast address of node.pod_cidr {cidr}"),
        ));
    }
    if ip == node.gateway() {
        return Err(ConfigError::field(
            f("ip"),
            format!("{ip} is the gateway address"),
        ));
    }
    if let Some(owner) = others.iter().find(|o| o.ip == ip) {
        return Err(ConfigError::field(
            f("ip"),
            format!("{ip} is already the address of pod {:?}", owner.name),
        ));
    }
    let mac = pod.mac();
    check_unicast_mac(&f("mac"), mac)?;
    if mac == node.router_mac() {
        return Err(ConfigError::field(
            f("mac"),
            format!("{} is the node's router MAC", format_mac(mac)),
        ));
    }
    if let Some(owner) = others.iter().find(|o| o.mac() == mac) {
        return Err(ConfigError::field(
            f("mac"),
            format!(
                "{} is already the MAC of pod {:?}",
                format_mac(mac),
                owner.name
            ),
        ));
    }
    Ok(())
}

fn check_peer(
    node: &NodeSection,
    peer: &PeerSpec,
    others: &[PeerSpec],
    i: usize,
) -> Result<(), ConfigError> {
    let f = |name: &str| format!("peers[{i}].{name}");
    check_name(&f("name"), &peer.name, MAX_NODE_NAME)?;
    if peer.name == node.name {
        return Err(ConfigError::field(
            f("name"),
            format!("{:?} is this node's name", peer.name),
        ));
    }
    if others.iter().any(|o| o.name == peer.name) {
        return Err(ConfigError::field(
            f("name"),
            format!("{:?} is already the name of another peer", peer.name),
        ));
    }
    check_unicast_ip(&f("underlay"), peer.underlay)?;
    if node.underlay == Some(peer.underlay) {
        return Err(ConfigError::field(
            f("underlay"),
            format!("{} is this node's node.underlay", peer.underlay),
        ));
    }
    if let Some(owner) = others.iter().find(|o| o.underlay == peer.underlay) {
        return Err(ConfigError::field(
            f("underlay"),
            format!(
                "{} is already the underlay of peer {:?}",
                peer.underlay, owner.name
            ),
        ));
    }
    check_cidr(&f("pod_cidr"), peer.pod_cidr)?;
    if overlaps(peer.pod_cidr, node.pod_cidr) {
        return Err(ConfigError::field(
            f("pod_cidr"),
            format!("{} overlaps node.pod_cidr {}", peer.pod_cidr, node.pod_cidr),
        ));
    }
    if let Some((j, owner)) = others
        .iter()
        .enumerate()
        .find(|(_, o)| overlaps(o.pod_cidr, peer.pod_cidr))
    {
        return Err(ConfigError::field(
            f("pod_cidr"),
            format!(
                "{} overlaps peers[{j}].pod_cidr {} (peer {:?})",
                peer.pod_cidr, owner.pod_cidr, owner.name
            ),
        ));
    }
    let mac = peer.vtep_mac();
    check_unicast_mac(&f("vtep_mac"), mac)?;
    if mac == node.router_mac() {
        return Err(ConfigError::field(
            f("vtep_mac"),
            format!("{} is this node's router MAC", format_mac(mac)),
        ));
    }
    if let Some(owner) = others.iter().find(|o| o.vtep_mac() == mac) {
        return Err(ConfigError::field(
            f("vtep_mac"),
            format!(
                "{} is already the VTEP MAC of peer {:?}",
                format_mac(mac),
                owner.name
            ),
        ));
    }
    Ok(())
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Node, peer and pod names: non-empty, `[a-zA-Z0-9._-]`, at most `max` characters.
fn check_name(field: &str, name: &str, max: usize) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::field(field, "must not be empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ConfigError::field(
            field,
            format!("{name:?} contains {c:?} (allowed: letters, digits, '.', '_', '-')"),
        ));
    }
    if name.len() > max {
        return Err(ConfigError::field(
            field,
            format!("{name:?} is {} characters long (at most {max})", name.len()),
        ));
    }
    Ok(())
}

/// Namespace names: a file name in `/run/netns`.
fn check_netns(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::field(field, "must not be empty"));
    }
    if name == "." || name == ".." {
        return Err(ConfigError::field(
            field,
            format!("{name:?} is not a namespace name (it names a directory)"),
        ));
    }
    if let Some(c) = name.chars().find(|c| *c == '/' || *c == '\0') {
        return Err(ConfigError::field(
            field,
            format!("{name:?} contains {c:?} (a namespace name is a file name in /run/netns)"),
        ));
    }
    if name.len() > MAX_NETNS_NAME {
        return Err(ConfigError::field(
            field,
            format!(
                "{} bytes is longer than a file name can be ({MAX_NETNS_NAME})",
                name.len()
            ),
        ));
    }
    Ok(())
}

fn check_cidr(field: &str, cidr: Ipv4Net) -> Result<(), ConfigError> {
    if cidr.addr() != cidr.network() {
        return Err(ConfigError::field(
            field,
            format!("{cidr} has host bits set (did you mean {}?)", cidr.trunc()),
        ));
    }
    Ok(())
}

fn check_unicast_mac(field: &str, mac: EthernetAddress) -> Result<(), ConfigError> {
    if mac.0 == [0; 6] {
        return Err(ConfigError::field(
            field,
            "00:00:00:00:00:00 is not a usable MAC",
        ));
    }
    if mac.0[0] & 1 != 0 {
        return Err(ConfigError::field(
            field,
            format!(
                "{} is a group (multicast or broadcast) MAC; a unicast MAC has the low bit of the first octet clear",
                format_mac(mac)
            ),
        ));
    }
    Ok(())
}

fn check_unicast_ip(field: &str, ip: Ipv4Addr) -> Result<(), ConfigError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(ConfigError::field(
            field,
            format!("{ip} is not a unicast address"),
        ));
    }
    Ok(())
}

/// Turns a TOML error into a [`ConfigError`] naming the field, located by the error's span in
/// the document.
fn map_toml_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim().to_string();
    let span = err.span();
    let path = span.as_ref().and_then(|span| {
        let doc = toml::de::DeTable::parse(text).ok()?;
        let mut best = None;
        locate(doc.get_ref(), span, &mut String::new(), &mut best);
        best.map(|(path, _)| path)
    });
    let syntax = |message: String| ConfigError::Syntax {
        line_col: span.as_ref().map(|s| line_col(text, s.start)),
        message,
    };
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let field = match path.as_deref() {
            Some(p) if !p.is_empty() => format!("{p}.{name}"),
            _ => name.to_string(),
        };
        let reason = match name {
            "node" => "is required (a [node] table)".to_string(),
            _ => "is required".to_string(),
        };
        return ConfigError::field(field, reason);
    }
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return syntax(message);
    };
    if message.starts_with("unknown field `") {
        let expected = message.split_once(", ").map(|(_, rest)| rest);
        let reason = match expected {
            Some(rest) => format!("unknown field ({rest})"),
            None => "unknown field".to_string(),
        };
        return ConfigError::field(path, reason);
    }
    ConfigError::field(path, message)
}

/// Finds the key or value whose span is `span` (else the smallest one containing its start)
/// and writes its dotted path (`pods[1].ip`) into `best`, with the span's length.
fn locate(
    table: &toml::de::DeTable<'_>,
    span: &std::ops::Range<usize>,
    prefix: &mut String,
    best: &mut Option<(String, usize)>,
) {
    for (key, value) in table.iter() {
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(key.get_ref());
        for s in [key.span(), value.span()] {
            consider(&s, span, prefix, best);
        }
        locate_value(value, span, prefix, best);
        prefix.truncate(len);
    }
}

fn locate_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    span: &std::ops::Range<usize>,
    prefix: &mut String,
    best: &mut Option<(String, usize)>,
) {
    match value.get_ref() {
        toml::de::DeValue::Table(t) => locate(t, span, prefix, best),
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = prefix.len();
                prefix.push_str(&format!("[{i}]"));
                consider(&item.span(), span, prefix, best);
                locate_value(item, span, prefix, best);
                prefix.truncate(len);
            }
        }
        _ => {}
    }
}

fn consider(
    candidate: &std::ops::Range<usize>,
    target: &std::ops::Range<usize>,
    path: &str,
    best: &mut Option<(String, usize)>,
) {
    // An exact match scores 0; otherwise containment of the target's start, smaller is better.
    let score = if candidate == target {
        0
    } else if candidate.contains(&target.start) {
        1 + candidate.len()
    } else {
        return;
    };
    // Ties go to the later (deeper) candidate.
    if best.as_ref().is_none_or(|(_, s)| score <= *s) {
        *best = Some((path.to_string(), score));
    }
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(text.len());
    while !text.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Values written as strings in TOML: IPv4 addresses, CIDRs, MACs.
trait TextValue: Sized {
    fn parse_text(s: &str) -> Result<Self, String>;
    fn to_text(&self) -> String;
}

impl TextValue for Ipv4Addr {
    fn parse_text(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address (expected like 10.244.1.10)"))
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
}

impl TextValue for Ipv4Net {
    fn parse_text(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| {
            format!("{s:?} is not an IPv4 CIDR (expected an address and a prefix length like 10.244.1.0/24)")
        })
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
}

impl TextValue for EthernetAddress {
    fn parse_text(s: &str) -> Result<Self, String> {
        parse_mac(s).map_err(|e| e.to_string())
    }
    fn to_text(&self) -> String {
        format_mac(*self)
    }
}

/// serde `with` module for a [`TextValue`].
mod text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use super::TextValue;

    pub fn serialize<S: Serializer, T: TextValue>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_text())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: TextValue>(d: D) -> Result<T, D::Error> {
        let s = String::deserialize(d)?;
        T::parse_text(&s).map_err(D::Error::custom)
    }
}

/// serde `with` module for an optional [`TextValue`].
mod opt_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use super::TextValue;

    pub fn serialize<S: Serializer, T: TextValue>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&v.to_text()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: TextValue>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => T::parse_text(&s).map(Some).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "node-a"
pod_cidr = "10.244.1.0/24"
mtu = 1400
control = "/tmp/podswitch-test/node-a.sock"
mac_table_size = 1024
mac_ageing_secs = 60
underlay = "192.168.77.1"
vxlan_port = 4789
vni = 42

[[pods]]
name = "web"
netns = "web"
ip = "10.244.1.10"

[[pods]]
name = "db"
netns = "db-ns"
ip = "10.244.1.11"
mac = "02:42:AA:bb:cc:dd"

[[peers]]
name = "node-b"
underlay = "192.168.77.2"
pod_cidr = "10.244.2.0/24"
vtep_mac = "02-ee-00-00-00-02"
"#;

    const MINIMAL: &str = r#"
[node]
name = "node-a"
pod_cidr = "10.244.1.0/24"
"#;

    /// A minimal node plus `extra` TOML appended.
    fn with(extra: &str) -> String {
        format!("{MINIMAL}{extra}")
    }

    /// A node with `node_extra` lines in `[node]`.
    fn node_with(node_extra: &str) -> String {
        format!("[node]\nname = \"node-a\"\npod_cidr = \"10.244.1.0/24\"\n{node_extra}\n")
    }

    fn pod(name: &str, netns: &str, ip: &str) -> String {
        format!("\n[[pods]]\nname = \"{name}\"\nnetns = \"{netns}\"\nip = \"{ip}\"\n")
    }

    #[track_caller]
    fn err(text: &str) -> String {
        match Config::from_toml_str(text) {
            Ok(c) => panic!("accepted: {c:?}\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[track_caller]
    fn assert_err(text: &str, expected: &str) {
        let msg = err(text);
        assert_eq!(msg, expected, "for:\n{text}");
    }

    #[track_caller]
    fn assert_err_starts(text: &str, expected: &str) {
        let msg = err(text);
        assert!(
            msg.starts_with(expected),
            "got {msg:?}, want prefix {expected:?}, for:\n{text}"
        );
    }

    #[test]
    fn good_config_parses() {
        let c = Config::from_toml_str(GOOD).unwrap();
        assert_eq!(c.node.name, "node-a");
        assert_eq!(c.node.pod_cidr, "10.244.1.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(c.node.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(c.node.mtu, Some(1400));
        assert_eq!(
            c.node.control_path(),
            PathBuf::from("/tmp/podswitch-test/node-a.sock")
        );
        assert_eq!(c.node.vxlan_port, 4789);
        assert_eq!(c.node.vni, 42);
        assert_eq!(c.node.underlay, Some(Ipv4Addr::new(192, 168, 77, 1)));
        assert_eq!(c.pods.len(), 2);
        assert_eq!(
            c.pods[0].mac(),
            EthernetAddress([0x02, 0x42, 10, 244, 1, 10])
        );
        assert_eq!(
            c.pods[1].mac(),
            EthernetAddress([0x02, 0x42, 0xaa, 0xbb, 0xcc, 0xdd])
        );
        assert_eq!(c.pods[1].netns, "db-ns");
        assert_eq!(c.peers.len(), 1);
        assert_eq!(
            c.peers[0].vtep_mac(),
            EthernetAddress([2, 0xee, 0, 0, 0, 2])
        );

        let nc = c.node.node_config();
        assert_eq!(nc.cidr, c.node.pod_cidr);
        assert_eq!(nc.gateway, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(nc.router_mac, derived_router_mac("node-a"));
        assert_eq!((nc.vni, nc.mtu, nc.tunnel_mtu), (42, 1400, 1450));
        let mt = c.node.mac_table_config();
        assert_eq!((mt.capacity, mt.ageing), (1024, Duration::from_secs(60)));
    }

    #[test]
    fn good_config_round_trips() {
        let c = Config::from_toml_str(GOOD).unwrap();
        let text = toml::to_string(&c).unwrap();
        let again = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c, again);
        assert!(text.contains("mac = \"02:42:aa:bb:cc:dd\""), "{text}");
        assert!(text.contains("pod_cidr = \"10.244.1.0/24\""), "{text}");
    }

    #[test]
    fn defaults_applied() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert!(c.pods.is_empty() && c.peers.is_empty());
        let n = &c.node;
        assert_eq!(n.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(n.pod_mtu(), 1450);
        assert_eq!(
            n.control_path(),
            PathBuf::from("/run/podswitch/node-a.sock")
        );
        assert_eq!(n.router_mac(), derived_router_mac("node-a"));
        assert_eq!(n.mac_table_config(), MacTableConfig::default());
        assert_eq!((n.vxlan_port, n.vni, n.underlay), (8472, 1, None));
        let nc = n.node_config();
        assert_eq!(nc, NodeConfig::new(n.pod_cidr, n.router_mac()));
    }

    #[test]
    fn pod_mtu_follows_the_underlay() {
        let c = Config::from_toml_str(&node_with("underlay_mtu = 9000")).expect("valid");
        assert_eq!((c.node.pod_mtu(), c.node.tunnel_mtu()), (8950, 8950));
        let c =
            Config::from_toml_str(&node_with("underlay_mtu = 9000\nmtu = 1500")).expect("valid");
        assert_eq!((c.node.pod_mtu(), c.node.tunnel_mtu()), (1500, 8950));
        let e = Config::from_toml_str(&node_with("underlay_mtu = 100")).expect_err("too small");
        assert!(e.to_string().contains("node.underlay_mtu"), "{e}");
    }

    #[test]
    fn explicit_gateway_and_router_mac() {
        let c = Config::from_toml_str(&node_with(
            "gateway = \"10.244.1.254\"\nrouter_mac = \"02:00:00:00:00:01\"",
        ))
        .unwrap();
        assert_eq!(c.node.gateway(), Ipv4Addr::new(10, 244, 1, 254));
        assert_eq!(c.node.router_mac(), EthernetAddress([2, 0, 0, 0, 0, 1]));
        // The first host address is then free for a pod.
        Config::from_toml_str(&format!(
            "{}{}",
            node_with("gateway = \"10.244.1.254\""),
            pod("a", "a", "10.244.1.1")
        ))
        .unwrap();
        // vtep_mac alone sets the router MAC too; equal to router_mac is fine.
        let c = Config::from_toml_str(&node_with("vtep_mac = \"02:00:00:00:00:07\"")).unwrap();
        assert_eq!(c.node.router_mac(), EthernetAddress([2, 0, 0, 0, 0, 7]));
        Config::from_toml_str(&node_with(
            "vtep_mac = \"02:00:00:00:00:07\"\nrouter_mac = \"02:00:00:00:00:07\"",
        ))
        .unwrap();
    }

    #[test]
    fn derived_router_mac_is_fnv1a_of_the_name() {
        // FNV-1a 32 of "" is the offset basis; of "a" is 0xe40c292c (published test vectors).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(
            derived_router_mac("a"),
            EthernetAddress([0x02, 0xee, 0xe4, 0x0c, 0x29, 0x2c])
        );
        assert_ne!(derived_router_mac("node-a"), derived_router_mac("node-b"));
    }

    #[test]
    fn parse_mac_accepts_colons_and_dashes_only() {
        let want = EthernetAddress([0x02, 0x42, 0x0a, 0xf4, 0x01, 0x0a]);
        assert_eq!(parse_mac("02:42:0a:f4:01:0a").unwrap(), want);
        assert_eq!(parse_mac("02-42-0A-F4-01-0A").unwrap(), want);
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
            let e = parse_mac(bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "{bad:?} is not a MAC address (expected six hex pairs like 02:42:0a:f4:01:0a)"
                )
            );
        }
        assert_eq!(format_mac(want), "02:42:0a:f4:01:0a");
    }

    #[test]
    fn toml_errors_name_the_field() {
        assert_err(
            &node_with("mtu = \"big\""),
            "config error: node.mtu: invalid type: string \"big\", expected u16",
        );
        assert_err_starts(
            &node_with("colour = \"blue\""),
            "config error: node.colour: unknown field (expected one of `name`, `pod_cidr`",
        );
        assert_err_starts(
            &with(&format!("{}speed = 10\n", pod("a", "a", "10.244.1.10"))),
            "config error: pods[0].speed: unknown field",
        );
        assert_err_starts(
            &format!("{MINIMAL}[extra]\nx = 1\n"),
            "config error: extra: unknown field",
        );
        assert_err(
            "[node]\nname = \"node-a\"\n",
            "config error: node.pod_cidr: is required",
        );
        assert_err("", "config error: node: is required (a [node] table)");
        assert_err(
            &with("\n[[pods]]\nname = \"a\"\nip = \"10.244.1.10\"\n"),
            "config error: pods[0].netns: is required",
        );
        assert_err(
            &with(&format!("{}{}", pod("a", "a", "10.244.1.10"), pod("b", "b", "10.244.1.300"))),
            "config error: pods[1].ip: \"10.244.1.300\" is not an IPv4 address (expected like 10.244.1.10)",
        );
        assert_err(
            "[node]\nname = \"n\"\npod_cidr = \"10.244.1.0\"\n",
            "config error: node.pod_cidr: \"10.244.1.0\" is not an IPv4 CIDR (expected an address and a prefix length like 10.244.1.0/24)",
        );
        assert_err(
            &with("\n[[pods]]\nname = \"a\"\nnetns = \"a\"\nip = \"10.244.1.10\"\nmac = \"zz:42:0a:f4:01:0a\"\n"),
            "config error: pods[0].mac: \"zz:42:0a:f4:01:0a\" is not a MAC address (expected six hex pairs like 02:42:0a:f4:01:0a)",
        );
        assert_err(
            &node_with("router_mac = 5"),
            "config error: node.router_mac: invalid type: integer `5`, expected a string",
        );
        assert_err_starts(
            &node_with("mtu = 70000"),
            "config error: node.mtu: invalid value: integer `70000`",
        );
        assert_err_starts(
            &node_with("mtu = -1"),
            "config error: node.mtu: invalid value: integer `-1`",
        );
    }

    #[test]
    fn syntax_errors_give_the_position() {
        let msg = err("[node]\nname = \"node-a\"\npod_cidr = \n");
        assert!(msg.starts_with("config error: line 3, column "), "{msg}");
        let msg = err("[node\n");
        assert!(msg.starts_with("config error: line 1, column "), "{msg}");
        let msg = err(&format!("{MINIMAL}name = \"again\"\n"));
        assert_eq!(msg, "config error: line 5, column 1: duplicate key");
    }

    #[test]
    fn node_name_rules() {
        let bad = |name: &str| format!("[node]\nname = \"{name}\"\npod_cidr = \"10.244.1.0/24\"\n");
        assert_err(&bad(""), "config error: node.name: must not be empty");
        assert_err(
            &bad("node a"),
            "config error: node.name: \"node a\" contains ' ' (allowed: letters, digits, '.', '_', '-')",
        );
        assert_err_starts(&bad("a/b"), "config error: node.name: \"a/b\" contains '/'");
        let long = "n".repeat(64);
        assert_err(
            &bad(&long),
            &format!("config error: node.name: {long:?} is 64 characters long (at most 63)"),
        );
        Config::from_toml_str(&bad(&"n".repeat(63))).unwrap();
        Config::from_toml_str(&bad("Node_1.a-b")).unwrap();
    }

    #[test]
    fn pod_cidr_rules() {
        let cidr = |c: &str| format!("[node]\nname = \"n\"\npod_cidr = \"{c}\"\n");
        assert_err(
            &cidr("10.0.0.0/31"),
            "config error: node.pod_cidr: 10.0.0.0/31 has no room for a gateway and pods (the prefix length must be at most 30)",
        );
        assert_err(
            &cidr("10.244.1.5/24"),
            "config error: node.pod_cidr: 10.244.1.5/24 has host bits set (did you mean 10.244.1.0/24?)",
        );
        let c = Config::from_toml_str(&cidr("10.0.0.0/30")).unwrap();
        assert_eq!(c.node.gateway(), Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn gateway_rules() {
        assert_err(
            &node_with("gateway = \"10.244.2.1\""),
            "config error: node.gateway: 10.244.2.1 is outside node.pod_cidr 10.244.1.0/24",
        );
        assert_err(
            &node_with("gateway = \"10.244.1.0\""),
            "config error: node.gateway: 10.244.1.0 is the network address of node.pod_cidr 10.244.1.0/24",
        );
        assert_err(
            &node_with("gateway = \"10.244.1.255\""),
            "config error: node.gateway: 10.244.1.255 is the broadcast address of node.pod_cidr 10.244.1.0/24",
        );
    }

    #[test]
    fn mtu_rules() {
        assert_err(
            &node_with("mtu = 40"),
            "config error: node.mtu: 40 is below the IPv4 minimum 68",
        );
        assert_err(
            &node_with("mtu = 65522"),
            "config error: node.mtu: 65522 is above the maximum 65521",
        );
        Config::from_toml_str(&node_with("mtu = 68")).unwrap();
        Config::from_toml_str(&node_with("mtu = 65521")).unwrap();
    }

    #[test]
    fn node_misc_rules() {
        assert_err(
            &node_with("mac_table_size = 0"),
            "config error: node.mac_table_size: must be at least 1",
        );
        assert_err(
            &node_with("mac_ageing_secs = 0"),
            "config error: node.mac_ageing_secs: must be at least 1",
        );
        assert_err(
            &node_with("workers = 0"),
            "config error: node.workers: 0 is not between 1 and 64",
        );
        assert_err(
            &node_with("workers = 65"),
            "config error: node.workers: 65 is not between 1 and 64",
        );
        let cfg = Config::from_toml_str(&node_with("workers = 4")).unwrap();
        assert_eq!(cfg.node.workers, 4);
        // Pinning: the last CPUs by default, as given otherwise, none with [].
        assert_eq!(cfg.node.dataplane_cpus(&[0, 1, 2, 3, 4, 5]), [2, 3, 4, 5]);
        assert_eq!(cfg.node.dataplane_cpus(&[0, 1]), [0, 1]);
        assert_eq!(cfg.node.dataplane_cpus(&[]), Vec::<usize>::new());
        let pinned = Config::from_toml_str(&node_with("cpus = [7, 3]")).unwrap();
        assert_eq!(pinned.node.dataplane_cpus(&[0, 1]), [7, 3]);
        let unpinned = Config::from_toml_str(&node_with("cpus = []")).unwrap();
        assert!(unpinned.node.dataplane_cpus(&[0, 1]).is_empty());
        assert_err(
            &node_with("cpus = [4096]"),
            "config error: node.cpus: CPU 4096 is above the largest CPU number 1023",
        );
        assert_err(
            &node_with("router_mac = \"01:00:5e:00:00:01\""),
            "config error: node.router_mac: 01:00:5e:00:00:01 is a group (multicast or broadcast) MAC; a unicast MAC has the low bit of the first octet clear",
        );
        assert_err(
            &node_with("router_mac = \"00:00:00:00:00:00\""),
            "config error: node.router_mac: 00:00:00:00:00:00 is not a usable MAC",
        );
        assert_err(
            &node_with("router_mac = \"02:00:00:00:00:01\"\nvtep_mac = \"02:00:00:00:00:02\""),
            "config error: node.vtep_mac: 02:00:00:00:00:02 differs from node.router_mac 02:00:00:00:00:01 (the router MAC is the VTEP MAC; give one)",
        );
        assert_err(
            &node_with("control = \"\""),
            "config error: node.control: is empty",
        );
        assert_err_starts(
            &node_with(&format!("control = \"/{}\"", "s".repeat(120))),
            "config error: node.control: /sss",
        );
        assert_err(
            &node_with("vxlan_port = 0"),
            "config error: node.vxlan_port: must not be 0",
        );
        assert_err(
            &node_with("vni = 16777216"),
            "config error: node.vni: 16777216 is above the 24-bit maximum 16777215",
        );
        Config::from_toml_str(&node_with("vni = 16777215")).unwrap();
        assert_err(
            &node_with("underlay = \"0.0.0.0\""),
            "config error: node.underlay: 0.0.0.0 is not a unicast address",
        );
    }

    #[test]
    fn pod_name_rules() {
        assert_err(
            &with(&pod("", "a", "10.244.1.10")),
            "config error: pods[0].name: must not be empty",
        );
        assert_err_starts(
            &with(&pod("we b", "a", "10.244.1.10")),
            "config error: pods[0].name: \"we b\" contains ' '",
        );
        assert_err(
            &with(&format!(
                "{}{}",
                pod("web", "a", "10.244.1.10"),
                pod("web", "b", "10.244.1.11")
            )),
            "config error: pods[1].name: \"web\" is already the name of another pod",
        );
    }

    #[test]
    fn netns_rules() {
        assert_err(
            &with(&format!("{}{}", pod("a", "shared", "10.244.1.10"), pod("b", "shared", "10.244.1.11"))),
            "config error: pods[1].netns: namespace \"shared\" already belongs to pod \"a\" (a pod is one namespace: two pods cannot share it)",
        );
        assert_err(
            &with(&pod("a", "", "10.244.1.10")),
            "config error: pods[0].netns: must not be empty",
        );
        assert_err(
            &with(&pod("a", "..", "10.244.1.10")),
            "config error: pods[0].netns: \"..\" is not a namespace name (it names a directory)",
        );
        assert_err_starts(
            &with(&pod("a", ".", "10.244.1.10")),
            "config error: pods[0].netns: \".\" is not",
        );
        assert_err(
            &with(&pod("a", "x/y", "10.244.1.10")),
            "config error: pods[0].netns: \"x/y\" contains '/' (a namespace name is a file name in /run/netns)",
        );
        assert_err(
            &with(&pod("a", &"n".repeat(256), "10.244.1.10")),
            "config error: pods[0].netns: 256 bytes is longer than a file name can be (255)",
        );
        // Anything else a file name may hold is fine.
        Config::from_toml_str(&with(&pod("a", "ns with space:é", "10.244.1.10"))).unwrap();
    }

    #[test]
    fn pod_ip_rules() {
        let two = |ip: &str| {
            with(&format!(
                "{}{}",
                pod("a", "a", "10.244.1.10"),
                pod("b", "b", ip)
            ))
        };
        assert_err(
            &two("10.244.2.5"),
            "config error: pods[1].ip: 10.244.2.5 is outside node.pod_cidr 10.244.1.0/24",
        );
        assert_err(
            &two("10.244.1.0"),
            "config error: pods[1].ip: 10.244.1.0 is the network address of node.pod_cidr 10.244.1.0/24",
        );
        assert_err(
            &two("10.244.1.255"),
            "config error: pods[1].ip: 10.244.1.255 is the broadcast address of node.pod_cidr 10.244.1.0/24",
        );
        assert_err(
            &two("10.244.1.1"),
            "config error: pods[1].ip: 10.244.1.1 is the gateway address",
        );
        assert_err(
            &two("10.244.1.10"),
            "config error: pods[1].ip: 10.244.1.10 is already the address of pod \"a\"",
        );
    }

    #[test]
    fn pod_mac_rules() {
        let with_mac = |mac: &str| {
            with(&format!(
                "{}\n[[pods]]\nname = \"b\"\nnetns = \"b\"\nip = \"10.244.1.11\"\nmac = \"{mac}\"\n",
                pod("a", "a", "10.244.1.10")
            ))
        };
        // Explicit MAC equal to another pod's derived MAC.
        assert_err(
            &with_mac("02:42:0a:f4:01:0a"),
            "config error: pods[1].mac: 02:42:0a:f4:01:0a is already the MAC of pod \"a\"",
        );
        assert_err(
            &with_mac("ff:ff:ff:ff:ff:ff"),
            "config error: pods[1].mac: ff:ff:ff:ff:ff:ff is a group (multicast or broadcast) MAC; a unicast MAC has the low bit of the first octet clear",
        );
        assert_err(
            &with_mac("00-00-00-00-00-00"),
            "config error: pods[1].mac: 00:00:00:00:00:00 is not a usable MAC",
        );
        let router = format_mac(derived_router_mac("node-a"));
        assert_err(
            &with_mac(&router),
            &format!("config error: pods[1].mac: {router} is the node's router MAC"),
        );
    }

    #[test]
    fn peer_rules() {
        let peer = |name: &str, underlay: &str, cidr: &str| {
            format!("\n[[peers]]\nname = \"{name}\"\nunderlay = \"{underlay}\"\npod_cidr = \"{cidr}\"\n")
        };
        let cfg = |peers: &str| format!("{}{peers}", node_with("underlay = \"192.168.77.1\""));
        Config::from_toml_str(&cfg(&format!(
            "{}{}",
            peer("b", "192.168.77.2", "10.244.2.0/24"),
            peer("c", "192.168.77.3", "10.244.3.0/24")
        )))
        .unwrap();
        assert_err(
            &with(&peer("b", "192.168.77.2", "10.244.2.0/24")),
            "config error: node.underlay: is required when [[peers]] are configured (the address peers send VXLAN to)",
        );
        assert_err(
            &cfg(&peer("b", "192.168.77.2", "10.244.0.0/16")),
            "config error: peers[0].pod_cidr: 10.244.0.0/16 overlaps node.pod_cidr 10.244.1.0/24",
        );
        assert_err(
            &cfg(&format!(
                "{}{}",
                peer("b", "192.168.77.2", "10.244.2.0/24"),
                peer("c", "192.168.77.3", "10.244.2.128/25")
            )),
            "config error: peers[1].pod_cidr: 10.244.2.128/25 overlaps peers[0].pod_cidr 10.244.2.0/24 (peer \"b\")",
        );
        assert_err(
            &cfg(&format!(
                "{}{}",
                peer("b", "192.168.77.2", "10.244.2.0/24"),
                peer("b", "192.168.77.3", "10.244.3.0/24")
            )),
            "config error: peers[1].name: \"b\" is already the name of another peer",
        );
        assert_err(
            &cfg(&peer("node-a", "192.168.77.2", "10.244.2.0/24")),
            "config error: peers[0].name: \"node-a\" is this node's name",
        );
        assert_err(
            &cfg(&format!(
                "{}{}",
                peer("b", "192.168.77.2", "10.244.2.0/24"),
                peer("c", "192.168.77.2", "10.244.3.0/24")
            )),
            "config error: peers[1].underlay: 192.168.77.2 is already the underlay of peer \"b\"",
        );
        assert_err(
            &cfg(&peer("b", "192.168.77.1", "10.244.2.0/24")),
            "config error: peers[0].underlay: 192.168.77.1 is this node's node.underlay",
        );
        assert_err(
            &cfg(&format!("{}vtep_mac = \"03:00:00:00:00:01\"\n", peer("b", "192.168.77.2", "10.244.2.0/24"))),
            "config error: peers[0].vtep_mac: 03:00:00:00:00:01 is a group (multicast or broadcast) MAC; a unicast MAC has the low bit of the first octet clear",
        );
        assert_err_starts(
            &cfg(&peer("b", "192.168.77.2", "10.244.2.1/24")),
            "config error: peers[0].pod_cidr: 10.244.2.1/24 has host bits set",
        );
    }

    #[test]
    fn runtime_pod_add_uses_pod_field_names() {
        let c = Config::from_toml_str(&with(&pod("a", "a", "10.244.1.10"))).unwrap();
        let p = PodSpec::new("b", "b", Ipv4Addr::new(10, 244, 1, 11), None).unwrap();
        validate_pod(&c.node, &p, &c.pods).unwrap();
        assert_eq!(p.mac(), EthernetAddress([2, 0x42, 10, 244, 1, 11]));

        let e = PodSpec::new("b", "b", Ipv4Addr::new(10, 244, 1, 11), Some("nope")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config error: pod.mac: \"nope\" is not a MAC address (expected six hex pairs like 02:42:0a:f4:01:0a)"
        );
        assert_eq!(e.field_name(), Some("pod.mac"));

        let p = PodSpec::new("b", "b", Ipv4Addr::new(10, 244, 2, 5), None).unwrap();
        assert_eq!(
            validate_pod(&c.node, &p, &c.pods).unwrap_err().to_string(),
            "config error: pod.ip: 10.244.2.5 is outside node.pod_cidr 10.244.1.0/24"
        );
        let p = PodSpec::new("b", "a", Ipv4Addr::new(10, 244, 1, 11), None).unwrap();
        assert_eq!(
            validate_pod(&c.node, &p, &c.pods).unwrap_err().to_string(),
            "config error: pod.netns: namespace \"a\" already belongs to pod \"a\" (a pod is one namespace: two pods cannot share it)"
        );
        let p = PodSpec::new(
            "a",
            "z",
            Ipv4Addr::new(10, 244, 1, 11),
            Some("02:00:00:00:00:09"),
        )
        .unwrap();
        assert_eq!(
            validate_pod(&c.node, &p, &c.pods).unwrap_err().to_string(),
            "config error: pod.name: \"a\" is already the name of another pod"
        );
    }

    #[test]
    fn from_file_reads_and_reports_missing_files() {
        let dir =
            std::env::temp_dir().join(format!("podswitch-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("node.toml");
        std::fs::write(&file, GOOD).unwrap();
        let c = Config::from_file(&file).unwrap();
        assert_eq!(c.pods.len(), 2);
        std::fs::remove_file(&file).unwrap();
        let e = Config::from_file(&file).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config error: cannot read {}: ", file.display())),
            "{e}"
        );
        let _ = std::fs::remove_dir(&dir);
    }
}
