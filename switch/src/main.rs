//! The `podswitch` command: the node daemon (`run`) and the clients of its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use podswitch::cluster::Agent;
use podswitch::config::Config;
use podswitch::control::{self, ControlSocket, Request, Response};
use podswitch::netns::NetNs;
use podswitch::node::{FlowStatus, Node, PeerSpec, PodSpec, PodStatus, ServiceSpec, ServiceStatus};
use podswitch::node::{NodeHandler, StartingHandler};

/// A userspace packet switch for Kubernetes-style pod networking.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: create its pods and switch their traffic until SIGINT/SIGTERM.
    Run {
        /// Node config (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Add, remove or list pods of a running node.
    Pod {
        #[command(subcommand)]
        op: PodOp,
        /// Control socket of the node (default: the only one in /run/podswitch).
        #[arg(long, env = "PODSWITCH_CONTROL", global = true)]
        control: Option<PathBuf>,
    },
    /// Show the MAC table of a running node.
    Fdb {
        /// Control socket of the node.
        #[arg(long, env = "PODSWITCH_CONTROL")]
        control: Option<PathBuf>,
    },
    /// Add, remove or list peer nodes (remote pod CIDRs) of a running node.
    Peer {
        #[command(subcommand)]
        op: PeerOp,
        /// Control socket of the node (default: the only one in /run/podswitch).
        #[arg(long, env = "PODSWITCH_CONTROL", global = true)]
        control: Option<PathBuf>,
    },
    /// Add, remove or list Services (ClusterIP: a virtual IP and port in front of backends).
    Service {
        #[command(subcommand)]
        op: ServiceOp,
        /// Control socket of the node (default: the only one in /run/podswitch).
        #[arg(long, env = "PODSWITCH_CONTROL", global = true)]
        control: Option<PathBuf>,
    },
    /// List the flows through services that connection tracking follows.
    Conntrack {
        /// Control socket of the node.
        #[arg(long, env = "PODSWITCH_CONTROL")]
        control: Option<PathBuf>,
    },
    /// A whole cluster on this machine: nodes in namespaces on a bridged underlay, a podswitch
    /// per node, pods per node.
    Lab {
        #[command(subcommand)]
        op: LabOp,
    },
    /// Show a running node's counters.
    Status {
        /// Control socket of the node.
        #[arg(long, env = "PODSWITCH_CONTROL")]
        control: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LabOp {
    /// Build the lab and start its nodes; prints how to reach each pod.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        /// Data-plane threads per node (each pod TAP gets one queue per worker).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Lab name: prefix of its namespaces.
        #[arg(long, default_value = "lab")]
        name: String,
        /// Also run an etcd (Debian's etcd-server) at 192.168.77.254:2379; the nodes lease
        /// their subnets there and learn their peers from it, in flannel's layout.
        #[arg(long)]
        etcd: bool,
    },
    /// Stop the lab's nodes and remove everything it made.
    Down {
        /// Lab name.
        #[arg(long, default_value = "lab")]
        name: String,
    },
}

#[derive(Subcommand)]
enum PeerOp {
    /// Add a peer node: its pod CIDR becomes reachable through the VXLAN tunnel. Refused
    /// for the same reasons as a [[peers]] entry of the config file.
    Add(PeerSpec),
    /// Remove a peer node.
    Del {
        /// Peer node name.
        #[arg(long)]
        name: String,
    },
    /// List peer nodes.
    List,
}

#[derive(Subcommand)]
enum ServiceOp {
    /// Add a service, or replace the one of the same name (its VIP, port or backends).
    /// Refused for the same reasons as a [[services]] entry of the config file.
    Add(ServiceSpec),
    /// Remove a service.
    Del {
        /// Service name.
        #[arg(long)]
        name: String,
    },
    /// List services with their backends and connections per backend.
    List,
}

#[derive(Subcommand)]
enum PodOp {
    /// Add a pod (like CNI ADD): namespace created if absent, adopted if present. Refused
    /// for the same reasons as a [[pods]] entry of the config file.
    Add(PodSpec),
    /// Remove a pod (like CNI DEL): by name, or by container ID and interface name.
    Del {
        /// Pod name.
        #[arg(
            long,
            required_unless_present = "container_id",
            conflicts_with = "container_id"
        )]
        name: Option<String>,
        /// The container ID the pod was added with (a CNI attachment); with --ifname.
        #[arg(long)]
        container_id: Option<String>,
        /// The attachment's interface name (with --container-id).
        #[arg(long, default_value = "eth0", requires = "container_id")]
        ifname: String,
    },
    /// List pods with their counters.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Pod { op, control } => {
            let req = match op {
                PodOp::Add(spec) => Ok(Request::PodAdd(spec)),
                PodOp::Del {
                    name,
                    container_id,
                    ifname,
                } => match (name, container_id) {
                    (_, Some(container_id)) => Ok(Request::PodDelByContainer {
                        container_id,
                        ifname,
                    }),
                    (Some(name), None) => Ok(Request::PodDel { name }),
                    (None, None) => Err("pod del: give --name or --container-id".to_string()),
                },
                PodOp::List => Ok(Request::PodList),
            };
            req.and_then(|req| client(control, &req))
        }
        Command::Peer { op, control } => {
            let req = match op {
                PeerOp::Add(spec) => Request::PeerAdd(spec),
                PeerOp::Del { name } => Request::PeerDel { name },
                PeerOp::List => Request::PeerList,
            };
            client(control, &req)
        }
        Command::Service { op, control } => {
            let req = match op {
                ServiceOp::Add(spec) => Request::ServiceAdd(spec),
                ServiceOp::Del { name } => Request::ServiceDel { name },
                ServiceOp::List => Request::ServiceList,
            };
            client(control, &req)
        }
        Command::Conntrack { control } => client(control, &Request::Conntrack),
        Command::Lab { op } => lab(op),
        Command::Fdb { control } => client(control, &Request::Fdb),
        Command::Status { control } => client(control, &Request::Status),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podswitch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only on a terminal: a log file gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// `podswitch run`: the node daemon.
fn run(config_path: &Path) -> Result<(), String> {
    // A bad config is reported before anything is created.
    let cfg = Config::from_file(config_path).map_err(|e| e.to_string())?;
    // Enter the node's host namespace first (before any thread exists, so every thread the
    // daemon starts lives there too).
    if let Some(ns) = &cfg.node.netns {
        enter_netns(ns)?;
    }
    cfg.check_machine(&podswitch::dataplane::allowed_cpus())
        .map_err(|e| e.to_string())?;
    let control_path = cfg.node.control_path();
    // Claim the control socket first: a second daemon for the same node stops here, before it
    // touches any namespace. The error names the socket.
    let socket = ControlSocket::bind(&control_path).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    // The metrics address is claimed before the node starts too (a taken one names
    // node.metrics); it is served once the node is up.
    let metrics_listener = match cfg.node.metrics {
        Some(addr) => {
            let _runtime = rt.enter();
            Some(podswitch::metrics::bind(addr).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let state_path = cfg.node.state_path();
    let state_dir = state_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf();
    let agent = match &cfg.cluster {
        Some(cluster) => {
            Some(Agent::new(cluster, &cfg.node, &state_dir).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let starting = Arc::new(StartingHandler::new(
        cfg.node.name(),
        agent.as_ref().map(Agent::status),
    ));
    let (node, served) = rt.block_on(async {
        let mut serve = tokio::spawn(socket.serve(
            Arc::clone(&starting) as Arc<dyn control::ControlHandler>,
            shutdown_signal(),
        ));
        let up = tokio::select! {
            r = start_node(cfg, agent, state_path) => r,
            r = &mut serve => {
                // Stopped (a signal) before the node was up.
                return (None, flatten(r));
            }
        };
        let (node, agent) = match up {
            Ok(up) => up,
            Err(e) => {
                serve.abort();
                return (None, Err(e));
            }
        };
        let mut handler = NodeHandler::new(Arc::clone(&node));
        if let Some(a) = &agent {
            handler = handler.with_cluster(a.status());
        }
        starting.ready(handler);
        let metrics_task = metrics_listener.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("metrics and web view on http://{addr}/");
            }
            let source = podswitch::metrics::StateSource::new(
                Arc::clone(&node),
                agent.as_ref().map(Agent::status),
            );
            tokio::spawn(podswitch::metrics::serve(listener, move || source.state()))
        });
        let agent_task = agent.map(|a| tokio::spawn(a.run(Arc::clone(&node))));
        let reaper_node = Arc::clone(&node);
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let n = Arc::clone(&reaper_node);
                let _ = tokio::task::spawn_blocking(move || {
                    n.reap_vanished();
                    n.expire_flows();
                })
                .await;
            }
        });
        let r = flatten(serve.await);
        reaper.abort();
        if let Some(t) = metrics_task {
            t.abort();
        }
        if let Some(t) = agent_task {
            t.abort();
        }
        (Some(node), r)
    });
    if let Some(node) = node {
        tracing::info!("shutting down: removing pods");
        node.shutdown();
    }
    served
}

fn flatten(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), String> {
    match r {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("control socket: {e}")),
    }
}

/// Starts the node: with `[cluster]`, on the subnet leased from etcd (or, when etcd does not
/// answer at first, on the subnet remembered from the last run, leasing it once etcd is
/// back); then its pods and the CNI attachments recorded by an earlier run.
async fn start_node(
    mut cfg: Config,
    agent: Option<Agent>,
    state_path: PathBuf,
) -> Result<(Arc<Node>, Option<Agent>), String> {
    let agent = match agent {
        None => None,
        Some(mut agent) => {
            let acquired = match agent.try_acquire().await {
                Ok(a) => a,
                // Only when etcd does not answer: a subnet etcd says is taken is never used.
                Err(e) if !e.is_unreachable() => {
                    tracing::warn!("etcd: {e}; waiting for a subnet lease");
                    agent.acquire().await
                }
                Err(e) => match agent.remembered(&cfg.node) {
                    Some(a) => {
                        tracing::warn!(subnet = %a.subnet, "etcd: {e}; starting on the subnet this node held last, leasing it when etcd answers");
                        a
                    }
                    None => {
                        tracing::warn!("etcd: {e}; waiting for a subnet lease");
                        agent.acquire().await
                    }
                },
            };
            acquired.apply_to(&mut cfg.node);
            Some(agent)
        }
    };
    let node = tokio::task::spawn_blocking(move || -> Result<Arc<Node>, String> {
        // The recorded CNI attachments' addresses are kept from the file's pods without ip,
        // so each attachment comes back below with its own.
        let reserved = podswitch::node::recorded_addresses(&state_path);
        let node = Arc::new(
            Node::start_reserving(
                cfg.node.clone(),
                &cfg.pods,
                &cfg.peers,
                &cfg.services,
                &reserved,
            )
                .map_err(|e| e.to_string())?,
        );
        // CNI attachments recorded by an earlier run come back (those whose namespace is gone
        // are forgotten); from here on the node keeps the record up to date.
        let restored = node.restore_attachments(state_path);
        tracing::info!(node = %node.name(), pod_cidr = %node.pod_cidr(), pods = cfg.pods.len(), restored = restored.len(), control = %cfg.node.control_path().display(), "node up");
        let gw = node.gateway();
        // The node's view: a pod given without ip shows the address it got.
        for p in cfg.pods.iter().filter_map(|p| node.pod(&p.name)) {
            let s = &p.spec;
            println!(
                "pod {:<12} netns {:<12} ip {:<15} e.g. `ip netns exec {} ping {gw}`",
                s.name,
                s.netns,
                s.ip_text(),
                s.netns
            );
        }
        Ok(node)
    })
    .await
    .map_err(|e| format!("starting the node: {e}"))??;
    Ok((node, agent))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with the control socket gone");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT"),
        _ = term.recv() => tracing::info!("SIGTERM"),
    }
}

fn lab(op: LabOp) -> Result<(), String> {
    let out = match op {
        LabOp::Up {
            nodes,
            pods_per_node,
            workers,
            name,
            etcd,
        } => {
            let exe = std::env::current_exe()
                .map_err(|e| format!("finding the podswitch binary: {e}"))?;
            podswitch::lab::Lab::new(&name, nodes, pods_per_node)
                .and_then(|lab| lab.with_workers(workers).with_etcd(etcd).up(&exe))
                .map_err(|e| e.to_string())?
        }
        LabOp::Down { name } => podswitch::lab::down(&name).map_err(|e| e.to_string())?,
    };
    println!("{out}");
    Ok(())
}

fn enter_netns(name: &str) -> Result<(), String> {
    let ns = NetNs::open(name).map_err(|e| format!("node.netns: {e}"))?;
    let file = std::fs::File::open(ns.path()).map_err(|e| format!("node.netns {name:?}: {e}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("node.netns {name:?}: setns: {e}"))
}

/// Finds the control socket: the flag, else the only socket in /run/podswitch.
fn control_path(given: Option<PathBuf>) -> Result<PathBuf, String> {
    control::find_socket(given).map_err(|e| match e {
        control::FindSocketError::NoSocket { .. } => format!("{e} (or pass --control)"),
        control::FindSocketError::Many { found } => {
            format!(
                "{} nodes run here ({}); pass --control",
                found.len(),
                found.join(", ")
            )
        }
    })
}

fn client(control: Option<PathBuf>, req: &Request) -> Result<(), String> {
    let path = control_path(control)?;
    let resp = control::call(&path, req, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    print_response(resp)
}

fn print_response(resp: Response) -> Result<(), String> {
    match resp {
        Response::Ok => println!("ok"),
        Response::Pod(p) => print_pods(&[p]),
        Response::Pods(ps) => print_pods(&ps),
        Response::Fdb(entries) => {
            println!(
                "{:<17}  {:>4}  {:<16} {:<7} {:>5}",
                "MAC", "PORT", "POD", "TYPE", "AGE"
            );
            for e in entries {
                println!(
                    "{:<17}  {:>4}  {:<16} {:<7} {:>5}",
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
            cluster,
            ..
        } => {
            println!("node {node}: {pods} pods; frames rx {rx} forwarded {forwarded} local {delivered_locally} dropped {dropped}");
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
        Response::Node {
            name,
            pod_cidr,
            gateway,
            mtu,
        } => println!("node {name}: pod CIDR {pod_cidr}, gateway {gateway}, MTU {mtu}"),
        Response::Error { message, .. } => return Err(message),
    }
    Ok(())
}

/// One line per pod; the container ID is shortened to 12 characters (as runtimes show it) and
/// the namespace, a name or a path of any length, comes last.
fn print_pods(pods: &[PodStatus]) {
    println!(
        "{:<14} {:<18} {:<17} {:<8} {:<12} {:>4} {:>10} {:>12} {:>10} {:>12} {:>8}  NETNS",
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
            "{:<14} {:<18} {:<17} {:<8} {:<12} {:>4} {:>10} {:>12} {:>10} {:>12} {:>8}  {}",
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
fn print_services(services: &[ServiceStatus]) {
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
fn print_flows(flows: &[FlowStatus]) {
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
