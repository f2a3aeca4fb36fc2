//! Compiling flows into a fast path and following them from its reports, against an
//! in-memory fast path that records what it was told.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;

/// A fast path in memory: the flows it holds (by client), with their epochs, and the idle
/// time it reports; `room` flows at most.
#[derive(Default)]
struct Recorder {
    held: Mutex<BTreeMap<String, u32>>,
    removed: Mutex<Vec<String>>,
    idle: Mutex<Option<u32>>,
    /// Events waiting to be drained.
    events: Mutex<Vec<OffloadEvent>>,
    room: usize,
}

fn name(f: &OffloadedFlow) -> String {
    format!("{}>{}", f.client, f.backend)
}

impl FlowOffload for Recorder {
    fn install(&self, flow: &OffloadedFlow, epoch: u32) -> bool {
        let mut held = self.held.lock().unwrap();
        if held.len() >= self.room {
            return false;
        }
        held.insert(name(flow), epoch);
        true
    }
    fn remove(&self, flow: &OffloadedFlow) {
        self.held.lock().unwrap().remove(&name(flow));
        self.removed.lock().unwrap().push(name(flow));
    }
    fn idle_secs(&self, _: &OffloadedFlow) -> Option<u32> {
        *self.idle.lock().unwrap()
    }
    fn drain_events(&self, out: &mut Vec<OffloadEvent>) {
        out.append(&mut self.events.lock().unwrap());
    }
}

/// Every tracked flow's backend still serves its service.
const ALL: fn(u32, SocketAddrV4, u8, &SocketAddrV4) -> bool = |_, _, _, _| true;

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn table(room: usize) -> (Conntrack, Arc<Recorder>) {
    let ct = Conntrack::with_share(16, 16);
    let rec = Arc::new(Recorder {
        room,
        ..Recorder::default()
    });
    assert!(ct.offload_to(rec.clone()));
    assert!(!ct.offload_to(rec.clone()), "one fast path per table");
    (ct, rec)
}

/// Tracks client `port` -> VIP balanced to `backend` (TCP), as opened by a SYN at `now`.
fn open(ct: &Conntrack, port: u16, backend: &str, now: u32) -> FlowKey {
    let f = Flow::new(
        SocketAddrV4::new("10.244.1.10".parse().unwrap(), port),
        sa("10.96.0.10:80"),
        sa(backend),
        None,
        protocol::TCP,
        1,
        now,
    );
    let key = f.forward_key();
    assert!(ct.insert(f));
    key
}

/// What the kernel reports of the client's (`reply` false) or backend's direction.
fn event(ct: &Conntrack, key: &FlowKey, reply: bool, ack: bool, fin: bool) -> OffloadEvent {
    let f = ct
        .forward
        .pin()
        .get(key)
        .map(|f| (f.offloaded(), f.offload.load(Ordering::Relaxed)))
        .unwrap();
    let ((src, dst), _) = if reply { f.0.reply() } else { f.0.forward() };
    OffloadEvent {
        proto: protocol::TCP,
        src,
        dst,
        reply,
        epoch: f.1,
        syn: false,
        ack,
        fin,
    }
}

fn state(ct: &Conntrack, now: u32) -> &'static str {
    ct.list(now)[0].state
}

#[test]
fn a_decided_flow_is_compiled_and_followed_through_its_life_from_the_kernel() {
    let (ct, rec) = table(8);
    let key = open(&ct, 40000, "10.244.1.11:8080", 1);
    ct.compile(&[key], ALL);
    assert_eq!(ct.compiled(), 1);
    assert_eq!(rec.held.lock().unwrap().len(), 1);
    // The SYN-ACK went through the switch; the client's ACK, the data and both FINs through
    // the kernel, which reported them.
    let reply_key = ct.forward.pin().get(&key).unwrap().reply_key();
    assert!(ct
        .reply(&reply_key, 1, tcp_flags::SYN | tcp_flags::ACK)
        .is_some());
    assert_eq!(state(&ct, 1), "syn_recv");
    let ack = event(&ct, &key, false, true, false);
    assert_eq!(ct.absorb(&[ack], 2), 1);
    // (A SYN-ACK the kernel carried moves it as the switch's would.)
    let mut syn_ack = event(&ct, &key, true, true, false);
    syn_ack.syn = true;
    assert_eq!(ct.absorb(&[syn_ack], 2), 1);
    assert_eq!(state(&ct, 2), "established");
    let fins = [
        event(&ct, &key, true, true, true),
        event(&ct, &key, false, true, true),
    ];
    assert_eq!(ct.absorb(&fins, 3), 2);
    assert_eq!(state(&ct, 3), "time_wait");
    // Played twice (a replay after lost events): nothing changes.
    ct.absorb(&fins, 3);
    assert_eq!(state(&ct, 3), "time_wait");
    // Expired: out of the kernel first.
    *rec.idle.lock().unwrap() = None;
    assert_eq!(ct.expire(3 + 121), 1);
    assert_eq!(ct.compiled(), 0);
    assert!(rec.held.lock().unwrap().is_empty());
}

#[test]
fn a_flow_busy_in_the_kernel_does_not_expire_and_an_idle_one_does() {
    let (ct, rec) = table(8);
    let key = open(&ct, 40000, "10.244.1.11:8080", 0);
    ct.compile(&[key], ALL);
    // syn_sent lives 30 s without a packet the switch sees; the kernel carried one 2 s ago.
    *rec.idle.lock().unwrap() = Some(2);
    assert_eq!(ct.expire(40), 0, "kept: the kernel carried its packets");
    assert_eq!(ct.list(40)[0].expires_in_secs, 28);
    *rec.idle.lock().unwrap() = Some(31);
    assert_eq!(ct.expire(70), 1);
    assert_eq!(rec.removed.lock().unwrap().len(), 1);
}

#[test]
fn a_reused_port_is_compiled_anew_and_the_old_connections_events_are_ignored() {
    let (ct, rec) = table(8);
    let key = open(&ct, 40000, "10.244.1.11:8080", 0);
    ct.compile(&[key], ALL);
    let old_fin = event(&ct, &key, false, true, true);
    let old_epoch = old_fin.epoch;
    // The client's new SYN on the same port: compiled again in place, under a new epoch.
    let hit = ct.forward(&key, 5, tcp_flags::SYN).unwrap();
    assert!(!hit.compile, "already done");
    assert_eq!(ct.compiled(), 1);
    let new_epoch = *rec.held.lock().unwrap().values().next().unwrap();
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(
        ct.absorb(&[old_fin], 5),
        0,
        "the old epoch's FIN is ignored"
    );
    assert_eq!(state(&ct, 5), "syn_sent");
    assert!(
        rec.removed.lock().unwrap().is_empty(),
        "never out of the kernel meanwhile"
    );
    // A packet of a compiled flow is not compiled again.
    assert!(!ct.forward(&key, 5, tcp_flags::ACK).unwrap().compile);
}

#[test]
fn backends_removed_and_services_ended_take_their_flows_out_of_the_kernel_first() {
    let (ct, rec) = table(8);
    let stay = open(&ct, 40000, "10.244.1.11:8080", 0);
    let gone = open(&ct, 40001, "10.244.1.12:8080", 0);
    ct.compile(&[stay, gone], ALL);
    for key in [stay, gone] {
        let reply_key = ct.forward.pin().get(&key).unwrap().reply_key();
        ct.reply(&reply_key, 1, tcp_flags::SYN | tcp_flags::ACK);
        ct.absorb(&[event(&ct, &key, false, true, false)], 1);
    }
    let stranded = ct.stranded(1, |b| *b == sa("10.244.1.11:8080"));
    assert_eq!(stranded, [(sa("10.244.1.10:40001"), sa("10.96.0.10:80"))]);
    assert_eq!(
        rec.held.lock().unwrap().keys().cloned().collect::<Vec<_>>(),
        ["10.244.1.10:40000>10.244.1.11:8080"],
        "the probe's answer reaches the switch"
    );
    // The stranded flow is not compiled again, by its backend's reply (its probe's answer
    // must reach the switch) nor by a worker that decided it a moment before.
    let gone_reply = ct.forward.pin().get(&gone).unwrap().reply_key();
    assert!(!ct.reply(&gone_reply, 2, tcp_flags::ACK).unwrap().compile);
    ct.compile(&[gone], ALL);
    assert_eq!(ct.compiled(), 1);
    assert_eq!(ct.end_service(1).len(), 2, "both established");
    assert!(rec.held.lock().unwrap().is_empty());
    assert_eq!(ct.compiled(), 0);
    // An ended flow is not compiled again.
    assert!(!ct.forward(&stay, 2, tcp_flags::ACK).unwrap().compile);
    ct.compile(&[stay], ALL);
    assert_eq!(ct.compiled(), 0);
}

#[test]
fn a_flow_the_kernel_refuses_stays_with_the_switch_until_a_new_syn() {
    let (ct, rec) = table(1);
    let a = open(&ct, 40000, "10.244.1.11:8080", 0);
    let b = open(&ct, 40001, "10.244.1.11:8080", 0);
    ct.compile(&[a, b], ALL);
    assert_eq!((ct.compiled(), ct.offload_refused()), (1, 1));
    assert!(
        !ct.forward(&b, 1, tcp_flags::ACK).unwrap().compile,
        "not offered again"
    );
    rec.held.lock().unwrap().clear();
    assert!(
        ct.forward(&b, 1, tcp_flags::SYN).unwrap().compile,
        "a new SYN tries again"
    );
    ct.compile(&[b], ALL);
    assert_eq!(ct.offload_refused(), 1);
    assert!(rec
        .held
        .lock()
        .unwrap()
        .contains_key("10.244.1.10:40001>10.244.1.11:8080"));
}

#[test]
fn a_syn_on_a_port_whose_close_the_kernel_carried_opens_a_new_connection() {
    let (ct, rec) = table(8);
    let key = open(&ct, 40000, "10.244.1.11:8080", 1);
    ct.compile(&[key], ALL);
    let reply_key = ct.forward.pin().get(&key).unwrap().reply_key();
    ct.reply(&reply_key, 1, tcp_flags::SYN | tcp_flags::ACK);
    // The handshake's end, the data and the close went through the kernel; its events are
    // not heard yet when the client reuses the port.
    rec.events.lock().unwrap().extend([
        event(&ct, &key, false, true, false),
        event(&ct, &key, true, true, true),
        event(&ct, &key, false, true, true),
    ]);
    assert_eq!(state(&ct, 1), "syn_recv");
    ct.forward(&key, 2, tcp_flags::SYN);
    assert_eq!(
        state(&ct, 2),
        "syn_sent",
        "a new connection, not an old one's stray SYN"
    );
    // So the backend's SYN-ACK belongs to it (a stale flow would drop it untranslated).
    let hit = ct.reply(&reply_key, 2, tcp_flags::SYN | tcp_flags::ACK);
    assert!(hit.is_some_and(|h| h.vip == sa("10.96.0.10:80")));
}

#[test]
fn a_connection_reopened_in_the_kernel_is_followed_from_its_events() {
    let (ct, _rec) = table(8);
    let key = open(&ct, 40000, "10.244.1.11:8080", 1);
    ct.compile(&[key], ALL);
    let with = |mut e: OffloadEvent, syn: bool| {
        e.syn = syn;
        e
    };
    // The first connection, its close, then the client's SYN from the same port and the
    // backend's SYN-ACK, all carried by the kernel and reported in order.
    let events = [
        with(event(&ct, &key, true, true, false), true),
        event(&ct, &key, false, true, false),
        event(&ct, &key, true, true, true),
        event(&ct, &key, false, true, true),
        with(event(&ct, &key, false, false, false), true),
        with(event(&ct, &key, true, true, false), true),
    ];
    ct.absorb(&events[..4], 2);
    assert_eq!(state(&ct, 2), "time_wait");
    ct.absorb(&events[4..5], 3);
    assert_eq!(state(&ct, 3), "syn_sent");
    ct.absorb(&events[5..], 3);
    assert_eq!(state(&ct, 3), "syn_recv");
    ct.absorb(&[event(&ct, &key, false, true, false)], 4);
    assert_eq!(state(&ct, 4), "established");
}

#[test]
fn a_flow_whose_backend_left_since_its_batch_began_is_not_compiled() {
    let (ct, rec) = table(8);
    let key = open(&ct, 40000, "10.244.1.11:8080", 1);
    ct.compile(&[key], |service, vip, proto, backend| {
        assert_eq!(
            (service, vip, proto),
            (1, sa("10.96.0.10:80"), protocol::TCP)
        );
        *backend != sa("10.244.1.11:8080")
    });
    assert_eq!(ct.compiled(), 0);
    assert!(rec.held.lock().unwrap().is_empty());
    // Still offered later (the topology may have been changed back).
    assert!(ct.forward(&key, 2, tcp_flags::ACK).unwrap().compile);
}
