//! The node's pods: adding one (its address chosen under the pod lock when none is given,
//! checked by the rules, its namespace opened or made, its TAP adopted from an upgrade or
//! created and configured inside the namespace, then attached to the switch), removing one,
//! forgetting those whose namespace vanished, and their status ([`PodStatus`]).
//!
//! Adding a pod: check it against the node and the other pods, open or create its namespace,
//! create the TAP, move it in as `eth0` and configure it through rtnetlink from inside the
//! namespace (MAC, MTU, address, `lo` and `eth0` up, default route via the gateway, IPv6 off:
//! pods are IPv4-only here), then attach the TAP to the switch. Any failure undoes what was
//! done: the TAP disappears with its fd, and a namespace the switch created is deleted; an
//! adopted namespace is left as it was found.
//!
//! Invariants: a pod record exists exactly while its TAP is attached to the switch; the pod
//! lock is held across an add or delete, so concurrent control requests cannot interleave
//! them (and the checks see every pod).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::{lock, netlink, spec, with_netlink, Mac, Node, NodeError, PodInterface, PodSpec};
use crate::netns::NetNs;
use crate::pipeline::PortCounts;
use crate::port::TapPort;
use crate::table::PortId;

/// A pod as `podswitch pod list` shows it: its spec and its live state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodStatus {
    /// What the pod was added as, with its address: `spec.ip` is always set (the one given,
    /// or the one the node chose).
    pub spec: PodSpec,
    /// The pod's MAC (`spec.mac`, or the one derived from its IP).
    pub mac: Mac,
    /// Prefix length of the pod address (the node CIDR's).
    pub prefix_len: u8,
    /// The pod's default gateway (the node's).
    pub gateway: std::net::Ipv4Addr,
    /// Switch port.
    pub port: PortId,
    /// True if the switch created the namespace (and removes it with the pod).
    pub created_netns: bool,
    /// Port counters.
    pub counters: PortCounts,
    /// Frames from the pod dropped, by reason label (`"spoofed_mac"`); only reasons that
    /// happened. Absent in answers of older nodes (then empty).
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
}

/// A pod the node holds: what it was added as and what it holds for it.
#[derive(Clone)]
pub(super) struct PodRecord {
    /// The TAP queues' descriptors (open while the switch holds the port), to hand over on an
    /// upgrade.
    pub(super) fds: Vec<std::os::fd::RawFd>,
    /// As added, with the address filled in (`spec.ip` is `Some(ip)`).
    pub(super) spec: PodSpec,
    /// The pod's address.
    pub(super) ip: Ipv4Addr,
    pub(super) netns: NetNs,
    pub(super) created_netns: bool,
    /// Kept in the state file: added at runtime (a CNI attachment or `pod add`), so brought
    /// back by the next start.
    pub(super) recorded: bool,
}

impl Node {
    /// Adds a pod (CNI ADD), refused by the same rules as a `[[pods]]` entry (fields named
    /// `pod.*`). Traffic between other pods is not disturbed. The pod is kept in the state file
    /// (once [`Node::restore_attachments`] set one) and re-attached when the daemon starts
    /// again, after a crash too; the file also records whether the node created its
    /// namespace, so a later stop deletes it.
    ///
    /// A pod without `ip` gets the lowest free host address of the node's pod CIDR (not the
    /// network, broadcast or gateway address, nor another pod's), chosen under the pod lock:
    /// two pods added at once never get the same one. The pod keeps it (its status, the state
    /// file and a re-attach carry it); a full range is refused, naming `pod.ip`.
    pub fn add_pod(&self, spec: &PodSpec) -> Result<PodStatus, NodeError> {
        self.attach_pod(spec, true, "pod")
    }

    /// Adds a pod; `at` names it in errors (`pod`).
    pub(super) fn attach_pod(
        &self,
        spec: &PodSpec,
        recorded: bool,
        at: &str,
    ) -> Result<PodStatus, NodeError> {
        let pod = spec.name.clone();
        let mut pods = lock(&self.pods);
        // The address first (under the lock), then every rule on the pod as it will be.
        let ip = match spec.ip {
            Some(ip) => ip,
            None => spec::free_pod_ip(
                self.net.cidr,
                self.net.gateway,
                pods.values().map(|r| r.ip),
                &format!("{at}.ip"),
            )?,
        };
        let spec = &spec.with_ip(ip);
        let mac = spec.mac_at(ip);
        spec.check(&self.spec, pods.values().map(|r| &r.spec), at)?;
        // Address checks first: nothing is created for a pod the switch would refuse.
        self.switch
            .tables()
            .topology()
            .check_pod(ip, mac.into())
            .map_err(|e| NodeError::Switch {
                pod: pod.clone(),
                source: e.into(),
            })?;
        let (netns, created) =
            NetNs::open_or_create(&spec.netns).map_err(|source| NodeError::Netns {
                pod: pod.clone(),
                source,
            })?;
        // Found, but made by this node before it was killed: still the node's.
        let created = created || self.created_before.contains(&spec.netns);
        let undo_netns = |ns: &NetNs| {
            if created {
                if let Err(e) = ns.delete() {
                    tracing::warn!(pod = %spec.name, "rolling back: {e}");
                }
            }
        };
        let veth = self.spec.pod_interface() == PodInterface::Veth;
        let adopted = self.adopt(spec, ip, mac);
        let handed_over = adopted.is_some();
        let tap = match adopted {
            // A veth pod's interfaces outlive the process; its programs do not.
            Some(tap) if veth => self
                .onto_fast_path(spec, ip, &self.host_side(&spec.name))
                .map(|()| tap),
            Some(tap) => Ok(tap),
            None if veth => self.plumb_veth(spec, ip, &netns, created),
            None => self.plumb(spec, ip, &netns, created),
        };
        let tap = match tap {
            Ok(tap) => tap,
            Err(e) => {
                undo_netns(&netns);
                return Err(e);
            }
        };
        if veth {
            // What the switch writes to a veth pod goes into its upcall TAP.
            self.steer(&self.host_side(&spec.name).upcall, None, handed_over);
        } else {
            self.steer(&spec.ifname, Some(&netns), handed_over);
        }
        let fds = tap.iter().map(TapPort::raw_fd).collect();
        let queues = tap
            .into_iter()
            .map(|q| Box::new(q) as Box<dyn crate::port::Port>)
            .collect();
        let port = match self.switch.attach_queues(spec.port_info(ip), queues) {
            Ok(id) => id,
            Err(source) => {
                if veth {
                    self.unplumb_veth(&spec.name);
                }
                undo_netns(&netns);
                return Err(NodeError::Switch { pod, source });
            }
        };
        tracing::info!(pod = %spec.name, netns = %spec.netns, ip = %ip, port, created_netns = created, "pod added");
        pods.insert(
            spec.name.clone(),
            PodRecord {
                fds,
                spec: spec.clone(),
                ip,
                netns,
                created_netns: created,
                recorded,
            },
        );
        if recorded || created {
            self.save_state(&pods);
        }
        drop(pods);
        self.pod(&spec.name)
            .ok_or(NodeError::NoSuchPod(spec.name.clone()))
    }

    /// The pod's TAP queues handed over by the process that exec'ed this one, if the pod had
    /// the same address and MAC there and every queue checks out (`TapPort::adopt`): its
    /// interface stays as it is. Otherwise the handed-over descriptors are closed (the old TAP
    /// goes) and `None` says to create one.
    fn adopt(&self, spec: &PodSpec, ip: Ipv4Addr, mac: Mac) -> Option<Vec<TapPort>> {
        let (fds, was_ip, was_mac) = lock(&self.inherited).as_mut()?.take_pod(&spec.name)?;
        if was_ip != ip || was_mac != mac || fds.len() != self.switch.workers() {
            tracing::info!(pod = %spec.name, "handed-over TAP not adopted: the pod's address, MAC or queue count changed; a new one is made");
            return None;
        }
        // A veth pod's port is its upcall TAP, in the node's namespace.
        let ifname = match self.spec.pod_interface() {
            PodInterface::Tap => spec.ifname.clone(),
            PodInterface::Veth => self.host_side(&spec.name).upcall,
        };
        let adopted: Result<Vec<TapPort>, _> = fds
            .into_iter()
            .map(|fd| TapPort::adopt(fd, &ifname))
            .collect();
        match adopted {
            Ok(tap) => Some(tap),
            Err(e) => {
                tracing::warn!(pod = %spec.name, "handed-over TAP not adopted ({e}); a new one is made");
                None
            }
        }
    }

    /// Creates the pod's TAP and configures it inside the pod's namespace.
    ///
    /// The TAP is created in the switch's own namespace under a temporary name, then moved into
    /// the pod's namespace and renamed `eth0` in one netlink request. Opened this way, the TAP's
    /// file descriptor holds a reference to the switch's namespace, not the pod's: deleting the
    /// pod's namespace from outside really destroys it, which unregisters the TAP and tells the
    /// switch (`EBADFD`). Opened inside the pod's namespace, the fd would keep it alive.
    /// Returns one queue of the TAP per worker (all opened here, before the move: a queue is
    /// attached by name in the opener's namespace).
    fn plumb(
        &self,
        spec: &PodSpec,
        ip: Ipv4Addr,
        netns: &NetNs,
        created: bool,
    ) -> Result<Vec<TapPort>, NodeError> {
        let ifname = spec.ifname.as_str();
        let net = self.pod_net(spec, ip);
        let (pod, ns) = (spec.name.as_str(), spec.netns.as_str());
        let netlink_err = netlink_error(spec);
        let netns_err = |source| NodeError::Netns {
            pod: pod.into(),
            source,
        };
        self.refuse_busy_netns(spec, netns, created)?;
        let tmp = netlink::temporary_ifname();
        let tap = TapPort::create_queues(&tmp, self.switch.workers()).map_err(|source| {
            NodeError::Tap {
                pod: pod.into(),
                ifname: ifname.into(),
                netns: ns.into(),
                source,
            }
        })?;
        let ns_file = std::fs::File::open(netns.path())
            .map_err(|e| netlink_err(("open namespace", e.to_string())))?;
        with_netlink(|handle| async move {
            let what = ("new TAP", "moving the TAP into the namespace");
            netlink::move_link(&handle, &tmp, &ns_file, ifname, what).await
        })
        .map_err(&netlink_err)?;
        netns
            .run(|| netlink::configure_pod_interfaces(&net))
            .map_err(netns_err)?
            .map_err(netlink_err)?;
        Ok(tap)
    }

    /// The addressing of pod `spec`'s interface at `ip`.
    pub(super) fn pod_net<'a>(&self, spec: &'a PodSpec, ip: Ipv4Addr) -> netlink::PodNet<'a> {
        let cfg = self.switch.node();
        netlink::PodNet {
            ifname: spec.ifname.as_str(),
            ip,
            prefix_len: cfg.cidr.prefix_len(),
            mac: spec.mac_at(ip),
            mtu: cfg.mtu,
            gateway: cfg.gateway,
        }
    }

    /// Refuses a namespace the node did not create that already has the pod's interface: it
    /// holds another switch's (or plugin's) pod. Said so, rather than failing later on the
    /// rename with a bare "File exists".
    pub(super) fn refuse_busy_netns(
        &self,
        spec: &PodSpec,
        netns: &NetNs,
        created: bool,
    ) -> Result<(), NodeError> {
        if created {
            return Ok(());
        }
        let busy = netns
            .run(|| netlink::has_link(&spec.ifname))
            .map_err(|source| NodeError::Netns {
                pod: spec.name.clone(),
                source,
            })?
            .map_err(netlink_error(spec))?;
        if busy {
            return Err(NodeError::NetnsBusy {
                pod: spec.name.clone(),
                netns: spec.netns.clone(),
                ifname: spec.ifname.clone(),
            });
        }
        Ok(())
    }

    /// Removes a pod (CNI DEL): detaches its TAP (the device goes away with the fd) and deletes
    /// its namespace if the switch created it (an adopted namespace stays).
    pub fn del_pod(&self, name: &str) -> Result<(), NodeError> {
        let mut pods = lock(&self.pods);
        self.remove_pod(&mut pods, name, true, "pod del")
    }

    /// Removes the pod attached as `ifname` of container `container_id` (CNI DEL, which knows
    /// only those); [`NodeError::NoSuchAttachment`] if there is none.
    pub fn del_attachment(&self, container_id: &str, ifname: &str) -> Result<(), NodeError> {
        let mut pods = lock(&self.pods);
        let name = attachment(pods.values().map(|r| &r.spec), container_id, ifname)
            .map(str::to_string)
            .ok_or_else(|| NodeError::NoSuchAttachment {
                container_id: container_id.into(),
                ifname: ifname.into(),
            })?;
        self.remove_pod(&mut pods, &name, true, "CNI DEL of its container")
    }

    /// Removes pod `name` under the pod lock; `forget`: also from the state file (a shutdown
    /// keeps it there, to re-attach the pod on the next start). `why` goes in the log line.
    pub(super) fn remove_pod(
        &self,
        pods: &mut BTreeMap<String, PodRecord>,
        name: &str,
        forget: bool,
        why: &str,
    ) -> Result<(), NodeError> {
        let rec = pods
            .remove(name)
            .ok_or_else(|| NodeError::NoSuchPod(name.into()))?;
        if forget && (rec.recorded || rec.created_netns) {
            self.save_state(pods);
        }
        if self.spec.pod_interface() == PodInterface::Veth {
            self.unplumb_veth(name);
        }
        if let Err(e) = self.switch.detach(name) {
            // Already gone from the switch (its namespace vanished): nothing to detach.
            tracing::debug!(pod = name, "detach: {e}");
        }
        if rec.created_netns {
            rec.netns.delete().map_err(|source| NodeError::Netns {
                pod: name.into(),
                source,
            })?;
        }
        tracing::info!(pod = name, why, "pod removed");
        Ok(())
    }

    /// Forgets pods whose TAP closed under the switch, or (veth mode) whose veth vanished:
    /// their namespace was deleted from outside. Returns their names. Other pods are
    /// unaffected.
    pub fn reap_vanished(&self) -> Vec<String> {
        let mut pods = lock(&self.pods);
        let veth = self.spec.pod_interface() == PodInterface::Veth;
        let gone: Vec<String> = pods
            .keys()
            .filter(|n| self.switch.port(n).is_none() || (veth && !self.host_side(n).veth_exists()))
            .cloned()
            .collect();
        let mut recorded = false;
        for name in &gone {
            if let Some(rec) = pods.remove(name) {
                tracing::warn!(pod = %name, netns = %rec.netns.name(), why = "its interface vanished under the switch (namespace deleted from outside?)", "pod removed");
                if veth {
                    // Its upcall TAP stays until the switch lets go of its descriptors.
                    self.unplumb_veth(name);
                    let _ = self.switch.detach(name);
                }
                recorded |= rec.recorded;
                if rec.created_netns && rec.netns.exists() {
                    let _ = rec.netns.delete();
                }
            }
        }
        if recorded {
            self.save_state(&pods);
        }
        gone
    }

    /// Status of one pod.
    pub fn pod(&self, name: &str) -> Option<PodStatus> {
        let pods = lock(&self.pods);
        let rec = pods.get(name)?;
        let port = self.switch.port(name)?;
        let mut counters = port.metrics.snapshot();
        self.add_fast_path_counts(name, &mut counters);
        Some(PodStatus {
            spec: rec.spec.clone(),
            mac: rec.spec.mac_at(rec.ip),
            prefix_len: self.net.cidr.prefix_len(),
            gateway: self.net.gateway,
            port: port.id,
            created_netns: rec.created_netns,
            drops: counters.dropped.by_label(),
            counters,
        })
    }

    /// Status of every pod, by name.
    pub fn pods(&self) -> Vec<PodStatus> {
        let names: Vec<String> = lock(&self.pods).keys().cloned().collect();
        names.iter().filter_map(|n| self.pod(n)).collect()
    }
}

/// How a failed netlink step of pod `spec`'s set-up is reported.
pub(super) fn netlink_error(spec: &PodSpec) -> impl Fn((&'static str, String)) -> NodeError + '_ {
    move |(what, message)| NodeError::Netlink {
        pod: spec.name.clone(),
        netns: spec.netns.clone(),
        what,
        message,
    }
}

/// The name of the pod of `pods` attached as `ifname` of container `container_id` (what a
/// CNI DEL names), if any.
fn attachment<'a>(
    mut pods: impl Iterator<Item = &'a PodSpec>,
    container_id: &str,
    ifname: &str,
) -> Option<&'a str> {
    pods.find(|p| p.container_id.as_deref() == Some(container_id) && p.ifname == ifname)
        .map(|p| p.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, container_id: Option<&str>, ifname: &str) -> PodSpec {
        PodSpec {
            name: name.into(),
            netns: name.into(),
            ip: None,
            mac: None,
            container_id: container_id.map(str::to_string),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn a_cni_del_finds_its_pod_by_container_and_interface() {
        let pods = [
            pod("config-pod", None, "eth0"),
            pod("c1-eth0", Some("c1"), "eth0"),
            pod("c1-net1", Some("c1"), "net1"),
            pod("c2-eth0", Some("c2"), "eth0"),
        ];
        assert_eq!(attachment(pods.iter(), "c1", "eth0"), Some("c1-eth0"));
        assert_eq!(attachment(pods.iter(), "c1", "net1"), Some("c1-net1"));
        assert_eq!(attachment(pods.iter(), "c2", "net1"), None);
        assert_eq!(attachment(pods.iter(), "c3", "eth0"), None);
        // A pod without a container ID is never a CNI attachment.
        assert_eq!(attachment(pods.iter(), "", "eth0"), None);
    }

    #[test]
    fn a_pod_status_from_an_older_node_has_no_drops() {
        let ip = Ipv4Addr::new(10, 244, 1, 10);
        let status = PodStatus {
            spec: pod("web", None, "eth0").with_ip(ip),
            mac: super::super::derived_pod_mac(ip),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            port: 3,
            created_netns: true,
            counters: PortCounts::default(),
            drops: BTreeMap::from([("spoofed_mac".to_string(), 2)]),
        };
        let mut json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["drops"]["spoofed_mac"], 2);
        let back: PodStatus = serde_json::from_value(json.clone()).expect("back");
        assert_eq!(back, status);
        json.as_object_mut().expect("an object").remove("drops");
        let older: PodStatus = serde_json::from_value(json).expect("an older node's status");
        assert!(older.drops.is_empty());
        assert_eq!(older.spec, status.spec);
    }
}
