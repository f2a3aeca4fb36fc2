//! The rules: what a node, a pod and a peer may be. The only place where one is refused, so
//! the file and the runtime refuse alike.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::*;

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
];

/// Checks `value` against the range of `field` (`node.mtu`; `node.cpus[2]` uses `node.cpus`'s).
/// Fields without a range pass.
pub(crate) fn check_range(field: &str, value: i128) -> Result<(), SpecError> {
    let base = field.split('[').next().unwrap_or(field);
    match RANGES.iter().find(|r| r.field == base) {
        Some(r) if !(r.min..=r.max).contains(&value) => Err(SpecError::new(
            field,
            format!("{value} is not between {} and {} ({})", r.min, r.max, r.why),
        )),
        _ => Ok(()),
    }
}

impl NodeSpec {
    /// Checks the node's own rules (fields are named `node.*`).
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        check_name("node.name", &self.name, MAX_NODE_NAME)?;
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
        check_range("node.underlay_mtu", self.underlay_mtu.into())?;
        check_range("node.mtu", self.pod_mtu().into())?;
        if let Some(ns) = &self.netns {
            check_netns("node.netns", ns)?;
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
        let ip = self.ip;
        // A node still waiting for its leased CIDR checks these when it starts on it.
        if let Some(cidr) = node.pod_cidr {
            check_host_address(&f("ip"), ip, cidr)?;
        }
        if Some(ip) == node.gateway() {
            return Err(SpecError::new(
                f("ip"),
                format!("{ip} is the gateway address"),
            ));
        }
        if let Some(owner) = others().find(|o| o.ip == ip) {
            return Err(SpecError::new(
                f("ip"),
                format!("{ip} is already the address of pod {:?}", owner.name),
            ));
        }
        let mac = self.mac();
        check_unicast_mac(&f("mac"), mac)?;
        if mac == node.router_mac() {
            return Err(SpecError::new(
                f("mac"),
                format!("{mac} is the node's router MAC"),
            ));
        }
        if let Some(owner) = others().find(|o| o.mac() == mac) {
            return Err(SpecError::new(
                f("mac"),
                format!("{mac} is already the MAC of pod {:?}", owner.name),
            ));
        }
        Ok(())
    }
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

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `1, 3-5, 7`: a CPU list as the kernel writes one.
pub(super) fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(", ")
    }
}

/// Node, peer and pod names: non-empty, `[a-zA-Z0-9._-]`, at most `max` characters.
fn check_name(field: &str, name: &str, max: usize) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(SpecError::new(
            field,
            format!("{name:?} contains {c:?} (allowed: letters, digits, '.', '_', '-')"),
        ));
    }
    if name.len() > max {
        return Err(SpecError::new(
            field,
            format!("{name:?} is {} characters long (at most {max})", name.len()),
        ));
    }
    Ok(())
}

/// Longest namespace path (PATH_MAX with the terminating NUL).
const MAX_NETNS_PATH: usize = 4095;
/// Longest container ID.
const MAX_CONTAINER_ID: usize = 255;
/// Longest interface name (IFNAMSIZ with the terminating NUL).
const MAX_IFNAME: usize = 15;

/// A pod's namespace: an absolute path to a namespace file, or a file name in `/run/netns`.
fn check_netns(field: &str, netns: &str) -> Result<(), SpecError> {
    if netns.starts_with('/') {
        if netns.contains('\0') {
            return Err(SpecError::new(
                field,
                format!("{netns:?} contains a NUL byte"),
            ));
        }
        if netns.len() > MAX_NETNS_PATH {
            return Err(SpecError::new(
                field,
                format!(
                    "the path is {} bytes long (at most {MAX_NETNS_PATH})",
                    netns.len()
                ),
            ));
        }
        return Ok(());
    }
    match crate::netns::name_problem(netns) {
        Some(why) if netns.contains('/') => Err(SpecError::new(
            field,
            format!("{why}; a path to a namespace file must be absolute"),
        )),
        Some(why) => Err(SpecError::new(field, why)),
        None => Ok(()),
    }
}

/// The file of a pod's namespace: the path itself, or `/run/netns/<name>`. Two pods whose
/// namespaces have the same file share one namespace.
fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') {
        PathBuf::from(netns)
    } else {
        Path::new(crate::netns::NETNS_RUN_DIR).join(netns)
    }
}

/// A CNI container ID: letters, digits, '_', '.', '-', starting with a letter or digit, at
/// most 255 characters (the CNI specification's rule).
fn check_container_id(field: &str, id: &str) -> Result<(), SpecError> {
    let Some(first) = id.chars().next() else {
        return Err(SpecError::new(field, "must not be empty"));
    };
    if !first.is_ascii_alphanumeric() {
        return Err(SpecError::new(
            field,
            format!("{id:?} starts with {first:?} (a container ID starts with a letter or digit)"),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(SpecError::new(
            field,
            format!("{id:?} contains {c:?} (allowed: letters, digits, '.', '_', '-')"),
        ));
    }
    if id.len() > MAX_CONTAINER_ID {
        return Err(SpecError::new(
            field,
            format!(
                "{} characters is longer than a container ID can be ({MAX_CONTAINER_ID})",
                id.len()
            ),
        ));
    }
    Ok(())
}

/// A Linux interface name: 1 to 15 bytes, no '/', ':' or whitespace, not '.' or '..'.
fn check_ifname(field: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    if name.len() > MAX_IFNAME {
        return Err(SpecError::new(
            field,
            format!(
                "{name:?} is {} bytes long (an interface name has at most {MAX_IFNAME})",
                name.len()
            ),
        ));
    }
    if name == "." || name == ".." {
        return Err(SpecError::new(
            field,
            format!("{name:?} is not an interface name"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | ':' | '\0') || c.is_whitespace())
    {
        return Err(SpecError::new(
            field,
            format!("{name:?} contains {c:?} (an interface name has no '/', ':' or whitespace)"),
        ));
    }
    Ok(())
}

fn check_cidr(field: &str, cidr: Ipv4Net) -> Result<(), SpecError> {
    if cidr.addr() != cidr.network() {
        return Err(SpecError::new(
            field,
            format!("{cidr} has host bits set (did you mean {}?)", cidr.trunc()),
        ));
    }
    Ok(())
}

/// An address of `cidr` usable by a host: inside it, neither its network nor its broadcast
/// address.
fn check_host_address(field: &str, ip: Ipv4Addr, cidr: Ipv4Net) -> Result<(), SpecError> {
    let which = if !cidr.contains(&ip) {
        return Err(SpecError::new(
            field,
            format!("{ip} is outside node.pod_cidr {cidr}"),
        ));
    } else if ip == cidr.network() {
        "network"
    } else if ip == cidr.broadcast() {
        "broadcast"
    } else {
        return Ok(());
    };
    Err(SpecError::new(
        field,
        format!("{ip} is the {which} address of node.pod_cidr {cidr}"),
    ))
}

fn check_unicast_mac(field: &str, mac: Mac) -> Result<(), SpecError> {
    if mac.0 == [0; 6] {
        return Err(SpecError::new(
            field,
            "00:00:00:00:00:00 is not a usable MAC",
        ));
    }
    if mac.0[0] & 1 != 0 {
        return Err(SpecError::new(
            field,
            format!("{mac} is a group (multicast or broadcast) MAC; a unicast MAC has the low bit of the first octet clear"),
        ));
    }
    Ok(())
}

fn check_unicast_ip(field: &str, ip: Ipv4Addr) -> Result<(), SpecError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(SpecError::new(
            field,
            format!("{ip} is not a unicast address"),
        ));
    }
    Ok(())
}
