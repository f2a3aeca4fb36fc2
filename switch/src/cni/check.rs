//! CHECK: the attachment is still what ADD made.

use std::net::Ipv4Addr;

use super::{call, code, config::Address, control_path, ipam, node_info, CniError, Env, NetConf};
use crate::control::{Request, Response};
use crate::netns::NetNs;

fn failed(msg: String, details: String) -> CniError {
    CniError::new(code::OTHER, msg, details)
}

pub(super) fn check(env: &Env, mut conf: NetConf) -> Result<(), CniError> {
    let container_id = Env::need(&env.container_id, "CNI_CONTAINERID")?;
    let netns = Env::need(&env.netns, "CNI_NETNS")?;
    let ifname = Env::need(&env.ifname, "CNI_IFNAME")?;
    let cni_path = Env::need(&env.path, "CNI_PATH")?;
    let Some(prev) = conf.prev_result.clone() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid network config: prevResult: missing (CHECK needs ADD's result)",
            "the runtime passes the result of ADD as prevResult",
        ));
    };
    let want = Address::from_result(&prev, "prevResult")?;
    let control = control_path(&conf)?;
    if conf.needs_range() {
        conf.fill_range(node_info(&control)?.pod_cidr);
    }
    ipam::Ipam::find(cni_path, &conf.ipam_type)?.exec("CHECK", &conf.to_stdin())?;

    let pods = match call(&control, &Request::PodList)? {
        Response::Pods(p) => p,
        other => return Err(super::unexpected("pod_list", &other)),
    };
    let Some(pod) = pods
        .into_iter()
        .find(|p| p.spec.container_id.as_deref() == Some(container_id) && p.spec.ifname == ifname)
    else {
        return Err(failed(
            format!("podswitch has no pod for container {container_id} interface {ifname}"),
            "the attachment is gone: ADD it again".into(),
        ));
    };
    let ip = want.net.addr();
    if pod.spec.ip != Some(ip) {
        return Err(failed(
            format!(
                "pod {} has address {}, not prevResult's {ip}",
                pod.spec.name,
                pod.spec.ip_text(),
            ),
            String::new(),
        ));
    }
    if pod.spec.netns != netns {
        return Err(failed(
            format!(
                "pod {} is in namespace {}, not CNI_NETNS {netns}",
                pod.spec.name, pod.spec.netns
            ),
            String::new(),
        ));
    }
    let ns = NetNs::open_path(netns).map_err(|e| {
        failed(
            format!("CNI_NETNS {netns}: the namespace is gone"),
            e.to_string(),
        )
    })?;
    let inside = ns
        .run(|| inspect(ifname))
        .map_err(|e| failed(format!("cannot enter CNI_NETNS {netns}"), e.to_string()))??;
    if !inside.addresses.contains(&ip) {
        return Err(failed(
            format!("interface {ifname} in {netns} does not have address {ip}"),
            format!("it has {:?}", inside.addresses),
        ));
    }
    if inside.default_gw != Some(pod.gateway) {
        return Err(failed(
            format!(
                "no default route via {} on {ifname} in {netns}",
                pod.gateway
            ),
            format!("default gateway: {:?}", inside.default_gw),
        ));
    }
    Ok(())
}

/// What the current thread's namespace has on `ifname`.
struct Inside {
    addresses: Vec<Ipv4Addr>,
    default_gw: Option<Ipv4Addr>,
}

/// Reads `ifname`'s IPv4 addresses and its default route's gateway; runs inside the
/// namespace (the netlink socket and /proc/thread-self/net are the thread's namespace's).
fn inspect(ifname: &str) -> Result<Inside, CniError> {
    let ifaddrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| failed("listing interfaces".into(), e.to_string()))?;
    let mut exists = false;
    let mut addresses = Vec::new();
    for a in ifaddrs.filter(|a| a.interface_name == ifname) {
        exists = true;
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            addresses.push(sin.ip());
        }
    }
    if !exists {
        return Err(failed(
            format!("no interface {ifname} in CNI_NETNS"),
            String::new(),
        ));
    }
    let routes = std::fs::read_to_string("/proc/thread-self/net/route")
        .map_err(|e| failed("reading the routing table".into(), e.to_string()))?;
    let default_gw = routes.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        if f.len() < 8 || f[0] != ifname || f[1] != "00000000" || f[7] != "00000000" {
            return None;
        }
        let raw = u32::from_str_radix(f[2], 16).ok()?;
        // The kernel prints the big-endian address as a native integer.
        Some(Ipv4Addr::from(raw.to_ne_bytes()))
    });
    Ok(Inside {
        addresses,
        default_gw,
    })
}
