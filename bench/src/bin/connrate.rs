//! `connrate`: the new-connection load tool of `bench/services-side-by-side`.
//!
//! - `connrate serve --listen IP:PORT [--threads N]`: a TCP server; N threads accept, read a
//!   request line (up to `\n`), write a short fixed response and close.
//! - `connrate load --target IP:PORT --seconds S --concurrency C`: C threads, each in a loop:
//!   connect, send `GET\n`, read the response to EOF, close. Prints one JSON object: completed
//!   connections per second, the median and 99th percentile of the time from `connect` to EOF,
//!   and the number of failed connections.
//!
//! Errors go to stderr with a non-zero exit status.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

/// The server's answer to every request.
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
/// What the client sends.
const REQUEST: &[u8] = b"GET\n";
/// A connect, read or write that takes longer than this counts as an error.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// TCP connection-rate load tool for bench/services-side-by-side.
#[derive(Parser)]
#[command(about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept connections, answer one short response each, close.
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Accepting threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Open, use and close connections as fast as possible; print JSON.
    Load {
        /// Server (or service VIP) address.
        #[arg(long)]
        target: SocketAddr,
        /// How long to run.
        #[arg(long)]
        seconds: f64,
        /// Client threads, one connection in flight each.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve { listen, threads } => serve(listen, threads),
        Command::Load {
            target,
            seconds,
            concurrency,
        } => load(target, seconds, concurrency),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connrate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(listen: SocketAddr, threads: usize) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let l = listener
            .try_clone()
            .map_err(|e| format!("listener clone: {e}"))?;
        handles.push(thread::spawn(move || loop {
            match l.accept() {
                Ok((s, _)) => {
                    // A client that misbehaves only costs its own connection.
                    let _ = answer(s);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("connrate: accept: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }));
    }
    for h in handles {
        h.join()
            .map_err(|_| "a server thread panicked".to_string())?;
    }
    Ok(())
}

/// Reads up to the end of the request line, writes the response; the stream closes on drop.
fn answer(mut s: TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    let mut buf = [0u8; 256];
    let mut seen = 0;
    loop {
        let n = s.read(&mut buf[seen..])?;
        if n == 0 {
            return Ok(());
        }
        if buf[seen..seen + n].contains(&b'\n') {
            break;
        }
        seen = (seen + n) % buf.len();
    }
    s.write_all(RESPONSE)
}

/// One connection: connect, request, read to EOF. Ok(false) for a short response.
fn one(target: &SocketAddr, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(target, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    s.write_all(REQUEST)?;
    let mut got = 0;
    loop {
        match s.read(buf)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got == RESPONSE.len())
}

fn load(target: SocketAddr, seconds: f64, concurrency: usize) -> Result<(), String> {
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err("--seconds must be positive".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match one(&target, &mut buf) {
                        Ok(true) => {
                            lat_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX))
                        }
                        Ok(false) => errors += 1,
                        Err(_) => {
                            errors += 1;
                            // Don't spin on an immediate failure (no route, no ports).
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                (lat_us, errors)
            })
        })
        .collect();
    thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().map_err(|_| "a client thread panicked")?;
        all.extend(l);
        errors += e;
    }
    // Connections finished after the stop flag still count, over the time they took.
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i]
    };
    let out = serde_json::json!({
        "target": target.to_string(),
        "concurrency": concurrency,
        "seconds": elapsed,
        "conns": all.len(),
        "conns_per_sec": all.len() as f64 / elapsed,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "errors": errors,
    });
    println!("{out}");
    if all.is_empty() {
        return Err(format!(
            "no connection to {target} completed ({errors} errors)"
        ));
    }
    Ok(())
}
