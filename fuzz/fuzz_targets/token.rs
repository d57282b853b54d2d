#![no_main]
//! See memmon::fuzzing::token for the input and what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memmon::fuzzing::token(data));
