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
//! The verifier sees one frame: the loop over frames is `bpf_loop`, whose callback is verified
//! once however many frames it walks; the two binary searches inside are bounded loops of
//! `MAPPING_SEARCH_STEPS` and `ROW_SEARCH_STEPS`.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_loop};
use memmon_common::{
    MAX_STACK_DEPTH, StackTrace, Truncation,
    python::PythonProcess,
    unwind::{
        ExecMapping, MAPPING_SEARCH_STEPS, MappingRange, NO_OBJECT, Object, PAGE_SHIFT, RBP_LOST, RBP_UNCHANGED,
        ROW_SEARCH_STEPS, Row, kind,
    },
};

use crate::python;
use crate::maps::{EXEC_MAPPINGS, TARGET_MAPPINGS, UNWIND_OBJECTS, UNWIND_PAGES, UNWIND_ROWS};

/// The user registers a walk starts from.
#[derive(Clone, Copy)]
pub struct UserRegs {
    /// The first frame's address: a return address (at an allocator's return) or the
    /// instruction after a syscall.
    pub ip: u64,
    pub sp: u64,
    pub rbp: u64,
}

struct Walk {
    stack: *mut StackTrace,
    mappings: MappingRange,
    pc: u64,
    sp: u64,
    rbp: u64,
    rbp_known: bool,
    truncated: Truncation,
    /// The mapping and object of the previous frame: callers are mostly in the same object,
    /// and a range check is cheaper than the search.
    last_mapping: ExecMapping,
    last_object: Object,
    /// The process' entry in `PYTHON_TARGETS` (null: not a Python process); a map value stays
    /// put while the program runs, and copying it would not fit the stack.
    python: *const PythonProcess,
    /// The thread's next Python frame (0: none, or not a Python thread).
    python_frame: u64,
    /// Emitting the Python frames of the eval-loop frame at `pc`.
    in_python: bool,
    /// The eval-loop frame at `pc` has had its Python frames emitted: unwind it natively.
    python_done: bool,
}

/// Walks the stack of process `tgid` from `regs` into `stack` (`ips`, `depth`, `truncated`).
#[inline(always)]
pub fn walk(stack: &mut StackTrace, regs: UserRegs, tgid: u32) {
    stack.depth = 0;
    let Some(&mappings) = (unsafe { TARGET_MAPPINGS.get(tgid) }) else {
        stack.truncated = Truncation::NoProcessMap as u32;
        return;
    };
    let (python, python_frame) = python::start(tgid, bpf_get_current_pid_tgid() as u32);
    let mut walk = Walk {
        stack,
        mappings,
        pc: regs.ip,
        sp: regs.sp,
        rbp: regs.rbp,
        rbp_known: true,
        truncated: Truncation::DepthLimit,
        last_mapping: ExecMapping { object: NO_OBJECT, ..ExecMapping::default() },
        last_object: Object::default(),
        python,
        python_frame,
        in_python: false,
        python_done: false,
    };
    // SAFETY: `step` has the callback signature bpf_loop expects; `walk` outlives the call.
    unsafe {
        bpf_loop(MAX_STACK_DEPTH as u32, step as *mut c_void, &mut walk as *mut Walk as *mut c_void, 0);
    }
    stack.truncated = walk.truncated as u32;
}

/// One frame. Returns 0 to go on to the caller, 1 to stop.
extern "C" fn step(_index: u64, context: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the `Walk` that `walk` gave it.
    let walk = unsafe { &mut *(context as *mut Walk) };
    match step_frame(walk) {
        Ok(()) => 0,
        Err(reason) => {
            walk.truncated = reason;
            1
        }
    }
}

#[inline(always)]
fn step_frame(walk: &mut Walk) -> Result<(), Truncation> {
    let stack = unsafe { &mut *walk.stack };
    if walk.in_python {
        python_step(walk, stack);
        return Ok(());
    }
    let depth = stack.depth as usize;
    if !(walk.last_mapping.start <= walk.pc && walk.pc < walk.last_mapping.end) {
        walk.last_mapping = find_mapping(walk.mappings, walk.pc).ok_or(Truncation::OutsideObjects)?;
        walk.last_object = UNWIND_OBJECTS.get(walk.last_mapping.object).copied().unwrap_or_default();
    }
    // SAFETY: null or a map value (see `python::start`).
    let in_eval = walk.python_frame != 0
        && unsafe { walk.python.as_ref() }.is_some_and(|python| python.eval_start <= walk.pc && walk.pc < python.eval_end);
    if in_eval && !walk.python_done {
        // This native frame stands for the Python frames it runs: those go in its place.
        walk.in_python = true;
        python_step(walk, stack);
        return Ok(());
    }
    let replaced = walk.python_done;
    walk.python_done = false;
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
        kind::CFA_RBP if walk.rbp_known => walk.rbp.wrapping_add(row.cfa_offset as i64 as u64),
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
            walk.rbp = saved_rbp;
            walk.rbp_known = true;
            return_address
        }
        RBP_UNCHANGED => read_user(cfa - 8)?,
        RBP_LOST => {
            walk.rbp_known = false;
            read_user(cfa - 8)?
        }
        offset => {
            walk.rbp = read_user(cfa.wrapping_add((offset as i64 * 8) as u64))?;
            walk.rbp_known = true;
            read_user(cfa - 8)?
        }
    };
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
    // SAFETY: null or a map value (see `python::start`).
    let step = match unsafe { walk.python.as_ref() } {
        Some(python) => python::step(stack, &mut walk.python_frame, &python.layout),
        None => python::Step::Done,
    };
    if let python::Step::Done = step {
        walk.in_python = false;
        walk.python_done = true;
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
