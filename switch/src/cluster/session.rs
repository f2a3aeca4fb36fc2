//! The agent's etcd session: the thin loop that makes the calls the reconciler asks for (through
//! `etcd.rs`), feeds it the answers, and carries its node commands out on a
//! [`ClusterTarget`] off the async runtime (node changes talk netlink, which runs a runtime of
//! its own, and may take a while for many peers).
//!
//! Invariant: a session either runs for good or ends with the reason (an etcd failure, a rule
//! the reconciler reports, or a resync); the next one starts from a fresh list, so whatever
//! was missed while it was down is reconciled.

use std::convert::Infallible;
use std::sync::Arc;

use super::agent::{Agent, Backoff};
use super::etcd::Conn;
use super::flannel;
use super::reconcile::{Command, Held, KeyCheck, NodeCommand, ReconcileError, Tick};
use super::target::execute;
use super::{Acquired, ClusterError, ClusterTarget, Memory};

/// Why the last candidate failed when every one was taken during the attempt.
const ALL_TAKEN: &str = "every candidate subnet was taken meanwhile; trying again";

impl Agent {
    /// One attempt of step 1 (module docs of `agent.rs`).
    pub(super) async fn lease_subnet(&mut self) -> Result<Acquired, ClusterError> {
        let mut conn = self.etcd.connect().await?;
        let prefix = self.core.identity().prefix.clone();
        let config = conn
            .get(&flannel::config_key(&prefix), "reading the network config")
            .await?;
        let network = self
            .core
            .network_config(config.as_ref().map(|kv| kv.value.as_slice()))?;
        let listing = conn
            .list(&flannel::subnets_key(&prefix), "listing the subnets")
            .await?;
        let leases = self.core.read_subnets(&listing.kvs);
        let previous = Memory::load(&self.memory_path).map(|m| m.subnet);
        let plan = self.core.plan_claims(&network, &leases, previous)?;
        let ttl = self.core.identity().lease_ttl_secs as i64;
        let lease = conn.grant(ttl).await?;
        for planned in plan {
            let subnet = planned.candidate.subnet();
            let claim = self.core.claim(subnet, lease, network.vni, planned.guard);
            if conn.write(&claim).await? {
                tracing::info!(subnet = %subnet, lease = format_args!("{lease:x}"), how = ?planned.candidate, node = %self.node_name, "subnet leased");
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
        conn.revoke(lease).await;
        Err(ReconcileError::NoSubnet(ALL_TAKEN.into()).into())
    }

    /// Keeps the node in the cluster for as long as it runs (step 2 of the module docs).
    pub async fn run<T: ClusterTarget>(mut self, target: Arc<T>) {
        let mut backoff = Backoff::new();
        loop {
            let Err(e) = self.session(&target, &mut backoff).await;
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
    /// something fails. Ends with why.
    async fn session<T: ClusterTarget>(
        &mut self,
        target: &Arc<T>,
        backoff: &mut Backoff,
    ) -> Result<Infallible, ClusterError> {
        let mut conn = self.etcd.connect().await?;
        if self.core.held().is_none() {
            // Started on a remembered subnet while etcd was away: lease that one (the pods
            // have addresses in it). If another node holds it, say so and keep following the
            // peers; `follow` tries again.
            self.core.running_on(target.pod_cidr());
            let forget = self.memory_path.display().to_string();
            match self.lease_subnet().await {
                Ok(_) => self.core.leased_running_subnet(None, &forget),
                Err(e) if e.is_unreachable() => return Err(e),
                Err(e) => self.core.leased_running_subnet(Some(&e), &forget),
            }
            self.publish_conflict();
        }
        self.ensure_lease(&mut conn).await?;
        self.ensure_key(&mut conn).await?;
        let revision = self.relist_subnets(&mut conn, target).await?;
        let svc_revision = self.relist_services(&mut conn, target).await?;
        self.healthy();
        backoff.reset();
        self.follow(&mut conn, target, revision, svc_revision).await
    }

    /// Checks our lease is alive; grants a new one (and records it) if it is not.
    async fn ensure_lease(&mut self, conn: &mut Conn) -> Result<(), ClusterError> {
        let Some(held) = self.core.held() else {
            return Ok(());
        };
        let ttl = conn.time_to_live(held.lease).await?;
        if self.core.on_lease_ttl(ttl) {
            self.renewed(ttl);
            return Ok(());
        }
        let lease = conn
            .grant(self.core.identity().lease_ttl_secs as i64)
            .await?;
        if let Some(held) = self.core.lease_renewed(lease) {
            self.hold(held);
        }
        Ok(())
    }

    /// Reads our key and writes it if the reconciler says so (recreated, re-attached).
    async fn ensure_key(&mut self, conn: &mut Conn) -> Result<(), ClusterError> {
        let Some(held) = self.core.held() else {
            return Ok(());
        };
        let key = self.core.key_of(held.subnet);
        let current = conn.get(&key, "reading the node's key").await?;
        let r = match self.core.check_key(current.as_ref()) {
            KeyCheck::Fine => Ok(()),
            KeyCheck::Write(claim) => {
                let ok = conn.write(&claim).await?;
                self.core
                    .key_written(&claim, ok)
                    .map_err(ClusterError::from)
            }
        };
        self.publish_conflict();
        r
    }

    /// Lists the subnets and makes the node's etcd peers what the list calls for. Returns the
    /// list's revision.
    async fn relist_subnets<T: ClusterTarget>(
        &mut self,
        conn: &mut Conn,
        target: &Arc<T>,
    ) -> Result<i64, ClusterError> {
        let prefix = flannel::subnets_key(&self.core.identity().prefix);
        let listing = conn.list(&prefix, "listing the subnets").await?;
        let leases = self.core.read_subnets(&listing.kvs);
        let sync = self.core.peers_of(leases);
        self.on_node(target, vec![sync]).await?;
        Ok(listing.revision)
    }

    /// Lists the services and makes the node's etcd services the valid keys listed. Returns
    /// the list's revision.
    async fn relist_services<T: ClusterTarget>(
        &mut self,
        conn: &mut Conn,
        target: &Arc<T>,
    ) -> Result<i64, ClusterError> {
        let prefix = format!("{}/", self.core.identity().services_prefix);
        let listing = conn.list(&prefix, "listing the services").await?;
        let sync = self.core.on_service_list(&listing.kvs, listing.revision);
        self.on_node(target, vec![sync]).await?;
        Ok(listing.revision)
    }

    /// Carries `commands` out on the node, off the runtime; the outcomes go to the reconciler
    /// and the counts to the status.
    async fn on_node<T: ClusterTarget>(
        &mut self,
        target: &Arc<T>,
        commands: Vec<NodeCommand>,
    ) -> Result<(), ClusterError> {
        let t = Arc::clone(target);
        let (outcomes, peers, services) = tokio::task::spawn_blocking(move || {
            let outcomes = execute(&*t, commands);
            (outcomes, t.etcd_peer_count(), t.etcd_service_names().len())
        })
        .await
        .map_err(|e| ClusterError::Internal(e.to_string()))?;
        self.core.on_outcomes(outcomes);
        self.counted(peers, services);
        Ok(())
    }

    /// Does what the reconciler asked for, in order (node commands in a row go together).
    async fn run_commands<T: ClusterTarget>(
        &mut self,
        conn: &mut Conn,
        target: &Arc<T>,
        commands: Vec<Command>,
    ) -> Result<(), ClusterError> {
        let mut batch = Vec::new();
        for c in commands {
            if let Command::Node(n) = c {
                batch.push(n);
                continue;
            }
            if !batch.is_empty() {
                self.on_node(target, std::mem::take(&mut batch)).await?;
            }
            match c {
                Command::Node(_) => {}
                Command::EnsureKey => self.ensure_key(conn).await?,
                Command::RelistSubnets => {
                    self.relist_subnets(conn, target).await?;
                }
                Command::RelistServices => {
                    self.relist_services(conn, target).await?;
                }
                Command::Resync => return Err(ClusterError::Resync),
            }
        }
        if !batch.is_empty() {
            self.on_node(target, batch).await?;
        }
        Ok(())
    }

    /// Keeps the lease alive and applies watch events from `revision + 1` (the subnets) and
    /// `svc_revision + 1` (the services) until something fails.
    async fn follow<T: ClusterTarget>(
        &mut self,
        conn: &mut Conn,
        target: &Arc<T>,
        revision: i64,
        svc_revision: i64,
    ) -> Result<Infallible, ClusterError> {
        let prefix = flannel::subnets_key(&self.core.identity().prefix);
        let svc_prefix = format!("{}/", self.core.identity().services_prefix);
        // Without a lease (the subnet the node runs on is someone else's), only the watch;
        // the tick then tries to lease the subnet again.
        let mut keep = match self.core.held() {
            Some(h) => Some(conn.keep_alive(h.lease).await?),
            None => None,
        };
        let mut watch = conn
            .watch(&prefix, revision + 1, "watching the subnets")
            .await?;
        let mut svc_watch = conn
            .watch(&svc_prefix, svc_revision + 1, "watching the services")
            .await?;
        let mut tick = tokio::time::interval(self.core.tick_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let keepalive = async {
                match keep.as_mut() {
                    Some(k) => k.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => match (self.core.on_tick(), keep.as_mut()) {
                    (Tick::KeepAlive, Some(k)) => k.renew().await?,
                    (Tick::KeepAlive, None) => {}
                    (Tick::TryLease, _) => match self.lease_subnet().await {
                        Ok(_) => return Err(ClusterError::Resync),
                        Err(e) if e.is_unreachable() => return Err(e),
                        Err(_) => {}
                    },
                },
                ttl = keepalive => {
                    let ttl = self.core.on_keepalive(ttl?)?;
                    self.renewed(ttl);
                }
                // Event by event: each one's commands are carried out before the next is
                // decided, as the store changed them one after the other.
                w = watch.next() => {
                    for ev in self.core.subnet_watch_events(w?)? {
                        let commands = self.core.on_subnet_event(ev);
                        self.run_commands(conn, target, commands).await?;
                    }
                }
                w = svc_watch.next() => {
                    for ev in self.core.service_watch_events(w?)? {
                        let commands = self.core.on_service_event(ev);
                        self.run_commands(conn, target, commands).await?;
                    }
                }
            }
        }
    }
}
