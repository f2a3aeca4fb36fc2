//! The node's Services (ClusterIP): `service add|del|list` and `conntrack`, checked by
//! [`ServiceSpec::check`] under the service lock and handed to the switch.
//!
//! Invariants: a service is in the node's map exactly while the switch has it (both change under
//! the service lock); names are unique, and so are `(vip, port, proto)`.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use serde::{Deserialize, Serialize};

use super::spec::{ServiceProto, ServiceSpec};
use super::{lock, Node, NodeError};

/// A service as `podswitch service list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// What the service was added as.
    pub spec: ServiceSpec,
    /// Connections tracked per backend (in the order of `spec.backends`); filled by connection
    /// tracking (zeros until it exists).
    pub connections: Vec<u64>,
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
    /// (fields named `service.*`). A service of the same name is replaced (an update of its
    /// VIP, port or backends); other services are not disturbed.
    pub(crate) fn add_service(&self, spec: &ServiceSpec) -> Result<(), NodeError> {
        self.insert_service(spec, "service", true)
    }

    /// Checks `spec` (fields named `<at>.*`) against the other services (all of them unless
    /// `replace`: then those of other names) and hands it to the switch.
    pub(super) fn insert_service(
        &self,
        spec: &ServiceSpec,
        at: &str,
        replace: bool,
    ) -> Result<(), NodeError> {
        let mut services = lock(&self.services);
        spec.check(
            &self.spec,
            services
                .values()
                .filter(|s| !replace || s.name != spec.name),
            at,
        )?;
        self.switch
            .upsert_service(spec.to_service())
            .map_err(NodeError::Service)?;
        let replaced = services.insert(spec.name.clone(), spec.clone()).is_some();
        tracing::info!(service = %spec.name, address = %spec.address_text(), backends = spec.backends.len(), replaced, "service added");
        Ok(())
    }

    /// Removes a service (`service del`); [`NodeError::NoSuchService`] if there is none.
    pub(crate) fn del_service(&self, name: &str) -> Result<(), NodeError> {
        let mut services = lock(&self.services);
        if !services.contains_key(name) {
            return Err(NodeError::NoSuchService(name.into()));
        }
        self.switch
            .remove_service(name)
            .map_err(NodeError::Service)?;
        services.remove(name);
        tracing::info!(service = %name, "service removed");
        Ok(())
    }

    /// Every service, by name, with its connections per backend.
    pub(crate) fn services(&self) -> Vec<ServiceStatus> {
        let services: BTreeMap<String, ServiceSpec> = lock(&self.services).clone();
        let compiled = self.switch.services();
        let ct = &self.switch.tables().conntrack;
        services
            .into_values()
            .map(|spec| {
                let connections = compiled
                    .iter()
                    .find(|c| c.service.name == spec.name)
                    .map(|c| ct.per_backend(c.id, &spec.backends))
                    .unwrap_or_else(|| vec![0; spec.backends.len()]);
                ServiceStatus { spec, connections }
            })
            .collect()
    }

    /// The flows connection tracking follows.
    pub(crate) fn flows(&self) -> Vec<FlowStatus> {
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

    /// Forgets the flows idle past their timeout (called periodically by the daemon).
    pub fn expire_flows(&self) -> usize {
        let tables = self.switch.tables();
        tables.conntrack.expire(tables.mac.now())
    }
}
