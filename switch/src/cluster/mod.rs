//! The cluster control plane (Order 7): node subnets leased and peers discovered in etcd, in
//! flannel's layout, so that podswitch nodes and flannel nodes can share one cluster and one
//! etcd.
//!
//! - [`flannel`]: flannel's keys and value formats, its network config with its defaults and
//!   checks, and the order in which a node picks its subnet. Pure: no etcd, no I/O.
//!
//! The etcd client (leasing, renewal, listing and watching the `subnets/` prefix, feeding the
//! peers down the same path as `peer add`) comes next and builds on [`flannel`].

pub(crate) mod flannel;
