//! Why the fast path refused or failed.

/// A fast-path failure. Each message names what is missing or what failed.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// The kernel refused the programs; `missing` names the piece veth mode needs.
    #[error("veth mode needs {missing}; loading the fast path's eBPF programs failed: {detail}")]
    Unsupported {
        /// What the kernel lacks (`the bpf() system call`, `bpf_redirect_peer`, ...).
        missing: &'static str,
        /// The kernel's own words (and the verifier's, when it spoke).
        detail: String,
    },
    /// Attaching a program to a device failed.
    #[error("attaching the fast path's {program} program to {ifname} failed: {detail}")]
    Attach {
        /// `from_pod` or `to_pod`.
        program: &'static str,
        /// The device.
        ifname: String,
        /// Why.
        detail: String,
    },
    /// A device the fast path was told about does not exist in the switch's namespace.
    #[error("no device {ifname} in the switch's namespace: {detail}")]
    NoDevice {
        /// The device.
        ifname: String,
        /// Why.
        detail: String,
    },
    /// Writing or reading a map failed.
    #[error("the fast path's {map} map: {detail}")]
    Map {
        /// The map's name in `bpf/fastpath.bpf.c`.
        map: &'static str,
        /// Why.
        detail: String,
    },
    /// Every slot is taken.
    #[error("the fast path holds at most {max} pods")]
    Full {
        /// `MAX_PODS`.
        max: u32,
    },
    /// Pinning to a BPF file system failed.
    #[error("the fast path's pins at {path}: {detail}")]
    Pin {
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        detail: String,
    },
    /// The pod is already attached.
    #[error("pod {0} is already on the fast path")]
    Duplicate(String),
}
