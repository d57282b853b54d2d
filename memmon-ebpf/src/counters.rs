//! Counters shared across CPUs. The BPF target has no compare-and-swap, so `AtomicU64::fetch_add`
//! does not exist; `atomic_xadd` whose result is unused compiles to BPF's `lock xadd`. A plain
//! read-modify-write would lose updates when two CPUs hit the same site.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use memmon_common::Loss;

use crate::maps::{LOSSES, PROBE_HITS};

#[inline(always)]
pub fn add(counter: *mut u64, value: u64) {
    // SAFETY: `counter` points into a map value that stays valid for the program's run.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, value);
    }
}

#[inline(always)]
pub fn lose(reason: Loss) {
    if let Some(counter) = LOSSES.get_ptr_mut(reason as u32) {
        add(counter, 1);
    }
}

/// One more hit of the probe program in `slot` (`memmon_common::probe_hits`): a per-CPU count,
/// so no atomic; a program preempted on its CPU by another's may lose one, which an estimate
/// can afford.
#[inline(always)]
pub fn hit(slot: u32) {
    if let Some(count) = PROBE_HITS.get_ptr_mut(slot) {
        unsafe { *count += 1 };
    }
}
