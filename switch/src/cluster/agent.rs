//! The node's etcd agent: leases the node's subnet in flannel's layout, keeps the lease alive,
//! and turns the other leases into peers and the service keys into services.
//!
//! Life of a node with `[cluster]`:
//!
//! 1. [`Agent::acquire`] (before the node starts): read `<prefix>/config`, list
//!    `<prefix>/subnets/`, pick a subnet in flannel's order (our own PublicIP's lease, then the
//!    remembered or configured subnet, then free ones from SubnetMin), grant an etcd lease of
//!    `lease_ttl_secs` and write the key in a transaction that only succeeds if the key is
//!    still absent (or, for our own lease, unchanged since we read it). A lost race moves on
//!    to the next candidate.
//! 2. [`Agent::run`] (for the node's life): a *session* lists the subnets, reconciles the
//!    node's etcd peers with them, then follows: keep-alives at a third of the TTL and a watch
//!    from the revision after the list. Any failure (etcd gone, watch cancelled by a
//!    compaction, lease lost) ends the session; the next one, after a backoff, checks the
//!    lease (granting a new one if it expired), makes sure our key is there (recreating it if
//!    someone deleted it: flannel exits here) and lists again, which removes peers whose
//!    leases vanished meanwhile. The data plane never waits for etcd: it forwards on the
//!    last peers it knew.
//! 3. Services: the same session lists `<services_prefix>/` too (at a revision of its own) and
//!    watches it from there (see `reconcile/services.rs`).
//!
//! This file is the agent's face (its state, status and errors); the rules are the
//! reconciler's (`reconcile/`), the loop that feeds it is `session.rs`, the etcd calls are
//! `etcd.rs` and the node is reached through [`ClusterTarget`](super::ClusterTarget).
//!
//! Invariant: the status shows what the last call to etcd said (healthy or the error), the
//! lease and key held, and the conflict the reconciler reports.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;

use super::etcd::Etcd;
use super::reconcile::{Held, Identity, ReconcileError, Reconciler};
use super::{flannel, ClusterSpec, ClusterStatus, Memory};
use crate::node::NodeSpec;

/// First and largest wait between retries.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why talking to etcd failed. Each names the endpoint or key involved.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd did not answer, or answered with an error.
    #[error("etcd {endpoints}: {what}: {message}")]
    Etcd {
        /// The endpoints.
        endpoints: String,
        /// The call.
        what: &'static str,
        /// The client's error.
        message: String,
    },
    /// What etcd answered breaks a rule (the reconciler's message).
    #[error(transparent)]
    Rules(#[from] ReconcileError),
    /// The node's peer updates failed (a panic in the update task).
    #[error("updating the node's peers: {0}")]
    Internal(String),
    /// The node now holds the subnet it runs on: start a new session to keep it alive.
    #[error("the node holds its subnet again; resyncing")]
    Resync,
}

impl ClusterError {
    /// True if etcd could not be reached (as opposed to answering with a problem).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Etcd { .. })
    }
}

/// The node's subnet and the network's VXLAN settings, as leased (or remembered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// The node's subnet.
    pub subnet: Ipv4Net,
    /// VXLAN network identifier (the network config's `Backend.VNI`).
    pub vni: u32,
    /// VXLAN UDP port (`Backend.Port`).
    pub port: u16,
}

impl Acquired {
    /// Makes `spec` the node this lease describes: its pod CIDR, VNI and port. A VNI or port
    /// given in the file that differs from the network config's is overridden, with a warning:
    /// every node of the cluster must use the network's.
    pub fn apply_to(&self, spec: &mut NodeSpec) {
        if spec.vni != self.vni || spec.vxlan_port != self.port {
            if spec.vni != 1 || spec.vxlan_port != crate::node::spec::DEFAULT_VXLAN_PORT {
                tracing::warn!(
                    file_vni = spec.vni,
                    file_port = spec.vxlan_port,
                    vni = self.vni,
                    port = self.port,
                    "node.vni / node.vxlan_port differ from etcd's network config; using the network's"
                );
            }
            spec.vni = self.vni;
            spec.vxlan_port = self.port;
        }
        spec.pod_cidr = Some(self.subnet);
    }
}

/// The node's etcd agent (see the module docs).
pub struct Agent {
    pub(super) core: Reconciler,
    pub(super) etcd: Etcd,
    pub(super) node_name: String,
    pub(super) memory_path: PathBuf,
    status: Arc<Mutex<ClusterStatus>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// An agent for `node` (its name, underlay and VTEP MAC are what it publishes).
    pub fn new(
        spec: &ClusterSpec,
        node: &NodeSpec,
        state_dir: &std::path::Path,
    ) -> Result<Self, ClusterError> {
        let public_ip = node.underlay.ok_or_else(|| ReconcileError::Config {
            key: "node.underlay".into(),
            reason: "is required with [cluster]: it is the PublicIP other nodes send VXLAN to"
                .into(),
        })?;
        let status = ClusterStatus {
            endpoints: spec.etcd_endpoints.clone(),
            prefix: spec.prefix().into(),
            ..ClusterStatus::default()
        };
        let me = Identity {
            prefix: spec.prefix().into(),
            services_prefix: spec.services_prefix().into(),
            public_ip,
            vtep_mac: node.router_mac(),
            lease_ttl_secs: spec.lease_ttl_secs,
        };
        Ok(Self {
            core: Reconciler::new(me, node.pod_cidr),
            etcd: Etcd::new(spec.etcd_endpoints.clone()),
            node_name: node.name.clone(),
            memory_path: Memory::path(state_dir, &node.name),
            status: Arc::new(Mutex::new(status)),
        })
    }

    /// Leases the node's subnet, retrying with backoff until it has one (step 1 of the module
    /// docs). Each failed attempt is logged and left in the status.
    pub async fn acquire(&mut self) -> Acquired {
        let mut backoff = Backoff::new();
        loop {
            match self.try_acquire().await {
                Ok(a) => return a,
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(retry_in = ?wait, "no subnet lease yet: {e}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One attempt to lease the node's subnet; a failure is left in the status.
    pub async fn try_acquire(&mut self) -> Result<Acquired, ClusterError> {
        let r = self.lease_subnet().await;
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    /// The status `podswitch status` shows; updated as the agent works.
    pub fn status(&self) -> Arc<Mutex<ClusterStatus>> {
        Arc::clone(&self.status)
    }

    /// What the node remembers of its last lease (or its configured subnet), to start on
    /// while etcd cannot be reached. `None`: nothing to start on.
    pub fn remembered(&self, node: &NodeSpec) -> Option<Acquired> {
        let memory = Memory::load(&self.memory_path);
        let subnet = self.core.required().or(memory.map(|m| m.subnet))?;
        let (vni, port) = match memory {
            Some(m) if m.subnet == subnet => (m.vni, m.port),
            _ => (node.vni, node.vxlan_port),
        };
        Some(Acquired { subnet, vni, port })
    }

    /// Marks the store unhealthy with `e`.
    pub(super) fn failed(&self, e: &ClusterError) {
        let mut s = lock(&self.status);
        s.healthy = false;
        s.unreachable = e.is_unreachable();
        s.last_error = Some(e.to_string());
    }

    /// Marks the store healthy (logged when it was not).
    pub(super) fn healthy(&self) {
        let mut s = lock(&self.status);
        if let Some(e) = &s.last_error {
            tracing::info!(was = %e, "etcd answers again");
        }
        s.healthy = true;
        s.unreachable = false;
        s.last_error = None;
    }

    /// Shows the reconciler's conflict in the status.
    pub(super) fn publish_conflict(&self) {
        lock(&self.status).conflict = self.core.conflict().map(str::to_string);
    }

    /// etcd confirmed the lease with `ttl` seconds left.
    pub(super) fn renewed(&self, ttl: i64) {
        lock(&self.status).renewed(ttl);
    }

    /// The node's etcd peers and services now.
    pub(super) fn counted(&self, peers: usize, services: usize) {
        let mut s = lock(&self.status);
        s.peers = peers;
        s.services = services;
    }

    /// Records what we hold (reconciler, status, memory file).
    pub(super) fn hold(&mut self, held: Held) {
        self.core.hold(held);
        Memory {
            subnet: held.subnet,
            vni: held.network.vni,
            port: held.network.port,
        }
        .save(&self.memory_path);
        let mut s = lock(&self.status);
        s.key = Some(flannel::subnet_key(
            &self.core.identity().prefix,
            held.subnet,
        ));
        s.lease_id = Some(held.lease);
        s.renewed(self.core.identity().lease_ttl_secs as i64);
    }
}

/// Exponential backoff between [`BACKOFF_MIN`] and [`BACKOFF_MAX`].
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }
    pub(super) fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        now
    }
    pub(super) fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}
