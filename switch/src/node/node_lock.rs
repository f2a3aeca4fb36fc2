//! One node name, one daemon: the lock on a node's state.
//!
//! A daemon takes it first (before it reads or changes anything: the state and flows files,
//! an upgrade's handover, the control socket, any namespace): an exclusive `flock(2)` on
//! `<state dir>/<node name>.lock`, the state dir being the control socket's directory (where
//! the state file lives). The file then says who holds it (`pid`, `control`, `fd` lines), so a
//! second daemon of the same name, with the same control socket or another, is refused naming
//! the first one's pid and socket. The lock goes with the process (a crash releases it); the
//! file stays (removing it would let two daemons lock two files of one name).
//!
//! Across an upgrade's `exec` the lock is kept, not taken again (which would leave a moment
//! for another daemon): close-on-exec is cleared on its descriptor just before the `exec`
//! ([`NodeLock::keep_across_exec`]), and the new process, finding the file names a descriptor
//! it has open on the same file, adopts that descriptor. An flock belongs to the open file
//! description, which the descriptor carries through `exec` (a process started with it open,
//! at the number the file records, adopts it alike).

// `unsafe` is denied crate-wide and allowed in this file only: flock on the node's lock file and finding an inherited descriptor.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::spec::NodeSpec;
use super::upgrade::set_cloexec;

/// Set once this process image has taken a node lock. An `exec` starts a new image with it
/// clear: only then may a descriptor the file names be one inherited rather than one a live
/// [`NodeLock`] of this image owns.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// How long a refused daemon waits for the holder to say who it is (it writes the file right
/// after it locks it).
const HOLDER_WAIT: Duration = Duration::from_secs(1);

/// The lock on a node's state, held while this value lives (or across an `exec`).
#[derive(Debug)]
pub struct NodeLock {
    file: File,
    path: PathBuf,
}

/// Who holds a node's lock, as its file says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Holder {
    pid: Option<u32>,
    control: Option<PathBuf>,
    fd: Option<RawFd>,
}

impl Holder {
    fn parse(text: &str) -> Holder {
        let mut h = Holder::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pid", v)) => h.pid = v.trim().parse().ok(),
                Some(("control", v)) => h.control = Some(PathBuf::from(v)),
                Some(("fd", v)) => h.fd = v.trim().parse().ok(),
                _ => {}
            }
        }
        h
    }

    fn text(pid: u32, control: &Path, fd: RawFd) -> String {
        format!("pid {pid}\ncontrol {}\nfd {fd}\n", control.display())
    }
}

impl NodeLock {
    /// The lock file of `node`: `<directory of its control socket>/<name>.lock`, beside its
    /// state file.
    pub fn path_of(node: &NodeSpec) -> PathBuf {
        node.state_path()
            .with_file_name(format!("{}.lock", node.name()))
    }

    /// Takes the lock of `node` (creating its directory and file if needed) and records this
    /// process's pid, control socket and descriptor in it. Refused, naming the holder, if
    /// another process holds it. A process `exec`ed by an upgrade adopts the lock its
    /// previous image held.
    pub fn take(node: &NodeSpec) -> Result<NodeLock, String> {
        let path = Self::path_of(node);
        let shown = path.display();
        // The control socket's directory: made only under podswitch's own (a mistyped
        // `node.control` elsewhere is refused, not made).
        super::make_parent(&path, Path::new(super::spec::CONTROL_DIR))
            .map_err(|e| format!("node.control: {e}"))?;
        // A file replaced between open and lock (by hand) is opened again.
        for _ in 0..3 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("opening the node's lock {shown}: {e}"))?;
            let file = match inherited(&file) {
                Some(own) => own,
                None => match try_lock(&file) {
                    Ok(true) => file,
                    Ok(false) => return Err(refusal(node, &path, &file)),
                    Err(e) => return Err(format!("locking {shown}: {e}")),
                },
            };
            if !names_file(&path, &file) {
                continue;
            }
            TAKEN.store(true, Ordering::Relaxed);
            let lock = NodeLock { file, path };
            lock.record(&node.control_path())
                .map_err(|e| format!("writing {}: {e}", lock.path.display()))?;
            return Ok(lock);
        }
        Err(format!(
            "the node's lock {shown} keeps being replaced: is another program removing it?"
        ))
    }

    /// Where the lock is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes who holds the lock: this process, its control socket, the descriptor.
    fn record(&self, control: &Path) -> std::io::Result<()> {
        let text = Holder::text(std::process::id(), control, self.file.as_raw_fd());
        self.file.set_len(0)?;
        self.file.write_all_at(text.as_bytes(), 0)
    }

    /// Lets the lock survive an `exec` of this process (an upgrade): close-on-exec is cleared
    /// on its descriptor until the returned guard drops (the `exec` failed and the process goes
    /// on; a child it starts later must not hold the node's lock).
    pub fn keep_across_exec(&self) -> std::io::Result<KeptAcrossExec<'_>> {
        set_cloexec(self.file.as_raw_fd(), false)?;
        Ok(KeptAcrossExec(self))
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        // The file stays (see the module docs); it no longer names a holder. The lock goes
        // with the descriptor.
        let _ = self.file.set_len(0);
    }
}

/// The lock's descriptor open across an `exec` while this lives; see
/// [`NodeLock::keep_across_exec`].
#[derive(Debug)]
pub struct KeptAcrossExec<'a>(&'a NodeLock);

impl Drop for KeptAcrossExec<'_> {
    fn drop(&mut self) {
        if let Err(e) = set_cloexec(self.0.file.as_raw_fd(), true) {
            tracing::warn!(lock = %self.0.path.display(), "close-on-exec not set back on the node's lock: {e}");
        }
    }
}

/// `flock(LOCK_EX | LOCK_NB)` on `file`: true if this process now holds it, false if another
/// does.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock(2) on a descriptor `file` owns; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// (device, inode) of the open descriptor `fd`, if it is open.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat(2) writes a whole `struct stat` into `st`, which is large enough and
    // properly aligned; it is read only if the call succeeded. A descriptor that is not open
    // fails with EBADF.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // (The types are u64 here, not on every target.)
    #[allow(clippy::unnecessary_cast)]
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// The lock this process already holds through a descriptor inherited from its previous
/// image (an upgrade's `exec`; or from a process that started this one with it open, as the
/// upgrade's guard starts the old binary again): a descriptor, other than `file`'s, open here
/// on the same file, though this image has opened none. It is found among the process's open
/// descriptors, not by what the file says (a holder that failed empties the file as it goes).
/// It is then owned (close-on-exec set again) and locked (a no-op for the open file
/// description that holds it), and `file` closed.
fn inherited(file: &File) -> Option<File> {
    if TAKEN.load(Ordering::Relaxed) {
        return None;
    }
    let own = file.as_raw_fd();
    let same = identity(own)?;
    let fd = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .find(|&fd| fd != own && identity(fd) == Some(same))?;
    // SAFETY: `fd` is open (fstat succeeded) on this very lock file, which this image has not
    // opened but as `file` (`own`, a different number) and has taken no lock on (`TAKEN`), and
    // nothing else in the daemon opens: so `fd` was inherited, left open across an `exec` (or a
    // spawn) by the process that held the lock, for this. Nothing in this image has claimed
    // it: the lock is the first thing the daemon takes, and this is the only place that takes
    // over a recorded descriptor.
    let inherited = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if set_cloexec(fd, true).is_err() || !matches!(try_lock(&inherited), Ok(true)) {
        // Not ours after all: leave the number to whoever it is.
        std::mem::forget(inherited);
        return None;
    }
    tracing::info!(fd, "node lock held across the upgrade's exec");
    Some(inherited)
}

/// True if `path` still names the file open as `file` (it was not replaced meanwhile).
fn names_file(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(p), Ok(f)) => (p.dev(), p.ino()) == (f.dev(), f.ino()),
        _ => false,
    }
}

/// What the lock file open as `file` says of its holder (read from its start, whatever the
/// descriptor's offset).
fn holder_of(file: &File) -> Holder {
    let mut buf = [0u8; 4096];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    Holder::parse(&String::from_utf8_lossy(&buf[..n]))
}

/// The refusal of a second daemon of `node`: who holds the lock at `path` (open as `file`),
/// once it has said so (it writes the file right after locking it).
fn refusal(node: &NodeSpec, path: &Path, file: &File) -> String {
    let deadline = Instant::now() + HOLDER_WAIT;
    let holder = loop {
        let h = holder_of(file);
        if h.pid.is_some() || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let name = node.name();
    match (holder.pid, holder.control) {
        (Some(pid), Some(control)) => format!(
            "node {name:?} already runs here: pid {pid}, control socket {} (lock {}): one daemon per node name; stop that one first, or give this node another node.name",
            control.display(),
            path.display()
        ),
        _ => format!(
            "node {name:?} already runs here: another process holds its lock {} (and has not said which): one daemon per node name",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_back_as_written() {
        let text = Holder::text(42, Path::new("/run/podswitch/n.sock"), 7);
        assert_eq!(
            Holder::parse(&text),
            Holder {
                pid: Some(42),
                control: Some(PathBuf::from("/run/podswitch/n.sock")),
                fd: Some(7)
            }
        );
        assert_eq!(Holder::parse(""), Holder::default());
    }

    #[test]
    fn a_second_lock_of_the_node_is_refused_naming_the_first_until_it_goes() {
        let dir = std::env::temp_dir().join(crate::testutil::unique("nodelock"));
        // Outside /run/podswitch the directory must exist (a mistyped path is not made).
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mut node = NodeSpec::new("n", "10.244.1.0/24".parse().unwrap());
        node.control = Some(dir.join("sub").join("n.sock"));
        let first = NodeLock::take(&node).expect("first");
        let path = dir.join("sub").join("n.lock");
        assert_eq!(first.path(), path);
        // Another socket in the same directory: the same node's lock. (A second take in one
        // image never adopts the first's descriptor.)
        let mut other = node.clone();
        other.control = Some(dir.join("sub").join("other.sock"));
        assert_eq!(
            NodeLock::take(&other).unwrap_err(),
            format!(
                "node \"n\" already runs here: pid {}, control socket {} (lock {}): one daemon per node name; stop that one first, or give this node another node.name",
                std::process::id(),
                dir.join("sub").join("n.sock").display(),
                path.display()
            )
        );
        drop(first);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "",
            "names nobody once released"
        );
        let again = NodeLock::take(&other).expect("free again");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("control {}", dir.join("sub/other.sock").display())),
            "{text}"
        );
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
