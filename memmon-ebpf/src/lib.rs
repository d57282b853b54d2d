#![no_std]
// The library target only exists so that memmon-user can declare a build dependency on this
// crate (cargo then rebuilds memmon when the eBPF sources change). The programs are in main.rs.
