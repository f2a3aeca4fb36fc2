//! The rules without etcd or root: a store of keys stands in for etcd ([`Driver`]) and a map of
//! peers and services for the node ([`FakeNode`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::peers::{WHY_DELETED, WHY_UNUSABLE};
use super::*;
use crate::cluster::target::execute;
use crate::cluster::ClusterTarget;

const PREFIX: &str = "/coreos.com/network";
const SERVICES: &str = "/podswitch/services";
const US: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const C: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 3);

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("subnet")
}

fn mac(last: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, last])
}

fn me() -> Identity {
    Identity {
        prefix: PREFIX.into(),
        services_prefix: SERVICES.into(),
        public_ip: US,
        vtep_mac: mac(1),
        lease_ttl_secs: 30,
    }
}

/// A /22 in /24s: 10.1.1.0, 10.1.2.0 and 10.1.3.0 are leasable.
fn network() -> NetworkConfig {
    NetworkConfig::parse(br#"{"Network":"10.1.0.0/22","Backend":{"Type":"vxlan"}}"#)
        .expect("config")
}

fn key(subnet: &str) -> String {
    flannel::subnet_key(PREFIX, net(subnet))
}

fn value(ip: Ipv4Addr, m: Mac) -> Vec<u8> {
    LeaseAttrs {
        public_ip: ip,
        vni: 1,
        vtep_mac: m,
    }
    .to_json()
    .into_bytes()
}

fn kv(subnet: &str, ip: Ipv4Addr, m: Mac, lease: i64, rev: i64) -> Kv {
    Kv {
        key: key(subnet),
        value: value(ip, m),
        lease,
        mod_revision: rev,
    }
}

fn put(subnet: &str, ip: Ipv4Addr, m: Mac, rev: i64) -> Event {
    Event {
        key: key(subnet),
        value: Some(value(ip, m)),
        lease: 7,
        mod_revision: rev,
    }
}

fn delete(k: &str, rev: i64) -> Event {
    Event {
        key: k.into(),
        value: None,
        lease: 0,
        mod_revision: rev,
    }
}

fn held(subnet: &str, lease: i64) -> Held {
    Held {
        subnet: net(subnet),
        lease,
        network: network(),
    }
}

/// A reconciler holding `subnet` under etcd lease `lease`.
fn holding(subnet: &str, lease: i64) -> Reconciler {
    let mut r = Reconciler::new(me(), None);
    r.hold(held(subnet, lease));
    r
}

/// The node's side: etcd peers and services by name, and peers of other sources (a clash).
#[derive(Default)]
struct FakeNode {
    peers: Mutex<BTreeMap<String, PeerSpec>>,
    static_peers: Vec<String>,
    services: Mutex<BTreeMap<String, ServiceSpec>>,
}

impl FakeNode {
    /// The etcd peers as (name, underlay).
    fn peers(&self) -> Vec<(String, Ipv4Addr)> {
        let peers = self.peers.lock().expect("peers");
        peers
            .values()
            .map(|p| (p.name.clone(), p.underlay))
            .collect()
    }
}

impl ClusterTarget for FakeNode {
    fn pod_cidr(&self) -> Ipv4Net {
        net("10.1.1.0/24")
    }
    fn etcd_peer_names(&self) -> Vec<String> {
        self.peers.lock().expect("peers").keys().cloned().collect()
    }
    fn has_etcd_peer(&self, name: &str) -> bool {
        self.peers.lock().expect("peers").contains_key(name)
    }
    fn etcd_peer_count(&self) -> usize {
        self.peers.lock().expect("peers").len()
    }
    /// Refused like the node's rules: a name of another source, or an underlay another peer
    /// has already.
    fn apply_peer(&self, peer: &PeerSpec, _lease: Option<i64>) -> Result<(), String> {
        if self.static_peers.contains(&peer.name) {
            return Err(format!("{:?} is already a peer from the config", peer.name));
        }
        let mut peers = self.peers.lock().expect("peers");
        if peers
            .values()
            .any(|p| p.name != peer.name && p.underlay == peer.underlay)
        {
            return Err(format!("{} is another peer's underlay", peer.underlay));
        }
        peers.insert(peer.name.clone(), peer.clone());
        Ok(())
    }
    fn remove_peer(&self, name: &str, _why: &str) -> Result<(), String> {
        self.peers.lock().expect("peers").remove(name);
        Ok(())
    }
    fn etcd_service_names(&self) -> Vec<String> {
        self.services
            .lock()
            .expect("services")
            .keys()
            .cloned()
            .collect()
    }
    fn apply_service(&self, spec: &ServiceSpec) -> Result<(), String> {
        let mut services = self.services.lock().expect("services");
        if services
            .values()
            .any(|s| s.name != spec.name && s.vip == spec.vip && s.port == spec.port)
        {
            return Err(format!("{}:{} is another service's", spec.vip, spec.port));
        }
        services.insert(spec.name.clone(), spec.clone());
        Ok(())
    }
    fn remove_service(&self, name: &str) -> Result<bool, String> {
        Ok(self
            .services
            .lock()
            .expect("services")
            .remove(name)
            .is_some())
    }
}

/// The session's part, with a map of keys as the store: node commands go to the fake node,
/// relists read the store, our key is checked against it and written under its guard.
struct Driver {
    r: Reconciler,
    node: FakeNode,
    store: BTreeMap<String, Kv>,
    revision: i64,
    resynced: bool,
}

impl Driver {
    fn new(r: Reconciler) -> Self {
        Self {
            r,
            node: FakeNode::default(),
            store: BTreeMap::new(),
            revision: 1,
            resynced: false,
        }
    }

    /// Another node writes (or we write) a key: in the store, and the watch's event.
    fn etcd_put(&mut self, subnet: &str, ip: Ipv4Addr, m: Mac) -> Event {
        self.revision += 1;
        self.store
            .insert(key(subnet), kv(subnet, ip, m, 7, self.revision));
        put(subnet, ip, m, self.revision)
    }

    /// A key is deleted (or its lease expires).
    fn etcd_delete(&mut self, subnet: &str) -> Event {
        self.revision += 1;
        self.store.remove(&key(subnet));
        delete(&key(subnet), self.revision)
    }

    fn list(&self) -> Vec<Kv> {
        self.store.values().cloned().collect()
    }

    fn node(&mut self, commands: Vec<NodeCommand>) {
        let outcomes = execute(&self.node, commands);
        self.r.on_outcomes(outcomes);
    }

    /// A session's start: list and sync the peers.
    fn relist(&mut self) {
        let kvs = self.list();
        let leases = self.r.read_subnets(&kvs);
        let sync = self.r.peers_of(leases);
        self.node(vec![sync]);
    }

    fn ensure_key(&mut self) {
        let Some(h) = self.r.held() else { return };
        let k = self.r.key_of(h.subnet);
        let current = self.store.get(&k).cloned();
        if let KeyCheck::Write(claim) = self.r.check_key(current.as_ref()) {
            let ok = match claim.guard {
                Guard::Absent => current.is_none(),
                Guard::Unchanged(rev) => current.is_some_and(|c| c.mod_revision == rev),
            };
            if ok {
                self.revision += 1;
                let written = Kv {
                    key: claim.key.clone(),
                    value: claim.value.clone().into_bytes(),
                    lease: claim.lease,
                    mod_revision: self.revision,
                };
                self.store.insert(claim.key.clone(), written);
            }
            self.r.key_written(&claim, ok).expect("key written");
        }
    }

    fn run(&mut self, commands: Vec<Command>) {
        for c in commands {
            match c {
                Command::Node(n) => self.node(vec![n]),
                Command::EnsureKey => self.ensure_key(),
                Command::RelistSubnets => self.relist(),
                Command::RelistServices => panic!("no services here"),
                Command::Resync => self.resynced = true,
            }
        }
    }

    fn event(&mut self, ev: Event) {
        let commands = self.r.on_subnet_event(ev);
        self.run(commands);
    }

    fn peers(&self) -> Vec<(String, Ipv4Addr)> {
        self.node.peers()
    }
}

fn peer(subnet: &str, ip: Ipv4Addr) -> (String, Ipv4Addr) {
    (Lease::peer_name(net(subnet)), ip)
}

#[test]
fn a_required_subnet_another_node_holds_is_refused_naming_the_holder() {
    let mut r = Reconciler::new(me(), Some(net("10.1.2.0/24")));
    let leases = r.read_subnets(&[kv("10.1.2.0/24", B, mac(2), 5, 3)]);
    let e = r.plan_claims(&network(), &leases, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "leasing a subnet: node.pod_cidr 10.1.2.0/24 is held by 192.168.77.2"
    );
    // Free, it is the one candidate.
    let leases = r.read_subnets(&[]);
    let plan = r.plan_claims(&network(), &leases, None).expect("plan");
    assert_eq!(
        plan,
        vec![Planned {
            candidate: Candidate::Previous(net("10.1.2.0/24")),
            guard: Guard::Absent
        }]
    );
}

#[test]
fn a_previous_subnet_another_node_took_is_skipped_and_a_free_one_claimed() {
    let mut r = Reconciler::new(me(), None);
    let leases = r.read_subnets(&[kv("10.1.1.0/24", B, mac(2), 5, 3)]);
    let plan = r
        .plan_claims(&network(), &leases, Some(net("10.1.1.0/24")))
        .expect("plan");
    let subnets: Vec<Ipv4Net> = plan.iter().map(|p| p.candidate.subnet()).collect();
    assert_eq!(subnets, vec![net("10.1.2.0/24"), net("10.1.3.0/24")]);
    assert!(plan.iter().all(|p| p.guard == Guard::Absent));
    // A lease of another backend counts as taken too.
    let mut foreign = kv("10.1.2.0/24", C, mac(3), 5, 4);
    foreign.value = br#"{"PublicIP":"192.168.77.3","BackendType":"host-gw"}"#.to_vec();
    let leases = r.read_subnets(&[kv("10.1.1.0/24", B, mac(2), 5, 3), foreign]);
    let plan = r.plan_claims(&network(), &leases, None).expect("plan");
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].candidate, Candidate::Free(net("10.1.3.0/24")));
}

#[test]
fn our_own_lease_is_taken_back_only_if_unchanged_since_the_list() {
    let mut r = Reconciler::new(me(), None);
    let leases = r.read_subnets(&[kv("10.1.3.0/24", US, mac(1), 5, 11)]);
    let plan = r.plan_claims(&network(), &leases, None).expect("plan");
    assert_eq!(
        plan[0],
        Planned {
            candidate: Candidate::Own(net("10.1.3.0/24")),
            guard: Guard::Unchanged(11)
        }
    );
    let claim = r.claim(net("10.1.3.0/24"), 9, 1, plan[0].guard);
    assert_eq!(claim.key, key("10.1.3.0/24"));
    assert_eq!(claim.value.as_bytes(), value(US, mac(1)));
    assert_eq!(claim.lease, 9);
}

#[test]
fn another_nodes_value_on_our_key_is_a_conflict_never_overwritten() {
    let mut r = holding("10.1.2.0/24", 5);
    let theirs = kv("10.1.2.0/24", B, mac(2), 8, 20);
    assert_eq!(r.check_key(Some(&theirs)), KeyCheck::Fine);
    let conflict = r.conflict().expect("a conflict").to_string();
    assert!(
        conflict.contains("holds another node's lease"),
        "{conflict}"
    );
    assert!(conflict.contains("192.168.77.2"), "{conflict}");
    // Their lease on our subnet is no peer either.
    let leases = r.read_subnets(&[theirs]);
    assert_eq!(r.peers_of(leases), NodeCommand::SyncPeers(vec![]));
    // When it goes, our key is written again (absent) and the conflict is over.
    let commands = r.on_subnet_event(delete(&key("10.1.2.0/24"), 21));
    assert_eq!(commands, vec![Command::EnsureKey]);
    let KeyCheck::Write(claim) = r.check_key(None) else {
        panic!("our key is to be written")
    };
    assert_eq!(claim.guard, Guard::Absent);
    r.key_written(&claim, true).expect("written");
    assert_eq!(r.conflict(), None);
}

#[test]
fn a_node_running_on_a_subnet_it_could_not_lease_resyncs_when_it_is_freed() {
    let mut r = Reconciler::new(me(), None);
    r.running_on(net("10.1.2.0/24"));
    let e = ReconcileError::NoSubnet("node.pod_cidr 10.1.2.0/24 is held by 192.168.77.2".into());
    r.leased_running_subnet(Some(&e), "/run/podswitch/a.subnet.json");
    let conflict = r.conflict().expect("a conflict");
    assert!(
        conflict.starts_with("this node runs on 10.1.2.0/24 but cannot lease it"),
        "{conflict}"
    );
    assert_eq!(r.on_tick(), Tick::TryLease);
    assert_eq!(r.tick_every(), RETRY_LEASE);
    assert_eq!(
        r.on_subnet_event(delete(&key("10.1.2.0/24"), 9)),
        vec![Command::Resync]
    );
    r.leased_running_subnet(None, "");
    assert_eq!(r.conflict(), None);
}

#[test]
fn an_expired_lease_is_replaced_and_our_key_written_again_under_the_new_one() {
    let mut r = holding("10.1.2.0/24", 5);
    assert_eq!(r.on_tick(), Tick::KeepAlive);
    assert_eq!(r.tick_every(), Duration::from_secs(10));
    assert_eq!(r.on_keepalive(30), Ok(30));
    assert_eq!(r.on_keepalive(0), Err(ReconcileError::LeaseLost(5)));
    // The next session: the TTL says expired; a new lease is granted.
    assert!(r.on_lease_ttl(12));
    assert!(!r.on_lease_ttl(-1));
    assert_eq!(r.lease_renewed(6).map(|h| h.lease), Some(6));
    // Our key still under the old lease: re-attached, if unchanged since read.
    let old = kv("10.1.2.0/24", US, mac(1), 5, 30);
    let KeyCheck::Write(claim) = r.check_key(Some(&old)) else {
        panic!("our key is to be re-attached")
    };
    assert_eq!((claim.lease, claim.guard), (6, Guard::Unchanged(30)));
    // Gone with the old lease: recreated.
    let KeyCheck::Write(claim) = r.check_key(None) else {
        panic!("our key is to be recreated")
    };
    assert_eq!((claim.lease, claim.guard), (6, Guard::Absent));
    // Under the new lease: nothing to do.
    let now = kv("10.1.2.0/24", US, mac(1), 6, 31);
    assert_eq!(r.check_key(Some(&now)), KeyCheck::Fine);
}

#[test]
fn our_key_deleted_is_recreated_and_a_changed_key_is_checked_again() {
    let mut d = Driver::new(holding("10.1.2.0/24", 5));
    d.etcd_put("10.1.2.0/24", US, mac(1));
    d.store.get_mut(&key("10.1.2.0/24")).expect("ours").lease = 5;
    let ev = d.etcd_delete("10.1.2.0/24");
    d.event(ev);
    let ours = d.store.get(&key("10.1.2.0/24")).expect("recreated");
    assert_eq!((ours.lease, ours.value.clone()), (5, value(US, mac(1))));
    // Our own write comes back as an event: nothing more to do, and never a peer.
    let ev = put("10.1.2.0/24", US, mac(1), d.revision);
    d.event(ev);
    assert!(d.peers().is_empty());
    // A write that finds the key changed is no success.
    let mut r = holding("10.1.2.0/24", 5);
    let KeyCheck::Write(claim) = r.check_key(None) else {
        panic!("our key is to be recreated")
    };
    let e = r.key_written(&claim, false).unwrap_err();
    assert!(
        e.to_string().contains("changed while being rewritten"),
        "{e}"
    );
}

#[test]
fn a_clashing_lease_is_retried_after_the_lease_it_clashed_with_is_deleted() {
    let mut d = Driver::new(holding("10.1.1.0/24", 5));
    let ev = d.etcd_put("10.1.2.0/24", B, mac(2));
    d.event(ev);
    // Node B restarted on another subnet while its old lease lives on: same underlay.
    let ev = d.etcd_put("10.1.3.0/24", B, mac(2));
    d.event(ev);
    assert_eq!(d.peers(), vec![peer("10.1.2.0/24", B)]);
    // The old lease expires: its peer goes and the refused one is listed again.
    let ev = d.etcd_delete("10.1.2.0/24");
    let commands = d.r.on_subnet_event(ev);
    assert_eq!(
        commands,
        vec![
            Command::Node(NodeCommand::RemovePeer {
                name: Lease::peer_name(net("10.1.2.0/24")),
                why: WHY_DELETED
            }),
            Command::RelistSubnets
        ]
    );
    d.run(commands);
    assert_eq!(d.peers(), vec![peer("10.1.3.0/24", B)]);
    // Nothing skipped any more: the next delete does not list again.
    let ev = d.etcd_delete("10.1.3.0/24");
    assert_eq!(d.r.on_subnet_event(ev).len(), 1);
}

#[test]
fn a_compacted_watch_ends_the_session_and_the_next_list_catches_up() {
    let mut d = Driver::new(holding("10.1.1.0/24", 5));
    d.etcd_put("10.1.2.0/24", B, mac(2));
    d.etcd_put("10.1.3.0/24", C, mac(3));
    d.relist();
    assert_eq!(
        d.peers(),
        vec![peer("10.1.2.0/24", B), peer("10.1.3.0/24", C)]
    );
    // C's lease expires and B's changes while the watch is behind a compaction.
    d.etcd_delete("10.1.3.0/24");
    d.etcd_put("10.1.2.0/24", B, mac(9));
    let e =
        d.r.subnet_watch_events(Watched::Cancelled {
            compact_revision: 42,
            reason: String::new(),
        })
        .unwrap_err();
    assert_eq!(
        e,
        ReconcileError::WatchCancelled {
            prefix: format!("{PREFIX}/subnets"),
            reason: "revision compacted up to 42".into()
        }
    );
    d.relist();
    assert_eq!(d.peers(), vec![peer("10.1.2.0/24", B)]);
    let spec = d.node.peers.lock().expect("peers")[&Lease::peer_name(net("10.1.2.0/24"))].clone();
    assert_eq!(spec.vtep_mac, Some(mac(9)));
    // A cancel for another reason says so.
    let e =
        d.r.service_watch_events(Watched::Cancelled {
            compact_revision: 0,
            reason: "permission denied".into(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("(permission denied)"), "{e}");
}

#[test]
fn a_sequence_of_events_leaves_exactly_the_peers_of_the_live_usable_leases() {
    let mut d = Driver::new(holding("10.1.1.0/24", 5));
    d.node.static_peers = vec![Lease::peer_name(net("10.1.3.0/24"))];
    // A lease of another node on our subnet, listed: no peer, logged.
    d.store
        .insert(key("10.1.1.0/24"), kv("10.1.1.0/24", C, mac(3), 8, 2));
    d.etcd_put("10.1.2.0/24", B, mac(2));
    d.relist();
    assert_eq!(d.peers(), vec![peer("10.1.2.0/24", B)]);
    // A new lease whose name a config peer has: refused, logged, tried again at a list.
    let ev = d.etcd_put("10.1.3.0/24", C, mac(3));
    d.event(ev);
    assert_eq!(d.peers(), vec![peer("10.1.2.0/24", B)]);
    // B's value changes its MAC: updated in place.
    let ev = d.etcd_put("10.1.2.0/24", B, mac(7));
    d.event(ev);
    // A key that is no subnet: skipped, nothing else.
    let bogus = Event {
        key: format!("{PREFIX}/subnets/nonsense"),
        value: Some(b"{}".to_vec()),
        lease: 0,
        mod_revision: 50,
    };
    assert!(d.r.on_subnet_event(bogus).is_empty());
    // B's value becomes unusable: its peer goes.
    let mut garbled = put("10.1.2.0/24", B, mac(7), 51);
    garbled.value = Some(b"{not json".to_vec());
    let commands = d.r.on_subnet_event(garbled);
    assert_eq!(
        commands,
        vec![Command::Node(NodeCommand::RemovePeer {
            name: Lease::peer_name(net("10.1.2.0/24")),
            why: WHY_UNUSABLE
        })]
    );
    d.run(commands);
    assert!(d.peers().is_empty());
    // B writes a good value again; the config peer goes, C's lease fits at the next list.
    let ev = d.etcd_put("10.1.2.0/24", B, mac(2));
    d.event(ev);
    d.node.static_peers.clear();
    d.relist();
    assert_eq!(
        d.peers(),
        vec![peer("10.1.2.0/24", B), peer("10.1.3.0/24", C)]
    );
    // B's lease expires.
    let ev = d.etcd_delete("10.1.2.0/24");
    d.event(ev);
    assert_eq!(d.peers(), vec![peer("10.1.3.0/24", C)]);
    let spec = d.node.peers.lock().expect("peers")[&Lease::peer_name(net("10.1.3.0/24"))].clone();
    assert_eq!(spec.pod_cidr, net("10.1.3.0/24"));
    assert!(!d.resynced);
}

fn service(name: &str, vip: &str) -> Vec<u8> {
    format!(r#"{{"name":"{name}","vip":"{vip}","port":80,"backends":["10.1.2.10:8080"]}}"#)
        .into_bytes()
}

fn svc_kv(name: &str, vip: &str, rev: i64) -> Kv {
    Kv {
        key: format!("{SERVICES}/{name}"),
        value: service(name, vip),
        lease: 0,
        mod_revision: rev,
    }
}

#[test]
fn services_follow_the_list_then_the_events_after_it() {
    let mut r = Reconciler::new(me(), None);
    let node = FakeNode::default();
    let mut bad = svc_kv("web", "10.96.0.10", 3);
    bad.key = format!("{SERVICES}/other");
    let sync = r.on_service_list(&[svc_kv("web", "10.96.0.10", 2), bad], 10);
    r.on_outcomes(execute(&node, vec![sync]));
    assert_eq!(node.etcd_service_names(), vec!["web".to_string()]);
    // An event already in the list is ignored.
    let stale = Event {
        key: format!("{SERVICES}/web"),
        value: None,
        lease: 0,
        mod_revision: 10,
    };
    assert!(r.on_service_event(stale).is_empty());
    // One clashing with web (same VIP and port) is refused, then fits once web is deleted.
    let dns = Event {
        key: format!("{SERVICES}/dns"),
        value: Some(service("dns", "10.96.0.10")),
        lease: 0,
        mod_revision: 11,
    };
    let commands = r.on_service_event(dns);
    let [Command::Node(apply)] = &commands[..] else {
        panic!("{commands:?}")
    };
    r.on_outcomes(execute(&node, vec![apply.clone()]));
    assert_eq!(node.etcd_service_names(), vec!["web".to_string()]);
    let commands = r.on_service_event(Event {
        key: format!("{SERVICES}/web"),
        value: None,
        lease: 0,
        mod_revision: 12,
    });
    assert_eq!(
        commands,
        vec![
            Command::Node(NodeCommand::RemoveService {
                key: format!("{SERVICES}/web"),
                name: "web".into()
            }),
            Command::RelistServices
        ]
    );
    let Command::Node(remove) = &commands[0] else {
        panic!("{commands:?}")
    };
    r.on_outcomes(execute(&node, vec![remove.clone()]));
    let relisted = vec![Kv {
        key: format!("{SERVICES}/dns"),
        value: service("dns", "10.96.0.10"),
        lease: 0,
        mod_revision: 11,
    }];
    let sync = r.on_service_list(&relisted, 12);
    r.on_outcomes(execute(&node, vec![sync]));
    assert_eq!(node.etcd_service_names(), vec!["dns".to_string()]);
    // A value that becomes unusable removes its service.
    let commands = r.on_service_event(Event {
        key: format!("{SERVICES}/dns"),
        value: Some(b"{not json".to_vec()),
        lease: 0,
        mod_revision: 13,
    });
    r.on_outcomes(execute(
        &node,
        commands
            .into_iter()
            .filter_map(|c| match c {
                Command::Node(n) => Some(n),
                _ => None,
            })
            .collect(),
    ));
    assert!(node.etcd_service_names().is_empty());
}

#[test]
fn a_missing_or_bad_network_config_names_the_key() {
    let r = Reconciler::new(me(), None);
    let e = r.network_config(None).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("etcd key {PREFIX}/config: is missing")),
        "{e}"
    );
    let e = r
        .network_config(Some(br#"{"Network":"10.1.0.0/22"}"#))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("etcd key {PREFIX}/config: Backend.Type")),
        "{e}"
    );
    assert_eq!(
        r.network_config(Some(
            br#"{"Network":"10.1.0.0/22","Backend":{"Type":"vxlan"}}"#
        )),
        Ok(network())
    );
}
