//! `podswitch capture` on the node: which port or peer a [`CaptureSpec`] names, and the
//! running capture as the control socket streams it ([`NodeCapture`], a [`CaptureSource`]).
//!
//! Invariants: a capture names exactly one pod or one peer, known when it starts, with a snap
//! length from 1 to [`MAX_SNAPLEN`]; it ends when its pod's port leaves the switch or its peer
//! is removed or changes its underlay address (a peer of the same name added again is another
//! capture's business); dropping it stops the copying in the data plane.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::Node;
use crate::control::{CaptureSource, CaptureSpec, CAPTURE_RECORD};
use crate::dataplane::{Capture, CaptureTarget, SwitchError};
use crate::pcap::{record_header, MAX_SNAPLEN};
use crate::table::Tables;

/// Why a capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Neither a pod nor a peer, or both.
    #[error("capture: name one pod (--pod) or one peer (--peer)")]
    Target,
    /// No pod of that name.
    #[error("capture: no pod named {0:?}")]
    NoSuchPod(String),
    /// No peer of that name.
    #[error("capture: no peer named {0:?}")]
    NoSuchPeer(String),
    /// The snap length is out of range.
    #[error("capture: snaplen {0} is not between 1 and {MAX_SNAPLEN}")]
    Snaplen(u32),
    /// The switch could not start it.
    #[error("capture: {0}")]
    Switch(#[from] SwitchError),
}

/// A running capture on the node.
pub struct NodeCapture {
    capture: Capture,
    /// For a peer: its name and underlay address while captured.
    peer: Option<(String, Ipv4Addr)>,
    tables: Arc<Tables>,
    what: String,
}

impl Node {
    /// Starts the capture `spec`.
    pub fn capture(&self, spec: &CaptureSpec) -> Result<NodeCapture, CaptureError> {
        if !(1..=MAX_SNAPLEN).contains(&spec.snaplen) {
            return Err(CaptureError::Snaplen(spec.snaplen));
        }
        let snaplen = spec.snaplen as usize;
        let (target, peer, what) = match (&spec.pod, &spec.peer) {
            (Some(pod), None) => {
                let port = self
                    .pod(pod)
                    .ok_or_else(|| CaptureError::NoSuchPod(pod.clone()))?
                    .port;
                (CaptureTarget::Port(port), None, format!("pod {pod:?}"))
            }
            (None, Some(peer)) => {
                let underlay = self
                    .switch
                    .tables()
                    .topology()
                    .peers()
                    .find(|(_, p)| p.name == *peer)
                    .map(|(_, p)| *p.underlay.ip())
                    .ok_or_else(|| CaptureError::NoSuchPeer(peer.clone()))?;
                let what = format!("peer {peer:?}");
                (
                    CaptureTarget::Peer(underlay),
                    Some((peer.clone(), underlay)),
                    what,
                )
            }
            _ => return Err(CaptureError::Target),
        };
        let capture = self.switch.capture(target, snaplen)?;
        tracing::info!(snaplen, "capture of {what} started");
        Ok(NodeCapture {
            capture,
            peer,
            tables: Arc::clone(self.switch.tables()),
            what,
        })
    }
}

impl CaptureSource for NodeCapture {
    fn drain(&mut self, out: &mut Vec<u8>, max: u64) -> u64 {
        let tap = self.capture.tap();
        let mut n = 0;
        while n < max {
            let Some(r) = tap.next() else { break };
            out.push(CAPTURE_RECORD);
            out.extend_from_slice(&record_header(r.ts, r.data.len(), r.orig_len));
            out.extend_from_slice(&r.data);
            tap.recycle(r.data);
            n += 1;
        }
        n
    }

    fn dropped(&self) -> u64 {
        self.capture.tap().dropped()
    }

    fn ended(&self) -> Option<String> {
        let gone = match &self.peer {
            None => self.capture.orphaned(),
            Some((name, ip)) => !self
                .tables
                .topology()
                .peers()
                .any(|(_, p)| p.name == *name && p.underlay.ip() == ip),
        };
        gone.then(|| format!("{} is gone", self.what))
    }
}

impl Drop for NodeCapture {
    fn drop(&mut self) {
        tracing::info!(
            dropped = self.capture.tap().dropped(),
            "capture of {} stopped",
            self.what
        );
    }
}
