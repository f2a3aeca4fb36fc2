//! A node: the switch plus real pods, each a network namespace whose `eth0` is a TAP held by the
//! switch. This is what `podswitch run` drives.
//!
//! Adding a pod: open or create its namespace, create the TAP inside it, configure it through
//! rtnetlink from inside the namespace (MAC, MTU, address, `lo` and `eth0` up, default route via
//! the gateway, IPv6 off: pods are IPv4-only here), then attach the TAP to the switch. Any
//! failure undoes what was done: the TAP disappears with its fd, and a namespace the switch
//! created is deleted; an adopted namespace is left as it was found.
//!
//! Invariants: a pod record exists exactly while its TAP is attached to the switch; pod names
//! and namespaces are unique (two pods in one namespace would be one pod); the pod lock is held
//! across an add or delete so concurrent control requests cannot interleave them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};

use futures::TryStreamExt;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use crate::netns::{NetNs, NetnsError};
use crate::pipeline::{DropReason, NodeConfig, PortCounts};
use crate::port::{TapPort, UdpTunnel};
use crate::switch::{Switch, SwitchConfig, SwitchError};
use crate::table::{MacTableConfig, Peer, PortId, PortInfo, PortKind};
use crate::wire::{format_mac, mac_from_key, EthernetAddress};

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
    pub counters: PortCounts,
}

/// A peer node as `podswitch peer list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    /// Node name.
    pub name: String,
    /// Tunnel endpoint.
    pub underlay: SocketAddrV4,
    /// Pod CIDR it owns.
    pub pod_cidr: String,
    /// VTEP MAC.
    pub vtep_mac: String,
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

/// What a pod is made of, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// Pod name.
    pub name: String,
    /// Network namespace name.
    pub netns: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Pod MAC.
    pub mac: EthernetAddress,
}

/// Why a node operation failed. Each variant says which pod and what step.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The switch refused the pod (name, address).
    #[error("pod {pod:?}: {source}")]
    Switch {
        /// Pod name.
        pod: String,
        /// The refusal.
        source: SwitchError,
    },
    /// Namespace handling failed.
    #[error("pod {pod:?}: {source}")]
    Netns {
        /// Pod name.
        pod: String,
        /// The failure.
        source: NetnsError,
    },
    /// Creating the TAP failed.
    #[error("pod {pod:?}: creating TAP eth0 in namespace {netns:?}: {source}")]
    Tap {
        /// Pod name.
        pod: String,
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
    /// A pod with that name exists.
    #[error("pod {0:?} already exists")]
    DuplicatePod(String),
    /// Another pod uses that namespace.
    #[error("pod {pod:?}: namespace {netns:?} already belongs to pod {owner:?}")]
    NetnsInUse {
        /// Pod name.
        pod: String,
        /// Namespace.
        netns: String,
        /// The pod that has it.
        owner: String,
    },
    /// No pod with that name.
    #[error("no pod named {0:?}")]
    NoSuchPod(String),
    /// The switch could not start.
    #[error("starting the switch: {0}")]
    Start(SwitchError),
    /// The tunnel socket could not be bound.
    #[error("binding the VXLAN tunnel to {addr}: {source}")]
    Tunnel {
        /// The address.
        addr: SocketAddrV4,
        /// The error.
        source: std::io::Error,
    },
    /// A peer was refused (overlapping CIDR, duplicate) or is unknown.
    #[error("peer {peer:?}: {source}")]
    Peer {
        /// Peer name.
        peer: String,
        /// The refusal.
        source: SwitchError,
    },
}

struct PodRecord {
    netns: NetNs,
    created_netns: bool,
    ip: Ipv4Addr,
    mac: EthernetAddress,
}

/// A running node.
pub struct Node {
    name: String,
    switch: Switch,
    pods: Mutex<BTreeMap<String, PodRecord>>,
}

/// Settings of a node (from the config's `[node]` and `[[peers]]`).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Node name.
    pub name: String,
    /// Data-plane settings.
    pub node: NodeConfig,
    /// MAC table settings.
    pub mac_table: MacTableConfig,
    /// Where the VXLAN tunnel listens (`underlay:vxlan_port`); `None`: a node without peers.
    pub underlay: Option<SocketAddrV4>,
    /// Peer nodes at start.
    pub peers: Vec<Peer>,
    /// Data-plane threads; each pod's TAP gets one queue per worker.
    pub workers: usize,
    /// CPUs the workers are pinned to (see [`SwitchConfig::cpus`]); empty: not pinned.
    pub cpus: Vec<usize>,
}

impl Node {
    /// Starts the switch and adds `pods` in order. If one fails, the ones added are removed
    /// again and the error is returned: the node starts whole or not at all.
    ///
    /// The tunnel socket is bound, and the TAPs are created, in the calling thread's network
    /// namespace (the node's "host" namespace).
    pub fn start(settings: NodeSettings, pods: &[PodPlan]) -> Result<Node, NodeError> {
        let tunnel = match settings.underlay {
            Some(addr) => Some(
                UdpTunnel::bind(*addr.ip(), addr.port())
                    .map_err(|source| NodeError::Tunnel { addr, source })?,
            ),
            None => None,
        };
        let switch = Switch::start_with_tunnel(
            SwitchConfig {
                node: settings.node,
                mac: settings.mac_table,
                workers: settings.workers,
                cpus: settings.cpus,
            },
            tunnel,
        )
        .map_err(NodeError::Start)?;
        for peer in settings.peers {
            let name = peer.name.clone();
            switch
                .add_peer(peer)
                .map_err(|source| NodeError::Peer { peer: name, source })?;
        }
        let node = Node {
            name: settings.name,
            switch,
            pods: Mutex::new(BTreeMap::new()),
        };
        for plan in pods {
            if let Err(e) = node.add_pod(plan) {
                node.shutdown();
                return Err(e);
            }
        }
        Ok(node)
    }

    /// Node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The switch.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, PodRecord>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a pod (CNI ADD). Traffic between other pods is not disturbed.
    pub fn add_pod(&self, plan: &PodPlan) -> Result<PodStatus, NodeError> {
        let pod = plan.name.clone();
        let mut pods = self.lock();
        if pods.contains_key(&plan.name) {
            return Err(NodeError::DuplicatePod(pod));
        }
        if let Some((owner, _)) = pods.iter().find(|(_, r)| r.netns.name() == plan.netns) {
            return Err(NodeError::NetnsInUse {
                pod,
                netns: plan.netns.clone(),
                owner: owner.clone(),
            });
        }
        // Address checks first: nothing is created for a pod the switch would refuse.
        self.switch
            .tables()
            .topology()
            .check_pod(plan.ip, plan.mac)
            .map_err(|e| NodeError::Switch {
                pod: pod.clone(),
                source: e.into(),
            })?;
        let (netns, created) =
            NetNs::open_or_create(&plan.netns).map_err(|source| NodeError::Netns {
                pod: pod.clone(),
                source,
            })?;
        let undo_netns = |ns: &NetNs| {
            if created {
                if let Err(e) = ns.delete() {
                    tracing::warn!(pod = %plan.name, "rolling back: {e}");
                }
            }
        };
        let tap = match self.plumb(plan, &netns) {
            Ok(tap) => tap,
            Err(e) => {
                undo_netns(&netns);
                return Err(e);
            }
        };
        let info = PortInfo {
            name: plan.name.clone(),
            kind: PortKind::Pod {
                mac: plan.mac,
                ip: plan.ip,
            },
        };
        let queues = tap
            .into_iter()
            .map(|q| Box::new(q) as Box<dyn crate::port::Port>)
            .collect();
        let port = match self.switch.attach_queues(info, queues) {
            Ok(id) => id,
            Err(source) => {
                undo_netns(&netns);
                return Err(NodeError::Switch { pod, source });
            }
        };
        tracing::info!(pod = %plan.name, netns = %plan.netns, ip = %plan.ip, port, created_netns = created, "pod added");
        pods.insert(
            plan.name.clone(),
            PodRecord {
                netns,
                created_netns: created,
                ip: plan.ip,
                mac: plan.mac,
            },
        );
        drop(pods);
        self.pod(&plan.name)
            .ok_or(NodeError::NoSuchPod(plan.name.clone()))
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
    fn plumb(&self, plan: &PodPlan, netns: &NetNs) -> Result<Vec<TapPort>, NodeError> {
        let cfg = self.switch.node();
        let net = PodNet {
            ip: plan.ip,
            prefix_len: cfg.cidr.prefix_len(),
            mac: plan.mac,
            mtu: cfg.mtu,
            gateway: cfg.gateway,
        };
        let pod = plan.name.as_str();
        let ns = plan.netns.as_str();
        let netlink_err = |(what, message): (&'static str, String)| NodeError::Netlink {
            pod: pod.into(),
            netns: ns.into(),
            what,
            message,
        };
        let tmp = temporary_ifname();
        let tap = TapPort::create_queues(&tmp, self.switch.workers()).map_err(|source| {
            NodeError::Tap {
                pod: pod.into(),
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
                .name("eth0")
                .build();
            handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| ("moving the TAP in as eth0", e.to_string()))
        })
        .map_err(netlink_err)?;
        netns
            .run(|| configure_pod_interfaces(&net))
            .map_err(|source| NodeError::Netns {
                pod: pod.into(),
                source,
            })?
            .map_err(netlink_err)?;
        Ok(tap)
    }

    /// Removes a pod (CNI DEL): detaches its TAP (the device goes away with the fd) and deletes
    /// its namespace if the switch created it.
    pub fn del_pod(&self, name: &str) -> Result<(), NodeError> {
        let mut pods = self.lock();
        let rec = pods
            .remove(name)
            .ok_or_else(|| NodeError::NoSuchPod(name.into()))?;
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
        tracing::info!(pod = name, "pod removed");
        Ok(())
    }

    /// Forgets pods whose TAP closed under the switch (namespace deleted from outside).
    /// Returns their names. Other pods are unaffected.
    pub fn reap_vanished(&self) -> Vec<String> {
        let mut pods = self.lock();
        let gone: Vec<String> = pods
            .keys()
            .filter(|n| self.switch.port(n).is_none())
            .cloned()
            .collect();
        for name in &gone {
            if let Some(rec) = pods.remove(name) {
                tracing::warn!(pod = %name, netns = %rec.netns.name(), "pod's network went away (namespace deleted?); port removed");
                if rec.created_netns && rec.netns.exists() {
                    let _ = rec.netns.delete();
                }
            }
        }
        gone
    }

    /// Status of one pod.
    pub fn pod(&self, name: &str) -> Option<PodStatus> {
        let pods = self.lock();
        let rec = pods.get(name)?;
        let port = self.switch.port(name)?;
        Some(PodStatus {
            name: name.into(),
            netns: rec.netns.name().into(),
            ip: rec.ip,
            prefix_len: self.switch.node().cidr.prefix_len(),
            mac: format_mac(rec.mac),
            port: port.id,
            created_netns: rec.created_netns,
            counters: port.metrics.snapshot(),
        })
    }

    /// Status of every pod, by name.
    pub fn pods(&self) -> Vec<PodStatus> {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        names.iter().filter_map(|n| self.pod(n)).collect()
    }

    /// Frames each data-plane thread has handled (see [`Switch::worker_frames`]).
    pub fn worker_frames(&self) -> Vec<u64> {
        self.switch.worker_frames()
    }

    /// The MAC table.
    pub fn fdb(&self) -> Vec<FdbEntry> {
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
                mac: format_mac(mac_from_key(key)),
                port: e.port,
                port_name: names.get(&e.port).cloned(),
                is_static: e.is_static,
                age_secs: now.saturating_sub(e.last_seen()),
            })
            .collect();
        out.sort_by(|a, b| (a.port, &a.mac).cmp(&(b.port, &b.mac)));
        out
    }

    /// Adds a peer node at runtime; flows to other peers and between local pods go on.
    pub fn add_peer(&self, peer: Peer) -> Result<(), NodeError> {
        let name = peer.name.clone();
        self.switch
            .add_peer(peer)
            .map_err(|source| NodeError::Peer {
                peer: name.clone(),
                source,
            })?;
        tracing::info!(peer = %name, "peer added");
        Ok(())
    }

    /// Removes a peer node and its route.
    pub fn del_peer(&self, name: &str) -> Result<(), NodeError> {
        self.switch
            .remove_peer(name)
            .map_err(|source| NodeError::Peer {
                peer: name.into(),
                source,
            })?;
        tracing::info!(peer = %name, "peer removed");
        Ok(())
    }

    /// Every peer, as `podswitch peer list` shows them.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.switch
            .peers()
            .into_iter()
            .map(|p| PeerStatus {
                name: p.name,
                underlay: p.underlay,
                pod_cidr: p.pod_cidr.to_string(),
                vtep_mac: format_mac(p.vtep_mac),
            })
            .collect()
    }

    /// Switch-wide counters: `(rx, forwarded, delivered locally, dropped)`.
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        let m = self.switch.metrics().snapshot();
        (m.rx, m.forwarded, m.delivered_locally, m.dropped_total())
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

    /// Removes every pod (and the namespaces the switch created). Idempotent.
    pub fn shutdown(&self) {
        let names: Vec<String> = self.lock().keys().cloned().collect();
        for name in names {
            if let Err(e) = self.del_pod(&name) {
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

/// Addressing of a pod's `eth0`.
#[derive(Debug, Clone, Copy)]
struct PodNet {
    ip: Ipv4Addr,
    prefix_len: u8,
    mac: EthernetAddress,
    mtu: u16,
    gateway: Ipv4Addr,
}

/// Configures `lo` and `eth0` of the calling thread's namespace over rtnetlink. Errors carry
/// the step that failed.
fn configure_pod_interfaces(net: &PodNet) -> Result<(), (&'static str, String)> {
    // Pods are IPv4-only here: without this, every pod floods router solicitations and DAD
    // probes. Best effort (a kernel without IPv6 has no such files).
    for conf in ["all", "default", "eth0"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
    }
    with_netlink(|handle| async move {
        let lo = link_index(&handle, "lo").await.map_err(|e| ("lo", e))?;
        let eth0 = link_index(&handle, "eth0").await.map_err(|e| ("eth0", e))?;
        let set = |msg| async {
            handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| e.to_string())
        };
        set(LinkUnspec::new_with_index(lo).up().build())
            .await
            .map_err(|e| ("lo up", e))?;
        set(LinkUnspec::new_with_index(eth0)
            .address(net.mac.0.to_vec())
            .mtu(u32::from(net.mtu))
            .build())
        .await
        .map_err(|e| ("eth0 MAC and MTU", e))?;
        set(LinkUnspec::new_with_index(eth0).up().build())
            .await
            .map_err(|e| ("eth0 up", e))?;
        handle
            .address()
            .add(eth0, IpAddr::V4(net.ip), net.prefix_len)
            .execute()
            .await
            .map_err(|e| ("eth0 address", e.to_string()))?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(net.gateway)
            .output_interface(eth0)
            .build();
        handle
            .route()
            .add(default)
            .execute()
            .await
            .map_err(|e| ("default route", e.to_string()))
    })
}

/// Runs `f` with an rtnetlink handle whose socket lives in the calling thread's namespace, on
/// a single-threaded runtime (the socket is opened here, so the namespace is the thread's).
pub(crate) fn with_netlink<F, Fut>(f: F) -> Result<(), (&'static str, String)>
where
    F: FnOnce(rtnetlink::Handle) -> Fut,
    Fut: std::future::Future<Output = Result<(), (&'static str, String)>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| ("netlink runtime", e.to_string()))?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| ("netlink socket", e.to_string()))?;
        let conn = tokio::spawn(conn);
        let r = f(handle).await;
        conn.abort();
        r
    })
}

/// A name for a TAP before it moves into its pod: unique per process and call, ≤ 15 bytes.
fn temporary_ifname() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("pst{:x}.{:x}", std::process::id() & 0xfffff, n & 0xffff)
}

pub(crate) async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<u32, String> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(msg.header.index),
        Ok(None) => Err("no such link".into()),
        Err(e) => Err(e.to_string()),
    }
}
