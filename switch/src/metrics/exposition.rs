//! The Prometheus text of a [`NodeState`]: a `prometheus-client` [`Collector`] that encodes
//! one snapshot, registered in a registry made for the scrape (prefix `podswitch`). Nothing is
//! mirrored into registry objects: every value comes from the snapshot.
//!
//! Names follow Prometheus' conventions: counters end in `_total`, byte counts carry `_bytes`,
//! time is in seconds; labels are `pod`, `peer`, `reason`, `worker`, `service`, `backend`.
//! docs/metrics.md lists every family.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{NodeState, Traffic};

/// The Prometheus text format (0.0.4) of `state`, the format `promtool check metrics` reads.
pub fn encode_prometheus(state: NodeState) -> String {
    let mut out = String::new();
    // Writing to a String does not fail, and the collector's own errors are only the writer's.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry(state));
    out
}

/// The OpenMetrics text of `state` (for a scraper that asks for it).
pub fn encode_openmetrics(state: NodeState) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry(state));
    out
}

fn registry(state: NodeState) -> Registry {
    let mut registry = Registry::with_prefix("podswitch");
    registry.register_collector(Box::new(StateCollector(state)));
    registry
}

/// Encodes one snapshot.
#[derive(Debug)]
struct StateCollector(NodeState);

/// Labels of one sample.
type Labels = Vec<(&'static str, String)>;

/// A sample's value: a count (written as an integer) or a real number (seconds).
#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Real(f64),
}

/// One metric family: its name (without prefix, unit and `_total`), help, unit, type and
/// samples.
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    unit: Option<Unit>,
    samples: Vec<(Labels, Value)>,
}

impl<'a> Family<'a> {
    fn new(name: &'a str, help: &'a str) -> Self {
        Self {
            name,
            help,
            unit: None,
            samples: Vec::new(),
        }
    }

    fn bytes(mut self) -> Self {
        self.unit = Some(Unit::Bytes);
        self
    }

    fn seconds(mut self) -> Self {
        self.unit = Some(Unit::Seconds);
        self
    }

    fn sample(&mut self, labels: Labels, value: f64) {
        self.samples.push((labels, Value::Real(value)));
    }

    fn count(&mut self, labels: Labels, value: u64) {
        self.samples.push((labels, Value::Count(value)));
    }

    fn encode(self, encoder: &mut DescriptorEncoder, kind: MetricType) -> std::fmt::Result {
        // A family without samples (no pods yet) is left out rather than shown empty.
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut metric =
            encoder.encode_descriptor(self.name, self.help, self.unit.as_ref(), kind)?;
        for (labels, value) in &self.samples {
            let sample = metric.encode_family(labels)?;
            match (kind, *value) {
                (MetricType::Counter, Value::Count(v)) => ConstCounter::new(v).encode(sample)?,
                (MetricType::Counter, Value::Real(v)) => ConstCounter::new(v).encode(sample)?,
                (_, Value::Count(v)) => ConstGauge::new(v).encode(sample)?,
                (_, Value::Real(v)) => ConstGauge::new(v).encode(sample)?,
            }
        }
        Ok(())
    }

    fn counter(self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        self.encode(encoder, MetricType::Counter)
    }

    fn gauge(self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        self.encode(encoder, MetricType::Gauge)
    }
}

fn none() -> Labels {
    Vec::new()
}

/// A family of one sample without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let mut f = Family::new(name, help);
    f.count(none(), value);
    f.encode(encoder, kind)
}

/// One traffic family: name suffix, help, the value, and whether it is in bytes.
type TrafficFamily = (&'static str, String, fn(&Traffic) -> u64, bool);

/// The six traffic families of pods (`label` = "pod") or peers ("peer"), and their drops by
/// reason.
fn traffic_families<'a>(
    encoder: &mut DescriptorEncoder,
    what: &str,
    tx_dropped_help: &str,
    label: &'static str,
    items: impl Iterator<
            Item = (
                &'a str,
                &'a Traffic,
                &'a std::collections::BTreeMap<String, u64>,
            ),
        > + Clone,
) -> std::fmt::Result {
    let names: [TrafficFamily; 5] = [
        (
            "rx_packets",
            format!("Frames the switch received from the {what}."),
            |t| t.rx_packets,
            false,
        ),
        (
            "rx",
            format!("Bytes the switch received from the {what}."),
            |t| t.rx_bytes,
            true,
        ),
        (
            "tx_packets",
            format!("Frames the switch sent to the {what}."),
            |t| t.tx_packets,
            false,
        ),
        (
            "tx",
            format!("Bytes the switch sent to the {what}."),
            |t| t.tx_bytes,
            true,
        ),
        (
            "tx_dropped",
            tx_dropped_help.to_string(),
            |t| t.tx_dropped,
            false,
        ),
    ];
    for (suffix, help, value, bytes) in names {
        let name = format!("{label}_{suffix}");
        let mut f = Family::new(&name, &help);
        if bytes {
            f = f.bytes();
        }
        for (who, traffic, _) in items.clone() {
            f.count(vec![(label, who.to_string())], value(traffic));
        }
        f.counter(encoder)?;
    }
    let name = format!("{label}_dropped");
    let help = format!("Frames from the {what} (or for it) dropped by the switch, by reason.");
    let mut f = Family::new(&name, &help);
    for (who, _, drops) in items {
        for (reason, n) in drops {
            f.count(
                vec![(label, who.to_string()), ("reason", reason.clone())],
                *n,
            );
        }
    }
    f.counter(encoder)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let e = &mut encoder;

        let mut f = Family::new("build_info", "podswitch's version; always 1.");
        f.count(vec![("version", s.version.clone())], 1);
        f.gauge(e)?;

        let t = &s.totals;
        single(
            e,
            MetricType::Counter,
            "frames_received",
            "Frames received from every port and the tunnel.",
            t.rx,
        )?;
        single(
            e,
            MetricType::Counter,
            "frames_forwarded",
            "Frames forwarded to a port, flooded or encapsulated.",
            t.forwarded,
        )?;
        single(
            e,
            MetricType::Counter,
            "frames_delivered_locally",
            "Frames the switch answered itself (ARP, ping of the gateway).",
            t.delivered_locally,
        )?;
        let mut f = Family::new(
            "frames_dropped",
            "Frames dropped, by reason (received = forwarded + delivered locally + dropped).",
        );
        // Every reason, zero or not: a rate over a reason that starts later stays defined.
        for reason in crate::pipeline::DropReason::ALL {
            let n = t.drops.get(reason.label()).copied().unwrap_or(0);
            f.count(vec![("reason", reason.label().to_string())], n);
        }
        f.counter(e)?;
        single(
            e,
            MetricType::Counter,
            "tx_copies_dropped",
            "Transmit copies a full or failed port refused (a flood makes several).",
            t.tx_dropped,
        )?;

        single(
            e,
            MetricType::Gauge,
            "pods",
            "Pods attached.",
            s.pods.len() as u64,
        )?;
        traffic_families(
            e,
            "pod",
            "Frames for the pod refused at egress (its queue full or failed).",
            "pod",
            s.pods
                .iter()
                .map(|p| (p.name.as_str(), &p.traffic, &p.drops)),
        )?;

        traffic_families(
            e,
            "node's host interface",
            "Frames for the host interface refused at egress (its queue full or failed).",
            "host",
            s.host
                .iter()
                .map(|h| (h.ifname.as_str(), &h.traffic, &h.drops)),
        )?;

        single(
            e,
            MetricType::Gauge,
            "peers",
            "Peer nodes.",
            s.peers.len() as u64,
        )?;
        traffic_families(
            e,
            "peer node through the tunnel (inner frames)",
            "Frames for the peer node that could not be made wire-ready (bad_offload).",
            "peer",
            s.peers
                .iter()
                .map(|p| (p.name.as_str(), &p.traffic, &p.drops)),
        )?;

        if let Some(tunnel) = &s.tunnel {
            let tr = &tunnel.traffic;
            let families: [(&str, &str, u64, bool); 5] = [
                (
                    "tunnel_rx_datagrams",
                    "VXLAN datagrams received.",
                    tr.rx_packets,
                    false,
                ),
                (
                    "tunnel_rx",
                    "VXLAN payload bytes received.",
                    tr.rx_bytes,
                    true,
                ),
                (
                    "tunnel_tx_datagrams",
                    "VXLAN datagrams sent.",
                    tr.tx_packets,
                    false,
                ),
                ("tunnel_tx", "VXLAN payload bytes sent.", tr.tx_bytes, true),
                (
                    "tunnel_tx_dropped",
                    "VXLAN datagrams the socket refused.",
                    tr.tx_dropped,
                    false,
                ),
            ];
            for (name, help, value, bytes) in families {
                let mut f = Family::new(name, help);
                if bytes {
                    f = f.bytes();
                }
                f.count(none(), value);
                f.counter(e)?;
            }
        }

        single(
            e,
            MetricType::Gauge,
            "mac_table_entries",
            "MAC table entries (static and learned).",
            s.mac_table.entries,
        )?;
        single(
            e,
            MetricType::Gauge,
            "mac_table_capacity",
            "Most learned MAC table entries.",
            s.mac_table.capacity,
        )?;
        single(
            e,
            MetricType::Counter,
            "mac_table_full",
            "MAC learns refused because the table was full.",
            s.mac_table.full_events,
        )?;
        single(
            e,
            MetricType::Gauge,
            "conntrack_entries",
            "Flows connection tracking follows.",
            s.conntrack.entries,
        )?;
        single(
            e,
            MetricType::Gauge,
            "conntrack_capacity",
            "Most flows tracked at once.",
            s.conntrack.capacity,
        )?;
        single(
            e,
            MetricType::Counter,
            "conntrack_full",
            "New service flows refused because connection tracking was full.",
            s.conntrack.full_events,
        )?;
        single(
            e,
            MetricType::Counter,
            "conntrack_evicted",
            "Flows evicted before their timeout to make room (not yet established, reset or closed).",
            s.conntrack.evicted,
        )?;

        single(
            e,
            MetricType::Gauge,
            "services",
            "Services (ClusterIP).",
            s.services.len() as u64,
        )?;
        let mut backends = Family::new("service_backends", "Backends of each service.");
        let mut connections = Family::new(
            "service_backend_connections",
            "Connections tracked to each backend of a service.",
        );
        for svc in &s.services {
            backends.count(
                vec![("service", svc.name.clone())],
                svc.backends.len() as u64,
            );
            for b in &svc.backends {
                connections.count(
                    vec![
                        ("service", svc.name.clone()),
                        ("backend", b.address.to_string()),
                    ],
                    b.connections,
                );
            }
        }
        backends.gauge(e)?;
        connections.gauge(e)?;

        let mut frames = Family::new("worker_frames", "Frames each data-plane thread handled.");
        let mut busy = Family::new(
            "worker_busy",
            "Time each data-plane thread spent in rounds that moved frames.",
        )
        .seconds();
        let mut idle = Family::new(
            "worker_idle",
            "Time each data-plane thread spent without frames (spinning, yielding, asleep).",
        )
        .seconds();
        let mut stalls = Family::new(
            "worker_stalls",
            "Stretches of rounds of each data-plane thread that took over 100 ms (the thread did not get a CPU, or a write blocked).",
        );
        for (k, w) in s.workers.iter().enumerate() {
            let worker = || vec![("worker", k.to_string())];
            frames.count(worker(), w.frames);
            busy.sample(worker(), w.busy_seconds);
            idle.sample(worker(), w.idle_seconds);
            stalls.count(worker(), w.stalls);
        }
        frames.counter(e)?;
        busy.counter(e)?;
        idle.counter(e)?;
        stalls.counter(e)?;

        if let Some(f) = &s.fast_path {
            single(
                e,
                MetricType::Gauge,
                "fast_path_pods",
                "Pods compiled into the kernel fast path (veth mode).",
                f.pods as u64,
            )?;
            single(
                e,
                MetricType::Gauge,
                "fast_path_withdrawn_pods",
                "Pods withdrawn from the kernel fast path while a capture of them runs.",
                f.withdrawn as u64,
            )?;
            single(
                e,
                MetricType::Gauge,
                "fast_path_flows",
                "Service flows compiled into the kernel fast path (both directions translated there).",
                f.flows as u64,
            )?;
            single(
                e,
                MetricType::Counter,
                "fast_path_flows_refused",
                "Service flows the kernel fast path would not take (its map full); they stay with the switch.",
                f.flows_refused,
            )?;
            let mut packets = Family::new(
                "fast_path_packets",
                "Packets the kernel fast path handled, by path: local (forwarded pod to pod by the kernel), encap and decap (to and from peers), up_* (handed to the switch, and why), down (written by the switch into a pod), translated (of those forwarded, packets of compiled Service flows), drop_*.",
            );
            for (path, n) in &f.packets {
                packets.count(vec![("path", path.clone())], *n);
            }
            packets.counter(e)?;
        }

        if let Some(c) = &s.cluster {
            single(
                e,
                MetricType::Gauge,
                "etcd_healthy",
                "1 while the last call to etcd succeeded, else 0.",
                u64::from(c.healthy),
            )?;
            let mut f = Family::new(
                "etcd_lease_held",
                "1 while the node holds a subnet lease, else 0.",
            );
            let held = c.key.is_some() && c.lease_id.is_some();
            f.count(none(), u64::from(held));
            f.gauge(e)?;
            single(
                e,
                MetricType::Gauge,
                "etcd_subnet_conflict",
                "1 while another node holds the subnet this node runs on, else 0.",
                u64::from(c.conflict.is_some()),
            )?;
            if let Some(ttl) = c.ttl_secs {
                let mut f = Family::new(
                    "etcd_lease_ttl",
                    "The lease's TTL as etcd last confirmed it.",
                )
                .seconds();
                f.sample(none(), ttl as f64);
                f.gauge(e)?;
            }
            if let Some(left) = c.expires_in_secs {
                let mut f = Family::new(
                    "etcd_lease_expiry",
                    "Time until the lease expires unless renewed.",
                )
                .seconds();
                f.sample(none(), left as f64);
                f.gauge(e)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;

    /// The samples of `text` whose name is `name`, as (labels, value) lines.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    #[test]
    fn the_text_has_every_family_with_its_labels() {
        let text = encode_prometheus(sample());
        let has = |line: &str| {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            )
        };
        has(&format!(
            "podswitch_build_info{{version=\"{}\"}} 1",
            super::super::VERSION
        ));
        has("# TYPE podswitch_frames_received_total counter");
        has("podswitch_frames_received_total 30");
        has("podswitch_frames_dropped_total{reason=\"spoofed_mac\"} 2");
        has("podswitch_frames_dropped_total{reason=\"malformed\"} 0");
        has("# TYPE podswitch_pod_rx_bytes_total counter");
        has("podswitch_pod_rx_packets_total{pod=\"web\"} 10");
        has("podswitch_pod_rx_bytes_total{pod=\"web\"} 1000");
        has("podswitch_pod_tx_packets_total{pod=\"web\"} 8");
        has("podswitch_pod_tx_bytes_total{pod=\"web\"} 800");
        has("podswitch_pod_dropped_total{pod=\"web\",reason=\"spoofed_mac\"} 2");
        has("podswitch_peer_tx_bytes_total{peer=\"node-b\"} 800");
        has("podswitch_host_rx_packets_total{host=\"podsw0\"} 10");
        has("podswitch_host_tx_bytes_total{host=\"podsw0\"} 800");
        has("podswitch_peer_dropped_total{peer=\"node-b\",reason=\"vxlan_bad_vni\"} 2");
        has("podswitch_tunnel_rx_datagrams_total 10");
        has("podswitch_mac_table_entries 3");
        has("podswitch_mac_table_full_total 0");
        has("podswitch_conntrack_entries 3");
        has("podswitch_conntrack_full_total 0");
        has("podswitch_services 1");
        has("podswitch_fast_path_pods 1");
        has("podswitch_fast_path_flows 3");
        has("podswitch_fast_path_flows_refused_total 0");
        has("podswitch_fast_path_packets_total{path=\"local\"} 12");
        has("podswitch_service_backends{service=\"api\"} 1");
        has(
            "podswitch_service_backend_connections{service=\"api\",backend=\"10.244.1.10:8080\"} 3",
        );
        has("# TYPE podswitch_worker_busy_seconds_total counter");
        has("podswitch_worker_busy_seconds_total{worker=\"0\"} 0.25");
        has("podswitch_worker_idle_seconds_total{worker=\"0\"} 9.75");
        has("podswitch_etcd_healthy 1");
        has("podswitch_etcd_lease_held 1");
        has("podswitch_etcd_lease_expiry_seconds 42.0");
        assert_eq!(
            samples(&text, "podswitch_frames_dropped_total").len(),
            crate::pipeline::DropReason::COUNT,
            "one sample per reason"
        );
        // Every sample's family is declared, once, with help.
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = l.split(' ').nth(2).expect("name");
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
        }
    }

    #[test]
    fn a_node_without_pods_peers_or_cluster_leaves_their_families_out() {
        let mut s = sample();
        s.pods.clear();
        s.host = None;
        s.peers.clear();
        s.tunnel = None;
        s.cluster = None;
        let text = encode_prometheus(s);
        assert!(text.contains("podswitch_pods 0"), "{text}");
        for gone in [
            "podswitch_pod_",
            "podswitch_host_",
            "podswitch_peer_",
            "podswitch_tunnel_",
            "podswitch_etcd_",
        ] {
            assert!(!text.contains(gone), "{gone} in:\n{text}");
        }
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let text = encode_openmetrics(sample());
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("podswitch_pod_rx_packets_total{pod=\"web\"} 10"));
    }
}
