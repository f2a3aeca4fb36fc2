//! The node's Services (ClusterIP): `service add|del|list` and `conntrack`, checked by
//! [`ServiceSpec::check`] under the service lock and handed to the switch.
//!
//! Invariants: a service is in the node's map exactly while the switch has it (both change under
//! the service lock); names are unique, and so are `(vip, port, proto)`. Each service records
//! where it came from (config, runtime, etcd); the etcd agent changes only services from etcd.

// `unsafe` is denied crate-wide and allowed in this file only: malloc_trim, to give a flood's memory back.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

use super::spec::{ServiceProto, ServiceSpec};
use super::{lock, Node, NodeError, PeerChange, PeerSource, SpecError};

/// A service as `podswitch service list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// What the service was added as.
    pub spec: ServiceSpec,
    /// Connections tracked per backend (in the order of `spec.backends`); filled by connection
    /// tracking (zeros until it exists).
    pub connections: Vec<u64>,
    /// Where it came from: the config file, `service add`, or etcd (`[cluster]`).
    #[serde(default)]
    pub source: PeerSource,
}

/// A service of the node and where it came from.
#[derive(Debug, Clone)]
pub(super) struct ServiceRecord {
    spec: ServiceSpec,
    source: PeerSource,
}

/// One tracked flow through a service, as `podswitch conntrack` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatus {
    /// TCP or UDP.
    pub proto: ServiceProto,
    /// The client (source) address and port.
    pub client: SocketAddrV4,
    /// The service address the client sent to.
    pub vip: SocketAddrV4,
    /// The backend the flow was sent to.
    pub backend: SocketAddrV4,
    /// The flow's state (`syn_sent`, `established`, `fin_wait`, `close`, `udp`, ...).
    pub state: String,
    /// Seconds since the flow's first packet.
    pub age_secs: u32,
    /// Seconds until the entry expires without traffic.
    pub expires_in_secs: u32,
}

impl Node {
    /// Adds a service (`service add`), refused by the same rules as a `[[services]]` entry
    /// (fields named `service.*`). A runtime service of the same name is replaced (an update
    /// of its VIP, port or backends); other services are not disturbed. A service from etcd
    /// of the same name becomes a runtime one; one of the config file is not shadowed
    /// (refused, see [`ServiceSpec::check_not_shadowing`]).
    pub(crate) fn add_service(&self, spec: &ServiceSpec) -> Result<(), NodeError> {
        let mut services = lock(&self.services);
        let file = services
            .values()
            .filter(|r| r.source == PeerSource::Config)
            .map(|r| &r.spec);
        spec.check_not_shadowing(file, "service")?;
        self.insert_locked(&mut services, spec, "service", true, PeerSource::Runtime)
    }

    /// Checks `spec` (fields named `<at>.*`) against the other services (all of them unless
    /// `replace`: then those of other names) and hands it to the switch.
    pub(super) fn insert_service(
        &self,
        spec: &ServiceSpec,
        at: &str,
        replace: bool,
        source: PeerSource,
    ) -> Result<(), NodeError> {
        let mut services = lock(&self.services);
        self.insert_locked(&mut services, spec, at, replace, source)
    }

    fn insert_locked(
        &self,
        services: &mut BTreeMap<String, ServiceRecord>,
        spec: &ServiceSpec,
        at: &str,
        replace: bool,
        source: PeerSource,
    ) -> Result<(), NodeError> {
        spec.check(
            &self.spec,
            services
                .values()
                .map(|r| &r.spec)
                .filter(|s| !replace || s.name != spec.name),
            at,
        )?;
        // Only a replaced service can leave flows behind: those of a backend it lost, or all
        // of them if its address moved (the table is not scanned for each of a thousand new
        // services). A move ends the flows before the new address is served, so no new flow
        // is taken for an old one.
        let old = services.get(&spec.name).map(|r| &r.spec);
        let moved = old.is_some_and(|o| o.address_text() != spec.address_text());
        let lost_backend =
            old.is_some_and(|o| o.backends.iter().any(|b| !spec.backends.contains(b)));
        // What the fast path carried is played in first: which flows are established.
        self.absorb_kernel_flows();
        let conntrack = &self.switch.tables().conntrack;
        let mut stranded = match self.compiled_service(&spec.name) {
            Some(svc) if moved => conntrack.end_service(svc.id),
            _ => Vec::new(),
        };
        // The new backends hand their replies up before the switch sends them a flow.
        self.endpoints_to_fast_path(services.values().map(|r| &r.spec).chain([spec]));
        self.switch
            .upsert_service(spec.to_service())
            .map_err(NodeError::Service)?;
        if let Some(svc) = self
            .compiled_service(&spec.name)
            .filter(|_| lost_backend && !moved)
        {
            stranded = conntrack.stranded(svc.id, |b| svc.index_of(b).is_some());
        }
        self.end_connections(&spec.name, &stranded);
        let record = ServiceRecord {
            spec: spec.clone(),
            source,
        };
        let replaced = services.insert(spec.name.clone(), record).is_some();
        self.endpoints_to_fast_path(services.values().map(|r| &r.spec));
        self.save_services(services);
        tracing::info!(service = %spec.name, address = %spec.address_text(), backends = spec.backends.len(), replaced, %source, "service added");
        Ok(())
    }

    /// Adds or replaces a service from etcd (`[cluster]`), by the same rules as `service add`.
    /// A service of the same name from the config or `service add` is not touched (refused).
    pub(crate) fn apply_etcd_service(&self, spec: &ServiceSpec) -> Result<PeerChange, NodeError> {
        let mut services = lock(&self.services);
        let change = match services.get(&spec.name) {
            Some(r) if r.source != PeerSource::Etcd => {
                return Err(NodeError::Refused(SpecError::new(
                    "service.name",
                    format!(
                        "{:?} is already a service from the {} (not replaced by etcd's)",
                        spec.name, r.source
                    ),
                )))
            }
            Some(r) if r.spec == *spec => return Ok(PeerChange::Unchanged),
            Some(_) => PeerChange::Updated,
            None => PeerChange::Added,
        };
        self.insert_locked(&mut services, spec, "service", true, PeerSource::Etcd)?;
        Ok(change)
    }

    /// Removes the service `name` if it came from etcd; false if there is none such.
    pub(crate) fn del_etcd_service(&self, name: &str) -> Result<bool, NodeError> {
        let mut services = lock(&self.services);
        if services
            .get(name)
            .is_none_or(|r| r.source != PeerSource::Etcd)
        {
            return Ok(false);
        }
        self.remove_from_switch(name)?;
        services.remove(name);
        self.endpoints_to_fast_path(services.values().map(|r| &r.spec));
        tracing::info!(service = %name, source = "etcd", "service removed");
        Ok(true)
    }

    /// The names of the services from etcd.
    pub(crate) fn etcd_services(&self) -> Vec<String> {
        lock(&self.services)
            .iter()
            .filter(|(_, r)| r.source == PeerSource::Etcd)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Removes a service (`service del`); [`NodeError::NoSuchService`] if there is none.
    pub(crate) fn del_service(&self, name: &str) -> Result<(), NodeError> {
        let mut services = lock(&self.services);
        if !services.contains_key(name) {
            return Err(NodeError::NoSuchService(name.into()));
        }
        self.remove_from_switch(name)?;
        services.remove(name);
        self.endpoints_to_fast_path(services.values().map(|r| &r.spec));
        self.save_services(&services);
        tracing::info!(service = %name, "service removed");
        Ok(())
    }

    /// Takes service `name` out of the switch; its established connections are ended.
    fn remove_from_switch(&self, name: &str) -> Result<(), NodeError> {
        let id = self.compiled_service(name).map(|s| s.id);
        self.switch
            .remove_service(name)
            .map_err(NodeError::Service)?;
        if let Some(id) = id {
            self.absorb_kernel_flows();
            // Marked before the probes go, so the clients' answers find them ended.
            let stranded = self.switch.tables().conntrack.end_service(id);
            self.end_connections(name, &stranded);
        }
        Ok(())
    }

    /// The switch's compiled service `name`.
    fn compiled_service(
        &self,
        name: &str,
    ) -> Option<std::sync::Arc<crate::table::CompiledService>> {
        self.switch
            .services()
            .into_iter()
            .find(|s| s.service.name == name)
    }

    /// Ends the established connections `stranded` (client, VIP) of service `name`, whose
    /// backend was removed, or the service: each client is sent two probes from the VIP,
    /// whose answer (an ACK with the sequence number the client expects) the data path resets
    /// as a flow whose backend is gone. So a client that is only waiting, and would send
    /// nothing for hours, learns at once, like one that sends.
    fn end_connections(&self, name: &str, stranded: &[(SocketAddrV4, SocketAddrV4)]) {
        use crate::pipeline::{tcp_probes, TCP_SEGMENT_FRAME_LEN};
        use crate::wire::ethernet::mac_from_key;
        if stranded.is_empty() {
            return;
        }
        let node = self.switch.node();
        let topo = self.switch.tables().topology();
        // The clients are on this node (a flow is translated at its client's node): a pod,
        // or the node itself through its host interface (the gateway address).
        let client_port = |ip: std::net::Ipv4Addr| {
            if ip == node.gateway {
                topo.host()
            } else {
                topo.neighbour(ip)
            }
        };
        let mut by_port: BTreeMap<_, Vec<Vec<u8>>> = BTreeMap::new();
        let mut buf = [0u8; 2 * TCP_SEGMENT_FRAME_LEN];
        for (client, vip) in stranded {
            let Some(to) = client_port(*client.ip()) else {
                continue;
            };
            let len = tcp_probes(
                &mut buf,
                *vip,
                *client,
                mac_from_key(to.mac),
                node.router_mac,
            );
            let frames = by_port.entry(to.port).or_default();
            frames.extend(buf[..len].chunks(TCP_SEGMENT_FRAME_LEN).map(<[u8]>::to_vec));
        }
        for (port, frames) in by_port {
            if let Err(e) = self.switch.send_frames(port, frames) {
                tracing::warn!(service = %name, "probes to end its connections not sent: {e}");
            }
        }
        tracing::info!(service = %name, flows = stranded.len(), "connections to removed backends ended");
    }

    /// Tells the kernel fast path (veth mode) every backend of `services`: what a pod sends
    /// from a backend's address and port goes through the switch, whose connection tracking
    /// translates replies back to the VIP. A failure is logged (the map is full: those
    /// replies would bypass the translation, so it is loud).
    fn endpoints_to_fast_path<'a>(&self, services: impl Iterator<Item = &'a ServiceSpec>) {
        let Some(fast) = &self.fast_path else {
            return;
        };
        let endpoints = services
            .flat_map(|s| {
                let proto = s.proto.to_proto().number();
                s.backends
                    .iter()
                    .map(move |b| podswitch_fastpath::Endpoint {
                        ip: *b.ip(),
                        port: b.port(),
                        proto,
                    })
            })
            .collect();
        if let Err(e) = lock(fast).set_endpoints(endpoints) {
            tracing::error!("fast path: Service backends not all known to it: {e}");
        }
    }

    /// Records the services added at runtime (`service add`), of `services`.
    pub(super) fn save_services(&self, services: &BTreeMap<String, ServiceRecord>) {
        self.update_record(|r| {
            r.services = services
                .values()
                .filter(|s| s.source == PeerSource::Runtime)
                .map(|s| s.spec.clone())
                .collect();
        });
    }

    /// Every service, by name, with its connections per backend.
    pub(crate) fn services(&self) -> Vec<ServiceStatus> {
        let services: BTreeMap<String, ServiceRecord> = lock(&self.services).clone();
        let compiled = self.switch.services();
        let ct = &self.switch.tables().conntrack;
        services
            .into_values()
            .map(|ServiceRecord { spec, source }| {
                let connections = compiled
                    .iter()
                    .find(|c| c.service.name == spec.name)
                    .map(|c| ct.per_backend(c.id, &spec.backends))
                    .unwrap_or_else(|| vec![0; spec.backends.len()]);
                ServiceStatus {
                    spec,
                    connections,
                    source,
                }
            })
            .collect()
    }

    /// The flows connection tracking follows.
    pub(crate) fn flows(&self) -> Vec<FlowStatus> {
        self.absorb_kernel_flows();
        let tables = self.switch.tables();
        let mut flows: Vec<FlowStatus> = tables
            .conntrack
            .list(tables.mac.now())
            .into_iter()
            .map(|f| FlowStatus {
                proto: if f.proto == 17 {
                    ServiceProto::Udp
                } else {
                    ServiceProto::Tcp
                },
                client: f.client,
                vip: f.vip,
                backend: f.backend,
                state: f.state.into(),
                age_secs: f.age_secs,
                expires_in_secs: f.expires_in_secs,
            })
            .collect();
        flows.sort_by_key(|f| (f.vip, f.client));
        flows
    }

    /// Forgets the flows idle past their timeout (called periodically by the daemon). Once
    /// many have gone (a flood's flows expiring over a minute, a few hundred per call), the
    /// first call that forgets none, or every [`TRIM_EVERY_FLOWS`], returns the freed memory
    /// to the system: the flows are freed a little after their removal (lock-free
    /// reclamation), in many small blocks the allocator would otherwise keep.
    pub fn expire_flows(&self) -> usize {
        self.absorb_kernel_flows();
        let tables = self.switch.tables();
        let removed = tables.conntrack.expire(tables.mac.now());
        if lock(&self.heap_trim).due(tables.conntrack.forgotten()) {
            trim_heap();
        }
        removed
    }
}

/// Flows forgotten past which the memory they held is returned.
const TRIM_AFTER_FLOWS: u64 = 4096;

/// Flows forgotten past which the memory is returned even while more are going.
const TRIM_EVERY_FLOWS: u64 = 65_536;

/// When to return freed flows' memory: what connection tracking had forgotten at the last
/// look, and since the memory was last returned.
#[derive(Debug, Default)]
pub(super) struct HeapTrim {
    seen: u64,
    pending: u64,
}

impl HeapTrim {
    /// True if the memory is to be returned now, `forgotten` being the table's count.
    fn due(&mut self, forgotten: u64) -> bool {
        let gone = forgotten.saturating_sub(std::mem::replace(&mut self.seen, forgotten));
        self.pending += gone;
        let due =
            self.pending >= TRIM_AFTER_FLOWS && (gone == 0 || self.pending >= TRIM_EVERY_FLOWS);
        if due {
            self.pending = 0;
        }
        due
    }
}

/// Returns the allocator's free memory to the system.
fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas (taking their locks); it touches no
    // memory of ours and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_goes_back_once_a_wave_of_forgotten_flows_has_passed() {
        let mut t = HeapTrim::default();
        // A flood's flows expiring a few hundred at a time: not while they go...
        let mut forgotten = 0;
        for _ in 0..20 {
            forgotten += 300;
            assert!(!t.due(forgotten));
        }
        // ...but at the first look that finds none gone, once.
        assert!(t.due(forgotten));
        assert!(!t.due(forgotten));
        // A few flows are not worth it; a long wave is, every 65536.
        assert!(!t.due(forgotten + 100) && !t.due(forgotten + 100));
        assert!(t.due(forgotten + 100 + TRIM_EVERY_FLOWS));
    }
}
