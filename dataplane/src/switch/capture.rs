//! Packet capture as the data plane sees it: a [`CaptureTap`] is a bounded ring of buffers
//! that workers fill with copies of frames (cut to the snap length) and the control plane
//! drains ([`CaptureTap::next`], [`CaptureTap::recycle`]).
//!
//! Where frames are copied (each place looks at its list of taps once per batch, so a switch
//! nobody captures on pays one branch per port and round; the tunnel's sending side looks per
//! frame encapsulated, inside the out-of-line encapsulation):
//! - a port's received batch, before the pipeline edits it (what the pod sent);
//! - what is handed to a port: its transmit batch before it is sent, or a direct (TAP) write
//!   as it is made (what the pod receives);
//! - the tunnel: the inner frames of the datagrams queued for a peer, as sent (after
//!   segmentation; looked at per frame encapsulated, in the out-of-line encapsulation), and of
//!   the datagrams received from it, before the pipeline edits them.
//!
//! Frames are copied as the switch holds them: a GSO superframe is one large packet, a frame
//! with a partial checksum (virtio-net `NEEDS_CSUM`) keeps its unfinished checksum.
//!
//! Invariants: the data-plane side never blocks, allocates per frame in steady state (buffers
//! are recycled with their capacity) or makes a system call; when the reader falls behind,
//! copies are dropped and counted ([`CaptureTap::dropped`]), the data plane never waits.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::port::{Batch, TxQueue};
use crate::table::PortId;
use crate::wire::vxlan;

/// Copies a capture may hold before the reader takes them; more are dropped.
pub const CAPTURE_SLOTS: usize = 1024;
/// Bytes preallocated per slot at most (a buffer grows, once, for a larger frame).
const SLOT_PREALLOC: usize = 2048;

/// What a capture copies frames of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureTarget {
    /// What a port receives and sends.
    Port(PortId),
    /// The tunnel's inner frames to and from the peer with this underlay address.
    Peer(Ipv4Addr),
}

/// One copied frame: when the switch saw it, how long it was, and its first bytes.
#[derive(Debug)]
pub struct Record {
    /// Time since the Unix epoch.
    pub ts: Duration,
    /// The frame's length (more than `data.len()` when cut to the snap length).
    pub orig_len: usize,
    /// The copied bytes.
    pub data: Vec<u8>,
}

/// A bounded ring of copies shared by the workers (writers) and one reader.
#[derive(Debug)]
pub struct CaptureTap {
    id: u64,
    snaplen: usize,
    free_tx: Sender<Vec<u8>>,
    free_rx: Receiver<Vec<u8>>,
    full_tx: Sender<Record>,
    full_rx: Receiver<Record>,
    dropped: AtomicU64,
}

impl CaptureTap {
    /// A tap keeping up to `slots` copies of at most `snaplen` bytes each.
    pub(crate) fn new(snaplen: usize, slots: usize) -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let slots = slots.max(1);
        let (free_tx, free_rx) = bounded(slots);
        let (full_tx, full_rx) = bounded(slots);
        for _ in 0..slots {
            // Cannot fail: the channel has room for every slot.
            let _ = free_tx.try_send(Vec::with_capacity(snaplen.min(SLOT_PREALLOC)));
        }
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            snaplen,
            free_tx,
            free_rx,
            full_tx,
            full_rx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Identifies the tap among those a worker holds.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The snap length: no copy is longer.
    pub fn snaplen(&self) -> usize {
        self.snaplen
    }

    /// Copies dropped because the reader fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The next copy waiting, if any. Give its buffer back with [`CaptureTap::recycle`].
    pub fn next(&self) -> Option<Record> {
        self.full_rx.try_recv().ok()
    }

    /// Returns a buffer taken with [`CaptureTap::next`] to the ring.
    pub fn recycle(&self, buf: Vec<u8>) {
        let _ = self.free_tx.try_send(buf);
    }

    /// Copies the frame made of `parts` (back to back), cut to the snap length; drops and
    /// counts it if no buffer is free.
    pub(super) fn copy(&self, parts: &[&[u8]], ts: Duration) {
        let Ok(mut buf) = self.free_rx.try_recv() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        buf.clear();
        let mut orig_len = 0;
        for part in parts {
            let room = self.snaplen.saturating_sub(buf.len());
            buf.extend_from_slice(&part[..part.len().min(room)]);
            orig_len += part.len();
        }
        let record = Record {
            ts,
            orig_len,
            data: buf,
        };
        // The ring never holds more records than buffers: this only fails if the reader is gone.
        if self.full_tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The time a batch is stamped with.
#[inline]
pub(super) fn now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Copies every frame of `batch` to every tap of `taps`. Out of line: only a capture pays.
#[cold]
#[inline(never)]
pub(super) fn copy_batch(taps: &[Arc<CaptureTap>], batch: &Batch) {
    let ts = now();
    for (frame, _) in batch.iter() {
        for tap in taps {
            tap.copy(&[frame], ts);
        }
    }
}

/// Copies one frame made of `parts` to every tap of `taps`.
#[cold]
#[inline(never)]
pub(super) fn copy_parts(taps: &[Arc<CaptureTap>], parts: &[&[u8]]) {
    let ts = now();
    for tap in taps {
        tap.copy(parts, ts);
    }
}

/// The taps of `taps` on the peer at `underlay`.
fn peer_taps(
    taps: &[(Ipv4Addr, Arc<CaptureTap>)],
    underlay: Ipv4Addr,
) -> impl Iterator<Item = &CaptureTap> {
    taps.iter()
        .filter(move |(ip, _)| *ip == underlay)
        .map(|(_, t)| t.as_ref())
}

/// Copies the inner frames of the datagrams `queue` holds from index `from` on, all for `to`,
/// to the taps of `taps` on that peer; their bodies lie in `frame`, which starts at `at` of the
/// buffer the queue refers to.
#[cold]
#[inline(never)]
pub(super) fn copy_queued(
    taps: &[(Ipv4Addr, Arc<CaptureTap>)],
    queue: &TxQueue,
    from: usize,
    to: SocketAddrV4,
    frame: &[u8],
    at: usize,
) {
    let ts = now();
    queue.for_each_since(from, |head, body| {
        // The head starts with the VXLAN header; rebuilt inner headers may follow it.
        let inner = head.get(vxlan::HEADER_LEN..).unwrap_or_default();
        let body = frame
            .get(body.start.saturating_sub(at)..body.end.saturating_sub(at))
            .unwrap_or_default();
        for tap in peer_taps(taps, *to.ip()) {
            tap.copy(&[inner, body], ts);
        }
    });
}

/// Copies the inner frame of every datagram received (entry `i` of `rx` came from
/// `sources[i]`, in datagrams of `segments[i]` bytes, 0: one datagram) to the taps of `taps`
/// on its peer.
#[cold]
#[inline(never)]
pub(super) fn copy_received(
    taps: &[(Ipv4Addr, Arc<CaptureTap>)],
    rx: &Batch,
    sources: &[SocketAddrV4],
    segments: &[u16],
) {
    let ts = now();
    for (((entry, _), src), &seg) in rx.iter().zip(sources).zip(segments) {
        let seg = if seg == 0 {
            entry.len().max(1)
        } else {
            usize::from(seg)
        };
        for datagram in entry.chunks(seg) {
            let Some(inner) = datagram.get(vxlan::HEADER_LEN..) else {
                continue;
            };
            for tap in peer_taps(taps, *src.ip()) {
                tap.copy(&[inner], ts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_cut_to_the_snap_length_and_recycled() {
        let tap = CaptureTap::new(8, 2);
        tap.copy(
            &[&[1, 2, 3], &[4, 5, 6, 7, 8, 9, 10]],
            Duration::from_secs(5),
        );
        let r = tap.next().expect("a copy");
        assert_eq!(r.data, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!((r.orig_len, r.ts), (10, Duration::from_secs(5)));
        tap.recycle(r.data);
        assert!(tap.next().is_none());
        assert_eq!(tap.dropped(), 0);
    }

    #[test]
    fn a_full_ring_drops_and_counts_without_waiting() {
        let tap = CaptureTap::new(64, 2);
        for i in 0..5u8 {
            tap.copy(&[&[i; 10]], Duration::ZERO);
        }
        assert_eq!(tap.dropped(), 3);
        let a = tap.next().expect("first");
        assert_eq!(a.data, [0; 10]);
        tap.recycle(a.data);
        tap.copy(&[&[9; 3]], Duration::ZERO);
        assert_eq!(tap.next().expect("second").data, [1; 10]);
        assert_eq!(tap.next().expect("after recycling").data, [9; 3]);
        assert!(tap.next().is_none());
    }

    #[test]
    fn a_recycled_buffer_keeps_its_capacity() {
        let tap = CaptureTap::new(100_000, 1);
        tap.copy(&[&[7; 60_000]], Duration::ZERO);
        let r = tap.next().expect("superframe");
        assert_eq!(r.data.len(), 60_000);
        let cap = r.data.capacity();
        tap.recycle(r.data);
        tap.copy(&[&[1; 100]], Duration::ZERO);
        let r = tap.next().expect("small");
        assert_eq!(r.data.capacity(), cap, "no new allocation");
    }
}
