//! Blocking sockets over the pod's smoltcp stack, shaped like `std::net`.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

use crate::pod::{Container, PodShared, PodState, Proto};
use crate::{NetError, DEFAULT_TIMEOUT};

/// TCP buffer per direction per socket.
const TCP_BUFFER: usize = 256 * 1024;
/// Listening sockets kept per listener (the accept backlog).
const BACKLOG: usize = 4;
/// UDP: datagrams and bytes buffered per direction.
const UDP_PACKETS: usize = 64;
const UDP_BUFFER: usize = 64 * 1024;

fn new_tcp() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    );
    s.set_nagle_enabled(false);
    s
}

fn endpoint_v4(e: IpEndpoint) -> Option<SocketAddrV4> {
    #[allow(irrefutable_let_patterns)] // only IPv4 is enabled
    if let IpAddress::Ipv4(a) = e.addr {
        Some(SocketAddrV4::new(a, e.port))
    } else {
        None
    }
}

/// Opening sockets: here rather than in `pod`, so the dependency goes one way (`net` uses the
/// pod's state; the pod knows nothing of sockets).
impl Container {
    /// Listens on TCP `port` (all of the pod's addresses). EADDRINUSE if any socket of the pod
    /// holds it.
    pub fn tcp_listen(&self, port: u16) -> Result<TcpListener, NetError> {
        TcpListener::bind(self, port)
    }

    /// Connects to `addr` over TCP.
    pub fn tcp_connect(&self, addr: SocketAddrV4) -> Result<TcpStream, NetError> {
        TcpStream::connect(self, addr)
    }

    /// Binds UDP `port`. EADDRINUSE if any socket of the pod holds it.
    pub fn udp_bind(&self, port: u16) -> Result<UdpSocket, NetError> {
        UdpSocket::bind(self, port)
    }
}

/// A TCP listener: `accept` hands out established connections.
pub struct TcpListener {
    pod: Arc<PodShared>,
    container: u64,
    port: u16,
    backlog: Vec<(SocketHandle, u64)>,
    timeout: Duration,
}

impl TcpListener {
    pub(crate) fn bind(c: &Container, port: u16) -> Result<Self, NetError> {
        let container = c.id;
        let backlog = c.pod.wait(DEFAULT_TIMEOUT, |st| {
            Some(st.claim(Proto::Tcp, port, container).map(|()| {
                (0..BACKLOG)
                    .filter_map(|_| listen_socket(st, container, port))
                    .collect::<Vec<_>>()
            }))
        })?;
        Ok(Self {
            pod: Arc::clone(&c.pod),
            container,
            port,
            backlog,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets how long `accept` waits (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Waits for an established connection.
    pub fn accept(&mut self) -> Result<TcpStream, NetError> {
        let (container, port) = (self.container, self.port);
        let backlog = &mut self.backlog;
        let (handle, id) = self.pod.wait(self.timeout, |st| {
            for slot in backlog.iter_mut() {
                if !st.valid(slot.0, slot.1) {
                    return Some(Err(NetError::Closed));
                }
                let s = st.sockets.get_mut::<tcp::Socket>(slot.0);
                match s.state() {
                    tcp::State::Listen | tcp::State::SynReceived => continue,
                    tcp::State::Closed => {
                        // A handshake that failed: listen again on the same socket.
                        let _ = s.listen(port);
                        continue;
                    }
                    _ => {}
                }
                let accepted = *slot;
                match listen_socket(st, container, port) {
                    Some(fresh) => *slot = fresh,
                    None => return Some(Err(NetError::AddrNotAvailable)),
                }
                return Some(Ok(accepted));
            }
            None
        })?;
        Ok(TcpStream::new(Arc::clone(&self.pod), handle, id))
    }
}

fn listen_socket(st: &mut PodState, container: u64, port: u16) -> Option<(SocketHandle, u64)> {
    let mut s = new_tcp();
    s.listen(IpListenEndpoint { addr: None, port }).ok()?;
    Some(st.add_socket(s, container, Some((Proto::Tcp, port))))
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let mut st = self.pod.lock();
        for &(h, id) in &self.backlog {
            if st.valid(h, id) {
                st.remove_socket(h);
            }
        }
        drop(st);
        self.pod.kick();
    }
}

struct StreamInner {
    pod: Arc<PodShared>,
    handle: SocketHandle,
    id: u64,
}

impl Drop for StreamInner {
    fn drop(&mut self) {
        self.pod.lock().close_tcp(self.handle, self.id);
        self.pod.kick();
    }
}

/// A TCP connection. `Read`/`Write` block (up to the timeout); clones share the connection.
#[derive(Clone)]
pub struct TcpStream {
    inner: Arc<StreamInner>,
    timeout: Duration,
}

impl TcpStream {
    fn new(pod: Arc<PodShared>, handle: SocketHandle, id: u64) -> Self {
        Self {
            inner: Arc::new(StreamInner { pod, handle, id }),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub(crate) fn connect(c: &Container, addr: SocketAddrV4) -> Result<Self, NetError> {
        let container = c.id;
        let (handle, id) = c.pod.wait(DEFAULT_TIMEOUT, |st| {
            Some(st.claim_ephemeral(Proto::Tcp, container).and_then(|local| {
                let (handle, id) = st.add_socket(new_tcp(), container, Some((Proto::Tcp, local)));
                let remote = IpEndpoint::new(IpAddress::Ipv4(*addr.ip()), addr.port());
                let cx = st.iface.context();
                match st
                    .sockets
                    .get_mut::<tcp::Socket>(handle)
                    .connect(cx, remote, local)
                {
                    Ok(()) => Ok((handle, id)),
                    Err(_) => {
                        st.remove_socket(handle);
                        Err(NetError::AddrNotAvailable)
                    }
                }
            }))
        })?;
        let stream = Self::new(Arc::clone(&c.pod), handle, id);
        stream.with(DEFAULT_TIMEOUT, |s| match s.state() {
            tcp::State::SynSent | tcp::State::SynReceived => None,
            tcp::State::Closed | tcp::State::TimeWait => Some(Err(NetError::ConnectionRefused)),
            _ => Some(Ok(())),
        })?;
        Ok(stream)
    }

    /// Sets how long reads and writes wait (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn with<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&mut tcp::Socket<'static>) -> Option<Result<T, NetError>>,
    ) -> Result<T, NetError> {
        let (handle, id) = (self.inner.handle, self.inner.id);
        self.inner.pod.wait(timeout, |st| {
            if !st.valid(handle, id) {
                return Some(Err(NetError::Closed));
            }
            f(st.sockets.get_mut::<tcp::Socket>(handle))
        })
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Result<SocketAddrV4, NetError> {
        self.with(self.timeout, |s| {
            Some(
                s.remote_endpoint()
                    .and_then(endpoint_v4)
                    .ok_or(NetError::Closed),
            )
        })
    }

    /// This end's address.
    pub fn local_addr(&self) -> Result<SocketAddrV4, NetError> {
        self.with(self.timeout, |s| {
            Some(
                s.local_endpoint()
                    .and_then(endpoint_v4)
                    .ok_or(NetError::Closed),
            )
        })
    }

    /// Sends FIN after the queued data (the peer reads EOF); reading stays possible.
    pub fn shutdown_write(&self) -> Result<(), NetError> {
        self.with(self.timeout, |s| {
            s.close();
            Some(Ok(()))
        })
    }

    /// Reads what is available (at least one byte), or 0 at end of stream.
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, NetError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.with(self.timeout, |s| match s.recv_slice(buf) {
            Ok(0) if s.may_recv() => None,
            Ok(0) if s.state() == tcp::State::Closed => Some(Err(NetError::ConnectionReset)),
            Ok(n) => Some(Ok(n)),
            Err(tcp::RecvError::Finished) => Some(Ok(0)),
            Err(tcp::RecvError::InvalidState) => Some(Err(NetError::ConnectionReset)),
        })
    }

    /// Queues some of `buf` for sending (at least one byte).
    pub fn write(&self, buf: &[u8]) -> Result<usize, NetError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.with(self.timeout, |s| {
            if !s.may_send() {
                return Some(Err(if s.state() == tcp::State::Closed {
                    NetError::ConnectionReset
                } else {
                    NetError::BrokenPipe
                }));
            }
            match s.send_slice(buf) {
                Ok(0) => None,
                Ok(n) => Some(Ok(n)),
                Err(tcp::SendError::InvalidState) => Some(Err(NetError::BrokenPipe)),
            }
        })
    }

    /// Writes all of `buf`.
    pub fn write_all(&self, mut buf: &[u8]) -> Result<(), NetError> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes; EOF before that is ECONNRESET.
    pub fn read_exact(&self, mut buf: &mut [u8]) -> Result<(), NetError> {
        while !buf.is_empty() {
            match self.read(buf)? {
                0 => return Err(NetError::ConnectionReset),
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }

    /// Reads until end of stream.
    pub fn read_to_end(&self, out: &mut Vec<u8>) -> Result<usize, NetError> {
        let mut buf = vec![0u8; 64 * 1024];
        let start = out.len();
        loop {
            match self.read(&mut buf)? {
                0 => return Ok(out.len() - start),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }
}

impl std::io::Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        TcpStream::read(self, buf).map_err(Into::into)
    }
}

impl std::io::Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        TcpStream::write(self, buf).map_err(Into::into)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bound UDP socket.
pub struct UdpSocket {
    pod: Arc<PodShared>,
    handle: SocketHandle,
    id: u64,
    timeout: Duration,
}

impl UdpSocket {
    pub(crate) fn bind(c: &Container, port: u16) -> Result<Self, NetError> {
        let container = c.id;
        let (handle, id) = c.pod.wait(DEFAULT_TIMEOUT, |st| {
            Some(st.claim(Proto::Udp, port, container).and_then(|()| {
                let mut s = udp::Socket::new(
                    udp::PacketBuffer::new(
                        vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                        vec![0; UDP_BUFFER],
                    ),
                    udp::PacketBuffer::new(
                        vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                        vec![0; UDP_BUFFER],
                    ),
                );
                s.bind(port).map_err(|_| NetError::AddrNotAvailable)?;
                Ok(st.add_socket(s, container, Some((Proto::Udp, port))))
            }))
        })?;
        Ok(Self {
            pod: Arc::clone(&c.pod),
            handle,
            id,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    fn with<T>(
        &self,
        mut f: impl FnMut(&mut udp::Socket<'static>) -> Option<Result<T, NetError>>,
    ) -> Result<T, NetError> {
        let (handle, id) = (self.handle, self.id);
        self.pod.wait(self.timeout, |st| {
            if !st.valid(handle, id) {
                return Some(Err(NetError::Closed));
            }
            f(st.sockets.get_mut::<udp::Socket>(handle))
        })
    }

    /// Sends one datagram to `to`.
    pub fn send_to(&self, data: &[u8], to: SocketAddrV4) -> Result<(), NetError> {
        let remote = IpEndpoint::new(IpAddress::Ipv4(*to.ip()), to.port());
        self.with(|s| match s.send_slice(data, remote) {
            Ok(()) => Some(Ok(())),
            Err(udp::SendError::BufferFull) => None,
            Err(_) => Some(Err(NetError::AddrNotAvailable)),
        })
    }

    /// Receives one datagram: `(length, sender)`.
    pub fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddrV4), NetError> {
        self.with(|s| match s.recv_slice(buf) {
            Ok((n, meta)) => Some(
                endpoint_v4(meta.endpoint)
                    .map(|e| (n, e))
                    .ok_or(NetError::AddrNotAvailable),
            ),
            Err(_) => None,
        })
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let mut st = self.pod.lock();
        if st.valid(self.handle, self.id) {
            st.remove_socket(self.handle);
        }
    }
}
