//! podswitch: a userspace packet switch for Kubernetes-style pod networking.
//!
//! Layers, from the wire up (docs/architecture.md says which folder holds what):
//! - [`wire`]: checked, zero-copy header views; never panics on any input.
//! - [`table`]: forwarding state (MAC table, topology), read lock-free on every frame.
//! - [`gso`]: segmentation of superframes for the tunnel and coalescing of received TCP
//!   segments for the pods.
//! - [`pipeline`]: the sans-IO forwarding decision, `(ingress, frame) -> Action`.
//! - [`port`]: I/O adapters behind one trait; only this layer touches file descriptors.
//! - [`dataplane`]: the worker threads that move batches between ports through the pipeline,
//!   and the control handle to add and remove ports.
//! - `cluster`: the control plane shared with flannel (node subnets and peers in etcd).

#![warn(missing_docs)]

pub mod cluster;
pub mod cni;
pub mod config;
pub mod control;
pub mod dataplane;
#[doc(hidden)]
pub mod fuzzing;
pub mod gso;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod pcap;
pub mod pipeline;
pub mod port;
pub mod table;
#[doc(hidden)]
pub mod testutil;
pub mod wire;
