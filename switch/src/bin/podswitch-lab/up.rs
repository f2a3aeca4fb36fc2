//! `podswitch-lab up`: builds the underlay, the nodes' namespaces and (with `--etcd`) etcd,
//! starts a `podswitch run` per node and waits until each answers on its control socket.
//!
//! Invariant: a failed `up` tears down everything it made (as `down` does), so a lab is either
//! up whole or not there at all.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use podswitch::control::{self, Request, Response};
use podswitch::netns::NetNs;
use podswitch::node::PeerSource;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};

use crate::down::down;
use crate::layout::{flannel_prefix, Lab, LabError, ETCD_BIN, ETCD_CLIENT_PORT, ETCD_IP};
use crate::layout::{ETCD_PEER_PORT, ETCD_WAIT, NETWORK_CONFIG};
use crate::netlink::{link_index, Netlink};

impl Lab {
    /// Builds the lab and starts its daemons (`podswitch` binary at `exe`); returns the nodes'
    /// pod CIDRs (`[i - 1]` is node `i`'s). On failure, everything made so far is torn down.
    pub(crate) fn up(&self, exe: &Path) -> Result<Vec<Ipv4Net>, LabError> {
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

    fn build(&self, exe: &Path, dir: &Path) -> Result<Vec<Ipv4Net>, LabError> {
        std::fs::create_dir_all(dir).map_err(|e| self.step("state directory")(e.to_string()))?;
        let underlay = NetNs::create(&Self::underlay_ns(&self.name))
            .map_err(|e| self.step("underlay namespace")(e.to_string()))?;
        underlay
            .run(|| {
                Netlink::run(|h| async move {
                    h.link()
                        .add(LinkBridge::new("br0").up().build())
                        .execute()
                        .await
                        .map_err(|e| ("bridge br0", e.to_string()))?;
                    let lo = link_index("lo").map_err(|e| ("lo", e))?;
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
        if self.etcd {
            let cidrs = self.add_leased_pods()?;
            self.wait_for_etcd_peers()?;
            Ok(cidrs)
        } else {
            Ok((1..=self.nodes).map(Self::pod_cidr).collect())
        }
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
                Netlink::run(|h| async move {
                    h.link()
                        .add(LinkVeth::new(&bridge_end, &node_end).build())
                        .execute()
                        .await
                        .map_err(|e| ("veth", e.to_string()))?;
                    let br = link_index("br0").map_err(|e| ("br0", e))?;
                    let b = link_index(&bridge_end).map_err(|e| ("veth", e))?;
                    h.link()
                        .set(LinkUnspec::new_with_index(b).controller(br).up().build())
                        .execute()
                        .await
                        .map_err(|e| ("veth to br0", e.to_string()))?;
                    let n = link_index(&node_end).map_err(|e| ("veth", e))?;
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
            Netlink::run(|h| async move {
                let lo = link_index("lo").map_err(|e| ("lo", e))?;
                let eth0 = link_index("eth0").map_err(|e| ("eth0", e))?;
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
        let key = format!("{}/config", flannel_prefix());
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
