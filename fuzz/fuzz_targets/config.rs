//! Fuzz target `config`: see `podswitch::fuzzing::fuzz_config` for the input format and the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podswitch::fuzzing::fuzz_config(data));
