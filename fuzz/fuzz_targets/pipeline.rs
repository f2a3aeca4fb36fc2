//! Fuzz target `pipeline`: see `podswitch::fuzzing::fuzz_pipeline` for the input format and the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podswitch::fuzzing::fuzz_pipeline(data));
