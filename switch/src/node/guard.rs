//! The upgrade's guard: a new binary that fails after the `exec` gives the pods back to the old
//! one, so an upgrade never leaves the node gone.
//!
//! Before the handover (`Upgrade::request`) the new binary must answer `--version` as a
//! podswitch and pass `run --check-config` with the daemon's own arguments: a release that
//! refuses the node's config is refused there, with its message, and nothing changes. What
//! that cannot catch (a build that panics at start, a wrapper script that exits, a failure
//! only the real start meets) happens after the `exec`, in the daemon's own process, where
//! the old binary's code is gone; recovery must not depend on the new binary's code at all.
//!
//! So before the `exec`, the old process starts a guard: a copy of the old binary
//! (`/proc/self/exe`, which names the running image even when a new build was installed over
//! its path) started with the daemon's own arguments and [`GUARD_ENV`]. The guard forks away
//! (its parent exits at once, so it is nobody's child to reap: the new daemon never waits for
//! it) and holds:
//! - the pods' and the host interface's TAP descriptors, inherited with the same numbers (a
//!   TAP lives while any descriptor to it is open: the pods' interfaces survive whatever the
//!   new process does);
//! - a copy of the handover file (the new process deletes the original as it reads it);
//! - the read end of a pipe whose write end only the new process holds ([`READY_ENV`]), and a
//!   pidfd of the daemon's process.
//!
//! The new process, once its node is up (pods attached, control socket answering), or when
//! stopped on purpose (SIGTERM) before that, writes one byte to the pipe ([`Ready::signal`]):
//! the guard closes its descriptors, deletes its copy and exits. If instead the pipe reaches its end (the process exited: the write end is
//! closed with it, and close-on-exec is set at once so no child of the new process holds it)
//! or the pidfd says the process is gone, the guard `exec`s the old binary with the handover
//! copy: the old daemon starts again as after an upgrade, adopts the TAPs and the flows, and
//! the node is back (at the guard's pid; the old log continues, the guard's standard error is
//! the daemon's). If the `exec` of the new binary itself fails, the old process carries on
//! and tells the guard to stand down the same way. A new process that is alive but silent
//! after [`GUARD_WAIT`] (a release older than the guard, which does not signal) keeps the
//! node: the guard stands down.
//!
//! Why not another design: the new process cannot be trusted to restart the old binary (a
//! script or a panicking build runs none of our code); a supervisor kept between the init
//! system and the daemon would change what the daemon's pid is; running the new binary in a
//! child first would hand the TAPs to another process and lose the pid on every upgrade. The
//! guard changes nothing on the path that succeeds (same pid, parent, log) and takes over
//! only when the node would otherwise be gone. The one cost: a node given back runs at the
//! guard's pid, reparented to init (or the nearest subreaper); a supervisor that tracks the
//! daemon's pid sees the failed process exit (the CLI reports the new pid).

// `unsafe` is denied crate-wide and allowed in this file only: the guard's fork, pipe, pidfd and poll.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::upgrade::{set_cloexec, HANDOVER_ENV};

/// Set for the guard's process: what it guards (JSON of `GuardArgs`).
pub const GUARD_ENV: &str = "PODSWITCH_UPGRADE_GUARD";
/// Set for the new process: the descriptor to write one byte to once the node is up.
pub const READY_ENV: &str = "PODSWITCH_UPGRADE_READY";
/// How long the guard waits for the new process to be up.
pub const GUARD_WAIT: Duration = Duration::from_secs(120);
/// The path the daemon's old binary is started from again (its running image).
const SELF_EXE: &str = "/proc/self/exe";

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct GuardArgs {
    /// The pipe's read end, open in the guard.
    ready_fd: RawFd,
    /// The daemon's process, running the new binary once it has `exec`ed.
    pid: i32,
    /// The copy of the handover the guard starts the old binary from.
    handover: PathBuf,
}

/// The guard of one upgrade, held by the old process until its `exec`.
#[derive(Debug)]
pub(crate) struct Guard {
    /// The pipe's write end: inherited by the new process across the `exec`.
    ready: OwnedFd,
    handover: PathBuf,
}

impl Guard {
    /// Starts the guard of an upgrade whose handover is in `handover` (copied for the guard);
    /// the descriptors to hold must already survive `exec` (close-on-exec cleared). Returns
    /// once the guard runs on its own.
    pub(crate) fn start(handover: &Path) -> Result<Guard, String> {
        let copy = PathBuf::from(format!("{}.guard", handover.display()));
        std::fs::copy(handover, &copy)
            .map_err(|e| format!("copying the handover to {}: {e}", copy.display()))?;
        let started = Self::spawn(&copy);
        if started.is_err() {
            let _ = std::fs::remove_file(&copy);
        }
        started
    }

    fn spawn(copy: &Path) -> Result<Guard, String> {
        let mut fds = [-1; 2];
        // SAFETY: pipe2 writes two descriptor numbers into the array, which outlives the call.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(format!(
                "the guard's pipe: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: both numbers were just opened by pipe2 and are owned here only.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let args = GuardArgs {
            ready_fd: read.as_raw_fd(),
            pid: std::process::id() as i32,
            handover: copy.to_path_buf(),
        };
        let env = serde_json::to_string(&args).map_err(|e| e.to_string())?;
        let read_fd = read.as_raw_fd();
        let mut cmd = std::process::Command::new(SELF_EXE);
        cmd.args(std::env::args_os().skip(1))
            .env(GUARD_ENV, env)
            .env_remove(HANDOVER_ENV)
            .env_remove(READY_ENV)
            .stdin(std::process::Stdio::null());
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before its exec and only calls fcntl,
        // which is async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            cmd.pre_exec(move || {
                // The read end only, in the child only: the write end stays close-on-exec, so
                // the guard never holds it (or its end would never come).
                if libc::fcntl(read_fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting the guard ({SELF_EXE}): {e}"))?;
        // The first process forks the guard off and exits at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("the guard did not start within 10 s".into());
                }
            }
        };
        if !status.success() {
            return Err(format!("the guard did not start ({status}): see the log"));
        }
        drop(read);
        Ok(Guard {
            ready: write,
            handover: copy.to_path_buf(),
        })
    }

    /// The environment the new process gets: the write end's number, kept open across the
    /// `exec` (close-on-exec cleared here).
    pub(crate) fn env(&self) -> std::io::Result<(&'static str, String)> {
        set_cloexec(self.ready.as_raw_fd(), false)?;
        Ok((READY_ENV, self.ready.as_raw_fd().to_string()))
    }

    /// The `exec` failed and this process keeps the node: the guard stands down.
    pub(crate) fn cancel(self) {
        let _ = set_cloexec(self.ready.as_raw_fd(), true);
        let _ = write_fd(&self.ready, b"C");
        let _ = std::fs::remove_file(&self.handover);
    }
}

/// One `write(2)` of `bytes` to `fd`.
fn write_fd(fd: &OwnedFd, bytes: &[u8]) -> std::io::Result<usize> {
    // SAFETY: write(2) reads `bytes.len()` bytes of a live slice from an open descriptor.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// In a new process started by an upgrade: the guard's pipe, to say the node is up.
#[derive(Debug, Default)]
pub struct Ready(Option<OwnedFd>);

impl Ready {
    /// The write end [`READY_ENV`] names, if this process was started by an upgrade with a
    /// guard. Close-on-exec is set on it at once (no child may hold it) and the variable is
    /// removed: call it before any thread or child exists.
    pub fn inherited() -> Ready {
        let Some(value) = std::env::var_os(READY_ENV) else {
            return Ready(None);
        };
        std::env::remove_var(READY_ENV);
        let Some(fd) = value.to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
            tracing::warn!(value = ?value, "{READY_ENV}: not a descriptor number; ignored");
            return Ready(None);
        };
        if fd < 3 || set_cloexec(fd, true).is_err() {
            tracing::warn!(fd, "{READY_ENV}: not an open descriptor; ignored");
            return Ready(None);
        }
        // SAFETY: the number is open (fcntl succeeded above) and was the guard pipe's write end
        // in the process that exec'ed this one; nothing here has claimed it before (the
        // variable is read once and removed).
        Ready(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The node is up, or was stopped on purpose (SIGTERM) before: the guard stands down (its
    /// descriptors close, its copy goes) rather than start the old binary again. Once is
    /// enough; more are harmless.
    pub fn signal(&self) {
        if let Some(fd) = &self.0 {
            match write_fd(fd, b"R") {
                Ok(_) => tracing::debug!("upgrade: told the guard to stand down"),
                Err(e) => tracing::warn!("upgrade: telling the guard to stand down: {e}"),
            }
        }
    }
}

/// If this process was started as an upgrade's guard ([`GUARD_ENV`]): guards, and returns the
/// exit code (or never returns: the old binary is started again in this process). `None`
/// otherwise. Call at the start of `main`, while the process has one thread.
pub fn run_if_asked() -> Option<ExitCode> {
    let value = std::env::var_os(GUARD_ENV)?;
    std::env::remove_var(GUARD_ENV);
    let args: GuardArgs = match value
        .to_str()
        .ok_or_else(|| "not UTF-8".to_string())
        .and_then(|s| serde_json::from_str(s).map_err(|e| e.to_string()))
    {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("upgrade guard: {GUARD_ENV}: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1; no
    // memory is passed.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, args.pid, 0) };
    let pidfd = if raw >= 0 {
        // SAFETY: pidfd_open returned a new descriptor (close-on-exec), owned here only.
        Some(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            tracing::error!(pid = args.pid, "upgrade guard: pidfd_open: {e}");
            return Some(ExitCode::FAILURE);
        }
        // A kernel before 5.3: the pipe's end alone tells the process is gone.
        None
    };
    // SAFETY: the daemon's pipe end was inherited open under this number and nothing else in
    // this process has claimed it (the variable is read once and removed).
    let ready = unsafe { OwnedFd::from_raw_fd(args.ready_fd) };
    let _ = set_cloexec(ready.as_raw_fd(), true);
    // SAFETY: fork(2) in a process with one thread (the guard's `main`, before anything starts
    // a thread): the child is a full copy and may do anything the parent could.
    match unsafe { libc::fork() } {
        -1 => {
            tracing::error!("upgrade guard: fork: {}", std::io::Error::last_os_error());
            return Some(ExitCode::FAILURE);
        }
        0 => {}
        // The parent: the daemon waits for it; the guard goes on alone.
        _ => return Some(ExitCode::SUCCESS),
    }
    Some(guard(&args, &ready, pidfd.as_ref()))
}

/// What the guard saw.
enum Seen {
    /// A byte on the pipe: the node is up, or the `exec` failed and the old process kept it.
    StandDown,
    /// The new process is gone without a word.
    Gone,
    /// Alive and silent after [`GUARD_WAIT`].
    Silent,
}

fn watch(ready: &OwnedFd, pidfd: Option<&OwnedFd>) -> Seen {
    let deadline = std::time::Instant::now() + GUARD_WAIT;
    loop {
        let mut polls = [
            libc::pollfd {
                fd: ready.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // A negative descriptor is ignored by poll(2).
                fd: pidfd.map_or(-1, AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Seen::Silent;
        }
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll(2) reads and writes the two pollfd entries of a live array.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), 2, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("upgrade guard: poll: {e}");
            return Seen::Silent;
        }
        if n == 0 {
            continue;
        }
        if polls[0].revents != 0 {
            let mut byte = [0u8; 1];
            // SAFETY: read(2) into a live one-byte buffer.
            let got = unsafe { libc::read(ready.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            return if got == 1 {
                Seen::StandDown
            } else {
                Seen::Gone
            };
        }
        if polls[1].revents != 0 {
            // Gone: unless it said it was up just before (the byte waits in the pipe).
            polls[0].revents = 0;
            // SAFETY: as above, with no wait.
            unsafe { libc::poll(polls.as_mut_ptr(), 1, 0) };
            if polls[0].revents & libc::POLLIN != 0 {
                let mut byte = [0u8; 1];
                // SAFETY: read(2) into a live one-byte buffer.
                let got = unsafe { libc::read(ready.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
                if got == 1 {
                    return Seen::StandDown;
                }
            }
            return Seen::Gone;
        }
    }
}

fn guard(args: &GuardArgs, ready: &OwnedFd, pidfd: Option<&OwnedFd>) -> ExitCode {
    let me = std::process::id();
    match watch(ready, pidfd) {
        Seen::StandDown => {
            let _ = std::fs::remove_file(&args.handover);
            ExitCode::SUCCESS
        }
        Seen::Silent => {
            tracing::warn!(pid = args.pid, "upgrade guard: the new process said nothing in {GUARD_WAIT:?} but runs: it keeps the node");
            let _ = std::fs::remove_file(&args.handover);
            ExitCode::SUCCESS
        }
        Seen::Gone => {
            tracing::error!(
                pid = args.pid,
                guard = me,
                "upgrade guard: the new process exited before its node was up; starting the old binary again from the handover"
            );
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(SELF_EXE)
                .args(std::env::args_os().skip(1))
                .env(HANDOVER_ENV, &args.handover)
                .exec();
            tracing::error!("upgrade guard: starting the old binary again: {e}; the node is gone");
            ExitCode::FAILURE
        }
    }
}
