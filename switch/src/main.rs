//! The `podswitch` command: the clap schema of the node daemon (`run`) and of the clients of
//! its control socket, and the dispatch to them. The daemon's life is the library's
//! [`podswitch::daemon::Daemon`]; what the commands print is in `print.rs`.

mod print;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use podswitch::control::{self, CaptureSpec, Request};
use podswitch::daemon::{self, Daemon};
use podswitch::node::{PeerSpec, PodSpec, ServiceSpec};
use print::{capture, client, control_path, list_nodes, pod_drops, CliError};

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
    let is_daemon = matches!(cli.command, Command::Run { .. });
    if !is_daemon && !matches!(cli.command, Command::Capture { .. }) {
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
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podswitch: {e}");
            if is_daemon && !root {
                eprintln!("podswitch: (`podswitch run` needs root: it makes network namespaces, TAP devices and routes)");
            }
            ExitCode::FAILURE
        }
    }
}

/// Runs `command`.
fn dispatch(command: Command) -> Result<(), CliError> {
    match command {
        Command::Run {
            config,
            check_config: true,
        } => {
            let summary = daemon::check_config(&config)?;
            print::config_good(&config, &summary);
            Ok(())
        }
        Command::Run { config, .. } => run(&config),
        Command::Pod {
            op: PodOp::List { drops: true },
            control,
        } => pod_drops(control),
        Command::Pod { op, control } => {
            let req = match op {
                PodOp::Add(spec) => Request::PodAdd(spec),
                PodOp::Del {
                    name,
                    container_id,
                    ifname,
                } => match (name, container_id) {
                    (_, Some(container_id)) => Request::PodDelByContainer {
                        container_id,
                        ifname,
                    },
                    (Some(name), None) => Request::PodDel { name },
                    (None, None) => {
                        return Err(CliError::Usage("pod del: give --name or --container-id"))
                    }
                },
                PodOp::List { .. } => Request::PodList,
            };
            client(control, &req)
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

/// `podswitch run`: the node daemon, until SIGINT/SIGTERM; its pods are removed whatever
/// ended it.
fn run(config: &Path) -> Result<(), CliError> {
    let mut node = Daemon::start(config)?;
    let served = node.run(print::node_up);
    node.shutdown();
    Ok(served?)
}

/// `podswitch upgrade` ([`control::upgrade`]).
fn upgrade(control: Option<PathBuf>, binary: Option<PathBuf>) -> Result<(), CliError> {
    let path = control_path(control)?;
    let back = control::upgrade(&path, binary, &mut |line| println!("{line}"))
        .map_err(CliError::Upgrade)?;
    println!("{back}");
    Ok(())
}
