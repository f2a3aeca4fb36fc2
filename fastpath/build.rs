//! Compiles the fast path's eBPF programs (`bpf/*.bpf.c`) with clang into `OUT_DIR`, where
//! `src/programs.rs` embeds the object. clang and libbpf's headers come from `scripts/setup`
//! (Debian's `clang` and `libbpf-dev`); a missing one is named rather than left to a compiler
//! error.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from("bpf/fastpath.bpf.c");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("fastpath.bpf.o");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=PODSWITCH_BPF_CLANG");
    let clang = std::env::var("PODSWITCH_BPF_CLANG").unwrap_or_else(|_| "clang".into());
    if !std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        panic!("building the eBPF fast path needs libbpf's headers (/usr/include/bpf/bpf_helpers.h): run scripts/setup, or apt-get install libbpf-dev");
    }
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!(
            "-I/usr/include/{}-linux-gnu",
            std::env::consts::ARCH
        ))
        .arg("-c")
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {} ({s})", src.display()),
        Err(e) => panic!(
            "building the eBPF fast path needs clang with the BPF target ({clang}: {e}): run scripts/setup, or apt-get install clang"
        ),
    }
}
