//! podstack: pods made of one smoltcp interface shared by several containers.
//!
//! A [`Pod`] is the infra ("pause") container: it owns one network namespace's worth of state,
//! here one smoltcp `Interface` with the pod IP/MAC and 127.0.0.1/8, one `SocketSet` for all
//! containers, one port space, and a device on a switch port. A driver thread polls the stack.
//! A [`Container`] is a handle that opens sockets in its pod: containers of one pod share the
//! IP, the MAC and the port space, and reach each other over 127.0.0.1 without a frame reaching
//! the switch (see [`device`]).
//!
//! Lifetimes mirror Kubernetes: dropping a container closes its sockets and leaves the pod (and
//! its IP) alone; dropping the pod (its infra) tears down the interface and detaches it from the
//! switch, and every container's sockets fail from then on with [`NetError::NetworkDown`].

#![forbid(unsafe_code)]

pub mod device;
mod net;
mod pod;

pub use net::{TcpListener, TcpStream, UdpSocket};
pub use pod::{Container, Pod, PodConfig};

use std::time::Duration;

/// How long a blocking socket call waits before failing with [`NetError::TimedOut`]. A guard
/// against hangs, not a timing assertion.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Socket errors, named after their POSIX counterparts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// EADDRINUSE: another socket of the pod has this port.
    #[error("address in use: port {0} is taken in this pod")]
    AddrInUse(u16),
    /// ECONNREFUSED: the peer answered with a reset.
    #[error("connection refused")]
    ConnectionRefused,
    /// ECONNRESET: the connection was reset after it was established.
    #[error("connection reset")]
    ConnectionReset,
    /// ENETDOWN: the pod's infra is gone, so is its network.
    #[error("network is down: the pod's infra container is gone")]
    NetworkDown,
    /// ETIMEDOUT.
    #[error("timed out")]
    TimedOut,
    /// ENOTCONN / EBADF: the socket was closed (its container was removed).
    #[error("socket closed")]
    Closed,
    /// EPIPE: the connection can no longer send.
    #[error("broken pipe")]
    BrokenPipe,
    /// EADDRNOTAVAIL: no ephemeral port left, or an unusable address.
    #[error("address not available")]
    AddrNotAvailable,
}

impl From<NetError> for std::io::Error {
    fn from(e: NetError) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e {
            NetError::AddrInUse(_) => K::AddrInUse,
            NetError::ConnectionRefused => K::ConnectionRefused,
            NetError::ConnectionReset => K::ConnectionReset,
            NetError::NetworkDown => K::NetworkDown,
            NetError::TimedOut => K::TimedOut,
            NetError::Closed => K::NotConnected,
            NetError::BrokenPipe => K::BrokenPipe,
            NetError::AddrNotAvailable => K::AddrNotAvailable,
        };
        std::io::Error::new(kind, e)
    }
}
