//! The runtime: a data-plane loop that moves batches between ports through the pipeline, and
//! the [`Switch`] handle the control plane uses to attach and detach ports.
//!
//! One round ([`Dataplane::poll_once`]): for each port, take one batch of received frames, run
//! each frame through the pipeline, copy it into the transmit batch of its destination port(s);
//! then send every non-empty transmit batch. Table snapshots are loaded once per round and
//! counters published once per round, so the per-frame cost is the pipeline decision plus one
//! copy.
//!
//! Readiness: ports with a file descriptor (TAPs, the tunnel) are registered with one epoll
//! instance; each round asks it once, without blocking, which of them have frames waiting and
//! reads only those, so an idle pod costs no system call per round (it cost one `read` that
//! failed with `EAGAIN`). The idle data plane sleeps in the same epoll. In-memory ports have
//! no descriptor and are looked at every round (a lock-free queue check). Without epoll (it
//! could not be created) every port is read every round and sleeping uses `poll(2)`.
//!
//! Invariants: a port id is in the topology only while the data plane holds the port (attach
//! adds the port before publishing it; detach unpublishes first); a port whose other end closed
//! is removed from the data plane, the topology and the MAC table by the data plane itself.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use crate::gso::{self, Coalescer, Segmenter};
use crate::pipeline::{Action, DropReason, Metrics, NodeConfig, Pipeline, PortCounts, PortMetrics};
use crate::port::{mem_port, Batch, MemEndpoint, Port, TxQueue, UdpTunnel, Waker, DEFAULT_BATCH};
use crate::table::{
    MacTableConfig, Peer, PeerId, PortId, PortInfo, PortKind, Tables, Topology, TopologyError,
};
use crate::wire::virtio::VnetHdr;
use crate::wire::{ethernet, mac_key, vxlan};

/// How long the data plane keeps looking for frames after the last one before it sleeps.
/// Waking a sleeping thread costs the sender an inter-processor interrupt and us a context
/// switch (a quarter of the time in the TAP-to-TAP profile); a TCP stream's next superframe
/// or ACK usually comes within this. Measured on 2 cores (same-node iperf3): 64 rounds of
/// epoll (~10 us) 10.7-11.6 Gbit/s, 50 us 12.0-14.9, 100 us 13.1-14.3.
const SPIN_TIME: Duration = Duration::from_micros(50);
/// Busy rounds between two looks at the clock (a `clock_gettime` per round was 1.7% of the
/// same-node profile).
const CLOCK_ROUNDS: u32 = 64;
/// The first part of [`SPIN_TIME`] is a busy loop; after it the thread yields between looks,
/// so a pod (or another node's switch) runnable on this core gets it. The pods share the
/// switch's cores: cross-node TCP on 2 cores 7.3 Gbit/s busy-spinning, 8.1-8.8 yielding.
const BUSY_SPIN: Duration = Duration::from_micros(10);
/// Longest sleep; bounds how late ageing runs on an idle switch.
const MAX_SLEEP: Duration = Duration::from_secs(1);

struct Slot {
    port: Box<dyn Port>,
    /// The port takes superframes as they are (see [`Port::accepts_gso`]).
    accepts_gso: bool,
    /// Frames are written as they are decided (see [`Port::sends_immediately`]).
    direct: bool,
    /// A direct write found the port broken; it is removed at the end of the round.
    failed: bool,
    /// Direct writes dropped this round (published to the switch-wide `tx_dropped`).
    direct_dropped: u64,
    /// Registered with the data plane's epoll: read only when it reports frames waiting.
    polled: bool,
    /// Epoll reported frames waiting (or an error) since the port was last read.
    ready: bool,
    metrics: Arc<PortMetrics>,
    counts: PortCounts,
    tx: Batch,
}

/// The data-plane state: ports, pipeline, buffers. Driven by [`Dataplane::poll_once`], either
/// from the thread [`Switch::start`] spawns or directly (benchmarks, deterministic tests).
pub struct Dataplane {
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    slots: Vec<Option<Slot>>,
    rx: Batch,
    closed: Vec<PortId>,
    /// Closed ports released this round, with the counters that identify their attachment.
    gone: Vec<(PortId, Arc<PortMetrics>)>,
    batch: usize,
    tunnel: Option<TunnelSlot>,
    /// Cuts superframes for ports that cannot take them.
    segmenter: Segmenter,
    /// Readiness of every port with a descriptor (see the module documentation).
    epoll: Option<Epoll>,
    events: Vec<EpollEvent>,
    /// Ports (tunnel included) registered with `epoll`; none: no need to ask it.
    watched: usize,
}

// A coalesced superframe (headers + one part per segment) must fit one TAP write.
const _: () = assert!(crate::gso::MAX_PARTS <= crate::port::tap::MAX_PARTS);

/// Epoll tokens: a port's is its id; these are above every port id.
const TUNNEL_TOKEN: u64 = u64::MAX;
const WAKER_TOKEN: u64 = u64::MAX - 1;
/// Readiness events taken per round (more wait for the next round).
const EVENTS: usize = 256;

impl Slot {
    /// Hands one frame to the port: written now for direct ports (no copy), else queued in the
    /// transmit batch.
    #[inline]
    fn emit(&mut self, frame: &[u8], vnet: VnetHdr) {
        if self.direct {
            self.emit_now(frame, vnet);
        } else {
            self.tx.push_with(vnet, &[], frame);
        }
    }

    /// Hands the frame made of `parts` (back to back) to the port, like [`Slot::emit`].
    fn emit_parts(&mut self, parts: &[&[u8]], vnet: VnetHdr) {
        if self.direct {
            self.emit_parts_now(parts, vnet);
        } else {
            self.tx.push_parts(vnet, parts);
        }
    }

    /// The direct-write half of [`Slot::emit`] (one system call; kept out of the loop body).
    #[inline(never)]
    fn emit_now(&mut self, frame: &[u8], vnet: VnetHdr) {
        self.emit_parts_now(&[frame], vnet);
    }

    /// Writes the frame made of `parts`, back to back, now (one gather system call).
    fn emit_parts_now(&mut self, parts: &[&[u8]], vnet: VnetHdr) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
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

    /// Queues a frame for this port: as it is if the port takes superframes (or the frame is
    /// plain), else segmented and checksummed.
    #[inline]
    fn push(&mut self, segmenter: &mut Segmenter, frame: &[u8], vnet: VnetHdr) {
        if self.accepts_gso || (!vnet.is_gso() && !vnet.needs_csum()) {
            self.emit(frame, vnet);
        } else {
            self.push_segmented(segmenter, frame, vnet);
        }
    }

    /// The rare case of [`Slot::push`], kept out of the per-frame loop.
    #[cold]
    #[inline(never)]
    fn push_segmented(&mut self, segmenter: &mut Segmenter, frame: &[u8], vnet: VnetHdr) {
        let r = segmenter.segment(frame, &vnet, usize::MAX, |head: &[u8], body: &[u8]| {
            self.emit_parts(&[head, body], VnetHdr::default());
        });
        if r.is_err() {
            self.counts.tx_dropped += 1;
        }
    }
}

/// The VXLAN tunnel and its buffers. Frames for peers are queued in `tx` as the VXLAN header
/// (plus, for a segment of a superframe, its rebuilt inner headers) and the range of the
/// receive batch holding the inner bytes; the queue is sent before that batch is reused.
/// Received datagrams land in `rx`, their sources in `sources`.
struct TunnelSlot {
    tunnel: UdpTunnel,
    /// Registered with the data plane's epoll, and reported ready (as for [`Slot`]).
    polled: bool,
    ready: bool,
    header: [u8; vxlan::HEADER_LEN],
    tx: TxQueue,
    rx: Batch,
    sources: Vec<SocketAddrV4>,
    segments: Vec<u16>,
    coalescer: Coalescer,
    metrics: Arc<PortMetrics>,
    counts: PortCounts,
    segmenter: Segmenter,
    /// Largest inner IPv4 packet the tunnel carries (segments are cut to fit).
    tunnel_mtu: usize,
}

impl TunnelSlot {
    /// Queues one inner frame for `to`; `at` is where `frame` starts in the receive batch
    /// (the queue refers to its bytes there). A GSO superframe is cut into segments that fit
    /// the tunnel MTU (rebuilt headers queued, payload referred to); a frame with a partial
    /// checksum gets it completed in place (the far end is a plain kernel that verifies it).
    /// Returns false if the frame could not be made wire-ready.
    // Kept out of line: inlined into `poll_once` it slowed local routing by a third (register
    // pressure in the per-frame loop; measured 45 -> 31 M frames/s).
    #[inline(never)]
    fn encap(&mut self, to: SocketAddrV4, frame: &mut [u8], at: usize, vnet: VnetHdr) -> bool {
        let hash = vxlan::flow_hash(frame);
        if !vnet.is_gso() {
            if vnet.needs_csum() && gso::complete_checksum(frame, &vnet).is_err() {
                return false;
            }
            self.tx
                .push(to, hash, &[&self.header], at..at + frame.len());
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
        segmenter
            .segment_for_mtu(frame, &vnet, *tunnel_mtu, |head: &[u8], body| {
                tx.push(to, hash, &[header, head], at + body.start..at + body.end);
            })
            .is_ok()
    }

    /// Sends what is queued; `source` is the receive batch the queue refers to.
    fn flush(&mut self, source: &[u8], metrics: &Metrics) {
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
}

impl Dataplane {
    /// A data plane for `pipeline`, publishing switch-wide counters to `metrics`.
    pub fn new(pipeline: Pipeline, metrics: Arc<Metrics>) -> Self {
        Self {
            pipeline,
            metrics,
            slots: Vec::new(),
            rx: Batch::with_capacity(DEFAULT_BATCH, 2048),
            closed: Vec::new(),
            gone: Vec::new(),
            batch: DEFAULT_BATCH,
            tunnel: None,
            segmenter: Segmenter::default(),
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                .inspect_err(|e| {
                    tracing::warn!("epoll_create: {e}; reading every port every round instead")
                })
                .ok(),
            events: vec![EpollEvent::empty(); EVENTS],
            watched: 0,
        }
    }

    /// Registers `fd` under `token`; false if there is no epoll or it refused.
    fn watch(&mut self, fd: BorrowedFd<'_>, token: u64) -> bool {
        let Some(ep) = self.epoll.as_ref() else {
            return false;
        };
        let ok = ep
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .inspect_err(|e| tracing::warn!("epoll_ctl: {e}; reading that port every round"))
            .is_ok();
        if ok && token != WAKER_TOKEN {
            self.watched += 1;
        }
        ok
    }

    /// Makes `waker` end the data plane's sleep in epoll (called once by the driving thread).
    /// False: sleeping must use `poll(2)`.
    fn watch_waker(&mut self, waker: &Waker) -> bool {
        self.watch(waker.fd(), WAKER_TOKEN)
    }

    /// Asks epoll which ports have frames waiting and marks them; waits up to `timeout`.
    /// Returns whether anything is ready (always true without epoll: every port is read).
    fn mark_ready(&mut self, timeout: PollTimeout) -> bool {
        let Some(ep) = self.epoll.as_ref() else {
            return true;
        };
        // EINTR or another error: nothing marked; the next round asks again.
        let n = ep.wait(&mut self.events, timeout).unwrap_or(0);
        for ev in &self.events[..n] {
            match ev.data() {
                TUNNEL_TOKEN => {
                    if let Some(t) = self.tunnel.as_mut() {
                        t.ready = true;
                    }
                }
                WAKER_TOKEN => {}
                id => {
                    let slot = usize::try_from(id)
                        .ok()
                        .and_then(|i| self.slots.get_mut(i))
                        .and_then(Option::as_mut);
                    if let Some(slot) = slot {
                        slot.ready = true;
                    }
                }
            }
        }
        n > 0
    }

    /// Attaches the VXLAN tunnel; frames routed to peers leave through it.
    pub fn set_tunnel(&mut self, tunnel: UdpTunnel, metrics: Arc<PortMetrics>) {
        // A send-only tunnel has nothing to read: "polled" and never ready.
        let polled = match tunnel.poll_fd() {
            Some(fd) => self.watch(fd, TUNNEL_TOKEN),
            None => true,
        };
        let cfg = self.pipeline.config();
        self.tunnel = Some(TunnelSlot {
            polled,
            ready: false,
            tunnel,
            header: vxlan::header(cfg.vni),
            // VXLAN header + inner Ethernet header + an inner packet of the tunnel MTU: the
            // UDP payload that fits the underlay without fragmenting.
            tx: TxQueue::with_gso_limit(
                vxlan::HEADER_LEN + ethernet::HEADER_LEN + usize::from(cfg.tunnel_mtu),
            ),
            rx: Batch::with_capacity(DEFAULT_BATCH, 2048),
            sources: Vec::with_capacity(DEFAULT_BATCH),
            segments: Vec::with_capacity(DEFAULT_BATCH),
            coalescer: Coalescer::default(),
            metrics,
            counts: PortCounts::default(),
            segmenter: Segmenter::default(),
            tunnel_mtu: usize::from(cfg.tunnel_mtu),
        });
    }

    /// Holds `port` under `id`. The caller publishes it in the topology afterwards.
    pub fn add_port(&mut self, id: PortId, port: Box<dyn Port>, metrics: Arc<PortMetrics>) {
        let idx = usize::from(id);
        if self.slots.len() <= idx {
            self.slots.resize_with(idx + 1, || None);
        }
        if let Some(old) = self.slots[idx].take() {
            self.unwatch(&old);
        }
        let polled = port
            .poll_fd()
            .is_some_and(|fd| self.watch(fd, u64::from(id)));
        self.slots[idx] = Some(Slot {
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
        });
    }

    /// Releases the port `id`, returning it.
    pub fn remove_port(&mut self, id: PortId) -> Option<Box<dyn Port>> {
        let slot = self.slots.get_mut(usize::from(id)).and_then(Option::take)?;
        self.unwatch(&slot);
        Some(slot.port)
    }

    /// True if every port with a descriptor (the tunnel included) is in the epoll set.
    fn all_watched(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .all(|s| s.polled || s.port.poll_fd().is_none())
            && self.tunnel.as_ref().is_none_or(|t| t.polled)
    }

    /// Drops port `id` if it is still the attachment with counters `metrics`.
    fn release(&mut self, id: PortId, metrics: &Arc<PortMetrics>) {
        let same = self
            .slots
            .get(usize::from(id))
            .and_then(Option::as_ref)
            .is_some_and(|s| Arc::ptr_eq(&s.metrics, metrics));
        if same {
            drop(self.remove_port(id));
        }
    }

    /// Deregisters a port leaving the data plane (its fd may live on in the caller's hands).
    fn unwatch(&mut self, slot: &Slot) {
        if let (true, Some(ep), Some(fd)) = (slot.polled, self.epoll.as_ref(), slot.port.poll_fd())
        {
            let _ = ep.delete(fd);
            self.watched -= 1;
        }
    }

    /// Ports whose other end closed since the last call (already released), each with the
    /// counters it was attached with: an id may be reused, the counters are not.
    pub fn take_closed(&mut self) -> Vec<(PortId, Arc<PortMetrics>)> {
        std::mem::take(&mut self.gone)
    }

    /// The pipeline (tables, config, counters).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// One round over every port. Returns the number of frames received.
    pub fn poll_once(&mut self) -> usize {
        if self.watched > 0 {
            self.mark_ready(PollTimeout::ZERO);
        }
        let Self {
            pipeline,
            metrics,
            slots,
            rx,
            closed,
            batch,
            tunnel,
            segmenter,
            watched,
            gone,
            ..
        } = self;
        pipeline.begin_batch();
        // The flood set comes from the same snapshot the pipeline decides with.
        let topo = Arc::clone(pipeline.topology());
        let mut total = 0;
        for ingress in 0..slots.len() {
            let Some(slot) = slots[ingress].as_mut() else {
                continue;
            };
            if slot.polled && !std::mem::take(&mut slot.ready) {
                continue;
            }
            rx.clear();
            let n = match slot.port.recv(rx, *batch) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("port {ingress}: {e}; removing it");
                    closed.push(ingress as PortId);
                    continue;
                }
            };
            if n == 0 {
                continue;
            }
            total += n;
            slot.counts.rx_frames += n as u64;
            slot.counts.rx_bytes += rx.bytes() as u64;
            let ingress = ingress as PortId;
            for i in 0..rx.len() {
                let at = rx.offset(i).unwrap_or(0);
                let Some((frame, vnet)) = rx.get_mut(i) else {
                    break;
                };
                match pipeline.process(ingress, frame, &vnet) {
                    Action::Forward(to) => {
                        match slots.get_mut(usize::from(to)).and_then(Option::as_mut) {
                            Some(out) => out.push(segmenter, frame, vnet),
                            None => pipeline.count_egress_drop(DropReason::PortGone, 1),
                        }
                    }
                    Action::Flood => {
                        for &to in topo.flood_ports() {
                            if to == ingress {
                                continue;
                            }
                            if let Some(out) =
                                slots.get_mut(usize::from(to)).and_then(Option::as_mut)
                            {
                                out.push(segmenter, frame, vnet);
                            }
                        }
                    }
                    Action::Reply => push_to(slots, ingress, frame),
                    Action::Reject(_, len) => {
                        let reply = &pipeline.scratch()[..usize::from(len)];
                        push_to(slots, ingress, reply);
                        count_rx_drop(slots, ingress);
                    }
                    Action::Encap(peer) => {
                        let to = topo.peer(peer).map(|p| p.underlay);
                        match (tunnel.as_mut(), to) {
                            (Some(t), Some(to)) => {
                                if !t.encap(to, frame, at, vnet) {
                                    pipeline.count_egress_drop(DropReason::BadOffload, 1);
                                    count_rx_drop(slots, ingress);
                                }
                            }
                            _ => {
                                pipeline.count_egress_drop(DropReason::NoTunnel, 1);
                                count_rx_drop(slots, ingress);
                            }
                        }
                    }
                    Action::Drop(_) => count_rx_drop(slots, ingress),
                }
            }
            // The queue refers to this batch's bytes: send before the next port reuses it.
            if let Some(t) = tunnel.as_mut() {
                t.flush(rx.as_bytes(), metrics);
            }
        }
        if let Some(t) = tunnel.as_mut() {
            if !t.polled || std::mem::take(&mut t.ready) {
                total += decapsulate(t, pipeline, slots, *batch);
            }
            t.metrics.flush(&mut t.counts);
        }
        for (id, slot) in slots.iter_mut().enumerate() {
            let Some(slot) = slot.as_mut() else { continue };
            if slot.failed && !closed.contains(&(id as PortId)) {
                tracing::warn!("port {id}: closed by its other end; removing it");
                closed.push(id as PortId);
            }
            if slot.direct_dropped > 0 {
                metrics.count_tx_dropped(slot.direct_dropped);
                slot.direct_dropped = 0;
            }
            if !slot.tx.is_empty() {
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
                        if !closed.contains(&(id as PortId)) {
                            tracing::warn!("port {id}: {e}; removing it");
                            closed.push(id as PortId);
                        }
                    }
                }
            }
            slot.metrics.flush(&mut slot.counts);
        }
        for id in closed.drain(..) {
            if let Some(s) = slots.get_mut(usize::from(id)).and_then(Option::take) {
                // Closing its fd (dropping the port) takes it out of the epoll set.
                *watched -= usize::from(s.polled);
                let mut c = s.counts;
                s.metrics.flush(&mut c);
                gone.push((id, s.metrics));
            }
        }
        pipeline.end_batch();
        let mut c = pipeline.take_counts();
        metrics.flush(&mut c);
        total
    }
}

/// Receives one batch from the tunnel and queues what the pipeline accepts for local pods.
/// With UDP GRO an entry holds a run of datagrams; each is judged on its own, and consecutive
/// TCP segments of one flow are merged into superframes on their way to the pod
/// ([`Coalescer`]). Counts are in datagrams.
#[inline(never)]
fn decapsulate(
    t: &mut TunnelSlot,
    pipeline: &mut Pipeline,
    slots: &mut [Option<Slot>],
    max: usize,
) -> usize {
    t.rx.clear();
    t.sources.clear();
    t.segments.clear();
    if let Err(e) = t
        .tunnel
        .recv(&mut t.rx, &mut t.sources, &mut t.segments, max)
    {
        tracing::warn!("tunnel receive: {e}");
    }
    let mut datagrams = 0;
    t.counts.rx_bytes += t.rx.bytes() as u64;
    fn deliver(slots: &mut [Option<Slot>], port: PortId, parts: &[&[u8]], vnet: VnetHdr) {
        if let Some(out) = slots.get_mut(usize::from(port)).and_then(Option::as_mut) {
            out.emit_parts(parts, vnet);
        }
    }
    // Datagrams are addressed by range in the receive buffer: the pipeline edits each in
    // place, then the coalescer refers to the inner frame there until the final flush.
    for i in 0..t.rx.len() {
        let (Some(at), Some(len), Some(&src), Some(&seg)) = (
            t.rx.offset(i),
            t.rx.get(i).map(|(f, _)| f.len()),
            t.sources.get(i),
            t.segments.get(i),
        ) else {
            break;
        };
        let seg = if seg == 0 {
            len.max(1)
        } else {
            usize::from(seg)
        };
        let mut start = at;
        while start < at + len {
            let end = (start + seg).min(at + len);
            let datagram = start..end;
            start = end;
            datagrams += 1;
            let action = match t.rx.as_bytes_mut().get_mut(datagram.clone()) {
                Some(d) => pipeline.process_tunnel(src, d),
                None => break,
            };
            let Action::Forward(to) = action else {
                t.counts.rx_dropped += 1;
                continue;
            };
            // A forwarded datagram holds at least the VXLAN header.
            let inner = datagram.start + vxlan::HEADER_LEN..datagram.end;
            let source = t.rx.as_bytes();
            match slots
                .get(usize::from(to))
                .and_then(Option::as_ref)
                .map(|s| s.accepts_gso)
            {
                // Pods behind TAPs get consecutive segments merged into superframes.
                Some(true) => t.coalescer.push(to, source, inner, &mut |p, parts, v| {
                    deliver(slots, p, parts, v)
                }),
                Some(false) => deliver(
                    slots,
                    to,
                    &[source.get(inner).unwrap_or_default()],
                    VnetHdr::default(),
                ),
                None => pipeline.count_egress_drop(DropReason::PortGone, 1),
            }
        }
    }
    t.coalescer.flush(t.rx.as_bytes(), &mut |p, parts, v| {
        deliver(slots, p, parts, v)
    });
    t.counts.rx_frames += datagrams;
    datagrams as usize
}

#[inline]
fn push_to(slots: &mut [Option<Slot>], to: PortId, frame: &[u8]) {
    if let Some(out) = slots.get_mut(usize::from(to)).and_then(Option::as_mut) {
        out.emit(frame, VnetHdr::default());
    }
}

#[inline]
fn count_rx_drop(slots: &mut [Option<Slot>], port: PortId) {
    if let Some(s) = slots.get_mut(usize::from(port)).and_then(Option::as_mut) {
        s.counts.rx_dropped += 1;
    }
}

/// Settings of a switch.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// The node.
    pub node: NodeConfig,
    /// MAC table size and ageing.
    pub mac: MacTableConfig,
    /// Data-plane threads (at least 1). Each reads its own queue of every port, so with more
    /// than one every port must come with that many queues (multi-queue TAPs); in-memory
    /// ports have one queue and need a single worker.
    pub workers: usize,
    /// CPUs the workers are pinned to: worker `k` runs on `cpus[k % len]`. Empty: the
    /// scheduler places them. A pinned data plane keeps its caches and does not migrate
    /// (measured on 2 cores: same-node TCP 13.6-14.3 -> 15.4-16.3 Gbit/s, cross-node 8.7 ->
    /// 10.4-10.8).
    pub cpus: Vec<usize>,
}

impl SwitchConfig {
    /// One worker, default MAC table.
    pub fn new(node: NodeConfig) -> Self {
        Self {
            node,
            mac: MacTableConfig::default(),
            workers: 1,
            cpus: Vec::new(),
        }
    }
}

/// Why the switch refused a control request.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The topology refused the change.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A port with that name exists.
    #[error("a port named {0:?} already exists")]
    DuplicateName(String),
    /// No port with that name.
    #[error("no port named {0:?}")]
    NoSuchPort(String),
    /// Every port id is in use.
    #[error("no free port id (limit {0})")]
    TooManyPorts(usize),
    /// The data-plane thread is gone.
    #[error("the data plane is not running")]
    NotRunning,
    /// A port came with a number of queues other than the switch's number of workers.
    #[error("the port has {got} queue(s) but the switch runs {workers} worker(s), one per queue")]
    QueueCount {
        /// Queues given.
        got: usize,
        /// Workers running.
        workers: usize,
    },
    /// The system refused a resource (eventfd, thread).
    #[error("system error: {0}")]
    Io(#[from] std::io::Error),
}

enum Command {
    Attach(PortId, Box<dyn Port>, Arc<PortMetrics>, Sender<()>),
    Detach(PortId, Sender<Option<Box<dyn Port>>>),
    /// Drop the queue of the attachment with these counters (found closed by another worker).
    Release(PortId, Arc<PortMetrics>),
}

/// A port as the control plane sees it.
#[derive(Debug, Clone)]
pub struct PortRecord {
    /// Port id.
    pub id: PortId,
    /// Name and identity.
    pub info: PortInfo,
    /// Live counters.
    pub metrics: Arc<PortMetrics>,
}

/// The control plane's line to one data-plane thread.
struct Worker {
    commands: Sender<Command>,
    waker: Arc<Waker>,
}

impl Worker {
    /// Sends `cmd` and wakes the thread; false if it is gone.
    fn send(&self, cmd: Command) -> bool {
        let ok = self.commands.send(cmd).is_ok();
        self.waker.kick();
        ok
    }
}

struct Shared {
    node: NodeConfig,
    tunnel: Option<(SocketAddrV4, Arc<PortMetrics>)>,
    tables: Arc<Tables>,
    metrics: Arc<Metrics>,
    /// One per data-plane thread; the first also ages the MAC table and holds in-memory ports.
    workers: Vec<Worker>,
    /// Frames each worker has handled (received from its queues, and from the tunnel).
    worker_frames: Vec<AtomicU64>,
    registry: Mutex<BTreeMap<PortId, PortRecord>>,
    stop: AtomicBool,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, BTreeMap<PortId, PortRecord>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes a port from topology, MAC table and registry (its data-plane slot is gone).
    fn forget(&self, id: PortId) -> Option<PortRecord> {
        let _ = self.tables.update_topology(|t| t.remove_port(id));
        self.tables.mac.flush_port(id);
        self.registry().remove(&id)
    }

    /// [`Shared::forget`] for a port a worker found closed, if `id` still names the attachment
    /// whose counters are `metrics` (another worker may have forgotten it already and the id
    /// been given to a new port since). The other workers are told to let go of their queues.
    fn forget_closed(&self, worker: usize, id: PortId, metrics: &Arc<PortMetrics>) {
        let record = {
            let mut reg = self.registry();
            if !reg
                .get(&id)
                .is_some_and(|r| Arc::ptr_eq(&r.metrics, metrics))
            {
                return;
            }
            let _ = self.tables.update_topology(|t| t.remove_port(id));
            self.tables.mac.flush_port(id);
            reg.remove(&id)
        };
        if let Some(r) = record {
            tracing::warn!(
                "port {id} ({}) closed by its other end; removed",
                r.info.name
            );
        }
        for (k, w) in self.workers.iter().enumerate() {
            if k != worker {
                w.send(Command::Release(id, Arc::clone(metrics)));
            }
        }
    }
}

/// Most ports a switch holds.
pub const MAX_PORTS: usize = 4096;

/// A running switch: the control handle. Dropping it stops the data plane.
pub struct Switch {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Switch {
    /// Starts a switch with its data plane on a dedicated thread, without a tunnel (frames for
    /// peers are dropped as `no_tunnel`).
    pub fn start(cfg: SwitchConfig) -> Result<Self, SwitchError> {
        Self::start_with_tunnel(cfg, None)
    }

    /// Starts a switch whose frames for peer nodes leave through `tunnel` (already bound, so it
    /// can live in another network namespace than the caller's). With several workers the
    /// first receives from the tunnel and each sends through its own socket pool.
    pub fn start_with_tunnel(
        cfg: SwitchConfig,
        tunnel: Option<UdpTunnel>,
    ) -> Result<Self, SwitchError> {
        let workers = cfg.workers.max(1);
        let topology = Topology::new(cfg.node.cidr, cfg.node.gateway);
        let tables = Arc::new(Tables::new(topology, cfg.mac));
        let metrics = Arc::new(Metrics::default());
        let tunnel_metrics = tunnel
            .as_ref()
            .map(|t| (t.local_addr(), Arc::new(PortMetrics::default())));
        let mut tunnels = Vec::with_capacity(workers);
        if let Some(t) = tunnel {
            for _ in 1..workers {
                tunnels.push(Some(t.senders()?));
            }
            tunnels.insert(0, Some(t));
        }
        tunnels.resize_with(workers, || None);
        let mut handles = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (commands, command_rx) = unbounded();
            handles.push(Worker {
                commands,
                waker: Arc::new(Waker::new()?),
            });
            receivers.push(command_rx);
        }
        let shared = Arc::new(Shared {
            node: cfg.node.clone(),
            tunnel: tunnel_metrics.clone(),
            tables: Arc::clone(&tables),
            metrics: Arc::clone(&metrics),
            workers: handles,
            worker_frames: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            registry: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        });
        let mut switch = Self {
            shared: Arc::clone(&shared),
            threads: Vec::with_capacity(workers),
        };
        for (k, (command_rx, tunnel)) in receivers.into_iter().zip(tunnels).enumerate() {
            let pipeline = Pipeline::new(cfg.node.clone(), Arc::clone(&tables));
            let mut dataplane = Dataplane::new(pipeline, Arc::clone(&metrics));
            if let (Some(t), Some((_, m))) = (tunnel, tunnel_metrics.as_ref()) {
                dataplane.set_tunnel(t, Arc::clone(m));
            }
            let thread_shared = Arc::clone(&shared);
            let cpu = (!cfg.cpus.is_empty()).then(|| cfg.cpus[k % cfg.cpus.len()]);
            let name = if k == 0 {
                "podswitch-dp".to_string()
            } else {
                format!("podswitch-dp{k}")
            };
            // On failure, dropping `switch` stops the threads already started.
            let thread = std::thread::Builder::new().name(name).spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                run(dataplane, &thread_shared, k, command_rx)
            })?;
            switch.threads.push(thread);
        }
        Ok(switch)
    }

    /// Number of data-plane threads.
    pub fn workers(&self) -> usize {
        self.shared.workers.len()
    }

    /// Frames each data-plane thread has handled so far (how the load spreads).
    pub fn worker_frames(&self) -> Vec<u64> {
        self.shared
            .worker_frames
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The forwarding tables.
    pub fn tables(&self) -> &Arc<Tables> {
        &self.shared.tables
    }

    /// The node settings (CIDR, gateway, router MAC, MTU).
    pub fn node(&self) -> &NodeConfig {
        &self.shared.node
    }

    /// Switch-wide counters.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The first worker's waker (in-memory port endpoints ring it).
    pub fn waker(&self) -> &Arc<Waker> {
        &self.shared.workers[0].waker
    }

    /// Attaches `port` with identity `info`. For a pod, the topology checks its addresses and a
    /// static MAC entry is installed. Returns the port id. A single port needs a single worker
    /// (see [`Switch::attach_queues`]).
    pub fn attach(&self, info: PortInfo, port: Box<dyn Port>) -> Result<PortId, SwitchError> {
        self.attach_queues(info, vec![port])
    }

    /// Attaches a port given as one queue per worker (a multi-queue TAP's file descriptors):
    /// worker `k` reads queue `k` and writes to the port through it.
    pub fn attach_queues(
        &self,
        info: PortInfo,
        queues: Vec<Box<dyn Port>>,
    ) -> Result<PortId, SwitchError> {
        let workers = self.shared.workers.len();
        if queues.len() != workers {
            return Err(SwitchError::QueueCount {
                got: queues.len(),
                workers,
            });
        }
        let id = {
            let reg = self.shared.registry();
            if reg.values().any(|r| r.info.name == info.name) {
                return Err(SwitchError::DuplicateName(info.name));
            }
            if let PortKind::Pod { ip, mac } = info.kind {
                self.shared.tables.topology().check_pod(ip, mac)?;
            }
            (0..MAX_PORTS as PortId)
                .find(|id| !reg.contains_key(id))
                .ok_or(SwitchError::TooManyPorts(MAX_PORTS))?
        };
        let metrics = Arc::new(PortMetrics::default());
        let (ack, acked) = crossbeam_channel::bounded(workers);
        for (worker, queue) in self.shared.workers.iter().zip(queues) {
            if !worker.send(Command::Attach(
                id,
                queue,
                Arc::clone(&metrics),
                ack.clone(),
            )) {
                self.detach_id(id);
                return Err(SwitchError::NotRunning);
            }
        }
        // Only the commands hold senders now: a worker that dies drops its own and `recv`
        // fails instead of waiting forever.
        drop(ack);
        for _ in 0..workers {
            if acked.recv().is_err() {
                self.detach_id(id);
                return Err(SwitchError::NotRunning);
            }
        }
        let record = PortRecord {
            id,
            info: info.clone(),
            metrics,
        };
        {
            let mut reg = self.shared.registry();
            if let Err(e) = self
                .shared
                .tables
                .update_topology(|t| t.add_port(id, info.clone()))
            {
                drop(reg);
                self.detach_id(id);
                return Err(e.into());
            }
            if let PortKind::Pod { mac, .. } = info.kind {
                self.shared.tables.mac.insert_static(mac_key(&mac.0), id);
            }
            reg.insert(id, record);
        }
        Ok(id)
    }

    /// Attaches an in-memory pod port and returns its endpoint (for a smoltcp pod or a test).
    pub fn attach_mem_pod(&self, info: PortInfo) -> Result<(PortId, MemEndpoint), SwitchError> {
        let (port, endpoint) = mem_port(Arc::clone(self.waker()));
        let id = self.attach(info, Box::new(port))?;
        Ok((id, endpoint))
    }

    /// Detaches the port named `name`; traffic between other ports is not disturbed.
    pub fn detach(&self, name: &str) -> Result<PortRecord, SwitchError> {
        let id = self
            .shared
            .registry()
            .values()
            .find(|r| r.info.name == name)
            .map(|r| r.id)
            .ok_or_else(|| SwitchError::NoSuchPort(name.into()))?;
        self.shared
            .forget(id)
            .ok_or_else(|| SwitchError::NoSuchPort(name.into()))
            .inspect(|_| {
                self.detach_id(id);
            })
    }

    /// Takes port `id` out of every worker (waiting until each has let go of its queue).
    fn detach_id(&self, id: PortId) {
        let (ack, acked) = crossbeam_channel::bounded(self.shared.workers.len());
        let sent = self
            .shared
            .workers
            .iter()
            .filter(|w| w.send(Command::Detach(id, ack.clone())))
            .count();
        drop(ack);
        for _ in 0..sent {
            let _ = acked.recv();
        }
    }

    /// The tunnel's receiving address and counters, if the switch has a tunnel.
    pub fn tunnel(&self) -> Option<(SocketAddrV4, Arc<PortMetrics>)> {
        self.shared.tunnel.clone()
    }

    /// Adds a peer node: its pod CIDR becomes reachable through the tunnel. Flows to other
    /// peers and between local pods are not disturbed (one topology publish).
    pub fn add_peer(&self, peer: Peer) -> Result<PeerId, SwitchError> {
        Ok(self.shared.tables.update_topology(|t| t.add_peer(peer))?)
    }

    /// Removes the peer named `name` and its route.
    pub fn remove_peer(&self, name: &str) -> Result<Peer, SwitchError> {
        Ok(self
            .shared
            .tables
            .update_topology(|t| t.remove_peer(name))?)
    }

    /// Every peer.
    pub fn peers(&self) -> Vec<Peer> {
        self.shared
            .tables
            .topology()
            .peers()
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Every attached port.
    pub fn ports(&self) -> Vec<PortRecord> {
        self.shared.registry().values().cloned().collect()
    }

    /// The port named `name`.
    pub fn port(&self, name: &str) -> Option<PortRecord> {
        self.shared
            .registry()
            .values()
            .find(|r| r.info.name == name)
            .cloned()
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in &self.shared.workers {
            w.waker.kick();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Pins the calling thread to `cpu`; a CPU the process may not use is logged, not fatal.
fn pin_to(cpu: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    match pinned {
        Ok(()) => tracing::debug!(cpu, "data-plane thread pinned"),
        Err(e) => tracing::warn!(cpu, "cannot pin the data-plane thread: {e}; left unpinned"),
    }
}

/// The CPUs this process may run on, lowest first (empty if the kernel will not say).
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The loop of data-plane thread `worker`.
fn run(mut dp: Dataplane, shared: &Shared, worker: usize, commands: Receiver<Command>) {
    let Some(waker) = shared.workers.get(worker).map(|w| &w.waker) else {
        return;
    };
    let sleep_in_epoll = dp.watch_waker(waker);
    let mut last_frame = Instant::now();
    let mut next_ageing = Instant::now() + Duration::from_secs(1);
    // Busy rounds since the clock was last read: under load the clock (ageing, spinning) is
    // only looked at every CLOCK_ROUNDS rounds.
    let mut busy_rounds = 0u32;
    loop {
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Attach(id, port, metrics, ack) => {
                    dp.add_port(id, port, metrics);
                    let _ = ack.send(());
                }
                Command::Detach(id, ack) => {
                    let _ = ack.send(dp.remove_port(id));
                }
                Command::Release(id, metrics) => dp.release(id, &metrics),
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let n = dp.poll_once();
        let frames = &shared.worker_frames[worker];
        if n > 0 {
            frames.fetch_add(n as u64, Ordering::Relaxed);
        }
        for (id, metrics) in dp.take_closed() {
            shared.forget_closed(worker, id, &metrics);
        }
        if n > 0 {
            busy_rounds += 1;
            if busy_rounds < CLOCK_ROUNDS {
                continue;
            }
        }
        let now = Instant::now();
        if busy_rounds > 0 {
            // Frames came in the rounds just before this one.
            last_frame = now;
            busy_rounds = 0;
        }
        if now >= next_ageing {
            // One ageing pass per switch: the first worker's.
            if worker == 0 {
                let aged = shared.tables.mac.age(shared.tables.mac.clock(now));
                if aged > 0 {
                    tracing::debug!("aged out {aged} MAC entries");
                }
            }
            next_ageing = now + Duration::from_secs(1);
        }
        if n > 0 {
            last_frame = now;
            continue;
        }
        let idle_for = now.duration_since(last_frame);
        if idle_for < SPIN_TIME {
            if idle_for < BUSY_SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            continue;
        }
        waker.prepare_sleep();
        let n = dp.poll_once();
        frames.fetch_add(n as u64, Ordering::Relaxed);
        let closed = dp.take_closed();
        for (id, metrics) in &closed {
            shared.forget_closed(worker, *id, metrics);
        }
        if n > 0 || !closed.is_empty() || !commands.is_empty() {
            waker.awake();
            last_frame = Instant::now();
            continue;
        }
        let timeout = next_ageing
            .saturating_duration_since(Instant::now())
            .min(MAX_SLEEP);
        // A port epoll refused is only in poll(2)'s set: sleep there while one exists.
        if sleep_in_epoll && dp.all_watched() {
            // Rounded up: a sub-millisecond timeout must not become a busy loop.
            let ms = timeout.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16;
            dp.mark_ready(PollTimeout::from(ms));
        } else {
            sleep(&dp, waker, timeout);
        }
        waker.awake();
    }
}

fn sleep(dp: &Dataplane, waker: &Waker, timeout: Duration) {
    let mut fds = Vec::with_capacity(dp.slots.len() + 1);
    fds.push(PollFd::new(waker.fd(), PollFlags::POLLIN));
    for s in dp.slots.iter().flatten() {
        if let Some(fd) = s.port.poll_fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
    }
    if let Some(t) = dp.tunnel.as_ref() {
        if let Some(fd) = t.tunnel.poll_fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
    }
    // Rounded up: a sub-millisecond timeout must not become a busy loop.
    let ms = timeout.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16;
    let ms = PollTimeout::from(ms);
    // EINTR or any other error: return and let the loop look again.
    let _ = nix::poll::poll(&mut fds, ms);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EthernetAddress;
    use std::net::Ipv4Addr;

    fn switch() -> Switch {
        switch_with_workers(1)
    }

    fn switch_with_workers(workers: usize) -> Switch {
        let cidr = "10.244.1.0/24".parse().expect("cidr");
        let mut cfg = SwitchConfig::new(NodeConfig::new(
            cidr,
            EthernetAddress([2, 0xee, 0, 0, 0, 1]),
        ));
        cfg.workers = workers;
        Switch::start(cfg).expect("switch")
    }

    fn pod(name: &str, last: u8) -> PortInfo {
        PortInfo {
            name: name.into(),
            kind: PortKind::Pod {
                mac: EthernetAddress([2, 0x42, 10, 244, 1, last]),
                ip: Ipv4Addr::new(10, 244, 1, last),
            },
        }
    }

    /// A port whose frames arrive through a pipe (one byte per frame), counting its reads.
    struct PipePort {
        rx: std::os::fd::OwnedFd,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Port for PipePort {
        fn recv(&mut self, batch: &mut Batch, max: usize) -> Result<usize, crate::port::PortError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 64];
            let n = nix::unistd::read(&self.rx, &mut buf[..max.min(64)]).unwrap_or(0);
            for _ in 0..n {
                batch.push(&[0u8; 60]);
            }
            Ok(n)
        }

        fn send(
            &mut self,
            batch: &mut Batch,
        ) -> Result<crate::port::SendOutcome, crate::port::PortError> {
            batch.clear();
            Ok(Default::default())
        }

        fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
            use std::os::fd::AsFd;
            Some(self.rx.as_fd())
        }
    }

    #[test]
    fn ports_with_a_descriptor_are_read_only_when_ready() {
        let cidr = "10.244.1.0/24".parse().expect("cidr");
        let node = NodeConfig::new(cidr, EthernetAddress([2, 0xee, 0, 0, 0, 1]));
        let tables = Arc::new(Tables::new(
            Topology::new(node.cidr, node.gateway),
            MacTableConfig::default(),
        ));
        let mut dp = Dataplane::new(Pipeline::new(node, tables), Arc::default());
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).expect("pipe");
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let port = PipePort {
            rx,
            reads: Arc::clone(&reads),
        };
        dp.add_port(1, Box::new(port), Arc::default());
        for _ in 0..100 {
            assert_eq!(dp.poll_once(), 0);
        }
        assert_eq!(
            reads.load(Ordering::SeqCst),
            0,
            "an idle port is never read"
        );
        nix::unistd::write(&tx, &[1, 2, 3]).expect("write");
        assert_eq!(dp.poll_once(), 3, "a ready port is read in the next round");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        dp.poll_once();
        assert_eq!(reads.load(Ordering::SeqCst), 1, "drained: not read again");
        // Detached, its descriptor leaves the epoll set: ready or not, it is not read.
        let port = dp.remove_port(1).expect("port");
        nix::unistd::write(&tx, &[4]).expect("write");
        assert_eq!(dp.poll_once(), 0);
        assert_eq!(dp.watched, 0);
        // Attached again under another id, it is read at once (the byte is waiting).
        dp.add_port(2, port, Arc::default());
        assert_eq!(
            dp.watched, 1,
            "registered again (the old registration was removed)"
        );
        assert!(dp.all_watched());
        assert_eq!(dp.poll_once(), 1);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn every_port_needs_one_queue_per_worker() {
        let sw = switch_with_workers(2);
        assert_eq!(sw.workers(), 2);
        let Err(err) = sw.attach_mem_pod(pod("a", 10)) else {
            panic!("one queue attached to two workers");
        };
        assert!(
            matches!(err, SwitchError::QueueCount { got: 1, workers: 2 }),
            "{err}"
        );
        assert!(sw.ports().is_empty(), "nothing half attached");
        // Two in-memory queues of one pod: attached to both workers.
        let (q0, _e0) = mem_port(Arc::clone(sw.waker()));
        let (q1, _e1) = mem_port(Arc::clone(sw.waker()));
        let id = sw
            .attach_queues(pod("b", 11), vec![Box::new(q0), Box::new(q1)])
            .expect("two queues");
        assert_eq!(sw.port("b").map(|r| r.id), Some(id));
        assert!(sw.detach("b").is_ok());
        assert_eq!(sw.worker_frames().len(), 2);
    }

    #[test]
    fn a_closed_port_is_forgotten_once_and_never_takes_its_successor_along() {
        let sw = switch_with_workers(2);
        let queues = || {
            let (q0, e0) = mem_port(Arc::clone(sw.waker()));
            let (q1, e1) = mem_port(Arc::clone(sw.waker()));
            (vec![Box::new(q0) as Box<dyn Port>, Box::new(q1)], e0, e1)
        };
        let (qa, ea0, ea1) = queues();
        let id = sw.attach_queues(pod("a", 10), qa).expect("a");
        let old = sw.port("a").expect("a").metrics;
        // Worker 0 finds its queue closed: the port is forgotten and worker 1 told to let go.
        drop(ea0);
        crate::testutil::wait_for("the closed port is forgotten", || sw.port("a").is_none());
        crate::testutil::wait_for("worker 1 releases its queue", || ea1.try_recv().is_err());
        // The id is free again; a late report about the old attachment leaves the new one.
        let (qb, _eb0, _eb1) = queues();
        assert_eq!(sw.attach_queues(pod("b", 11), qb).expect("b"), id);
        sw.shared.forget_closed(1, id, &old);
        assert_eq!(sw.port("b").map(|r| r.id), Some(id));
        assert!(sw.tables().topology().port(id).is_some());
    }

    #[test]
    fn attach_detach_and_closed_ports_are_forgotten() {
        let sw = switch();
        let (a, _ea) = sw.attach_mem_pod(pod("a", 10)).expect("a");
        let (b, eb) = sw.attach_mem_pod(pod("b", 11)).expect("b");
        assert_ne!(a, b);
        assert!(matches!(
            sw.attach_mem_pod(pod("a", 12)),
            Err(SwitchError::DuplicateName(_))
        ));
        assert!(matches!(
            sw.attach_mem_pod(pod("c", 10)),
            Err(SwitchError::Topology(TopologyError::DuplicateIp { .. }))
        ));
        assert_eq!(
            sw.tables()
                .mac
                .load()
                .get(mac_key(&[2, 0x42, 10, 244, 1, 11]))
                .map(|e| e.port),
            Some(b)
        );
        drop(eb);
        // The data plane notices the closed endpoint on its next round and forgets the port.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sw.port("b").is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sw.port("b").is_none(), "closed port still registered");
        assert!(sw.tables().topology().port(b).is_none());
        assert!(sw
            .tables()
            .mac
            .load()
            .get(mac_key(&[2, 0x42, 10, 244, 1, 11]))
            .is_none());
        sw.detach("a").expect("detach");
        assert!(sw.ports().is_empty());
        assert!(matches!(sw.detach("a"), Err(SwitchError::NoSuchPort(_))));
    }
}
