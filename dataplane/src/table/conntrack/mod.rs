//! Connection tracking of the flows to services: which backend each flow went to, so every
//! packet of a connection keeps its backend (whatever happens to the service's Maglev table)
//! and replies get the service's address back.
//!
//! Two lock-free maps (papaya): `forward`, keyed by the flow as the client sends it
//! (client -> VIP), holding the [`Flow`]; and `reply`, keyed by the flow as the backend sends
//! its replies (backend -> client, or -> the gateway for a hairpin flow), holding the forward
//! key. Readers on the data path never take a lock; inserts and removals are lock-free too.
//!
//! Bounded, and shared fairly:
//! - at most `capacity` flows; one client address (a pod, the node) holds at most its
//!   `share` of them, so one pod cannot take the table from the others;
//! - a flow that nothing working depends on ([`FlowState::evictable`]: not yet established,
//!   reset, closed both ways) may be evicted before its timeout: a client at its share evicts
//!   its own, any new flow evicts anyone's once the table is nearly full (Linux's
//!   `early_drop`). Candidates wait in `evictable`, a bounded queue in the order they became
//!   evictable (oldest evicted first; a candidate of another client is put back);
//! - a new flow refused says why ([`Refused`]): the table full, the client's share, or its
//!   reply tuple taken by another flow (the pipeline counts each under a reason of its own).
//!
//! Expired flows (by TCP state or UDP timeout, as Linux conntrack with kube-proxy's settings;
//! [`FlowState`]) are removed by [`Conntrack::expire`], which the control plane calls
//! periodically.
//!
//! With a kernel fast path ([`Conntrack::offload_to`]), decided flows are compiled into it and
//! followed from what it reports (`offload.rs`).

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_queue::ArrayQueue;

use super::{mix, FastHasher};
use crate::wire::ipv4::protocol;

mod offload;
mod state;
use offload::{is_live, NOT_COMPILED, REFUSED};
pub use offload::{FlowOffload, OffloadEvent, OffloadedFlow};
pub(crate) use state::{tcp_flags, FlowState};

/// A flow in one direction: addresses, ports and protocol, packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowKey {
    addrs: u64,
    rest: u64,
}

impl FlowKey {
    #[inline]
    pub(crate) fn new(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> Self {
        Self {
            addrs: (u64::from(u32::from(src)) << 32) | u64::from(u32::from(dst)),
            rest: (u64::from(sport) << 24) | (u64::from(dport) << 8) | u64::from(proto),
        }
    }

    /// The IPv4 protocol number.
    #[inline]
    pub(crate) fn proto(&self) -> u8 {
        self.rest as u8
    }
}

impl Hash for FlowKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One word: FastHasher keeps only the last write.
        state.write_u64(self.addrs ^ mix(self.rest));
    }
}

/// What the table remembers of a flow to a service.
#[derive(Debug)]
pub(crate) struct Flow {
    /// The client's address and port (the flow's source as the client sent it).
    pub(crate) client: SocketAddrV4,
    /// The service's address and port.
    pub(crate) vip: SocketAddrV4,
    /// The backend chosen.
    pub(crate) backend: SocketAddrV4,
    /// Hairpin: the client's address and port as the backend sees them (the gateway and a
    /// port of [`HAIRPIN_PORTS`]), if rewritten.
    pub(crate) snat: Option<SocketAddrV4>,
    /// IPv4 protocol number.
    pub(crate) proto: u8,
    /// The service's id.
    pub(crate) service: u32,
    state: AtomicU8,
    last_seen: AtomicU32,
    since: u32,
    /// The epoch the flow is compiled into the kernel under; [`NOT_COMPILED`], [`REFUSED`]
    /// or `RETIRED` otherwise.
    offload: AtomicU32,
}

impl Flow {
    pub(crate) fn new(
        client: SocketAddrV4,
        vip: SocketAddrV4,
        backend: SocketAddrV4,
        snat: Option<SocketAddrV4>,
        proto: u8,
        service: u32,
        now: u32,
    ) -> Self {
        // TCP: a SYN, or a flow picked up mid-stream (as Linux's loose tracking does), waits
        // for a reply with the short timeout: stray segments cannot fill the table for a day.
        let state = if proto == protocol::UDP {
            FlowState::UdpUnreplied
        } else {
            FlowState::SynSent
        };
        Self {
            client,
            vip,
            backend,
            snat,
            proto,
            service,
            state: AtomicU8::new(state as u8),
            last_seen: AtomicU32::new(now),
            since: now,
            offload: AtomicU32::new(NOT_COMPILED),
        }
    }

    /// The flow as the kernel needs it.
    fn offloaded(&self) -> OffloadedFlow {
        OffloadedFlow {
            proto: self.proto,
            client: self.client,
            vip: self.vip,
            backend: self.backend,
            snat: self.snat,
        }
    }

    /// Takes the flow's epoch away (its kernel entries are to go): the epoch it had, if the
    /// flow was compiled.
    /// `to` is [`NOT_COMPILED`] (it may be compiled again) or [`RETIRED`] (never again).
    fn uncompile(&self, to: u32) -> Option<u32> {
        Some(self.offload.swap(to, Ordering::Relaxed)).filter(|e| is_live(*e))
    }

    /// True if the flow is compiled into the kernel.
    fn is_compiled(&self) -> bool {
        is_live(self.offload.load(Ordering::Relaxed))
    }

    /// Whether the slow path should compile the flow after its packet: it is not compiled (nor
    /// refused), and not reset or ended.
    #[inline]
    fn wants_compiling(&self) -> bool {
        self.offload.load(Ordering::Relaxed) == NOT_COMPILED
            && !matches!(self.state(), FlowState::Closed | FlowState::Ended)
    }

    /// True if the packet with TCP `flags` from the client opens the flow anew (a SYN: a
    /// reused port, or a retransmission).
    #[inline]
    fn reopens(&self, flags: u8) -> bool {
        self.proto == protocol::TCP && flags & tcp_flags::SYN != 0
    }

    /// The flow, opened by a TCP segment that is not a SYN ([`FlowState::PickedUp`]).
    pub(crate) fn picked_up_mid_stream(self) -> Self {
        self.state
            .store(FlowState::PickedUp as u8, Ordering::Relaxed);
        self
    }

    /// The key of the flow's replies: backend -> client (or -> the gateway, for hairpin).
    pub(crate) fn reply_key(&self) -> FlowKey {
        let to = self.snat.unwrap_or(self.client);
        FlowKey::new(
            *self.backend.ip(),
            self.backend.port(),
            *to.ip(),
            to.port(),
            self.proto,
        )
    }

    pub(crate) fn forward_key(&self) -> FlowKey {
        FlowKey::new(
            *self.client.ip(),
            self.client.port(),
            *self.vip.ip(),
            self.vip.port(),
            self.proto,
        )
    }

    pub(crate) fn state(&self) -> FlowState {
        FlowState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Records a packet (its TCP flags, 0 for UDP) seen at `now` in direction `reply`.
    /// True if the packet made the flow evictable (it was not): the one caller that moved it
    /// queues it as a candidate.
    #[inline]
    fn saw(&self, now: u32, flags: u8, reply: bool) -> bool {
        if self.last_seen.load(Ordering::Relaxed) != now {
            self.last_seen.store(now, Ordering::Relaxed);
        }
        let s = self.state();
        let n = s.next(flags, reply);
        // One worker moves the flow (another may see the same change on another packet).
        n != s
            && self
                .state
                .compare_exchange(s as u8, n as u8, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && n.evictable()
            && !s.evictable()
    }

    fn expired(&self, now: u32) -> bool {
        now.saturating_sub(self.last_seen.load(Ordering::Relaxed)) > self.state().timeout()
    }
}

/// A flow carried over an upgrade ([`Conntrack::save`], [`Conntrack::resume`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedFlow {
    /// The service's id in the process that saved it.
    pub service: u32,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// The client's address and port, as it sent them.
    pub client: SocketAddrV4,
    /// The service address the client connected to.
    pub vip: SocketAddrV4,
    /// The backend the flow was balanced to.
    pub backend: SocketAddrV4,
    /// Hairpin: the gateway address the backend sees.
    pub snat: Option<Ipv4Addr>,
    /// Hairpin: the port the backend sees (absent from older versions, which kept the
    /// client's).
    #[serde(default)]
    pub snat_port: Option<u16>,
    /// [`FlowState`]'s code.
    pub state: u8,
}

impl SavedFlow {
    /// A flow a restart after a crash must track again ([`FlowState::carried_over_a_crash`]):
    /// what the flows file keeps, so it stays as small as the working connections.
    pub fn is_live(&self) -> bool {
        FlowState::from_u8(self.state).carried_over_a_crash()
    }
}

/// The translation a packet gets, copied out of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) client: SocketAddrV4,
    pub(crate) vip: SocketAddrV4,
    pub(crate) backend: SocketAddrV4,
    pub(crate) snat: Option<SocketAddrV4>,
    pub(crate) service: u32,
    /// The flow is to be compiled into the kernel fast path once its packet is sent (the
    /// worker hands its key to [`Conntrack::compile`]).
    pub(crate) compile: bool,
}

impl From<&Flow> for Hit {
    fn from(f: &Flow) -> Self {
        Self {
            client: f.client,
            vip: f.vip,
            backend: f.backend,
            snat: f.snat,
            service: f.service,
            compile: false,
        }
    }
}

/// A flow as `podswitch conntrack` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// The client's address and port.
    pub client: SocketAddrV4,
    /// The service address the client connected to.
    pub vip: SocketAddrV4,
    /// The backend the flow was balanced to.
    pub backend: SocketAddrV4,
    /// The service's id in this process.
    pub service: u32,
    /// The flow's state, as Linux's conntrack names it (`established`, `syn_sent`, ...).
    pub state: &'static str,
    /// Seconds since the flow was created.
    pub age_secs: u32,
    /// Seconds until the flow expires if no packet refreshes it.
    pub expires_in_secs: u32,
}

type Map<V> = papaya::HashMap<FlowKey, V, BuildHasherDefault<FastHasher>>;

/// Why a new flow is not tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The table holds `capacity` flows and none could be evicted.
    Full,
    /// The client holds its share of the table and none of its flows could be evicted.
    ClientShare,
    /// Another flow's replies have the same tuple (two workers raced for it).
    Clash,
}

/// The connection-tracking table (see the module docs).
pub struct Conntrack {
    forward: Map<Flow>,
    reply: Map<FlowKey>,
    /// Flows per client address (absent: none).
    clients: papaya::HashMap<u32, u32, BuildHasherDefault<FastHasher>>,
    /// Candidates for eviction, oldest first (may name flows since gone or moved on: checked
    /// when taken).
    evictable: ArrayQueue<FlowKey>,
    count: AtomicUsize,
    capacity: usize,
    share: usize,
    /// Flows evicted before their timeout.
    evicted: AtomicU64,
    /// Flows forgotten, whatever the reason (expired, evicted, removed).
    forgotten: AtomicU64,
    /// Bumped by every insert and removal (not by state changes): whether a saved copy is
    /// out of date.
    generation: AtomicU64,
    /// The kernel fast path flows are compiled into, if the node has one.
    offload: OnceLock<Arc<dyn FlowOffload>>,
    /// The last epoch given to a compiled flow.
    epochs: AtomicU32,
    /// Flows the kernel refused (its map full).
    offload_refused: AtomicU64,
    /// Flows compiled into the kernel now.
    compiled: AtomicUsize,
    /// Held while the kernel's events are drained and played (in order).
    absorbing: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("flows", &self.len())
            .field("capacity", &self.capacity)
            .field("share", &self.share)
            .finish()
    }
}

/// The source ports the switch gives a flow whose client's own would clash (as the backend
/// sees them): a hairpin flow's, from the gateway address, and a flow whose reply tuple
/// another flow holds (one client port to two VIPs sharing a backend), from the client's.
/// Above Linux's default ephemeral range (32768-60999), so they do not meet the connections
/// the client (or the node) opens itself; each is given to one flow per backend at a time.
pub(crate) const HAIRPIN_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

/// Default bound on tracked flows.
pub const DEFAULT_CAPACITY: usize = 262_144;

/// A client's share of the table: one in this many flows.
const SHARE_DIVISOR: usize = 4;

/// Past `capacity - capacity / NEARLY_FULL_DIVISOR` flows, a new flow first evicts others'.
const NEARLY_FULL_DIVISOR: usize = 16;

/// Candidates looked at per eviction attempt (bounded work on the data path).
const EVICT_TRIES: usize = 8;

impl Conntrack {
    /// An empty table of at most `capacity` flows, a quarter of them per client.
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_share(capacity, (capacity / SHARE_DIVISOR).max(1))
    }

    /// An empty table of at most `capacity` flows, `share` of them per client.
    pub(crate) fn with_share(capacity: usize, share: usize) -> Self {
        Self {
            forward: Map::default(),
            reply: Map::default(),
            clients: papaya::HashMap::default(),
            evictable: ArrayQueue::new((capacity / SHARE_DIVISOR).max(1)),
            count: AtomicUsize::new(0),
            capacity,
            share,
            evicted: AtomicU64::new(0),
            forgotten: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            offload: OnceLock::new(),
            epochs: AtomicU32::new(NOT_COMPILED),
            offload_refused: AtomicU64::new(0),
            compiled: AtomicUsize::new(0),
            absorbing: std::sync::Mutex::new(()),
        }
    }

    /// Flows evicted before their timeout, since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Flows forgotten for any reason, since the start.
    pub fn forgotten(&self) -> u64 {
        self.forgotten.load(Ordering::Relaxed)
    }

    /// Flows the client at `client` holds.
    pub(crate) fn client_flows(&self, client: Ipv4Addr) -> usize {
        self.clients
            .pin()
            .get(&u32::from(client))
            .map_or(0, |n| *n as usize)
    }

    /// Most flows tracked at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes every time a flow is tracked or forgotten.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Flows tracked.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True if no flow is tracked (the data path then skips reply lookups).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flow the client's packet `key` belongs to, recording the packet.
    #[inline]
    pub(crate) fn forward(&self, key: &FlowKey, now: u32, flags: u8) -> Option<Hit> {
        let g = self.forward.pin();
        let f = g.get(key)?;
        let offloading = self.offloading();
        if offloading && f.reopens(flags) {
            // A new connection on the flow (a reused port): what the kernel carried of the
            // old one (its close) is heard before the SYN is judged, then the entries are
            // written again under a new epoch (a refused flow is offered again).
            if f.is_compiled() {
                self.sync_from_kernel(now);
                self.recompile(f);
            }
            let _ = f.offload.compare_exchange(
                REFUSED,
                NOT_COMPILED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if f.saw(now, flags, false) {
            self.candidate(*key);
        }
        let mut hit = Hit::from(f);
        hit.compile = offloading && f.wants_compiling();
        Some(hit)
    }

    /// The flow the backend's reply `key` belongs to, recording the packet.
    #[inline]
    pub(crate) fn reply(&self, key: &FlowKey, now: u32, flags: u8) -> Option<Hit> {
        let rg = self.reply.pin();
        let fkey = *rg.get(key)?;
        let g = self.forward.pin();
        let f = g.get(&fkey)?;
        if flags & tcp_flags::SYN != 0 && f.is_compiled() {
            // The kernel may have carried a new connection on the tuple (a reused port):
            // heard before the SYN-ACK is judged.
            self.sync_from_kernel(now);
        }
        let state = f.state();
        // A closed flow's tuple reused by a direct connection (its SYN never came through the
        // VIP): not ours to translate. A backend's SYN-ACK belongs only to a flow waiting for
        // it; otherwise the entry is stale and goes.
        if matches!(state, FlowState::Closed | FlowState::Ended)
            || (flags & tcp_flags::SYN != 0
                && !matches!(state, FlowState::SynSent | FlowState::SynRecv)
                && f.proto == protocol::TCP)
        {
            drop(g);
            drop(rg);
            if flags & tcp_flags::SYN != 0 {
                self.remove(&fkey);
            }
            return None;
        }
        if f.saw(now, flags, true) {
            self.candidate(fkey);
        }
        let mut hit = Hit::from(f);
        hit.compile = self.offloading() && f.wants_compiling();
        Some(hit)
    }

    /// The flow whose replies have key `key`, without recording a packet (for an ICMP error
    /// about the flow, which says nothing of its state).
    pub(crate) fn peek_reply(&self, key: &FlowKey) -> Option<Hit> {
        let rg = self.reply.pin();
        let fkey = *rg.get(key)?;
        let g = self.forward.pin();
        g.get(&fkey).map(Hit::from)
    }

    /// True if a flow's replies have key `key` (a hairpin source port is taken).
    pub(crate) fn replies_to(&self, key: &FlowKey) -> bool {
        self.reply.pin().contains_key(key)
    }

    /// Tracks `flow`, evicting what the module docs say may be evicted to make room; or says
    /// why not.
    pub(crate) fn try_insert(&self, flow: Flow) -> Result<(), Refused> {
        let (fkey, rkey) = (flow.forward_key(), flow.reply_key());
        let client = u32::from(*flow.client.ip());
        let nearly_full = self.len() >= self.capacity - self.capacity / NEARLY_FULL_DIVISOR;
        if self.offloading() && (nearly_full || self.client_flows(*flow.client.ip()) >= self.share)
        {
            // About to evict: what the kernel carried decides which flows may go.
            self.sync_from_kernel(flow.since);
        }
        if self.client_flows(*flow.client.ip()) >= self.share
            && !self.evict(|f| u32::from(*f.client.ip()) == client)
            && self.client_flows(*flow.client.ip()) >= self.share
        {
            return Err(Refused::ClientShare);
        }
        if self.len() >= self.capacity - self.capacity / NEARLY_FULL_DIVISOR {
            self.evict(|_| true);
        }
        // The reply key must be this flow's alone, or another flow's replies would be
        // translated as this one's.
        let rg = self.reply.pin();
        let took_reply = match rg.try_insert(rkey, fkey) {
            Ok(_) => true,
            // A racing worker's flow of the same key holds it: not ours to remove below.
            Err(e) if *e.current == fkey => false,
            Err(_) => return Err(Refused::Clash),
        };
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.count.fetch_sub(1, Ordering::Relaxed);
            if took_reply {
                let _ = rg.remove_if(&rkey, |_, v| *v == fkey);
            }
            return Err(Refused::Full);
        }
        // Counted before the flow is visible: a removal racing this insert then always finds
        // its client's count.
        self.clients.pin().update_or_insert(client, |n| n + 1, 1);
        let evictable = flow.state().evictable();
        if let Some(old) = self.forward.pin().insert(fkey, flow) {
            // Replaced a flow of the same key (two workers raced): counted once, and the
            // replaced flow's reply key goes if it was another (a source port it was given).
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.uncount_client(client);
            self.retire(old);
            let old_rkey = old.reply_key();
            if old_rkey != rkey {
                let _ = rg.remove_if(&old_rkey, |_, v| *v == fkey);
            }
        }
        if evictable {
            self.candidate(fkey);
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Tracks `flow`; false if it is refused (see [`Conntrack::try_insert`]).
    pub(crate) fn insert(&self, flow: Flow) -> bool {
        self.try_insert(flow).is_ok()
    }

    /// One flow fewer for the client at `client` (its entry goes with its last flow).
    fn uncount_client(&self, client: u32) {
        self.clients.pin().compute(client, |held| match held {
            Some((_, &n)) if n > 1 => papaya::Operation::Insert(n - 1),
            Some(_) => papaya::Operation::Remove,
            None => papaya::Operation::Abort(()),
        });
    }

    /// Queues the flow `key` as a candidate for eviction; when the queue is full, the oldest
    /// candidate makes way (it still expires by its timeout).
    fn candidate(&self, key: FlowKey) {
        let _ = self.evictable.force_push(key);
    }

    /// Evicts the oldest evictable flow for which `whose` holds, looking at up to
    /// [`EVICT_TRIES`] candidates; true if one went. Candidates of others are put back.
    fn evict(&self, whose: impl Fn(&Flow) -> bool) -> bool {
        for _ in 0..EVICT_TRIES {
            let Some(key) = self.evictable.pop() else {
                return false;
            };
            let (evictable, mine) = match self.forward.pin().get(&key) {
                None => continue,
                Some(f) => (f.state().evictable(), whose(f)),
            };
            if !evictable {
                // Queued again if it becomes evictable.
                continue;
            }
            if mine && self.remove_when(&key, |f| f.state().evictable()) {
                self.evicted.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            let _ = self.evictable.push(key);
        }
        false
    }

    /// Forgets the flow whose client key is `key`, if `gone` holds for it (checked and
    /// removed in one step, so a flow refreshed meanwhile stays).
    fn remove_when(&self, key: &FlowKey, gone: impl Fn(&Flow) -> bool) -> bool {
        let g = self.forward.pin();
        match g.remove_if(key, |_, f| gone(f)) {
            Ok(Some((_, f))) => {
                self.retire(f);
                let rkey = f.reply_key();
                let _ = self.reply.pin().remove_if(&rkey, |_, v| v == key);
                self.count.fetch_sub(1, Ordering::Relaxed);
                self.uncount_client(u32::from(*f.client.ip()));
                self.forgotten.fetch_add(1, Ordering::Relaxed);
                self.generation.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Forgets the flow whose client key is `key`.
    pub(crate) fn remove(&self, key: &FlowKey) {
        self.remove_when(key, |_| true);
    }

    /// Removes the flows idle past their state's timeout at `now`; returns how many.
    pub fn expire(&self, now: u32) -> usize {
        let g = self.forward.pin();
        // A compiled flow's packets may have stayed in the kernel: asked before it goes.
        let keys: Vec<FlowKey> = g
            .iter()
            .filter(|(_, f)| {
                f.expired(now) && {
                    self.refresh_from_kernel(f, now);
                    f.expired(now)
                }
            })
            .map(|(k, _)| *k)
            .collect();
        drop(g);
        keys.iter()
            .filter(|k| self.remove_when(k, |f| f.expired(now)))
            .count()
    }

    /// The established TCP flows of service `service` whose backend `keep` no longer accepts,
    /// as (client, VIP): their clients may be idle, and are told the connection is gone
    /// (the pipeline's probes draw the packet a reset answers).
    ///
    /// Every flow of the service to a backend `keep` refuses is taken out of the kernel
    /// first: its client's next packet (the answer to a probe) reaches the switch.
    pub fn stranded(
        &self,
        service: u32,
        keep: impl Fn(&SocketAddrV4) -> bool,
    ) -> Vec<(SocketAddrV4, SocketAddrV4)> {
        let g = self.forward.pin();
        g.iter()
            .filter(|(_, f)| f.service == service && !keep(&f.backend))
            .inspect(|(_, f)| self.retire(f))
            .filter(|(_, f)| f.proto == protocol::TCP && f.state() == FlowState::Established)
            .map(|(_, f)| (f.client, f.vip))
            .collect()
    }

    /// Marks every flow of service `service` (deleted) as ended. Returns the established TCP
    /// ones among them, as [`Conntrack::stranded`] does.
    pub fn end_service(&self, service: u32) -> Vec<(SocketAddrV4, SocketAddrV4)> {
        let g = self.forward.pin();
        g.iter()
            .filter(|(_, f)| f.service == service)
            .filter_map(|(_, f)| {
                self.retire(f);
                let was =
                    FlowState::from_u8(f.state.swap(FlowState::Ended as u8, Ordering::Relaxed));
                (f.proto == protocol::TCP && was == FlowState::Established)
                    .then_some((f.client, f.vip))
            })
            .collect()
    }

    /// Forgets the client's flow `key` if it is ended ([`Conntrack::end_service`]), in one
    /// step; true if it was.
    pub(crate) fn remove_ended(&self, key: &FlowKey) -> bool {
        self.remove_when(key, |f| f.state() == FlowState::Ended)
    }

    /// Every flow, for listings.
    pub fn list(&self, now: u32) -> Vec<FlowInfo> {
        let g = self.forward.pin();
        g.iter()
            .map(|(_, f)| {
                self.refresh_from_kernel(f, now);
                let state = f.state();
                let idle = now.saturating_sub(f.last_seen.load(Ordering::Relaxed));
                FlowInfo {
                    proto: f.proto,
                    client: f.client,
                    vip: f.vip,
                    backend: f.backend,
                    service: f.service,
                    state: state.label(),
                    age_secs: now.saturating_sub(f.since),
                    expires_in_secs: state.timeout().saturating_sub(idle),
                }
            })
            .collect()
    }

    /// Every flow as it stands (the state as its code), to carry over an upgrade; see
    /// [`Conntrack::resume`].
    pub fn save(&self) -> Vec<SavedFlow> {
        self.forward
            .pin()
            .iter()
            .map(|(_, f)| SavedFlow {
                service: f.service,
                proto: f.proto,
                client: f.client,
                vip: f.vip,
                backend: f.backend,
                snat: f.snat.map(|s| *s.ip()),
                snat_port: f.snat.map(|s| s.port()),
                state: f.state.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Tracks a flow saved by [`Conntrack::save`] again, seen at `now`, with `service` its
    /// service's id in this process. False if the table is full or the flow clashes.
    pub fn resume(&self, f: &SavedFlow, service: u32, now: u32) -> bool {
        let snat = f
            .snat
            .map(|ip| SocketAddrV4::new(ip, f.snat_port.unwrap_or(f.client.port())));
        let flow = Flow::new(f.client, f.vip, f.backend, snat, f.proto, service, now);
        flow.state
            .store(FlowState::from_u8(f.state) as u8, Ordering::Relaxed);
        self.insert(flow)
    }

    /// Flows of service `service` to each of `backends` (by address: a backend's index moves
    /// when another is removed).
    pub fn per_backend(&self, service: u32, backends: &[SocketAddrV4]) -> Vec<u64> {
        let mut n = vec![0u64; backends.len()];
        for (_, f) in self.forward.pin().iter() {
            if f.service == service {
                if let Some(i) = backends.iter().position(|b| *b == f.backend) {
                    n[i] += 1;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests;
