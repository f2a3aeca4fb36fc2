//! The client side of `podswitch upgrade`: ask, then wait for the node to answer again, and
//! tell a failed upgrade (the daemon's process gone, the node given back to the old binary
//! by the upgrade's guard) at once, with what the daemon logged meanwhile.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

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
) -> Result<String, String> {
    let shown = path.display();
    let started = std::time::Instant::now();
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
    // Who serves now and where it logs: to notice it die and to show why.
    let pid = super::peer_pid(&stream);
    let log = pid.and_then(super::stderr_of);
    let log_from = log.as_deref().and_then(super::log_size);
    let timeout = Some(Duration::from_secs(30));
    let _ = (
        stream.set_read_timeout(timeout),
        stream.set_write_timeout(timeout),
    );
    let mut line = serde_json::to_vec(&Request::Upgrade { binary }).map_err(|e| e.to_string())?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| format!("talking to {shown}: {e}"))?;
    let mut reader = std::io::BufReader::new(&stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from {shown}: {e}"))?;
    let resp: Response =
        serde_json::from_str(&answer).map_err(|e| format!("malformed answer from {shown}: {e}"))?;
    let (new, version) = match resp {
        Response::Upgrading { binary, version } => (binary, version),
        Response::Error { message, .. } => return Err(message),
        other => return Err(format!("unexpected answer from {shown}: {other:?}")),
    };
    say(&format!("upgrading to {} ({version})", new.display()));
    // The old daemon closes every connection as it stops serving.
    let _ = reader.read_to_end(&mut Vec::new());
    // What the daemon logged since the request, for a failure's report.
    let logged = || {
        match (&log, log_from) {
        (Some(file), Some(from)) => match super::log_since(file, from, 40) {
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
            super::call(path, &Request::Status, Duration::from_secs(2))
        {
            match (pid, super::server_pid(path)) {
                (Some(old), Some(now)) if now != old => {
                    return Err(format!(
                        "the upgrade failed: the daemon's process ({old}) running {} exited before node {node} was up; the node was given back to the old binary, which runs again (pid {now}) with its {pods} pods{}",
                        new.display(),
                        logged()
                    ));
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
            (Some(p), None) if !super::process_alive(p) => {
                say(&format!("the daemon's process ({p}) exited during the upgrade; waiting for the node to be given back to the old binary"));
                died = Some(std::time::Instant::now());
            }
            (Some(p), Some(t)) if t.elapsed() > Duration::from_secs(15) => {
                return Err(format!(
                    "the daemon's process ({p}) exited during the upgrade to {} and no node answers on {shown}{}",
                    new.display(),
                    logged()
                ));
            }
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the node did not answer on {shown} within 60 s of the upgrade{}",
                logged()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
