//! Fuzz target `control_request`: see `podswitch::fuzzing::fuzz_control_request` for the input format and the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podswitch::fuzzing::fuzz_control_request(data));
