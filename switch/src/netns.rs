//! Named network namespaces, compatible with `ip netns` (`/run/netns/<name>`), and namespaces
//! given by the path of their file (`/proc/PID/ns/net`), which are only ever adopted.
//!
//! A namespace is created the way iproute2 does it, without forking: `/run/netns` is made a
//! shared mount point, an empty file is created, and a short-lived thread `unshare`s a new
//! network namespace and bind-mounts its `/proc/thread-self/ns/net` onto the file. (rtnetlink's
//! `NetworkNamespace::add` forks the process instead, which is unsafe in a multi-threaded
//! daemon.) Work inside a namespace runs on a dedicated thread that `setns`es into it; sockets
//! and TAP devices opened there stay bound to that namespace after the thread exits.
//!
//! Invariant: this module never keeps a namespace file descriptor open beyond a call, so a
//! namespace deleted from outside (`ip netns del`) really goes away and takes its devices with
//! it; the switch notices through its TAP file descriptors.

// `unsafe` is denied crate-wide and allowed in this file only: setns and unshare.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// Where named namespaces live.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name cannot be a file in /run/netns.
    #[error("invalid network namespace name {0:?}")]
    BadName(String),
    /// A namespace with that name exists (when creating).
    #[error("network namespace {0:?} already exists")]
    Exists(String),
    /// No namespace with that name (when opening).
    #[error("network namespace {0:?} does not exist")]
    Missing(String),
    /// The file exists but is no namespace (not a bind mount of one, not a `/proc` link).
    #[error("{0:?} is not a network namespace")]
    NotNamespace(String),
    /// The system refused (with the step that failed).
    #[error("network namespace {name:?}: {step}: {source}")]
    Sys {
        /// Namespace name.
        name: String,
        /// What was being done.
        step: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The worker thread could not run or panicked.
    #[error("network namespace {0:?}: worker thread failed")]
    Thread(String),
}

fn sys<'a>(name: &'a str, step: &'static str) -> impl FnOnce(nix::Error) -> NetnsError + 'a {
    move |e| NetnsError::Sys {
        name: name.into(),
        step,
        source: std::io::Error::from(e),
    }
}

fn io<'a>(name: &'a str, step: &'static str) -> impl FnOnce(std::io::Error) -> NetnsError + 'a {
    move |source| NetnsError::Sys {
        name: name.into(),
        step,
        source,
    }
}

/// A network namespace: named (`/run/netns/<name>`) or given by path (the name is the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

/// Longest namespace name (a file name in /run/netns).
pub(crate) const MAX_NAME: usize = 255;

/// Why `name` cannot be a namespace name (a file name in /run/netns), or `None` if it can. The
/// one rule, used by [`check_name`] and by the pod spec's checks.
pub(crate) fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name == "." || name == ".." {
        return Some(format!(
            "{name:?} is not a namespace name (it names a directory)"
        ));
    }
    if let Some(c) = name.chars().find(|c| *c == '/' || *c == '\0') {
        return Some(format!(
            "{name:?} contains {c:?} (a namespace name is a file name in /run/netns)"
        ));
    }
    if name.len() > MAX_NAME {
        return Some(format!(
            "{} bytes is longer than a file name can be ({MAX_NAME})",
            name.len()
        ));
    }
    None
}

/// Checks that `name` can be a file name in /run/netns.
pub(crate) fn check_name(name: &str) -> Result<(), NetnsError> {
    match name_problem(name) {
        None => Ok(()),
        Some(_) => Err(NetnsError::BadName(name.into())),
    }
}

impl NetNs {
    /// The namespace called `name`, whether or not it exists.
    pub fn named(name: &str) -> Result<Self, NetnsError> {
        check_name(name)?;
        Ok(Self {
            name: name.into(),
            path: Path::new(NETNS_RUN_DIR).join(name),
        })
    }

    /// Name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if the namespace exists (its file is a mounted namespace, not a leftover file).
    pub fn exists(&self) -> bool {
        let Ok(f) = std::fs::File::open(&self.path) else {
            return false;
        };
        // NSFS_MAGIC: the file is a namespace bind mount.
        nix::sys::statfs::fstatfs(&f)
            .map(|s| s.filesystem_type().0 == 0x6e73_6673)
            .unwrap_or(false)
    }

    /// Creates the namespace; fails with [`NetnsError::Exists`] if it is there.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        let ns = Self::named(name)?;
        ensure_run_dir(name)?;
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&ns.path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::Exists(name.into()));
            }
            Err(e) => return Err(io(name, "create /run/netns entry")(e)),
        }
        let path = ns.path.clone();
        let made = std::thread::scope(|s| {
            s.spawn(|| -> Result<(), NetnsError> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(sys(name, "unshare"))?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(sys(name, "bind-mount"))
            })
            .join()
            .map_err(|_| NetnsError::Thread(name.into()))?
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(&ns.path);
            return Err(e);
        }
        Ok(ns)
    }

    /// The existing namespace called `name`.
    pub fn open(name: &str) -> Result<Self, NetnsError> {
        let ns = Self::named(name)?;
        ns.check_exists()?;
        Ok(ns)
    }

    /// Ok if the namespace file exists and is a namespace; else why not, as the system said
    /// it (a file that is there but may not be opened is not "missing").
    fn check_exists(&self) -> Result<(), NetnsError> {
        match std::fs::File::open(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(NetnsError::Missing(self.name.clone()))
            }
            Err(e) => Err(NetnsError::Sys {
                name: self.name.clone(),
                step: "open",
                source: e,
            }),
            Ok(_) if !self.exists() => Err(NetnsError::NotNamespace(self.name.clone())),
            Ok(_) => Ok(()),
        }
    }

    /// The existing namespace whose file is at the absolute `path` (`/proc/PID/ns/net`,
    /// `/run/netns/cni-...`). Such a namespace is only ever adopted: the switch never creates
    /// or deletes it.
    pub(crate) fn open_path(path: &str) -> Result<Self, NetnsError> {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(NetnsError::BadName(path.into()));
        }
        let ns = Self {
            name: path.into(),
            path: PathBuf::from(path),
        };
        ns.check_exists()?;
        Ok(ns)
    }

    /// The namespace a pod names: an absolute path is opened ([`NetNs::open_path`], never
    /// created); a name is opened if it exists, else created. Returns it and whether it was
    /// created.
    pub(crate) fn open_or_create(name: &str) -> Result<(Self, bool), NetnsError> {
        if name.starts_with('/') {
            return Self::open_path(name).map(|ns| (ns, false));
        }
        match Self::open(name) {
            Ok(ns) => Ok((ns, false)),
            // A file left in /run/netns without its mount (a crash) is made again.
            Err(NetnsError::Missing(_) | NetnsError::NotNamespace(_)) => {
                Self::create(name).map(|ns| (ns, true))
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes the namespace (like `ip netns del`): its devices go away once nothing else holds
    /// it.
    pub fn delete(&self) -> Result<(), NetnsError> {
        match umount2(&self.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(sys(&self.name, "unmount")(e)),
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.name, "remove /run/netns entry")(e)),
        }
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let file = std::fs::File::open(&self.path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NetnsError::Missing(self.name.clone())
            } else {
                io(&self.name, "open")(e)
            }
        })?;
        std::thread::scope(|s| {
            s.spawn(move || -> Result<T, NetnsError> {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(sys(&self.name, "setns"))?;
                drop(file);
                Ok(f())
            })
            .join()
            .map_err(|_| NetnsError::Thread(self.name.clone()))?
        })
    }
}

/// Makes /run/netns exist and be a shared mount point, as iproute2 does, so namespace mounts
/// propagate to other mount namespaces (e.g. `ip netns exec` run from a container runtime).
fn ensure_run_dir(name: &str) -> Result<(), NetnsError> {
    std::fs::create_dir_all(NETNS_RUN_DIR).map_err(io(name, "create /run/netns"))?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(sys(name, "bind /run/netns"))?;
            shared().map_err(sys(name, "share /run/netns"))
        }
        Err(e) => Err(sys(name, "share /run/netns")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_that_cannot_be_opened_says_why_not_that_it_is_missing() {
        let missing = NetNs::open_path("/nonexistent-podswitch-test/ns").unwrap_err();
        assert!(matches!(missing, NetnsError::Missing(_)), "{missing}");
        // Not "does not exist": the system's own reason (as permission denied would be).
        let e = NetNs::open_path("/etc/hostname/ns")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "network namespace \"/etc/hostname/ns\": open: Not a directory (os error 20)"
        );
        let e = NetNs::open_path("/etc/hostname").unwrap_err().to_string();
        assert_eq!(e, "\"/etc/hostname\" is not a network namespace");
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", ".", "..", "a/b", "x\0y"] {
            assert!(
                matches!(NetNs::named(bad), Err(NetnsError::BadName(_))),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            NetNs::named("web-1").map(|n| n.path().to_path_buf()).ok(),
            Some(PathBuf::from("/run/netns/web-1"))
        );
    }
}
