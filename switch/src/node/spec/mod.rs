//! What a node, a pod and a peer are, and every rule about them: one type per concept, used by
//! the config file, the CLI, the control protocol and the running [`Node`](super::Node).
//!
//! - [`NodeSpec`]: the node's settings (the file's `[node]` table).
//! - [`PodSpec`]: a pod (a `[[pods]]` entry, `podswitch pod add`, `Request::PodAdd`).
//! - [`PeerSpec`]: another node (a `[[peers]]` entry, `podswitch peer add`,
//!   `Request::PeerAdd`).
//! - [`ServiceSpec`]: a Service (ClusterIP) (a `[[services]]` entry, `podswitch service add`,
//!   `Request::ServiceAdd`).
//!
//! The rules ([`NodeSpec::validate`], [`PodSpec::check`], [`PeerSpec::check`],
//! [`ServiceSpec::check`]) are the only
//! place where a node, pod or peer is refused, so the file and the runtime refuse the same
//! things with the same reason; only the field's location differs (`pods[1].ip` in the file,
//! `pod.ip` at runtime). A pod without `ip` gets one from the node ([`free_pod_ip`], chosen
//! under the pod lock before the rules run; [`assign_pod_ips`] for the file). Derived values (gateway, router MAC, pod MAC, VTEP MAC, pod MTU,
//! control socket, CPUs) are computed here too, and compiled into the data plane's forms
//! ([`NodeConfig`], [`SwitchConfig`], [`Peer`], [`PortInfo`]).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::pipeline::NodeConfig;
use crate::switch::SwitchConfig;
use crate::table::{MacTableConfig, Peer, PortInfo, PortKind};

mod mac;
mod rules;
mod service;

pub use mac::{Mac, MacParseError};
pub(crate) use rules::check_range;
use rules::cpu_list;
pub(crate) use rules::{assign_pod_ips, free_pod_ip};
pub(crate) use service::DEFAULT_SERVICE_CIDR;
pub use service::{ServiceAffinity, ServiceProto, ServiceSpec};

/// Default underlay MTU.
pub(crate) const DEFAULT_UNDERLAY_MTU: u16 = 1500;
/// What VXLAN over IPv4 adds to an inner IP packet on the underlay (the wire's constant).
pub(crate) const VXLAN_OVERHEAD: u16 = crate::wire::vxlan::OVERHEAD as u16;
/// Smallest MTU IPv4 allows (RFC 791).
pub(crate) const MIN_MTU: u16 = 68;
/// Largest pod MTU accepted.
pub(crate) const MAX_MTU: u16 = 65521;
/// Default VXLAN UDP destination port (Linux and flannel; IANA's is 4789).
pub(crate) const DEFAULT_VXLAN_PORT: u16 = crate::wire::vxlan::LINUX_PORT;
/// Largest VXLAN network identifier (24 bits).
pub(crate) const MAX_VNI: u32 = crate::wire::vxlan::MAX_VNI;
/// Most data-plane threads (a TAP has at most 256 queues; more threads than cores only
/// compete).
pub(crate) const MAX_WORKERS: usize = 64;
/// Directory of the default control socket, `<dir>/<node name>.sock`.
pub(crate) const CONTROL_DIR: &str = "/run/podswitch";
/// Longest node or peer name.
const MAX_NODE_NAME: usize = 63;
/// Longest pod name (a DNS subdomain, as Kubernetes pod names).
const MAX_POD_NAME: usize = 253;
/// Longest service name (as a pod's).
const MAX_SERVICE_NAME: usize = MAX_POD_NAME;
/// Longest Unix socket path (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A broken rule: the field (`node.mtu`, `pods[1].ip`, `pod.ip`, `peer.name`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// Where the field is.
    pub(crate) field: String,
    /// What is wrong with it.
    pub(crate) reason: String,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
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
pub(crate) fn derived_router_mac(node_name: &str) -> Mac {
    let h = fnv1a32(node_name.as_bytes()).to_be_bytes();
    Mac([0x02, 0xee, h[0], h[1], h[2], h[3]])
}

/// The MAC of a pod that does not configure one: [`crate::table::derived_pod_mac`].
pub fn derived_pod_mac(ip: Ipv4Addr) -> Mac {
    Mac(crate::table::derived_pod_mac(ip).0)
}

/// What a pod's `eth0` is (`node.pod_interface`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodInterface {
    /// A TAP whose descriptors the switch holds: every packet crosses the switch.
    #[default]
    Tap,
    /// A veth pair: the switch decides, the kernel fast path forwards what it has decided,
    /// and everything else reaches the switch through the pod's upcall TAP.
    Veth,
}

/// The environment variable that gives `node.pod_interface` when the config does not.
pub const POD_INTERFACE_ENV: &str = "PODSWITCH_POD_INTERFACE";

impl PodInterface {
    /// What [`POD_INTERFACE_ENV`] says: `Ok(None)` when unset or empty.
    pub(crate) fn from_env() -> Result<Option<PodInterface>, String> {
        match std::env::var(POD_INTERFACE_ENV) {
            Ok(v) if !v.is_empty() => v
                .parse()
                .map(Some)
                .map_err(|e| format!("{POD_INTERFACE_ENV}: {e}")),
            _ => Ok(None),
        }
    }

    /// `tap` or `veth`, as the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PodInterface::Tap => "tap",
            PodInterface::Veth => "veth",
        }
    }
}

impl std::str::FromStr for PodInterface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tap" => Ok(PodInterface::Tap),
            "veth" => Ok(PodInterface::Veth),
            _ => Err(format!("{s:?} is not a pod interface: tap or veth")),
        }
    }
}

/// A node's settings: the config file's `[node]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name: `[a-zA-Z0-9._-]`, at most 63 characters.
    pub(crate) name: String,
    /// The node's pod CIDR (prefix length at most 30, no host bits set). Required, except
    /// with a `[cluster]` table: then the node leases one and this, if given, is the subnet
    /// it asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) pod_cidr: Option<Ipv4Net>,
    /// Pods' default gateway; see [`NodeSpec::gateway`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) gateway: Option<Ipv4Addr>,
    /// Pod MTU; see [`NodeSpec::pod_mtu`] (default: `underlay_mtu` minus VXLAN's 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mtu: Option<u16>,
    /// MTU of the underlay network the tunnel crosses.
    #[serde(default = "default_underlay_mtu")]
    pub(crate) underlay_mtu: u16,
    /// Network namespace the switch itself runs in (its "host" namespace: where the underlay
    /// address lives and the TAPs are made before they move into pods). Default: the one it is
    /// started in. `podswitch-lab` uses this to run several nodes on one machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Control socket path; see [`NodeSpec::control_path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) control: Option<PathBuf>,
    /// Router MAC; see [`NodeSpec::router_mac`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_mac: Option<Mac>,
    /// Most learned MAC table entries.
    #[serde(default = "default_mac_table_size")]
    pub(crate) mac_table_size: usize,
    /// Seconds a learned MAC lives without being seen.
    #[serde(default = "default_mac_ageing_secs")]
    pub(crate) mac_ageing_secs: u64,
    /// Most flows connection tracking follows (Linux's `nf_conntrack_max`); a client holds
    /// at most a quarter of them.
    #[serde(default = "default_conntrack_max")]
    pub(crate) conntrack_max: usize,
    /// Data-plane threads, 1 to [`MAX_WORKERS`]. Each pod's TAP gets one queue per worker
    /// (`IFF_MULTI_QUEUE`); the kernel spreads a pod's flows over the queues.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// What a pod's `eth0` is: a TAP the switch holds (`"tap"`, the default), or one end of a
    /// veth pair whose other end stays in the node's namespace, where the kernel fast path
    /// (`podswitch-fastpath`) forwards what the switch has decided (`"veth"`). Absent: the
    /// environment's `PODSWITCH_POD_INTERFACE`, else `"tap"`; see [`NodeSpec::pod_interface`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_interface: Option<PodInterface>,
    /// CPUs the workers are pinned to (worker `k` on `cpus[k % len]`); see
    /// `NodeSpec::dataplane_cpus` for the default (not pinned). `[]`: not pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Vec<usize>>,
    /// Run the pods' kernel network input (what a frame written into a pod's TAP costs) on
    /// the CPUs no worker is pinned to, by RPS and RFS on the pods' and the host interface's
    /// receive queues, instead of on the worker in its `writev`. More short connections per
    /// second, less bulk throughput on a small machine; see `node::steering`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rx_steering: bool,
    /// This node's underlay (VXLAN) address. Required when peers are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<Ipv4Addr>,
    /// VXLAN UDP destination port.
    #[serde(default = "default_vxlan_port")]
    pub(crate) vxlan_port: u16,
    /// VXLAN network identifier of the cluster (24 bits).
    #[serde(default = "default_vni")]
    pub(crate) vni: u32,
    /// VTEP MAC. The router MAC is the VTEP MAC, so this is another name for `router_mac`:
    /// giving both with different values is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vtep_mac: Option<Mac>,
    /// The node's own interface into its pod network (a TAP the switch holds in the node's
    /// namespace, carrying the gateway address, with routes to every peer's CIDR); `""`: none
    /// (the node cannot reach its pods, pods cannot leave the pod networks).
    #[serde(default = "default_host_interface")]
    pub host_interface: String,
    /// Masquerade pod traffic that leaves the node for outside the pod networks to the node's
    /// address (flannel's `ipMasq`); needs the host interface.
    #[serde(default = "default_masquerade")]
    pub masquerade: bool,
    /// The range Service virtual IPs come from (Kubernetes' `--service-cluster-ip-range`);
    /// must not overlap `pod_cidr`.
    #[serde(
        default = "default_service_cidr",
        skip_serializing_if = "is_default_service_cidr"
    )]
    pub(crate) service_cidr: Ipv4Net,
    /// Where to serve Prometheus metrics (`GET /metrics`), the node's state as JSON
    /// (`GET /api/v1/state`) and the web view (`GET /`), e.g. `127.0.0.1:9469`, in the node's
    /// namespace. Absent: not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::net::SocketAddr>,
}

fn default_service_cidr() -> Ipv4Net {
    DEFAULT_SERVICE_CIDR
}
fn is_default_service_cidr(cidr: &Ipv4Net) -> bool {
    *cidr == DEFAULT_SERVICE_CIDR
}

/// The default host interface.
pub(crate) const DEFAULT_HOST_INTERFACE: &str = "podsw0";

fn default_host_interface() -> String {
    DEFAULT_HOST_INTERFACE.into()
}
fn default_masquerade() -> bool {
    true
}

fn default_underlay_mtu() -> u16 {
    DEFAULT_UNDERLAY_MTU
}
fn default_workers() -> usize {
    1
}
fn default_conntrack_max() -> usize {
    crate::table::DEFAULT_CONNTRACK_MAX
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
    /// Network namespace: a name under /run/netns (created if absent, adopted if present,
    /// deleted with the pod only if the switch created it), or an absolute path to a
    /// namespace file such as /proc/PID/ns/net or /run/netns/cni-... (always adopted: never
    /// created, never deleted by the switch).
    #[arg(long)]
    pub netns: String,
    /// Pod IP, inside the node's pod CIDR (default: the lowest address of the node's pod CIDR
    /// that is not the network, broadcast or gateway address nor another pod's; the pod keeps
    /// it, so pod list, the state file and a re-attach show the address chosen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// Pod MAC (default: 02:42 + the IP's octets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub mac: Option<Mac>,
    /// The container runtime's ID of the pod (CNI_CONTAINERID): letters, digits, '_', '.',
    /// '-', starting with a letter or digit, at most 255 characters. With `ifname`, it names a
    /// CNI attachment: unique among the node's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long)]
    pub container_id: Option<String>,
    /// The pod's interface name inside its namespace (CNI_IFNAME): 1 to 15 bytes, no '/',
    /// ':' or whitespace, not '.' or '..'.
    #[serde(default = "default_ifname", skip_serializing_if = "is_default_ifname")]
    #[arg(long, default_value = DEFAULT_IFNAME)]
    pub ifname: String,
}

/// A pod's interface name when none is given.
pub(crate) const DEFAULT_IFNAME: &str = "eth0";

/// The default interface name (`eth0`), for serde.
pub(crate) fn default_ifname() -> String {
    DEFAULT_IFNAME.into()
}

fn is_default_ifname(name: &str) -> bool {
    name == DEFAULT_IFNAME
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

impl NodeSpec {
    /// A node called `name` owning `pod_cidr`, every other setting at its default.
    pub fn new(name: impl Into<String>, pod_cidr: Ipv4Net) -> Self {
        Self {
            name: name.into(),
            pod_cidr: Some(pod_cidr),
            gateway: None,
            mtu: None,
            underlay_mtu: DEFAULT_UNDERLAY_MTU,
            netns: None,
            control: None,
            router_mac: None,
            mac_table_size: default_mac_table_size(),
            mac_ageing_secs: default_mac_ageing_secs(),
            conntrack_max: default_conntrack_max(),
            workers: default_workers(),
            cpus: None,
            rx_steering: false,
            underlay: None,
            vxlan_port: DEFAULT_VXLAN_PORT,
            vni: default_vni(),
            vtep_mac: None,
            pod_interface: Default::default(),
            host_interface: default_host_interface(),
            masquerade: default_masquerade(),
            service_cidr: DEFAULT_SERVICE_CIDR,
            metrics: None,
        }
    }

    /// The range Service virtual IPs come from.
    pub fn service_cidr(&self) -> Ipv4Net {
        self.service_cidr
    }

    /// The host interface's MAC: the router MAC with its second octet `0xef` (the router's is
    /// `0xee` when derived), so the two never collide.
    pub(crate) fn host_mac(&self) -> Mac {
        let mut m = self.router_mac().0;
        m[1] ^= 0x01;
        Mac(m)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's pod CIDR; refused (naming `node.pod_cidr`) while it has none: not given,
    /// and not leased yet.
    pub fn cidr(&self) -> Result<Ipv4Net, SpecError> {
        self.pod_cidr.ok_or_else(|| {
            SpecError::new(
                "node.pod_cidr",
                "is required (or give a [cluster] table: the node then leases one)",
            )
        })
    }

    /// The pods' gateway: `gateway` if given, else the first host address of `pod_cidr`
    /// (network + 1); `None` while the node has no pod CIDR.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
            .or_else(|| self.pod_cidr.map(NodeConfig::default_gateway))
    }

    /// What pods' `eth0` is: `pod_interface`, else what [`POD_INTERFACE_ENV`] says, else TAP.
    pub fn pod_interface(&self) -> PodInterface {
        self.pod_interface
            .or_else(|| PodInterface::from_env().ok().flatten())
            .unwrap_or_default()
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

    /// Where the daemon records the CNI attachments it re-attaches after a restart:
    /// `<directory of the control socket>/<name>.pods.json`.
    pub fn state_path(&self) -> PathBuf {
        let control = self.control_path();
        let dir = control.parent().unwrap_or_else(|| Path::new("."));
        dir.join(format!("{}.pods.json", self.name))
    }

    /// Where the daemon keeps its tracked service flows for a start after a crash:
    /// `<directory of the control socket>/<name>.flows.json`.
    pub fn flows_path(&self) -> PathBuf {
        self.state_path()
            .with_file_name(format!("{}.flows.json", self.name))
    }

    /// Pod MTU: explicit, or the underlay MTU minus VXLAN's overhead, so that every pod packet
    /// fits the tunnel.
    pub(crate) fn pod_mtu(&self) -> u16 {
        self.mtu.unwrap_or_else(|| self.tunnel_mtu())
    }

    /// Largest inner IPv4 packet the tunnel carries without fragmenting the underlay.
    pub(crate) fn tunnel_mtu(&self) -> u16 {
        self.underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
    }

    /// Where the VXLAN tunnel listens (`underlay:vxlan_port`); `None`: a node without peers.
    pub(crate) fn tunnel_addr(&self) -> Option<SocketAddrV4> {
        self.underlay
            .map(|ip| SocketAddrV4::new(ip, self.vxlan_port))
    }

    /// The CPUs to pin the workers to, given the CPUs this process may run on: `cpus` if given
    /// (each must be allowed: a worker cannot run elsewhere); else, only with `rx_steering`
    /// (which needs CPUs without a worker), the last `workers` allowed CPUs (the first ones
    /// usually take the machine's interrupts), reused round-robin when there are fewer.
    /// Empty: not pinned, the default. A pinned worker cannot move when its CPU is busy with
    /// something else (another daemon, a pod, a build): nodes pinned by default were seen
    /// forwarding nothing for seconds on a shared machine, so pinning is asked for, never
    /// assumed.
    pub(crate) fn dataplane_cpus(&self, allowed: &[usize]) -> Result<Vec<usize>, SpecError> {
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
            None if self.rx_steering => {
                let n = self.workers.min(allowed.len());
                Ok(allowed[allowed.len() - n..].to_vec())
            }
            None => Ok(Vec::new()),
        }
    }

    /// The CPUs `rx_steering` sends the interfaces' receive work to: those of `allowed` no
    /// worker is pinned to. `None` with steering off; an error if the workers are not pinned
    /// or are pinned to every allowed CPU (nothing to steer to).
    pub(crate) fn rx_steering_cpus(
        &self,
        allowed: &[usize],
    ) -> Result<Option<Vec<usize>>, SpecError> {
        if !self.rx_steering {
            return Ok(None);
        }
        let pinned = self.dataplane_cpus(allowed)?;
        if pinned.is_empty() {
            return Err(SpecError::new(
                "node.rx_steering",
                "needs the workers pinned (node.cpus is []): it steers to the CPUs they are not on",
            ));
        }
        let rest: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|c| !pinned.contains(c))
            .collect();
        if rest.is_empty() {
            return Err(SpecError::new(
                "node.rx_steering",
                format!(
                    "the workers are pinned to every CPU this process may run on ({}): none is left to steer to",
                    cpu_list(allowed)
                ),
            ));
        }
        Ok(Some(rest))
    }

    /// The data-plane settings: CIDR, gateway, router MAC, VNI, pod and tunnel MTU.
    pub(crate) fn node_config(&self) -> Result<NodeConfig, SpecError> {
        let cidr = self.cidr()?;
        Ok(NodeConfig {
            cidr,
            gateway: self
                .gateway
                .unwrap_or_else(|| NodeConfig::default_gateway(cidr)),
            router_mac: self.router_mac().into(),
            vni: self.vni,
            mtu: self.pod_mtu(),
            tunnel_mtu: self.tunnel_mtu(),
            service_cidr: self.service_cidr,
        })
    }

    /// The MAC table settings.
    pub(crate) fn mac_table_config(&self) -> MacTableConfig {
        MacTableConfig {
            capacity: self.mac_table_size,
            ageing: Duration::from_secs(self.mac_ageing_secs),
        }
    }

    /// The switch's settings on a machine whose process may run on `allowed` CPUs.
    pub(crate) fn switch_config(&self, allowed: &[usize]) -> Result<SwitchConfig, SpecError> {
        Ok(SwitchConfig {
            node: self.node_config()?,
            mac: self.mac_table_config(),
            conntrack_max: self.conntrack_max,
            workers: self.workers,
            cpus: self.dataplane_cpus(allowed)?,
        })
    }
}

impl PodSpec {
    /// The pod MAC: `mac` if given, else [`derived_pod_mac`] of the IP. `None`: neither is
    /// given yet (a pod whose address the node has still to choose). A pod the node runs
    /// always has its IP, so its MAC is known (see `PodStatus::mac`).
    pub fn mac(&self) -> Option<Mac> {
        self.mac.or_else(|| self.ip.map(derived_pod_mac))
    }

    /// The MAC the pod has at address `ip`: `mac` if given, else [`derived_pod_mac`] of `ip`.
    pub fn mac_at(&self, ip: Ipv4Addr) -> Mac {
        self.mac.unwrap_or_else(|| derived_pod_mac(ip))
    }

    /// The pod with address `ip` (what the node records once it has chosen one).
    pub fn with_ip(&self, ip: Ipv4Addr) -> PodSpec {
        PodSpec {
            ip: Some(ip),
            ..self.clone()
        }
    }

    /// The IP as shown to people: the address, or `auto` if the node has still to choose it.
    pub fn ip_text(&self) -> String {
        self.ip.map_or_else(|| "auto".into(), |ip| ip.to_string())
    }

    /// True if `netns` is a path to a namespace file (always adopted), not a name under
    /// /run/netns.
    pub fn netns_is_path(&self) -> bool {
        self.netns.starts_with('/')
    }

    /// The switch port identity of the pod at address `ip`.
    pub(crate) fn port_info(&self, ip: Ipv4Addr) -> PortInfo {
        PortInfo {
            name: self.name.clone(),
            kind: PortKind::Pod {
                mac: self.mac_at(ip).into(),
                ip,
            },
        }
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
    pub(crate) fn to_peer(&self, node: &NodeSpec) -> Peer {
        Peer {
            name: self.name.clone(),
            underlay: SocketAddrV4::new(self.underlay, node.vxlan_port),
            pod_cidr: self.pod_cidr,
            vtep_mac: self.vtep_mac().into(),
        }
    }
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
    fn rx_steering_goes_to_the_cpus_without_a_worker() {
        let mut n = NodeSpec::new("n", "10.244.1.0/24".parse().unwrap());
        assert_eq!(n.rx_steering_cpus(&[0, 1]).unwrap(), None, "off by default");
        n.rx_steering = true;
        assert_eq!(n.rx_steering_cpus(&[0, 1]).unwrap(), Some(vec![0]));
        assert_eq!(
            n.rx_steering_cpus(&[0, 1, 2, 3]).unwrap(),
            Some(vec![0, 1, 2])
        );
        n.cpus = Some(vec![0]);
        assert_eq!(n.rx_steering_cpus(&[0, 1, 2]).unwrap(), Some(vec![1, 2]));
        n.cpus = Some(vec![]);
        assert_eq!(
            n.rx_steering_cpus(&[0, 1]).unwrap_err().to_string(),
            "node.rx_steering: needs the workers pinned (node.cpus is []): it steers to the CPUs they are not on"
        );
        n.cpus = None;
        n.workers = 2;
        assert_eq!(
            n.rx_steering_cpus(&[0, 1]).unwrap_err().to_string(),
            "node.rx_steering: the workers are pinned to every CPU this process may run on (0-1): none is left to steer to"
        );
        assert!(
            n.rx_steering_cpus(&[0]).is_err(),
            "one CPU: nothing to steer to"
        );
    }

    #[test]
    fn cpus_must_be_ones_the_process_may_run_on() {
        let mut n = NodeSpec::new("n", "10.244.1.0/24".parse().unwrap());
        n.workers = 4;
        assert!(
            n.dataplane_cpus(&[0, 1, 2, 3, 4, 5]).unwrap().is_empty(),
            "not pinned unless asked"
        );
        n.rx_steering = true;
        assert_eq!(n.dataplane_cpus(&[0, 1, 2, 3, 4, 5]).unwrap(), [2, 3, 4, 5]);
        assert_eq!(n.dataplane_cpus(&[0, 1]).unwrap(), [0, 1]);
        assert!(n.dataplane_cpus(&[]).unwrap().is_empty());
        n.rx_steering = false;
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
