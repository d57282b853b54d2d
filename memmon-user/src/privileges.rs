//! Least privilege: once attached, the agent keeps only the capabilities the rest of its life
//! needs (measured on kernel 6.18; README "Privileges" has the table and the experiments).
//!
//! Capabilities are per thread, so every thread that lives on drops them itself: the agent
//! thread (all tracing, /proc and profile work) and the main thread (the API). Threads
//! started later inherit the reduced set.

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// What the agent needs after attaching, and why. Each was measured by dropping it (strace
/// shows the EACCES, the agent degrades): see README "Privileges".
pub fn retained() -> Vec<(Capability, &'static str)> {
    vec![
        (
            Capability::CAP_SYS_PTRACE,
            "/proc/PID/maps, /proc/PID/mem (Python code objects) and /proc/PID/root (the targets' files) of processes \
             with capabilities the agent no longer has, or of another user",
        ),
        (
            Capability::CAP_DAC_READ_SEARCH,
            "the targets' binaries and libraries (symbols, unwind tables for code mapped later) and /proc/PID/mem \
             when the agent's user may not read them",
        ),
        (
            Capability::CAP_SYS_ADMIN,
            "uprobes attached after the start: capture windows (always-on tier), a target's exec into a program with \
             another allocator, a library with an allocator of its own loaded later (dlopen), followed forks; the \
             kernel's uprobe PMU (perf_event_open) requires CAP_SYS_ADMIN on 6.18, CAP_PERFMON is refused with EACCES",
        ),
    ]
}

/// The current thread's effective capabilities.
pub fn effective() -> Result<CapsHashSet> {
    caps::read(None, CapSet::Effective).context("reading this thread's capabilities")
}

/// Drops the calling thread to `keep` (effective and permitted; inheritable and ambient
/// emptied, the bounding set cut when the thread may), and sets no_new_privs. A capability
/// in `keep` the thread does not have stays absent.
pub fn drop_to(keep: &[Capability]) -> Result<()> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let permitted = caps::read(None, CapSet::Permitted).context("reading this thread's capabilities")?;
    let retained: CapsHashSet = permitted.intersection(&keep).copied().collect();
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::read(None, CapSet::Bounding)?.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable capabilities")?;
    caps::set(None, CapSet::Effective, &retained).context("setting the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &retained).context("setting the permitted capabilities")?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting no_new_privs");
    }
    Ok(())
}

/// "cap_a, cap_b" for messages.
pub fn names(set: &CapsHashSet) -> String {
    let mut names: Vec<String> = set.iter().map(|c| c.to_string().to_lowercase()).collect();
    names.sort();
    if names.is_empty() { "none".into() } else { names.join(", ") }
}
