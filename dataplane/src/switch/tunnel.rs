//! The VXLAN tunnel as the data plane holds it: frames for peers queued and sent
//! ([`TunnelSlot::encapsulate`], [`TunnelSlot::flush`]), datagrams from peers received, judged
//! and delivered to local pods ([`TunnelSlot::decapsulate`]).
//!
//! Nothing is copied on the way out: the queue holds, per datagram, the VXLAN header (plus,
//! for a segment of a superframe, its rebuilt inner headers) and the range of the receive batch
//! holding the inner bytes; it is sent before that batch is reused. On the way in, datagrams
//! are edited where they were received and consecutive TCP segments of a flow are merged into
//! superframes that refer to them there ([`Coalescer`]).
//!
//! Per-peer counters ([`PeerCounts`]) are plain numbers kept for the round, indexed by the
//! peer's id in the round's topology snapshot, and added to that snapshot's per-peer
//! [`PortMetrics`] at its end: an id reused by a later topology never gets another peer's
//! frames, and the per-frame cost is an add to a slot already sized (no allocation, no atomic;
//! received datagrams are counted once per GRO run, which comes from one peer).

use std::net::SocketAddrV4;
use std::sync::Arc;

use super::capture::{self, CaptureTap};
use super::ports::Ports;
use crate::gso::{self, Coalescer, Segmenter};
use crate::pipeline::{Action, DropReason, Metrics, Pipeline, PortCounts, PortMetrics};
use crate::port::{Batch, TxQueue, UdpTunnel, DEFAULT_BATCH};
use crate::table::{PeerId, Topology};
use crate::wire::virtio::VnetHdr;
use crate::wire::{ethernet, vxlan};

pub(super) struct TunnelSlot {
    pub(super) tunnel: UdpTunnel,
    /// Registered for readiness, and reported ready (as for a port).
    pub(super) polled: bool,
    pub(super) ready: bool,
    header: [u8; vxlan::HEADER_LEN],
    tx: TxQueue,
    rx: Batch,
    sources: Vec<SocketAddrV4>,
    segments: Vec<u16>,
    coalescer: Coalescer,
    pub(super) metrics: Arc<PortMetrics>,
    pub(super) counts: PortCounts,
    segmenter: Segmenter,
    /// Largest inner IPv4 packet the tunnel carries (segments are cut to fit).
    tunnel_mtu: usize,
    /// Captures on peers, by underlay address (usually none; looked at once per batch).
    pub(super) captures: Vec<(std::net::Ipv4Addr, Arc<CaptureTap>)>,
    /// This round's counts per peer.
    pub(super) peers: PeerCounts,
}

/// One round's counts per peer: inner frames (datagrams) and their bytes sent to and received
/// from each peer, and drops by reason. Sized to the topology's peer ids at the start of a
/// round ([`PeerCounts::fit`]: an allocation only when a topology with more peers appears),
/// published at its end ([`PeerCounts::publish`]).
#[derive(Default)]
pub(super) struct PeerCounts {
    slots: Vec<PeerSlot>,
    /// Ids counted for this round (each once), so publishing skips idle peers.
    touched: Vec<PeerId>,
}

/// One peer's counts for the round.
#[derive(Default)]
struct PeerSlot {
    counts: PortCounts,
    /// Listed in `touched`.
    touched: bool,
}

impl PeerCounts {
    /// Makes room for every peer id of `topo` (the round's snapshot).
    pub(super) fn fit(&mut self, topo: &Topology) {
        let bound = topo.peer_id_bound();
        if self.slots.len() < bound {
            self.slots.resize_with(bound, PeerSlot::default);
            self.touched.reserve(bound - self.touched.len());
        }
    }

    /// The counts of peer `id` for this round (`None` if the id is beyond the snapshot's).
    #[inline(always)]
    fn of(&mut self, id: PeerId) -> Option<&mut PortCounts> {
        let slot = self.slots.get_mut(usize::from(id))?;
        if !slot.touched {
            // First count of the round for this peer (`fit` reserved room for every id).
            slot.touched = true;
            self.touched.push(id);
        }
        Some(&mut slot.counts)
    }

    /// Adds this round's counts to the per-peer counters of `topo` (the round's snapshot).
    pub(super) fn publish(&mut self, topo: &Topology) {
        for id in self.touched.drain(..) {
            let Some(slot) = self.slots.get_mut(usize::from(id)) else {
                continue;
            };
            slot.touched = false;
            match topo.peer_metrics(id) {
                Some(m) => m.flush(&mut slot.counts),
                None => slot.counts = PortCounts::default(),
            }
        }
    }
}

impl TunnelSlot {
    pub(super) fn new(
        tunnel: UdpTunnel,
        metrics: Arc<PortMetrics>,
        polled: bool,
        vni: u32,
        tunnel_mtu: u16,
    ) -> Self {
        Self {
            polled,
            ready: false,
            tunnel,
            header: vxlan::header(vni),
            // VXLAN header + inner Ethernet header + an inner packet of the tunnel MTU: the
            // UDP payload that fits the underlay without fragmenting.
            tx: TxQueue::with_gso_limit(
                vxlan::HEADER_LEN + ethernet::HEADER_LEN + usize::from(tunnel_mtu),
            ),
            rx: Batch::with_capacity(DEFAULT_BATCH, 2048),
            sources: Vec::with_capacity(DEFAULT_BATCH),
            segments: Vec::with_capacity(DEFAULT_BATCH),
            coalescer: Coalescer::default(),
            metrics,
            counts: PortCounts::default(),
            segmenter: Segmenter::default(),
            tunnel_mtu: usize::from(tunnel_mtu),
            captures: Vec::new(),
            peers: PeerCounts::default(),
        }
    }

    /// Queues one inner frame for `to`; `at` is where `frame` starts in the receive batch
    /// (the queue refers to its bytes there). A GSO superframe is cut into segments that fit
    /// the tunnel MTU (rebuilt headers queued, payload referred to); a frame with a partial
    /// checksum gets it completed in place (the far end is a plain kernel that verifies it).
    /// Returns false if the frame could not be made wire-ready.
    // Kept out of line: inlined into the round it slowed local routing by a third (register
    // pressure in the per-frame loop; measured 45 -> 31 M frames/s).
    #[inline(never)]
    pub(super) fn encapsulate(
        &mut self,
        to: SocketAddrV4,
        peer: PeerId,
        frame: &mut [u8],
        at: usize,
        vnet: VnetHdr,
    ) -> bool {
        let from = self.tx.len();
        let queued = self.queue(to, peer, frame, at, vnet);
        // A peer captured: the datagrams just queued are copied as they will leave (segments
        // of a superframe one by one). Here, per frame, rather than once per batch at the
        // flush: a check there, inlined into the round, cost every routed frame between local
        // pods 6 instructions (callgrind), with no tunnel involved.
        if !self.captures.is_empty() {
            capture::copy_queued(&self.captures, &self.tx, from, to, frame, at);
        }
        queued
    }

    /// [`TunnelSlot::encapsulate`] without the capture.
    #[inline(always)]
    fn queue(
        &mut self,
        to: SocketAddrV4,
        peer: PeerId,
        frame: &mut [u8],
        at: usize,
        vnet: VnetHdr,
    ) -> bool {
        let hash = vxlan::flow_hash(frame);
        if !vnet.is_gso() {
            if vnet.needs_csum() && gso::complete_checksum(frame, &vnet).is_err() {
                self.count_bad_offload(peer);
                return false;
            }
            self.tx
                .push(to, hash, &[&self.header], at..at + frame.len());
            if let Some(c) = self.peers.of(peer) {
                c.tx_frames += 1;
                c.tx_bytes += frame.len() as u64;
            }
            return true;
        }
        let Self {
            segmenter,
            tx,
            header,
            tunnel_mtu,
            ..
        } = self;
        // Consecutive segments of equal size become one GSO run in the queue.
        let (mut segments, mut bytes) = (0u64, 0u64);
        let cut = segmenter.segment_for_mtu(frame, &vnet, *tunnel_mtu, |head: &[u8], body| {
            segments += 1;
            bytes += (head.len() + body.len()) as u64;
            tx.push(to, hash, &[header, head], at + body.start..at + body.end);
        });
        if cut.is_err() {
            self.count_bad_offload(peer);
            return false;
        }
        if let Some(c) = self.peers.of(peer) {
            c.tx_frames += segments;
            c.tx_bytes += bytes;
        }
        true
    }

    /// A frame for `peer` that could not be made wire-ready.
    #[cold]
    fn count_bad_offload(&mut self, peer: PeerId) {
        if let Some(c) = self.peers.of(peer) {
            c.tx_dropped += 1;
            c.dropped.count(DropReason::BadOffload);
        }
    }

    /// Sends what is queued; `source` is the receive batch the queue refers to.
    pub(super) fn flush(&mut self, source: &[u8], metrics: &Metrics) {
        if self.tx.is_empty() {
            return;
        }
        let out = self.tunnel.send_queue(&mut self.tx, source);
        self.counts.tx_frames += out.sent as u64;
        self.counts.tx_bytes += out.bytes as u64;
        self.counts.tx_dropped += out.dropped as u64;
        if out.dropped > 0 {
            metrics.count_tx_dropped(out.dropped as u64);
        }
    }

    /// Receives one batch and hands what the pipeline accepts to local pods. With UDP GRO an
    /// entry holds a run of datagrams; each is judged on its own. Returns the datagrams
    /// received (counts are in datagrams).
    #[inline(never)]
    pub(super) fn decapsulate(
        &mut self,
        pipeline: &mut Pipeline,
        ports: &mut Ports,
        max: usize,
    ) -> usize {
        let Self {
            tunnel,
            rx,
            sources,
            segments,
            coalescer,
            counts,
            captures,
            peers,
            ..
        } = self;
        rx.clear();
        sources.clear();
        segments.clear();
        if let Err(e) = tunnel.recv(rx, sources, segments, max) {
            tracing::warn!("tunnel receive: {e}");
        }
        if !captures.is_empty() {
            capture::copy_received(captures, rx, sources, segments);
        }
        let mut datagrams = 0;
        counts.rx_bytes += rx.bytes() as u64;
        let deliver = |ports: &mut Ports, to, parts: &[&[u8]], vnet| {
            ports.send_parts(to, parts, vnet);
        };
        // Datagrams are addressed by range in the receive buffer: the pipeline edits each in
        // place, then the coalescer refers to the inner frame there until the final flush.
        for i in 0..rx.len() {
            let (Some(at), Some(len), Some(&src), Some(&seg)) = (
                rx.offset(i),
                rx.get(i).map(|(f, _)| f.len()),
                sources.get(i),
                segments.get(i),
            ) else {
                break;
            };
            let seg = if seg == 0 {
                len.max(1)
            } else {
                usize::from(seg)
            };
            // One entry (a GRO run) comes from one source: one peer's counts for all of it.
            let mut peer = pipeline
                .topology()
                .peer_by_underlay(*src.ip())
                .and_then(|id| peers.of(id));
            let first = datagrams;
            let mut start = at;
            while start < at + len {
                let end = (start + seg).min(at + len);
                let datagram = start..end;
                start = end;
                datagrams += 1;
                let action = match rx.as_bytes_mut().get_mut(datagram.clone()) {
                    Some(d) => pipeline.process_tunnel(src, d),
                    None => break,
                };
                let Action::Forward(to) = action else {
                    let reason = match action {
                        Action::Drop(r) | Action::Reject(r, _) => r,
                        _ => DropReason::VxlanNotForPod,
                    };
                    counts.count_rx_drop(reason);
                    if let Some(c) = peer.as_deref_mut() {
                        c.count_rx_drop(reason);
                    }
                    continue;
                };
                // A forwarded datagram holds at least the VXLAN header.
                let inner = datagram.start + vxlan::HEADER_LEN..datagram.end;
                let source = rx.as_bytes();
                match ports.accepts_gso(to) {
                    // Pods behind TAPs get consecutive segments merged into superframes.
                    Some(true) => coalescer.push(to, source, inner, &mut |p, parts, v| {
                        deliver(ports, p, parts, v)
                    }),
                    Some(false) => {
                        let frame = source.get(inner).unwrap_or_default();
                        ports.send(to, frame, VnetHdr::default());
                    }
                    None => pipeline.count_egress_drop(DropReason::PortGone, 1),
                }
            }
            if let Some(c) = peer {
                let n = datagrams - first;
                c.rx_frames += n;
                // Inner frame bytes, as on the way out.
                c.rx_bytes += (len as u64).saturating_sub(n * vxlan::HEADER_LEN as u64);
            }
        }
        coalescer.flush(rx.as_bytes(), &mut |p, parts, v| {
            deliver(ports, p, parts, v)
        });
        counts.rx_frames += datagrams;
        datagrams as usize
    }
}
