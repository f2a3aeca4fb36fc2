//! A long TCP transfer between two namespaces, every byte checked: the yardstick of the tests
//! that restart, upgrade or disturb the switch under a live connection.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use podswitch::netns::NetNs;
use podswitch_dataplane::testutil::wait_for;

/// Byte `i` of the stream: a position-dependent pattern, so a lost, repeated or reordered
/// chunk shows as a mismatch.
fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// A stream between a client in one namespace and a server in another (the client writes, or
/// with [`Transfer::download_via`] the server does) until [`Transfer::finish`].
pub(crate) struct Transfer {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    writer: JoinHandle<std::io::Result<u64>>,
    reader: JoinHandle<std::io::Result<(u64, Option<u64>)>>,
}

/// What a finished transfer saw.
#[derive(Debug)]
pub(crate) struct Transferred {
    /// Bytes the writing side wrote.
    pub(crate) sent: u64,
    /// Bytes the reading side read.
    pub(crate) received: u64,
    /// Offset of the first byte that differed from what was sent, if any.
    pub(crate) first_bad: Option<u64>,
}

fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> std::io::Result<T> + Send) -> T {
    NetNs::open(ns)
        .unwrap_or_else(|e| panic!("namespace {ns}: {e}"))
        .run(f)
        .unwrap_or_else(|e| panic!("entering {ns}: {e}"))
        .unwrap_or_else(|e| panic!("socket in {ns}: {e}"))
}

impl Transfer {
    /// Listens on `addr` in `server_ns`, connects from `client_ns` and starts streaming.
    pub(crate) fn start(client_ns: &str, server_ns: &str, addr: SocketAddrV4) -> Transfer {
        Self::start_via(client_ns, server_ns, addr, addr)
    }

    /// [`Transfer::start`], the client connecting to `via` (a service address in front of
    /// `addr`).
    pub(crate) fn start_via(
        client_ns: &str,
        server_ns: &str,
        addr: SocketAddrV4,
        via: SocketAddrV4,
    ) -> Transfer {
        Self::between(client_ns, server_ns, addr, via, false)
    }

    /// [`Transfer::start_via`] with the server writing and the client reading.
    pub(crate) fn download_via(
        client_ns: &str,
        server_ns: &str,
        addr: SocketAddrV4,
        via: SocketAddrV4,
    ) -> Transfer {
        Self::between(client_ns, server_ns, addr, via, true)
    }

    fn between(
        client_ns: &str,
        server_ns: &str,
        addr: SocketAddrV4,
        via: SocketAddrV4,
        download: bool,
    ) -> Transfer {
        let listener = in_ns(server_ns, || TcpListener::bind(addr));
        // The kernel completes the handshake before `accept` is called.
        let client = in_ns(client_ns, || TcpStream::connect(via));
        let (server, _) = listener
            .accept()
            .unwrap_or_else(|e| panic!("accept on {addr}: {e}"));
        let (from, to) = if download {
            (server, client)
        } else {
            (client, server)
        };
        let received = Arc::new(AtomicU64::new(0));
        let got = Arc::clone(&received);
        let reader = std::thread::spawn(move || {
            let mut conn = to;
            let mut buf = vec![0u8; 256 * 1024];
            let (mut at, mut first_bad) = (0u64, None);
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    return Ok((at, first_bad));
                }
                if first_bad.is_none() {
                    if let Some(k) = buf[..n]
                        .iter()
                        .enumerate()
                        .position(|(k, b)| *b != byte_at(at + k as u64))
                    {
                        first_bad = Some(at + k as u64);
                    }
                }
                at += n as u64;
                got.store(at, Ordering::Relaxed);
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let writer = std::thread::spawn(move || {
            let mut conn = from;
            let mut chunk = vec![0u8; 64 * 1024];
            let mut at = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                for (k, b) in chunk.iter_mut().enumerate() {
                    *b = byte_at(at + k as u64);
                }
                conn.write_all(&chunk)?;
                at += chunk.len() as u64;
            }
            conn.shutdown(std::net::Shutdown::Write)?;
            Ok(at)
        });
        Transfer {
            stop,
            received,
            writer,
            reader,
        }
    }

    /// Bytes the reading side has read so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until the reading side has read `more` bytes beyond what it had: the connection is
    /// alive and flowing (with `more` above the receive buffer's size, new segments arrived).
    pub(crate) fn wait_flowing(&self, what: &str, more: u64) {
        let from = self.received();
        wait_for(what, || {
            std::thread::sleep(Duration::from_millis(5));
            self.received() >= from + more
        });
    }

    /// Stops the client and waits for the server to read everything sent.
    pub(crate) fn finish(self) -> Transferred {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .writer
            .join()
            .expect("writer thread")
            .expect("the writing side's connection failed");
        let (received, first_bad) = self
            .reader
            .join()
            .expect("reader thread")
            .expect("the reading side's connection failed");
        Transferred {
            sent,
            received,
            first_bad,
        }
    }
}
