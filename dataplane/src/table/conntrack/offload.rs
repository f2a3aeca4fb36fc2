//! Connection tracking's flows compiled into a kernel fast path (veth mode), behind a trait
//! the node implements over its eBPF maps: the table stays sans-IO and testable.
//!
//! A flow's first packet is decided by the switch (Maglev, then [`super::Conntrack`]); the
//! worker then *compiles* it ([`super::Conntrack::compile`]): both directions written to the
//! kernel under a fresh *epoch*, after which the rest of the flow stays there. What the kernel
//! carries comes back as [`OffloadEvent`]s (what an entry carried for the first time: a packet,
//! an ACK, a FIN, a SYN; only what is new), which [`super::Conntrack::absorb`] plays into the
//! flow's state, in the order they happened (one thread at a time), as if the switch had seen
//! the packets, and as an idle time that [`super::Conntrack::expire`] reads before it forgets
//! a flow.
//!
//! Invariants:
//! - a flow is in the kernel only while the table holds it and its decision stands: every
//!   path that forgets a flow (expiry, eviction, a stale entry, a replaced one) *retires* it
//!   (out of the kernel, never compiled again); a flow whose backend left or whose service was
//!   deleted is retired before its clients are probed, so their answers reach the switch
//!   (which resets them); a worker compiles only a flow not compiled nor retired (one
//!   compare-and-swap), whose backend still serves its service in the topology of the moment;
//!   an install that finds its epoch gone afterwards removes its own entries;
//! - a TCP RST of a compiled flow, and every SYN but two the switch has decided already (the
//!   backend's first SYN-ACK to a flow just compiled, and the client's SYN on a port whose last
//!   connection it closed), reach the switch; a client's SYN on a compiled flow that reaches it
//!   first plays what the kernel reported, then compiles the flow again in place under a new
//!   epoch, so events of the old connection are ignored;
//! - a flow the kernel refused (its map full) is not offered again until a new SYN: it stays
//!   with the switch, which is slower but as correct.

use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{tcp_flags, Conntrack, Flow, FlowKey, FlowState};
use crate::wire::ipv4::protocol;

/// A tracked flow as the kernel needs it: enough to write (and remove) both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadedFlow {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// The client's address and port.
    pub client: SocketAddrV4,
    /// The service address and port the client sends to.
    pub vip: SocketAddrV4,
    /// The backend the flow was balanced to.
    pub backend: SocketAddrV4,
    /// Hairpin or a clash: the client's address and port as the backend sees them.
    pub snat: Option<SocketAddrV4>,
}

impl OffloadedFlow {
    /// The client's direction: `(client -> vip)` as sent, `(client or snat -> backend)` once
    /// rewritten.
    pub fn forward(&self) -> ((SocketAddrV4, SocketAddrV4), (SocketAddrV4, SocketAddrV4)) {
        let source = self.snat.unwrap_or(self.client);
        ((self.client, self.vip), (source, self.backend))
    }

    /// The backend's direction: `(backend -> client or snat)` as sent, `(vip -> client)` once
    /// rewritten.
    pub fn reply(&self) -> ((SocketAddrV4, SocketAddrV4), (SocketAddrV4, SocketAddrV4)) {
        let to = self.snat.unwrap_or(self.client);
        ((self.backend, to), (self.vip, self.client))
    }
}

/// What the kernel reports of one direction of a compiled flow: it has carried a packet, and
/// maybe an ACK or a FIN (TCP), since the flow was compiled under `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadEvent {
    /// IP protocol number.
    pub proto: u8,
    /// The direction's source, as sent (before the rewrite).
    pub src: SocketAddrV4,
    /// Its destination, as sent.
    pub dst: SocketAddrV4,
    /// The backend's direction.
    pub reply: bool,
    /// The install it is about.
    pub epoch: u32,
    /// A SYN was carried (the backend's SYN-ACK to a flow just compiled).
    pub syn: bool,
    /// An ACK was carried.
    pub ack: bool,
    /// A FIN was carried.
    pub fin: bool,
}

/// Where compiled flows go: the node's kernel fast path.
pub trait FlowOffload: Send + Sync {
    /// Writes both directions of `flow` under `epoch`; false if the kernel would not take them
    /// (the flow then stays with the switch).
    fn install(&self, flow: &OffloadedFlow, epoch: u32) -> bool;
    /// Removes both directions of `flow` (either may be gone already).
    fn remove(&self, flow: &OffloadedFlow);
    /// Seconds since either direction of `flow` last carried a packet in the kernel; `None`
    /// if neither has since it was compiled.
    fn idle_secs(&self, flow: &OffloadedFlow) -> Option<u32>;
    /// Appends the events the kernel has reported since the last call to `out`, oldest first.
    fn drain_events(&self, out: &mut Vec<OffloadEvent>);
}

/// `Flow::offload` of a flow not in the kernel.
pub(super) const NOT_COMPILED: u32 = 0;
/// `Flow::offload` of a flow the kernel refused (not offered again before a new SYN).
pub(super) const REFUSED: u32 = u32::MAX;
/// `Flow::offload` of a flow never to be compiled again: forgotten, or its backend or service
/// gone (a worker that decided it a moment before cannot compile it back).
pub(super) const RETIRED: u32 = u32::MAX - 1;

/// True if `offload` is an epoch (the flow is compiled).
pub(super) fn is_live(offload: u32) -> bool {
    !matches!(offload, NOT_COMPILED | REFUSED | RETIRED)
}

impl Conntrack {
    /// Compiles decided flows into `offload` from now on (once: a node has one fast path).
    /// False if the table already has one.
    pub fn offload_to(&self, offload: Arc<dyn FlowOffload>) -> bool {
        self.offload.set(offload).is_ok()
    }

    /// True if decided flows are compiled into a kernel fast path.
    #[inline]
    pub(crate) fn offloading(&self) -> bool {
        self.offload.get().is_some()
    }

    /// Flows compiled into the kernel fast path now.
    pub fn compiled(&self) -> usize {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Flows the kernel would not take (its map full), since the start.
    pub fn offload_refused(&self) -> u64 {
        self.offload_refused.load(Ordering::Relaxed)
    }

    /// Compiles the flows whose client keys are `keys` (those the slow path just decided
    /// and marked [`Hit::compile`]), each under a fresh epoch, if `serves(service, vip,
    /// proto, backend)` still holds (the topology now, not the batch's); a flow gone or retired meanwhile, or
    /// compiled by another worker, is skipped.
    pub(crate) fn compile(
        &self,
        keys: &[FlowKey],
        serves: impl Fn(u32, SocketAddrV4, u8, &SocketAddrV4) -> bool,
    ) {
        let Some(offload) = self.offload.get() else {
            return;
        };
        let g = self.forward.pin();
        for key in keys {
            let Some(f) = g.get(key) else { continue };
            if matches!(f.state(), FlowState::Closed | FlowState::Ended)
                || !serves(f.service, f.vip, f.proto, &f.backend)
            {
                continue;
            }
            let epoch = self.next_epoch();
            // Counted before the epoch is visible: a withdrawal racing the install finds it
            // counted, and the install below then finds its epoch gone and takes them out.
            self.compiled.fetch_add(1, Ordering::Relaxed);
            if f.offload
                .compare_exchange(NOT_COMPILED, epoch, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                self.compiled.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            if offload.install(&f.offloaded(), epoch) {
                if f.offload.load(Ordering::Relaxed) != epoch {
                    offload.remove(&f.offloaded());
                }
            } else if f
                .offload
                .compare_exchange(epoch, REFUSED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.compiled.fetch_sub(1, Ordering::Relaxed);
                self.offload_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A fresh epoch (never [`NOT_COMPILED`] nor [`REFUSED`]).
    fn next_epoch(&self) -> u32 {
        loop {
            let e = self.epochs.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if is_live(e) {
                return e;
            }
        }
    }

    /// Compiles the compiled flow `f` again in place, under a fresh epoch (its client opens a
    /// new connection on it): the entries are overwritten, never absent, and the old
    /// connection's events are ignored from now on. Taken out of the kernel if that fails.
    pub(super) fn recompile(&self, f: &Flow) {
        let Some(offload) = self.offload.get() else {
            return;
        };
        let old = f.offload.load(Ordering::Relaxed);
        if !is_live(old) {
            return;
        }
        let epoch = self.next_epoch();
        if !offload.install(&f.offloaded(), epoch) {
            self.withdraw(f);
            return;
        }
        if let Err(now) =
            f.offload
                .compare_exchange(old, epoch, Ordering::Relaxed, Ordering::Relaxed)
        {
            // Withdrawn meanwhile (its entries removed before ours were written): ours go too.
            // (Compiled again by another worker: its entries stand.)
            if !is_live(now) {
                offload.remove(&f.offloaded());
            }
        }
    }

    /// Takes flow `f` out of the kernel, if it is compiled there; it may be compiled again.
    pub(super) fn withdraw(&self, f: &Flow) {
        self.uncompile(f, NOT_COMPILED);
    }

    /// Takes flow `f` out of the kernel for good (it is forgotten, or its backend or service
    /// is gone): no worker compiles it again.
    pub(super) fn retire(&self, f: &Flow) {
        self.uncompile(f, RETIRED);
    }

    fn uncompile(&self, f: &Flow, to: u32) {
        let was = f.uncompile(to);
        if let (Some(offload), Some(_)) = (self.offload.get(), was) {
            offload.remove(&f.offloaded());
            self.compiled.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Plays what the kernel carried of compiled flows into their states, at `now`, as if the
    /// switch had seen the packets: an event of an epoch since replaced is ignored. Returns how
    /// many events were about a flow still compiled under their epoch.
    pub fn absorb(&self, events: &[OffloadEvent], now: u32) -> usize {
        let _one_at_a_time = lock(&self.absorbing);
        self.absorb_in_order(events, now)
    }

    fn absorb_in_order(&self, events: &[OffloadEvent], now: u32) -> usize {
        let g = self.forward.pin();
        let rg = self.reply.pin();
        let mut applied = 0;
        for ev in events {
            let key = FlowKey::new(
                *ev.src.ip(),
                ev.src.port(),
                *ev.dst.ip(),
                ev.dst.port(),
                ev.proto,
            );
            let fkey = match ev.reply {
                true => match rg.get(&key) {
                    Some(k) => *k,
                    None => continue,
                },
                false => key,
            };
            let Some(f) = g.get(&fkey) else { continue };
            if f.offload.load(Ordering::Relaxed) != ev.epoch {
                continue;
            }
            applied += 1;
            let tcp = ev.proto == protocol::TCP;
            let flags = match (tcp && ev.syn, tcp && ev.ack) {
                (true, true) => tcp_flags::SYN | tcp_flags::ACK,
                (true, false) => tcp_flags::SYN,
                (false, true) => tcp_flags::ACK,
                (false, false) => 0,
            };
            if f.saw(now, flags, ev.reply) {
                self.candidate(fkey);
            }
            if ev.fin && f.saw(now, tcp_flags::FIN | tcp_flags::ACK, ev.reply) {
                self.candidate(fkey);
            }
        }
        applied
    }

    /// Plays every event the kernel has reported so far into the flows' states, at `now`
    /// ([`Conntrack::absorb`]); returns how many were about a flow still compiled.
    pub fn sync_from_kernel(&self, now: u32) -> usize {
        let Some(offload) = self.offload.get() else {
            return 0;
        };
        // Drained and played under one lock: events are played in the order they happened,
        // whichever thread drains them.
        let _one_at_a_time = lock(&self.absorbing);
        let mut events = Vec::new();
        offload.drain_events(&mut events);
        self.absorb_in_order(&events, now)
    }

    /// Brings a compiled flow's last-seen time up to what the kernel carried: true if it
    /// carried a packet more recently than the switch saw one.
    pub(super) fn refresh_from_kernel(&self, f: &Flow, now: u32) -> bool {
        let Some(offload) = self.offload.get() else {
            return false;
        };
        if matches!(f.offload.load(Ordering::Relaxed), NOT_COMPILED | REFUSED) {
            return false;
        }
        let Some(idle) = offload.idle_secs(&f.offloaded()) else {
            return false;
        };
        let seen = now.saturating_sub(idle);
        f.last_seen.fetch_max(seen, Ordering::Relaxed) < seen
    }
}

#[cfg(test)]
mod tests;

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
