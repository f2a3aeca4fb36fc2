//! podswitch's data plane: everything a frame crosses, and nothing else.
//!
//! Layers, from the wire up (docs/architecture.md says which folder holds what):
//! - [`wire`]: checked, zero-copy header views; never panics on any input.
//! - [`counters`]: what happened to every frame (drops by reason, per-port counts); a leaf.
//! - [`table`]: forwarding state (MAC table, topology, services, connection tracking), read
//!   lock-free on every frame.
//! - [`gso`]: segmentation of superframes for the tunnel and coalescing of received TCP
//!   segments for the pods.
//! - [`pipeline`]: the sans-IO forwarding decision, `(ingress, frame) -> Action`.
//! - [`port`]: I/O adapters behind one trait; with [`switch`]'s readiness set (epoll, and
//!   `poll(2)` on the ports' borrowed descriptors when a round sleeps), the only code that
//!   touches a file descriptor.
//! - [`switch`]: the worker threads that move batches between ports through the pipeline, and
//!   [`Switch`], the handle to add and remove ports.
//!
//! Dependencies point down that list and never up. The crate has no async runtime, no etcd,
//! HTTP or metrics exposition: those are the control plane's (the `podswitch` crate), which
//! drives this one through [`Switch`] and the tables.

#![warn(missing_docs)]
// Only the files that need it allow `unsafe` (the TAP port's ioctls and vectored I/O, and the
// test helpers' `geteuid`), each with `#![allow(unsafe_code)]` and a SAFETY comment per block.
#![deny(unsafe_code)]

pub mod counters;
pub mod gso;
pub mod pipeline;
pub mod port;
pub mod switch;
pub mod table;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod wire;

pub use switch::Switch;
