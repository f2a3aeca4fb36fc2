//! A lab's layout: its nodes, pods, addresses and namespaces, each node's config, and what
//! `up` prints. Pure: nothing here touches the machine.
//!
//! Invariants: node `i` (1-based) has underlay `192.168.77.<i>`, namespace `NAME-node<i>`,
//! control socket `/run/podswitch/NAME/node<i>.sock` and (without etcd) pod CIDR
//! `10.244.<i>.0/24`; pod `j` of a node is `NAME-n<i>p<j>` at `.9+j` of the node's subnet.
//! Every node config passes the same checks as a config file.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use podswitch::cluster::ClusterSpec;
use podswitch::config::Config;
use podswitch::node::{NodeSpec, PeerSpec, PodSpec};

/// Where the lab keeps its state (configs, logs, pid files) and its nodes' control sockets: a
/// directory inside the nodes' default one, where `podswitch nodes` looks too.
const STATE_DIR: &str = "/run/podswitch";

/// Most nodes in a lab (one /24 of pod CIDRs each under 10.244.0.0/16, underlay .1-.254).
pub(crate) const MAX_NODES: usize = 200;
/// Most pods per node (.10 to .249 of the node's /24).
pub(crate) const MAX_PODS: usize = 240;

/// The lab's etcd (`--etcd`) on the underlay: above every node's address.
pub(crate) const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
/// etcd's client port.
pub(crate) const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub(crate) const ETCD_PEER_PORT: u16 = 2380;
/// The etcd binary (Debian's `etcd-server`).
pub(crate) const ETCD_BIN: &str = "/usr/bin/etcd";
/// Flannel's network config the lab writes at `<prefix>/config`: the same pod network and
/// VXLAN settings as the lab without etcd.
pub(crate) const NETWORK_CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;
/// How long etcd may take to come up, and the nodes to see each other in it.
pub(crate) const ETCD_WAIT: Duration = Duration::from_secs(30);

/// The key prefix flannel's config and leases live under (the default of `[cluster]`).
pub(crate) fn flannel_prefix() -> String {
    ClusterSpec::new(Vec::new()).etcd_prefix
}

/// Why the lab could not be built or torn down.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LabError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A lab of that name exists.
    #[error("lab {0:?} is already up (run `podswitch-lab down --name {0}` first)")]
    Exists(String),
    /// No lab of that name is up (nor anything left of one).
    #[error("no lab called {0:?} is up (nothing of it found in /run/podswitch or /run/netns)")]
    NoSuchLab(String),
    /// This binary's own path is unknown (the hints printed name it).
    #[error("finding this binary: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// No podswitch binary for the nodes to run.
    #[error("no podswitch binary next to {} nor on PATH: give --podswitch PATH", .0.display())]
    NoPodswitch(PathBuf),
    /// Building or tearing down failed at a step.
    #[error("lab {lab:?}: {step}: {message}")]
    Step {
        /// Lab name.
        lab: String,
        /// What was being done.
        step: String,
        /// The error.
        message: String,
    },
}

/// A lab's layout.
#[derive(Debug, Clone)]
pub(crate) struct Lab {
    /// Lab name (prefix of every namespace).
    pub(crate) name: String,
    /// Number of nodes.
    pub(crate) nodes: usize,
    /// Pods per node.
    pub(crate) pods_per_node: usize,
    /// Data-plane threads per node (`node.workers`).
    pub(crate) workers: usize,
    /// Run an etcd and let the nodes lease their subnets there (`--etcd`).
    pub(crate) etcd: bool,
}

impl Lab {
    /// Checks the sizes and the name.
    pub(crate) fn new(name: &str, nodes: usize, pods_per_node: usize) -> Result<Self, LabError> {
        if name.is_empty()
            || name.len() > 20
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(LabError::Usage(format!(
                "--name {name:?}: use 1-20 letters, digits or '-'"
            )));
        }
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(LabError::Usage(format!(
                "--nodes {nodes}: must be 1..={MAX_NODES}"
            )));
        }
        if !(1..=MAX_PODS).contains(&pods_per_node) {
            return Err(LabError::Usage(format!(
                "--pods-per-node {pods_per_node}: must be 1..={MAX_PODS}"
            )));
        }
        Ok(Self {
            name: name.into(),
            nodes,
            pods_per_node,
            workers: 1,
            etcd: false,
        })
    }

    /// With `etcd`, runs an etcd and lets the nodes lease their subnets there, peers learnt
    /// from it (flannel's layout), instead of fixed pod CIDRs and static peers.
    pub(crate) fn with_etcd(mut self, etcd: bool) -> Self {
        self.etcd = etcd;
        self
    }

    /// Runs each node with `workers` data-plane threads (checked by the node's config).
    pub(crate) fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    pub(crate) fn dir(name: &str) -> PathBuf {
        Path::new(STATE_DIR).join(name)
    }

    pub(crate) fn underlay_ns(name: &str) -> String {
        format!("{name}-underlay")
    }

    pub(crate) fn node_ns(name: &str, i: usize) -> String {
        format!("{name}-node{i}")
    }

    pub(crate) fn etcd_ns(name: &str) -> String {
        format!("{name}-etcd")
    }

    /// etcd's client URL on the underlay.
    pub(crate) fn etcd_endpoint() -> String {
        format!("http://{ETCD_IP}:{ETCD_CLIENT_PORT}")
    }

    /// Pod `j` (1-based) of node `i`: its name, also its namespace's.
    pub(crate) fn pod_name(&self, i: usize, j: usize) -> String {
        format!("{}-n{i}p{j}", self.name)
    }

    /// The IP of pod `j` (1-based) of a node whose pod CIDR is `cidr`: `.10`, `.11`, ...;
    /// `None` if the CIDR is too small for it.
    pub(crate) fn pod_ip(cidr: Ipv4Net, j: usize) -> Option<Ipv4Addr> {
        let offset = u32::try_from(9 + j).ok()?;
        let ip = Ipv4Addr::from(u32::from(cidr.network()).checked_add(offset)?);
        (cidr.contains(&ip) && ip != cidr.broadcast()).then_some(ip)
    }

    pub(crate) fn pod_spec(&self, i: usize, j: usize, ip: Ipv4Addr) -> PodSpec {
        let pod = self.pod_name(i, j);
        PodSpec {
            name: pod.clone(),
            netns: pod,
            ip: Some(ip),
            mac: None,
            container_id: None,
            ifname: "eth0".into(),
        }
    }

    pub(crate) fn underlay_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 77, i as u8)
    }

    pub(crate) fn control(&self, i: usize) -> PathBuf {
        Self::dir(&self.name).join(format!("node{i}.sock"))
    }

    pub(crate) fn step(&self, step: impl Into<String>) -> impl FnOnce(String) -> LabError + '_ {
        let step = step.into();
        move |message| LabError::Step {
            lab: self.name.clone(),
            step,
            message,
        }
    }

    /// The configuration of node `i`: its pods and every other node as a peer; with etcd, a
    /// `[cluster]` table instead, and no pods (they are added once the node knows its subnet).
    pub(crate) fn node_config(&self, i: usize) -> Result<Config, LabError> {
        let name = Self::node_ns(&self.name, i);
        let mut node = NodeSpec::new(&name, Self::pod_cidr(i));
        node.netns = Some(name);
        node.underlay = Some(Self::underlay_ip(i));
        node.workers = self.workers;
        node.cpus = spread_cpus(i, self.workers, &podswitch::switch::allowed_cpus());
        let node = file_settings(node, &self.control(i), self.etcd)
            .map_err(|e| self.step(format!("node {i} config"))(e))?;
        if self.etcd {
            return Ok(Config {
                node,
                pods: Vec::new(),
                peers: Vec::new(),
                services: Vec::new(),
                cluster: Some(ClusterSpec::new(vec![Self::etcd_endpoint()])),
            });
        }
        let pods = (1..=self.pods_per_node)
            .filter_map(|j| Some(self.pod_spec(i, j, Self::pod_ip(Self::pod_cidr(i), j)?)))
            .collect();
        let peers = (1..=self.nodes)
            .filter(|&k| k != i)
            .map(|k| PeerSpec {
                name: Self::node_ns(&self.name, k),
                underlay: Self::underlay_ip(k),
                pod_cidr: Self::pod_cidr(k),
                vtep_mac: None,
            })
            .collect();
        Ok(Config {
            node,
            pods,
            peers,
            services: Vec::new(),
            cluster: None,
        })
    }

    /// The config file of node `i`, checked by the same rules as any config file.
    pub(crate) fn node_config_file(&self, i: usize) -> Result<String, LabError> {
        let cfg = self.node_config(i)?;
        cfg.validate()
            .map_err(|e| self.step(format!("node {i} config"))(e.to_string()))?;
        let text = cfg
            .to_toml()
            .map_err(|e| self.step(format!("node {i} config"))(e.to_string()))?;
        Ok(format!(
            "# podswitch lab {:?}, node {i} of {}\n{text}",
            self.name, self.nodes
        ))
    }

    pub(crate) fn pod_cidr(i: usize) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24).unwrap_or_default()
    }

    /// How to reach the pods; `cidrs[i - 1]` is node `i`'s pod CIDR, `cmd` how the user runs
    /// podswitch and `lab` this binary ([`podswitch::daemon::command_name`]).
    pub(crate) fn describe(&self, cidrs: &[Ipv4Net], cmd: &str, lab: &str) -> String {
        let mut s = format!(
            "lab {:?}: {} nodes on underlay 192.168.77.0/24 (namespace {})\n",
            self.name,
            self.nodes,
            Self::underlay_ns(&self.name)
        );
        if self.etcd {
            let _ = writeln!(
                s,
                "etcd: {} (namespace {}), subnets leased under {}/subnets/\n  ip netns exec {} etcdctl get --prefix {}/subnets/",
                Self::etcd_endpoint(),
                Self::etcd_ns(&self.name),
                flannel_prefix(),
                Self::etcd_ns(&self.name),
                flannel_prefix(),
            );
        }
        // (pod, ip) of the first pod, and of another to ping from it: the first of another
        // node if there is one, else the second of the same node.
        let mut first: Option<String> = None;
        let mut other: Option<Ipv4Addr> = None;
        for (i, cidr) in (1..=self.nodes).zip(cidrs.iter().copied()) {
            let _ = writeln!(
                s,
                "node {i}: namespace {}, underlay {}, pods {cidr}, control {}",
                Self::node_ns(&self.name, i),
                Self::underlay_ip(i),
                self.control(i).display()
            );
            for j in 1..=self.pods_per_node {
                let pod = self.pod_name(i, j);
                let Some(ip) = Self::pod_ip(cidr, j) else {
                    continue;
                };
                match first {
                    None => first = Some(pod.clone()),
                    // Another node's first pod is the better example (VXLAN).
                    Some(_) if j == 1 || other.is_none() => other = Some(ip),
                    Some(_) => {}
                }
                let _ = writeln!(
                    s,
                    "  pod {pod:<16} {ip:<14} ip netns exec {pod} ping <pod IP>"
                );
            }
        }
        if let (Some(from), Some(to)) = (first, other) {
            let _ = write!(
                s,
                "try: ip netns exec {from} ping -c3 {to}\n     ip netns exec {} ping -c3 {to}   (a node reaches every pod through podsw0)\n     ",
                Self::node_ns(&self.name, 1)
            );
        } else {
            s.push_str("try: ");
        }
        let _ = write!(
            s,
            "{cmd} pod list --control {}\n     {lab} down --name {}",
            self.control(1).display(),
            self.name
        );
        s
    }
}

/// `node` with the settings only a config file gives (the library's API leaves them to the
/// file): its control socket, and with `leased` no pod CIDR (the node leases one from etcd).
/// Set through the file's schema, as a config file would.
fn file_settings(node: NodeSpec, control: &Path, leased: bool) -> Result<NodeSpec, String> {
    let mut table = serde_json::to_value(&node).map_err(|e| e.to_string())?;
    let fields = table
        .as_object_mut()
        .ok_or_else(|| "the node table is not a table".to_string())?;
    fields.insert("control".into(), serde_json::json!(control));
    if leased {
        fields.remove("pod_cidr");
    }
    serde_json::from_value(table).map_err(|e| e.to_string())
}

/// The CPUs of node `i`'s `workers` on a machine whose process may use `allowed`: the nodes
/// spread over the CPUs from the last one down (node 1 on the last, node 2 on the one before,
/// ...), so that no two nodes share a CPU while there are CPUs enough (nodes on one CPU take
/// turns at forwarding: one that does not get it stalls). `None` (not pinned) if the kernel
/// does not say which CPUs are allowed.
fn spread_cpus(i: usize, workers: usize, allowed: &[usize]) -> Option<Vec<usize>> {
    if allowed.is_empty() {
        return None;
    }
    let first = (i - 1) * workers;
    Some(
        (first..first + workers)
            .map(|k| allowed[allowed.len() - 1 - k % allowed.len()])
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_spread_over_the_cpus_from_the_last() {
        assert_eq!(spread_cpus(1, 1, &[0, 1]), Some(vec![1]));
        assert_eq!(spread_cpus(2, 1, &[0, 1]), Some(vec![0]));
        assert_eq!(
            spread_cpus(3, 1, &[0, 1]),
            Some(vec![1]),
            "more nodes than CPUs"
        );
        assert_eq!(spread_cpus(2, 2, &[0, 1, 2, 3]), Some(vec![1, 0]));
        assert_eq!(spread_cpus(1, 1, &[]), None);
        // Every node's config carries its own.
        let lab = Lab::new("t", 2, 1).expect("lab");
        let cpus: Vec<_> = (1..=2)
            .map(|i| lab.node_config(i).unwrap().node.cpus)
            .collect();
        let allowed = podswitch::switch::allowed_cpus();
        assert!(
            cpus[0] != cpus[1] || allowed.len() < 2,
            "two nodes on {allowed:?}: {cpus:?}"
        );
    }

    #[test]
    fn pods_are_numbered_from_dot_ten_of_the_nodes_cidr() {
        let cidr: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        assert_eq!(Lab::pod_ip(cidr, 1), Some(Ipv4Addr::new(10, 244, 7, 10)));
        assert_eq!(Lab::pod_ip(cidr, 2), Some(Ipv4Addr::new(10, 244, 7, 11)));
        assert_eq!(
            Lab::pod_ip(cidr, MAX_PODS),
            Some(Ipv4Addr::new(10, 244, 7, 249))
        );
        let small: Ipv4Net = "10.244.7.0/28".parse().unwrap();
        assert_eq!(Lab::pod_ip(small, 5), Some(Ipv4Addr::new(10, 244, 7, 14)));
        assert_eq!(Lab::pod_ip(small, 6), None, "the broadcast address");
    }

    #[test]
    fn with_etcd_a_node_has_a_cluster_table_and_no_cidr_peers_or_pods() {
        let lab = Lab::new("t", 3, 2).unwrap().with_etcd(true);
        let cfg = lab.node_config(2).unwrap();
        cfg.validate().unwrap();
        assert!(
            cfg.node.cidr().is_err(),
            "no pod CIDR: {:?}",
            cfg.node.cidr()
        );
        assert_eq!(cfg.node.control_path(), lab.control(2));
        assert!(cfg.peers.is_empty() && cfg.pods.is_empty());
        assert_eq!(
            cfg.cluster,
            Some(ClusterSpec::new(vec!["http://192.168.77.254:2379".into()]))
        );
        let text = lab.node_config_file(2).unwrap();
        assert!(text.contains("[cluster]"), "{text}");

        let plain = Lab::new("t", 3, 2).unwrap().node_config(2).unwrap();
        assert_eq!(
            plain.node.cidr().ok(),
            Some("10.244.2.0/24".parse().unwrap())
        );
        assert_eq!(
            plain.node.control_path(),
            Path::new("/run/podswitch/t/node2.sock")
        );
        assert_eq!(plain.peers.len(), 2);
        let ips: Vec<_> = plain.pods.iter().map(|p| p.ip_text()).collect();
        assert_eq!(ips, ["10.244.2.10", "10.244.2.11"]);
    }

    #[test]
    fn the_network_config_is_one_flannel_accepts() {
        // The pod network and VXLAN settings of the lab without etcd (flannel's parser itself
        // is tested in the library; `tests/daemon.rs` runs a lab on this config).
        let net: serde_json::Value = serde_json::from_str(NETWORK_CONFIG).unwrap();
        assert_eq!(net["Network"], "10.244.0.0/16");
        assert_eq!(net["SubnetLen"], 24);
        assert_eq!(net["Backend"]["Type"], "vxlan");
        assert_eq!(net["Backend"]["VNI"], 1);
        assert_eq!(net["Backend"]["Port"], 8472);
        let lab = Lab::new("t", 2, 1).unwrap();
        let node = lab.node_config(2).unwrap().node;
        assert_eq!(node.cidr().ok(), Some("10.244.2.0/24".parse().unwrap()));
    }
}
