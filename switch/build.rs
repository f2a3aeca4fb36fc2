//! `PODSWITCH_SKIP_ROOT_TESTS=1` at `cargo test` time marks the tests that need root as
//! ignored (`#[cfg_attr(skip_root_tests, ignore = ...)]`), so the harness's own summary
//! counts them as ignored rather than passed.
fn main() {
    println!("cargo::rerun-if-env-changed=PODSWITCH_SKIP_ROOT_TESTS");
    println!("cargo::rustc-check-cfg=cfg(skip_root_tests)");
    if std::env::var("PODSWITCH_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=skip_root_tests");
    }
}
