//! What the CLI prints, and the commands that do little else: the daemon's answers as tables
//! and lines, the daemon's hints, `nodes`, `capture`; and [`CliError`], why a command failed.
//!
//! Invariants: what the `podswitch` binary writes to standard output is written here (but for
//! `upgrade`'s progress lines, in main.rs until that command moves to the library); a listing
//! goes to standard output, a capture's counts to standard error (its pcap may be on standard
//! output).

use std::path::{Path, PathBuf};
use std::time::Duration;

use podswitch::control::{self, CaptureSpec, Request, Response};
use podswitch::daemon::{command_name, ConfigSummary, DaemonError, NodeUp};
use podswitch::node::{FlowStatus, PodStatus, ServiceStatus};

/// Why a command failed, printed after `podswitch: `. Each variant's doc comment is its
/// message; the message of the error underneath is kept whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// {0} (the daemon could not start, or stopped with an error)
    #[error("{0}")]
    Daemon(#[from] DaemonError),
    /// {0} (no `--control` given and not exactly one node running)
    #[error("{0}")]
    FindSocket(#[from] control::FindSocketError),
    /// {0} (the control socket could not be reached, or the exchange failed)
    #[error("{0}")]
    Control(#[from] control::ControlError),
    /// {0} (the node refused the request: its message)
    #[error("{0}")]
    Refused(String),
    /// unexpected answer: {0}
    #[error("unexpected answer: {0}")]
    UnexpectedAnswer(String),
    /// unexpected capture stream
    #[error("unexpected capture stream")]
    CaptureStream,
    /// {0} (the command line lacks what the command needs)
    #[error("{0}")]
    Usage(&'static str),
    /// creating {path}: {source}
    #[error("creating {}: {source}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
    /// installing a {signal} handler: {source}
    #[error("installing a {signal} handler: {source}")]
    SignalHandler {
        /// The signal.
        signal: nix::sys::signal::Signal,
        /// sigaction(2).
        source: nix::Error,
    },
    /// {0} (the upgrade failed: why, with what the daemon logged)
    #[error(transparent)]
    Upgrade(#[from] control::UpgradeError),
}

/// Finds the control socket: the flag, else the only running node's.
pub(crate) fn control_path(given: Option<PathBuf>) -> Result<PathBuf, CliError> {
    Ok(control::find_socket(given)?)
}

/// Sends `req` to the node and prints its answer.
pub(crate) fn client(control: Option<PathBuf>, req: &Request) -> Result<(), CliError> {
    let path = control_path(control)?;
    let resp = control::call(&path, req, Duration::from_secs(30))?;
    print_response(resp)
}

/// `run --check-config`: the config is good.
pub(crate) fn config_good(path: &Path, s: &ConfigSummary) {
    println!(
        "config {} is good for node {}: {} pods, {} peers, {} services",
        path.display(),
        s.node,
        s.pods,
        s.peers,
        s.services
    );
}

/// `run`: the node is up; how to reach it and its pods.
pub(crate) fn node_up(up: &NodeUp) {
    let cmd = std::env::current_exe()
        .map(|exe| command_name(&exe))
        .unwrap_or_else(|_| "podswitch".into());
    println!(
        "node {} up; try: {cmd} pod list --control {}",
        up.node,
        up.control.display()
    );
    let gw = up.gateway;
    for s in &up.pods {
        println!(
            "pod {:<12} netns {:<12} ip {:<15} e.g. `ip netns exec {} ping {gw}`",
            s.name,
            s.netns,
            s.ip_text(),
            s.netns
        );
    }
}

pub(crate) fn print_response(resp: Response) -> Result<(), CliError> {
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
            fast_path,
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
            if let Some(f) = fast_path {
                let switch = f.packets.iter().filter(|(p, _)| p.starts_with("up_"));
                let up: u64 = switch.map(|(_, n)| n).sum();
                println!(
                    "fast path ({}): {} pods compiled, {} withdrawn, {} Service flows compiled ({} refused); packets in the kernel {}, up to the switch {}, down from it {}",
                    f.hook,
                    f.pods,
                    f.withdrawn,
                    f.flows,
                    f.flows_refused,
                    f.forwarded(),
                    up,
                    f.packets.get("down").copied().unwrap_or(0)
                );
                let nonzero: std::collections::BTreeMap<String, u64> =
                    f.packets.into_iter().filter(|(_, n)| *n > 0).collect();
                if !nonzero.is_empty() {
                    println!("fast path packets by path: {}", by_reason(&nonzero));
                }
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
        Response::Capture { .. } => return Err(CliError::CaptureStream),
        Response::Error { message, .. } => return Err(CliError::Refused(message)),
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
pub(crate) fn pod_drops(control: Option<PathBuf>) -> Result<(), CliError> {
    let path = control_path(control)?;
    let pods = match control::call(&path, &Request::PodList, Duration::from_secs(30))? {
        Response::Pods(p) => p,
        Response::Error { message, .. } => return Err(CliError::Refused(message)),
        other => return Err(CliError::UnexpectedAnswer(format!("{other:?}"))),
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

/// `podswitch nodes`: one line per running node, with the `--control` that reaches it.
pub(crate) fn list_nodes() {
    let socks = control::running_sockets();
    if socks.is_empty() {
        println!("no podswitch node runs here (no live control socket in /run/podswitch)");
        return;
    }
    println!("{:<20} {:>5} {:>6}  CONTROL", "NODE", "PODS", "PEERS");
    for path in socks {
        let ask = |req| control::call(&path, &req, Duration::from_secs(2));
        let (node, pods) = match ask(Request::Status) {
            Ok(Response::Status { node, pods, .. }) => (node, pods.to_string()),
            Ok(Response::Error { message, .. }) => (format!("({message})"), "-".into()),
            Ok(_) | Err(_) => ("(not answering)".into(), "-".into()),
        };
        let peers = match ask(Request::PeerList) {
            Ok(Response::Peers(p)) => p.len().to_string(),
            _ => "-".into(),
        };
        println!(
            "{node:<20} {pods:>5} {peers:>6}  --control {}",
            path.display()
        );
    }
}

/// Set by SIGINT or SIGTERM during a capture.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `podswitch capture`: a pcap file (or standard output) until the count, Ctrl-C or a closed
/// output; the counts go to standard error, as tcpdump's.
pub(crate) fn capture(
    control: Option<PathBuf>,
    spec: &CaptureSpec,
    write: Option<&Path>,
) -> Result<(), CliError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use std::io::{IsTerminal, Write};
    if spec.pod.is_none() && spec.peer.is_none() {
        return Err(CliError::Usage(
            "capture: name the pod (--pod NAME) or the peer (--peer NAME)",
        ));
    }
    let path = control_path(control)?;
    let mut out: Box<dyn Write> = match write {
        Some(p) if p != Path::new("-") => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|source| CliError::Create {
                path: p.to_path_buf(),
                source,
            })?,
        )),
        None if std::io::stdout().is_terminal() => {
            return Err(CliError::Usage(
                "capture: standard output is a terminal: write the pcap with -w FILE, \
                        or pipe it (`| tshark -r -`), or force it with -w -",
            ))
        }
        _ => Box::new(std::io::BufWriter::with_capacity(
            1 << 16,
            std::io::stdout().lock(),
        )),
    };
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }
            .map_err(|source| CliError::SignalHandler { signal, source })?;
    }
    let end = control::capture(&path, spec, &mut out, &STOP)?;
    eprintln!("capture ended: {}", end.reason);
    eprintln!("{} packets captured", end.captured);
    eprintln!("{} packets dropped by the capture", end.dropped);
    Ok(())
}
