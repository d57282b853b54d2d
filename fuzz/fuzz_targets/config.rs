#![no_main]
//! See memmon::fuzzing::config for the input and what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memmon::fuzzing::config(data));
