//! The JSON the control API serves and the management commands read (DESIGN.md "contract":
//! fields may be added, never renamed or removed).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use memmon_common::Truncation;

use crate::symbolize::Frame;

/// A call stack, innermost frame first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub frames: Vec<Frame>,
    /// Whether the stack walk stopped before the bottom of the stack: the frames are right,
    /// their callers unknown.
    #[serde(default)]
    pub truncated: bool,
    /// Why it stopped (`outside_objects`, `no_unwind_info`, …), when truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation: Option<String>,
}

impl Site {
    pub fn new(frames: Vec<Frame>, truncated: Truncation) -> Self {
        let is_truncated = truncated != Truncation::Complete;
        Self { frames, truncated: is_truncated, truncation: is_truncated.then(|| truncated.name().to_string()) }
    }

    /// The frames with the truncation frame last, for views that show a stack.
    pub fn display_frames(&self) -> Vec<Frame> {
        let mut frames = self.frames.clone();
        if let Some(reason) = self.truncation.as_deref().filter(|_| self.truncated) {
            frames.push(crate::symbolize::truncation_frame_for(reason));
        }
        frames
    }

    /// The allocating function (innermost frame), for one-line displays.
    pub fn function(&self) -> &str {
        self.frames.first().map_or("[unknown stack]", |f| f.function.as_str())
    }

    pub fn location(&self) -> String {
        self.frames.first().map(Frame::location).unwrap_or_default()
    }

    /// The site in one line: its innermost frame, or for a site allocated from Python code the
    /// Python frames that did it — `keep_record (views.py:10) ← audit_view (views.py:16) ← …`
    /// — which say more than the interpreter's allocation functions above them.
    pub fn headline(&self) -> String {
        let python: Vec<&Frame> = self.frames.iter().filter(|f| f.python).collect();
        if python.is_empty() {
            return format!("{} ({})", self.function(), self.location());
        }
        let named = |f: &Frame| {
            let file = f.file.as_deref().map(|file| file.rsplit('/').next().unwrap_or(file));
            match (file, f.line) {
                (Some(file), Some(line)) => format!("{} ({file}:{line})", f.function),
                (Some(file), None) => format!("{} ({file})", f.function),
                _ => f.function.clone(),
            }
        };
        let mut line: Vec<String> = python.iter().take(2).map(|f| named(f)).collect();
        if python.len() > 2 {
            line.push("…".into());
        }
        line.join(" ← ")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetStatus {
    pub pid: u32,
    pub comm: String,
    pub alive: bool,
    pub allocator: String,
    pub object: String,
    /// What is probed, e.g. "libc.so.6: malloc, calloc, …, free+3".
    pub probes: String,
    /// Where each probed function is probed, in probe order.
    #[serde(default)]
    pub probe_sites: Vec<ProbeSiteStatus>,
    /// The functions whose probes the kernel single-steps: the expensive ones.
    #[serde(default)]
    pub single_stepped: Vec<String>,
    /// The process' Python interpreter and whether its frames are walked, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// Images it exec'ed since attach; each exec's old blocks were discarded, not leaked.
    #[serde(default)]
    pub execs: u64,
    #[serde(default)]
    pub discarded_at_exec_bytes: u64,
    #[serde(default)]
    pub discarded_at_exec_blocks: u64,
    /// The latest execs, oldest first.
    #[serde(default)]
    pub recent_execs: Vec<crate::lifecycle::Exec>,
    /// Its seccomp policy ("strict", "filter (N installed)") and whether memmon's return
    /// probes were found to spare such processes here; null without a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
}

/// Where one allocator function is probed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeSiteStatus {
    /// The symbol, e.g. "malloc" or "_Znwm".
    pub function: String,
    /// The object defining it, as the target maps it.
    pub object: String,
    /// Bytes past the function's entry (0: the entry).
    pub offset: u64,
    /// Whether the kernel emulates the probed instruction (about a microsecond per hit);
    /// otherwise it single-steps it out of line (tens of microseconds on the VMs measured).
    pub emulated: bool,
    /// Whether a return probe shares the site (allocating functions).
    pub returns: bool,
    /// Why a single-stepped probe could not move to an emulated instruction.
    pub reason: Option<String>,
    /// Where the entry program reads each argument it decodes at the site, e.g. ["rdi"]; past
    /// the entry an argument may have been copied to another register ("rsi").
    #[serde(default)]
    pub arguments: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub attached: bool,
    pub pids: Vec<u32>,
    pub uptime_seconds: f64,
    /// "exact": every allocation is tracked (no sampling).
    pub mode: String,
    pub events_lost: BTreeMap<String, u64>,
    /// Whether the numbers are whole, from the events lost.
    #[serde(default)]
    pub completeness: crate::completeness::Completeness,
    pub targets: Vec<TargetStatus>,
    pub snapshots: u64,
    pub last_snapshot_age_seconds: Option<f64>,
    pub leak_detection_enabled: bool,
    pub leak_checks: u64,
    pub metrics_update_interval_seconds: u64,
    pub leak_check_interval_seconds: u64,
    pub listen: String,
    pub profiling_enabled: bool,
    /// This agent's profiling sessions, newest first.
    pub profiles: Vec<ProfileInfo>,
    /// The stack walker's tables: objects, rows, memory, build time, and what is missing.
    #[serde(default)]
    pub unwind: crate::unwind::UnwindStats,
    /// Per-call memory of the functions tracked with --track-function (no top_sites here).
    #[serde(default)]
    pub tracked_functions: Vec<TrackedFunction>,
    /// The tier, whether the allocator probes are attached, and the capture windows.
    #[serde(default)]
    pub capture: CaptureStatus,
    /// What the allocator probes are estimated to cost the targets, against the budget.
    #[serde(default)]
    pub overhead: OverheadStatus,
    /// The targets' forks and what became of them (`--follow-forks`).
    #[serde(default)]
    pub forks: crate::forks::Forks,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CaptureStatus {
    /// "exact" or "always-on".
    pub tier: String,
    pub allocator_probes_attached: bool,
    /// MEMMON_CAPTURE_WINDOW, seconds.
    pub window_seconds: u64,
    /// The open window, if any.
    pub open: Option<CaptureWindow>,
    /// Closed windows, newest first (the last 20).
    pub closed: Vec<CaptureWindow>,
    /// Windows opened so far, by trigger ("growth", "requested").
    pub opened: BTreeMap<String, u64>,
    /// Windows the budget refused or postponed, and the latest reason.
    pub refused: u64,
    pub last_refusal: Option<String>,
    /// MEMMON_CAPTURE_COOLDOWN, seconds.
    #[serde(default)]
    pub cooldown_seconds: u64,
    /// Seconds until growth may open a window again (0: it may now).
    #[serde(default)]
    pub cooldown_remaining_seconds: f64,
    /// Growth warnings that came during a cooldown and opened no window.
    #[serde(default)]
    pub deferred: u64,
}

/// A capture window: the allocator probes attached for a while, in the always-on tier.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CaptureWindow {
    /// "growth" (the leak detector saw the process grow) or "requested" (start-profiling).
    pub trigger: String,
    /// What opened it, e.g. the growth indicator's summary.
    pub cause: String,
    pub pids: Vec<u32>,
    /// The profile written of the window, when profiling is enabled.
    pub profile_id: Option<String>,
    pub started_at: String,
    /// How long it was allowed (the wanted length, or less under the budget), and how long it
    /// lasted (so far).
    pub planned_seconds: f64,
    pub elapsed_seconds: f64,
    /// Why it closed ("window length reached", "overhead budget", …).
    pub reason: Option<String>,
    /// Estimated cost of its probes (CPU seconds of the targets).
    pub estimated_cost_seconds: f64,
    /// The sites that allocated during the window and still held it at its close: where the
    /// growth went. Their blocks are forgotten with the window (their frees can no longer be
    /// seen, so they are never reported as leaks).
    pub top_sites: Vec<SiteSummary>,
    pub live_bytes: u64,
    pub live_allocations: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OverheadStatus {
    /// MEMMON_OVERHEAD_BUDGET: the share of the targets' CPU the probes may cost.
    pub budget: f64,
    /// The estimated share over the last 10 minutes: (hits × calibrated trap cost + BPF run
    /// time) ÷ the targets' CPU time (before attach: at their average rate). An estimate.
    pub estimate: f64,
    /// Since attach: the probes' estimated cost and the targets' CPU time.
    pub estimated_cost_seconds: f64,
    pub target_cpu_seconds: f64,
    /// What the budget still allows over the horizon (CPU seconds; negative: overspent, windows
    /// wait).
    pub allowance_seconds: f64,
    /// Measured at start: ns per probe hit by kind (None: calibration failed).
    pub hit_costs: Option<crate::overhead::HitCosts>,
}

/// A byte measure of a tracked function's calls: the exact sum over every completed call,
/// and exact nearest-rank percentiles over the latest `percentile_calls` of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BytesPerCall {
    pub sum: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// Durations of a tracked function's calls, in seconds (as `BytesPerCall`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondsPerCall {
    pub sum: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// One tracked function in one process (`--track-function`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackedFunction {
    /// As given (`SYMBOL` or `SYMBOL@OBJECT`): the metrics' `function` label.
    pub function: String,
    pub pid: u32,
    pub symbol: String,
    /// The object defining it, as the process maps it.
    pub object: String,
    /// Where its probes are: bytes past its entry, and whether the kernel emulates the
    /// instruction there (if not, every call is single-stepped twice, tens of µs).
    pub probe_offset: u64,
    pub emulated: bool,
    /// Completed calls (each measured exactly).
    pub calls: u64,
    /// Calls whose return was never seen, or whose record was lost; `lost` says why
    /// (`unwound`: longjmp or exception; `thread_exit`; `event_dropped`; `table_full`).
    pub lost_calls: u64,
    pub lost: BTreeMap<String, u64>,
    pub in_flight: u64,
    /// Calls of tracked functions made inside a tracked call (recursion): part of the outer.
    pub nested_calls: u64,
    /// Returns seen with no call in flight (a call begun before attach; the second return of
    /// a tail call), ignored.
    #[serde(default)]
    pub orphan_returns: u64,
    /// Allocations inside calls that found no room in the per-function site table: counted in
    /// the calls, missing from `top_sites` (raise MEMMON_MAX_SITES).
    #[serde(default)]
    pub site_table_full: u64,
    /// Allocations and frees by the calls' threads during the calls, and the blocks still
    /// live at return.
    pub allocations: u64,
    pub frees: u64,
    pub freed_bytes: u64,
    pub net_allocations: u64,
    /// Calls that allocated more than MEMMON_HIGH_USAGE_THRESHOLD_MB, and calls longer than
    /// MEMMON_SLOW_CALL_SECONDS.
    pub high_usage_calls: u64,
    pub slow_calls: u64,
    /// Allocated during a call and still live at its return.
    pub net_bytes: BytesPerCall,
    pub allocated_bytes: BytesPerCall,
    pub duration_seconds: SecondsPerCall,
    /// How many of the latest calls the percentiles are over.
    pub percentile_calls: u64,
    /// The stacks allocating inside the function, by bytes allocated (memory-summary only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_sites: Vec<FunctionSite>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FunctionSite {
    pub site: Site,
    pub allocated_bytes: u64,
    pub allocations: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeakIndicator {
    /// "site_growth", "rss_growth", "heap_growth" or "high_usage".
    pub kind: String,
    /// "info", "warning" or "critical".
    pub severity: String,
    pub pid: u32,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub growth_bytes: i64,
    pub growth_bytes_per_second: f64,
    pub growth_ratio: f64,
    pub window_seconds: f64,
    pub checks: u32,
    pub summary: String,
    /// The allocation site; null for process-wide indicators.
    pub site: Option<Site>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Leaks {
    pub leak_indicators: Vec<LeakIndicator>,
    pub leak_detection_enabled: bool,
    pub leak_checks: u64,
    pub last_check_age_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteSummary {
    pub site: Site,
    pub pid: u32,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub allocated_bytes: u64,
    pub allocations: u64,
}

/// Live memory of one group (a size class or a module).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub name: String,
    pub live_bytes: u64,
    pub live_allocations: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    pub alive: bool,
    pub rss_bytes: u64,
    pub virtual_bytes: u64,
    pub peak_rss_bytes: u64,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub brk_heap_bytes: u64,
    pub program_mapped_bytes: u64,
    pub allocator_mapped_bytes: u64,
    /// Tracked blocks of images it exec'ed away (not in `live_bytes`; never leaks).
    #[serde(default)]
    pub discarded_at_exec_bytes: u64,
    #[serde(default)]
    pub discarded_at_exec_blocks: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemorySummary {
    /// Live tracked allocations (the original API's name).
    pub total_objects: u64,
    pub live_bytes: u64,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub virtual_bytes: u64,
    /// By live bytes, descending.
    pub top_sites: Vec<SiteSummary>,
    /// Live blocks by size (power-of-two classes), exact.
    pub by_size_class: Vec<Bucket>,
    /// Live bytes by the module of the allocating function.
    pub by_module: Vec<Bucket>,
    pub processes: Vec<ProcessSummary>,
    pub events_lost: BTreeMap<String, u64>,
    /// Whether the numbers above are whole, from the events lost.
    #[serde(default)]
    pub completeness: crate::completeness::Completeness,
    pub snapshot_age_seconds: f64,
    /// Per-call memory of the tracked functions, with the stacks allocating inside each.
    #[serde(default)]
    pub tracked_functions: Vec<TrackedFunction>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealthCheck {
    pub name: String,
    /// "ok", "degraded" or "failed".
    pub status: String,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Health {
    /// "healthy", "degraded" or "failed"; the command's exit code is 0, 1 or 2.
    pub status: String,
    pub checks: Vec<HealthCheck>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// A profiling session (`start-profiling`, `stop-profiling`, `status`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProfileInfo {
    pub profile_id: String,
    /// "running", "finished", "truncated" (size cap) or "failed" (could not write).
    pub state: String,
    /// Why it ended; null while running.
    pub reason: Option<String>,
    /// The gzipped pprof file (`<profile_id>.pb.gz`).
    pub file: String,
    pub pids: Vec<u32>,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// The duration asked for; the session ends by itself after it.
    pub duration_seconds: f64,
    /// Time since the start (running) or the window the file covers (ended).
    pub elapsed_seconds: f64,
    /// The file as last written, and how many times it was.
    pub size_bytes: u64,
    pub checkpoints: u64,
    /// In the window as last written: allocated, and still live at its end.
    pub allocated_bytes: u64,
    pub allocations: u64,
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// Execs of its processes during the window (the old images' allocations are not in it).
    #[serde(default)]
    pub execs: Vec<crate::profiles::meta::ExecMeta>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profiles {
    pub profiles: Vec<ProfileInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemovedProfile {
    pub file: String,
    pub size_bytes: u64,
    pub age_days: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SkippedEntry {
    pub file: String,
    pub reason: String,
}

/// What `cleanup-profiles` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cleanup {
    pub directory: String,
    pub older_than_days: f64,
    pub removed: Vec<RemovedProfile>,
    pub kept: u64,
    pub skipped: Vec<SkippedEntry>,
}
