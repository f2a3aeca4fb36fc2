//! `podswitch lab`: a whole cluster on one machine, for newcomers and tests.
//!
//! `lab up` builds, for a lab called `NAME`:
//! - an underlay namespace `NAME-underlay` holding a bridge `br0` (the "switch" between nodes);
//! - per node `i` (1-based) a host namespace `NAME-node<i>`, joined to `br0` by a veth whose
//!   node end is `eth0` with `192.168.77.<i>/24`;
//! - per node a `podswitch run` daemon inside that namespace (config in `/run/podswitch/NAME/`,
//!   `node.netns` set), owning pod CIDR `10.244.<i>.0/24`, with every other node as a VXLAN peer
//!   and `M` pods `NAME-n<i>p<j>` at `10.244.<i>.<9+j>`.
//!
//! With `--etcd` the nodes lease their subnets instead, as flannel's do: the lab also runs an
//! etcd (Debian's `etcd-server`, `/usr/bin/etcd`) in a namespace `NAME-etcd` joined to `br0`
//! at `192.168.77.254` (clients on port 2379, also on 127.0.0.1 inside that namespace; peers on
//! 2380; data dir, log and pid file in `/run/podswitch/NAME/`), writes flannel's network config
//! (`10.244.0.0/16`, `/24` subnets, VXLAN VNI 1 port 8472) at `/coreos.com/network/config`, and
//! gives every node a `[cluster]` table instead of a pod CIDR and `[[peers]]`. The nodes start
//! without pods; once each is up, the lab asks it which subnet it leased and adds its pods at
//! `.10`, `.11`, ... of that subnet, then waits (bounded) until every node has every other
//! node as a peer from etcd.
//!
//! `lab down` stops the daemons (they remove their pods), then etcd if there is one, and
//! deletes the node, etcd and underlay namespaces and the state directory (etcd's data with
//! it). Everything lives in namespaces the lab made, with addresses in 10.244.0.0/16 and
//! 192.168.77.0/24; nothing is routed to the machine's own interfaces. Links are made over
//! rtnetlink, like the pods' own.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use crate::cluster::ClusterSpec;
use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::netns::NetNs;
use crate::node::spec::CONTROL_DIR;
use crate::node::{link_index, with_netlink, NodeSpec, PeerSource, PeerSpec, PodSpec};

/// Most nodes in a lab (one /24 of pod CIDRs each under 10.244.0.0/16, underlay .1-.254).
pub(crate) const MAX_NODES: usize = 200;
/// Most pods per node (.10 to .249 of the node's /24).
pub(crate) const MAX_PODS: usize = 240;

/// The lab's etcd (`--etcd`) on the underlay: above every node's address.
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
/// etcd's client port.
const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
const ETCD_PEER_PORT: u16 = 2380;
/// The etcd binary (Debian's `etcd-server`).
const ETCD_BIN: &str = "/usr/bin/etcd";
/// Flannel's network config the lab writes at `<prefix>/config`: the same pod network and
/// VXLAN settings as the lab without etcd.
pub(crate) const NETWORK_CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;
/// How long etcd may take to come up, and the nodes to see each other in it.
const ETCD_WAIT: Duration = Duration::from_secs(30);

/// Why the lab could not be built or torn down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A lab of that name exists.
    #[error("lab {0:?} is already up (run `podswitch lab down --name {0}` first)")]
    Exists(String),
    /// No lab of that name is up (nor anything left of one).
    #[error("no lab called {0:?} is up (nothing of it found in /run/podswitch or /run/netns)")]
    NoSuchLab(String),
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
pub struct Lab {
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
    pub fn new(name: &str, nodes: usize, pods_per_node: usize) -> Result<Self, LabError> {
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
    pub fn with_etcd(mut self, etcd: bool) -> Self {
        self.etcd = etcd;
        self
    }

    /// Runs each node with `workers` data-plane threads (checked by the node's config).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    fn dir(name: &str) -> PathBuf {
        Path::new(CONTROL_DIR).join(name)
    }

    fn underlay_ns(name: &str) -> String {
        format!("{name}-underlay")
    }

    fn node_ns(name: &str, i: usize) -> String {
        format!("{name}-node{i}")
    }

    fn etcd_ns(name: &str) -> String {
        format!("{name}-etcd")
    }

    /// etcd's client URL on the underlay.
    fn etcd_endpoint() -> String {
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

    fn pod_spec(&self, i: usize, j: usize, ip: Ipv4Addr) -> PodSpec {
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

    fn underlay_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 77, i as u8)
    }

    fn control(&self, i: usize) -> PathBuf {
        Self::dir(&self.name).join(format!("node{i}.sock"))
    }

    fn step(&self, step: impl Into<String>) -> impl FnOnce(String) -> LabError + '_ {
        let step = step.into();
        move |message| LabError::Step {
            lab: self.name.clone(),
            step,
            message,
        }
    }

    /// The configuration of node `i`: its pods and every other node as a peer; with etcd, a
    /// `[cluster]` table instead, and no pods (they are added once the node knows its subnet).
    pub(crate) fn node_config(&self, i: usize) -> Config {
        let name = Self::node_ns(&self.name, i);
        let mut node = NodeSpec::new(&name, Self::pod_cidr(i));
        node.netns = Some(name);
        node.underlay = Some(Self::underlay_ip(i));
        node.control = Some(self.control(i));
        node.workers = self.workers;
        node.cpus = spread_cpus(i, self.workers, &crate::dataplane::allowed_cpus());
        if self.etcd {
            node.pod_cidr = None;
            return Config {
                node,
                pods: Vec::new(),
                peers: Vec::new(),
                services: Vec::new(),
                cluster: Some(ClusterSpec::new(vec![Self::etcd_endpoint()])),
            };
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
        Config {
            node,
            pods,
            peers,
            services: Vec::new(),
            cluster: None,
        }
    }

    /// The config file of node `i`, checked by the same rules as any config file.
    fn node_config_file(&self, i: usize) -> Result<String, LabError> {
        let cfg = self.node_config(i);
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

    fn pod_cidr(i: usize) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::new(10, 244, i as u8, 0), 24).unwrap_or_default()
    }

    /// Builds the lab and starts its daemons (`podswitch` binary at `exe`). On failure,
    /// everything made so far is torn down.
    pub fn up(&self, exe: &Path) -> Result<String, LabError> {
        let dir = Self::dir(&self.name);
        if dir.exists() || NetNs::named(&Self::underlay_ns(&self.name)).is_ok_and(|n| n.exists()) {
            return Err(LabError::Exists(self.name.clone()));
        }
        let r = self.build(exe, &dir);
        if r.is_err() {
            let _ = down(&self.name);
        }
        r
    }

    fn build(&self, exe: &Path, dir: &Path) -> Result<String, LabError> {
        std::fs::create_dir_all(dir).map_err(|e| self.step("state directory")(e.to_string()))?;
        let underlay = NetNs::create(&Self::underlay_ns(&self.name))
            .map_err(|e| self.step("underlay namespace")(e.to_string()))?;
        underlay
            .run(|| {
                with_netlink(|h| async move {
                    h.link()
                        .add(LinkBridge::new("br0").up().build())
                        .execute()
                        .await
                        .map_err(|e| ("bridge br0", e.to_string()))?;
                    let lo = link_index(&h, "lo").await.map_err(|e| ("lo", e))?;
                    h.link()
                        .set(LinkUnspec::new_with_index(lo).up().build())
                        .execute()
                        .await
                        .map_err(|e| ("lo up", e.to_string()))
                })
            })
            .map_err(|e| self.step("underlay namespace")(e.to_string()))?
            .map_err(|(what, e)| self.step(what)(e))?;
        for i in 1..=self.nodes {
            self.wire_host(
                &underlay,
                &Self::node_ns(&self.name, i),
                &format!("node {i}"),
                (format!("u{i}"), format!("n{i}")),
                Self::underlay_ip(i),
            )?;
        }
        if self.etcd {
            self.start_etcd(&underlay, dir)?;
        }
        let mut children = Vec::new();
        for i in 1..=self.nodes {
            let cfg_path = dir.join(format!("node{i}.toml"));
            std::fs::write(&cfg_path, self.node_config_file(i)?)
                .map_err(|e| self.step("writing configs")(e.to_string()))?;
            let log = std::fs::File::create(dir.join(format!("node{i}.log")))
                .map_err(|e| self.step("log file")(e.to_string()))?;
            let err = log
                .try_clone()
                .map_err(|e| self.step("log file")(e.to_string()))?;
            let child = Command::new(exe)
                .args(["run", "--config"])
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|e| self.step(format!("starting node {i}"))(e.to_string()))?;
            std::fs::write(dir.join(format!("node{i}.pid")), child.id().to_string())
                .map_err(|e| self.step("pid file")(e.to_string()))?;
            children.push((i, child));
        }
        for (i, mut child) in children {
            let control = self.control(i);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(dir.join(format!("node{i}.log")))
                        .unwrap_or_default();
                    return Err(self.step(format!("node {i}"))(format!(
                        "exited with {status}:\n{log}"
                    )));
                }
                if matches!(
                    control::call(&control, &Request::Status, Duration::from_secs(2)),
                    Ok(Response::Status { .. })
                ) {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(dir.join(format!("node{i}.log")))
                        .unwrap_or_default();
                    return Err(self.step(format!("node {i}"))(format!(
                        "did not answer on its control socket within 30 s:\n{log}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let cidrs = if self.etcd {
            let cidrs = self.add_leased_pods()?;
            self.wait_for_etcd_peers()?;
            cidrs
        } else {
            (1..=self.nodes).map(Self::pod_cidr).collect()
        };
        Ok(self.describe(&cidrs, &command_name(exe)))
    }

    /// Creates namespace `ns` (`what` in errors), joins it to the underlay bridge by a veth
    /// (`ends`: its names in the underlay namespace, the host's end becoming `eth0`) and gives
    /// it `ip`/24.
    fn wire_host(
        &self,
        underlay: &NetNs,
        ns: &str,
        what: &str,
        ends: (String, String),
        ip: Ipv4Addr,
    ) -> Result<NetNs, LabError> {
        let node =
            NetNs::create(ns).map_err(|e| self.step(format!("{what} namespace"))(e.to_string()))?;
        let node_file = std::fs::File::open(node.path())
            .map_err(|e| self.step(format!("{what} namespace"))(e.to_string()))?;
        let (bridge_end, node_end) = ends;
        underlay
            .run(|| {
                with_netlink(|h| async move {
                    h.link()
                        .add(LinkVeth::new(&bridge_end, &node_end).build())
                        .execute()
                        .await
                        .map_err(|e| ("veth", e.to_string()))?;
                    let br = link_index(&h, "br0").await.map_err(|e| ("br0", e))?;
                    let b = link_index(&h, &bridge_end).await.map_err(|e| ("veth", e))?;
                    h.link()
                        .set(LinkUnspec::new_with_index(b).controller(br).up().build())
                        .execute()
                        .await
                        .map_err(|e| ("veth to br0", e.to_string()))?;
                    let n = link_index(&h, &node_end).await.map_err(|e| ("veth", e))?;
                    h.link()
                        .set(
                            LinkUnspec::new_with_index(n)
                                .setns_by_fd(node_file.as_raw_fd())
                                .name("eth0")
                                .build(),
                        )
                        .execute()
                        .await
                        .map_err(|e| ("veth into the namespace", e.to_string()))
                })
            })
            .map_err(|e| self.step(format!("{what} wiring"))(e.to_string()))?
            .map_err(|(step, e)| self.step(format!("{what} {step}"))(e))?;
        node.run(|| {
            with_netlink(|h| async move {
                let lo = link_index(&h, "lo").await.map_err(|e| ("lo", e))?;
                let eth0 = link_index(&h, "eth0").await.map_err(|e| ("eth0", e))?;
                for idx in [lo, eth0] {
                    h.link()
                        .set(LinkUnspec::new_with_index(idx).up().build())
                        .execute()
                        .await
                        .map_err(|e| ("link up", e.to_string()))?;
                }
                h.address()
                    .add(eth0, ip.into(), 24)
                    .execute()
                    .await
                    .map_err(|e| ("underlay address", e.to_string()))
            })
        })
        .map_err(|e| self.step(format!("{what} address"))(e.to_string()))?
        .map_err(|(step, e)| self.step(format!("{what} {step}"))(e))?;
        Ok(node)
    }

    /// Starts the lab's etcd in its namespace on the underlay (pid file `etcd.pid`, data dir
    /// `etcd/`, log `etcd.log` in `dir`), waits until it answers and writes the network config.
    fn start_etcd(&self, underlay: &NetNs, dir: &Path) -> Result<(), LabError> {
        let member = Self::etcd_ns(&self.name);
        let ns = self.wire_host(
            underlay,
            &member,
            "etcd",
            ("ue".into(), "ne".into()),
            ETCD_IP,
        )?;
        let data = dir.join("etcd");
        let log_path = dir.join("etcd.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| self.step("etcd log file")(format!("{}: {e}", log_path.display())))?;
        let err = log
            .try_clone()
            .map_err(|e| self.step("etcd log file")(format!("{}: {e}", log_path.display())))?;
        let client = Self::etcd_endpoint();
        let clients = format!("{client},http://127.0.0.1:{ETCD_CLIENT_PORT}");
        let peer = format!("http://{ETCD_IP}:{ETCD_PEER_PORT}");
        // Spawned from a thread inside the namespace: the child is born there.
        let mut child = ns
            .run(|| {
                Command::new(ETCD_BIN)
                    .args(["--name", &member])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--listen-client-urls", &clients])
                    .args(["--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &format!("{member}={peer}")])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", &member])
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(err)
                    .process_group(0)
                    .spawn()
            })
            .map_err(|e| self.step("etcd namespace")(e.to_string()))?
            .map_err(|e| {
                self.step("starting etcd")(format!(
                    "{ETCD_BIN}: {e} (it comes with Debian's etcd-server package)"
                ))
            })?;
        std::fs::write(dir.join("etcd.pid"), child.id().to_string())
            .map_err(|e| self.step("etcd pid file")(e.to_string()))?;
        let key = format!("{}/config", crate::cluster::flannel::DEFAULT_PREFIX);
        let deadline = Instant::now() + ETCD_WAIT;
        let written = ns
            .run(|| -> Result<(), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("tokio runtime: {e}"))?;
                loop {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "exited with {status}; its log {}:\n{}",
                            log_path.display(),
                            std::fs::read_to_string(&log_path).unwrap_or_default()
                        ));
                    }
                    let put = rt.block_on(put_key(&client, &key, NETWORK_CONFIG));
                    match put {
                        Ok(()) => return Ok(()),
                        Err(e) if Instant::now() > deadline => {
                            return Err(format!(
                                "did not take {key} within {} s: {e}; its log: {}",
                                ETCD_WAIT.as_secs(),
                                log_path.display()
                            ))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(200)),
                    }
                }
            })
            .map_err(|e| self.step("etcd namespace")(e.to_string()))?;
        written.map_err(|e| self.step(format!("etcd at {client}"))(e))
    }

    /// With etcd: asks each node which subnet it leased and adds its pods there (`.10`,
    /// `.11`, ...), as `podswitch pod add` would. Returns the nodes' subnets.
    fn add_leased_pods(&self) -> Result<Vec<Ipv4Net>, LabError> {
        let mut cidrs = Vec::with_capacity(self.nodes);
        for i in 1..=self.nodes {
            let control = self.control(i);
            let step = format!("node {i} leased subnet");
            let cidr = match control::call(&control, &Request::NodeInfo, Duration::from_secs(5)) {
                Ok(Response::Node { pod_cidr, .. }) => pod_cidr,
                Ok(Response::Error { message, .. }) => return Err(self.step(step)(message)),
                Ok(other) => return Err(self.step(step)(format!("unexpected answer {other:?}"))),
                Err(e) => return Err(self.step(step)(e.to_string())),
            };
            for j in 1..=self.pods_per_node {
                let step = format!("node {i} pod {}", self.pod_name(i, j));
                let ip = Self::pod_ip(cidr, j).ok_or_else(|| {
                    self.step(step.clone())(format!(
                        "the leased subnet {cidr} has no room for pod {j}"
                    ))
                })?;
                let add = Request::PodAdd(self.pod_spec(i, j, ip));
                match control::call(&control, &add, Duration::from_secs(30)) {
                    Ok(Response::Pod(_)) => {}
                    Ok(Response::Error { message, .. }) => return Err(self.step(step)(message)),
                    Ok(other) => {
                        return Err(self.step(step)(format!("unexpected answer {other:?}")))
                    }
                    Err(e) => return Err(self.step(step)(e.to_string())),
                }
            }
            cidrs.push(cidr);
        }
        Ok(cidrs)
    }

    /// With etcd: waits (bounded) until every node has every other node as a peer from etcd.
    fn wait_for_etcd_peers(&self) -> Result<(), LabError> {
        let deadline = Instant::now() + ETCD_WAIT;
        let want = self.nodes - 1;
        for i in 1..=self.nodes {
            let control = self.control(i);
            loop {
                let seen = match control::call(&control, &Request::PeerList, Duration::from_secs(5))
                {
                    Ok(Response::Peers(peers)) => Ok(peers
                        .iter()
                        .filter(|p| p.source == PeerSource::Etcd)
                        .count()),
                    Ok(Response::Error { message, .. }) => Err(message),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                };
                if seen.as_ref().is_ok_and(|&n| n >= want) {
                    break;
                }
                if Instant::now() > deadline {
                    let seen = match seen {
                        Ok(n) => format!("it has {n}"),
                        Err(e) => format!("peer list: {e}"),
                    };
                    return Err(self.step(format!("node {i} peers"))(format!(
                        "did not learn the other {want} nodes from etcd within {} s ({seen}); see {}",
                        ETCD_WAIT.as_secs(),
                        Self::dir(&self.name).join(format!("node{i}.log")).display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// How to reach the pods; `cidrs[i - 1]` is node `i`'s pod CIDR, `cmd` how the user runs
    /// podswitch ([`command_name`]).
    pub(crate) fn describe(&self, cidrs: &[Ipv4Net], cmd: &str) -> String {
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
                crate::cluster::flannel::DEFAULT_PREFIX,
                Self::etcd_ns(&self.name),
                crate::cluster::flannel::DEFAULT_PREFIX,
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
            "{cmd} pod list --control {}\n     {cmd} lab down --name {}",
            self.control(1).display(),
            self.name
        );
        s
    }
}

/// How a user runs the podswitch binary at `exe` in the hints printed for them: `podswitch`
/// when that name on `PATH` is this binary (after `scripts/install`), else its full path (a
/// `target/release/podswitch` started by `cargo run`).
pub fn command_name(exe: &Path) -> String {
    let here = std::fs::canonicalize(exe).ok();
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("podswitch"))
            .find(|p| p.is_file())
    });
    match (here, on_path.and_then(|p| std::fs::canonicalize(p).ok())) {
        (Some(a), Some(b)) if a == b => "podswitch".into(),
        _ => exe.display().to_string(),
    }
}

/// Writes `key` = `value` in etcd at `endpoint` (one attempt, bounded).
async fn put_key(endpoint: &str, key: &str, value: &str) -> Result<(), String> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3));
    let mut client = etcd_client::Client::connect([endpoint], Some(opts))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    client
        .put(key, value, None)
        .await
        .map_err(|e| format!("put {key}: {e}"))?;
    Ok(())
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

/// Tears down lab `name`: stops its daemons (SIGTERM; they remove their pods), then its etcd
/// if it has one, deletes its namespaces and state (etcd's data dir with it); reports what it
/// could not remove. A lab of which nothing is left (never up, a typo, already down) is
/// [`LabError::NoSuchLab`].
pub fn down(name: &str) -> Result<String, LabError> {
    let dir = Lab::dir(name);
    let mut pid_files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pid"))
                .collect()
        })
        .unwrap_or_default();
    // The nodes first, etcd last: nodes never wait for etcd to stop.
    pid_files.sort_by_key(|p| p.file_stem().is_some_and(|s| s == "etcd"));
    let daemons: Vec<(PathBuf, i32)> = pid_files
        .into_iter()
        .filter_map(|p| {
            let pid = std::fs::read_to_string(&p)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()?;
            Some((p, pid))
        })
        .collect();
    let prefix = format!("{name}-");
    let lab_namespaces = || -> Vec<String> {
        std::fs::read_dir(crate::netns::NETNS_RUN_DIR)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // What users started in the lab's namespaces (an `iperf3 -s -D`, a web server) would keep
    // those namespaces alive, nameless, after they are deleted: stopped first (the daemons
    // remove the pods' namespaces as they stop).
    if !dir.exists() && lab_namespaces().is_empty() {
        return Err(LabError::NoSuchLab(name.into()));
    }
    let daemon_pids: Vec<i32> = daemons.iter().map(|(_, pid)| *pid).collect();
    let strays = processes_in(&lab_namespaces(), &daemon_pids);
    for (pid, _) in &strays {
        stop_process(*pid);
    }
    let (mut stopped, mut etcd) = (0, false);
    for (p, pid) in &daemons {
        let pid = *pid;
        if stop_process(pid) {
            if p.file_stem().is_some_and(|s| s == "etcd") {
                etcd = true;
            } else {
                stopped += 1;
            }
        }
    }
    let mut problems = Vec::new();
    let mut removed = 0;
    for n in lab_namespaces() {
        match NetNs::named(&n).and_then(|ns| ns.delete()) {
            Ok(()) => removed += 1,
            Err(e) => problems.push(e.to_string()),
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("{}: {e}", dir.display())),
    }
    if problems.is_empty() {
        let etcd = if etcd { " and etcd" } else { "" };
        let strays = if strays.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = strays
                .iter()
                .map(|(pid, c)| format!("{c} ({pid})"))
                .collect();
            format!(
                ", stopped {} processes left in its namespaces: {}",
                strays.len(),
                names.join(", ")
            )
        };
        Ok(format!(
            "lab {name:?}: stopped {stopped} nodes{etcd}, removed {removed} namespaces{strays}"
        ))
    } else {
        Err(LabError::Step {
            lab: name.into(),
            step: "teardown".into(),
            message: problems.join("; "),
        })
    }
}

/// The processes (pid, command name) whose network namespace is one of the named
/// `namespaces`, but for `except`.
fn processes_in(namespaces: &[String], except: &[i32]) -> Vec<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<(u64, u64)> = namespaces
        .iter()
        .filter_map(|n| NetNs::named(n).ok())
        .filter_map(|ns| std::fs::metadata(ns.path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && !except.contains(pid))
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| ids.contains(&(m.dev(), m.ino())))
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// SIGTERM, wait up to 10 s, then SIGKILL. Returns whether the process existed.
fn stop_process(pid: i32) -> bool {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill(pid, None).is_ok() {
        // Reap it if it is our child (lab up and down in one process, as in tests).
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
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
        let cpus: Vec<_> = (1..=2).map(|i| lab.node_config(i).node.cpus).collect();
        let allowed = crate::dataplane::allowed_cpus();
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
        let cfg = lab.node_config(2);
        cfg.validate().unwrap();
        assert_eq!(cfg.node.pod_cidr, None);
        assert!(cfg.peers.is_empty() && cfg.pods.is_empty());
        assert_eq!(
            cfg.cluster,
            Some(ClusterSpec::new(vec!["http://192.168.77.254:2379".into()]))
        );
        let text = lab.node_config_file(2).unwrap();
        assert!(text.contains("[cluster]"), "{text}");

        let plain = Lab::new("t", 3, 2).unwrap().node_config(2);
        assert_eq!(plain.node.pod_cidr, Some("10.244.2.0/24".parse().unwrap()));
        assert_eq!(plain.peers.len(), 2);
        let ips: Vec<_> = plain.pods.iter().map(|p| p.ip_text()).collect();
        assert_eq!(ips, ["10.244.2.10", "10.244.2.11"]);
    }

    #[test]
    fn the_network_config_is_one_flannel_accepts() {
        let net = crate::cluster::flannel::NetworkConfig::parse(NETWORK_CONFIG.as_bytes());
        assert!(net.is_ok(), "{net:?}");
    }
}
