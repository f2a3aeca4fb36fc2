use super::*;
use crate::wire::EthernetAddress;
use std::net::Ipv4Addr;

fn switch() -> Switch {
    switch_with_workers(1)
}

fn switch_with_workers(workers: usize) -> Switch {
    let cidr = "10.244.1.0/24".parse().expect("cidr");
    let mut cfg = SwitchConfig::new(NodeConfig::new(
        cidr,
        EthernetAddress([2, 0xee, 0, 0, 0, 1]),
    ));
    cfg.workers = workers;
    Switch::start(cfg).expect("switch")
}

fn pod(name: &str, last: u8) -> PortInfo {
    PortInfo {
        name: name.into(),
        kind: PortKind::Pod {
            mac: EthernetAddress([2, 0x42, 10, 244, 1, last]),
            ip: Ipv4Addr::new(10, 244, 1, last),
        },
    }
}

/// Two control threads attaching at once (the node's pod lock is not the switch's to
/// rely on) never get the same port id, and exactly one of two attaches of one name wins.
#[test]
fn concurrent_attaches_get_distinct_ids_and_one_name_wins() {
    let sw = switch();
    let barrier = std::sync::Barrier::new(2);
    let per_thread = 60u8;
    // Endpoints are kept: a dropped one closes its port, whose id is then free again.
    type Attached = Vec<(PortId, MemEndpoint)>;
    let (ids, same_name): (Vec<Attached>, Vec<(bool, Option<MemEndpoint>)>) =
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..2u8)
                .map(|t| {
                    let (sw, barrier) = (&sw, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let ids = (0..per_thread)
                            .map(|i| {
                                let last = 2 + t * per_thread + i;
                                sw.attach_mem_pod(pod(&format!("p{last}"), last))
                                    .expect("attach")
                            })
                            .collect::<Vec<_>>();
                        barrier.wait();
                        let won = sw.attach_mem_pod(pod("same", 250 + t)).ok();
                        (ids, (won.is_some(), won.map(|w| w.1)))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .unzip()
        });
    let mut all: Vec<PortId> = ids.iter().flatten().map(|(id, _)| *id).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        2 * usize::from(per_thread),
        "an id was given twice"
    );
    assert_eq!(same_name.iter().filter(|w| w.0).count(), 1);
    assert_eq!(sw.ports().len(), 2 * usize::from(per_thread) + 1);
    assert!(
        sw.ctx.registry().pending().is_empty(),
        "a reservation outlived its attach"
    );
}

#[test]
fn a_failed_attach_gives_its_id_back() {
    let sw = switch();
    let (a, _ea) = sw.attach_mem_pod(pod("a", 2)).expect("a");
    // Same IP as `a`: the topology refuses it after the id was reserved.
    assert!(sw.attach_mem_pod(pod("b", 2)).is_err());
    assert!(sw.ctx.registry().pending().is_empty());
    let (c, _ec) = sw.attach_mem_pod(pod("c", 3)).expect("c");
    assert_eq!(c, a + 1, "the refused attach's id is free again");
}

#[test]
fn services_are_kept_by_name_and_replaced() {
    let sw = switch();
    let web = Service {
        name: "web".into(),
        vip: std::net::Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        proto: crate::table::Proto::Tcp,
        backends: vec!["10.244.1.10:8080".parse().unwrap()],
        affinity: crate::table::Affinity::None,
    };
    sw.upsert_service(web.clone()).unwrap();
    let moved = Service {
        backends: vec!["10.244.1.11:8080".parse().unwrap()],
        ..web.clone()
    };
    let id = sw.services()[0].id;
    sw.upsert_service(moved.clone()).unwrap();
    let now = sw.services();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].service, moved);
    assert_eq!(now[0].id, id, "a replaced service keeps its id");
    assert_eq!(sw.remove_service("web").unwrap(), moved);
    assert!(matches!(
        sw.remove_service("web"),
        Err(SwitchError::NoSuchService(n)) if n == "web"
    ));
    assert!(sw.services().is_empty());
}

#[test]
fn every_port_needs_one_queue_per_worker() {
    let sw = switch_with_workers(2);
    assert_eq!(sw.workers(), 2);
    let Err(err) = sw.attach_mem_pod(pod("a", 10)) else {
        panic!("one queue attached to two workers");
    };
    assert!(
        matches!(err, SwitchError::QueueCount { got: 1, workers: 2 }),
        "{err}"
    );
    assert!(sw.ports().is_empty(), "nothing half attached");
    // Two in-memory queues of one pod: attached to both workers.
    let (q0, _e0) = mem_port(Arc::clone(sw.waker()));
    let (q1, _e1) = mem_port(Arc::clone(sw.waker()));
    let id = sw
        .attach_queues(pod("b", 11), vec![Box::new(q0), Box::new(q1)])
        .expect("two queues");
    assert_eq!(sw.port("b").map(|r| r.id), Some(id));
    assert!(sw.detach("b").is_ok());
    assert_eq!(sw.worker_frames().len(), 2);
}

#[test]
fn a_closed_port_is_forgotten_once_and_never_takes_its_successor_along() {
    let sw = switch_with_workers(2);
    let queues = || {
        let (q0, e0) = mem_port(Arc::clone(sw.waker()));
        let (q1, e1) = mem_port(Arc::clone(sw.waker()));
        (vec![Box::new(q0) as Box<dyn Port>, Box::new(q1)], e0, e1)
    };
    let (qa, ea0, ea1) = queues();
    let id = sw.attach_queues(pod("a", 10), qa).expect("a");
    let old = sw.port("a").expect("a").metrics;
    // Worker 0 finds its queue closed: the port is forgotten and worker 1 told to let go.
    drop(ea0);
    crate::testutil::wait_for("the closed port is forgotten", || sw.port("a").is_none());
    crate::testutil::wait_for("worker 1 releases its queue", || ea1.try_recv().is_err());
    // The id is free again; a late report about the old attachment leaves the new one.
    let (qb, _eb0, _eb1) = queues();
    assert_eq!(sw.attach_queues(pod("b", 11), qb).expect("b"), id);
    sw.ctx.forget_closed(1, id, &old);
    assert_eq!(sw.port("b").map(|r| r.id), Some(id));
    assert!(sw.tables().topology().port(id).is_some());
}

#[test]
fn paused_workers_move_no_frame_until_the_guard_goes() {
    use crate::testutil::{eth, ipv4, udp};
    let sw = switch_with_workers(2);
    let queues = |last| {
        let (q0, e0) = mem_port(Arc::clone(sw.waker()));
        let (q1, e1) = mem_port(Arc::clone(sw.waker()));
        let id = sw
            .attach_queues(
                pod(&format!("p{last}"), last),
                vec![Box::new(q0), Box::new(q1)],
            )
            .expect("attach");
        (id, e0, e1)
    };
    let (_, mut ea, _ea1) = queues(10);
    let (_, eb0, eb1) = queues(11);
    let frame = eth(
        [2, 0x42, 10, 244, 1, 11],
        [2, 0x42, 10, 244, 1, 10],
        0x0800,
        &ipv4(
            Ipv4Addr::new(10, 244, 1, 10),
            Ipv4Addr::new(10, 244, 1, 11),
            17,
            64,
            &udp(1, 2, b"x"),
        ),
    );
    let paused = sw.pause();
    let rx_before = sw.metrics().snapshot().rx;
    ea.send_frame(&frame).expect("a sends");
    ea.flush().expect("a flushes");
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        matches!((eb0.try_recv(), eb1.try_recv()), (Ok(None), Ok(None))),
        "a frame moved while paused"
    );
    assert_eq!(sw.metrics().snapshot().rx, rx_before, "nothing counted");
    drop(paused);
    let got = eb0
        .recv_timeout(std::time::Duration::from_secs(5))
        .ok()
        .flatten()
        .or_else(|| eb1.try_recv().ok().flatten());
    assert!(got.is_some_and(|b| b.len() == 1), "forwarded once resumed");
}

#[test]
fn a_capture_copies_what_a_port_receives_and_sends_until_the_port_goes() {
    use crate::testutil::{eth, ipv4, udp};
    let sw = switch();
    let (a, mut ea) = sw.attach_mem_pod(pod("a", 10)).expect("a");
    let (_, mut eb) = sw.attach_mem_pod(pod("b", 11)).expect("b");
    let cap = sw.capture(CaptureTarget::Port(a), 20).expect("capture");
    let frame = |src: u8, dst: u8| {
        let ip = |n| Ipv4Addr::new(10, 244, 1, n);
        let packet = ipv4(ip(src), ip(dst), 17, 64, &udp(1, 2, &[src; 30]));
        eth(
            [2, 0x42, 10, 244, 1, dst],
            [2, 0x42, 10, 244, 1, src],
            0x0800,
            &packet,
        )
    };
    let (to_b, to_a) = (frame(10, 11), frame(11, 10));
    ea.send_frame(&to_b).expect("a sends");
    ea.flush().expect("a flushes");
    let mut records = Vec::new();
    crate::testutil::wait_for("a's frame copied", || {
        records.extend(std::iter::from_fn(|| cap.tap().next()));
        !records.is_empty()
    });
    eb.send_frame(&to_a).expect("b sends");
    eb.flush().expect("b flushes");
    crate::testutil::wait_for("the frame to a copied", || {
        records.extend(std::iter::from_fn(|| cap.tap().next()));
        records.len() >= 2
    });
    let seen: Vec<(&[u8], usize)> = records
        .iter()
        .map(|r| (r.data.as_slice(), r.orig_len))
        .collect();
    assert_eq!(
        seen,
        [(&to_b[..20], to_b.len()), (&to_a[..20], to_a.len())],
        "what a sent, then what it was handed, cut to 20 bytes"
    );
    assert_eq!(cap.tap().dropped(), 0);
    assert!(!cap.orphaned());
    sw.detach("a").expect("detach");
    assert!(cap.orphaned(), "the port gone, nothing copies any more");
    assert!(matches!(
        sw.capture(CaptureTarget::Port(a), 20),
        Err(SwitchError::NothingToCapture(_))
    ));
    assert!(matches!(
        sw.capture(CaptureTarget::Peer(Ipv4Addr::new(192, 168, 77, 2)), 20),
        Err(SwitchError::NothingToCapture(_))
    ));
}

#[test]
fn attach_detach_and_closed_ports_are_forgotten() {
    let sw = switch();
    let (a, _ea) = sw.attach_mem_pod(pod("a", 10)).expect("a");
    let (b, eb) = sw.attach_mem_pod(pod("b", 11)).expect("b");
    assert_ne!(a, b);
    assert!(matches!(
        sw.attach_mem_pod(pod("a", 12)),
        Err(SwitchError::DuplicateName(_))
    ));
    assert!(matches!(
        sw.attach_mem_pod(pod("c", 10)),
        Err(SwitchError::Topology(TopologyError::DuplicateIp { .. }))
    ));
    assert_eq!(
        sw.tables()
            .mac
            .load()
            .get(mac_key(&[2, 0x42, 10, 244, 1, 11]))
            .map(|e| e.port),
        Some(b)
    );
    drop(eb);
    // The data plane notices the closed endpoint on its next round and forgets the port.
    crate::testutil::wait_for("the closed port is forgotten", || sw.port("b").is_none());
    assert!(sw.tables().topology().port(b).is_none());
    assert!(sw
        .tables()
        .mac
        .load()
        .get(mac_key(&[2, 0x42, 10, 244, 1, 11]))
        .is_none());
    sw.detach("a").expect("detach");
    assert!(sw.ports().is_empty());
    assert!(matches!(sw.detach("a"), Err(SwitchError::NoSuchPort(_))));
}

/// A detach keeps its port id until every worker has let go of the port, so an attach racing
/// it never gets that id while a worker still holds the old port (whose `Detach` would then
/// take the new port's queue): every port attached in the race receives frames.
#[test]
fn an_attach_racing_a_detach_gets_a_port_the_workers_hold() {
    use crate::testutil::{eth, ipv4, udp};
    let sw = switch();
    let (_s, mut sender) = sw.attach_mem_pod(pod("sender", 2)).expect("sender");
    let mut old = (
        "r0".to_string(),
        sw.attach_mem_pod(pod("r0", 100)).expect("r0").1,
    );
    for i in 1..=100u8 {
        // Consecutive ports have different addresses: both are attached for a moment.
        let last = 100 + i % 2;
        let name = format!("r{i}");
        let (_, new) = std::thread::scope(|s| {
            let detach = s.spawn(|| sw.detach(&old.0).expect("detach"));
            let attached = sw.attach_mem_pod(pod(&name, last)).expect("attach");
            detach.join().expect("detach thread");
            attached
        });
        let frame = eth(
            [2, 0x42, 10, 244, 1, last],
            [2, 0x42, 10, 244, 1, 2],
            0x0800,
            &ipv4(
                Ipv4Addr::new(10, 244, 1, 2),
                Ipv4Addr::new(10, 244, 1, last),
                17,
                64,
                &udp(1, 2, b"x"),
            ),
        );
        sender.send_frame(&frame).expect("send");
        sender.flush().expect("flush");
        crate::testutil::wait_for(&format!("{name} receives"), || {
            new.try_recv().ok().flatten().is_some()
        });
        old = (name, new);
    }
}
