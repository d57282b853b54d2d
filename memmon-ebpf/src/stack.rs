//! Stack capture and interning: the one place that turns "the stack right now" into a site id.
//!
//! A site id is a content hash of (tgid, image, frames): a site never spans an execve. Stacks are compared frame by frame on every
//! hit, and a colliding different stack moves to the next slot, so two stacks are never merged
//! into one site and a site is never relabelled (unlike `BPF_F_REUSE_STACKID` stack-id maps).

use aya_ebpf::bindings::BPF_NOEXIST;
use memmon_common::{Loss, MAX_STACK_DEPTH, STACK_PROBE_LIMIT, StackTrace, Truncation, memo::MemoKey};

pub use crate::unwind::UserRegs;
use crate::{
    counters::lose,
    maps::{STACK_SCRATCH, STACKS},
    memo, unwind,
};

const EEXIST: i32 = 17;

/// Captures the calling thread's (`thread`, its pid_tgid) user stack and returns its site id,
/// with the process image the site belongs to.
///
/// From the allocator's return probe the first frame is the allocator's caller; from a
/// syscall, the syscall wrapper (glibc's mmap). The walk itself is `unwind::walk`; a thread
/// allocating again from where it did before gets the memoized site (`memo`), which knows its
/// image: `image` is asked only when the stack is walked.
///
/// When the stack cannot be stored, the allocation still counts, under the process's
/// "unknown stack" site (depth 0), and the reason is counted as a loss.
#[inline(always)]
pub fn current_site(regs: UserRegs, thread: u64, image: impl FnOnce() -> u32) -> Option<(u64, u32)> {
    let tgid = (thread >> 32) as u32;
    let key = MemoKey { thread, ip: regs.ip, sp: regs.sp };
    let generation = memo::generation();
    if let Some(recalled) = memo::recall(&key, regs.rbp, generation) {
        return Some(recalled);
    }
    let image = image();
    memo::start(&key, regs.rbp, generation, image);
    unwind::walk(regs, tgid);
    let scratch = unsafe { &mut *STACK_SCRATCH.get_ptr_mut(0)? };
    scratch.tgid = tgid;
    scratch.image = image;
    if scratch.depth == 0 {
        lose(Loss::StackCaptureFailed);
        memo::abandon();
    }
    match intern(scratch) {
        Ok(site) => {
            memo::remember(site);
            Some((site, image))
        }
        Err(loss) => {
            lose(loss);
            unknown_site(scratch).map(|site| (site, image))
        }
    }
}

/// The process' "unknown stack" site: an empty stack, stored like any other. Separate from
/// `intern` (whose loops the verifier would otherwise walk a second time) because an empty
/// stack only needs its tgid compared.
#[inline(always)]
fn unknown_site(scratch: &mut StackTrace) -> Option<u64> {
    scratch.depth = 0;
    scratch.truncated = Truncation::NotStored as u32;
    let hash = finish_hash((scratch.tgid as u64) << 32 | scratch.image as u64);
    for probe in 0..STACK_PROBE_LIMIT {
        let site = hash.wrapping_add(probe);
        if let Some(existing) = STACKS.get_ptr(site) {
            let existing = unsafe { &*existing };
            if existing.tgid == scratch.tgid
                && existing.image == scratch.image
                && existing.depth == 0
                && existing.truncated == scratch.truncated
            {
                return Some(site);
            }
            continue;
        }
        if STACKS.insert(site, &*scratch, BPF_NOEXIST as u64).is_ok() {
            return Some(site);
        }
    }
    None
}

#[inline(always)]
fn intern(stack: &StackTrace) -> Result<u64, Loss> {
    let hash = content_hash(stack);
    for probe in 0..STACK_PROBE_LIMIT {
        let site = hash.wrapping_add(probe);
        if let Some(existing) = STACKS.get_ptr(site) {
            if same_stack(unsafe { &*existing }, stack) {
                return Ok(site);
            }
            continue;
        }
        match STACKS.insert(site, stack, BPF_NOEXIST as u64) {
            Ok(()) => return Ok(site),
            // Another CPU stored a stack in this slot between our lookup and insert.
            Err(err) if err as i32 == -EEXIST => {
                if let Some(existing) = STACKS.get_ptr(site)
                    && same_stack(unsafe { &*existing }, stack)
                {
                    return Ok(site);
                }
            }
            Err(_) => return Err(Loss::StackTableFull),
        }
    }
    Err(Loss::StackHashCollision)
}

#[inline(always)]
fn depth_of(stack: &StackTrace) -> usize {
    (stack.depth as usize).min(MAX_STACK_DEPTH)
}

#[inline(always)]
fn content_hash(stack: &StackTrace) -> u64 {
    let mut hash = ((stack.tgid as u64) << 32 | stack.depth as u64) ^ (stack.truncated as u64) << 24 ^ (stack.image as u64) << 40;
    let depth = depth_of(stack);
    for i in 0..MAX_STACK_DEPTH {
        if i >= depth {
            break;
        }
        hash = (hash.rotate_left(5) ^ stack.ips[i]).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    finish_hash(hash)
}

/// splitmix64's finalizer: spreads the bits so that adjacent probe slots are unrelated stacks.
#[inline(always)]
fn finish_hash(mut hash: u64) -> u64 {
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[inline(always)]
fn same_stack(a: &StackTrace, b: &StackTrace) -> bool {
    if a.tgid != b.tgid || a.image != b.image || a.depth != b.depth || a.truncated != b.truncated {
        return false;
    }
    let depth = depth_of(a);
    for i in 0..MAX_STACK_DEPTH {
        if i >= depth {
            break;
        }
        if a.ips[i] != b.ips[i] {
            return false;
        }
    }
    true
}
