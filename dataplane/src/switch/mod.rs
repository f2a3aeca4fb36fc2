//! The data plane: worker threads that move frames between ports through the pipeline, and
//! the handle the control plane drives them with.
//!
//! Which file holds what:
//! - [`round`]: [`Dataplane`], the per-thread state, and its round `poll_once` (receive a batch
//!   per ready port, decide each frame, hand it on, transmit, publish counters);
//! - [`ports`]: the ports a data plane holds and the one verb that hands a frame to a port
//!   (`Ports::send`), with segmenting for ports that cannot take superframes;
//! - [`tunnel`]: the VXLAN tunnel's queue (encapsulation) and receive side (decapsulation,
//!   coalescing into superframes);
//! - [`capture`]: copies of frames for `podswitch capture` (a bounded ring per capture,
//!   filled by the workers, drained by the control plane);
//! - [`readiness`]: the epoll set that says which ports have frames waiting;
//! - [`worker`]: the thread loop and its idle policy (spin, yield, sleep), CPU pinning;
//! - [`worker_time`]: how each worker's time goes (busy, idle, stalls);
//! - [`context`]: what the handle and the workers share (tables, the workers' command lines,
//!   the registry of attached ports and reserved ids, the stop flag): the workers' only view
//!   of the switch;
//! - [`handle`]: [`Switch`], the control handle (start, attach, detach, peers, capture).
//!
//! Data flows one way: port -> pipeline -> port or tunnel. The control plane changes the
//! tables and sends the workers commands; it never touches a port a worker holds.

mod capture;
mod context;
mod handle;
mod ports;
mod readiness;
mod round;
mod tunnel;
mod worker;
mod worker_time;

pub use capture::{CaptureTap, CaptureTarget, Record, CAPTURE_SLOTS};
pub use context::PortRecord;
pub use handle::{Capture, Switch, SwitchConfig, SwitchError};
pub use round::Dataplane;
pub use worker::allowed_cpus;
