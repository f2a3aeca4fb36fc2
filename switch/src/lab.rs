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
//! `lab down` stops the daemons (they remove their pods) and deletes the node and underlay
//! namespaces and the state directory. Everything lives in namespaces the lab made, with
//! addresses in 10.244.0.0/16 and 192.168.77.0/24; nothing is routed to the machine's own
//! interfaces. Links are made over rtnetlink, like the pods' own.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::netns::NetNs;
use crate::node::spec::CONTROL_DIR;
use crate::node::{link_index, with_netlink, NodeSpec, PeerSpec, PodSpec};

/// Most nodes in a lab (one /24 of pod CIDRs each under 10.244.0.0/16, underlay .1-.254).
pub(crate) const MAX_NODES: usize = 200;
/// Most pods per node (.10 to .250 of the node's /24).
pub(crate) const MAX_PODS: usize = 240;

/// Why the lab could not be built or torn down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A lab of that name exists.
    #[error("lab {0:?} is already up (run `podswitch lab down --name {0}` first)")]
    Exists(String),
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
        })
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

    /// Pod `j` (1-based) of node `i`: name/namespace and IP.
    pub(crate) fn pod(&self, i: usize, j: usize) -> (String, Ipv4Addr) {
        (
            format!("{}-n{i}p{j}", self.name),
            Ipv4Addr::new(10, 244, i as u8, 9 + j as u8),
        )
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

    /// The configuration of node `i`: its pods and every other node as a peer.
    pub(crate) fn node_config(&self, i: usize) -> Config {
        let name = Self::node_ns(&self.name, i);
        let mut node = NodeSpec::new(&name, Self::pod_cidr(i));
        node.netns = Some(name);
        node.underlay = Some(Self::underlay_ip(i));
        node.control = Some(self.control(i));
        node.workers = self.workers;
        let pods = (1..=self.pods_per_node)
            .map(|j| {
                let (pod, ip) = self.pod(i, j);
                PodSpec {
                    name: pod.clone(),
                    netns: pod,
                    ip: Some(ip),
                    mac: None,
                    container_id: None,
                    ifname: "eth0".into(),
                }
            })
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
            self.wire_node(&underlay, i)?;
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
                    return Err(self.step(format!("node {i}"))(
                        "did not answer on its control socket within 30 s".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(self.describe())
    }

    /// Joins node `i` to the underlay bridge and addresses it.
    fn wire_node(&self, underlay: &NetNs, i: usize) -> Result<(), LabError> {
        let node = NetNs::create(&Self::node_ns(&self.name, i))
            .map_err(|e| self.step(format!("node {i} namespace"))(e.to_string()))?;
        let node_file = std::fs::File::open(node.path())
            .map_err(|e| self.step(format!("node {i} namespace"))(e.to_string()))?;
        let (bridge_end, node_end) = (format!("u{i}"), format!("n{i}"));
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
                        .map_err(|e| ("veth into the node", e.to_string()))
                })
            })
            .map_err(|e| self.step(format!("node {i} wiring"))(e.to_string()))?
            .map_err(|(what, e)| self.step(format!("node {i} {what}"))(e))?;
        let ip = Self::underlay_ip(i);
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
        .map_err(|e| self.step(format!("node {i} address"))(e.to_string()))?
        .map_err(|(what, e)| self.step(format!("node {i} {what}"))(e))
    }

    /// How to reach the pods.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!(
            "lab {:?}: {} nodes on underlay 192.168.77.0/24 (namespace {})\n",
            self.name,
            self.nodes,
            Self::underlay_ns(&self.name)
        );
        for i in 1..=self.nodes {
            let _ = writeln!(
                s,
                "node {i}: namespace {}, underlay {}, pods 10.244.{i}.0/24, control {}",
                Self::node_ns(&self.name, i),
                Self::underlay_ip(i),
                self.control(i).display()
            );
            for j in 1..=self.pods_per_node {
                let (pod, ip) = self.pod(i, j);
                let _ = writeln!(
                    s,
                    "  pod {pod:<16} {ip:<14} ip netns exec {pod} ping <pod IP>"
                );
            }
        }
        let (from, _) = self.pod(1, 1);
        let (_, to) = self.pod(self.nodes, 1);
        let _ = write!(
            s,
            "try: ip netns exec {from} ping -c3 {to}\n     podswitch pod list --control {}\n     podswitch lab down --name {}",
            self.control(1).display(),
            self.name
        );
        s
    }
}

/// Tears down lab `name`: stops its daemons (SIGTERM; they remove their pods), deletes its
/// namespaces and state. Idempotent; reports what it could not remove.
pub fn down(name: &str) -> Result<String, LabError> {
    let dir = Lab::dir(name);
    let mut stopped = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pid") {
                if let Some(pid) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    if stop_process(pid) {
                        stopped += 1;
                    }
                }
            }
        }
    }
    let prefix = format!("{name}-");
    let mut problems = Vec::new();
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(crate::netns::NETNS_RUN_DIR) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                match NetNs::named(&n).and_then(|ns| ns.delete()) {
                    Ok(()) => removed += 1,
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if problems.is_empty() {
        Ok(format!(
            "lab {name:?}: stopped {stopped} nodes, removed {removed} namespaces"
        ))
    } else {
        Err(LabError::Step {
            lab: name.into(),
            step: "teardown".into(),
            message: problems.join("; "),
        })
    }
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
