//! Userspace half of stack unwinding: compiles each mapped object's CFI into the compact rows
//! the kernel walker (`memmon-ebpf/src/unwind.rs`) follows, and keeps the kernel's view of each
//! target's code mappings current.
//!
//! - `cfi`: `.eh_frame`/`.debug_frame` → rows and a page index (pure).
//! - `maps`: a process' executable file mappings and their load biases.
//! - `ranges`: space in the fixed-size kernel arrays.
//! - `tables`: the kernel maps themselves, objects shared by build id and file identity.

pub mod cfi;
pub mod maps;
pub mod ranges;
pub mod tables;

pub use tables::{UnwindStats, UnwindTables, capacities};
