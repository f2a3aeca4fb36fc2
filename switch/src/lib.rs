//! podswitch: a userspace packet switch for Kubernetes-style pod networking.
//!
//! The control plane over the data plane of the `podswitch-dataplane` crate (re-exported here
//! under its module names: `wire`, `counters`, `table`, `gso`, `pipeline`, `port`, `switch`).
//! docs/architecture.md says which folder holds what.

#![warn(missing_docs)]
// Only the files that need it allow `unsafe` (namespaces, the node lock, the upgrade's
// descriptors and guard, the control socket's peer, `malloc_trim`), each with
// `#![allow(unsafe_code)]` and a SAFETY comment per block.
#![deny(unsafe_code)]

pub mod cluster;
pub mod cni;
pub mod config;
pub mod control;
pub mod daemon;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod pcap;

// The data plane lives in its own crate; the control plane uses its modules under their names.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use podswitch_dataplane::testutil;
pub use podswitch_dataplane::{counters, gso, pipeline, port, switch, table, wire};
