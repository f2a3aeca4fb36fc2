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

/// Most datagrams in one UDP GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 before 5.x
/// raised it; 64 works everywhere).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one UDP GSO send (it must fit one IPv4 packet before segmentation).
pub const GSO_MAX_BYTES: usize = 65507;

/// The node's VXLAN endpoint.
#[derive(Debug)]
pub struct UdpTunnel {
    rx: UdpSocket,
    tx: Vec<UdpSocket>,
    local: SocketAddrV4,
    /// The kernel segments runs of equal-size datagrams for us (`UDP_SEGMENT`, Linux 4.18+).
    gso: bool,
    /// The kernel hands us runs of datagrams coalesced (`UDP_GRO`, Linux 5.0+).
    gro: bool,
    cmsg: Vec<u8>,
}

/// Where a tunnel datagram (or a run of them) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    /// Peer tunnel endpoint.
    pub to: SocketAddrV4,
    /// Inner flow hash: picks the source port.
    pub hash: u32,
    /// 0: one datagram. Else the entry is a run of datagrams of this size (the last may be
    /// shorter), sent with one GSO `sendmsg` where the kernel can.
    pub segment: u16,
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
        let gso = probe_gso(&tx[0]);
        if !gso {
            tracing::info!(
                "kernel lacks UDP GSO (UDP_SEGMENT): tunnel sends one datagram per syscall"
            );
        }
        let gro =
            nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::UdpGroSegment, &true)
                .is_ok();
        if !gro {
            tracing::info!("kernel lacks UDP GRO: tunnel receives one datagram per syscall");
        }
        Ok(Self {
            rx,
            tx,
            local,
            gso,
            gro,
            cmsg: nix::cmsg_space!(libc::c_int),
        })
    }

    /// True if runs of datagrams go out with one GSO `sendmsg`.
    pub fn gso(&self) -> bool {
        self.gso
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

    /// Receives up to `max` entries into `batch`, with their sources and their GRO segment
    /// sizes (parallel). An entry is one datagram (`segment` 0) or, with UDP GRO, a run of
    /// datagrams of `segment` bytes each (the last may be shorter), all from one source.
    pub fn recv(
        &mut self,
        batch: &mut Batch,
        sources: &mut Vec<SocketAddrV4>,
        segments: &mut Vec<u16>,
        max: usize,
    ) -> Result<usize, PortError> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
        use std::os::fd::AsRawFd;
        let fd = self.rx.as_raw_fd();
        let gro = self.gro;
        let cmsg = &mut self.cmsg;
        let mut got = 0;
        while got < max {
            let mut meta = None;
            let r: std::io::Result<bool> = batch.push_from(DATAGRAM_MAX, |buf| {
                let mut iov = [std::io::IoSliceMut::new(buf)];
                let space = if gro { Some(cmsg.as_mut_slice()) } else { None };
                let msg = recvmsg::<SockaddrIn>(fd, &mut iov, space, MsgFlags::empty())
                    .map_err(std::io::Error::from)?;
                let mut segment = 0u16;
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::UdpGroSegments(size) = c {
                            segment = u16::try_from(size).unwrap_or(0);
                        }
                    }
                }
                let from = msg.address.map(|a| SocketAddrV4::new(a.ip(), a.port()));
                meta = Some((from, segment));
                Ok(Some((msg.bytes, Default::default())))
            });
            match r {
                Ok(true) => {
                    let (from, segment) = meta.unwrap_or((None, 0));
                    sources.push(from.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
                    segments.push(segment);
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

    /// Sends each entry of `batch` (VXLAN header + inner frame, or a run of such datagrams of
    /// `Dest::segment` bytes each) to its destination in `dests` (parallel), then empties both.
    /// Counts are in datagrams.
    pub fn send(&mut self, batch: &mut Batch, dests: &mut Vec<Dest>) -> SendOutcome {
        let mut out = SendOutcome::default();
        for ((buf, _), d) in batch.iter().zip(dests.iter()) {
            let sock = &self.tx[d.hash as usize % self.tx.len()];
            let seg = usize::from(d.segment);
            let n = if seg == 0 { 1 } else { buf.len().div_ceil(seg) };
            if n > 1 && self.gso {
                match send_gso(sock, buf, d.segment, d.to) {
                    Ok(()) => {
                        out.sent += n;
                        out.bytes += buf.len();
                        continue;
                    }
                    // EIO: the device can't segment (e.g. no checksum offload); fall back.
                    Err(e) if e == nix::Error::EIO || e == nix::Error::EINVAL => {
                        tracing::warn!(
                            "UDP GSO send failed ({e}); sending datagrams one by one from now on"
                        );
                        self.gso = false;
                    }
                    // ENOBUFS/EAGAIN: the whole run is lost, like on a wire.
                    Err(_) => {
                        out.dropped += n;
                        continue;
                    }
                }
            }
            let chunks: Box<dyn Iterator<Item = &[u8]>> = if seg == 0 {
                Box::new(std::iter::once(buf))
            } else {
                Box::new(buf.chunks(seg))
            };
            for datagram in chunks {
                match sock.send_to(datagram, d.to) {
                    Ok(_) => {
                        out.sent += 1;
                        out.bytes += datagram.len();
                    }
                    // ENOBUFS/EAGAIN under load, EHOSTUNREACH while the underlay is down: this
                    // datagram is lost, like on a wire; the tunnel stays.
                    Err(_) => out.dropped += 1,
                }
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

/// True if the kernel accepts `UDP_SEGMENT` on this socket.
fn probe_gso(sock: &UdpSocket) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    let ok = setsockopt(sock, sockopt::UdpGsoSegment, &1400).is_ok();
    // The per-send control message sets the size; the socket default stays "off".
    let _ = setsockopt(sock, sockopt::UdpGsoSegment, &0);
    ok
}

/// One `sendmsg` carrying `buf` as datagrams of `segment` bytes (`UDP_SEGMENT` cmsg).
fn send_gso(
    sock: &UdpSocket,
    buf: &[u8],
    segment: u16,
    to: SocketAddrV4,
) -> Result<(), nix::Error> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
    use std::os::fd::AsRawFd;
    let iov = [std::io::IoSlice::new(buf)];
    let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
    let addr = SockaddrIn::from(to);
    sendmsg(
        sock.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::empty(),
        Some(&addr),
    )
    .map(|_| ())
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
            dests.push(Dest {
                to: b.local_addr(),
                hash: i,
                segment: 0,
            });
        }
        let out = a.send(&mut tx, &mut dests);
        assert_eq!((out.sent, out.dropped), (4, 0));
        assert!(tx.is_empty() && dests.is_empty());
        let mut rx = Batch::default();
        let (mut sources, mut segments) = (Vec::new(), Vec::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while rx.len() < 4 && std::time::Instant::now() < deadline {
            b.recv(&mut rx, &mut sources, &mut segments, 64)
                .expect("recv");
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

    #[test]
    fn a_run_of_datagrams_arrives_as_separate_datagrams() {
        let mut a = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind a");
        let mut b = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind b");
        let mut tx = Batch::default();
        tx.push(&[1u8; 1000]);
        tx.extend_last(&[], &[2u8; 1000]);
        tx.extend_last(&[], &[3u8; 400]);
        let mut dests = vec![Dest {
            to: b.local_addr(),
            hash: 7,
            segment: 1000,
        }];
        let out = a.send(&mut tx, &mut dests);
        assert_eq!((out.sent, out.bytes, out.dropped), (3, 2400, 0));
        let (mut rx, mut sources, mut segments) = (Batch::default(), Vec::new(), Vec::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 3 && std::time::Instant::now() < deadline {
            rx.clear();
            segments.clear();
            b.recv(&mut rx, &mut sources, &mut segments, 64)
                .expect("recv");
            for ((f, _), seg) in rx.iter().zip(&segments) {
                let seg = if *seg == 0 {
                    f.len()
                } else {
                    usize::from(*seg)
                };
                got.extend(f.chunks(seg).map(|d| (d.len(), d[0])));
            }
        }
        let (gso, gro) = (a.gso(), b.gro);
        assert_eq!(
            got,
            vec![(1000, 1), (1000, 2), (400, 3)],
            "GSO {gso} / GRO {gro}: 3 datagrams"
        );
    }
}
