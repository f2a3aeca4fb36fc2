//! `podswitch-lab down`: stops a lab's daemons and etcd, then deletes its namespaces and state.
//!
//! Invariants: the nodes stop before etcd (a node never waits for etcd to stop); processes
//! users left in the lab's namespaces are stopped first (they would keep a deleted namespace
//! alive, nameless); a lab of which nothing is left is an error, not a silent success.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use podswitch::netns::NetNs;

use crate::layout::{Lab, LabError};

/// Tears down lab `name`: stops its daemons (SIGTERM; they remove their pods), then its etcd
/// if it has one, deletes its namespaces and state (etcd's data dir with it); reports what it
/// could not remove. A lab of which nothing is left (never up, a typo, already down) is
/// [`LabError::NoSuchLab`].
pub(crate) fn down(name: &str) -> Result<String, LabError> {
    let dir = Lab::dir(name);
    let mut pid_files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "pid"))
                .collect()
        })
        .unwrap_or_default();
    // The nodes first, etcd last: nodes never wait for etcd to stop.
    pid_files.sort_by_key(|p| p.file_stem().is_some_and(|s| s == "etcd"));
    let daemons: Vec<(PathBuf, i32)> = pid_files
        .into_iter()
        .filter_map(|p| {
            let pid = std::fs::read_to_string(&p)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()?;
            Some((p, pid))
        })
        .collect();
    let prefix = format!("{name}-");
    let lab_namespaces = || -> Vec<String> {
        std::fs::read_dir(podswitch::netns::NETNS_RUN_DIR)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // What users started in the lab's namespaces (an `iperf3 -s -D`, a web server) would keep
    // those namespaces alive, nameless, after they are deleted: stopped first (the daemons
    // remove the pods' namespaces as they stop).
    if !dir.exists() && lab_namespaces().is_empty() {
        return Err(LabError::NoSuchLab(name.into()));
    }
    let daemon_pids: Vec<i32> = daemons.iter().map(|(_, pid)| *pid).collect();
    let strays = processes_in(&lab_namespaces(), &daemon_pids);
    for (pid, _) in &strays {
        stop_process(*pid);
    }
    let (mut stopped, mut etcd) = (0, false);
    for (p, pid) in &daemons {
        let pid = *pid;
        if stop_process(pid) {
            if p.file_stem().is_some_and(|s| s == "etcd") {
                etcd = true;
            } else {
                stopped += 1;
            }
        }
    }
    let mut problems = Vec::new();
    let mut removed = 0;
    for n in lab_namespaces() {
        match NetNs::named(&n).and_then(|ns| ns.delete()) {
            Ok(()) => removed += 1,
            Err(e) => problems.push(e.to_string()),
        }
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("{}: {e}", dir.display())),
    }
    if problems.is_empty() {
        let etcd = if etcd { " and etcd" } else { "" };
        let strays = if strays.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = strays
                .iter()
                .map(|(pid, c)| format!("{c} ({pid})"))
                .collect();
            format!(
                ", stopped {} processes left in its namespaces: {}",
                strays.len(),
                names.join(", ")
            )
        };
        Ok(format!(
            "lab {name:?}: stopped {stopped} nodes{etcd}, removed {removed} namespaces{strays}"
        ))
    } else {
        Err(LabError::Step {
            lab: name.into(),
            step: "teardown".into(),
            message: problems.join("; "),
        })
    }
}

/// The processes (pid, command name) whose network namespace is one of the named
/// `namespaces`, but for `except`.
fn processes_in(namespaces: &[String], except: &[i32]) -> Vec<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<(u64, u64)> = namespaces
        .iter()
        .filter_map(|n| NetNs::named(n).ok())
        .filter_map(|ns| std::fs::metadata(ns.path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && !except.contains(pid))
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| ids.contains(&(m.dev(), m.ino())))
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// SIGTERM, wait up to 10 s, then SIGKILL. Returns whether the process existed.
fn stop_process(pid: i32) -> bool {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill(pid, None).is_ok() {
        // Reap it if it is our child (lab up and down in one process, as in tests).
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
