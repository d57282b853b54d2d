//! The kernel maps. Capacities marked "resized at load" are set by userspace from configuration.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, Queue, RingBuf},
};
use memmon_common::{
    DEFAULT_MAX_LIVE_ALLOCATIONS, DEFAULT_MAX_SITES, Fork, LOSS_REASONS, LiveAlloc, LiveKey,
    MAX_MAPPINGS, MAX_QUEUED_FORKS, MAX_PENDING_CALLS, MAX_TARGETS, PendingCall, PendingSyscall, ProcessMemory,
    SIZE_HISTOGRAM_ENTRIES, SiteStats, StackTrace,
    memo::{MEMO_COUNTERS as MEMO_COUNTER_SLOTS, MEMO_ENTRIES, MEMO_SPAN_WORDS, Memo, MemoKey},
    python::PythonProcess,
    track::{EVENT_RING_BYTES, FunctionCounters, FunctionSiteKey, FunctionSiteStats, InFlightCall, MAX_TRACKED},
    unwind::{DEFAULT_TABLE_MAX_MB, ExecMapping, MAPPING_TABLE_ENTRIES, MAX_OBJECTS, MappingRange, Object, PageRows, Row},
};

/// `BPF_F_MMAPABLE`: userspace writes the unwind tables in place through a shared mapping.
const BPF_F_MMAPABLE: u32 = 1 << 10;
const DEFAULT_UNWIND: (u32, u32) = memmon_common::unwind::capacities(DEFAULT_TABLE_MAX_MB);

/// Allocator calls in flight: one slot per thread (`pid_tgid`), reused call after call; a
/// slot with `entry_sp == 0` is idle. Only its own thread touches a slot. LRU, so the slots of
/// threads that have exited make room for new ones.
#[map]
pub static PENDING: LruHashMap<u64, PendingCall> = LruHashMap::with_max_entries(MAX_PENDING_CALLS, 0);

/// Live tracked blocks: (tgid, address) → size, site, time. Resized at load.
/// Not preallocated: memory follows the live set, and elements are never recycled under a reader.
#[map]
pub static LIVE: HashMap<LiveKey, LiveAlloc> =
    HashMap::with_max_entries(DEFAULT_MAX_LIVE_ALLOCATIONS, BPF_F_NO_PREALLOC);

/// Per-site counters. Resized at load.
#[map]
pub static SITES: HashMap<u64, SiteStats> =
    HashMap::with_max_entries(DEFAULT_MAX_SITES, BPF_F_NO_PREALLOC);

/// Site id → its stack. Resized at load (same capacity as SITES).
#[map]
pub static STACKS: HashMap<u64, StackTrace> =
    HashMap::with_max_entries(DEFAULT_MAX_SITES, BPF_F_NO_PREALLOC);

/// Scratch space for capturing a stack (too large for the 512-byte BPF stack).
#[map]
pub static STACK_SCRATCH: PerCpuArray<StackTrace> = PerCpuArray::with_max_entries(1, 0);

/// The state of a stack walk in progress (`unwind::Walk`).
#[map]
pub static WALK_SCRATCH: PerCpuArray<crate::unwind::Walk> = PerCpuArray::with_max_entries(1, 0);

/// Scratch space for the Python walker: the windows of a frame and of its code object
/// (`python::Windows`), too large for the stack the walk's callback has left.
#[map]
pub static PYTHON_WINDOWS: PerCpuArray<[[u64; 16]; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Memoized walks (`memo`), by thread and where the walk started.
#[map]
pub static MEMOS: LruHashMap<MemoKey, Memo> = LruHashMap::with_max_entries(MEMO_ENTRIES, 0);

/// The memo a walk records into before it is stored.
#[map]
pub static MEMO_SCRATCH: PerCpuArray<Memo> = PerCpuArray::with_max_entries(1, 0);

/// A copy of the stack span a recalled memo checks.
#[map]
pub static MEMO_STACK_COPY: PerCpuArray<[u64; MEMO_SPAN_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// Memo hits, misses and unmemoizable walks (`memmon_common::memo::MEMO_*`).
#[map]
pub static MEMO_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MEMO_COUNTER_SLOTS, 0);

/// Bumped by userspace after it changes the unwind tables, the targets' mappings or interpreters,
/// or removes sites, and by the kernel at a target's exec: memos of an older generation are stale.
#[map]
pub static WALK_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// Hits of each allocator probe program (`memmon_common::probe_hits`).
#[map]
pub static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(memmon_common::probe_hits::PROGRAMS.len() as u32, 0);

/// Each CPU's last answer of `lifecycle::image_of`: `[tgid << 32 | image, walk generation]`.
#[map]
pub static IMAGE_CACHE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Loss counters, indexed by `memmon_common::Loss`.
#[map]
pub static LOSSES: Array<u64> = Array::with_max_entries(LOSS_REASONS as u32, 0);

/// Set to 1 by userspace once every probe is attached. Before that, a return with no recorded
/// entry is expected (the call began while probes were being attached) and is not a loss.
#[map]
pub static ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// Target processes (tgid → per-process memory). Uprobes are attached per process; the syscall
/// tracepoints fire for every process on the machine and use this table as their filter.
#[map]
pub static TARGETS: HashMap<u32, ProcessMemory> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Set to 1 by userspace to follow the targets' forks (`--follow-forks`).
#[map]
pub static FOLLOW_FORKS: Array<u32> = Array::with_max_entries(1, 0);

/// New child processes of targets, for userspace to attach to.
#[map]
pub static FORKS: Queue<Fork> = Queue::with_max_entries(MAX_QUEUED_FORKS, 0);

/// Memory syscalls in flight, by thread.
#[map]
pub static PENDING_SYSCALLS: HashMap<u64, PendingSyscall> =
    HashMap::with_max_entries(MAX_PENDING_CALLS, BPF_F_NO_PREALLOC);

/// Live anonymous mappings made since attach: (tgid, start) → size, site, time.
#[map]
pub static MAPPINGS: HashMap<LiveKey, LiveAlloc> =
    HashMap::with_max_entries(MAX_MAPPINGS, BPF_F_NO_PREALLOC);

/// Per-site counters of the anonymous mappings the program made itself. Resized at load.
#[map]
pub static MAPPING_SITES: HashMap<u64, SiteStats> =
    HashMap::with_max_entries(DEFAULT_MAX_SITES, BPF_F_NO_PREALLOC);

/// Sizes of the tracked allocations (all targets): counts per power-of-two bucket.
#[map]
pub static SIZE_HISTOGRAM: Array<u64> = Array::with_max_entries(SIZE_HISTOGRAM_ENTRIES, 0);

/// CFI rows of every loaded object, each object's rows contiguous and sorted. Resized at load
/// (`MEMMON_UNWIND_TABLE_MAX_MB`).
#[map]
pub static UNWIND_ROWS: Array<Row> = Array::with_max_entries(DEFAULT_UNWIND.0, BPF_F_MMAPABLE);

/// Per-object page indexes into UNWIND_ROWS (see `unwind::Object`). Resized at load.
#[map]
pub static UNWIND_PAGES: Array<PageRows> = Array::with_max_entries(DEFAULT_UNWIND.1, BPF_F_MMAPABLE);

/// Where each loaded object's rows and pages are.
#[map]
pub static UNWIND_OBJECTS: Array<Object> = Array::with_max_entries(MAX_OBJECTS, 0);

/// The targets' executable file mappings, each process' sorted and contiguous. (An array
/// rather than one hash value per process: the walk's binary search then indexes through map
/// lookups, whose bounds the kernel checks at run time, and the verifier need not follow every
/// value the index can take.)
#[map]
pub static EXEC_MAPPINGS: Array<ExecMapping> = Array::with_max_entries(MAPPING_TABLE_ENTRIES, BPF_F_MMAPABLE);

/// Where each target's mappings are in EXEC_MAPPINGS (tgid → range).
#[map]
pub static TARGET_MAPPINGS: HashMap<u32, MappingRange> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// CPython targets: where their thread states are and which native frames are eval loops.
#[map]
pub static PYTHON_TARGETS: HashMap<u32, PythonProcess> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// 1 when functions are tracked (`track`); the allocator paths skip tracking otherwise.
#[map]
pub static TRACKING: Array<u32> = Array::with_max_entries(1, 0);

/// The tracked call in flight on each thread (`pid_tgid`); a thread's slot is removed when it
/// exits. Resized at load (1 entry when nothing is tracked).
#[map]
pub static TRACK_CALLS: HashMap<u64, InFlightCall> = HashMap::with_max_entries(MAX_PENDING_CALLS, 0);

/// Per tracked function: calls started, nested, lost by reason.
#[map]
pub static TRACK_COUNTERS: Array<FunctionCounters> = Array::with_max_entries(MAX_TRACKED, 0);

/// Completed tracked calls, to userspace. Resized at load.
#[map]
pub static TRACK_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// What each allocation stack allocated inside each tracked function. Resized at load.
#[map]
pub static TRACK_SITES: HashMap<FunctionSiteKey, FunctionSiteStats> =
    HashMap::with_max_entries(DEFAULT_MAX_SITES, BPF_F_NO_PREALLOC);

/// Removes the block at `addr` of process `tgid`'s image `image` from a block table (LIVE or
/// MAPPINGS) and returns it; `None` if untracked, or taken meanwhile by another CPU.
#[inline(always)]
pub fn take_block(table: &HashMap<LiveKey, LiveAlloc>, tgid: u32, image: u32, addr: u64) -> Option<LiveAlloc> {
    let key = LiveKey { addr, tgid, image };
    let block = unsafe { *table.get_ptr(&key)? };
    table.remove(&key).ok()?;
    Some(block)
}

/// The counters of `site` in a site table (SITES or MAPPING_SITES), created at zero on first
/// use. Losing the creation race to another CPU is fine: the lookup after it finds its entry.
#[inline(always)]
pub fn site_counters(table: &HashMap<u64, SiteStats>, site: u64) -> Option<*mut SiteStats> {
    if let Some(stats) = table.get_ptr_mut(site) {
        return Some(stats);
    }
    let _ = table.insert(site, SiteStats::default(), BPF_NOEXIST as u64);
    table.get_ptr_mut(site)
}
