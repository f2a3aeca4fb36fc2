//! What a running node shows outside its control socket: Prometheus metrics and a live web
//! view, served over HTTP when `node.metrics` is set.
//!
//! - this module: [`NodeState`], one snapshot of the node (pods, peers, tunnel, services,
//!   tables, workers, the etcd lease), taken at request time; it is the JSON of
//!   `GET /api/v1/state` and the source of every metric;
//! - `exposition`: the Prometheus text (a `prometheus-client` collector that encodes a
//!   snapshot);
//! - `server`: the HTTP server (hyper, on the control plane's tokio runtime) and its routes;
//! - `index.html`: the web view, embedded in the binary.
//!
//! Invariants: taking a snapshot never slows the data plane. Counters are read with relaxed
//! loads of what the workers publish once per round; tables are read from their published
//! snapshots; the only locks taken are the control plane's own (pods, peers, services, the
//! cluster status), never one a worker takes. Snapshots are taken off the runtime's thread
//! (`spawn_blocking`), since the pod lock is held across a pod's setup.

mod exposition;
mod server;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterStatus;
use crate::node::{FastPathStatus, Node, PeerSource};
use crate::pipeline::PortCounts;

pub use exposition::{encode_openmetrics, encode_prometheus};
pub use server::{bind, serve, ServerError, MAX_CONNECTIONS};

/// The shape version of [`NodeState`]'s JSON; raised only when a field changes meaning or
/// goes away (new fields may appear without it).
pub const STATE_SCHEMA: u32 = 1;

/// The crate's version, as `podswitch_build_info` and the state show it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One snapshot of a node: the JSON of `GET /api/v1/state` (see docs/metrics.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// [`STATE_SCHEMA`].
    pub schema: u32,
    /// podswitch's version.
    pub version: String,
    /// When the snapshot was taken, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node.
    pub node: NodeInfo,
    /// Node-wide frame counts.
    pub totals: Totals,
    /// Per data-plane thread.
    pub workers: Vec<WorkerState>,
    /// Pods, by name.
    pub pods: Vec<PodState>,
    /// The node's host interface, if it has one.
    #[serde(default)]
    pub host: Option<HostState>,
    /// Peer nodes, by name.
    pub peers: Vec<PeerState>,
    /// The VXLAN tunnel (all peers together), if the node has one.
    pub tunnel: Option<TunnelState>,
    /// Services, by name.
    pub services: Vec<ServiceState>,
    /// The MAC table.
    pub mac_table: TableState,
    /// Connection tracking (services).
    pub conntrack: TableState,
    /// The etcd lease and the store's health (with `[cluster]`).
    pub cluster: Option<ClusterStatus>,
    /// The kernel fast path (veth mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<FastPathStatus>,
}

/// The node's identity and pod network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Pod CIDR.
    pub pod_cidr: ipnet::Ipv4Net,
    /// The pods' gateway.
    pub gateway: Ipv4Addr,
    /// The pods' MTU.
    pub mtu: u16,
}

/// Node-wide counts: `rx = forwarded + delivered_locally + dropped`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Frames received from every port and the tunnel.
    pub rx: u64,
    /// Frames forwarded (to a port, flooded, or encapsulated).
    pub forwarded: u64,
    /// Frames the switch answered itself.
    pub delivered_locally: u64,
    /// Frames dropped, for any reason.
    pub dropped: u64,
    /// Transmit copies a full or failed port refused (apart from the sum above).
    pub tx_dropped: u64,
    /// Drops by reason label, non-zero only.
    pub drops: BTreeMap<String, u64>,
}

/// Frame and byte counts of a port or peer, from the switch's side: `rx` came from it, `tx`
/// went to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Frames received from it.
    pub rx_packets: u64,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Frames received from it and dropped.
    pub rx_dropped: u64,
    /// Frames sent to it.
    pub tx_packets: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Frames for it refused at egress.
    pub tx_dropped: u64,
}

impl From<&PortCounts> for Traffic {
    fn from(c: &PortCounts) -> Self {
        Self {
            rx_packets: c.rx_frames,
            rx_bytes: c.rx_bytes,
            rx_dropped: c.rx_dropped,
            tx_packets: c.tx_frames,
            tx_bytes: c.tx_bytes,
            tx_dropped: c.tx_dropped,
        }
    }
}

/// One data-plane thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerState {
    /// Frames it handled.
    pub frames: u64,
    /// Seconds spent in rounds that moved frames.
    pub busy_seconds: f64,
    /// Seconds spent idle (looking for frames, yielding, asleep).
    pub idle_seconds: f64,
    /// Stretches of rounds that took over 100 ms (the thread did not get a CPU).
    #[serde(default)]
    pub stalls: u64,
}

/// One pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: String,
    /// Its switch port.
    pub port: u16,
    /// Its counters.
    pub traffic: Traffic,
    /// Its frames dropped, by reason label (non-zero only).
    pub drops: BTreeMap<String, u64>,
}

/// The node's host interface (`podsw0`): the node's own traffic to pods and services, and
/// pod egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Its name on the node.
    pub ifname: String,
    /// Its MAC.
    pub mac: String,
    /// Its counters.
    pub traffic: Traffic,
    /// Its frames dropped, by reason label (non-zero only).
    pub drops: BTreeMap<String, u64>,
}

/// One peer node and what went through the tunnel to and from it (inner frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerState {
    /// Peer name.
    pub name: String,
    /// Its tunnel endpoint.
    pub underlay: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: ipnet::Ipv4Net,
    /// Where it came from (`config`, `runtime`, `etcd`).
    pub source: PeerSource,
    /// Inner frames and bytes to and from it.
    pub traffic: Traffic,
    /// Its datagrams (and frames for it) dropped, by reason label (non-zero only).
    pub drops: BTreeMap<String, u64>,
}

/// The tunnel socket: datagrams of every peer together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelState {
    /// Where it receives.
    pub local: SocketAddrV4,
    /// Its counters.
    pub traffic: Traffic,
    /// Datagrams dropped, by reason label (non-zero only).
    pub drops: BTreeMap<String, u64>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// Name.
    pub name: String,
    /// Virtual IP.
    pub vip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
    /// Where it came from.
    pub source: PeerSource,
    /// Its backends, in order.
    pub backends: Vec<BackendState>,
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendState {
    /// Its address.
    pub address: SocketAddrV4,
    /// Connections tracked to it.
    pub connections: u64,
}

/// A bounded table: entries, bound, and how often the bound refused one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableState {
    /// Entries now.
    pub entries: u64,
    /// Most entries (the MAC table: learned ones; static pod entries come on top).
    pub capacity: u64,
    /// Entries refused because the table was full, since the node started.
    pub full_events: u64,
    /// Entries forgotten before their timeout to make room, since the node started
    /// (connection tracking's not-yet-established or closed flows; 0 for the MAC table).
    #[serde(default)]
    pub evicted: u64,
}

/// Where the server takes its snapshots from: the running node and, with `[cluster]`, the
/// lease status the etcd agent keeps.
#[derive(Clone)]
pub struct StateSource {
    node: Arc<Node>,
    cluster: Option<Arc<Mutex<ClusterStatus>>>,
}

impl std::fmt::Debug for StateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSource")
            .field("node", &self.node.name())
            .finish()
    }
}

impl StateSource {
    /// Snapshots of `node`, with the lease status `cluster` (when the node has `[cluster]`).
    pub fn new(node: Arc<Node>, cluster: Option<Arc<Mutex<ClusterStatus>>>) -> Self {
        Self { node, cluster }
    }

    /// A snapshot now (blocks while a pod is being added or removed).
    pub fn state(&self) -> NodeState {
        let node = &self.node;
        let switch = node.switch();
        let totals = switch.metrics().snapshot();
        let fast_path = node.fast_path();
        let fast_forwarded = fast_path.as_ref().map_or(0, FastPathStatus::forwarded);
        let (drops_total, drops) = (totals.dropped_total(), node.drops_by_label());
        let frames = switch.worker_frames();
        let workers = switch
            .worker_time()
            .into_iter()
            .zip(frames)
            .zip(switch.worker_stalls())
            .map(|(((busy, idle), frames), stalls)| WorkerState {
                frames,
                busy_seconds: busy.as_secs_f64(),
                idle_seconds: idle.as_secs_f64(),
                stalls,
            })
            .collect();
        let pods = node
            .pods()
            .into_iter()
            .map(|p| PodState {
                ip: p.spec.ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
                name: p.spec.name,
                netns: p.spec.netns,
                mac: p.mac.to_string(),
                port: p.port,
                traffic: Traffic::from(&p.counters),
                drops: p.drops,
            })
            .collect();
        let host = switch.ports().into_iter().find_map(|r| match r.info.kind {
            crate::table::PortKind::Host { mac } => {
                let c = r.metrics.snapshot();
                Some(HostState {
                    ifname: r.info.name,
                    mac: mac.to_string(),
                    traffic: Traffic::from(&c),
                    drops: c.dropped.by_label(),
                })
            }
            _ => None,
        });
        let mut peer_counts = node.peer_counts();
        let peers = node
            .peers()
            .into_iter()
            .map(|p| {
                let counts = peer_counts.remove(&p.spec.name).unwrap_or_default();
                PeerState {
                    name: p.spec.name,
                    underlay: p.spec.underlay,
                    pod_cidr: p.spec.pod_cidr,
                    source: p.source,
                    traffic: Traffic::from(&counts),
                    drops: counts.dropped.by_label(),
                }
            })
            .collect();
        let tunnel = switch.tunnel().map(|(local, m)| {
            let c = m.snapshot();
            TunnelState {
                local,
                traffic: Traffic::from(&c),
                drops: c.dropped.by_label(),
            }
        });
        let services = node
            .services()
            .into_iter()
            .map(|s| ServiceState {
                backends: s
                    .spec
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BackendState {
                        address: *b,
                        connections: s.connections.get(i).copied().unwrap_or(0),
                    })
                    .collect(),
                name: s.spec.name,
                vip: s.spec.vip,
                port: s.spec.port,
                proto: s.spec.proto.to_string(),
                source: s.source,
            })
            .collect();
        let tables = switch.tables();
        let mac_table = TableState {
            entries: tables.mac.load().len() as u64,
            capacity: tables.mac.capacity() as u64,
            full_events: tables.mac.full_events(),
            evicted: 0,
        };
        let conntrack = TableState {
            entries: tables.conntrack.len() as u64,
            capacity: tables.conntrack.capacity() as u64,
            full_events: totals.dropped(crate::pipeline::DropReason::ConntrackFull),
            evicted: tables.conntrack.evicted(),
        };
        let cluster = self
            .cluster
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).snapshot());
        NodeState {
            schema: STATE_SCHEMA,
            version: VERSION.into(),
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            node: NodeInfo {
                name: node.name().into(),
                pod_cidr: node.pod_cidr(),
                gateway: node.gateway(),
                mtu: node.pod_mtu(),
            },
            totals: Totals {
                rx: totals.rx + fast_forwarded,
                forwarded: totals.forwarded + fast_forwarded,
                delivered_locally: totals.delivered_locally,
                dropped: drops_total,
                tx_dropped: totals.tx_dropped,
                drops,
            },
            workers,
            pods,
            host,
            peers,
            tunnel,
            services,
            mac_table,
            conntrack,
            cluster,
            fast_path,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node with one pod, one peer, a tunnel, a service and a lease.
    pub(crate) fn sample() -> NodeState {
        let traffic = Traffic {
            rx_packets: 10,
            rx_bytes: 1000,
            rx_dropped: 2,
            tx_packets: 8,
            tx_bytes: 800,
            tx_dropped: 0,
        };
        let spoofed: BTreeMap<String, u64> = [("spoofed_mac".to_string(), 2)].into();
        NodeState {
            schema: STATE_SCHEMA,
            version: VERSION.into(),
            time_ms: 1_700_000_000_000,
            node: NodeInfo {
                name: "node-a".into(),
                pod_cidr: "10.244.1.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 244, 1, 1),
                mtu: 1450,
            },
            totals: Totals {
                rx: 30,
                forwarded: 25,
                delivered_locally: 3,
                dropped: 2,
                tx_dropped: 1,
                drops: spoofed.clone(),
            },
            workers: vec![WorkerState {
                frames: 30,
                busy_seconds: 0.25,
                idle_seconds: 9.75,
                stalls: 0,
            }],
            pods: vec![PodState {
                name: "web".into(),
                netns: "web".into(),
                ip: Ipv4Addr::new(10, 244, 1, 10),
                mac: "02:42:0a:f4:01:0a".into(),
                port: 1,
                traffic,
                drops: spoofed,
            }],
            host: Some(HostState {
                ifname: "podsw0".into(),
                mac: "02:ef:00:00:00:01".into(),
                traffic,
                drops: BTreeMap::new(),
            }),
            peers: vec![PeerState {
                name: "node-b".into(),
                underlay: Ipv4Addr::new(192, 168, 77, 2),
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                source: PeerSource::Config,
                traffic,
                drops: [("vxlan_bad_vni".to_string(), 2)].into(),
            }],
            tunnel: Some(TunnelState {
                local: "192.168.77.1:8472".parse().unwrap(),
                traffic,
                drops: BTreeMap::new(),
            }),
            services: vec![ServiceState {
                name: "api".into(),
                vip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                proto: "tcp".into(),
                source: PeerSource::Runtime,
                backends: vec![BackendState {
                    address: "10.244.1.10:8080".parse().unwrap(),
                    connections: 3,
                }],
            }],
            mac_table: TableState {
                entries: 3,
                capacity: 16384,
                full_events: 0,
                evicted: 0,
            },
            conntrack: TableState {
                entries: 3,
                capacity: 262_144,
                full_events: 0,
                evicted: 0,
            },
            cluster: Some(ClusterStatus {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                prefix: "/coreos.com/network".into(),
                key: Some("/coreos.com/network/subnets/10.244.1.0-24".into()),
                lease_id: Some(0x1234),
                ttl_secs: Some(60),
                expires_in_secs: Some(42),
                healthy: true,
                ..ClusterStatus::default()
            }),
            fast_path: Some(FastPathStatus {
                hook: "tcx".into(),
                pods: 1,
                withdrawn: 0,
                packets: [("local".to_string(), 12), ("up_not_ipv4".to_string(), 2)].into(),
                flows: 3,
                flows_refused: 0,
            }),
        }
    }

    /// The JSON's shape is what docs/metrics.md promises scripts: these keys, these types.
    #[test]
    fn state_json_has_a_stable_shape() {
        let v = serde_json::to_value(sample()).expect("json");
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&v),
            [
                "cluster",
                "conntrack",
                "fast_path",
                "host",
                "mac_table",
                "node",
                "peers",
                "pods",
                "schema",
                "services",
                "time_ms",
                "totals",
                "tunnel",
                "version",
                "workers"
            ]
        );
        assert_eq!(v["schema"], 1);
        assert_eq!(
            keys(&v["host"]),
            ["drops", "ifname", "mac", "traffic"],
            "the host interface"
        );
        assert_eq!(
            keys(&v["pods"][0]),
            ["drops", "ip", "mac", "name", "netns", "port", "traffic"]
        );
        assert_eq!(
            keys(&v["pods"][0]["traffic"]),
            [
                "rx_bytes",
                "rx_dropped",
                "rx_packets",
                "tx_bytes",
                "tx_dropped",
                "tx_packets"
            ]
        );
        assert_eq!(v["pods"][0]["ip"], "10.244.1.10");
        assert_eq!(v["pods"][0]["drops"]["spoofed_mac"], 2);
        assert_eq!(
            keys(&v["peers"][0]),
            ["drops", "name", "pod_cidr", "source", "traffic", "underlay"]
        );
        assert_eq!(v["peers"][0]["source"], "config");
        assert_eq!(
            v["services"][0]["backends"][0]["address"],
            "10.244.1.10:8080"
        );
        assert_eq!(v["services"][0]["backends"][0]["connections"], 3);
        assert_eq!(
            keys(&v["mac_table"]),
            ["capacity", "entries", "evicted", "full_events"]
        );
        assert_eq!(v["node"]["pod_cidr"], "10.244.1.0/24");
        assert_eq!(v["workers"][0]["busy_seconds"], 0.25);
        assert_eq!(v["cluster"]["expires_in_secs"], 42);
        // And it reads back as it was.
        let back: NodeState = serde_json::from_value(v).expect("parse");
        assert_eq!(back, sample());
    }
}
