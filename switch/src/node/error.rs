//! Why the node's operations fail: one error enum per job, each variant's message saying
//! which pod, peer or file, what step, and each fact once ([`NodeError`]: pods, peers,
//! services and the node's start; [`CaptureError`]: a capture that cannot start;
//! [`StateError`]: a state file that cannot be read).

use crate::netns::NetnsError;
use crate::pcap::MAX_SNAPLEN;
use crate::switch::SwitchError;

use super::SpecError;

/// Why a node operation failed. Each message says which pod or peer, what step, and each
/// fact once.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A rule refused the node, pod or peer (names the field: `pod.ip`, `peer.name`).
    #[error(transparent)]
    Refused(#[from] SpecError),
    /// The switch refused the pod.
    #[error("pod {pod:?}: {source}")]
    Switch {
        /// Pod name.
        pod: String,
        /// The refusal.
        source: SwitchError,
    },
    /// Namespace handling failed (the error names the namespace).
    #[error("pod {pod:?}: {source}")]
    Netns {
        /// Pod name.
        pod: String,
        /// The failure.
        source: NetnsError,
    },
    /// The adopted namespace already has the pod's interface: someone else set this pod up.
    #[error("pod {pod:?}: namespace {netns:?} already has an {ifname} (another podswitch or network plugin runs a pod there?): remove that pod first, or pick another namespace or interface name")]
    NetnsBusy {
        /// Pod name.
        pod: String,
        /// Namespace.
        netns: String,
        /// The interface name.
        ifname: String,
    },
    /// Creating the TAP failed.
    #[error("pod {pod:?}: creating TAP {ifname} in namespace {netns:?}: {source}")]
    Tap {
        /// Pod name.
        pod: String,
        /// The interface name.
        ifname: String,
        /// Namespace.
        netns: String,
        /// The failure.
        source: std::io::Error,
    },
    /// Veth mode cannot run here (`node.pod_interface = "veth"`): the message names what the
    /// kernel lacks.
    #[error("node.pod_interface: {0}")]
    FastPathUnavailable(podswitch_fastpath::FastPathError),
    /// Putting a veth pod on the fast path failed.
    #[error("pod {pod:?}: {source}")]
    FastPath {
        /// Pod name.
        pod: String,
        /// The failure.
        source: podswitch_fastpath::FastPathError,
    },
    /// Configuring the pod's interfaces over netlink failed.
    #[error("pod {pod:?}: configuring {what} in namespace {netns:?}: {message}")]
    Netlink {
        /// Pod name.
        pod: String,
        /// Namespace.
        netns: String,
        /// The step.
        what: &'static str,
        /// The error.
        message: String,
    },
    /// No pod with that name.
    #[error("no pod named {0:?}")]
    NoSuchPod(String),
    /// No pod with that container ID and interface.
    #[error("no pod with container ID {container_id:?} and interface {ifname:?}")]
    NoSuchAttachment {
        /// Container ID.
        container_id: String,
        /// Interface name.
        ifname: String,
    },
    /// The switch could not start.
    #[error("starting the switch: {0}")]
    Start(SwitchError),
    /// The host interface could not be made, or the masquerade rules installed.
    #[error("node.{field}: {message}")]
    Host {
        /// `host_interface` or `masquerade`.
        field: &'static str,
        /// What failed.
        message: String,
    },
    /// The tunnel socket could not be bound.
    #[error("binding the VXLAN tunnel to {addr}: {source}")]
    Tunnel {
        /// The address.
        addr: std::net::SocketAddrV4,
        /// The error.
        source: std::io::Error,
    },
    /// The switch refused a peer change (its message names the peer).
    #[error(transparent)]
    Peer(SwitchError),
    /// No service with that name.
    #[error("no service named {0:?}")]
    NoSuchService(String),
    /// The switch refused a service change (its message names the service).
    #[error(transparent)]
    Service(SwitchError),
}

/// Why a capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Neither a pod nor a peer, or both.
    #[error("capture: name one pod (--pod) or one peer (--peer)")]
    Target,
    /// No pod of that name.
    #[error("capture: no pod named {0:?}")]
    NoSuchPod(String),
    /// No peer of that name.
    #[error("capture: no peer named {0:?}")]
    NoSuchPeer(String),
    /// The snap length is out of range.
    #[error("capture: snaplen {0} is not between 1 and {MAX_SNAPLEN}")]
    Snaplen(u32),
    /// The switch could not start it.
    #[error("capture: {0}")]
    Switch(#[from] SwitchError),
}

/// Why the state file could not be read (the node then forgets its runtime pods, peers and
/// services, with a warning).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file is there but could not be read.
    #[error("reading the state file: {0}")]
    Read(std::io::Error),
    /// The file is not a state file (cut short, or written by hand).
    #[error("state file unreadable: {0}")]
    Unreadable(serde_json::Error),
}
