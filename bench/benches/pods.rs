//! TCP throughput between two smoltcp pods through a running switch (data-plane thread, pod
//! driver threads): the whole in-process stack, as the integration tests use it.
//!
//! One iteration moves 8 MiB over an established connection from pod "a" to pod "b"; criterion
//! reports bytes/s. smoltcp's per-segment cost dominates (1448-byte segments, no offloads), so
//! this measures the model end to end, not the switch's ceiling (see `forwarding`).

use std::net::{Ipv4Addr, SocketAddrV4};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use podstack::Pod;
use podswitch_bench::{MEASUREMENT, SAMPLES, WARM_UP};
use podswitch_dataplane::switch::{Switch, SwitchConfig};

const CHUNK: usize = 8 << 20;

fn tcp_between_pods(c: &mut Criterion) {
    let node = podswitch_bench::node_config();
    let sw = Switch::start(SwitchConfig::new(node)).expect("switch");
    let a = Pod::attach(&sw, "a", Ipv4Addr::new(10, 244, 1, 10)).expect("pod a");
    let b = Pod::attach(&sw, "b", Ipv4Addr::new(10, 244, 1, 11)).expect("pod b");
    let (client_c, server_c) = (a.container("client"), b.container("server"));
    let mut listener = server_c.tcp_listen(5201).expect("listen");
    let accept = std::thread::spawn(move || listener.accept().expect("accept"));
    let client = client_c
        .tcp_connect(SocketAddrV4::new(b.ip(), 5201))
        .expect("connect");
    let server = accept.join().expect("accept thread");
    let data = vec![0xa5u8; CHUNK];

    let mut g = c.benchmark_group("pods");
    g.warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLES);
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("tcp_smoltcp_to_smoltcp", |bench| {
        bench.iter(|| {
            std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut left = CHUNK;
                    while left > 0 {
                        let n = server.read(&mut buf[..left.min(256 * 1024)]).expect("read");
                        assert!(n > 0, "connection closed mid-transfer");
                        left -= n;
                    }
                });
                client.write_all(&data).expect("write");
                reader.join().expect("reader");
            });
        });
    });
    g.finish();
    let m = sw.metrics().snapshot();
    assert_eq!(
        m.dropped_total(),
        0,
        "the switch dropped frames during the benchmark: {m:?}"
    );
}

criterion_group!(benches, tcp_between_pods);
criterion_main!(benches);
