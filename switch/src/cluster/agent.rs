//! The node's etcd agent: leases the node's subnet in flannel's layout, keeps the lease alive,
//! and turns the other leases into peers.
//!
//! Life of a node with `[cluster]`:
//!
//! 1. [`acquire`] (before the node starts): read `<prefix>/config`, list `<prefix>/subnets/`,
//!    pick a subnet in flannel's order (our own PublicIP's lease, then the remembered or
//!    configured subnet, then free ones from SubnetMin), grant an etcd lease of
//!    `lease_ttl_secs` and write the key in a transaction that only succeeds if the key is
//!    still absent (or, for our own lease, unchanged since we read it). A lost race moves on
//!    to the next candidate.
//! 2. [`Agent::run`] (for the node's life): a *session* lists the subnets, reconciles the
//!    node's etcd peers with them, then follows: keep-alives at a third of the TTL and a watch
//!    from the revision after the list. Any failure (etcd gone, watch cancelled by a
//!    compaction, lease lost) ends the session; the next one, after a backoff, checks the
//!    lease (granting a new one if it expired), makes sure our key is there (recreating it if
//!    someone deleted it: flannel exits here) and lists again, which removes peers whose
//!    leases vanished meanwhile. The data plane never waits for etcd: it forwards on the
//!    last peers it knew.
//! 3. Services: the same session lists `<services_prefix>/` too (at a revision of its own) and
//!    watches it from there. `<services_prefix>/<name>` holds a [`ServiceSpec`] as JSON whose
//!    `name` is the key's last segment; it is applied by the rules of `service add`, as a
//!    service whose source is etcd. A list makes the node's etcd services exactly the valid
//!    keys listed; one the node refuses (or whose name belongs to a config or runtime service)
//!    is logged once and tried again at the next list.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use ipnet::Ipv4Net;

use super::flannel::{self, Candidate, Lease, LeaseAttrs, NetworkConfig};
use super::{ClusterSpec, ClusterStatus, Memory};
use crate::node::{Mac, Node, NodeError, NodeSpec, PeerSource, ServiceSpec};

/// How long one call to etcd may take before it counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on the connection, so a dead etcd is noticed while only a watch is open. etcd
/// answers pings more frequent than its `--grpc-keepalive-min-time` (5 s) with GOAWAY
/// `too_many_pings`, dropping the connection every few seconds: stay above it.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node running on a subnet it could not lease tries again.
const RETRY_LEASE: Duration = Duration::from_secs(5);
/// First and largest wait between retries.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At most this many free subnets are tried per attempt (flannel picks among 100).
const MAX_FREE_CANDIDATES: usize = 100;

/// Why talking to etcd failed. Each names the endpoint or key involved.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd did not answer, or answered with an error.
    #[error("etcd {endpoints}: {what}: {message}")]
    Etcd {
        /// The endpoints.
        endpoints: String,
        /// The call.
        what: &'static str,
        /// The client's error.
        message: String,
    },
    /// The network config is missing or invalid; flannel's rules, the key named.
    #[error("etcd key {key}: {reason}")]
    Config {
        /// The key (`<prefix>/config`, or a field of it: `<prefix>/config: SubnetLen`).
        key: String,
        /// Why.
        reason: String,
    },
    /// No subnet can be leased (the range is exhausted, or the wanted one is taken).
    #[error("leasing a subnet: {0}")]
    NoSubnet(String),
    /// Our lease expired or was revoked.
    #[error("the node's etcd lease {0:x} is gone")]
    LeaseLost(i64),
    /// The node's peer updates failed (a panic in the update task).
    #[error("updating the node's peers: {0}")]
    Internal(String),
    /// The node now holds the subnet it runs on: start a new session to keep it alive.
    #[error("the node holds its subnet again; resyncing")]
    Resync,
    /// The watch was cancelled (its revision was compacted): list again.
    #[error("the watch of {prefix} was cancelled ({reason}); listing again")]
    WatchCancelled {
        /// The watched prefix.
        prefix: String,
        /// etcd's reason.
        reason: String,
    },
}

/// The node's subnet and the network's VXLAN settings, as leased (or remembered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acquired {
    /// The node's subnet.
    pub subnet: Ipv4Net,
    /// VXLAN network identifier (the network config's `Backend.VNI`).
    pub vni: u32,
    /// VXLAN UDP port (`Backend.Port`).
    pub port: u16,
}

impl ClusterError {
    /// True if etcd could not be reached (as opposed to answering with a problem).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Etcd { .. })
    }
}

/// Runs `f` on the node off the async runtime (node changes talk netlink, which runs a
/// runtime of its own, and may take a while for many peers).
async fn on_node<T: Send + 'static>(
    node: &Arc<Node>,
    f: impl FnOnce(&Node) -> T + Send + 'static,
) -> Result<T, ClusterError> {
    let n = Arc::clone(node);
    tokio::task::spawn_blocking(move || f(&n))
        .await
        .map_err(|e| ClusterError::Internal(e.to_string()))
}

/// Makes the node's items from etcd (peers, services) exactly `wanted` (by key), off the
/// runtime: the node's current ones (`current`, by name) that no wanted item names
/// (`name_of`) are removed, then every wanted one is applied. Returns the names removed and
/// each key's outcome (a refusal as text).
async fn sync_node<T: Send + 'static>(
    node: &Arc<Node>,
    wanted: Vec<(String, T)>,
    current: fn(&Node) -> Vec<String>,
    name_of: fn(&T) -> String,
    remove: fn(&Node, &str) -> Result<(), NodeError>,
    apply: fn(&Node, &T) -> Result<(), NodeError>,
) -> Result<SyncOutcome, ClusterError> {
    on_node(node, move |n| {
        let names: Vec<String> = wanted.iter().map(|(_, t)| name_of(t)).collect();
        let mut removed = Vec::new();
        for name in current(n) {
            if !names.contains(&name) {
                match remove(n, &name) {
                    Ok(()) => removed.push(name),
                    Err(e) => tracing::warn!(name = %name, "removing what vanished from etcd: {e}"),
                }
            }
        }
        let applied = wanted
            .into_iter()
            .map(|(key, t)| {
                let r = apply(n, &t).map_err(|e| e.to_string());
                (key, r)
            })
            .collect();
        (removed, applied)
    })
    .await
}

/// What [`sync_node`] did: the names removed, and each wanted key's outcome.
type SyncOutcome = (Vec<String>, Vec<(String, Result<(), String>)>);

impl Acquired {
    /// Makes `spec` the node this lease describes: its pod CIDR, VNI and port. A VNI or port
    /// given in the file that differs from the network config's is overridden, with a warning:
    /// every node of the cluster must use the network's.
    pub fn apply_to(&self, spec: &mut NodeSpec) {
        if spec.vni != self.vni || spec.vxlan_port != self.port {
            if spec.vni != 1 || spec.vxlan_port != crate::node::spec::DEFAULT_VXLAN_PORT {
                tracing::warn!(
                    file_vni = spec.vni,
                    file_port = spec.vxlan_port,
                    vni = self.vni,
                    port = self.port,
                    "node.vni / node.vxlan_port differ from etcd's network config; using the network's"
                );
            }
            spec.vni = self.vni;
            spec.vxlan_port = self.port;
        }
        spec.pod_cidr = Some(self.subnet);
    }
}

/// What the agent holds in etcd.
#[derive(Debug, Clone, Copy)]
struct Held {
    subnet: Ipv4Net,
    lease: i64,
    network: NetworkConfig,
}

/// The node's etcd agent (see the module docs).
pub struct Agent {
    spec: ClusterSpec,
    node_name: String,
    public_ip: Ipv4Addr,
    vtep_mac: Mac,
    /// `node.pod_cidr` from the file: the only subnet this node may lease.
    required: Option<Ipv4Net>,
    memory_path: PathBuf,
    client: Option<Client>,
    held: Option<Held>,
    status: Arc<Mutex<ClusterStatus>>,
    /// Keys whose lease the node could not use, with the reason last logged (logged once).
    skipped: HashMap<String, String>,
    /// Subnets of the last list held by leases the node cannot use (another backend): taken
    /// all the same.
    foreign: Vec<Ipv4Net>,
    /// Service keys not applied, with the reason last logged (logged once).
    svc_skipped: HashMap<String, String>,
    /// The revision of the last list of the services: watch events up to it are in it.
    svc_listed: i64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// An agent for `node` (its name, underlay and VTEP MAC are what it publishes).
    pub fn new(
        spec: &ClusterSpec,
        node: &NodeSpec,
        state_dir: &std::path::Path,
    ) -> Result<Self, ClusterError> {
        let public_ip = node.underlay.ok_or_else(|| ClusterError::Config {
            key: "node.underlay".into(),
            reason: "is required with [cluster]: it is the PublicIP other nodes send VXLAN to"
                .into(),
        })?;
        let status = ClusterStatus {
            endpoints: spec.etcd_endpoints.clone(),
            prefix: spec.prefix().into(),
            ..ClusterStatus::default()
        };
        Ok(Self {
            spec: spec.clone(),
            node_name: node.name.clone(),
            public_ip,
            vtep_mac: node.router_mac(),
            required: node.pod_cidr,
            memory_path: Memory::path(state_dir, &node.name),
            client: None,
            held: None,
            status: Arc::new(Mutex::new(status)),
            skipped: HashMap::new(),
            foreign: Vec::new(),
            svc_skipped: HashMap::new(),
            svc_listed: 0,
        })
    }

    /// Leases the node's subnet, retrying with backoff until it has one (step 1 of the module
    /// docs). Each failed attempt is logged and left in the status.
    pub async fn acquire(&mut self) -> Acquired {
        let mut backoff = Backoff::new();
        loop {
            match self.try_acquire().await {
                Ok(a) => return a,
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(retry_in = ?wait, "no subnet lease yet: {e}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One attempt to lease the node's subnet; a failure is left in the status.
    pub async fn try_acquire(&mut self) -> Result<Acquired, ClusterError> {
        let r = self.lease_subnet().await;
        if let Err(e) = &r {
            self.failed(e);
        }
        r
    }

    /// The status `podswitch status` shows; updated as the agent works.
    pub fn status(&self) -> Arc<Mutex<ClusterStatus>> {
        Arc::clone(&self.status)
    }

    /// What the node remembers of its last lease (or its configured subnet), to start on
    /// while etcd cannot be reached. `None`: nothing to start on.
    pub fn remembered(&self, node: &NodeSpec) -> Option<Acquired> {
        let memory = Memory::load(&self.memory_path);
        let subnet = self.required.or(memory.map(|m| m.subnet))?;
        let (vni, port) = match memory {
            Some(m) if m.subnet == subnet => (m.vni, m.port),
            _ => (node.vni, node.vxlan_port),
        };
        Some(Acquired { subnet, vni, port })
    }

    /// Marks the store unhealthy with `e`.
    fn failed(&self, e: &ClusterError) {
        let mut s = lock(&self.status);
        s.healthy = false;
        s.unreachable = e.is_unreachable();
        s.last_error = Some(e.to_string());
    }

    /// Records (and logs, once per message) that another node holds this node's subnet, or
    /// clears it (`None`).
    fn conflict(&self, what: Option<String>) {
        let mut s = lock(&self.status);
        if let Some(w) = &what {
            if s.conflict.as_ref() != Some(w) {
                tracing::error!("{w}");
            }
        } else if s.conflict.is_some() {
            tracing::info!("the node holds its subnet's key again");
        }
        s.conflict = what;
    }

    fn healthy(&self) {
        let mut s = lock(&self.status);
        if let Some(e) = &s.last_error {
            tracing::info!(was = %e, "etcd answers again");
        }
        s.healthy = true;
        s.unreachable = false;
        s.last_error = None;
    }

    fn etcd_err(&self, what: &'static str) -> impl Fn(String) -> ClusterError + '_ {
        move |message| ClusterError::Etcd {
            endpoints: self.spec.etcd_endpoints.join(","),
            what,
            message,
        }
    }

    /// A connected client (made once; reconnects itself when etcd comes back).
    async fn client(&mut self) -> Result<Client, ClusterError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            // A watch is always open; pings without one would only annoy etcd.
            .with_keep_alive_while_idle(false)
            // As flannel: a member cut off from its quorum fails the calls instead of serving
            // stale data silently.
            .with_require_leader(true);
        let connect = Client::connect(self.spec.etcd_endpoints.clone(), Some(options));
        let client = timed(connect).await.map_err(self.etcd_err("connecting"))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// One attempt of step 1 (module docs).
    async fn lease_subnet(&mut self) -> Result<Acquired, ClusterError> {
        let mut client = self.client().await?;
        let network = self.network_config(&mut client).await?;
        let prefix = self.spec.prefix().to_string();
        let (leases, _) = self.list(&mut client).await?;
        // Every subnet somebody holds, whatever its backend (flannel counts them all).
        let mut held_by_others: Vec<(Ipv4Net, Ipv4Addr)> = self
            .foreign
            .iter()
            .map(|s| (*s, Ipv4Addr::UNSPECIFIED))
            .collect();
        let previous = self
            .required
            .or(Memory::load(&self.memory_path).map(|m| m.subnet));
        held_by_others.extend(
            leases
                .values()
                .map(|l| (l.lease.subnet, l.lease.attrs.public_ip)),
        );
        let taken = held_by_others.iter().copied();
        let mut candidates = flannel::candidates(
            &network,
            taken,
            self.public_ip,
            previous,
            MAX_FREE_CANDIDATES,
        )
        .map_err(|e| ClusterError::NoSubnet(format!("{} in {prefix}/config", e)))?;
        if let Some(required) = self.required {
            candidates.retain(|c| c.subnet() == required);
            if candidates.is_empty() {
                let holder = held_by_others
                    .iter()
                    .find(|(s, _)| *s == required)
                    .map(|(_, ip)| match ip.is_unspecified() {
                        true => "is held by a lease of another backend".to_string(),
                        false => format!("is held by {ip}"),
                    })
                    .unwrap_or_else(|| {
                        format!(
                            "is not leasable in Network {} (SubnetLen {}, SubnetMin {}, SubnetMax {})",
                            network.network, network.subnet_len, network.subnet_min, network.subnet_max
                        )
                    });
                return Err(ClusterError::NoSubnet(format!(
                    "node.pod_cidr {required} {holder}"
                )));
            }
        }
        let lease = self.grant(&mut client).await?;
        for candidate in candidates {
            let subnet = candidate.subnet();
            let own_rev = match candidate {
                Candidate::Own(_) => leases
                    .get(&flannel::subnet_key(&prefix, subnet))
                    .map(|l| l.mod_revision),
                _ => None,
            };
            if self
                .claim(&mut client, subnet, lease, network.vni, own_rev)
                .await?
            {
                tracing::info!(subnet = %subnet, lease = format_args!("{lease:x}"), how = ?candidate, node = %self.node_name, "subnet leased");
                self.hold(Held {
                    subnet,
                    lease,
                    network,
                });
                self.healthy();
                return Ok(Acquired {
                    subnet,
                    vni: network.vni,
                    port: network.port,
                });
            }
            tracing::debug!(subnet = %subnet, "lost the race for this subnet; next");
        }
        // Nothing claimed: do not leave the lease to expire on its own.
        let _ = timed(client.lease_revoke(lease)).await;
        Err(ClusterError::NoSubnet(
            "every candidate subnet was taken meanwhile; trying again".into(),
        ))
    }

    /// Records what we hold (status, memory file).
    fn hold(&mut self, held: Held) {
        self.held = Some(held);
        Memory {
            subnet: held.subnet,
            vni: held.network.vni,
            port: held.network.port,
        }
        .save(&self.memory_path);
        let mut s = lock(&self.status);
        s.key = Some(flannel::subnet_key(self.spec.prefix(), held.subnet));
        s.lease_id = Some(held.lease);
        s.renewed(self.spec.lease_ttl_secs as i64);
    }

    /// Reads and checks `<prefix>/config`.
    async fn network_config(&self, client: &mut Client) -> Result<NetworkConfig, ClusterError> {
        let key = flannel::config_key(self.spec.prefix());
        let resp = timed(client.get(key.as_str(), None))
            .await
            .map_err(self.etcd_err("reading the network config"))?;
        let Some(kv) = resp.kvs().first() else {
            return Err(ClusterError::Config {
                key,
                reason: "is missing: write flannel's network config there, like \
                         {\"Network\": \"10.244.0.0/16\", \"Backend\": {\"Type\": \"vxlan\"}}"
                    .into(),
            });
        };
        NetworkConfig::parse(kv.value()).map_err(|e| ClusterError::Config {
            key: format!("{key}: {}", e.key),
            reason: e.reason,
        })
    }

    /// Grants a new etcd lease of the configured TTL.
    async fn grant(&self, client: &mut Client) -> Result<i64, ClusterError> {
        let ttl = self.spec.lease_ttl_secs as i64;
        let resp = timed(client.lease_grant(ttl, None))
            .await
            .map_err(self.etcd_err("granting a lease"))?;
        Ok(resp.id())
    }

    /// Writes our lease value on `subnet`'s key, attached to `lease`, only if the key is absent
    /// (`own_rev` None) or unchanged since revision `own_rev` (our own lease, taken back).
    /// False: someone else got there first.
    async fn claim(
        &self,
        client: &mut Client,
        subnet: Ipv4Net,
        lease: i64,
        vni: u32,
        own_rev: Option<i64>,
    ) -> Result<bool, ClusterError> {
        let key = flannel::subnet_key(self.spec.prefix(), subnet);
        let value = LeaseAttrs {
            public_ip: self.public_ip,
            vni,
            vtep_mac: self.vtep_mac,
        };
        let compare = match own_rev {
            Some(rev) => Compare::mod_revision(key.as_str(), CompareOp::Equal, rev),
            None => Compare::version(key.as_str(), CompareOp::Equal, 0),
        };
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(
            key.as_str(),
            value.to_json(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let resp = timed(client.txn(txn))
            .await
            .map_err(self.etcd_err("writing the subnet lease"))?;
        Ok(resp.succeeded())
    }

    /// Lists `<prefix>/subnets/`: the valid vxlan leases by key, and the revision of the list.
    /// Keys or values the node cannot use are logged once each and left out.
    async fn list(
        &mut self,
        client: &mut Client,
    ) -> Result<(BTreeMap<String, Listed>, i64), ClusterError> {
        let prefix = flannel::subnets_key(self.spec.prefix());
        let resp = timed(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
            .await
            .map_err(self.etcd_err("listing the subnets"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut out = BTreeMap::new();
        let mut seen = Vec::new();
        let mut foreign = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            seen.push(key.clone());
            match Lease::parse(self.spec.prefix(), &key, kv.value()) {
                Ok(lease) => {
                    self.skipped.remove(&key);
                    out.insert(
                        key,
                        Listed {
                            lease,
                            etcd_lease: kv.lease(),
                            mod_revision: kv.mod_revision(),
                        },
                    );
                }
                Err(e) => {
                    if let Ok(subnet) = flannel::parse_subnet_key(self.spec.prefix(), &key) {
                        foreign.push(subnet);
                    }
                    self.skip(&key, &e.to_string());
                }
            }
        }
        self.foreign = foreign;
        self.skipped.retain(|k, _| seen.contains(k));
        Ok((out, revision))
    }

    /// Logs once per key and reason that a lease is not used.
    fn skip(&mut self, key: &str, reason: &str) {
        if self.skipped.get(key).map(String::as_str) != Some(reason) {
            tracing::warn!(key, "lease ignored: {reason}");
            self.skipped.insert(key.to_string(), reason.to_string());
        }
    }

    /// Keeps the node in the cluster for as long as it runs (step 2 of the module docs).
    pub async fn run(mut self, node: Arc<Node>) {
        let mut backoff = Backoff::new();
        loop {
            let e = self.session(&node, &mut backoff).await;
            if matches!(e, ClusterError::Resync) {
                continue;
            }
            self.failed(&e);
            let wait = backoff.next();
            tracing::warn!(retry_in = ?wait, "etcd: {e}");
            tokio::time::sleep(wait).await;
        }
    }

    /// One session: make sure of the lease and the key, list, reconcile, then follow until
    /// something fails. Returns why it ended.
    async fn session(&mut self, node: &Arc<Node>, backoff: &mut Backoff) -> ClusterError {
        let mut client = match self.client().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        if self.held.is_none() {
            // Started on a remembered subnet while etcd was away: lease that one (the pods
            // have addresses in it). If another node holds it, say so and keep following the
            // peers; `follow` tries again.
            self.required = Some(node.pod_cidr());
            match self.lease_subnet().await {
                Ok(_) => self.conflict(None),
                Err(e) if e.is_unreachable() => return e,
                Err(e) => self.conflict(Some(format!(
                    "this node runs on {} but cannot lease it: {e}; its pods' addresses may clash with another node's (restart it on a free subnet: delete {} first)",
                    node.pod_cidr(),
                    self.memory_path.display()
                ))),
            }
        }
        if let Err(e) = self.ensure_lease(&mut client).await {
            return e;
        }
        if let Err(e) = self.ensure_key(&mut client).await {
            return e;
        }
        let revision = match self.reconcile(&mut client, node).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        let svc_revision = match self.reconcile_services(&mut client, node).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        self.healthy();
        backoff.reset();
        self.follow(&mut client, node, revision, svc_revision).await
    }

    /// Checks our lease is alive; grants a new one (and rewrites our key) if it is not.
    async fn ensure_lease(&mut self, client: &mut Client) -> Result<(), ClusterError> {
        let Some(held) = self.held else {
            return Ok(());
        };
        let resp = timed(client.lease_time_to_live(held.lease, None))
            .await
            .map_err(self.etcd_err("checking the lease"))?;
        if resp.ttl() > 0 {
            lock(&self.status).renewed(resp.ttl());
            return Ok(());
        }
        let lease = self.grant(client).await?;
        tracing::warn!(
            old = format_args!("{:x}", held.lease),
            new = format_args!("{lease:x}"),
            "the node's etcd lease had expired; granted a new one"
        );
        self.hold(Held { lease, ..held });
        Ok(())
    }

    /// Makes sure our key is in etcd with our value and lease: recreated if someone deleted
    /// it, re-attached if it carries another lease. Someone else's lease on our subnet is an
    /// error (logged; the node keeps running on its subnet).
    async fn ensure_key(&mut self, client: &mut Client) -> Result<(), ClusterError> {
        let Some(held) = self.held else {
            return Ok(());
        };
        let key = flannel::subnet_key(self.spec.prefix(), held.subnet);
        let resp = timed(client.get(key.as_str(), None))
            .await
            .map_err(self.etcd_err("reading the node's key"))?;
        let own_rev = match resp.kvs().first() {
            None => None,
            Some(kv) => {
                let ours = LeaseAttrs::parse(kv.value())
                    .is_ok_and(|a| a.public_ip == self.public_ip && a.vtep_mac == self.vtep_mac);
                if !ours {
                    // Not ours to overwrite: wait for it to go (its delete is watched).
                    self.conflict(Some(format!(
                        "the node's subnet key {key} holds another node's lease: {}",
                        String::from_utf8_lossy(kv.value())
                    )));
                    return Ok(());
                }
                if kv.lease() == held.lease {
                    self.conflict(None);
                    return Ok(());
                }
                Some(kv.mod_revision())
            }
        };
        if self
            .claim(client, held.subnet, held.lease, held.network.vni, own_rev)
            .await?
        {
            if own_rev.is_none() {
                tracing::warn!(key = %key, "the node's subnet key was gone; recreated it");
            }
            self.conflict(None);
            Ok(())
        } else {
            Err(ClusterError::NoSubnet(format!(
                "the node's subnet key {key} changed while being rewritten; checking again"
            )))
        }
    }

    /// Lists the subnets and makes the node's etcd peers exactly the leases listed (other
    /// than ours). Returns the list's revision.
    async fn reconcile(
        &mut self,
        client: &mut Client,
        node: &Arc<Node>,
    ) -> Result<i64, ClusterError> {
        let (leases, revision) = self.list(client).await?;
        let own = self.held.map(|h| h.subnet).or(self.required);
        let mut wanted = Vec::new();
        for (key, l) in leases {
            if Some(l.lease.subnet) == own {
                if l.lease.attrs.public_ip != self.public_ip {
                    self.skip(
                        &key,
                        &format!(
                            "another node ({}) holds this node's subnet",
                            l.lease.attrs.public_ip
                        ),
                    );
                }
                continue;
            }
            wanted.push((key, l));
        }
        let (removed, applied) = sync_node(
            node,
            wanted,
            |n| {
                n.peers()
                    .into_iter()
                    .filter(|p| p.source == PeerSource::Etcd)
                    .map(|p| p.spec.name)
                    .collect()
            },
            |l: &Listed| Lease::peer_name(l.lease.subnet),
            |n, name| {
                n.remove_peer(name, "its lease is no longer in etcd (found on a re-list)")
                    .map(|_| ())
            },
            |n, l| {
                let id = (l.etcd_lease != 0).then_some(l.etcd_lease);
                n.apply_etcd_peer(&l.lease.to_peer_spec(), id).map(|_| ())
            },
        )
        .await?;
        if !removed.is_empty() {
            tracing::info!(peers = ?removed, "peers removed: their leases are gone from etcd");
        }
        for (key, r) in applied {
            match r {
                Ok(_) => {
                    self.skipped.remove(&key);
                }
                Err(e) => self.skip(&key, &e),
            }
        }
        self.count_peers(node);
        Ok(revision)
    }

    fn count_peers(&self, node: &Node) {
        lock(&self.status).peers = node.etcd_peers("").0;
    }

    /// Lists `<services_prefix>/` and makes the node's etcd services exactly the valid keys
    /// listed. Returns the list's revision.
    async fn reconcile_services(
        &mut self,
        client: &mut Client,
        node: &Arc<Node>,
    ) -> Result<i64, ClusterError> {
        let prefix = format!("{}/", self.spec.services_prefix());
        let resp = timed(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
            .await
            .map_err(self.etcd_err("listing the services"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut wanted = Vec::new();
        let mut seen = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            seen.push(key.clone());
            match parse_service(self.spec.services_prefix(), &key, kv.value()) {
                Ok(spec) => wanted.push((key, spec)),
                Err(e) => self.skip_service(&key, &e),
            }
        }
        self.svc_skipped.retain(|k, _| seen.contains(k));
        let (removed, applied) = sync_node(
            node,
            wanted,
            |n| n.etcd_services(),
            |spec: &ServiceSpec| spec.name.clone(),
            |n, name| n.del_etcd_service(name).map(|_| ()),
            |n, spec| n.apply_etcd_service(spec).map(|_| ()),
        )
        .await?;
        if !removed.is_empty() {
            tracing::info!(services = ?removed, "services removed: their keys are gone from etcd");
        }
        for (key, r) in applied {
            match r {
                Ok(_) => {
                    self.svc_skipped.remove(&key);
                }
                Err(e) => self.skip_service(&key, &e),
            }
        }
        self.svc_listed = revision;
        self.count_services(node);
        Ok(revision)
    }

    fn count_services(&self, node: &Node) {
        lock(&self.status).services = node.etcd_services().len();
    }

    /// Logs once per key and reason that a service key is not applied.
    fn skip_service(&mut self, key: &str, reason: &str) {
        if self.svc_skipped.get(key).map(String::as_str) != Some(reason) {
            tracing::warn!(key, "service ignored: {reason}");
            self.svc_skipped.insert(key.to_string(), reason.to_string());
        }
    }

    /// One watch event under the services prefix (`put`: the new value, `None`: a delete) at
    /// `revision`.
    async fn on_service_event(
        &mut self,
        client: &mut Client,
        node: &Arc<Node>,
        key: &str,
        put: Option<&[u8]>,
        revision: i64,
    ) -> Result<(), ClusterError> {
        if revision <= self.svc_listed {
            // Already in the last list (listed again after an earlier event).
            return Ok(());
        }
        let prefix = self.spec.services_prefix().to_string();
        let name = service_name(&prefix, key).map(str::to_string);
        match put {
            None => {
                self.svc_skipped.remove(key);
                if let Some(name) = name {
                    if let Err(e) = on_node(node, move |n| n.del_etcd_service(&name)).await? {
                        tracing::warn!(key, "removing a deleted service: {e}");
                    }
                }
                if !self.svc_skipped.is_empty() {
                    // A service refused for clashing with this one may fit now.
                    self.reconcile_services(client, node).await?;
                }
            }
            Some(value) => match parse_service(&prefix, key, value) {
                Ok(spec) => {
                    let r = on_node(node, move |n| {
                        n.apply_etcd_service(&spec).map_err(|e| e.to_string())
                    })
                    .await?;
                    match r {
                        Ok(_) => {
                            self.svc_skipped.remove(key);
                        }
                        Err(e) => self.skip_service(key, &e),
                    }
                }
                Err(e) => {
                    self.skip_service(key, &e);
                    // A key that became unusable no longer describes a service.
                    if let Some(name) = name {
                        if let Err(e) = on_node(node, move |n| n.del_etcd_service(&name)).await? {
                            tracing::warn!(key, "removing a service whose key is unusable: {e}");
                        }
                    }
                }
            },
        }
        self.count_services(node);
        Ok(())
    }

    /// Keeps the lease alive and applies watch events from `revision + 1` (the subnets) and
    /// `svc_revision + 1` (the services) until something fails.
    async fn follow(
        &mut self,
        client: &mut Client,
        node: &Arc<Node>,
        revision: i64,
        svc_revision: i64,
    ) -> ClusterError {
        let prefix = flannel::subnets_key(self.spec.prefix());
        // Without a lease (the subnet the node runs on is someone else's), only the watch;
        // the tick then tries to lease the subnet again.
        let held = self.held;
        let mut keep = match held {
            Some(h) => match timed(client.lease_keep_alive(h.lease)).await {
                Ok(k) => Some(k),
                Err(e) => return self.etcd_err("keeping the lease alive")(e),
            },
            None => None,
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut watch = match timed(client.watch(prefix.as_str(), Some(options))).await {
            Ok(w) => w,
            Err(e) => return self.etcd_err("watching the subnets")(e),
        };
        let svc_prefix = format!("{}/", self.spec.services_prefix());
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(svc_revision + 1);
        let mut svc_watch = match timed(client.watch(svc_prefix.as_str(), Some(options))).await {
            Ok(w) => w,
            Err(e) => return self.etcd_err("watching the services")(e),
        };
        let every = match held {
            Some(_) => Duration::from_secs((self.spec.lease_ttl_secs / 3).max(1)),
            None => RETRY_LEASE,
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let keepalive = async {
                match keep.as_mut() {
                    Some((_, stream)) => stream.message().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => match keep.as_mut() {
                    Some((keeper, _)) => {
                        if let Err(e) = timed(keeper.keep_alive()).await {
                            return self.etcd_err("keeping the lease alive")(e);
                        }
                    }
                    None => match self.lease_subnet().await {
                        Ok(_) => return ClusterError::Resync,
                        Err(e) if e.is_unreachable() => return e,
                        Err(_) => {}
                    },
                },
                msg = keepalive => match msg {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        lock(&self.status).renewed(resp.ttl());
                    }
                    Ok(Some(_)) => return ClusterError::LeaseLost(held.map_or(0, |h| h.lease)),
                    Ok(None) => return self.etcd_err("keeping the lease alive")("stream closed".into()),
                    Err(e) => return self.etcd_err("keeping the lease alive")(e.to_string()),
                },
                msg = watch.message() => {
                    let events = match self.watched(msg, &prefix, "watching the subnets") {
                        Ok(events) => events,
                        Err(e) => return e,
                    };
                    for ev in events {
                        let put = ev.value.as_deref().map(|v| (v, ev.lease));
                        if let Err(e) = self.on_event(client, node, &ev.key, put).await {
                            return e;
                        }
                    }
                }
                msg = svc_watch.message() => {
                    let events = match self.watched(msg, &svc_prefix, "watching the services") {
                        Ok(events) => events,
                        Err(e) => return e,
                    };
                    for ev in events {
                        let value = ev.value.as_deref();
                        if let Err(e) = self.on_service_event(client, node, &ev.key, value, ev.mod_revision).await {
                            return e;
                        }
                    }
                }
            }
        }
    }

    /// One watch event: `put` is the new value and its etcd lease, `None` a delete.
    async fn on_event(
        &mut self,
        client: &mut Client,
        node: &Arc<Node>,
        key: &str,
        put: Option<(&[u8], i64)>,
    ) -> Result<(), ClusterError> {
        let subnet = match flannel::parse_subnet_key(self.spec.prefix(), key) {
            Ok(s) => s,
            Err(e) => {
                self.skip(key, &e.to_string());
                return Ok(());
            }
        };
        let ours = self.held.is_some_and(|h| h.subnet == subnet);
        let name = Lease::peer_name(subnet);
        match put {
            None if ours => self.ensure_key(client).await?,
            None if Some(subnet) == self.required && self.held.is_none() => {
                // The subnet this node runs on but could not lease is free now.
                return Err(ClusterError::Resync);
            }
            None => {
                self.skipped.remove(key);
                let removed = on_node(node, move |n| {
                    // The node logs the removal.
                    n.etcd_peers(&name)
                        .1
                        .then(|| n.remove_peer(&name, "its lease was deleted or expired in etcd"))
                })
                .await?;
                if let Some(Err(e)) = removed {
                    tracing::warn!(key, "removing a deleted lease's peer: {e}");
                }
                if !self.skipped.is_empty() {
                    // A lease refused for clashing with this one may fit now.
                    self.reconcile(client, node).await?;
                }
            }
            Some(_) if ours => {
                // Our own write, or someone else's on our key (reported, not overwritten).
                self.ensure_key(client).await?;
            }
            Some((value, etcd_lease)) => match Lease::parse(self.spec.prefix(), key, value) {
                Ok(lease) => {
                    let spec = lease.to_peer_spec();
                    let id = (etcd_lease != 0).then_some(etcd_lease);
                    let r = on_node(node, move |n| {
                        n.apply_etcd_peer(&spec, id).map_err(|e| e.to_string())
                    })
                    .await?;
                    match r {
                        Ok(_) => {
                            self.skipped.remove(key);
                        }
                        Err(e) => self.skip(key, &e),
                    }
                }
                Err(e) => {
                    self.skip(key, &e.to_string());
                    // A lease that became unusable no longer describes a peer.
                    on_node(node, move |n| {
                        if n.etcd_peers(&name).1 {
                            let _ = n.remove_peer(&name, "its lease in etcd became unusable");
                        }
                    })
                    .await?;
                }
            },
        }
        self.count_peers(node);
        Ok(())
    }
}

/// The service name of a key `<prefix>/<name>` (None: not such a key).
fn service_name<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let name = key.strip_prefix(prefix)?.strip_prefix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The service a key `<prefix>/<name>` holds: a [`ServiceSpec`] as JSON whose name is the key's
/// last segment (the node checks the rest when it applies it).
fn parse_service(prefix: &str, key: &str, value: &[u8]) -> Result<ServiceSpec, String> {
    let Some(name) = service_name(prefix, key) else {
        return Err(format!("not a service key (want {prefix}/<name>)"));
    };
    let spec: ServiceSpec = serde_json::from_slice(value).map_err(|e| {
        format!(
            "not a service as JSON (like {{\"name\":\"{name}\",\"vip\":\"10.96.0.10\",\"port\":80,\"backends\":[\"10.244.1.10:8080\"]}}): {e}"
        )
    })?;
    if spec.name != name {
        return Err(format!(
            "the service's name {:?} is not the key's last segment {name:?}",
            spec.name
        ));
    }
    Ok(spec)
}

/// A watch event, owned: the key, the new value (`None`: deleted), its etcd lease and
/// modification revision.
struct Watched {
    key: String,
    value: Option<Vec<u8>>,
    lease: i64,
    mod_revision: i64,
}

impl Agent {
    /// The events of one watch message on `prefix`, or why the watch ended (`what`: the
    /// call, for the error).
    fn watched(
        &self,
        msg: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
        prefix: &str,
        what: &'static str,
    ) -> Result<Vec<Watched>, ClusterError> {
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => return Err(self.etcd_err(what)("stream closed".into())),
            Err(e) => return Err(self.etcd_err(what)(e.to_string())),
        };
        if resp.canceled() {
            return Err(ClusterError::WatchCancelled {
                prefix: prefix.to_string(),
                reason: if resp.compact_revision() > 0 {
                    format!("revision compacted up to {}", resp.compact_revision())
                } else {
                    resp.cancel_reason().to_string()
                },
            });
        }
        Ok(resp
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                Some(Watched {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    value: (event.event_type() == EventType::Put).then(|| kv.value().to_vec()),
                    lease: kv.lease(),
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect())
    }
}

/// A listed lease with its etcd metadata.
#[derive(Debug, Clone, Copy)]
struct Listed {
    lease: Lease,
    etcd_lease: i64,
    mod_revision: i64,
}

/// Runs an etcd call with [`CALL_TIMEOUT`]; errors as text.
async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(brief(&e)),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// An etcd client error in one short line: a gRPC status as its code and message (not the
/// status's debug dump of details and metadata, logged at every retry), and the innermost
/// cause of anything else ("Connection refused (os error 111)").
fn brief(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let message = s.message();
            // A connect failure is reported as a status whose message holds the chain.
            let cause = message.rsplit(": ").next().unwrap_or(message);
            format!("{:?}: {cause}", s.code())
        }
        other => {
            let mut last: &dyn std::error::Error = other;
            while let Some(next) = last.source() {
                last = next;
            }
            last.to_string()
        }
    }
}

/// Exponential backoff between [`BACKOFF_MIN`] and [`BACKOFF_MAX`].
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }
    fn next(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        now
    }
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/podswitch/services";

    #[test]
    fn etcd_errors_are_one_short_line() {
        let status = tonic_status_unavailable();
        let text = brief(&status);
        assert_eq!(text, "Unavailable: Connection refused (os error 111)");
        assert!(status.to_string().len() > 2 * text.len(), "{status}");
        let other = etcd_client::Error::WatchError("watch canceled".into());
        assert_eq!(brief(&other), "watch error: watch canceled");
    }

    /// The error a client gets when nothing listens at the endpoint, as etcd-client builds it.
    fn tonic_status_unavailable() -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
            "error trying to connect: tcp connect error: Connection refused (os error 111)",
        ))
    }

    #[test]
    fn service_keys_name_their_service() {
        assert_eq!(service_name(P, "/podswitch/services/web"), Some("web"));
        assert_eq!(service_name(P, "/podswitch/services/"), None);
        assert_eq!(service_name(P, "/podswitch/services/a/b"), None);
        assert_eq!(service_name(P, "/podswitch/servicesweb"), None);
        assert_eq!(service_name(P, "/other/web"), None);
    }

    #[test]
    fn a_service_value_is_the_service_json_named_as_its_key() {
        let json = br#"{"name":"web","vip":"10.96.0.10","port":80,"proto":"tcp","backends":["10.244.1.10:8080"],"affinity":"client_ip"}"#;
        let spec = parse_service(P, "/podswitch/services/web", json).expect("valid");
        assert_eq!(spec.name, "web");
        assert_eq!(spec.address_text(), "10.96.0.10:80/tcp");
        assert_eq!(spec.backends.len(), 1);

        let e = parse_service(P, "/podswitch/services/other", json).unwrap_err();
        assert_eq!(
            e,
            "the service's name \"web\" is not the key's last segment \"other\""
        );
        let e = parse_service(P, "/podswitch/services/web", b"{not json").unwrap_err();
        assert!(e.starts_with("not a service as JSON"), "{e}");
        let e = parse_service(
            P,
            "/podswitch/services/web",
            br#"{"name":"web","vip":"10.96.0.10","port":80,"extra":1}"#,
        )
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse_service(P, "/podswitch/services/a/b", json).unwrap_err();
        assert_eq!(e, "not a service key (want /podswitch/services/<name>)");
    }
}
