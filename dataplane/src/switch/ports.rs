//! The ports a data plane holds, by id, and how a frame is handed to one: [`Ports::send`]
//! (or [`Ports::send_parts`] for a frame in parts, [`Ports::flood`] for many ports).
//!
//! A port either takes frames as they are decided (a TAP: one write per frame, straight from
//! the receive buffer, no copy) or has them copied into its transmit batch, which
//! [`Ports::transmit`] sends at the end of the round. A port that cannot take GSO superframes
//! or partial checksums gets them segmented and checksummed on the way.

use std::sync::Arc;

use super::capture::{self, CaptureTap};
use crate::gso::Segmenter;
use crate::pipeline::{DropReason, Metrics, PortCounts, PortMetrics};
use crate::port::{Batch, Port, DEFAULT_BATCH};
use crate::table::PortId;
use crate::wire::virtio::VnetHdr;

/// One port and its per-port state.
pub(super) struct PortSlot {
    pub(super) port: Box<dyn Port>,
    /// The port takes superframes as they are (see [`Port::accepts_gso`]).
    accepts_gso: bool,
    /// Frames are written as they are decided (see [`Port::sends_immediately`]).
    direct: bool,
    /// A direct write found the port broken; it is removed at the end of the round.
    failed: bool,
    /// Direct writes dropped this round (published to the switch-wide `tx_dropped`).
    direct_dropped: u64,
    /// Registered for readiness: read only when reported ready.
    pub(super) polled: bool,
    /// Reported ready (frames waiting, or an error) since the port was last read.
    pub(super) ready: bool,
    pub(super) metrics: Arc<PortMetrics>,
    pub(super) counts: PortCounts,
    tx: Batch,
    /// Captures on this port (usually none): looked at once per batch received or sent, and
    /// on each direct write.
    pub(super) captures: Vec<Arc<CaptureTap>>,
}

impl PortSlot {
    pub(super) fn new(port: Box<dyn Port>, metrics: Arc<PortMetrics>, polled: bool) -> Self {
        Self {
            accepts_gso: port.accepts_gso(),
            direct: port.sends_immediately(),
            failed: false,
            direct_dropped: 0,
            polled,
            ready: false,
            port,
            metrics,
            counts: PortCounts::default(),
            tx: Batch::with_capacity(DEFAULT_BATCH, 2048),
            captures: Vec::new(),
        }
    }

    /// Writes the frame now on a direct port, else copies it into the transmit batch.
    #[inline(always)]
    fn hand_over(&mut self, frame: &[u8], vnet: VnetHdr) {
        if self.direct {
            self.write_now(&[frame], vnet);
        } else {
            self.tx.push_with(vnet, &[], frame);
        }
    }

    /// [`PortSlot::hand_over`] for a frame made of `parts`, back to back.
    fn hand_over_parts(&mut self, parts: &[&[u8]], vnet: VnetHdr) {
        if self.direct {
            self.write_now(parts, vnet);
        } else {
            self.tx.push_parts(vnet, parts);
        }
    }

    /// True if the port takes a frame with header `vnet` as it is: superframes and partial
    /// checksums only go to ports that accept them.
    #[inline(always)]
    fn takes(&self, vnet: &VnetHdr) -> bool {
        self.accepts_gso || (!vnet.is_gso() && !vnet.needs_csum())
    }

    /// One gather write of the frame made of `parts`. Kept out of line: it is a system call,
    /// and inlined into the per-frame loop it only adds register pressure.
    #[inline(never)]
    fn write_now(&mut self, parts: &[&[u8]], vnet: VnetHdr) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if !self.captures.is_empty() {
            capture::copy_parts(&self.captures, parts);
        }
        match self.port.send_now(parts, vnet) {
            Ok(true) => {
                self.counts.tx_frames += 1;
                self.counts.tx_bytes += len as u64;
            }
            Ok(false) => {
                self.counts.tx_dropped += 1;
                self.direct_dropped += 1;
            }
            Err(_) => {
                self.counts.tx_dropped += 1;
                self.direct_dropped += 1;
                self.failed = true;
            }
        }
    }
}

/// Every port of one data plane, indexed by [`PortId`].
#[derive(Default)]
pub(super) struct Ports {
    slots: Vec<Option<PortSlot>>,
    /// Cuts superframes for ports that cannot take them.
    segmenter: Segmenter,
    /// A frame given in parts, joined for the segmenter (rare: see [`Ports::send_parts`]).
    joined: Vec<u8>,
}

impl Ports {
    /// Holds `slot` under `id`, returning the slot it replaces.
    pub(super) fn insert(&mut self, id: PortId, slot: PortSlot) -> Option<PortSlot> {
        let idx = usize::from(id);
        if self.slots.len() <= idx {
            self.slots.resize_with(idx + 1, || None);
        }
        self.slots[idx].replace(slot)
    }

    /// Releases port `id`.
    pub(super) fn remove(&mut self, id: PortId) -> Option<PortSlot> {
        self.slots.get_mut(usize::from(id)).and_then(Option::take)
    }

    #[inline]
    pub(super) fn get(&self, id: PortId) -> Option<&PortSlot> {
        self.slots.get(usize::from(id)).and_then(Option::as_ref)
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: PortId) -> Option<&mut PortSlot> {
        self.slots.get_mut(usize::from(id)).and_then(Option::as_mut)
    }

    /// One past the highest id ever held (ids below it may be free).
    #[inline]
    pub(super) fn id_bound(&self) -> usize {
        self.slots.len()
    }

    /// Every port held.
    pub(super) fn iter(&self) -> impl Iterator<Item = &PortSlot> {
        self.slots.iter().flatten()
    }

    /// Every port held, to change.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut PortSlot> {
        self.slots.iter_mut().flatten()
    }

    /// True if port `id` takes superframes; `None` if there is no such port.
    #[inline]
    pub(super) fn accepts_gso(&self, id: PortId) -> Option<bool> {
        self.get(id).map(|s| s.accepts_gso)
    }

    /// Hands a frame to port `to`: as it is if the port takes it (superframes and partial
    /// checksums only to ports that accept them), else segmented and checksummed. False if
    /// there is no port `to`.
    #[inline(always)]
    pub(super) fn send(&mut self, to: PortId, frame: &[u8], vnet: VnetHdr) -> bool {
        let Some(slot) = self.slots.get_mut(usize::from(to)).and_then(Option::as_mut) else {
            return false;
        };
        if slot.takes(&vnet) {
            slot.hand_over(frame, vnet);
        } else {
            Self::segment(slot, &mut self.segmenter, frame, vnet);
        }
        true
    }

    /// [`Ports::send`] to every port of `to` but `except` (a flood). The per-frame checks are
    /// made once for all of them.
    #[inline(always)]
    pub(super) fn flood(&mut self, to: &[PortId], except: PortId, frame: &[u8], vnet: VnetHdr) {
        let plain = !vnet.is_gso() && !vnet.needs_csum();
        for &id in to {
            if id == except {
                continue;
            }
            let Some(slot) = self.slots.get_mut(usize::from(id)).and_then(Option::as_mut) else {
                continue;
            };
            if plain || slot.accepts_gso {
                slot.hand_over(frame, vnet);
            } else {
                Self::segment(slot, &mut self.segmenter, frame, vnet);
            }
        }
    }

    /// [`Ports::send`] for a frame made of `parts` laid back to back (rebuilt headers followed
    /// by payload that stays where it was received).
    pub(super) fn send_parts(&mut self, to: PortId, parts: &[&[u8]], vnet: VnetHdr) -> bool {
        let Some(slot) = self.slots.get_mut(usize::from(to)).and_then(Option::as_mut) else {
            return false;
        };
        if slot.takes(&vnet) {
            slot.hand_over_parts(parts, vnet);
        } else {
            // Rare: joined into one buffer for the segmenter.
            self.joined.clear();
            parts.iter().for_each(|p| self.joined.extend_from_slice(p));
            Self::segment(slot, &mut self.segmenter, &self.joined, vnet);
        }
        true
    }

    /// The rare case of sending: a superframe (or a frame with a partial checksum) for a port
    /// that cannot take it is cut into plain, checksummed frames. Kept out of the per-frame
    /// loop.
    #[cold]
    #[inline(never)]
    fn segment(slot: &mut PortSlot, segmenter: &mut Segmenter, frame: &[u8], vnet: VnetHdr) {
        let r = segmenter.segment(frame, &vnet, usize::MAX, |head: &[u8], body: &[u8]| {
            slot.hand_over_parts(&[head, body], VnetHdr::default());
        });
        if r.is_err() {
            slot.counts.tx_dropped += 1;
        }
    }

    /// Counts a frame received on `port` that went nowhere, and why.
    #[inline]
    pub(super) fn count_rx_drop(&mut self, port: PortId, reason: DropReason) {
        if let Some(s) = self.get_mut(port) {
            s.counts.count_rx_drop(reason);
        }
    }

    /// End of a round: sends every transmit batch, publishes each port's counters, and adds
    /// the ports found broken to `closed`.
    pub(super) fn transmit(&mut self, metrics: &Metrics, closed: &mut Vec<PortId>) {
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot.as_mut() else { continue };
            let id = id as PortId;
            if slot.failed && !closed.contains(&id) {
                tracing::warn!("port {id}: closed by its other end; removing it");
                closed.push(id);
            }
            if slot.direct_dropped > 0 {
                metrics.count_tx_dropped(slot.direct_dropped);
                slot.direct_dropped = 0;
            }
            if !slot.tx.is_empty() {
                if !slot.captures.is_empty() {
                    capture::copy_batch(&slot.captures, &slot.tx);
                }
                match slot.port.send(&mut slot.tx) {
                    Ok(out) => {
                        slot.counts.tx_frames += out.sent as u64;
                        slot.counts.tx_bytes += out.bytes as u64;
                        slot.counts.tx_dropped += out.dropped as u64;
                        if out.dropped > 0 {
                            metrics.count_tx_dropped(out.dropped as u64);
                        }
                    }
                    Err(e) => {
                        let n = slot.tx.len() as u64;
                        slot.tx.clear();
                        slot.counts.tx_dropped += n;
                        metrics.count_tx_dropped(n);
                        if !closed.contains(&id) {
                            tracing::warn!("port {id}: {e}; removing it");
                            closed.push(id);
                        }
                    }
                }
            }
            slot.metrics.flush(&mut slot.counts);
        }
    }
}
