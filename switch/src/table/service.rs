//! Services (ClusterIP): a virtual IP and port in front of a set of backends, as the data plane
//! reads them. Compiled from the control plane's `ServiceSpec`s and published with the
//! topology (copy-on-write; a change never disturbs a reader).
//!
//! A service is found by `(VIP, port, protocol)`; its backend for a new flow by its Maglev
//! table ([`super::maglev`]), or by the client address alone with `client_ip` affinity.

// Wired into the topology and the pipeline as Order 9 proceeds.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::FastMap;

/// Transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The IPv4 protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// The protocol with IPv4 protocol number `n`, if a service can have it.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

/// How a service picks the backend of a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    /// By the flow's 5-tuple (each connection on its own).
    #[default]
    None,
    /// By the client's address: every flow of one client to one backend (Kubernetes'
    /// `sessionAffinity: ClientIP`).
    ClientIp,
}

/// A service as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name (control plane and listings only).
    pub name: String,
    /// The virtual IP.
    pub vip: Ipv4Addr,
    /// The virtual port.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// Where its flows go, in order (indices are backend ids in the Maglev table and in
    /// connection tracking).
    pub backends: Vec<SocketAddrV4>,
    /// How new flows pick a backend.
    pub affinity: Affinity,
}

/// A compiled service: the spec and its Maglev lookup table.
#[derive(Debug)]
pub struct CompiledService {
    /// The service.
    pub service: Service,
    /// Stable id of this service (connection-tracking entries refer to it).
    pub id: u32,
    /// Maglev lookup table: `table[hash % len]` is a backend index. Empty without backends.
    pub(crate) maglev: Vec<u16>,
}

/// Every service of the node, by key.
#[derive(Debug, Clone, Default)]
pub struct Services {
    pub(crate) by_key: FastMap<(u32, u16, u8), Arc<CompiledService>>,
}

impl Services {
    /// The service at `vip:port` for protocol number `proto`.
    #[inline]
    pub(crate) fn get(&self, vip: Ipv4Addr, port: u16, proto: u8) -> Option<&Arc<CompiledService>> {
        self.by_key.get(&(u32::from(vip), port, proto))
    }

    /// True if no service is defined (the data path skips every service check).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
