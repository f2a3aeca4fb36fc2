//! Connection tracking of the flows to services: which backend each flow went to, so every
//! packet of a connection keeps its backend (whatever happens to the service's Maglev table)
//! and replies get the service's address back.
//!
//! Two lock-free maps (papaya): `forward`, keyed by the flow as the client sends it
//! (client -> VIP), holding the [`Flow`]; and `reply`, keyed by the flow as the backend sends
//! its replies (backend -> client, or -> the gateway for a hairpin flow), holding the forward
//! key. Readers on the data path never take a lock; inserts and removals are lock-free too.
//!
//! Bounded: past `capacity` flows, a new flow is refused (the pipeline counts it as
//! `conntrack_full`). Expired flows
//! (by TCP state or UDP timeout, as Linux conntrack with kube-proxy's settings) are removed by
//! [`Conntrack::expire`], which the control plane calls periodically.

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use super::{mix, FastHasher};
use crate::wire::ipv4::protocol;

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

/// TCP flags the state machine reads.
pub(crate) mod tcp_flags {
    pub(crate) const FIN: u8 = 0x01;
    pub(crate) const SYN: u8 = 0x02;
    pub(crate) const RST: u8 = 0x04;
    pub(crate) const ACK: u8 = 0x10;
}

/// Where a flow is in its life; each state has its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FlowState {
    /// TCP: the client's SYN seen, no reply yet (Linux: SYN_SENT, 120 s).
    SynSent = 0,
    /// TCP: both ways seen (kube-proxy sets Linux's established timeout to 86400 s).
    Established = 1,
    /// TCP: a FIN seen (Linux: FIN_WAIT / TIME_WAIT, 120 s).
    Closing = 2,
    /// TCP: a RST seen (Linux: CLOSE, 10 s).
    Closed = 3,
    /// UDP: no reply yet (Linux: 30 s).
    UdpUnreplied = 4,
    /// UDP: replied (Linux's UDP stream timeout, 120 s).
    UdpReplied = 5,
    /// Its service was deleted: the client's next packet is answered with a reset (TCP) and
    /// the flow forgotten; replies are no longer translated (120 s).
    Ended = 6,
}

impl FlowState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::SynSent,
            1 => Self::Established,
            2 => Self::Closing,
            3 => Self::Closed,
            4 => Self::UdpUnreplied,
            5 => Self::UdpReplied,
            _ => Self::Ended,
        }
    }

    /// Seconds a flow in this state lives without a packet.
    pub(crate) fn timeout(self) -> u32 {
        match self {
            Self::SynSent | Self::Closing | Self::Ended => 120,
            Self::Established => 86_400,
            Self::Closed => 10,
            Self::UdpUnreplied => 30,
            Self::UdpReplied => 120,
        }
    }

    /// Lower-case name for listings.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::SynSent => "syn_sent",
            Self::Established => "established",
            Self::Closing => "closing",
            Self::Closed => "closed",
            Self::UdpUnreplied => "unreplied",
            Self::UdpReplied => "replied",
            Self::Ended => "ended",
        }
    }

    /// The state after a packet with TCP `flags` (0 for UDP) in direction `reply`.
    fn next(self, flags: u8, reply: bool) -> Self {
        use tcp_flags::*;
        match self {
            Self::Ended => self,
            Self::UdpUnreplied | Self::UdpReplied => {
                if reply {
                    Self::UdpReplied
                } else {
                    self
                }
            }
            _ if flags & RST != 0 => Self::Closed,
            // The client's port reused for a new connection.
            Self::Closing | Self::Closed if !reply && flags & SYN != 0 && flags & ACK == 0 => {
                Self::SynSent
            }
            Self::Closed => self,
            _ if flags & FIN != 0 => Self::Closing,
            Self::SynSent if reply => Self::Established,
            s => s,
        }
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
        }
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
    #[inline]
    fn saw(&self, now: u32, flags: u8, reply: bool) {
        if self.last_seen.load(Ordering::Relaxed) != now {
            self.last_seen.store(now, Ordering::Relaxed);
        }
        let s = self.state();
        let n = s.next(flags, reply);
        if n != s {
            self.state.store(n as u8, Ordering::Relaxed);
        }
    }

    fn expired(&self, now: u32) -> bool {
        now.saturating_sub(self.last_seen.load(Ordering::Relaxed)) > self.state().timeout()
    }
}

/// A flow carried over an upgrade ([`Conntrack::save`], [`Conntrack::resume`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedFlow {
    /// The service's id in the process that saved it.
    pub(crate) service: u32,
    pub(crate) proto: u8,
    pub(crate) client: SocketAddrV4,
    pub(crate) vip: SocketAddrV4,
    pub(crate) backend: SocketAddrV4,
    /// Hairpin: the gateway address the backend sees.
    pub(crate) snat: Option<Ipv4Addr>,
    /// Hairpin: the port the backend sees (absent from older versions, which kept the
    /// client's).
    #[serde(default)]
    pub(crate) snat_port: Option<u16>,
    /// [`FlowState`]'s code.
    pub(crate) state: u8,
}

impl SavedFlow {
    /// A flow still carrying packets: what a restart after a crash must track again, or the
    /// backend's next segment would reach its client untranslated and be reset (TCP, opening,
    /// established or half-closed), or its next datagram would go to another backend if the
    /// backends changed, and its replies untranslated meanwhile (UDP). Reset (`closed`) and
    /// `ended` flows are left out.
    pub(crate) fn is_live(&self) -> bool {
        !matches!(
            FlowState::from_u8(self.state),
            FlowState::Closed | FlowState::Ended
        )
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
}

impl From<&Flow> for Hit {
    fn from(f: &Flow) -> Self {
        Self {
            client: f.client,
            vip: f.vip,
            backend: f.backend,
            snat: f.snat,
            service: f.service,
        }
    }
}

/// A flow as `podswitch conntrack` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlowInfo {
    pub(crate) proto: u8,
    pub(crate) client: SocketAddrV4,
    pub(crate) vip: SocketAddrV4,
    pub(crate) backend: SocketAddrV4,
    pub(crate) service: u32,
    pub(crate) state: &'static str,
    pub(crate) age_secs: u32,
    pub(crate) expires_in_secs: u32,
}

type Map<V> = papaya::HashMap<FlowKey, V, BuildHasherDefault<FastHasher>>;

/// The connection-tracking table (see the module docs).
pub struct Conntrack {
    forward: Map<Flow>,
    reply: Map<FlowKey>,
    count: AtomicUsize,
    capacity: usize,
    /// Bumped by every insert and removal (not by state changes): whether a saved copy is
    /// out of date.
    generation: AtomicU64,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("flows", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// The source ports of hairpin flows (as the backend sees them, from the gateway address):
/// above Linux's default ephemeral range (32768-60999), so they do not meet the node's own
/// connections from that address, and each is given to one flow per backend at a time.
pub(crate) const HAIRPIN_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

/// Default bound on tracked flows.
pub(crate) const DEFAULT_CAPACITY: usize = 262_144;

impl Conntrack {
    /// An empty table of at most `capacity` flows.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            forward: Map::default(),
            reply: Map::default(),
            count: AtomicUsize::new(0),
            capacity,
            generation: AtomicU64::new(0),
        }
    }

    /// Most flows tracked at once.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Changes every time a flow is tracked or forgotten.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Flows tracked.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True if no flow is tracked (the data path then skips reply lookups).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flow the client's packet `key` belongs to, recording the packet.
    #[inline]
    pub(crate) fn forward(&self, key: &FlowKey, now: u32, flags: u8) -> Option<Hit> {
        let g = self.forward.pin();
        let f = g.get(key)?;
        f.saw(now, flags, false);
        Some(Hit::from(f))
    }

    /// The flow the backend's reply `key` belongs to, recording the packet.
    #[inline]
    pub(crate) fn reply(&self, key: &FlowKey, now: u32, flags: u8) -> Option<Hit> {
        let rg = self.reply.pin();
        let fkey = *rg.get(key)?;
        let g = self.forward.pin();
        let f = g.get(&fkey)?;
        let state = f.state();
        // A closed flow's tuple reused by a direct connection (its SYN never came through the
        // VIP): not ours to translate. A backend's SYN-ACK belongs only to a flow waiting for
        // it; otherwise the entry is stale and goes.
        if matches!(state, FlowState::Closed | FlowState::Ended)
            || (flags & tcp_flags::SYN != 0
                && state != FlowState::SynSent
                && f.proto == protocol::TCP)
        {
            drop(g);
            drop(rg);
            if flags & tcp_flags::SYN != 0 {
                self.remove(&fkey);
            }
            return None;
        }
        f.saw(now, flags, true);
        Some(Hit::from(f))
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

    /// Tracks `flow`; false (and counted) if the table is full.
    pub(crate) fn insert(&self, flow: Flow) -> bool {
        let (fkey, rkey) = (flow.forward_key(), flow.reply_key());
        // The reply key must be this flow's alone, or another flow's replies would be
        // translated as this one's (one client port to two VIPs sharing a backend).
        let rg = self.reply.pin();
        match rg.try_insert(rkey, fkey) {
            Ok(_) => {}
            Err(e) if *e.current == fkey => {}
            Err(_) => return false,
        }
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.count.fetch_sub(1, Ordering::Relaxed);
            let _ = rg.remove_if(&rkey, |_, v| *v == fkey);
            return false;
        }
        if self.forward.pin().insert(fkey, flow).is_some() {
            // Replaced a flow of the same key (two workers raced): counted once.
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Forgets the flow whose client key is `key`, if `gone` holds for it (checked and
    /// removed in one step, so a flow refreshed meanwhile stays).
    fn remove_when(&self, key: &FlowKey, gone: impl Fn(&Flow) -> bool) -> bool {
        let g = self.forward.pin();
        match g.remove_if(key, |_, f| gone(f)) {
            Ok(Some((_, f))) => {
                let rkey = f.reply_key();
                let _ = self.reply.pin().remove_if(&rkey, |_, v| v == key);
                self.count.fetch_sub(1, Ordering::Relaxed);
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
    pub(crate) fn expire(&self, now: u32) -> usize {
        let g = self.forward.pin();
        let keys: Vec<FlowKey> = g
            .iter()
            .filter(|(_, f)| f.expired(now))
            .map(|(k, _)| *k)
            .collect();
        drop(g);
        keys.iter()
            .filter(|k| self.remove_when(k, |f| f.expired(now)))
            .count()
    }

    /// The established TCP flows of service `service` whose backend `keep` no longer accepts,
    /// as (client, VIP): their clients may be idle, and are told the connection is gone
    /// ([`crate::pipeline::reply`]'s probes draw the packet a reset answers).
    pub(crate) fn stranded(
        &self,
        service: u32,
        keep: impl Fn(&SocketAddrV4) -> bool,
    ) -> Vec<(SocketAddrV4, SocketAddrV4)> {
        let g = self.forward.pin();
        g.iter()
            .filter(|(_, f)| {
                f.service == service
                    && f.proto == protocol::TCP
                    && f.state() == FlowState::Established
                    && !keep(&f.backend)
            })
            .map(|(_, f)| (f.client, f.vip))
            .collect()
    }

    /// Marks every flow of service `service` (deleted) as ended. Returns the established TCP
    /// ones among them, as [`Conntrack::stranded`] does.
    pub(crate) fn end_service(&self, service: u32) -> Vec<(SocketAddrV4, SocketAddrV4)> {
        let g = self.forward.pin();
        g.iter()
            .filter(|(_, f)| f.service == service)
            .filter_map(|(_, f)| {
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
    pub(crate) fn list(&self, now: u32) -> Vec<FlowInfo> {
        let g = self.forward.pin();
        g.iter()
            .map(|(_, f)| {
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
    pub(crate) fn save(&self) -> Vec<SavedFlow> {
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
    pub(crate) fn resume(&self, f: &SavedFlow, service: u32, now: u32) -> bool {
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
    pub(crate) fn per_backend(&self, service: u32, backends: &[SocketAddrV4]) -> Vec<u64> {
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
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn flow(client: &str, backend: &str, proto: u8, now: u32) -> Flow {
        Flow::new(
            sa(client),
            sa("10.96.0.10:80"),
            sa(backend),
            None,
            proto,
            1,
            now,
        )
    }

    #[test]
    fn forward_and_reply_find_the_flow_and_follow_tcp() {
        let ct = Conntrack::new(16);
        let f = flow("10.244.1.10:40000", "10.244.2.7:8080", 6, 5);
        let (fk, rk) = (f.forward_key(), f.reply_key());
        assert!(ct.insert(f));
        assert_eq!(ct.len(), 1);
        assert_eq!(
            ct.forward(&fk, 5, tcp_flags::SYN).unwrap().backend,
            sa("10.244.2.7:8080")
        );
        let hit = ct.reply(&rk, 6, tcp_flags::SYN | tcp_flags::ACK).unwrap();
        assert_eq!(
            (hit.client, hit.vip),
            (sa("10.244.1.10:40000"), sa("10.96.0.10:80"))
        );
        assert_eq!(ct.list(6)[0].state, "established");
        ct.forward(&fk, 7, tcp_flags::FIN | tcp_flags::ACK);
        assert_eq!(ct.list(7)[0].state, "closing");
        assert_eq!(ct.expire(7 + 120), 0);
        assert_eq!(ct.expire(7 + 121), 1);
        assert!(ct.is_empty());
        assert!(ct.reply(&rk, 200, 0).is_none());
    }

    #[test]
    fn a_crash_carries_the_live_flows_over() {
        let ct = Conntrack::new(16);
        let mut expect = Vec::new();
        // (client port, protocol, packets as (flags, reply), carried over a crash)
        /// Packets after the insert: TCP flags (0 for UDP) and whether it is a reply.
        type Packets = &'static [(u8, bool)];
        let cases: [(u16, u8, Packets, bool); 7] = [
            (1, 6, &[], true),                                        // syn_sent
            (2, 6, &[(tcp_flags::SYN | tcp_flags::ACK, true)], true), // established
            (
                3,
                6,
                &[
                    (tcp_flags::SYN | tcp_flags::ACK, true),
                    (tcp_flags::FIN, false),
                ],
                true,
            ), // closing
            (4, 6, &[(tcp_flags::RST, true)], false),                 // closed
            (5, 17, &[], true),                                       // unreplied
            (6, 17, &[(0, true)], true),                              // replied
            (7, 6, &[(tcp_flags::SYN | tcp_flags::ACK, true)], false), // ended below
        ];
        for (port, proto, packets, live) in cases {
            let f = flow(&format!("10.244.1.10:{port}"), "10.244.2.7:80", proto, 0);
            let (fk, rk) = (f.forward_key(), f.reply_key());
            ct.insert(f);
            for &(flags, reply) in packets {
                if reply {
                    ct.reply(&rk, 1, flags);
                } else {
                    ct.forward(&fk, 1, flags);
                }
            }
            if live {
                expect.push(port);
            }
        }
        let mut ended = flow("10.244.1.10:7", "10.244.2.7:80", 6, 0);
        ended.service = 2;
        ct.remove(&ended.forward_key());
        ct.insert(ended);
        ct.end_service(2);
        let states: Vec<&str> = ct.list(1).iter().map(|f| f.state).collect();
        for s in [
            "syn_sent",
            "established",
            "closing",
            "closed",
            "unreplied",
            "replied",
            "ended",
        ] {
            assert!(states.contains(&s), "{s} among {states:?}");
        }
        let mut kept: Vec<u16> = ct
            .save()
            .into_iter()
            .filter(SavedFlow::is_live)
            .map(|f| f.client.port())
            .collect();
        kept.sort_unstable();
        assert_eq!(kept, expect);
    }

    #[test]
    fn saved_flows_resume_with_their_state_and_translation() {
        let old = Conntrack::new(16);
        let mut hairpin = flow("10.244.1.10:40001", "10.244.1.10:8080", 6, 3);
        hairpin.snat = Some("10.244.1.1:61000".parse().unwrap());
        let (hk, hr) = (hairpin.forward_key(), hairpin.reply_key());
        old.insert(hairpin);
        old.reply(&hr, 4, tcp_flags::SYN | tcp_flags::ACK); // established
        old.insert(flow("10.244.1.10:53000", "10.244.2.7:53", 17, 3));
        let saved = old.save();
        // Through JSON, as the handover file carries them.
        let text = serde_json::to_string(&saved).unwrap();
        let saved: Vec<SavedFlow> = serde_json::from_str(&text).unwrap();

        let new = Conntrack::new(16);
        assert!(saved.iter().all(|f| new.resume(f, f.service, 100)));
        let mut was = old.list(4);
        let mut now = new.list(100);
        was.sort_by_key(|f| f.client);
        now.sort_by_key(|f| f.client);
        let shape = |l: &[FlowInfo]| -> Vec<_> {
            l.iter()
                .map(|f| (f.proto, f.client, f.vip, f.backend, f.service, f.state))
                .collect()
        };
        assert_eq!(shape(&was), shape(&now));
        assert_eq!(now[0].state, "established");
        // The hairpin flow's replies (to the gateway) still find it.
        let hit = new.reply(&hr, 101, tcp_flags::ACK).unwrap();
        assert_eq!(hit.snat, Some("10.244.1.1:61000".parse().unwrap()));
        assert!(new.forward(&hk, 101, tcp_flags::ACK).is_some());
        // A full table takes what fits and says so.
        let small = Conntrack::new(1);
        let took: Vec<bool> = saved
            .iter()
            .map(|f| small.resume(f, f.service, 0))
            .collect();
        assert_eq!(took.iter().filter(|t| **t).count(), 1);
    }

    #[test]
    fn timeouts_follow_the_state() {
        let ct = Conntrack::new(16);
        ct.insert(flow("10.244.1.10:1", "10.244.2.7:53", 17, 0));
        ct.insert(flow("10.244.1.10:2", "10.244.2.7:8080", 6, 0));
        let est = flow("10.244.1.10:3", "10.244.2.7:8080", 6, 0);
        let rst_key = est.forward_key();
        ct.insert(est);
        let replied = flow("10.244.1.10:4", "10.244.2.7:8080", 6, 0);
        let replied_reply = replied.reply_key();
        ct.insert(replied);
        ct.reply(&replied_reply, 0, tcp_flags::ACK);
        ct.forward(&rst_key, 0, tcp_flags::RST);
        assert_eq!(ct.expire(11), 1, "the reset flow after 10 s");
        assert_eq!(ct.expire(31), 1, "the unreplied UDP flow after 30 s");
        assert_eq!(ct.expire(121), 1, "the SYN without answer after 120 s");
        assert_eq!(ct.expire(86_400), 0);
        assert_eq!(ct.expire(86_401), 1, "established after a day");
        // A port reused after a reset starts over.
        let again = flow("10.244.1.10:5", "10.244.2.7:8080", 6, 0);
        let k = again.forward_key();
        ct.insert(again);
        ct.forward(&k, 1, tcp_flags::RST);
        ct.forward(&k, 2, tcp_flags::SYN);
        assert_eq!(ct.list(2)[0].state, "syn_sent");
    }

    #[test]
    fn a_closed_flows_tuple_reused_directly_is_not_translated() {
        let ct = Conntrack::new(16);
        let f = flow("10.244.1.10:40000", "10.244.2.7:8080", 6, 0);
        let (fk, rk) = (f.forward_key(), f.reply_key());
        ct.insert(f);
        ct.reply(&rk, 0, tcp_flags::SYN | tcp_flags::ACK);
        ct.forward(&fk, 1, tcp_flags::RST);
        // A direct connection on the same ports: its SYN-ACK is the backend's own.
        assert!(ct.reply(&rk, 2, tcp_flags::SYN | tcp_flags::ACK).is_none());
        assert!(ct.is_empty(), "the stale entry is gone");
        // Likewise after a FIN (TIME_WAIT): a new SYN-ACK is not the closing flow's.
        let f = flow("10.244.1.10:40001", "10.244.2.7:8080", 6, 0);
        let (fk, rk) = (f.forward_key(), f.reply_key());
        ct.insert(f);
        ct.reply(&rk, 0, tcp_flags::SYN | tcp_flags::ACK);
        ct.forward(&fk, 1, tcp_flags::FIN | tcp_flags::ACK);
        assert!(
            ct.reply(&rk, 2, tcp_flags::ACK).is_some(),
            "the closing flow's own ACK"
        );
        assert!(ct.reply(&rk, 3, tcp_flags::SYN | tcp_flags::ACK).is_none());
        assert!(ct.is_empty());
    }

    #[test]
    fn a_reply_key_belongs_to_one_flow() {
        let ct = Conntrack::new(16);
        let f = |vip: &str, service| {
            Flow::new(
                sa("10.244.1.10:40000"),
                sa(vip),
                sa("10.244.2.7:8080"),
                None,
                6,
                service,
                0,
            )
        };
        let (a, b) = (f("10.96.0.10:80", 1), f("10.96.0.11:80", 2));
        let (ak, rk) = (a.forward_key(), a.reply_key());
        assert!(ct.insert(a));
        assert!(!ct.insert(b), "the same reply key as a: refused");
        assert_eq!(
            ct.reply(&rk, 1, 0).map(|h| h.vip),
            Some(sa("10.96.0.10:80"))
        );
        ct.remove(&ak);
        assert!(ct.is_empty() && ct.reply(&rk, 1, 0).is_none());
    }

    #[test]
    fn bounded_and_counted_per_backend() {
        let ct = Conntrack::new(2);
        assert!(ct.insert(flow("10.244.1.10:1", "10.244.2.7:80", 6, 0)));
        assert!(ct.insert(flow("10.244.1.10:2", "10.244.2.8:80", 6, 0)));
        assert!(!ct.insert(flow("10.244.1.10:3", "10.244.2.7:80", 6, 0)));
        assert_eq!(ct.len(), 2);
        assert_eq!(
            ct.per_backend(1, &[sa("10.244.2.8:80"), sa("10.244.2.7:80")]),
            vec![1, 1]
        );
        ct.remove(&flow("10.244.1.10:1", "10.244.2.7:80", 6, 0).forward_key());
        assert_eq!(ct.len(), 1);
        assert!(ct.insert(flow("10.244.1.10:3", "10.244.2.7:80", 6, 0)));
    }
}
