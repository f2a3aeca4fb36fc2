//! The node's files: the state file (what a node must know again after a restart, a crash
//! included: the pods, peers and services added at runtime and the namespaces it created),
//! read back at the next start ([`Recorded`], [`Node::restore_attachments`]); how every file
//! of the node is written ([`write_json_atomically`]); and the directories they live in
//! ([`make_parent`]).
//!
//! Invariants: the file is written whole or not at all (a temporary file and a rename); a
//! record with nothing in it is no file, so an absent file and an empty record read back
//! the same; a file that cannot be read costs the runtime pods, peers and services (said in
//! the log), never the node's start; the record lock is taken last, after any other.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::peers::runtime_specs;
use super::pods::PodRecord;
use super::upgrade::Handover;
use super::{lock, Node, PeerSpec, PeerStatus, PodSpec, ServiceSpec, StateError};
use crate::netns::NetNs;

impl Node {
    /// Re-attaches the runtime pods (CNI attachments and `pod add`) recorded in the state file
    /// `path` by an earlier run (see [`Node::add_pod`]), then keeps recording them there. A recorded pod whose
    /// namespace is gone, or that the node now refuses (it conflicts with a pod of the config
    /// file, say), is forgotten with a warning. Returns the names of the pods re-attached.
    pub fn restore_attachments(&self, path: PathBuf) -> Vec<String> {
        let shown = path.display().to_string();
        let recorded = read_state(&path).unwrap_or_else(|e| {
            tracing::warn!(path = %shown, "{e}, its runtime pods, peers and services are forgotten");
            StateFile::default()
        });
        for spec in &recorded.peers {
            if let Err(e) = self.add_peer(spec) {
                tracing::warn!(peer = %spec.name, "recorded peer not restored, forgotten: {e}");
            }
        }
        let mut back = Vec::new();
        for spec in recorded.pods {
            let ns = if spec.netns_is_path() {
                NetNs::open_path(&spec.netns)
            } else {
                NetNs::open(&spec.netns)
            };
            if let Err(e) = ns {
                tracing::warn!(pod = %spec.name, container_id = spec.container_id.as_deref().unwrap_or("-"), "recorded attachment forgotten: {e}");
                continue;
            }
            match self.attach_pod(&spec, true, "pod") {
                Ok(_) => {
                    tracing::info!(pod = %spec.name, netns = %spec.netns, "recorded attachment re-attached");
                    back.push(spec.name);
                }
                Err(e) => {
                    tracing::warn!(pod = %spec.name, container_id = spec.container_id.as_deref().unwrap_or("-"), "recorded attachment not re-attached, forgotten: {e}");
                }
            }
        }
        for spec in &recorded.services {
            if let Err(e) = self.add_service(spec) {
                tracing::warn!(service = %spec.name, "recorded service not restored, forgotten: {e}");
            }
        }
        if self.state.set(path).is_err() {
            tracing::warn!(path = %shown, "a state file is already in use; not switching to this one");
        }
        self.save_state(&lock(&self.pods));
        self.save_peers(&lock(&self.peers));
        self.save_services(&lock(&self.services));
        back
    }

    /// Records the runtime pods and the namespaces the node created, of `pods`.
    pub(super) fn save_state(&self, pods: &BTreeMap<String, PodRecord>) {
        self.write_state(pods.values());
    }

    /// Records the runtime pods and the namespaces the node created, of `pods`.
    pub(super) fn write_state<'a>(&self, pods: impl Iterator<Item = &'a PodRecord> + Clone) {
        self.update_record(|r| {
            r.pods = pods
                .clone()
                .filter(|r| r.recorded)
                .map(|r| r.spec.clone())
                .collect();
            r.created_netns = pods
                .filter(|r| r.created_netns)
                .map(|r| r.spec.netns.clone())
                .collect();
        });
    }

    /// Records the peers added at runtime (`peer add`), of `peers`.
    pub(super) fn save_peers(&self, peers: &[PeerStatus]) {
        self.update_record(|r| r.peers = runtime_specs(peers));
    }

    /// Changes the record and writes it to the state file, if there is one. A failure is
    /// logged: the node keeps working, only a restart would forget what is not recorded.
    pub(super) fn update_record(&self, change: impl FnOnce(&mut StateFile)) {
        let Some(path) = self.state.get() else {
            return;
        };
        let mut record = lock(&self.record);
        change(&mut record);
        // Nothing to remember (a clean stop): no file, rather than an empty one.
        if record.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::error!(path = %path.display(), "removing the empty state file: {e}");
                }
                _ => {}
            }
            return;
        }
        if let Err(e) = write_json_atomically(path, &*record) {
            tracing::error!(path = %path.display(), "recording the runtime state: {e}");
        }
    }
}

/// The state file: what a node must know again after a restart, a crash included.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct StateFile {
    /// The pods added at runtime (CNI attachments and `pod add`), as added.
    pods: Vec<PodSpec>,
    /// The namespaces the node created (for config and runtime pods) and has not deleted.
    #[serde(default)]
    created_netns: Vec<String>,
    /// The peers added at runtime (`peer add`).
    #[serde(default)]
    peers: Vec<PeerSpec>,
    /// The services added at runtime (`service add`).
    #[serde(default)]
    pub(super) services: Vec<ServiceSpec>,
}

impl StateFile {
    /// True if it records nothing (read back, an absent file is the same).
    fn is_empty(&self) -> bool {
        self.pods.is_empty()
            && self.created_netns.is_empty()
            && self.peers.is_empty()
            && self.services.is_empty()
    }
}

/// What an earlier run of the node recorded in its state file, for [`Node::start_reserving`].
#[derive(Debug, Default)]
pub struct Recorded {
    /// The pods added at runtime, to be restored ([`Node::restore_attachments`]).
    pub(super) pods: Vec<PodSpec>,
    /// The namespaces it created and did not delete.
    pub(super) created_netns: Vec<String>,
    /// What the process that exec'ed this one handed over (an upgrade).
    pub(super) handover: Option<Handover>,
}

impl Recorded {
    /// The record in the state file `path`: empty if the file is absent or unreadable
    /// ([`Node::restore_attachments`] says why).
    pub fn read(path: &Path) -> Recorded {
        let state = read_state(path).unwrap_or_default();
        Recorded {
            pods: state.pods,
            created_netns: state.created_netns,
            handover: None,
        }
    }

    /// With the handover of an upgrade ([`Handover::inherited`]).
    pub fn with_handover(mut self, handover: Option<Handover>) -> Recorded {
        self.handover = handover;
        self
    }
}

/// The state file `path` (empty if it does not exist), or why it cannot be read.
fn read_state(path: &Path) -> Result<StateFile, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes).map_err(StateError::Unreadable),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(e) => Err(StateError::Read(e)),
    }
}

/// Writes `value` as JSON (and a newline) to `path` through a temporary file and a rename,
/// so a reader (or a crash) sees the old contents or the new, never a part. The node's files
/// (state, flows, the subnet held) are all written this way.
pub(crate) fn write_json_atomically(
    path: &Path,
    value: &impl serde::Serialize,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut text = serde_json::to_vec_pretty(value).map_err(std::io::Error::from)?;
    text.push(b'\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Makes the directory of `path` (the control socket's, the node lock's) if it is missing and
/// under `own` (mode 0700); elsewhere a missing directory is a mistyped path, refused.
pub(crate) fn make_parent(path: &Path, own: &Path) -> std::io::Result<()> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if !parent.starts_with(own) && !parent.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{}: directory {} does not exist (podswitch makes directories only under {})",
                path.display(),
                parent.display(),
                own.display()
            ),
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("creating directory {}: {e}", parent.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir = std::env::temp_dir().join(crate::testutil::unique(tag));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sample() -> StateFile {
        let pod: PodSpec = serde_json::from_str(
            r#"{"name":"web","netns":"/proc/1/ns/net","ip":"10.244.1.10","container_id":"c1"}"#,
        )
        .expect("pod");
        let peer: PeerSpec = serde_json::from_str(
            r#"{"name":"node-b","underlay":"192.168.77.2","pod_cidr":"10.244.2.0/24"}"#,
        )
        .expect("peer");
        let service: ServiceSpec = serde_json::from_str(
            r#"{"name":"dns","vip":"10.96.0.10","port":53,"proto":"udp","backends":["10.244.1.10:53"]}"#,
        )
        .expect("service");
        StateFile {
            pods: vec![pod],
            created_netns: vec!["web".into()],
            peers: vec![peer],
            services: vec![service],
        }
    }

    #[test]
    fn a_state_file_reads_back_what_was_written_and_leaves_no_temporary() {
        let dir = Dir::new("psstate");
        let path = dir.0.join("node.state");
        let state = sample();
        assert!(!state.is_empty());
        write_json_atomically(&path, &state).expect("write");
        assert_eq!(read_state(&path).expect("read"), state);
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node.state")]);
        // Written again (smaller): the new contents whole, nothing of the old.
        let fewer = StateFile {
            pods: Vec::new(),
            ..sample()
        };
        write_json_atomically(&path, &fewer).expect("rewrite");
        assert_eq!(read_state(&path).expect("read"), fewer);
        let recorded = Recorded::read(&path);
        assert!(recorded.pods.is_empty());
        assert_eq!(recorded.created_netns, vec!["web".to_string()]);
        assert!(recorded.handover.is_none());
    }

    #[test]
    fn an_absent_file_is_an_empty_record_and_a_broken_one_says_why() {
        let dir = Dir::new("psstate");
        let absent = dir.0.join("absent.state");
        let empty = read_state(&absent).expect("absent is empty");
        assert!(empty.is_empty());
        assert_eq!(empty, StateFile::default());

        let broken = dir.0.join("broken.state");
        std::fs::write(&broken, "{\"pods\": [").expect("write");
        let e = read_state(&broken).expect_err("cut short");
        assert!(matches!(e, StateError::Unreadable(_)), "{e:?}");
        assert!(e.to_string().starts_with("state file unreadable: "), "{e}");
        // What a start reads of it: nothing (restore_attachments logs why).
        assert!(Recorded::read(&broken).pods.is_empty());

        let e = read_state(&dir.0).expect_err("a directory");
        assert!(matches!(e, StateError::Read(_)), "{e:?}");
        assert!(e.to_string().starts_with("reading the state file: "), "{e}");
    }

    #[test]
    fn an_older_state_file_with_only_pods_still_reads() {
        let dir = Dir::new("psstate");
        let path = dir.0.join("old.state");
        std::fs::write(
            &path,
            r#"{"pods":[{"name":"web","netns":"web","ip":"10.244.1.10"}]}"#,
        )
        .expect("write");
        let state = read_state(&path).expect("read");
        assert_eq!(state.pods.len(), 1);
        assert_eq!(state.pods[0].ifname, "eth0");
        assert!(state.created_netns.is_empty() && state.peers.is_empty());
        assert!(state.services.is_empty());
    }

    #[test]
    fn directories_are_made_only_under_podswitch_own() {
        let dir = Dir::new("psparent");
        let own = dir.0.join("run");
        let sock = own.join("lab/node-a.sock");
        make_parent(&sock, &own).expect("made under its own");
        let mode = std::fs::metadata(own.join("lab"))
            .expect("made")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        let typo = dir.0.join("elsewhere/node-a.sock");
        let e = make_parent(&typo, &own).expect_err("a missing directory elsewhere");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!dir.0.join("elsewhere").exists());
        // A bare file name has no directory to make.
        make_parent(Path::new("node.sock"), &own).expect("nothing to make");
    }
}
