//! The control protocol: what a client asks ([`Request`]) and what the node answers
//! ([`Response`]), one JSON object per line, and the frames of a capture's stream
//! ([`CaptureSpec`], [`CaptureEnd`], [`CAPTURE_RECORD`], [`CAPTURE_END`]).
//!
//! Requests are tagged by `op`, responses by `result` (with their payload in `data`):
//!
//! ```text
//! > {"op":"pod_add","name":"web","netns":"web","ip":"10.244.1.10"}
//! < {"result":"pod","data":{"spec":{"name":"web","netns":"web","ip":"10.244.1.10"},...}}
//! > {"op":"status"}
//! < {"result":"status","data":{"node":"node-a","pods":1,"rx":0,...}}
//! > {"op":"pod_del","name":"nope"}
//! < {"result":"error","data":{"message":"no pod named \"nope\""}}
//! ```
//!
//! Invariants: the wire shape is stable (tests pin it); fields added later are optional
//! (`#[serde(default)]`) so an older node's answers still parse; a request with an unknown
//! field is refused (`deny_unknown_fields`), an error kind this client does not know parses
//! as [`ErrorKind::Other`]. The specs and statuses a request or response carries are the
//! node's own types (one shape per concept: the config file, the CLI, etcd and the node use
//! them too); this module only frames them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::node::{
    FdbEntry, FlowStatus, PeerSpec, PeerStatus, PodSpec, PodStatus, ServiceSpec, ServiceStatus,
};

/// Longest request line the server reads, in bytes without the newline: 16 MiB (a service's
/// at most 6552 backends take some 150 KiB). A connection's buffer grows only as its line arrives.
pub const MAX_LINE: usize = 16 * 1024 * 1024;
/// Longest response line the client reads, in bytes (a full MAC table fits many times).
pub(crate) const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// A request to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Add a pod (CNI ADD).
    PodAdd(PodSpec),
    /// Remove a pod (CNI DEL).
    PodDel {
        /// Pod name.
        name: String,
    },
    /// Remove the pod attached as `ifname` of container `container_id` (CNI DEL knows only
    /// those). A pod the node does not know is an error of kind [`ErrorKind::NotFound`].
    PodDelByContainer {
        /// The container runtime's ID (the pod's `container_id`).
        container_id: String,
        /// The pod's interface name (default `eth0`).
        #[serde(default = "crate::node::spec::default_ifname")]
        ifname: String,
    },
    /// The node's pod network: what a CNI plugin fills an empty IPAM range with and returns.
    NodeInfo,
    /// List the pods.
    PodList,
    /// Dump the MAC table.
    Fdb,
    /// Node-wide counters.
    Status,
    /// Replace the running daemon's binary without stopping its pods: the daemon execs
    /// `binary` (default: the one it was started from) in its own process, handing over the
    /// pods' TAPs and the tracked flows.
    Upgrade {
        /// The new binary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<PathBuf>,
    },
    /// Add a peer node (its pod CIDR becomes reachable through the tunnel).
    PeerAdd(PeerSpec),
    /// Remove a peer node.
    PeerDel {
        /// Peer node name.
        name: String,
    },
    /// List the peer nodes.
    PeerList,
    /// Add a service, or replace the one of the same name.
    ServiceAdd(ServiceSpec),
    /// Remove a service. One the node does not know is an error of kind
    /// [`ErrorKind::NotFound`].
    ServiceDel {
        /// Service name.
        name: String,
    },
    /// List the services ([`Response::Services`]).
    ServiceList,
    /// List the flows connection tracking follows ([`Response::Flows`]).
    Conntrack,
    /// Copy the frames of a pod or a peer: answered by [`Response::Capture`], then a stream
    /// of copies on the same connection until the capture ends (see [`CaptureSpec`]).
    Capture(CaptureSpec),
}

/// What `podswitch capture` asks for: the frames one pod's port receives and sends, or the
/// inner frames exchanged with one peer through the tunnel.
///
/// The stream that follows [`Response::Capture`] is binary: frames, each a tag byte and its
/// body, the last one an end. Tag [`CAPTURE_RECORD`]: a pcap record (16-byte header, then as
/// many bytes as its captured length says, at most the snap length). Tag [`CAPTURE_END`]: a
/// [`CaptureEnd`] as one JSON line; the server closes the connection after it. The client
/// stops a capture by shutting down its side for writing (the server then sends the end), or
/// by closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// The pod whose port to capture on: what it sends and what the switch hands it.
    #[arg(long, conflicts_with = "peer")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The peer node whose tunnel traffic to capture, decapsulated: the inner Ethernet frames
    /// sent to it (after segmentation) and received from it.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Bytes kept of each frame (1 to 262144).
    #[arg(long, default_value_t = crate::pcap::MAX_SNAPLEN)]
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
    /// Stop after this many frames.
    #[arg(long, short = 'c')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

fn default_snaplen() -> u32 {
    crate::pcap::MAX_SNAPLEN
}

/// Tag of a capture stream frame holding one pcap record.
pub const CAPTURE_RECORD: u8 = b'P';
/// Tag of the last frame of a capture stream: a [`CaptureEnd`] JSON line.
pub const CAPTURE_END: u8 = b'E';

/// How a capture ended, as the server tells it last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureEnd {
    /// Copies sent.
    pub captured: u64,
    /// Copies dropped because the reader fell behind.
    pub dropped: u64,
    /// Why it ended (the count was reached, the client stopped it, the pod is gone...).
    pub reason: String,
}

/// The node's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", content = "data", rename_all = "snake_case")]
pub enum Response {
    /// Done (pod removed).
    Ok,
    /// One pod (the one added).
    Pod(PodStatus),
    /// Every pod.
    Pods(Vec<PodStatus>),
    /// The MAC table.
    Fdb(Vec<FdbEntry>),
    /// The peer nodes.
    Peers(Vec<PeerStatus>),
    /// The services, by name.
    Services(Vec<ServiceStatus>),
    /// The tracked flows through services.
    Flows(Vec<FlowStatus>),
    /// Node-wide counters: `rx = forwarded + delivered_locally + dropped`.
    Status {
        /// Node name.
        node: String,
        /// Number of pods.
        pods: usize,
        /// Frames received on every port.
        rx: u64,
        /// Frames forwarded to another port or peer.
        forwarded: u64,
        /// Frames answered by the switch itself (ARP, ping of the gateway).
        delivered_locally: u64,
        /// Frames dropped, for any reason.
        dropped: u64,
        /// Frames dropped by reason label (`"spoofed_mac"`), non-zero reasons only; empty from
        /// older nodes.
        #[serde(default)]
        drops_by_reason: std::collections::BTreeMap<String, u64>,
        /// Frames handled by each data-plane thread.
        #[serde(default)]
        workers: Vec<u64>,
        /// Data-plane stalls (rounds over 100 ms), all workers together.
        #[serde(default)]
        stalls: u64,
        /// The node's lease and the store's health (with `[cluster]`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<crate::cluster::ClusterStatus>,
        /// The kernel fast path (veth mode): its pods and packets by path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fast_path: Option<crate::node::FastPathStatus>,
    },
    /// An upgrade is under way ([`Request::Upgrade`]): the daemon execs `binary` once this
    /// response is sent.
    Upgrading {
        /// The new binary.
        binary: PathBuf,
        /// Its `--version`.
        version: String,
    },
    /// The node's pod network ([`Request::NodeInfo`]).
    Node {
        /// Node name.
        name: String,
        /// The node's pod CIDR.
        pod_cidr: ipnet::Ipv4Net,
        /// The pods' default gateway.
        gateway: std::net::Ipv4Addr,
        /// The pods' MTU.
        mtu: u16,
    },
    /// A capture started ([`Request::Capture`]); its stream follows this line.
    Capture {
        /// Bytes kept of each frame at most.
        snaplen: u32,
        /// The pcap link type of the records (1: Ethernet).
        linktype: u32,
    },
    /// The request failed; the message says why, the kind (when there is one) what a program
    /// may act on without reading the message.
    Error {
        /// What went wrong.
        message: String,
        /// What kind of failure, for programs (absent: any other failure).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<ErrorKind>,
    },
}

/// What kind of failure an error response reports (`"not_found"`, `"refused"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such pod, peer or service (a delete of something the node does not know).
    NotFound,
    /// A rule refused the pod or peer (the message names the field).
    Refused,
    /// A kind this client does not know (sent by a newer node).
    #[serde(other)]
    Other,
}

impl Response {
    /// An error response without a kind.
    pub(crate) fn error(message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
            kind: None,
        }
    }

    /// An error response of `kind`.
    pub(crate) fn error_of(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
            kind: Some(kind),
        }
    }
}
