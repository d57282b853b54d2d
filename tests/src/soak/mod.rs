//! The soak (`cargo xtask soak --minutes N`, and a short one in `tests/soak.rs`): `memmon agent`
//! on `targets/soak.c` — a paced, steady allocation rate with churn and a slow leak of known
//! size — for a long time, with a second memmon attached to the agent. Every sample interval it
//! records the agent's RSS and CPU, the target's rate, the lost-event counters and the leak's
//! reported bytes against the truth; at the end it checks the leak is flagged, the agent is not
//! (by the second memmon), and, with the target paused, every total to the allocation.
//! `verdict` holds the criteria; this module only drives processes and gathers numbers.

pub mod verdict;

use std::{
    io::Write,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use memmon::wire;
use verdict::{Bounds, Check, Finale, Flag, Sample, TargetStats};

use crate::{Agent, Target, metric, require_root};

/// How long, how hard, and by which bounds.
#[derive(Clone, Debug)]
pub struct Config {
    pub duration: Duration,
    pub sample_every: Duration,
    /// The target's allocations per second (as many frees follow, less the leak and the
    /// tables' growth to their size).
    pub rate: u64,
    pub leak_period: Duration,
    /// The agents' MEMMON_METRICS_UPDATE_INTERVAL and MEMMON_LEAK_CHECK_INTERVAL.
    pub snapshot_seconds: u64,
    pub leak_check_seconds: u64,
    pub bounds: Bounds,
}

/// The leak: one block of this many bytes per leak period, from `leak_slowly`.
pub const LEAK_BYTES: u64 = 4000;
pub const LEAK_FUNCTION: &str = "leak_slowly";

impl Config {
    /// The `cargo xtask soak` run: the agent's default intervals (snapshots every 15 s, leak
    /// checks every 60 s), samples every `sample_seconds`.
    pub fn long(minutes: f64, sample_seconds: u64) -> Self {
        Self {
            duration: Duration::from_secs_f64(minutes * 60.0),
            sample_every: Duration::from_secs(sample_seconds),
            rate: 100_000,
            leak_period: Duration::from_secs(1),
            snapshot_seconds: 15,
            leak_check_seconds: 60,
            bounds: Bounds {
                warmup_samples: 2,
                rss_growth_bytes: 4 << 20,
                rss_slope_bytes_per_hour: 4.0 * 1024.0 * 1024.0,
                cpu_band_factor: 2.0,
                cpu_band_floor_seconds: 0.2,
                min_rate_ratio: 0.9,
                leak_function: LEAK_FUNCTION,
                leak_bytes: LEAK_BYTES,
            },
        }
    }

    /// The soak inside `cargo xtask test`: 80 s, samples every 10 s, the agents snapshotting
    /// every second and checking for leaks every 5 s (so the run holds as many snapshots and
    /// checks as a long one does in 20 minutes and 7 minutes).
    pub fn short() -> Self {
        let mut config = Self::long(80.0 / 60.0, 10);
        config.snapshot_seconds = 1;
        config.leak_check_seconds = 5;
        config.bounds.cpu_band_floor_seconds = 0.1;
        // A minute is too short for a slope in MiB/h to mean much: one step of the allocator's
        // arena (measured: +0.65 MiB once, in a full suite run) reads as 60 MiB/h over it. The
        // growth bound decides; the slope bound only catches a climb of 2 MiB a minute or more.
        config.bounds.rss_growth_bytes = 2 << 20;
        config.bounds.rss_slope_bytes_per_hour = 128.0 * 1024.0 * 1024.0;
        config
    }
}

/// Everything the run gathered, and the verdict.
#[derive(Debug)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    pub finale: Finale,
    pub checks: Vec<Check>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn verdict(&self) -> String {
        let mut text = String::new();
        for check in &self.checks {
            text += &format!("{} {}: {}\n", if check.passed { "PASS" } else { "FAIL" }, check.name, check.detail);
        }
        text += if self.passed() { "soak: PASSED\n" } else { "soak: FAILED\n" };
        text
    }
}

/// Runs the soak, writing the table's rows to `out` as they are sampled (flushed: a long run's
/// log shows where it is).
pub fn run(config: &Config, out: &mut dyn Write) -> Outcome {
    require_root();
    let rate = config.rate.to_string();
    let leak_ms = config.leak_period.as_millis().to_string();
    let mut target = Target::start_with_args("soak", &[&rate, &LEAK_BYTES.to_string(), &leak_ms]);
    let agent = start_agent(config, target.pid(), "agent");
    let watcher = start_agent(config, agent.pid(), "watcher");
    let _ = writeln!(
        out,
        "soak: target pid {} at {} allocations/s with a {LEAK_BYTES}-byte leak every {} ms; agent pid {} \
         (snapshots every {} s, leak checks every {} s); second memmon pid {} on the agent; {} s, samples every {} s",
        target.pid(),
        config.rate,
        leak_ms,
        agent.pid(),
        config.snapshot_seconds,
        config.leak_check_seconds,
        watcher.pid(),
        config.duration.as_secs(),
        config.sample_every.as_secs()
    );
    let _ = writeln!(out, "{}", header());
    target.run("start");
    let started = Instant::now();
    let mut previous = (started, stats(&mut target), agent_cpu_seconds(agent.pid()));
    let mut samples = Vec::new();
    let count = (config.duration.as_secs_f64() / config.sample_every.as_secs_f64()).round().max(1.0) as u32;
    for n in 1..=count {
        // Half a leak period off the leak's ticks, so that the truth rarely moves during a sample.
        let due = started + config.sample_every * n + config.leak_period / 2;
        thread::sleep(due.saturating_duration_since(Instant::now()));
        let sample = take_sample(&mut target, &agent, &watcher, started, &mut previous);
        let _ = writeln!(out, "{}", row(&sample));
        let _ = out.flush();
        samples.push(sample);
    }
    let finale = finish(config, &mut target, &agent, &watcher);
    drop(watcher);
    drop(agent);
    let checks = verdict::judge(&samples, &finale, &config.bounds, config.rate as f64);
    Outcome { samples, finale, checks }
}

fn start_agent(config: &Config, pid: u32, role: &str) -> Agent {
    let socket = PathBuf::from(format!("/run/memmon/soak-{}-{role}.sock", std::process::id()));
    Agent::start(
        pid,
        &[
            "--metrics-update-interval",
            &config.snapshot_seconds.to_string(),
            "--leak-check-interval",
            &config.leak_check_seconds.to_string(),
            "--top",
            "50",
            "--control-socket",
            &socket.to_string_lossy(),
        ],
    )
}

fn stats(target: &mut Target) -> TargetStats {
    request_stats(target, "stats")
}

fn request_stats(target: &mut Target, command: &str) -> TargetStats {
    let line = target.request(command);
    TargetStats::parse(&line).unwrap_or_else(|| panic!("the soak target answered {command:?} with {line:?}"))
}

fn get<T: serde::de::DeserializeOwned>(agent: &Agent, path: &str) -> T {
    let (status, body) = agent.api(&format!("GET {path}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} ({e}): {body}"))
}

fn agent_cpu_seconds(pid: u32) -> f64 {
    memmon::process::Process::open(pid).ok().and_then(|p| p.cpu_time_ns()).expect("the agent's /proc/PID/stat") as f64 / 1e9
}

fn agent_rss_bytes(pid: u32) -> u64 {
    memmon::process::Process::open(pid).ok().and_then(|p| p.memory()).expect("the agent's /proc/PID/status").rss_bytes
}

/// RssAnon from /proc/PID/status, bytes.
fn agent_anon_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn lost(status: &wire::Status) -> u64 {
    status.events_lost.values().sum()
}

fn loss_reasons<'a>(who: &'a str, status: &'a wire::Status) -> impl Iterator<Item = String> + 'a {
    status.events_lost.iter().filter(|(_, n)| **n > 0).map(move |(reason, n)| format!("{who} {reason}={n}"))
}

fn flags(leaks: &wire::Leaks) -> Vec<Flag> {
    leaks
        .leak_indicators
        .iter()
        .map(|i| Flag {
            kind: i.kind.clone(),
            severity: i.severity.clone(),
            function: i.site.as_ref().map(|s| s.function().to_string()),
            live_bytes: i.live_bytes,
            live_allocations: i.live_allocations,
            summary: i.summary.clone(),
        })
        .collect()
}

/// The leak's live bytes and blocks in a summary.
fn leak_in(summary: &wire::MemorySummary) -> (u64, u64) {
    summary
        .top_sites
        .iter()
        .filter(|s| s.site.function() == LEAK_FUNCTION)
        .fold((0, 0), |(bytes, blocks), s| (bytes + s.live_bytes, blocks + s.live_allocations))
}

fn take_sample(
    target: &mut Target,
    agent: &Agent,
    watcher: &Agent,
    started: Instant,
    previous: &mut (Instant, TargetStats, f64),
) -> Sample {
    let before = stats(target);
    let now = Instant::now();
    let summary: wire::MemorySummary = get(agent, "/memory-summary");
    let after = stats(target);
    let cpu = agent_cpu_seconds(agent.pid());
    let leaks: wire::Leaks = get(agent, "/leaks");
    let agent_flags = flags(&get(watcher, "/leaks"));
    let agent_status: wire::Status = get(agent, "/status");
    let watcher_status: wire::Status = get(watcher, "/status");
    let (then, then_stats, then_cpu) = *previous;
    *previous = (now, before, cpu);
    Sample {
        at_seconds: now.duration_since(started).as_secs_f64(),
        agent_rss_bytes: agent_rss_bytes(agent.pid()),
        agent_anon_bytes: agent_anon_bytes(agent.pid()),
        agent_cpu_seconds: cpu - then_cpu,
        target_rate: (before.allocations - then_stats.allocations) as f64 / now.duration_since(then).as_secs_f64(),
        target_late_ticks: before.late_ticks - then_stats.late_ticks,
        lost_events: lost(&agent_status),
        watcher_lost_events: lost(&watcher_status),
        loss_reasons: loss_reasons("agent", &agent_status).chain(loss_reasons("second", &watcher_status)).collect(),
        leak_reported_bytes: leak_in(&summary).0,
        leak_truth_before: before.leak_bytes,
        leak_truth_after: after.leak_bytes,
        leak_flag: flags(&leaks)
            .into_iter()
            .find(|f| f.kind == "site_growth" && f.function.as_deref() == Some(LEAK_FUNCTION))
            .map(|f| f.severity),
        agent_leak_flags: agent_flags.iter().filter(|f| f.kind != "high_usage").count(),
    }
}

/// The end: both agents' leak checks, then the target paused and its totals compared.
fn finish(config: &Config, target: &mut Target, agent: &Agent, watcher: &Agent) -> Finale {
    let before = stats(target);
    let leaks: wire::Leaks = get(agent, "/leaks");
    let after = stats(target);
    // The last check's snapshot was taken at most a snapshot interval before the check (and a
    // second's slack for the scheduling of both).
    let age = leaks.last_check_age_seconds.unwrap_or(f64::INFINITY) + config.snapshot_seconds as f64 + 1.0;
    let ticks_since = (age / config.leak_period.as_secs_f64()).ceil().min(u64::MAX as f64) as u64;
    let agent_flags = flags(&get(watcher, "/leaks"));
    let paused = request_stats(target, "pause");
    // Sites with nothing live are not in the summary's top sites: the allocation total comes
    // from /metrics, refreshed after the pause.
    let (status, body) = agent.api("POST /update-metrics");
    assert_eq!(status, 200, "POST /update-metrics: {body}");
    let (_, metrics) = agent.api("GET /metrics");
    let allocations = metric(&metrics, "memmon_allocations_total", target.pid())
        .unwrap_or_else(|| panic!("no memmon_allocations_total for the target in {metrics}"));
    let summary: wire::MemorySummary = get(agent, "/memory-summary");
    let (summary_leak_bytes, summary_leak_blocks) = leak_in(&summary);
    Finale {
        target_flags: flags(&leaks),
        leak_blocks_range: (before.leak_blocks.saturating_sub(ticks_since), after.leak_blocks),
        agent_flags,
        paused,
        summary_leak_bytes,
        summary_leak_blocks,
        summary_live_blocks: summary.total_objects,
        summary_allocations: allocations as u64,
    }
}

fn header() -> String {
    format!(
        "{:>7} {:>9} {:>9} {:>8} {:>10} {:>5} {:>5} {:>5} {:>10} {:>10} {:>9} {:>6}",
        "t (s)", "RSS MiB", "anon MiB", "CPU s", "allocs/s", "late", "lost", "lost2", "leak B", "truth B", "leak flag", "agent?"
    )
}

fn row(s: &Sample) -> String {
    let truth = if s.leak_truth_before == s.leak_truth_after {
        s.leak_truth_before.to_string()
    } else {
        format!("{}+", s.leak_truth_before)
    };
    format!(
        "{:>7.0} {:>9.2} {:>9.2} {:>8.2} {:>10.0} {:>5} {:>5} {:>5} {:>10} {:>10} {:>9} {:>6}",
        s.at_seconds,
        s.agent_rss_bytes as f64 / (1024.0 * 1024.0),
        s.agent_anon_bytes as f64 / (1024.0 * 1024.0),
        s.agent_cpu_seconds,
        s.target_rate,
        s.target_late_ticks,
        s.lost_events,
        s.watcher_lost_events,
        s.leak_reported_bytes,
        truth,
        s.leak_flag.as_deref().unwrap_or("-"),
        s.agent_leak_flags
    )
}
