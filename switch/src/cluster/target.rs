//! What the cluster changes on the node, as a trait the node implements (`node_target.rs`), and
//! [`execute`]: the reconciler's node commands carried out on a target, their outcomes returned
//! for the reconciler to record.
//!
//! Invariant: only items whose source is etcd are removed; an item of the same name from the
//! config file or the CLI is the node's to refuse (the refusal is an outcome, not an error).

use ipnet::Ipv4Net;

use super::reconcile::{NodeCommand, Outcome};
use crate::node::{PeerSpec, ServiceSpec};

/// The node as the cluster agent sees it. Calls may block (netlink); the session makes them off
/// the async runtime.
pub trait ClusterTarget: Send + Sync + 'static {
    /// The pod CIDR the node runs on.
    fn pod_cidr(&self) -> Ipv4Net;
    /// The names of the peers learnt from etcd.
    fn etcd_peer_names(&self) -> Vec<String>;
    /// Whether `name` is a peer learnt from etcd.
    fn has_etcd_peer(&self, name: &str) -> bool;
    /// How many peers were learnt from etcd.
    fn etcd_peer_count(&self) -> usize;
    /// Adds or updates a peer from a lease (`lease`: its etcd lease ID), by the rules of
    /// `peer add`; a refusal as text.
    fn apply_peer(&self, peer: &PeerSpec, lease: Option<i64>) -> Result<(), String>;
    /// Removes the peer `name` (`why`: for the node's log).
    fn remove_peer(&self, name: &str, why: &str) -> Result<(), String>;
    /// The names of the services from etcd.
    fn etcd_service_names(&self) -> Vec<String>;
    /// Adds or replaces a service from etcd, by the rules of `service add`.
    fn apply_service(&self, spec: &ServiceSpec) -> Result<(), String>;
    /// Removes the service `name` if it came from etcd (false: there is none such).
    fn remove_service(&self, name: &str) -> Result<bool, String>;
}

/// Why a peer goes when a list no longer has its lease.
const WHY_RELISTED: &str = "its lease is no longer in etcd (found on a re-list)";

/// Carries out `commands` on `target` in order; returns each applied item's outcome.
pub(crate) fn execute(target: &dyn ClusterTarget, commands: Vec<NodeCommand>) -> Vec<Outcome> {
    let mut out = Vec::new();
    for c in commands {
        match c {
            NodeCommand::ApplyPeer { key, peer, lease } => {
                let result = target.apply_peer(&peer, lease);
                out.push(Outcome::Peer { key, result });
            }
            NodeCommand::RemovePeer { name, why } => {
                // The node logs the removal.
                if target.has_etcd_peer(&name) {
                    if let Err(e) = target.remove_peer(&name, why) {
                        tracing::warn!(peer = %name, "removing a peer whose lease went: {e}");
                    }
                }
            }
            NodeCommand::SyncPeers(wanted) => {
                let names: Vec<&str> = wanted.iter().map(|(_, p, _)| p.name.as_str()).collect();
                let removed = remove_others(target.etcd_peer_names(), &names, |n| {
                    target.remove_peer(n, WHY_RELISTED)
                });
                if !removed.is_empty() {
                    tracing::info!(peers = ?removed, "peers removed: their leases are gone from etcd");
                }
                out.extend(wanted.into_iter().map(|(key, peer, lease)| {
                    let result = target.apply_peer(&peer, lease);
                    Outcome::Peer { key, result }
                }));
            }
            NodeCommand::ApplyService { key, spec } => {
                let result = target.apply_service(&spec);
                out.push(Outcome::Service { key, result });
            }
            NodeCommand::RemoveService { key, name } => {
                if let Err(e) = target.remove_service(&name) {
                    tracing::warn!(key, "removing a service from etcd: {e}");
                }
            }
            NodeCommand::SyncServices(wanted) => {
                let names: Vec<&str> = wanted.iter().map(|(_, s)| s.name.as_str()).collect();
                let removed = remove_others(target.etcd_service_names(), &names, |n| {
                    target.remove_service(n).map(|_| ())
                });
                if !removed.is_empty() {
                    tracing::info!(services = ?removed, "services removed: their keys are gone from etcd");
                }
                out.extend(wanted.into_iter().map(|(key, spec)| {
                    let result = target.apply_service(&spec);
                    Outcome::Service { key, result }
                }));
            }
        }
    }
    out
}

/// Removes every `current` name not `wanted`; returns those removed (a failure is logged).
fn remove_others(
    current: Vec<String>,
    wanted: &[&str],
    remove: impl Fn(&str) -> Result<(), String>,
) -> Vec<String> {
    let mut removed = Vec::new();
    for name in current {
        if !wanted.contains(&name.as_str()) {
            match remove(&name) {
                Ok(()) => removed.push(name),
                Err(e) => tracing::warn!(name = %name, "removing what vanished from etcd: {e}"),
            }
        }
    }
    removed
}
