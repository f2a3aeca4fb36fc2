//! Service flows in the kernel fast path (veth mode): connection tracking compiles the flows
//! it decides into the fast path's `flows` map through [`KernelFlows`], and the housekeeping
//! plays what the kernel carried back into connection tracking ([`Node::absorb_kernel_flows`]).
//! Also the fast path's handover at an upgrade: its links pinned before `exec` and adopted by
//! the new process (`podswitch_fastpath`'s `handover`).

use std::net::SocketAddrV4;
use std::sync::Arc;

use podswitch_fastpath::{FlowEvent, FlowRewrite, FlowTable, FlowTuple};

use super::{lock, Node};
use crate::table::{FlowOffload, OffloadEvent, OffloadedFlow};

/// Connection tracking's way into the fast path's flow map.
pub(super) struct KernelFlows {
    table: Arc<FlowTable>,
}

impl KernelFlows {
    pub(super) fn new(table: Arc<FlowTable>) -> Self {
        Self { table }
    }
}

fn tuple(proto: u8, (src, dst): (SocketAddrV4, SocketAddrV4)) -> FlowTuple {
    FlowTuple { proto, src, dst }
}

type Direction = ((SocketAddrV4, SocketAddrV4), (SocketAddrV4, SocketAddrV4));

fn rewrite(proto: u8, (from, to): Direction) -> FlowRewrite {
    FlowRewrite {
        from: tuple(proto, from),
        to: tuple(proto, to),
    }
}

impl FlowOffload for KernelFlows {
    fn install(&self, flow: &OffloadedFlow, epoch: u32) -> bool {
        let (forward, reply) = (
            rewrite(flow.proto, flow.forward()),
            rewrite(flow.proto, flow.reply()),
        );
        match self.table.install(epoch, &forward, &reply) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("a Service flow stays with the switch: {e}");
                false
            }
        }
    }

    fn remove(&self, flow: &OffloadedFlow) {
        self.table.remove(
            &tuple(flow.proto, flow.forward().0),
            &tuple(flow.proto, flow.reply().0),
        );
    }

    fn idle_secs(&self, flow: &OffloadedFlow) -> Option<u32> {
        let idle = self.table.idle(
            &tuple(flow.proto, flow.forward().0),
            &tuple(flow.proto, flow.reply().0),
        )?;
        Some(u32::try_from(idle.as_secs()).unwrap_or(u32::MAX))
    }

    fn drain_events(&self, out: &mut Vec<OffloadEvent>) {
        self.table.drain_events(|e| out.push(event(e)));
    }
}

fn event(e: FlowEvent) -> OffloadEvent {
    OffloadEvent {
        proto: e.tuple.proto,
        src: e.tuple.src,
        dst: e.tuple.dst,
        reply: e.reply,
        epoch: e.epoch,
        syn: e.syn,
        ack: e.ack,
        fin: e.fin,
    }
}

impl Node {
    /// Plays what the fast path carried of compiled Service flows into connection tracking
    /// (first packets, ACKs and FINs, in order). If the ring buffer dropped events since the
    /// last call, every compiled flow's bits are played instead (an event played twice
    /// changes nothing). Nothing in TAP mode.
    pub(super) fn absorb_kernel_flows(&self) {
        let Some(fast) = &self.fast_path else {
            return;
        };
        let (table, lost) = {
            let f = lock(fast);
            (f.flows(), f.path("event_lost"))
        };
        let tables = self.switch.tables();
        let now = tables.mac.now();
        tables.conntrack.sync_from_kernel(now);
        let mut last_lost = lock(&self.flow_events_lost);
        if lost != *last_lost {
            *last_lost = lost;
            tracing::warn!(
                lost,
                "fast path: flow events dropped; reading every compiled flow"
            );
            let mut events = Vec::new();
            table.replay_all(|e| events.push(event(e)));
            tables.conntrack.absorb(&events, now);
        }
    }
}

impl Node {
    /// Where a node's fast path pins its links for an upgrade: a directory of the BPF file
    /// system named by a hash of the node's name and control socket (two nodes on a machine
    /// differ, a node and its next process agree).
    pub(super) fn pin_dir_of(spec: &super::NodeSpec) -> std::path::PathBuf {
        let node = format!("{}\0{}", spec.name, spec.control_path().display());
        let hash = &super::veth::HostSide::of(&node, "").veth[3..];
        std::path::Path::new(podswitch_fastpath::BPF_FS)
            .join("podswitch")
            .join(hash)
    }

    /// Pins the fast path's links for the process an upgrade `exec`s (how many).
    pub(super) fn pin_fast_path(&self) -> usize {
        let Some(fast) = &self.fast_path else {
            return 0;
        };
        match lock(fast).pin_links() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("fast path: links not pinned, the upgrade detaches them: {e}");
                0
            }
        }
    }

    /// Takes the pinned links back (the `exec` failed).
    pub(super) fn unpin_fast_path(&self) {
        if let Some(fast) = &self.fast_path {
            lock(fast).unpin_links();
        }
    }

    /// Finishes the fast path's handover once the node is up (its pinned links adopted, the
    /// rest removed); in TAP mode, removes what a veth-mode process before it pinned at
    /// `pins`.
    pub(super) fn finish_fast_path_handover(&self, pins: Option<std::path::PathBuf>) {
        match (&self.fast_path, pins) {
            (Some(fast), _) => lock(fast).finish_handover(),
            (None, Some(dir)) => podswitch_fastpath::release_dir(&dir),
            (None, None) => {}
        }
    }

    /// Where this node's fast path pins its links (veth mode).
    pub(super) fn fast_path_pins(&self) -> Option<std::path::PathBuf> {
        self.fast_path.as_ref().and_then(|f| lock(f).pin_dir())
    }
}
