//! `udpgen`: the small-packet load generator of `bench/side-by-side`.
//!
//! - `udpgen send --to IP:PORT --size 64 --seconds N`: sends `size`-byte UDP payloads as fast as
//!   it can, `sendmmsg(2)` with batches of 64, for N seconds.
//! - `udpgen recv --port P --seconds N`: counts datagrams with `recvmmsg(2)` from the first one
//!   received for N seconds (or until the sender has been quiet for half a second).
//! - `udpgen pingpong server --port P --seconds N` / `udpgen pingpong client --to IP:PORT
//!   --seconds N`: 1-byte UDP request/response, one at a time; the client reports the median
//!   and the 99th percentile of the round-trip times.
//!
//! Each command prints one JSON object on stdout (for the script); errors go to stderr with a
//! non-zero exit status.

use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, setsockopt, sockopt, MsgFlags, MultiHeaders};

/// Datagrams per `sendmmsg`/`recvmmsg` call.
const BATCH: usize = 64;
/// Receive buffer slot per datagram (larger than any pod MTU here).
const SLOT: usize = 2048;
/// Socket buffer asked for (SO_RCVBUFFORCE/SO_SNDBUFFORCE as root, else capped by rmem_max).
const SOCKET_BUFFER: usize = 4 << 20;
/// How long a blocking receive waits before the loop looks at the clock again.
const POLL: Duration = Duration::from_millis(100);
/// A receiver that got packets and then none for this long considers the sender done.
const IDLE: Duration = Duration::from_millis(500);

/// UDP load generator for bench/side-by-side.
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send fixed-size datagrams as fast as possible (sendmmsg, batches of 64).
    Send {
        /// Destination address.
        #[arg(long)]
        to: SocketAddrV4,
        /// UDP payload bytes per datagram.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// How long to send.
        #[arg(long)]
        seconds: f64,
    },
    /// Count received datagrams (recvmmsg) and print packets/s.
    Recv {
        /// UDP port to listen on (all addresses).
        #[arg(long)]
        port: u16,
        /// Measurement window, from the first datagram.
        #[arg(long)]
        seconds: f64,
        /// Give up if nothing arrives within this many seconds.
        #[arg(long, default_value_t = 10.0)]
        wait: f64,
    },
    /// Request/response latency: one 1-byte datagram in flight at a time.
    Pingpong {
        #[command(subcommand)]
        role: Role,
    },
}

#[derive(Subcommand)]
enum Role {
    /// Echo every datagram back to its sender.
    Server {
        /// UDP port to listen on (all addresses).
        #[arg(long)]
        port: u16,
        /// Exit after this many seconds (a safety net; the script also kills it).
        #[arg(long)]
        seconds: f64,
    },
    /// Send requests one after the other and time the responses.
    Client {
        /// Server address.
        #[arg(long)]
        to: SocketAddrV4,
        /// How long to run.
        #[arg(long)]
        seconds: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Send { to, size, seconds } => send(to, size, secs(seconds)),
        Command::Recv {
            port,
            seconds,
            wait,
        } => recv(port, secs(seconds), secs(wait)),
        Command::Pingpong {
            role: Role::Server { port, seconds },
        } => pong(port, secs(seconds)),
        Command::Pingpong {
            role: Role::Client { to, seconds },
        } => ping(to, secs(seconds)),
    };
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("udpgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Adds what was being done to an error.
fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn bind(port: u16) -> Result<UdpSocket, String> {
    ctx(
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        &format!("bind UDP port {port}"),
    )
}

/// Big socket buffers: forced as root, else whatever the sysctl limits allow.
fn big_buffers(sock: &UdpSocket) {
    if setsockopt(sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(sock, sockopt::SndBuf, &SOCKET_BUFFER);
    }
}

fn send(to: SocketAddrV4, size: usize, duration: Duration) -> Result<String, String> {
    if size == 0 || size > SLOT {
        return Err(format!("--size {size}: must be 1..={SLOT}"));
    }
    let sock = bind(0)?;
    big_buffers(&sock);
    ctx(sock.connect(to), &format!("connect to {to}"))?;
    let payload = vec![0x5a_u8; size];
    // Connected socket: no per-message address (`()` has none).
    let addrs = [None::<()>; BATCH];
    let mut headers = MultiHeaders::<()>::preallocate(BATCH, None);
    let (mut sent, mut refused) = (0_u64, 0_u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|_| [IoSlice::new(&payload)]);
        match sendmmsg(
            sock.as_raw_fd(),
            &mut headers,
            &iovs,
            addrs,
            [],
            MsgFlags::empty(),
        ) {
            Ok(done) => sent += done.count() as u64,
            // The receiver is not up yet (ICMP port unreachable) or a queue is full: go on.
            Err(Errno::ECONNREFUSED | Errno::ENOBUFS | Errno::EAGAIN | Errno::EINTR) => {
                refused += 1
            }
            Err(e) => return Err(format!("sendmmsg to {to}: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"packets\":{sent},\"seconds\":{elapsed:.3},\"pps\":{:.0},\"send_errors\":{refused}}}",
        sent as f64 / elapsed
    ))
}

fn recv(port: u16, window: Duration, wait: Duration) -> Result<String, String> {
    let sock = bind(port)?;
    big_buffers(&sock);
    ctx(sock.set_read_timeout(Some(POLL)), "SO_RCVTIMEO")?;
    let mut bufs = vec![0_u8; BATCH * SLOT];
    let mut headers = MultiHeaders::<()>::preallocate(BATCH, None);
    let listening = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = listening;
    let mut packets = 0_u64;
    loop {
        let now = Instant::now();
        match first {
            None if now.duration_since(listening) > wait => {
                return Err(format!("no datagram on port {port} within {wait:?}"));
            }
            Some(t) if now.duration_since(t) >= window || now.duration_since(last) > IDLE => {
                break;
            }
            _ => {}
        }
        let mut chunks = bufs.chunks_exact_mut(SLOT);
        let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
            [IoSliceMut::new(
                chunks.next().expect("BATCH * SLOT bytes hold BATCH slots"),
            )]
        });
        match recvmmsg(
            sock.as_raw_fd(),
            &mut headers,
            &mut iovs,
            MsgFlags::MSG_WAITFORONE,
            None,
        ) {
            Ok(got) => {
                let n = got.count() as u64;
                if n > 0 {
                    last = Instant::now();
                    first.get_or_insert(last);
                    packets += n;
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(format!("recvmmsg on port {port}: {e}")),
        }
    }
    let first = first.expect("the loop ends with a packet or returns");
    let elapsed = last.duration_since(first).as_secs_f64().max(1e-6);
    Ok(format!(
        "{{\"packets\":{packets},\"seconds\":{elapsed:.3},\"pps\":{:.0}}}",
        packets as f64 / elapsed
    ))
}

fn pong(port: u16, lifetime: Duration) -> Result<String, String> {
    let sock = bind(port)?;
    ctx(sock.set_read_timeout(Some(POLL)), "SO_RCVTIMEO")?;
    let start = Instant::now();
    let mut buf = [0_u8; SLOT];
    let mut echoed = 0_u64;
    while start.elapsed() < lifetime {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                ctx(sock.send_to(&buf[..n], from), &format!("reply to {from}"))?;
                echoed += 1;
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(format!("receive on port {port}: {e}")),
        }
    }
    Ok(format!("{{\"echoed\":{echoed}}}"))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

fn ping(to: SocketAddrV4, duration: Duration) -> Result<String, String> {
    let sock = bind(0)?;
    ctx(sock.connect(to), &format!("connect to {to}"))?;
    // A request unanswered for this long is counted lost.
    ctx(sock.set_read_timeout(Some(POLL)), "SO_RCVTIMEO")?;
    let mut rtts_ns: Vec<u64> = Vec::new();
    let (mut seq, mut lost) = (0_u8, 0_u64);
    let mut buf = [0_u8; SLOT];
    let start = Instant::now();
    while start.elapsed() < duration {
        seq = seq.wrapping_add(1);
        let t0 = Instant::now();
        match sock.send(&[seq]) {
            Ok(_) => {}
            // Server not up yet (ICMP port unreachable): retry shortly.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(format!("send to {to}: {e}")),
        }
        // Wait for the reply carrying this sequence byte; older late replies are skipped.
        loop {
            match sock.recv(&mut buf) {
                Ok(1) if buf[0] == seq => {
                    rtts_ns.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
                Err(e) if is_timeout(&e) => {
                    lost += 1;
                    break;
                }
                Err(e) => return Err(format!("receive from {to}: {e}")),
            }
        }
    }
    if rtts_ns.is_empty() {
        return Err(format!("no reply from {to} in {duration:?}"));
    }
    rtts_ns.sort_unstable();
    let us = |p: f64| percentile(&rtts_ns, p) as f64 / 1000.0;
    Ok(format!(
        "{{\"samples\":{},\"lost\":{lost},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1}}}",
        rtts_ns.len(),
        us(50.0),
        us(99.0),
        us(100.0)
    ))
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&s, 50.0), 50);
        assert_eq!(percentile(&s, 99.0), 99);
        assert_eq!(percentile(&s, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
    }
}
