//! Counters: why frames were dropped, and what happened to the rest.
//!
//! Accounting invariant, over any interval in which the switch is quiescent at both ends:
//! `rx = forwarded + delivered_locally + sum(dropped[reason])`. A frame flooded to N ports is one
//! forwarded frame; a frame answered by the switch (ARP, ping of the gateway) is delivered
//! locally; a frame refused with an ICMP error is a drop (the error is a new frame).
//!
//! Egress failures are counted per copy, apart from that sum: a flooded frame is one rx frame
//! but N transmit copies, any of which a full receiver may refuse (`tx_dropped`).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $name:ident => $label:literal,)*) => {
        /// Why a frame was dropped. The doc comment of each variant is its meaning; `label()`
        /// is the stable name used in metrics output.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason {
            $($(#[doc = $doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in index order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Number of reasons.
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name.
            pub fn label(self) -> &'static str {
                match self {
                    $(DropReason::$name => $label,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than an Ethernet header, or a header that lies about its length.
    Malformed => "malformed",
    /// Longer than the pod MTU allows and not a GSO superframe.
    Oversize => "oversize",
    /// An IPv4 header that fails validation (version, lengths, checksum).
    BadIpv4 => "bad_ipv4",
    /// An ARP packet that is not Ethernet/IPv4 or is truncated.
    BadArp => "bad_arp",
    /// A pod sent a frame with a source MAC that is not its own.
    SpoofedMac => "spoofed_mac",
    /// A pod sent an IPv4 packet or ARP with a sender address that is not its own, or the
    /// host port one with a pod's address.
    SpoofedIp => "spoofed_ip",
    /// A pod sent a VLAN-tagged frame (802.1Q, 802.1ad): pod interfaces are untagged, and a
    /// tag would hide the packet inside from the address checks.
    Vlan => "vlan",
    /// A pod sent a frame that is neither IPv4 nor ARP (IPv6, LLDP, ...): nothing else is
    /// configured for pods.
    EtherType => "ethertype",
    /// A GSO superframe whose segment size is below what any real sender cuts
    /// (`gso::MIN_GSO_SIZE`): it would only multiply packets.
    BadGsoSize => "bad_gso_size",
    /// The ingress port is not attached (it was removed while the frame was in flight).
    UnknownPort => "unknown_port",
    /// Unicast to a MAC that lives behind the ingress port itself.
    SameSegment => "same_segment",
    /// Unicast to a MAC no pod has and nothing was learned for (a removed pod's): dropped, not
    /// flooded.
    UnknownUnicast => "unknown_unicast",
    /// A routed packet whose TTL ran out (an ICMP time-exceeded is sent back).
    TtlExceeded => "ttl_exceeded",
    /// A routed packet for a pod IP of this node that no pod has (ICMP host unreachable).
    NoSuchPod => "no_such_pod",
    /// A routed packet for an address no node owns (ICMP net unreachable).
    NoRoute => "no_route",
    /// A routed packet too big for the tunnel (ICMP fragmentation needed).
    TooBigForTunnel => "too_big_for_tunnel",
    /// Sent to the router MAC but not IPv4 or ARP.
    NotRoutable => "not_routable",
    /// Addressed to the gateway IP but not a ping the gateway answers.
    GatewayUnsupported => "gateway_unsupported",
    /// An ARP request from the host port for an address no pod of this node or peer has.
    ArpUnanswered => "arp_unanswered",
    /// A packet for a service address with no service on its port and protocol, a fragment, or
    /// not TCP/UDP.
    NoService => "no_service",
    /// A new flow to a service without backends (TCP reset / ICMP port unreachable sent).
    NoBackends => "no_backends",
    /// A packet of a TCP flow whose backend was removed (reset sent: the client reconnects).
    BackendGone => "backend_gone",
    /// A new flow to a service while connection tracking is full (and nothing in it could be
    /// evicted).
    ConntrackFull => "conntrack_full",
    /// A new flow to a service from a client (a pod, the node) that holds its share of
    /// connection tracking (a quarter), none of it evictable: one client cannot take the table.
    ConntrackClientShare => "conntrack_client_share",
    /// A new flow to a service whose reply tuple another flow holds and no free source port
    /// was found for it (or two workers raced for it).
    ConntrackClash => "conntrack_clash",
    /// A new hairpin flow (a pod to its own service, picked as the backend) while the hairpin
    /// source ports tried for that backend were all taken.
    HairpinPortsBusy => "hairpin_ports_busy",
    /// A frame for a peer node while no tunnel port is attached.
    NoTunnel => "no_tunnel",
    /// A superframe or partial-checksum frame for a peer that could not be segmented or
    /// completed (inconsistent virtio-net header).
    BadOffload => "bad_offload",
    /// A VXLAN datagram that is truncated or lacks the I flag.
    VxlanMalformed => "vxlan_malformed",
    /// A VXLAN datagram from an address that is not a known peer.
    VxlanUnknownPeer => "vxlan_unknown_peer",
    /// A VXLAN datagram with a VNI that is not ours.
    VxlanBadVni => "vxlan_bad_vni",
    /// A decapsulated frame that is not IPv4 for a pod of this node.
    VxlanNotForPod => "vxlan_not_for_pod",
    /// The destination port was removed while the frame was in flight.
    PortGone => "port_gone",
}

/// Frame counts kept by one data-plane thread, flushed to [`Metrics`] once per batch.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    /// Frames received from any port.
    pub rx: u64,
    /// Frames sent on (forwarded, flooded or encapsulated).
    pub forwarded: u64,
    /// Frames the switch consumed and answered itself.
    pub delivered_locally: u64,
    /// Drops by reason (indexed by `DropReason as usize`).
    pub dropped: [u64; DropReason::COUNT],
    /// Transmit copies refused by a full or failed egress port (not part of the rx sum).
    pub tx_dropped: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            rx: 0,
            forwarded: 0,
            delivered_locally: 0,
            dropped: [0; DropReason::COUNT],
            tx_dropped: 0,
        }
    }
}

impl Counts {
    /// Total drops.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }
}

/// Switch-wide counters, readable from any thread.
#[derive(Debug)]
pub struct Metrics {
    rx: AtomicU64,
    forwarded: AtomicU64,
    delivered_locally: AtomicU64,
    dropped: [AtomicU64; DropReason::COUNT],
    tx_dropped: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rx: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            delivered_locally: AtomicU64::new(0),
            dropped: std::array::from_fn(|_| AtomicU64::new(0)),
            tx_dropped: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Adds `c` and resets it.
    pub fn flush(&self, c: &mut Counts) {
        let add = |a: &AtomicU64, v: u64| {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.rx, c.rx);
        add(&self.forwarded, c.forwarded);
        add(&self.delivered_locally, c.delivered_locally);
        for (a, v) in self.dropped.iter().zip(c.dropped) {
            add(a, v);
        }
        add(&self.tx_dropped, c.tx_dropped);
        *c = Counts::default();
    }

    /// Counts transmit copies an egress port refused.
    pub(crate) fn count_tx_dropped(&self, n: u64) {
        self.tx_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// A consistent-enough copy (each counter read once, relaxed).
    pub fn snapshot(&self) -> Counts {
        Counts {
            rx: self.rx.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            delivered_locally: self.delivered_locally.load(Ordering::Relaxed),
            dropped: std::array::from_fn(|i| self.dropped[i].load(Ordering::Relaxed)),
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Drops by reason (indexed by `DropReason as usize`), as plain numbers: kept per round by the
/// data plane for one port or peer, and the copy a snapshot reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropCounts(pub [u64; DropReason::COUNT]);

impl Default for DropCounts {
    fn default() -> Self {
        Self([0; DropReason::COUNT])
    }
}

impl DropCounts {
    /// Counts one drop for `reason`.
    #[inline(always)]
    pub(crate) fn count(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }

    /// Drops for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// Every reason with a non-zero count, in reason order.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }

    /// The non-zero counts by label (`"spoofed_mac"`), as the control protocol and the web
    /// view show them.
    pub fn by_label(&self) -> std::collections::BTreeMap<String, u64> {
        self.nonzero()
            .map(|(r, n)| (r.label().to_string(), n))
            .collect()
    }

    /// The counts of [`DropCounts::by_label`]'s map (labels this version does not know are
    /// left out: another version wrote them).
    pub fn from_labels(labels: &std::collections::BTreeMap<String, u64>) -> Self {
        let mut c = Self::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            c.0[i] = labels.get(r.label()).copied().unwrap_or(0);
        }
        c
    }
}

/// Per-port (and per-peer) counters, readable from any thread; written by the data plane once
/// per batch.
#[derive(Debug)]
pub struct PortMetrics {
    /// Frames received.
    pub(crate) rx_frames: AtomicU64,
    /// Bytes received.
    pub(crate) rx_bytes: AtomicU64,
    /// Received frames dropped by the pipeline.
    pub(crate) rx_dropped: AtomicU64,
    /// Frames sent.
    pub(crate) tx_frames: AtomicU64,
    /// Bytes sent.
    pub(crate) tx_bytes: AtomicU64,
    /// Frames for this port dropped at egress.
    pub(crate) tx_dropped: AtomicU64,
    /// Frames of this port dropped by the pipeline, by reason (indexed by `DropReason as
    /// usize`).
    pub(crate) dropped: [AtomicU64; DropReason::COUNT],
}

impl Default for PortMetrics {
    fn default() -> Self {
        Self {
            rx_frames: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            rx_dropped: AtomicU64::new(0),
            tx_frames: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            tx_dropped: AtomicU64::new(0),
            dropped: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A plain copy of [`PortMetrics`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortCounts {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Received frames dropped by the pipeline.
    pub rx_dropped: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames for this port dropped at egress.
    pub tx_dropped: u64,
    /// Drops by reason (not serialized here: the control protocol shows the non-zero ones by
    /// label, see [`DropCounts::by_label`]).
    #[serde(skip)]
    pub dropped: DropCounts,
}

impl PortCounts {
    /// Counts a received frame dropped for `reason`.
    #[inline(always)]
    pub(crate) fn count_rx_drop(&mut self, reason: DropReason) {
        self.rx_dropped += 1;
        self.dropped.count(reason);
    }
}

impl PortMetrics {
    /// Adds `c` and resets it.
    pub fn flush(&self, c: &mut PortCounts) {
        let pairs = [
            (&self.rx_frames, c.rx_frames),
            (&self.rx_bytes, c.rx_bytes),
            (&self.rx_dropped, c.rx_dropped),
            (&self.tx_frames, c.tx_frames),
            (&self.tx_bytes, c.tx_bytes),
            (&self.tx_dropped, c.tx_dropped),
        ];
        for (a, v) in pairs {
            if v != 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
        // A reason is only counted with `rx_dropped` or `tx_dropped`: a round that dropped
        // nothing neither reads nor resets the reasons (a port flushes every round).
        let dropped = c.rx_dropped != 0 || c.tx_dropped != 0;
        if dropped {
            for (a, v) in self.dropped.iter().zip(c.dropped.0) {
                if v != 0 {
                    a.fetch_add(v, Ordering::Relaxed);
                }
            }
        }
        let PortCounts {
            rx_frames,
            rx_bytes,
            rx_dropped,
            tx_frames,
            tx_bytes,
            tx_dropped,
            dropped: reasons,
        } = c;
        for v in [
            rx_frames, rx_bytes, rx_dropped, tx_frames, tx_bytes, tx_dropped,
        ] {
            *v = 0;
        }
        if dropped {
            *reasons = DropCounts::default();
        }
    }

    /// A copy of the counters (each read once, relaxed).
    pub fn snapshot(&self) -> PortCounts {
        PortCounts {
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            rx_dropped: self.rx_dropped.load(Ordering::Relaxed),
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            tx_dropped: self.tx_dropped.load(Ordering::Relaxed),
            dropped: DropCounts(std::array::from_fn(|i| {
                self.dropped[i].load(Ordering::Relaxed)
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_by_label_read_back_and_unknown_labels_are_left_out() {
        let mut d = DropCounts::default();
        d.count(DropReason::SpoofedMac);
        d.count(DropReason::SpoofedMac);
        d.count(DropReason::PortGone);
        let mut labels = d.by_label();
        assert_eq!(DropCounts::from_labels(&labels), d);
        labels.insert("a_reason_of_another_version".into(), 7);
        assert_eq!(DropCounts::from_labels(&labels), d);
    }

    #[test]
    fn labels_are_unique() {
        let mut labels: Vec<_> = DropReason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn flush_accumulates_and_resets() {
        let m = Metrics::default();
        let mut c = Counts {
            rx: 3,
            forwarded: 1,
            delivered_locally: 1,
            ..Counts::default()
        };
        c.dropped[DropReason::SpoofedMac as usize] = 1;
        m.flush(&mut c);
        assert_eq!(c.rx, 0);
        m.count_tx_dropped(4);
        let s = m.snapshot();
        assert_eq!((s.rx, s.forwarded, s.delivered_locally), (3, 1, 1));
        assert_eq!(s.dropped(DropReason::SpoofedMac), 1);
        assert_eq!(s.tx_dropped, 4);
        assert_eq!(s.rx, s.forwarded + s.delivered_locally + s.dropped_total());
    }

    #[test]
    fn port_drops_by_reason_are_flushed_with_the_batch() {
        let m = PortMetrics::default();
        let mut c = PortCounts {
            rx_frames: 4,
            ..PortCounts::default()
        };
        c.count_rx_drop(DropReason::SpoofedMac);
        c.count_rx_drop(DropReason::SpoofedMac);
        c.count_rx_drop(DropReason::Malformed);
        m.flush(&mut c);
        assert_eq!(c, PortCounts::default(), "reset after the flush");
        let s = m.snapshot();
        assert_eq!((s.rx_frames, s.rx_dropped), (4, 3));
        assert_eq!(s.dropped.get(DropReason::SpoofedMac), 2);
        let labels = s.dropped.by_label();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels["malformed"], 1);
        let json = serde_json::to_string(&s).expect("json");
        assert!(
            !json.contains("dropped\":["),
            "the reasons are not in the counters' JSON: {json}"
        );
    }
}
