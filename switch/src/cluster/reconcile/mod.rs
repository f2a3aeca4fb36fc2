//! The cluster agent's rules, sans-IO (after quinn-proto's `Connection`): a [`Reconciler`] takes
//! what etcd said (a list, a watch event, a lease's TTL, a key read back, the outcome of a
//! write) as plain data and answers with what to do next: the write to make ([`Claim`]),
//! [`Command`]s for the node (peers and services to apply or remove) and for the session (check
//! our key, list again, start over). It holds no client, no runtime and no clock; the etcd
//! session (`session.rs`) does the I/O and feeds the results back, and the node is reached
//! through [`ClusterTarget`](super::ClusterTarget), which the session calls with the node
//! commands.
//!
//! - Subnet choice ([`Reconciler::plan_claims`]): flannel's order (our own PublicIP's lease,
//!   then the previous or configured subnet, then free ones); with `node.pod_cidr` configured
//!   (or a remembered subnet the node runs on) only that one, and an error naming who holds it.
//! - Our key ([`Reconciler::check_key`]): recreated when absent (deleted, or expired with its
//!   lease), re-attached when it carries an older lease of ours, never overwritten when another
//!   node's value is in it (a conflict, reported until it goes).
//! - Our lease: a TTL of zero or less means it expired: a new one is granted and the key written
//!   again under it.
//! - Peers (`peers.rs`): a list makes the node's etcd peers exactly the usable leases other than
//!   ours; a watch event adds, updates or removes one; a delete may let a lease refused for
//!   clashing in, so it lists again; a watch cancelled by a compaction ends the session, whose
//!   successor lists again.
//! - Services (`services.rs`): the same for `<services_prefix>/<name>` keys.
//!
//! Invariants: a write of our key is guarded, absent ([`Guard::Absent`]) or unchanged since read
//! ([`Guard::Unchanged`]), so two nodes never hold one subnet; a key the node cannot use is
//! logged once per reason and tried again at the next list; every peer whose source is etcd
//! stems from a lease of the last list or a watch event after it.

mod peers;
mod services;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::flannel::{self, Candidate, Lease, LeaseAttrs, NetworkConfig};
use crate::node::{Mac, PeerSpec, ServiceSpec};

/// At most this many free subnets are tried per attempt (flannel picks among 100).
const MAX_FREE_CANDIDATES: usize = 100;
/// How often a node running on a subnet it could not lease tries again.
const RETRY_LEASE: Duration = Duration::from_secs(5);

/// What the rules refuse or report, for the session to end on or log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
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
    /// The watch was cancelled (its revision was compacted): list again.
    #[error("the watch of {prefix} was cancelled ({reason}); listing again")]
    WatchCancelled {
        /// The watched prefix.
        prefix: String,
        /// etcd's reason.
        reason: String,
    },
}

/// Who the node is in etcd: what it publishes, and where.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// flannel's prefix, without trailing slashes.
    pub(crate) prefix: String,
    /// The services prefix, without trailing slashes.
    pub(crate) services_prefix: String,
    /// The node's underlay address (`PublicIP`).
    pub(crate) public_ip: Ipv4Addr,
    /// The node's VTEP MAC.
    pub(crate) vtep_mac: Mac,
    /// The TTL of the etcd leases the node takes.
    pub(crate) lease_ttl_secs: u64,
}

/// A key and value as etcd lists or watches them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    /// The key.
    pub(crate) key: String,
    /// The value.
    pub(crate) value: Vec<u8>,
    /// The etcd lease attached (0: none).
    pub(crate) lease: i64,
    /// The revision of its last change.
    pub(crate) mod_revision: i64,
}

/// A list under a prefix, and the store's revision it was taken at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listing {
    /// The keys listed.
    pub(crate) kvs: Vec<Kv>,
    /// The revision of the list: a watch goes on from the one after.
    pub(crate) revision: i64,
}

/// A watch event: `value` None is a delete (also a lease's expiry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The key.
    pub(crate) key: String,
    /// The new value, or None: deleted.
    pub(crate) value: Option<Vec<u8>>,
    /// The etcd lease attached to the new value.
    pub(crate) lease: i64,
    /// The revision of the change.
    pub(crate) mod_revision: i64,
}

/// One message of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Watched {
    /// Events, in order.
    Events(Vec<Event>),
    /// etcd cancelled the watch: `compact_revision` > 0 if its start was compacted.
    Cancelled {
        /// The revision compacted up to (0: cancelled for another reason).
        compact_revision: i64,
        /// etcd's reason.
        reason: String,
    },
}

/// A listed, usable lease with its etcd metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listed {
    /// The lease.
    pub(crate) lease: Lease,
    /// Its etcd lease (0: none).
    pub(crate) etcd_lease: i64,
    /// The revision of its last change.
    pub(crate) mod_revision: i64,
}

/// The usable leases of a list, by key.
pub(crate) type Leases = BTreeMap<String, Listed>;

/// The condition a write of our key is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// The key must not exist (its version is 0).
    Absent,
    /// The key must be unchanged since this modification revision (our own lease, taken back).
    Unchanged(i64),
}

/// A subnet to try, and the guard to write its key under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    /// Where the subnet comes from.
    pub(crate) candidate: Candidate,
    /// The write's condition.
    pub(crate) guard: Guard,
}

/// A guarded write of our lease value: `value` on `key` attached to etcd lease `lease`, if
/// `guard` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    /// The subnet's key.
    pub(crate) key: String,
    /// Our lease value (flannel's JSON).
    pub(crate) value: String,
    /// The etcd lease to attach.
    pub(crate) lease: i64,
    /// The condition.
    pub(crate) guard: Guard,
}

/// What the node holds in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// The subnet.
    pub(crate) subnet: Ipv4Net,
    /// The etcd lease its key is attached to.
    pub(crate) lease: i64,
    /// The network config it was leased under.
    pub(crate) network: NetworkConfig,
}

/// What [`Reconciler::check_key`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    /// Nothing to write: the key is ours under our lease, or nothing is held, or another
    /// node's value is in it (a conflict, reported).
    Fine,
    /// Write this (then report with [`Reconciler::key_written`]).
    Write(Claim),
}

/// What to do on the node, through [`ClusterTarget`](super::ClusterTarget).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeCommand {
    /// Add or update the peer of the lease at `key` (`lease`: its etcd lease).
    ApplyPeer {
        /// The lease's key (its outcome is reported under it).
        key: String,
        /// The peer.
        peer: PeerSpec,
        /// The etcd lease ID.
        lease: Option<i64>,
    },
    /// Remove the peer `name` if the node has it from etcd.
    RemovePeer {
        /// The peer's name.
        name: String,
        /// Why, for the node's log.
        why: &'static str,
    },
    /// Make the node's etcd peers exactly these (by key): others removed, each applied.
    SyncPeers(Vec<(String, PeerSpec, Option<i64>)>),
    /// Add or replace the service at `key`.
    ApplyService {
        /// The service's key (its outcome is reported under it).
        key: String,
        /// The service.
        spec: ServiceSpec,
    },
    /// Remove the service `name` if the node has it from etcd.
    RemoveService {
        /// Its key, for the log.
        key: String,
        /// The service's name.
        name: String,
    },
    /// Make the node's etcd services exactly these (by key).
    SyncServices(Vec<(String, ServiceSpec)>),
}

/// What to do next, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// A change on the node.
    Node(NodeCommand),
    /// Read our key and [`Reconciler::check_key`] it.
    EnsureKey,
    /// List the subnets again and sync the peers ([`Reconciler::read_subnets`],
    /// [`Reconciler::peers_of`]); the watch goes on.
    RelistSubnets,
    /// List the services again and sync them ([`Reconciler::on_service_list`]).
    RelistServices,
    /// End the session and start the next one at once (the node may lease its subnet now).
    Resync,
}

/// How one node command's item fared (the node's refusal as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The peer of the lease at `key`.
    Peer {
        /// The lease's key.
        key: String,
        /// Applied, or why not.
        result: Result<(), String>,
    },
    /// The service at `key`.
    Service {
        /// The service's key.
        key: String,
        /// Applied, or why not.
        result: Result<(), String>,
    },
}

/// What the tick of a session does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Renew the lease.
    KeepAlive,
    /// Try to lease the subnet the node runs on again.
    TryLease,
}

/// The events of a watch message, or why the watch of `prefix` ended (the session ends; the
/// next one lists again).
fn events(w: Watched, prefix: impl FnOnce() -> String) -> Result<Vec<Event>, ReconcileError> {
    match w {
        Watched::Events(events) => Ok(events),
        Watched::Cancelled {
            compact_revision,
            reason,
        } => Err(ReconcileError::WatchCancelled {
            prefix: prefix(),
            reason: if compact_revision > 0 {
                format!("revision compacted up to {compact_revision}")
            } else {
                reason
            },
        }),
    }
}

/// Keys not used, with the reason last logged: each logged once per reason.
#[derive(Debug, Default)]
struct Skips {
    what: &'static str,
    keys: HashMap<String, String>,
}

impl Skips {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            keys: HashMap::new(),
        }
    }

    /// Logs once per key and reason that `key` is not used.
    fn skip(&mut self, key: &str, reason: &str) {
        if self.keys.get(key).map(String::as_str) != Some(reason) {
            tracing::warn!(key, "{} ignored: {reason}", self.what);
            self.keys.insert(key.to_string(), reason.to_string());
        }
    }

    fn forget(&mut self, key: &str) {
        self.keys.remove(key);
    }

    fn retain(&mut self, seen: &[String]) {
        self.keys.retain(|k, _| seen.contains(k));
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn record(&mut self, key: String, result: Result<(), String>) {
        match result {
            Ok(()) => self.forget(&key),
            Err(e) => self.skip(&key, &e),
        }
    }
}

/// The rules' state: what the node holds, what it must hold, and what it skipped.
#[derive(Debug)]
pub(crate) struct Reconciler {
    me: Identity,
    /// `node.pod_cidr` from the file, or the remembered subnet the node runs on: the only
    /// subnet this node may lease.
    required: Option<Ipv4Net>,
    held: Option<Held>,
    /// Lease keys the node could not use.
    skipped: Skips,
    /// Subnets of the last list held by leases the node cannot use (another backend): taken
    /// all the same.
    foreign: Vec<Ipv4Net>,
    /// Service keys not applied.
    svc_skipped: Skips,
    /// The revision of the last list of the services: watch events up to it are in it.
    svc_listed: i64,
    /// Another node holds the subnet this node runs on (as reported).
    conflict: Option<String>,
}

impl Reconciler {
    /// The rules for the node `me`; `required`: `node.pod_cidr`, if the file gives one.
    pub(crate) fn new(me: Identity, required: Option<Ipv4Net>) -> Self {
        Self {
            me,
            required,
            held: None,
            skipped: Skips::new("lease"),
            foreign: Vec::new(),
            svc_skipped: Skips::new("service"),
            svc_listed: 0,
            conflict: None,
        }
    }

    /// Who the node is.
    pub(crate) fn identity(&self) -> &Identity {
        &self.me
    }

    /// The subnet the node must lease, if any.
    pub(crate) fn required(&self) -> Option<Ipv4Net> {
        self.required
    }

    /// What the node holds.
    pub(crate) fn held(&self) -> Option<Held> {
        self.held
    }

    /// The conflict to report, if another node holds the subnet this node runs on.
    pub(crate) fn conflict(&self) -> Option<&str> {
        self.conflict.as_deref()
    }

    /// The key of `subnet`.
    pub(crate) fn key_of(&self, subnet: Ipv4Net) -> String {
        flannel::subnet_key(&self.me.prefix, subnet)
    }

    /// Records (and logs, once per message) that another node holds this node's subnet, or
    /// clears it (`None`).
    fn set_conflict(&mut self, what: Option<String>) {
        if let Some(w) = &what {
            if self.conflict.as_ref() != Some(w) {
                tracing::error!("{w}");
            }
        } else if self.conflict.is_some() {
            tracing::info!("the node holds its subnet's key again");
        }
        self.conflict = what;
    }

    /// `<prefix>/config` as read (`None`: absent), checked by flannel's rules.
    pub(crate) fn network_config(
        &self,
        value: Option<&[u8]>,
    ) -> Result<NetworkConfig, ReconcileError> {
        let key = flannel::config_key(&self.me.prefix);
        let Some(value) = value else {
            return Err(ReconcileError::Config {
                key,
                reason: "is missing: write flannel's network config there, like \
                         {\"Network\": \"10.244.0.0/16\", \"Backend\": {\"Type\": \"vxlan\"}}"
                    .into(),
            });
        };
        NetworkConfig::parse(value).map_err(|e| ReconcileError::Config {
            key: format!("{key}: {}", e.key),
            reason: e.reason,
        })
    }

    /// The subnets to try, in order, given the usable `leases` of a list and the subnet the
    /// node held `previous`ly (remembered); with a required subnet, only that one.
    pub(crate) fn plan_claims(
        &self,
        network: &NetworkConfig,
        leases: &Leases,
        previous: Option<Ipv4Net>,
    ) -> Result<Vec<Planned>, ReconcileError> {
        // Every subnet somebody holds, whatever its backend (flannel counts them all).
        let mut held_by_others: Vec<(Ipv4Net, Ipv4Addr)> = self
            .foreign
            .iter()
            .map(|s| (*s, Ipv4Addr::UNSPECIFIED))
            .collect();
        held_by_others.extend(
            leases
                .values()
                .map(|l| (l.lease.subnet, l.lease.attrs.public_ip)),
        );
        let previous = self.required.or(previous);
        let mut candidates = flannel::candidates(
            network,
            held_by_others.iter().copied(),
            self.me.public_ip,
            previous,
            MAX_FREE_CANDIDATES,
        )
        .map_err(|e| ReconcileError::NoSubnet(format!("{} in {}/config", e, self.me.prefix)))?;
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
                return Err(ReconcileError::NoSubnet(format!(
                    "node.pod_cidr {required} {holder}"
                )));
            }
        }
        Ok(candidates
            .into_iter()
            .map(|candidate| {
                let own_rev = match candidate {
                    Candidate::Own(s) => leases.get(&self.key_of(s)).map(|l| l.mod_revision),
                    _ => None,
                };
                Planned {
                    candidate,
                    guard: own_rev.map_or(Guard::Absent, Guard::Unchanged),
                }
            })
            .collect())
    }

    /// The write of our value on `subnet`'s key under etcd lease `lease`.
    pub(crate) fn claim(&self, subnet: Ipv4Net, lease: i64, vni: u32, guard: Guard) -> Claim {
        let value = LeaseAttrs {
            public_ip: self.me.public_ip,
            vni,
            vtep_mac: self.me.vtep_mac,
        };
        Claim {
            key: self.key_of(subnet),
            value: value.to_json(),
            lease,
            guard,
        }
    }

    /// A claim succeeded: the node holds `held` now.
    pub(crate) fn hold(&mut self, held: Held) {
        self.held = Some(held);
    }

    /// The session starts while nothing is held (the node started on a remembered subnet with
    /// etcd away): the subnet it runs on is the one to lease.
    pub(crate) fn running_on(&mut self, subnet: Ipv4Net) {
        self.required = Some(subnet);
    }

    /// Leasing the subnet the node runs on worked (`None`) or failed with `why`: another node
    /// may hold it, which is reported as a conflict (`forget`: the file to delete to start
    /// afresh).
    pub(crate) fn leased_running_subnet(
        &mut self,
        why: Option<&dyn std::fmt::Display>,
        forget: &str,
    ) {
        let what = why.map(|e| {
            let subnet = self.required.map_or_else(String::new, |s| s.to_string());
            format!(
                "this node runs on {subnet} but cannot lease it: {e}; its pods' addresses may clash with another node's (restart it on a free subnet: delete {forget} first)"
            )
        });
        self.set_conflict(what);
    }

    /// etcd said our lease has `ttl` seconds left: true if alive, false if it expired (then
    /// grant a new one and report it with [`Reconciler::lease_renewed`]).
    pub(crate) fn on_lease_ttl(&self, ttl: i64) -> bool {
        self.held.is_none() || ttl > 0
    }

    /// A new etcd lease replaces an expired one; returns what is held now (our key is to be
    /// written again under it: [`Reconciler::check_key`] sees the old lease on it, or no key).
    pub(crate) fn lease_renewed(&mut self, lease: i64) -> Option<Held> {
        let held = self.held.as_mut()?;
        tracing::warn!(
            old = format_args!("{:x}", held.lease),
            new = format_args!("{lease:x}"),
            "the node's etcd lease had expired; granted a new one"
        );
        held.lease = lease;
        Some(*held)
    }

    /// A keep-alive answered with `ttl`: the lease lives on, or is lost (the session ends; the
    /// next one grants a new lease).
    pub(crate) fn on_keepalive(&self, ttl: i64) -> Result<i64, ReconcileError> {
        if ttl > 0 {
            Ok(ttl)
        } else {
            Err(ReconcileError::LeaseLost(self.held.map_or(0, |h| h.lease)))
        }
    }

    /// How often the session ticks: a third of the TTL while a lease is held, else
    /// [`RETRY_LEASE`].
    pub(crate) fn tick_every(&self) -> Duration {
        match self.held {
            Some(_) => Duration::from_secs((self.me.lease_ttl_secs / 3).max(1)),
            None => RETRY_LEASE,
        }
    }

    /// What a tick does.
    pub(crate) fn on_tick(&self) -> Tick {
        match self.held {
            Some(_) => Tick::KeepAlive,
            None => Tick::TryLease,
        }
    }

    /// Our key as read (`None`: absent): what to write, if anything. Another node's value is a
    /// conflict, reported and left alone (its delete is watched).
    pub(crate) fn check_key(&mut self, current: Option<&Kv>) -> KeyCheck {
        let Some(held) = self.held else {
            return KeyCheck::Fine;
        };
        let guard = match current {
            None => Guard::Absent,
            Some(kv) => {
                let ours = LeaseAttrs::parse(&kv.value).is_ok_and(|a| {
                    a.public_ip == self.me.public_ip && a.vtep_mac == self.me.vtep_mac
                });
                if !ours {
                    self.set_conflict(Some(format!(
                        "the node's subnet key {} holds another node's lease: {}",
                        kv.key,
                        String::from_utf8_lossy(&kv.value)
                    )));
                    return KeyCheck::Fine;
                }
                if kv.lease == held.lease {
                    self.set_conflict(None);
                    return KeyCheck::Fine;
                }
                Guard::Unchanged(kv.mod_revision)
            }
        };
        KeyCheck::Write(self.claim(held.subnet, held.lease, held.network.vni, guard))
    }

    /// The write [`Reconciler::check_key`] asked for succeeded (`ok`) or found the key changed.
    pub(crate) fn key_written(&mut self, claim: &Claim, ok: bool) -> Result<(), ReconcileError> {
        if !ok {
            return Err(ReconcileError::NoSubnet(format!(
                "the node's subnet key {} changed while being rewritten; checking again",
                claim.key
            )));
        }
        if claim.guard == Guard::Absent {
            tracing::warn!(key = %claim.key, "the node's subnet key was gone; recreated it");
        }
        self.set_conflict(None);
        Ok(())
    }

    /// Outcomes of node commands: a key applied is no longer skipped; a refusal is logged once.
    pub(crate) fn on_outcomes(&mut self, outcomes: Vec<Outcome>) {
        for o in outcomes {
            match o {
                Outcome::Peer { key, result } => self.skipped.record(key, result),
                Outcome::Service { key, result } => self.svc_skipped.record(key, result),
            }
        }
    }
}
