//! CPython frames, interleaved with the native ones where the interpreter runs them.
//!
//! In CPython 3.11 one call of `_PyEval_EvalFrameDefault` runs a chain of Python frames
//! (Python-to-Python calls do not recurse in C); the first frame it was entered with is marked
//! `is_entry`. So when the native walk reaches a frame in `_PyEval_EvalFrameDefault`, the walker
//! emits the thread's Python frames, innermost first, down to and including the next entry
//! frame, in place of that native frame; the next eval frame further down takes the next chain.
//!
//! From 3.12 on, each `_PyEval_EvalFrameDefault` call pushes a shim frame owned by the C stack
//! below the frames it runs instead: the chain of that call ends at the shim, which is skipped.
//!
//! The thread's frames start at the thread state holding the GIL (found from `_PyRuntime` by
//! the layout's pointer chain), but only if that thread state is this thread's (its native
//! thread id): a thread allocating while another holds the GIL (a C thread, or Python code in a
//! region that released it) gets native frames only rather than another thread's Python stack.
//!
//! Every offset comes from the process' `Layout` (its CPython version's): the walker reads a
//! frame's and a code object's fields from one window read of each.

use aya_ebpf::helpers::{bpf_probe_read_user, generated};
use memmon_common::{
    StackTrace,
    python::{
        CODE_WINDOW_START, FRAME_OWNED_BY_CSTACK, FRAME_OWNED_BY_GENERATOR, FRAME_TAG,
        FRAME_WINDOW_WORDS, Layout, NO_FIELD, PythonProcess, TSTATE_CHAIN_STEPS, identity,
    },
};

use crate::maps::{PYTHON_TARGETS, PYTHON_WINDOWS};

/// The Python process `tgid` (its map entry), with the current frame of thread `tid`; null and
/// frame 0 if it has none.
#[inline(always)]
pub fn start(tgid: u32, tid: u32) -> (*const PythonProcess, u64) {
    let Some(python) = PYTHON_TARGETS.get_ptr(tgid) else {
        return (core::ptr::null(), 0);
    };
    // SAFETY: a map value, valid while the program runs.
    (python, current_frame(unsafe { &*python }, tid).unwrap_or(0))
}

#[inline(always)]
fn current_frame(python: &PythonProcess, tid: u32) -> Option<u64> {
    let layout = &python.layout;
    let mut tstate = python.runtime;
    for step in 0..TSTATE_CHAIN_STEPS {
        if step as u16 >= layout.tstate_chain_len {
            break;
        }
        tstate = read(tstate + layout.tstate_chain[step] as u64)?;
        if tstate == 0 {
            return None;
        }
    }
    if read(tstate + layout.tstate_native_thread_id as u64)? != tid as u64 {
        return None;
    }
    let holder = if layout.tstate_cframe == NO_FIELD { tstate } else { read(tstate + layout.tstate_cframe as u64)? };
    read(holder + layout.current_frame as u64)
}

/// What one step of the Python chain did.
pub enum Step {
    /// Stored a frame (or skipped an incomplete one); the chain of this eval call goes on.
    More,
    /// Stored the eval call's entry frame, or the chain ended: back to native frames.
    Done,
}

/// Words of a window as the walker indexes it: a power of two, so a masked index is one the
/// verifier sees in bounds.
const WINDOW_WORDS: usize = 16;

/// The word of `window` holding byte `offset`, shifted so that byte is the lowest.
#[inline(always)]
fn field(window: &[u64; WINDOW_WORDS], offset: u16) -> u64 {
    window[(offset as usize / 8) & (WINDOW_WORDS - 1)] >> ((offset % 8) * 8)
}

/// Stores the Python frame at `*frame` into `stack` (two slots) and moves `*frame` to its
/// caller. Frames CPython has not started yet ("incomplete") are skipped, as tracebacks do.
#[inline(always)]
pub fn step(stack: &mut StackTrace, frame: &mut u64, layout: &Layout) -> Step {
    let Some(windows) = PYTHON_WINDOWS.get_ptr_mut(0) else {
        *frame = 0;
        return Step::Done;
    };
    // SAFETY: this CPU's scratch value, used by nothing else while this program runs.
    let [window, code_window] = unsafe { &mut *windows };
    // The frame's own words only: a frame may end its data-stack chunk. The window's other
    // words are left from earlier frames; no field lies in them.
    let status = unsafe {
        generated::bpf_probe_read_user(
            window.as_mut_ptr().cast(),
            (FRAME_WINDOW_WORDS * 8) as u32,
            *frame as *const core::ffi::c_void,
        )
    };
    if status != 0 {
        *frame = 0;
        return Step::Done;
    }
    let code = field(window, layout.frame_code);
    let instr = field(window, layout.frame_instr);
    let owner = field(window, layout.frame_owner) as u8;
    let previous = field(window, layout.frame_previous);
    *frame = previous;
    if layout.frame_is_entry == NO_FIELD && owner == FRAME_OWNED_BY_CSTACK {
        return Step::Done;
    }
    let is_entry = layout.frame_is_entry != NO_FIELD && field(window, layout.frame_is_entry) as u8 != 0;
    let done = if is_entry || previous == 0 { Step::Done } else { Step::More };
    let status = unsafe {
        generated::bpf_probe_read_user(
            code_window.as_mut_ptr().cast(),
            (WINDOW_WORDS * 8) as u32,
            (code + CODE_WINDOW_START as u64) as *const core::ffi::c_void,
        )
    };
    if status != 0 {
        return done;
    }
    let code_field = |offset: u16| field(code_window, offset.wrapping_sub(CODE_WINDOW_START));
    let first_line = code_field(layout.code_firstlineno) as u32;
    let code_start = code + layout.code_adaptive as u64;
    if layout.code_firsttraceable != NO_FIELD && owner != FRAME_OWNED_BY_GENERATOR {
        let first_traceable = code_field(layout.code_firsttraceable) as u32 as u64;
        if instr < code_start + 2 * first_traceable {
            return done;
        }
    }
    let offset = instr.wrapping_sub(code_start) / 2;
    let qualname = code_field(layout.code_qualname);
    let qualname_hash = read(qualname + layout.str_hash as u64).unwrap_or(0);
    let identity =
        identity(qualname, qualname_hash, code_field(layout.code_filename), code_field(layout.code_linetable), first_line);
    let depth = stack.depth as usize;
    if depth + 1 < stack.ips.len() {
        stack.ips[depth] = FRAME_TAG | code;
        stack.ips[depth + 1] = (identity as u64) << 32 | (offset & 0xffff_ffff);
        stack.depth += 2;
    }
    done
}

#[inline(always)]
fn read(address: u64) -> Option<u64> {
    unsafe { bpf_probe_read_user(address as *const u64) }.ok()
}
