//! The pod network model end to end, in one test binary (each binary links the whole crate),
//! one module per subject: smoltcp pods on an in-memory switch (`pod_model`, `multi_node`, no
//! root), and real pods in network namespaces, also beside the kernel's own VXLAN
//! (`real_pods`, `kernel_interop`, root: `#[root_test]`).

mod common;

mod kernel_interop;
mod multi_node;
mod pod_model;
mod real_pods;
