//! A target's life as the kernel sees it: execve replaces its image, and its exit frees its pid
//! for reuse. Both are scheduler tracepoints (sched:sched_process_exec, sched:sched_process_exit),
//! which need no tracefs and fire once per exec or thread exit, never on a hot path.
//!
//! An exec bumps the process' image number. Every live block, mapping and stack carries the
//! image it was made in, so the new image — which may get the very same addresses at once —
//! never frees or reuses a block of the old one; userspace drops the old image's entries and
//! counts them as discarded at exec. Counters of the old address space (brk, anonymous
//! mappings) restart, since that memory went with it.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};
use memmon_common::ProcessMemory;

use crate::{
    counters::add,
    maps::{IMAGE_CACHE, PENDING, PENDING_SYSCALLS, PYTHON_TARGETS, TARGET_MAPPINGS, TARGETS, WALK_GENERATION},
};

/// Offset of `group_dead` in the sched_process_exit record (its format file on 6.18).
const EXIT_RECORD_GROUP_DEAD: usize = 32;

/// The image number of target `tgid` (0 for a process that is not one).
///
/// Every free needs it (the live table's key), so each CPU keeps its last answer
/// (`IMAGE_CACHE`: `tgid << 32 | image`, and the walk generation it was read under): an image
/// changes only at an exec, which bumps the generation, as do userspace's adding and forgetting
/// of targets. A program preempted while writing the cache by another on the same CPU must not
/// leave a torn entry behind that looks current: the generation word is cleared first and set
/// last, and the pair is one word, so every entry that matches holds a pair that was right
/// under that generation.
#[inline(always)]
pub fn image_of(tgid: u32) -> u32 {
    let generation = crate::memo::generation();
    let Some(cache) = IMAGE_CACHE.get_ptr_mut(0) else { return lookup_image(tgid) };
    // SAFETY: this CPU's cache entry; volatile, so that each word is read and written once, in
    // this order.
    unsafe {
        let cache = &mut *cache;
        let cached_generation = core::ptr::read_volatile(&cache[1]);
        let pair = core::ptr::read_volatile(&cache[0]);
        if cached_generation == generation
            && core::ptr::read_volatile(&cache[1]) == generation
            && (pair >> 32) as u32 == tgid
        {
            return pair as u32;
        }
        let image = lookup_image(tgid);
        core::ptr::write_volatile(&mut cache[1], NO_GENERATION);
        core::ptr::write_volatile(&mut cache[0], (tgid as u64) << 32 | image as u64);
        core::ptr::write_volatile(&mut cache[1], generation);
        image
    }
}

/// A generation no walk runs under: the cache entry is being written.
const NO_GENERATION: u64 = u64::MAX;

#[inline(always)]
fn lookup_image(tgid: u32) -> u32 {
    TARGETS.get_ptr(tgid).map_or(0, |process| unsafe { (*process).execs } as u32)
}

/// The target `tgid`, unless it has exited (its pid may belong to a newcomer by now).
#[inline(always)]
pub fn live_target(tgid: u32) -> Option<*mut ProcessMemory> {
    let process = TARGETS.get_ptr_mut(tgid)?;
    (unsafe { (*process).exited } == 0).then_some(process)
}

/// sched:sched_process_exec, in the exec'ing thread, which now leads the thread group.
pub fn exec() {
    let thread = bpf_get_current_pid_tgid();
    let Some(process) = live_target((thread >> 32) as u32) else { return };
    let process = unsafe { &mut *process };
    // Only this thread runs the image, and no allocator call of the old one is in flight on it;
    // a slot left by the old leader (killed by the exec) would pair with the new image's calls.
    let _ = PENDING.remove(thread);
    let _ = PENDING_SYSCALLS.remove(thread);
    // The old image's code mappings and interpreter are gone: until userspace has read the new
    // ones, stacks end at once as `no_process_map` rather than walk the old layout.
    let tgid = (thread >> 32) as u32;
    let _ = TARGET_MAPPINGS.remove(&tgid);
    let _ = PYTHON_TARGETS.remove(&tgid);
    process.brk = 0;
    process.program_mapped_bytes = 0;
    process.program_unmapped_bytes = 0;
    process.allocator_mapped_bytes = 0;
    process.allocator_unmapped_bytes = 0;
    // Plain stores and an add by this thread alone: every other thread of the old image is gone.
    process.execs += 1;
    // Memoized walks of the old image are stale (its stacks and mappings are gone).
    if let Some(generation) = WALK_GENERATION.get_ptr_mut(0) {
        add(generation, 1);
    }
}

/// sched:sched_process_exit, for every exiting thread: the last one marks the process exited.
pub fn exit(ctx: &TracePointContext) {
    let group_dead = unsafe { ctx.read_at::<u8>(EXIT_RECORD_GROUP_DEAD) }.unwrap_or(0);
    if group_dead == 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(process) = TARGETS.get_ptr_mut(tgid) {
        unsafe { (*process).exited = 1 };
    }
}
