//! podswitch's integration tests against the real daemon: one test binary (each binary links
//! the whole crate), one module per subject. Most need root (`#[root_test]`): real network
//! namespaces, TAP devices, veth links, nftables, etcd, tshark and a browser. The podman tests
//! are a binary of their own (`podman.rs`): they compare machine-wide state (`/run/netns`)
//! before and after, which other tests running beside them would change.

#[path = "../common/mod.rs"]
mod common;

mod capture;
mod cluster;
mod cni;
mod config_truth;
mod conntrack_flood;
mod control_socket;
mod daemon;
mod fast_path;
mod fixtures;
mod host;
mod metrics;
mod misleading;
mod missing_rules;
mod node_lock;
mod pinning;
mod restart;
mod stalls;
mod start_stop;
mod upgrade_safety;
