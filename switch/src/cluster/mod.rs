//! The cluster control plane (Order 7): node subnets leased and peers discovered in etcd, in
//! flannel's layout, so that podswitch nodes and flannel nodes can share one cluster and one
//! etcd.
//!
//! - [`ClusterSpec`]: the config file's `[cluster]` table.
//! - `flannel/`: flannel's keys, value formats, network config with its defaults and checks,
//!   and the order in which a node picks its subnet. Pure: no etcd, no I/O.
//! - `reconcile/`: the rules, sans-IO: lists, watch events, lease TTLs and keys read back in;
//!   the writes to make, the node's peers and services to apply or remove, a relist or a resync
//!   out. No tokio, no etcd-client.
//! - [`ClusterTarget`] (`target.rs`): the node as the rules change it (peers, services), and
//!   the executor of the reconciler's node commands; `node_target.rs` implements it for
//!   [`Node`](crate::node::Node), the one file here that calls the node itself (the others
//!   use its spec types — a node, a peer, a service, a MAC, the VXLAN port — and `memory.rs`
//!   its atomic JSON writer).
//! - `etcd.rs`: the etcd-client calls, answers as plain data; `session.rs`: the loop that
//!   makes them and feeds the reconciler; `agent.rs`: [`Agent`] ([`Agent::acquire`] leases the
//!   node's subnet before the node starts, [`Agent::run`] keeps it in the cluster), its status
//!   and errors.
//! - `memory`: the subnet the node last held (`<control dir>/<node>.subnet.json`, flannel's
//!   `subnet.env`), so that a node restarted while etcd is down comes back on it.
//!
//! Invariants: the node's own key is written only by a transaction that checks the key's
//! version (absent) or its modification revision (ours, read just before), so two nodes never
//! hold one subnet; every peer whose source is etcd corresponds to a lease seen in the last
//! list plus the watch events after it.

mod agent;
mod etcd;
pub(crate) mod flannel;
mod memory;
mod node_target;
mod reconcile;
mod session;
mod target;

use serde::{Deserialize, Serialize};

pub use agent::{Acquired, Agent, ClusterError};
pub(crate) use memory::Memory;
pub use reconcile::ReconcileError;
pub use target::ClusterTarget;

use crate::node::SpecError;

/// Default TTL of the node's lease: flannel's 24 hours.
const DEFAULT_LEASE_TTL_SECS: u64 = 24 * 3600;
/// Shortest lease TTL accepted (etcd grants at least its own minimum, a few seconds, anyway).
const MIN_LEASE_TTL_SECS: u64 = 5;
/// Longest lease TTL accepted (a year).
const MAX_LEASE_TTL_SECS: u64 = 365 * 24 * 3600;

/// The config file's `[cluster]` table: where the cluster's etcd is and how the node's lease
/// lives there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// etcd's client URLs (`http://192.168.77.254:2379`); tried in turn.
    pub etcd_endpoints: Vec<String>,
    /// The key prefix shared with flannel (`--etcd-prefix`).
    #[serde(default = "default_prefix")]
    pub etcd_prefix: String,
    /// TTL of the node's lease in seconds; kept alive at a third of it.
    #[serde(default = "default_ttl")]
    pub lease_ttl_secs: u64,
    /// The key prefix of the cluster's Services: `<services_prefix>/<name>` holds a service
    /// as JSON (the `service add` fields), applied on every node.
    #[serde(default = "default_services_prefix")]
    pub services_prefix: String,
}

/// Default prefix of the Services in etcd.
pub const DEFAULT_SERVICES_PREFIX: &str = "/podswitch/services";

fn default_prefix() -> String {
    flannel::DEFAULT_PREFIX.into()
}
fn default_ttl() -> u64 {
    DEFAULT_LEASE_TTL_SECS
}
fn default_services_prefix() -> String {
    DEFAULT_SERVICES_PREFIX.into()
}

impl ClusterSpec {
    /// A `[cluster]` table for `etcd_endpoints` with the default prefix and lease TTL.
    pub fn new(etcd_endpoints: Vec<String>) -> Self {
        Self {
            etcd_endpoints,
            etcd_prefix: default_prefix(),
            lease_ttl_secs: default_ttl(),
            services_prefix: default_services_prefix(),
        }
    }

    /// Checks the table (fields named `cluster.*`).
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        if self.etcd_endpoints.is_empty() {
            return Err(SpecError::new(
                "cluster.etcd_endpoints",
                "is empty (give etcd's client URL, like \"http://192.168.77.254:2379\")",
            ));
        }
        for (i, e) in self.etcd_endpoints.iter().enumerate() {
            let field = format!("cluster.etcd_endpoints[{i}]");
            if e.starts_with("https://") {
                return Err(SpecError::new(
                    field,
                    format!("{e:?}: TLS to etcd is not supported; use an http:// endpoint"),
                ));
            }
            let Some(rest) = e.strip_prefix("http://") else {
                return Err(SpecError::new(
                    field,
                    format!("{e:?} is not an http:// URL (like \"http://192.168.77.254:2379\")"),
                ));
            };
            let hostport = rest.trim_end_matches('/');
            let ok = match hostport.rsplit_once(':') {
                Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
                None => false,
            };
            if !ok || hostport.contains('/') {
                return Err(SpecError::new(
                    field,
                    format!("{e:?} has no host:port (like \"http://192.168.77.254:2379\")"),
                ));
            }
        }
        if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.trim_end_matches('/').is_empty() {
            return Err(SpecError::new(
                "cluster.etcd_prefix",
                format!(
                    "{:?} must start with '/' and name a key (like {:?})",
                    self.etcd_prefix,
                    flannel::DEFAULT_PREFIX
                ),
            ));
        }
        if !self.services_prefix.starts_with('/')
            || self.services_prefix.trim_end_matches('/').is_empty()
        {
            return Err(SpecError::new(
                "cluster.services_prefix",
                format!(
                    "{:?} must start with '/' and name a key (like {DEFAULT_SERVICES_PREFIX:?})",
                    self.services_prefix,
                ),
            ));
        }
        if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&self.lease_ttl_secs) {
            return Err(SpecError::new(
                "cluster.lease_ttl_secs",
                format!(
                    "{} is not between {MIN_LEASE_TTL_SECS} and {MAX_LEASE_TTL_SECS} (a year)",
                    self.lease_ttl_secs
                ),
            ));
        }
        Ok(())
    }

    /// The prefix without trailing slashes.
    pub(crate) fn prefix(&self) -> &str {
        self.etcd_prefix.trim_end_matches('/')
    }

    /// The services prefix without trailing slashes.
    pub(crate) fn services_prefix(&self) -> &str {
        self.services_prefix.trim_end_matches('/')
    }
}

/// The node's lease and the store's health, as `podswitch status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// etcd's endpoints.
    pub endpoints: Vec<String>,
    /// The key prefix.
    pub prefix: String,
    /// The node's subnet key (`<prefix>/subnets/10.244.5.0-24`), once leased.
    pub key: Option<String>,
    /// The etcd lease its key is attached to.
    pub lease_id: Option<i64>,
    /// The lease's TTL as etcd last confirmed it, in seconds.
    pub ttl_secs: Option<i64>,
    /// Seconds until the lease expires if it is not renewed (as of this status).
    pub expires_in_secs: Option<i64>,
    /// When etcd last confirmed the lease.
    #[serde(skip)]
    pub(crate) renewed_at: Option<std::time::Instant>,
    /// True while the last call to etcd succeeded.
    pub healthy: bool,
    /// True if the last failure was etcd not answering (not a problem it answered with).
    #[serde(default)]
    pub unreachable: bool,
    /// Another node holds the subnet this node runs on (its pods' addresses may clash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
    /// The last error from etcd, if the last call failed.
    pub last_error: Option<String>,
    /// Peers currently learnt from etcd.
    pub peers: usize,
    /// Services currently applied from etcd.
    #[serde(default)]
    pub services: usize,
}

impl ClusterStatus {
    /// etcd confirmed the lease with `ttl` seconds left.
    pub(crate) fn renewed(&mut self, ttl: i64) {
        self.ttl_secs = Some(ttl);
        self.renewed_at = Some(std::time::Instant::now());
    }

    /// The status as of now (the expiry counted down from the last renewal).
    pub fn snapshot(&self) -> ClusterStatus {
        let mut s = self.clone();
        if let (Some(ttl), Some(at)) = (self.ttl_secs, self.renewed_at) {
            s.expires_in_secs = Some(ttl - at.elapsed().as_secs() as i64);
        }
        s
    }
}
