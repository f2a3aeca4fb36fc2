//! Services (ClusterIP): a virtual IP and port in front of a set of backends, as the data plane
//! reads them. Compiled from the control plane's `ServiceSpec`s and published with the
//! topology (copy-on-write; a change never disturbs a reader).
//!
//! A service is found by `(VIP, port, protocol)`; its backend for a new flow by its Maglev
//! table ([`super::maglev`]), or by the client address alone with `client_ip` affinity.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use super::maglev;
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
pub struct CompiledService {
    /// The service.
    pub service: Service,
    /// Stable id of this service (connection-tracking entries refer to it).
    pub id: u32,
    /// Maglev lookup table: each slot is a backend index (see [`maglev::lookup`]). Empty
    /// without backends.
    pub(crate) maglev: Vec<u16>,
    /// Backend address and port (packed) -> its index: a tracked flow checks in O(1) that its
    /// backend is still one (its index may have moved).
    backend_index: FastMap<u64, u16>,
}

/// A backend's address and port as one key.
#[inline]
fn backend_key(b: &SocketAddrV4) -> u64 {
    (u64::from(u32::from(*b.ip())) << 16) | u64::from(b.port())
}

impl CompiledService {
    /// The index of `backend` among the service's backends, if it is one.
    #[inline]
    pub fn index_of(&self, backend: &SocketAddrV4) -> Option<u16> {
        self.backend_index.get(&backend_key(backend)).copied()
    }

    /// Compiles `service` under `id`: builds its Maglev table (at most
    /// [`MAX_BACKENDS`](super::MAX_BACKENDS) backends are used; the topology refuses more).
    pub fn new(service: Service, id: u32) -> Self {
        let maglev = maglev::build(&service.backends);
        let backend_index = service
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (backend_key(b), i as u16))
            .collect();
        Self {
            service,
            id,
            maglev,
            backend_index,
        }
    }

    /// Slots of the Maglev table (0 without backends).
    pub fn table_len(&self) -> usize {
        self.maglev.len()
    }
}

impl fmt::Debug for CompiledService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the table: thousands of slots.
        f.debug_struct("CompiledService")
            .field("service", &self.service)
            .field("id", &self.id)
            .field("maglev_len", &self.maglev.len())
            .finish()
    }
}

/// Seeds of the flow and client hashes: fixed, so every node and run agrees.
const SEED_FLOW: u64 = 0x6a09_e667_f3bc_c908;
const SEED_CLIENT: u64 = 0xbb67_ae85_84ca_a73b;

/// The hash of a flow's 5-tuple that picks its backend: stable across runs and nodes, every
/// input bit affecting every output bit (two rounds of a full-avalanche finaliser).
#[inline]
pub(crate) fn flow_hash(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> u64 {
    let addrs = (u64::from(u32::from(src)) << 32) | u64::from(u32::from(dst));
    let rest = (u64::from(sport) << 32) | (u64::from(dport) << 16) | u64::from(proto);
    maglev::hash64(maglev::hash64(addrs, SEED_FLOW) ^ rest, SEED_FLOW)
}

/// The hash of a client address alone (`client_ip` affinity).
#[inline]
fn client_hash(client: Ipv4Addr) -> u64 {
    maglev::hash64(u64::from(u32::from(client)), SEED_CLIENT)
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
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// How many services are defined.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// The backend of a new flow of `svc`, as `(backend index, address)`: by the client address
    /// alone with `client_ip` affinity, else by `flow_hash` (the hash of the 5-tuple). `None`
    /// if the service has no backends.
    #[inline]
    pub fn pick(
        &self,
        svc: &CompiledService,
        flow_hash: u64,
        client_ip: Ipv4Addr,
    ) -> Option<(u16, SocketAddrV4)> {
        let h = match svc.service.affinity {
            Affinity::None => flow_hash,
            Affinity::ClientIp => client_hash(client_ip),
        };
        let i = maglev::lookup(&svc.maglev, h)?;
        Some((i, *svc.service.backends.get(usize::from(i))?))
    }

    /// True if service `id` is the one at `vip` for protocol `proto` and has `backend` among
    /// its backends (a tracked flow's decision still stands).
    pub(crate) fn serves(
        &self,
        id: u32,
        vip: SocketAddrV4,
        proto: u8,
        backend: &SocketAddrV4,
    ) -> bool {
        self.get(*vip.ip(), vip.port(), proto)
            .is_some_and(|s| s.id == id && s.index_of(backend).is_some())
    }

    /// The service named `name`.
    pub(crate) fn by_name(&self, name: &str) -> Option<&Arc<CompiledService>> {
        self.by_key.values().find(|s| s.service.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(backends: usize, affinity: Affinity) -> CompiledService {
        CompiledService::new(
            Service {
                name: "web".into(),
                vip: Ipv4Addr::new(10, 96, 0, 10),
                port: 80,
                proto: Proto::Tcp,
                backends: (0..backends)
                    .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 10 + i as u8), 8080))
                    .collect(),
                affinity,
            },
            7,
        )
    }

    fn client(i: u32) -> (Ipv4Addr, u16) {
        (
            Ipv4Addr::from(0x0af4_0200 + i % 200),
            32768 + (i / 200) as u16,
        )
    }

    #[test]
    fn flow_hash_is_stable_and_sensitive_to_every_field() {
        let (a, b) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 96, 0, 10));
        let h = flow_hash(a, 40000, b, 80, 6);
        assert_eq!(h, flow_hash(a, 40000, b, 80, 6));
        assert_eq!(
            h, 0xc44a_54cf_4917_1de8,
            "pinned: every node hashes alike: {h:#x}"
        );
        let others = [
            flow_hash(Ipv4Addr::new(10, 244, 1, 6), 40000, b, 80, 6),
            flow_hash(a, 40001, b, 80, 6),
            flow_hash(a, 40000, Ipv4Addr::new(10, 96, 0, 11), 80, 6),
            flow_hash(a, 40000, b, 81, 6),
            flow_hash(a, 40000, b, 80, 17),
            flow_hash(b, 80, a, 40000, 6),
        ];
        for o in others {
            // A one-bit change of input flips about half the output bits.
            let flipped = (o ^ h).count_ones();
            assert!((16..=48).contains(&flipped), "{o:#x} vs {h:#x}");
        }
    }

    #[test]
    fn pick_spreads_flows_and_keeps_a_flow_on_its_backend() {
        let s = svc(3, Affinity::None);
        let services = Services::default();
        let vip = s.service.vip;
        let mut per_backend = [0usize; 3];
        for i in 0..30_000 {
            let (ip, port) = client(i);
            let h = flow_hash(ip, port, vip, 80, 6);
            let (b, addr) = services.pick(&s, h, ip).expect("backend");
            assert_eq!(addr, s.service.backends[usize::from(b)]);
            assert_eq!(
                services.pick(&s, h, ip),
                Some((b, addr)),
                "same flow, same backend"
            );
            per_backend[usize::from(b)] += 1;
        }
        for n in per_backend {
            assert!((9_000..11_000).contains(&n), "{per_backend:?}");
        }
    }

    #[test]
    fn client_ip_affinity_ignores_the_rest_of_the_flow() {
        let s = svc(5, Affinity::ClientIp);
        let services = Services::default();
        let mut seen = std::collections::HashSet::new();
        for c in 0..200u32 {
            let ip = Ipv4Addr::from(0x0af4_0200 + c);
            let first = services.pick(&s, 0, ip).expect("backend");
            for port in 1000..1010u16 {
                let h = flow_hash(ip, port, s.service.vip, 80, 6);
                assert_eq!(services.pick(&s, h, ip), Some(first));
            }
            seen.insert(first.0);
        }
        assert_eq!(seen.len(), 5, "clients spread over every backend");
    }

    #[test]
    fn no_backends_no_pick() {
        let s = svc(0, Affinity::None);
        assert_eq!(s.table_len(), 0);
        assert_eq!(Services::default().pick(&s, 42, Ipv4Addr::LOCALHOST), None);
        assert!(format!("{s:?}").contains("maglev_len: 0"));
    }
}
