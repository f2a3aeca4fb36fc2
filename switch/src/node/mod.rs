//! A node: the switch plus real pods, each a network namespace whose `eth0` is a TAP held by the
//! switch. This is what `podswitch run` drives.
//!
//! - [`spec`]: what a node, a pod and a peer are ([`NodeSpec`], [`PodSpec`], [`PeerSpec`]) and
//!   every rule about them;
//! - this module: the running [`Node`] (its start, the host interface, counters, the MAC
//!   table, its stop), which refuses pods and peers by those rules;
//! - `pods`: adding and removing pods ([`PodStatus`]); `peers`: the peer nodes
//!   ([`PeerStatus`]); `services`: its Services (ClusterIP) at runtime ([`ServiceStatus`],
//!   [`FlowStatus`]); `state`: the state file a restart reads back ([`Recorded`]); `error`: why
//!   an operation fails ([`NodeError`]);
//! - `netlink`: configuring a pod's interfaces inside its namespace;
//!
//! The node knows nothing of the control protocol: the control plane (`crate::control`)
//! calls it, never the other way round.
//!
//! Invariants: a pod record exists exactly while its TAP is attached to the switch; the pod
//! lock is held across an add or delete, the peer lock across a peer add or delete, so
//! concurrent control requests cannot interleave them (and the checks see every pod or peer);
//! the state file's lock is taken last.

mod capture;
mod error;
mod fast_flows;
pub mod guard;
mod host;
mod netlink;
mod node_lock;
mod peers;
mod pods;
mod services;
pub(crate) mod spec;
mod state;
mod steering;
mod upgrade;
mod veth;

pub use steering::{enable_flow_table, SOCK_FLOW_ENTRIES};

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::netns::NetNs;
use crate::pipeline::DropReason;
use crate::port::{TapPort, UdpTunnel};
use crate::switch::Switch;
use crate::table::PortId;
use crate::wire::mac_from_key;

pub use capture::NodeCapture;
pub use error::{CaptureError, NodeError, StateError};
pub(crate) use netlink::{link_index, with_netlink};
pub use node_lock::{KeptAcrossExec, NodeLock};
pub(crate) use peers::PeerChange;
pub use peers::{PeerSource, PeerStatus};
use pods::PodRecord;
pub use pods::PodStatus;
pub use services::{FlowStatus, ServiceStatus};
pub use spec::{
    derived_pod_mac, Mac, MacParseError, NodeSpec, PeerSpec, PodInterface, PodSpec, SpecError,
    POD_INTERFACE_ENV,
};
pub use spec::{ServiceAffinity, ServiceProto, ServiceSpec};
pub use state::Recorded;
use state::StateFile;
pub(crate) use state::{make_parent, write_json_atomically};
pub use upgrade::{Handover, Upgrade, SAVE_FLOWS_EVERY};
pub use veth::FastPathStatus;

/// Sets the loopback interface up in the calling thread's namespace (the node's, after
/// `node.netns` was entered: a bare namespace has it down).
pub fn loopback_up() -> Result<(), String> {
    netlink::loopback_up().map_err(|(step, e)| format!("{step}: {e}"))
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
    /// Flow events the fast path's ring buffer had dropped at the last look.
    flow_events_lost: Mutex<u64>,
    /// Where the interfaces' receive work goes (`node.rx_steering`), if anywhere.
    rx_steering: Option<steering::RxSteering>,
    /// The kernel fast path, in veth mode (`node.pod_interface = "veth"`).
    fast_path: Option<std::sync::Arc<Mutex<podswitch_fastpath::FastPath>>>,
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
        let allowed = crate::switch::allowed_cpus();
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
        // Veth mode needs the kernel's eBPF pieces: refused here, naming the missing one.
        let fast_path = match spec.pod_interface() {
            PodInterface::Tap => None,
            PodInterface::Veth => Some(std::sync::Arc::new(Mutex::new(
                podswitch_fastpath::FastPath::load(spec.router_mac().0)
                    .map_err(NodeError::FastPathUnavailable)?,
            ))),
        };
        let switch = Switch::start_with_tunnel(config, tunnel).map_err(NodeError::Start)?;
        if let Some(fast) = &fast_path {
            // An upgrade hands the attached programs over through pins (a BPF file system);
            // without one, it detaches and attaches again.
            // The pins of the process before this one, where it says they are.
            let dir = recorded
                .handover
                .as_ref()
                .and_then(|h| h.fast_path_pins.clone())
                .unwrap_or_else(|| Self::pin_dir_of(&spec));
            match podswitch_fastpath::ensure_bpf_fs() {
                Ok(()) => lock(fast).set_pin_dir(dir),
                Err(e) => tracing::warn!("fast path: no handover without a gap: {e}"),
            }
            // Service flows the switch decides are compiled into the fast path from now on.
            let flows = fast_flows::KernelFlows::new(lock(fast).flows());
            switch
                .tables()
                .conntrack
                .offload_to(std::sync::Arc::new(flows));
        }
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
            flow_events_lost: Mutex::default(),
            rx_steering,
            fast_path,
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
        // (The fast path's handover finishes in `resume`, once runtime pods are back too; a
        // failure leaves the pins to the process the upgrade's guard starts again.)
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
        self.tunnel_onto_fast_path();
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

    /// The switch (the metrics server reads its counters and tables).
    pub(crate) fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The pods' MTU.
    pub(crate) fn pod_mtu(&self) -> u16 {
        self.spec.pod_mtu()
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

    /// Node-wide counters, the fast path's forwards included: `(rx, forwarded, delivered
    /// locally, dropped)`, with `rx = forwarded + delivered locally + dropped`.
    pub(crate) fn totals(&self) -> (u64, u64, u64, u64) {
        let m = self.switch.metrics().snapshot();
        let fast = self.fast_path_forwarded();
        (
            m.rx + fast,
            m.forwarded + fast,
            m.delivered_locally,
            m.dropped_total(),
        )
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

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}
