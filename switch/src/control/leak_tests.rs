//! The control socket under a leak of idle clients, and requests over the size limit: an
//! in-process server (no root needed), the real client ([`call`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::server::Limits;
use super::{call, ControlHandler, ControlSocket, Request, Response, MAX_LINE};

/// Answers `pod_list` with no pods, `pod_del` with an error naming the length of the name
/// it was given (so a test sees the whole request arrived), and `fdb` after 3 s (a request
/// that keeps its connection busy).
struct Node;

impl ControlHandler for Node {
    fn handle(&self, req: Request) -> Response {
        match req {
            Request::PodList => Response::Pods(Vec::new()),
            Request::PodDel { name } => Response::error(format!("no pod of {} bytes", name.len())),
            Request::Fdb => {
                std::thread::sleep(Duration::from_secs(3));
                Response::Fdb(Vec::new())
            }
            _ => Response::Ok,
        }
    }
}

/// A socket in a fresh directory, served on its own thread until dropped.
struct Server {
    dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(tag: &str, limits: Limits) -> Server {
        let dir = std::env::temp_dir().join(crate::testutil::unique(&format!("psleak{tag}")));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let socket = ControlSocket::bind(&dir.join("node.sock"))
            .expect("bind")
            .with_limits(limits);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(socket.serve(Arc::new(Node), async {
                let _ = stopped.await;
            }))
        });
        Server {
            dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("node.sock")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` connections that send nothing (a leaking client), each connected before the next.
fn idle_connections(path: &Path, n: usize) -> Vec<std::os::unix::net::UnixStream> {
    (0..n)
        .map(|i| {
            std::os::unix::net::UnixStream::connect(path)
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect()
}

#[test]
fn a_fresh_request_is_served_while_200_idle_connections_are_held_open() {
    // Idle connections are not timed out during the test: only the slots' sharing can
    // serve the fresh request.
    let server = Server::start(
        "idle",
        Limits {
            idle: Duration::from_secs(600),
            ..Limits::DEFAULT
        },
    );
    let path = server.path();
    let idle = idle_connections(&path, 200);
    for i in 0..3 {
        match call(&path, &Request::PodList, Duration::from_secs(10)) {
            Ok(Response::Pods(pods)) => assert!(pods.is_empty()),
            other => panic!("fresh request {i} with 200 idle connections open: {other:?}"),
        }
    }
    // A fresh connection that itself idles is not favoured forever: the later ones are served
    // too (each time the connection waiting longest gives its slot up).
    let more = idle_connections(&path, 50);
    match call(&path, &Request::PodList, Duration::from_secs(10)) {
        Ok(Response::Pods(_)) => {}
        other => panic!("after 250 idle connections: {other:?}"),
    }
    drop((idle, more));
}

#[test]
fn a_request_over_the_limit_gets_the_nodes_error_naming_the_limit_not_a_broken_pipe() {
    let server = Server::start("long", Limits::DEFAULT);
    let path = server.path();
    // A request far above the old 64 KiB limit and below the limit now is served whole.
    let big = "x".repeat(1 << 20);
    match call(
        &path,
        &Request::PodDel { name: big },
        Duration::from_secs(30),
    ) {
        Ok(Response::Error { message, .. }) => {
            assert_eq!(message, format!("no pod of {} bytes", 1 << 20))
        }
        other => panic!("a 1 MiB request: {other:?}"),
    }
    // Over the limit: the client gets the node's answer, not the write's EPIPE.
    let huge = "x".repeat(MAX_LINE + (4 << 20));
    match call(
        &path,
        &Request::PodDel { name: huge },
        Duration::from_secs(30),
    ) {
        Ok(Response::Error { message, .. }) => assert!(
            message.contains("request longer than the control socket's limit of 16 MiB"),
            "{message}"
        ),
        other => panic!("a request over the limit: {other:?}"),
    }
}

#[test]
fn a_client_refused_before_its_request_is_read_reports_the_nodes_message() {
    // A request the server never reads (the connection is refused as it comes): the client's
    // write may fail, its report is still the node's message.
    let server = Server::start(
        "full",
        Limits {
            connections: 1,
            idle: Duration::from_secs(600),
        },
    );
    let path = server.path();
    // The one slot is held by a request in progress (not an idle connection: it cannot be
    // asked to make room).
    let held = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    (&held).write_all(b"{\"op\":\"fdb\"}\n").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    let big = "x".repeat(8 << 20);
    match call(
        &path,
        &Request::PodDel { name: big },
        Duration::from_secs(30),
    ) {
        Ok(Response::Error { message, .. }) | Err(super::ControlError::Failed { message }) => {
            assert!(message.contains("control connections at once"), "{message}")
        }
        other => panic!("refused: {other:?}"),
    }
    drop(held);
}

#[test]
fn large_requests_take_turns_and_small_ones_never_wait_for_them() {
    let server = Server::start("turns", Limits::DEFAULT);
    let path = server.path();
    // Three large requests arrive in part (more than 64 KiB each, no newline yet): two read
    // on, the third waits for a turn.
    let big: Vec<_> = (0..3)
        .map(|_| {
            let s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let mut head = b"{\"op\":\"pod_del\",\"name\":\"".to_vec();
            head.extend(std::iter::repeat_n(b'x', 200 * 1024));
            (&s).write_all(&head).expect("write");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    match call(&path, &Request::PodList, Duration::from_secs(10)) {
        Ok(Response::Pods(_)) => {}
        other => panic!("a small request while large ones read: {other:?}"),
    }
    // Finished, each is served in turn, whole.
    for s in &big {
        (&*s).write_all(b"\"}\n").expect("write");
    }
    for s in &big {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).expect("answer");
        assert_eq!(
            serde_json::from_str::<Response>(&line).expect("a response"),
            Response::error(format!("no pod of {} bytes", 200 * 1024))
        );
    }
}
