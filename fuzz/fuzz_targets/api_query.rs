#![no_main]
//! See memmon::fuzzing::api_query for the input and what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memmon::fuzzing::api_query(data));
