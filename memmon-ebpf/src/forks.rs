//! A target's new child processes, for `--follow-forks`. Uprobes are attached per process, so a
//! child is traced only once userspace attaches to it: the kernel's part is to name every child
//! of a target the moment it exists, on task:task_newtask, which fires in the parent for every
//! clone and carries its flags (sched_process_fork cannot tell a thread from a process).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};
use memmon_common::{Fork, Loss};

use crate::{
    counters::lose,
    lifecycle::live_target,
    maps::{FOLLOW_FORKS, FORKS},
};

/// Offsets in the task_newtask record (its format file on 6.18).
const NEWTASK_PID: usize = 8;
const NEWTASK_CLONE_FLAGS: usize = 32;
const CLONE_THREAD: u64 = 0x0001_0000;

pub fn new_task(ctx: &TracePointContext) {
    if FOLLOW_FORKS.get(0).copied() != Some(1) {
        return;
    }
    let flags = unsafe { ctx.read_at::<u64>(NEWTASK_CLONE_FLAGS) }.unwrap_or(CLONE_THREAD);
    if flags & CLONE_THREAD != 0 {
        return;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if live_target(parent).is_none() {
        return;
    }
    let Ok(child) = (unsafe { ctx.read_at::<i32>(NEWTASK_PID) }) else { return };
    if FORKS.push(&Fork { child: child as u32, parent }, 0).is_err() {
        lose(Loss::ForkQueueFull);
    }
}
