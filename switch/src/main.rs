//! The `podswitch` command: the node daemon (`run`) and the clients of its control socket.

mod print;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use podswitch::cluster::Agent;
use podswitch::config::Config;
use podswitch::control::{self, CaptureSpec, ControlSocket, Request, Response};
use podswitch::netns::NetNs;
use podswitch::node::{Handover, NodeHandler, NodeLock, StartingHandler, Upgrade};
use podswitch::node::{Node, PeerSpec, PodSpec, ServiceSpec};
use print::{pod_drops, print_response};

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
        /// Only check the config (parse, validate, check the machine: CPUs, namespaces) and
        /// exit 0, or 1 with the error; nothing is created or changed. An upgrade runs the
        /// new binary so before handing the node over.
        #[arg(long)]
        check_config: bool,
    },
    /// Add, remove or list pods of a running node.
    Pod {
        #[command(subcommand)]
        op: PodOp,
        /// Control socket of the node (default: the only running node's, found in /run/podswitch).
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
        /// Control socket of the node (default: the only running node's, found in /run/podswitch).
        #[arg(long, env = "PODSWITCH_CONTROL", global = true)]
        control: Option<PathBuf>,
    },
    /// Add, remove or list Services (ClusterIP: a virtual IP and port in front of backends).
    Service {
        #[command(subcommand)]
        op: ServiceOp,
        /// Control socket of the node (default: the only running node's, found in /run/podswitch).
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
    /// Replace the running daemon's binary without stopping its pods: it execs the new one
    /// in its own process, handing over the pods' TAPs and the tracked flows; established
    /// connections stay up. Waits until the node answers again.
    Upgrade {
        /// The new binary (default: the path the daemon was started from, so installing a new
        /// build there and running `upgrade` upgrades).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Control socket of the node.
        #[arg(long, env = "PODSWITCH_CONTROL")]
        control: Option<PathBuf>,
    },
    /// Capture what a pod's port receives and sends, or the inner frames exchanged with a
    /// peer, as a pcap file (e.g. `podswitch capture --pod web | tshark -r -`).
    #[command(after_long_help = CAPTURE_HELP)]
    Capture {
        #[command(flatten)]
        spec: CaptureSpec,
        /// Where to write the pcap file; `-` is standard output, the default when standard
        /// output is not a terminal.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        write: Option<PathBuf>,
        /// Control socket of the node.
        #[arg(long, env = "PODSWITCH_CONTROL")]
        control: Option<PathBuf>,
    },
    /// List the nodes running on this machine (their control sockets, in /run/podswitch and
    /// the labs' directories inside it): the `--control` to give when there are several.
    Nodes,
    /// Show a running node's counters.
    Status {
        /// Control socket of the node.
        #[arg(long, env = "PODSWITCH_CONTROL")]
        control: Option<PathBuf>,
    },
}

const CAPTURE_HELP: &str = "\
The file is classic pcap (link type Ethernet, microsecond timestamps), read by tcpdump, tshark
and Wireshark. Records are written as they come and flushed whenever none is waiting, so a
pipe reader sees them at once:

    podswitch capture --pod web -w - | tshark -r -
    podswitch capture --pod web --count 20 -w web.pcap

Frames appear as the switch sees them: from a pod, as it sent them (before the switch rewrites
anything); to a pod, as the switch hands them over; for a peer, the inner frames as sent into
the tunnel (after segmentation) and as received from it. With virtio-net offloads a TCP or UDP
\"superframe\" of up to 64 KiB is one large packet, and a frame whose checksum the receiver is
to finish (NEEDS_CSUM) carries a partial checksum that tshark reports as wrong; both are written
as they are.

Stops after --count frames, on Ctrl-C, or when the output is closed (the reader of the pipe
exits); the node then stops copying at once. Copies the reader could not take in time are
dropped, never slowing the switch; the number is printed at the end, with the number captured.";

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
    /// Add a service, or replace the runtime one of the same name (its VIP, port or
    /// backends). Refused for the same reasons as a [[services]] entry of the config file, and
    /// with the name of one (a runtime service never shadows the file's).
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
    List {
        /// Also each pod's dropped frames by reason (what the DROPPED column adds up).
        #[arg(long)]
        drops: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // An upgrade's guard (started by the daemon before it execs a new binary).
    if let Some(code) = podswitch::node::guard::run_if_asked() {
        return code;
    }
    let daemon = matches!(cli.command, Command::Run { .. });
    if !daemon && !matches!(cli.command, Command::Capture { .. }) {
        // A listing piped into `head` ends quietly when its reader goes, as other tools do
        // (Rust ignores SIGPIPE, and `println!` would panic on the closed pipe). Not in the
        // daemon (its clients closing their sockets must not stop it), nor in a capture
        // (a closed output ends it cleanly, with the node told to stop copying).
        // SAFETY: signal(2) with the default action, before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let result = match cli.command {
        Command::Run {
            config,
            check_config: true,
        } => check_config(&config),
        Command::Run { config, .. } => run(&config),
        Command::Pod {
            op: PodOp::List { drops: true },
            control,
        } => pod_drops(control),
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
                PodOp::List { .. } => Ok(Request::PodList),
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
        Command::Upgrade { binary, control } => upgrade(control, binary),
        Command::Nodes => {
            list_nodes();
            Ok(())
        }
        Command::Capture {
            spec,
            write,
            control,
        } => capture(control, &spec, write.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podswitch: {e}");
            if daemon && !root {
                eprintln!("podswitch: (`podswitch run` needs root: it makes network namespaces, TAP devices and routes)");
            }
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

/// `podswitch run --check-config`: what `run` checks before it touches anything.
fn check_config(config_path: &Path) -> Result<(), String> {
    let cfg = Config::from_file(config_path).map_err(|e| e.to_string())?;
    cfg.check_machine(&podswitch::dataplane::allowed_cpus())
        .map_err(|e| e.to_string())?;
    if let Some(ns) = &cfg.node.netns {
        NetNs::open(ns).map_err(|e| format!("node.netns: {e}"))?;
    }
    println!(
        "config {} is good for node {}: {} pods, {} peers, {} services",
        config_path.display(),
        cfg.node.name(),
        cfg.pods.len(),
        cfg.peers.len(),
        cfg.services.len()
    );
    Ok(())
}

/// `podswitch run`: the node daemon.
fn run(config_path: &Path) -> Result<(), String> {
    // A bad config is reported before anything is created.
    let cfg = Config::from_file(config_path).map_err(|e| e.to_string())?;
    // One daemon per node name: the node's lock, before anything of the node is read or
    // changed (a second daemon stops here, naming the first). Held until `run` returns, and
    // across an upgrade's exec (inherited: an upgraded process adopts it here).
    let node_lock = NodeLock::take(&cfg.node)?;
    // An upgrade's handover (if this process was exec'ed by `podswitch upgrade`), read before
    // any thread exists (it edits the environment).
    let handover = podswitch::node::Handover::inherited();
    // The upgrade's guard waits for word that the node is up (see node/guard.rs).
    let guard_ready = podswitch::node::guard::Ready::inherited();
    let upgraded = handover.is_some();
    let upgrade = Arc::new(Upgrade::new());
    // Without an upgrade's handover, the flows a crashed run last saved.
    let handover =
        handover.or_else(|| podswitch::node::Handover::after_crash(&cfg.node.flows_path()));
    // What the machine refuses (CPUs) is refused before anything changes, here or host-wide.
    cfg.check_machine(&podswitch::dataplane::allowed_cpus())
        .map_err(|e| e.to_string())?;
    // RFS for rx_steering: a host-wide setting, visible only from the host's namespace (an
    // upgraded daemon starts in the node's and finds it set by the first one).
    if cfg.node.rx_steering {
        match podswitch::node::enable_flow_table() {
            Ok(was) if was < podswitch::node::SOCK_FLOW_ENTRIES => tracing::info!(
                was,
                now = podswitch::node::SOCK_FLOW_ENTRIES,
                "rx_steering: raised net.core.rps_sock_flow_entries (RFS on)"
            ),
            Ok(_) => {}
            Err(e) if upgraded => tracing::debug!("rx_steering: {e}"),
            Err(e) => tracing::warn!(
                "rx_steering: RFS not enabled ({e}); unless the host enables it, flows are spread over the CPUs by RPS alone"
            ),
        }
    }
    // Enter the node's host namespace first (before any thread exists, so every thread the
    // daemon starts lives there too).
    if let Some(ns) = &cfg.node.netns {
        enter_netns(ns)?;
        podswitch::node::loopback_up().map_err(|e| format!("node.netns {ns:?}: {e}"))?;
    }
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
    let node_name = cfg.node.name().to_string();
    // Serving ends on SIGINT/SIGTERM, or when an upgrade is asked for.
    // The socket file stays until the pods are gone (a client that finds no socket finds no
    // node): dropped after `node.shutdown()`, or before an upgrade's exec.
    let socket_file = std::cell::RefCell::new(None::<control::SocketFile>);
    let serve_until = |mut socket: ControlSocket| {
        let (handler, upgrade) = (Arc::clone(&starting), Arc::clone(&upgrade));
        socket_file.replace(Some(socket.keep_file()));
        tokio::spawn(
            socket.serve(handler as Arc<dyn control::ControlHandler>, async move {
                tokio::select! {
                    _ = shutdown_signal() => {}
                    _ = upgrade.requested() => {
                        // The request's response goes out before the connections close.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }),
        )
    };
    let (node, served) = rt.block_on(async {
        let mut serve = serve_until(socket);
        let up = tokio::select! {
            r = start_node(cfg, agent, state_path, handover) => r,
            r = &mut serve => {
                // Stopped (a signal) before the node was up: on purpose, so an upgrade's
                // guard does not start the old binary again.
                guard_ready.signal();
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
        let mut handler = NodeHandler::new(Arc::clone(&node)).with_upgrade(Arc::clone(&upgrade));
        if let Some(a) = &agent {
            handler = handler.with_cluster(a.status());
        }
        starting.ready(handler);
        guard_ready.signal();
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
            let mut saved = std::time::Instant::now();
            loop {
                tick.tick().await;
                let n = Arc::clone(&reaper_node);
                let save = saved.elapsed() >= podswitch::node::SAVE_FLOWS_EVERY;
                if save {
                    saved = std::time::Instant::now();
                }
                let _ = tokio::task::spawn_blocking(move || {
                    n.reap_vanished();
                    n.expire_flows();
                    if save {
                        n.save_flows();
                    }
                })
                .await;
            }
        });
        let mut r = flatten(serve.await);
        // An upgrade: exec the new binary, which takes the node over. Only a failed exec
        // comes back here: the node goes on, with its control socket bound again.
        while let Some(binary) = upgrade.take() {
            let file = state_dir.join(format!("{node_name}.handover.json"));
            // The new process inherits the node's lock (a failed exec sets it back).
            let kept = node_lock.keep_across_exec();
            if let Err(e) = &kept {
                tracing::warn!(lock = %node_lock.path().display(), "the node's lock is not kept across the exec (the new process takes it again): {e}");
            }
            // The new process binds the socket again.
            drop(socket_file.take());
            let e = node.exec_upgrade(&binary, &file);
            drop(kept);
            tracing::error!(binary = %binary.display(), "upgrade failed, carrying on: {e}");
            match ControlSocket::bind(&control_path) {
                Ok(socket) => r = flatten(serve_until(socket).await),
                Err(e) => {
                    r = Err(e.to_string());
                    break;
                }
            }
        }
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
    drop(socket_file.take());
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
/// back); then its pods and the runtime pods recorded by an earlier run.
async fn start_node(
    mut cfg: Config,
    agent: Option<Agent>,
    state_path: PathBuf,
    handover: Option<Handover>,
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
        // The recorded runtime pods' addresses are kept from the file's pods without ip,
        // so each attachment comes back below with its own.
        let recorded = podswitch::node::Recorded::read(&state_path).with_handover(handover);
        let node = Arc::new(
            Node::start_reserving(
                cfg.node.clone(),
                &cfg.pods,
                &cfg.peers,
                &cfg.services,
                recorded,
            )
                .map_err(|e| e.to_string())?,
        );
        // Runtime pods recorded by an earlier run come back (those whose namespace is gone
        // are forgotten); from here on the node keeps the record up to date.
        let restored = node.restore_attachments(state_path);
        // After an upgrade: the flows tracked again, unclaimed descriptors closed.
        node.resume();
        tracing::info!(node = %node.name(), pod_cidr = %node.pod_cidr(), pods = cfg.pods.len(), restored = restored.len(), control = %cfg.node.control_path().display(), "node up");
        let gw = node.gateway();
        let cmd = std::env::current_exe()
            .map(|exe| podswitch::lab::command_name(&exe))
            .unwrap_or_else(|_| "podswitch".into());
        println!(
            "node {} up; try: {cmd} pod list --control {}",
            node.name(),
            cfg.node.control_path().display()
        );
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

/// Finds the control socket: the flag, else the only running node's.
fn control_path(given: Option<PathBuf>) -> Result<PathBuf, String> {
    control::find_socket(given).map_err(|e| e.to_string())
}

/// `podswitch upgrade` ([`control::upgrade`]).
fn upgrade(control: Option<PathBuf>, binary: Option<PathBuf>) -> Result<(), String> {
    let path = control_path(control)?;
    let back = control::upgrade(&path, binary, &mut |line| println!("{line}"))?;
    println!("{back}");
    Ok(())
}

/// `podswitch nodes`: one line per running node, with the `--control` that reaches it.
fn list_nodes() {
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

fn client(control: Option<PathBuf>, req: &Request) -> Result<(), String> {
    let path = control_path(control)?;
    let resp = control::call(&path, req, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    print_response(resp)
}

/// Set by SIGINT or SIGTERM during a capture.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `podswitch capture`: a pcap file (or standard output) until the count, Ctrl-C or a closed
/// output; the counts go to standard error, as tcpdump's.
fn capture(
    control: Option<PathBuf>,
    spec: &CaptureSpec,
    write: Option<&Path>,
) -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use std::io::{IsTerminal, Write};
    if spec.pod.is_none() && spec.peer.is_none() {
        return Err("capture: name the pod (--pod NAME) or the peer (--peer NAME)".into());
    }
    let path = control_path(control)?;
    let mut out: Box<dyn Write> = match write {
        Some(p) if p != Path::new("-") => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("creating {}: {e}", p.display()))?,
        )),
        None if std::io::stdout().is_terminal() => {
            return Err(
                "capture: standard output is a terminal: write the pcap with -w FILE, \
                        or pipe it (`| tshark -r -`), or force it with -w -"
                    .into(),
            )
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
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| format!("installing a {sig} handler: {e}"))?;
    }
    let end = control::capture(&path, spec, &mut out, &STOP).map_err(|e| e.to_string())?;
    eprintln!("capture ended: {}", end.reason);
    eprintln!("{} packets captured", end.captured);
    eprintln!("{} packets dropped by the capture", end.dropped);
    Ok(())
}
