//! Entry points of the `cargo fuzz` targets in `fuzz/` (not an API: hidden from the docs).
//!
//! Each `fuzz_*` function takes the raw bytes libFuzzer generates, decodes them as documented
//! on the function, drives one part of the switch the way the runtime does, and panics only
//! if an invariant of that part breaks. The switch itself must never panic on any input: a
//! malformed frame is dropped and counted. Keeping the drivers here, inside the crate, lets
//! them reach the crate-private header views without making those public; the targets in
//! `fuzz/fuzz_targets/` are one line each.
//!
//! [`seeds`] builds the seed corpora (`fuzz/corpus/<target>/`) from real frames; the test
//! `committed_seeds_are_the_generated_ones` checks the committed files are those (and writes
//! them with `PODSWITCH_WRITE_SEEDS=1`), and `replay_corpus` runs every committed corpus and
//! regression input through its target in the ordinary `cargo test`.

mod harness;
mod offload;
mod seeds;
mod views;

pub use harness::{fuzz_pipeline, pod_ip, pod_mac, PipelineHarness};
pub use harness::{HOST_MAC, PEER_UNDERLAY, PEER_VTEP_MAC, ROUTER_MAC};
pub use offload::{check_segment, fuzz_coalesce, fuzz_segment};
pub use seeds::seeds;
pub use views::fuzz_wire_views;

use std::ops::Range;

use crate::gso::MAX_PARTS;

/// The fuzz targets, by name (the names of `fuzz/fuzz_targets/*.rs` and of the corpora).
pub const TARGETS: [&str; 6] = [
    "wire_views",
    "pipeline",
    "segment",
    "coalesce",
    "control_request",
    "config",
];

/// Runs target `name` on `data` (for the corpus replay test; the fuzz targets call the
/// functions directly). Unknown names do nothing.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "wire_views" => fuzz_wire_views(data),
        "pipeline" => fuzz_pipeline(data),
        "segment" => fuzz_segment(data),
        "coalesce" => fuzz_coalesce(data),
        "control_request" => fuzz_control_request(data),
        "config" => fuzz_config(data),
        _ => {}
    }
}

fn check_parts(parts: &[&[u8]]) {
    assert!(
        !parts.is_empty() && parts.len() <= MAX_PARTS,
        "{} parts",
        parts.len()
    );
}

/// Splits `data` into records of `head` fixed bytes and a body whose length is the
/// little-endian `u16` after them (cut short at the end of `data`).
fn records(data: &[u8], head: usize) -> Vec<(&[u8], Range<usize>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = data.get(at..at + head + 2) {
        let start = at + head + 2;
        let len = usize::from(u16::from_le_bytes([h[head], h[head + 1]]));
        let end = (start + len).min(data.len());
        out.push((&h[..head], start..end));
        at = end;
    }
    out
}

/// Encodes one record of [`fuzz_pipeline`] or [`fuzz_coalesce`] input: `head`, the body's
/// length, the body.
pub fn record(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut r = head.to_vec();
    r.extend_from_slice(&(body.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    r.extend_from_slice(body);
    r
}

/// The control protocol target: a request line as the control socket reads it. Invariant:
/// a request that parses serializes to JSON that parses back to the same request.
pub fn fuzz_control_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<crate::control::Request>(data) else {
        return;
    };
    let line = serde_json::to_string(&req);
    assert!(line.is_ok(), "request {req:?} does not serialize: {line:?}");
    if let Ok(line) = line {
        let back = serde_json::from_str::<crate::control::Request>(&line);
        assert_eq!(back.ok().as_ref(), Some(&req), "round trip of {line}");
    }
}

/// The configuration target: `data` as the text of a configuration file (not UTF-8: skipped).
/// Invariant: a configuration that parses and validates writes out TOML that reads back as
/// the same configuration.
pub fn fuzz_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = crate::config::Config::from_toml_str(text) else {
        return;
    };
    let out = config.to_toml();
    assert!(out.is_ok(), "config {config:?} does not serialize: {out:?}");
    if let Ok(out) = out {
        let back = crate::config::Config::from_toml_str(&out);
        assert_eq!(
            back.as_ref().ok(),
            Some(&config),
            "round trip of {out}: {back:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::seeds::superframe;
    use super::*;
    use crate::gso::{Coalescer, Segmenter};
    use crate::pipeline::Action;
    use crate::table::PortId;
    use crate::wire::virtio::VnetHdr;
    use std::path::{Path, PathBuf};

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// The seed corpora in `fuzz/corpus/` are the ones [`seeds`] makes (and the example
    /// configs). `PODSWITCH_WRITE_SEEDS=1 cargo test -p podswitch committed_seeds` writes
    /// them after a change to the seeds.
    #[test]
    fn committed_seeds_are_the_generated_ones() {
        let write = std::env::var("PODSWITCH_WRITE_SEEDS").as_deref() == Ok("1");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut all: Vec<(PathBuf, Vec<u8>)> = seeds()
            .into_iter()
            .map(|(target, name, bytes)| (fuzz_dir().join("corpus").join(target).join(name), bytes))
            .collect();
        for e in std::fs::read_dir(examples).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                let to = fuzz_dir()
                    .join("corpus/config")
                    .join(path.file_name().unwrap());
                all.push((to, std::fs::read(&path).unwrap()));
            }
        }
        for (path, bytes) in all {
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == bytes,
                "{} differs from its seed: PODSWITCH_WRITE_SEEDS=1 cargo test -p podswitch committed_seeds",
                path.display()
            );
        }
    }

    #[test]
    fn seeds_do_what_they_are_named_for() {
        let all = seeds();
        assert!(TARGETS
            .iter()
            .all(|t| all.iter().filter(|s| s.0 == *t).count() >= 2 || *t == "config"));
        let mut node = PipelineHarness::new();
        let get = |name: &str| {
            let s = seeds()
                .into_iter()
                .find(|s| s.0 == "pipeline" && s.1 == name);
            s.unwrap().2
        };
        let mut arp = get("arp-request");
        let vnet = VnetHdr::parse(&arp[4..]).unwrap();
        assert_eq!(node.frame(0, &mut arp[14..], vnet), Action::Reply);
        let mut tso = get("tso-to-peer");
        let vnet = VnetHdr::parse(&tso[4..]).unwrap();
        assert!(vnet.is_gso());
        assert!(matches!(
            node.frame(0, &mut tso[14..], vnet),
            Action::Encap(_)
        ));
        let mut vx = get("vxlan-from-peer");
        assert_eq!(node.datagram(true, &mut vx[4..]), Action::Forward(1));
        // The segment seeds cut into several wire-ready segments.
        let (vnet, frame) = superframe(6, 3000, 1448);
        let cut = Segmenter::default().segment(&frame, &vnet, usize::MAX, |_, _| {});
        assert_eq!(cut, Ok(3));
        // The coalescing seed merges its first three frames.
        let input = seeds()
            .into_iter()
            .find(|s| s.1 == "three-segments")
            .unwrap()
            .2;
        let mut outputs = Vec::new();
        let mut c = Coalescer::default();
        let mut emit = |_: PortId, parts: &[&[u8]], v: VnetHdr| outputs.push((parts.len(), v));
        for (head, frame) in records(&input, 1) {
            c.push(PortId::from(head[0]), &input, frame, &mut emit);
        }
        c.flush(&input, &mut emit);
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0].0, 4, "headers and three payloads");
        assert!(outputs[0].1.is_gso());
    }

    /// Every committed corpus file and regression input goes through its target: what once
    /// crashed a target stays fixed.
    #[test]
    fn replay_corpus() {
        let mut ran = 0;
        for kind in ["corpus", "regressions"] {
            for target in TARGETS {
                let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
                    continue;
                };
                for e in dir {
                    let path = e.unwrap().path();
                    run(target, &std::fs::read(&path).unwrap());
                    ran += 1;
                }
            }
        }
        assert!(ran > 0, "no corpus under {}", fuzz_dir().display());
    }
}
