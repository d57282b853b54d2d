//! The shared allocation paths: entry (remember the request), exit (record the result) and
//! release (forget a block). Every allocator function's program is a thin decoder into these.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, pt_regs},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    programs::{ProbeContext, RetProbeContext},
};
use memmon_common::{AllocKind, BIRTH_UNIT_SHIFT, LiveAlloc, LiveKey, Loss, PendingCall, size_bucket};

use crate::{
    counters::{add, lose},
    maps::{ARMED, LIVE, PENDING, SITES, SIZE_HISTOGRAM, TARGETS, site_counters, take_block},
    lifecycle::image_of,
    stack, track,
};

/// How far the stack pointer moves between a function's first instruction and its return:
/// x86-64's `call` pushes the return address; arm64 keeps it in a register.
///
/// The entry probe may sit past the first instruction (memmon-user's probe_site moves it to the
/// first one the kernel emulates), but only past instructions that write neither the stack
/// pointer nor the return address at it: the stack pointer the entry sees is the one at the
/// first instruction, so `entry_sp + RETURN_ADDRESS_BYTES` is still the stack pointer at the
/// return, and a tail call (memalign jumping to malloc) still reaches the next function's site
/// with the same stack pointer.
#[cfg(bpf_target_arch = "x86_64")]
pub const RETURN_ADDRESS_BYTES: u64 = 8;
#[cfg(not(bpf_target_arch = "x86_64"))]
pub const RETURN_ADDRESS_BYTES: u64 = 0;

/// The registers a stack walk starts from, at a probe.
#[inline(always)]
fn stack_regs(regs: *mut pt_regs) -> stack::UserRegs {
    let regs = unsafe { &*regs };
    #[cfg(bpf_target_arch = "x86_64")]
    return stack::UserRegs { ip: regs.rip, sp: regs.rsp, rbp: regs.rbp };
    #[cfg(bpf_target_arch = "aarch64")]
    return stack::UserRegs { ip: regs.pc, sp: regs.sp, rbp: regs.regs[29] };
}

#[inline(always)]
pub fn user_sp(regs: *mut pt_regs) -> u64 {
    let regs = unsafe { &*regs };
    #[cfg(bpf_target_arch = "x86_64")]
    return regs.rsp;
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.sp;
}

/// `n * size` as calloc sees it; an overflowing request must fail, so it becomes `u64::MAX`
/// (no allocator satisfies it, and a failed call is never recorded).
#[inline(always)]
pub fn array_size(n: u64, size: u64) -> u64 {
    // Not checked_mul (nor a division test, which LLVM folds back into it): both lower to a
    // 128-bit multiply, which BPF lacks. Multiply 32-bit halves instead.
    const LOW: u64 = u32::MAX as u64;
    let (n_high, n_low, size_high, size_low) = (n >> 32, n & LOW, size >> 32, size & LOW);
    if n_high != 0 && size_high != 0 {
        return u64::MAX;
    }
    let cross = n_high * size_low + n_low * size_high;
    if cross > LOW {
        return u64::MAX;
    }
    (cross << 32).checked_add(n_low * size_low).unwrap_or(u64::MAX)
}

#[inline(always)]
pub fn enter(ctx: &ProbeContext, kind: AllocKind, size: u64, ptr_arg: u64) {
    let thread = bpf_get_current_pid_tgid();
    let sp = user_sp(ctx.regs);
    let slot = PENDING.get_ptr_mut(thread);
    if let Some(outer) = slot
        && unsafe { (*outer).entry_sp } != 0
    {
        let outer = unsafe { &mut *outer };
        // A stack pointer below the entry of the call in flight: an allocator function called
        // by another (memalign → malloc, operator new → malloc). The outer call records the
        // result; counting the inner one too would count it twice.
        if outer.entry_sp > sp {
            return;
        }
        if outer.entry_sp == sp {
            // Tail-jumped into from the call in flight (memalign → malloc): the same call.
            outer.tail_calls += 1;
            return;
        }
        lose(Loss::EntryWithoutReturn);
    }
    let tgid = (thread >> 32) as u32;
    // realloc's old block leaves the live table now, before the allocator can hand its address
    // to another thread; the exit puts it back if the call failed.
    let (old_size, old_site, old_timestamp_ns, old_call_thread) = match kind {
        AllocKind::Realloc if ptr_arg != 0 => match take_live(tgid, image_of(tgid), ptr_arg) {
            Some(block) => (block.size, block.site, block.timestamp_ns, block.call_thread),
            None => {
                count_untracked_free(tgid);
                (0, 0, 0, 0)
            }
        },
        _ => (0, 0, 0, 0),
    };
    // The thread's slot is reused call after call (an update in place, not an insert and a
    // delete per allocation); the LRU map drops the slots of threads that are gone.
    if let Some(slot) = slot {
        // Field by field: a whole PendingCall built on the stack and copied in costs a memset
        // call for its zero fields on every entry. The old block's fields are read only when
        // its timestamp is set (a realloc's).
        let slot = unsafe { &mut *slot };
        slot.size = size;
        slot.ptr_arg = ptr_arg;
        slot.entry_sp = sp;
        slot.kind = kind as u32;
        slot.tail_calls = 0;
        slot.old_timestamp_ns = old_timestamp_ns;
        if old_timestamp_ns != 0 {
            slot.old_size = old_size;
            slot.old_site = old_site;
            slot.old_call_thread = old_call_thread;
        }
        return;
    }
    let call = PendingCall {
        size,
        ptr_arg,
        entry_sp: sp,
        kind: kind as u32,
        tail_calls: 0,
        old_size,
        old_site,
        old_timestamp_ns,
        old_call_thread,
        _pad: 0,
    };
    if PENDING.insert(thread, call, BPF_ANY as u64).is_err() {
        lose(Loss::PendingTableFull);
        if old_timestamp_ns != 0 {
            credit_free(old_site, old_size, old_timestamp_ns);
        }
    }
}

/// Whether the thread is inside a tracked allocator call (its slot holds a call in flight).
#[inline(always)]
pub fn in_allocator_call(thread: u64) -> bool {
    PENDING.get_ptr(thread).is_some_and(|call| unsafe { (*call).entry_sp } != 0)
}

#[inline(always)]
pub fn exit(ctx: &RetProbeContext) {
    let thread = bpf_get_current_pid_tgid();
    let sp = user_sp(ctx.regs);
    let call = match PENDING.get_ptr_mut(thread) {
        Some(call) if unsafe { (*call).entry_sp } != 0 => call,
        _ => {
            if ARMED.get(0).is_some_and(|armed| *armed != 0) {
                lose(Loss::ReturnWithoutEntry);
            }
            return;
        }
    };
    let expected_sp = unsafe { (*call).entry_sp } + RETURN_ADDRESS_BYTES;
    if sp < expected_sp {
        return; // the return of a nested allocator call
    }
    if sp == expected_sp && unsafe { (*call).tail_calls } > 0 {
        // One of the chained returns of a tail call; the last one records the result.
        unsafe { (*call).tail_calls -= 1 };
        return;
    }
    let slot = call;
    let call = unsafe { *slot };
    unsafe { (*slot).entry_sp = 0 }; // the slot is free for the thread's next call
    let tgid = (thread >> 32) as u32;
    if sp > expected_sp {
        // The recorded call's frame is gone (it never returned); this return is not its.
        lose(Loss::EntryWithoutReturn);
        restore_old_block(tgid, &call);
        return;
    }
    let ret: u64 = ctx.ret();
    // Decide what was allocated first, so that the (large) recording path is inlined once.
    let allocated = match call.kind {
        k if k == AllocKind::Realloc as u32 => {
            // realloc(p, 0) frees p and may return NULL; any other NULL is a failure.
            if ret != 0 || call.size == 0 {
                if call.old_timestamp_ns != 0 {
                    credit_free(call.old_site, call.old_size, call.old_timestamp_ns);
                    track::freed(thread, &old_block(&call));
                }
            } else {
                restore_old_block(tgid, &call);
            }
            ret
        }
        k if k == AllocKind::PosixMemalign as u32 => {
            if ret as u32 == 0 {
                unsafe { bpf_probe_read_user(call.ptr_arg as *const u64) }.unwrap_or(0)
            } else {
                0
            }
        }
        _ => ret,
    };
    if allocated != 0 {
        record(stack_regs(ctx.regs), thread, allocated, call.size);
    }
}

#[inline(always)]
pub fn free(addr: u64) {
    if addr == 0 {
        return;
    }
    // No check for being inside an allocator call (as entries have): the one allocator that
    // frees a tracked block internally is realloc(p, 0), and realloc's entry has already taken
    // p out of the live table, so its inner free finds nothing. One map lookup less per free.
    let thread = bpf_get_current_pid_tgid();
    let tgid = (thread >> 32) as u32;
    match take_live(tgid, image_of(tgid), addr) {
        Some(block) => {
            credit_free(block.site, block.size, block.timestamp_ns);
            track::freed(thread, &block);
        }
        // An allocator's own inner free (realloc(p, 0)'s) is not the program's.
        None if !in_allocator_call(thread) => count_untracked_free(tgid),
        None => {}
    }
}

/// A block allocated before memmon attached is freed (or reallocated): while a process still
/// does this, its tracked live memory grows by replacing those blocks, which the leak detector
/// must not take for a leak.
#[inline(always)]
fn count_untracked_free(tgid: u32) {
    if let Some(process) = TARGETS.get_ptr_mut(tgid) {
        add(unsafe { &mut (*process).untracked_frees }, 1);
    }
}

/// Records a successful allocation of `size` bytes at `addr`.
#[inline(always)]
fn record(regs: stack::UserRegs, thread: u64, addr: u64, size: u64) {
    let tgid = (thread >> 32) as u32;
    // No site at all, not even the unknown-stack one (the stack table is full): untracked.
    let Some((site, image)) = stack::current_site(regs, thread, || image_of(tgid)) else {
        lose(Loss::SiteTableFull);
        return;
    };
    let Some(stats) = site_counters(&SITES, site) else {
        lose(Loss::SiteTableFull);
        return;
    };
    let key = LiveKey { addr, tgid, image };
    // A tracked call in flight on the thread: the block is tagged as its (see `track`).
    let call = track::current_call(thread, regs.sp);
    let call_thread = if call.is_some() { thread as u32 } else { 0 };
    let block = LiveAlloc { size, site, timestamp_ns: unsafe { bpf_ktime_get_ns() }, call_thread, _pad: 0 };
    if LIVE.insert(key, block, BPF_NOEXIST as u64).is_err() {
        // Either the table is full, or the allocator handed out an address we still think is
        // live: its free was missed. (Checked only on failure: the common path is one insert.)
        let Some(stale) = take_live(tgid, image, addr) else {
            lose(Loss::LiveTableFull);
            return;
        };
        lose(Loss::MissedFree);
        credit_free(stale.site, stale.size, stale.timestamp_ns);
        if LIVE.insert(key, block, BPF_NOEXIST as u64).is_err() {
            lose(Loss::LiveTableFull);
            return;
        }
    }
    if let Some(call) = call {
        track::allocated(call, site, size);
    }
    let stats = unsafe { &mut *stats };
    add(&mut stats.alloc_bytes, size);
    add(&mut stats.alloc_count, 1);
    add(&mut stats.live_birth_sum, block.timestamp_ns >> BIRTH_UNIT_SHIFT);
    if let Some(bucket) = SIZE_HISTOGRAM.get_ptr_mut(size_bucket(size)) {
        add(bucket, 1);
    }
}

/// Removes a live block of the process' image `image` and returns it; `None` if untracked or
/// already taken by another thread.
#[inline(always)]
fn take_live(tgid: u32, image: u32, addr: u64) -> Option<LiveAlloc> {
    take_block(&LIVE, tgid, image, addr)
}

#[inline(always)]
fn credit_free(site: u64, size: u64, timestamp_ns: u64) {
    if let Some(stats) = SITES.get_ptr_mut(site) {
        let stats = unsafe { &mut *stats };
        add(&mut stats.free_bytes, size);
        add(&mut stats.free_count, 1);
        add(&mut stats.live_birth_sum, (timestamp_ns >> BIRTH_UNIT_SHIFT).wrapping_neg());
    }
}

/// A realloc that failed (or whose return we cannot trust) leaves its old block live.
#[inline(always)]
fn restore_old_block(tgid: u32, call: &PendingCall) {
    if call.old_timestamp_ns == 0 {
        return;
    }
    // No exec can come between a call's entry and its return on the same thread.
    let key = LiveKey { addr: call.ptr_arg, tgid, image: image_of(tgid) };
    if LIVE.insert(key, old_block(call), BPF_NOEXIST as u64).is_err() {
        lose(Loss::LiveTableFull);
        credit_free(call.old_site, call.old_size, call.old_timestamp_ns);
    }
}

/// A realloc's old block, as it was in the live table.
#[inline(always)]
fn old_block(call: &PendingCall) -> LiveAlloc {
    LiveAlloc {
        size: call.old_size,
        site: call.old_site,
        timestamp_ns: call.old_timestamp_ns,
        call_thread: call.old_call_thread,
        _pad: 0,
    }
}
