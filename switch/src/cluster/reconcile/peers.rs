//! The rules for `<prefix>/subnets/`: a list or a watch event -> the node's etcd peers.
//!
//! Invariant: our own subnet's key never becomes a peer; whatever else is usable does, by the
//! rules of `peer add` (the node may still refuse one: logged once, tried at the next list).

use super::{
    events, Command, Event, Kv, Leases, Listed, NodeCommand, ReconcileError, Reconciler, Watched,
};
use crate::cluster::flannel::{self, Lease};

/// Why a peer goes when its lease is deleted (also: expired).
pub(crate) const WHY_DELETED: &str = "its lease was deleted or expired in etcd";
/// Why a peer goes when its lease's value became unusable.
pub(crate) const WHY_UNUSABLE: &str = "its lease in etcd became unusable";

impl Reconciler {
    /// A list of `<prefix>/subnets/`: the usable vxlan leases by key. Keys or values the node
    /// cannot use are logged once each and left out; those of another backend still count as
    /// taken when a subnet is chosen.
    pub(crate) fn read_subnets(&mut self, kvs: &[Kv]) -> Leases {
        let mut out = Leases::new();
        let mut seen = Vec::new();
        let mut foreign = Vec::new();
        for kv in kvs {
            seen.push(kv.key.clone());
            match Lease::parse(&self.me.prefix, &kv.key, &kv.value) {
                Ok(lease) => {
                    self.skipped.forget(&kv.key);
                    out.insert(
                        kv.key.clone(),
                        Listed {
                            lease,
                            etcd_lease: kv.lease,
                            mod_revision: kv.mod_revision,
                        },
                    );
                }
                Err(e) => {
                    if let Ok(subnet) = flannel::parse_subnet_key(&self.me.prefix, &kv.key) {
                        foreign.push(subnet);
                    }
                    self.skipped.skip(&kv.key, &e.to_string());
                }
            }
        }
        self.foreign = foreign;
        self.skipped.retain(&seen);
        out
    }

    /// The node's etcd peers a list calls for: every usable lease other than on our own subnet
    /// (held, or the one the node must lease); another node's lease there is logged.
    pub(crate) fn peers_of(&mut self, leases: Leases) -> NodeCommand {
        let own = self.held.map(|h| h.subnet).or(self.required);
        let mut wanted = Vec::new();
        for (key, l) in leases {
            if Some(l.lease.subnet) == own {
                if l.lease.attrs.public_ip != self.me.public_ip {
                    self.skipped.skip(
                        &key,
                        &format!(
                            "another node ({}) holds this node's subnet",
                            l.lease.attrs.public_ip
                        ),
                    );
                }
                continue;
            }
            let lease = (l.etcd_lease != 0).then_some(l.etcd_lease);
            wanted.push((key, l.lease.to_peer_spec(), lease));
        }
        NodeCommand::SyncPeers(wanted)
    }

    /// One message of the subnets' watch: its events, to be given to [`Self::on_subnet_event`]
    /// one at a time, each one's commands carried out (and their outcomes reported) before
    /// the next is decided (a relist or a refusal changes what a later event means); or why
    /// the watch ended (a cancel: the session ends and the next one lists again).
    pub(crate) fn subnet_watch_events(&self, w: Watched) -> Result<Vec<Event>, ReconcileError> {
        events(w, || flannel::subnets_key(&self.me.prefix))
    }

    /// One watch event under `<prefix>/subnets/`.
    pub(crate) fn on_subnet_event(&mut self, ev: Event) -> Vec<Command> {
        let subnet = match flannel::parse_subnet_key(&self.me.prefix, &ev.key) {
            Ok(s) => s,
            Err(e) => {
                self.skipped.skip(&ev.key, &e.to_string());
                return Vec::new();
            }
        };
        let ours = self.held.is_some_and(|h| h.subnet == subnet);
        let name = Lease::peer_name(subnet);
        match ev.value {
            // Our key deleted (or expired), or written: by us, or by someone else (reported,
            // not overwritten).
            _ if ours => vec![Command::EnsureKey],
            // The subnet this node runs on but could not lease is free now.
            None if Some(subnet) == self.required && self.held.is_none() => vec![Command::Resync],
            None => {
                self.skipped.forget(&ev.key);
                let mut out = vec![Command::Node(NodeCommand::RemovePeer {
                    name,
                    why: WHY_DELETED,
                })];
                if !self.skipped.is_empty() {
                    // A lease refused for clashing with this one may fit now.
                    out.push(Command::RelistSubnets);
                }
                out
            }
            Some(value) => match Lease::parse(&self.me.prefix, &ev.key, &value) {
                Ok(lease) => vec![Command::Node(NodeCommand::ApplyPeer {
                    key: ev.key,
                    peer: lease.to_peer_spec(),
                    lease: (ev.lease != 0).then_some(ev.lease),
                })],
                Err(e) => {
                    self.skipped.skip(&ev.key, &e.to_string());
                    // A lease that became unusable no longer describes a peer.
                    vec![Command::Node(NodeCommand::RemovePeer {
                        name,
                        why: WHY_UNUSABLE,
                    })]
                }
            },
        }
    }
}
