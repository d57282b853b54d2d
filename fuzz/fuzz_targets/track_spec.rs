#![no_main]
//! See memmon::fuzzing::track_spec for the input and what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memmon::fuzzing::track_spec(data));
