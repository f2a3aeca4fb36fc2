//! The steps of a daemon's start that touch the machine: RFS, the node's namespace, the node
//! itself; and what the CLI is told about them.
//!
//! Invariant: nothing here prints; what users are told is returned ([`NodeUp`],
//! [`ConfigSummary`]) for the CLI to print.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::DaemonError;
use crate::cluster::Agent;
use crate::config::Config;
use crate::netns::NetNs;
use crate::node::{self, Handover, Node, PodSpec};

/// What `run --check-config` found good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSummary {
    /// The node's name.
    pub node: String,
    /// Pods in the file.
    pub pods: usize,
    /// Peers in the file.
    pub peers: usize,
    /// Services in the file.
    pub services: usize,
}

impl ConfigSummary {
    pub(super) fn of(cfg: &Config) -> Self {
        Self {
            node: cfg.node.name().to_string(),
            pods: cfg.pods.len(),
            peers: cfg.peers.len(),
            services: cfg.services.len(),
        }
    }
}

/// A node that came up: what the user is told to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUp {
    /// The node's name.
    pub node: String,
    /// Its control socket.
    pub control: PathBuf,
    /// The pods' gateway.
    pub gateway: Ipv4Addr,
    /// The config file's pods, as the node has them (a pod given without ip with the
    /// address it got).
    pub pods: Vec<PodSpec>,
}

/// How a user runs the binary at `exe` in the hints printed for them: its file name when that
/// name on `PATH` is this binary (after `scripts/install`), else its full path (a
/// `target/release/podswitch` started by `cargo run`).
pub fn command_name(exe: &Path) -> String {
    let Some(name) = exe.file_name() else {
        return exe.display().to_string();
    };
    let here = std::fs::canonicalize(exe).ok();
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if here.is_some() && here == on_path.and_then(|p| std::fs::canonicalize(p).ok()) {
        name.to_string_lossy().into_owned()
    } else {
        exe.display().to_string()
    }
}

/// RFS for `rx_steering`: a host-wide setting, visible only from the host's namespace (an
/// `upgraded` daemon starts in the node's and finds it set by the first one). Not enabling it
/// is no error: the flows are then spread by RPS alone.
pub(super) fn enable_rfs(upgraded: bool) {
    match node::enable_flow_table() {
        Ok(was) if was < node::SOCK_FLOW_ENTRIES => tracing::info!(
            was,
            now = node::SOCK_FLOW_ENTRIES,
            "rx_steering: raised net.core.rps_sock_flow_entries (RFS on)"
        ),
        Ok(_) => {}
        Err(e) if upgraded => tracing::debug!("rx_steering: {e}"),
        Err(e) => tracing::warn!(
            "rx_steering: RFS not enabled ({e}); unless the host enables it, flows are spread over the CPUs by RPS alone"
        ),
    }
}

/// Moves the calling thread into the node's host namespace `name` and sets its loopback up.
/// Called before any other thread exists, so every thread the daemon starts lives there.
pub(super) fn enter_netns(name: &str) -> Result<(), DaemonError> {
    let ns = NetNs::open(name).map_err(DaemonError::Netns)?;
    let file = std::fs::File::open(ns.path()).map_err(|source| DaemonError::NetnsOpen {
        name: name.into(),
        source,
    })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
        DaemonError::Setns {
            name: name.into(),
            source,
        }
    })?;
    node::loopback_up().map_err(|message| DaemonError::Loopback {
        name: name.into(),
        message,
    })
}

/// Starts the node: with `[cluster]`, on the subnet leased from etcd (or, when etcd does not
/// answer at first, on the subnet remembered from the last run, leasing it once etcd is
/// back); then its pods and the runtime pods recorded by an earlier run.
pub(super) async fn start_node(
    mut cfg: Config,
    agent: Option<Agent>,
    state_path: PathBuf,
    handover: Option<Handover>,
) -> Result<(Arc<Node>, Option<Agent>, NodeUp), DaemonError> {
    let agent = match agent {
        None => None,
        Some(mut agent) => {
            let acquired = match agent.try_acquire().await {
                Ok(a) => a,
                // Only when etcd does not answer: a subnet etcd says is taken is never used.
                Err(e) if !e.is_unreachable() => {
                    tracing::warn!("etcd: {e}; waiting for a subnet lease");
                    agent.acquire().await
                }
                Err(e) => match agent.remembered(&cfg.node) {
                    Some(a) => {
                        tracing::warn!(subnet = %a.subnet, "etcd: {e}; starting on the subnet this node held last, leasing it when etcd answers");
                        a
                    }
                    None => {
                        tracing::warn!("etcd: {e}; waiting for a subnet lease");
                        agent.acquire().await
                    }
                },
            };
            acquired.apply_to(&mut cfg.node);
            Some(agent)
        }
    };
    let (node, up) = tokio::task::spawn_blocking(move || -> Result<_, DaemonError> {
        // The recorded runtime pods' addresses are kept from the file's pods without ip,
        // so each attachment comes back below with its own.
        let recorded = node::Recorded::read(&state_path).with_handover(handover);
        let node = Arc::new(Node::start_reserving(
            cfg.node.clone(),
            &cfg.pods,
            &cfg.peers,
            &cfg.services,
            recorded,
        )?);
        // Runtime pods recorded by an earlier run come back (those whose namespace is gone
        // are forgotten); from here on the node keeps the record up to date.
        let restored = node.restore_attachments(state_path);
        // After an upgrade: the flows tracked again, unclaimed descriptors closed.
        node.resume();
        tracing::info!(node = %node.name(), pod_cidr = %node.pod_cidr(), pods = cfg.pods.len(), restored = restored.len(), control = %cfg.node.control_path().display(), "node up");
        let up = NodeUp {
            node: node.name().to_string(),
            control: cfg.node.control_path(),
            gateway: node.gateway(),
            pods: cfg
                .pods
                .iter()
                .filter_map(|p| node.pod(&p.name))
                .map(|p| p.spec)
                .collect(),
        };
        Ok((node, up))
    })
    .await
    .map_err(DaemonError::StartTask)??;
    Ok((node, agent, up))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_not_on_path_is_named_by_its_path() {
        let exe = Path::new("/nonexistent/dir/podswitch-test-binary");
        assert_eq!(command_name(exe), exe.display().to_string());
    }
}
