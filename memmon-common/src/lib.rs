//! Types shared by the kernel programs (`memmon-ebpf`) and userspace (`memmon`).
//!
//! Everything here is `#[repr(C)]` and laid out without implicit padding, because both sides
//! read the same map bytes. Kept in its own tiny crate (as aya-template does) so that the eBPF
//! crate stays `no_std` and userspace can derive `aya::Pod` behind the `user` feature.
#![no_std]

/// Deepest user stack captured per allocation (the kernel's default `perf_event_max_stack`).
pub const MAX_STACK_DEPTH: usize = 127;

/// How many slots a stack may be moved along when its content hash collides with a different
/// stack. Exhausting them is counted as [`Loss::StackHashCollision`]; it never merges sites.
pub const STACK_PROBE_LIMIT: u64 = 4;

/// Default capacity of the live-allocation table (one entry per live tracked block).
pub const DEFAULT_MAX_LIVE_ALLOCATIONS: u32 = 1 << 20;
/// Default capacity of the site (distinct allocation stack) tables.
pub const DEFAULT_MAX_SITES: u32 = 1 << 16;
/// Capacity of the per-thread table of allocator calls in flight.
pub const MAX_PENDING_CALLS: u32 = 1 << 14;

/// Which allocator entry point a pending call came through; decides how its exit is read.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocKind {
    /// malloc, valloc, pvalloc, aligned_alloc, memalign, `operator new` style: size in, pointer out.
    Plain = 0,
    /// realloc / reallocarray: `old_ptr` is released only if the call succeeded (or size was 0).
    Realloc = 1,
    /// posix_memalign: the pointer is written through `out_ptr`; the return value is an errno.
    PosixMemalign = 2,
}

/// An allocator call between its entry and its return, keyed by thread (`pid_tgid`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingCall {
    /// Requested bytes; `u64::MAX` when the request overflowed (the call must fail).
    pub size: u64,
    /// realloc: the block being resized. posix_memalign: where the result is stored.
    pub ptr_arg: u64,
    /// User stack pointer at entry; tells the matching return from nested allocator calls.
    pub entry_sp: u64,
    pub kind: u32,
    /// Allocator functions this call reached by a tail jump (same stack pointer): each one's
    /// return fires at this call's return too, and only the last of those may record it.
    pub tail_calls: u32,
    /// realloc: the old block, taken out of the live table at entry (timestamp 0 = untracked).
    pub old_size: u64,
    pub old_site: u64,
    pub old_timestamp_ns: u64,
}

/// Key of the live-allocation table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LiveKey {
    pub addr: u64,
    pub tgid: u32,
    pub _pad: u32,
}

/// One live tracked block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAlloc {
    pub size: u64,
    pub site: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at allocation.
    pub timestamp_ns: u64,
}

/// Monotonic per-site counters; live = allocated - freed. Updated with atomic adds only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteStats {
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub free_bytes: u64,
    pub free_count: u64,
    /// Sum of the allocation times (CLOCK_MONOTONIC, in units of 2^20 ns ≈ 1 ms) of the live
    /// blocks: added at allocation, subtracted at free (wrapping), so that with the live count
    /// it gives the mean age of the live blocks exactly. Heap sites only.
    pub live_birth_sum: u64,
}

/// The unit of `SiteStats::live_birth_sum`: 2^20 ns (a shift, not a division, in BPF).
pub const BIRTH_UNIT_SHIFT: u32 = 20;

/// The user call stack of a site, innermost frame first; only `ips[..depth]` is meaningful.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackTrace {
    pub tgid: u32,
    pub depth: u32,
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// Capacity of the anonymous-mapping table (one entry per live mapping made since attach).
pub const MAX_MAPPINGS: u32 = 1 << 16;
/// Capacity of the target-process table (the syscall tracepoints' filter).
pub const MAX_TARGETS: u32 = 1024;

/// x86-64 syscall numbers of the calls that change a process' anonymous memory.
pub mod syscall {
    pub const MMAP: u64 = 9;
    pub const MUNMAP: u64 = 11;
    pub const BRK: u64 = 12;
    pub const MREMAP: u64 = 25;
}

/// A memory syscall between its entry and exit, keyed by thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingSyscall {
    pub id: u64,
    /// The syscall's first four arguments (mmap: addr, len, prot, flags;
    /// munmap: addr, len; mremap: old_addr, old_len, new_len, flags; brk: addr).
    pub args: [u64; 4],
    /// The word at the user stack pointer: the return address into the caller when the
    /// syscall is made by a leaf wrapper such as glibc's mmap (which has no frame pointer).
    pub return_address: u64,
    /// User instruction and frame pointers at entry, where the stack walk starts.
    pub ip: u64,
    pub fp: u64,
}

/// Per-process memory seen through the syscall tracepoints, since attach.
/// Monotonic counters (atomic adds); live = mapped - unmapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Anonymous mappings the program made itself (outside any allocator call).
    pub program_mapped_bytes: u64,
    pub program_unmapped_bytes: u64,
    /// Anonymous mappings made while an allocator function ran: the allocator's.
    pub allocator_mapped_bytes: u64,
    pub allocator_unmapped_bytes: u64,
    /// The program break after the last successful brk (0 until one is seen).
    pub brk: u64,
    /// Frees (and reallocs) by the program of blocks memmon does not track: allocated before
    /// it attached.
    pub untracked_frees: u64,
}

/// Allocation-size histogram: bucket `i` counts allocations of at most 2^i bytes
/// (i < SIZE_BUCKETS - 1); the last bucket counts the rest. (The sum of the sizes is the sum of
/// the sites' allocated bytes, counted at the same point: no second counter for it.)
pub const SIZE_BUCKETS: usize = 41;
pub const SIZE_HISTOGRAM_ENTRIES: u32 = SIZE_BUCKETS as u32;

/// The histogram bucket of an allocation of `size` bytes: ceil(log2(size)), capped.
/// Branches and shifts only (BPF has no count-leading-zeros instruction).
#[inline(always)]
pub fn size_bucket(size: u64) -> u32 {
    let mut rest = size.saturating_sub(1);
    let mut bucket = 0;
    for shift in [32u32, 16, 8, 4, 2, 1] {
        if rest >> shift != 0 {
            rest >>= shift;
            bucket += shift;
        }
    }
    if rest != 0 {
        bucket += 1;
    }
    if bucket as usize >= SIZE_BUCKETS - 1 { SIZE_BUCKETS as u32 - 1 } else { bucket }
}

/// Site id recorded for mappings the allocator made (they have no program stack of their own).
pub const ALLOCATOR_SITE: u64 = 0;

/// Every way an event can be lost, left unpaired, or mis-attributed. Indexes the loss counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// A successful allocation could not be tracked: the live table is full.
    LiveTableFull = 0,
    /// `bpf_get_stack` failed; the allocation is counted under the "unknown stack" site.
    StackCaptureFailed = 1,
    /// A new stack could not be stored: the stack table is full (counted under "unknown stack").
    StackTableFull = 2,
    /// A stack hash collided with different stacks in every probe slot (counted as "unknown").
    StackHashCollision = 3,
    /// The site statistics table is full; the allocation is not tracked.
    SiteTableFull = 4,
    /// An allocator return with no recorded entry (e.g. the call began before attach).
    ReturnWithoutEntry = 5,
    /// An allocator entry whose return was never seen (replaced by a later call on the thread).
    EntryWithoutReturn = 6,
    /// The in-flight call table is full; the call is not tracked.
    PendingTableFull = 7,
    /// An address was handed out again while still live in our table: its free was missed.
    MissedFree = 8,
    /// An anonymous mapping could not be tracked: the mapping table is full.
    MappingTableFull = 9,
    /// The in-flight syscall table is full; a memory syscall was not tracked.
    PendingSyscallTableFull = 10,
}

pub const LOSS_REASONS: usize = 11;

impl Loss {
    pub const ALL: [Loss; LOSS_REASONS] = [
        Loss::LiveTableFull,
        Loss::StackCaptureFailed,
        Loss::StackTableFull,
        Loss::StackHashCollision,
        Loss::SiteTableFull,
        Loss::ReturnWithoutEntry,
        Loss::EntryWithoutReturn,
        Loss::PendingTableFull,
        Loss::MissedFree,
        Loss::MappingTableFull,
        Loss::PendingSyscallTableFull,
    ];

    /// Stable snake_case name, used in output, JSON and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Loss::LiveTableFull => "live_table_full",
            Loss::StackCaptureFailed => "stack_capture_failed",
            Loss::StackTableFull => "stack_table_full",
            Loss::StackHashCollision => "stack_hash_collision",
            Loss::SiteTableFull => "site_table_full",
            Loss::ReturnWithoutEntry => "return_without_entry",
            Loss::EntryWithoutReturn => "entry_without_return",
            Loss::PendingTableFull => "pending_table_full",
            Loss::MissedFree => "missed_free",
            Loss::MappingTableFull => "mapping_table_full",
            Loss::PendingSyscallTableFull => "pending_syscall_table_full",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, and contain only integers with no implicit padding.
    unsafe impl aya::Pod for PendingCall {}
    unsafe impl aya::Pod for LiveKey {}
    unsafe impl aya::Pod for LiveAlloc {}
    unsafe impl aya::Pod for SiteStats {}
    unsafe impl aya::Pod for StackTrace {}
    unsafe impl aya::Pod for PendingSyscall {}
    unsafe impl aya::Pod for ProcessMemory {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_buckets_are_ceil_log2() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 0);
        assert_eq!(size_bucket(2), 1);
        assert_eq!(size_bucket(3), 2);
        assert_eq!(size_bucket(4), 2);
        assert_eq!(size_bucket(5), 3);
        assert_eq!(size_bucket(1024), 10);
        assert_eq!(size_bucket(1025), 11);
        assert_eq!(size_bucket(1 << 39), 39);
        assert_eq!(size_bucket((1 << 39) + 1), 40);
        assert_eq!(size_bucket(u64::MAX), 40);
    }
}
