//! Peers on the fast path: the pod CIDRs the program encapsulates to (`routes`) and the
//! underlay addresses it decapsulates from (`peers`), each peer with its counters
//! (`peer_stats`). Invariants: a peer's two entries are written and removed together, and
//! are out of the maps while a capture of it runs (withdrawn, counted).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use aya::maps::PerCpuValues;

use crate::maps::{ip_key, PeerEntry, PeerStats, MAX_PEERS};
use crate::{first_withdrawal, last_restore, map_err, FastPath, FastPathError};

/// A peer node as the fast path tunnels to it.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// Its name (the key [`FastPath`] keeps it under).
    pub name: &'a str,
    /// Its underlay address.
    pub underlay: Ipv4Addr,
    /// Its VTEP MAC (the inner frames' destination).
    pub vtep_mac: [u8; 6],
    /// Its pod CIDR: address and prefix length.
    pub cidr: (Ipv4Addr, u8),
}

/// A peer on the fast path.
#[derive(Debug)]
pub(crate) struct PeerAttached {
    entry: PeerEntry,
    underlay: Ipv4Addr,
    cidr: (Ipv4Addr, u8),
    /// Withdrawals not yet restored (captures of the peer running): while any, its entries
    /// are out of the maps.
    withdrawals: u32,
}

/// The LPM key of a CIDR.
fn route_key((addr, len): (Ipv4Addr, u8)) -> aya::maps::lpm_trie::Key<u32> {
    aya::maps::lpm_trie::Key::new(u32::from(len), ip_key(addr))
}

impl FastPath {
    /// Puts a peer on the fast path (replacing one of the same name): pods' packets to its
    /// CIDR are encapsulated to it by the program, and its VXLAN for this node's pods is
    /// decapsulated there.
    pub fn add_peer(&mut self, peer: &Peer<'_>) -> Result<(), FastPathError> {
        self.remove_peer(peer.name);
        let used: BTreeSet<u16> = self.peers_attached.values().map(|p| p.entry.slot).collect();
        let slot = (0..u16::try_from(MAX_PEERS).unwrap_or(u16::MAX))
            .find(|s| !used.contains(s))
            .ok_or(FastPathError::Full { max: MAX_PEERS })?;
        let zeros = PerCpuValues::try_from(vec![PeerStats::default(); self.cpus]).map_err(|e| {
            FastPathError::Map {
                map: "peer_stats",
                detail: e.to_string(),
            }
        })?;
        self.peer_stats
            .set(u32::from(slot), zeros, 0)
            .map_err(map_err("peer_stats"))?;
        let attached = PeerAttached {
            entry: PeerEntry {
                vtep_mac: peer.vtep_mac,
                slot,
                underlay_ip: ip_key(peer.underlay),
            },
            underlay: peer.underlay,
            cidr: peer.cidr,
            withdrawals: 0,
        };
        self.write_peer(&attached)?;
        self.peers_attached.insert(peer.name.into(), attached);
        Ok(())
    }

    fn write_peer(&mut self, p: &PeerAttached) -> Result<(), FastPathError> {
        self.peers
            .insert(ip_key(p.underlay), p.entry, 0)
            .map_err(map_err("peers"))?;
        if let Err(e) = self.routes.insert(&route_key(p.cidr), p.entry, 0) {
            let _ = self.peers.remove(&ip_key(p.underlay));
            return Err(map_err("routes")(e));
        }
        Ok(())
    }

    fn erase_peer(&mut self, p: &PeerAttached) {
        let _ = self.routes.remove(&route_key(p.cidr));
        // Another peer may have taken the address since (a move): leave its entry.
        if !self
            .peers_attached
            .values()
            .any(|o| o.underlay == p.underlay)
        {
            let _ = self.peers.remove(&ip_key(p.underlay));
        }
    }

    /// Withdraws a peer from the fast path while a capture of it runs: what goes to it and
    /// comes from it crosses the switch. Counted, as [`FastPath::withdraw`].
    pub fn withdraw_peer(&mut self, name: &str) {
        let Some(mut p) = self.peers_attached.remove(name) else {
            return;
        };
        if first_withdrawal(&mut p.withdrawals) {
            self.erase_peer(&p);
        }
        self.peers_attached.insert(name.into(), p);
    }

    /// Ends one [`FastPath::withdraw_peer`]al; the last puts the peer back.
    pub fn restore_peer(&mut self, name: &str) -> Result<(), FastPathError> {
        let Some(p) = self.peers_attached.get_mut(name) else {
            return Ok(());
        };
        if !last_restore(&mut p.withdrawals) {
            return Ok(());
        }
        let p = PeerAttached { ..*p };
        self.write_peer(&p)
    }

    /// Takes a peer off the fast path: its CIDR's packets go up to the switch again. Unknown
    /// peers are ignored.
    pub fn remove_peer(&mut self, name: &str) {
        if let Some(p) = self.peers_attached.remove(name) {
            if p.withdrawals == 0 {
                self.erase_peer(&p);
            }
        }
    }

    /// What the fast path carried to and from peer `name`, summed over CPUs.
    pub fn peer_stats(&self, name: &str) -> Option<PeerStats> {
        let p = self.peers_attached.get(name)?;
        let per_cpu = self.peer_stats.get(&u32::from(p.entry.slot), 0).ok()?;
        let mut sum = PeerStats::default();
        for s in per_cpu.iter() {
            sum.tx_packets += s.tx_packets;
            sum.tx_bytes += s.tx_bytes;
            sum.rx_packets += s.rx_packets;
            sum.rx_bytes += s.rx_bytes;
        }
        Some(sum)
    }
}
