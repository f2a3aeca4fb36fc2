//! Upgrading a running daemon in place (`podswitch upgrade`): the new binary is `exec`ed in the
//! daemon's own process and handed the pods' TAP descriptors and the tracked flows.
//!
//! Why `exec` with inherited descriptors rather than persistent TAPs or `SCM_RIGHTS`: the
//! descriptors stay the ones the switch opened (in its own namespace, so deleting a pod's
//! namespace from outside still destroys its TAP and tells the switch), the pods' interfaces
//! never go away (no address or route is flushed; what a pod sends meanwhile waits in its TAP's
//! queue), and the process keeps its pid, parent, log and pid file, so a supervisor, the lab or
//! systemd sees one daemon throughout. A crash cannot hand anything over: the next start
//! recreates each TAP with the same name, MAC, address and routes, and TCP retransmits over the
//! gap (see `Node::restore_attachments` and the state file).
//!
//! The old process: the control request checks the new binary ([`Upgrade::request`]: it must
//! answer `--version` as a podswitch, and `run --check-config` with the daemon's own arguments
//! must pass, or the upgrade is refused with the new binary's own message) and answers; the
//! daemon stops serving control, writes the handover file (which descriptors are which pod's
//! queues and the host interface's; the tracked flows), clears close-on-exec on those
//! descriptors, starts the guard (`guard.rs`: it holds the descriptors and a copy of the
//! handover, and starts the old binary again from it if the new process exits before its node
//! is up) and `exec`s the binary with its own arguments and `PODSWITCH_HANDOVER=<file>`
//! ([`Node::exec_upgrade`]). Everything else (the tunnel socket, the control socket, etcd's
//! connections) closes on `exec`. If `exec` fails, the daemon goes on as it was (and the guard
//! stands down).
//!
//! The new process starts as after a crash (config, then the state file's runtime pods, peers
//! and services), except that first, before any pod is attached, the flows are tracked again
//! and the services will get the ids they had; and a pod whose queues were handed over, with
//! the same address and MAC, adopts them (`TapPort::adopt` checks each descriptor is a TAP of
//! the pod's interface name first) instead of creating a TAP. Descriptors no pod claims are
//! then closed, their TAPs with them ([`Node::resume`]).

// `unsafe` is denied crate-wide and allowed in this file only: clearing FD_CLOEXEC and exec for the handover.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{lock, Node};
use crate::pipeline::{Counts, DropCounts, PortCounts, PortMetrics};
use crate::switch::Switch;
use crate::table::SavedFlow;

/// The environment variable that names the handover file for the new process.
pub(crate) const HANDOVER_ENV: &str = "PODSWITCH_HANDOVER";

/// What the old process hands the new one.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Handover {
    /// Each pod's TAP queues, by pod name.
    pods: BTreeMap<String, HandedPod>,
    /// The host interface's queues.
    host: Vec<RawFd>,
    /// The services' ids, by name: the new process gives them the same, so the flows'
    /// service ids hold.
    service_ids: BTreeMap<String, u32>,
    /// The tracked flows.
    flows: Vec<SavedFlow>,
    /// The counters, so they go on rather than start again at zero (absent from older
    /// versions).
    #[serde(default)]
    counters: SavedCounters,
    /// Where the fast path's links are pinned for this process to adopt (veth mode; absent
    /// from older versions).
    #[serde(default)]
    pub(super) fast_path_pins: Option<PathBuf>,
    /// Made from the flows file of a process that crashed, not handed over by an upgrade.
    #[serde(skip)]
    pub(super) after_crash: bool,
}

/// The flows file: the live flows through services and the services' ids, written by the
/// running node whenever connection tracking changed (at most every [`SAVE_FLOWS_EVERY`]), so
/// a start after a crash tracks them again.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct FlowsFile {
    service_ids: BTreeMap<String, u32>,
    flows: Vec<SavedFlow>,
}

/// How often the flows file may be written.
pub const SAVE_FLOWS_EVERY: Duration = Duration::from_secs(1);

/// A flows file older than this is not used: its connections have long timed out (Linux
/// gives up retransmitting after about 15 minutes).
const FLOWS_FILE_TOO_OLD: Duration = Duration::from_secs(15 * 60);

/// The switch's counters as an upgrade carries them: node-wide, per port (pods and the host
/// interface, by name), per peer (by name) and the tunnel's. Drops go by reason label, so a
/// version with other reasons reads them. Worker times are the process's own and start again.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedCounters {
    totals: SavedTotals,
    ports: BTreeMap<String, SavedPort>,
    peers: BTreeMap<String, SavedPort>,
    tunnel: Option<SavedPort>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedTotals {
    rx: u64,
    forwarded: u64,
    delivered_locally: u64,
    tx_dropped: u64,
    drops: BTreeMap<String, u64>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct SavedPort {
    #[serde(flatten)]
    counts: PortCounts,
    drops: BTreeMap<String, u64>,
}

impl From<&PortCounts> for SavedPort {
    fn from(c: &PortCounts) -> Self {
        Self {
            counts: *c,
            drops: c.dropped.by_label(),
        }
    }
}

impl SavedPort {
    /// Adds what was saved to `metrics`.
    fn add_to(&self, metrics: &PortMetrics) {
        let mut c = self.counts;
        c.dropped = DropCounts::from_labels(&self.drops);
        metrics.flush(&mut c);
    }
}

impl SavedCounters {
    /// What `switch` counted so far.
    fn save(switch: &Switch) -> Self {
        let t = switch.metrics().snapshot();
        let totals = SavedTotals {
            rx: t.rx,
            forwarded: t.forwarded,
            delivered_locally: t.delivered_locally,
            tx_dropped: t.tx_dropped,
            drops: DropCounts(t.dropped).by_label(),
        };
        let ports = switch
            .ports()
            .into_iter()
            .map(|r| (r.info.name, SavedPort::from(&r.metrics.snapshot())))
            .collect();
        let peers = switch
            .peer_counts()
            .iter()
            .map(|(name, c)| (name.clone(), SavedPort::from(c)))
            .collect();
        let tunnel = switch.tunnel().map(|(_, m)| SavedPort::from(&m.snapshot()));
        Self {
            totals,
            ports,
            peers,
            tunnel,
        }
    }

    /// Adds what the kernel fast path counted (veth mode) to what is saved: it is not handed
    /// over (the maps go with this process), so the next one carries it in the switch's
    /// counters instead.
    fn add_fast_path(&mut self, node: &Node) {
        let forwarded = node.fast_path_forwarded();
        self.totals.rx += forwarded;
        self.totals.forwarded += forwarded;
        // The node's peer counts are the switch's plus the fast path's.
        for (name, counts) in node.peer_counts() {
            if let Some(saved) = self.peers.get_mut(&name) {
                saved.counts = PortCounts {
                    dropped: saved.counts.dropped,
                    ..counts
                };
            }
        }
        for (name, saved) in &mut self.ports {
            node.add_fast_path_counts(name, &mut saved.counts);
        }
    }

    /// Adds the saved counters to `switch`'s: node-wide, and for each port and peer it has
    /// by the same name. Returns the ports and peers that took their counts.
    fn restore(self, switch: &Switch) -> usize {
        let t = &self.totals;
        let mut totals = Counts {
            rx: t.rx,
            forwarded: t.forwarded,
            delivered_locally: t.delivered_locally,
            dropped: DropCounts::from_labels(&t.drops).0,
            tx_dropped: t.tx_dropped,
        };
        switch.metrics().flush(&mut totals);
        let mut restored = 0;
        for r in switch.ports() {
            if let Some(saved) = self.ports.get(&r.info.name) {
                saved.add_to(&r.metrics);
                restored += 1;
            }
        }
        let topo = switch.tables().topology();
        for (id, peer) in topo.peers() {
            if let (Some(saved), Some(m)) = (self.peers.get(&peer.name), topo.peer_metrics(id)) {
                saved.add_to(m);
                restored += 1;
            }
        }
        if let (Some(saved), Some((_, m))) = (&self.tunnel, switch.tunnel()) {
            saved.add_to(&m);
        }
        restored
    }
}

impl Handover {
    /// After a crash (no handover): the flows the crashed process last saved at `path` (see
    /// [`Node::save_flows`]), as a handover of flows alone, so they are tracked again before
    /// any pod is attached. `None` without a file, or with one too old or unreadable (logged).
    pub fn after_crash(path: &Path) -> Option<Handover> {
        let bytes = std::fs::read(path).ok()?;
        let age = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if age > FLOWS_FILE_TOO_OLD {
            tracing::info!(path = %path.display(), age_secs = age.as_secs(), "flows file too old, not used");
            return None;
        }
        match serde_json::from_slice::<FlowsFile>(&bytes) {
            Ok(file) => Some(Handover {
                pods: BTreeMap::new(),
                host: Vec::new(),
                service_ids: file.service_ids,
                flows: file.flows,
                counters: SavedCounters::default(),
                fast_path_pins: None,
                after_crash: true,
            }),
            Err(e) => {
                tracing::warn!(path = %path.display(), "flows file unreadable, not used: {e}");
                None
            }
        }
    }

    /// The handover of the process that `exec`ed this one, if any: read from the file
    /// [`HANDOVER_ENV`] names, which is then deleted, as is the variable (a later upgrade sets
    /// its own). A file that cannot be read is logged and ignored (the descriptors then stay
    /// unclaimed: the pods get new TAPs, as after a crash).
    pub fn inherited() -> Option<Handover> {
        let path = std::env::var_os(HANDOVER_ENV)?;
        // SAFETY (of the environment): this runs in `main` before any thread is started.
        std::env::remove_var(HANDOVER_ENV);
        let path = PathBuf::from(path);
        let read = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Handover>(&b).map_err(|e| e.to_string()));
        let _ = std::fs::remove_file(&path);
        match read {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(path = %path.display(), "handover file unusable, starting as after a crash: {e}");
                None
            }
        }
    }

    /// Takes pod `name`'s descriptors (each owned from here: closed when dropped) with the
    /// address and MAC the pod had.
    pub(super) fn take_pod(
        &mut self,
        name: &str,
    ) -> Option<(Vec<OwnedFd>, std::net::Ipv4Addr, super::Mac)> {
        self.pods.remove(name).map(|p| (own(p.fds), p.ip, p.mac))
    }

    /// Takes the host interface's descriptors.
    pub(super) fn take_host(&mut self) -> Vec<OwnedFd> {
        own(std::mem::take(&mut self.host))
    }

    /// Descriptor count, for the log.
    fn descriptors(&self) -> usize {
        self.pods.values().map(|p| p.fds.len()).sum::<usize>() + self.host.len()
    }
}

/// A pod's TAP as handed over: adopted only by a pod of the same address and MAC (a pod whose
/// settings changed gets a new TAP).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct HandedPod {
    /// The queues' descriptor numbers, open in the new process.
    pub(super) fds: Vec<RawFd>,
    pub(super) ip: std::net::Ipv4Addr,
    pub(super) mac: super::Mac,
}

/// Owns inherited descriptor numbers (negative ones, which cannot be open, are skipped).
fn own(fds: Vec<RawFd>) -> Vec<OwnedFd> {
    fds.into_iter()
        .filter(|fd| *fd >= 0)
        // SAFETY: the number was an open TAP queue of the process that exec'ed this one, with
        // close-on-exec cleared, and nothing in this process has opened or claimed it before:
        // the handover is read once, and each pod's numbers are taken once. `TapPort::adopt`
        // then checks what it is before any I/O.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect()
}

/// An upgrade asked for over the control socket, for the daemon's main loop to carry out.
#[derive(Debug)]
pub struct Upgrade {
    /// The binary this process was started from (the default for `--binary`).
    current: Option<PathBuf>,
    requested: Mutex<Option<PathBuf>>,
    notify: tokio::sync::Notify,
}

impl Default for Upgrade {
    fn default() -> Self {
        Self::new()
    }
}

impl Upgrade {
    /// Remembers this process's binary path now: after a new build is installed over it, the
    /// path names the new one.
    pub fn new() -> Self {
        let current = std::env::current_exe().ok().map(|p| {
            // The file replaced under a running process reads as "<path> (deleted)".
            let s = p.to_string_lossy();
            PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s).to_string())
        });
        Self {
            current,
            requested: Mutex::new(None),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Asks for an upgrade to `binary` (default: the path this process was started from),
    /// once it is checked to be a podswitch that runs here (`--version`). Returns it and its
    /// version line; the daemon execs it after this request's response is sent.
    pub(crate) fn request(&self, binary: Option<PathBuf>) -> Result<(PathBuf, String), String> {
        let binary = binary
            .or_else(|| self.current.clone())
            .ok_or("the daemon's own binary path is unknown: give --binary")?;
        let version = check_binary(&binary)?;
        check_config(&binary)?;
        *lock(&self.requested) = Some(binary.clone());
        self.notify.notify_one();
        Ok((binary, version))
    }

    /// Completes once an upgrade is asked for.
    pub async fn requested(&self) {
        self.notify.notified().await;
    }

    /// The binary asked for, once.
    pub fn take(&self) -> Option<PathBuf> {
        lock(&self.requested).take()
    }
}

/// `binary --version`, if it is an executable podswitch.
fn check_binary(binary: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = binary.display();
    let meta = std::fs::metadata(binary).map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{shown} is not an executable file"));
    }
    let ran = run_briefly(
        std::process::Command::new(binary).arg("--version"),
        Duration::from_secs(5),
    )
    .map_err(|e| format!("{shown} --version: {e}"))?;
    let (status, out) = (ran.status, String::from_utf8_lossy(&ran.stdout));
    let line = out.lines().next().unwrap_or("").trim().to_string();
    if !status.success() || !line.starts_with("podswitch ") {
        return Err(format!(
            "{shown} --version says {line:?}: not a podswitch binary"
        ));
    }
    Ok(line)
}

/// `binary run --check-config` with this daemon's own arguments: the new binary parses and
/// validates the node's config and checks the machine, touching nothing. Its own message if
/// it refuses.
fn check_config(binary: &Path) -> Result<(), String> {
    let shown = binary.display();
    let ran = run_briefly(
        std::process::Command::new(binary)
            .args(std::env::args_os().skip(1))
            .arg("--check-config"),
        CHECK_CONFIG_WAIT,
    )
    .map_err(|e| format!("{shown} run --check-config: {e}"))?;
    if ran.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&ran.stderr);
    let lines: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    let said = lines[lines.len().saturating_sub(10)..].join("\n");
    if said.contains("--check-config") && said.contains("unexpected argument") {
        return Err(format!(
            "{shown} does not know `run --check-config` (a release older than the upgrade's checks): it cannot check the node's config, so the node is not handed to it; stop the node and start that release instead"
        ));
    }
    let said = if said.is_empty() {
        "it said nothing".to_string()
    } else {
        said
    };
    Err(format!(
        "{shown} refuses the node's config ({}): {said}",
        ran.status
    ))
}

/// How long a new binary's config check may take.
const CHECK_CONFIG_WAIT: Duration = Duration::from_secs(20);

/// Runs `cmd` (standard input empty, output captured) for at most `wait`; killed after.
fn run_briefly(
    cmd: &mut std::process::Command,
    wait: Duration,
) -> Result<std::process::Output, String> {
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("does not run here: {e}"))?;
    let mut child = child;
    // Read as they come (a full pipe would stop the child); waited for here, so the child is
    // killed through its handle while it is surely not reaped.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + wait;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish in {} s", wait.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Sets or clears close-on-exec on `fd`.
pub(super) fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: fcntl(F_SETFD) on a descriptor number; it touches no memory. A number that is
    // not open fails with EBADF, which is returned.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flag) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Node {
    /// Hands the node over to `binary`: writes the handover to `file`, lets the pods' and the
    /// host interface's descriptors survive `exec`, and execs `binary` with this process's
    /// arguments. Returns only if that failed, having put everything back as it was.
    pub fn exec_upgrade(&self, binary: &Path, file: &Path) -> std::io::Error {
        // The data plane stands still from here to the exec (or, if that fails, to the
        // return): the counters and flows handed over are one cut, and no frame is counted
        // by the old process after it. What pods send meanwhile waits in their TAP queues.
        let _paused = self.switch.pause();
        let handover = self.handover();
        let fds: Vec<RawFd> = handover
            .pods
            .values()
            .flat_map(|p| &p.fds)
            .chain(&handover.host)
            .copied()
            .collect();
        let written = serde_json::to_vec(&handover)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(file, text));
        if let Err(e) = written {
            return e;
        }
        let undo = || {
            fds.iter().for_each(|fd| drop(set_cloexec(*fd, true)));
            let _ = std::fs::remove_file(file);
        };
        if let Some(e) = fds.iter().find_map(|fd| set_cloexec(*fd, false).err()) {
            undo();
            return e;
        }
        // The guard holds the descriptors and a copy of the handover until the new process
        // says its node is up; no upgrade without it.
        let guard = match super::guard::Guard::start(file) {
            Ok(g) => g,
            Err(e) => {
                undo();
                return std::io::Error::other(format!("no upgrade without its guard: {e}"));
            }
        };
        let ready = match guard.env() {
            Ok(kv) => kv,
            Err(e) => {
                guard.cancel();
                undo();
                return e;
            }
        };
        // The fast path's links pinned: the kernel goes on forwarding what this process
        // compiled until the new one adopts them.
        let pinned = self.pin_fast_path();
        tracing::info!(binary = %binary.display(), pods = handover.pods.len(), descriptors = fds.len(), flows = handover.flows.len(), pinned, "upgrading: exec");
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        use std::os::unix::process::CommandExt;
        let e = std::process::Command::new(binary)
            .args(args)
            .env(HANDOVER_ENV, file)
            .env(ready.0, ready.1)
            .exec();
        guard.cancel();
        undo();
        self.unpin_fast_path();
        e
    }

    /// What to hand over: the descriptors by pod, the host interface's, the flows.
    fn handover(&self) -> Handover {
        let pods = lock(&self.pods)
            .iter()
            .map(|(name, r)| {
                let pod = HandedPod {
                    fds: r.fds.clone(),
                    ip: r.ip,
                    mac: r.spec.mac_at(r.ip),
                };
                (name.clone(), pod)
            })
            .collect();
        let service_ids = self.service_ids();
        let mut counters = SavedCounters::save(&self.switch);
        counters.add_fast_path(self);
        Handover {
            pods,
            host: lock(&self.host_fds).clone(),
            service_ids,
            flows: self.switch.tables().conntrack.save(),
            counters,
            fast_path_pins: self.fast_path_pins(),
            after_crash: false,
        }
    }

    /// The services' ids, by name.
    fn service_ids(&self) -> BTreeMap<String, u32> {
        self.switch
            .services()
            .iter()
            .map(|c| (c.service.name.clone(), c.id))
            .collect()
    }

    /// Writes the flows file ([`Handover::after_crash`]) if connection tracking changed since
    /// the last write: the live flows ([`SavedFlow::is_live`]) and the services' ids (atomically: a crash
    /// mid-write leaves the old file whole). Returns whether it wrote. Called every [`SAVE_FLOWS_EVERY`] by the daemon.
    pub fn save_flows(&self) -> bool {
        let conntrack = &self.switch.tables().conntrack;
        let generation = conntrack.generation();
        let mut saved = lock(&self.flows_saved);
        if *saved == Some(generation) {
            return false;
        }
        let file = FlowsFile {
            service_ids: self.service_ids(),
            flows: conntrack
                .save()
                .into_iter()
                .filter(SavedFlow::is_live)
                .collect(),
        };
        let path = self.spec.flows_path();
        match super::write_json_atomically(&path, &file) {
            Ok(()) => {
                *saved = Some(generation);
                true
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "flows file not written: {e}");
                false
            }
        }
    }

    /// Removes the flows file: the node stops, and its flows with it.
    pub(super) fn forget_flows(&self) {
        let _ = std::fs::remove_file(self.spec.flows_path());
    }

    /// At the start of a node from a handover, before any pod or service is attached: the
    /// services will get the ids they had, and the flows are tracked again (so no packet of a
    /// flow is seen untracked: a backend's reply let through untranslated would have the client
    /// reset the connection). Returns the flows tracked.
    pub(super) fn resume_flows(&self) -> usize {
        let mut inherited = lock(&self.inherited);
        let Some(handover) = inherited.as_mut() else {
            return 0;
        };
        let ids = std::mem::take(&mut handover.service_ids);
        if let Err(e) = self.switch.prefer_service_ids(ids) {
            tracing::warn!("service ids not carried over: {e}");
        }
        let tables = self.switch.tables();
        let now = tables.mac.now();
        let flows = std::mem::take(&mut handover.flows);
        flows
            .iter()
            .filter(|f| tables.conntrack.resume(f, f.service, now))
            .count()
    }

    /// After a start from a handover: the fast path's programs handed over (once every pod,
    /// runtime ones included, is in its maps); closes the descriptors no pod claimed (their
    /// TAPs go).
    pub fn resume(&self) {
        let pins = lock(&self.inherited)
            .as_ref()
            .and_then(|h| h.fast_path_pins.clone());
        self.finish_fast_path_handover(pins);
        let Some(mut handover) = lock(&self.inherited).take() else {
            return;
        };
        if handover.after_crash {
            return;
        }
        let counted = std::mem::take(&mut handover.counters).restore(&self.switch);
        let unclaimed = handover.descriptors();
        drop(handover.take_host());
        let names: Vec<String> = handover.pods.keys().cloned().collect();
        for name in names {
            drop(handover.take_pod(&name));
        }
        tracing::info!(
            unclaimed_descriptors = unclaimed,
            counters_carried_over = counted,
            "resumed after an upgrade"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flows_file_is_used_after_a_crash_unless_too_old_or_unreadable() {
        let dir = std::env::temp_dir().join(crate::testutil::unique("flowsfile"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.flows.json");
        assert!(Handover::after_crash(&path).is_none(), "no file");
        let flow = SavedFlow {
            service: 3,
            proto: 6,
            client: "10.244.1.10:40000".parse().unwrap(),
            vip: "10.96.0.10:80".parse().unwrap(),
            backend: "10.244.2.10:8080".parse().unwrap(),
            snat: None,
            snat_port: None,
            state: 1,
        };
        let file = FlowsFile {
            service_ids: [("web".to_string(), 3)].into(),
            flows: vec![flow.clone()],
        };
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let h = Handover::after_crash(&path).expect("a fresh file");
        assert!(h.after_crash && h.pods.is_empty() && h.host.is_empty());
        assert_eq!(h.flows, vec![flow]);
        assert_eq!(h.service_ids.get("web"), Some(&3));
        // Older than a connection outlives a dead peer: ignored.
        let old = std::time::SystemTime::now() - FLOWS_FILE_TOO_OLD - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(old))
            .unwrap();
        assert!(Handover::after_crash(&path).is_none(), "too old");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Handover::after_crash(&path).is_none(), "unreadable");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
