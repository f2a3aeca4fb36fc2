//! Veth pods (`node.pod_interface = "veth"`): the pod's `eth0` is one end of a veth pair, the
//! other end (the *host veth*, `psv` and a hash of the pod's name) stays in the node's
//! namespace, and beside it the switch creates the pod's *upcall TAP* (`psu` and the same
//! hash). The upcall TAP's queues are the pod's switch port, exactly as a TAP pod's; the kernel
//! fast path (`podswitch_fastpath`) forwards what the switch has compiled and hands the rest up
//! through it.
//!
//! The host-side names are derived from the pod's name, so a node restarted after a crash finds
//! what its earlier run left (the veth survives the process; the upcall TAP and the programs do
//! not) and makes it anew.
//!
//! Invariants: the host veth exists exactly while the pod is attached (a failed add deletes
//! it, and with it the pod's end); the host-side devices never carry addresses, never forward
//! (`forwarding` 0, IPv6 off) and never send anything of their own, so a packet on them that no
//! program took is dropped, not routed.

use std::net::Ipv4Addr;

use rtnetlink::{LinkUnspec, LinkVeth};

use super::pods::netlink_error;
use super::{link_index, lock, netlink, with_netlink, Mac, Node, NodeError, PodSpec};
use crate::netns::NetNs;
use crate::pipeline::PortCounts;
use crate::port::TapPort;

/// The host-side devices of a veth pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HostSide {
    /// The host veth (the pod's `eth0` is its peer).
    pub(super) veth: String,
    /// The upcall TAP.
    pub(super) upcall: String,
}

impl HostSide {
    /// The names for pod `pod` of the node `node` (its name and control socket: what tells
    /// two nodes on one machine apart): `psv` / `psu` and eight hex digits of the FNV-1a hash
    /// of `node` and `pod`, each followed by a NUL (11 bytes, under the kernel's 15).
    pub(super) fn of(node: &str, pod: &str) -> Self {
        let mut h: u32 = 0x811c_9dc5;
        for b in node.bytes().chain([0]).chain(pod.bytes()).chain([0]) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        HostSide {
            veth: format!("psv{h:08x}"),
            upcall: format!("psu{h:08x}"),
        }
    }
}

impl HostSide {
    /// Whether the host veth still exists in the calling thread's namespace (it goes when
    /// the pod's namespace is deleted: a veth's ends go together).
    pub(super) fn veth_exists(&self) -> bool {
        nix::net::if_::if_nametoindex(self.veth.as_str()).is_ok()
    }

    /// Whether the upcall TAP exists: some live process holds its descriptors (it is not
    /// persistent, so it goes with the last of them).
    fn upcall_held(&self) -> bool {
        nix::net::if_::if_nametoindex(self.upcall.as_str()).is_ok()
    }
}

/// Makes a host-side device inert for the node's own stack: no IPv6 (no router solicitations
/// or DAD of its own into the pod or the switch), no forwarding of what reaches the stack.
/// Best effort: a kernel without IPv6 has no such files.
fn quiet(ifname: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        "1",
    );
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding"), "0");
}

/// Deletes link `ifname` of the calling thread's namespace if it exists.
pub(super) fn delete_link(ifname: &str) -> Result<(), (&'static str, String)> {
    with_netlink(|handle| async move {
        let Ok(idx) = link_index(&handle, ifname).await else {
            return Ok(());
        };
        handle
            .link()
            .del(idx)
            .execute()
            .await
            .map_err(|e| ("deleting the host veth", e.to_string()))
    })
}

impl Node {
    /// The host-side devices of this node's pod `pod`.
    pub(super) fn host_side(&self, pod: &str) -> HostSide {
        let node = format!("{}\0{}", self.spec.name, self.spec.control_path().display());
        HostSide::of(&node, pod)
    }

    /// Creates a veth pod's interfaces: the upcall TAP and the veth pair in the node's
    /// namespace, the pod's end moved into `netns` as `spec.ifname` and configured there as a
    /// TAP pod's `eth0` is, both host-side devices up and quiet; then puts the pod on the fast
    /// path. Returns the upcall TAP's queues (the pod's port). On failure nothing of it is
    /// left (the caller deletes a namespace it created).
    pub(super) fn plumb_veth(
        &self,
        spec: &PodSpec,
        ip: Ipv4Addr,
        netns: &NetNs,
        created: bool,
    ) -> Result<Vec<TapPort>, NodeError> {
        let host = self.host_side(&spec.name);
        let pod = spec.name.as_str();
        let netlink_err = netlink_error(spec);
        // A host veth whose upcall TAP is gone is what a crashed run of this node left (the
        // pod's end goes with it); one whose upcall TAP is held belongs to a live switch.
        if host.veth_exists() && !host.upcall_held() {
            delete_link(&host.veth).map_err(&netlink_err)?;
        }
        self.refuse_busy_netns(spec, netns, created)?;
        let tap =
            TapPort::create_queues(&host.upcall, self.switch.workers()).map_err(|source| {
                NodeError::Tap {
                    pod: pod.into(),
                    ifname: host.upcall.clone(),
                    netns: self
                        .spec
                        .netns
                        .clone()
                        .unwrap_or_else(|| "(the switch's own)".into()),
                    source,
                }
            })?;
        let made = self.make_veth(spec, ip, netns, &host).map_err(netlink_err);
        if let Err(e) = made {
            let _ = delete_link(&host.veth);
            return Err(e);
        }
        if let Err(e) = self.onto_fast_path(spec, ip, &host) {
            let _ = delete_link(&host.veth);
            return Err(e);
        }
        Ok(tap)
    }

    /// The veth pair, the pod's end configured inside `netns`, both host-side devices up.
    fn make_veth(
        &self,
        spec: &PodSpec,
        ip: Ipv4Addr,
        netns: &NetNs,
        host: &HostSide,
    ) -> Result<(), (&'static str, String)> {
        let cfg = self.switch.node();
        let tmp = netlink::temporary_ifname();
        let ns_file =
            std::fs::File::open(netns.path()).map_err(|e| ("open namespace", e.to_string()))?;
        let mtu = u32::from(cfg.mtu);
        with_netlink(|handle| async move {
            handle
                .link()
                .add(LinkVeth::new(&host.veth, &tmp).mtu(mtu).build())
                .execute()
                .await
                .map_err(|e| ("creating the veth pair", e.to_string()))?;
            let what = ("the new veth", "moving the veth into the namespace");
            netlink::move_link(&handle, &tmp, &ns_file, &spec.ifname, what).await
        })?;
        quiet(&host.veth);
        quiet(&host.upcall);
        with_netlink(|handle| async move {
            for dev in [&host.veth, &host.upcall] {
                let idx = link_index(&handle, dev)
                    .await
                    .map_err(|e| ("a host-side device", e))?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(idx).mtu(mtu).up().build())
                    .execute()
                    .await
                    .map_err(|e| ("a host-side device up", e.to_string()))?;
            }
            Ok(())
        })?;
        let net = self.pod_net(spec, ip);
        netns
            .run(|| netlink::configure_pod_interfaces(&net))
            .map_err(|e| ("the pod's namespace", e.to_string()))?
    }

    /// Attaches the fast path's programs to the pod's host-side devices and compiles the pod
    /// into its maps.
    pub(super) fn onto_fast_path(
        &self,
        spec: &PodSpec,
        ip: Ipv4Addr,
        host: &HostSide,
    ) -> Result<(), NodeError> {
        let Some(fast) = &self.fast_path else {
            return Ok(());
        };
        let mac: Mac = spec.mac_at(ip);
        lock(fast)
            .attach(&podswitch_fastpath::VethPod {
                name: &spec.name,
                veth: &host.veth,
                upcall: &host.upcall,
                mac: mac.0,
                ip,
            })
            .map_err(|source| NodeError::FastPath {
                pod: spec.name.clone(),
                source,
            })
    }

    /// Takes a veth pod off the fast path (unreachable through it at once) and deletes its
    /// host veth (the pod's end goes with it; its upcall TAP goes with its descriptors).
    pub(super) fn unplumb_veth(&self, pod: &str) {
        if let Some(fast) = &self.fast_path {
            lock(fast).detach(pod);
        }
        if let Err((what, e)) = delete_link(&self.host_side(pod).veth) {
            tracing::warn!(pod, "{what}: {e}");
        }
    }
}

/// The kernel fast path of a veth-mode node, as `status`, the metrics and the web view show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FastPathStatus {
    /// How the programs are attached: `tcx`, or `clsact` on kernels before 6.6.
    pub hook: String,
    /// Pods compiled into the maps (withdrawn ones included).
    pub pods: usize,
    /// Pods withdrawn from the fast path (a capture of them runs).
    pub withdrawn: usize,
    /// Packets the programs handled, by path: `local` (forwarded pod to pod in the kernel),
    /// `encap` / `decap` (to and from peers in VXLAN), `up_*` (handed to the switch, and why),
    /// `down` (written by the switch into a pod), `underlay_pass` (VXLAN left to the switch's
    /// socket), `drop_unknown_device`, `up_flow_control` (a compiled Service flow's SYN or
    /// RST), `translated` (of those forwarded, packets of compiled Service flows).
    pub packets: std::collections::BTreeMap<String, u64>,
    /// Service flows compiled into the kernel (both directions translated there).
    #[serde(default)]
    pub flows: usize,
    /// Service flows the kernel would not take (its map full), since the start: they stay
    /// with the switch.
    #[serde(default)]
    pub flows_refused: u64,
}

impl FastPathStatus {
    /// Packets the programs forwarded themselves (never seen by the switch): pod to pod on the
    /// node, encapsulated to peers, decapsulated from them.
    pub fn forwarded(&self) -> u64 {
        ["local", "encap", "decap"]
            .iter()
            .map(|p| self.packets.get(*p).copied().unwrap_or(0))
            .sum()
    }
}

impl Node {
    /// The fast path's state, in veth mode.
    pub fn fast_path(&self) -> Option<FastPathStatus> {
        let fast = lock(self.fast_path.as_ref()?);
        let hook = match fast.hook() {
            podswitch_fastpath::Hook::Tcx => "tcx",
            podswitch_fastpath::Hook::Clsact => "clsact",
        };
        Some(FastPathStatus {
            hook: hook.into(),
            pods: fast.pods(),
            withdrawn: fast.withdrawn(),
            packets: fast
                .path_stats()
                .by_path
                .into_iter()
                .map(|(l, n)| (l.to_string(), n))
                .collect(),
            flows: self.switch.tables().conntrack.compiled(),
            flows_refused: self.switch.tables().conntrack.offload_refused(),
        })
    }

    /// Adds what the fast path carried for pod `name` (which the switch never saw) to its
    /// port's `counts`. Nothing in TAP mode.
    pub(super) fn add_fast_path_counts(&self, name: &str, counts: &mut PortCounts) {
        if let Some(f) = self
            .fast_path
            .as_ref()
            .and_then(|f| lock(f).pod_stats(name))
        {
            add_carried(
                counts,
                (f.from_pod_packets, f.from_pod_bytes),
                (f.to_pod_packets, f.to_pod_bytes),
            );
        }
    }

    /// Packets the fast path forwarded node-wide (zero in TAP mode): received from a pod and
    /// forwarded, never seen by the switch.
    pub(crate) fn fast_path_forwarded(&self) -> u64 {
        self.fast_path().map_or(0, |f| f.forwarded())
    }

    /// Withdraws pod `name` from the fast path while the returned guard lives (a capture of
    /// it runs): everything it sends and receives goes through the switch. `None` in TAP mode.
    pub(super) fn withdraw_from_fast_path(&self, name: &str) -> Option<Withdrawal> {
        let fast = self.fast_path.as_ref()?;
        if let Err(e) = lock(fast).withdraw(name) {
            tracing::warn!(pod = name, "fast path: {e}");
        }
        Some(Withdrawal {
            fast: std::sync::Arc::clone(fast),
            what: Withdrawn::Pod(name.into()),
        })
    }

    /// Withdraws peer `name` from the fast path while the returned guard lives (a capture of
    /// it runs): what is exchanged with it crosses the switch. `None` in TAP mode.
    pub(super) fn withdraw_peer_from_fast_path(&self, name: &str) -> Option<Withdrawal> {
        let fast = self.fast_path.as_ref()?;
        lock(fast).withdraw_peer(name);
        Some(Withdrawal {
            fast: std::sync::Arc::clone(fast),
            what: Withdrawn::Peer(name.into()),
        })
    }
}

impl Node {
    /// In veth mode with an underlay: lets the fast path tunnel from the interface holding the
    /// underlay address, so pods' packets to peers and peers' packets to pods skip the switch.
    /// An underlay on the loopback interface (a test's in-process underlay), or none found,
    /// leaves tunnelling to the switch (logged).
    pub(super) fn tunnel_onto_fast_path(&self) {
        let (Some(fast), Some(addr)) = (&self.fast_path, self.spec.tunnel_addr()) else {
            return;
        };
        let underlay = *addr.ip();
        let found = nix::ifaddrs::getifaddrs().ok().and_then(|mut all| {
            all.find(|a| {
                a.address
                    .as_ref()
                    .and_then(|s| s.as_sockaddr_in())
                    .is_some_and(|s| s.ip() == underlay)
            })
        });
        let ifname = match found {
            Some(a)
                if a.flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK) =>
            {
                tracing::info!(%underlay, "fast path: the underlay is on the loopback interface; the switch tunnels");
                return;
            }
            Some(a) => a.interface_name,
            None => {
                tracing::warn!(%underlay, "fast path: no interface holds the underlay address; the switch tunnels");
                return;
            }
        };
        let tunnel = podswitch_fastpath::Tunnel {
            underlay,
            ifname: &ifname,
            vni: self.spec.vni,
            port: addr.port(),
        };
        match lock(fast).set_tunnel(&tunnel) {
            Ok(()) => {
                tracing::info!(%underlay, ifname, "fast path tunnels from the underlay interface")
            }
            Err(e) => tracing::warn!(%underlay, ifname, "fast path: {e}; the switch tunnels"),
        }
    }

    /// Puts peer `spec` on the fast path (replacing what it had under that name). A failure
    /// is logged: the switch carries that peer's traffic.
    pub(super) fn peer_onto_fast_path(&self, spec: &super::PeerSpec) {
        let Some(fast) = &self.fast_path else {
            return;
        };
        let peer = podswitch_fastpath::Peer {
            name: &spec.name,
            underlay: spec.underlay,
            vtep_mac: spec.vtep_mac().0,
            cidr: (spec.pod_cidr.network(), spec.pod_cidr.prefix_len()),
        };
        if let Err(e) = lock(fast).add_peer(&peer) {
            tracing::warn!(peer = %spec.name, "fast path: {e}; the switch carries its traffic");
        }
    }

    /// Takes peer `name` off the fast path.
    pub(super) fn peer_off_fast_path(&self, name: &str) {
        if let Some(fast) = &self.fast_path {
            lock(fast).remove_peer(name);
        }
    }

    /// Every peer's counters, what the fast path carried included.
    pub(crate) fn peer_counts(&self) -> std::collections::BTreeMap<String, PortCounts> {
        let mut counts = self.switch.peer_counts();
        if let Some(fast) = &self.fast_path {
            let fast = lock(fast);
            for (name, c) in &mut counts {
                if let Some(f) = fast.peer_stats(name) {
                    add_carried(c, (f.rx_packets, f.rx_bytes), (f.tx_packets, f.tx_bytes));
                }
            }
        }
        counts
    }
}

/// Adds what the fast path carried from (`rx`) and to (`tx`) a pod or peer, as (packets,
/// bytes), to the switch's counts of its port.
fn add_carried(counts: &mut PortCounts, rx: (u64, u64), tx: (u64, u64)) {
    counts.rx_frames += rx.0;
    counts.rx_bytes += rx.1;
    counts.tx_frames += tx.0;
    counts.tx_bytes += tx.1;
}

/// What a [`Withdrawal`] took off the fast path.
enum Withdrawn {
    Pod(String),
    Peer(String),
}

/// A pod or peer withdrawn from the fast path; dropping it puts it back (once no other
/// withdrawal holds it).
pub(super) struct Withdrawal {
    fast: std::sync::Arc<std::sync::Mutex<podswitch_fastpath::FastPath>>,
    what: Withdrawn,
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        let mut fast = lock(&self.fast);
        let (restored, name) = match &self.what {
            Withdrawn::Pod(name) => (fast.restore(name), name),
            Withdrawn::Peer(name) => (fast.restore_peer(name), name),
        };
        if let Err(e) = restored {
            tracing::warn!(name = %name, "fast path: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_side_names_are_stable_short_and_distinct() {
        let a = HostSide::of("node-a", "web-0");
        assert_eq!(a, HostSide::of("node-a", "web-0"));
        assert_eq!(a.veth.len(), 11);
        assert!(a.veth.starts_with("psv") && a.upcall.starts_with("psu"));
        assert_eq!(a.veth[3..], a.upcall[3..]);
        assert_ne!(a, HostSide::of("node-a", "web-1"));
        assert_ne!(a, HostSide::of("node-b", "web-0"));
        // Not a concatenation: the separator counts.
        assert_ne!(HostSide::of("a", "bc"), HostSide::of("ab", "c"));
    }
}
