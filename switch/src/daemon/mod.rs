//! The node daemon's life (`podswitch run`): [`Daemon::start`] checks and claims what the
//! node needs, [`Daemon::run`] starts the node and serves it until SIGINT or SIGTERM (and
//! across upgrades), [`Daemon::shutdown`] removes its pods. The CLI only prints.
//!
//! Invariants:
//! - Nothing is created or changed before the config is read and the machine checked; the
//!   node's lock is taken before anything of the node is read or changed (a second daemon of
//!   the same node stops there, naming the first), and held until the daemon ends (or across
//!   an upgrade's exec, which the new process inherits).
//! - The node's namespace (`node.netns`) is entered before any thread exists, so every thread
//!   the daemon starts lives there.
//! - The control socket and the metrics address are claimed before the node starts; while the
//!   node starts, the socket answers that it is starting.
//! - The control socket file exists while the node has pods (a client that finds no socket
//!   finds no node): it goes after [`Node::shutdown`], or before an upgrade's exec.
//! - An upgrade's exec returns only when it failed: the node then carries on, its control
//!   socket bound again.
//! - An upgrade's guard is told the node is up (or that the daemon was stopped before it was,
//!   on purpose), never left waiting on a daemon that runs.

mod error;
mod housekeeping;
mod startup;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::DaemonError;
use housekeeping::{Housekeeping, HOUSEKEEPING_EVERY};
pub use startup::{command_name, ConfigSummary, NodeUp};

use crate::cluster::Agent;
use crate::config::Config;
use crate::control::{self, ControlSocket};
use crate::control::{NodeHandler, StartingHandler};
use crate::node::guard;
use crate::node::{Handover, Node, NodeLock, Upgrade};

/// `podswitch run --check-config`: what [`Daemon::start`] checks before it touches anything
/// (the config, the machine's CPUs, the node's namespace); nothing is created or changed.
pub fn check_config(config_path: &Path) -> Result<ConfigSummary, DaemonError> {
    let cfg = Config::from_file(config_path)?;
    cfg.check_machine(&crate::switch::allowed_cpus())?;
    if let Some(ns) = &cfg.node.netns {
        crate::netns::NetNs::open(ns).map_err(DaemonError::Netns)?;
    }
    Ok(ConfigSummary::of(&cfg))
}

/// A node daemon: from its config to its shutdown.
pub struct Daemon {
    /// Taken by [`Daemon::run`].
    pending: Option<Pending>,
    upgrade: Arc<Upgrade>,
    control_path: PathBuf,
    state_dir: PathBuf,
    node_name: String,
    rt: tokio::runtime::Runtime,
    /// The node, once up.
    node: Option<Arc<Node>>,
    /// The control socket's file, removed when dropped.
    socket_file: Option<control::SocketFile>,
    /// Declared last, so dropped last (fields drop in declaration order): only once the
    /// runtime's tasks (a housekeeping chore still saving flows, the tasks holding the node)
    /// and the node are gone may another daemon take the node.
    node_lock: NodeLock,
}

/// What [`Daemon::run`] starts the node with.
struct Pending {
    cfg: Config,
    handover: Option<Handover>,
    guard_ready: guard::Ready,
    socket: ControlSocket,
    metrics_listener: Option<tokio::net::TcpListener>,
    agent: Option<Agent>,
    state_path: PathBuf,
}

impl Daemon {
    /// Everything before the node starts, in this order: the config, the node's lock, an
    /// upgrade's handover (else the flows a crashed run saved), the machine's CPUs, RFS for
    /// `rx_steering`, the node's namespace, the control socket, the runtime, the metrics
    /// address and the cluster agent. Call it before any other thread exists.
    pub fn start(config_path: &Path) -> Result<Daemon, DaemonError> {
        // A bad config is reported before anything is created.
        let cfg = Config::from_file(config_path)?;
        let node_lock = NodeLock::take(&cfg.node).map_err(DaemonError::Lock)?;
        // An upgrade's handover (if this process was exec'ed by `podswitch upgrade`), read
        // before any thread exists (it edits the environment).
        let handover = Handover::inherited();
        // The upgrade's guard waits for word that the node is up (see node/guard.rs).
        let guard_ready = guard::Ready::inherited();
        let upgraded = handover.is_some();
        let handover = handover.or_else(|| Handover::after_crash(&cfg.node.flows_path()));
        // What the machine refuses (CPUs) is refused before anything changes, here or
        // host-wide.
        cfg.check_machine(&crate::switch::allowed_cpus())?;
        if cfg.node.rx_steering {
            startup::enable_rfs(upgraded);
        }
        if let Some(ns) = &cfg.node.netns {
            startup::enter_netns(ns)?;
        }
        let control_path = cfg.node.control_path();
        // Claim the control socket first: a second daemon for the same node stops here,
        // before it touches any namespace. The error names the socket.
        let socket = ControlSocket::bind(&control_path).map_err(DaemonError::ControlSocket)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DaemonError::Runtime)?;
        // The metrics address is claimed before the node starts too (a taken one names
        // node.metrics); it is served once the node is up.
        let metrics_listener = match cfg.node.metrics {
            Some(addr) => {
                let _runtime = rt.enter();
                Some(crate::metrics::bind(addr)?)
            }
            None => None,
        };
        let state_path = cfg.node.state_path();
        let state_dir = state_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .to_path_buf();
        let agent = match &cfg.cluster {
            Some(cluster) => Some(Agent::new(cluster, &cfg.node, &state_dir)?),
            None => None,
        };
        Ok(Daemon {
            node_name: cfg.node.name().to_string(),
            pending: Some(Pending {
                cfg,
                handover,
                guard_ready,
                socket,
                metrics_listener,
                agent,
                state_path,
            }),
            node_lock,
            upgrade: Arc::new(Upgrade::new()),
            control_path,
            state_dir,
            rt,
            node: None,
            socket_file: None,
        })
    }

    /// Starts the node (calling `up` once it is, with what to tell the user) and serves it
    /// until SIGINT or SIGTERM; an upgrade asked for meanwhile execs the new binary, which
    /// takes the node over (this returns only if none could). Runs once: a second call
    /// returns at once.
    pub fn run(&mut self, up: impl FnOnce(&NodeUp)) -> Result<(), DaemonError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let Pending {
            cfg,
            handover,
            guard_ready,
            socket,
            metrics_listener,
            agent,
            state_path,
        } = pending;
        let starting = Arc::new(StartingHandler::new(
            cfg.node.name(),
            agent.as_ref().map(Agent::status),
        ));
        let upgrade = &self.upgrade;
        // Serving ends on SIGINT/SIGTERM, or when an upgrade is asked for.
        let socket_file = RefCell::new(None::<control::SocketFile>);
        let serve_until = |mut socket: ControlSocket| {
            let (handler, upgrade) = (Arc::clone(&starting), Arc::clone(upgrade));
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
        let (node, served) = self.rt.block_on(async {
            let mut serve = serve_until(socket);
            let started = tokio::select! {
                r = startup::start_node(cfg, agent, state_path, handover) => r,
                r = &mut serve => {
                    // Stopped (a signal) before the node was up: on purpose, so an upgrade's
                    // guard does not start the old binary again.
                    guard_ready.signal();
                    return (None, served(r));
                }
            };
            let (node, agent, node_up) = match started {
                Ok(started) => started,
                Err(e) => {
                    serve.abort();
                    return (None, Err(e));
                }
            };
            up(&node_up);
            let mut handler =
                NodeHandler::new(Arc::clone(&node)).with_upgrade(Arc::clone(upgrade));
            if let Some(a) = &agent {
                handler = handler.with_cluster(a.status());
            }
            starting.ready(handler);
            guard_ready.signal();
            let metrics_task = metrics_listener.map(|listener| {
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!("metrics and web view on http://{addr}/");
                }
                let source = crate::metrics::StateSource::new(
                    Arc::clone(&node),
                    agent.as_ref().map(Agent::status),
                );
                tokio::spawn(crate::metrics::serve(listener, move || source.state()))
            });
            let agent_task = agent.map(|a| tokio::spawn(a.run(Arc::clone(&node))));
            let housekeeping = tokio::spawn(housekeeping(Arc::clone(&node)));
            let mut r = served(serve.await);
            // An upgrade: exec the new binary, which takes the node over. Only a failed exec
            // comes back here: the node goes on, with its control socket bound again.
            while let Some(binary) = upgrade.take() {
                let file = self.state_dir.join(format!("{}.handover.json", self.node_name));
                // The new process inherits the node's lock (a failed exec sets it back).
                let kept = self.node_lock.keep_across_exec();
                if let Err(e) = &kept {
                    tracing::warn!(lock = %self.node_lock.path().display(), "the node's lock is not kept across the exec (the new process takes it again): {e}");
                }
                // The new process binds the socket again.
                drop(socket_file.take());
                let e = node.exec_upgrade(&binary, &file);
                drop(kept);
                tracing::error!(binary = %binary.display(), "upgrade failed, carrying on: {e}");
                match ControlSocket::bind(&self.control_path) {
                    Ok(socket) => r = served(serve_until(socket).await),
                    Err(e) => {
                        r = Err(DaemonError::ControlSocket(e));
                        break;
                    }
                }
            }
            housekeeping.abort();
            if let Some(t) = metrics_task {
                t.abort();
            }
            if let Some(t) = agent_task {
                t.abort();
            }
            (Some(node), r)
        });
        self.node = node;
        self.socket_file = socket_file.into_inner();
        served
    }

    /// Removes the node's pods (if it came up), stops the runtime (its tasks end), removes
    /// the control socket's file, and last lets go of the node's lock.
    pub fn shutdown(self) {
        let Daemon {
            node,
            rt,
            socket_file,
            node_lock,
            ..
        } = self;
        if let Some(node) = node {
            tracing::info!("shutting down: removing pods");
            node.shutdown();
        }
        drop(rt);
        drop(socket_file);
        drop(node_lock);
    }
}

/// How serving the control socket ended.
fn served(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), DaemonError> {
    match r {
        Ok(r) => r.map_err(DaemonError::ControlSocket),
        Err(e) => Err(DaemonError::ControlTask(e)),
    }
}

/// The housekeeping task ([`Housekeeping`]), until aborted.
async fn housekeeping(node: Arc<Node>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    let mut state = Housekeeping::new(std::time::Instant::now());
    loop {
        tick.tick().await;
        let chores = state.tick(std::time::Instant::now());
        let node = Arc::clone(&node);
        let _ = tokio::task::spawn_blocking(move || chores.run_on(&node)).await;
    }
}

/// Completes on SIGINT or SIGTERM (never, if their handlers cannot be installed).
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
