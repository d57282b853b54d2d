//! memmon: live memory by allocation site, for running processes, from eBPF uprobes.
//!
//! The binary is a thin CLI over this library; integration tests drive the library directly.

pub mod agent;
pub mod allocator;
pub mod batch;
pub mod commands;
pub mod completeness;
pub mod config;
pub mod control;
pub mod durations;
pub mod forks;
pub mod fuzzing;
pub mod launch;
pub mod overhead;
pub mod leaks;
pub mod lifecycle;
pub mod privileges;
pub mod probe_site;
pub mod profiles;
pub mod python;
pub mod process;
pub mod report;
pub mod seccomp;
pub mod snapshot;
pub mod symbolize;
pub mod tracefs;
pub mod tracer;
pub mod track;
pub mod unwind;
pub mod wire;
