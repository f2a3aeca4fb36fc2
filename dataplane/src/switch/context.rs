//! What the control handle ([`super::Switch`]) and the worker threads share, and nothing
//! more: the tables, each worker's command line and counters, the registry of attached ports
//! and the stop flag. Workers see the switch only through this [`Context`].
//!
//! Invariant: a port id is either free, reserved (with its name) by one attach or detach in
//! progress, or held by one attached port; ids and names are taken under the registry lock,
//! so two attaches at once never get the same id or name, and an attach never gets the id of
//! a port the workers still hold.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender};

use super::capture::{CaptureTap, CaptureTarget};
use super::worker_time::WorkerTime;
use crate::counters::PortMetrics;
use crate::port::{Port, Waker};
use crate::table::PortInfo;
use crate::table::{PortId, Tables};

/// What the control plane asks of a worker.
pub(super) enum Command {
    Attach(PortId, Box<dyn Port>, Arc<PortMetrics>, Sender<()>),
    Detach(PortId, Sender<Option<Box<dyn Port>>>),
    /// Drop the queue of the attachment with these counters (found closed by another worker).
    Release(PortId, Arc<PortMetrics>),
    /// Start a capture; the answer says whether this worker has what it captures.
    Capture(CaptureTarget, Arc<CaptureTap>, Sender<bool>),
    /// Stop the capture of the tap with this id.
    Uncapture(u64),
    /// Send these frames, built by the control plane, to a port.
    Send(PortId, Vec<Vec<u8>>),
    /// Say so on the first channel (every count of the rounds so far is published), then
    /// move no frame until the second one gives word or closes.
    Pause(Sender<()>, Receiver<()>),
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

/// The attached ports, and the ids and names of attaches in progress.
#[derive(Default)]
pub(super) struct Registry {
    /// Attached ports, by id.
    pub(super) ports: BTreeMap<PortId, PortRecord>,
    /// Ids reserved by an attach or a detach that has not finished, with the port's name.
    pending: BTreeMap<PortId, String>,
}

impl Registry {
    /// Reserves the lowest free id for a port named `name`, unless the name is taken (by an
    /// attached port or an attach in progress): `Err(None)`; or no id is free: `Err(Some(max))`.
    pub(super) fn reserve(&mut self, name: &str, max: usize) -> Result<PortId, Option<usize>> {
        let taken = |n: &str| {
            self.ports.values().any(|r| r.info.name == n) || self.pending.values().any(|p| p == n)
        };
        if taken(name) {
            return Err(None);
        }
        let id = (0..max)
            .filter_map(|id| PortId::try_from(id).ok())
            .find(|id| !self.ports.contains_key(id) && !self.pending.contains_key(id))
            .ok_or(Some(max))?;
        self.pending.insert(id, name.to_owned());
        Ok(id)
    }

    /// Ends the reservation of `id` (attached or given up).
    pub(super) fn release(&mut self, id: PortId) {
        self.pending.remove(&id);
    }

    /// Ids reserved and not yet attached (for tests).
    #[cfg(test)]
    pub(super) fn pending(&self) -> std::collections::BTreeSet<PortId> {
        self.pending.keys().copied().collect()
    }
}

/// The control plane's line to one data-plane thread.
pub(super) struct Worker {
    pub(super) commands: Sender<Command>,
    pub(super) waker: Arc<Waker>,
}

impl Worker {
    /// Sends `cmd` and wakes the thread; false if it is gone.
    pub(super) fn send(&self, cmd: Command) -> bool {
        let ok = self.commands.send(cmd).is_ok();
        self.waker.kick();
        ok
    }
}

pub(super) struct Context {
    pub(super) tables: Arc<Tables>,
    /// One per data-plane thread; the first also ages the MAC table and holds in-memory ports.
    pub(super) workers: Vec<Worker>,
    /// Frames each worker has handled (received from its queues, and from the tunnel).
    pub(super) worker_frames: Vec<AtomicU64>,
    /// Time each worker spent busy and idle.
    pub(super) worker_time: Vec<WorkerTime>,
    pub(super) registry: Mutex<Registry>,
    pub(super) stop: AtomicBool,
}

impl Context {
    pub(super) fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the port named `name` out of the registry, the topology and the MAC table; its
    /// id and name stay reserved (no attach may take them) until [`Registry::release`], once
    /// the workers have let go of its queues.
    pub(super) fn forget_named(&self, name: &str) -> Option<PortRecord> {
        let record = {
            let mut reg = self.registry();
            let id = reg.ports.values().find(|r| r.info.name == name)?.id;
            let record = reg.ports.remove(&id)?;
            reg.pending.insert(id, record.info.name.clone());
            record
        };
        let _ = self.tables.update_topology(|t| t.remove_port(record.id));
        self.tables.mac.flush_port(record.id);
        Some(record)
    }

    /// [`Context::forget`] for a port a worker found closed, if `id` still names the attachment
    /// whose counters are `metrics` (another worker may have forgotten it already and the id
    /// been given to a new port since). The other workers are told to let go of their queues.
    pub(super) fn forget_closed(&self, worker: usize, id: PortId, metrics: &Arc<PortMetrics>) {
        let record = {
            let mut reg = self.registry();
            if !reg
                .ports
                .get(&id)
                .is_some_and(|r| Arc::ptr_eq(&r.metrics, metrics))
            {
                return;
            }
            let _ = self.tables.update_topology(|t| t.remove_port(id));
            self.tables.mac.flush_port(id);
            reg.ports.remove(&id)
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
