//! Loading memmon's kernel programs, attaching them to target processes, and reading their maps.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::AsFd as _,
    num::NonZeroU32,
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, PerCpuArray, Queue},
    programs::{
        TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};
use memmon_common::{
    DEFAULT_MAX_LIVE_ALLOCATIONS, DEFAULT_MAX_SITES, Fork, LiveAlloc, LiveKey, Loss, ProcessMemory,
    SiteStats, StackTrace, Truncation, probe_hits, python::PythonProcess, unwind::DEFAULT_TABLE_MAX_MB,
};

use crate::{
    allocator::{self, Allocator, ProbedObject},
    forks::{ChildExit, Forks},
    lifecycle,
    overhead::{HitCosts, HitKind, ProgramCounts, calibrate},
    process::Process,
    process::HeapExtent,
    profiles::session::LiveBlock,
    snapshot::{ProcessSample, SiteSample, Snapshot},
    python::Interpreter,
    track::{TrackConfig, TrackedFunction, Tracking},
    unwind::{UnwindStats, UnwindTables},
};

/// One allocator probe program's counts (`Tracer::probe_program_counts`).
#[derive(Clone, Copy, Debug)]
pub struct ProbeProgramCounts {
    pub name: &'static str,
    pub kind: HitKind,
    /// Hits so far, counted by the program (empty programs count none).
    pub hits: u64,
    pub stats: ProgramCounts,
}

/// The compiled kernel programs, built by build.rs.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memmon-ebpf"));

/// Table capacities; the defaults hold a million live blocks.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub max_live_allocations: u32,
    pub max_sites: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self { max_live_allocations: DEFAULT_MAX_LIVE_ALLOCATIONS, max_sites: DEFAULT_MAX_SITES }
    }
}

/// Which programs go on the probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Programs {
    /// memmon's tracking programs.
    #[default]
    Tracking,
    /// Programs that return at once, on the same sites: the cost of the traps alone
    /// (the benchmark's floor). No syscall tracepoints.
    Empty,
}

#[derive(Clone, Copy, Debug)]
pub struct TracerOptions {
    pub capacity: Capacity,
    pub programs: Programs,
    /// Move each function's probes (entry and return) past instructions the kernel would
    /// single-step, to the first one it emulates, where provably equivalent (see `probe_site`).
    pub optimize_probe_sites: bool,
    /// Kernel memory for unwind rows (`MEMMON_UNWIND_TABLE_MAX_MB`).
    pub unwind_table_max_mb: u32,
    /// Attach the allocator probes at once (the exact tier). False: only the memory syscalls'
    /// tracepoints, until [`Tracer::attach_allocator_probes`] (the always-on tier's windows).
    pub allocator_probes: bool,
    /// Measure the cost of a probe hit before attaching (the agent's overhead estimate).
    pub calibrate: bool,
    /// Walk CPython targets' Python frames (false: their stacks are native only; the
    /// benchmark's baseline for the cost of the Python walk).
    pub python_frames: bool,
    /// Recall memoized stack walks (`memo` in memmon-ebpf). False: every allocation walks its
    /// stack, the benchmarks' baseline for what a walk costs (CPython targets are never
    /// memoized, so their native-only baseline must not be either).
    pub memoize_walks: bool,
    /// Follow the targets' forks (`forks`), at most `max_followed` children at once.
    pub follow_forks: bool,
    pub max_followed: u32,
}

impl Default for TracerOptions {
    fn default() -> Self {
        Self {
            capacity: Capacity::default(),
            programs: Programs::Tracking,
            optimize_probe_sites: true,
            unwind_table_max_mb: DEFAULT_TABLE_MAX_MB,
            allocator_probes: true,
            calibrate: false,
            python_frames: true,
            memoize_walks: true,
            follow_forks: false,
            max_followed: crate::forks::DEFAULT_MAX_FOLLOWED,
        }
    }
}

/// A process memmon is attached to.
#[derive(Clone, Debug)]
pub struct Target {
    pub process: Process,
    pub allocator: Allocator,
    /// The [heap] segment when memmon attached; the kernel reports the break after the next brk.
    pub heap_at_attach: HeapExtent,
    /// Its Python interpreter, if any (Python frames are walked for CPython 3.11).
    pub python: Interpreter,
    /// The images it exec'ed since attach, and what went with each.
    pub history: lifecycle::History,
    /// The target that forked it, for a followed child (`forks`).
    pub parent: Option<u32>,
}

/// One uprobe on a target, with the file it is on.
struct ProbeLink {
    pid: u32,
    /// (device, inode) of the probed object (`ProbedObject::identity`).
    object: (u64, u64),
    program: &'static str,
    link: UProbeLink,
}

fn detach_links_in_background(links: Vec<ProbeLink>) {
    calibrate::detach_in_background(links.into_iter().map(|probe| probe.link).collect());
}

/// Attached probes and their maps. Dropping it detaches everything.
pub struct Tracer {
    ebpf: Ebpf,
    targets: Vec<Target>,
    /// Stacks never change meaning once interned, so each is read from the kernel once:
    /// (pid, image, frames, truncation).
    stacks: HashMap<u64, (u32, u32, Arc<Vec<u64>>, Truncation)>,
    options: TracerOptions,
    unwind: UnwindTables,
    /// Per target, the kernel's count of its code mappings when its tables were last synced.
    code_maps_seen: HashMap<u32, u64>,
    /// The allocator probes while attached (None: not attached).
    allocator_links: Option<Vec<ProbeLink>>,
    /// What a probe hit costs here, when calibrated.
    hit_costs: Option<HitCosts>,
    /// Tracked functions (`--track-function`), if any.
    tracking: Option<Tracking>,
    /// Objects probed because a target mapped them after attach, not yet announced.
    probed_later: Vec<(u32, ProbedObject)>,
    /// What became of the targets' forks.
    forks: Forks,
}

impl Tracer {
    /// Validates every pid, finds each allocator, loads the programs and attaches them.
    /// Nothing stays attached if any step fails.
    pub fn attach(pids: &[u32], options: TracerOptions) -> Result<Self> {
        Self::attach_tracking(pids, options, &TrackConfig::none())
    }

    /// `attach`, and probes on the functions `track` names in every process (per-call memory,
    /// `track`). A function that cannot be found fails the attach before anything is loaded.
    pub fn attach_tracking(pids: &[u32], options: TracerOptions, track: &TrackConfig) -> Result<Self> {
        let processes = preflight(pids)?;
        let mut found = Vec::new();
        for process in processes {
            let allocator = Allocator::find(&process, options.optimize_probe_sites).map_err(|err| gone_hint(&process, err))?;
            found.push((process, allocator));
        }
        let processes: Vec<&Process> = found.iter().map(|(process, _)| process).collect();
        let functions = crate::track::locate(&processes, &track.specs, options.optimize_probe_sites)?;
        Self::attach_all(found, options, functions, track)
    }

    /// Loads the programs and attaches them to processes whose allocator the caller found
    /// (`memmon run` finds it before the dynamic loader has mapped it; see `launch`).
    pub fn attach_found(found: Vec<(Process, Allocator)>, options: TracerOptions) -> Result<Self> {
        Self::attach_all(found, options, Vec::new(), &TrackConfig::none())
    }

    fn attach_all(
        found: Vec<(Process, Allocator)>,
        options: TracerOptions,
        functions: Vec<TrackedFunction>,
        track: &TrackConfig,
    ) -> Result<Self> {
        let capacity = options.capacity;
        let tracking = !functions.is_empty() && options.programs == Programs::Tracking;
        // The tracking tables take kernel memory only when something is tracked.
        let (track_threads, track_sites, track_ring) = match tracking {
            true => (memmon_common::MAX_PENDING_CALLS, capacity.max_sites, memmon_common::track::EVENT_RING_BYTES),
            false => (1, 1, 4096),
        };
        raise_memlock_limit();
        let (unwind_rows, unwind_pages) = crate::unwind::capacities(options.unwind_table_max_mb);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("UNWIND_ROWS", unwind_rows)
            .map_max_entries("UNWIND_PAGES", unwind_pages)
            .map_max_entries("LIVE", capacity.max_live_allocations)
            .map_max_entries("SITES", capacity.max_sites)
            .map_max_entries("STACKS", capacity.max_sites)
            .map_max_entries("MAPPING_SITES", capacity.max_sites)
            .map_max_entries("TRACK_CALLS", track_threads)
            .map_max_entries("TRACK_SITES", track_sites)
            .map_max_entries("TRACK_EVENTS", track_ring)
            .override_global("MEMOIZE_WALKS", &u32::from(options.memoize_walks), true)
            .load(PROGRAMS)
            .map_err(|err| privilege_hint(anyhow!(err).context("loading memmon's eBPF programs")))?;
        let mut names: Vec<&str> = match options.programs {
            Programs::Tracking => allocator::entry_programs().chain(["alloc_exit"]).collect(),
            Programs::Empty => vec!["empty_enter", "empty_exit"],
        };
        if tracking {
            names.extend(["track_enter", "track_exit"]);
        }
        names.sort_unstable();
        names.dedup();
        for name in names {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("eBPF program {name} missing from the object"))?
                .try_into()?;
            if program.fd().is_err() {
                program.load().with_context(|| format!("verifier rejected {name}"))?;
            }
        }
        // Before any target is probed, so that calibrating delays nothing it would count.
        let hit_costs = match options.calibrate {
            true => calibrate::measure(&mut ebpf)
                .map_err(|err| log::warn!("calibrating the cost of a probe hit failed: {err:#}; the overhead estimate stays 0"))
                .ok(),
            false => None,
        };
        let mut unwind = UnwindTables::new(&mut ebpf, options.unwind_table_max_mb)?;
        let mut targets = Vec::new();
        for (process, allocator) in found {
            let mut table: BpfHashMap<_, u32, ProcessMemory> =
                BpfHashMap::try_from(ebpf.map_mut("TARGETS").context("TARGETS map")?)?;
            table.insert(process.pid, ProcessMemory::default(), 0)?;
            unwind
                .sync_process(process.pid)
                .map_err(|err| gone_hint(&process, err))
                .with_context(|| format!("building unwind tables for pid {}", process.pid))?;
            let python = if options.python_frames { register_python(&mut ebpf, process.pid)? } else { Interpreter::None };
            let heap_at_attach = process.heap_extent();
            targets.push(Target { process, allocator, heap_at_attach, python, history: lifecycle::History::default(), parent: None });
        }
        let mut links = Vec::new();
        if options.allocator_probes {
            for target in &targets {
                links.extend(attach_allocator(&mut ebpf, &target.process, &target.allocator.objects, options.programs)?);
            }
        }
        if options.programs == Programs::Tracking {
            attach_memory_syscalls(&mut ebpf)?;
            attach_lifecycle(&mut ebpf)?;
            if options.follow_forks {
                attach_fork_follower(&mut ebpf)?;
            }
        }
        let forks = Forks::new(options.follow_forks, options.max_followed);
        let tracking = match tracking {
            true => Some(attach_tracked_functions(&mut ebpf, &targets, functions, track)?),
            false => None,
        };
        let mut armed: Array<_, u32> = Array::try_from(ebpf.map_mut("ARMED").context("ARMED map")?)?;
        armed.set(0, 1, 0)?;
        let code_maps_seen = targets.iter().map(|t: &Target| (t.process.pid, 0)).collect();
        let allocator_links = options.allocator_probes.then_some(links);
        Ok(Self { ebpf, targets, stacks: HashMap::new(), options, unwind, code_maps_seen, allocator_links, hit_costs, tracking, probed_later: Vec::new(), forks })
    }

    /// Whether the allocator probes are attached (always in the exact tier; during capture
    /// windows in the always-on tier).
    pub fn allocator_probes_attached(&self) -> bool {
        self.allocator_links.is_some()
    }

    /// Attaches the allocator probes to every live target, on an empty heap view: blocks
    /// allocated before now are unknown, and their frees count as untracked frees. All or
    /// nothing.
    pub fn attach_allocator_probes(&mut self) -> Result<()> {
        if self.allocator_links.is_some() {
            return Ok(());
        }
        self.forget_heap_tracking()?;
        let mut links = Vec::new();
        for target in self.targets.iter().filter(|t| t.process.is_alive()) {
            match attach_allocator(&mut self.ebpf, &target.process, &target.allocator.objects, self.options.programs) {
                Ok(attached) => links.extend(attached),
                Err(err) => {
                    detach_links_in_background(links);
                    return Err(err);
                }
            }
        }
        self.allocator_links = Some(links);
        Ok(())
    }

    /// Detaches the allocator probes and forgets the heap they tracked: once frees can no
    /// longer be seen, a block still live would read as a leak forever. Detaching waits for
    /// the kernel, so it finishes on a thread of its own.
    pub fn detach_allocator_probes(&mut self) -> Result<()> {
        let Some(links) = self.allocator_links.take() else { return Ok(()) };
        detach_links_in_background(links);
        self.forget_heap_tracking()
    }

    /// Empties the live table, the heap sites and the calls in flight (program mappings, which
    /// the syscall tracepoints keep following, stay).
    fn forget_heap_tracking(&mut self) -> Result<()> {
        let mut live: BpfHashMap<_, LiveKey, LiveAlloc> =
            BpfHashMap::try_from(self.ebpf.map_mut("LIVE").context("LIVE map")?)?;
        let keys: Vec<LiveKey> = live.keys().filter_map(|key| key.ok()).collect();
        for key in keys {
            let _ = live.remove(&key);
        }
        let mut sites: BpfHashMap<_, u64, SiteStats> =
            BpfHashMap::try_from(self.ebpf.map_mut("SITES").context("SITES map")?)?;
        let keys: Vec<u64> = sites.keys().filter_map(|key| key.ok()).collect();
        for key in keys {
            let _ = sites.remove(&key);
        }
        let pending = self.ebpf.map_mut("PENDING").context("PENDING map")?;
        let mut pending: BpfHashMap<_, u64, memmon_common::PendingCall> = BpfHashMap::try_from(pending)?;
        let keys: Vec<u64> = pending.keys().filter_map(|key| key.ok()).collect();
        for key in keys {
            let _ = pending.remove(&key);
        }
        Ok(())
    }

    /// The cost of a probe hit on this machine, if calibrated (see `overhead::calibrate`).
    pub fn hit_costs(&self) -> Option<HitCosts> {
        self.hit_costs
    }

    /// Each attached allocator probe program: how its hits are charged, its hits so far
    /// (counted by the program), and its BPF run-time statistics (which count only while on).
    pub fn probe_program_counts(&self) -> Vec<ProbeProgramCounts> {
        let mut programs: Vec<(&'static str, HitKind)> = Vec::new();
        let stepped: Vec<&str> = self
            .targets
            .iter()
            .flat_map(|t| t.allocator.single_stepped().map(|site| site.function.entry_program))
            .collect();
        for ProbeLink { program, .. } in self.allocator_links.iter().flatten() {
            if programs.iter().any(|(name, _)| name == program) {
                continue;
            }
            let kind = match *program {
                "alloc_exit" | "empty_exit" => HitKind::Return,
                name if stepped.contains(&name) => HitKind::EntrySingleStepped,
                _ => HitKind::EntryEmulated,
            };
            programs.push((program, kind));
        }
        let hits: Option<PerCpuArray<_, u64>> = self.ebpf.map("PROBE_HITS").and_then(|map| PerCpuArray::try_from(map).ok());
        programs
            .into_iter()
            .filter_map(|(name, kind)| {
                let program: &UProbe = self.ebpf.program(name)?.try_into().ok()?;
                let info = program.info().ok()?;
                let hits = probe_hits::slot(name)
                    .and_then(|slot| hits.as_ref()?.get(&slot, 0).ok())
                    .map_or(0, |per_cpu| per_cpu.iter().sum());
                let stats = ProgramCounts { runs: info.run_count(), run_time_ns: info.run_time().as_nanos() as u64 };
                Some(ProbeProgramCounts { name, kind, hits, stats })
            })
            .collect()
    }

    /// The tracked functions (empty when none is).
    pub fn tracked_functions(&self) -> &[TrackedFunction] {
        self.tracking.as_ref().map_or(&[], |t| t.functions())
    }

    /// Traces `process` with `allocator`: a new target (a followed fork), or a target's new
    /// image (after an exec). Objects already probed in the process stay probed (uprobes live
    /// on inodes and survive the exec), new ones are attached, and those the image no longer
    /// uses are detached. Blocks count from now on.
    pub fn add_target(&mut self, process: Process, allocator: Allocator) -> Result<()> {
        let pid = process.pid;
        if !self.targets.iter().any(|t| t.process.pid == pid) {
            let mut table: BpfHashMap<_, u32, ProcessMemory> =
                BpfHashMap::try_from(self.ebpf.map_mut("TARGETS").context("TARGETS map")?)?;
            table.insert(pid, ProcessMemory::default(), 0)?;
        }
        self.unwind.sync_process(pid).map_err(|err| gone_hint(&process, err))?;
        self.code_maps_seen.insert(pid, 0);
        if let Some(links) = self.allocator_links.as_mut() {
            let wanted: Vec<(u64, u64)> = allocator.objects.iter().map(|o| o.identity(&process)).collect();
            let probed: Vec<(u64, u64)> = links.iter().filter(|l| l.pid == pid).map(|l| l.object).collect();
            let fresh: Vec<ProbedObject> =
                allocator.objects.iter().zip(&wanted).filter(|(_, id)| !probed.contains(id)).map(|(o, _)| o.clone()).collect();
            let attached = attach_allocator(&mut self.ebpf, &process, &fresh, self.options.programs)?;
            let (stale, kept): (Vec<ProbeLink>, Vec<ProbeLink>) =
                links.drain(..).partition(|l| l.pid == pid && !wanted.contains(&l.object));
            *links = kept;
            links.extend(attached);
            detach_links_in_background(stale);
        }
        let heap_at_attach = process.heap_extent();
        match self.targets.iter_mut().find(|t| t.process.pid == pid) {
            Some(target) => {
                target.allocator = allocator;
                target.process = process;
            }
            None => {
                let python =
                    if self.options.python_frames { register_python(&mut self.ebpf, pid)? } else { Interpreter::None };
                self.unwind.invalidate_memos(); // walks of a Python process are not memoized
                let history = lifecycle::History::default();
                self.targets.push(Target { process, allocator, heap_at_attach, python, history, parent: None })
            }
        }
        Ok(())
    }

    /// `pid` replaced its image (execve; the kernel bumped its image number at
    /// sched_process_exec): the old image's blocks and mappings went with its address space,
    /// so they leave the kernel tables (their bytes counted as discarded at exec), its sites
    /// read as holding nothing from the next snapshot on, and its name, heap, code mappings
    /// and interpreter are read again. The caller finds the new image's allocator (`launch`
    /// before its loader has run, `follow_execs` after) and passes it to `add_target`.
    pub fn image_replaced(&mut self, pid: u32) -> Result<lifecycle::Exec> {
        let image = self.process_memory(pid)?.execs;
        let (discarded_bytes, discarded_blocks) = drop_other_images(&mut self.ebpf, "LIVE", pid, image)?;
        drop_other_images(&mut self.ebpf, "MAPPINGS", pid, image)?;
        let Some(target) = self.targets.iter_mut().find(|t| t.process.pid == pid) else {
            bail!("pid {pid} is not traced");
        };
        let from_comm = target.process.comm.clone();
        if let Ok(process) = target.process.reopen() {
            target.process = process;
        }
        target.heap_at_attach = target.process.heap_extent();
        let exec = lifecycle::Exec {
            image,
            seen_at: jiff::Timestamp::now().to_string(),
            from_comm,
            to_comm: target.process.comm.clone(),
            discarded_bytes,
            discarded_blocks,
            allocator: String::new(),
        };
        target.history.record(exec.clone());
        self.unwind.sync_process(pid)?;
        self.code_maps_seen.insert(pid, 0);
        // The old image's interpreter is gone with it; the new one may have its own.
        let mut python: BpfHashMap<_, u32, PythonProcess> =
            BpfHashMap::try_from(self.ebpf.map_mut("PYTHON_TARGETS").context("PYTHON_TARGETS map")?)?;
        let _ = python.remove(&pid);
        let interpreter =
            if self.options.python_frames { register_python(&mut self.ebpf, pid)? } else { Interpreter::None };
        if let Some(target) = self.targets.iter_mut().find(|t| t.process.pid == pid) {
            target.python = interpreter;
        }
        self.unwind.invalidate_memos(); // walks of a Python process are not memoized
        Ok(exec)
    }

    /// Follows the execs of every live target since the last look (the agent's path; `memmon
    /// run` sees them at its ptrace exec stop): drops the old image (`image_replaced`), finds
    /// the new image's allocator — among its mappings, or, while its loader still runs, among
    /// the objects the loader will map — and probes it. One map read per target when nothing
    /// happened.
    pub fn follow_execs(&mut self) -> Result<Vec<(u32, lifecycle::Exec)>> {
        let mut replaced = Vec::new();
        // Exited targets too: one that exec'ed and ended between two looks still has the old
        // image's blocks in the tables.
        for target in &self.targets {
            let pid = target.process.pid;
            if self.process_memory(pid).is_ok_and(|memory| memory.execs != target.history.image) {
                replaced.push(pid);
            }
        }
        let mut execs = Vec::new();
        for pid in replaced {
            let mut exec = self.image_replaced(pid)?;
            let process = self.targets.iter().find(|t| t.process.pid == pid).map(|t| t.process.clone()).expect("traced");
            if !process.is_alive() {
                exec.allocator = "the new image exited before memmon looked at it".into();
                execs.push((pid, exec));
                continue;
            }
            let found = Allocator::find(&process, self.options.optimize_probe_sites).or_else(|mapped| {
                crate::launch::objects::image(pid)
                    .and_then(|image| {
                        let names: Vec<&str> = image.objects.iter().map(String::as_str).collect();
                        Allocator::find_among(&process, &names, Some(&image.exe), self.options.optimize_probe_sites)
                    })
                    .map_err(|_| mapped)
            });
            match found {
                Ok(allocator) => {
                    exec.allocator = format!("{} allocator in {}; probing {}", allocator.name, allocator.object(), allocator.describe());
                    self.add_target(process, allocator)?;
                }
                Err(err) => {
                    // Its old probes stay (harmless: they fire only where it maps those files).
                    exec.allocator = format!("no allocator probed in the new image: {err:#}");
                    log::warn!("pid {pid}: {}", exec.allocator);
                }
            }
            if let Some(last) = self.targets.iter_mut().find(|t| t.process.pid == pid).and_then(|t| t.history.execs.last_mut()) {
                last.allocator = exec.allocator.clone();
            }
            execs.push((pid, exec));
        }
        Ok(execs)
    }

    /// What became of the targets' forks so far.
    pub fn forks(&self) -> Forks {
        let mut forks = self.forks.clone();
        forks.alive = self.targets.iter().filter(|t| t.parent.is_some()).count() as u64;
        forks
    }

    /// Attaches to the children the targets forked since the last look (`--follow-forks`):
    /// each becomes a target, with the parent's allocator when it runs the parent's program.
    /// Returns the children followed, with their parents.
    pub fn follow_forks(&mut self) -> Result<Vec<(u32, u32)>> {
        if !self.options.follow_forks {
            return Ok(Vec::new());
        }
        let mut queue: Queue<_, Fork> = Queue::try_from(self.ebpf.map_mut("FORKS").context("FORKS map")?)?;
        let mut forks = Vec::new();
        while let Ok(fork) = queue.pop(0) {
            forks.push(fork);
        }
        let mut followed = Vec::new();
        for Fork { child, parent } in forks {
            self.forks.seen += 1;
            let traced = self.targets.iter().filter(|t| t.parent.is_some()).count();
            if traced >= self.options.max_followed as usize {
                self.forks.over_limit += 1;
                continue;
            }
            let process = match Process::open(child) {
                Ok(process) => process,
                Err(err) => {
                    log::debug!("pid {child}, forked by pid {parent}, is not followed: {err:#}");
                    self.forks.exited_before_followed += 1;
                    continue;
                }
            };
            match self.follow_child(process.clone(), parent) {
                Ok(()) => {
                    self.forks.followed += 1;
                    followed.push((child, parent));
                }
                // Ended while memmon attached: the common end of a fork storm's child.
                Err(_) if process.exiting() => {
                    self.forks.exited_before_followed += 1;
                }
                Err(err) => {
                    self.forks.failed += 1;
                    log::warn!("pid {child}, forked by pid {parent}, is not followed: {err:#}");
                }
            }
        }
        Ok(followed)
    }

    fn follow_child(&mut self, process: Process, parent: u32) -> Result<()> {
        let pid = process.pid;
        if self.targets.iter().any(|t| t.process.pid == pid) {
            bail!("pid {pid} still names a target that exited (kept for its final numbers)");
        }
        let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let inherited = self
            .targets
            .iter()
            .find(|t| t.process.pid == parent)
            .filter(|_| exe(pid).is_some() && exe(pid) == exe(parent))
            .map(|t| t.allocator.clone());
        let allocator = match inherited {
            Some(allocator) => allocator,
            None => Allocator::find(&process, self.options.optimize_probe_sites)?,
        };
        if let Err(err) = self.add_target(process, allocator) {
            // Nothing half-done: whatever add_target got to is undone.
            self.forget_target(pid);
            return Err(err);
        }
        if let Some(target) = self.targets.iter_mut().find(|t| t.process.pid == pid) {
            target.parent = Some(parent);
        }
        Ok(())
    }

    /// Retires the followed children that exited: their probes are detached and their entries
    /// leave the kernel tables (live blocks, mappings, sites, stacks, unwind and interpreter
    /// entries). Returns what each still held.
    pub fn retire_exited_children(&mut self) -> Result<Vec<ChildExit>> {
        let gone: Vec<(u32, u32, String)> = self
            .targets
            .iter()
            .filter(|t| t.parent.is_some() && !t.process.is_alive())
            .map(|t| (t.process.pid, t.parent.unwrap_or(0), t.process.comm.clone()))
            .collect();
        if gone.is_empty() {
            return Ok(Vec::new());
        }
        let pids: Vec<u32> = gone.iter().map(|(pid, _, _)| *pid).collect();
        let held = drop_blocks_of(&mut self.ebpf, "LIVE", &pids)?;
        drop_blocks_of(&mut self.ebpf, "MAPPINGS", &pids)?;
        self.drop_sites_of(&pids)?;
        let mut exits = Vec::new();
        for (pid, parent, comm) in gone {
            self.forget_target(pid);
            let (held_bytes, held_blocks) = held.get(&pid).copied().unwrap_or((0, 0));
            let exit = ChildExit { pid, parent, comm, held_bytes, held_blocks };
            self.forks.record_exit(exit.clone());
            exits.push(exit);
        }
        Ok(exits)
    }

    /// Drops `pid` from the tracer and its per-process kernel entries (not its blocks).
    fn forget_target(&mut self, pid: u32) {
        if let Some(links) = self.allocator_links.as_mut() {
            let (theirs, kept): (Vec<ProbeLink>, Vec<ProbeLink>) = links.drain(..).partition(|l| l.pid == pid);
            *links = kept;
            detach_links_in_background(theirs);
        }
        if let Some(Ok(mut table)) = self.ebpf.map_mut("TARGETS").map(BpfHashMap::<_, u32, ProcessMemory>::try_from) {
            let _ = table.remove(&pid);
        }
        if let Some(Ok(mut table)) = self.ebpf.map_mut("PYTHON_TARGETS").map(BpfHashMap::<_, u32, PythonProcess>::try_from) {
            let _ = table.remove(&pid);
        }
        self.unwind.forget_process(pid);
        self.code_maps_seen.remove(&pid);
        self.targets.retain(|t| t.process.pid != pid);
    }

    /// Removes the heap and mapping sites of `pids`, and their stacks.
    fn drop_sites_of(&mut self, pids: &[u32]) -> Result<()> {
        // Before the stacks go: a memoized walk must not hand out a removed site.
        self.unwind.invalidate_memos();
        let mut ids: Vec<u64> = Vec::new();
        {
            let stacks: BpfHashMap<_, u64, StackTrace> =
                BpfHashMap::try_from(self.ebpf.map("STACKS").context("STACKS map")?)?;
            for map in ["SITES", "MAPPING_SITES"] {
                let sites: BpfHashMap<_, u64, SiteStats> =
                    BpfHashMap::try_from(self.ebpf.map(map).with_context(|| format!("{map} map"))?)?;
                for id in sites.keys().filter_map(|id| id.ok()) {
                    let pid = match self.stacks.get(&id) {
                        Some((pid, ..)) => *pid,
                        None => stacks.get(&id, 0).map_or(0, |stack| stack.tgid),
                    };
                    if pids.contains(&pid) {
                        ids.push(id);
                    }
                }
            }
        }
        for map in ["SITES", "MAPPING_SITES"] {
            let mut sites: BpfHashMap<_, u64, SiteStats> =
                BpfHashMap::try_from(self.ebpf.map_mut(map).with_context(|| format!("{map} map"))?)?;
            for id in &ids {
                let _ = sites.remove(id);
            }
        }
        let mut stacks: BpfHashMap<_, u64, StackTrace> =
            BpfHashMap::try_from(self.ebpf.map_mut("STACKS").context("STACKS map")?)?;
        for id in &ids {
            let _ = stacks.remove(id);
            self.stacks.remove(id);
        }
        Ok(())
    }

    /// The kernel's per-process record of `pid`.
    fn process_memory(&self, pid: u32) -> Result<ProcessMemory> {
        let table: BpfHashMap<_, u32, ProcessMemory> = BpfHashMap::try_from(self.ebpf.map("TARGETS").context("TARGETS map")?)?;
        Ok(table.get(&pid, 0)?)
    }

    /// Rebuilds the unwind view of every target that mapped new code (dlopen) since the last
    /// look, and probes what the new objects bring: an allocator of their own, a C++ runtime.
    /// The kernel counts executable mmaps per process, so this is one map read when nothing
    /// changed. The objects newly probed wait in [`Tracer::take_probed_later`].
    pub fn refresh_code_mappings(&mut self) -> Result<()> {
        let processes: BpfHashMap<_, u32, ProcessMemory> =
            BpfHashMap::try_from(self.ebpf.map("TARGETS").context("TARGETS map")?)?;
        let mut changed = Vec::new();
        for target in &self.targets {
            let pid = target.process.pid;
            if !target.process.is_alive() {
                // Its code mappings go; a new process reusing the pid is not this one.
                if self.code_maps_seen.remove(&pid).is_some() {
                    self.unwind.forget_process(pid);
                }
                continue;
            }
            let count = processes.get(&pid, 0).map_or(0, |memory| memory.code_maps);
            if self.code_maps_seen.get(&pid) != Some(&count) {
                changed.push((pid, count));
            }
        }
        for (pid, count) in changed {
            match self.unwind.sync_process(pid) {
                Ok(()) => {
                    self.code_maps_seen.insert(pid, count);
                }
                Err(err) => log::debug!("pid {pid}: code mappings not refreshed: {err:#}"),
            }
            match self.probe_new_objects(pid) {
                Ok(objects) => self.probed_later.extend(objects.into_iter().map(|object| (pid, object))),
                // Examined once: a warning, not a retry at every tick.
                Err(err) => log::warn!("pid {pid}: the objects it mapped are not probed: {err:#}"),
            }
        }
        Ok(())
    }

    /// The objects probed since the last call because a target mapped them after attach, by pid.
    pub fn take_probed_later(&mut self) -> Vec<(u32, ProbedObject)> {
        std::mem::take(&mut self.probed_later)
    }

    /// Attaches the allocator probes to what `pid` mapped since its allocator was found (while
    /// the probes are attached; otherwise at the next capture window, with the rest).
    fn probe_new_objects(&mut self, pid: u32) -> Result<Vec<ProbedObject>> {
        let optimize = self.options.optimize_probe_sites;
        let Some(target) = self.targets.iter_mut().find(|t| t.process.pid == pid) else { return Ok(Vec::new()) };
        let fresh = target.allocator.examine_new_objects(&target.process, optimize)?;
        if fresh.is_empty() {
            return Ok(fresh);
        }
        let process = target.process.clone();
        if let Some(links) = self.allocator_links.as_mut() {
            match attach_allocator(&mut self.ebpf, &process, &fresh, self.options.programs) {
                Ok(attached) => links.extend(attached),
                Err(err) => {
                    let target = self.targets.iter_mut().find(|t| t.process.pid == pid).expect("found above");
                    target.allocator.objects.truncate(target.allocator.objects.len() - fresh.len());
                    return Err(err);
                }
            }
        }
        Ok(fresh)
    }

    /// The unwind tables' figures, for `status` and `/metrics`.
    pub fn unwind_stats(&self) -> UnwindStats {
        self.unwind.stats()
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn options(&self) -> TracerOptions {
        self.options
    }

    /// Reads every site's counters, the per-process memory and the loss counters.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        self.refresh_code_mappings()?;
        let sites = self.site_samples("SITES")?;
        let mapping_sites = self.site_samples("MAPPING_SITES")?;
        let processes: BpfHashMap<_, u32, ProcessMemory> =
            BpfHashMap::try_from(self.ebpf.map("TARGETS").context("TARGETS map")?)?;
        let processes = self
            .targets
            .iter()
            .map(|target| ProcessSample {
                pid: target.process.pid,
                memory: processes.get(&target.process.pid, 0).unwrap_or_default(),
                heap_at_attach: target.heap_at_attach,
            })
            .collect();
        let histogram: Array<_, u64> = Array::try_from(self.ebpf.map("SIZE_HISTOGRAM").context("SIZE_HISTOGRAM map")?)?;
        let size_buckets = histogram.iter().collect::<Result<Vec<u64>, _>>()?;
        let size_sum = sites.iter().map(|s| s.stats.alloc_bytes).sum();
        let functions = match &self.tracking {
            Some(tracking) => tracking.sample(&self.ebpf)?,
            None => Vec::new(),
        };
        Ok(Snapshot {
            functions,
            sites,
            mapping_sites,
            processes,
            size_buckets,
            size_sum,
            taken_at_ns: crate::snapshot::monotonic_ns(),
            losses: read_losses(&self.ebpf)?,
        })
    }

    /// Sizes of the live tracked blocks of every target, read from the live table (one pass;
    /// for on-demand summaries, not for every snapshot).
    pub fn live_block_sizes(&self) -> Result<Vec<u64>> {
        Ok(self.live_blocks(|_| true)?.into_iter().map(|block| block.size).collect())
    }

    /// The live tracked blocks allocated at or after `since_ns` (CLOCK_MONOTONIC): what a
    /// profiling session still holds from its window.
    pub fn live_blocks_born_since(&self, since_ns: u64) -> Result<Vec<LiveBlock>> {
        self.live_blocks(|block| block.born_ns >= since_ns)
    }

    /// One pass over the live table (batched; aya's iterator where the kernel refuses batches).
    fn live_blocks(&self, keep: impl Fn(&LiveBlock) -> bool) -> Result<Vec<LiveBlock>> {
        let map = self.ebpf.map("LIVE").context("LIVE map")?;
        if let Map::HashMap(data) = map {
            let mut blocks = Vec::new();
            let batched = crate::batch::for_each_entry::<LiveKey, LiveAlloc>(data.fd().as_fd(), 8192, |key, live| {
                let block = live_block(key, live);
                if keep(&block) {
                    blocks.push(block);
                }
            });
            match batched {
                Ok(()) => return Ok(blocks),
                Err(err) => log::debug!("{err}; reading the live table entry by entry"),
            }
        }
        self.live_blocks_entry_by_entry(keep)
    }

    /// The live table read with aya's iterator, two syscalls per entry: the fallback, and the
    /// benchmark's baseline.
    pub fn live_blocks_entry_by_entry(&self, keep: impl Fn(&LiveBlock) -> bool) -> Result<Vec<LiveBlock>> {
        let live: BpfHashMap<_, LiveKey, LiveAlloc> =
            BpfHashMap::try_from(self.ebpf.map("LIVE").context("LIVE map")?)?;
        // An entry freed while we iterate is skipped.
        Ok(live.iter().filter_map(|entry| entry.ok()).map(|(key, live)| live_block(&key, &live)).filter(keep).collect())
    }

    fn site_samples(&mut self, map: &str) -> Result<Vec<SiteSample>> {
        let sites: BpfHashMap<_, u64, SiteStats> =
            BpfHashMap::try_from(self.ebpf.map(map).with_context(|| format!("{map} map"))?)?;
        let stacks: BpfHashMap<_, u64, StackTrace> =
            BpfHashMap::try_from(self.ebpf.map("STACKS").context("STACKS map")?)?;
        let current_image: HashMap<u32, u32> = self.targets.iter().map(|t| (t.process.pid, t.history.image as u32)).collect();
        let mut samples = Vec::new();
        for entry in sites.iter() {
            let (id, stats) = entry?;
            let (pid, image, frames, truncated) = match self.stacks.get(&id) {
                Some(known) => known.clone(),
                None => {
                    let known = match stacks.get(&id, 0) {
                        Ok(stack) => {
                            let depth = (stack.depth as usize).min(stack.ips.len());
                            (stack.tgid, stack.image, Arc::new(stack.ips[..depth].to_vec()), Truncation::from_raw(stack.truncated))
                        }
                        // Not stored (table full): shown as an unknown stack, never dropped.
                        Err(_) => {
                            let target = self.targets.first();
                            let pid = target.map_or(0, |t| t.process.pid);
                            (pid, target.map_or(0, |t| t.history.image as u32), Arc::new(Vec::new()), Truncation::NotStored)
                        }
                    };
                    self.stacks.insert(id, known.clone());
                    known
                }
            };
            // A site of an image the process exec'ed away holds nothing any more.
            let image_gone = current_image.get(&pid).is_some_and(|&current| current != image);
            samples.push(SiteSample { id, pid, frames, truncated, stats, image_gone });
        }
        Ok(samples)
    }
}

/// The checks that need neither the kernel nor the network: every pid names a live user
/// process, and we may load eBPF. Run first, so these errors come before any other.
pub fn preflight(pids: &[u32]) -> Result<Vec<Process>> {
    if pids.is_empty() {
        bail!("no target: pass --pid PID");
    }
    let processes = pids.iter().map(|&pid| Process::open(pid)).collect::<Result<Vec<_>>>()?;
    require_privileges()?;
    Ok(processes)
}

fn attach_allocator(ebpf: &mut Ebpf, process: &Process, objects: &[ProbedObject], programs: Programs) -> Result<Vec<ProbeLink>> {
    if objects.iter().any(|o| o.sites.iter().any(|s| s.function.returns_allocation)) {
        let policy = crate::seccomp::Policy::of(process.pid);
        if policy.mode != 0
            && let Some(refusal) = crate::seccomp::refusal(process.pid, &process.comm, policy, crate::seccomp::verdict(ebpf))
        {
            bail!(refusal);
        }
    }
    let mut links = Vec::new();
    let scope = UProbeScope::OneProcess(NonZeroU32::new(process.pid).expect("pid 0 rejected"));
    // Probes go on in the order that leaves nothing half-seen while they do (the attach of
    // each takes milliseconds, and the target runs meanwhile):
    // - returns first: a call that entered before its entry probe returns unrecorded, which
    //   the ARMED map says is no loss;
    // - then the entries that only release blocks (free), then those that release one and
    //   allocate another (realloc), then those that only allocate: each block recorded then
    //   has whatever can release it probed already, so none is freed unseen (its address,
    //   handed out again, would read as a missed free);
    // An allocating function's entry and return probes share its site, which may lie past the
    // entry: the kernel takes the return address to hijack from [rsp] when the probe hits, and
    // probe_site only moves past instructions that leave rsp and [rsp] alone.
    for pass in [AttachPass::Returns, AttachPass::Frees, AttachPass::Resizes, AttachPass::Allocates] {
        for object in objects {
            let path = process.root_path(&object.path);
            let identity = object.identity(process);
            for site in &object.sites {
                if !pass.includes(&site.function) {
                    continue;
                }
                let returns = pass == AttachPass::Returns;
                let program = match (returns, programs) {
                    (true, Programs::Tracking) => "alloc_exit",
                    (true, Programs::Empty) => "empty_exit",
                    (false, Programs::Tracking) => site.function.entry_program,
                    (false, Programs::Empty) => "empty_enter",
                };
                // An entry program finds arguments the skipped instructions moved through its
                // cookie (ProbeSite::cookie); the others read none.
                let cookie = (!returns && programs == Programs::Tracking && site.cookie() != 0).then(|| site.cookie());
                let point = UProbeAttachPoint { location: UProbeAttachLocation::AbsoluteOffset(site.file_offset), cookie };
                let probe: &mut UProbe = ebpf.program_mut(program).expect("loaded").try_into()?;
                let attached = probe
                    .attach(point, &path, scope)
                    .map_err(|err| gone_hint(process, anyhow!(err)))
                    .with_context(|| {
                        format!("attaching {program} to {} in {} (pid {})", site.function.symbol, object.path, process.pid)
                    });
                match attached.and_then(|id| Ok(probe.take_link(id)?)) {
                    Ok(link) => links.push(ProbeLink { pid: process.pid, object: identity, program, link }),
                    Err(err) => {
                        detach_links_in_background(links);
                        return Err(err);
                    }
                }
            }
        }
    }
    Ok(links)
}

/// The passes of `attach_allocator`, in order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AttachPass {
    Returns,
    Frees,
    Resizes,
    Allocates,
}

impl AttachPass {
    fn includes(self, function: &allocator::Function) -> bool {
        let (releases, allocates) = (function.releases_a_block(), function.returns_allocation);
        match self {
            AttachPass::Returns => allocates,
            AttachPass::Frees => releases && !allocates,
            AttachPass::Resizes => releases && allocates,
            AttachPass::Allocates => !releases && allocates,
        }
    }
}

/// Turns tracking on in the kernel, attaches every tracked function's return and entry probes
/// (at its probe site, the function's index as their cookie) and the thread-exit tracepoint,
/// and starts draining completed calls.
fn attach_tracked_functions(ebpf: &mut Ebpf, targets: &[Target], functions: Vec<TrackedFunction>, track: &TrackConfig) -> Result<Tracking> {
    let mut enabled: Array<_, u32> = Array::try_from(ebpf.map_mut("TRACKING").context("TRACKING map")?)?;
    enabled.set(0, 1, 0)?;
    let exit: &mut TracePoint =
        ebpf.program_mut("track_thread_exit").ok_or_else(|| anyhow!("eBPF program track_thread_exit missing"))?.try_into()?;
    exit.load().context("verifier rejected track_thread_exit")?;
    exit.attach("sched", "sched_process_exit").context("attaching to tracepoint sched:sched_process_exit")?;
    // Returns first, then entries (see attach_allocator).
    for program in ["track_exit", "track_enter"] {
        for function in &functions {
            let Some(target) = targets.iter().find(|t| t.process.pid == function.pid) else { continue };
            let process = &target.process;
            let scope = UProbeScope::OneProcess(NonZeroU32::new(process.pid).expect("pid 0 rejected"));
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(function.site.file_offset),
                cookie: Some(u64::from(function.index)),
            };
            let probe: &mut UProbe = ebpf.program_mut(program).expect("loaded").try_into()?;
            probe
                .attach(point, process.root_path(&function.object), scope)
                .map_err(|err| gone_hint(process, anyhow!(err)))
                .with_context(|| format!("attaching {program} to {} in {} (pid {})", function.symbol, function.object, process.pid))?;
        }
    }
    Tracking::start(ebpf, functions, track.thresholds)
}

/// Finds `pid`'s Python interpreter and, for a walked version, tells the kernel walker where
/// its thread states and eval loop are.
fn register_python(ebpf: &mut Ebpf, pid: u32) -> Result<Interpreter> {
    let python = crate::python::detect(pid).unwrap_or_else(|err| {
        log::warn!("pid {pid}: looking for a Python interpreter failed: {err:#}");
        Interpreter::None
    });
    if let Interpreter::Walked { process: interpreter, .. } = &python {
        let mut table: BpfHashMap<_, u32, PythonProcess> =
            BpfHashMap::try_from(ebpf.map_mut("PYTHON_TARGETS").context("PYTHON_TARGETS map")?)?;
        table.insert(pid, *interpreter, 0)?;
    }
    Ok(python)
}

/// The scheduler's exec and exit tracepoints (`lifecycle`): a target's image replaced, its
/// last thread gone.
fn attach_lifecycle(ebpf: &mut Ebpf) -> Result<()> {
    for (program, event) in [("process_exec", "sched_process_exec"), ("process_exit", "sched_process_exit")] {
        let program: &mut TracePoint =
            ebpf.program_mut(program).ok_or_else(|| anyhow!("eBPF program {program} missing"))?.try_into()?;
        program.load().with_context(|| format!("verifier rejected the {event} program"))?;
        program.attach("sched", event).with_context(|| format!("attaching to tracepoint sched:{event}"))?;
    }
    Ok(())
}

/// The fork follower (`forks`): task:task_newtask names the targets' new children.
fn attach_fork_follower(ebpf: &mut Ebpf) -> Result<()> {
    let mut enabled: Array<_, u32> = Array::try_from(ebpf.map_mut("FOLLOW_FORKS").context("FOLLOW_FORKS map")?)?;
    enabled.set(0, 1, 0)?;
    let program: &mut TracePoint =
        ebpf.program_mut("process_fork").ok_or_else(|| anyhow!("eBPF program process_fork missing"))?.try_into()?;
    program.load().context("verifier rejected the task_newtask program")?;
    program.attach("task", "task_newtask").context("attaching to tracepoint task:task_newtask")?;
    Ok(())
}

/// Removes from a block table (LIVE or MAPPINGS) every entry of `pids`; returns their bytes
/// and count by pid. One batched pass.
fn drop_blocks_of(ebpf: &mut Ebpf, table: &str, pids: &[u32]) -> Result<HashMap<u32, (u64, u64)>> {
    remove_blocks(ebpf, table, |key| pids.contains(&key.tgid))
}

/// Removes from a block table (LIVE or MAPPINGS) the entries of `pid` made in images other
/// than `image` (an exec left them behind); returns their bytes and count. One batched pass.
fn drop_other_images(ebpf: &mut Ebpf, table: &str, pid: u32, image: u64) -> Result<(u64, u64)> {
    let removed = remove_blocks(ebpf, table, |key| key.tgid == pid && u64::from(key.image) != image)?;
    Ok(removed.get(&pid).copied().unwrap_or((0, 0)))
}

/// Removes the entries of a block table (LIVE or MAPPINGS) whose key `doomed` picks; returns
/// their bytes and count by pid. One batched pass where the kernel allows it.
fn remove_blocks(ebpf: &mut Ebpf, table: &str, doomed: impl Fn(&LiveKey) -> bool) -> Result<HashMap<u32, (u64, u64)>> {
    let map = ebpf.map_mut(table).with_context(|| format!("{table} map"))?;
    let mut stale: Vec<(LiveKey, u64)> = Vec::new();
    let batched = match &*map {
        Map::HashMap(data) => crate::batch::for_each_entry::<LiveKey, LiveAlloc>(data.fd().as_fd(), 8192, |key, block| {
            if doomed(key) {
                stale.push((*key, block.size));
            }
        })
        .map_err(|err| log::debug!("{err}; reading {table} entry by entry")),
        _ => Err(()),
    };
    let mut blocks: BpfHashMap<_, LiveKey, LiveAlloc> = BpfHashMap::try_from(map)?;
    if batched.is_err() {
        stale = blocks.iter().filter_map(|entry| entry.ok()).filter(|(key, _)| doomed(key)).map(|(key, block)| (key, block.size)).collect();
    }
    let mut removed: HashMap<u32, (u64, u64)> = HashMap::new();
    for (key, size) in stale {
        if blocks.remove(&key).is_ok() {
            let (bytes, count) = removed.entry(key.tgid).or_default();
            *bytes += size;
            *count += 1;
        }
    }
    Ok(removed)
}

/// The memory syscalls' own tracepoints (syscalls:sys_{enter,exit}_{mmap,munmap,mremap,brk}):
/// they fire for these four syscalls only, where the raw syscall tracepoints would run memmon
/// on every syscall of the host.
fn attach_memory_syscalls(ebpf: &mut Ebpf) -> Result<()> {
    crate::tracefs::ensure_mounted()?;
    for (program, phase) in [("memory_syscall_enter", "sys_enter"), ("memory_syscall_exit", "sys_exit")] {
        let program: &mut TracePoint =
            ebpf.program_mut(program).ok_or_else(|| anyhow!("eBPF program {program} missing"))?.try_into()?;
        program.load().with_context(|| format!("verifier rejected the {phase} program"))?;
        for syscall in ["mmap", "munmap", "mremap", "brk"] {
            let name = format!("{phase}_{syscall}");
            program.attach("syscalls", &name).with_context(|| format!("attaching to tracepoint syscalls:{name}"))?;
        }
    }
    Ok(())
}

fn live_block(key: &LiveKey, block: &LiveAlloc) -> LiveBlock {
    LiveBlock { pid: key.tgid, site: block.site, size: block.size, born_ns: block.timestamp_ns }
}

fn read_losses(ebpf: &Ebpf) -> Result<BTreeMap<&'static str, u64>> {
    let losses: Array<_, u64> = Array::try_from(ebpf.map("LOSSES").context("LOSSES map")?)?;
    let mut counts = BTreeMap::new();
    for reason in Loss::ALL {
        counts.insert(reason.name(), losses.get(&(reason as u32), 0)?);
    }
    Ok(counts)
}

fn gone_hint(process: &Process, err: anyhow::Error) -> anyhow::Error {
    if process.is_alive() {
        err
    } else {
        anyhow!("pid {} exited while memmon was attaching", process.pid)
    }
}

/// Measured on 6.18: the uprobe PMU wants CAP_SYS_ADMIN (CAP_BPF + CAP_PERFMON get EACCES from
/// perf_event_open), and CAP_SYS_ADMIN satisfies the BPF and perf checks too. README
/// "Privileges" has the rest of the set (CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH).
pub fn require_privileges() -> Result<()> {
    if caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_ADMIN).unwrap_or(false) {
        Ok(())
    } else {
        bail!("{NEEDED}; run it with sudo")
    }
}

const NEEDED: &str = "memmon needs root (or CAP_SYS_ADMIN, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH) to attach uprobes";

fn privilege_hint(err: anyhow::Error) -> anyhow::Error {
    if format!("{err:#}").contains("Operation not permitted") {
        err.context(format!("the kernel refused; {NEEDED}"))
    } else {
        err
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if ret != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}
