//! Forwarding state, read on every frame without a lock.
//!
//! Two structures, both published as immutable snapshots through [`arc_swap::ArcSwap`]:
//!
//! - [`MacTable`]: MAC -> port, learned and static, with ageing and a size bound. Sharded so a
//!   writer copies one shard, not the whole table.
//! - [`Topology`]: the ports and what they are (pod identity for anti-spoofing), the pod
//!   neighbour table (IP -> MAC, port) and the routes (CIDR -> peer node). Small, changed only by
//!   the control plane.
//!
//! Readers (the data plane) load a snapshot once per batch and then use plain `HashMap::get`;
//! measured on this kind of machine that is as fast as an unsynchronised map (NOTES.md). Writers
//! (learning, ageing, control) serialise on a mutex among themselves and never block readers.

pub mod mac;
pub mod topology;

pub use mac::{MacEntry, MacSnapshot, MacTable, MacTableConfig};
pub use topology::{Neighbour, Peer, PeerId, PortInfo, PortKind, Route, Topology, TopologyError};

/// Index of a switch port. Small and dense so per-port state lives in vectors.
pub type PortId = u16;

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// The forwarding state shared by the data plane (readers) and the control plane (writers).
#[derive(Debug)]
pub struct Tables {
    /// The MAC table.
    pub mac: MacTable,
    topology: ArcSwap<Topology>,
    topology_writer: Mutex<()>,
}

impl Tables {
    /// Tables for a node with the given topology and MAC table settings.
    pub fn new(topology: Topology, mac: MacTableConfig) -> Self {
        Self {
            mac: MacTable::new(mac),
            topology: ArcSwap::from_pointee(topology),
            topology_writer: Mutex::new(()),
        }
    }

    /// The current topology; load once per batch.
    #[inline]
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.load_full()
    }

    /// Applies `change` to a copy of the topology and publishes it if `change` succeeds. Writers
    /// are serialised; readers are never blocked and see the old or the new topology, whole.
    pub fn update_topology<R>(
        &self,
        change: impl FnOnce(&mut Topology) -> Result<R, TopologyError>,
    ) -> Result<R, TopologyError> {
        let _w = self
            .topology_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut next = Topology::clone(&self.topology.load());
        let r = change(&mut next)?;
        self.topology.store(Arc::new(next));
        Ok(r)
    }
}
