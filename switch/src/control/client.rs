//! The client side of the control socket: which socket to talk to ([`find_socket`],
//! [`running_sockets`]), one request and its response ([`call`]), and `podswitch upgrade`
//! ([`upgrade`]: ask, then wait for the node to answer again, and tell a failed upgrade at
//! once, with what the daemon logged meanwhile).
//!
//! Invariants: every call is bounded in time (its timeout covers connecting, writing and
//! reading) and in memory (a response line is read up to [`MAX_RESPONSE`] bytes); an answer a
//! server sent before closing the connection on a request it refused is read and reported,
//! not lost behind the write's error.

use std::io::{BufRead, BufReader, ErrorKind as IoErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::peer::{log_since, log_size, peer_pid, process_alive, server_pid, stderr_of};
use super::protocol::{Request, Response, MAX_RESPONSE};

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens on the socket (or it does not exist).
    #[error("cannot connect to {path} ({source}): is `podswitch run` running?")]
    NotRunning {
        /// Socket path.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The socket exists but we may not connect to it.
    #[error("cannot connect to {path}: permission denied (the socket is 0600: run as the user that runs `podswitch run`, usually root)")]
    PermissionDenied {
        /// Socket path.
        path: String,
    },
    /// Connecting, sending or receiving failed.
    #[error("talking to {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// No complete response arrived in time.
    #[error("no response from {path} within {timeout:?}: the node may be busy or stuck")]
    Timeout {
        /// Socket path.
        path: String,
        /// The time allowed.
        timeout: Duration,
    },
    /// The server closed the connection before answering.
    #[error("{path} closed the connection without answering")]
    Closed {
        /// Socket path.
        path: String,
    },
    /// The server sent something that is not a response.
    #[error("malformed response from {path}: {message}")]
    BadResponse {
        /// Socket path.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The node refused the request (a capture of an unknown pod, say); the message says why.
    #[error("{message}")]
    Failed {
        /// The node's message.
        message: String,
    },
    /// Writing the capture's output failed (other than a closed pipe, which stops it).
    #[error("writing the capture: {0}")]
    Output(std::io::Error),
}

/// Why no default control socket could be chosen ([`find_socket`]).
#[derive(Debug, thiserror::Error)]
pub enum FindSocketError {
    /// No live socket in the directory or its subdirectories: no node runs here.
    #[error("no podswitch node answers on a control socket in {dir} (or a directory in it): is `podswitch run` running?")]
    NoSocket {
        /// The directory looked in.
        dir: String,
    },
    /// Several live sockets: which node is meant must be said.
    #[error("{} nodes run here; say which with --control (or PODSWITCH_CONTROL): {}", .found.len(), .found.join(", "))]
    Many {
        /// The live sockets found.
        found: Vec<String>,
    },
}

/// The control sockets of the nodes running on this machine: every `*.sock` in the directory
/// of the default sockets (`/run/podswitch`, see
/// [`NodeSpec::control_path`](crate::node::NodeSpec::control_path)) and in the directories
/// directly inside it (a lab's, `/run/podswitch/<lab>/`) that a node listens on (a socket file
/// left by a killed daemon refuses the connection and is skipped). Sorted.
pub fn running_sockets() -> Vec<PathBuf> {
    running_sockets_in(Path::new(crate::node::spec::CONTROL_DIR))
}

pub(super) fn running_sockets_in(dir: &Path) -> Vec<PathBuf> {
    let entries = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let top = entries(dir);
    let nested = top.iter().filter(|p| p.is_dir()).flat_map(|d| entries(d));
    let mut live: Vec<PathBuf> = top
        .iter()
        .cloned()
        .chain(nested)
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        .collect();
    live.sort();
    live
}

/// The control socket a client talks to: `given` if any, else the only running node's
/// ([`running_sockets`]). The one rule of the CLI and the CNI plugin.
pub fn find_socket(given: Option<PathBuf>) -> Result<PathBuf, FindSocketError> {
    if let Some(p) = given {
        return Ok(p);
    }
    let dir = Path::new(crate::node::spec::CONTROL_DIR);
    let mut socks = running_sockets_in(dir);
    match socks.len() {
        1 => Ok(socks.remove(0)),
        0 => Err(FindSocketError::NoSocket {
            dir: dir.display().to_string(),
        }),
        _ => Err(FindSocketError::Many {
            found: socks.iter().map(|p| p.display().to_string()).collect(),
        }),
    }
}

/// Connects to the server at `path`.
pub(super) fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream, ControlError> {
    let shown = path.display().to_string();
    std::os::unix::net::UnixStream::connect(path).map_err(|source| match source.kind() {
        IoErrorKind::NotFound | IoErrorKind::ConnectionRefused => ControlError::NotRunning {
            path: shown,
            source,
        },
        IoErrorKind::PermissionDenied => ControlError::PermissionDenied { path: shown },
        _ => ControlError::Io {
            path: shown,
            source,
        },
    })
}

/// Sends `req` to the server at `path` and waits for its response, blocking, for at most
/// `timeout` in total (`Duration::ZERO`: no limit).
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Response, ControlError> {
    let shown = path.display().to_string();
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let io = |source: std::io::Error| -> ControlError {
        if matches!(
            source.kind(),
            IoErrorKind::WouldBlock | IoErrorKind::TimedOut
        ) {
            ControlError::Timeout {
                path: shown.clone(),
                timeout,
            }
        } else {
            ControlError::Io {
                path: shown.clone(),
                source,
            }
        }
    };
    let stream = connect(path)?;
    // Time left before the deadline; `Err(Timeout)` once it has passed.
    let remaining = || -> Result<Option<Duration>, ControlError> {
        match deadline {
            None => Ok(None),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(ControlError::Timeout {
                    path: shown.clone(),
                    timeout,
                }),
            },
        }
    };

    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Io {
        path: shown.clone(),
        source: std::io::Error::other(format!("cannot encode the request: {e}")),
    })?;
    line.push(b'\n');
    stream.set_write_timeout(remaining()?).map_err(io)?;
    // A server that answers before it has read the whole request (one over its limit, a
    // connection it cannot take) closes the connection: the write fails, and the answer it
    // sent first says why, so it is read before the write's error is reported.
    let write_failed = match (&stream).write_all(&line) {
        Ok(()) => None,
        Err(e)
            if matches!(
                e.kind(),
                IoErrorKind::BrokenPipe | IoErrorKind::ConnectionReset
            ) =>
        {
            Some(e)
        }
        Err(e) => return Err(io(e)),
    };
    let answer = read_answer(&stream, &shown, &remaining, &io);
    match (answer, write_failed) {
        (Ok(response), _) => Ok(response),
        (Err(_), Some(e)) => Err(io(e)),
        (Err(e), None) => Err(e),
    }
}

/// Reads one response line from `stream`, each read bounded by `remaining`.
fn read_answer(
    stream: &std::os::unix::net::UnixStream,
    shown: &str,
    remaining: &dyn Fn() -> Result<Option<Duration>, ControlError>,
    io: &dyn Fn(std::io::Error) -> ControlError,
) -> Result<Response, ControlError> {
    let mut reader = BufReader::new(stream);
    let mut response = Vec::new();
    loop {
        stream.set_read_timeout(remaining()?).map_err(io)?;
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            // A signal arrived during the read (a test harness's or a CLI's child exiting):
            // read again, as `read_line` would.
            Err(e) if e.kind() == IoErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        if buf.is_empty() {
            return Err(ControlError::Closed {
                path: shown.to_string(),
            });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        if response.len() + chunk.len() > MAX_RESPONSE {
            return Err(ControlError::BadResponse {
                path: shown.to_string(),
                message: format!("longer than {MAX_RESPONSE} bytes"),
            });
        }
        response.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(done);
        reader.consume(used);
        if done {
            break;
        }
    }
    serde_json::from_slice(&response).map_err(|e| ControlError::BadResponse {
        path: shown.to_string(),
        message: e.to_string(),
    })
}

/// Why `podswitch upgrade` failed. `log` is what the daemon logged since the request (or
/// where to look for it), appended to the message.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The control socket refused the connection.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// Sending the request failed.
    #[error("talking to {path}: {source}")]
    Talk {
        /// Socket path.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// No answer to the request.
    #[error("no answer from {path}: {source}")]
    NoAnswer {
        /// Socket path.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The answer is not a response.
    #[error("malformed answer from {path}: {message}")]
    Malformed {
        /// Socket path.
        path: String,
        /// The parser's complaint.
        message: String,
    },
    /// The node refused the upgrade (its message: a missing binary, a bad config, ...).
    #[error("{0}")]
    Refused(String),
    /// The node answered with something else than an upgrade under way.
    #[error("unexpected answer from {path}: {answer}")]
    Unexpected {
        /// Socket path.
        path: String,
        /// The answer, as debug text.
        answer: String,
    },
    /// The new binary's process exited before the node was up; the guard gave the node back
    /// to the old binary, which answers again.
    #[error("the upgrade failed: the daemon's process ({old}) running {binary} exited before node {node} was up; the node was given back to the old binary, which runs again (pid {now}) with its {pods} pods{log}")]
    GivenBack {
        /// The process that exec'd the new binary.
        old: u32,
        /// The new binary.
        binary: String,
        /// The node's name.
        node: String,
        /// The process serving the node again.
        now: u32,
        /// Its pods.
        pods: usize,
        /// The daemon's log since the request.
        log: String,
    },
    /// The daemon exited and nothing answers for the node.
    #[error("the daemon's process ({pid}) exited during the upgrade to {binary} and no node answers on {path}{log}")]
    Died {
        /// The daemon's process.
        pid: u32,
        /// The new binary.
        binary: String,
        /// Socket path.
        path: String,
        /// The daemon's log since the request.
        log: String,
    },
    /// The node did not answer again in time.
    #[error("the node did not answer on {path} within 60 s of the upgrade{log}")]
    Timeout {
        /// Socket path.
        path: String,
        /// The daemon's log since the request.
        log: String,
    },
}

/// `podswitch upgrade` of the node at `path`: asks for the upgrade on one connection, waits
/// for the old daemon to close it (it stops serving before the exec), then for the node to
/// answer again. A daemon process that exits meanwhile is noticed at once; the node answering
/// from another process is the old binary given back by the upgrade's guard: a failed
/// upgrade, reported with what the daemon logged since the request. Progress lines go to
/// `say`; returns the last line, that the node is back.
pub fn upgrade(
    path: &Path,
    binary: Option<PathBuf>,
    say: &mut dyn FnMut(&str),
) -> Result<String, UpgradeError> {
    let shown = path.display();
    let at = || shown.to_string();
    let started = std::time::Instant::now();
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|source| UpgradeError::Connect { path: at(), source })?;
    // Who serves now and where it logs: to notice it die and to show why.
    let pid = peer_pid(&stream);
    let log = pid.and_then(stderr_of);
    let log_from = log.as_deref().and_then(log_size);
    let timeout = Some(Duration::from_secs(30));
    let _ = (
        stream.set_read_timeout(timeout),
        stream.set_write_timeout(timeout),
    );
    let mut line =
        serde_json::to_vec(&Request::Upgrade { binary }).map_err(|e| UpgradeError::Talk {
            path: at(),
            source: e.into(),
        })?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|source| UpgradeError::Talk { path: at(), source })?;
    let mut reader = std::io::BufReader::new(&stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(|source| UpgradeError::NoAnswer { path: at(), source })?;
    let resp: Response = serde_json::from_str(&answer).map_err(|e| UpgradeError::Malformed {
        path: at(),
        message: e.to_string(),
    })?;
    let (new, version) = match resp {
        Response::Upgrading { binary, version } => (binary, version),
        Response::Error { message, .. } => return Err(UpgradeError::Refused(message)),
        other => {
            return Err(UpgradeError::Unexpected {
                path: at(),
                answer: format!("{other:?}"),
            })
        }
    };
    say(&format!("upgrading to {} ({version})", new.display()));
    // The old daemon closes every connection as it stops serving.
    let _ = reader.read_to_end(&mut Vec::new());
    // What the daemon logged since the request, for a failure's report.
    let logged = || {
        match (&log, log_from) {
        (Some(file), Some(from)) => match log_since(file, from, 40) {
            Ok(text) => format!("\nthe daemon's log since the request ({}):\n{text}", file.display()),
            Err(e) => format!("\nsee the daemon's log {}: {e}", file.display()),
        },
        (Some(other), None) => format!(
            "\nsee the daemon's log: its standard error is {} (the journal, or whatever started it)",
            other.display()
        ),
        (None, _) => "\nsee the daemon's log".to_string(),
    }
    };
    let deadline = started + Duration::from_secs(60);
    let mut died: Option<std::time::Instant> = None;
    loop {
        if let Ok(Response::Status { node, pods, .. }) =
            call(path, &Request::Status, Duration::from_secs(2))
        {
            match (pid, server_pid(path)) {
                (Some(old), Some(now)) if now != old => {
                    return Err(UpgradeError::GivenBack {
                        old,
                        binary: new.display().to_string(),
                        node,
                        now,
                        pods,
                        log: logged(),
                    });
                }
                _ => {
                    return Ok(format!(
                        "node {node} is back with its {pods} pods: it answered {} ms after the request",
                        started.elapsed().as_millis()
                    ));
                }
            }
        }
        match (pid, died) {
            (Some(p), None) if !process_alive(p) => {
                say(&format!("the daemon's process ({p}) exited during the upgrade; waiting for the node to be given back to the old binary"));
                died = Some(std::time::Instant::now());
            }
            (Some(p), Some(t)) if t.elapsed() > Duration::from_secs(15) => {
                return Err(UpgradeError::Died {
                    pid: p,
                    binary: new.display().to_string(),
                    path: at(),
                    log: logged(),
                });
            }
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            return Err(UpgradeError::Timeout {
                path: at(),
                log: logged(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
