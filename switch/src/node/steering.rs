//! Receive steering of the node's interfaces (`node.rx_steering`): where the kernel runs a
//! pod's network input.
//!
//! A frame the switch writes into a pod's TAP is taken through the pod's whole IP/TCP input
//! inside that `writev`, on the data-plane thread: for many short connections that is most of
//! the thread's time (README, "Services side by side"), while the pods' own CPUs wait for it. With steering on, every receive queue of a pod's interface (and of the host interface)
//! gets
//! - RPS (`rps_cpus`): the CPUs this process may use that no data-plane worker is pinned to, so
//!   the TAP write only queues the frame there and returns;
//! - RFS (`rps_flow_cnt`, and the host-wide `net.core.rps_sock_flow_entries` raised to
//!   [`SOCK_FLOW_ENTRIES`] if lower): a flow goes to the CPU its reading socket last ran on,
//!   which keeps a bulk stream's input beside its reader.
//!
//! Off by default: on a small machine it trades bulk throughput for connection rate (figures
//! in the README, "Services side by side"; why in `docs/design.md`, "Performance shape"). The
//! settings belong to the device, so a TAP handed over across an upgrade keeps them: the new
//! process writes its own setting (on, or back to off) into every handed-over TAP.
//!
//! The interface lives in the pod's namespace, and `/sys/class/net` shows the devices of the
//! namespace sysfs was mounted from, not the caller's. So the settings are written through a
//! sysfs instance made for the calling thread's namespace (`fsopen`/`fsmount`, never attached
//! to any path) that goes away with its descriptor.

use std::io::Write;
use std::os::fd::OwnedFd;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};

/// Flows each receive queue tracks for RFS (`rps_flow_cnt`; a power of two).
pub(super) const FLOW_CNT: u32 = 4096;
/// Host-wide socket flow table size for RFS, the kernel documentation's suggestion for a
/// moderately loaded server (`Documentation/networking/scaling.rst`).
pub const SOCK_FLOW_ENTRIES: u32 = 32768;

/// Why an interface's steering could not be set.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SteeringError {
    /// A sysfs instance for this namespace could not be made.
    #[error("mounting sysfs for this namespace: {0}")]
    Sysfs(#[source] std::io::Error),
    /// The interface has no receive queue in sysfs.
    #[error("{ifname} has no receive queue in sysfs: {source}")]
    Queues {
        ifname: String,
        #[source]
        source: std::io::Error,
    },
    /// A queue's setting could not be written.
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The steering of a node: what its interfaces' receive queues get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RxSteering {
    /// `rps_cpus` as the kernel reads it (hex, 32-bit groups separated by commas).
    mask: String,
    /// `rps_flow_cnt`.
    flow_cnt: u32,
}

impl RxSteering {
    /// Steering to `cpus` (not empty: the spec refuses that), with RFS.
    pub(crate) fn to_cpus(cpus: &[usize]) -> Self {
        Self {
            mask: cpu_mask(cpus),
            flow_cnt: FLOW_CNT,
        }
    }

    /// No steering (the kernel's default): for a TAP handed over by a process that had it on.
    pub(crate) fn off() -> Self {
        Self {
            mask: "0".into(),
            flow_cnt: 0,
        }
    }

    /// The `rps_cpus` value written.
    pub(crate) fn mask(&self) -> &str {
        &self.mask
    }

    /// Sets RPS and RFS on every receive queue of `ifname` in the calling thread's network
    /// namespace.
    pub(crate) fn apply(&self, ifname: &str) -> Result<(), SteeringError> {
        let sysfs = sysfs_here().map_err(SteeringError::Sysfs)?;
        let dir = format!("class/net/{ifname}/queues");
        let queues = rx_queues(&sysfs, &dir).map_err(|source| SteeringError::Queues {
            ifname: ifname.into(),
            source,
        })?;
        for q in &queues {
            write_at(&sysfs, &format!("{dir}/{q}/rps_cpus"), &self.mask)?;
            write_at(
                &sysfs,
                &format!("{dir}/{q}/rps_flow_cnt"),
                &self.flow_cnt.to_string(),
            )?;
        }
        Ok(())
    }
}

/// Raises `net.core.rps_sock_flow_entries` to [`SOCK_FLOW_ENTRIES`] if it is lower (0, RFS
/// off, is the kernel's default), in the calling thread's network namespace; the setting is
/// host-wide and exists only in the host's namespace, so the daemon calls this before it
/// enters `node.netns`. Returns the value it had.
pub fn enable_flow_table() -> Result<u32, String> {
    const PATH: &str = "/proc/sys/net/core/rps_sock_flow_entries";
    let now = match std::fs::read_to_string(PATH) {
        Ok(now) => now,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{PATH} is not in this network namespace (only in the host's)"
            ))
        }
        Err(e) => return Err(format!("reading {PATH}: {e}")),
    };
    let now: u32 = now
        .trim()
        .parse()
        .map_err(|e| format!("reading {PATH}: {now:?}: {e}"))?;
    if now < SOCK_FLOW_ENTRIES {
        std::fs::write(PATH, SOCK_FLOW_ENTRIES.to_string())
            .map_err(|e| format!("writing {PATH}: {e}"))?;
    }
    Ok(now)
}

/// `cpus` as a CPU bitmap in the kernel's hex format: 32-bit groups, most significant first,
/// separated by commas (`1`, `c`, `100,00000000`).
pub(crate) fn cpu_mask(cpus: &[usize]) -> String {
    let groups = cpus.iter().max().map_or(1, |m| m / 32 + 1);
    let mut words = vec![0u32; groups];
    for &c in cpus {
        words[c / 32] |= 1 << (c % 32);
    }
    let mut out = format!("{:x}", words[groups - 1]);
    for w in words[..groups - 1].iter().rev() {
        out.push_str(&format!(",{w:08x}"));
    }
    out
}

/// A sysfs instance of the calling thread's network namespace, as a detached mount.
fn sysfs_here() -> std::io::Result<OwnedFd> {
    let fs = rustix::mount::fsopen("sysfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    rustix::mount::fsconfig_create(&fs)?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOEXEC | MountAttrFlags::MOUNT_ATTR_NOSUID,
    )?;
    Ok(mnt)
}

/// The `rx-N` entries of `dir` under `sysfs`, in order.
fn rx_queues(sysfs: &OwnedFd, dir: &str) -> std::io::Result<Vec<String>> {
    let fd = rustix::fs::openat(
        sysfs,
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut queues: Vec<String> = rustix::fs::Dir::read_from(&fd)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n.starts_with("rx-"))
        .collect();
    queues.sort_by_key(|n| n[3..].parse::<u32>().unwrap_or(u32::MAX));
    if queues.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no rx-* entry",
        ));
    }
    Ok(queues)
}

fn write_at(sysfs: &OwnedFd, path: &str, value: &str) -> Result<(), SteeringError> {
    let err = |source: std::io::Error| SteeringError::Write {
        path: format!("/sys/{path}"),
        source,
    };
    let fd = rustix::fs::openat(sysfs, path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| err(e.into()))?;
    std::fs::File::from(fd)
        .write_all(value.as_bytes())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_written_as_the_kernel_reads_them() {
        assert_eq!(cpu_mask(&[0]), "1");
        assert_eq!(cpu_mask(&[0, 2, 3]), "d");
        assert_eq!(cpu_mask(&[31]), "80000000");
        assert_eq!(cpu_mask(&[32]), "1,00000000");
        assert_eq!(cpu_mask(&[1, 40, 70]), "40,00000100,00000002");
        assert_eq!(RxSteering::to_cpus(&[0, 1]).mask(), "3");
    }
}
