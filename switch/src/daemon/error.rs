//! Why the daemon could not start, or stopped with an error.

use crate::cluster::ClusterError;
use crate::config::ConfigError;
use crate::netns::NetnsError;
use crate::node::NodeError;

/// Why `podswitch run` (or `run --check-config`) failed. Each variant's doc comment is its
/// message, as users see it after `podswitch: `; the message of the error underneath is kept
/// whole (tests and users read them).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// {0} (the config file's error, naming the file and the field)
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// {0} (the node's lock: another daemon runs this node, naming it)
    #[error("{0}")]
    Lock(String),
    /// node.netns: {0}
    #[error("node.netns: {0}")]
    Netns(#[source] NetnsError),
    /// node.netns {name:?}: {source}
    #[error("node.netns {name:?}: {source}")]
    NetnsOpen {
        /// The namespace.
        name: String,
        /// Opening its file.
        source: std::io::Error,
    },
    /// node.netns {name:?}: setns: {source}
    #[error("node.netns {name:?}: setns: {source}")]
    Setns {
        /// The namespace.
        name: String,
        /// setns(2).
        source: nix::Error,
    },
    /// node.netns {name:?}: {message} (the loopback interface could not be set up)
    #[error("node.netns {name:?}: {message}")]
    Loopback {
        /// The namespace.
        name: String,
        /// The netlink request and its error.
        message: String,
    },
    /// {0} (binding or serving the control socket; the message names the socket)
    #[error("{0}")]
    ControlSocket(#[source] std::io::Error),
    /// control socket: {0} (the task serving it panicked or was cancelled)
    #[error("control socket: {0}")]
    ControlTask(#[source] tokio::task::JoinError),
    /// tokio runtime: {0}
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// {0} (claiming node.metrics)
    #[error("{0}")]
    Metrics(#[from] crate::metrics::ServerError),
    /// {0} (the `[cluster]` agent)
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// {0} (starting the node: its pods, peers and services)
    #[error("{0}")]
    Node(#[from] NodeError),
    /// starting the node: {0} (the task starting it panicked)
    #[error("starting the node: {0}")]
    StartTask(#[source] tokio::task::JoinError),
}
