use super::*;

fn sa(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

fn flow(client: &str, backend: &str, proto: u8, now: u32) -> Flow {
    Flow::new(
        sa(client),
        sa("10.96.0.10:80"),
        sa(backend),
        None,
        proto,
        1,
        now,
    )
}

#[test]
fn forward_and_reply_find_the_flow_and_follow_tcp() {
    let ct = Conntrack::with_share(16, 16);
    let f = flow("10.244.1.10:40000", "10.244.2.7:8080", 6, 5);
    let (fk, rk) = (f.forward_key(), f.reply_key());
    assert!(ct.insert(f));
    assert_eq!(ct.len(), 1);
    assert_eq!(
        ct.forward(&fk, 5, tcp_flags::SYN).unwrap().backend,
        sa("10.244.2.7:8080")
    );
    let hit = ct.reply(&rk, 6, tcp_flags::SYN | tcp_flags::ACK).unwrap();
    assert_eq!(
        (hit.client, hit.vip),
        (sa("10.244.1.10:40000"), sa("10.96.0.10:80"))
    );
    assert_eq!(
        ct.list(6)[0].state,
        "syn_recv",
        "not before the client's ACK"
    );
    ct.forward(&fk, 6, tcp_flags::ACK);
    assert_eq!(ct.list(6)[0].state, "established");
    ct.forward(&fk, 7, tcp_flags::FIN | tcp_flags::ACK);
    assert_eq!(ct.list(7)[0].state, "closing");
    assert_eq!(ct.expire(7 + 120), 0);
    assert_eq!(ct.expire(7 + 121), 1);
    assert!(ct.is_empty());
    assert!(ct.reply(&rk, 200, 0).is_none());
}

#[test]
fn a_crash_carries_the_live_flows_over() {
    let ct = Conntrack::with_share(16, 16);
    let mut expect = Vec::new();
    // (client port, protocol, packets as (flags, reply), carried over a crash)
    /// Packets after the insert: TCP flags (0 for UDP) and whether it is a reply.
    type Packets = &'static [(u8, bool)];
    const SYN_ACK: (u8, bool) = (tcp_flags::SYN | tcp_flags::ACK, true);
    const ACK: (u8, bool) = (tcp_flags::ACK, false);
    let cases: [(u16, u8, Packets, bool); 9] = [
        (1, 6, &[], false),            // syn_sent: picked up again by its next packet
        (8, 6, &[SYN_ACK], false),     // syn_recv: likewise
        (2, 6, &[SYN_ACK, ACK], true), // established
        (3, 6, &[SYN_ACK, ACK, (tcp_flags::FIN, false)], true), // closing
        (
            9,
            6,
            &[
                SYN_ACK,
                ACK,
                (tcp_flags::FIN, false),
                (tcp_flags::FIN, true),
            ],
            false,
        ), // time_wait
        (4, 6, &[(tcp_flags::RST, true)], false), // closed
        (5, 17, &[], false),           // unreplied
        (6, 17, &[(0, true)], true),   // replied
        (7, 6, &[SYN_ACK, ACK], false), // ended below
    ];
    for (port, proto, packets, live) in cases {
        let f = flow(&format!("10.244.1.10:{port}"), "10.244.2.7:80", proto, 0);
        let (fk, rk) = (f.forward_key(), f.reply_key());
        ct.insert(f);
        for &(flags, reply) in packets {
            if reply {
                ct.reply(&rk, 1, flags);
            } else {
                ct.forward(&fk, 1, flags);
            }
        }
        if live {
            expect.push(port);
        }
    }
    let mut ended = flow("10.244.1.10:7", "10.244.2.7:80", 6, 0);
    ended.service = 2;
    ct.remove(&ended.forward_key());
    ct.insert(ended);
    ct.end_service(2);
    let states: Vec<&str> = ct.list(1).iter().map(|f| f.state).collect();
    for s in [
        "syn_sent",
        "syn_recv",
        "established",
        "closing",
        "time_wait",
        "closed",
        "unreplied",
        "replied",
        "ended",
    ] {
        assert!(states.contains(&s), "{s} among {states:?}");
    }
    let mut kept: Vec<u16> = ct
        .save()
        .into_iter()
        .filter(SavedFlow::is_live)
        .map(|f| f.client.port())
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, expect);
}

#[test]
fn saved_flows_resume_with_their_state_and_translation() {
    let old = Conntrack::with_share(16, 16);
    let mut hairpin = flow("10.244.1.10:40001", "10.244.1.10:8080", 6, 3);
    hairpin.snat = Some("10.244.1.1:61000".parse().unwrap());
    let (hk, hr) = (hairpin.forward_key(), hairpin.reply_key());
    old.insert(hairpin);
    old.reply(&hr, 4, tcp_flags::SYN | tcp_flags::ACK);
    old.forward(&hk, 4, tcp_flags::ACK); // established
    old.insert(flow("10.244.1.10:53000", "10.244.2.7:53", 17, 3));
    let saved = old.save();
    // Through JSON, as the handover file carries them.
    let text = serde_json::to_string(&saved).unwrap();
    let saved: Vec<SavedFlow> = serde_json::from_str(&text).unwrap();

    let new = Conntrack::with_share(16, 16);
    assert!(saved.iter().all(|f| new.resume(f, f.service, 100)));
    let mut was = old.list(4);
    let mut now = new.list(100);
    was.sort_by_key(|f| f.client);
    now.sort_by_key(|f| f.client);
    let shape = |l: &[FlowInfo]| -> Vec<_> {
        l.iter()
            .map(|f| (f.proto, f.client, f.vip, f.backend, f.service, f.state))
            .collect()
    };
    assert_eq!(shape(&was), shape(&now));
    assert_eq!(now[0].state, "established");
    // The hairpin flow's replies (to the gateway) still find it.
    let hit = new.reply(&hr, 101, tcp_flags::ACK).unwrap();
    assert_eq!(hit.snat, Some("10.244.1.1:61000".parse().unwrap()));
    assert!(new.forward(&hk, 101, tcp_flags::ACK).is_some());
    // A full table takes what fits and says so.
    let small = Conntrack::new(1);
    let took: Vec<bool> = saved
        .iter()
        .map(|f| small.resume(f, f.service, 0))
        .collect();
    assert_eq!(took.iter().filter(|t| **t).count(), 1);
}

#[test]
fn timeouts_follow_the_state() {
    let ct = Conntrack::with_share(16, 16);
    ct.insert(flow("10.244.1.10:1", "10.244.2.7:53", 17, 0));
    ct.insert(flow("10.244.1.10:2", "10.244.2.7:8080", 6, 0));
    let est = flow("10.244.1.10:3", "10.244.2.7:8080", 6, 0);
    let rst_key = est.forward_key();
    ct.insert(est);
    let replied = flow("10.244.1.10:4", "10.244.2.7:8080", 6, 0).picked_up_mid_stream();
    let replied_reply = replied.reply_key();
    ct.insert(replied);
    ct.reply(&replied_reply, 0, tcp_flags::ACK); // picked up mid-stream: established
    let half = flow("10.244.1.10:6", "10.244.2.7:8080", 6, 0);
    let half_reply = half.reply_key();
    ct.insert(half);
    ct.reply(&half_reply, 0, tcp_flags::SYN | tcp_flags::ACK); // syn_recv
    ct.forward(&rst_key, 0, tcp_flags::RST);
    assert_eq!(ct.expire(11), 1, "the reset flow after 10 s");
    assert_eq!(
        ct.expire(31),
        2,
        "the unreplied UDP flow and the SYN without answer after 30 s"
    );
    assert_eq!(
        ct.expire(61),
        1,
        "the SYN-ACK the client never acknowledged after 60 s"
    );
    assert_eq!(ct.expire(86_400), 0);
    assert_eq!(ct.expire(86_401), 1, "established after a day");
    // A port reused after a reset starts over.
    let again = flow("10.244.1.10:5", "10.244.2.7:8080", 6, 0);
    let k = again.forward_key();
    ct.insert(again);
    ct.forward(&k, 1, tcp_flags::RST);
    ct.forward(&k, 2, tcp_flags::SYN);
    assert_eq!(ct.list(2)[0].state, "syn_sent");
}

/// A TCP flow from `client` port `port` to the backend, taken to `packets` ((flags, reply)).
fn tcp_flow(
    ct: &Conntrack,
    client: &str,
    port: u16,
    packets: &[(u8, bool)],
) -> Result<(), Refused> {
    let f = flow(&format!("{client}:{port}"), "10.244.2.7:8080", 6, 0);
    let (fk, rk) = (f.forward_key(), f.reply_key());
    ct.try_insert(f)?;
    for &(flags, reply) in packets {
        if reply {
            ct.reply(&rk, 0, flags);
        } else {
            ct.forward(&fk, 0, flags);
        }
    }
    Ok(())
}

const SYN_ACK: (u8, bool) = (tcp_flags::SYN | tcp_flags::ACK, true);
const CLIENT_ACK: (u8, bool) = (tcp_flags::ACK, false);

#[test]
fn a_client_floods_within_its_share_and_evicts_its_own() {
    let ct = Conntrack::with_share(64, 8);
    // A client that sends SYNs and never answers the SYN-ACKs: its flows stay evictable, so
    // past its share each new one evicts its oldest and it never holds more than its share.
    for port in 1..=100 {
        tcp_flow(&ct, "10.244.1.66", port, &[SYN_ACK]).unwrap();
        assert!(ct.client_flows("10.244.1.66".parse().unwrap()) <= 8);
    }
    assert_eq!(ct.len(), 8);
    assert_eq!(ct.evicted(), 92);
    // The newest survive.
    let mut ports: Vec<u16> = ct.list(0).iter().map(|f| f.client.port()).collect();
    ports.sort_unstable();
    assert_eq!(ports, (93..=100).collect::<Vec<_>>());
    // Another client is untouched by it.
    for port in 1..=8 {
        tcp_flow(&ct, "10.244.1.10", port, &[SYN_ACK, CLIENT_ACK]).unwrap();
    }
    assert_eq!(ct.client_flows("10.244.1.10".parse().unwrap()), 8);
    // At its share of working flows, a client is refused, and nobody else's flow is evicted.
    assert_eq!(
        tcp_flow(&ct, "10.244.1.10", 9, &[]),
        Err(Refused::ClientShare)
    );
    assert_eq!(ct.client_flows("10.244.1.66".parse().unwrap()), 8);
    // Its counts go when its flows do.
    let key = |p: u16| flow(&format!("10.244.1.10:{p}"), "10.244.2.7:8080", 6, 0).forward_key();
    ct.remove(&key(1));
    assert_eq!(ct.client_flows("10.244.1.10".parse().unwrap()), 7);
    tcp_flow(&ct, "10.244.1.10", 9, &[]).unwrap();
}

#[test]
fn a_nearly_full_table_evicts_anyones_unfinished_flows_first() {
    // Eight clients at their share (4 each) fill the table: half of the flows working, half
    // never answered, then closed both ways.
    let ct = Conntrack::with_share(32, 4);
    for c in 0..8 {
        let client = format!("10.244.1.{}", 20 + c);
        for port in 1..=4 {
            let packets: &[(u8, bool)] = if c % 2 == 0 {
                &[SYN_ACK, CLIENT_ACK]
            } else {
                &[
                    SYN_ACK,
                    CLIENT_ACK,
                    (tcp_flags::FIN, false),
                    (tcp_flags::FIN | tcp_flags::ACK, true),
                ]
            };
            tcp_flow(&ct, &client, port, packets).unwrap();
        }
    }
    // Past 15/16 of the table (30 flows), each new flow evicts the oldest closed one.
    assert_eq!((ct.len(), ct.evicted()), (30, 2));
    // A new client still gets in: closed flows make way, never a working one.
    for port in 1..=4 {
        tcp_flow(&ct, "10.244.1.99", port, &[]).unwrap();
    }
    assert_eq!(ct.len(), 30);
    let states: Vec<(Ipv4Addr, &str)> = ct
        .list(0)
        .iter()
        .map(|f| (*f.client.ip(), f.state))
        .collect();
    let working = states.iter().filter(|(_, s)| *s == "established").count();
    assert_eq!(working, 16, "{states:?}");
    assert_eq!(ct.evicted(), 6);
    // A table full of working flows refuses as full.
    let ct = Conntrack::with_share(4, 4);
    for port in 1..=4 {
        tcp_flow(&ct, "10.244.1.10", port, &[SYN_ACK, CLIENT_ACK]).unwrap();
    }
    assert_eq!(tcp_flow(&ct, "10.244.1.11", 1, &[]), Err(Refused::Full));
}

#[test]
fn a_closed_flows_tuple_reused_directly_is_not_translated() {
    let ct = Conntrack::with_share(16, 16);
    let f = flow("10.244.1.10:40000", "10.244.2.7:8080", 6, 0);
    let (fk, rk) = (f.forward_key(), f.reply_key());
    ct.insert(f);
    ct.reply(&rk, 0, tcp_flags::SYN | tcp_flags::ACK);
    ct.forward(&fk, 1, tcp_flags::RST);
    // A direct connection on the same ports: its SYN-ACK is the backend's own.
    assert!(ct.reply(&rk, 2, tcp_flags::SYN | tcp_flags::ACK).is_none());
    assert!(ct.is_empty(), "the stale entry is gone");
    // Likewise after a FIN (TIME_WAIT): a new SYN-ACK is not the closing flow's.
    let f = flow("10.244.1.10:40001", "10.244.2.7:8080", 6, 0);
    let (fk, rk) = (f.forward_key(), f.reply_key());
    ct.insert(f);
    ct.reply(&rk, 0, tcp_flags::SYN | tcp_flags::ACK);
    ct.forward(&fk, 1, tcp_flags::FIN | tcp_flags::ACK);
    assert!(
        ct.reply(&rk, 2, tcp_flags::ACK).is_some(),
        "the closing flow's own ACK"
    );
    assert!(ct.reply(&rk, 3, tcp_flags::SYN | tcp_flags::ACK).is_none());
    assert!(ct.is_empty());
}

#[test]
fn a_reply_key_belongs_to_one_flow() {
    let ct = Conntrack::with_share(16, 16);
    let f = |vip: &str, service| {
        Flow::new(
            sa("10.244.1.10:40000"),
            sa(vip),
            sa("10.244.2.7:8080"),
            None,
            6,
            service,
            0,
        )
    };
    let (a, b) = (f("10.96.0.10:80", 1), f("10.96.0.11:80", 2));
    let (ak, rk) = (a.forward_key(), a.reply_key());
    assert!(ct.insert(a));
    assert_eq!(
        ct.try_insert(b),
        Err(Refused::Clash),
        "the same reply key as a: refused"
    );
    assert_eq!(
        ct.reply(&rk, 1, 0).map(|h| h.vip),
        Some(sa("10.96.0.10:80"))
    );
    ct.remove(&ak);
    assert!(ct.is_empty() && ct.reply(&rk, 1, 0).is_none());
}

#[test]
fn bounded_and_counted_per_backend() {
    let ct = Conntrack::with_share(2, 2);
    // Established flows (picked up mid-stream): nothing to evict.
    let est = |client: &str, backend: &str| {
        let f = flow(client, backend, 6, 0).picked_up_mid_stream();
        let rk = f.reply_key();
        let took = ct.insert(f);
        ct.reply(&rk, 0, tcp_flags::ACK);
        took
    };
    assert!(est("10.244.1.10:1", "10.244.2.7:80"));
    assert!(est("10.244.1.10:2", "10.244.2.8:80"));
    assert!(!est("10.244.1.10:3", "10.244.2.7:80"));
    assert_eq!(ct.len(), 2);
    assert_eq!(
        ct.per_backend(1, &[sa("10.244.2.8:80"), sa("10.244.2.7:80")]),
        vec![1, 1]
    );
    ct.remove(&flow("10.244.1.10:1", "10.244.2.7:80", 6, 0).forward_key());
    assert_eq!(ct.len(), 1);
    assert!(ct.insert(flow("10.244.1.10:3", "10.244.2.7:80", 6, 0)));
}

#[test]
fn per_client_counts_match_the_flows_through_a_flood() {
    use std::collections::BTreeMap;
    let ct = Conntrack::with_share(1024, 256);
    let mut seed = 0x1234_5678u64;
    let mut rand = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for step in 0..40_000u32 {
        let now = step / 400;
        let client = if rand() % 2 == 0 {
            "10.244.1.10"
        } else {
            "10.244.1.11"
        };
        let port = 1024 + (rand() % 60_000) as u16;
        let f = flow(&format!("{client}:{port}"), "10.244.1.13:8080", 6, now);
        let (fk, rk) = (f.forward_key(), f.reply_key());
        if ct.forward(&fk, now, tcp_flags::SYN).is_none() {
            let _ = ct.try_insert(f);
        }
        ct.reply(&rk, now, tcp_flags::SYN | tcp_flags::ACK);
        if client.ends_with(".10") {
            ct.forward(&fk, now, tcp_flags::RST);
        }
        if step % 500 == 0 {
            ct.expire(now);
        }
        let mut listed: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        if step % 97 == 0 {
            for f in ct.list(now) {
                *listed.entry(*f.client.ip()).or_default() += 1;
            }
            for (ip, n) in &listed {
                assert_eq!(ct.client_flows(*ip), *n, "step {step}: {listed:?}");
                assert!(*n <= 256, "step {step}: {listed:?}");
            }
        }
    }
}
