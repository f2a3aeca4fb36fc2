//! The forwarding decision, sans I/O: `(ingress port, frame) -> Action`.
//!
//! Like boringtun's `TunnResult`, [`Pipeline::process`] performs no system call: it reads the
//! tables (snapshots loaded once per batch by [`Pipeline::begin_batch`]), may rewrite the frame
//! in place (MAC rewrite and TTL decrement when routing, ARP/ICMP replies), and tells the caller
//! what to send where. The caller (the runtime in [`crate::switch`], or a test) does the I/O.
//!
//! Rules (DESIGN.md §3), for a frame from a pod port:
//! 1. validate: Ethernet header present, length within the pod MTU (unless a GSO superframe),
//!    source MAC and, for IPv4/ARP, source IP are the pod's own;
//! 2. learn the source MAC;
//! 3. broadcast/multicast: ARP request for the gateway is answered; the rest is flooded to the
//!    node's other ports (never into tunnels);
//! 4. unicast to the router MAC is routed: ping of the gateway answered; a pod of this node gets
//!    the frame with MACs rewritten and TTL decremented; a peer's CIDR is encapsulated; the rest
//!    gets an ICMP error;
//! 5. other unicast goes where the MAC table says, or is flooded when unknown.
//!
//! Every call ends in exactly one [`Action`], and every action is counted ([`stats::Counts`]).

pub mod reply;
pub mod stats;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::table::{MacSnapshot, PeerId, PortId, PortKind, Tables, Topology};
use crate::wire::{
    self, ethernet_fast, is_group_mac, mac_key, vxlan, EthernetAddress, ETHERNET_HEADER_LEN as ETH,
};
use reply::{IcmpError, ICMP_ERROR_MAX};
pub use stats::{Counts, DropReason, Metrics, PortCounts, PortMetrics};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;

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
}

impl NodeConfig {
    /// A config for `cidr` with the gateway at its first host address, VNI 1 and MTU 1450 (a
    /// 1500-byte underlay minus VXLAN's 50).
    pub fn new(cidr: Ipv4Net, router_mac: EthernetAddress) -> Self {
        let gateway = Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(1));
        Self {
            cidr,
            gateway,
            router_mac,
            vni: 1,
            mtu: 1450,
            tunnel_mtu: 1450,
        }
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the frame (possibly rewritten in place) to this port.
    Forward(PortId),
    /// Send the frame to every port of the node except the ingress.
    Flood,
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
    router_key: u64,
    /// The pod CIDR as (network, mask), so the per-frame test is one AND and one compare.
    cidr: (u32, u32),
    now: u32,
    learned: Vec<(u64, PortId)>,
    last_learned: Option<(u64, PortId)>,
    counts: Counts,
    scratch: [u8; ICMP_ERROR_MAX],
}

impl Pipeline {
    /// A pipeline for node `cfg` over `tables`.
    pub fn new(cfg: NodeConfig, tables: Arc<Tables>) -> Self {
        let core = Core {
            router_key: mac_key(&cfg.router_mac.0),
            cidr: (u32::from(cfg.cidr.network()), u32::from(cfg.cidr.netmask())),
            cfg,
            now: tables.mac.now(),
            learned: Vec::with_capacity(64),
            last_learned: None,
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
    pub fn config(&self) -> &NodeConfig {
        &self.core.cfg
    }

    /// The shared tables.
    pub fn tables(&self) -> &Arc<Tables> {
        &self.tables
    }

    /// The topology snapshot of the current batch.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }

    /// The ICMP error of the last [`Action::Reject`].
    pub fn scratch(&self) -> &[u8] {
        &self.core.scratch
    }

    /// Counts since the last [`Pipeline::take_counts`].
    pub fn counts(&self) -> &Counts {
        &self.core.counts
    }

    /// Returns the counts and resets them.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.core.counts)
    }

    /// Turns one frame counted as forwarded into a drop for `reason` (the runtime could not
    /// carry out the forward).
    pub fn count_egress_drop(&mut self, reason: DropReason, frames: u64) {
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
    }

    /// Applies what the batch learned (one table write for the whole batch, if anything is new).
    #[inline]
    pub fn end_batch(&mut self) {
        if !self.core.learned.is_empty() {
            self.tables.mac.learn(&self.core.learned, self.core.now);
            self.core.learned.clear();
        }
    }

    /// Decides what to do with `frame`, received on `ingress`. `gso` says the frame is a
    /// superframe described by a virtio-net header (exempt from the MTU check).
    #[inline]
    pub fn process(&mut self, ingress: PortId, frame: &mut [u8], gso: bool) -> Action {
        self.core
            .process(&self.topo, &self.mac, ingress, frame, gso)
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

    fn reject(&mut self, reason: DropReason, frame: &[u8], ihl: usize, kind: IcmpError) -> Action {
        self.counts.dropped[reason as usize] += 1;
        let len = reply::icmp_error(
            &mut self.scratch,
            frame,
            ihl,
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
        gso: bool,
    ) -> Action {
        self.counts.rx += 1;
        let Some((dst, src, ethertype)) = ethernet_fast(frame) else {
            return self.drop(DropReason::Malformed);
        };
        if frame.len() > usize::from(self.cfg.mtu) + ETH && !gso {
            return self.drop(DropReason::Oversize);
        }
        let Some(port) = topo.port(ingress) else {
            return self.drop(DropReason::UnknownPort);
        };
        if let PortKind::Pod { mac: own_mac, ip } = port.kind {
            if src != mac_key(&own_mac.0) {
                return self.drop(DropReason::SpoofedMac);
            }
            if let Err(r) = check_source_ip(frame, ethertype, ip) {
                return self.drop(r);
            }
        } else if is_group_mac(src) {
            return self.drop(DropReason::SpoofedMac);
        }
        self.learn(mac, src, ingress);

        if dst == self.router_key {
            return self.route(topo, frame, ethertype, gso);
        }
        if is_group_mac(dst) {
            if ethertype == ETHERTYPE_ARP && self.is_arp_request_for_gateway(frame) {
                reply::arp_reply_in_place(frame, self.cfg.router_mac, self.cfg.gateway);
                return self.local();
            }
            return self.forwarded(Action::Flood);
        }
        match mac.get(dst) {
            Some(e) if e.port == ingress => self.drop(DropReason::SameSegment),
            Some(e) => self.forwarded(Action::Forward(e.port)),
            None => self.forwarded(Action::Flood),
        }
    }

    fn is_arp_request_for_gateway(&self, frame: &[u8]) -> bool {
        // Validated by check_source_ip for pod ports; trunk ports are checked here.
        let Some(arp) = frame.get(ETH..ETH + wire::ARP_IPV4_LEN) else {
            return false;
        };
        arp[..8] == [0, 1, 8, 0, 6, 4, 0, 1] && arp[24..28] == self.cfg.gateway.octets()
    }

    /// Rule 4: the frame is addressed to the router MAC.
    #[inline]
    fn route(&mut self, topo: &Topology, frame: &mut [u8], ethertype: u16, gso: bool) -> Action {
        if ethertype == ETHERTYPE_ARP {
            if self.is_arp_request_for_gateway(frame) {
                reply::arp_reply_in_place(frame, self.cfg.router_mac, self.cfg.gateway);
                return self.local();
            }
            return self.drop(DropReason::NotRoutable);
        }
        if ethertype != ETHERTYPE_IPV4 {
            return self.drop(DropReason::NotRoutable);
        }
        let Some(ip) = Ipv4View::parse(&frame[ETH..]) else {
            return self.drop(DropReason::BadIpv4);
        };
        if ip.dst == self.cfg.gateway {
            if ip.is_echo_request(&frame[ETH..]) {
                reply::echo_reply_in_place(
                    frame,
                    ip.ihl,
                    ip.total,
                    self.cfg.router_mac,
                    self.cfg.gateway,
                );
                return self.local();
            }
            return self.drop(DropReason::GatewayUnsupported);
        }
        if ip.ttl <= 1 {
            return self.reject(
                DropReason::TtlExceeded,
                frame,
                ip.ihl,
                IcmpError::TtlExceeded,
            );
        }
        if u32::from(ip.dst) & self.cidr.1 == self.cidr.0 {
            let Some(n) = topo.neighbour(ip.dst) else {
                return self.reject(
                    DropReason::NoSuchPod,
                    frame,
                    ip.ihl,
                    IcmpError::HostUnreachable,
                );
            };
            rewrite_routed(frame, self.router_key, n.mac);
            return self.forwarded(Action::Forward(n.port));
        }
        let Some((peer_id, peer)) = topo.route(ip.dst).and_then(|id| Some((id, topo.peer(id)?)))
        else {
            return self.reject(
                DropReason::NoRoute,
                frame,
                ip.ihl,
                IcmpError::NetUnreachable,
            );
        };
        if !gso && ip.total > usize::from(self.cfg.tunnel_mtu) && ip.dont_fragment {
            let mtu = self.cfg.tunnel_mtu;
            return self.reject(
                DropReason::TooBigForTunnel,
                frame,
                ip.ihl,
                IcmpError::FragmentationNeeded { mtu },
            );
        }
        rewrite_routed(frame, self.router_key, mac_key(&peer.vtep_mac.0));
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
        let is_ipv4 = ethernet_fast(inner).is_some_and(|(_, _, t)| t == ETHERTYPE_IPV4);
        let ip = match inner.get(ETH..).and_then(Ipv4View::parse) {
            Some(ip) if is_ipv4 => ip,
            _ => return self.drop(DropReason::VxlanNotForPod),
        };
        let Some(n) = topo.neighbour(ip.dst) else {
            return self.drop(DropReason::VxlanNotForPod);
        };
        if ip.ttl <= 1 {
            return self.drop(DropReason::TtlExceeded);
        }
        rewrite_routed(inner, self.router_key, n.mac);
        self.forwarded(Action::Forward(n.port))
    }
}

/// Checks that an IPv4 packet or an ARP packet from a pod carries the pod's own address.
#[inline]
fn check_source_ip(frame: &[u8], ethertype: u16, own: Ipv4Addr) -> Result<(), DropReason> {
    match ethertype {
        ETHERTYPE_IPV4 => {
            let src = frame.get(ETH + 12..ETH + 16).ok_or(DropReason::BadIpv4)?;
            if src == own.octets() {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
        ETHERTYPE_ARP => {
            let arp = frame
                .get(ETH..ETH + wire::ARP_IPV4_LEN)
                .ok_or(DropReason::BadArp)?;
            if arp[..6] != [0, 1, 8, 0, 6, 4] {
                return Err(DropReason::BadArp);
            }
            // Sender hardware address must be the frame's source; sender IP ours, or 0.0.0.0
            // for an address probe (RFC 5227).
            if arp[8..14] != frame[6..12] {
                return Err(DropReason::SpoofedMac);
            }
            let spa = &arp[14..18];
            if spa == own.octets() || spa == [0, 0, 0, 0] {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
        _ => Ok(()),
    }
}

/// Routed delivery: source MAC becomes the router's, destination the next hop's, TTL - 1.
#[inline]
fn rewrite_routed(frame: &mut [u8], src: u64, dst: u64) {
    frame[0..6].copy_from_slice(&dst.to_be_bytes()[2..]);
    frame[6..12].copy_from_slice(&src.to_be_bytes()[2..]);
    let _ = wire::ipv4_decrement_ttl(&mut frame[ETH..]);
}

/// The fields of a validated IPv4 header the router needs.
struct Ipv4View {
    ihl: usize,
    total: usize,
    ttl: u8,
    dst: Ipv4Addr,
    dont_fragment: bool,
    is_fragment: bool,
}

impl Ipv4View {
    /// Validates version, header length, total length and header checksum.
    #[inline]
    fn parse(ip: &[u8]) -> Option<Self> {
        let hdr = ip.get(..wire::IPV4_HEADER_LEN)?;
        if hdr[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(hdr[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        if ihl < wire::IPV4_HEADER_LEN || total < ihl || ip.len() < total.max(ihl) {
            // A GSO superframe has total length 0 or its real length; both fit in the buffer.
            if !(total == 0 && ip.len() >= ihl) {
                return None;
            }
        }
        if !wire::ipv4_header_checksum_ok(&ip[..ihl]) {
            return None;
        }
        let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
        Some(Self {
            ihl,
            total: if total == 0 { ip.len() } else { total },
            ttl: hdr[8],
            dst: Ipv4Addr::new(hdr[16], hdr[17], hdr[18], hdr[19]),
            dont_fragment: frag & 0x4000 != 0,
            is_fragment: frag & 0x3fff != 0,
        })
    }

    fn is_echo_request(&self, ip: &[u8]) -> bool {
        ip[9] == 1
            && !self.is_fragment
            && ip.get(self.ihl) == Some(&8)
            && self.total >= self.ihl + 8
    }
}

#[cfg(test)]
mod tests;
