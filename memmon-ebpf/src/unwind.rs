//! The user stack walk: CFI rows compiled by userspace (`memmon-user/src/unwind/`), looked up
//! frame by frame.
//!
//! Each step finds the executable file mapping the frame's address lies in (binary search over
//! the process' sorted mappings), its object's row for the address (the object's page index
//! narrows it to the rows of one 256-byte page, then a binary search of a step or two), and from the row the
//! canonical frame address (CFA): the caller's stack pointer. The return address is at CFA - 8
//! and the caller's rbp, when this frame saved it, at a fixed offset from the CFA.
//!
//! The walk checks every frame: an address outside every file-backed executable mapping is
//! never stored, and the walk ends there with the stack marked truncated, as it does at code
//! without rows or with a rule it cannot follow. Only a frame whose return address is undefined
//! (`_start`, `clone3`) or zero ends a stack as complete.
//!
//! The verifier sees one frame: the loop over frames is `bpf_loop`, and the two binary searches
//! inside are bounded loops of `MAPPING_SEARCH_STEPS` and `ROW_SEARCH_STEPS`. The walk's state
//! lives in a per-CPU map value (`WALK_SCRATCH`), not on the BPF stack: the verifier follows
//! a bpf_loop callback iteration after iteration until it sees a state it has seen before, and
//! it tracks the ranges of stack values (so every frame looked new, and a walk ran past the
//! verifier's million-instruction budget), while what a map value holds it does not track.

use core::{ffi::c_void, ptr::null_mut};

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_loop};
use memmon_common::{
    MAX_STACK_DEPTH, StackTrace, Truncation,
    unwind::{
        ExecMapping, MAPPING_SEARCH_STEPS, MappingRange, NO_OBJECT, Object, PAGE_SHIFT, RBP_LOST, RBP_UNCHANGED,
        ROW_SEARCH_STEPS, Row, kind,
    },
};

use crate::{
    maps::{EXEC_MAPPINGS, PYTHON_TARGETS, STACK_SCRATCH, TARGET_MAPPINGS, UNWIND_OBJECTS, UNWIND_PAGES, UNWIND_ROWS, WALK_SCRATCH},
    memo, python,
};

/// The user registers a walk starts from.
#[derive(Clone, Copy)]
pub struct UserRegs {
    /// The first frame's address: a return address (at an allocator's return) or the
    /// instruction after a syscall.
    pub ip: u64,
    pub sp: u64,
    pub rbp: u64,
}

/// Where a walk is (`WALK_SCRATCH`). Scalars only: a map value cannot hold a pointer.
#[repr(C)]
pub struct Walk {
    mappings: MappingRange,
    pc: u64,
    sp: u64,
    rbp: u64,
    rbp_known: u32,
    truncated: u32,
    /// The mapping and object of the previous frame: callers are mostly in the same object,
    /// and a range check is cheaper than the search.
    last_mapping: ExecMapping,
    last_object: Object,
    /// The process' eval loop (`PythonProcess::eval_start..eval_end`; empty: not Python).
    eval_start: u64,
    eval_end: u64,
    tgid: u32,
    /// Emitting the Python frames of the eval-loop frame at `pc`.
    in_python: u32,
    /// The thread's next Python frame (0: none, or not a Python thread).
    python_frame: u64,
    /// The eval-loop frame at `pc` has had its Python frames emitted: unwind it natively.
    python_done: u32,
    _pad: u32,
}

/// Walks the stack of process `tgid` from `regs` into this CPU's `STACK_SCRATCH` (`ips`,
/// `depth`, `truncated`), reporting what the walk depends on to the memo `memo::start` began.
#[inline(always)]
pub fn walk(regs: UserRegs, tgid: u32) {
    let (Some(stack), Some(walk)) = (STACK_SCRATCH.get_ptr_mut(0), WALK_SCRATCH.get_ptr_mut(0)) else { return };
    // SAFETY: this CPU's scratch values.
    let (stack, walk) = unsafe { (&mut *stack, &mut *walk) };
    stack.depth = 0;
    let Some(&mappings) = (unsafe { TARGET_MAPPINGS.get(tgid) }) else {
        stack.truncated = Truncation::NoProcessMap as u32;
        memo::abandon();
        return;
    };
    let (python, python_frame) = python::start(tgid, bpf_get_current_pid_tgid() as u32);
    // SAFETY: null or a map value.
    let (eval_start, eval_end) = match unsafe { python.as_ref() } {
        Some(python) => {
            // Interpreter frames are read too: such walks are never memoized.
            memo::abandon();
            (python.eval_start, python.eval_end)
        }
        None => (0, 0),
    };
    *walk = Walk {
        mappings,
        pc: regs.ip,
        sp: regs.sp,
        rbp: regs.rbp,
        rbp_known: 1,
        truncated: Truncation::DepthLimit as u32,
        last_mapping: ExecMapping { object: NO_OBJECT, ..ExecMapping::default() },
        last_object: Object::default(),
        eval_start,
        eval_end,
        tgid,
        in_python: 0,
        python_frame,
        python_done: 0,
        _pad: 0,
    };
    // SAFETY: `step` has the callback signature bpf_loop expects and takes no context.
    unsafe {
        bpf_loop(MAX_STACK_DEPTH as u32, step as *mut c_void, null_mut(), 0);
    }
    stack.truncated = walk.truncated;
    if walk.truncated == Truncation::StackReadFailed as u32 {
        memo::abandon();
    }
}

/// One frame. Returns 0 to go on to the caller, 1 to stop.
extern "C" fn step(_index: u64, _context: *mut c_void) -> i64 {
    let (Some(stack), Some(walk)) = (STACK_SCRATCH.get_ptr_mut(0), WALK_SCRATCH.get_ptr_mut(0)) else { return 1 };
    // SAFETY: this CPU's scratch values, as `walk` left them.
    let (stack, walk) = unsafe { (&mut *stack, &mut *walk) };
    match step_frame(walk, stack) {
        Ok(()) => 0,
        Err(reason) => {
            walk.truncated = reason as u32;
            1
        }
    }
}

#[inline(always)]
fn step_frame(walk: &mut Walk, stack: &mut StackTrace) -> Result<(), Truncation> {
    if walk.in_python != 0 {
        python_step(walk, stack);
        return Ok(());
    }
    let depth = stack.depth as usize;
    if !(walk.last_mapping.start <= walk.pc && walk.pc < walk.last_mapping.end) {
        walk.last_mapping = find_mapping(walk.mappings, walk.pc).ok_or(Truncation::OutsideObjects)?;
        walk.last_object = UNWIND_OBJECTS.get(walk.last_mapping.object).copied().unwrap_or_default();
    }
    let in_eval = walk.python_frame != 0 && walk.eval_start <= walk.pc && walk.pc < walk.eval_end;
    if in_eval && walk.python_done == 0 {
        // This native frame stands for the Python frames it runs: those go in its place.
        walk.in_python = 1;
        python_step(walk, stack);
        return Ok(());
    }
    let replaced = walk.python_done != 0;
    walk.python_done = 0;
    if !replaced {
        let Some(slot) = stack.ips.get_mut(depth) else { return Err(Truncation::DepthLimit) };
        *slot = walk.pc;
        stack.depth += 1;
    }
    // A return address points after its call, which may be the last instruction of the
    // function: the row in effect is the call's.
    let row = find_row(&walk.last_object, walk.pc - 1 - walk.last_mapping.bias).ok_or(Truncation::NoUnwindInfo)?;
    let cfa = match row.kind {
        kind::CFA_RSP => walk.sp.wrapping_add(row.cfa_offset as i64 as u64),
        kind::CFA_RBP if walk.rbp_known != 0 => {
            memo::rbp_used();
            walk.rbp.wrapping_add(row.cfa_offset as i64 as u64)
        }
        kind::PLT => walk.sp + if walk.pc & 15 >= row.cfa_offset as u64 { 16 } else { 8 },
        kind::END => return Err(Truncation::Complete),
        kind::NONE => return Err(Truncation::NoUnwindInfo),
        _ => return Err(Truncation::UnsupportedRule),
    };
    if cfa <= walk.sp {
        return Err(Truncation::StackNotAdvancing);
    }
    let return_address = match row.rbp {
        // rbp pushed right after the return address (every frame-pointer prologue): one read.
        RBP_SAVED_BELOW_RETURN => {
            let [saved_rbp, return_address] = read_user_pair(cfa - 16)?;
            memo::rbp_loaded(cfa - 16, saved_rbp);
            walk.rbp = saved_rbp;
            walk.rbp_known = 1;
            return_address
        }
        RBP_UNCHANGED => read_user(cfa - 8)?,
        RBP_LOST => {
            walk.rbp_known = 0;
            memo::rbp_lost();
            read_user(cfa - 8)?
        }
        offset => {
            let at = cfa.wrapping_add((offset as i64 * 8) as u64);
            walk.rbp = read_user(at)?;
            memo::rbp_loaded(at, walk.rbp);
            walk.rbp_known = 1;
            read_user(cfa - 8)?
        }
    };
    memo::note(cfa - 8, return_address);
    if return_address == 0 {
        return Err(Truncation::Complete);
    }
    walk.sp = cfa;
    walk.pc = return_address;
    Ok(())
}

/// `Row::rbp` of a frame whose caller's rbp sits just below its return address.
const RBP_SAVED_BELOW_RETURN: i8 = -2;

#[inline(always)]
fn read_user_pair(address: u64) -> Result<[u64; 2], Truncation> {
    unsafe { bpf_probe_read_user(address as *const [u64; 2]) }.map_err(|_| Truncation::StackReadFailed)
}

#[inline(always)]
fn python_step(walk: &mut Walk, stack: &mut StackTrace) {
    // SAFETY: a map value, valid while the program runs.
    let step = match PYTHON_TARGETS.get_ptr(walk.tgid) {
        Some(python) => python::step(stack, &mut walk.python_frame, unsafe { &(*python).layout }),
        None => python::Step::Done,
    };
    if let python::Step::Done = step {
        walk.in_python = 0;
        walk.python_done = 1;
    }
}

#[inline(always)]
fn read_user(address: u64) -> Result<u64, Truncation> {
    unsafe { bpf_probe_read_user(address as *const u64) }.map_err(|_| Truncation::StackReadFailed)
}

/// The mapping holding `pc`: the last one starting at or below it, if it ends above it.
#[inline(always)]
fn find_mapping(mappings: MappingRange, pc: u64) -> Option<ExecMapping> {
    if mappings.count == 0 {
        return None;
    }
    let (mut low, mut high) = (mappings.first, mappings.first + mappings.count - 1);
    for _ in 0..MAPPING_SEARCH_STEPS {
        if low >= high {
            break;
        }
        let middle = low + (high - low).div_ceil(2);
        if EXEC_MAPPINGS.get(middle)?.start <= pc {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    let mapping = *EXEC_MAPPINGS.get(low)?;
    (mapping.start <= pc && pc < mapping.end).then_some(mapping)
}

/// The row in effect at ELF address `elf_address` in `object`.
#[inline(always)]
fn find_row(object: &Object, elf_address: u64) -> Option<Row> {
    let address = elf_address.wrapping_sub(object.base);
    let page = address >> PAGE_SHIFT;
    if page >= object.page_count as u64 {
        return None;
    }
    let rows = UNWIND_PAGES.get(object.pages_start + page as u32)?;
    let (mut low, mut high) = (rows.first, rows.last);
    for _ in 0..ROW_SEARCH_STEPS {
        if low >= high {
            break;
        }
        let middle = low + (high - low).div_ceil(2);
        if UNWIND_ROWS.get(object.rows_start + middle)?.pc as u64 <= address {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    let row = *UNWIND_ROWS.get(object.rows_start + low)?;
    (row.pc as u64 <= address).then_some(row)
}
