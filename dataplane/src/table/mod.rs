//! Forwarding state, read on every frame without a lock.
//!
//! Two structures published as immutable snapshots through [`arc_swap::ArcSwap`], and one
//! made of lock-free maps:
//!
//! - [`MacTable`]: MAC -> port, learned and static, with ageing and a size bound. Sharded so a
//!   writer copies one shard, not the whole table.
//! - [`Topology`]: the ports and what they are (pod identity for anti-spoofing), the pod
//!   neighbour table (IP -> MAC, port) and the routes (CIDR -> peer node). Small, changed only by
//!   the control plane. It also holds the services ([`Services`]: VIP, port and protocol ->
//!   backends, each with its Maglev table, see `maglev.rs`).
//! - [`Conntrack`]: the service flows (client -> backend translations and their state), in
//!   papaya's concurrent maps: the data plane inserts and updates entries per packet, so it
//!   cannot be a snapshot; bounded per client and in total (see `conntrack/`).
//!
//! Readers (the data plane) load a snapshot once per batch and then use plain `HashMap::get`;
//! measured on this kind of machine that is as fast as an unsynchronised map (docs/platform-facts.md). Writers
//! (learning, ageing, control) serialise on a mutex among themselves and never block readers.

mod conntrack;
mod mac;
mod maglev;
mod service;
mod topology;

pub use conntrack::Conntrack;
pub use conntrack::DEFAULT_CAPACITY as DEFAULT_CONNTRACK_MAX;
pub(crate) use conntrack::{tcp_flags, Flow, FlowKey, Hit, Refused, HAIRPIN_PORTS};
pub use conntrack::{FlowInfo, SavedFlow};
pub use conntrack::{FlowOffload, OffloadEvent, OffloadedFlow};
pub use mac::{LearnOutcome, MacEntry, MacSnapshot, MacTable, MacTableConfig};
pub use maglev::MAX_BACKENDS;
pub(crate) use service::flow_hash;
pub use service::{Affinity, CompiledService, Proto, Service, Services};
pub(crate) use topology::PeerId;
pub use topology::{derived_pod_mac, Neighbour, Peer, PortInfo, PortKind, Topology, TopologyError};

/// Index of a switch port. Small and dense so per-port state lives in vectors.
pub type PortId = u16;

/// A `HashMap` with [`FastHasher`], for the small integer keys of the forwarding tables.
pub(crate) type FastMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

/// A hasher for integer keys (MACs as `u64`, IPv4 addresses as `u32`): one folded multiply.
/// Not DoS-resistant by design: the tables are bounded, pod ports are anti-spoofed, and the
/// data path cannot afford SipHash (measured: 30% of VXLAN decap time).
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }
    #[inline]
    fn write_u32(&mut self, k: u32) {
        self.0 = mix(u64::from(k));
    }
    #[inline]
    fn write_u64(&mut self, k: u64) {
        self.0 = mix(k);
    }
}

#[inline]
pub(crate) fn mix(k: u64) -> u64 {
    let m = u128::from(k ^ 0x9e37_79b9_7f4a_7c15) * 0xbf58_476d_1ce4_e5b9;
    (m as u64) ^ ((m >> 64) as u64)
}

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// The forwarding state shared by the data plane (readers) and the control plane (writers).
#[derive(Debug)]
pub struct Tables {
    /// The MAC table.
    pub mac: MacTable,
    topology: ArcSwap<Topology>,
    topology_writer: Mutex<()>,
    /// Connection tracking of the flows to services.
    pub conntrack: Conntrack,
}

impl Tables {
    /// Tables for a node with the given topology and MAC table settings.
    pub fn new(topology: Topology, mac: MacTableConfig) -> Self {
        Self {
            mac: MacTable::new(mac),
            topology: ArcSwap::from_pointee(topology),
            topology_writer: Mutex::new(()),
            conntrack: Conntrack::new(DEFAULT_CONNTRACK_MAX),
        }
    }

    /// The same tables with connection tracking bounded to `max` flows (empty: before use).
    pub fn with_conntrack_max(self, max: usize) -> Self {
        Self {
            conntrack: Conntrack::new(max),
            ..self
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
