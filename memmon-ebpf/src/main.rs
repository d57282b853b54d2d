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
mod forks;
mod lifecycle;
mod maps;
mod memo;
mod stack;
mod track;
mod syscalls;
mod python;
mod unwind;

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::bpf_get_attach_cookie,
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use memmon_common::{AllocKind, probe_hits};

/// The arguments of the call a probe hit, where the probe's site has them. A probe may sit past
/// its function's entry (memmon-user's probe_site), after instructions that copied an argument
/// to another register and overwrote the original (mimalloc's malloc moves its size from rdi to
/// rsi); the probe's attach cookie then says where it is: byte n, if not 0, is 1 + the x86-64
/// number of the register holding argument n (memmon-user's `ProbeSite::cookie`).
struct Args<'a> {
    ctx: &'a ProbeContext,
    cookie: u64,
}

impl<'a> Args<'a> {
    #[inline(always)]
    fn of(ctx: &'a ProbeContext) -> Self {
        // SAFETY: a uprobe program's context is what the helper takes.
        let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
        Self { ctx, cookie }
    }

    #[inline(always)]
    fn get(&self, n: usize) -> u64 {
        match (self.cookie >> (8 * n)) & 0xff {
            0 => self.ctx.arg::<u64>(n).unwrap_or(0),
            moved => register(self.ctx, moved - 1),
        }
    }
}

/// A general-purpose register by its x86-64 number (rax 0, rcx 1, rdx 2, rbx 3, rsp 4, rbp 5,
/// rsi 6, rdi 7, r8–r15 8–15). The registers are copied out of the context first: reading the
/// context's fields by a number compiles to a computed pointer into it, which the verifier
/// refuses ("math between ctx pointer and register"), while a computed index into a stack copy
/// is fine. The copy is read straight into place (no zeroing, no second copy).
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn register(ctx: &ProbeContext, number: u64) -> u64 {
    // struct pt_regs begins r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi,
    // rdi; rsp comes later and never holds an argument (probe_site refuses writes to it).
    const SLOT: [usize; 16] = [10, 11, 12, 5, usize::MAX, 4, 13, 14, 9, 8, 7, 6, 3, 2, 1, 0];
    let Some(slot) = SLOT.get(number as usize) else { return 0 };
    // A volatile read, so that LLVM cannot drop the bound check below by knowing the table: the
    // verifier does not know it, and refuses an unbounded index into the stack.
    // SAFETY: a plain read of a static.
    let slot = unsafe { core::ptr::read_volatile(slot) };
    let mut words = core::mem::MaybeUninit::<[u64; 15]>::uninit();
    // SAFETY: reads the first 15 words of the user registers the context points at into
    // `words`, which holds exactly that much.
    let read = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            words.as_mut_ptr() as *mut core::ffi::c_void,
            core::mem::size_of::<[u64; 15]>() as u32,
            ctx.regs as *const core::ffi::c_void,
        )
    };
    if read != 0 {
        return 0;
    }
    // SAFETY: the helper filled every word.
    unsafe { words.assume_init_ref() }.get(slot).copied().unwrap_or(0)
}

/// Only x86-64 sites move (probe_site decodes x86-64), so no cookie names a register elsewhere.
#[cfg(not(bpf_target_arch = "x86_64"))]
#[inline(always)]
fn register(_ctx: &ProbeContext, _number: u64) -> u64 {
    0
}

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    counters::hit(probe_hits::MALLOC_ENTER);
    let args = Args::of(&ctx);
    alloc::enter(&ctx, AllocKind::Plain, args.get(0), 0);
    0
}

/// valloc/pvalloc take only a size; pvalloc rounds up to pages, which the exit cannot see, so the
/// requested size is what is recorded (as for every other function).
#[uprobe]
pub fn size_only_enter(ctx: ProbeContext) -> u32 {
    counters::hit(probe_hits::SIZE_ONLY_ENTER);
    let args = Args::of(&ctx);
    alloc::enter(&ctx, AllocKind::Plain, args.get(0), 0);
    0
}

/// memalign(alignment, size) and aligned_alloc(alignment, size).
#[uprobe]
pub fn aligned_enter(ctx: ProbeContext) -> u32 {
    counters::hit(probe_hits::ALIGNED_ENTER);
    let args = Args::of(&ctx);
    alloc::enter(&ctx, AllocKind::Plain, args.get(1), 0);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    counters::hit(probe_hits::CALLOC_ENTER);
    let args = Args::of(&ctx);
    alloc::enter(&ctx, AllocKind::Plain, alloc::array_size(args.get(0), args.get(1)), 0);
    0
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    counters::hit(probe_hits::REALLOC_ENTER);
    let args = Args::of(&ctx);
    alloc::enter(&ctx, AllocKind::Realloc, args.get(1), args.get(0));
    0
}

/// reallocarray(ptr, nmemb, size).
#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    counters::hit(probe_hits::REALLOCARRAY_ENTER);
    let args = Args::of(&ctx);
    let size = alloc::array_size(args.get(1), args.get(2));
    alloc::enter(&ctx, AllocKind::Realloc, size, args.get(0));
    0
}

/// posix_memalign(void **out, alignment, size).
#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    counters::hit(probe_hits::POSIX_MEMALIGN_ENTER);
    let args = Args::of(&ctx);
    alloc::enter(&ctx, AllocKind::PosixMemalign, args.get(2), args.get(0));
    0
}

/// The one return path for every allocation function above.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    counters::hit(probe_hits::ALLOC_EXIT);
    alloc::exit(&ctx);
    0
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    counters::hit(probe_hits::FREE_ENTER);
    alloc::free(Args::of(&ctx).get(0));
    0
}

/// A tracked function's entry (`--track-function`); the attach cookie says which.
#[uprobe]
pub fn track_enter(ctx: ProbeContext) -> u32 {
    track::enter(&ctx);
    0
}

/// A tracked function's return, at the same site as its entry.
#[uretprobe]
pub fn track_exit(ctx: RetProbeContext) -> u32 {
    track::exit(&ctx);
    0
}

/// Attached to sched:sched_process_exit, which fires for every exiting thread: a tracked call
/// in flight on it never returns.
#[tracepoint]
pub fn track_thread_exit(_ctx: TracePointContext) -> u32 {
    track::thread_exited();
    0
}

/// Attached to sched:sched_process_exec: a target replaced its image (`lifecycle`).
#[tracepoint]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    lifecycle::exec();
    0
}

/// Attached to sched:sched_process_exit: a target's last thread ends (`lifecycle`).
#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    lifecycle::exit(&ctx);
    0
}

/// Attached to task:task_newtask: a target forked (`forks`, with `--follow-forks`).
#[tracepoint]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    forks::new_task(&ctx);
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
