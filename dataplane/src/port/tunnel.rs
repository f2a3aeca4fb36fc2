//! The VXLAN tunnel port: UDP sockets on the node's underlay address.
//!
//! Receiving: one socket bound to `underlay:vxlan_port` (8472 by default, like Linux and
//! flannel); each datagram is handed to the pipeline with its source address, which must be a
//! known peer's.
//!
//! Sending: RFC 7348 §5 asks for an outer UDP source port derived from the inner flow, so ECMP
//! in the underlay spreads flows while each flow keeps its path. A UDP socket has one source
//! port, so the tunnel keeps a small pool of sockets bound to the underlay address on
//! kernel-chosen ports and picks one by the inner flow's hash ([`crate::wire::vxlan::flow_hash`]): the source
//! port is a function of the flow, drawn from `SOURCE_PORTS` values. (A raw socket could use any
//! port but would lose UDP GSO, which the fast path needs.) The kernel's vxlan device accepts
//! any source port.
//!
//! Datagrams to send are queued in a [`TxQueue`] as two parts each: a head the queue owns (the
//! VXLAN header, and for a segment of a superframe its rebuilt inner headers) and a body that
//! is a range of the caller's receive buffer (the inner payload, never copied in userspace).
//! Runs of equal-size datagrams to one peer from one socket go out with one GSO `sendmsg`
//! whose iovecs alternate heads and bodies; the kernel copies each byte once.

use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};

use super::{Batch, PortError, SendOutcome};

/// Sockets in the source-port pool.
pub(crate) const SOURCE_PORTS: usize = 16;
/// Largest VXLAN datagram read (a 64 KiB GRO superframe in a later version; 9000-byte jumbo
/// underlays today).
pub(crate) const DATAGRAM_MAX: usize = 65535;
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
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one UDP GSO send (it must fit one IPv4 packet before segmentation).
const GSO_MAX_BYTES: usize = 65507;

/// The node's VXLAN endpoint.
#[derive(Debug)]
pub struct UdpTunnel {
    /// None for a send-only tunnel ([`UdpTunnel::senders`]).
    rx: Option<UdpSocket>,
    tx: Vec<UdpSocket>,
    local: SocketAddrV4,
    /// The kernel segments runs of equal-size datagrams for us (`UDP_SEGMENT`, Linux 4.18+).
    gso: bool,
    /// The kernel hands us runs of datagrams coalesced (`UDP_GRO`, Linux 5.0+).
    gro: bool,
    cmsg: Vec<u8>,
}

/// One queued datagram: `head` bytes of the queue's own buffer, then `body` bytes of the
/// source buffer given to [`UdpTunnel::send_queue`].
#[derive(Debug, Clone, Copy)]
struct Datagram {
    head: (u32, u32),
    body: (u32, u32),
}

/// A run of datagrams for one destination and source socket: all `size` bytes long except
/// possibly the last, which may be shorter (what one UDP GSO send can carry).
#[derive(Debug, Clone, Copy)]
struct TxRun {
    to: SocketAddrV4,
    hash: u32,
    size: u32,
    bytes: u32,
    /// Index of the run's first datagram; the run ends where the next begins.
    first: u32,
    count: u32,
    /// The last datagram is shorter than `size`: nothing more can join.
    closed: bool,
}

/// Datagrams waiting to be sent, grouped into GSO runs as they are queued. Nothing here
/// allocates in steady state (the vectors keep their capacity across [`TxQueue::clear`]).
#[derive(Debug)]
pub(crate) struct TxQueue {
    heads: Vec<u8>,
    datagrams: Vec<Datagram>,
    runs: Vec<TxRun>,
    /// Longest datagram that may share a GSO run: a GSO send is refused if its segments do
    /// not fit the route MTU, while a lone larger datagram is fragmented by the kernel.
    gso_limit: usize,
}

impl Default for TxQueue {
    fn default() -> Self {
        Self::with_gso_limit(usize::MAX)
    }
}

impl TxQueue {
    /// A queue whose GSO runs only take datagrams of at most `gso_limit` bytes (the UDP
    /// payload that fits the underlay MTU); longer ones are sent alone.
    pub(crate) fn with_gso_limit(gso_limit: usize) -> Self {
        Self {
            heads: Vec::new(),
            datagrams: Vec::new(),
            runs: Vec::new(),
            gso_limit,
        }
    }

    /// Queues one datagram for `to`: the concatenation of `head` (copied), then the bytes
    /// `body` of the source buffer that will be passed to [`UdpTunnel::send_queue`]. `hash`
    /// picks the source socket. The datagram joins the last run when it goes to the same place,
    /// is no longer than the run's datagrams and the run has room (a shorter one ends the run).
    pub(crate) fn push(&mut self, to: SocketAddrV4, hash: u32, head: &[&[u8]], body: Range<usize>) {
        let head_off = self.heads.len();
        for part in head {
            self.heads.extend_from_slice(part);
        }
        let head_len = self.heads.len() - head_off;
        let len = head_len + body.len();
        self.datagrams.push(Datagram {
            head: (head_off as u32, head_len as u32),
            body: (body.start as u32, body.len() as u32),
        });
        let index = self.datagrams.len() as u32 - 1;
        let fits = len <= self.gso_limit;
        if let Some(run) = self.runs.last_mut() {
            if fits
                && run.to == to
                && run.hash == hash
                && !run.closed
                && len <= run.size as usize
                && (run.count as usize) < GSO_MAX_SEGMENTS
                && run.bytes as usize + len <= GSO_MAX_BYTES
            {
                run.count += 1;
                run.bytes += len as u32;
                run.closed = len < run.size as usize;
                return;
            }
        }
        self.runs.push(TxRun {
            to,
            hash,
            size: len as u32,
            bytes: len as u32,
            first: index,
            count: 1,
            closed: !fits,
        });
    }

    /// True if nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Number of runs (GSO sends, where the kernel has GSO).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Number of datagrams queued.
    pub(crate) fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Calls `f(head, body range)` for every datagram queued from index `from` on, in order
    /// (what a capture copies).
    pub(crate) fn for_each_since(&self, from: usize, mut f: impl FnMut(&[u8], Range<usize>)) {
        for d in self.datagrams.get(from..).unwrap_or_default() {
            let (ho, hl) = (d.head.0 as usize, d.head.1 as usize);
            let (bo, bl) = (d.body.0 as usize, d.body.1 as usize);
            f(self.heads.get(ho..ho + hl).unwrap_or_default(), bo..bo + bl);
        }
    }

    /// Forgets everything queued, keeping the memory.
    pub(crate) fn clear(&mut self) {
        self.heads.clear();
        self.datagrams.clear();
        self.runs.clear();
    }

    /// The iovecs of datagrams `range`: head, body, head, body... (empty parts skipped).
    fn gather<'a>(
        &'a self,
        source: &'a [u8],
        range: Range<usize>,
        iov: &mut Vec<IoSlice<'a>>,
    ) -> bool {
        iov.clear();
        for d in self.datagrams.get(range).unwrap_or_default() {
            let (ho, hl) = (d.head.0 as usize, d.head.1 as usize);
            let (bo, bl) = (d.body.0 as usize, d.body.1 as usize);
            let (Some(head), Some(body)) = (self.heads.get(ho..ho + hl), source.get(bo..bo + bl))
            else {
                return false;
            };
            if !head.is_empty() {
                iov.push(IoSlice::new(head));
            }
            if !body.is_empty() {
                iov.push(IoSlice::new(body));
            }
        }
        true
    }
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
        let tx = source_pool(underlay)?;
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
            rx: Some(rx),
            tx,
            local,
            gso,
            gro,
            cmsg: nix::cmsg_space!(libc::c_int),
        })
    }

    /// A send-only tunnel for another data-plane thread: its own pool of source sockets on
    /// the same underlay address (a socket is not shared between threads' batches), no
    /// receiving socket (the first thread receives for the node).
    pub(crate) fn senders(&self) -> std::io::Result<Self> {
        Ok(Self {
            rx: None,
            tx: source_pool(*self.local.ip())?,
            local: self.local,
            gso: self.gso,
            gro: false,
            cmsg: Vec::new(),
        })
    }

    /// True if runs of datagrams go out with one GSO `sendmsg`.
    #[cfg(test)]
    pub(crate) fn gso(&self) -> bool {
        self.gso
    }

    /// The receiving address (`underlay:vxlan_port`).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The outer source ports the tunnel sends from.
    #[cfg(test)]
    pub(crate) fn source_ports(&self) -> Vec<u16> {
        self.tx
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| a.port())
            .collect()
    }

    /// Receives up to `max` entries into `batch`, with their sources and their GRO segment
    /// sizes (parallel). An entry is one datagram (`segment` 0) or, with UDP GRO, a run of
    /// datagrams of `segment` bytes each (the last may be shorter), all from one source.
    pub(crate) fn recv(
        &mut self,
        batch: &mut Batch,
        sources: &mut Vec<SocketAddrV4>,
        segments: &mut Vec<u16>,
        max: usize,
    ) -> Result<usize, PortError> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
        use std::os::fd::AsRawFd;
        let Some(rx) = self.rx.as_ref() else {
            return Ok(0);
        };
        let fd = rx.as_raw_fd();
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

    /// Sends every datagram of `queue` (bodies taken from `source`, the buffer their ranges
    /// index), then empties it: each run with one GSO `sendmsg` where the kernel can, else one
    /// `sendmsg` per datagram. Counts are in datagrams; a datagram whose body is outside
    /// `source` is dropped and counted.
    pub(crate) fn send_queue(&mut self, queue: &mut TxQueue, source: &[u8]) -> SendOutcome {
        let mut out = SendOutcome::default();
        // Iovecs borrow `source` and the queue, so the vector lives for this call only; two
        // per datagram, at most GSO_MAX_SEGMENTS datagrams per send: no reallocation.
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(2 * GSO_MAX_SEGMENTS);
        for run in &queue.runs {
            let sock = &self.tx[run.hash as usize % self.tx.len()];
            let (first, count) = (run.first as usize, run.count as usize);
            if count > 1 && self.gso {
                if !queue.gather(source, first..first + count, &mut iov) {
                    out.dropped += count;
                    continue;
                }
                // `size` fits a u16: a run's datagrams together fit GSO_MAX_BYTES.
                match send_gso(sock, &iov, run.size as u16, run.to) {
                    Ok(()) => {
                        out.sent += count;
                        out.bytes += run.bytes as usize;
                        continue;
                    }
                    // EIO: the device can't segment (no checksum offload): not for any run.
                    Err(e) if e == nix::Error::EIO => {
                        tracing::warn!(
                            "UDP GSO send failed ({e}); sending datagrams one by one from now on"
                        );
                        self.gso = false;
                    }
                    // Refused for this run (segments too large for the route): one by one.
                    Err(e) if e == nix::Error::EINVAL || e == nix::Error::EMSGSIZE => {}
                    // ENOBUFS/EAGAIN: the whole run is lost, like on a wire.
                    Err(_) => {
                        out.dropped += count;
                        continue;
                    }
                }
            }
            for i in first..first + count {
                if !queue.gather(source, i..i + 1, &mut iov) {
                    out.dropped += 1;
                    continue;
                }
                let len: usize = iov.iter().map(|s| s.len()).sum();
                match send_plain(sock, &iov, run.to) {
                    Ok(()) => {
                        out.sent += 1;
                        out.bytes += len;
                    }
                    // ENOBUFS/EAGAIN under load, EHOSTUNREACH while the underlay is down: this
                    // datagram is lost, like on a wire; the tunnel stays.
                    Err(_) => out.dropped += 1,
                }
            }
        }
        queue.clear();
        out
    }

    /// The receiving socket, for `poll(2)` (none for a send-only tunnel).
    pub(crate) fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        self.rx.as_ref().map(|s| s.as_fd())
    }
}

/// The source-port pool: `SOURCE_PORTS` sockets on `underlay`, kernel-chosen ports.
fn source_pool(underlay: Ipv4Addr) -> std::io::Result<Vec<UdpSocket>> {
    (0..SOURCE_PORTS)
        .map(|_| {
            let s = UdpSocket::bind(SocketAddrV4::new(underlay, 0))?;
            s.set_nonblocking(true)?;
            grow_buffers(&s);
            Ok(s)
        })
        .collect()
}

/// True if the kernel accepts `UDP_SEGMENT` on this socket.
fn probe_gso(sock: &UdpSocket) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    let ok = setsockopt(sock, sockopt::UdpGsoSegment, &1400).is_ok();
    // The per-send control message sets the size; the socket default stays "off".
    let _ = setsockopt(sock, sockopt::UdpGsoSegment, &0);
    ok
}

/// One `sendmsg` carrying the bytes of `iov` as datagrams of `segment` bytes (`UDP_SEGMENT`
/// cmsg).
fn send_gso(
    sock: &UdpSocket,
    iov: &[IoSlice<'_>],
    segment: u16,
    to: SocketAddrV4,
) -> Result<(), nix::Error> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
    use std::os::fd::AsRawFd;
    let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
    let addr = SockaddrIn::from(to);
    sendmsg(sock.as_raw_fd(), iov, &cmsg, MsgFlags::empty(), Some(&addr)).map(|_| ())
}

/// One `sendmsg` carrying the bytes of `iov` as one datagram.
fn send_plain(sock: &UdpSocket, iov: &[IoSlice<'_>], to: SocketAddrV4) -> Result<(), nix::Error> {
    use nix::sys::socket::{sendmsg, MsgFlags, SockaddrIn};
    use std::os::fd::AsRawFd;
    let addr = SockaddrIn::from(to);
    sendmsg(sock.as_raw_fd(), iov, &[], MsgFlags::empty(), Some(&addr)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_flow_between_two_tunnels_on_loopback() {
        let mut a = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind a");
        let mut b = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind b");
        assert_eq!(a.source_ports().len(), SOURCE_PORTS);
        let source: Vec<u8> = (0..4u8).flat_map(|i| [i; 50]).collect();
        let mut q = TxQueue::default();
        for i in 0..4usize {
            q.push(b.local_addr(), i as u32, &[], i * 50..(i + 1) * 50);
        }
        assert_eq!(q.runs(), 4, "different flows never share a run");
        let out = a.send_queue(&mut q, &source);
        assert_eq!((out.sent, out.dropped), (4, 0));
        assert!(q.is_empty());
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
    fn datagrams_over_the_gso_limit_go_alone() {
        let to = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9);
        let mut q = TxQueue::with_gso_limit(100);
        q.push(to, 1, &[], 0..100);
        q.push(to, 1, &[], 0..100);
        assert_eq!(q.runs(), 1, "two datagrams at the limit share a run");
        q.push(to, 1, &[], 0..101);
        q.push(to, 1, &[], 0..101);
        q.push(to, 1, &[], 0..50);
        assert_eq!(q.runs(), 4, "over the limit: alone, and nothing joins them");
    }

    #[test]
    fn datagrams_queued_since_an_index_are_listed_with_their_heads() {
        let to = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9);
        let mut q = TxQueue::default();
        q.push(to, 1, &[b"ab"], 0..10);
        let from = q.len();
        q.push(to, 1, &[b"cd", b"e"], 10..20);
        q.push(to, 2, &[], 20..25);
        let mut seen = Vec::new();
        q.for_each_since(from, |head, body| seen.push((head.to_vec(), body)));
        assert_eq!(seen, [(b"cde".to_vec(), 10..20), (Vec::new(), 20..25)]);
        q.for_each_since(9, |_, _| panic!("nothing past the end"));
    }

    #[test]
    fn a_body_outside_the_source_is_dropped_and_counted() {
        let mut a = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind a");
        let b = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind b");
        let mut q = TxQueue::default();
        q.push(b.local_addr(), 1, &[b"head"], 0..100);
        let out = a.send_queue(&mut q, &[0u8; 10]);
        assert_eq!((out.sent, out.dropped), (0, 1));
        assert!(q.is_empty());
    }

    #[test]
    fn a_run_of_datagrams_arrives_as_separate_datagrams() {
        let mut a = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind a");
        let mut b = UdpTunnel::bind(Ipv4Addr::new(127, 0, 0, 1), 0).expect("bind b");
        // Heads from the queue, bodies from the source: each datagram is its number (one byte)
        // then its body.
        let source: Vec<u8> = [[2u8; 999].as_slice(), &[3u8; 399], &[1u8; 999]].concat();
        let mut q = TxQueue::default();
        let to = b.local_addr();
        q.push(to, 7, &[&[1]], 1398..2397);
        q.push(to, 7, &[&[2]], 0..999);
        q.push(to, 7, &[&[3]], 999..1398);
        q.push(to, 7, &[&[4]], 0..10); // after a short datagram: a new run
        assert_eq!(q.runs(), 2);
        let out = a.send_queue(&mut q, &source);
        assert_eq!((out.sent, out.bytes, out.dropped), (4, 2411, 0));
        let (mut rx, mut sources, mut segments) = (Batch::default(), Vec::new(), Vec::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut got = Vec::new();
        while got.len() < 4 && std::time::Instant::now() < deadline {
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
                got.extend(f.chunks(seg).map(|d| (d.len(), d[0], d[d.len() - 1])));
            }
        }
        let (gso, gro) = (a.gso(), b.gro);
        assert_eq!(
            got,
            vec![(1000, 1, 1), (1000, 2, 2), (400, 3, 3), (11, 4, 2)],
            "GSO {gso} / GRO {gro}: 4 datagrams, heads then bodies"
        );
    }
}
