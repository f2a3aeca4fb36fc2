//! What a node remembers of its lease across restarts: its subnet and the network's VXLAN
//! settings, in `<control dir>/<node>.subnet.json` (flannel keeps the same in
//! `/run/flannel/subnet.env`). A node restarted while etcd is unreachable starts on them, so
//! its pods keep their addresses; the lease is taken back when etcd answers.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The remembered lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Memory {
    /// The subnet last held.
    pub(crate) subnet: Ipv4Net,
    /// The network config's VNI then.
    pub(crate) vni: u32,
    /// The network config's VXLAN port then.
    pub(crate) port: u16,
}

impl Memory {
    /// The file beside the node's state file.
    pub(crate) fn path(state_dir: &Path, node: &str) -> PathBuf {
        state_dir.join(format!("{node}.subnet.json"))
    }

    /// Reads the file; absent or unreadable: nothing remembered (logged when unreadable).
    pub(crate) fn load(path: &Path) -> Option<Self> {
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "remembered subnet unreadable, ignored: {e}");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "remembered subnet unreadable, ignored: {e}");
                None
            }
        }
    }

    /// Writes the file (through a temporary file and a rename). A failure is logged: only a
    /// restart with etcd down would miss it.
    pub(crate) fn save(&self, path: &Path) {
        if let Err(e) = crate::node::write_json_atomically(path, self) {
            tracing::error!(path = %path.display(), "remembering the subnet: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absent_or_garbage_is_nothing() {
        let dir = std::env::temp_dir().join(crate::testutil::unique("memory"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = Memory::path(&dir, "node-a");
        assert_eq!(Memory::load(&path), None);
        let m = Memory {
            subnet: "10.244.5.0/24".parse().unwrap(),
            vni: 1,
            port: 8472,
        };
        m.save(&path);
        assert_eq!(Memory::load(&path), Some(m));
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(Memory::load(&path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
