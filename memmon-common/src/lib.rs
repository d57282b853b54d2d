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

/// The allocator probe programs whose hits the kernel side counts itself (`PROBE_HITS`, one
/// slot each, in this order). The overhead estimate charges every hit; BPF run-time statistics
/// would count them too, but cost two clock reads per run of every BPF program on the machine
/// while on, so memmon only samples those (`overhead::sampling`).
pub mod probe_hits {
    pub const MALLOC_ENTER: u32 = 0;
    pub const SIZE_ONLY_ENTER: u32 = 1;
    pub const ALIGNED_ENTER: u32 = 2;
    pub const CALLOC_ENTER: u32 = 3;
    pub const REALLOC_ENTER: u32 = 4;
    pub const REALLOCARRAY_ENTER: u32 = 5;
    pub const POSIX_MEMALIGN_ENTER: u32 = 6;
    pub const FREE_ENTER: u32 = 7;
    pub const ALLOC_EXIT: u32 = 8;
    /// The programs' names by slot.
    pub const PROGRAMS: [&str; 9] = [
        "malloc_enter",
        "size_only_enter",
        "aligned_enter",
        "calloc_enter",
        "realloc_enter",
        "reallocarray_enter",
        "posix_memalign_enter",
        "free_enter",
        "alloc_exit",
    ];

    /// The slot of the program named `name`, if its hits are counted.
    pub fn slot(name: &str) -> Option<u32> {
        PROGRAMS.iter().position(|p| *p == name).map(|i| i as u32)
    }
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
    /// realloc: the old block's `LiveAlloc::call_thread`.
    pub old_call_thread: u32,
    pub _pad: u32,
}

/// Key of the live-allocation (and anonymous-mapping) table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LiveKey {
    pub addr: u64,
    pub tgid: u32,
    /// The process image the block was allocated in (`ProcessMemory::execs` then): after an
    /// execve the new image may get the same addresses at once, and its frees must never
    /// match a block of the image that is gone.
    pub image: u32,
}

/// One live tracked block.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAlloc {
    pub size: u64,
    pub site: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at allocation.
    pub timestamp_ns: u64,
    /// The thread (tid) whose tracked call was in flight when it allocated this block, or 0.
    /// With `timestamp_ns` it says which call allocated the block (`track`).
    pub call_thread: u32,
    pub _pad: u32,
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
    /// Why the walk stopped before the bottom of the stack ([`Truncation`]); 0 when it reached
    /// the bottom. Part of the site's identity: a truncated stack never merges with a whole one.
    pub truncated: u32,
    /// The process image the stack was captured in (`ProcessMemory::execs`): part of the
    /// site's identity, so a site never spans an execve.
    pub image: u32,
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// Why a stack walk stopped early. Every frame of a stored stack is right; what lies below the
/// last one is unknown for this reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// The walk reached the bottom of the stack (`_start`, `start_thread`, `clone3`).
    Complete = 0,
    /// The next return address lies outside every file-backed executable mapping of the
    /// process (a JIT page, a corrupted frame, garbage).
    OutsideObjects = 1,
    /// The code at the frame has no unwind rows (no CFI, or its object's table was not loaded).
    NoUnwindInfo = 2,
    /// The frame's CFI uses a rule the kernel walker does not follow.
    UnsupportedRule = 3,
    /// Reading the saved registers from the user stack failed.
    StackReadFailed = 4,
    /// More frames than `MAX_STACK_DEPTH`.
    DepthLimit = 5,
    /// The process' executable mappings are not (yet) known to the kernel walker.
    NoProcessMap = 6,
    /// A frame's stack pointer did not move up the stack (a loop in corrupted frames).
    StackNotAdvancing = 7,
    /// The stack could not be stored (its table full, or hash collisions): the allocation is
    /// counted under the process' "unknown stack" site, and the loss is counted.
    NotStored = 8,
}

impl Truncation {
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Truncation::Complete,
            1 => Truncation::OutsideObjects,
            2 => Truncation::NoUnwindInfo,
            3 => Truncation::UnsupportedRule,
            4 => Truncation::StackReadFailed,
            5 => Truncation::DepthLimit,
            6 => Truncation::NoProcessMap,
            7 => Truncation::StackNotAdvancing,
            _ => Truncation::NotStored,
        }
    }

    /// Stable snake_case name, used in JSON, pprof labels and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Truncation::Complete => "complete",
            Truncation::OutsideObjects => "outside_objects",
            Truncation::NoUnwindInfo => "no_unwind_info",
            Truncation::UnsupportedRule => "unsupported_rule",
            Truncation::StackReadFailed => "stack_read_failed",
            Truncation::DepthLimit => "depth_limit",
            Truncation::NoProcessMap => "no_process_map",
            Truncation::StackNotAdvancing => "stack_not_advancing",
            Truncation::NotStored => "not_stored",
        }
    }
}

/// The tables the kernel walks stacks with: compact CFI rows compiled by userspace
/// (`memmon-user/src/unwind/`) and walked by `memmon-ebpf/src/unwind.rs`.
pub mod unwind {
    /// Rows are indexed by 256-byte "page" of code: a page holds one to a few rows, so a
    /// lookup is one index read and a binary search of a step or two.
    pub const PAGE_SHIFT: u32 = 8;
    /// Executable file mappings per process the walker knows (a large Python process with many
    /// extension modules maps a few hundred).
    pub const MAX_EXEC_MAPPINGS: u32 = 1024;
    /// Executable file mappings of all processes together.
    pub const MAPPING_TABLE_ENTRIES: u32 = 1 << 16;
    /// Objects (distinct files with unwind tables) loaded at once.
    pub const MAX_OBJECTS: u32 = 8192;
    /// `ExecMapping::object` of a mapping whose object has no table.
    pub const NO_OBJECT: u32 = u32::MAX;
    /// Default kernel memory for rows and page index together (`MEMMON_UNWIND_TABLE_MAX_MB`).
    pub const DEFAULT_TABLE_MAX_MB: u32 = 64;
    /// Binary-search steps that cover any page's rows (a page holds at most 257 candidates:
    /// one a byte, and the row in effect at its start) and any process' mappings.
    pub const ROW_SEARCH_STEPS: u32 = 9;
    pub const MAPPING_SEARCH_STEPS: u32 = 11;

    /// (rows, pages) the kernel arrays hold for `max_mb` MiB: two thirds for rows, a third for
    /// the page index (real objects have about five rows per 256-byte page, so pages run out
    /// well after rows).
    pub const fn capacities(max_mb: u32) -> (u32, u32) {
        let mb = if max_mb == 0 { 1 } else { max_mb };
        let rows = mb * ((1 << 20) / 8) / 3 * 2;
        (rows, rows / 2)
    }

    /// How to find the caller's frame at an address.
    pub mod kind {
        /// No CFI covers the address (a gap between functions, or code without CFI).
        pub const NONE: u8 = 0;
        /// CFA = rsp + cfa_offset.
        pub const CFA_RSP: u8 = 1;
        /// CFA = rbp + cfa_offset.
        pub const CFA_RBP: u8 = 2;
        /// A lazy-binding PLT entry: CFA = rsp + 8, plus 8 once past the entry's push
        /// (`(rip & 15) >= cfa_offset`), the expression ld writes for `.plt`.
        pub const PLT: u8 = 3;
        /// The return address is undefined: the outermost frame (`_start`, `clone3`).
        pub const END: u8 = 4;
        /// CFI exists but uses a rule the walker does not follow (a DWARF expression, a CFA
        /// in another register, an offset too large for the row).
        pub const UNSUPPORTED: u8 = 5;
    }

    /// `Row::rbp` when the caller's rbp is the current rbp (not saved by this frame).
    pub const RBP_UNCHANGED: i8 = 0;
    /// `Row::rbp` when the caller's rbp cannot be recovered at this address.
    pub const RBP_LOST: i8 = i8::MIN;

    /// One CFI row: from `pc` (relative to its object's `base`) up to the next row's `pc`.
    /// The return address is at CFA - 8 (the x86-64 ABI; rows where it is not are UNSUPPORTED).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Row {
        pub pc: u32,
        pub cfa_offset: i16,
        pub kind: u8,
        /// Where the caller's rbp was saved: CFA + 8 * rbp; or RBP_UNCHANGED / RBP_LOST.
        pub rbp: i8,
    }

    /// The rows a lookup in one page of an object searches, `first..=last` (indexes from the
    /// object's `rows_start`): from the row in effect at the page's first byte to the last row
    /// starting inside the page.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct PageRows {
        pub first: u32,
        pub last: u32,
    }

    /// Where an object's rows and page index sit in the shared tables.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Object {
        /// ELF virtual address that row and page offsets count from (page aligned).
        pub base: u64,
        pub rows_start: u32,
        pub row_count: u32,
        /// First of the object's `page_count` entries in the page index.
        pub pages_start: u32,
        pub page_count: u32,
    }

    /// A file-backed executable mapping of a process: `pc - bias` is the ELF virtual address.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ExecMapping {
        pub start: u64,
        pub end: u64,
        pub bias: u64,
        /// Index into the object table, or NO_OBJECT.
        pub object: u32,
        pub _pad: u32,
    }

    /// Where a process' executable file mappings sit in the shared mapping table, sorted by
    /// start. Replaced whole (a new range written first) when the process maps or unmaps code.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MappingRange {
        pub first: u32,
        pub count: u32,
    }
}

/// The walk memo (`memmon-ebpf/src/memo.rs`): a thread that allocates again from where it
/// allocated before (the same return address and stack pointer) gets the site it got then,
/// once every stack word that walk read still holds the value it read.
pub mod memo {
    /// Stack words a memo can check (a power of two): a frame reads one (its return address)
    /// or two (with a saved rbp), so this covers 32 to 64 frames; a deeper walk is not memoized.
    pub const MEMO_WORDS: usize = 64;
    /// The stack span (from the stack pointer up) a memo can check, read in one copy.
    pub const MEMO_SPAN_BYTES: usize = 8192;
    pub const MEMO_SPAN_WORDS: usize = MEMO_SPAN_BYTES / 8;
    /// Memo entries (an LRU table shared by all targets' threads).
    pub const MEMO_ENTRIES: u32 = 8192;

    /// Where a walk starts: the thread, and its return address and stack pointer there.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MemoKey {
        pub thread: u64,
        pub ip: u64,
        pub sp: u64,
    }

    /// A walk's result and what it depended on.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Memo {
        /// The key again: an LRU entry can be recycled for another key under a reader.
        pub key: MemoKey,
        /// `WALK_GENERATION` when the walk began: tables and sites it used are still current
        /// while the generation is.
        pub generation: u64,
        pub site: u64,
        /// The rbp the walk started from, when it used it (`needs_rbp`).
        pub rbp: u64,
        pub needs_rbp: u32,
        /// While recording: rbp no longer holds the starting register's value.
        pub rbp_replaced: u32,
        /// While recording: where rbp was last read from the stack, and its value, noted only
        /// once a frame's CFA is computed from it (in code without frame pointers rbp is a
        /// general register whose saved value changes call after call, and most walks never
        /// use it).
        pub rbp_slot: u64,
        pub rbp_value: u64,
        pub rbp_pending: u32,
        /// The process image the walk's site belongs to (an exec bumps the generation).
        pub image: u32,
        /// Words checked, and the bytes from the stack pointer that hold them.
        pub words: u32,
        pub span: u32,
        /// Each word's index from the stack pointer (in words), and its value.
        pub offsets: [u16; MEMO_WORDS],
        pub values: [u64; MEMO_WORDS],
    }

    /// `MEMO_COUNTERS` indexes (per CPU).
    pub const MEMO_HITS: u32 = 0;
    /// Walked, and memoized for next time.
    pub const MEMO_MISSES: u32 = 1;
    /// Walked, and not memoizable (too deep, too wide a span, a failed read, a Python thread).
    pub const MEMO_UNCACHEABLE: u32 = 2;
    pub const MEMO_COUNTERS: u32 = 3;
}

/// Capacity of the anonymous-mapping table (one entry per live mapping made since attach).
pub const MAX_MAPPINGS: u32 = 1 << 16;
/// Capacity of the target-process table (the syscall tracepoints' filter).
pub const MAX_TARGETS: u32 = 1024;
/// Capacity of the queue of forks to follow (drained every 20 ms: 200,000 forks/s).
pub const MAX_QUEUED_FORKS: u32 = 4096;

/// A new child process of a target, queued for userspace to follow (`--follow-forks`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fork {
    pub child: u32,
    pub parent: u32,
}

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
    /// User instruction, stack and frame pointers at entry, where the stack walk starts.
    pub ip: u64,
    pub sp: u64,
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
    /// Executable file mappings made since attach (dlopen): tells userspace to refresh the
    /// process' unwind view.
    pub code_maps: u64,
    /// Images the process replaced (execve) since attach: the number of the current one
    /// (`LiveKey::image`). Bumped by the kernel at sched:sched_process_exec.
    pub execs: u64,
    /// 1 once the whole process has exited (sched:sched_process_exit with group_dead): its
    /// pid may then be reused by a new process, which must not be counted as this one.
    pub exited: u64,
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
    /// The allocation has no site to count under: the site statistics table is full, or the
    /// stack table has no room even for the unknown-stack site. It is not tracked.
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
    /// A target forked while the queue of forks to follow was full: the child is not followed.
    ForkQueueFull = 11,
}

pub const LOSS_REASONS: usize = 12;

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
        Loss::ForkQueueFull,
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
            Loss::ForkQueueFull => "fork_queue_full",
        }
    }
}

/// CPython frames in stacks (`memmon-ebpf/src/python.rs`, `memmon-user/src/python/`).
///
/// A Python frame takes two slots of `StackTrace::ips`: `FRAME_TAG | code object address`, then
/// `identity << 32 | instruction offset` (in code units). The identity folds the code object's
/// qualified name — its string's hash, the content, as well as its address —, file and
/// line-table pointers and first line, so that a code object freed and another allocated at its
/// address make a different frame, and so a different site, even when the new one's strings
/// reuse the old ones' memory too.
pub mod python {
    /// Marks the first slot of a Python frame (user addresses never have the top bit set).
    pub const FRAME_TAG: u64 = 1 << 63;

    /// What frames the owner field marks (`FRAME_OWNED_BY_*` in CPython's `pycore_frame.h`).
    pub const FRAME_OWNED_BY_GENERATOR: u8 = 1;
    /// 3.12+: the shim frame each `_PyEval_EvalFrameDefault` call pushes below the frames it
    /// runs; it ends that call's chain and is never shown.
    pub const FRAME_OWNED_BY_CSTACK: u8 = 3;
    /// A field this version does not have.
    pub const NO_FIELD: u16 = u16::MAX;
    /// Dereferences at most from `_PyRuntime` to the GIL holder's thread state.
    pub const TSTATE_CHAIN_STEPS: usize = 3;
    /// The walker reads a frame's first `FRAME_WINDOW_WORDS` words, and a code object's
    /// `CODE_WINDOW_WORDS` words from `CODE_WINDOW_START`: every field a layout names must lie
    /// in them (userspace checks, so the kernel reads each object once).
    pub const FRAME_WINDOW_WORDS: usize = 9;
    pub const CODE_WINDOW_START: u16 = 64;
    pub const CODE_WINDOW_WORDS: usize = 16;

    /// Where one CPython version keeps what the walker and the symbolizer read (byte offsets,
    /// x86-64). 3.11 and 3.12 are measured on their builds (`ptype /o` in gdb); 3.13+ come from
    /// the `_Py_DebugOffsets` the interpreter publishes at the start of `_PyRuntime`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Layout {
        /// The thread state holding the GIL: starting at `_PyRuntime`, read the pointer at
        /// `+ tstate_chain[i]` for each of the first `tstate_chain_len` steps.
        pub tstate_chain: [u16; TSTATE_CHAIN_STEPS],
        pub tstate_chain_len: u16,
        pub tstate_native_thread_id: u16,
        /// `tstate->cframe` (3.11, 3.12), whose `current_frame` is the thread's frame; `NO_FIELD`
        /// when `current_frame` is in the thread state itself (3.13+).
        pub tstate_cframe: u16,
        pub current_frame: u16,
        pub frame_code: u16,
        pub frame_previous: u16,
        /// `prev_instr` (3.11, 3.12) or `instr_ptr` (3.13+): the instruction the frame is at.
        pub frame_instr: u16,
        pub frame_owner: u16,
        /// 3.11's `is_entry` byte; `NO_FIELD` where entry frames are `FRAME_OWNED_BY_CSTACK` shims.
        pub frame_is_entry: u16,
        pub code_firstlineno: u16,
        pub code_filename: u16,
        pub code_qualname: u16,
        pub code_linetable: u16,
        /// `_co_firsttraceable`: a frame not past it has not started (skipped, as tracebacks do).
        pub code_firsttraceable: u16,
        pub code_adaptive: u16,
        /// `PyASCIIObject.hash`, and where a compact str's characters start: ASCII, other kinds.
        pub str_hash: u16,
        pub str_ascii_data: u16,
        pub str_compact_data: u16,
        pub _pad: [u16; 3],
    }

    impl Layout {
        /// CPython 3.11 (the same in Debian's 3.11.2 and pyenv's 3.11.7): the thread state
        /// holding the GIL is `_PyRuntime.gilstate.tstate_current`.
        pub const V3_11: Layout = Layout {
            tstate_chain: [0x240, 0, 0],
            tstate_chain_len: 1,
            tstate_native_thread_id: 160,
            tstate_cframe: 56,
            current_frame: 8,
            frame_code: 32,
            frame_previous: 48,
            frame_instr: 56,
            frame_owner: 69,
            frame_is_entry: 68,
            code_firstlineno: 72,
            code_filename: 112,
            code_qualname: 128,
            code_linetable: 136,
            code_firsttraceable: 168,
            code_adaptive: 184,
            str_hash: 24,
            str_ascii_data: 48,
            str_compact_data: 72,
            _pad: [0; 3],
        };

        /// CPython 3.12 (pyenv's 3.12.1), which publishes no offsets: the GIL holder is
        /// `_PyRuntime.interpreters.main->ceval.gil->last_holder`.
        pub const V3_12: Layout = Layout {
            tstate_chain: [48, 384, 8],
            tstate_chain_len: 3,
            tstate_native_thread_id: 144,
            tstate_cframe: 56,
            current_frame: 0,
            frame_code: 0,
            frame_previous: 8,
            frame_instr: 56,
            frame_owner: 70,
            frame_is_entry: NO_FIELD,
            code_firstlineno: 68,
            code_filename: 112,
            code_qualname: 128,
            code_linetable: 136,
            code_firsttraceable: 176,
            code_adaptive: 192,
            str_hash: 24,
            str_ascii_data: 40,
            str_compact_data: 56,
            _pad: [0; 3],
        };

        /// Whether every field the walker reads lies in its windows.
        pub fn fits_windows(&self) -> bool {
            let in_frame = |offset: u16, bytes: u16| offset as usize + bytes as usize <= FRAME_WINDOW_WORDS * 8;
            let in_code = |offset: u16, bytes: u16| {
                offset == NO_FIELD
                    || (offset >= CODE_WINDOW_START
                        && (offset - CODE_WINDOW_START) as usize + bytes as usize <= CODE_WINDOW_WORDS * 8
                        && offset % bytes == 0)
            };
            in_frame(self.frame_code, 8)
                && in_frame(self.frame_previous, 8)
                && in_frame(self.frame_instr, 8)
                && in_frame(self.frame_owner, 1)
                && (self.frame_is_entry == NO_FIELD || in_frame(self.frame_is_entry, 1))
                && [self.frame_code, self.frame_previous, self.frame_instr].iter().all(|o| o % 8 == 0)
                && in_code(self.code_firstlineno, 4)
                && in_code(self.code_firsttraceable, 4)
                && [self.code_filename, self.code_qualname, self.code_linetable]
                    .iter()
                    .all(|&o| o != NO_FIELD && in_code(o, 8))
                && (1..=TSTATE_CHAIN_STEPS as u16).contains(&self.tstate_chain_len)
        }
    }

    /// A CPython process the walker interleaves Python frames for (tgid → this).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct PythonProcess {
        /// Address of `_PyRuntime`.
        pub runtime: u64,
        /// `_PyEval_EvalFrameDefault`: native frames in it are replaced by the Python frames
        /// that invocation runs.
        pub eval_start: u64,
        pub eval_end: u64,
        /// `Py_Version` (0x030b02f0 for 3.11.2).
        pub version: u32,
        pub _pad: u32,
        pub layout: Layout,
    }

    /// The identity folded into a frame's second slot (see the module docs).
    #[inline(always)]
    pub const fn identity(qualname: u64, qualname_hash: u64, filename: u64, linetable: u64, first_line: u32) -> u32 {
        let mixed = qualname
            ^ qualname_hash.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ filename.rotate_left(21)
            ^ linetable.rotate_left(42)
            ^ first_line as u64;
        (mixed ^ (mixed >> 32)) as u32
    }
}

/// Per-call memory of tracked functions (`--track-function`): the kernel side is
/// `memmon-ebpf/src/track.rs`, userspace `memmon-user/src/track/`.
///
/// A thread has at most one tracked call in flight: the outermost call of any tracked function.
/// Calls of tracked functions made inside it (recursion, or another tracked function) are part
/// of it. A block belongs to the call in flight on thread T that started at `start_ns` when
/// its `call_thread` is T and its `timestamp_ns >= start_ns`: the call's start and the block's
/// allocation are read from the same monotonic clock on the same thread, in that order.
pub mod track {
    /// Tracked (process, function) pairs at most; a pair's index is its probes' attach cookie.
    pub const MAX_TRACKED: u32 = 64;
    /// Bytes of the ring buffer completed calls are sent through (a power of two of pages).
    pub const EVENT_RING_BYTES: u32 = 1 << 22;

    /// The tracked call in flight on a thread (`pid_tgid` → this), reused call after call.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct InFlightCall {
        /// 1 while a call is in flight; 0 when the slot is idle.
        pub active: u32,
        /// Index of the tracked function (`MAX_TRACKED`).
        pub function: u32,
        /// Stack pointer at the function's entry: calls below it are nested, a stack pointer
        /// above it means the call's frame is gone.
        pub entry_sp: u64,
        pub start_ns: u64,
        /// What this thread allocated during the call (its own thread only writes these).
        pub alloc_bytes: u64,
        pub alloc_count: u64,
        /// Tracked blocks this thread freed during the call, whoever allocated them.
        pub freed_bytes: u64,
        pub free_count: u64,
        /// Blocks allocated during the call and freed before it returned, by any thread
        /// (atomic adds): net = alloc - own_freed.
        pub own_freed_bytes: u64,
        pub own_freed_count: u64,
    }

    /// A completed call, sent to userspace through the ring buffer.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct CallEvent {
        pub function: u32,
        pub tid: u32,
        pub start_ns: u64,
        pub duration_ns: u64,
        pub alloc_bytes: u64,
        pub alloc_count: u64,
        pub freed_bytes: u64,
        pub free_count: u64,
        /// Allocated during the call and still live at its return.
        pub net_bytes: u64,
        pub net_count: u64,
    }

    /// Per tracked function, monotonic (atomic adds).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FunctionCounters {
        /// Outermost calls started.
        pub started: u64,
        /// Entries while a tracked call was in flight on the thread (counted in that call).
        pub nested: u64,
        /// Calls whose frame was found gone without their return being seen (longjmp,
        /// exception unwinding, a missed return).
        pub lost_unwound: u64,
        /// Calls in flight when their thread exited.
        pub lost_thread_exit: u64,
        /// Completed calls whose record the ring buffer had no room for.
        pub lost_event_dropped: u64,
        /// Calls not measured: the in-flight table was full.
        pub lost_table_full: u64,
        /// Returns with no call in flight (calls that began before attach, the second return
        /// of a tail call).
        pub orphan_returns: u64,
        /// Allocations inside calls whose (function, site) counters found no room.
        pub site_table_full: u64,
    }

    /// Key of the per-function allocation sites: what stacks allocate inside a function.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FunctionSiteKey {
        pub site: u64,
        pub function: u32,
        pub _pad: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FunctionSiteStats {
        pub alloc_bytes: u64,
        pub alloc_count: u64,
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, and contain only integers with no implicit padding.
    unsafe impl aya::Pod for PendingCall {}
    unsafe impl aya::Pod for Fork {}
    unsafe impl aya::Pod for LiveKey {}
    unsafe impl aya::Pod for LiveAlloc {}
    unsafe impl aya::Pod for SiteStats {}
    unsafe impl aya::Pod for StackTrace {}
    unsafe impl aya::Pod for PendingSyscall {}
    unsafe impl aya::Pod for ProcessMemory {}
    unsafe impl aya::Pod for unwind::Row {}
    unsafe impl aya::Pod for unwind::Object {}
    unsafe impl aya::Pod for unwind::PageRows {}
    unsafe impl aya::Pod for unwind::ExecMapping {}
    unsafe impl aya::Pod for unwind::MappingRange {}
    unsafe impl aya::Pod for python::PythonProcess {}
    unsafe impl aya::Pod for track::InFlightCall {}
    unsafe impl aya::Pod for track::CallEvent {}
    unsafe impl aya::Pod for track::FunctionCounters {}
    unsafe impl aya::Pod for track::FunctionSiteKey {}
    unsafe impl aya::Pod for track::FunctionSiteStats {}
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
