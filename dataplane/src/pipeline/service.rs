//! The service path (ClusterIP), at the client's node:
//!
//! - a packet for `VIP:port` of a service: the flow's backend from connection tracking, or,
//!   for a new flow, from the service's Maglev table (by the 5-tuple, or by the client address
//!   with `client_ip` affinity); the destination rewritten to the backend (DNAT), and, when the
//!   client is its own backend (hairpin), the source to the gateway address and a port of
//!   [`HAIRPIN_PORTS`] free for that backend; the packet then goes where its new destination
//!   lies (a pod of this node, or a peer through the tunnel);
//! - a backend's reply (recognised by connection tracking, wherever it comes from: a local pod
//!   at L2 or through the router, or the tunnel): the source rewritten back to `VIP:port`
//!   (and the destination back to the client for hairpin); likewise an ICMP error about a
//!   translated packet, whose quote is rewritten back to what the client sent;
//! - a service without backends answers TCP with a reset and UDP with ICMP port unreachable
//!   (kube-proxy's REJECT); a flow whose backend was removed, or whose service was deleted
//!   (marked ended), is reset (TCP) or re-balanced (UDP). The control plane probes the idle
//!   clients of such flows so that they answer, and get the reset, at once.
//!
//! Checksums are updated incrementally (`wire::nat`), partial ones (virtio-net `NEEDS_CSUM`,
//! superframes) kept partial, so segmentation and coalescing work through the translation.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::reply::{self, IcmpError};
use super::{Action, Core, DropReason};
use crate::table::{
    flow_hash, tcp_flags, CompiledService, Flow, FlowKey, Hit, Refused, Topology, HAIRPIN_PORTS,
};
use crate::wire::ethernet;
use crate::wire::ipv4::protocol::{ICMP, TCP};
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::nat::{self, End};

/// Ports tried for a new hairpin flow before it is refused (`hairpin_ports_busy`).
const HAIRPIN_TRIES: u64 = 16;

/// Offset of the TCP flags byte in the TCP header.
const TCP_FLAGS_AT: usize = 13;

/// The TCP flags of the IPv4 packet `ip` (0 for UDP or a short packet).
#[inline]
fn flags_of(ip: &[u8], proto: u8) -> u8 {
    if proto != TCP {
        return 0;
    }
    let ihl = usize::from(ip.first().copied().unwrap_or(0) & 0x0f) * 4;
    ip.get(ihl + TCP_FLAGS_AT).copied().unwrap_or(0)
}

/// Why a packet for a service is not translated, and how it is answered.
enum Refusal {
    /// Dropped.
    Drop(DropReason),
    /// Answered with a TCP reset.
    Reset(DropReason),
    /// Answered with an ICMP error.
    Reject(DropReason, IcmpError),
    /// Answered with "fragmentation needed".
    TooBig,
}

/// The form of a frame's TCP or UDP checksum, for [`Core::service_out`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum L4Checksum {
    /// Whole (a frame from a TAP without `NEEDS_CSUM`).
    Complete,
    /// Partial: the pseudo-header sum, completed later (virtio-net `NEEDS_CSUM`).
    Partial,
    /// From the tunnel: whole, or left partial by its sender for a NIC to complete (Linux's
    /// vxlan, a veth node's fast path, over a veth underlay); made whole if translated.
    MaybeLeftPartial,
}

impl Core {
    /// True if `dst` is in the service CIDR (one AND and one compare).
    #[inline]
    pub(super) fn is_service_ip(&self, dst: Ipv4Addr) -> bool {
        u32::from(dst) & self.services.1 == self.services.0
    }

    /// DNAT of a client's packet for a service address. `Ok`: the
    /// frame was rewritten and is to be routed by its new destination; `Err`: what to do
    /// instead.
    #[inline(never)]
    pub(super) fn service_in(
        &mut self,
        topo: &Topology,
        frame: &mut [u8],
        partial: bool,
        gso: bool,
    ) -> Result<(), Action> {
        // The checks that answer with an ICMP error come first, so the error quotes the
        // packet the client sent (to the VIP), which its stack can match.
        let (ttl, too_big) = match super::routed_views(frame, gso) {
            None => return Err(self.drop(DropReason::BadIpv4)),
            Some((_, ip)) => (
                ip.ttl(),
                !gso && ip.packet_len() > usize::from(self.cfg.tunnel_mtu) && ip.dont_fragment(),
            ),
        };
        if ttl <= 1 {
            return Err(self.reject(DropReason::TtlExceeded, frame, IcmpError::TtlExceeded));
        }
        let Some(ip) = frame.get_mut(ethernet::HEADER_LEN..) else {
            return Err(self.drop(DropReason::BadIpv4));
        };
        let fragment = Ipv4Packet::new_checked_header(&*ip).is_ok_and(|p| p.is_fragment());
        let Some((proto, src, sport, dst, dport)) = nat::endpoints(ip).filter(|_| !fragment) else {
            return Err(self.drop(DropReason::NoService));
        };
        let Some(svc) = topo.services().get(dst, dport, proto) else {
            return Err(self.no_service(frame, FlowKey::new(src, sport, dst, dport, proto)));
        };
        // Before the flow is tracked: a TCP or UDP header cut short of its checksum field is
        // malformed, and dropped (counted) without leaving a flow behind.
        if !nat::translatable(ip) {
            return Err(self.drop(DropReason::BadIpv4));
        }
        let flags = flags_of(ip, proto);
        let key = FlowKey::new(src, sport, dst, dport, proto);
        let hit = match self.decide(
            topo,
            svc,
            key,
            (src, sport, dst, dport, proto),
            flags,
            too_big,
        ) {
            Ok(hit) => hit,
            Err(Refusal::Drop(r)) => return Err(self.drop(r)),
            Err(Refusal::Reset(r)) => return Err(self.reset(frame, r)),
            Err(Refusal::Reject(r, kind)) => return Err(self.reject(r, frame, kind)),
            Err(Refusal::TooBig) => return Err(self.too_big(frame)),
        };
        if hit.compile {
            self.compile.push(key);
        }
        let ip = frame.get_mut(ethernet::HEADER_LEN..).unwrap_or_default();
        let (backend, port) = (*hit.backend.ip(), hit.backend.port());
        // Cannot fail (`translatable` above); a failure is still a counted drop.
        let done = nat::rewrite(ip, End::Destination, backend, port, partial).is_ok()
            && hit
                .snat
                .is_none_or(|s| nat::rewrite(ip, End::Source, *s.ip(), s.port(), partial).is_ok());
        if !done {
            return Err(self.drop(DropReason::BadIpv4));
        }
        Ok(())
    }

    /// The flow's backend: tracked, or chosen and tracked now; or why the packet is refused.
    /// Reads the switch's state only (the caller counts and answers).
    fn decide(
        &self,
        topo: &Topology,
        svc: &CompiledService,
        key: FlowKey,
        (src, sport, dst, dport, proto): (Ipv4Addr, u16, Ipv4Addr, u16, u8),
        flags: u8,
        too_big: bool,
    ) -> Result<Hit, Refusal> {
        let ct = &self.tables.conntrack;
        let known = ct.forward(&key, self.now, flags).filter(|hit| {
            // Still one of the service's backends (its index may have moved)?
            hit.service == svc.id && svc.index_of(&hit.backend).is_some()
        });
        // For a backend through the tunnel, a packet too big for it is answered as routing
        // would, from the VIP's side (and a new flow is not tracked).
        let too_big_for = |backend: &SocketAddrV4| too_big && topo.route(*backend.ip()).is_some();
        match known {
            Some(hit) if too_big_for(&hit.backend) => return Err(Refusal::TooBig),
            Some(hit) => return Ok(hit),
            None => {}
        }
        if ct.forward(&key, self.now, 0).is_some() {
            // Its backend is gone: TCP ends (the client reconnects), UDP re-balances.
            ct.remove(&key);
            if proto == TCP {
                return Err(Refusal::Reset(DropReason::BackendGone));
            }
        }
        let hash = flow_hash(src, sport, dst, dport, proto);
        let Some((_, backend)) = topo.services().pick(svc, hash, src) else {
            return Err(match proto {
                TCP => Refusal::Reset(DropReason::NoBackends),
                _ => Refusal::Reject(DropReason::NoBackends, IcmpError::PortUnreachable),
            });
        };
        if proto == TCP && flags & tcp_flags::RST != 0 {
            return Err(Refusal::Drop(DropReason::NoService));
        }
        if too_big_for(&backend) {
            return Err(Refusal::TooBig);
        }
        let snat = if *backend.ip() == src {
            let source = self.free_source(self.cfg.gateway, &backend, proto, hash);
            Some(source.ok_or(Refusal::Drop(DropReason::HairpinPortsBusy))?)
        } else if ct.replies_to(&FlowKey::new(
            *backend.ip(),
            backend.port(),
            src,
            sport,
            proto,
        )) {
            // The client's port already talks to this backend through another VIP: its
            // replies would be that flow's. Given a free port, as Linux's NAT does.
            let source = self.free_source(src, &backend, proto, hash);
            Some(source.ok_or(Refusal::Drop(DropReason::ConntrackClash))?)
        } else {
            None
        };
        let (client, vip) = (SocketAddrV4::new(src, sport), SocketAddrV4::new(dst, dport));
        let mut flow = Flow::new(client, vip, backend, snat, proto, svc.id, self.now);
        if proto == TCP && flags & tcp_flags::SYN == 0 {
            flow = flow.picked_up_mid_stream();
        }
        if let Err(refused) = ct.try_insert(flow) {
            return Err(Refusal::Drop(match refused {
                Refused::Full => DropReason::ConntrackFull,
                Refused::ClientShare => DropReason::ConntrackClientShare,
                Refused::Clash => DropReason::ConntrackClash,
            }));
        }
        Ok(Hit {
            client,
            vip,
            backend,
            snat,
            service: svc.id,
            compile: ct.offloading(),
        })
    }

    /// The source of a new flow to `backend`, as the backend will see it, when the client's
    /// own cannot be (hairpin: `addr` is the gateway; a clash: the client's address): `addr`
    /// and a port of [`HAIRPIN_PORTS`] that no flow to this backend holds (so its replies are
    /// this flow's alone, and not the client's or node's own connections': those take ports
    /// of the ephemeral range below). Tried from a port picked by `hash`; `None` if the
    /// [`HAIRPIN_TRIES`] ports tried are all taken.
    fn free_source(
        &self,
        addr: Ipv4Addr,
        backend: &SocketAddrV4,
        proto: u8,
        hash: u64,
    ) -> Option<SocketAddrV4> {
        let (first, count) = (*HAIRPIN_PORTS.start(), HAIRPIN_PORTS.len() as u64);
        (0..HAIRPIN_TRIES)
            .map(|i| SocketAddrV4::new(addr, first + ((hash + i) % count) as u16))
            .find(|s| {
                let reply = FlowKey::new(*backend.ip(), backend.port(), *s.ip(), s.port(), proto);
                !self.tables.conntrack.replies_to(&reply)
            })
    }

    /// The reverse translation of a backend's reply, if the IPv4 packet in `frame` is one.
    /// True if the frame was rewritten.
    #[inline(never)]
    pub(super) fn service_out(&mut self, frame: &mut [u8], checksum: L4Checksum) -> bool {
        let ct = &self.tables.conntrack;
        if ct.is_empty() {
            return false;
        }
        let Some(ip) = frame.get_mut(ethernet::HEADER_LEN..) else {
            return false;
        };
        // A later fragment has no ports (its payload would be read as ports).
        if Ipv4Packet::new_checked_header(&*ip).map_or(true, |p| !p.is_first_fragment()) {
            return false;
        }
        if ip.get(ipv4::field::PROTOCOL) == Some(&ICMP) {
            return self.icmp_error_out(ip);
        }
        let Some((proto, src, sport, dst, dport)) = nat::endpoints(ip) else {
            return false;
        };
        // Too short to translate: not looked up, so it changes no flow's state.
        if !nat::translatable(ip) {
            return false;
        }
        let key = FlowKey::new(src, sport, dst, dport, proto);
        let Some(hit) = ct.reply(&key, self.now, flags_of(ip, proto)) else {
            return false;
        };
        if hit.compile {
            let (client, vip) = (hit.client, hit.vip);
            self.compile.push(FlowKey::new(
                *client.ip(),
                client.port(),
                *vip.ip(),
                vip.port(),
                proto,
            ));
        }
        let partial = match checksum {
            L4Checksum::Complete => false,
            L4Checksum::Partial => true,
            L4Checksum::MaybeLeftPartial => {
                // Made whole before the translation updates it (translated frames only).
                crate::gso::complete_partial_checksum(frame);
                false
            }
        };
        let Some(ip) = frame.get_mut(ethernet::HEADER_LEN..) else {
            return false;
        };
        let ok = nat::rewrite(ip, End::Source, *hit.vip.ip(), hit.vip.port(), partial).is_ok()
            && (hit.snat.is_none()
                || nat::rewrite(
                    ip,
                    End::Destination,
                    *hit.client.ip(),
                    hit.client.port(),
                    partial,
                )
                .is_ok());
        ok
    }

    /// A packet for an address of the service CIDR that is no service (now): dropped, but
    /// a TCP flow of a service since deleted is reset, as one whose backend is gone. (A flow
    /// carried over an upgrade whose service is not back yet is only dropped: its service is
    /// on its way.)
    #[cold]
    fn no_service(&mut self, frame: &[u8], key: FlowKey) -> Action {
        let ct = &self.tables.conntrack;
        if ct.is_empty() || !ct.remove_ended(&key) {
            return self.drop(DropReason::NoService);
        }
        if key.proto() == TCP {
            self.reset(frame, DropReason::BackendGone)
        } else {
            self.drop(DropReason::NoService)
        }
    }

    /// An ICMP error (from a backend, or a router or switch on its way) about a packet of a
    /// translated flow, in the IPv4 packet `ip`: rewritten to be about the packet the client
    /// sent (to the VIP), and from the VIP if the backend sent it, so the client's stack
    /// matches it to its socket (a refused UDP port, a path MTU). True if rewritten.
    #[cold]
    fn icmp_error_out(&self, ip: &mut [u8]) -> bool {
        // The quoted packet went client (or, hairpin, the gateway) -> backend: reversed, it is
        // the flow's reply key.
        let Some((proto, qsrc, qsport, qdst, qdport)) = nat::quoted_endpoints(ip) else {
            return false;
        };
        let key = FlowKey::new(qdst, qdport, qsrc, qsport, proto);
        let Some(hit) = self.tables.conntrack.peek_reply(&key) else {
            return false;
        };
        let from_backend = ip.get(ipv4::field::SRC_ADDR) == Some(&hit.backend.ip().octets()[..]);
        let translation = nat::IcmpErrorNat {
            quoted_dst: hit.vip,
            quoted_src: hit.snat.map(|_| hit.client),
            outer_src: from_backend.then_some(*hit.vip.ip()),
            outer_dst: hit.snat.map(|_| *hit.client.ip()),
        };
        nat::rewrite_icmp_error(ip, &translation).is_ok()
    }

    /// "Fragmentation needed" for the packet in `frame`, with the tunnel's MTU.
    fn too_big(&mut self, frame: &[u8]) -> Action {
        let mtu = self.cfg.tunnel_mtu;
        self.reject(
            DropReason::TooBigForTunnel,
            frame,
            IcmpError::FragmentationNeeded { mtu },
        )
    }

    /// Answers the TCP segment in `frame` with a reset from its destination (counted as a drop
    /// for `reason`); a reset is never answered.
    fn reset(&mut self, frame: &[u8], reason: DropReason) -> Action {
        self.counts.dropped[reason as usize] += 1;
        match reply::tcp_reset(&mut self.scratch, frame, self.cfg.router_mac) {
            0 => Action::Drop(reason),
            len => Action::Reject(reason, len as u16),
        }
    }
}
