//! Service flows compiled into the kernel: the `flows` map (one entry per direction of a
//! flow the switch's connection tracking decided) and the `flow_events` ring buffer through
//! which the program tells connection tracking what it carried.
//!
//! Invariants: the switch writes an entry only for a flow its connection tracking holds, both
//! directions under one `epoch`, and removes both before the flow is forgotten or re-balanced;
//! the program only adds to an entry's counters and `seen` bits. An event names the entry's
//! key and epoch, so one about an install since replaced is recognised (and ignored).
//!
//! Shared by the switch's workers (which install flows as their first packets are decided)
//! and its control plane (which reads events and removes flows): each map behind its own
//! lock, held for one system call.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use aya::maps::{HashMap, MapData, RingBuf};

use crate::error::FastPathError;
use crate::map_err;
use crate::maps::{
    ip_key, FlowEntry, FlowEventEntry, FlowKeyEntry, FLOW_REPLY, SEEN_ACK, SEEN_FIN, SEEN_PACKET,
    SEEN_SYN,
};

/// A packet's addresses and ports, as one direction of a flow carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowTuple {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
}

impl FlowTuple {
    fn key(&self) -> FlowKeyEntry {
        FlowKeyEntry {
            saddr: ip_key(*self.src.ip()),
            daddr: ip_key(*self.dst.ip()),
            sport: self.src.port().to_be(),
            dport: self.dst.port().to_be(),
            proto: self.proto,
            pad: [0; 3],
        }
    }

    fn from_key(k: &FlowKeyEntry) -> Self {
        let ip = |v: u32| Ipv4Addr::from(v.to_ne_bytes());
        Self {
            proto: k.proto,
            src: SocketAddrV4::new(ip(k.saddr), u16::from_be(k.sport)),
            dst: SocketAddrV4::new(ip(k.daddr), u16::from_be(k.dport)),
        }
    }
}

/// One direction of a compiled flow: packets carrying `from` are rewritten to carry `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRewrite {
    /// What the packet carries (the entry's key).
    pub from: FlowTuple,
    /// What it carries once rewritten (the protocol is `from`'s).
    pub to: FlowTuple,
}

impl FlowRewrite {
    fn entry(&self, epoch: u32, reply: bool) -> FlowEntry {
        let to = self.to.key();
        FlowEntry {
            saddr: to.saddr,
            daddr: to.daddr,
            sport: to.sport,
            dport: to.dport,
            epoch,
            flags: if reply { FLOW_REPLY } else { 0 },
            ..FlowEntry::default()
        }
    }
}

/// What an entry carried for the first time (since it was written, or since its connection
/// was reopened): its first packet, an ACK, a FIN, a SYN; only what is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEvent {
    /// The entry's key: the packets' tuple before the rewrite.
    pub tuple: FlowTuple,
    /// The install the entry belongs to.
    pub epoch: u32,
    /// The backend's direction.
    pub reply: bool,
    /// The entry has carried a SYN (the backend's SYN-ACK).
    pub syn: bool,
    /// The entry has carried an ACK (TCP).
    pub ack: bool,
    /// The entry has carried a FIN (TCP).
    pub fin: bool,
}

impl FlowEvent {
    fn new(key: &FlowKeyEntry, epoch: u32, flags: u32, seen: u32) -> Option<Self> {
        (seen & (SEEN_PACKET | SEEN_ACK | SEEN_FIN | SEEN_SYN) != 0).then(|| Self {
            tuple: FlowTuple::from_key(key),
            epoch,
            reply: flags & FLOW_REPLY != 0,
            syn: seen & SEEN_SYN != 0,
            ack: seen & SEEN_ACK != 0,
            fin: seen & SEEN_FIN != 0,
        })
    }
}

/// The compiled flows and their events (see the module docs).
pub struct FlowTable {
    map: Mutex<HashMap<MapData, FlowKeyEntry, FlowEntry>>,
    events: Mutex<RingBuf<MapData>>,
}

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns()`.
fn monotonic_now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(Duration::ZERO, Duration::from)
}

impl FlowTable {
    pub(crate) fn new(
        map: HashMap<MapData, FlowKeyEntry, FlowEntry>,
        events: RingBuf<MapData>,
    ) -> Self {
        Self {
            map: Mutex::new(map),
            events: Mutex::new(events),
        }
    }

    /// Compiles a flow: both directions written under `epoch` (the backend's first, so the
    /// client's packets are rewritten only once the replies can be). Either both are written
    /// or neither (the map full: the flow stays with the switch).
    pub fn install(
        &self,
        epoch: u32,
        forward: &FlowRewrite,
        reply: &FlowRewrite,
    ) -> Result<(), FastPathError> {
        let mut map = lock(&self.map);
        map.insert(reply.from.key(), reply.entry(epoch, true), 0)
            .map_err(map_err("flows"))?;
        if let Err(e) = map.insert(forward.from.key(), forward.entry(epoch, false), 0) {
            let _ = map.remove(&reply.from.key());
            return Err(map_err("flows")(e));
        }
        Ok(())
    }

    /// Takes a flow out of the kernel: both directions (either may be gone already).
    pub fn remove(&self, forward: &FlowTuple, reply: &FlowTuple) {
        let mut map = lock(&self.map);
        // The client's first: none of its packets reaches a backend without the way back.
        let _ = map.remove(&forward.key());
        let _ = map.remove(&reply.key());
    }

    /// How long ago either direction of a flow last carried a packet in the kernel; `None`
    /// if neither has since it was compiled (or it is not compiled).
    pub fn idle(&self, forward: &FlowTuple, reply: &FlowTuple) -> Option<Duration> {
        let map = lock(&self.map);
        let last = [forward, reply]
            .iter()
            .filter_map(|t| map.get(&t.key(), 0).ok())
            .map(|e| e.last_ns)
            .max()
            .filter(|&ns| ns != 0)?;
        Some(monotonic_now().saturating_sub(Duration::from_nanos(last)))
    }

    /// Hands every event waiting in the ring buffer to `f`, oldest first; returns how many.
    pub fn drain_events(&self, mut f: impl FnMut(FlowEvent)) -> usize {
        let mut ring = lock(&self.events);
        let mut n = 0;
        while let Some(item) = ring.next() {
            let Some(bytes) = item.get(..std::mem::size_of::<FlowEventEntry>()) else {
                continue;
            };
            let mut ev = FlowEventEntry::default();
            // The program writes whole events; read field by field from the bytes.
            let word = |at: usize| {
                bytes
                    .get(at..at + 4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, u32::from_ne_bytes)
            };
            ev.key.saddr = word(0);
            ev.key.daddr = word(4);
            let ports = word(8).to_ne_bytes();
            ev.key.sport = u16::from_ne_bytes([ports[0], ports[1]]);
            ev.key.dport = u16::from_ne_bytes([ports[2], ports[3]]);
            ev.key.proto = bytes.get(12).copied().unwrap_or(0);
            ev.epoch = word(16);
            ev.flags = word(20);
            ev.seen = word(24);
            if let Some(e) = FlowEvent::new(&ev.key, ev.epoch, ev.flags, ev.seen) {
                f(e);
                n += 1;
            }
        }
        n
    }

    /// Every entry's `seen` bits as the events they add up to (for when the ring buffer had to
    /// drop some), in the order a connection sets them: the backends' SYN-ACKs, the clients'
    /// packets, the backends' other packets, then the FINs. (A client's reopening SYN is not
    /// replayed: the entry's bits are already the new connection's.)
    pub fn replay_all(&self, mut f: impl FnMut(FlowEvent)) -> usize {
        let entries: Vec<(FlowKeyEntry, FlowEntry)> = lock(&self.map).iter().flatten().collect();
        let event = |(k, v): &(FlowKeyEntry, FlowEntry), seen: u32| {
            FlowEvent::new(k, v.epoch, v.flags, seen)
        };
        let reply = |v: &FlowEntry| v.flags & FLOW_REPLY != 0;
        let seen = |v: &FlowEntry| v.seen as u32;
        let no_fin = !(SEEN_FIN | SEEN_SYN);
        let phases = [
            entries
                .iter()
                .filter(|(_, v)| reply(v) && seen(v) & SEEN_SYN != 0)
                .filter_map(|e| event(e, seen(&e.1) & !SEEN_FIN))
                .collect::<Vec<_>>(),
            entries
                .iter()
                .filter(|(_, v)| !reply(v))
                .filter_map(|e| event(e, seen(&e.1) & no_fin))
                .collect(),
            entries
                .iter()
                .filter(|(_, v)| reply(v) && seen(v) & SEEN_SYN == 0)
                .filter_map(|e| event(e, seen(&e.1) & no_fin))
                .collect(),
            entries
                .iter()
                .filter(|(_, v)| seen(v) & SEEN_FIN != 0)
                .filter_map(|e| event(e, SEEN_FIN | SEEN_ACK))
                .collect(),
        ];
        let mut n = 0;
        for e in phases.into_iter().flatten() {
            f(e);
            n += 1;
        }
        n
    }

    /// Entries the map holds (two per compiled flow), counted by walking it.
    pub fn entries(&self) -> usize {
        lock(&self.map).keys().flatten().count()
    }
}
