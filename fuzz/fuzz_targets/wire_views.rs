//! Fuzz target `wire_views`: see `podswitch::fuzzing::fuzz_wire_views` for the input format and the
//! invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podswitch::fuzzing::fuzz_wire_views(data));
