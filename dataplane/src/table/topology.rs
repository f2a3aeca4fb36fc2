//! What the node looks like: ports, pods (neighbour table) and peer nodes (routes).
//!
//! Invariants, checked by every constructor method (a refused change leaves the topology as it
//! was):
//! - a pod IP lies in the node's pod CIDR, is not the gateway or the network/broadcast address,
//!   and belongs to at most one port;
//! - peer pod CIDRs overlap neither the node's CIDR nor each other, so every pod IP of the
//!   cluster has exactly one owner;
//! - `flood` lists exactly the attached ports, in id order; `trunks` exactly the attached
//!   trunk ports, in id order.
//! - a `(VIP, port, protocol)` belongs to at most one service; a service's id is kept while
//!   its name lives and never given to another service of this topology.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::maglev::MAX_BACKENDS;
use super::{CompiledService, Proto, Service, Services};
use super::{FastMap, PortId};
use crate::counters::PortMetrics;
use crate::wire::{mac_key, EthernetAddress};

/// Index of a peer node.
pub(crate) type PeerId = u16;

/// What is behind a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// A pod: exactly one MAC and one IPv4 address may appear as source (anti-spoofing).
    Pod {
        /// The pod's `eth0` MAC.
        mac: EthernetAddress,
        /// The pod IP.
        ip: Ipv4Addr,
    },
    /// A segment of many hosts (another bridge, a VM): sources are learned, not checked.
    Trunk,
    /// The node's own interface (`podsw0`): the node's processes reach pods through it, and
    /// pod traffic for anything outside the pod networks leaves through it. At most one per
    /// node. Its frames come from `mac` and never from a pod's address.
    Host {
        /// The interface's MAC.
        mac: EthernetAddress,
    },
}

/// A port and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Human name (the pod name).
    pub name: String,
    /// What is behind the port.
    pub kind: PortKind,
}

/// A pod's entry in the neighbour table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// MAC key of the pod (see [`mac_key`]).
    pub mac: u64,
    /// Port the pod is attached to.
    pub port: PortId,
}

/// A node that owns a remote pod CIDR, reached through a VXLAN tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// Tunnel endpoint (underlay address and VXLAN UDP port).
    pub underlay: SocketAddrV4,
    /// The pod CIDR the node owns.
    pub pod_cidr: Ipv4Net,
    /// The peer's VTEP (router) MAC: destination MAC of the inner frames we send it.
    pub vtep_mac: EthernetAddress,
}

/// A route: destinations in `cidr` go to `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// Destination prefix.
    pub(crate) cidr: Ipv4Net,
    /// Next hop.
    pub(crate) peer: PeerId,
}

/// Most routes looked up by a scan; more are indexed (see [`Routes`]).
const SCAN_ROUTES: usize = 8;

/// The routes to peers. Peer CIDRs never overlap each other ([`Topology::add_peer`] refuses
/// it), so at most one route holds an address and the order of lookup does not matter. Up to
/// [`SCAN_ROUTES`] routes are scanned (the quickest for the few peers of a small cluster);
/// beyond that, a lookup is one hash probe per prefix length in use: usually one, as every
/// node of a flannel network has the same SubnetLen. A 1000-node cluster routes as fast as a
/// 10-node one.
#[derive(Debug, Clone, Default)]
struct Routes {
    list: Vec<Route>,
    /// `(netmask, network -> peer)` per prefix length, longest first; empty while the list is
    /// scanned.
    by_len: Vec<(u32, FastMap<u32, PeerId>)>,
}

impl Routes {
    #[inline]
    fn lookup(&self, ip: Ipv4Addr) -> Option<PeerId> {
        if self.by_len.is_empty() {
            return self
                .list
                .iter()
                .find(|r| r.cidr.contains(&ip))
                .map(|r| r.peer);
        }
        let a = u32::from(ip);
        self.by_len
            .iter()
            .find_map(|(mask, nets)| nets.get(&(a & mask)).copied())
    }

    fn insert(&mut self, route: Route) {
        self.list.push(route);
        if self.list.len() == SCAN_ROUTES + 1 {
            for r in self.list.clone() {
                self.index(r);
            }
        } else if self.list.len() > SCAN_ROUTES {
            self.index(route);
        }
    }

    fn index(&mut self, r: Route) {
        let mask = u32::from(r.cidr.netmask());
        let net = u32::from(r.cidr.network());
        match self.by_len.iter_mut().find(|(m, _)| *m == mask) {
            Some((_, nets)) => {
                nets.insert(net, r.peer);
            }
            None => {
                let mut nets = FastMap::default();
                nets.insert(net, r.peer);
                self.by_len.push((mask, nets));
                self.by_len
                    .sort_by_key(|(m, _)| std::cmp::Reverse(m.count_ones()));
            }
        }
    }

    fn remove_peer(&mut self, peer: PeerId) {
        self.list.retain(|r| r.peer != peer);
        if self.list.len() <= SCAN_ROUTES {
            self.by_len.clear();
            return;
        }
        for (_, nets) in &mut self.by_len {
            nets.retain(|_, p| *p != peer);
        }
        self.by_len.retain(|(_, nets)| !nets.is_empty());
    }
}

/// Why a topology change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The port id is already attached.
    #[error("port {0} is already in use")]
    PortInUse(PortId),
    /// No port with that id.
    #[error("no port {0}")]
    NoSuchPort(PortId),
    /// The pod IP is already used by another pod.
    #[error("pod IP {ip} is already used by pod {owner:?}")]
    DuplicateIp {
        /// The address.
        ip: Ipv4Addr,
        /// The pod that has it.
        owner: String,
    },
    /// The pod MAC is already used by another pod.
    #[error("pod MAC {mac} is already used by pod {owner:?}")]
    DuplicateMac {
        /// The address.
        mac: EthernetAddress,
        /// The pod that has it.
        owner: String,
    },
    /// The pod IP is outside the node's CIDR or reserved (network, gateway, broadcast).
    #[error("pod IP {ip} is not a usable address of the node's pod CIDR {cidr}")]
    IpNotInCidr {
        /// The address.
        ip: Ipv4Addr,
        /// The node's pod CIDR.
        cidr: Ipv4Net,
    },
    /// The pod MAC is a group (multicast/broadcast) or all-zero address.
    #[error("pod MAC {0} is not a unicast address")]
    BadMac(EthernetAddress),
    /// A peer's CIDR overlaps ours or another peer's.
    #[error("peer {peer:?}: pod CIDR {cidr} overlaps {other} ({owner})")]
    OverlappingCidr {
        /// The peer being added.
        peer: String,
        /// Its CIDR.
        cidr: Ipv4Net,
        /// The CIDR it overlaps.
        other: Ipv4Net,
        /// Who owns that CIDR ("this node" or a peer name).
        owner: String,
    },
    /// A peer with that name or underlay address exists.
    #[error("peer {0:?} already exists (same name or underlay address)")]
    DuplicatePeer(String),
    /// No peer with that name.
    #[error("no peer named {0:?}")]
    NoSuchPeer(String),
    /// A node has one host port.
    #[error("port {0}: the node already has a host port")]
    SecondHostPort(PortId),
    /// Another service has that VIP, port and protocol.
    #[error("service {name:?}: {vip}:{port}/{proto:?} is already used by service {owner:?}")]
    DuplicateService {
        /// The service being added.
        name: String,
        /// Its VIP.
        vip: Ipv4Addr,
        /// Its port.
        port: u16,
        /// Its protocol.
        proto: Proto,
        /// The service that has them.
        owner: String,
    },
    /// No service with that name.
    #[error("no service named {0:?}")]
    NoSuchService(String),
    /// More backends than a Maglev table holds.
    #[error("service {name:?}: {count} backends, at most {max}")]
    TooManyBackends {
        /// The service.
        name: String,
        /// Its backend count.
        count: usize,
        /// The limit ([`MAX_BACKENDS`]).
        max: usize,
    },
}

/// Ports, neighbours and routes of one node. Immutable once published; changes build a new one.
#[derive(Debug, Clone)]
pub struct Topology {
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    ports: Vec<Option<PortInfo>>,
    flood: Vec<PortId>,
    /// Trunk ports: where unicast to a MAC not learned yet may be (see [`Topology::trunk_ports`]).
    trunks: Vec<PortId>,
    neighbours: FastMap<u32, Neighbour>,
    /// Pod MAC key -> port: every pod's MAC is known without learning.
    pod_macs: FastMap<u64, PortId>,
    peers: Vec<Option<Peer>>,
    /// Each peer's tunnel counters (same index as `peers`): a new peer (or one replaced)
    /// starts new counters, so a reused id never adds to its predecessor's.
    peer_metrics: Vec<Option<Arc<PortMetrics>>>,
    /// The host port, if attached.
    host: Option<Neighbour>,
    routes: Routes,
    peer_by_underlay: FastMap<u32, PeerId>,
    /// The services, shared between copies (a clone copies pointers, not Maglev tables).
    services: Services,
    /// The id of the next new service (ids are never reused).
    next_service_id: u32,
    /// Ids to give services of these names when they are added (those they had in the
    /// process that handed over an upgrade, whose tracked flows carry them).
    preferred_service_ids: BTreeMap<String, u32>,
}

impl Topology {
    /// An empty node with pod CIDR `cidr` and gateway `gateway`.
    pub fn new(cidr: Ipv4Net, gateway: Ipv4Addr) -> Self {
        Self {
            cidr,
            gateway,
            ports: Vec::new(),
            flood: Vec::new(),
            trunks: Vec::new(),
            neighbours: FastMap::default(),
            pod_macs: FastMap::default(),
            peers: Vec::new(),
            peer_metrics: Vec::new(),
            host: None,
            routes: Routes::default(),
            peer_by_underlay: FastMap::default(),
            services: Services::default(),
            next_service_id: 0,
            preferred_service_ids: BTreeMap::new(),
        }
    }

    /// Services named in `ids` get those ids when added; new ids start above them. Set before
    /// any service is added (an id given already is never reused).
    pub(crate) fn prefer_service_ids(&mut self, ids: BTreeMap<String, u32>) {
        if let Some(max) = ids.values().max() {
            self.next_service_id = self.next_service_id.max(max.saturating_add(1));
        }
        self.preferred_service_ids = ids;
    }

    /// The services: load the topology once per batch, then look services up here.
    #[inline]
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Every service, by name.
    pub fn services_list(&self) -> Vec<Arc<CompiledService>> {
        let mut v: Vec<_> = self.services.by_key.values().cloned().collect();
        v.sort_by(|a, b| a.service.name.cmp(&b.service.name));
        v
    }

    /// Adds `s`, or replaces the service of the same name (which keeps its id; a new name gets
    /// an id never used before in this topology). Refused if another service has the same VIP,
    /// port and protocol, or if `s` has more than [`MAX_BACKENDS`] backends. Replacing a
    /// service by an equal one changes nothing (its Maglev table is not rebuilt).
    pub fn upsert_service(&mut self, s: Service) -> Result<(), TopologyError> {
        if s.backends.len() > MAX_BACKENDS {
            return Err(TopologyError::TooManyBackends {
                name: s.name,
                count: s.backends.len(),
                max: MAX_BACKENDS,
            });
        }
        if let Some(owner) = self.services.get(s.vip, s.port, s.proto.number()) {
            if owner.service.name != s.name {
                return Err(TopologyError::DuplicateService {
                    vip: s.vip,
                    port: s.port,
                    proto: s.proto,
                    owner: owner.service.name.clone(),
                    name: s.name,
                });
            }
        }
        let id = match self.services.by_name(&s.name) {
            Some(old) if old.service == s => return Ok(()),
            Some(old) => {
                let (id, key) = (old.id, key_of(&old.service));
                self.services.by_key.remove(&key);
                id
            }
            None => match self.preferred_service_ids.remove(&s.name) {
                Some(id) => id,
                None => {
                    let id = self.next_service_id;
                    self.next_service_id += 1;
                    id
                }
            },
        };
        self.services
            .by_key
            .insert(key_of(&s), Arc::new(CompiledService::new(s, id)));
        Ok(())
    }

    /// Removes the service named `name`, returning it.
    pub fn remove_service(&mut self, name: &str) -> Result<Service, TopologyError> {
        let key = self
            .services
            .by_name(name)
            .map(|c| key_of(&c.service))
            .ok_or_else(|| TopologyError::NoSuchService(name.into()))?;
        let c = self
            .services
            .by_key
            .remove(&key)
            .ok_or_else(|| TopologyError::NoSuchService(name.into()))?;
        // Older snapshots usually still hold it: copy the spec rather than wait.
        Ok(Arc::try_unwrap(c).map_or_else(|c| c.service.clone(), |c| c.service))
    }

    /// What is attached at `port`.
    #[inline]
    pub(crate) fn port(&self, port: PortId) -> Option<&PortInfo> {
        self.ports.get(usize::from(port)).and_then(Option::as_ref)
    }

    /// All attached ports as `(id, info)`.
    pub(crate) fn ports(&self) -> impl Iterator<Item = (PortId, &PortInfo)> {
        self.flood
            .iter()
            .filter_map(|&id| self.port(id).map(|p| (id, p)))
    }

    /// Trunk ports. Hosts behind a trunk are learned, not known, so unicast to a MAC that is
    /// neither learned nor a pod's may be for one of them: it goes to these ports only, never to
    /// the pods (whose MACs are all known).
    pub(crate) fn trunk_ports(&self) -> &[PortId] {
        &self.trunks
    }

    /// Ports that receive flooded frames (every attached port; the caller skips the ingress).
    #[inline]
    pub(crate) fn flood_ports(&self) -> &[PortId] {
        &self.flood
    }

    /// The pod that owns `ip`, if it is on this node.
    #[inline]
    pub fn neighbour(&self, ip: Ipv4Addr) -> Option<Neighbour> {
        self.neighbours.get(&u32::from(ip)).copied()
    }

    /// The host port (the node's own interface) and its MAC key, if attached.
    #[inline]
    pub fn host(&self) -> Option<Neighbour> {
        self.host
    }

    /// The port of the pod whose MAC key is `mac`, if such a pod is attached.
    #[inline]
    pub(crate) fn pod_port(&self, mac: u64) -> Option<PortId> {
        self.pod_macs.get(&mac).copied()
    }

    /// The peer whose CIDR holds `ip` (longest prefix wins).
    #[inline]
    pub(crate) fn route(&self, ip: Ipv4Addr) -> Option<PeerId> {
        self.routes.lookup(ip)
    }

    /// Peer by id.
    #[inline]
    pub(crate) fn peer(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(usize::from(id)).and_then(Option::as_ref)
    }

    /// Peer by underlay IP (the outer source of a received VXLAN datagram).
    #[inline]
    pub(crate) fn peer_by_underlay(&self, ip: Ipv4Addr) -> Option<PeerId> {
        self.peer_by_underlay.get(&u32::from(ip)).copied()
    }

    /// The tunnel counters of peer `id` (the data plane adds to them once per round).
    #[inline]
    pub fn peer_metrics(&self, id: PeerId) -> Option<&Arc<PortMetrics>> {
        self.peer_metrics
            .get(usize::from(id))
            .and_then(Option::as_ref)
    }

    /// One past the highest peer id in use (ids below it may be free).
    #[inline]
    pub(crate) fn peer_id_bound(&self) -> usize {
        self.peers.len()
    }

    /// All peers as `(id, peer)`.
    pub fn peers(&self) -> impl Iterator<Item = (PeerId, &Peer)> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i as PeerId, p.as_ref()?)))
    }

    /// Checks that a pod with `ip`/`mac` could be attached (see the module invariants).
    pub fn check_pod(&self, ip: Ipv4Addr, mac: EthernetAddress) -> Result<(), TopologyError> {
        let usable = self.cidr.contains(&ip)
            && ip != self.cidr.network()
            && ip != self.cidr.broadcast()
            && ip != self.gateway;
        if !usable {
            return Err(TopologyError::IpNotInCidr {
                ip,
                cidr: self.cidr,
            });
        }
        if !mac.is_unicast() {
            return Err(TopologyError::BadMac(mac));
        }
        for (_, p) in self.ports() {
            if let PortKind::Pod { mac: m, ip: i } = p.kind {
                if i == ip {
                    return Err(TopologyError::DuplicateIp {
                        ip,
                        owner: p.name.clone(),
                    });
                }
                if m == mac {
                    return Err(TopologyError::DuplicateMac {
                        mac,
                        owner: p.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Attaches `info` at `port`.
    pub fn add_port(&mut self, port: PortId, info: PortInfo) -> Result<(), TopologyError> {
        if self.port(port).is_some() {
            return Err(TopologyError::PortInUse(port));
        }
        if let PortKind::Host { mac } = info.kind {
            if self.host.is_some() {
                return Err(TopologyError::SecondHostPort(port));
            }
            self.host = Some(Neighbour {
                mac: mac_key(&mac.0),
                port,
            });
        }
        if let PortKind::Pod { mac, ip } = info.kind {
            self.check_pod(ip, mac)?;
            self.pod_macs.insert(mac_key(&mac.0), port);
            self.neighbours.insert(
                u32::from(ip),
                Neighbour {
                    mac: mac_key(&mac.0),
                    port,
                },
            );
        }
        let idx = usize::from(port);
        if self.ports.len() <= idx {
            self.ports.resize(idx + 1, None);
        }
        if info.kind == PortKind::Trunk {
            self.trunks.push(port);
            self.trunks.sort_unstable();
        }
        self.ports[idx] = Some(info);
        self.flood.push(port);
        self.flood.sort_unstable();
        Ok(())
    }

    /// Detaches `port`, returning what was there.
    pub(crate) fn remove_port(&mut self, port: PortId) -> Result<PortInfo, TopologyError> {
        let info = self
            .ports
            .get_mut(usize::from(port))
            .and_then(Option::take)
            .ok_or(TopologyError::NoSuchPort(port))?;
        if let PortKind::Pod { ip, mac } = info.kind {
            self.neighbours.remove(&u32::from(ip));
            self.pod_macs.remove(&mac_key(&mac.0));
        }
        if matches!(info.kind, PortKind::Host { .. }) {
            self.host = None;
        }
        self.flood.retain(|&p| p != port);
        self.trunks.retain(|&p| p != port);
        Ok(info)
    }

    /// Adds a peer node and its route. Returns its id.
    pub fn add_peer(&mut self, peer: Peer) -> Result<PeerId, TopologyError> {
        let overlap =
            |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
        if overlap(&peer.pod_cidr, &self.cidr) {
            return Err(TopologyError::OverlappingCidr {
                peer: peer.name.clone(),
                cidr: peer.pod_cidr,
                other: self.cidr,
                owner: "this node".into(),
            });
        }
        for (_, p) in self.peers() {
            if p.name == peer.name || p.underlay.ip() == peer.underlay.ip() {
                return Err(TopologyError::DuplicatePeer(peer.name.clone()));
            }
            if overlap(&peer.pod_cidr, &p.pod_cidr) {
                return Err(TopologyError::OverlappingCidr {
                    peer: peer.name.clone(),
                    cidr: peer.pod_cidr,
                    other: p.pod_cidr,
                    owner: p.name.clone(),
                });
            }
        }
        let id = match self.peers.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.peers.push(None);
                self.peers.len() - 1
            }
        } as PeerId;
        self.peer_by_underlay
            .insert(u32::from(*peer.underlay.ip()), id);
        self.routes.insert(Route {
            cidr: peer.pod_cidr,
            peer: id,
        });
        self.peers[usize::from(id)] = Some(peer);
        self.peer_metrics
            .resize_with(self.peers.len().max(self.peer_metrics.len()), || None);
        self.peer_metrics[usize::from(id)] = Some(Arc::default());
        Ok(id)
    }

    /// Removes the peer named `name` and its route.
    pub(crate) fn remove_peer(&mut self, name: &str) -> Result<Peer, TopologyError> {
        let (id, _) = self
            .peers()
            .find(|(_, p)| p.name == name)
            .ok_or_else(|| TopologyError::NoSuchPeer(name.into()))?;
        let peer = self.peers[usize::from(id)]
            .take()
            .ok_or_else(|| TopologyError::NoSuchPeer(name.into()))?;
        self.routes.remove_peer(id);
        self.peer_by_underlay
            .remove(&u32::from(*peer.underlay.ip()));
        if let Some(m) = self.peer_metrics.get_mut(usize::from(id)) {
            *m = None;
        }
        Ok(peer)
    }
}

/// The key of `s` in [`Services`].
fn key_of(s: &Service) -> (u32, u16, u8) {
    (u32::from(s.vip), s.port, s.proto.number())
}

/// The MAC of a pod that does not configure one: `02:42` followed by the four octets of its IP
/// (TAP pods and smoltcp pods alike). Unique as long as the IPs are.
pub fn derived_pod_mac(ip: std::net::Ipv4Addr) -> EthernetAddress {
    let o = ip.octets();
    EthernetAddress([0x02, 0x42, o[0], o[1], o[2], o[3]])
}

#[cfg(test)]
mod tests;
