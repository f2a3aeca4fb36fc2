//! The VXLAN tunnel port: UDP sockets on the node's underlay address.
//!
//! Receiving: one socket bound to `underlay:vxlan_port` (8472 by default, like Linux and
//! flannel); each datagram is handed to the pipeline with its source address, which must be a
//! known peer's.
//!
//! Sending: RFC 7348 §5 asks for an outer UDP source port derived from the inner flow, so ECMP
//! in the underlay spreads flows while each flow keeps its path. A UDP socket has one source
//! port, so the tunnel keeps a small pool of sockets bound to the underlay address on
//! kernel-chosen ports and picks one by the inner flow's hash ([`vxlan::flow_hash`]): the source
//! port is a function of the flow, drawn from `SOURCE_PORTS` values. (A raw socket could use any
//! port but would lose UDP GSO, which the fast path needs.) The kernel's vxlan device accepts
//! any source port.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use super::{Batch, PortError, SendOutcome};
use crate::wire::vxlan;

/// Sockets in the source-port pool.
pub const SOURCE_PORTS: usize = 16;
/// Largest VXLAN datagram read (a 64 KiB GRO superframe in a later version; 9000-byte jumbo
/// underlays today).
pub const DATAGRAM_MAX: usize = 65535;
/// Socket buffers asked for: the data plane drains in batches and may be descheduled for a few
/// milliseconds on a busy 2-core machine; the default ~212 KB overflows at a few Gbit/s (seen:
/// a third of a TCP stream's datagrams lost as `RcvbufErrors`).
const SOCKET_BUFFER: usize = 32 << 20;

/// Raises a socket buffer: the forced variant (root, ignores `rmem_max`) first, else the
/// ordinary one (capped by the sysctl). Logs once per socket if both fail.
fn grow_buffers(sock: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &SOCKET_BUFFER);
    }
}

/// The node's VXLAN endpoint.
#[derive(Debug)]
pub struct UdpTunnel {
    rx: UdpSocket,
    tx: Vec<UdpSocket>,
    local: SocketAddrV4,
}

impl UdpTunnel {
    /// Binds the tunnel to `underlay:port` in the calling thread's network namespace.
    pub fn bind(underlay: Ipv4Addr, port: u16) -> std::io::Result<Self> {
        let rx = UdpSocket::bind(SocketAddrV4::new(underlay, port))?;
        rx.set_nonblocking(true)?;
        grow_buffers(&rx);
        let local = match rx.local_addr()? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => return Err(std::io::Error::other("IPv6 underlay")),
        };
        let tx = (0..SOURCE_PORTS)
            .map(|_| {
                let s = UdpSocket::bind(SocketAddrV4::new(underlay, 0))?;
                s.set_nonblocking(true)?;
                grow_buffers(&s);
                Ok(s)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self { rx, tx, local })
    }

    /// The receiving address (`underlay:vxlan_port`).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The outer source ports the tunnel sends from.
    pub fn source_ports(&self) -> Vec<u16> {
        self.tx
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| a.port())
            .collect()
    }

    /// Receives up to `max` datagrams into `batch`, their sources into `sources` (parallel).
    pub fn recv(
        &mut self,
        batch: &mut Batch,
        sources: &mut Vec<SocketAddrV4>,
        max: usize,
    ) -> Result<usize, PortError> {
        let mut got = 0;
        while got < max {
            let mut from = None;
            let r = batch.push_from(DATAGRAM_MAX, |buf| match self.rx.recv_from(buf) {
                Ok((n, SocketAddr::V4(a))) => {
                    from = Some(a);
                    Ok(Some((n, Default::default())))
                }
                Ok((_, SocketAddr::V6(_))) => Ok(None),
                Err(e) => Err(e),
            });
            match r {
                Ok(true) => {
                    sources.push(from.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
                    got += 1;
                }
                Ok(false) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PortError::Io(e)),
            }
        }
        Ok(got)
    }

    /// Sends each datagram of `batch` (VXLAN header + inner frame) to its destination in `dests`
    /// (parallel: address and flow hash), then empties both.
    pub fn send(&mut self, batch: &mut Batch, dests: &mut Vec<(SocketAddrV4, u32)>) -> SendOutcome {
        let mut out = SendOutcome::default();
        for ((datagram, _), (to, hash)) in batch.iter().zip(dests.iter()) {
            let sock = &self.tx[*hash as usize % self.tx.len()];
            match sock.send_to(datagram, to) {
                Ok(_) => {
                    out.sent += 1;
                    out.bytes += datagram.len();
                }
                // ENOBUFS/EAGAIN under load, EHOSTUNREACH while the underlay is down: this
                // datagram is lost, like on a wire; the tunnel stays.
                Err(_) => out.dropped += 1,
            }
        }
        batch.clear();
        dests.clear();
        out
    }

    /// The receiving socket, for `poll(2)`.
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

/// Bytes a VXLAN datagram adds in front of the inner frame (the UDP payload part).
pub const ENCAP_PREFIX: usize = vxlan::HEADER_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_flow_between_two_tunnels_on_loopback() {
        let mut a = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind a");
        let mut b = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind b");
        assert_eq!(a.source_ports().len(), SOURCE_PORTS);
        let mut tx = Batch::default();
        let mut dests = Vec::new();
        for i in 0..4u32 {
            tx.push(&[i as u8; 50]);
            dests.push((b.local_addr(), i));
        }
        let out = a.send(&mut tx, &mut dests);
        assert_eq!((out.sent, out.dropped), (4, 0));
        assert!(tx.is_empty() && dests.is_empty());
        let mut rx = Batch::default();
        let mut sources = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while rx.len() < 4 && std::time::Instant::now() < deadline {
            b.recv(&mut rx, &mut sources, 64).expect("recv");
        }
        assert_eq!(rx.len(), 4);
        let ports = a.source_ports();
        for (i, src) in sources.iter().enumerate() {
            assert_eq!(src.ip(), &Ipv4Addr::new(127, 0, 0, 1));
            assert!(ports.contains(&src.port()), "sent from the pool");
            assert_eq!(rx.get(i).map(|(f, _)| f[0]), Some(i as u8));
        }
        assert_ne!(
            sources[0].port(),
            sources[1].port(),
            "different flows, different source ports"
        );
    }
}
