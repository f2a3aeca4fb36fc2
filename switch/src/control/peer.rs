//! The process on the other side of a control socket: its pid (`SO_PEERCRED`), whether it
//! still runs, and where it logs. What `podswitch upgrade` needs to notice a daemon that died
//! and show why.

// `unsafe` is denied crate-wide and allowed in this file only: the peer credentials of the control socket and process liveness.
#![allow(unsafe_code)]

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The pid of the process that accepted `stream` (the daemon), if the kernel says.
pub fn peer_pid(stream: &std::os::unix::net::UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_PEERCRED) writes at most `len` bytes into `cred`, a ucred that
    // outlives the call; the descriptor is the stream's, open for the call.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    u32::try_from(cred.pid).ok().filter(|p| r == 0 && *p > 0)
}

/// The pid of the process serving `path` now, if one answers.
pub fn server_pid(path: &Path) -> Option<u32> {
    let stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    peer_pid(&stream)
}

/// Whether process `pid` runs (a zombie, exited but not yet reaped by its parent, does not).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last parenthesis (comm may hold any byte).
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.trim_start())
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Where process `pid` logs: its standard error, as `/proc/<pid>/fd/2` names it (a file
/// path, or `pipe:[...]`, `socket:[...]` for a pipe or the journal).
pub fn stderr_of(pid: u32) -> Option<PathBuf> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/2")).ok()?;
    let shown = target.to_string_lossy();
    Some(PathBuf::from(
        shown
            .strip_suffix(" (deleted)")
            .unwrap_or(&shown)
            .to_string(),
    ))
}

/// The size of `path` if it is a regular file (a log to read from later).
pub fn log_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// The last `lines` lines of `path` written after byte `from` (what a daemon logged since).
pub fn log_since(path: &Path, from: u64, lines: usize) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    // At most the last 64 KiB: enough for the lines asked for.
    let from = from.max(len.saturating_sub(64 * 1024)).min(len);
    f.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_its_stderr_is_named() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
        assert!(stderr_of(std::process::id()).is_some());
    }

    #[test]
    fn a_log_is_read_from_an_offset_keeping_the_last_lines() {
        let dir = std::env::temp_dir().join(crate::testutil::unique("pslog"));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("node.log");
        std::fs::write(&path, "before\n").expect("write");
        let from = log_size(&path).expect("a file");
        std::fs::write(&path, "before\none\ntwo\nthree\n").expect("write");
        assert_eq!(log_since(&path, from, 2).expect("read"), "two\nthree");
        assert_eq!(log_since(&path, from, 10).expect("read"), "one\ntwo\nthree");
        assert_eq!(log_size(&dir), None, "a directory is no log");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
