//! The forwarding decision, sans I/O: `(ingress port, frame) -> Action`.
//!
//! Like boringtun's `TunnResult`, [`Pipeline::process`] performs no system call: it reads the
//! tables (snapshots loaded once per batch by [`Pipeline::begin_batch`]), may rewrite the frame
//! in place (MAC rewrite and TTL decrement when routing, ARP/ICMP replies), and tells the caller
//! what to send where. The caller (the workers of the `switch` module, or a test) does the I/O.
//!
//! Rules, for a frame from a pod port:
//! 1. validate: Ethernet header present, length within the pod MTU (unless a GSO superframe,
//!    whose segment size must be at least `gso::MIN_GSO_SIZE`), source MAC the pod's
//!    own, and only what a pod may send: IPv4 and ARP from the pod's own addresses. VLAN-tagged
//!    frames and every other EtherType (IPv6, LLDP, ...) are dropped, broadcasts included;
//! 2. learn the source MAC;
//! 3. broadcast/multicast: ARP request for the gateway is answered; the rest is flooded to the
//!    node's other ports (never into tunnels);
//! 4. unicast to the router MAC is routed: ping of the gateway answered; a pod of this node gets
//!    the frame with MACs rewritten and TTL decremented; a peer's CIDR is encapsulated; the rest
//!    gets an ICMP error;
//! 5. other unicast goes where the MAC table says, else to the pod that has that MAC (every
//!    pod's MAC is in the topology); unicast to a MAC nobody has (a removed pod's) is dropped,
//!    never flooded to the pods (only to trunk ports, behind which hosts are learned, not
//!    known).
//!
//! Frames from trunk ports skip the pod checks of rule 1 (their sources are learned, not
//! known) but may not use a group MAC as source.
//!
//! The host port (the node's own interface, `podsw0`, carrying the gateway address) is the
//! node's way in and out of the pod network:
//! - its frames must come from its own MAC and never from a pod's address; its ARP requests
//!   are answered by the switch (a pod's MAC for a pod of this node, the router MAC for an
//!   address of a peer's CIDR) and never reach the pods, so pods keep the router as their
//!   gateway;
//! - routed traffic that no pod and no peer takes goes to it: a pod's packets for the gateway
//!   address (other than the ping the switch answers) or for anything outside the pod networks
//!   (the node's routing then delivers or masquerades them), and packets from other nodes for
//!   the gateway address (replies to the node's own connections).
//!
//! Every call ends in exactly one [`Action`], and every action is counted ([`crate::counters::Counts`]).

mod absent_backend;
mod reply;
mod service;
use service::L4Checksum;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ipnet::Ipv4Net;

pub use crate::counters::{Counts, DropCounts, DropReason, Metrics, PortCounts, PortMetrics};
use crate::gso::MIN_GSO_SIZE;
use crate::table::{FlowKey, MacSnapshot, PeerId, PortId, PortKind, Tables, Topology};
use crate::wire::arp::{self, ArpPacket};
use crate::wire::ethernet::{self, ethertype, EthernetFrame};
use crate::wire::icmp::{msg_type, IcmpPacket};
use crate::wire::ipv4::{self, protocol, Ipv4Packet};
use crate::wire::virtio::VnetHdr;
use crate::wire::{is_group_mac, mac_key, vxlan, EthernetAddress};
pub use reply::{tcp_probes, TCP_SEGMENT_FRAME_LEN};
use reply::{IcmpError, ICMP_ERROR_MAX};

/// Static settings of a node's data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's pod CIDR.
    pub cidr: Ipv4Net,
    /// The pods' default gateway (answered by the switch).
    pub gateway: Ipv4Addr,
    /// The router MAC: the gateway's MAC and the node's VTEP MAC.
    pub router_mac: EthernetAddress,
    /// VXLAN network identifier of the cluster.
    pub vni: u32,
    /// Pod MTU: largest IPv4 packet a pod may send (frames up to `mtu + 14`).
    pub mtu: u16,
    /// Largest inner IPv4 packet the tunnel carries; bigger ones get "fragmentation needed".
    pub tunnel_mtu: u16,
    /// The service (ClusterIP) CIDR: packets for it are for services, never routed as such.
    pub service_cidr: Ipv4Net,
}

impl NodeConfig {
    /// The gateway of a pod CIDR that does not name one: its first host address. The one
    /// place this rule is written (the node spec uses it too).
    pub fn default_gateway(cidr: Ipv4Net) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(1))
    }

    /// A config for `cidr` with the gateway at its first host address, VNI 1 and MTU 1450 (a
    /// 1500-byte underlay minus VXLAN's 50): what a node spec with only a CIDR and a MAC
    /// compiles to (a config test pins the two together). For tests and benchmarks.
    pub fn new(cidr: Ipv4Net, router_mac: EthernetAddress) -> Self {
        Self {
            cidr,
            gateway: Self::default_gateway(cidr),
            router_mac,
            vni: 1,
            mtu: 1450,
            tunnel_mtu: 1450,
            service_cidr: DEFAULT_SERVICE_CIDR,
        }
    }
}

/// The service CIDR of a node that does not give one (Kubernetes' default, `10.96.0.0/12`).
pub const DEFAULT_SERVICE_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 12);

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the frame (possibly rewritten in place) to this port.
    Forward(PortId),
    /// Send the frame to every port of the node except the ingress.
    Flood,
    /// Send the frame to every trunk port except the ingress: unicast to a MAC that is neither
    /// learned nor a pod's, which only a host behind a trunk may have.
    FloodTrunks,
    /// The switch answered: send the frame, rewritten in place into the reply, back out of the
    /// ingress port.
    Reply,
    /// Encapsulate the frame (inner MACs already rewritten) in VXLAN to this peer.
    Encap(PeerId),
    /// Drop the frame, counted under the reason.
    Drop(DropReason),
    /// Drop the frame, counted under the reason, and send `Pipeline::scratch()[..len]` (an ICMP
    /// error) back out of the ingress port.
    Reject(DropReason, u16),
}

/// The decision engine of one data-plane thread. Owns its counters and learning queue; shares the
/// tables.
pub struct Pipeline {
    tables: Arc<Tables>,
    mac: Arc<MacSnapshot>,
    topo: Arc<Topology>,
    core: Core,
}

/// The per-thread state the decision mutates. Kept apart from the snapshots so the hot path
/// borrows them (no reference-count traffic per frame).
struct Core {
    cfg: NodeConfig,
    /// The shared tables (connection tracking, for the service path).
    tables: Arc<Tables>,
    router_key: u64,
    /// The pod CIDR as (network, mask), so the per-frame test is one AND and one compare.
    cidr: (u32, u32),
    /// The service CIDR, likewise.
    services: (u32, u32),
    /// Whether any service is defined (this batch's topology), or flows are still tracked (of
    /// a service since deleted: their packets are reset).
    services_on: bool,
    now: u32,
    learned: Vec<(u64, PortId)>,
    last_learned: Option<(u64, PortId)>,
    /// Service flows decided in this batch, to compile into the kernel fast path (client
    /// keys), written after the batch as learned MACs are.
    compile: Vec<FlowKey>,
    counts: Counts,
    scratch: [u8; ICMP_ERROR_MAX],
}

impl Pipeline {
    /// A pipeline for node `cfg` over `tables`.
    pub fn new(cfg: NodeConfig, tables: Arc<Tables>) -> Self {
        let core = Core {
            tables: Arc::clone(&tables),
            router_key: mac_key(&cfg.router_mac.0),
            cidr: (u32::from(cfg.cidr.network()), u32::from(cfg.cidr.netmask())),
            services: (
                u32::from(cfg.service_cidr.network()),
                u32::from(cfg.service_cidr.netmask()),
            ),
            services_on: false,
            cfg,
            now: tables.mac.now(),
            learned: Vec::with_capacity(64),
            last_learned: None,
            compile: Vec::with_capacity(64),
            counts: Counts::default(),
            scratch: [0; ICMP_ERROR_MAX],
        };
        Self {
            mac: tables.mac.load(),
            topo: tables.topology(),
            tables,
            core,
        }
    }

    /// The node settings.
    pub(crate) fn config(&self) -> &NodeConfig {
        &self.core.cfg
    }

    /// The shared tables.
    #[cfg(test)]
    pub(crate) fn tables(&self) -> &Arc<Tables> {
        &self.tables
    }

    /// The topology snapshot of the current batch.
    pub(crate) fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }

    /// The ICMP error of the last [`Action::Reject`].
    pub fn scratch(&self) -> &[u8] {
        &self.core.scratch
    }

    /// Counts since the last `Pipeline::take_counts`.
    pub fn counts(&self) -> &Counts {
        &self.core.counts
    }

    /// Returns the counts and resets them.
    pub(crate) fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.core.counts)
    }

    /// Turns one frame counted as forwarded into a drop for `reason` (the runtime could not
    /// carry out the forward).
    pub(crate) fn count_egress_drop(&mut self, reason: DropReason, frames: u64) {
        let c = &mut self.core.counts;
        c.forwarded -= frames.min(c.forwarded);
        c.dropped[reason as usize] += frames;
    }

    /// Loads the table snapshots for the next batch of frames.
    #[inline]
    pub fn begin_batch(&mut self) {
        self.mac = self.tables.mac.load();
        self.topo = self.tables.topology();
        self.core.now = self.tables.mac.now();
        self.core.last_learned = None;
        // Read once per batch, so a frame tests a byte already in cache.
        self.core.services_on =
            !self.topo.services().is_empty() || !self.tables.conntrack.is_empty();
    }

    /// Applies what the batch learned (one table write for the whole batch, if anything is
    /// new), and compiles the Service flows it decided into the kernel fast path (if any).
    #[inline]
    pub fn end_batch(&mut self) {
        if !self.core.learned.is_empty() {
            self.tables.mac.learn(&self.core.learned, self.core.now);
            self.core.learned.clear();
        }
        if !self.core.compile.is_empty() {
            // Against the topology now: a backend removed since the batch began is not
            // compiled.
            let topo = self.tables.topology();
            self.tables
                .conntrack
                .compile(&self.core.compile, |service, vip, proto, backend| {
                    topo.services().serves(service, vip, proto, backend)
                });
            self.core.compile.clear();
        }
    }

    /// Decides what to do with `frame`, received on `ingress` with the virtio-net header
    /// `vnet` (all zero for a plain frame). A GSO superframe is exempt from the MTU check but
    /// must have a segment size of at least `MIN_GSO_SIZE`.
    #[inline]
    pub fn process(&mut self, ingress: PortId, frame: &mut [u8], vnet: VnetHdr) -> Action {
        self.core
            .process(&self.topo, &self.mac, ingress, frame, vnet)
    }

    /// Decides what to do with a VXLAN datagram received from `source` on the underlay. On
    /// [`Action::Forward`], the frame to deliver is `datagram[vxlan::HEADER_LEN..]`, already
    /// rewritten (MACs, TTL).
    pub fn process_tunnel(&mut self, source: SocketAddrV4, datagram: &mut [u8]) -> Action {
        self.core.process_tunnel(&self.topo, source, datagram)
    }

    #[cfg(test)]
    fn set_tunnel_mtu(&mut self, mtu: u16) {
        self.core.cfg.tunnel_mtu = mtu;
    }
}

impl Core {
    #[inline]
    fn drop(&mut self, reason: DropReason) -> Action {
        self.counts.dropped[reason as usize] += 1;
        Action::Drop(reason)
    }

    #[inline]
    fn forwarded(&mut self, a: Action) -> Action {
        self.counts.forwarded += 1;
        a
    }

    #[inline]
    fn local(&mut self) -> Action {
        self.counts.delivered_locally += 1;
        Action::Reply
    }

    fn reject(&mut self, reason: DropReason, frame: &[u8], kind: IcmpError) -> Action {
        self.counts.dropped[reason as usize] += 1;
        let len = reply::icmp_error(
            &mut self.scratch,
            frame,
            kind,
            self.cfg.router_mac,
            self.cfg.gateway,
        );
        Action::Reject(reason, len as u16)
    }

    #[inline]
    fn learn(&mut self, mac: &MacSnapshot, src: u64, ingress: PortId) {
        if self.last_learned == Some((src, ingress)) {
            return;
        }
        self.last_learned = Some((src, ingress));
        match mac.get(src) {
            Some(e) if e.port == ingress || e.is_static => e.touch(self.now),
            _ => self.learned.push((src, ingress)),
        }
    }

    #[inline]
    fn process(
        &mut self,
        topo: &Topology,
        mac: &MacSnapshot,
        ingress: PortId,
        frame: &mut [u8],
        vnet: VnetHdr,
    ) -> Action {
        self.counts.rx += 1;
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return self.drop(DropReason::Malformed);
        };
        let (dst, src, ether_type) = (eth.dst_key(), eth.src_key(), eth.ethertype());
        let gso = vnet.is_gso();
        if !gso && frame.len() > usize::from(self.cfg.mtu) + ethernet::HEADER_LEN {
            return self.drop(DropReason::Oversize);
        }
        if gso && vnet.gso_size < MIN_GSO_SIZE {
            return self.drop(DropReason::BadGsoSize);
        }
        let Some(port) = topo.port(ingress) else {
            return self.drop(DropReason::UnknownPort);
        };
        match port.kind {
            PortKind::Pod { mac: own_mac, ip } => {
                if src != mac_key(&own_mac.0) {
                    return self.drop(DropReason::SpoofedMac);
                }
                if let Err(r) = check_pod_frame(&eth, ether_type, ip) {
                    return self.drop(r);
                }
            }
            PortKind::Host { mac: own_mac } => {
                if src != mac_key(&own_mac.0) {
                    return self.drop(DropReason::SpoofedMac);
                }
                if let Err(r) = self.check_host_frame(topo, &eth, ether_type) {
                    return self.drop(r);
                }
                // Broadcast, or unicast to the router (the kernel re-checking its entry).
                if ether_type == ethertype::ARP && (is_group_mac(dst) || dst == self.router_key) {
                    return self.answer_host_arp(topo, frame);
                }
            }
            PortKind::Trunk if is_group_mac(src) => return self.drop(DropReason::SpoofedMac),
            PortKind::Trunk => {}
        }
        self.learn(mac, src, ingress);
        let partial = vnet.needs_csum();
        // A backend's reply to a service client gets the service's address back, whichever
        // way it goes on (L2 to a local client, or routed).
        // (The topology is hot; the flow count is another cache line: ask it second.)
        if self.services_on && ether_type == ethertype::IPV4 {
            let checksum = match partial {
                true => L4Checksum::Partial,
                false => L4Checksum::Complete,
            };
            self.service_out(frame, checksum);
        }

        if dst == self.router_key {
            return self.route(topo, ingress, frame, ether_type, gso, partial);
        }
        if is_group_mac(dst) {
            if ether_type == ethertype::ARP && self.is_arp_request_for_gateway(frame) {
                reply::arp_reply_in_place(frame, self.cfg.router_mac, self.cfg.gateway);
                return self.local();
            }
            return self.forwarded(Action::Flood);
        }
        let to = match mac.get(dst) {
            Some(e) => e.port,
            None => match topo.pod_port(dst) {
                Some(p) => p,
                None if topo.trunk_ports().is_empty() => {
                    return self.drop(DropReason::UnknownUnicast)
                }
                None => return self.forwarded(Action::FloodTrunks),
            },
        };
        if to == ingress {
            return self.drop(DropReason::SameSegment);
        }
        self.forwarded(Action::Forward(to))
    }

    fn is_arp_request_for_gateway(&self, frame: &[u8]) -> bool {
        // Validated by check_pod_frame for pod ports; trunk ports are checked here.
        EthernetFrame::new_checked(frame)
            .and_then(|e| ArpPacket::new_checked(e.into_payload()))
            .is_ok_and(|a| {
                a.is_ethernet_ipv4()
                    && a.operation() == arp::OP_REQUEST
                    && a.target_ip() == self.cfg.gateway
            })
    }

    /// The host port's rule: IPv4 and ARP, never from an address of the pod networks but the
    /// gateway's (the node may not pose as a pod of this node or another); other EtherTypes
    /// (the node's IPv6 chatter) are dropped.
    #[inline]
    fn check_host_frame(
        &self,
        topo: &Topology,
        eth: &EthernetFrame<&[u8]>,
        ether_type: u16,
    ) -> Result<(), DropReason> {
        let src = match ether_type {
            ethertype::IPV4 => ipv4::source_address(eth.payload()).ok_or(DropReason::BadIpv4)?,
            ethertype::ARP => {
                let arp = ArpPacket::new_checked(eth.payload()).map_err(|_| DropReason::BadArp)?;
                if !arp.is_ethernet_ipv4() {
                    return Err(DropReason::BadArp);
                }
                arp.sender_ip()
            }
            t if ethertype::is_vlan_tag(t) => return Err(DropReason::Vlan),
            _ => return Err(DropReason::EtherType),
        };
        let local = u32::from(src) & self.cidr.1 == self.cidr.0;
        if src != self.cfg.gateway && (local || topo.route(src).is_some()) {
            return Err(DropReason::SpoofedIp);
        }
        Ok(())
    }

    /// An ARP request from the host port: a pod of this node is at its MAC, an address of a
    /// peer's CIDR at the router's (which routes it). Never flooded to the pods.
    #[cold]
    #[inline(never)]
    fn answer_host_arp(&mut self, topo: &Topology, frame: &mut [u8]) -> Action {
        let target = EthernetFrame::new_checked(&*frame)
            .and_then(|e| ArpPacket::new_checked(e.into_payload()))
            .ok()
            .filter(|a| a.operation() == arp::OP_REQUEST)
            .map(|a| a.target_ip());
        let Some(target) = target else {
            return self.drop(DropReason::ArpUnanswered);
        };
        let mac = match topo.neighbour(target) {
            Some(n) => crate::wire::mac_from_key(n.mac),
            // A peer's address or a service address: the router takes it.
            None if topo.route(target).is_some() || self.is_service_ip(target) => {
                self.cfg.router_mac
            }
            None => return self.drop(DropReason::ArpUnanswered),
        };
        reply::arp_reply_in_place(frame, mac, target);
        self.local()
    }

    /// Routed delivery to the host port, if there is one (and the frame did not come from it).
    #[inline]
    fn deliver_to_host(
        &mut self,
        topo: &Topology,
        eth: EthernetFrame<&mut [u8]>,
        ip: &mut Ipv4Packet<&mut [u8]>,
    ) -> Option<Action> {
        let host = topo.host()?;
        rewrite_routed(eth, ip, self.router_key, host.mac);
        Some(self.forwarded(Action::Forward(host.port)))
    }

    /// Rule 4: the frame is addressed to the router MAC.
    #[inline]
    fn route(
        &mut self,
        topo: &Topology,
        ingress: PortId,
        frame: &mut [u8],
        ether_type: u16,
        gso: bool,
        partial: bool,
    ) -> Action {
        if ether_type == ethertype::ARP {
            if self.is_arp_request_for_gateway(frame) {
                reply::arp_reply_in_place(frame, self.cfg.router_mac, self.cfg.gateway);
                return self.local();
            }
            return self.drop(DropReason::NotRoutable);
        }
        if ether_type != ethertype::IPV4 {
            return self.drop(DropReason::NotRoutable);
        }
        // A service address (peeked before the header is validated: `service_in` validates).
        let mut translated = false;
        if self.services_on
            && frame
                .get(ethernet::HEADER_LEN..)
                .and_then(ipv4::destination_address)
                .is_some_and(|d| self.is_service_ip(d))
        {
            if let Err(a) = self.service_in(topo, frame, partial, gso) {
                return a;
            }
            translated = true;
        }
        let Some((eth, mut ip)) = routed_views(frame, gso) else {
            return self.drop(DropReason::BadIpv4);
        };
        let dst = ip.dst_addr();
        if dst == self.cfg.gateway {
            if is_echo_request(&ip) {
                reply::echo_reply_in_place(frame, self.cfg.router_mac, self.cfg.gateway);
                return self.local();
            }
            if topo.host().is_some_and(|h| h.port != ingress) {
                if let Some(a) = self.deliver_to_host(topo, eth, &mut ip) {
                    return a;
                }
            }
            return self.drop(DropReason::GatewayUnsupported);
        }
        if ip.ttl() <= 1 {
            return self.reject(DropReason::TtlExceeded, frame, IcmpError::TtlExceeded);
        }
        if u32::from(dst) & self.cidr.1 == self.cidr.0 {
            let Some(n) = topo.neighbour(dst) else {
                if translated {
                    return self.no_such_backend(frame, partial);
                }
                return self.reject(DropReason::NoSuchPod, frame, IcmpError::HostUnreachable);
            };
            rewrite_routed(eth, &mut ip, self.router_key, n.mac);
            return self.forwarded(Action::Forward(n.port));
        }
        let Some((peer_id, peer)) = topo.route(dst).and_then(|id| Some((id, topo.peer(id)?)))
        else {
            // Outside every pod network: the node's own routing takes it (egress).
            if topo.host().is_some_and(|h| h.port != ingress) {
                if let Some(a) = self.deliver_to_host(topo, eth, &mut ip) {
                    return a;
                }
            }
            return self.reject(DropReason::NoRoute, frame, IcmpError::NetUnreachable);
        };
        if !gso && ip.packet_len() > usize::from(self.cfg.tunnel_mtu) && ip.dont_fragment() {
            let mtu = self.cfg.tunnel_mtu;
            return self.reject(
                DropReason::TooBigForTunnel,
                frame,
                IcmpError::FragmentationNeeded { mtu },
            );
        }
        rewrite_routed(eth, &mut ip, self.router_key, mac_key(&peer.vtep_mac.0));
        self.forwarded(Action::Encap(peer_id))
    }

    fn process_tunnel(
        &mut self,
        topo: &Topology,
        source: SocketAddrV4,
        datagram: &mut [u8],
    ) -> Action {
        self.counts.rx += 1;
        if topo.peer_by_underlay(*source.ip()).is_none() {
            return self.drop(DropReason::VxlanUnknownPeer);
        }
        let vni = self.cfg.vni;
        let inner = match vxlan::decapsulate_mut(datagram) {
            Ok((v, inner)) if v == vni => inner,
            Ok(_) => return self.drop(DropReason::VxlanBadVni),
            Err(_) => return self.drop(DropReason::VxlanMalformed),
        };
        if self.services_on && inner.get(12..14) == Some(&ethertype::IPV4.to_be_bytes()[..]) {
            // A remote backend's reply to a client of this node.
            self.service_out(inner, L4Checksum::MaybeLeftPartial);
        }
        let (eth, mut ip) = match routed_views(inner, false) {
            Some((eth, ip)) if eth.ethertype() == ethertype::IPV4 => (eth, ip),
            _ => return self.drop(DropReason::VxlanNotForPod),
        };
        let dst = ip.dst_addr();
        let Some(n) = topo.neighbour(dst) else {
            // A reply to the node's own connection (from its gateway address).
            if dst == self.cfg.gateway {
                if let Some(a) = self.deliver_to_host(topo, eth, &mut ip) {
                    return a;
                }
            }
            return self.drop(DropReason::VxlanNotForPod);
        };
        if ip.ttl() <= 1 {
            return self.drop(DropReason::TtlExceeded);
        }
        rewrite_routed(eth, &mut ip, self.router_key, n.mac);
        self.forwarded(Action::Forward(n.port))
    }
}

/// Rule 1 for a pod port: only IPv4 and ARP, from the pod's own addresses.
#[inline]
fn check_pod_frame(
    eth: &EthernetFrame<&[u8]>,
    ether_type: u16,
    own: Ipv4Addr,
) -> Result<(), DropReason> {
    if ether_type == ethertype::IPV4 {
        let src = ipv4::source_address(eth.payload()).ok_or(DropReason::BadIpv4)?;
        return if src == own {
            Ok(())
        } else {
            Err(DropReason::SpoofedIp)
        };
    }
    check_pod_non_ipv4(eth, ether_type, own)
}

/// The rest of rule 1, out of the per-frame IPv4 path: ARP from the pod's own addresses;
/// nothing else.
#[cold]
#[inline(never)]
fn check_pod_non_ipv4(
    eth: &EthernetFrame<&[u8]>,
    ether_type: u16,
    own: Ipv4Addr,
) -> Result<(), DropReason> {
    match ether_type {
        ethertype::ARP => {
            let arp = ArpPacket::new_checked(eth.payload()).map_err(|_| DropReason::BadArp)?;
            if !arp.is_ethernet_ipv4() {
                return Err(DropReason::BadArp);
            }
            // Sender hardware address must be the frame's source; sender IP ours, or 0.0.0.0
            // for an address probe (RFC 5227).
            if arp.sender_hw_addr() != eth.src_addr() {
                return Err(DropReason::SpoofedMac);
            }
            let spa = arp.sender_ip();
            if spa == own || spa == Ipv4Addr::UNSPECIFIED {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
        t if ethertype::is_vlan_tag(t) => Err(DropReason::Vlan),
        _ => Err(DropReason::EtherType),
    }
}

/// The Ethernet and IPv4 headers of a frame to route, as two views over the two parts of
/// `frame`: the IPv4 header validated (version, lengths, a total length of 0 only as a
/// superframe's, `gso`, checksum). Parsed once; the views then rewrite the frame in place.
#[inline(always)]
fn routed_views(frame: &mut [u8], gso: bool) -> Option<RoutedViews<'_>> {
    let (eth, ip) = frame.split_at_mut_checked(ethernet::HEADER_LEN)?;
    let ip = match gso {
        true => Ipv4Packet::new_checked_superframe(ip),
        false => Ipv4Packet::new_checked(ip),
    }
    .ok()?;
    if !ip.verify_checksum() {
        return None;
    }
    Some((EthernetFrame::new_checked(eth).ok()?, ip))
}

/// The views [`routed_views`] returns.
type RoutedViews<'a> = (EthernetFrame<&'a mut [u8]>, Ipv4Packet<&'a mut [u8]>);

/// True if `ip` carries an ICMP echo request (the whole of it: not a fragment).
#[inline]
fn is_echo_request(ip: &Ipv4Packet<&mut [u8]>) -> bool {
    ip.protocol() == protocol::ICMP
        && !ip.is_fragment()
        && IcmpPacket::new_checked(ip.payload())
            .is_ok_and(|m| m.msg_type() == msg_type::ECHO_REQUEST)
}

/// Routed delivery: source MAC becomes the router's, destination the next hop's, TTL - 1.
#[inline]
fn rewrite_routed(
    mut eth: EthernetFrame<&mut [u8]>,
    ip: &mut Ipv4Packet<&mut [u8]>,
    src: u64,
    dst: u64,
) {
    eth.set_addr_keys(dst, src);
    ip.decrement_ttl();
}

#[cfg(test)]
mod tests;
