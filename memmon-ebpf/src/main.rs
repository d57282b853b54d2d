//! memmon's kernel programs: allocator uprobes that keep live bytes per allocation stack.
//!
//! Every allocator entry point funnels into one entry path (`alloc::enter`), one return path
//! (`alloc::exit`) and one release path (`alloc::release`), as libbpf-tools' memleak does; the
//! per-function programs below only decode arguments.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod alloc;
mod counters;
mod maps;
mod stack;
mod syscalls;
mod unwind;

use aya_ebpf::{
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use memmon_common::AllocKind;

fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    alloc::enter(&ctx, AllocKind::Plain, arg(&ctx, 0), 0);
    0
}

/// valloc/pvalloc take only a size; pvalloc rounds up to pages, which the exit cannot see, so the
/// requested size is what is recorded (as for every other function).
#[uprobe]
pub fn size_only_enter(ctx: ProbeContext) -> u32 {
    alloc::enter(&ctx, AllocKind::Plain, arg(&ctx, 0), 0);
    0
}

/// memalign(alignment, size) and aligned_alloc(alignment, size).
#[uprobe]
pub fn aligned_enter(ctx: ProbeContext) -> u32 {
    alloc::enter(&ctx, AllocKind::Plain, arg(&ctx, 1), 0);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    alloc::enter(&ctx, AllocKind::Plain, alloc::array_size(arg(&ctx, 0), arg(&ctx, 1)), 0);
    0
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    alloc::enter(&ctx, AllocKind::Realloc, arg(&ctx, 1), arg(&ctx, 0));
    0
}

/// reallocarray(ptr, nmemb, size).
#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    let size = alloc::array_size(arg(&ctx, 1), arg(&ctx, 2));
    alloc::enter(&ctx, AllocKind::Realloc, size, arg(&ctx, 0));
    0
}

/// posix_memalign(void **out, alignment, size).
#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    alloc::enter(&ctx, AllocKind::PosixMemalign, arg(&ctx, 2), arg(&ctx, 0));
    0
}

/// The one return path for every allocation function above.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    alloc::exit(&ctx);
    0
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    alloc::free(arg(&ctx, 0));
    0
}

/// Does nothing: measures the cost of the trap itself (the benchmark's floor).
#[uprobe]
pub fn empty_enter(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn empty_exit(_ctx: RetProbeContext) -> u32 {
    0
}

/// Attached to syscalls:sys_enter_{mmap,munmap,mremap,brk}.
#[tracepoint]
pub fn memory_syscall_enter(ctx: TracePointContext) -> u32 {
    syscalls::enter(&ctx);
    0
}

/// Attached to syscalls:sys_exit_{mmap,munmap,mremap,brk}.
#[tracepoint]
pub fn memory_syscall_exit(ctx: TracePointContext) -> u32 {
    syscalls::exit(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
