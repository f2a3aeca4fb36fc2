//! What one field may be: names, namespaces, interface names, container IDs, CIDRs,
//! addresses, MACs (each check names the field it is given), and the CPU list of errors.

use super::*;

pub(super) fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `1, 3-5, 7`: a CPU list as the kernel writes one.
pub(in crate::node::spec) fn cpu_list(cpus: &[usize]) -> String {
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
pub(super) fn check_name(field: &str, name: &str, max: usize) -> Result<(), SpecError> {
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
/// `node.metrics`: a port to listen on (0 would be a new one each start: no scraper could
/// find it), and not a multicast or broadcast address.
pub(super) fn check_metrics_addr(addr: std::net::SocketAddr) -> Result<(), SpecError> {
    if addr.port() == 0 {
        return Err(SpecError::new(
            "node.metrics",
            format!("{addr} has port 0: give the port scrapers are told, e.g. 127.0.0.1:9469"),
        ));
    }
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_multicast() || broadcast {
        return Err(SpecError::new(
            "node.metrics",
            format!("{ip} is not an address to listen on (multicast or broadcast)"),
        ));
    }
    Ok(())
}

pub(super) fn check_netns(field: &str, netns: &str) -> Result<(), SpecError> {
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
pub(super) fn netns_path(netns: &str) -> PathBuf {
    if netns.starts_with('/') {
        PathBuf::from(netns)
    } else {
        Path::new(crate::netns::NETNS_RUN_DIR).join(netns)
    }
}

/// A CNI container ID: letters, digits, '_', '.', '-', starting with a letter or digit, at
/// most 255 characters (the CNI specification's rule).
pub(super) fn check_container_id(field: &str, id: &str) -> Result<(), SpecError> {
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
pub(super) fn check_ifname(field: &str, name: &str) -> Result<(), SpecError> {
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
    if name == "lo" {
        return Err(SpecError::new(
            field,
            "\"lo\" is the loopback interface every namespace already has",
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

pub(super) fn check_cidr(field: &str, cidr: Ipv4Net) -> Result<(), SpecError> {
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
pub(super) fn check_host_address(
    field: &str,
    ip: Ipv4Addr,
    cidr: Ipv4Net,
) -> Result<(), SpecError> {
    check_address_in(field, ip, cidr, "node.pod_cidr")
}

/// [`check_host_address`] in the range named `range` (`node.service_cidr`).
pub(super) fn check_address_in(
    field: &str,
    ip: Ipv4Addr,
    cidr: Ipv4Net,
    range: &str,
) -> Result<(), SpecError> {
    let which = if !cidr.contains(&ip) {
        return Err(SpecError::new(
            field,
            format!("{ip} is outside {range} {cidr}"),
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
        format!("{ip} is the {which} address of {range} {cidr}"),
    ))
}

pub(super) fn check_unicast_mac(field: &str, mac: Mac) -> Result<(), SpecError> {
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

pub(super) fn check_unicast_ip(field: &str, ip: Ipv4Addr) -> Result<(), SpecError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(SpecError::new(
            field,
            format!("{ip} is not a unicast address"),
        ));
    }
    Ok(())
}
