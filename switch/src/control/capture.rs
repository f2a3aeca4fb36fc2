//! A capture's stream, both ends: the server side ([`CaptureSource`], what the node's capture
//! offers, and `stream_capture`, which writes its copies to the connection) and the client
//! side ([`capture`], which reads the stream and writes a pcap file).
//!
//! The stream follows the [`Response::Capture`] line on the same connection: frames, each a
//! tag byte and its body, the last one an end. Tag [`CAPTURE_RECORD`]: a pcap record (16-byte
//! header, then as many bytes as its captured length says, at most the snap length). Tag
//! [`CAPTURE_END`]: a [`CaptureEnd`] as one JSON line, after which the server closes the
//! connection.
//!
//! Invariants: the server sends at most `count` records and always ends with an end frame
//! unless the client is gone; it never waits for the data plane (copies are looked for every
//! few milliseconds); the client stops a capture by shutting its side down for writing and
//! still waits (bounded, [`CAPTURE_WAIT`]) for the end, so the copies dropped are reported; a
//! record longer than the snap length or an unknown tag is a malformed stream, not a panic.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::client::{connect, ControlError};
use super::protocol::{CaptureEnd, CaptureSpec, Request, Response, CAPTURE_END, CAPTURE_RECORD};
use crate::node::NodeCapture;

/// A running capture as the server streams it (see
/// [`ControlHandler::capture`](super::ControlHandler::capture)).
pub trait CaptureSource: Send {
    /// Appends the copies waiting, at most `max`, each as a [`CAPTURE_RECORD`] frame, to
    /// `out`; returns how many.
    fn drain(&mut self, out: &mut Vec<u8>, max: u64) -> u64;
    /// Copies dropped so far because the reader fell behind.
    fn dropped(&self) -> u64;
    /// Why no more copies will come (the pod or peer is gone), once none will.
    fn ended(&self) -> Option<String>;
}

/// The node's capture, framed for the stream.
impl CaptureSource for NodeCapture {
    fn drain(&mut self, out: &mut Vec<u8>, max: u64) -> u64 {
        self.take_copies(max, |header, data| {
            out.push(CAPTURE_RECORD);
            out.extend_from_slice(header);
            out.extend_from_slice(data);
        })
    }

    fn dropped(&self) -> u64 {
        self.copies_dropped()
    }

    fn ended(&self) -> Option<String> {
        self.gone()
    }
}

/// How long a capture with nothing to send waits before looking again (the data plane never
/// wakes the reader: that would cost it a system call per batch).
const CAPTURE_IDLE: Duration = Duration::from_millis(5);
/// Copies sent in one write at most.
const CAPTURE_BATCH: u64 = 256;

/// Writes the capture header, then the copies of `source` as they come, until the count is
/// reached, the client stops it (shuts its side down) or the target is gone; then the end.
/// A client gone (a failed write or read) ends it without an end. Dropping `source` stops the
/// copying in the data plane.
pub(super) async fn stream_capture(
    read: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    mut source: Box<dyn CaptureSource>,
    spec: &CaptureSpec,
) {
    let header = Response::Capture {
        snaplen: spec.snaplen,
        linktype: crate::pcap::LINKTYPE_ETHERNET,
    };
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    if write.write_all(&out).await.is_err() {
        return;
    }
    let mut sent = 0u64;
    let mut scratch = [0u8; 64];
    let reason = loop {
        let left = spec.count.map_or(u64::MAX, |c| c.saturating_sub(sent));
        if left == 0 {
            break "count reached".to_string();
        }
        // Looked at before draining: what came before the end is still sent.
        let ended = source.ended();
        out.clear();
        let n = source.drain(&mut out, left.min(CAPTURE_BATCH));
        sent += n;
        if !out.is_empty() && write.write_all(&out).await.is_err() {
            return;
        }
        if let (Some(why), 0) = (&ended, n) {
            break why.clone();
        }
        let busy = n == CAPTURE_BATCH;
        tokio::select! {
            biased;
            r = read.read(&mut scratch) => match r {
                Ok(0) => break "stopped by the client".to_string(),
                Ok(_) => {} // Stray bytes: ignored.
                Err(_) => return,
            },
            () = async {
                if busy {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(CAPTURE_IDLE).await;
                }
            } => {}
        }
    };
    let end = CaptureEnd {
        captured: sent,
        dropped: source.dropped(),
        reason,
    };
    drop(source);
    out.clear();
    out.push(CAPTURE_END);
    out.extend_from_slice(&serde_json::to_vec(&end).unwrap_or_default());
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

/// How often a capture client looks at its stop flag while nothing comes.
const CAPTURE_POLL: Duration = Duration::from_millis(100);
/// How long a capture client waits for the server's answer, and for its end once stopping.
const CAPTURE_WAIT: Duration = Duration::from_secs(30);

/// One frame of a capture stream.
enum CaptureFrame<'a> {
    /// A pcap record: its header and captured bytes.
    Record(&'a [u8]),
    End(CaptureEnd),
}

/// The first frame of `buf` and its length; `None` if it is not all there yet.
fn capture_frame(buf: &[u8], snaplen: u32) -> Result<Option<(CaptureFrame<'_>, usize)>, String> {
    use crate::pcap::RECORD_HEADER_LEN;
    let Some(&tag) = buf.first() else {
        return Ok(None);
    };
    match tag {
        CAPTURE_RECORD => {
            let Some(header) = buf
                .get(1..1 + RECORD_HEADER_LEN)
                .and_then(|h| <&[u8; RECORD_HEADER_LEN]>::try_from(h).ok())
            else {
                return Ok(None);
            };
            let len = crate::pcap::record_captured_len(header);
            if len > snaplen {
                return Err(format!(
                    "a record of {len} bytes, over the snap length {snaplen}"
                ));
            }
            let end = 1 + RECORD_HEADER_LEN + len as usize;
            Ok(buf.get(1..end).map(|r| (CaptureFrame::Record(r), end)))
        }
        CAPTURE_END => {
            let Some(i) = buf.iter().position(|b| *b == b'\n') else {
                return Ok(None);
            };
            let end = serde_json::from_slice(&buf[1..i]).map_err(|e| e.to_string())?;
            Ok(Some((CaptureFrame::End(end), i + 1)))
        }
        _ => Err(format!("unknown capture frame tag {tag:#04x}")),
    }
}

/// Runs the capture `spec` on the server at `path`, writing a pcap file to `out`: the global
/// header, then each record as it comes, flushed whenever nothing more is waiting (a pipe
/// reader sees packets promptly). Returns the server's end once it ends the capture (count
/// reached, pod gone), or once `stop` is set (Ctrl-C) or `out` is closed (a broken pipe,
/// reason "output closed"): then the server is told to stop and its end, with the copies it
/// dropped, awaited.
pub fn capture(
    path: &Path,
    spec: &CaptureSpec,
    out: &mut dyn Write,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<CaptureEnd, ControlError> {
    let shown = path.display().to_string();
    let io = |source: std::io::Error| ControlError::Io {
        path: shown.clone(),
        source,
    };
    let bad = |message: String| ControlError::BadResponse {
        path: shown.clone(),
        message,
    };
    let stream = connect(path)?;
    let mut line = serde_json::to_vec(&Request::Capture(spec.clone())).unwrap_or_default();
    line.push(b'\n');
    stream.set_write_timeout(Some(CAPTURE_WAIT)).map_err(io)?;
    (&stream).write_all(&line).map_err(io)?;
    stream.set_read_timeout(Some(CAPTURE_POLL)).map_err(io)?;

    let started = Instant::now();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 18);
    let mut snaplen = None;
    // Set once stopping: since when, and the reason to report instead of the server's.
    let mut stopping: Option<(Instant, Option<&str>)> = None;
    let mut told = false;
    // A closed output stops the capture; any other output error fails it.
    let written = |r: std::io::Result<()>| match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == IoErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(ControlError::Output(e)),
    };
    loop {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            let Some(snap) = snaplen else {
                let Some(i) = rest.iter().position(|b| *b == b'\n') else {
                    break;
                };
                match serde_json::from_slice(&rest[..i]).map_err(|e| bad(e.to_string()))? {
                    Response::Capture { snaplen: s, .. } => {
                        snaplen = Some(s);
                        if !written(out.write_all(&crate::pcap::global_header(s)))? {
                            stopping.get_or_insert((Instant::now(), Some("output closed")));
                        }
                    }
                    Response::Error { message, .. } => {
                        return Err(ControlError::Failed { message })
                    }
                    other => return Err(bad(format!("expected a capture, got {other:?}"))),
                }
                used += i + 1;
                continue;
            };
            match capture_frame(rest, snap).map_err(&bad)? {
                None => break,
                Some((CaptureFrame::Record(record), n)) => {
                    used += n;
                    if stopping.is_none() && !written(out.write_all(record))? {
                        stopping = Some((Instant::now(), Some("output closed")));
                    }
                }
                Some((CaptureFrame::End(mut end), _)) => {
                    if let Some((_, Some(why))) = stopping {
                        end.reason = why.into();
                    }
                    if stopping.is_none() {
                        written(out.flush())?;
                    }
                    return Ok(end);
                }
            }
        }
        buf.drain(..used);
        if stopping.is_none() && !written(out.flush())? {
            stopping = Some((Instant::now(), Some("output closed")));
        }
        if stopping.is_none() && stop.load(std::sync::atomic::Ordering::Relaxed) {
            stopping = Some((Instant::now(), None));
        }
        if stopping.is_some() && !told {
            // The server answers a shut-down side with its end.
            told = true;
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        match stopping {
            Some((since, _)) if since.elapsed() > CAPTURE_WAIT => {
                return Err(ControlError::Timeout {
                    path: shown,
                    timeout: CAPTURE_WAIT,
                });
            }
            None if snaplen.is_none() && started.elapsed() > CAPTURE_WAIT => {
                return Err(ControlError::Timeout {
                    path: shown,
                    timeout: CAPTURE_WAIT,
                });
            }
            _ => {}
        }
        let old = buf.len();
        buf.resize(old + (1 << 16), 0);
        let r = (&stream).read(&mut buf[old..]);
        buf.truncate(old + *r.as_ref().unwrap_or(&0));
        match r {
            Ok(0) => return Err(ControlError::Closed { path: shown }),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    IoErrorKind::WouldBlock | IoErrorKind::TimedOut | IoErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io(e)),
        }
    }
}
