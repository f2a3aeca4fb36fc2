//! What the CLI prints: the daemon's answers as tables and lines.

use std::path::PathBuf;
use std::time::Duration;

use podswitch::control::{self, Request, Response};

use crate::control_path;
use podswitch::node::{FlowStatus, PodStatus, ServiceStatus};

pub(crate) fn print_response(resp: Response) -> Result<(), String> {
    match resp {
        Response::Ok => println!("ok"),
        Response::Pod(p) => print_pods(&[p]),
        Response::Pods(ps) => print_pods(&ps),
        Response::Fdb(entries) => {
            println!(
                "{:<17}  {:>4}  {:<16} {:<7} {:>7}",
                "MAC", "PORT", "POD", "TYPE", "AGE(s)"
            );
            for e in entries {
                println!(
                    "{:<17}  {:>4}  {:<16} {:<7} {:>7}",
                    e.mac.to_string(),
                    e.port,
                    e.port_name.as_deref().unwrap_or("-"),
                    if e.is_static { "static" } else { "learned" },
                    e.age_secs
                );
            }
        }
        Response::Peers(peers) => {
            println!(
                "{:<20} {:<16} {:<18} {:<17} {:<7} {:<16}",
                "NAME", "UNDERLAY", "POD_CIDR", "VTEP_MAC", "SOURCE", "LEASE"
            );
            for p in peers {
                println!(
                    "{:<20} {:<16} {:<18} {:<17} {:<7} {:<16}",
                    p.spec.name,
                    p.spec.underlay.to_string(),
                    p.spec.pod_cidr.to_string(),
                    p.spec.vtep_mac().to_string(),
                    p.source.to_string(),
                    p.lease
                        .map_or_else(|| "-".to_string(), |l| format!("{l:x}"))
                );
            }
        }
        Response::Services(services) => print_services(&services),
        Response::Flows(flows) => print_flows(&flows),
        Response::Status {
            node,
            pods,
            rx,
            forwarded,
            delivered_locally,
            dropped,
            workers,
            stalls,
            cluster,
            drops_by_reason,
            ..
        } => {
            println!("node {node}: {pods} pods; frames rx {rx} forwarded {forwarded} local {delivered_locally} dropped {dropped}");
            if stalls > 0 {
                println!("data-plane stalls (rounds over 100 ms): {stalls}");
            }
            if !drops_by_reason.is_empty() {
                println!("dropped by reason: {}", by_reason(&drops_by_reason));
            }
            if workers.len() > 1 {
                let per: Vec<String> = workers.iter().map(u64::to_string).collect();
                println!("frames per worker: {}", per.join(" "));
            }
            if let Some(c) = cluster {
                let lease = match (c.key, c.lease_id) {
                    (Some(key), Some(id)) => format!(
                        "lease {key} (etcd lease {id:x}, TTL {}s, expires in {}s)",
                        c.ttl_secs.unwrap_or(0),
                        c.expires_in_secs.unwrap_or(0)
                    ),
                    _ => "no lease yet".into(),
                };
                let health = match c.last_error {
                    None if c.healthy => "healthy".to_string(),
                    None => "not reached yet".to_string(),
                    Some(e) if c.unreachable => format!("unreachable: {e}"),
                    Some(e) => format!("error: {e}"),
                };
                println!(
                    "cluster: etcd {} prefix {}: {health}; {lease}; {} peers and {} services from etcd",
                    c.endpoints.join(","),
                    c.prefix,
                    c.peers,
                    c.services
                );
                if let Some(conflict) = c.conflict {
                    println!("CONFLICT: {conflict}");
                }
            }
        }
        Response::Upgrading { binary, version } => {
            println!("upgrading to {} ({version})", binary.display());
        }
        Response::Node {
            name,
            pod_cidr,
            gateway,
            mtu,
        } => println!("node {name}: pod CIDR {pod_cidr}, gateway {gateway}, MTU {mtu}"),
        Response::Capture { .. } => return Err("unexpected capture stream".into()),
        Response::Error { message, .. } => return Err(message),
    }
    Ok(())
}

/// `a 5, b 1`: the reasons by count, most first (names as in the metrics' `reason` label).
pub(crate) fn by_reason(drops: &std::collections::BTreeMap<String, u64>) -> String {
    let mut v: Vec<(&String, &u64)> = drops.iter().filter(|(_, n)| **n > 0).collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let v: Vec<String> = v.iter().map(|(r, n)| format!("{r} {n}")).collect();
    v.join(", ")
}

/// `pod list --drops`: each pod's drops by reason, one line per pod.
pub(crate) fn pod_drops(control: Option<PathBuf>) -> Result<(), String> {
    let path = control_path(control)?;
    let pods = match control::call(&path, &Request::PodList, Duration::from_secs(30))
        .map_err(|e| e.to_string())?
    {
        Response::Pods(p) => p,
        Response::Error { message, .. } => return Err(message),
        other => return Err(format!("unexpected answer: {other:?}")),
    };
    println!("{:<14} {:>8}  BY REASON", "NAME", "DROPPED");
    for p in pods {
        let total: u64 = p.drops.values().sum();
        let reasons = if total == 0 {
            "-".to_string()
        } else {
            by_reason(&p.drops)
        };
        println!("{:<14} {total:>8}  {reasons}", p.spec.name);
    }
    Ok(())
}

/// One line per pod; the container ID is shortened to 12 characters (as runtimes show it) and
/// the namespace, a name or a path of any length, comes last.
pub(crate) fn print_pods(pods: &[PodStatus]) {
    // As wide as the longest name (a CNI pod's is `cni-` and a container id): columns stay.
    let w = pods
        .iter()
        .map(|p| p.spec.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(14);
    let wi = pods
        .iter()
        .map(|p| p.spec.ifname.len())
        .max()
        .unwrap_or(0)
        .max(8);
    println!(
        "{:<w$} {:<18} {:<17} {:<wi$} {:<12} {:>4} {:>10} {:>12} {:>10} {:>12} {:>8}  NETNS",
        "NAME",
        "IP",
        "MAC",
        "IFNAME",
        "CONTAINER",
        "PORT",
        "RX_FRAMES",
        "RX_BYTES",
        "TX_FRAMES",
        "TX_BYTES",
        "DROPPED"
    );
    for p in pods {
        let (c, s) = (&p.counters, &p.spec);
        let container: String = match &s.container_id {
            Some(id) => id.chars().take(12).collect(),
            None => "-".into(),
        };
        println!(
            "{:<w$} {:<18} {:<17} {:<wi$} {:<12} {:>4} {:>10} {:>12} {:>10} {:>12} {:>8}  {}",
            s.name,
            format!("{}/{}", s.ip_text(), p.prefix_len),
            p.mac.to_string(),
            s.ifname,
            container,
            p.port,
            c.rx_frames,
            c.rx_bytes,
            c.tx_frames,
            c.tx_bytes,
            c.rx_dropped + c.tx_dropped,
            s.netns
        );
    }
}

/// One line per service; the backends come last, each with its connections.
pub(crate) fn print_services(services: &[ServiceStatus]) {
    println!(
        "{:<20} {:<15} {:>5} {:<5} {:<9} {:<7}  BACKENDS(CONNECTIONS)",
        "NAME", "VIP", "PORT", "PROTO", "AFFINITY", "SOURCE"
    );
    for s in services {
        let p = &s.spec;
        let backends: Vec<String> = p
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{b}({})", s.connections.get(i).copied().unwrap_or(0)))
            .collect();
        println!(
            "{:<20} {:<15} {:>5} {:<5} {:<9} {:<7}  {}",
            p.name,
            p.vip.to_string(),
            p.port,
            p.proto.to_string(),
            p.affinity
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            s.source.to_string(),
            if backends.is_empty() {
                "-".to_string()
            } else {
                backends.join(" ")
            }
        );
    }
}

/// One line per tracked flow.
pub(crate) fn print_flows(flows: &[FlowStatus]) {
    println!(
        "{:<5} {:<21} {:<21} {:<21} {:<12} {:>6} {:>8}",
        "PROTO", "CLIENT", "VIP", "BACKEND", "STATE", "AGE", "EXPIRES"
    );
    for f in flows {
        println!(
            "{:<5} {:<21} {:<21} {:<21} {:<12} {:>6} {:>8}",
            f.proto.to_string(),
            f.client.to_string(),
            f.vip.to_string(),
            f.backend.to_string(),
            f.state,
            f.age_secs,
            f.expires_in_secs
        );
    }
}
