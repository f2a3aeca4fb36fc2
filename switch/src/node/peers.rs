//! The node's peers: adding one (from the config file, `peer add` or an etcd lease), updating
//! one learnt from etcd in one step, removing one, with the node's route to its pod CIDR
//! through the host interface, and where each came from ([`PeerStatus`], [`PeerSource`]).
//!
//! Invariants: every peer the switch knows has one status here, checked by the same rules
//! whatever its source; the peer lock is held across a change, so concurrent requests cannot
//! interleave them; a peer from etcd is changed only by etcd (`peer del` refuses it), and a
//! peer from elsewhere is never replaced by etcd; the runtime peers are in the state file.

use super::{lock, Node, NodeError, PeerSpec, SpecError};

/// Where a peer (or a service) came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSource {
    /// A `[[peers]]` (`[[services]]`) entry of the config file.
    Config,
    /// `podswitch peer add` (`service add`); the default for a status without a source.
    #[default]
    Runtime,
    /// A lease in etcd (`[cluster]`).
    Etcd,
}

impl std::fmt::Display for PeerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Config => "config",
            Self::Runtime => "runtime",
            Self::Etcd => "etcd",
        })
    }
}

/// A peer as `podswitch peer list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    /// What the peer was added as.
    pub spec: PeerSpec,
    /// Where it came from.
    pub source: PeerSource,
    /// For a peer from etcd: the ID of the etcd lease its key is attached to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
}

/// What [`Node::apply_etcd_peer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerChange {
    /// A new peer.
    Added,
    /// The peer's underlay, CIDR or VTEP MAC changed.
    Updated,
    /// Nothing to do.
    Unchanged,
}

impl Node {
    /// Adds a peer node (`peer add`), refused by the same rules as a `[[peers]]` entry (fields
    /// named `peer.*`); flows to other peers and between local pods go on.
    pub(crate) fn add_peer(&self, spec: &PeerSpec) -> Result<(), NodeError> {
        self.add_peer_from(spec, PeerSource::Runtime)
    }

    pub(super) fn add_peer_from(
        &self,
        spec: &PeerSpec,
        source: PeerSource,
    ) -> Result<(), NodeError> {
        let mut peers = lock(&self.peers);
        spec.check(&self.spec, peers.iter().map(|p| &p.spec), "peer")?;
        self.switch
            .add_peer(spec.to_peer(&self.spec))
            .map_err(NodeError::Peer)?;
        self.peer_onto_fast_path(spec);
        self.host_route(spec.pod_cidr, true);
        peers.push(PeerStatus {
            spec: spec.clone(),
            source,
            lease: None,
        });
        if source == PeerSource::Runtime {
            self.save_peers(&peers);
        }
        tracing::info!(peer = %spec.name, underlay = %spec.underlay, pod_cidr = %spec.pod_cidr, %source, "peer added");
        Ok(())
    }

    /// Adds or updates a peer learnt from an etcd lease (`lease`: its etcd lease ID), by the
    /// same rules as `peer add`. A changed underlay, CIDR or VTEP MAC replaces the peer in one
    /// step. A peer of the same name from elsewhere is not touched (refused).
    pub(crate) fn apply_etcd_peer(
        &self,
        spec: &PeerSpec,
        lease: Option<i64>,
    ) -> Result<PeerChange, NodeError> {
        let mut peers = lock(&self.peers);
        let at = peers.iter().position(|p| p.spec.name == spec.name);
        let change = etcd_change(at.map(|i| &peers[i]), spec)?;
        let Some(at) = at else {
            drop(peers);
            self.add_peer_from(spec, PeerSource::Etcd)?;
            if let Some(p) = lock(&self.peers)
                .iter_mut()
                .find(|p| p.spec.name == spec.name)
            {
                p.lease = lease;
            }
            return Ok(PeerChange::Added);
        };
        peers[at].lease = lease;
        if change == PeerChange::Unchanged {
            return Ok(change);
        }
        let others: Vec<&PeerSpec> = peers
            .iter()
            .filter(|p| p.spec.name != spec.name)
            .map(|p| &p.spec)
            .collect();
        spec.check(&self.spec, others.iter().copied(), "peer")?;
        self.switch
            .replace_peer(&spec.name, spec.to_peer(&self.spec))
            .map_err(NodeError::Peer)?;
        self.peer_onto_fast_path(spec);
        if peers[at].spec.pod_cidr != spec.pod_cidr {
            self.host_route(peers[at].spec.pod_cidr, false);
            self.host_route(spec.pod_cidr, true);
        }
        tracing::info!(peer = %spec.name, underlay = %spec.underlay, pod_cidr = %spec.pod_cidr, vtep_mac = %spec.vtep_mac(), source = "etcd", "peer updated");
        peers[at].spec = spec.clone();
        Ok(PeerChange::Updated)
    }

    /// Removes a peer node and its route (`peer del`). A peer learnt from etcd is refused: it
    /// would come back at the next list; its lease is what to delete.
    pub(crate) fn del_peer(&self, name: &str) -> Result<(), NodeError> {
        deletable(&lock(&self.peers), name)?;
        self.remove_peer(name, "peer del")
    }

    /// Removes a peer node and its route, whatever its source.
    pub(crate) fn remove_peer(&self, name: &str, why: &str) -> Result<(), NodeError> {
        let mut peers = lock(&self.peers);
        self.peer_off_fast_path(name);
        let removed = self.switch.remove_peer(name).map_err(NodeError::Peer)?;
        self.host_route(removed.pod_cidr, false);
        peers.retain(|p| p.spec.name != name);
        self.save_peers(&peers);
        tracing::info!(peer = %name, why, "peer removed");
        Ok(())
    }

    /// How many peers came from etcd, and whether `name` is one of them (without copying the
    /// peer list: the etcd agent asks after every event).
    pub(crate) fn etcd_peers(&self, name: &str) -> (usize, bool) {
        count_etcd(&lock(&self.peers), name)
    }

    /// Every peer, as added, with where it came from.
    pub(crate) fn peers(&self) -> Vec<PeerStatus> {
        lock(&self.peers).clone()
    }
}

/// What an etcd lease for `spec` does to the peer of the same name, `existing`: adds it (none
/// yet), leaves it (the same), updates it (changed), or is refused (a peer from the config
/// file or `peer add`: etcd never replaces one).
fn etcd_change(existing: Option<&PeerStatus>, spec: &PeerSpec) -> Result<PeerChange, SpecError> {
    match existing {
        None => Ok(PeerChange::Added),
        Some(p) if p.source != PeerSource::Etcd => Err(SpecError::new(
            "peer.name",
            format!("{:?} is already a peer from the {}", spec.name, p.source),
        )),
        Some(p) if p.spec == *spec => Ok(PeerChange::Unchanged),
        Some(_) => Ok(PeerChange::Updated),
    }
}

/// Whether `peer del` may remove peer `name` of `peers`: not one learnt from etcd (it would
/// come back at the next list; its lease is what to delete).
fn deletable(peers: &[PeerStatus], name: &str) -> Result<(), SpecError> {
    if peers
        .iter()
        .any(|p| p.spec.name == name && p.source == PeerSource::Etcd)
    {
        return Err(SpecError::new(
            "peer.name",
            format!("{name:?} is learnt from etcd: delete its lease there instead"),
        ));
    }
    Ok(())
}

/// How many of `peers` came from etcd, and whether `name` is one of them.
fn count_etcd(peers: &[PeerStatus], name: &str) -> (usize, bool) {
    let mut n = 0;
    let mut found = false;
    for p in peers.iter().filter(|p| p.source == PeerSource::Etcd) {
        n += 1;
        found |= p.spec.name == name;
    }
    (n, found)
}

/// The specs of the peers added at runtime (`peer add`): what the state file keeps of `peers`.
pub(super) fn runtime_specs(peers: &[PeerStatus]) -> Vec<PeerSpec> {
    peers
        .iter()
        .filter(|p| p.source == PeerSource::Runtime)
        .map(|p| p.spec.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, third: u8) -> PeerSpec {
        PeerSpec {
            name: name.into(),
            underlay: std::net::Ipv4Addr::new(192, 168, 77, third),
            pod_cidr: format!("10.244.{third}.0/24").parse().expect("cidr"),
            vtep_mac: None,
        }
    }

    fn status(spec: PeerSpec, source: PeerSource) -> PeerStatus {
        PeerStatus {
            spec,
            source,
            lease: None,
        }
    }

    #[test]
    fn an_etcd_lease_adds_updates_or_leaves_its_peer() {
        let b = peer("node-b", 2);
        assert_eq!(etcd_change(None, &b), Ok(PeerChange::Added));
        let known = status(b.clone(), PeerSource::Etcd);
        assert_eq!(etcd_change(Some(&known), &b), Ok(PeerChange::Unchanged));
        let moved = PeerSpec {
            underlay: std::net::Ipv4Addr::new(192, 168, 77, 9),
            ..b.clone()
        };
        assert_eq!(etcd_change(Some(&known), &moved), Ok(PeerChange::Updated));
    }

    #[test]
    fn an_etcd_lease_never_replaces_a_peer_from_elsewhere() {
        let b = peer("node-b", 2);
        for source in [PeerSource::Config, PeerSource::Runtime] {
            let e = etcd_change(Some(&status(b.clone(), source)), &b).expect_err("refused");
            assert_eq!(
                e.to_string(),
                format!("peer.name: \"node-b\" is already a peer from the {source}")
            );
        }
    }

    #[test]
    fn peer_del_refuses_only_peers_from_etcd() {
        let peers = [
            status(peer("node-b", 2), PeerSource::Etcd),
            status(peer("node-c", 3), PeerSource::Runtime),
            status(peer("node-d", 4), PeerSource::Config),
        ];
        let e = deletable(&peers, "node-b").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "peer.name: \"node-b\" is learnt from etcd: delete its lease there instead"
        );
        assert_eq!(deletable(&peers, "node-c"), Ok(()));
        assert_eq!(deletable(&peers, "node-d"), Ok(()));
        // Unknown: the switch says so when removing it.
        assert_eq!(deletable(&peers, "node-z"), Ok(()));
    }

    #[test]
    fn etcd_peers_are_counted_and_only_runtime_peers_recorded() {
        let peers = [
            status(peer("node-b", 2), PeerSource::Etcd),
            status(peer("node-c", 3), PeerSource::Runtime),
            status(peer("node-d", 4), PeerSource::Etcd),
            status(peer("node-e", 5), PeerSource::Config),
        ];
        assert_eq!(count_etcd(&peers, "node-d"), (2, true));
        assert_eq!(count_etcd(&peers, "node-c"), (2, false));
        assert_eq!(count_etcd(&[], "node-b"), (0, false));
        assert_eq!(runtime_specs(&peers), vec![peer("node-c", 3)]);
    }

    #[test]
    fn a_peer_source_is_lowercase_in_json_and_runtime_by_default() {
        assert_eq!(PeerSource::Etcd.to_string(), "etcd");
        assert_eq!(
            serde_json::to_string(&PeerSource::Config).expect("json"),
            "\"config\""
        );
        let old: PeerStatus = serde_json::from_str(
            r#"{"spec":{"name":"node-b","underlay":"192.168.77.2","pod_cidr":"10.244.2.0/24"},"source":"runtime"}"#,
        )
        .expect("a status without a lease");
        assert_eq!(old.lease, None);
        assert_eq!(old.source, PeerSource::Runtime);
        assert_eq!(PeerSource::default(), PeerSource::Runtime);
    }
}
