use super::*;

/// Scanned or indexed, the routes answer as a scan of every peer's CIDR would, while
/// peers of mixed prefix lengths come and go across the scan limit.
#[test]
fn routes_scanned_or_indexed_agree_with_a_scan() {
    let mut t = Topology::new(
        "10.244.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 244, 0, 1),
    );
    let cidr = |i: u32| -> Ipv4Net {
        if i.is_multiple_of(3) {
            format!("10.250.{i}.0/24").parse().unwrap()
        } else {
            format!("10.251.{}.{}/26", i / 4, (i % 4) * 64)
                .parse()
                .unwrap()
        }
    };
    let probes: Vec<Ipv4Addr> = (0..64u32)
        .flat_map(|i| {
            [
                Ipv4Addr::new(10, 250, i as u8, 7),
                Ipv4Addr::new(10, 251, (i / 4) as u8, ((i % 4) * 64 + 5) as u8),
                Ipv4Addr::new(10, 252, 0, i as u8),
            ]
        })
        .collect();
    let check = |t: &Topology| {
        for ip in &probes {
            let want = t
                .peers()
                .find(|(_, p)| p.pod_cidr.contains(ip))
                .map(|(id, _)| id);
            assert_eq!(t.route(*ip), want, "{ip}");
        }
    };
    for i in 0..40u32 {
        t.add_peer(Peer {
            name: format!("p{i}"),
            underlay: SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, 10 + i as u8), 8472),
            pod_cidr: cidr(i),
            vtep_mac: EthernetAddress([2, 0xee, 0, 0, 0, i as u8]),
        })
        .unwrap();
        check(&t);
    }
    for i in (0..40u32)
        .rev()
        .step_by(2)
        .chain((0..40u32).rev().skip(1).step_by(2))
    {
        t.remove_peer(&format!("p{i}")).unwrap();
        check(&t);
    }
    assert_eq!(t.route(Ipv4Addr::new(10, 250, 3, 1)), None);
}

fn node() -> Topology {
    Topology::new(
        "10.244.1.0/24".parse().expect("cidr"),
        Ipv4Addr::new(10, 244, 1, 1),
    )
}

fn pod(name: &str, last: u8) -> PortInfo {
    PortInfo {
        name: name.into(),
        kind: PortKind::Pod {
            mac: EthernetAddress([2, 0, 0, 0, 0, last]),
            ip: Ipv4Addr::new(10, 244, 1, last),
        },
    }
}

fn peer(name: &str, n: u8, cidr: &str) -> Peer {
    Peer {
        name: name.into(),
        underlay: SocketAddrV4::new(Ipv4Addr::new(192, 168, 77, n), 8472),
        pod_cidr: cidr.parse().expect("cidr"),
        vtep_mac: EthernetAddress([2, 0xee, 0, 0, 0, n]),
    }
}

#[test]
fn pods_and_neighbours() {
    let mut t = node();
    t.add_port(0, pod("a", 10)).expect("a");
    t.add_port(3, pod("b", 11)).expect("b");
    assert_eq!(t.flood_ports(), &[0, 3]);
    assert_eq!(
        t.neighbour(Ipv4Addr::new(10, 244, 1, 11)).map(|n| n.port),
        Some(3)
    );
    assert_eq!(
        t.add_port(
            0,
            PortInfo {
                name: "x".into(),
                kind: PortKind::Trunk
            }
        ),
        Err(TopologyError::PortInUse(0))
    );
    let mut dup = pod("c", 10);
    if let PortKind::Pod { mac, .. } = &mut dup.kind {
        mac.0[5] = 99;
    }
    assert!(
        matches!(t.add_port(4, dup), Err(TopologyError::DuplicateIp { owner, .. }) if owner == "a")
    );
    assert!(matches!(
        t.add_port(4, pod("gw", 1)),
        Err(TopologyError::IpNotInCidr { .. })
    ));
    assert!(matches!(
        t.add_port(4, pod("bcast", 255)),
        Err(TopologyError::IpNotInCidr { .. })
    ));
    t.remove_port(0).expect("remove");
    assert_eq!(t.neighbour(Ipv4Addr::new(10, 244, 1, 10)), None);
    assert_eq!(t.flood_ports(), &[3]);
    assert_eq!(t.remove_port(0), Err(TopologyError::NoSuchPort(0)));
    t.add_port(0, pod("a2", 10))
        .expect("IP reusable after removal");
}

#[test]
fn peers_routes_and_overlaps() {
    let mut t = node();
    let b = t.add_peer(peer("b", 2, "10.244.2.0/24")).expect("b");
    let c = t.add_peer(peer("c", 3, "10.244.3.0/24")).expect("c");
    assert_eq!(t.route(Ipv4Addr::new(10, 244, 2, 7)), Some(b));
    assert_eq!(t.route(Ipv4Addr::new(10, 244, 3, 7)), Some(c));
    assert_eq!(t.route(Ipv4Addr::new(10, 244, 4, 7)), None);
    assert_eq!(t.peer_by_underlay(Ipv4Addr::new(192, 168, 77, 3)), Some(c));
    assert!(
        matches!(t.add_peer(peer("x", 9, "10.244.0.0/16")), Err(TopologyError::OverlappingCidr { owner, .. }) if owner == "this node")
    );
    assert!(
        matches!(t.add_peer(peer("x", 9, "10.244.2.128/25")), Err(TopologyError::OverlappingCidr { owner, .. }) if owner == "b")
    );
    assert!(matches!(
        t.add_peer(peer("b", 9, "10.244.9.0/24")),
        Err(TopologyError::DuplicatePeer(_))
    ));
    t.remove_peer("b").expect("remove b");
    assert_eq!(t.route(Ipv4Addr::new(10, 244, 2, 7)), None);
    assert_eq!(t.peer_by_underlay(Ipv4Addr::new(192, 168, 77, 2)), None);
    assert_eq!(
        t.route(Ipv4Addr::new(10, 244, 3, 7)),
        Some(c),
        "other peers undisturbed"
    );
    assert_eq!(
        t.add_peer(peer("d", 4, "10.244.2.0/24")),
        Ok(b),
        "freed id reused"
    );
}

fn service(name: &str, vip_last: u8, port: u16, backends: &[u8]) -> Service {
    Service {
        name: name.into(),
        vip: Ipv4Addr::new(10, 96, 0, vip_last),
        port,
        proto: Proto::Tcp,
        backends: backends
            .iter()
            .map(|&b| SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, b), 8080))
            .collect(),
        affinity: Default::default(),
    }
}

#[test]
fn services_get_the_ids_they_had_before_an_upgrade() {
    let mut t = node();
    t.prefer_service_ids([("web".to_string(), 7), ("dns".to_string(), 3)].into());
    t.upsert_service(service("new", 12, 80, &[10]))
        .expect("new");
    t.upsert_service(service("dns", 53, 53, &[12]))
        .expect("dns");
    t.upsert_service(service("web", 10, 80, &[10, 11]))
        .expect("web");
    let id = |t: &Topology, name: &str| t.services().by_name(name).map(|s| s.id);
    // Carried over; a service the old process did not have gets an id above them all.
    assert_eq!(
        (id(&t, "web"), id(&t, "dns"), id(&t, "new")),
        (Some(7), Some(3), Some(8))
    );
    // Removed and added again: a new id (ids are never reused).
    t.remove_service("dns").expect("dns");
    t.upsert_service(service("dns", 53, 53, &[12]))
        .expect("dns");
    assert_eq!(id(&t, "dns"), Some(9));
}

#[test]
fn services_upsert_replace_remove() {
    let mut t = node();
    assert!(t.services().is_empty());
    t.upsert_service(service("web", 10, 80, &[10, 11]))
        .expect("web");
    t.upsert_service(service("dns", 53, 53, &[12]))
        .expect("dns");
    let web = t
        .services()
        .get(Ipv4Addr::new(10, 96, 0, 10), 80, 6)
        .expect("web")
        .clone();
    assert_eq!(
        (web.service.name.as_str(), web.id, web.table_len()),
        ("web", 0, 251)
    );
    assert_eq!(
        t.services()
            .get(Ipv4Addr::new(10, 96, 0, 10), 80, 17)
            .map(|s| s.id),
        None
    );
    let names: Vec<_> = t
        .services_list()
        .iter()
        .map(|s| s.service.name.clone())
        .collect();
    assert_eq!(names, ["dns", "web"]);

    // Same VIP/port/proto under another name: refused, nothing changed.
    assert!(matches!(
        t.upsert_service(service("web2", 10, 80, &[13])),
        Err(TopologyError::DuplicateService { owner, .. }) if owner == "web"
    ));
    assert_eq!(t.services().len(), 2);
    // Same VIP and port, other protocol: another service.
    let mut udp = service("web-udp", 10, 80, &[13]);
    udp.proto = Proto::Udp;
    t.upsert_service(udp).expect("udp");
    assert_eq!(
        t.services()
            .get(Ipv4Addr::new(10, 96, 0, 10), 80, 17)
            .map(|s| s.id),
        Some(2)
    );

    // Replace by name: new VIP, port and backends, same id; the old key is gone.
    t.upsert_service(service("web", 20, 8080, &[10, 11, 14]))
        .expect("replace");
    assert!(t
        .services()
        .get(Ipv4Addr::new(10, 96, 0, 10), 80, 6)
        .is_none());
    let web2 = t
        .services()
        .get(Ipv4Addr::new(10, 96, 0, 20), 8080, 6)
        .expect("moved");
    assert_eq!(
        (web2.id, web2.service.backends.len(), web2.table_len()),
        (0, 3, 509)
    );
    // The freed key can be taken by another service.
    t.upsert_service(service("other", 10, 80, &[]))
        .expect("freed key");
    // An equal spec: nothing rebuilt.
    let before = Arc::clone(t.services().by_name("web").expect("web"));
    t.upsert_service(service("web", 20, 8080, &[10, 11, 14]))
        .expect("same");
    assert!(Arc::ptr_eq(
        &before,
        t.services().by_name("web").expect("web")
    ));

    // A copy of the topology shares the compiled services.
    let copy = t.clone();
    assert!(Arc::ptr_eq(
        &before,
        copy.services().by_name("web").expect("web")
    ));

    assert_eq!(t.remove_service("dns").map(|s| s.port), Ok(53));
    assert_eq!(
        t.remove_service("dns"),
        Err(TopologyError::NoSuchService("dns".into()))
    );
    // Ids are never reused: dns had 1, web-udp 2, other 3.
    t.upsert_service(service("dns", 53, 53, &[12]))
        .expect("dns again");
    assert_eq!(t.services().by_name("dns").map(|s| s.id), Some(4));
    assert_eq!(t.services().len(), 4);
    assert_eq!(copy.services().len(), 4, "the copy is its own");
}

#[test]
fn too_many_backends_refused() {
    let mut t = node();
    let mut s = service("big", 10, 80, &[]);
    s.backends = (0..=MAX_BACKENDS as u32)
        .map(|i| SocketAddrV4::new(Ipv4Addr::from(0x0af4_0000 + i), 80))
        .collect();
    assert!(matches!(
        t.upsert_service(s),
        Err(TopologyError::TooManyBackends { count, .. }) if count == MAX_BACKENDS + 1
    ));
    assert!(t.services().is_empty());
}
