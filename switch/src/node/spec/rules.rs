//! The rules: what a node, a pod, a peer and a service may be. The only place where one is refused, so
//! the file and the runtime refuse alike.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::*;

mod fields;

pub(super) use fields::cpu_list;
use fields::*;

/// An integer setting's allowed range, and why; used by [`NodeSpec::validate`] and to explain
/// numbers the file's types cannot even hold (`mtu = 70000`).
struct Range {
    field: &'static str,
    min: i128,
    max: i128,
    why: &'static str,
}

const RANGES: &[Range] = &[
    Range {
        field: "node.mtu",
        min: MIN_MTU as i128,
        max: MAX_MTU as i128,
        why: "the IPv4 minimum to the largest pod MTU",
    },
    Range {
        field: "node.underlay_mtu",
        min: (MIN_MTU + VXLAN_OVERHEAD) as i128,
        max: u16::MAX as i128,
        why: "room for the IPv4 minimum 68 after VXLAN's 50 bytes",
    },
    Range {
        field: "node.workers",
        min: 1,
        max: MAX_WORKERS as i128,
        why: "data-plane threads",
    },
    Range {
        field: "node.mac_table_size",
        min: 1,
        max: u32::MAX as i128,
        why: "MAC table entries",
    },
    Range {
        field: "node.conntrack_max",
        min: 64,
        max: 1 << 24,
        why: "flows tracked",
    },
    Range {
        field: "node.mac_ageing_secs",
        min: 1,
        max: u32::MAX as i128,
        why: "seconds",
    },
    Range {
        field: "node.vxlan_port",
        min: 1,
        max: u16::MAX as i128,
        why: "a UDP port",
    },
    Range {
        field: "node.vni",
        min: 0,
        max: MAX_VNI as i128,
        why: "VXLAN's 24 bits",
    },
    Range {
        field: "node.cpus",
        min: 0,
        max: 1023,
        why: "CPU numbers",
    },
    Range {
        field: "services.port",
        min: 1,
        max: u16::MAX as i128,
        why: PORT_WHY,
    },
    Range {
        field: "service.port",
        min: 1,
        max: u16::MAX as i128,
        why: PORT_WHY,
    },
];

/// Why a service's port has its range.
const PORT_WHY: &str = "a TCP or UDP port";

/// Checks `value` against the range of `field` (`node.mtu`; `node.cpus[2]` uses `node.cpus`'s,
/// `services[1].port` `services.port`'s). Fields without a range pass.
pub(crate) fn check_range(field: &str, value: i128) -> Result<(), SpecError> {
    let base = without_indices(field);
    match RANGES.iter().find(|r| r.field == base) {
        Some(r) if !(r.min..=r.max).contains(&value) => Err(SpecError::new(
            field,
            format!("{value} is not between {} and {} ({})", r.min, r.max, r.why),
        )),
        _ => Ok(()),
    }
}

/// `services[1].port` -> `services.port`.
fn without_indices(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut depth = 0usize;
    for c in field.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

impl NodeSpec {
    /// Checks the node's own rules (fields are named `node.*`).
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        check_name("node.name", &self.name, MAX_NODE_NAME)?;
        if self.pod_interface.is_none() {
            PodInterface::from_env().map_err(|e| SpecError::new("node.pod_interface", e))?;
        }
        if let Some(cidr) = self.pod_cidr {
            check_cidr("node.pod_cidr", cidr)?;
            if cidr.prefix_len() > 30 {
                return Err(SpecError::new(
                    "node.pod_cidr",
                    format!(
                        "{cidr} has no room for a gateway and pods (the prefix length must be at most 30)",
                    ),
                ));
            }
            if let Some(gw) = self.gateway {
                check_host_address("node.gateway", gw, cidr)?;
            }
        }
        let services = self.service_cidr;
        check_cidr("node.service_cidr", services)?;
        if services.prefix_len() > 30 {
            return Err(SpecError::new(
                "node.service_cidr",
                format!(
                    "{services} has no room for service addresses (the prefix length must be at most 30)"
                ),
            ));
        }
        if let Some(pods) = self.pod_cidr.filter(|p| overlaps(*p, services)) {
            return Err(SpecError::new(
                "node.service_cidr",
                format!("{services} overlaps node.pod_cidr {pods}"),
            ));
        }
        check_range("node.underlay_mtu", self.underlay_mtu.into())?;
        check_range("node.mtu", self.pod_mtu().into())?;
        if let Some(ns) = &self.netns {
            check_netns("node.netns", ns)?;
        }
        if let Some(addr) = self.metrics {
            check_metrics_addr(addr)?;
        }
        if !self.host_interface.is_empty() {
            check_ifname("node.host_interface", &self.host_interface)?;
        }
        let control = self.control_path();
        let len = control.as_os_str().len();
        if len == 0 {
            return Err(SpecError::new("node.control", "is empty"));
        }
        if len > MAX_SOCKET_PATH {
            return Err(SpecError::new(
                "node.control",
                format!(
                    "{} is {len} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket path can have",
                    control.display()
                ),
            ));
        }
        if let Some(mac) = self.router_mac {
            check_unicast_mac("node.router_mac", mac)?;
        }
        if let Some(mac) = self.vtep_mac {
            check_unicast_mac("node.vtep_mac", mac)?;
            if let Some(router) = self.router_mac.filter(|r| *r != mac) {
                return Err(SpecError::new(
                    "node.vtep_mac",
                    format!("{mac} differs from node.router_mac {router} (the router MAC is the VTEP MAC; give one)"),
                ));
            }
        }
        check_range("node.mac_table_size", self.mac_table_size as i128)?;
        check_range("node.mac_ageing_secs", self.mac_ageing_secs.into())?;
        check_range("node.conntrack_max", self.conntrack_max as i128)?;
        check_range("node.workers", self.workers as i128)?;
        for (i, cpu) in self.cpus.iter().flatten().enumerate() {
            check_range(&format!("node.cpus[{i}]"), *cpu as i128)?;
        }
        if let Some(ip) = self.underlay {
            check_unicast_ip("node.underlay", ip)?;
        }
        check_range("node.vxlan_port", self.vxlan_port.into())?;
        check_range("node.vni", self.vni.into())
    }
}

impl NodeSpec {
    /// `node.workers` against the CPUs this process may run on (`allowed`; empty: unknown).
    /// More workers than CPUs would have them take turns on one (and stall each other under
    /// any other load), so it is refused.
    pub(crate) fn check_workers(&self, allowed: &[usize]) -> Result<(), SpecError> {
        if allowed.is_empty() || self.workers <= allowed.len() {
            return Ok(());
        }
        Err(SpecError::new(
            "node.workers",
            format!(
                "{} is more than the {} CPUs this process may run on ({}): workers sharing a CPU stall each other",
                self.workers,
                allowed.len(),
                cpu_list(allowed)
            ),
        ))
    }
}

impl PodSpec {
    /// Checks the pod against `node` and the pods already there (`others`). Fields are named
    /// `<at>.name`, `<at>.ip`, ... (`at` is `pods[1]` in the file, `pod` at runtime).
    pub(crate) fn check<'a>(
        &self,
        node: &NodeSpec,
        others: impl IntoIterator<Item = &'a PodSpec> + Clone,
        at: &str,
    ) -> Result<(), SpecError> {
        let f = |name: &str| format!("{at}.{name}");
        let others = || others.clone().into_iter();
        check_name(&f("name"), &self.name, MAX_POD_NAME)?;
        if others().any(|o| o.name == self.name) {
            return Err(SpecError::new(
                f("name"),
                format!("{:?} is already the name of another pod", self.name),
            ));
        }
        check_netns(&f("netns"), &self.netns)?;
        let ns_path = netns_path(&self.netns);
        if let Some(owner) = others().find(|o| netns_path(&o.netns) == ns_path) {
            return Err(SpecError::new(
                f("netns"),
                format!(
                    "namespace {:?} already belongs to pod {:?} (a pod is one namespace: two pods cannot share it)",
                    self.netns, owner.name
                ),
            ));
        }
        check_ifname(&f("ifname"), &self.ifname)?;
        if let Some(id) = &self.container_id {
            check_container_id(&f("container_id"), id)?;
            if let Some(owner) =
                others().find(|o| o.container_id.as_ref() == Some(id) && o.ifname == self.ifname)
            {
                return Err(SpecError::new(
                    f("container_id"),
                    format!(
                        "container {id:?} already has interface {:?} (pod {:?})",
                        self.ifname, owner.name
                    ),
                ));
            }
        }
        // A pod without an address yet (a file's pod before the node starts) has no address
        // rules to break; the node gives it one before checking it again. A node still
        // waiting for its leased CIDR checks the range when it starts on it.
        if let Some(ip) = self.ip {
            if let Some(cidr) = node.pod_cidr {
                check_host_address(&f("ip"), ip, cidr)?;
            }
            if Some(ip) == node.gateway() {
                return Err(SpecError::new(
                    f("ip"),
                    format!("{ip} is the gateway address"),
                ));
            }
            if let Some(owner) = others().find(|o| o.ip == Some(ip)) {
                return Err(SpecError::new(
                    f("ip"),
                    format!("{ip} is already the address of pod {:?}", owner.name),
                ));
            }
        }
        let Some(mac) = self.mac() else {
            return Ok(());
        };
        check_unicast_mac(&f("mac"), mac)?;
        if mac == node.router_mac() {
            return Err(SpecError::new(
                f("mac"),
                format!("{mac} is the node's router MAC"),
            ));
        }
        if let Some(owner) = others().find(|o| o.mac() == Some(mac)) {
            return Err(SpecError::new(
                f("mac"),
                format!("{mac} is already the MAC of pod {:?}", owner.name),
            ));
        }
        Ok(())
    }
}

/// The address of a pod given without one: the lowest host address of `cidr` that is not its
/// network or broadcast address, not `gateway` and not in `taken` (the other pods'
/// addresses). Called under the pod lock, so two pods added at once never get the same one.
/// `field` names the pod's `ip` (`pod.ip`, `pods[2].ip`) in the error when none is left.
///
/// Takes the CIDR and the gateway rather than a [`NodeSpec`]: it does not care where they come
/// from.
pub(crate) fn free_pod_ip(
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    taken: impl IntoIterator<Item = Ipv4Addr>,
    field: &str,
) -> Result<Ipv4Addr, SpecError> {
    let taken: BTreeSet<Ipv4Addr> = taken.into_iter().filter(|ip| cidr.contains(ip)).collect();
    let network = u32::from(cidr.network());
    let broadcast = u32::from(cidr.broadcast());
    // The host addresses lie strictly between the network and broadcast addresses; at most
    // `taken.len() + 2` of them are looked at before a free one, however wide the CIDR.
    (network.saturating_add(1)..broadcast)
        .map(Ipv4Addr::from)
        .find(|ip| *ip != gateway && !taken.contains(ip))
        .ok_or_else(|| {
            let n = taken.len();
            SpecError::new(
                field,
                format!(
                    "the node's range {cidr} has no free address left ({n} pod{} hold{} addresses in it, {gateway} is the gateway): give the pod a free ip, remove a pod, or give the node a wider node.pod_cidr",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "s" } else { "" },
                ),
            )
        })
}

/// The file's pods, each with its address: a pod with `ip` keeps it; then each pod without one
/// gets [`free_pod_ip`] in file order. Every fixed address is reserved before the first
/// automatic one is chosen, so a fixed address later in the file is never taken by an
/// automatic one earlier. `reserved` are kept free too (the addresses of the CNI attachments a
/// restart brings back). Errors name `pods[N].ip`. Nothing else is checked here.
pub(crate) fn assign_pod_ips(
    node: &NodeSpec,
    pods: &[PodSpec],
    reserved: &[Ipv4Addr],
) -> Result<Vec<PodSpec>, SpecError> {
    let cidr = node.cidr()?;
    let gateway = node
        .gateway()
        .unwrap_or_else(|| NodeConfig::default_gateway(cidr));
    let mut taken: Vec<Ipv4Addr> = pods.iter().filter_map(|p| p.ip).collect();
    taken.extend_from_slice(reserved);
    pods.iter()
        .enumerate()
        .map(|(i, pod)| match pod.ip {
            Some(_) => Ok(pod.clone()),
            None => {
                let ip = free_pod_ip(
                    cidr,
                    gateway,
                    taken.iter().copied(),
                    &format!("pods[{i}].ip"),
                )?;
                taken.push(ip);
                Ok(pod.with_ip(ip))
            }
        })
        .collect()
}

impl PeerSpec {
    /// Checks the peer against `node` and the peers already there (`others`). Fields are
    /// named `<at>.name`, ... (`at` is `peers[1]` in the file, `peer` at runtime); the node's
    /// own fields keep their names (`node.underlay`, `node.mtu`).
    pub(crate) fn check<'a>(
        &self,
        node: &NodeSpec,
        others: impl IntoIterator<Item = &'a PeerSpec> + Clone,
        at: &str,
    ) -> Result<(), SpecError> {
        let f = |name: &str| format!("{at}.{name}");
        let others = || others.clone().into_iter();
        let Some(underlay) = node.underlay else {
            return Err(SpecError::new(
                "node.underlay",
                "is required when peers are configured (the address peers send VXLAN to)",
            ));
        };
        if node.pod_mtu() > node.tunnel_mtu() {
            return Err(SpecError::new(
                "node.mtu",
                format!(
                    "{} is above the {} bytes the tunnel to peers carries (node.underlay_mtu {} minus VXLAN's {VXLAN_OVERHEAD}): lower node.mtu or raise node.underlay_mtu",
                    node.pod_mtu(),
                    node.tunnel_mtu(),
                    node.underlay_mtu
                ),
            ));
        }
        check_name(&f("name"), &self.name, MAX_NODE_NAME)?;
        if self.name == node.name {
            return Err(SpecError::new(
                f("name"),
                format!("{:?} is this node's name", self.name),
            ));
        }
        if others().any(|o| o.name == self.name) {
            return Err(SpecError::new(
                f("name"),
                format!("{:?} is already the name of another peer", self.name),
            ));
        }
        check_unicast_ip(&f("underlay"), self.underlay)?;
        self.check_underlay_is_elsewhere(node, underlay, at)?;
        if self.underlay == underlay {
            return Err(SpecError::new(
                f("underlay"),
                format!("{} is this node's node.underlay", self.underlay),
            ));
        }
        if let Some(owner) = others().find(|o| o.underlay == self.underlay) {
            return Err(SpecError::new(
                f("underlay"),
                format!(
                    "{} is already the underlay of peer {:?}",
                    self.underlay, owner.name
                ),
            ));
        }
        check_cidr(&f("pod_cidr"), self.pod_cidr)?;
        if let Some(own) = node.pod_cidr.filter(|own| overlaps(self.pod_cidr, *own)) {
            return Err(SpecError::new(
                f("pod_cidr"),
                format!("{} overlaps node.pod_cidr {own}", self.pod_cidr),
            ));
        }
        if overlaps(self.pod_cidr, node.service_cidr) {
            return Err(SpecError::new(
                f("pod_cidr"),
                format!(
                    "{} overlaps node.service_cidr {} (the Services' virtual IPs: they are translated on this node, never routed to a peer)",
                    self.pod_cidr, node.service_cidr
                ),
            ));
        }
        if self.pod_cidr.contains(&self.underlay) {
            return Err(SpecError::new(
                f("underlay"),
                format!(
                    "{} is inside the peer's own pod_cidr {} (the tunnel to it would be routed into itself)",
                    self.underlay, self.pod_cidr
                ),
            ));
        }
        if let Some(owner) = others().find(|o| overlaps(o.pod_cidr, self.pod_cidr)) {
            return Err(SpecError::new(
                f("pod_cidr"),
                format!(
                    "{} overlaps {}, the pod CIDR of peer {:?}",
                    self.pod_cidr, owner.pod_cidr, owner.name
                ),
            ));
        }
        let mac = self.vtep_mac();
        check_unicast_mac(&f("vtep_mac"), mac)?;
        if mac == node.router_mac() {
            return Err(SpecError::new(
                f("vtep_mac"),
                format!("{mac} is this node's router MAC"),
            ));
        }
        if let Some(owner) = others().find(|o| o.vtep_mac() == mac) {
            return Err(SpecError::new(
                f("vtep_mac"),
                format!("{mac} is already the VTEP MAC of peer {:?}", owner.name),
            ));
        }
        Ok(())
    }
}

impl PeerSpec {
    /// The peer's underlay is another machine's address: not loopback (unless this node's own
    /// underlay is, a one-machine setup), not an address of this node's pods or Services.
    fn check_underlay_is_elsewhere(
        &self,
        node: &NodeSpec,
        underlay: Ipv4Addr,
        at: &str,
    ) -> Result<(), SpecError> {
        let field = format!("{at}.underlay");
        let ip = self.underlay;
        if ip.is_loopback() && !underlay.is_loopback() {
            return Err(SpecError::new(
                field,
                format!("{ip} is a loopback address (127.0.0.0/8): VXLAN sent there never leaves this machine (node.underlay {underlay} is not on loopback)"),
            ));
        }
        if let Some(own) = node.pod_cidr.filter(|c| c.contains(&ip)) {
            return Err(SpecError::new(
                field,
                format!("{ip} is inside node.pod_cidr {own} (an address of this node's pods, not another node's tunnel endpoint)"),
            ));
        }
        if node.service_cidr.contains(&ip) {
            return Err(SpecError::new(
                field,
                format!(
                    "{ip} is inside node.service_cidr {} (a Service address, not another node's tunnel endpoint)",
                    node.service_cidr
                ),
            ));
        }
        Ok(())
    }
}

impl ServiceSpec {
    /// A runtime service may not take the name of a service of the config file (`file`): it
    /// would shadow it, and, recorded, replace it at the next start, so an edit of the file
    /// would show no effect. Refused, naming both (`<at>.name`).
    pub(crate) fn check_not_shadowing<'a>(
        &self,
        file: impl IntoIterator<Item = &'a ServiceSpec>,
        at: &str,
    ) -> Result<(), SpecError> {
        match file.into_iter().find(|f| f.name == self.name) {
            Some(f) => Err(SpecError::new(
                format!("{at}.name"),
                format!(
                    "{:?} ({}) would shadow the config file's service {:?} ({}): change that one in the file (and restart), or give this one another name",
                    self.name,
                    self.address_text(),
                    f.name,
                    f.address_text()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Checks the service against `node` and the services already there (`others`). Fields
    /// are named `<at>.name`, `<at>.vip`, `<at>.backends[2]` (`at` is `services[1]` in the
    /// file, `service` at runtime). A runtime `service add` replaces the service of the same
    /// name, so it passes the others *without* that one; the file passes the entries before.
    pub(crate) fn check<'a>(
        &self,
        node: &NodeSpec,
        others: impl IntoIterator<Item = &'a ServiceSpec> + Clone,
        at: &str,
    ) -> Result<(), SpecError> {
        let f = |name: &str| format!("{at}.{name}");
        let others = || others.clone().into_iter();
        check_name(&f("name"), &self.name, MAX_SERVICE_NAME)?;
        if others().any(|o| o.name == self.name) {
            return Err(SpecError::new(
                f("name"),
                format!("{:?} is already the name of another service", self.name),
            ));
        }
        let cidr = node.service_cidr;
        check_address_in(&f("vip"), self.vip, cidr, "node.service_cidr")?;
        check_range(&f("port"), self.port.into())?;
        if let Some(owner) =
            others().find(|o| (o.vip, o.port, o.proto) == (self.vip, self.port, self.proto))
        {
            return Err(SpecError::new(
                f("port"),
                format!(
                    "{} is already the address of service {:?}",
                    self.address_text(),
                    owner.name
                ),
            ));
        }
        if self.backends.len() > crate::table::MAX_BACKENDS {
            return Err(SpecError::new(
                f("backends"),
                format!(
                    "{} backends: a service has at most {} (its Maglev table's size)",
                    self.backends.len(),
                    crate::table::MAX_BACKENDS
                ),
            ));
        }
        for (i, b) in self.backends.iter().enumerate() {
            let field = f(&format!("backends[{i}]"));
            if b.port() == 0 {
                return Err(SpecError::new(
                    field,
                    format!("{b} has port 0 (a backend port is 1 to 65535)"),
                ));
            }
            check_unicast_ip(&field, *b.ip())?;
            if b.ip().is_loopback() {
                return Err(SpecError::new(
                    field,
                    format!("{b} is a loopback address (127.0.0.0/8): it would be each client's own namespace, not a pod"),
                ));
            }
            if cidr.contains(b.ip()) {
                return Err(SpecError::new(
                    field,
                    format!(
                        "{b} is inside node.service_cidr {cidr} (a backend is a pod's address, not a service's)"
                    ),
                ));
            }
            if let Some(j) = self.backends[..i].iter().position(|o| o == b) {
                return Err(SpecError::new(
                    field,
                    format!("{b} is listed twice (also backends[{j}])"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
