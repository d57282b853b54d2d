//! CPython frames, interleaved with the native ones where the interpreter runs them.
//!
//! In CPython 3.11 one call of `_PyEval_EvalFrameDefault` runs a chain of Python frames
//! (Python-to-Python calls do not recurse in C); the first frame it was entered with is marked
//! `is_entry`. So when the native walk reaches a frame in `_PyEval_EvalFrameDefault`, the walker
//! emits the thread's Python frames, innermost first, down to and including the next entry
//! frame, in place of that native frame; the next eval frame further down takes the next chain.
//!
//! The thread's frames start at `_PyRuntime.gilstate.tstate_current`, the thread state holding
//! the GIL, but only if that thread state is this thread's (its native thread id): a thread
//! allocating without the GIL (a C thread, or Python code in a region that released it) gets
//! native frames only rather than another thread's Python stack.

use aya_ebpf::helpers::bpf_probe_read_user;
use memmon_common::{
    StackTrace,
    python::{FRAME_TAG, PythonProcess, identity, v3_11},
};

use crate::maps::PYTHON_TARGETS;

/// The Python process `tgid`, with the current frame of thread `tid`; frame 0 if it has none.
#[inline(always)]
pub fn start(tgid: u32, tid: u32) -> (PythonProcess, u64) {
    let Some(python) = (unsafe { PYTHON_TARGETS.get(tgid) }).copied() else {
        return (PythonProcess::default(), 0);
    };
    (python, current_frame(&python, tid).unwrap_or(0))
}

#[inline(always)]
fn current_frame(python: &PythonProcess, tid: u32) -> Option<u64> {
    let tstate = read(python.tstate_current)?;
    if tstate == 0 || read(tstate + v3_11::TSTATE_NATIVE_THREAD_ID)? != tid as u64 {
        return None;
    }
    let cframe = read(tstate + v3_11::TSTATE_CFRAME)?;
    read(cframe + v3_11::CFRAME_CURRENT_FRAME)
}

/// What one step of the Python chain did.
pub enum Step {
    /// Stored a frame (or skipped an incomplete one); the chain of this eval call goes on.
    More,
    /// Stored the eval call's entry frame, or the chain ended: back to native frames.
    Done,
}

/// Stores the Python frame at `*frame` into `stack` (two slots) and moves `*frame` to its
/// caller. Frames CPython has not started yet ("incomplete") are skipped, as tracebacks do.
#[inline(always)]
pub fn step(stack: &mut StackTrace, frame: &mut u64) -> Step {
    let Ok(fields) = (unsafe { bpf_probe_read_user((*frame + v3_11::FRAME_CODE) as *const [u64; 5]) }) else {
        *frame = 0;
        return Step::Done;
    };
    let [code, _frame_object, previous, prev_instr, flags] = fields;
    let is_entry = (flags >> 32) as u8 != 0;
    let owner = (flags >> 40) as u8;
    *frame = previous;
    let done = if is_entry || previous == 0 { Step::Done } else { Step::More };
    let Ok(code_fields) =
        (unsafe { bpf_probe_read_user((code + v3_11::CODE_FIRSTLINENO) as *const [u64; v3_11::CODE_READ_BYTES / 8]) })
    else {
        return done;
    };
    let field = |offset: u64| code_fields[((offset - v3_11::CODE_FIRSTLINENO) / 8) as usize];
    let first_line = code_fields[0] as u32;
    let first_traceable = field(v3_11::CODE_FIRSTTRACEABLE) as u32 as u64;
    let code_start = code + v3_11::CODE_ADAPTIVE;
    if owner != v3_11::FRAME_OWNED_BY_GENERATOR && prev_instr < code_start + 2 * first_traceable {
        return done;
    }
    let offset = prev_instr.wrapping_sub(code_start) / 2;
    let qualname = field(v3_11::CODE_QUALNAME);
    let qualname_hash = read(qualname + v3_11::STR_HASH).unwrap_or(0);
    let identity =
        identity(qualname, qualname_hash, field(v3_11::CODE_FILENAME), field(v3_11::CODE_LINETABLE), first_line);
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
