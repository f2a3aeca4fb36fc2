//! MAC table lookups/s with 1k, 64k and 1M entries, without and with a concurrent writer.
//!
//! One iteration is what the data plane does per batch: `load()` the snapshot once, then 64
//! `get`s of keys taken in order from a precomputed array of 64k pseudo-random (present) keys,
//! then drop the snapshot. Dropping it is included: when a writer has published a newer
//! snapshot meanwhile, the reader may be the last holder of the old one and free the shard the
//! writer copied.
//!
//! The writer (`lookup_with_writer`) moves one random entry to another port per `learn` call,
//! in a tight loop on its own thread: each call copies one shard (1/64 of the table) and
//! publishes a new snapshot. It stops (AtomicBool) at the end of each benchmark and its update
//! rate is printed. On a 2-core machine the writer takes a whole core.
//!
//! `maglev`: building a service's Maglev table (`CompiledService::new`) with 3, 10 and 100
//! backends (tables of 509, 1021 and 16381 slots), and `Services::pick` for a new flow (one
//! lookup; the flow hashes are precomputed), per lookup. Measured here: build 1.0 µs (3),
//! 3.4 µs (10), 118 µs (100); pick 0.62 ns.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use podswitch_bench::{mac_keys, splitmix64, BATCH};
use podswitch_dataplane::table::{
    Affinity, CompiledService, MacTable, MacTableConfig, PortId, Proto, Service, Services,
};

/// Precomputed lookups (a power of two).
const LOOKUPS: usize = 1 << 16;
/// Ports the entries are spread over.
const PORTS: usize = 16;

struct Fixture {
    table: Arc<MacTable>,
    keys: Arc<Vec<u64>>,
    lookups: Vec<u64>,
}

fn fixture(n: usize) -> Fixture {
    let table = Arc::new(MacTable::new(MacTableConfig {
        capacity: n + 1024,
        ageing: Duration::from_secs(3600),
    }));
    let keys = mac_keys(n);
    let seen: Vec<(u64, PortId)> = keys
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, (i % PORTS) as PortId))
        .collect();
    let out = table.learn(&seen, table.now());
    assert_eq!(out.added, n, "every key learned: {out:?}");
    let mut rng = n as u64;
    let lookups: Vec<u64> = (0..LOOKUPS)
        .map(|_| keys[(splitmix64(&mut rng) % n as u64) as usize])
        .collect();
    let snap = table.load();
    assert_eq!(snap.len(), n);
    assert!(lookups.iter().all(|&k| snap.get(k).is_some()));
    Fixture {
        table,
        keys: Arc::new(keys),
        lookups,
    }
}

/// Runs the reader benchmark; panics if any lookup missed.
fn read(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    f: &Fixture,
) {
    let (mut pos, mut hits, mut lookups) = (0usize, 0u64, 0u64);
    c.bench_function(id, |b| {
        b.iter(|| {
            let snap = f.table.load();
            let mut ports = 0u64;
            let mut hit = 0u64;
            for &k in &f.lookups[pos..pos + BATCH] {
                if let Some(e) = snap.get(black_box(k)) {
                    hit += 1;
                    ports += u64::from(e.port);
                }
            }
            pos = (pos + BATCH) & (LOOKUPS - 1);
            hits += hit;
            lookups += BATCH as u64;
            ports
        })
    });
    assert_eq!(hits, lookups, "every lookup found its key");
}

/// A writer moving random entries between ports until `stop`; returns how many moves it made.
fn spawn_writer(f: &Fixture, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let table = Arc::clone(&f.table);
    let keys = Arc::clone(&f.keys);
    std::thread::Builder::new()
        .name("table-writer".into())
        .spawn(move || {
            let mut rng = 0x5eed_u64;
            let mut moved = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = splitmix64(&mut rng);
                let key = keys[(r % keys.len() as u64) as usize];
                // Another port most of the time (1 in PORTS + 1 is a touch, not a move).
                let port = ((r >> 32) % (PORTS as u64 + 1)) as PortId;
                moved += table.learn(&[(key, port)], table.now()).moved as u64;
            }
            moved
        })
        .expect("spawn writer thread")
}

fn table(c: &mut Criterion) {
    let mut group = c.benchmark_group("table");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (label, n) in [("1k", 1usize << 10), ("64k", 1 << 16), ("1M", 1 << 20)] {
        let f = fixture(n);
        read(&mut group, BenchmarkId::new("lookup", label), &f);

        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(&f, Arc::clone(&stop));
        let started = Instant::now();
        read(
            &mut group,
            BenchmarkId::new("lookup_with_writer", label),
            &f,
        );
        stop.store(true, Ordering::Relaxed);
        let moved = writer.join().expect("writer thread finished");
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "table/{label}: writer moved {moved} entries in {secs:.1} s ({:.0} moves/s)",
            moved as f64 / secs
        );
        assert_eq!(f.table.load().len(), n, "moves neither add nor remove");
    }
    group.finish();
}

fn service(backends: usize) -> Service {
    Service {
        name: format!("svc{backends}"),
        vip: Ipv4Addr::new(10, 96, 0, 10),
        port: 80,
        proto: Proto::Tcp,
        backends: (0..backends as u32)
            .map(|i| SocketAddrV4::new(Ipv4Addr::from(0x0af4_0000 + (i << 8) + 10), 8080))
            .collect(),
        affinity: Affinity::None,
    }
}

fn maglev(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev");
    for n in [3usize, 10, 100] {
        let s = service(n);
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("build", n), |b| {
            b.iter(|| CompiledService::new(black_box(s.clone()), 1))
        });
        let compiled = CompiledService::new(s, 1);
        let services = Services::default();
        let mut rng = n as u64;
        let hashes: Vec<u64> = (0..LOOKUPS).map(|_| splitmix64(&mut rng)).collect();
        let client = Ipv4Addr::new(10, 244, 1, 5);
        let mut pos = 0usize;
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(BenchmarkId::new("pick", n), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for &h in &hashes[pos..pos + BATCH] {
                    let (i, _) = services
                        .pick(&compiled, black_box(h), client)
                        .expect("a backend");
                    sum += u64::from(i);
                }
                pos = (pos + BATCH) & (LOOKUPS - 1);
                sum
            })
        });
    }
    group.finish();
}

/// RFC 2889's address learning rate, as the table sees it: a batch of 64 new addresses
/// learned per call into a table that holds at most 1M, until it is full; then the same calls
/// on the full table (the addresses refused, counted, the table unchanged: a pod flooding
/// source MACs from a trunk cannot grow it).
fn learning(c: &mut Criterion) {
    let mut group = c.benchmark_group("learning");
    group.throughput(Throughput::Elements(BATCH as u64));
    const CAP: usize = 1 << 20;
    let pairs: Vec<(u64, PortId)> = mac_keys(4 * CAP).into_iter().map(|k| (k, 1)).collect();
    let config = MacTableConfig {
        capacity: CAP,
        ageing: Duration::from_secs(3600),
    };
    let mut table = MacTable::new(config);
    let mut at = 0usize;
    group.bench_function(BenchmarkId::new("new_addresses", "to_1M"), |b| {
        b.iter(|| {
            if at + BATCH > CAP {
                // Full: start again with an empty table (the rate is of learning, not refusing).
                table = MacTable::new(config);
                at = 0;
            }
            at += BATCH;
            black_box(table.learn(&pairs[at - BATCH..at], table.now()))
        })
    });
    let full = MacTable::new(config);
    for chunk in pairs[..CAP].chunks(4096) {
        full.learn(chunk, full.now());
    }
    assert_eq!(full.load().len(), CAP, "filled");
    let mut at = CAP;
    group.bench_function(BenchmarkId::new("new_addresses", "full_1M"), |b| {
        b.iter(|| {
            if at + BATCH > pairs.len() {
                at = CAP;
            }
            at += BATCH;
            black_box(full.learn(&pairs[at - BATCH..at], full.now()))
        })
    });
    assert_eq!(
        full.load().len(),
        CAP,
        "a full table stays full, not larger"
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = podswitch_bench::criterion_config();
    targets = table, maglev, learning
}
criterion_main!(benches);
