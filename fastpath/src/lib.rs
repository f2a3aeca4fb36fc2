//! podswitch's kernel fast path for veth pods: tc eBPF programs that execute what the switch
//! has decided, the maps the switch writes them from, and their loader.
//!
//! A veth pod's `eth0` is one end of a veth pair; the other end (the *host veth*) lives in the
//! switch's namespace with `from_pod` attached at ingress (tcx where the kernel has it, a
//! `clsact` qdisc otherwise). Beside it the switch holds the pod's *upcall device*, a TAP in the
//! switch's namespace: its descriptors are the pod's switch port, exactly as a TAP-mode pod's.
//! `from_pod` forwards what the maps say (pod to pod on this node, straight into the
//! destination's namespace with `bpf_redirect_peer`) and hands everything else to the upcall
//! device unchanged (GSO superframes and partial checksums included), so the pipeline decides
//! it as it decides a TAP pod's frame. What the switch writes to the upcall device, `to_pod`
//! delivers into the pod.
//!
//! Invariants: the maps describe only pods whose programs are attached and whose upcall
//! device exists; [`FastPath::detach`] empties the maps before it detaches, so a removed pod
//! is unreachable through the fast path at once. The switch's tables stay the truth: the maps
//! are compiled from them, never the other way round. Dropping the [`FastPath`] detaches every
//! program (the links are owned by this process; they are pinned only across an upgrade, see
//! `handover.rs`).
//!
//! The programs are C (`bpf/`), built by clang from `build.rs` and loaded with aya: see
//! `docs/fast-path.md` for why.

// Unsafe code is refused except where a file says why it needs it (maps.rs: `aya::Pod`).
#![deny(unsafe_code)]

mod error;
mod flows;
mod handover;
mod maps;
mod peers;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{tc, SchedClassifier, TcAttachType};
use aya::Ebpf;

pub use error::FastPathError;
pub use flows::{FlowEvent, FlowRewrite, FlowTable, FlowTuple};
pub use handover::{ensure_bpf_fs, release_dir, BPF_FS};
use maps::{
    ip_key, DowncallEntry, EndpointKey, NodeEntry, PeerEntry, PodEntry, PortEntry, F_SLOW, PATHS,
};
pub use maps::{PeerStats, PodStats, MAX_FLOW_ENTRIES, MAX_PEERS, MAX_PODS};
pub use peers::Peer;
use peers::PeerAttached;

/// The compiled programs (`bpf/fastpath.bpf.c`).
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

/// How programs are attached to devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tcx (Linux 6.6 and later): links owned by this process.
    Tcx,
    /// A `clsact` qdisc and a direct-action `cls_bpf` filter (older kernels).
    Clsact,
}

/// A veth pod as the fast path sees it.
#[derive(Debug, Clone, Copy)]
pub struct VethPod<'a> {
    /// The pod's name (the key [`FastPath`] keeps it under).
    pub name: &'a str,
    /// Its host-side veth, in the switch's namespace.
    pub veth: &'a str,
    /// Its upcall device (the TAP whose descriptors are the pod's switch port).
    pub upcall: &'a str,
    /// The pod's MAC.
    pub mac: [u8; 6],
    /// The pod's address.
    pub ip: Ipv4Addr,
}

/// The node's tunnel, as the fast path encapsulates and decapsulates it (flannel's VXLAN).
#[derive(Debug, Clone)]
pub struct Tunnel<'a> {
    /// The node's underlay address.
    pub underlay: Ipv4Addr,
    /// The interface holding it, where encapsulated packets leave and arrive.
    pub ifname: &'a str,
    /// The VXLAN network identifier.
    pub vni: u32,
    /// The UDP destination port.
    pub port: u16,
}

/// A Service backend: what a pod sends from this address and port (`proto`: 6 TCP, 17 UDP)
/// goes through the switch, whose connection tracking translates replies back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// The backend's address.
    pub ip: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// The IP protocol number.
    pub proto: u8,
}

impl Endpoint {
    fn key(&self) -> EndpointKey {
        EndpointKey {
            ip: ip_key(self.ip),
            port: self.port.to_be(),
            proto: self.proto,
            pad: 0,
        }
    }
}

/// Packets the programs handled, node-wide, by what happened to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathStats {
    /// `(label, packets)` for every path (`local`, `up_spoofed`, `down`, ...), in a fixed order.
    pub by_path: Vec<(&'static str, u64)>,
}

impl PathStats {
    /// Packets on the path labelled `label` (0 for an unknown label).
    pub fn get(&self, label: &str) -> u64 {
        self.by_path
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, n)| *n)
    }
}

/// A pod on the fast path: where it is in the maps and which links it holds.
#[derive(Debug)]
struct Attached {
    slot: u16,
    /// The host veth's and the upcall device's names (where their links are pinned).
    veth: String,
    upcall: String,
    veth_ifindex: u32,
    upcall_ifindex: u32,
    ip: Ipv4Addr,
    /// `from_pod`'s and `to_pod`'s links; `None` while pinned for the next process.
    links: Option<[tc::SchedClassifierLinkId; 2]>,
    /// Withdrawals not yet restored (captures running).
    withdrawals: u32,
}

/// The loaded programs and their maps. One per node.
pub struct FastPath {
    bpf: Ebpf,
    hook: Hook,
    ports: HashMap<MapData, u32, PortEntry>,
    pods: HashMap<MapData, u32, PodEntry>,
    downcalls: HashMap<MapData, u32, DowncallEntry>,
    endpoints: HashMap<MapData, EndpointKey, u8>,
    /// What `endpoints` holds.
    endpoint_set: BTreeSet<Endpoint>,
    stats: PerCpuArray<MapData, PodStats>,
    paths: PerCpuArray<MapData, u64>,
    node: Array<MapData, NodeEntry>,
    routes: aya::maps::LpmTrie<MapData, u32, PeerEntry>,
    peers: HashMap<MapData, u32, PeerEntry>,
    peer_stats: PerCpuArray<MapData, PeerStats>,
    peers_attached: BTreeMap<String, PeerAttached>,
    /// Compiled Service flows, shared with the switch's workers.
    flows: std::sync::Arc<FlowTable>,
    /// `from_underlay`'s link, once the tunnel is set.
    /// `from_underlay`'s device and link (`None` while pinned for the next process).
    underlay_link: Option<(String, Option<tc::SchedClassifierLinkId>)>,
    /// Where links are pinned for a handover to the next process (bpffs), if anywhere.
    pin_dir: Option<std::path::PathBuf>,
    cpus: usize,
    attached: BTreeMap<String, Attached>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("hook", &self.hook)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

/// `from_pod`, attached to host veths.
const FROM_POD: &str = "from_pod";
/// `to_pod`, attached to upcall devices.
const TO_POD: &str = "to_pod";
/// `from_underlay`, attached to the underlay interface.
const FROM_UNDERLAY: &str = "from_underlay";

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> FastPathError {
    move |e| FastPathError::Map {
        map,
        detail: e.to_string(),
    }
}

/// The piece of the kernel a load failure shows missing, judged from its error text.
fn missing_piece(detail: &str) -> &'static str {
    if detail.contains("bpf_redirect_peer") {
        "the bpf_redirect_peer helper (Linux 5.10 or later)"
    } else if detail.contains("Operation not permitted") {
        "permission to load eBPF programs (root, or CAP_BPF and CAP_NET_ADMIN)"
    } else if detail.contains("Function not implemented") || detail.contains("os error 38") {
        "the bpf() system call (CONFIG_BPF_SYSCALL)"
    } else if detail.contains("unknown func") {
        "an eBPF helper this kernel lacks"
    } else {
        "eBPF tc programs (CONFIG_BPF_SYSCALL, CONFIG_NET_CLS_BPF or CONFIG_NET_XGRESS)"
    }
}

fn unsupported(detail: String) -> FastPathError {
    FastPathError::Unsupported {
        missing: missing_piece(&detail),
        detail,
    }
}

/// An error and every source under it, on one line (aya puts the verifier's words in a source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn ifindex(ifname: &str) -> Result<u32, FastPathError> {
    nix::net::if_::if_nametoindex(ifname).map_err(|e| FastPathError::NoDevice {
        ifname: ifname.into(),
        detail: e.to_string(),
    })
}

impl FastPath {
    /// Loads the programs and creates their maps for a node whose router (gateway) MAC is
    /// `router_mac`. A kernel that cannot run them is refused, naming what it lacks.
    pub fn load(router_mac: [u8; 6]) -> Result<Self, FastPathError> {
        let mut bpf = Ebpf::load(PROGRAMS).map_err(|e| unsupported(chain(&e)))?;
        for name in [FROM_POD, TO_POD, FROM_UNDERLAY] {
            let prog: &mut SchedClassifier = program(&mut bpf, name)?;
            prog.load().map_err(|e| unsupported(chain(&e)))?;
        }
        let mut node: Array<MapData, NodeEntry> = take(&mut bpf, "node")?;
        node.set(
            0,
            NodeEntry {
                router_mac,
                ..NodeEntry::default()
            },
            0,
        )
        .map_err(map_err("node"))?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| FastPathError::Map {
            map: "stats",
            detail: format!("{what}: {e}"),
        })?;
        let hook = match aya::util::KernelVersion::current() {
            Ok(v) if v < aya::util::KernelVersion::new(6, 6, 0) => Hook::Clsact,
            _ => Hook::Tcx,
        };
        Ok(Self {
            ports: take(&mut bpf, "ports")?,
            pods: take(&mut bpf, "pods")?,
            downcalls: take(&mut bpf, "downcalls")?,
            endpoints: take(&mut bpf, "endpoints")?,
            endpoint_set: BTreeSet::new(),
            stats: take(&mut bpf, "stats")?,
            node,
            routes: take(&mut bpf, "routes")?,
            peers: take(&mut bpf, "peers")?,
            peer_stats: take(&mut bpf, "peer_stats")?,
            peers_attached: BTreeMap::new(),
            flows: std::sync::Arc::new(FlowTable::new(
                take(&mut bpf, "flows")?,
                take(&mut bpf, "flow_events")?,
            )),
            underlay_link: None,
            pin_dir: None,
            paths: take(&mut bpf, "paths")?,
            bpf,
            hook,
            cpus,
            attached: BTreeMap::new(),
        })
    }

    /// The compiled Service flows: the switch's connection tracking writes them (from its
    /// workers, as flows are decided) and reads back what the program carried.
    pub fn flows(&self) -> std::sync::Arc<FlowTable> {
        std::sync::Arc::clone(&self.flows)
    }

    /// How programs are attached here.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Puts a pod on the fast path: writes its upcall and its own packets' entries, attaches
    /// `from_pod` to its host veth and `to_pod` to its upcall device, then writes the pod as
    /// a destination (nothing is forwarded to it before its own packets can go up). A pod
    /// whose links the process before an upgrade pinned gets all its entries now and its
    /// links at [`FastPath::finish_handover`]. On failure nothing of it is left attached or in
    /// the maps.
    pub fn attach(&mut self, pod: &VethPod<'_>) -> Result<(), FastPathError> {
        if self.attached.contains_key(pod.name) {
            return Err(FastPathError::Duplicate(pod.name.into()));
        }
        let slot = self.free_slot()?;
        let veth_ifindex = ifindex(pod.veth)?;
        let upcall_ifindex = ifindex(pod.upcall)?;
        // A reused slot starts from zero.
        let zeros = PerCpuValues::try_from(vec![PodStats::default(); self.cpus]).map_err(|e| {
            FastPathError::Map {
                map: "stats",
                detail: e.to_string(),
            }
        })?;
        self.stats
            .set(u32::from(slot), zeros, 0)
            .map_err(map_err("stats"))?;
        let mut attached = Attached {
            slot,
            veth: pod.veth.into(),
            upcall: pod.upcall.into(),
            veth_ifindex,
            upcall_ifindex,
            ip: pod.ip,
            links: None,
            withdrawals: 0,
        };
        if self.pinned(pod.veth) || self.pinned(pod.upcall) {
            // Handed over by the process before an upgrade, whose programs still run on the
            // pod's devices: our entries now, its links adopted once every pod and peer is in
            // our maps ([`FastPath::finish_handover`]).
            if let Err(e) = self.write_entries(pod, slot, veth_ifindex, upcall_ifindex) {
                self.remove_entries(&attached);
                return Err(e);
            }
            self.attached.insert(pod.name.into(), attached);
            return Ok(());
        }
        // Its upcall and its own packets' entry, its programs, then the pod as a destination.
        let sources = self.write_source_entries(pod, slot, veth_ifindex, upcall_ifindex);
        if let Err(e) = sources {
            self.remove_entries(&attached);
            return Err(e);
        }
        let from = match self.attach_one(FROM_POD, pod.veth) {
            Ok(l) => l,
            Err(e) => {
                self.remove_entries(&attached);
                return Err(e);
            }
        };
        let to = match self.attach_one(TO_POD, pod.upcall) {
            Ok(l) => l,
            Err(e) => {
                self.remove_entries(&attached);
                self.detach_one(FROM_POD, from);
                return Err(e);
            }
        };
        attached.links = Some([from, to]);
        if let Err(e) = self.write_destination_entry(pod, slot, veth_ifindex) {
            self.remove_entries(&attached);
            self.detach_links(attached);
            return Err(e);
        }
        self.attached.insert(pod.name.into(), attached);
        Ok(())
    }

    /// Writes a pod's entries: its upcall first, the pod as a destination last (nothing is
    /// forwarded to it before its own packets can go up).
    fn write_entries(
        &mut self,
        pod: &VethPod<'_>,
        slot: u16,
        veth_ifindex: u32,
        upcall_ifindex: u32,
    ) -> Result<(), FastPathError> {
        self.write_source_entries(pod, slot, veth_ifindex, upcall_ifindex)?;
        self.write_destination_entry(pod, slot, veth_ifindex)
    }

    /// The pod's upcall (`downcalls`) and its own packets' entry (`ports`).
    fn write_source_entries(
        &mut self,
        pod: &VethPod<'_>,
        slot: u16,
        veth_ifindex: u32,
        upcall_ifindex: u32,
    ) -> Result<(), FastPathError> {
        self.downcalls
            .insert(
                upcall_ifindex,
                DowncallEntry {
                    ifindex: veth_ifindex,
                    slot: u32::from(slot),
                },
                0,
            )
            .map_err(map_err("downcalls"))?;
        self.ports
            .insert(
                veth_ifindex,
                PortEntry {
                    mac: pod.mac,
                    slot,
                    ip: ip_key(pod.ip),
                    upcall_ifindex,
                    flags: 0,
                },
                0,
            )
            .map_err(map_err("ports"))
    }

    /// The pod as a destination (`pods`).
    fn write_destination_entry(
        &mut self,
        pod: &VethPod<'_>,
        slot: u16,
        veth_ifindex: u32,
    ) -> Result<(), FastPathError> {
        self.pods
            .insert(
                ip_key(pod.ip),
                PodEntry {
                    mac: pod.mac,
                    slot,
                    ifindex: veth_ifindex,
                    flags: 0,
                },
                0,
            )
            .map_err(map_err("pods"))
    }

    /// Removes the pod's entries, the destination first: from here on nothing reaches it
    /// through the fast path, and what it still sends is dropped as from an unknown device.
    fn remove_entries(&mut self, a: &Attached) {
        self.remove_pod_entries(a.ip, a.veth_ifindex, a.upcall_ifindex);
    }

    fn remove_pod_entries(&mut self, ip: Ipv4Addr, veth_ifindex: u32, upcall_ifindex: u32) {
        // A missing key is not an error here: a failed attach may not have written it.
        let _ = self.pods.remove(&ip_key(ip));
        let _ = self.ports.remove(&veth_ifindex);
        let _ = self.downcalls.remove(&upcall_ifindex);
    }

    fn detach_links(&mut self, a: Attached) {
        let Some([from, to]) = a.links else {
            return;
        };
        self.detach_one(FROM_POD, from);
        self.detach_one(TO_POD, to);
    }

    /// Takes a pod off the fast path: its entries go first (unreachable at once), then its
    /// programs are detached. Unknown pods are ignored.
    pub fn detach(&mut self, name: &str) {
        if let Some(a) = self.attached.remove(name) {
            self.remove_entries(&a);
            self.detach_links(a);
        }
    }

    /// Withdraws a pod from the fast path: everything it sends and everything sent to it goes
    /// through the switch (while a capture of it runs). Counted: the pod comes back when every
    /// withdrawal is [`FastPath::restore`]d. Unknown pods are ignored.
    pub fn withdraw(&mut self, name: &str) -> Result<(), FastPathError> {
        let Some(a) = self.attached.get_mut(name) else {
            return Ok(());
        };
        if !first_withdrawal(&mut a.withdrawals) {
            return Ok(());
        }
        let (veth, ip) = (a.veth_ifindex, ip_key(a.ip));
        // The pod as a destination first: no moment where traffic to it bypasses the switch
        // while its own goes up.
        self.set_flags(veth, ip, F_SLOW, true)
    }

    /// Ends one [`FastPath::withdraw`]al of a pod; the last puts it back on the fast path.
    pub fn restore(&mut self, name: &str) -> Result<(), FastPathError> {
        let Some(a) = self.attached.get_mut(name) else {
            return Ok(());
        };
        if !last_restore(&mut a.withdrawals) {
            return Ok(());
        }
        let (veth, ip) = (a.veth_ifindex, ip_key(a.ip));
        self.set_flags(veth, ip, 0, false)
    }

    fn set_flags(
        &mut self,
        veth: u32,
        ip: u32,
        flags: u32,
        destination_first: bool,
    ) -> Result<(), FastPathError> {
        let mut port = self.ports.get(&veth, 0).map_err(map_err("ports"))?;
        let mut pod = self.pods.get(&ip, 0).map_err(map_err("pods"))?;
        port.flags = flags;
        pod.flags = flags;
        if destination_first {
            self.pods.insert(ip, pod, 0).map_err(map_err("pods"))?;
            self.ports.insert(veth, port, 0).map_err(map_err("ports"))
        } else {
            self.ports.insert(veth, port, 0).map_err(map_err("ports"))?;
            self.pods.insert(ip, pod, 0).map_err(map_err("pods"))
        }
    }

    /// Makes `endpoints` the Service backends the program hands up: new ones are written
    /// before old ones go, so a backend in both is never missing. The caller adds a backend
    /// here before the switch translates any flow to it.
    pub fn set_endpoints(&mut self, endpoints: BTreeSet<Endpoint>) -> Result<(), FastPathError> {
        for e in endpoints.difference(&self.endpoint_set) {
            self.endpoints
                .insert(e.key(), 1, 0)
                .map_err(map_err("endpoints"))?;
        }
        for e in self.endpoint_set.difference(&endpoints) {
            let _ = self.endpoints.remove(&e.key());
        }
        self.endpoint_set = endpoints;
        Ok(())
    }

    /// Lets the programs tunnel: `from_underlay` is attached to the underlay interface and the
    /// node's tunnel written, after which peers added with [`FastPath::add_peer`] are reached
    /// (and heard) without the switch. Outer source ports follow the namespace's
    /// `ip_local_port_range`, as the kernel's vxlan.
    pub fn set_tunnel(&mut self, tunnel: &Tunnel<'_>) -> Result<(), FastPathError> {
        let ifindex = ifindex(tunnel.ifname)?;
        self.write_tunnel(tunnel, ifindex)?;
        if self.underlay_link.is_none() {
            // Handed over: the old process's program goes on until the handover finishes.
            let link = match self.pinned(tunnel.ifname) {
                true => None,
                false => Some(self.attach_one(FROM_UNDERLAY, tunnel.ifname)?),
            };
            self.underlay_link = Some((tunnel.ifname.to_string(), link));
        }
        Ok(())
    }

    /// Writes the node's tunnel (`ifindex`: the underlay interface's) to the `node` map.
    fn write_tunnel(&mut self, tunnel: &Tunnel<'_>, ifindex: u32) -> Result<(), FastPathError> {
        let (port_min, port_max) = local_port_range();
        let mut entry = self.node.get(&0, 0).map_err(map_err("node"))?;
        entry.vxlan_port = tunnel.port.to_be();
        entry.underlay_ip = ip_key(tunnel.underlay);
        entry.underlay_ifindex = ifindex;
        entry.vni = tunnel.vni;
        entry.port_min = port_min;
        entry.port_max = port_max;
        self.node.set(0, entry, 0).map_err(map_err("node"))
    }

    /// Pods on the fast path (withdrawn ones included).
    pub fn pods(&self) -> usize {
        self.attached.len()
    }

    /// Pods withdrawn from the fast path (their traffic goes through the switch).
    pub fn withdrawn(&self) -> usize {
        self.attached.values().filter(|a| a.withdrawals > 0).count()
    }

    /// What the fast path forwarded for the pod, summed over CPUs (`None`: not on it).
    pub fn pod_stats(&self, name: &str) -> Option<PodStats> {
        let a = self.attached.get(name)?;
        let per_cpu = self.stats.get(&u32::from(a.slot), 0).ok()?;
        let mut sum = PodStats::default();
        for s in per_cpu.iter() {
            sum += *s;
        }
        Some(sum)
    }

    /// Packets the programs handled, by path, summed over CPUs.
    pub fn path_stats(&self) -> PathStats {
        let by_path = PATHS
            .iter()
            .map(|label| (*label, self.path(label)))
            .collect();
        PathStats { by_path }
    }

    /// Packets on the path labelled `label` (one of [`PathStats`]'s), summed over CPUs; 0
    /// for an unknown label.
    pub fn path(&self, label: &str) -> u64 {
        PATHS
            .iter()
            .position(|l| *l == label)
            .and_then(|i| u32::try_from(i).ok())
            .and_then(|i| self.paths.get(&i, 0).ok())
            .map_or(0, |v| v.iter().sum())
    }

    fn free_slot(&self) -> Result<u16, FastPathError> {
        let used: std::collections::BTreeSet<u16> =
            self.attached.values().map(|a| a.slot).collect();
        (0..u16::try_from(MAX_PODS).unwrap_or(u16::MAX))
            .find(|s| !used.contains(s))
            .ok_or(FastPathError::Full { max: MAX_PODS })
    }

    fn attach_one(
        &mut self,
        program_name: &'static str,
        ifname: &str,
    ) -> Result<tc::SchedClassifierLinkId, FastPathError> {
        if let Some(link) = self.adopt(program_name, ifname) {
            return Ok(link);
        }
        let attach_err = |detail: String| FastPathError::Attach {
            program: program_name,
            ifname: ifname.into(),
            detail,
        };
        if self.hook == Hook::Clsact {
            match tc::qdisc_add_clsact(ifname) {
                Ok(()) => {}
                Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(attach_err(chain(&e))),
            }
        }
        let prog = program(&mut self.bpf, program_name)?;
        prog.attach(ifname, TcAttachType::Ingress)
            .map_err(|e| attach_err(chain(&e)))
    }

    fn detach_one(&mut self, program_name: &'static str, link: tc::SchedClassifierLinkId) {
        if let Ok(prog) = program(&mut self.bpf, program_name) {
            // The device may be gone already (a deleted namespace takes the veth with it):
            // then the kernel has detached the program itself.
            if let Err(e) = prog.detach(link) {
                tracing::debug!("detaching {program_name}: {e}");
            }
        }
    }
}

/// The names of the programs attached by tcx at ingress of `ifname` (in the calling thread's
/// namespace), in order: what an operator (or a test) checks to see the fast path there, or
/// gone after the switch stopped.
pub fn attached_programs(ifname: &str) -> Result<Vec<String>, FastPathError> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress).map_err(|e| {
        FastPathError::NoDevice {
            ifname: ifname.into(),
            detail: chain(&e),
        }
    })?;
    Ok(programs
        .iter()
        .map(|p| p.name_as_str().unwrap_or("?").to_string())
        .collect())
}

/// Counts one more withdrawal (a capture starts); true if it is the first (the entries are
/// to change).
fn first_withdrawal(withdrawals: &mut u32) -> bool {
    *withdrawals += 1;
    *withdrawals == 1
}

/// Counts one withdrawal fewer (a capture ends); true if it was the last (the entries go
/// back). Nothing to restore: false.
fn last_restore(withdrawals: &mut u32) -> bool {
    if *withdrawals == 0 {
        return false;
    }
    *withdrawals -= 1;
    *withdrawals == 0
}

/// The calling thread's namespace's `ip_local_port_range` (the kernel's vxlan picks outer
/// source ports in it); Linux's default when unreadable.
fn local_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            match (it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi))) if lo < hi => Some((lo, hi)),
                _ => None,
            }
        })
        .unwrap_or((32768, 60999))
}

fn program<'a>(
    bpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, FastPathError> {
    bpf.program_mut(name)
        .ok_or_else(|| unsupported(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| unsupported(chain(&e)))
}

fn take<T>(bpf: &mut Ebpf, name: &'static str) -> Result<T, FastPathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf.take_map(name).ok_or(FastPathError::Map {
        map: name,
        detail: "missing from the object".into(),
    })?;
    T::try_from(map).map_err(map_err(name))
}

#[cfg(test)]
mod programs_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that refuses veth mode is told what it lacks, from the kernel's own words.
    #[test]
    fn a_refusal_names_the_missing_piece() {
        let cases = [
            (
                "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: unknown func bpf_redirect_peer#155",
                "bpf_redirect_peer",
            ),
            ("bpf_map_create failed: Operation not permitted (os error 1)", "permission"),
            ("bpf() failed: Function not implemented (os error 38)", "bpf() system call"),
            ("unknown func bpf_redirect_neigh#152", "helper this kernel lacks"),
            ("something else entirely", "eBPF tc programs"),
        ];
        for (detail, want) in cases {
            let e = unsupported(detail.to_string());
            let text = e.to_string();
            assert!(text.contains(want), "{detail:?} -> {text}");
            assert!(text.starts_with("veth mode needs "), "{text}");
            assert!(text.contains(detail), "the kernel's words are kept: {text}");
        }
    }

    #[test]
    fn path_stats_are_read_by_label() {
        let s = PathStats {
            by_path: vec![("local", 5), ("encap", 2)],
        };
        assert_eq!(s.get("encap"), 2);
        assert_eq!(s.get("nothing"), 0);
    }
}
