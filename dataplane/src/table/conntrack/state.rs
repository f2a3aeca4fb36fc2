//! A tracked flow's state: TCP as Linux's conntrack follows it (`nf_conntrack_proto_tcp`,
//! reduced to what a translator needs), UDP as replied or not, and what each state's timeout is.
//!
//! Invariants:
//! - A TCP flow is `Established` only after the client acknowledged the backend's SYN-ACK
//!   (or, picked up mid-stream, after the backend answered a segment that is not a SYN with
//!   one that is not a reset): a client that sends SYNs and ignores the answers leaves flows
//!   that die within a minute, never day-long ones. A flow opened by a SYN is never picked up
//!   by the backend's bare ACK (a challenge ACK to a SYN on a port it still has half-open).
//! - A client's bare SYN starts a flow over (`SynSent`) from any state but a deleted
//!   service's: only a socket that is not connected sends one, so whatever the tracking
//!   believed of the tuple's last connection, it is over.
//! - The states a flow may be evicted from before its timeout ([`FlowState::evictable`]) are
//!   those in which losing the translation costs no working connection: not yet established,
//!   reset, or closed both ways.

/// TCP flags the state machine reads.
pub(crate) use crate::wire::tcp::flags as tcp_flags;

/// Where a flow is in its life; each state has its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FlowState {
    /// TCP: the client's SYN seen, no answer yet (30 s; Linux keeps SYN_SENT 120 s, but a
    /// client's retransmitted SYN refreshes the flow, and one that expires between two is
    /// tracked again to the same backend).
    SynSent = 0,
    /// TCP: both ways seen (kube-proxy sets Linux's established timeout to 86400 s).
    Established = 1,
    /// TCP: one side's FIN seen; the other may still send (Linux: FIN_WAIT / CLOSE_WAIT, 120 s).
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
    /// TCP: the backend's SYN-ACK seen, the client's ACK not yet (Linux: SYN_RECV, 60 s).
    SynRecv = 7,
    /// TCP: the client's FIN seen first, the backend's not yet (as [`FlowState::Closing`]).
    ClosingByClient = 8,
    /// TCP: FINs seen both ways (Linux: LAST_ACK / TIME_WAIT, 120 s).
    TimeWait = 9,
    /// TCP: opened by a segment that is not a SYN (picked up mid-stream, as Linux's loose
    /// tracking does, say after a restart), no answer yet (30 s).
    PickedUp = 10,
}

impl FlowState {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::SynSent,
            1 => Self::Established,
            2 => Self::Closing,
            3 => Self::Closed,
            4 => Self::UdpUnreplied,
            5 => Self::UdpReplied,
            7 => Self::SynRecv,
            8 => Self::ClosingByClient,
            9 => Self::TimeWait,
            10 => Self::PickedUp,
            _ => Self::Ended,
        }
    }

    /// Seconds a flow in this state lives without a packet.
    pub(crate) fn timeout(self) -> u32 {
        match self {
            Self::SynSent | Self::PickedUp | Self::UdpUnreplied => 30,
            Self::SynRecv => 60,
            Self::Closing | Self::ClosingByClient | Self::TimeWait | Self::Ended => 120,
            Self::Established => 86_400,
            Self::Closed => 10,
            Self::UdpReplied => 120,
        }
    }

    /// Lower-case name for listings (Linux's names where it has one).
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::SynSent => "syn_sent",
            Self::PickedUp => "picked_up",
            Self::SynRecv => "syn_recv",
            Self::Established => "established",
            Self::Closing | Self::ClosingByClient => "closing",
            Self::TimeWait => "time_wait",
            Self::Closed => "closed",
            Self::UdpUnreplied => "unreplied",
            Self::UdpReplied => "replied",
            Self::Ended => "ended",
        }
    }

    /// True if the flow may be forgotten before its timeout when the table (or its client's
    /// share of it) is full: nothing working depends on it.
    pub(crate) fn evictable(self) -> bool {
        matches!(
            self,
            Self::SynSent
                | Self::PickedUp
                | Self::SynRecv
                | Self::UdpUnreplied
                | Self::Closed
                | Self::TimeWait
        )
    }

    /// True if a restart must track the flow again: a connection that works (TCP established
    /// or half-closed, UDP that has been answered). Without it, the backend's next segment
    /// would reach its client untranslated (and be reset). A flow still opening is picked up
    /// again by its next packet, to the same backend unless the backends changed meanwhile.
    pub(crate) fn carried_over_a_crash(self) -> bool {
        matches!(
            self,
            Self::Established | Self::Closing | Self::ClosingByClient | Self::UdpReplied
        )
    }

    /// The state after a packet with TCP `flags` (0 for UDP) in direction `reply`.
    pub(crate) fn next(self, flags: u8, reply: bool) -> Self {
        use tcp_flags::*;
        let (syn, ack, fin) = (flags & SYN != 0, flags & ACK != 0, flags & FIN != 0);
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
            // The client opens a connection on the flow's tuple: its port reused after a close,
            // a SYN retransmitted (its SYN-ACK lost), or a connection whose end the tracking
            // missed (a restart, the kernel fast path's reports not heard yet). A client's
            // stack sends a bare SYN only from a socket that is not connected, so the old
            // connection is over.
            Self::Closing
            | Self::ClosingByClient
            | Self::TimeWait
            | Self::Closed
            | Self::Established
            | Self::SynRecv
            | Self::PickedUp
                if !reply && syn && !ack =>
            {
                Self::SynSent
            }
            Self::Closed => self,
            Self::SynSent | Self::PickedUp | Self::SynRecv | Self::Established if fin => {
                if reply {
                    Self::Closing
                } else {
                    Self::ClosingByClient
                }
            }
            // The other side's FIN.
            Self::Closing if fin && !reply => Self::TimeWait,
            Self::ClosingByClient if fin && reply => Self::TimeWait,
            Self::SynSent | Self::PickedUp if reply && syn => Self::SynRecv,
            // Picked up mid-stream (loose tracking): the backend answered a segment that was
            // not a SYN with one that is not a SYN either. (A flow opened by a SYN is not:
            // its backend's bare ACK answers a SYN it did not expect.)
            Self::PickedUp if reply => Self::Established,
            // The client's ACK of the SYN-ACK completes the handshake.
            Self::SynRecv if !reply && ack && !syn => Self::Established,
            s => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::FlowState::{self, *};

    /// The states a TCP flow goes through for `packets` (flags, reply), from a client's SYN.
    fn walk(packets: &[(u8, bool)]) -> Vec<FlowState> {
        let mut s = SynSent;
        packets
            .iter()
            .map(|&(f, r)| {
                s = s.next(f, r);
                s
            })
            .collect()
    }

    #[test]
    fn a_syn_ack_alone_does_not_establish() {
        assert_eq!(
            walk(&[(SYN | ACK, true), (SYN | ACK, true), (SYN, false)]),
            [SynRecv, SynRecv, SynSent]
        );
        assert!(SynRecv.evictable() && SynRecv.timeout() == 60);
        assert!(!SynRecv.carried_over_a_crash());
        assert!(SynSent.timeout() <= 30, "an unanswered SYN is short-lived");
    }

    #[test]
    fn a_handshake_and_a_close_both_ways() {
        assert_eq!(
            walk(&[
                (SYN | ACK, true),
                (ACK, false),
                (ACK, true),
                (FIN | ACK, false),
                (ACK, true),
                (FIN | ACK, true),
                (ACK, false),
            ]),
            [
                SynRecv,
                Established,
                Established,
                ClosingByClient,
                ClosingByClient,
                TimeWait,
                TimeWait
            ]
        );
        // The backend closing first.
        assert_eq!(
            walk(&[
                (SYN | ACK, true),
                (ACK, false),
                (FIN | ACK, true),
                (FIN, false)
            ]),
            [SynRecv, Established, Closing, TimeWait]
        );
        // A half-closed flow still carries data: not evictable, carried over a crash.
        for s in [Closing, ClosingByClient, Established] {
            assert!(!s.evictable() && s.carried_over_a_crash(), "{s:?}");
        }
        assert!(TimeWait.evictable() && !TimeWait.carried_over_a_crash());
    }

    #[test]
    fn picked_up_mid_stream_resets_and_reuse() {
        assert_eq!(PickedUp.next(ACK, true), Established, "loose pick-up");
        assert_eq!(PickedUp.next(SYN | ACK, true), SynRecv);
        assert_eq!(
            walk(&[(ACK, true), (ACK, true)]),
            [SynSent, SynSent],
            "a challenge ACK to a SYN does not establish"
        );
        assert_eq!(walk(&[(RST | ACK, true)]), [Closed]);
        assert_eq!(walk(&[(SYN | ACK, true), (RST, false)]), [SynRecv, Closed]);
        // A port reused after a close starts over; a reset flow stays reset otherwise.
        assert_eq!(TimeWait.next(SYN, false), SynSent);
        assert_eq!(Closed.next(SYN, false), SynSent);
        // An open connection's tuple opened again by the client: the old one is over.
        assert_eq!(Established.next(SYN, false), SynSent);
        assert_eq!(PickedUp.next(SYN, false), SynSent);
        assert_eq!(
            Established.next(SYN | ACK, false),
            Established,
            "not a bare SYN"
        );
        assert_eq!(
            Established.next(SYN | ACK, true),
            Established,
            "nor the backend's"
        );
        assert_eq!(Closed.next(ACK, true), Closed);
        assert_eq!(Ended.next(SYN, false), Ended);
    }

    #[test]
    fn udp_follows_replies() {
        assert_eq!(UdpUnreplied.next(0, false), UdpUnreplied);
        assert_eq!(UdpUnreplied.next(0, true), UdpReplied);
        assert!(UdpUnreplied.evictable() && !UdpUnreplied.carried_over_a_crash());
        assert!(!UdpReplied.evictable() && UdpReplied.carried_over_a_crash());
    }

    #[test]
    fn codes_round_trip() {
        for s in [
            SynSent,
            PickedUp,
            SynRecv,
            Established,
            Closing,
            ClosingByClient,
            TimeWait,
            Closed,
            UdpUnreplied,
            UdpReplied,
            Ended,
        ] {
            assert_eq!(FlowState::from_u8(s as u8), s);
        }
    }
}
