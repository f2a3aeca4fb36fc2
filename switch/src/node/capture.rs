//! `podswitch capture` on the node: which port or peer a capture names, and the running
//! capture ([`NodeCapture`]) whose copies the control socket streams (framing them is the
//! control plane's job, `control/capture.rs`).
//!
//! Invariants: a capture names exactly one pod or one peer, known when it starts, with a snap
//! length from 1 to [`MAX_SNAPLEN`]; it ends when its pod's port leaves the switch or its peer
//! is removed or changes its underlay address (a peer of the same name added again is another
//! capture's business); dropping it stops the copying in the data plane. In veth mode a
//! capture withdraws its pod or peer from the kernel fast path while it runs, so it sees every
//! packet.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::CaptureError;
use super::Node;
use crate::pcap::{record_header, MAX_SNAPLEN};
use crate::switch::{Capture, CaptureTarget};
use crate::table::Tables;

/// A running capture on the node.
pub struct NodeCapture {
    capture: Capture,
    /// For a peer: its name and underlay address while captured.
    peer: Option<(String, Ipv4Addr)>,
    tables: Arc<Tables>,
    what: String,
    /// In veth mode: the pod's or peer's withdrawal from the fast path, so the capture sees
    /// every packet.
    _withdrawal: Option<super::veth::Withdrawal>,
}

impl Node {
    /// Starts a capture of the frames of `pod`'s port, or of the inner frames exchanged with
    /// `peer` (exactly one of them), keeping at most `snaplen` bytes of each.
    pub fn capture(
        &self,
        pod: Option<&str>,
        peer: Option<&str>,
        snaplen: u32,
    ) -> Result<NodeCapture, CaptureError> {
        if !(1..=MAX_SNAPLEN).contains(&snaplen) {
            return Err(CaptureError::Snaplen(snaplen));
        }
        let (target, peer, what, withdrawal) = match (pod, peer) {
            (Some(pod), None) => {
                let port = self
                    .pod(pod)
                    .ok_or_else(|| CaptureError::NoSuchPod(pod.into()))?
                    .port;
                (
                    CaptureTarget::Port(port),
                    None,
                    format!("pod {pod:?}"),
                    self.withdraw_from_fast_path(pod),
                )
            }
            (None, Some(peer)) => {
                let underlay = self
                    .switch
                    .tables()
                    .topology()
                    .peers()
                    .find(|(_, p)| p.name == *peer)
                    .map(|(_, p)| *p.underlay.ip())
                    .ok_or_else(|| CaptureError::NoSuchPeer(peer.into()))?;
                let what = format!("peer {peer:?}");
                (
                    CaptureTarget::Peer(underlay),
                    Some((peer.to_string(), underlay)),
                    what,
                    self.withdraw_peer_from_fast_path(peer),
                )
            }
            _ => return Err(CaptureError::Target),
        };
        let capture = self.switch.capture(target, snaplen as usize)?;
        tracing::info!(snaplen, "capture of {what} started");
        Ok(NodeCapture {
            capture,
            peer,
            tables: Arc::clone(self.switch.tables()),
            what,
            _withdrawal: withdrawal,
        })
    }
}

impl NodeCapture {
    /// Hands the copies waiting, at most `max`, to `each` as a pcap record (its header, then
    /// its captured bytes); returns how many.
    pub fn take_copies(&mut self, max: u64, mut each: impl FnMut(&[u8], &[u8])) -> u64 {
        let tap = self.capture.tap();
        let mut n = 0;
        while n < max {
            let Some(r) = tap.next() else { break };
            each(&record_header(r.ts, r.data.len(), r.orig_len), &r.data);
            tap.recycle(r.data);
            n += 1;
        }
        n
    }

    /// Copies dropped so far because the reader fell behind.
    pub fn copies_dropped(&self) -> u64 {
        self.capture.tap().dropped()
    }

    /// Why no more copies will come (the pod's port left the switch, the peer is gone or
    /// changed its underlay address), once none will.
    pub fn gone(&self) -> Option<String> {
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
