//! mmap, munmap, mremap and brk of the target processes, from the syscalls:sys_enter_* and
//! sys_exit_* tracepoints of these four syscalls only. (The raw sys_enter/sys_exit tracepoints
//! would run memmon for every syscall on the host, including the `uretprobe` syscall that ends
//! each traced allocation.) Enter records the call per thread; exit applies it.
//!
//! Anonymous mappings are tracked as blocks like heap allocations. A mapping made while an
//! allocator function runs on the thread belongs to the allocator (it backs heap blocks that
//! are already counted); any other is the program's own and is attributed to its stack.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_task_pt_regs,
    },
    programs::TracePointContext,
};
use memmon_common::{ALLOCATOR_SITE, LiveAlloc, LiveKey, Loss, PendingSyscall, ProcessMemory, syscall};

use crate::{
    counters::{add, lose},
    lifecycle::live_target,
    maps::{MAPPING_SITES, MAPPINGS, PENDING_SYSCALLS, site_counters, take_block},
    stack,
};

const MAP_ANONYMOUS: u64 = 0x20;
const PROT_EXEC: u64 = 0x4;
const PAGE_SIZE: u64 = 4096;
/// How many adjacent tracked mappings one munmap may cover before we stop following it.
const MAX_MAPPINGS_PER_UNMAP: usize = 8;

/// Offsets (in u64 words) of x86-64 `struct pt_regs` fields.
const REG_RDI: usize = 14;
const REG_RSI: usize = 13;
const REG_RDX: usize = 12;
const REG_R10: usize = 7;
const REG_SP: usize = 19;
const REG_IP: usize = 16;
const REG_BP: usize = 4;

#[inline(always)]
fn reg(regs: *const u64, index: usize) -> u64 {
    unsafe { bpf_probe_read_kernel(regs.add(index)) }.unwrap_or(0)
}

#[inline(always)]
fn page_align(len: u64) -> u64 {
    (len + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// Returns true for a failed syscall (the kernel returns -errno in -4095..-1).
#[inline(always)]
fn failed(ret: u64) -> bool {
    ret > (-4096i64) as u64
}

/// Offsets in the syscalls:sys_enter_* / sys_exit_* tracepoint records.
const RECORD_SYSCALL_NR: usize = 8;
const RECORD_RET: usize = 16;

pub fn enter(ctx: &TracePointContext) {
    let id = unsafe { ctx.read_at::<i32>(RECORD_SYSCALL_NR) }.unwrap_or(-1) as u64;
    if id != syscall::MMAP && id != syscall::MUNMAP && id != syscall::MREMAP && id != syscall::BRK {
        return;
    }
    let thread = bpf_get_current_pid_tgid();
    // A target that has exited may have a newcomer under its pid: not ours.
    if live_target((thread >> 32) as u32).is_none() {
        return;
    }
    // The thread's user registers, as the syscall found them.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    let call = PendingSyscall {
        ip: reg(regs, REG_IP),
        sp: reg(regs, REG_SP),
        fp: reg(regs, REG_BP),
        id,
        args: [reg(regs, REG_RDI), reg(regs, REG_RSI), reg(regs, REG_RDX), reg(regs, REG_R10)],
    };
    if PENDING_SYSCALLS.insert(thread, call, BPF_ANY as u64).is_err() {
        lose(Loss::PendingSyscallTableFull);
    }
}

pub fn exit(ctx: &TracePointContext) {
    let thread = bpf_get_current_pid_tgid();
    let Some(call) = PENDING_SYSCALLS.get_ptr(thread) else { return };
    let call = unsafe { *call };
    let _ = PENDING_SYSCALLS.remove(thread);
    let ret = unsafe { ctx.read_at::<i64>(RECORD_RET) }.unwrap_or(-1) as u64;
    if failed(ret) {
        return;
    }
    let tgid = (thread >> 32) as u32;
    let Some(process) = live_target(tgid) else { return };
    let process = unsafe { &mut *process };
    let image = process.execs as u32;
    match call.id {
        syscall::MMAP if call.args[3] & MAP_ANONYMOUS != 0 => {
            let site = owner(thread, tgid, image, &call);
            track(process, tgid, image, ret, page_align(call.args[1]), site, unsafe { bpf_ktime_get_ns() });
        }
        syscall::MMAP if call.args[2] & PROT_EXEC != 0 => add(&mut process.code_maps, 1),
        syscall::MUNMAP => unmap(process, tgid, image, call.args[0], page_align(call.args[1])),
        syscall::MREMAP => remap(process, tgid, image, &call, ret),
        // brk returns the new break, or the unchanged one when it cannot move it.
        syscall::BRK => process.brk = ret,
        _ => {}
    }
}

/// The site a new mapping belongs to: the allocator's, or the program stack that asked.
#[inline(always)]
fn owner(thread: u64, tgid: u32, image: u32, call: &PendingSyscall) -> u64 {
    if crate::alloc::in_allocator_call(thread) {
        return ALLOCATOR_SITE;
    }
    let regs = stack::UserRegs { ip: call.ip, sp: call.sp, rbp: call.fp };
    stack::current_site(regs, thread, || image).map_or(ALLOCATOR_SITE, |(site, _)| site)
}

#[inline(always)]
fn track(process: &mut ProcessMemory, tgid: u32, image: u32, addr: u64, size: u64, site: u64, timestamp_ns: u64) {
    let key = LiveKey { addr, tgid, image };
    if MAPPINGS.insert(key, LiveAlloc { size, site, timestamp_ns, call_thread: 0, _pad: 0 }, BPF_NOEXIST as u64).is_err() {
        lose(Loss::MappingTableFull);
        return;
    }
    credit(process, site, size, 1, true);
}

/// Adds mapped (or unmapped) bytes and blocks to the site's and the process' counters.
#[inline(always)]
fn credit(process: &mut ProcessMemory, site: u64, bytes: u64, blocks: u64, mapped: bool) {
    if site == ALLOCATOR_SITE {
        let counter = if mapped { &mut process.allocator_mapped_bytes } else { &mut process.allocator_unmapped_bytes };
        add(counter, bytes);
        return;
    }
    let counter = if mapped { &mut process.program_mapped_bytes } else { &mut process.program_unmapped_bytes };
    add(counter, bytes);
    if let Some(stats) = site_counters(&MAPPING_SITES, site) {
        let stats = unsafe { &mut *stats };
        if mapped {
            add(&mut stats.alloc_bytes, bytes);
            add(&mut stats.alloc_count, blocks);
        } else {
            add(&mut stats.free_bytes, bytes);
            add(&mut stats.free_count, blocks);
        }
    }
}

/// Releases [addr, addr + len): whole tracked mappings starting there, and the head of the
/// last one if the range ends inside it. A range that starts inside a tracked mapping cannot
/// be found by its start address and is not followed (the mapping stays counted whole).
#[inline(always)]
fn unmap(process: &mut ProcessMemory, tgid: u32, image: u32, addr: u64, len: u64) {
    let mut addr = addr;
    let mut remaining = len;
    for _ in 0..MAX_MAPPINGS_PER_UNMAP {
        if remaining == 0 {
            return;
        }
        let Some(mapping) = take_block(&MAPPINGS, tgid, image, addr) else { return };
        if mapping.size > remaining {
            let rest = LiveAlloc { size: mapping.size - remaining, ..mapping };
            let key = LiveKey { addr: addr + remaining, tgid, image };
            if MAPPINGS.insert(key, rest, BPF_NOEXIST as u64).is_err() {
                lose(Loss::MappingTableFull);
                credit(process, mapping.site, mapping.size, 1, false);
            } else {
                credit(process, mapping.site, remaining, 0, false);
            }
            return;
        }
        credit(process, mapping.site, mapping.size, 1, false);
        addr += mapping.size;
        remaining -= mapping.size;
    }
}

/// mremap(old, old_len, new_len, flags): the mapping keeps its site; its size changes, and it
/// may move. Growing counts as mapping more bytes, shrinking as unmapping some.
#[inline(always)]
fn remap(process: &mut ProcessMemory, tgid: u32, image: u32, call: &PendingSyscall, new_addr: u64) {
    let (old_addr, old_len, new_len) = (call.args[0], page_align(call.args[1]), page_align(call.args[2]));
    if old_len == 0 {
        return; // duplicates a shared mapping; nothing of ours moves
    }
    let Some(mapping) = take_block(&MAPPINGS, tgid, image, old_addr) else { return };
    let moved = if old_len < mapping.size { old_len } else { mapping.size };
    if mapping.size > moved {
        // Only the head moved; the rest stays where it was.
        let key = LiveKey { addr: old_addr + moved, tgid, image };
        let rest = LiveAlloc { size: mapping.size - moved, ..mapping };
        if MAPPINGS.insert(key, rest, BPF_NOEXIST as u64).is_err() {
            lose(Loss::MappingTableFull);
            credit(process, mapping.site, rest.size, 1, false);
        } else {
            credit(process, mapping.site, 0, 1, true); // the moved head is a new block
        }
    }
    let key = LiveKey { addr: new_addr, tgid, image };
    let moved_block = LiveAlloc { size: new_len, ..mapping };
    if MAPPINGS.insert(key, moved_block, BPF_ANY as u64).is_err() {
        lose(Loss::MappingTableFull);
        credit(process, mapping.site, moved, 1, false);
        return;
    }
    if new_len > moved {
        credit(process, mapping.site, new_len - moved, 0, true);
    } else {
        credit(process, mapping.site, moved - new_len, 0, false);
    }
}
