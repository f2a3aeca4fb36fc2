//! Compiles the fast path's eBPF programs (`bpf/*.bpf.c`) with clang into `OUT_DIR`, where
//! `src/lib.rs` embeds the object. clang and libbpf's headers come from `scripts/setup`
//! (Debian's `clang` and `libbpf-dev`); a missing one is named rather than left to a compiler
//! error. Also: `PODSWITCH_SKIP_ROOT_TESTS=1` marks the tests that need root as ignored (the
//! `skip_root_tests` cfg), as in the other crates.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-env-changed=PODSWITCH_SKIP_ROOT_TESTS");
    println!("cargo::rustc-check-cfg=cfg(skip_root_tests)");
    if std::env::var("PODSWITCH_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=skip_root_tests");
    }
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
