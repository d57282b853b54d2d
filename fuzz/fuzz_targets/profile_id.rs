#![no_main]
//! See memmon::fuzzing::profile_id for the input and what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memmon::fuzzing::profile_id(data));
