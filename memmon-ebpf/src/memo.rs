//! The walk memo: a thread allocating again from where it allocated before gets the site of
//! its last walk from there, without walking.
//!
//! Why it is exact. A walk is a function of where it starts (the return address, the stack
//! pointer, and rbp where a frame's CFA is computed from it), of the tables it looks rows and
//! mappings up in, and of the stack words it reads (return addresses and saved rbps). The memo
//! keeps all of that: the start is its key (plus rbp when the walk used it), the tables'
//! `WALK_GENERATION` at the walk's start (userspace bumps it after every change to the tables or
//! to the sites), and every word the walk read with its value. A recall copies the stack span
//! those words sit in with one read and compares them: if each still holds its value, walking
//! again would make exactly the same steps and reach the same stack, so the site is the same.
//! A caller that returned and was called again from elsewhere at the same depth has a
//! different return address in its frame, and misses.
//!
//! Python processes are never memoized: their stacks read interpreter frames too.

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_ANY, helpers::generated::bpf_probe_read_user};
use memmon_common::memo::{
    MEMO_HITS, MEMO_MISSES, MEMO_SPAN_BYTES, MEMO_SPAN_WORDS, MEMO_UNCACHEABLE, MEMO_WORDS, Memo, MemoKey,
};

use crate::maps::{MEMO_COUNTERS, MEMO_SCRATCH, MEMO_STACK_COPY, MEMOS, WALK_GENERATION};

/// 0 when userspace loads the programs with memoizing off (`TracerOptions::memoize_walks`):
/// every walk is walked. Read-only data, so the verifier drops the branch not taken.
#[unsafe(no_mangle)]
static MEMOIZE_WALKS: u32 = 1;

#[inline(always)]
fn enabled() -> bool {
    // SAFETY: a read of a static; volatile, so that LLVM does not fold the value it was built with.
    unsafe { core::ptr::read_volatile(&MEMOIZE_WALKS) != 0 }
}

/// The tables' generation now. Read before a walk: a change published during the walk then
/// leaves its memo stale, never a stale walk under the new generation.
#[inline(always)]
pub fn generation() -> u64 {
    WALK_GENERATION.get(0).copied().unwrap_or(0)
}

/// The site (and its process image) memoized for a walk from `key` (and `rbp`), if every word
/// it read is unchanged.
#[inline(always)]
pub fn recall(key: &MemoKey, rbp: u64, generation: u64) -> Option<(u64, u32)> {
    if !enabled() {
        return None;
    }
    // SAFETY: a map value, valid while the program runs.
    let memo = unsafe { &*MEMOS.get_ptr(key)? };
    if memo.key != *key || memo.generation != generation || (memo.needs_rbp != 0 && memo.rbp != rbp) {
        return None;
    }
    let span = memo.span as usize;
    if span == 0 || span > MEMO_SPAN_BYTES {
        return None;
    }
    let copy = unsafe { &mut *MEMO_STACK_COPY.get_ptr_mut(0)? };
    // SAFETY: `copy` holds MEMO_SPAN_BYTES, and `span` is at most that.
    let read = unsafe { bpf_probe_read_user(copy.as_mut_ptr() as *mut c_void, span as u32, key.sp as *const c_void) };
    if read != 0 {
        return None;
    }
    let words = (memo.words as usize).min(MEMO_WORDS);
    for i in 0..MEMO_WORDS {
        if i >= words {
            break;
        }
        let offset = memo.offsets[i] as usize & (MEMO_SPAN_WORDS - 1);
        if offset * 8 >= span || copy.get(offset) != Some(&memo.values[i]) {
            return None;
        }
    }
    count(MEMO_HITS);
    Some((memo.site, memo.image))
}

/// Starts recording the coming walk from `key`, in process image `image`, into this CPU's
/// memo scratch.
///
/// The walk reports into the scratch through `note`, `rbp_loaded`, `rbp_lost`, `rbp_used` and
/// `abandon`, which look the scratch up themselves: like the walk's own state (`unwind::Walk`),
/// what the memo records lives in map memory, whose values the verifier does not track from one
/// frame to the next.
#[inline(always)]
pub fn start(key: &MemoKey, rbp: u64, generation: u64, image: u32) {
    let Some(memo) = scratch() else { return };
    memo.key = *key;
    memo.image = image;
    memo.generation = generation;
    memo.rbp = rbp;
    memo.needs_rbp = 0;
    memo.rbp_replaced = 0;
    memo.rbp_pending = 0;
    memo.words = 0;
}

/// The walk read `value` at `address`; a word the memo cannot hold (outside the span, not
/// aligned, one too many) abandons it.
#[inline(always)]
pub fn note(address: u64, value: u64) {
    let Some(memo) = scratch() else { return };
    let offset = address.wrapping_sub(memo.key.sp);
    let n = memo.words;
    let slot = n as usize & (MEMO_WORDS - 1);
    let fits = (offset < MEMO_SPAN_BYTES as u64) as u32 & (offset & 7 == 0) as u32 & (n < MEMO_WORDS as u32) as u32;
    memo.offsets[slot] = (offset / 8) as u16;
    memo.values[slot] = value;
    // n + 1 if it fits, else ABANDONED (all ones), which never fits again.
    memo.words = n.wrapping_add(1) | fits.wrapping_sub(1);
}

/// A frame's CFA is computed from rbp: the walk depends on where that rbp came from — the
/// starting register (the memo then holds only for that rbp) or a stack word (noted now).
#[inline(always)]
pub fn rbp_used() {
    let Some(memo) = scratch() else { return };
    if memo.rbp_replaced == 0 {
        memo.needs_rbp = 1;
    } else if memo.rbp_pending != 0 {
        memo.rbp_pending = 0;
        let (slot, value) = (memo.rbp_slot, memo.rbp_value);
        note(slot, value);
    }
}

/// rbp was read from the stack at `slot`: noted if a frame uses it (`rbp_used`).
#[inline(always)]
pub fn rbp_loaded(slot: u64, value: u64) {
    if let Some(memo) = scratch() {
        memo.rbp_replaced = 1;
        memo.rbp_slot = slot;
        memo.rbp_value = value;
        memo.rbp_pending = 1;
    }
}

/// rbp is unknown from here on.
#[inline(always)]
pub fn rbp_lost() {
    if let Some(memo) = scratch() {
        memo.rbp_replaced = 1;
        memo.rbp_pending = 0;
    }
}

/// The walk cannot be memoized (it reads interpreter frames, or a read failed).
#[inline(always)]
pub fn abandon() {
    if let Some(memo) = scratch() {
        memo.words = ABANDONED;
    }
}

/// Keeps the finished walk's `site`, unless the walk was abandoned.
#[inline(always)]
pub fn remember(site: u64) {
    if !enabled() {
        return;
    }
    let Some(memo) = scratch() else { return };
    if memo.words as usize > MEMO_WORDS {
        count(MEMO_UNCACHEABLE);
        return;
    }
    // Mostly the last word is the highest, but a saved rbp is noted when a later frame uses it.
    let words = memo.words as usize;
    let mut span = 0;
    for i in 0..MEMO_WORDS {
        if i >= words {
            break;
        }
        span = span.max(memo.offsets[i] as u32 * 8 + 8);
    }
    memo.span = span;
    memo.site = site;
    let _ = MEMOS.insert(&memo.key, &*memo, BPF_ANY as u64);
    count(MEMO_MISSES);
}

/// `Memo::words` of an abandoned memo.
const ABANDONED: u32 = u32::MAX;

#[inline(always)]
fn scratch() -> Option<&'static mut Memo> {
    // SAFETY: this CPU's scratch value, valid while the program runs.
    MEMO_SCRATCH.get_ptr_mut(0).map(|memo| unsafe { &mut *memo })
}

#[inline(always)]
fn count(counter: u32) {
    if let Some(value) = MEMO_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: this CPU's counter.
        unsafe { *value += 1 };
    }
}
