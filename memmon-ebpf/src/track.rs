//! Per-call memory of tracked functions (`--track-function`): what one call of a chosen
//! function (a request handler) allocates, frees and keeps.
//!
//! Each thread has one slot (`TRACK_CALLS`, keyed by `pid_tgid`) holding its outermost tracked
//! call in flight. The function's entry probe starts a call; its return probe, at the stack
//! pointer the entry saw plus the return address, completes it and sends a `CallEvent` to
//! userspace. The allocator paths (`alloc.rs`) call in here: an allocation made while a call is
//! in flight on its thread is added to the call and its block is tagged with the thread
//! (`LiveAlloc::call_thread`); a free of a block the in-flight call allocated — on any thread —
//! takes it out of the call's net delta. So the net delta is exactly: the bytes of the blocks
//! the call's thread allocated during the call that were still live at its return.
//!
//! A call whose return is never seen is counted lost, never completed with a wrong delta: its
//! frame is gone when a later entry, allocation or return on the thread has a stack pointer
//! above it (longjmp, exception unwinding), and its thread's exit (`thread_exited`) ends it.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_get_attach_cookie},
    programs::{ProbeContext, RetProbeContext},
};
use memmon_common::{
    LiveAlloc,
    track::{CallEvent, FunctionCounters, FunctionSiteKey, FunctionSiteStats, InFlightCall},
};

/// `bpf_ringbuf_output` flag: do not notify the reader.
const BPF_RB_NO_WAKEUP: u64 = 1;

use crate::{
    alloc::{RETURN_ADDRESS_BYTES, user_sp},
    counters::add,
    maps::{ARMED, TRACK_CALLS, TRACK_COUNTERS, TRACK_EVENTS, TRACK_SITES, TRACKING},
};

/// Whether any function is tracked: one array read, so that the allocator paths pay nothing
/// more when none is.
#[inline(always)]
pub fn enabled() -> bool {
    TRACKING.get(0).is_some_and(|on| *on != 0)
}

/// Adds one to a per-function counter chosen by `field`.
#[inline(always)]
fn count(function: u32, field: impl FnOnce(&mut FunctionCounters) -> &mut u64) {
    if let Some(counters) = TRACK_COUNTERS.get_ptr_mut(function) {
        add(field(unsafe { &mut *counters }), 1);
    }
}

/// The tracked function a probe belongs to: its attach cookie (memmon-user's tracer sets it).
#[inline(always)]
fn function_of(ctx: *mut core::ffi::c_void) -> u32 {
    // SAFETY: a uprobe program's context is what the helper takes.
    (unsafe { bpf_get_attach_cookie(ctx) }) as u32
}

/// A tracked function's entry.
#[inline(always)]
pub fn enter(ctx: &ProbeContext) {
    let function = function_of(ctx.as_ptr());
    let thread = bpf_get_current_pid_tgid();
    let sp = user_sp(ctx.regs);
    let call = InFlightCall { active: 1, function, entry_sp: sp, start_ns: unsafe { bpf_ktime_get_ns() }, ..Default::default() };
    match TRACK_CALLS.get_ptr_mut(&thread) {
        Some(slot) => {
            let slot = unsafe { &mut *slot };
            if slot.active != 0 {
                if sp < slot.entry_sp {
                    // Recursion, or another tracked function called inside the call in flight.
                    count(function, |c| &mut c.nested);
                    return;
                }
                // At or above the call in flight's entry: its frame is gone, its return unseen.
                count(slot.function, |c| &mut c.lost_unwound);
            }
            *slot = call;
        }
        None => {
            if TRACK_CALLS.insert(&thread, &call, 0).is_err() {
                count(function, |c| &mut c.lost_table_full);
                return;
            }
        }
    }
    count(function, |c| &mut c.started);
}

/// A tracked function's return.
#[inline(always)]
pub fn exit(ctx: &RetProbeContext) {
    let thread = bpf_get_current_pid_tgid();
    let sp = user_sp(ctx.regs);
    let slot = match TRACK_CALLS.get_ptr_mut(&thread) {
        Some(slot) if unsafe { (*slot).active } != 0 => unsafe { &mut *slot },
        _ => {
            if ARMED.get(0).is_some_and(|armed| *armed != 0) {
                count(function_of(ctx.as_ptr()), |c| &mut c.orphan_returns);
            }
            return;
        }
    };
    let expected_sp = slot.entry_sp + RETURN_ADDRESS_BYTES;
    if sp < expected_sp {
        return; // a nested call's return
    }
    let now = unsafe { bpf_ktime_get_ns() };
    slot.active = 0;
    let function = slot.function;
    if sp > expected_sp {
        // The call in flight is not the one returning: its frame went without a return.
        count(function, |c| &mut c.lost_unwound);
        return;
    }
    // Read after clearing `active`: a free on another thread that still saw the call in
    // flight has added to own_freed by now, or sees it idle and leaves it alone.
    let own_freed_bytes = unsafe { core::ptr::read_volatile(&slot.own_freed_bytes) };
    let own_freed_count = unsafe { core::ptr::read_volatile(&slot.own_freed_count) };
    let event = CallEvent {
        function,
        tid: thread as u32,
        start_ns: slot.start_ns,
        duration_ns: now.saturating_sub(slot.start_ns),
        alloc_bytes: slot.alloc_bytes,
        alloc_count: slot.alloc_count,
        freed_bytes: slot.freed_bytes,
        free_count: slot.free_count,
        net_bytes: slot.alloc_bytes.saturating_sub(own_freed_bytes),
        net_count: slot.alloc_count.saturating_sub(own_freed_count),
    };
    // No wakeup: waking the reader raises an interrupt, which on a VM costs microseconds per
    // call (measured: 7 µs of this program's 7.3); the drain reads the ring every few ms.
    if TRACK_EVENTS.output::<CallEvent>(&event, BPF_RB_NO_WAKEUP).is_err() {
        count(function, |c| &mut c.lost_event_dropped);
    }
}

/// The call in flight on `thread` that an allocation returning at stack pointer `sp` belongs
/// to. A stack pointer above the call's return (its caller's frame or further out) means the
/// call left without its return being seen: it is counted lost, and the allocation is not its.
#[inline(always)]
pub fn current_call(thread: u64, sp: u64) -> Option<*mut InFlightCall> {
    if !enabled() {
        return None;
    }
    let slot = TRACK_CALLS.get_ptr_mut(&thread)?;
    let call = unsafe { &mut *slot };
    if call.active == 0 {
        return None;
    }
    // An allocator tail-called by the function returns straight to its caller, at exactly the
    // function's return stack pointer: still the call's.
    if sp > call.entry_sp + RETURN_ADDRESS_BYTES {
        call.active = 0;
        count(call.function, |c| &mut c.lost_unwound);
        return None;
    }
    Some(slot)
}

/// `call` (from `current_call`) allocated `size` bytes at `site`.
#[inline(always)]
pub fn allocated(call: *mut InFlightCall, site: u64, size: u64) {
    let call = unsafe { &mut *call };
    // Only the call's own thread writes these.
    call.alloc_bytes += size;
    call.alloc_count += 1;
    let key = FunctionSiteKey { site, function: call.function, _pad: 0 };
    let stats = match TRACK_SITES.get_ptr_mut(&key) {
        Some(stats) => Some(stats),
        None => {
            let _ = TRACK_SITES.insert(&key, &FunctionSiteStats::default(), BPF_NOEXIST as u64);
            TRACK_SITES.get_ptr_mut(&key)
        }
    };
    match stats {
        Some(stats) => {
            let stats = unsafe { &mut *stats };
            add(&mut stats.alloc_bytes, size);
            add(&mut stats.alloc_count, 1);
        }
        None => count(call.function, |c| &mut c.site_table_full),
    }
}

/// `thread` freed (or reallocated) the tracked `block`.
#[inline(always)]
pub fn freed(thread: u64, block: &LiveAlloc) {
    if !enabled() {
        return;
    }
    if let Some(call) = TRACK_CALLS.get_ptr_mut(&thread) {
        let call = unsafe { &mut *call };
        if call.active != 0 {
            call.freed_bytes += block.size;
            call.free_count += 1;
        }
    }
    if block.call_thread == 0 {
        return;
    }
    // The thread whose call allocated the block, in the same process.
    let owner = (thread & !0xffff_ffff) | block.call_thread as u64;
    let Some(call) = TRACK_CALLS.get_ptr_mut(&owner) else { return };
    let call = unsafe { &mut *call };
    let start_ns = call.start_ns;
    if call.active == 0 || block.timestamp_ns < start_ns {
        return; // allocated by a call that has returned (it was live then): not this call's
    }
    add(&mut call.own_freed_bytes, block.size);
    add(&mut call.own_freed_count, 1);
    // The owner may have returned and started its next call between the check and the adds
    // (another thread's free racing a return): then they belong to no call in flight.
    if unsafe { core::ptr::read_volatile(&call.start_ns) } != start_ns {
        add(&mut call.own_freed_bytes, block.size.wrapping_neg());
        add(&mut call.own_freed_count, 1u64.wrapping_neg());
    }
}

/// The current thread is exiting: a call it had in flight never returns.
#[inline(always)]
pub fn thread_exited() {
    let thread = bpf_get_current_pid_tgid();
    let Some(call) = TRACK_CALLS.get_ptr(&thread) else { return };
    let (active, function) = unsafe { ((*call).active, (*call).function) };
    if active != 0 {
        count(function, |c| &mut c.lost_thread_exit);
    }
    let _ = TRACK_CALLS.remove(&thread);
}
