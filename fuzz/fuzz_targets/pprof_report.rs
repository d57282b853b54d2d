#![no_main]
//! See memmon::fuzzing::pprof_report for the input and what must hold.
libfuzzer_sys::fuzz_target!(|data: &[u8]| memmon::fuzzing::pprof_report(data));
