#![no_main]
//! See memmon::fuzzing::suppressions for the input and what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memmon::fuzzing::suppressions(data));
