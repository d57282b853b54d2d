//! The agent's state: the tracer and everything derived from it, and the views the control API
//! serves. All methods are synchronous and quick; callers hold the lock only while they run.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use anyhow::Result;

mod capture;
mod profiling;
pub use profiling::Refusal;

use crate::{
    allocator::Allocator,
    config::{AgentConfig, Tier},
    leaks::{CheckInput, Detector, SitePoint},
    process::MemoryStatus,
    profiles::store::ProfileDir,
    snapshot::{SiteSample, Snapshot},
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
    wire::{self, Bucket, LeakIndicator},
};

pub struct Agent {
    config: AgentConfig,
    tracer: Tracer,
    symbolizer: Symbolizer,
    detector: Detector,
    started: Instant,
    snapshot: Snapshot,
    snapshot_at: Instant,
    snapshots: u64,
    /// Total losses at the previous snapshot, and whether the last snapshot added any.
    losses_before: u64,
    losses_growing: bool,
    memory: HashMap<u32, MemoryStatus>,
    alive: HashMap<u32, bool>,
    indicators: Vec<LeakIndicator>,
    leak_checks: u64,
    last_check_at: Option<Instant>,
    /// Indicators reported so far, by (pid, kind, severity): memmon_leaks_detected_total.
    leaks_detected: BTreeMap<(u32, String, String), u64>,
    profiler: profiling::Profiler,
    capture: capture::Capture,
    /// Lines printed about followed forks so far (a fork storm is counted, not printed).
    fork_lines: u64,
}

impl Agent {
    /// Attaches to every configured pid and takes a first snapshot.
    pub fn start(config: AgentConfig) -> Result<Self> {
        let tracer =
            Tracer::attach_tracking(&config.pids, TracerOptions { calibrate: true, ..config.tracer_options() }, &config.track_config())?;
        let costs = tracer.hit_costs();
        let prior_cpu_rate = tracer.targets().iter().filter_map(|t| t.process.lifetime_cpu_rate()).sum();
        let capture = capture::Capture::new(config.tier, config.overhead_budget, prior_cpu_rate, costs, config.capture_cooldown());
        let mut symbolizer = Symbolizer::new();
        for target in tracer.targets() {
            symbolizer.observe(target.process.pid);
        }
        let detector = Detector::new(config.thresholds());
        let profile_dir = match config.profiling_enabled {
            true => Some(ProfileDir::open(&config.profiling_output_dir)?),
            false => None,
        };
        let now = Instant::now();
        let mut agent = Self {
            config,
            tracer,
            symbolizer,
            detector,
            started: now,
            snapshot: Snapshot::default(),
            snapshot_at: now,
            snapshots: 0,
            losses_before: 0,
            losses_growing: false,
            memory: HashMap::new(),
            alive: HashMap::new(),
            indicators: Vec::new(),
            leak_checks: 0,
            last_check_at: None,
            leaks_detected: BTreeMap::new(),
            profiler: profiling::Profiler::new(profile_dir),
            capture,
            fork_lines: 0,
        };
        agent.start_overhead_accounting();
        agent.refresh()?;
        Ok(agent)
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Brings the unwind tables up to date with code the targets mapped since the last look,
    /// and follows the targets that exec'ed since (every liveness tick, 250 ms).
    pub fn refresh_code_mappings(&mut self) {
        self.follow_forks();
        self.follow_execs();
        if let Err(err) = self.tracer.refresh_code_mappings() {
            log::warn!("refreshing code mappings failed: {err:#}");
        }
        for (pid, object) in self.tracer.take_probed_later() {
            eprintln!("memmon: pid {pid} mapped code with allocator functions; probing {}", object.describe());
        }
    }

    /// Attaches to the children the targets forked since the last look (`--follow-forks`).
    fn follow_forks(&mut self) {
        match self.tracer.follow_forks() {
            Ok(children) => {
                for (child, parent) in children {
                    self.symbolizer.observe(child);
                    self.announce_fork(format!("memmon: following pid {child}, forked by pid {parent}"));
                }
            }
            Err(err) => log::warn!("following the targets' forks failed: {err:#}"),
        }
    }

    /// Retires the followed children that exited (every liveness tick, 250 ms): what they
    /// held at exit is kept in `status`, the rest leaves the tables.
    pub fn retire_children(&mut self) {
        let exits = match self.tracer.retire_exited_children() {
            Ok(exits) => exits,
            Err(err) => {
                log::warn!("retiring the followed children that exited failed: {err:#}");
                return;
            }
        };
        for exit in exits {
            self.detector.forget(exit.pid);
            self.symbolizer.forget(exit.pid);
            self.memory.remove(&exit.pid);
            self.alive.remove(&exit.pid);
            self.announce_fork(format!(
                "memmon: followed pid {} ({}) exited holding {} B in {} blocks",
                exit.pid, exit.comm, exit.held_bytes, exit.held_blocks
            ));
        }
    }

    fn announce_fork(&mut self, line: String) {
        const PRINTED: u64 = 20;
        self.fork_lines += 1;
        if self.fork_lines <= PRINTED {
            eprintln!("{line}");
        }
        if self.fork_lines == PRINTED {
            eprintln!("memmon: further followed forks are counted in `memmon status`, not printed");
        }
    }

    /// A target that exec'ed is a new program in the same process: the old image's blocks are
    /// dropped (counted as discarded), its leak history ends, its stacks are symbolized no more
    /// against the new map, and profiling sessions spanning the exec say so.
    pub fn follow_execs(&mut self) {
        let execs = match self.tracer.follow_execs() {
            Ok(execs) => execs,
            Err(err) => {
                log::warn!("following the targets' execs failed: {err:#}");
                return;
            }
        };
        for (pid, exec) in execs {
            eprintln!(
                "memmon: pid {pid} exec'ed: {} → {}; {} B in {} blocks of the old image discarded; {}",
                exec.from_comm, exec.to_comm, exec.discarded_bytes, exec.discarded_blocks, exec.allocator
            );
            self.detector.forget(pid);
            self.symbolizer.image_replaced(pid);
            self.note_exec_in_profiles(pid, &exec);
        }
    }

    /// Takes a snapshot of the kernel tables and /proc (MEMMON_METRICS_UPDATE_INTERVAL).
    pub fn refresh(&mut self) -> Result<()> {
        self.follow_execs();
        let snapshot = self.tracer.snapshot()?;
        let losses = snapshot.total_losses();
        self.losses_growing = self.snapshots > 0 && losses > self.losses_before;
        self.losses_before = losses;
        for target in self.tracer.targets() {
            let pid = target.process.pid;
            let alive = target.process.is_alive();
            if alive {
                self.symbolizer.observe(pid);
                if let Some(memory) = target.process.memory() {
                    self.memory.insert(pid, memory);
                }
            } else if self.alive.get(&pid).copied().unwrap_or(true) {
                self.detector.forget(pid);
            }
            self.alive.insert(pid, alive);
        }
        self.snapshot = snapshot;
        self.snapshot_at = Instant::now();
        self.snapshots += 1;
        Ok(())
    }

    pub fn all_exited(&self) -> bool {
        self.alive.values().all(|alive| !alive)
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn symbolizer(&mut self) -> &mut Symbolizer {
        &mut self.symbolizer
    }

    /// Takes a snapshot and runs the leak detector on it (MEMMON_LEAK_CHECK_INTERVAL).
    pub fn check_leaks(&mut self) {
        if !self.config.leak_detection_enabled {
            return;
        }
        if let Err(err) = self.refresh() {
            log::warn!("snapshot for the leak check failed: {err:#}");
            return;
        }
        let at_seconds = self.started.elapsed().as_secs_f64();
        let mut found = Vec::new();
        for target in self.tracer.targets() {
            let pid = target.process.pid;
            if !self.alive.get(&pid).copied().unwrap_or(false) {
                continue;
            }
            // The always-on tier watches the heap as the kernel sees it (brk, anonymous
            // mappings); sites exist only inside capture windows, which attribute growth.
            let exact = self.config.tier == Tier::Exact;
            let sites: Vec<&SiteSample> =
                self.snapshot.sites.iter().filter(|s| exact && s.pid == pid && s.live_bytes() > 0).collect();
            let process = self.snapshot.processes.iter().find(|p| p.pid == pid);
            let heap_live_bytes = match exact {
                true => sites.iter().map(|s| s.live_bytes()).sum(),
                false => process.map_or(0, |p| p.brk_heap_bytes() + p.program_mapped_bytes() + p.allocator_mapped_bytes()),
            };
            let input = CheckInput {
                at_seconds,
                pid,
                rss_bytes: self.memory.get(&pid).map_or(0, |m| m.rss_bytes),
                heap_live_bytes,
                sites: sites
                    .iter()
                    .map(|s| SitePoint { site: s.id, live_bytes: s.live_bytes(), live_count: s.live_count() })
                    .collect(),
                untracked_frees: self
                    .snapshot
                    .processes
                    .iter()
                    .find(|p| p.pid == pid)
                    .map_or(0, |p| p.memory.untracked_frees),
            };
            found.extend(self.detector.check(&input));
        }
        let frames_of: HashMap<u64, (u32, std::sync::Arc<Vec<u64>>, memmon_common::Truncation)> =
            self.snapshot.sites.iter().map(|s| (s.id, (s.pid, s.frames.clone(), s.truncated))).collect();
        self.indicators = found
            .into_iter()
            .map(|indicator| {
                let site = indicator
                    .site
                    .and_then(|id| frames_of.get(&id))
                    .map(|(pid, frames, truncated)| self.symbolizer.site(*pid, frames, *truncated));
                LeakIndicator {
                    kind: serde_plain(&indicator.kind),
                    severity: serde_plain(&indicator.severity),
                    pid: indicator.pid,
                    live_bytes: indicator.live_bytes,
                    live_allocations: indicator.live_allocations,
                    growth_bytes: indicator.growth_bytes,
                    growth_bytes_per_second: indicator.growth_bytes_per_second,
                    growth_ratio: indicator.growth_ratio,
                    window_seconds: indicator.window_seconds,
                    checks: indicator.checks,
                    summary: indicator.summary,
                    site,
                }
            })
            .collect();
        self.indicators.sort_by(|a, b| {
            severity_rank(&b.severity).cmp(&severity_rank(&a.severity)).then(b.live_bytes.cmp(&a.live_bytes))
        });
        for indicator in &self.indicators {
            let key = (indicator.pid, indicator.kind.clone(), indicator.severity.clone());
            *self.leaks_detected.entry(key).or_default() += 1;
        }
        self.leak_checks += 1;
        self.last_check_at = Some(Instant::now());
        let growth = self.indicators.iter().find(|i| {
            matches!(i.kind.as_str(), "rss_growth" | "heap_growth") && matches!(i.severity.as_str(), "warning" | "critical")
        });
        if let Some(growth) = growth.map(|i| (format!("{} {}: {}", i.kind, i.severity, i.summary), i.pid)) {
            self.growth_seen(growth.0, growth.1);
        }
    }

    /// The top `limit` sites by live bytes, symbolized.
    fn summarize_sites(&mut self, limit: usize) -> Vec<wire::SiteSummary> {
        self.snapshot
            .top_live(limit)
            .into_iter()
            .map(|s| wire::SiteSummary {
                site: self.symbolizer.site(s.pid, &s.frames, s.truncated),
                pid: s.pid,
                live_bytes: s.live_bytes(),
                live_allocations: s.live_count(),
                allocated_bytes: s.stats.alloc_bytes,
                allocations: s.stats.alloc_count,
            })
            .collect()
    }

    pub fn status(&self) -> wire::Status {
        let targets: Vec<wire::TargetStatus> = self
            .tracer
            .targets()
            .iter()
            .map(|t| wire::TargetStatus {
                pid: t.process.pid,
                comm: t.process.comm.clone(),
                alive: self.alive.get(&t.process.pid).copied().unwrap_or(false),
                allocator: t.allocator.name.to_string(),
                object: t.allocator.object().to_string(),
                probes: t.allocator.describe(),
                probe_sites: probe_sites(&t.allocator),
                single_stepped: t.allocator.single_stepped().map(|s| s.function.symbol.to_string()).collect(),
                python: t.python.describe(),
                execs: t.history.image,
                discarded_at_exec_bytes: t.history.discarded_bytes,
                discarded_at_exec_blocks: t.history.discarded_blocks,
                recent_execs: t.history.execs.clone(),
                seccomp: crate::seccomp::Policy::of(t.process.pid).describe().map(|policy| match crate::seccomp::known_verdict() {
                    Some(crate::seccomp::Verdict::Survive) => {
                        format!("{policy}; return probes checked: they spare a process under seccomp on this kernel")
                    }
                    _ => policy,
                }),
            })
            .collect();
        wire::Status {
            attached: true,
            pids: targets.iter().map(|t| t.pid).collect(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            mode: self.config.tier.name().into(),
            events_lost: self.events_lost(),
            completeness: crate::completeness::assess(&self.events_lost()),
            targets,
            snapshots: self.snapshots,
            last_snapshot_age_seconds: Some(self.snapshot_at.elapsed().as_secs_f64()),
            leak_detection_enabled: self.config.leak_detection_enabled,
            leak_checks: self.leak_checks,
            metrics_update_interval_seconds: self.config.metrics_update_interval,
            leak_check_interval_seconds: self.config.leak_check_interval,
            listen: self.config.listen.to_string(),
            profiling_enabled: self.config.profiling_enabled,
            profiles: self.profiles(),
            unwind: self.unwind_stats(),
            capture: self.capture_status(),
            overhead: self.overhead_status(),
            forks: self.tracer.forks(),
            tracked_functions: self.snapshot.functions.iter().map(tracked_function).collect(),
        }
    }

    /// The tracked functions with the top `top` stacks allocating inside each, symbolized.
    fn tracked_functions_with_sites(&mut self, top: usize) -> Vec<wire::TrackedFunction> {
        let frames_of: HashMap<u64, (u32, std::sync::Arc<Vec<u64>>, memmon_common::Truncation)> =
            self.snapshot.sites.iter().map(|s| (s.id, (s.pid, s.frames.clone(), s.truncated))).collect();
        let mut functions = Vec::new();
        for sample in &self.snapshot.functions {
            let mut function = tracked_function(sample);
            for (id, stats) in sample.sites.iter().take(top) {
                let site = match frames_of.get(id) {
                    Some((pid, frames, truncated)) => self.symbolizer.site(*pid, frames, *truncated),
                    None => wire::Site::new(Vec::new(), memmon_common::Truncation::NotStored),
                };
                function.top_sites.push(wire::FunctionSite { site, allocated_bytes: stats.alloc_bytes, allocations: stats.alloc_count });
            }
            functions.push(function);
        }
        functions
    }

    /// The tracer's unwind-table figures, with the latest snapshot's truncated sites.
    pub fn unwind_stats(&self) -> crate::unwind::UnwindStats {
        let mut stats = self.tracer.unwind_stats();
        for site in self.snapshot.sites.iter().chain(&self.snapshot.mapping_sites) {
            if site.truncated != memmon_common::Truncation::Complete {
                *stats.truncated_sites.entry(site.truncated.name().to_string()).or_default() += 1;
            }
        }
        stats
    }

    pub fn leaks(&self) -> wire::Leaks {
        wire::Leaks {
            leak_indicators: self.indicators.clone(),
            leak_detection_enabled: self.config.leak_detection_enabled,
            leak_checks: self.leak_checks,
            last_check_age_seconds: self.last_check_at.map(|at| at.elapsed().as_secs_f64()),
        }
    }

    pub fn memory_summary(&mut self) -> Result<wire::MemorySummary> {
        let top_sites = self.summarize_sites(self.config.top as usize);
        let mut by_module: BTreeMap<String, Bucket> = BTreeMap::new();
        for site in self.snapshot.sites.iter().filter(|s| s.live_bytes() > 0) {
            // A Python site belongs to the source file of its innermost Python frame; any other
            // to the object of its allocating frame.
            let frames = self.symbolizer.frames(site.pid, &site.frames);
            let module = frames
                .iter()
                .find(|f| f.address & memmon_common::python::FRAME_TAG != 0)
                .or(frames.first())
                .map(|f| f.module.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "[unknown]".into());
            let bucket = by_module.entry(module.clone()).or_insert(Bucket { name: module, live_bytes: 0, live_allocations: 0 });
            bucket.live_bytes += site.live_bytes();
            bucket.live_allocations += site.live_count();
        }
        let mut by_module: Vec<Bucket> = by_module.into_values().collect();
        by_module.sort_by_key(|b| std::cmp::Reverse(b.live_bytes));
        let sizes = self.tracer.live_block_sizes()?;
        let mut processes = Vec::new();
        for target in self.tracer.targets() {
            let pid = target.process.pid;
            let memory = self.memory.get(&pid).copied().unwrap_or_default();
            let heap: Vec<&SiteSample> = self.snapshot.sites.iter().filter(|s| s.pid == pid).collect();
            let process = self.snapshot.processes.iter().find(|p| p.pid == pid);
            processes.push(wire::ProcessSummary {
                pid,
                comm: target.process.comm.clone(),
                alive: self.alive.get(&pid).copied().unwrap_or(false),
                rss_bytes: memory.rss_bytes,
                virtual_bytes: memory.virtual_bytes,
                peak_rss_bytes: memory.peak_rss_bytes,
                live_bytes: heap.iter().map(|s| s.live_bytes()).sum(),
                live_allocations: heap.iter().map(|s| s.live_count()).sum(),
                brk_heap_bytes: process.map_or(0, |p| p.brk_heap_bytes()),
                program_mapped_bytes: process.map_or(0, |p| p.program_mapped_bytes()),
                allocator_mapped_bytes: process.map_or(0, |p| p.allocator_mapped_bytes()),
                discarded_at_exec_bytes: target.history.discarded_bytes,
                discarded_at_exec_blocks: target.history.discarded_blocks,
            });
        }
        Ok(wire::MemorySummary {
            total_objects: self.snapshot.live_count(),
            live_bytes: self.snapshot.live_bytes(),
            rss_bytes: processes.iter().map(|p| p.rss_bytes).sum(),
            peak_rss_bytes: processes.iter().map(|p| p.peak_rss_bytes).sum(),
            virtual_bytes: processes.iter().map(|p| p.virtual_bytes).sum(),
            top_sites,
            by_size_class: size_classes(&sizes),
            by_module,
            processes,
            events_lost: self.events_lost(),
            completeness: crate::completeness::assess(&self.events_lost()),
            snapshot_age_seconds: self.snapshot_at.elapsed().as_secs_f64(),
            tracked_functions: self.tracked_functions_with_sites(self.config.top as usize),
        })
    }

    pub fn health(&mut self) -> wire::Health {
        let mut checks = Vec::new();
        let mut check = |name: &str, status: &str, detail: String| {
            checks.push(wire::HealthCheck { name: name.into(), status: status.into(), detail });
        };
        let targets = self.tracer.targets();
        let attached = match self.tracer.allocator_probes_attached() {
            true => "allocator probes and syscall tracepoints attached",
            false => "syscall tracepoints attached; allocator probes only in capture windows (always-on tier)",
        };
        check("probes_attached", "ok", format!("{} target(s), {attached}", targets.len()));
        let alive = targets.iter().filter(|t| self.alive.get(&t.process.pid).copied().unwrap_or(false)).count();
        match alive {
            0 => check("target_alive", "failed", "every target has exited".into()),
            n if n < targets.len() => check("target_alive", "degraded", format!("{n} of {} targets alive", targets.len())),
            n => check("target_alive", "ok", format!("{n} alive")),
        }
        let capacity = self.tracer.options().capacity;
        let live = self.snapshot.live_count();
        let sites = self.snapshot.sites.len() as u64;
        let live_fill = live as f64 / f64::from(capacity.max_live_allocations);
        let site_fill = sites as f64 / f64::from(capacity.max_sites);
        let fill = live_fill.max(site_fill);
        check(
            "tables",
            if fill >= 0.9 { "degraded" } else { "ok" },
            format!(
                "live table {live}/{} ({:.0}%), site table {sites}/{} ({:.0}%)",
                capacity.max_live_allocations,
                live_fill * 100.0,
                capacity.max_sites,
                site_fill * 100.0
            ),
        );
        let losses = self.snapshot.total_losses();
        let completeness = crate::completeness::assess(&self.events_lost());
        let verdict = completeness.line().map_or_else(String::new, |line| format!("; {line}"));
        check(
            "losses",
            if self.losses_growing || !completeness.totals_complete { "degraded" } else { "ok" },
            if self.losses_growing {
                format!("{losses} events lost so far, and still growing{verdict}")
            } else {
                format!("{losses} events lost, not growing{verdict}")
            },
        );
        let overhead = self.overhead_status();
        check(
            "overhead",
            // The exact tier keeps its probes whatever they cost: the operator asked for them.
            if self.capture_over_budget() && self.config.tier == Tier::AlwaysOn { "degraded" } else { "ok" },
            format!(
                "allocator probes cost an estimated {:.2}% of the targets' CPU (budget {:.2}%, MEMMON_OVERHEAD_BUDGET{})",
                overhead.estimate * 100.0,
                overhead.budget * 100.0,
                if self.config.tier == Tier::Exact { ", enforced in the always-on tier only" } else { "" }
            ),
        );
        let symbolized = self.snapshot.top_live(1).first().map(|s| (s.pid, s.frames.clone()));
        match symbolized {
            Some((pid, frames)) if !frames.is_empty() => {
                let frame = self.symbolizer.frames(pid, &frames[..1]).remove(0);
                let resolved = !frame.function.starts_with("0x");
                check(
                    "symbolizer",
                    if resolved { "ok" } else { "degraded" },
                    if resolved { format!("top site resolves to {}", frame.function) } else { "top site does not resolve to a function".into() },
                );
            }
            _ => check("symbolizer", "ok", "no live site to resolve yet".into()),
        }
        if self.config.profiling_enabled {
            let dir = &self.config.profiling_output_dir;
            let probe = dir.join(format!(".memmon-health-{}", std::process::id()));
            // A page, not an empty file: a full disk still has room for names.
            let writable = std::fs::write(&probe, [0u8; 4096]).and_then(|()| std::fs::remove_file(&probe));
            let _ = std::fs::remove_file(&probe);
            match writable {
                Ok(()) => check("profile_directory", "ok", format!("{} writable", dir.display())),
                Err(err) => check("profile_directory", "degraded", format!("{}: {err}", dir.display())),
            }
        }
        let status = if checks.iter().any(|c| c.status == "failed") {
            "failed"
        } else if checks.iter().any(|c| c.status == "degraded") {
            "degraded"
        } else {
            "healthy"
        };
        wire::Health { status: status.into(), checks }
    }

    /// Indicators reported so far, by (pid, kind, severity).
    pub fn leaks_detected(&self) -> &BTreeMap<(u32, String, String), u64> {
        &self.leaks_detected
    }

    /// Whether each target is still running, and its latest /proc memory.
    pub fn process_memory(&self, pid: u32) -> (bool, MemoryStatus) {
        (self.alive.get(&pid).copied().unwrap_or(false), self.memory.get(&pid).copied().unwrap_or_default())
    }

    fn events_lost(&self) -> BTreeMap<String, u64> {
        self.snapshot.losses.iter().map(|(reason, n)| (reason.to_string(), *n)).collect()
    }
}

/// The serde name of a unit enum variant ("critical", "site_growth").
/// A tracked function's sample as the API shows it.
fn tracked_function(sample: &crate::track::FunctionSample) -> wire::TrackedFunction {
    let stats = &sample.stats;
    let calls = stats.calls();
    let mean = |sum: f64| if calls == 0 { 0.0 } else { sum / calls as f64 };
    let bytes = |histogram: &crate::track::stats::Histogram, p: crate::track::stats::Percentiles| wire::BytesPerCall {
        sum: histogram.sum,
        mean: mean(histogram.sum as f64),
        p50: p.p50,
        p90: p.p90,
        p99: p.p99,
        max: histogram.max,
    };
    let seconds = |ns: u64| ns as f64 / 1e9;
    let duration = stats.duration_percentiles();
    let function = &sample.function;
    wire::TrackedFunction {
        function: function.label.clone(),
        pid: function.pid,
        symbol: function.symbol.clone(),
        object: function.object.clone(),
        probe_offset: function.site.moved_by,
        emulated: function.site.emulated,
        calls,
        lost_calls: sample.lost_calls(),
        lost: sample.lost().iter().map(|(reason, n)| (reason.to_string(), *n)).collect(),
        in_flight: sample.in_flight,
        nested_calls: sample.counters.nested,
        orphan_returns: sample.counters.orphan_returns,
        site_table_full: sample.counters.site_table_full,
        allocations: stats.allocations,
        frees: stats.frees,
        freed_bytes: stats.freed_bytes,
        net_allocations: stats.net_allocations,
        high_usage_calls: stats.high_usage_calls,
        slow_calls: stats.slow_calls,
        net_bytes: bytes(&stats.net_bytes, stats.net_percentiles()),
        allocated_bytes: bytes(&stats.allocated_bytes, stats.allocated_percentiles()),
        duration_seconds: wire::SecondsPerCall {
            sum: seconds(stats.duration_ns.sum),
            mean: mean(seconds(stats.duration_ns.sum)),
            p50: seconds(duration.p50),
            p90: seconds(duration.p90),
            p99: seconds(duration.p99),
            max: seconds(stats.duration_ns.max),
        },
        percentile_calls: stats.recent_calls() as u64,
        top_sites: Vec::new(),
    }
}

fn serde_plain<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Where each of an allocator's functions is probed, for `status`.
fn probe_sites(allocator: &Allocator) -> Vec<wire::ProbeSiteStatus> {
    let sites = allocator.objects.iter().flat_map(|object| object.sites.iter().map(move |site| (object, site)));
    sites
        .map(|(object, site)| wire::ProbeSiteStatus {
            function: site.function.symbol.to_string(),
            object: object.path.clone(),
            offset: site.moved_by,
            emulated: site.emulated,
            returns: site.function.returns_allocation,
            reason: site.kept.as_ref().map(ToString::to_string),
            arguments: site.argument_registers().iter().map(|r| format!("{r:?}").to_lowercase()).collect(),
        })
        .collect()
}

fn severity_rank(severity: &str) -> u8 {
    match severity {
        "critical" => 2,
        "warning" => 1,
        _ => 0,
    }
}

/// Live blocks by power-of-two size class ("≤ 16 B", "≤ 32 B", …), smallest class first.
pub fn size_classes(sizes: &[u64]) -> Vec<Bucket> {
    let mut classes: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for &size in sizes {
        let bound = size.max(16).next_power_of_two().trailing_zeros();
        let class = classes.entry(bound).or_default();
        class.0 += size;
        class.1 += 1;
    }
    classes
        .into_iter()
        .map(|(bound, (bytes, count))| Bucket {
            name: format!("≤ {}", crate::report::human_bytes(1u64 << bound)),
            live_bytes: bytes,
            live_allocations: count,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_are_powers_of_two() {
        let classes = size_classes(&[1, 16, 17, 32, 1000, 1024, 1025]);
        let names: Vec<&str> = classes.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["≤ 16 B", "≤ 32 B", "≤ 1.0 KiB", "≤ 2.0 KiB"]);
        assert_eq!((classes[0].live_bytes, classes[0].live_allocations), (17, 2));
        assert_eq!((classes[1].live_bytes, classes[1].live_allocations), (49, 2));
        assert_eq!((classes[2].live_bytes, classes[2].live_allocations), (2024, 2));
        assert_eq!((classes[3].live_bytes, classes[3].live_allocations), (1025, 1));
    }
}
