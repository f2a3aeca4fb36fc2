//! A node: the switch plus real pods, each a network namespace whose `eth0` is a TAP held by the
//! switch. This is what `podswitch run` drives.
//!
//! - [`spec`]: what a node, a pod and a peer are ([`NodeSpec`], [`PodSpec`], [`PeerSpec`]) and
//!   every rule about them;
//! - this module: the running [`Node`], which refuses pods and peers by those rules;
//! - `services`: its Services (ClusterIP) at runtime ([`ServiceStatus`], [`FlowStatus`]);
//! - `netlink`: configuring a pod's interfaces inside its namespace;
//! - [`handler`]: the control socket's requests carried out on the node.
//!
//! Adding a pod: check it against the node and the other pods, open or create its namespace,
//! create the TAP, move it in as `eth0` and configure it through rtnetlink from inside the
//! namespace (MAC, MTU, address, `lo` and `eth0` up, default route via the gateway, IPv6 off:
//! pods are IPv4-only here), then attach the TAP to the switch. Any failure undoes what was
//! done: the TAP disappears with its fd, and a namespace the switch created is deleted; an
//! adopted namespace is left as it was found.
//!
//! Invariants: a pod record exists exactly while its TAP is attached to the switch; the pod
//! lock is held across an add or delete, the peer lock across a peer add or delete, so
//! concurrent control requests cannot interleave them (and the checks see every pod or peer).

mod capture;
pub mod guard;
mod handler;
mod host;
mod netlink;
mod node_lock;
mod services;
pub(crate) mod spec;
mod steering;
mod upgrade;

pub use steering::{enable_flow_table, SOCK_FLOW_ENTRIES};

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use rtnetlink::LinkUnspec;

use crate::dataplane::{Switch, SwitchError};
use crate::netns::{NetNs, NetnsError};
use crate::pipeline::{DropReason, PortCounts};
use crate::port::{TapPort, UdpTunnel};
use crate::table::PortId;
use crate::wire::mac_from_key;

pub use capture::{CaptureError, NodeCapture};
pub use handler::{NodeHandler, StartingHandler};
pub(crate) use netlink::{link_index, with_netlink};
pub use node_lock::{KeptAcrossExec, NodeLock};
pub use services::{FlowStatus, ServiceStatus};
pub use spec::{derived_pod_mac, Mac, MacParseError, NodeSpec, PeerSpec, PodSpec, SpecError};
pub use spec::{ServiceAffinity, ServiceProto, ServiceSpec};
pub use upgrade::{Handover, Upgrade, SAVE_FLOWS_EVERY};

/// Sets the loopback interface up in the calling thread's namespace (the node's, after
/// `node.netns` was entered: a bare namespace has it down).
pub fn loopback_up() -> Result<(), String> {
    netlink::loopback_up().map_err(|(step, e)| format!("{step}: {e}"))
}

/// A pod as `podswitch pod list` shows it: its spec and its live state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodStatus {
    /// What the pod was added as, with its address: `spec.ip` is always set (the one given,
    /// or the one the node chose).
    pub spec: PodSpec,
    /// The pod's MAC (`spec.mac`, or the one derived from its IP).
    pub mac: Mac,
    /// Prefix length of the pod address (the node CIDR's).
    pub prefix_len: u8,
    /// The pod's default gateway (the node's).
    pub gateway: std::net::Ipv4Addr,
    /// Switch port.
    pub port: PortId,
    /// True if the switch created the namespace (and removes it with the pod).
    pub created_netns: bool,
    /// Port counters.
    pub counters: PortCounts,
    /// Frames from the pod dropped, by reason label (`"spoofed_mac"`); only reasons that
    /// happened. Absent in answers of older nodes (then empty).
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
}

/// One MAC table entry as `podswitch fdb` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FdbEntry {
    /// The MAC.
    pub mac: Mac,
    /// Port id.
    pub port: PortId,
    /// Name of the port (pod name), if the port is still attached.
    pub port_name: Option<String>,
    /// Static (pod identity) or learned.
    pub is_static: bool,
    /// Seconds since the MAC was last seen as a source.
    pub age_secs: u32,
}

/// Why a node operation failed. Each message says which pod or peer, what step, and each
/// fact once.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A rule refused the node, pod or peer (names the field: `pod.ip`, `peer.name`).
    #[error(transparent)]
    Refused(#[from] SpecError),
    /// The switch refused the pod.
    #[error("pod {pod:?}: {source}")]
    Switch {
        /// Pod name.
        pod: String,
        /// The refusal.
        source: SwitchError,
    },
    /// Namespace handling failed (the error names the namespace).
    #[error("pod {pod:?}: {source}")]
    Netns {
        /// Pod name.
        pod: String,
        /// The failure.
        source: NetnsError,
    },
    /// The adopted namespace already has the pod's interface: someone else set this pod up.
    #[error("pod {pod:?}: namespace {netns:?} already has an {ifname} (another podswitch or network plugin runs a pod there?): remove that pod first, or pick another namespace or interface name")]
    NetnsBusy {
        /// Pod name.
        pod: String,
        /// Namespace.
        netns: String,
        /// The interface name.
        ifname: String,
    },
    /// Creating the TAP failed.
    #[error("pod {pod:?}: creating TAP {ifname} in namespace {netns:?}: {source}")]
    Tap {
        /// Pod name.
        pod: String,
        /// The interface name.
        ifname: String,
        /// Namespace.
        netns: String,
        /// The failure.
        source: std::io::Error,
    },
    /// Configuring the pod's interfaces over netlink failed.
    #[error("pod {pod:?}: configuring {what} in namespace {netns:?}: {message}")]
    Netlink {
        /// Pod name.
        pod: String,
        /// Namespace.
        netns: String,
        /// The step.
        what: &'static str,
        /// The error.
        message: String,
    },
    /// No pod with that name.
    #[error("no pod named {0:?}")]
    NoSuchPod(String),
    /// No pod with that container ID and interface.
    #[error("no pod with container ID {container_id:?} and interface {ifname:?}")]
    NoSuchAttachment {
        /// Container ID.
        container_id: String,
        /// Interface name.
        ifname: String,
    },
    /// The switch could not start.
    #[error("starting the switch: {0}")]
    Start(SwitchError),
    /// The host interface could not be made, or the masquerade rules installed.
    #[error("node.{field}: {message}")]
    Host {
        /// `host_interface` or `masquerade`.
        field: &'static str,
        /// What failed.
        message: String,
    },
    /// The tunnel socket could not be bound.
    #[error("binding the VXLAN tunnel to {addr}: {source}")]
    Tunnel {
        /// The address.
        addr: std::net::SocketAddrV4,
        /// The error.
        source: std::io::Error,
    },
    /// The switch refused a peer change (its message names the peer).
    #[error(transparent)]
    Peer(SwitchError),
    /// No service with that name.
    #[error("no service named {0:?}")]
    NoSuchService(String),
    /// The switch refused a service change (its message names the service).
    #[error(transparent)]
    Service(SwitchError),
}

/// Where a peer (or a service) came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSource {
    /// A `[[peers]]` (`[[services]]`) entry of the config file.
    Config,
    /// `podswitch peer add` (`service add`); the default for a status without a source.
    #[default]
    Runtime,
    /// A lease in etcd (`[cluster]`).
    Etcd,
}

impl std::fmt::Display for PeerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Config => "config",
            Self::Runtime => "runtime",
            Self::Etcd => "etcd",
        })
    }
}

/// A peer as `podswitch peer list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    /// What the peer was added as.
    pub spec: PeerSpec,
    /// Where it came from.
    pub source: PeerSource,
    /// For a peer from etcd: the ID of the etcd lease its key is attached to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

/// What [`Node::apply_etcd_peer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerChange {
    /// A new peer.
    Added,
    /// The peer's underlay, CIDR or VTEP MAC changed.
    Updated,
    /// Nothing to do.
    Unchanged,
}

#[derive(Clone)]
struct PodRecord {
    /// The TAP queues' descriptors (open while the switch holds the port), to hand over on an
    /// upgrade.
    fds: Vec<std::os::fd::RawFd>,
    /// As added, with the address filled in (`spec.ip` is `Some(ip)`).
    spec: PodSpec,
    /// The pod's address.
    ip: Ipv4Addr,
    netns: NetNs,
    created_netns: bool,
    /// Kept in the state file: added at runtime (a CNI attachment or `pod add`), so brought
    /// back by the next start.
    recorded: bool,
}

/// A running node.
pub struct Node {
    spec: NodeSpec,
    /// The node's pod CIDR and gateway (given, or leased before the node started).
    net: crate::pipeline::NodeConfig,
    switch: Switch,
    pods: Mutex<BTreeMap<String, PodRecord>>,
    peers: Mutex<Vec<PeerStatus>>,
    /// The services, by name, with where each came from (see `services.rs`).
    services: Mutex<BTreeMap<String, services::ServiceRecord>>,
    /// The state file (pods added at runtime, namespaces created), once
    /// [`Node::restore_attachments`] set it.
    state: OnceLock<PathBuf>,
    /// Namespaces an earlier run of this node created and did not delete (it was killed): found
    /// again, they are still the node's to delete.
    created_before: std::collections::BTreeSet<String>,
    /// What the state file holds. Taken last, after any other lock (pods, peers, services
    /// each update their part and write the file under it).
    record: Mutex<StateFile>,
    /// The host interface's queue descriptors, to hand over on an upgrade.
    host_fds: Mutex<Vec<std::os::fd::RawFd>>,
    /// What the process that exec'ed this one handed over, until [`Node::resume`].
    inherited: Mutex<Option<upgrade::Handover>>,
    /// The host interface's name, if the node has one.
    host: Option<String>,
    /// The socket for the node's routes through it, once the interface is up.
    host_routes: Mutex<Option<host::Routes>>,
    /// The masquerade rules, while installed.
    masquerade: Mutex<Option<host::Masquerade>>,
    /// The connection-tracking generation the flows file was last written at.
    flows_saved: Mutex<Option<u64>>,
    /// When freed flows' memory goes back to the system ([`Node::expire_flows`]).
    heap_trim: Mutex<services::HeapTrim>,
    /// Where the interfaces' receive work goes (`node.rx_steering`), if anywhere.
    rx_steering: Option<steering::RxSteering>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    /// Checks `spec`, starts the switch, adds `peers` and then `pods` in order, each checked
    /// by the same rules as a runtime `peer add` / `pod add`. If one fails, the pods added are
    /// removed again and the error is returned: the node starts whole or not at all.
    ///
    /// Pods without `ip` get theirs before any is added: every fixed address is reserved
    /// first, then each pod without one gets the lowest free address in order (so a fixed
    /// address later in `pods` is never taken by an automatic one earlier); a full range is an
    /// error naming `pods[N].ip`. The pods are then attached in the order given.
    ///
    /// The tunnel socket is bound, and the TAPs are created, in the calling thread's network
    /// namespace (the node's "host" namespace). The workers are pinned among the CPUs the
    /// calling thread may run on (`NodeSpec::dataplane_cpus`).
    pub fn start(spec: NodeSpec, pods: &[PodSpec], peers: &[PeerSpec]) -> Result<Node, NodeError> {
        Self::start_reserving(spec, pods, peers, &[], Recorded::default())
    }

    /// [`Node::start`], then `services` in order (each checked by the rules of a
    /// `[[services]]` entry, errors naming `services[N].*`), with what an earlier run
    /// `recorded` ([`Recorded::read`]): the addresses of the runtime pods
    /// [`Node::restore_attachments`] will bring back are kept from the pods without `ip` (so
    /// each comes back with its address even when the file has gained pods without `ip`
    /// since), and a namespace the earlier run created is still the node's to delete.
    pub fn start_reserving(
        spec: NodeSpec,
        pods: &[PodSpec],
        peers: &[PeerSpec],
        services: &[ServiceSpec],
        recorded: Recorded,
    ) -> Result<Node, NodeError> {
        let reserved: Vec<Ipv4Addr> = recorded.pods.iter().filter_map(|p| p.ip).collect();
        spec.validate()?;
        let allowed = crate::dataplane::allowed_cpus();
        let config = spec.switch_config(&allowed)?;
        let rx_steering = spec
            .rx_steering_cpus(&allowed)?
            .map(|cpus| steering::RxSteering::to_cpus(&cpus));
        if let Some(steering) = &rx_steering {
            tracing::info!(rps_cpus = steering.mask(), "rx_steering on");
        }
        let net = config.node.clone();
        let tunnel = match spec.tunnel_addr() {
            Some(addr) => Some(
                UdpTunnel::bind(*addr.ip(), addr.port())
                    .map_err(|source| NodeError::Tunnel { addr, source })?,
            ),
            None => None,
        };
        let pods = spec::assign_pod_ips(&spec, pods, &reserved)?;
        let switch = Switch::start_with_tunnel(config, tunnel).map_err(NodeError::Start)?;
        let host = (!spec.host_interface.is_empty()).then(|| spec.host_interface.clone());
        let node = Node {
            spec,
            net,
            switch,
            pods: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(Vec::new()),
            services: Mutex::new(BTreeMap::new()),
            state: OnceLock::new(),
            created_before: recorded.created_netns.iter().cloned().collect(),
            record: Mutex::new(StateFile::default()),
            host_fds: Mutex::new(Vec::new()),
            inherited: Mutex::new(recorded.handover),
            host,
            host_routes: Mutex::new(None),
            masquerade: Mutex::new(None),
            flows_saved: Mutex::new(None),
            heap_trim: Mutex::default(),
            rx_steering,
        };
        let after_crash = lock(&node.inherited)
            .as_ref()
            .is_some_and(|h| h.after_crash);
        let flows = node.resume_flows();
        if flows > 0 && after_crash {
            tracing::info!(flows, "tracked flows carried over the crash (flows file)");
        } else if flows > 0 {
            tracing::info!(flows, "tracked flows carried over the upgrade");
        }
        // From here, a failure removes what was made (pods, rules; the TAPs go with the switch).
        if let Err(e) = node.populate(&pods, peers, services) {
            node.shutdown();
            return Err(e);
        }
        Ok(node)
    }

    /// The host interface, the masquerade rules, then `peers`, `services` and `pods` in order.
    fn populate(
        &self,
        pods: &[PodSpec],
        peers: &[PeerSpec],
        services: &[ServiceSpec],
    ) -> Result<(), NodeError> {
        if let Some(ifname) = &self.host {
            self.attach_host(ifname)?;
            if !self.spec.masquerade {
                // Rules a crashed run with masquerade on left behind.
                host::Masquerade::remove_stale(&self.spec.name);
            }
            if self.spec.masquerade {
                let m = host::Masquerade::install(&self.spec.name, self.net.cidr, ifname).map_err(
                    |message| NodeError::Host {
                        field: "masquerade",
                        message,
                    },
                )?;
                *lock(&self.masquerade) = Some(m);
            }
        }
        for peer in peers {
            self.add_peer_from(peer, PeerSource::Config)?;
        }
        // Services before pods: after an upgrade, a pod's first packets to a VIP find their
        // service (and the flow carried over) instead of being dropped.
        for (i, service) in services.iter().enumerate() {
            self.insert_service(
                service,
                &format!("services[{i}]"),
                false,
                PeerSource::Config,
            )?;
        }
        for (i, pod) in pods.iter().enumerate() {
            self.attach_pod(pod, false, &format!("pods[{i}]"))?;
        }
        Ok(())
    }

    /// Applies `node.rx_steering` to `ifname` in `netns` (else in the calling thread's
    /// namespace): if on, on every attachment; if off, to a TAP `handed_over` by an upgrade
    /// (made under the old process's setting, which may have been on). A failure is logged:
    /// the interface works without it.
    fn steer(&self, ifname: &str, netns: Option<&NetNs>, handed_over: bool) {
        let off;
        let steering = match (&self.rx_steering, handed_over) {
            (Some(steering), _) => steering,
            (None, true) => {
                off = steering::RxSteering::off();
                &off
            }
            (None, false) => return,
        };
        let set = match netns {
            Some(ns) => ns
                .run(|| steering.apply(ifname))
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
            None => steering.apply(ifname).map_err(|e| e.to_string()),
        };
        if let Err(e) = set {
            let netns = netns.map_or("", NetNs::name);
            tracing::warn!(
                ifname,
                netns,
                "rx_steering not set ({e}); the interface works without it"
            );
        }
    }

    /// Creates the host interface in the calling thread's namespace and attaches it.
    fn attach_host(&self, ifname: &str) -> Result<(), NodeError> {
        let err = |message| NodeError::Host {
            field: "host_interface",
            message,
        };
        let mac = self.spec.host_mac();
        let net = host::HostNet {
            ifname,
            mac,
            gateway: self.net.gateway,
            prefix_len: self.net.cidr.prefix_len(),
            mtu: self.net.mtu,
        };
        // Handed over by an upgrade: the interface, its address and routes stay as they are.
        let inherited = lock(&self.inherited)
            .as_mut()
            .map(upgrade::Handover::take_host)
            .unwrap_or_default();
        let adopted = (inherited.len() == self.switch.workers())
            .then(|| {
                inherited
                    .into_iter()
                    .map(|fd| TapPort::adopt(fd, ifname))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        tracing::warn!(
                            ifname,
                            "handed-over host interface not adopted ({e}); a new one is made"
                        )
                    })
                    .ok()
            })
            .flatten();
        let handed_over = adopted.is_some();
        let taps = match adopted {
            Some(taps) => taps,
            None => host::create(&net, self.switch.workers()).map_err(err)?,
        };
        self.steer(ifname, None, handed_over);
        *lock(&self.host_fds) = taps.iter().map(TapPort::raw_fd).collect();
        let queues = taps
            .into_iter()
            .map(|q| Box::new(q) as Box<dyn crate::port::Port>)
            .collect();
        let info = crate::table::PortInfo {
            name: ifname.into(),
            kind: crate::table::PortKind::Host { mac: mac.into() },
        };
        self.switch
            .attach_queues(info, queues)
            .map_err(|e| err(e.to_string()))?;
        let routes = host::Routes::open(ifname).map_err(err)?;
        // The node reaches services too (as kube-proxy lets it), from its gateway address.
        routes.set(self.net.service_cidr, true).map_err(err)?;
        *lock(&self.host_routes) = Some(routes);
        tracing::info!(ifname, gateway = %self.net.gateway, %mac, "host interface up");
        Ok(())
    }

    /// Adds or removes the node's route to a peer's CIDR through the host interface. A
    /// failure is logged: the peer's pods still reach each other, only the node itself not.
    fn host_route(&self, cidr: ipnet::Ipv4Net, add: bool) {
        if let Some(routes) = lock(&self.host_routes).as_ref() {
            if let Err(e) = routes.set(cidr, add) {
                tracing::warn!("host route: {e}");
            }
        }
    }

    /// Node name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The node's pod CIDR.
    pub fn pod_cidr(&self) -> ipnet::Ipv4Net {
        self.net.cidr
    }

    /// The pods' gateway.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.net.gateway
    }

    /// Adds a pod (CNI ADD), refused by the same rules as a `[[pods]]` entry (fields named
    /// `pod.*`). Traffic between other pods is not disturbed. The pod is kept in the state file
    /// (once [`Node::restore_attachments`] set one) and re-attached when the daemon starts
    /// again, after a crash too; the file also records whether the node created its
    /// namespace, so a later stop deletes it.
    ///
    /// A pod without `ip` gets the lowest free host address of the node's pod CIDR (not the
    /// network, broadcast or gateway address, nor another pod's), chosen under the pod lock:
    /// two pods added at once never get the same one. The pod keeps it (its status, the state
    /// file and a re-attach carry it); a full range is refused, naming `pod.ip`.
    pub fn add_pod(&self, spec: &PodSpec) -> Result<PodStatus, NodeError> {
        self.attach_pod(spec, true, "pod")
    }

    /// Adds a pod; `at` names it in errors (`pod`).
    fn attach_pod(&self, spec: &PodSpec, recorded: bool, at: &str) -> Result<PodStatus, NodeError> {
        let pod = spec.name.clone();
        let mut pods = lock(&self.pods);
        // The address first (under the lock), then every rule on the pod as it will be.
        let ip = match spec.ip {
            Some(ip) => ip,
            None => spec::free_pod_ip(
                self.net.cidr,
                self.net.gateway,
                pods.values().map(|r| r.ip),
                &format!("{at}.ip"),
            )?,
        };
        let spec = &spec.with_ip(ip);
        let mac = spec.mac_at(ip);
        spec.check(&self.spec, pods.values().map(|r| &r.spec), at)?;
        // Address checks first: nothing is created for a pod the switch would refuse.
        self.switch
            .tables()
            .topology()
            .check_pod(ip, mac.into())
            .map_err(|e| NodeError::Switch {
                pod: pod.clone(),
                source: e.into(),
            })?;
        let (netns, created) =
            NetNs::open_or_create(&spec.netns).map_err(|source| NodeError::Netns {
                pod: pod.clone(),
                source,
            })?;
        // Found, but made by this node before it was killed: still the node's.
        let created = created || self.created_before.contains(&spec.netns);
        let undo_netns = |ns: &NetNs| {
            if created {
                if let Err(e) = ns.delete() {
                    tracing::warn!(pod = %spec.name, "rolling back: {e}");
                }
            }
        };
        let adopted = self.adopt(spec, ip, mac);
        let handed_over = adopted.is_some();
        let tap = match adopted {
            Some(tap) => Ok(tap),
            None => self.plumb(spec, ip, &netns, created),
        };
        let tap = match tap {
            Ok(tap) => tap,
            Err(e) => {
                undo_netns(&netns);
                return Err(e);
            }
        };
        self.steer(&spec.ifname, Some(&netns), handed_over);
        let fds = tap.iter().map(TapPort::raw_fd).collect();
        let queues = tap
            .into_iter()
            .map(|q| Box::new(q) as Box<dyn crate::port::Port>)
            .collect();
        let port = match self.switch.attach_queues(spec.port_info(ip), queues) {
            Ok(id) => id,
            Err(source) => {
                undo_netns(&netns);
                return Err(NodeError::Switch { pod, source });
            }
        };
        tracing::info!(pod = %spec.name, netns = %spec.netns, ip = %ip, port, created_netns = created, "pod added");
        pods.insert(
            spec.name.clone(),
            PodRecord {
                fds,
                spec: spec.clone(),
                ip,
                netns,
                created_netns: created,
                recorded,
            },
        );
        if recorded || created {
            self.save_state(&pods);
        }
        drop(pods);
        self.pod(&spec.name)
            .ok_or(NodeError::NoSuchPod(spec.name.clone()))
    }

    /// The pod's TAP queues handed over by the process that exec'ed this one, if the pod had
    /// the same address and MAC there and every queue checks out (`TapPort::adopt`): its
    /// interface stays as it is. Otherwise the handed-over descriptors are closed (the old TAP
    /// goes) and `None` says to create one.
    fn adopt(&self, spec: &PodSpec, ip: Ipv4Addr, mac: Mac) -> Option<Vec<TapPort>> {
        let (fds, was_ip, was_mac) = lock(&self.inherited).as_mut()?.take_pod(&spec.name)?;
        if was_ip != ip || was_mac != mac || fds.len() != self.switch.workers() {
            tracing::info!(pod = %spec.name, "handed-over TAP not adopted: the pod's address, MAC or queue count changed; a new one is made");
            return None;
        }
        let adopted: Result<Vec<TapPort>, _> = fds
            .into_iter()
            .map(|fd| TapPort::adopt(fd, &spec.ifname))
            .collect();
        match adopted {
            Ok(tap) => Some(tap),
            Err(e) => {
                tracing::warn!(pod = %spec.name, "handed-over TAP not adopted ({e}); a new one is made");
                None
            }
        }
    }

    /// Creates the pod's TAP and configures it inside the pod's namespace.
    ///
    /// The TAP is created in the switch's own namespace under a temporary name, then moved into
    /// the pod's namespace and renamed `eth0` in one netlink request. Opened this way, the TAP's
    /// file descriptor holds a reference to the switch's namespace, not the pod's: deleting the
    /// pod's namespace from outside really destroys it, which unregisters the TAP and tells the
    /// switch (`EBADFD`). Opened inside the pod's namespace, the fd would keep it alive.
    /// Returns one queue of the TAP per worker (all opened here, before the move: a queue is
    /// attached by name in the opener's namespace).
    fn plumb(
        &self,
        spec: &PodSpec,
        ip: Ipv4Addr,
        netns: &NetNs,
        created: bool,
    ) -> Result<Vec<TapPort>, NodeError> {
        let cfg = self.switch.node();
        let ifname = spec.ifname.as_str();
        let net = netlink::PodNet {
            ifname,
            ip,
            prefix_len: cfg.cidr.prefix_len(),
            mac: spec.mac_at(ip),
            mtu: cfg.mtu,
            gateway: cfg.gateway,
        };
        let pod = spec.name.as_str();
        let ns = spec.netns.as_str();
        let netlink_err = |(what, message): (&'static str, String)| NodeError::Netlink {
            pod: pod.into(),
            netns: ns.into(),
            what,
            message,
        };
        let netns_err = |source| NodeError::Netns {
            pod: pod.into(),
            source,
        };
        // An adopted namespace may hold another switch's pod: say so rather than fail on the
        // rename with a bare "File exists".
        if !created
            && netns
                .run(|| netlink::has_link(ifname))
                .map_err(netns_err)?
                .map_err(netlink_err)?
        {
            return Err(NodeError::NetnsBusy {
                pod: pod.into(),
                netns: ns.into(),
                ifname: ifname.into(),
            });
        }
        let tmp = netlink::temporary_ifname();
        let tap = TapPort::create_queues(&tmp, self.switch.workers()).map_err(|source| {
            NodeError::Tap {
                pod: pod.into(),
                ifname: ifname.into(),
                netns: ns.into(),
                source,
            }
        })?;
        let ns_file = std::fs::File::open(netns.path())
            .map_err(|e| netlink_err(("open namespace", e.to_string())))?;
        with_netlink(|handle| async move {
            let idx = link_index(&handle, &tmp)
                .await
                .map_err(|e| ("new TAP", e))?;
            let msg = LinkUnspec::new_with_index(idx)
                .setns_by_fd(ns_file.as_raw_fd())
                .name(ifname.to_string())
                .build();
            handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| ("moving the TAP into the namespace", e.to_string()))
        })
        .map_err(netlink_err)?;
        netns
            .run(|| netlink::configure_pod_interfaces(&net))
            .map_err(netns_err)?
            .map_err(netlink_err)?;
        Ok(tap)
    }

    /// Removes a pod (CNI DEL): detaches its TAP (the device goes away with the fd) and deletes
    /// its namespace if the switch created it (an adopted namespace stays).
    pub fn del_pod(&self, name: &str) -> Result<(), NodeError> {
        let mut pods = lock(&self.pods);
        self.remove_pod(&mut pods, name, true, "pod del")
    }

    /// Removes the pod attached as `ifname` of container `container_id` (CNI DEL, which knows
    /// only those); [`NodeError::NoSuchAttachment`] if there is none.
    pub fn del_attachment(&self, container_id: &str, ifname: &str) -> Result<(), NodeError> {
        let mut pods = lock(&self.pods);
        let name = pods
            .values()
            .find(|r| {
                r.spec.container_id.as_deref() == Some(container_id) && r.spec.ifname == ifname
            })
            .map(|r| r.spec.name.clone())
            .ok_or_else(|| NodeError::NoSuchAttachment {
                container_id: container_id.into(),
                ifname: ifname.into(),
            })?;
        self.remove_pod(&mut pods, &name, true, "CNI DEL of its container")
    }

    /// Removes pod `name` under the pod lock; `forget`: also from the state file (a shutdown
    /// keeps it there, to re-attach the pod on the next start). `why` goes in the log line.
    fn remove_pod(
        &self,
        pods: &mut BTreeMap<String, PodRecord>,
        name: &str,
        forget: bool,
        why: &str,
    ) -> Result<(), NodeError> {
        let rec = pods
            .remove(name)
            .ok_or_else(|| NodeError::NoSuchPod(name.into()))?;
        if forget && (rec.recorded || rec.created_netns) {
            self.save_state(pods);
        }
        if let Err(e) = self.switch.detach(name) {
            // Already gone from the switch (its namespace vanished): nothing to detach.
            tracing::debug!(pod = name, "detach: {e}");
        }
        if rec.created_netns {
            rec.netns.delete().map_err(|source| NodeError::Netns {
                pod: name.into(),
                source,
            })?;
        }
        tracing::info!(pod = name, why, "pod removed");
        Ok(())
    }

    /// Forgets pods whose TAP closed under the switch (namespace deleted from outside).
    /// Returns their names. Other pods are unaffected.
    pub fn reap_vanished(&self) -> Vec<String> {
        let mut pods = lock(&self.pods);
        let gone: Vec<String> = pods
            .keys()
            .filter(|n| self.switch.port(n).is_none())
            .cloned()
            .collect();
        let mut recorded = false;
        for name in &gone {
            if let Some(rec) = pods.remove(name) {
                tracing::warn!(pod = %name, netns = %rec.netns.name(), why = "its TAP closed under the switch (namespace deleted from outside?)", "pod removed");
                recorded |= rec.recorded;
                if rec.created_netns && rec.netns.exists() {
                    let _ = rec.netns.delete();
                }
            }
        }
        if recorded {
            self.save_state(&pods);
        }
        gone
    }

    /// Re-attaches the runtime pods (CNI attachments and `pod add`) recorded in the state file
    /// `path` by an earlier run (see [`Node::add_pod`]), then keeps recording them there. A recorded pod whose
    /// namespace is gone, or that the node now refuses (it conflicts with a pod of the config
    /// file, say), is forgotten with a warning. Returns the names of the pods re-attached.
    pub fn restore_attachments(&self, path: PathBuf) -> Vec<String> {
        let shown = path.display().to_string();
        let recorded = read_state(&path).unwrap_or_else(|e| {
            tracing::warn!(path = %shown, "{e}, its runtime pods, peers and services are forgotten");
            StateFile::default()
        });
        for spec in &recorded.peers {
            if let Err(e) = self.add_peer(spec) {
                tracing::warn!(peer = %spec.name, "recorded peer not restored, forgotten: {e}");
            }
        }
        let mut back = Vec::new();
        for spec in recorded.pods {
            let ns = if spec.netns_is_path() {
                NetNs::open_path(&spec.netns)
            } else {
                NetNs::open(&spec.netns)
            };
            if let Err(e) = ns {
                tracing::warn!(pod = %spec.name, container_id = spec.container_id.as_deref().unwrap_or("-"), "recorded attachment forgotten: {e}");
                continue;
            }
            match self.attach_pod(&spec, true, "pod") {
                Ok(_) => {
                    tracing::info!(pod = %spec.name, netns = %spec.netns, "recorded attachment re-attached");
                    back.push(spec.name);
                }
                Err(e) => {
                    tracing::warn!(pod = %spec.name, container_id = spec.container_id.as_deref().unwrap_or("-"), "recorded attachment not re-attached, forgotten: {e}");
                }
            }
        }
        for spec in &recorded.services {
            if let Err(e) = self.add_service(spec) {
                tracing::warn!(service = %spec.name, "recorded service not restored, forgotten: {e}");
            }
        }
        if self.state.set(path).is_err() {
            tracing::warn!(path = %shown, "a state file is already in use; not switching to this one");
        }
        self.save_state(&lock(&self.pods));
        self.save_peers(&lock(&self.peers));
        self.save_services(&lock(&self.services));
        back
    }

    /// Records the runtime pods and the namespaces the node created, of `pods`.
    fn save_state(&self, pods: &BTreeMap<String, PodRecord>) {
        self.write_state(pods.values());
    }

    /// Records the runtime pods and the namespaces the node created, of `pods`.
    fn write_state<'a>(&self, pods: impl Iterator<Item = &'a PodRecord> + Clone) {
        self.update_record(|r| {
            r.pods = pods
                .clone()
                .filter(|r| r.recorded)
                .map(|r| r.spec.clone())
                .collect();
            r.created_netns = pods
                .filter(|r| r.created_netns)
                .map(|r| r.spec.netns.clone())
                .collect();
        });
    }

    /// Records the peers added at runtime (`peer add`), of `peers`.
    fn save_peers(&self, peers: &[PeerStatus]) {
        self.update_record(|r| {
            r.peers = peers
                .iter()
                .filter(|p| p.source == PeerSource::Runtime)
                .map(|p| p.spec.clone())
                .collect();
        });
    }

    /// Changes the record and writes it to the state file, if there is one. A failure is
    /// logged: the node keeps working, only a restart would forget what is not recorded.
    pub(super) fn update_record(&self, change: impl FnOnce(&mut StateFile)) {
        let Some(path) = self.state.get() else {
            return;
        };
        let mut record = lock(&self.record);
        change(&mut record);
        // Nothing to remember (a clean stop): no file, rather than an empty one.
        if record.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::error!(path = %path.display(), "removing the empty state file: {e}");
                }
                _ => {}
            }
            return;
        }
        if let Err(e) = write_json_atomically(path, &*record) {
            tracing::error!(path = %path.display(), "recording the runtime state: {e}");
        }
    }

    /// The switch (the metrics server reads its counters and tables).
    pub(crate) fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The pods' MTU.
    pub(crate) fn pod_mtu(&self) -> u16 {
        self.spec.pod_mtu()
    }

    /// Status of one pod.
    pub fn pod(&self, name: &str) -> Option<PodStatus> {
        let pods = lock(&self.pods);
        let rec = pods.get(name)?;
        let port = self.switch.port(name)?;
        let counters = port.metrics.snapshot();
        Some(PodStatus {
            spec: rec.spec.clone(),
            mac: rec.spec.mac_at(rec.ip),
            prefix_len: self.net.cidr.prefix_len(),
            gateway: self.net.gateway,
            port: port.id,
            created_netns: rec.created_netns,
            drops: counters.dropped.by_label(),
            counters,
        })
    }

    /// Status of every pod, by name.
    pub fn pods(&self) -> Vec<PodStatus> {
        let names: Vec<String> = lock(&self.pods).keys().cloned().collect();
        names.iter().filter_map(|n| self.pod(n)).collect()
    }

    /// Frames each data-plane thread has handled (see `Switch::worker_frames`).
    pub fn worker_frames(&self) -> Vec<u64> {
        self.switch.worker_frames()
    }

    /// Data-plane stalls (rounds over 100 ms) of each worker, since the start.
    pub fn worker_stalls(&self) -> Vec<u64> {
        self.switch.worker_stalls()
    }

    /// The MAC table.
    pub(crate) fn fdb(&self) -> Vec<FdbEntry> {
        let names: BTreeMap<PortId, String> = self
            .switch
            .ports()
            .into_iter()
            .map(|p| (p.id, p.info.name))
            .collect();
        let table = self.switch.tables().mac.load();
        let now = self.switch.tables().mac.now();
        let mut out: Vec<FdbEntry> = table
            .iter()
            .map(|(key, e)| FdbEntry {
                mac: mac_from_key(key).into(),
                port: e.port,
                port_name: names.get(&e.port).cloned(),
                is_static: e.is_static,
                age_secs: now.saturating_sub(e.last_seen()),
            })
            .collect();
        out.sort_by(|a, b| (a.port, &a.mac).cmp(&(b.port, &b.mac)));
        out
    }

    /// Adds a peer node (`peer add`), refused by the same rules as a `[[peers]]` entry (fields
    /// named `peer.*`); flows to other peers and between local pods go on.
    pub(crate) fn add_peer(&self, spec: &PeerSpec) -> Result<(), NodeError> {
        self.add_peer_from(spec, PeerSource::Runtime)
    }

    fn add_peer_from(&self, spec: &PeerSpec, source: PeerSource) -> Result<(), NodeError> {
        let mut peers = lock(&self.peers);
        spec.check(&self.spec, peers.iter().map(|p| &p.spec), "peer")?;
        self.switch
            .add_peer(spec.to_peer(&self.spec))
            .map_err(NodeError::Peer)?;
        self.host_route(spec.pod_cidr, true);
        peers.push(PeerStatus {
            spec: spec.clone(),
            source,
            lease: None,
        });
        if source == PeerSource::Runtime {
            self.save_peers(&peers);
        }
        tracing::info!(peer = %spec.name, underlay = %spec.underlay, pod_cidr = %spec.pod_cidr, %source, "peer added");
        Ok(())
    }

    /// Adds or updates a peer learnt from an etcd lease (`lease`: its etcd lease ID), by the
    /// same rules as `peer add`. A changed underlay, CIDR or VTEP MAC replaces the peer in one
    /// step. A peer of the same name from elsewhere is not touched (refused).
    pub(crate) fn apply_etcd_peer(
        &self,
        spec: &PeerSpec,
        lease: Option<i64>,
    ) -> Result<PeerChange, NodeError> {
        let mut peers = lock(&self.peers);
        let Some(at) = peers.iter().position(|p| p.spec.name == spec.name) else {
            drop(peers);
            self.add_peer_from(spec, PeerSource::Etcd)?;
            if let Some(p) = lock(&self.peers)
                .iter_mut()
                .find(|p| p.spec.name == spec.name)
            {
                p.lease = lease;
            }
            return Ok(PeerChange::Added);
        };
        if peers[at].source != PeerSource::Etcd {
            return Err(NodeError::Refused(SpecError::new(
                "peer.name",
                format!(
                    "{:?} is already a peer from the {}",
                    spec.name, peers[at].source
                ),
            )));
        }
        peers[at].lease = lease;
        if peers[at].spec == *spec {
            return Ok(PeerChange::Unchanged);
        }
        let others: Vec<&PeerSpec> = peers
            .iter()
            .filter(|p| p.spec.name != spec.name)
            .map(|p| &p.spec)
            .collect();
        spec.check(&self.spec, others.iter().copied(), "peer")?;
        self.switch
            .replace_peer(&spec.name, spec.to_peer(&self.spec))
            .map_err(NodeError::Peer)?;
        if peers[at].spec.pod_cidr != spec.pod_cidr {
            self.host_route(peers[at].spec.pod_cidr, false);
            self.host_route(spec.pod_cidr, true);
        }
        tracing::info!(peer = %spec.name, underlay = %spec.underlay, pod_cidr = %spec.pod_cidr, vtep_mac = %spec.vtep_mac(), source = "etcd", "peer updated");
        peers[at].spec = spec.clone();
        Ok(PeerChange::Updated)
    }

    /// Removes a peer node and its route (`peer del`). A peer learnt from etcd is refused: it
    /// would come back at the next list; its lease is what to delete.
    pub(crate) fn del_peer(&self, name: &str) -> Result<(), NodeError> {
        if lock(&self.peers)
            .iter()
            .any(|p| p.spec.name == name && p.source == PeerSource::Etcd)
        {
            return Err(NodeError::Refused(SpecError::new(
                "peer.name",
                format!("{name:?} is learnt from etcd: delete its lease there instead"),
            )));
        }
        self.remove_peer(name, "peer del")
    }

    /// Removes a peer node and its route, whatever its source.
    pub(crate) fn remove_peer(&self, name: &str, why: &str) -> Result<(), NodeError> {
        let mut peers = lock(&self.peers);
        let removed = self.switch.remove_peer(name).map_err(NodeError::Peer)?;
        self.host_route(removed.pod_cidr, false);
        peers.retain(|p| p.spec.name != name);
        self.save_peers(&peers);
        tracing::info!(peer = %name, why, "peer removed");
        Ok(())
    }

    /// How many peers came from etcd, and whether `name` is one of them (without copying the
    /// peer list: the etcd agent asks after every event).
    pub(crate) fn etcd_peers(&self, name: &str) -> (usize, bool) {
        let peers = lock(&self.peers);
        let mut n = 0;
        let mut found = false;
        for p in peers.iter().filter(|p| p.source == PeerSource::Etcd) {
            n += 1;
            found |= p.spec.name == name;
        }
        (n, found)
    }

    /// Every peer, as added, with where it came from.
    pub(crate) fn peers(&self) -> Vec<PeerStatus> {
        lock(&self.peers).clone()
    }

    /// Switch-wide counters: `(rx, forwarded, delivered locally, dropped)`.
    pub(crate) fn totals(&self) -> (u64, u64, u64, u64) {
        let m = self.switch.metrics().snapshot();
        (m.rx, m.forwarded, m.delivered_locally, m.dropped_total())
    }

    /// Drops by reason label, non-zero only (the control protocol's `drops_by_reason`).
    pub(crate) fn drops_by_label(&self) -> BTreeMap<String, u64> {
        self.drops()
            .into_iter()
            .map(|(r, n)| (r.label().to_string(), n))
            .collect()
    }

    /// Drops by reason (non-zero only).
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        let m = self.switch.metrics().snapshot();
        DropReason::ALL
            .iter()
            .map(|r| (*r, m.dropped(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Removes every pod (and the namespaces the switch created) and the masquerade rules.
    /// Idempotent. The state file keeps the runtime pods in namespaces the node did not create
    /// (CNI attachments), for the next start to re-attach them; the runtime services are
    /// forgotten (after a clean stop the config file is the truth; a crash or an upgrade
    /// does not come here and keeps them).
    pub fn shutdown(&self) {
        if let Some(m) = lock(&self.masquerade).take() {
            m.remove();
        }
        self.forget_flows();
        self.update_record(|r| r.services.clear());
        let mut pods = lock(&self.pods);
        // What the next start needs: the runtime pods in namespaces someone else owns (CNI's),
        // to re-attach them; a pod whose namespace goes with it cannot come back.
        let kept: Vec<PodRecord> = pods
            .values()
            .filter(|r| r.recorded && !r.created_netns)
            .cloned()
            .collect();
        if !pods.is_empty() {
            // (Once: a second shutdown finds no pods and must not erase the record.)
            self.write_state(kept.iter());
        }
        let names: Vec<String> = pods.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.remove_pod(&mut pods, &name, false, "the node stops") {
                tracing::warn!(pod = %name, "shutdown: {e}");
            }
        }
    }
}

/// The state file: what a node must know again after a restart, a crash included.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(super) struct StateFile {
    /// The pods added at runtime (CNI attachments and `pod add`), as added.
    pods: Vec<PodSpec>,
    /// The namespaces the node created (for config and runtime pods) and has not deleted.
    #[serde(default)]
    created_netns: Vec<String>,
    /// The peers added at runtime (`peer add`).
    #[serde(default)]
    peers: Vec<PeerSpec>,
    /// The services added at runtime (`service add`).
    #[serde(default)]
    pub(super) services: Vec<ServiceSpec>,
}

impl StateFile {
    /// True if it records nothing (read back, an absent file is the same).
    fn is_empty(&self) -> bool {
        self.pods.is_empty()
            && self.created_netns.is_empty()
            && self.peers.is_empty()
            && self.services.is_empty()
    }
}

/// What an earlier run of the node recorded in its state file, for [`Node::start_reserving`].
#[derive(Debug, Default)]
pub struct Recorded {
    /// The pods added at runtime, to be restored ([`Node::restore_attachments`]).
    pods: Vec<PodSpec>,
    /// The namespaces it created and did not delete.
    created_netns: Vec<String>,
    /// What the process that exec'ed this one handed over (an upgrade).
    handover: Option<upgrade::Handover>,
}

impl Recorded {
    /// The record in the state file `path`: empty if the file is absent or unreadable
    /// ([`Node::restore_attachments`] says why).
    pub fn read(path: &Path) -> Recorded {
        let state = read_state(path).unwrap_or_default();
        Recorded {
            pods: state.pods,
            created_netns: state.created_netns,
            handover: None,
        }
    }

    /// With the handover of an upgrade ([`upgrade::Handover::inherited`]).
    pub fn with_handover(mut self, handover: Option<upgrade::Handover>) -> Recorded {
        self.handover = handover;
        self
    }
}

/// The state file `path` (empty if it does not exist), or why it cannot be read.
fn read_state(path: &Path) -> Result<StateFile, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes)
            .map_err(|e| format!("state file unreadable: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(e) => Err(format!("reading the state file: {e}")),
    }
}

/// Writes `value` as JSON (and a newline) to `path` through a temporary file and a rename,
/// so a reader (or a crash) sees the old contents or the new, never a part. The node's files
/// (state, flows, the subnet held) are all written this way.
pub(crate) fn write_json_atomically(
    path: &Path,
    value: &impl serde::Serialize,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut text = serde_json::to_vec_pretty(value).map_err(std::io::Error::from)?;
    text.push(b'\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}
