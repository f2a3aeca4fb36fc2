//! flannel's etcd layout and formats (as in flannel v0.28.9, etcd v3 API), so that podswitch
//! and flannel nodes can share one prefix:
//!
//! - `<prefix>/config`: the network config, [`NetworkConfig::parse`]. Go's `encoding/json`
//!   matches field names case-insensitively, so `network` is `Network` here too.
//! - `<prefix>/subnets/10.244.5.0-24`: one lease per node, [`subnet_key`] and
//!   [`parse_subnet_key`]; the value is [`LeaseAttrs`], written byte for byte as flannel writes it.
//!   The subnet is only in the key and the expiry only in the etcd lease attached to it.
//! - [`candidates`]: the subnets a node tries to lease, in flannel's order.
//! - [`Lease::to_peer_spec`]: a lease as the crate's one peer shape, so leases go down the same
//!   path as `peer add`.
//!
//! Split by role: `keys` (the key layout), `config` (the network config and the order in which
//! a node picks its subnet), `lease` (a lease's value and the peer it describes), `json` (Go's
//! case-insensitive field matching, shared by the two value formats).
//!
//! Pure: nothing here talks to etcd.

mod config;
mod json;
mod keys;
mod lease;

pub(crate) use config::{candidates, Candidate, NetworkConfig};
pub(crate) use keys::{config_key, parse_subnet_key, subnet_key, subnets_key};
pub(crate) use lease::{Lease, LeaseAttrs};

/// flannel's default `--etcd-prefix`.
pub(crate) const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// The one backend podswitch speaks.
pub(crate) const BACKEND_VXLAN: &str = "vxlan";
/// flannel's backend when the config has no `Backend` (its code says udp; its docs say vxlan).
const BACKEND_MISSING: &str = "udp";
/// flannel's default VXLAN network identifier.
pub(crate) const DEFAULT_VNI: u32 = 1;
/// The VXLAN port flannel gets when `Backend.Port` is 0 or absent (the kernel's default).
pub(crate) const DEFAULT_PORT: u16 = 8472;
/// Largest VNI (24 bits).
const MAX_VNI: u32 = (1 << 24) - 1;
/// Prefix of the peer names made from leases: `etcd-10.244.5.0-24`.
pub(crate) const PEER_NAME_PREFIX: &str = "etcd-";

/// What is wrong, and with which key (`Network`, `Backend.Type`, `subnets/<key>`, `PublicIP`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub(crate) struct FlannelError {
    /// The config field, lease field or etcd key at fault.
    pub(crate) key: String,
    /// Why.
    pub(crate) reason: String,
}

impl FlannelError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
