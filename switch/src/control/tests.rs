//! The control socket end to end, in process (no root needed): the wire format, the server's
//! limits and its answers through the real client.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;

use std::net::Ipv4Addr;

use std::io::{BufRead, BufReader, ErrorKind as IoErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::client::running_sockets_in;
use super::server::{serve, Limits};
use super::*;
use crate::node::{
    make_parent, FdbEntry, FlowStatus, PeerSpec, PodSpec, PodStatus, ServiceSpec, ServiceStatus,
};
use crate::pipeline::PortCounts as Counters;

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "podswitch-control-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("node.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn running_sockets_are_the_live_ones_here_and_one_directory_down() {
    use std::os::unix::net::UnixListener;
    let dir = TempDir::new("running");
    let lab = dir.0.join("lab");
    let deep = lab.join("deeper");
    std::fs::create_dir_all(&deep).unwrap();
    let _node = UnixListener::bind(dir.0.join("node-a.sock")).unwrap();
    let _lab1 = UnixListener::bind(lab.join("node1.sock")).unwrap();
    // A killed daemon's socket file: nobody listens, connecting is refused.
    drop(UnixListener::bind(lab.join("node2.sock")).unwrap());
    assert!(lab.join("node2.sock").exists());
    // Two levels down, or not named *.sock: not a node's.
    let _deep = UnixListener::bind(deep.join("node3.sock")).unwrap();
    let _other = UnixListener::bind(dir.0.join("other.socket")).unwrap();
    std::fs::write(dir.0.join("fake.sock"), b"not a socket").unwrap();
    assert_eq!(
        running_sockets_in(&dir.0),
        vec![dir.0.join("lab/node1.sock"), dir.0.join("node-a.sock")]
    );
    assert!(running_sockets_in(&dir.0.join("missing")).is_empty());
}

fn web(name: &str, mac: Option<crate::node::Mac>) -> PodSpec {
    PodSpec {
        name: name.into(),
        netns: name.into(),
        ip: Some(Ipv4Addr::new(10, 244, 1, 10)),
        mac,
        container_id: None,
        ifname: "eth0".into(),
    }
}

fn sample_pod(name: &str) -> PodStatus {
    PodStatus {
        spec: web(name, None),
        mac: crate::node::Mac([2, 0x42, 10, 244, 1, 10]),
        prefix_len: 24,
        gateway: Ipv4Addr::new(10, 244, 1, 1),
        port: 1,
        created_netns: true,
        counters: Counters {
            rx_frames: 3,
            rx_dropped: 1,
            ..Counters::default()
        },
        drops: [("spoofed_mac".to_string(), 1)].into(),
    }
}

fn web_service() -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        vip: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        proto: crate::node::ServiceProto::Tcp,
        backends: vec![
            "10.244.1.10:8080".parse().unwrap(),
            "10.244.2.10:8080".parse().unwrap(),
        ],
        affinity: None,
    }
}

fn sample_service() -> ServiceStatus {
    ServiceStatus {
        spec: web_service(),
        connections: vec![3, 0],
        source: crate::node::PeerSource::Etcd,
    }
}

fn sample_flow() -> FlowStatus {
    FlowStatus {
        proto: crate::node::ServiceProto::Tcp,
        client: "10.244.1.11:40000".parse().unwrap(),
        vip: "10.96.0.10:80".parse().unwrap(),
        backend: "10.244.2.10:8080".parse().unwrap(),
        state: "established".into(),
        age_secs: 5,
        expires_in_secs: 86395,
    }
}

/// A fake node. `pod_del "hold"` blocks until `pod_del "release"` arrives (to show requests
/// run concurrently); `pod_del "panic"` panics.
#[derive(Default)]
struct Fake {
    gate: Mutex<bool>,
    opened: Condvar,
    calls: AtomicUsize,
}

impl ControlHandler for Fake {
    fn handle(&self, req: Request) -> Response {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match req {
            Request::PodAdd(spec) => match spec.mac {
                Some(m) if m.0[0] & 1 != 0 => Response::error("pod.mac: group"),
                _ => Response::Pod(sample_pod(&spec.name)),
            },
            Request::PodDel { name } if name == "hold" => {
                let mut open = self.gate.lock().unwrap();
                while !*open {
                    open = self.opened.wait(open).unwrap();
                }
                Response::Ok
            }
            Request::PodDel { name } if name == "release" => {
                *self.gate.lock().unwrap() = true;
                self.opened.notify_all();
                Response::Ok
            }
            Request::PodDel { name } if name == "panic" => panic!("fake handler panic"),
            Request::PodDel { .. } => Response::Ok,
            Request::PodDelByContainer { container_id, .. } if container_id == "known" => {
                Response::Ok
            }
            Request::PodDelByContainer {
                container_id,
                ifname,
            } => Response::error_of(
                ErrorKind::NotFound,
                format!("no pod with container ID {container_id:?} and interface {ifname:?}"),
            ),
            Request::NodeInfo => Response::Node {
                name: "node-a".into(),
                pod_cidr: "10.244.1.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 244, 1, 1),
                mtu: 1450,
            },
            Request::PodList => Response::Pods(vec![sample_pod("a"), sample_pod("b")]),
            Request::PeerAdd(_) | Request::PeerDel { .. } => Response::Ok,
            Request::PeerList => Response::Peers(Vec::new()),
            Request::Upgrade { binary } => Response::Upgrading {
                binary: binary.unwrap_or_else(|| "/usr/local/bin/podswitch".into()),
                version: "podswitch 0.1.0".into(),
            },
            Request::ServiceAdd(spec) if spec.port == 0 => Response::error_of(
                ErrorKind::Refused,
                "service.port: 0 is not between 1 and 65535 (a TCP or UDP port)",
            ),
            Request::ServiceAdd(_) => Response::Ok,
            Request::ServiceDel { name } if name == "web" => Response::Ok,
            Request::ServiceDel { name } => {
                Response::error_of(ErrorKind::NotFound, format!("no service named {name:?}"))
            }
            Request::ServiceList => Response::Services(vec![sample_service()]),
            Request::Conntrack => Response::Flows(vec![sample_flow()]),
            Request::Capture(_) => Response::error("fake: no capture"),
            Request::Fdb => Response::Fdb(vec![FdbEntry {
                mac: crate::node::Mac([2, 0x42, 10, 244, 1, 10]),
                port: 1,
                port_name: Some("a".into()),
                is_static: true,
                age_secs: 0,
            }]),
            Request::Status => Response::Status {
                node: "node-a".into(),
                pods: 2,
                rx: 10,
                forwarded: 7,
                delivered_locally: 2,
                dropped: 1,
                drops_by_reason: [("malformed".to_string(), 1)].into(),
                workers: vec![9, 1],
                stalls: 0,
                cluster: None,
                fast_path: Some(crate::node::FastPathStatus {
                    hook: "tcx".into(),
                    pods: 2,
                    withdrawn: 0,
                    packets: [("local".to_string(), 5), ("up_miss".to_string(), 3)].into(),
                    flows: 0,
                    flows_refused: 0,
                }),
            },
        }
    }
}

/// A server on its own thread (current-thread runtime), stopped on `stop()`.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(path: &Path, handler: Arc<dyn ControlHandler>) -> Server {
        Self::start_with(path, handler, Limits::DEFAULT)
    }

    fn start_with(path: &Path, handler: Arc<dyn ControlHandler>, limits: Limits) -> Server {
        let socket = ControlSocket::bind(path).unwrap().with_limits(limits);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(socket.serve(handler, async {
                let _ = stopped.await;
            }))
        });
        Server {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> std::io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

const T: Duration = Duration::from_secs(10);

/// Sends raw bytes on a connection and reads one response line.
fn raw_exchange(
    stream: &std::os::unix::net::UnixStream,
    reader: &mut BufReader<&std::os::unix::net::UnixStream>,
    bytes: &[u8],
) -> Response {
    let mut w = stream;
    w.write_all(bytes).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn raw_connect(path: &Path) -> std::os::unix::net::UnixStream {
    let s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

#[test]
fn wire_format_is_tagged_json() {
    let req = Request::PodAdd(web("web", None));
    assert_eq!(
        serde_json::to_string(&req).unwrap(),
        r#"{"op":"pod_add","name":"web","netns":"web","ip":"10.244.1.10"}"#
    );
    assert_eq!(
        serde_json::to_string(&Request::PodList).unwrap(),
        r#"{"op":"pod_list"}"#
    );
    let parsed: Request = serde_json::from_str(r#"{"op":"pod_del","name":"web"}"#).unwrap();
    assert_eq!(parsed, Request::PodDel { name: "web".into() });
    assert_eq!(
        serde_json::to_string(&Request::Upgrade { binary: None }).unwrap(),
        r#"{"op":"upgrade"}"#
    );
    let parsed: Request =
        serde_json::from_str(r#"{"op":"upgrade","binary":"/usr/local/bin/podswitch"}"#).unwrap();
    assert_eq!(
        parsed,
        Request::Upgrade {
            binary: Some("/usr/local/bin/podswitch".into())
        }
    );
    assert_eq!(
        serde_json::to_string(&Response::Ok).unwrap(),
        r#"{"result":"ok"}"#
    );
    assert_eq!(
        serde_json::to_string(&Response::error("no")).unwrap(),
        r#"{"result":"error","data":{"message":"no"}}"#
    );
    for resp in [
        Response::Ok,
        Response::Pod(sample_pod("a")),
        Response::Pods(vec![sample_pod("a")]),
        Response::Fdb(vec![]),
        Fake::default().handle(Request::Status),
        Response::error("x"),
    ] {
        let text = serde_json::to_string(&resp).unwrap();
        assert_eq!(
            serde_json::from_str::<Response>(&text).unwrap(),
            resp,
            "{text}"
        );
    }
    let e = serde_json::from_str::<Request>(r#"{"op":"pod_del","name":"a","x":1}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `x`"), "{e}");
}

#[test]
fn pod_and_peer_add_carry_the_spec() {
    let peer = Request::PeerAdd(PeerSpec {
        name: "node-b".into(),
        underlay: Ipv4Addr::new(192, 168, 77, 2),
        pod_cidr: "10.244.2.0/24".parse().unwrap(),
        vtep_mac: Some(crate::node::Mac([2, 0xee, 0, 0, 0, 2])),
    });
    let text = serde_json::to_string(&peer).unwrap();
    assert_eq!(
        text,
        r#"{"op":"peer_add","name":"node-b","underlay":"192.168.77.2","pod_cidr":"10.244.2.0/24","vtep_mac":"02:ee:00:00:00:02"}"#
    );
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), peer);
    let e = serde_json::from_str::<Request>(
        r#"{"op":"pod_add","name":"a","netns":"a","ip":"10.244.1.10","mac":"nope"}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("\"nope\" is not a MAC address"), "{e}");
    let e = serde_json::from_str::<Request>(
        r#"{"op":"peer_add","name":"b","underlay":"192.168.77.2","pod_cidr":"10.244.2.0/24","x":1}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `x`"), "{e}");
}

#[test]
fn cni_requests_and_answers_have_a_stable_shape() {
    // What the CNI plugin sends and reads: spelled out, so a change shows here.
    let add = Request::PodAdd(PodSpec {
        container_id: Some("c0ffee".into()),
        ifname: "net1".into(),
        netns: "/proc/42/ns/net".into(),
        ..web("cni-c0ffee", None)
    });
    let text = serde_json::to_string(&add).unwrap();
    assert_eq!(
        text,
        r#"{"op":"pod_add","name":"cni-c0ffee","netns":"/proc/42/ns/net","ip":"10.244.1.10","container_id":"c0ffee","ifname":"net1"}"#
    );
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), add);
    // A pod without ip: no "ip" key, and back.
    let auto = Request::PodAdd(PodSpec {
        ip: None,
        ..web("a", None)
    });
    let text = serde_json::to_string(&auto).unwrap();
    assert_eq!(text, r#"{"op":"pod_add","name":"a","netns":"a"}"#);
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), auto);
    // Old requests parse: no container ID, eth0.
    let Request::PodAdd(old) = serde_json::from_str::<Request>(
        r#"{"op":"pod_add","name":"a","netns":"a","ip":"10.244.1.10"}"#,
    )
    .unwrap() else {
        panic!("not a pod_add")
    };
    assert_eq!((old.container_id, old.ifname.as_str()), (None, "eth0"));

    let del = Request::PodDelByContainer {
        container_id: "c0ffee".into(),
        ifname: "net1".into(),
    };
    let text = serde_json::to_string(&del).unwrap();
    assert_eq!(
        text,
        r#"{"op":"pod_del_by_container","container_id":"c0ffee","ifname":"net1"}"#
    );
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), del);
    assert_eq!(
        serde_json::from_str::<Request>(r#"{"op":"pod_del_by_container","container_id":"c"}"#)
            .unwrap(),
        Request::PodDelByContainer {
            container_id: "c".into(),
            ifname: "eth0".into()
        }
    );
    assert_eq!(
        serde_json::to_string(&Request::NodeInfo).unwrap(),
        r#"{"op":"node_info"}"#
    );

    let node = Fake::default().handle(Request::NodeInfo);
    let text = serde_json::to_string(&node).unwrap();
    assert_eq!(
        text,
        r#"{"result":"node","data":{"name":"node-a","pod_cidr":"10.244.1.0/24","gateway":"10.244.1.1","mtu":1450}}"#
    );
    assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), node);

    let pod = Response::Pod(sample_pod("a"));
    let text = serde_json::to_string(&pod).unwrap();
    assert!(
        text.contains(r#""mac":"02:42:0a:f4:01:0a","prefix_len":24,"gateway":"10.244.1.1""#),
        "{text}"
    );
    assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), pod);

    // Errors: a kind when there is one, none otherwise; old and unknown kinds parse.
    let nf = Response::error_of(ErrorKind::NotFound, "gone");
    let text = serde_json::to_string(&nf).unwrap();
    assert_eq!(
        text,
        r#"{"result":"error","data":{"message":"gone","kind":"not_found"}}"#
    );
    assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), nf);
    assert_eq!(
        serde_json::to_string(&Response::error_of(ErrorKind::Refused, "x")).unwrap(),
        r#"{"result":"error","data":{"message":"x","kind":"refused"}}"#
    );
    assert_eq!(
        serde_json::from_str::<Response>(r#"{"result":"error","data":{"message":"old"}}"#).unwrap(),
        Response::error("old")
    );
    assert_eq!(
        serde_json::from_str::<Response>(
            r#"{"result":"error","data":{"message":"new","kind":"on_fire"}}"#
        )
        .unwrap(),
        Response::error_of(ErrorKind::Other, "new")
    );
}

#[test]
fn service_requests_and_answers_have_a_stable_shape() {
    let add = Request::ServiceAdd(ServiceSpec {
        affinity: Some(crate::node::ServiceAffinity::ClientIp),
        ..web_service()
    });
    let text = serde_json::to_string(&add).unwrap();
    assert_eq!(
        text,
        r#"{"op":"service_add","name":"web","vip":"10.96.0.10","port":80,"proto":"tcp","backends":["10.244.1.10:8080","10.244.2.10:8080"],"affinity":"client_ip"}"#
    );
    assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), add);
    // proto and backends may be left out: tcp, none.
    let Request::ServiceAdd(min) = serde_json::from_str::<Request>(
        r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53}"#,
    )
    .unwrap() else {
        panic!("not a service_add")
    };
    assert_eq!(
        (min.proto, min.backends.len(), min.affinity),
        (crate::node::ServiceProto::Tcp, 0, None)
    );
    for (text, want) in [
        (
            r#"{"op":"service_del","name":"web"}"#,
            Request::ServiceDel { name: "web".into() },
        ),
        (r#"{"op":"service_list"}"#, Request::ServiceList),
        (r#"{"op":"conntrack"}"#, Request::Conntrack),
    ] {
        assert_eq!(serde_json::to_string(&want).unwrap(), text);
        assert_eq!(serde_json::from_str::<Request>(text).unwrap(), want);
    }
    for bad in [
        r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53,"proto":"sctp"}"#,
        r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53,"affinity":"none"}"#,
        r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":70000}"#,
        r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53,"backends":["10.244.1.1"]}"#,
        r#"{"op":"service_add","name":"a","vip":"10.96.0.1","port":53,"x":1}"#,
    ] {
        assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
    }

    let list = Response::Services(vec![sample_service()]);
    let text = serde_json::to_string(&list).unwrap();
    assert_eq!(
        text,
        r#"{"result":"services","data":[{"spec":{"name":"web","vip":"10.96.0.10","port":80,"proto":"tcp","backends":["10.244.1.10:8080","10.244.2.10:8080"]},"connections":[3,0],"source":"etcd"}]}"#
    );
    assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), list);
    // An answer without a source (an older daemon) still reads: a runtime service.
    let old = r#"{"result":"services","data":[{"spec":{"name":"web","vip":"10.96.0.10","port":80},"connections":[]}]}"#;
    match serde_json::from_str::<Response>(old).unwrap() {
        Response::Services(s) => assert_eq!(s[0].source, crate::node::PeerSource::Runtime),
        other => panic!("{other:?}"),
    }
    let flows = Response::Flows(vec![sample_flow()]);
    let text = serde_json::to_string(&flows).unwrap();
    assert_eq!(
        text,
        r#"{"result":"flows","data":[{"proto":"tcp","client":"10.244.1.11:40000","vip":"10.96.0.10:80","backend":"10.244.2.10:8080","state":"established","age_secs":5,"expires_in_secs":86395}]}"#
    );
    assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), flows);
}

#[test]
fn drops_by_reason_are_in_the_json_and_optional_for_older_nodes() {
    let pods = Response::Pods(vec![sample_pod("web")]);
    let text = serde_json::to_string(&pods).unwrap();
    assert!(text.contains(r#""drops":{"spoofed_mac":1}"#), "{text}");
    assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), pods);
    // An older node's pod: no drops field.
    let old = text.replace(r#","drops":{"spoofed_mac":1}"#, "");
    match serde_json::from_str::<Response>(&old).unwrap() {
        Response::Pods(p) => assert!(p[0].drops.is_empty()),
        other => panic!("{other:?}"),
    }
    let status = Fake::default().handle(Request::Status);
    let text = serde_json::to_string(&status).unwrap();
    assert!(
        text.contains(r#""drops_by_reason":{"malformed":1}"#),
        "{text}"
    );
    let old = text.replace(r#""drops_by_reason":{"malformed":1},"#, "");
    match serde_json::from_str::<Response>(&old).unwrap() {
        Response::Status {
            drops_by_reason, ..
        } => assert!(drops_by_reason.is_empty()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn service_requests_round_trip_through_the_socket() {
    let dir = TempDir::new("services");
    let path = dir.sock();
    let server = Server::start(&path, Arc::new(Fake::default()));
    assert_eq!(
        call(&path, &Request::ServiceAdd(web_service()), T).unwrap(),
        Response::Ok
    );
    assert_eq!(
        call(
            &path,
            &Request::ServiceAdd(ServiceSpec {
                port: 0,
                ..web_service()
            }),
            T
        )
        .unwrap(),
        Response::error_of(
            ErrorKind::Refused,
            "service.port: 0 is not between 1 and 65535 (a TCP or UDP port)"
        )
    );
    assert_eq!(
        call(&path, &Request::ServiceList, T).unwrap(),
        Response::Services(vec![sample_service()])
    );
    assert_eq!(
        call(&path, &Request::Conntrack, T).unwrap(),
        Response::Flows(vec![sample_flow()])
    );
    assert_eq!(
        call(&path, &Request::ServiceDel { name: "web".into() }, T).unwrap(),
        Response::Ok
    );
    assert_eq!(
        call(
            &path,
            &Request::ServiceDel {
                name: "nope".into()
            },
            T
        )
        .unwrap(),
        Response::error_of(ErrorKind::NotFound, "no service named \"nope\"")
    );
    server.stop().unwrap();
}

/// A handler whose captures are made up: `len` records of 10 bytes (all `i`, from a
/// 100-byte frame) and 2 dropped, then gone; endless with `len` None.
struct Streamer {
    len: Option<u64>,
}

struct FakeSource {
    sent: u64,
    len: Option<u64>,
}

impl CaptureSource for FakeSource {
    fn drain(&mut self, out: &mut Vec<u8>, max: u64) -> u64 {
        let left = self.len.map_or(u64::MAX, |l| l - self.sent);
        let n = left.min(max).min(3);
        for _ in 0..n {
            out.push(CAPTURE_RECORD);
            let ts = Duration::from_secs(self.sent);
            out.extend_from_slice(&crate::pcap::record_header(ts, 10, 100));
            out.extend_from_slice(&[self.sent as u8; 10]);
            self.sent += 1;
        }
        n
    }

    fn dropped(&self) -> u64 {
        2
    }

    fn ended(&self) -> Option<String> {
        (Some(self.sent) == self.len).then(|| "fake is gone".into())
    }
}

impl ControlHandler for Streamer {
    fn handle(&self, _: Request) -> Response {
        Response::Ok
    }

    fn capture(&self, spec: CaptureSpec) -> Result<Box<dyn CaptureSource>, Box<Response>> {
        match spec.pod.as_deref() {
            Some("nope") => Err(Box::new(Response::error_of(
                ErrorKind::NotFound,
                "capture: no pod named \"nope\"",
            ))),
            _ => Ok(Box::new(FakeSource {
                sent: 0,
                len: self.len,
            })),
        }
    }
}

fn capture_of(pod: &str, count: Option<u64>) -> CaptureSpec {
    CaptureSpec {
        pod: Some(pod.into()),
        peer: None,
        snaplen: 64,
        count,
    }
}

/// A writer that takes `room` bytes, then reports a closed pipe.
struct Pipe {
    room: usize,
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::Error::from(IoErrorKind::BrokenPipe));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_capture_streams_pcap_records_until_its_end() {
    let dir = TempDir::new("capture");
    let path = dir.sock();
    let server = Server::start(&path, Arc::new(Streamer { len: Some(7) }));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let text = serde_json::to_string(&Request::Capture(capture_of("a", None))).unwrap();
    assert_eq!(text, r#"{"op":"capture","pod":"a","snaplen":64}"#);

    // The source ends by itself: every record, then its end.
    let mut out = Vec::new();
    let end = capture(&path, &capture_of("a", None), &mut out, &stop).unwrap();
    assert_eq!(
        end,
        CaptureEnd {
            captured: 7,
            dropped: 2,
            reason: "fake is gone".into()
        }
    );
    assert_eq!(out.len(), 24 + 7 * (16 + 10));
    assert_eq!(&out[..24], &crate::pcap::global_header(64));
    let last = &out[24 + 6 * 26..];
    assert_eq!(
        &last[..16],
        &crate::pcap::record_header(Duration::from_secs(6), 10, 100)
    );
    assert_eq!(&last[16..], &[6; 10]);

    // A count stops it there.
    let mut out = Vec::new();
    let end = capture(&path, &capture_of("a", Some(5)), &mut out, &stop).unwrap();
    assert_eq!((end.captured, end.reason.as_str()), (5, "count reached"));
    assert_eq!(out.len(), 24 + 5 * 26);

    // Refused by name, as the handler says.
    let err = capture(&path, &capture_of("nope", None), &mut Vec::new(), &stop).unwrap_err();
    assert_eq!(err.to_string(), "capture: no pod named \"nope\"");
    server.stop().unwrap();
}

#[test]
fn a_capture_stops_on_request_and_when_its_output_closes() {
    let dir = TempDir::new("capstop");
    let path = dir.sock();
    let server = Server::start(&path, Arc::new(Streamer { len: None }));
    // Ctrl-C before anything came: the client says stop, the server ends.
    let stop = std::sync::atomic::AtomicBool::new(true);
    let mut out = Vec::new();
    let end = capture(&path, &capture_of("a", None), &mut out, &stop).unwrap();
    assert_eq!(end.reason, "stopped by the client");
    assert_eq!(&out[..24], &crate::pcap::global_header(64));
    assert_eq!((out.len() - 24) % 26, 0, "whole records only");
    // The reader of the output goes away (a closed pipe): stopped, not failed.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut pipe = Pipe { room: 100 };
    let end = capture(&path, &capture_of("a", None), &mut pipe, &stop).unwrap();
    assert_eq!(end.reason, "output closed");
    assert_eq!(end.dropped, 2);
    server.stop().unwrap();
}

#[test]
fn request_response_round_trips() {
    let dir = TempDir::new("roundtrip");
    let path = dir.sock();
    let fake = Arc::new(Fake::default());
    let server = Server::start(&path, fake.clone());

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let add = Request::PodAdd(web("web", None));
    assert_eq!(
        call(&path, &add, T).unwrap(),
        Response::Pod(sample_pod("web"))
    );
    let bad = Request::PodAdd(web("web", Some(crate::node::Mac([1, 0, 0, 0, 0, 1]))));
    assert_eq!(
        call(&path, &bad, T).unwrap(),
        Response::error("pod.mac: group")
    );
    assert_eq!(
        call(&path, &Request::PodList, T).unwrap(),
        Response::Pods(vec![sample_pod("a"), sample_pod("b")])
    );
    assert!(matches!(call(&path, &Request::Fdb, T).unwrap(), Response::Fdb(v) if v.len() == 1));
    assert_eq!(
        call(&path, &Request::Status, T).unwrap(),
        fake.handle(Request::Status)
    );
    assert_eq!(
        call(&path, &Request::PodDel { name: "web".into() }, T).unwrap(),
        Response::Ok
    );
    server.stop().unwrap();
}

#[test]
fn one_connection_carries_many_requests_and_survives_malformed_lines() {
    let dir = TempDir::new("malformed");
    let path = dir.sock();
    let fake = Arc::new(Fake::default());
    let server = Server::start(&path, fake.clone());
    let stream = raw_connect(&path);
    let mut reader = BufReader::new(&stream);

    let r = raw_exchange(&stream, &mut reader, b"?? not json\n");
    let Response::Error { message, .. } = r else {
        panic!("{r:?}")
    };
    assert!(
        message.starts_with("malformed request: expected value"),
        "{message}"
    );

    let r = raw_exchange(&stream, &mut reader, b"{\"op\":\"reboot\"}\n");
    let Response::Error { message, .. } = r else {
        panic!("{r:?}")
    };
    assert!(
        message.starts_with("malformed request: unknown variant `reboot`"),
        "{message}"
    );

    let r = raw_exchange(
        &stream,
        &mut reader,
        b"{\"op\":\"pod_add\",\"name\":\"a\"}\n",
    );
    let Response::Error { message, .. } = r else {
        panic!("{r:?}")
    };
    assert!(message.contains("missing field `netns`"), "{message}");

    let r = raw_exchange(
        &stream,
        &mut reader,
        b"{\"op\":\"pod_add\",\"name\":\"a\",\"netns\":\"a\",\"ip\":\"10.244.1.999\"}\n",
    );
    let Response::Error { message, .. } = r else {
        panic!("{r:?}")
    };
    assert!(message.contains("invalid IPv4 address syntax"), "{message}");

    // Blank lines are skipped; the connection still works, several requests in one write.
    let r = raw_exchange(
        &stream,
        &mut reader,
        b"\n  \n{\"op\":\"status\"}\n{\"op\":\"pod_list\"}\n",
    );
    assert!(matches!(r, Response::Status { .. }), "{r:?}");
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        matches!(serde_json::from_str(&line).unwrap(), Response::Pods(_)),
        "{line}"
    );
    // Malformed lines never reached the handler.
    assert_eq!(fake.calls.load(Ordering::Relaxed), 2);

    // A last request without a newline is still answered when the client half-closes.
    (&stream).write_all(b"{\"op\":\"fdb\"}").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        matches!(serde_json::from_str(&line).unwrap(), Response::Fdb(_)),
        "{line}"
    );
    line.clear();
    assert_eq!(reader.read_line(&mut line).unwrap(), 0, "{line}");
    server.stop().unwrap();
}

/// The one response line a connection gets before the server closes it.
fn last_words(stream: &std::os::unix::net::UnixStream) -> String {
    stream.set_read_timeout(Some(T)).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut rest = String::new();
    assert_eq!(reader.read_line(&mut rest).unwrap(), 0, "then EOF: {rest}");
    match serde_json::from_str(&line).unwrap() {
        Response::Error { message, .. } => message,
        r => panic!("{r:?}"),
    }
}

#[test]
fn connections_over_the_limit_are_told_and_closed_and_a_freed_slot_is_reused() {
    let dir = TempDir::new("limit");
    let path = dir.sock();
    let fake = Arc::new(Fake::default());
    let limits = Limits {
        connections: 4,
        idle: T * 6,
    };
    let server = Server::start_with(&path, fake.clone(), limits);
    // Four connections inside a request each (held in the handler): none can make room.
    let held: Vec<_> = (0..4)
        .map(|_| {
            let s = raw_connect(&path);
            (&s).write_all(b"{\"op\":\"pod_del\",\"name\":\"hold\"}\n")
                .unwrap();
            s
        })
        .collect();
    crate::testutil::wait_for("four requests in the handler", || {
        fake.calls.load(Ordering::Relaxed) == 4
    });
    for _ in 0..3 {
        let extra = raw_connect(&path);
        let message = last_words(&extra);
        assert!(
            message.contains("serves 4 control connections at once; try again later"),
            "{message}"
        );
    }
    // Answered, the held ones wait for their next request: a new connection takes the
    // slot of the one that has waited longest, which is told so and closed.
    *fake.gate.lock().unwrap() = true;
    fake.opened.notify_all();
    for s in &held {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert_eq!(
            serde_json::from_str::<Response>(&line).unwrap(),
            Response::Ok
        );
    }
    // The first is made the one waiting longest: the others ask again.
    std::thread::sleep(Duration::from_millis(20));
    for s in &held[1..] {
        let r = raw_exchange(s, &mut BufReader::new(s), b"{\"op\":\"fdb\"}\n");
        assert!(matches!(r, Response::Fdb(_)), "{r:?}");
    }
    let fresh = raw_connect(&path);
    let r = raw_exchange(&fresh, &mut BufReader::new(&fresh), b"{\"op\":\"fdb\"}\n");
    assert!(matches!(r, Response::Fdb(_)), "{r:?}");
    let message = last_words(&held[0]);
    assert!(
        message.contains("had waited longest for a request"),
        "{message}"
    );
    // The others still work; closed ones free their slots.
    let r = raw_exchange(
        &held[1],
        &mut BufReader::new(&held[1]),
        b"{\"op\":\"fdb\"}\n",
    );
    assert!(matches!(r, Response::Fdb(_)), "{r:?}");
    drop(held);
    crate::testutil::wait_for("a slot to be free", || {
        let s = raw_connect(&path);
        s.set_read_timeout(Some(T)).unwrap();
        let mut reader = BufReader::new(&s);
        (&s).write_all(b"{\"op\":\"status\"}\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).is_ok()
            && matches!(serde_json::from_str(&line), Ok(Response::Status { .. }))
    });
    drop(fresh);
    server.stop().unwrap();
}

#[test]
fn an_idle_connection_is_told_and_closed_and_others_are_not() {
    let dir = TempDir::new("idle");
    let path = dir.sock();
    let limits = Limits {
        connections: 8,
        idle: Duration::from_secs(1),
    };
    let server = Server::start_with(&path, Arc::new(Fake::default()), limits);
    // Silent, or half a request: both are idle.
    let silent = raw_connect(&path);
    let partial = raw_connect(&path);
    (&partial).write_all(b"{\"op\":").unwrap();
    for s in [&silent, &partial] {
        let message = last_words(s);
        assert!(message.contains("no request for 1s"), "{message}");
    }
    // A busy connection is never idle.
    let busy = raw_connect(&path);
    let mut reader = BufReader::new(&busy);
    for _ in 0..5 {
        let r = raw_exchange(&busy, &mut reader, b"{\"op\":\"status\"}\n");
        assert!(matches!(r, Response::Status { .. }), "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop().unwrap();
}

#[test]
fn overlong_line_is_refused_and_connection_closed() {
    let dir = TempDir::new("long");
    let path = dir.sock();
    let fake = Arc::new(Fake::default());
    let server = Server::start(&path, fake.clone());
    let stream = raw_connect(&path);
    let mut reader = BufReader::new(&stream);

    let mut long = vec![b'a'; MAX_LINE + 10];
    long.push(b'\n');
    // The server stops reading after the limit; the rest of the write may fail once it
    // closes, which is fine.
    let writer = {
        let s = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = (&s).write_all(&long);
        })
    };
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let r: Response = serde_json::from_str(&line).unwrap();
    assert_eq!(
        r,
        Response::error(
            "request longer than the control socket's limit of 16 MiB (16777216 bytes); closing the connection"
        )
    );
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert_eq!(e.kind(), IoErrorKind::ConnectionReset, "{e}"),
    }
    writer.join().unwrap();
    assert_eq!(fake.calls.load(Ordering::Relaxed), 0);

    // A line of exactly MAX_LINE bytes (plus the newline) is accepted.
    let stream = raw_connect(&path);
    let mut reader = BufReader::new(&stream);
    let mut exact = vec![b' '; MAX_LINE - 16];
    exact.extend_from_slice(b"{\"op\":\"status\"}");
    assert_eq!(exact.len(), MAX_LINE - 1);
    exact.push(b' ');
    exact.push(b'\n');
    let r = raw_exchange(&stream, &mut reader, &exact);
    assert!(matches!(r, Response::Status { .. }), "{r:?}");
    server.stop().unwrap();
}

#[test]
fn requests_run_concurrently() {
    let dir = TempDir::new("concurrent");
    let path = dir.sock();
    let server = Server::start(&path, Arc::new(Fake::default()));
    let held = {
        let path = path.clone();
        std::thread::spawn(move || {
            call(
                &path,
                &Request::PodDel {
                    name: "hold".into(),
                },
                T,
            )
        })
    };
    // Served while "hold" blocks its handler; then "hold" completes too. A server that
    // handled one request at a time would time out here instead.
    assert_eq!(
        call(
            &path,
            &Request::PodDel {
                name: "release".into()
            },
            T
        )
        .unwrap(),
        Response::Ok
    );
    assert_eq!(held.join().unwrap().unwrap(), Response::Ok);
    server.stop().unwrap();
}

#[test]
fn handler_panic_becomes_an_error_response() {
    let dir = TempDir::new("panic");
    let path = dir.sock();
    let server = Server::start(&path, Arc::new(Fake::default()));
    let r = call(
        &path,
        &Request::PodDel {
            name: "panic".into(),
        },
        T,
    )
    .unwrap();
    assert_eq!(
        r,
        Response::error("internal error: the request handler panicked (see the node's log)")
    );
    assert_eq!(
        call(&path, &Request::PodList, T).unwrap(),
        Fake::default().handle(Request::PodList)
    );
    server.stop().unwrap();
}

#[test]
fn stale_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let path = dir.sock();
    // A socket file nobody listens on, as a crashed run leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Server::start(&path, Arc::new(Fake::default()));
    assert_eq!(
        call(&path, &Request::PodDel { name: "x".into() }, T).unwrap(),
        Response::Ok
    );
    server.stop().unwrap();
    assert!(!path.exists());
}

#[test]
fn socket_in_use_is_refused_and_left_alone() {
    let dir = TempDir::new("inuse");
    let path = dir.sock();
    let server = Server::start(&path, Arc::new(Fake::default()));
    let e = ControlSocket::bind(&path).unwrap_err();
    assert_eq!(e.kind(), IoErrorKind::AddrInUse);
    assert_eq!(
        e.to_string(),
        format!(
            "control socket {} is in use by another podswitch",
            path.display()
        )
    );
    // The first server still answers on its socket.
    assert_eq!(
        call(&path, &Request::PodDel { name: "x".into() }, T).unwrap(),
        Response::Ok
    );
    server.stop().unwrap();
}

#[test]
fn non_socket_file_is_not_replaced() {
    let dir = TempDir::new("file");
    let path = dir.sock();
    std::fs::write(&path, "precious").unwrap();
    let e = ControlSocket::bind(&path).unwrap_err();
    assert_eq!(e.kind(), IoErrorKind::AlreadyExists);
    assert!(e.to_string().contains("exists and is not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn shutdown_removes_the_socket_and_creates_missing_dirs_only_its_own() {
    // Elsewhere, a missing directory is a mistyped path: refused, not made.
    let dir = TempDir::new("shutdown");
    let typo = dir.0.join("run/podswitch/node.sock");
    let e = ControlSocket::bind(&typo).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!dir.0.join("run").exists());
    // Under its own directory (here the temporary one), made with mode 0700.
    make_parent(&typo, &dir.0).unwrap();
    let mode = std::fs::metadata(dir.0.join("run/podswitch"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let path = typo;
    let server = Server::start(&path, Arc::new(Fake::default()));
    // An idle open connection does not hold up shutdown.
    let idle = raw_connect(&path);
    assert_eq!(
        call(&path, &Request::PodDel { name: "x".into() }, T).unwrap(),
        Response::Ok
    );
    server.stop().unwrap();
    assert!(!path.exists());
    let mut buf = Vec::new();
    assert_eq!((&idle).read_to_end(&mut buf).unwrap(), 0);
    // A socket bound but never served is removed when dropped.
    let socket = ControlSocket::bind(&path).unwrap();
    assert!(path.exists());
    drop(socket);
    assert!(!path.exists());
}

#[test]
fn serve_function_binds_and_stops() {
    let dir = TempDir::new("servefn");
    let path = dir.sock();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handler: Arc<dyn ControlHandler> = Arc::new(Fake::default());
    // Shutdown already complete: binds, stops, removes the socket.
    rt.block_on(serve(&path, handler.clone(), async {}))
        .unwrap();
    assert!(!path.exists());
    // Binding errors come back from serve.
    std::fs::write(&path, "x").unwrap();
    let e = rt.block_on(serve(&path, handler, async {})).unwrap_err();
    assert_eq!(e.kind(), IoErrorKind::AlreadyExists);
}

#[test]
fn client_errors_say_what_went_wrong() {
    let dir = TempDir::new("client");
    let path = dir.sock();
    let e = call(&path, &Request::Status, T).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot connect to {} (", path.display()))
            && e.ends_with("): is `podswitch run` running?"),
        "{e}"
    );

    // A server that accepts and never answers: the call times out.
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let e = call(&path, &Request::Status, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(e, ControlError::Timeout { .. }), "{e}");
    assert!(e.to_string().starts_with("no response from"), "{e}");

    // A server that closes without answering, and one that answers garbage.
    let peer = std::thread::spawn(move || {
        let (a, _) = listener.accept().unwrap(); // the timed-out call
        drop(a);
        let (b, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&b).read_line(&mut line).unwrap();
        drop(b);
        let (c, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line).unwrap();
        (&c).write_all(b"{\"result\":\"maybe\"}\n").unwrap();
    });
    let e = call(&path, &Request::Status, T).unwrap_err();
    assert!(matches!(e, ControlError::Closed { .. }), "{e}");
    let e = call(&path, &Request::Status, T).unwrap_err();
    assert!(matches!(e, ControlError::BadResponse { .. }), "{e}");
    assert!(e.to_string().contains("unknown variant `maybe`"), "{e}");
    peer.join().unwrap();
}
