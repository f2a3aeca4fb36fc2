//! Handing the attached programs over to the next process (`podswitch upgrade`) without a
//! moment where a pod's packets meet no program.
//!
//! Before `exec`, [`FastPath::pin_links`] pins every tcx link to a directory of a BPF file
//! system: a pinned link stays attached, with its program and that program's maps, after the
//! process that made it is gone, so the kernel keeps forwarding what the old process compiled.
//! The new process loads its own programs and maps and writes every handed-over pod, peer and
//! the tunnel into them while the old programs go on; then [`FastPath::finish_handover`]
//! adopts every pinned link at once, replacing its program atomically (`BPF_LINK_UPDATE`),
//! removes the pins, and removes what no pod or tunnel adopted (a pod gone meanwhile: its
//! programs are detached).
//!
//! Invariants: a pin exists only between a `pin_links` and the next process's
//! `finish_handover` (or [`FastPath::unpin_links`] when `exec` failed); a link is owned either
//! by a process or by its pin, never both; no program of the new process runs on a device
//! before its maps hold every pod, peer and service the old one's did. `clsact` attachments
//! (kernels before 6.6) cannot be pinned: there, the handover detaches and attaches again.

use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, SchedClassifierLinkId};

use crate::{program, FastPath, FastPathError, Hook, FROM_POD, FROM_UNDERLAY, TO_POD};

/// `f_type` of a BPF file system (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where BPF file systems are mounted by convention.
pub const BPF_FS: &str = "/sys/fs/bpf";

/// Makes sure [`BPF_FS`] is a BPF file system (mounting one there if it is not, as systemd
/// does at boot).
pub fn ensure_bpf_fs() -> Result<(), FastPathError> {
    let err = |detail: String| FastPathError::Pin {
        path: BPF_FS.into(),
        detail,
    };
    let mounted =
        nix::sys::statfs::statfs(BPF_FS).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if mounted {
        return Ok(());
    }
    std::fs::create_dir_all(BPF_FS).map_err(|e| err(e.to_string()))?;
    nix::mount::mount(
        Some("bpf"),
        BPF_FS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| err(format!("mounting a BPF file system: {e}")))
}

impl FastPath {
    /// Links found pinned in `dir` are handed over to this process (see the module docs);
    /// `pin_links` pins there.
    pub fn set_pin_dir(&mut self, dir: PathBuf) {
        self.pin_dir = Some(dir);
    }

    /// Where links are pinned for a handover, if anywhere.
    pub fn pin_dir(&self) -> Option<PathBuf> {
        self.pin_dir.clone()
    }

    /// The pin of the link on `ifname`.
    fn pin_path(&self, ifname: &str) -> Option<PathBuf> {
        self.pin_dir.as_ref().map(|d| d.join(ifname))
    }

    /// Adopts the link pinned for `ifname`, if there is one: `program_name` replaces its
    /// program, the pin goes. `None` when there is none (or it cannot be adopted: the pin is
    /// then removed, its program detached, and the caller attaches anew).
    pub(crate) fn adopt(
        &mut self,
        program_name: &'static str,
        ifname: &str,
    ) -> Option<SchedClassifierLinkId> {
        let path = self.pin_path(ifname).filter(|p| p.exists())?;
        let adopted = PinnedLink::from_pin(&path)
            .map_err(|e| e.to_string())
            .and_then(|pinned| {
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())
            })
            .and_then(|link| {
                let prog = program(&mut self.bpf, program_name).map_err(|e| e.to_string())?;
                prog.attach_to_link(link).map_err(|e| e.to_string())
            });
        let _ = std::fs::remove_file(&path);
        match adopted {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(ifname, "fast path: a pinned link not adopted: {e}");
                None
            }
        }
    }

    /// True if the process before this one pinned a link for `ifname` (a handover is on).
    pub(crate) fn pinned(&self, ifname: &str) -> bool {
        self.pin_path(ifname).is_some_and(|p| p.exists())
    }

    /// Pins every link (pods' and the tunnel's) to the pin directory for the next process,
    /// which adopts them. Returns how many; nothing with `clsact` or without a pin directory.
    /// A link that cannot be pinned is detached (as without pins: a gap for that device).
    pub fn pin_links(&mut self) -> Result<usize, FastPathError> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(0);
        };
        if self.hook != Hook::Tcx {
            return Ok(0);
        }
        std::fs::create_dir_all(&dir).map_err(|e| FastPathError::Pin {
            path: dir.clone(),
            detail: e.to_string(),
        })?;
        let mut links: Vec<(&'static str, SchedClassifierLinkId, String)> = Vec::new();
        for a in self.attached.values_mut() {
            if let Some([from, to]) = a.links.take() {
                links.push((FROM_POD, from, a.veth.clone()));
                links.push((TO_POD, to, a.upcall.clone()));
            }
        }
        if let Some((ifname, link)) = &mut self.underlay_link {
            if let Some(link) = link.take() {
                links.push((FROM_UNDERLAY, link, ifname.clone()));
            }
        }
        let mut pinned = 0;
        for (program_name, id, ifname) in links {
            let path = dir.join(&ifname);
            // A stale pin of the same name (an earlier handover that did not finish) would
            // make pinning fail.
            let _ = std::fs::remove_file(&path);
            let done = program(&mut self.bpf, program_name)
                .map_err(|e| e.to_string())
                .and_then(|prog| prog.take_link(id).map_err(|e| e.to_string()))
                .and_then(|link| FdLink::try_from(link).map_err(|e| e.to_string()))
                .and_then(|fd| fd.pin(&path).map_err(|e| e.to_string()));
            match done {
                Ok(_) => pinned += 1,
                Err(e) => tracing::warn!(ifname, "fast path: link not pinned: {e}"),
            }
        }
        Ok(pinned)
    }

    /// Takes back what [`FastPath::pin_links`] pinned (the `exec` failed and this process
    /// goes on): every link adopted again by its own program (attached anew if that fails).
    pub fn unpin_links(&mut self) {
        self.finish_handover();
    }

    /// Ends a handover: every pod and the tunnel whose links are pinned get them, adopted (or
    /// attached anew if that fails), then the pins nothing adopted are removed. Call once the
    /// maps hold every pod, peer and service (nothing happens without a handover).
    pub fn finish_handover(&mut self) {
        let waiting: Vec<String> = self
            .attached
            .iter()
            .filter(|(_, a)| a.links.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for name in waiting {
            let Some((veth, upcall)) = self
                .attached
                .get(&name)
                .map(|a| (a.veth.clone(), a.upcall.clone()))
            else {
                continue;
            };
            let links = match (
                self.attach_one(FROM_POD, &veth),
                self.attach_one(TO_POD, &upcall),
            ) {
                (Ok(from), Ok(to)) => Some([from, to]),
                (from, to) => {
                    tracing::warn!(pod = %name, "fast path: the pod's programs not attached after a handover");
                    if let Ok(l) = from {
                        self.detach_one(FROM_POD, l);
                    }
                    if let Ok(l) = to {
                        self.detach_one(TO_POD, l);
                    }
                    None
                }
            };
            if let Some(a) = self.attached.get_mut(&name) {
                a.links = links;
            }
        }
        if let Some(ifname) = self
            .underlay_link
            .as_ref()
            .filter(|(_, l)| l.is_none())
            .map(|(i, _)| i.clone())
        {
            let link = self.attach_one(FROM_UNDERLAY, &ifname).ok();
            self.underlay_link = Some((ifname, link));
        }
        self.release_pins();
    }

    /// Removes the pins nothing adopted (their programs are detached) and the pin directory.
    pub fn release_pins(&mut self) {
        let Some(dir) = self.pin_dir.clone() else {
            return;
        };
        release_dir(&dir);
    }
}

/// Removes every pin in `dir`, then `dir` (their programs are detached): the pins of a
/// handover nobody finishes (the next process runs TAP pods, or names its node otherwise).
pub fn release_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        tracing::info!(pin = %e.path().display(), "fast path: a pinned link nobody adopted removed");
        let _ = std::fs::remove_file(e.path());
    }
    let _ = std::fs::remove_dir(dir);
    // The parent (`podswitch`) too, if no other node's pins are in it.
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}
