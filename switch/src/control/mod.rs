//! The runtime API of a node: JSON lines on a Unix socket (`podswitch pod add|del|list`,
//! `peer ...`, `service add|del|list`, `conntrack`, `fdb`, `status`, `capture`, `upgrade` talk
//! to `podswitch run` through it). Split by role:
//!
//! - `protocol`: the requests, the responses and the capture stream's frames (the wire shape);
//! - `server`: the socket (bind, accept, connection slots in `slots`, the line limit) handing
//!   each request to a [`ControlHandler`]; `handler`: what the socket serves (the running
//!   node with its upgrade and cluster status, or the daemon still starting); `dispatch`: how
//!   each request is carried out on the node;
//! - `client`: finding the socket, one call, and `podswitch upgrade`'s ask-and-wait (`peer`:
//!   the daemon's pid, liveness and log, to notice an upgrade that failed);
//! - `capture`: a capture's stream, the server's end and the client's (a pcap file).
//!
//! Dependencies go one way: the control plane calls the node (`crate::node`); the node never
//! imports from here.
//!
//! Invariants: the client writes one [`Request`] per line and reads one [`Response`] per line,
//! in order, many on one connection; every request line gets exactly one response line, a
//! capture's excepted (its response is followed by its stream, then the connection closes);
//! the server is bounded in connections, line length and idle time (see `server`).

mod capture;
mod client;
mod dispatch;
mod handler;
mod peer;
mod protocol;
mod server;
mod slots;

#[cfg(test)]
mod leak_tests;
#[cfg(test)]
mod tests;

pub use capture::{capture, CaptureSource};
pub use client::{
    call, find_socket, running_sockets, upgrade, ControlError, FindSocketError, UpgradeError,
};
pub use handler::{NodeHandler, StartingHandler};
pub use peer::{log_since, log_size, peer_pid, process_alive, server_pid, stderr_of};
pub use protocol::{
    CaptureEnd, CaptureSpec, ErrorKind, Request, Response, CAPTURE_END, CAPTURE_RECORD, MAX_LINE,
};
pub use server::{ControlHandler, ControlSocket, SocketFile};
