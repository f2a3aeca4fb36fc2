//! The data-plane state and its round ([`Dataplane::poll_once`]).
//!
//! One round: for each port that has frames waiting, take one batch, run each frame through
//! the pipeline and hand it to its destination port(s) or the tunnel; then receive from the
//! tunnel, send every transmit batch and publish the counters. Table snapshots are loaded once
//! per round and counters published once per round, so the per-frame cost is the pipeline
//! decision plus, at most, one copy.

use std::sync::Arc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::capture::{self, CaptureTap, CaptureTarget};
use super::ports::{PortSlot, Ports};
use super::readiness::{poll_timeout, Readiness, TUNNEL_TOKEN, WAKER_TOKEN};
use super::tunnel::TunnelSlot;
use crate::pipeline::{Action, DropReason, Metrics, Pipeline, PortMetrics};
use crate::port::{Batch, Port, UdpTunnel, Waker, DEFAULT_BATCH};
use crate::table::PortId;
use crate::wire::virtio::VnetHdr;

// A coalesced superframe (headers + one part per segment) must fit one TAP write.
const _: () = assert!(crate::gso::MAX_PARTS <= crate::port::tap::MAX_PARTS);

/// The data-plane state: ports, pipeline, buffers. Driven by [`Dataplane::poll_once`], either
/// from a worker thread the [`Switch`](super::Switch) spawns or directly (benchmarks,
/// deterministic tests).
pub struct Dataplane {
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    ports: Ports,
    rx: Batch,
    closed: Vec<PortId>,
    /// Closed ports released this round, with the counters that identify their attachment.
    gone: Vec<(PortId, Arc<PortMetrics>)>,
    batch: usize,
    tunnel: Option<TunnelSlot>,
    readiness: Readiness,
    /// The waker is registered with epoll: the idle data plane sleeps there.
    waker_watched: bool,
}

impl Dataplane {
    /// A data plane for `pipeline`, publishing switch-wide counters to `metrics`.
    pub fn new(pipeline: Pipeline, metrics: Arc<Metrics>) -> Self {
        Self {
            pipeline,
            metrics,
            ports: Ports::default(),
            rx: Batch::with_capacity(DEFAULT_BATCH, 2048),
            closed: Vec::new(),
            gone: Vec::new(),
            batch: DEFAULT_BATCH,
            tunnel: None,
            readiness: Readiness::new(),
            waker_watched: false,
        }
    }

    /// Attaches the VXLAN tunnel; frames routed to peers leave through it.
    pub(crate) fn set_tunnel(&mut self, tunnel: UdpTunnel, metrics: Arc<PortMetrics>) {
        // A send-only tunnel has nothing to read: "polled" and never ready.
        let polled = match tunnel.poll_fd() {
            Some(fd) => self.readiness.watch(fd, TUNNEL_TOKEN),
            None => true,
        };
        let cfg = self.pipeline.config();
        let slot = TunnelSlot::new(tunnel, metrics, polled, cfg.vni, cfg.tunnel_mtu);
        self.tunnel = Some(slot);
    }

    /// Holds `port` under `id`. The caller publishes it in the topology afterwards.
    pub fn add_port(&mut self, id: PortId, port: Box<dyn Port>, metrics: Arc<PortMetrics>) {
        if let Some(old) = self.ports.remove(id) {
            self.unwatch(&old);
        }
        let polled = port
            .poll_fd()
            .is_some_and(|fd| self.readiness.watch(fd, u64::from(id)));
        self.ports.insert(id, PortSlot::new(port, metrics, polled));
    }

    /// Releases the port `id`, returning it.
    pub(crate) fn remove_port(&mut self, id: PortId) -> Option<Box<dyn Port>> {
        let slot = self.ports.remove(id)?;
        self.unwatch(&slot);
        Some(slot.port)
    }

    /// Drops port `id` if it is still the attachment with counters `metrics`.
    pub(super) fn release(&mut self, id: PortId, metrics: &Arc<PortMetrics>) {
        let same = self
            .ports
            .get(id)
            .is_some_and(|s| Arc::ptr_eq(&s.metrics, metrics));
        if same {
            drop(self.remove_port(id));
        }
    }

    /// Starts copying what `target` receives and sends to `tap`. False if this data plane has
    /// no such port (or, for a peer, no tunnel).
    pub(crate) fn add_capture(&mut self, target: CaptureTarget, tap: Arc<CaptureTap>) -> bool {
        match target {
            CaptureTarget::Port(id) => self.ports.get_mut(id).map(|s| s.captures.push(tap)),
            CaptureTarget::Peer(ip) => self.tunnel.as_mut().map(|t| t.captures.push((ip, tap))),
        }
        .is_some()
    }

    /// Hands `frames`, which the control plane built (probes), to port `to`; they go out with
    /// the next round's transmit. False if this data plane has no such port.
    pub(super) fn send_frames(&mut self, to: PortId, frames: &[Vec<u8>]) -> bool {
        frames
            .iter()
            .all(|f| self.ports.send(to, f, VnetHdr::default()))
    }

    /// Stops the capture of tap `id`, wherever it copies from.
    pub(crate) fn remove_capture(&mut self, id: u64) {
        for slot in self.ports.iter_mut() {
            slot.captures.retain(|t| t.id() != id);
        }
        if let Some(t) = self.tunnel.as_mut() {
            t.captures.retain(|(_, t)| t.id() != id);
        }
    }

    /// Deregisters a port leaving the data plane (its fd may live on in the caller's hands).
    fn unwatch(&mut self, slot: &PortSlot) {
        if let (true, Some(fd)) = (slot.polled, slot.port.poll_fd()) {
            self.readiness.unwatch(fd);
        }
    }

    /// Ports whose other end closed since the last call (already released), each with the
    /// counters it was attached with: an id may be reused, the counters are not.
    pub(crate) fn take_closed(&mut self) -> Vec<(PortId, Arc<PortMetrics>)> {
        std::mem::take(&mut self.gone)
    }

    /// Makes `waker` end the data plane's sleep in epoll (called once by the driving thread).
    pub(super) fn watch_waker(&mut self, waker: &Waker) {
        self.waker_watched = self.readiness.watch(waker.fd(), WAKER_TOKEN);
    }

    /// True if every port with a descriptor (the tunnel included) is registered for readiness.
    fn all_watched(&self) -> bool {
        self.ports
            .iter()
            .all(|s| s.polled || s.port.poll_fd().is_none())
            && self.tunnel.as_ref().is_none_or(|t| t.polled)
    }

    /// Asks which ports have frames waiting and marks them; waits up to `timeout`.
    fn mark_ready(&mut self, timeout: PollTimeout) {
        let Some(tokens) = self.readiness.wait(timeout) else {
            return;
        };
        for token in tokens {
            match token {
                TUNNEL_TOKEN => {
                    if let Some(t) = self.tunnel.as_mut() {
                        t.ready = true;
                    }
                }
                WAKER_TOKEN => {}
                id => {
                    let slot = PortId::try_from(id)
                        .ok()
                        .and_then(|id| self.ports.get_mut(id));
                    if let Some(slot) = slot {
                        slot.ready = true;
                    }
                }
            }
        }
    }

    /// Sleeps until a port or the tunnel has frames, `waker` rings, or `timeout` passes: in
    /// epoll when every descriptor is registered there, else in `poll(2)` over all of them.
    pub(super) fn sleep(&mut self, waker: &Waker, timeout: Duration) {
        if self.waker_watched && self.all_watched() {
            self.mark_ready(poll_timeout(timeout));
            return;
        }
        let mut fds = vec![PollFd::new(waker.fd(), PollFlags::POLLIN)];
        let ports = self.ports.iter().filter_map(|s| s.port.poll_fd());
        let tunnel = self.tunnel.as_ref().and_then(|t| t.tunnel.poll_fd());
        fds.extend(
            ports
                .chain(tunnel)
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
        );
        // EINTR or any other error: return and let the loop look again.
        let _ = nix::poll::poll(&mut fds, poll_timeout(timeout));
    }

    /// One round over every port. Returns the number of frames received.
    pub fn poll_once(&mut self) -> usize {
        if self.readiness.watched > 0 {
            self.mark_ready(PollTimeout::ZERO);
        }
        let Self {
            pipeline,
            metrics,
            ports,
            rx,
            closed,
            batch,
            tunnel,
            readiness,
            gone,
            ..
        } = self;
        pipeline.begin_batch();
        // The flood set comes from the same snapshot the pipeline decides with.
        let topo = Arc::clone(pipeline.topology());
        if let Some(t) = tunnel.as_mut() {
            t.peers.fit(&topo);
        }
        let mut total = 0;
        for ingress in 0..ports.id_bound() {
            let ingress = ingress as PortId;
            let Some(slot) = ports.get_mut(ingress) else {
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
                    closed.push(ingress);
                    continue;
                }
            };
            if n == 0 {
                continue;
            }
            total += n;
            slot.counts.rx_frames += n as u64;
            slot.counts.rx_bytes += rx.bytes() as u64;
            if !slot.captures.is_empty() {
                capture::copy_batch(&slot.captures, rx);
            }
            for i in 0..rx.len() {
                let at = rx.offset(i).unwrap_or(0);
                let Some((frame, vnet)) = rx.get_mut(i) else {
                    break;
                };
                match pipeline.process(ingress, frame, vnet) {
                    Action::Forward(to) => {
                        if !ports.send(to, frame, vnet) {
                            pipeline.count_egress_drop(DropReason::PortGone, 1);
                            ports.count_rx_drop(ingress, DropReason::PortGone);
                        }
                    }
                    Action::Flood => ports.flood(topo.flood_ports(), ingress, frame, vnet),
                    Action::FloodTrunks => {
                        ports.flood(topo.trunk_ports(), ingress, frame, vnet);
                    }
                    Action::Reply => {
                        ports.send(ingress, frame, VnetHdr::default());
                    }
                    Action::Reject(reason, len) => {
                        let reply = &pipeline.scratch()[..usize::from(len)];
                        ports.send(ingress, reply, VnetHdr::default());
                        ports.count_rx_drop(ingress, reason);
                    }
                    Action::Encap(peer) => {
                        let to = topo.peer(peer).map(|p| p.underlay);
                        match (tunnel.as_mut(), to) {
                            (Some(t), Some(to)) => {
                                if !t.encapsulate(to, peer, frame, at, vnet) {
                                    pipeline.count_egress_drop(DropReason::BadOffload, 1);
                                    ports.count_rx_drop(ingress, DropReason::BadOffload);
                                }
                            }
                            _ => {
                                pipeline.count_egress_drop(DropReason::NoTunnel, 1);
                                ports.count_rx_drop(ingress, DropReason::NoTunnel);
                            }
                        }
                    }
                    Action::Drop(reason) => ports.count_rx_drop(ingress, reason),
                }
            }
            // The queue refers to this batch's bytes: send before the next port reuses it.
            if let Some(t) = tunnel.as_mut() {
                t.flush(rx.as_bytes(), metrics);
            }
        }
        if let Some(t) = tunnel.as_mut() {
            if !t.polled || std::mem::take(&mut t.ready) {
                total += t.decapsulate(pipeline, ports, *batch);
            }
            t.metrics.flush(&mut t.counts);
            t.peers.publish(&topo);
        }
        ports.transmit(metrics, closed);
        for id in closed.drain(..) {
            if let Some(s) = ports.remove(id) {
                // Closing its fd (dropping the port) takes it out of the epoll set.
                if s.polled {
                    readiness.forget_closed();
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::NodeConfig;
    use crate::table::{MacTableConfig, Tables, Topology};
    use crate::wire::EthernetAddress;
    use std::os::fd::BorrowedFd;
    use std::sync::atomic::Ordering;

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
        assert_eq!(dp.readiness.watched, 0);
        // Attached again under another id, it is read at once (the byte is waiting).
        dp.add_port(2, port, Arc::default());
        assert_eq!(
            dp.readiness.watched, 1,
            "registered again (the old registration was removed)"
        );
        assert!(dp.all_watched());
        assert_eq!(dp.poll_once(), 1);
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }
}
