//! The control plane's handle on a running data plane: [`Switch`] starts the worker threads,
//! attaches and detaches ports and peers (the registry of attached ports is in `context.rs`).
//!
//! Invariants: a port id is in the topology only while every worker holds the port (attach
//! adds the port to the workers before publishing it; detach unpublishes first); a port whose
//! other end closed is removed from the workers, the topology, the MAC table and the registry
//! once, by the worker that found it closed, and never takes a later port with the same id
//! along (attachments are told apart by their counters).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Sender};

use super::capture::{CaptureTap, CaptureTarget, CAPTURE_SLOTS};
use super::context::{Command, Context, PortRecord, Registry, Worker};
use super::round::Dataplane;
use super::worker::{pin_to, run, IdlePolicy};
use super::worker_time::WorkerTime;
use crate::pipeline::{Metrics, NodeConfig, Pipeline, PortMetrics};
use crate::port::{mem_port, MemEndpoint, Port, UdpTunnel, Waker};
use crate::table::{
    MacTableConfig, Peer, PeerId, PortId, PortInfo, PortKind, Service, Tables, Topology,
    TopologyError,
};
use crate::wire::mac_key;
/// Settings of a switch.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// The node.
    pub node: NodeConfig,
    /// MAC table size and ageing.
    pub mac: MacTableConfig,
    /// Most flows connection tracking follows.
    pub conntrack_max: usize,
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
            conntrack_max: crate::table::DEFAULT_CONNTRACK_MAX,
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
    /// No service with that name.
    #[error("no service named {0:?}")]
    NoSuchService(String),
    /// Nothing to capture: the port is gone, or (for a peer) the switch has no tunnel.
    #[error("nothing to capture: {0}")]
    NothingToCapture(String),
}

/// Workers paused by [`Switch::pause`]; they go on when this is dropped.
pub struct Paused {
    _resumes: Vec<Sender<()>>,
}

/// Most ports a switch holds.
pub(crate) const MAX_PORTS: usize = 4096;

/// A running switch: the control handle. Dropping it stops the data plane.
pub struct Switch {
    /// What the workers share with the handle.
    ctx: Arc<Context>,
    node: NodeConfig,
    tunnel: Option<(SocketAddrV4, Arc<PortMetrics>)>,
    metrics: Arc<Metrics>,
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
        let tables = Arc::new(Tables::new(topology, cfg.mac).with_conntrack_max(cfg.conntrack_max));
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
        let ctx = Arc::new(Context {
            tables: Arc::clone(&tables),
            workers: handles,
            worker_frames: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            worker_time: (0..workers).map(|_| WorkerTime::default()).collect(),
            registry: Mutex::new(Registry::default()),
            stop: AtomicBool::new(false),
        });
        let mut switch = Self {
            ctx: Arc::clone(&ctx),
            node: cfg.node.clone(),
            tunnel: tunnel_metrics.clone(),
            metrics: Arc::clone(&metrics),
            threads: Vec::with_capacity(workers),
        };
        for (k, (command_rx, tunnel)) in receivers.into_iter().zip(tunnels).enumerate() {
            let pipeline = Pipeline::new(cfg.node.clone(), Arc::clone(&tables));
            let mut dataplane = Dataplane::new(pipeline, Arc::clone(&metrics));
            if let (Some(t), Some((_, m))) = (tunnel, tunnel_metrics.as_ref()) {
                dataplane.set_tunnel(t, Arc::clone(m));
            }
            let thread_ctx = Arc::clone(&ctx);
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
                run(dataplane, &thread_ctx, k, command_rx, IdlePolicy::DEFAULT)
            })?;
            switch.threads.push(thread);
        }
        Ok(switch)
    }

    /// Number of data-plane threads.
    pub fn workers(&self) -> usize {
        self.ctx.workers.len()
    }

    /// Frames each data-plane thread has handled so far (how the load spreads).
    pub fn worker_frames(&self) -> Vec<u64> {
        self.ctx
            .worker_frames
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Stalls of each data-plane thread (stretches of rounds over 100 ms), since the start.
    pub fn worker_stalls(&self) -> Vec<u64> {
        self.ctx
            .worker_time
            .iter()
            .map(WorkerTime::stalls)
            .collect()
    }

    /// Time each data-plane thread spent in rounds that moved frames and in the others
    /// (spinning, yielding, asleep), since it started.
    pub fn worker_time(&self) -> Vec<(std::time::Duration, std::time::Duration)> {
        self.ctx.worker_time.iter().map(WorkerTime::read).collect()
    }

    /// Every peer of the topology with its tunnel counters (inner frames and bytes to and
    /// from it, drops by reason), by name.
    pub fn peer_counts(&self) -> BTreeMap<String, crate::pipeline::PortCounts> {
        let topo = self.ctx.tables.topology();
        topo.peers()
            .map(|(id, p)| {
                let counts = topo
                    .peer_metrics(id)
                    .map(|m| m.snapshot())
                    .unwrap_or_default();
                (p.name.clone(), counts)
            })
            .collect()
    }

    /// The forwarding tables.
    pub fn tables(&self) -> &Arc<Tables> {
        &self.ctx.tables
    }

    /// The node settings (CIDR, gateway, router MAC, MTU).
    pub fn node(&self) -> &NodeConfig {
        &self.node
    }

    /// Switch-wide counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The first worker's waker (in-memory port endpoints ring it).
    pub(crate) fn waker(&self) -> &Arc<Waker> {
        &self.ctx.workers[0].waker
    }

    /// Attaches `port` with identity `info`. For a pod, the topology checks its addresses and a
    /// static MAC entry is installed. Returns the port id. A single port needs a single worker
    /// (see [`Switch::attach_queues`]).
    pub(crate) fn attach(
        &self,
        info: PortInfo,
        port: Box<dyn Port>,
    ) -> Result<PortId, SwitchError> {
        self.attach_queues(info, vec![port])
    }

    /// Attaches a port given as one queue per worker (a multi-queue TAP's file descriptors):
    /// worker `k` reads queue `k` and writes to the port through it.
    pub fn attach_queues(
        &self,
        info: PortInfo,
        queues: Vec<Box<dyn Port>>,
    ) -> Result<PortId, SwitchError> {
        let workers = self.ctx.workers.len();
        if queues.len() != workers {
            return Err(SwitchError::QueueCount {
                got: queues.len(),
                workers,
            });
        }
        let id = {
            let mut reg = self.ctx.registry();
            // Reserved under the lock, so a concurrent attach takes another id (or is refused
            // the same name) while the workers take this one's queues.
            let id = reg.reserve(&info.name, MAX_PORTS).map_err(|e| match e {
                None => SwitchError::DuplicateName(info.name.clone()),
                Some(max) => SwitchError::TooManyPorts(max),
            })?;
            if let PortKind::Pod { ip, mac } = info.kind {
                if let Err(e) = self.ctx.tables.topology().check_pod(ip, mac) {
                    reg.release(id);
                    return Err(e.into());
                }
            }
            id
        };
        let metrics = Arc::new(PortMetrics::default());
        let (ack, acked) = crossbeam_channel::bounded(workers);
        for (worker, queue) in self.ctx.workers.iter().zip(queues) {
            if !worker.send(Command::Attach(
                id,
                queue,
                Arc::clone(&metrics),
                ack.clone(),
            )) {
                self.withdraw(id);
                return Err(SwitchError::NotRunning);
            }
        }
        // Only the commands hold senders now: a worker that dies drops its own and `recv`
        // fails instead of waiting forever.
        drop(ack);
        for _ in 0..workers {
            if acked.recv().is_err() {
                self.withdraw(id);
                return Err(SwitchError::NotRunning);
            }
        }
        let record = PortRecord {
            id,
            info: info.clone(),
            metrics,
        };
        {
            let mut reg = self.ctx.registry();
            if let Err(e) = self
                .ctx
                .tables
                .update_topology(|t| t.add_port(id, info.clone()))
            {
                drop(reg);
                self.withdraw(id);
                return Err(e.into());
            }
            if let PortKind::Pod { mac, .. } | PortKind::Host { mac } = info.kind {
                self.ctx.tables.mac.insert_static(mac_key(&mac.0), id);
            }
            reg.release(id);
            reg.ports.insert(id, record);
        }
        Ok(id)
    }

    /// Takes a port out of the workers (an attach that failed half-way, or a detach): they
    /// drop its queues, then the id's reservation ends.
    fn withdraw(&self, id: PortId) {
        self.detach_id(id);
        self.ctx.registry().release(id);
    }

    /// Attaches an in-memory pod port and returns its endpoint (for a smoltcp pod or a test).
    pub fn attach_mem_pod(&self, info: PortInfo) -> Result<(PortId, MemEndpoint), SwitchError> {
        let (port, endpoint) = mem_port(Arc::clone(self.waker()));
        let id = self.attach(info, Box::new(port))?;
        Ok((id, endpoint))
    }

    /// Detaches the port named `name`; traffic between other ports is not disturbed.
    pub fn detach(&self, name: &str) -> Result<PortRecord, SwitchError> {
        let record = self
            .ctx
            .forget_named(name)
            .ok_or_else(|| SwitchError::NoSuchPort(name.into()))?;
        // The id stays reserved until every worker has let go of the port's queues.
        self.withdraw(record.id);
        Ok(record)
    }

    /// Takes port `id` out of every worker (waiting until each has let go of its queue).
    fn detach_id(&self, id: PortId) {
        let (ack, acked) = crossbeam_channel::bounded(self.ctx.workers.len());
        let sent = self
            .ctx
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
        self.tunnel.clone()
    }

    /// Adds a peer node: its pod CIDR becomes reachable through the tunnel. Flows to other
    /// peers and between local pods are not disturbed (one topology publish).
    pub fn add_peer(&self, peer: Peer) -> Result<PeerId, SwitchError> {
        Ok(self.ctx.tables.update_topology(|t| t.add_peer(peer))?)
    }

    /// Replaces the peer named `name` by `peer` (a new underlay, CIDR or VTEP MAC) in one
    /// step: no frame sees the node without either.
    pub fn replace_peer(&self, name: &str, peer: Peer) -> Result<PeerId, SwitchError> {
        Ok(self.ctx.tables.update_topology(|t| {
            t.remove_peer(name)?;
            t.add_peer(peer)
        })?)
    }

    /// Removes the peer named `name` and its route.
    pub fn remove_peer(&self, name: &str) -> Result<Peer, SwitchError> {
        Ok(self.ctx.tables.update_topology(|t| t.remove_peer(name))?)
    }

    /// Services added later under these names get these ids (see
    /// [`Topology::prefer_service_ids`](crate::table::Topology)).
    pub fn prefer_service_ids(
        &self,
        ids: std::collections::BTreeMap<String, u32>,
    ) -> Result<(), SwitchError> {
        Ok(self.ctx.tables.update_topology(|t| {
            t.prefer_service_ids(ids);
            Ok(())
        })?)
    }

    /// Adds the service `s`, or replaces the one of the same name (one topology publish:
    /// flows of other services and other backends are not disturbed).
    pub fn upsert_service(&self, s: Service) -> Result<(), SwitchError> {
        Ok(self.ctx.tables.update_topology(|t| t.upsert_service(s))?)
    }

    /// Removes the service named `name`.
    pub fn remove_service(&self, name: &str) -> Result<Service, SwitchError> {
        self.ctx
            .tables
            .update_topology(|t| t.remove_service(name))
            .map_err(|e| match e {
                crate::table::TopologyError::NoSuchService(n) => SwitchError::NoSuchService(n),
                e => e.into(),
            })
    }

    /// Every service, with its connection-tracking id.
    pub fn services(&self) -> Vec<Arc<crate::table::CompiledService>> {
        self.ctx.tables.topology().services_list()
    }

    /// Stops every worker between two rounds, their counts published, until the returned
    /// guard is dropped: what the control plane then reads (counters, connection tracking)
    /// is one consistent cut. A worker that does not answer within a second (it died) is
    /// not waited for.
    pub fn pause(&self) -> Paused {
        let (paused, answered) = crossbeam_channel::bounded(self.ctx.workers.len());
        let resumes: Vec<Sender<()>> = self
            .ctx
            .workers
            .iter()
            .filter_map(|w| {
                let (resume, held) = crossbeam_channel::bounded(1);
                w.send(Command::Pause(paused.clone(), held))
                    .then_some(resume)
            })
            .collect();
        for _ in &resumes {
            if answered
                .recv_timeout(std::time::Duration::from_secs(1))
                .is_err()
            {
                break;
            }
        }
        Paused { _resumes: resumes }
    }

    /// Sends `frames` (built by the control plane: probes) out of port `to`, through the
    /// first worker (every worker holds a queue of every port).
    pub fn send_frames(&self, to: PortId, frames: Vec<Vec<u8>>) -> Result<(), SwitchError> {
        let first = self.ctx.workers.first().ok_or(SwitchError::NotRunning)?;
        if first.send(Command::Send(to, frames)) {
            Ok(())
        } else {
            Err(SwitchError::NotRunning)
        }
    }

    /// Every attached port.
    pub fn ports(&self) -> Vec<PortRecord> {
        self.ctx.registry().ports.values().cloned().collect()
    }

    /// The port named `name`.
    pub fn port(&self, name: &str) -> Option<PortRecord> {
        self.ctx
            .registry()
            .ports
            .values()
            .find(|r| r.info.name == name)
            .cloned()
    }
}

/// A running capture ([`Switch::capture`]): read copies from [`Capture::tap`]. Dropping it
/// stops the copying in every worker.
pub struct Capture {
    tap: Arc<CaptureTap>,
    ctx: Arc<Context>,
}

impl Capture {
    /// Where the copies arrive.
    pub fn tap(&self) -> &CaptureTap {
        &self.tap
    }

    /// True once no worker copies to the tap any more (for a port: the port is gone).
    pub fn orphaned(&self) -> bool {
        Arc::strong_count(&self.tap) == 1
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        for w in &self.ctx.workers {
            w.send(Command::Uncapture(self.tap.id()));
        }
    }
}

impl Switch {
    /// Starts copying what `target` receives and sends, cut to `snaplen` bytes, into a ring
    /// of [`CAPTURE_SLOTS`] copies; returns once every worker copies.
    pub fn capture(&self, target: CaptureTarget, snaplen: usize) -> Result<Capture, SwitchError> {
        let capture = Capture {
            tap: CaptureTap::new(snaplen, CAPTURE_SLOTS),
            ctx: Arc::clone(&self.ctx),
        };
        let workers = self.ctx.workers.len();
        let (ack, acked) = crossbeam_channel::bounded(workers);
        for w in &self.ctx.workers {
            let cmd = Command::Capture(target, Arc::clone(&capture.tap), ack.clone());
            if !w.send(cmd) {
                return Err(SwitchError::NotRunning);
            }
        }
        drop(ack);
        let mut copying = 0;
        for _ in 0..workers {
            match acked.recv() {
                Ok(true) => copying += 1,
                Ok(false) => {}
                Err(_) => return Err(SwitchError::NotRunning),
            }
        }
        if copying == 0 {
            let what = match target {
                CaptureTarget::Port(id) => format!("port {id} is not attached"),
                CaptureTarget::Peer(_) => "the switch has no tunnel".into(),
            };
            return Err(SwitchError::NothingToCapture(what));
        }
        Ok(capture)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.ctx.stop.store(true, Ordering::SeqCst);
        for w in &self.ctx.workers {
            w.waker.kick();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
