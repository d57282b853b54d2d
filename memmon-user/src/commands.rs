//! The management commands: ask a running agent over its control API, print for a person
//! (text) or a script (`--format json`, the agent's JSON as is).

mod profiling;

use std::{fmt::Write as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::de::DeserializeOwned;

use crate::{
    control::{
        client::{Endpoint, Failure},
        token::Token,
    },
    report::{SiteView, human_bytes, site_table},
    wire::{ApiError, Bucket, Health, Leaks, MemorySummary, ProbeSiteStatus, Site, Status, TrackedFunction},
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(clap::Args, Clone, Debug)]
pub struct Client {
    /// Talk to the agent over TCP at this URL (http://HOST:PORT) instead of its control socket;
    /// everything but /metrics and /health then needs --api-token-file.
    #[arg(long, env = "MEMMON_AGENT")]
    pub agent: Option<String>,
    /// Where the agent listens: the default control socket is derived from its port.
    #[arg(long, env = "MEMMON_LISTEN", default_value = "127.0.0.1:9464", hide = true)]
    pub listen: String,
    /// The agent's control socket (default: /run/memmon/control-PORT.sock, PORT from
    /// MEMMON_LISTEN).
    #[arg(long, env = "MEMMON_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// File holding the bearer token sent with --agent URL (the agent's MEMMON_API_TOKEN_FILE).
    #[arg(long, env = "MEMMON_API_TOKEN_FILE", value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

impl Client {
    /// The control socket unless --agent names a URL.
    fn endpoint(&self) -> Result<Endpoint> {
        if let Some(url) = &self.agent {
            let token = self.api_token_file.as_deref().map(Token::read).transpose()?;
            return Ok(Endpoint::Tcp { url: url.trim_end_matches('/').to_string(), token });
        }
        if let Some(path) = &self.control_socket {
            return Ok(Endpoint::Socket(path.clone()));
        }
        let port = self
            .listen
            .parse::<std::net::SocketAddr>()
            .map(|address| address.port())
            .map_err(|err| anyhow!("MEMMON_LISTEN {}: {err}; expected HOST:PORT, e.g. 127.0.0.1:9464", self.listen))?;
        Ok(Endpoint::Socket(crate::control::socket::default_path(port)))
    }

    fn call(&self, method: &str, path: &str) -> Result<String> {
        let endpoint = self.endpoint()?;
        let answer = endpoint.request(method, path).map_err(|failure| match failure {
            Failure::Connect(err) if err.kind() == std::io::ErrorKind::PermissionDenied => anyhow!(
                "cannot connect to {endpoint} ({err}): the control socket is for root and the agent's own user"
            ),
            Failure::Connect(err) => anyhow!(
                "no memmon agent answers at {endpoint} ({err}); start one with `memmon agent --pid PID`, \
                 or point to it with --control-socket PATH or --agent URL"
            ),
            Failure::Exchange(err) => err.context(format!("asking the agent at {endpoint}")),
        })?;
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        if !answer.status.is_success() {
            let message = serde_json::from_str::<ApiError>(&body).map(|e| e.error).unwrap_or(body);
            bail!("the agent refused ({}): {message}", answer.status);
        }
        Ok(body)
    }

    fn fetch<T: DeserializeOwned>(&self, method: &str, path: &str) -> Result<(String, T)> {
        let body = self.call(method, path)?;
        let value = serde_json::from_str(&body).with_context(|| format!("unexpected answer from {path}"))?;
        Ok((body, value))
    }

    /// Prints JSON as the agent sent it (pretty), or the text rendering.
    fn show<T: DeserializeOwned>(&self, method: &str, path: &str, text: impl FnOnce(&T) -> String) -> Result<T> {
        let (body, value) = self.fetch::<T>(method, path)?;
        match self.format {
            Format::Json => {
                let pretty: serde_json::Value = serde_json::from_str(&body)?;
                println!("{}", serde_json::to_string_pretty(&pretty)?);
            }
            Format::Text => print!("{}", text(&value)),
        }
        Ok(value)
    }

    pub fn status(&self) -> Result<ExitCode> {
        self.show("GET", "/status", status_text)?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn health_check(&self) -> Result<ExitCode> {
        let health: Health = self.show("GET", "/health", health_text)?;
        Ok(ExitCode::from(match health.status.as_str() {
            "healthy" => 0,
            "degraded" => 1,
            _ => 2,
        }))
    }

    pub fn check_leaks(&self, verbose: bool) -> Result<ExitCode> {
        let path = if verbose { "/leaks?verbose=true" } else { "/leaks" };
        self.show("GET", path, |leaks: &Leaks| leaks_text(leaks, verbose))?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn memory_summary(&self) -> Result<ExitCode> {
        self.show("GET", "/memory-summary", summary_text)?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn update_metrics(&self) -> Result<ExitCode> {
        self.show("POST", "/update-metrics", |summary: &MemorySummary| {
            format!("snapshot taken\n{}", summary_text(summary))
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

fn status_text(status: &Status) -> String {
    let mut out = String::new();
    let lost: u64 = status.events_lost.values().sum();
    let _ = writeln!(
        out,
        "memmon agent: attached to {} process(es), up {}, mode {}, {} snapshots, {} leak checks",
        status.targets.len(),
        human_duration(status.uptime_seconds),
        status.mode,
        status.snapshots,
        status.leak_checks
    );
    for target in &status.targets {
        let _ = writeln!(
            out,
            "  pid {:<8} {:<16} {:<8} {} allocator in {}",
            target.pid,
            target.comm,
            if target.alive { "running" } else { "exited" },
            target.allocator,
            target.object
        );
        let _ = writeln!(out, "  {:<8} probes: {}", "", target.probes);
        probe_sites_text(&mut out, &target.probe_sites);
        if let Some(python) = &target.python {
            let _ = writeln!(out, "  {:<8} python: {python}", "");
        }
        if let Some(seccomp) = &target.seccomp {
            let _ = writeln!(out, "  {:<8} seccomp: {seccomp}", "");
        }
        if target.execs > 0 {
            let _ = writeln!(
                out,
                "  {:<8} exec'ed {} time(s) since attach; discarded at exec: {} B in {} blocks (the old images' heap, not leaks)",
                "", target.execs, target.discarded_at_exec_bytes, target.discarded_at_exec_blocks
            );
            for exec in &target.recent_execs {
                let _ = writeln!(out, "  {:<8}   {} {} → {}: {}", "", exec.seen_at, exec.from_comm, exec.to_comm, exec.allocator);
            }
        }
    }
    let _ = writeln!(
        out,
        "  snapshot every {} s, leak check every {} s{}, API on {}",
        status.metrics_update_interval_seconds,
        status.leak_check_interval_seconds,
        if status.leak_detection_enabled { "" } else { " (leak detection disabled)" },
        status.listen
    );
    unwind_text(&mut out, &status.unwind);
    capture_text(&mut out, &status.capture, &status.overhead);
    forks_text(&mut out, &status.forks);
    tracked_functions_text(&mut out, &status.tracked_functions);
    profiling::profiles_text(&mut out, status.profiling_enabled, &status.profiles);
    if lost == 0 {
        out.push_str("  events lost: none\n");
    } else {
        let listed: Vec<String> =
            status.events_lost.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r}={n}")).collect();
        let _ = writeln!(out, "  events lost (numbers may be low): {}", listed.join(", "));
    }
    if let Some(line) = status.completeness.line() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

fn forks_text(out: &mut String, forks: &crate::forks::Forks) {
    if !forks.following {
        if forks.seen == 0 {
            out.push_str("  forks: not followed (--follow-forks)\n");
        }
        return;
    }
    let _ = writeln!(
        out,
        "  forks: followed, at most {} at once: {} seen, {} followed ({} traced now, {} exited), {} exited before memmon attached, {} over the limit, {} failed",
        forks.max_followed, forks.seen, forks.followed, forks.alive, forks.retired, forks.exited_before_followed, forks.over_limit, forks.failed
    );
    for exit in forks.recent_exits.iter().rev().take(3) {
        let _ = writeln!(out, "    pid {} ({}, forked by {}) exited holding {} B in {} blocks", exit.pid, exit.comm, exit.parent, exit.held_bytes, exit.held_blocks);
    }
}

fn capture_text(out: &mut String, capture: &crate::wire::CaptureStatus, overhead: &crate::wire::OverheadStatus) {
    let probes = if capture.allocator_probes_attached { "allocator probes attached" } else { "allocator probes detached" };
    let _ = writeln!(out, "  tier: {} ({probes}; capture windows of {} s)", capture.tier, capture.window_seconds);
    if let Some(window) = &capture.open {
        let _ = writeln!(
            out,
            "    window open ({}, {:.0} of {:.0} s{}): {}",
            window.trigger,
            window.elapsed_seconds,
            window.planned_seconds,
            window.profile_id.as_ref().map(|id| format!(", profile {id}")).unwrap_or_default(),
            window.cause
        );
    }
    for window in capture.closed.iter().take(3) {
        let _ = writeln!(
            out,
            "    window {} ({}, {:.1} of {:.0} s, {}): {} in {} blocks still live at its close{}",
            window.started_at,
            window.trigger,
            window.elapsed_seconds,
            window.planned_seconds,
            window.reason.as_deref().unwrap_or("closed"),
            human_bytes(window.live_bytes),
            window.live_allocations,
            window.top_sites.first().map(|s| format!(", most at {}", s.site.function())).unwrap_or_default()
        );
    }
    if capture.cooldown_remaining_seconds > 0.0 || capture.deferred > 0 {
        let _ = writeln!(
            out,
            "    cooldown: growth opens no window for {:.0} s more (MEMMON_CAPTURE_COOLDOWN={} s); {} growth warning(s) deferred",
            capture.cooldown_remaining_seconds, capture.cooldown_seconds, capture.deferred
        );
    }
    if capture.refused > 0 {
        let _ = writeln!(out, "    {} window(s) refused: {}", capture.refused, capture.last_refusal.as_deref().unwrap_or(""));
    }
    let costs = overhead
        .hit_costs
        .map(|c| {
            format!(
                "; a hit costs ~{:.0} ns emulated, ~{:.0} ns single-stepped, +{:.0} ns with a return probe",
                c.entry_emulated_ns, c.entry_single_stepped_ns, c.return_ns
            )
        })
        .unwrap_or_else(|| "; hit cost not calibrated".into());
    let _ = writeln!(
        out,
        "  overhead (estimate): {:.2}% of the targets' CPU, budget {:.2}%, allowance {:.2} s{costs}",
        overhead.estimate * 100.0,
        overhead.budget * 100.0,
        overhead.allowance_seconds
    );
}

/// Per tracked function: calls, losses, and the per-call measures (with the stacks allocating
/// inside it, when the answer has them).
fn tracked_functions_text(out: &mut String, functions: &[TrackedFunction]) {
    if functions.is_empty() {
        return;
    }
    let _ = writeln!(out, "  tracked functions (per call; percentiles over each one's latest calls):");
    for f in functions {
        let object = f.object.rsplit('/').next().unwrap_or(&f.object);
        let site = match (f.probe_offset, f.emulated) {
            (0, true) => "probed at its entry".to_string(),
            (offset, true) => format!("probed at +{offset}"),
            (offset, false) => format!("probed at +{offset}, single-stepped (expensive)"),
        };
        let lost: Vec<String> = f.lost.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r}={n}")).collect();
        let lost = if lost.is_empty() { String::new() } else { format!(" ({})", lost.join(", ")) };
        let _ = writeln!(
            out,
            "    {} in {object} (pid {}, {site}): {} calls, {} lost{lost}, {} in flight, {} nested",
            f.function, f.pid, f.calls, f.lost_calls, f.in_flight, f.nested_calls
        );
        if f.site_table_full > 0 {
            let _ = writeln!(out, "      {} allocations missing from its stacks below: site table full (raise MEMMON_MAX_SITES)", f.site_table_full);
        }
        for (name, bytes) in [("net", &f.net_bytes), ("allocated", &f.allocated_bytes)] {
            let _ = writeln!(
                out,
                "      {name:<9} sum {:>10}  mean {:>10}  p50 {:>10}  p90 {:>10}  p99 {:>10}  max {:>10}",
                human_bytes(bytes.sum),
                human_bytes(bytes.mean.round() as u64),
                human_bytes(bytes.p50),
                human_bytes(bytes.p90),
                human_bytes(bytes.p99),
                human_bytes(bytes.max)
            );
        }
        let d = &f.duration_seconds;
        let _ = writeln!(
            out,
            "      {:<9} sum {:>10}  mean {:>10}  p50 {:>10}  p90 {:>10}  p99 {:>10}  max {:>10}",
            "duration",
            human_seconds(d.sum),
            human_seconds(d.mean),
            human_seconds(d.p50),
            human_seconds(d.p90),
            human_seconds(d.p99),
            human_seconds(d.max)
        );
        let _ = writeln!(
            out,
            "      {} allocations, {} still live at return; {} slow calls (> MEMMON_SLOW_CALL_SECONDS), {} high-usage (> MEMMON_HIGH_USAGE_THRESHOLD_MB); percentiles over the latest {} calls",
            f.allocations, f.net_allocations, f.slow_calls, f.high_usage_calls, f.percentile_calls
        );
        if !f.top_sites.is_empty() {
            let _ = writeln!(out, "      stacks allocating inside it:");
            for site in &f.top_sites {
                let frames = site.site.display_frames();
                let callers: Vec<&str> = frames.iter().skip(1).take(2).map(|f| f.function.as_str()).collect();
                let callers = if callers.is_empty() { String::new() } else { format!("  ← {}", callers.join(" ← ")) };
                let _ = writeln!(
                    out,
                    "        {:>10} {:>8} allocs  {}  ({}){callers}",
                    human_bytes(site.allocated_bytes),
                    site.allocations,
                    site.site.function(),
                    site.site.location()
                );
            }
        }
    }
}

/// Seconds for a person: ns, µs, ms or s, three significant digits or so.
fn human_seconds(seconds: f64) -> String {
    match seconds {
        s if s == 0.0 => "0 s".into(),
        s if s < 1e-6 => format!("{:.0} ns", s * 1e9),
        s if s < 1e-3 => format!("{:.1} µs", s * 1e6),
        s if s < 1.0 => format!("{:.1} ms", s * 1e3),
        s => format!("{s:.2} s"),
    }
}

fn unwind_text(out: &mut String, unwind: &crate::unwind::UnwindStats) {
    let _ = writeln!(
        out,
        "  unwind tables: {} objects, {} rows, {} of {}, built in {:.2} s",
        unwind.objects,
        unwind.rows,
        human_bytes(unwind.bytes),
        human_bytes(unwind.capacity_bytes),
        unwind.build_seconds
    );
    let walks = unwind.walks_recalled + unwind.walks_memoized + unwind.walks_unmemoizable;
    if walks > 0 {
        let _ = writeln!(
            out,
            "    stack walks: {} of {walks} recalled from memoized walks, {} walked and memoized, {} walked unmemoizable",
            unwind.walks_recalled, unwind.walks_memoized, unwind.walks_unmemoizable
        );
    }
    for object in unwind.detail.iter().filter(|o| o.missing.is_some()) {
        let _ = writeln!(out, "    no table for {}: {}", object.object, object.missing.as_deref().unwrap_or_default());
    }
    if unwind.dropped_mappings > 0 {
        let _ = writeln!(out, "    {} code mappings over the per-process limit (their frames end stacks)", unwind.dropped_mappings);
    }
    if !unwind.truncated_sites.is_empty() {
        let listed: Vec<String> = unwind.truncated_sites.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
        let _ = writeln!(out, "    sites with truncated stacks: {}", listed.join(", "));
    }
}

/// How many probes are on emulated instructions, and each single-stepped one with its reason.
fn probe_sites_text(out: &mut String, sites: &[ProbeSiteStatus]) {
    let stepped: Vec<&ProbeSiteStatus> = sites.iter().filter(|s| !s.emulated).collect();
    if stepped.is_empty() {
        let _ = writeln!(out, "  {:<8} probe sites: all {} on instructions the kernel emulates", "", sites.len());
        return;
    }
    let _ = writeln!(
        out,
        "  {:<8} probe sites: {} on instructions the kernel emulates; {} single-stepped, the expensive kind \
         (every hit is stepped out of line, tens of µs instead of ~1):",
        "",
        sites.len() - stepped.len(),
        stepped.len()
    );
    for site in stepped {
        let object = site.object.rsplit('/').next().unwrap_or(&site.object);
        let reason = site.reason.as_deref().unwrap_or("no reason recorded");
        let _ = writeln!(out, "  {:<8}   single-stepped: {} in {object} at +{}: {reason}", "", site.function, site.offset);
    }
}

fn health_text(health: &Health) -> String {
    let mut out = format!("memmon agent: {}\n", health.status);
    for check in &health.checks {
        let _ = writeln!(out, "  {:<9} {:<18} {}", check.status, check.name, check.detail);
    }
    out
}

fn leaks_text(leaks: &Leaks, verbose: bool) -> String {
    let mut out = String::new();
    if !leaks.leak_detection_enabled {
        return "leak detection is disabled (MEMMON_LEAK_DETECTION_ENABLED=false)\n".into();
    }
    if leaks.leak_checks == 0 {
        return "no leak check has run yet (one runs every MEMMON_LEAK_CHECK_INTERVAL seconds)\n".into();
    }
    if leaks.leak_indicators.is_empty() {
        let _ = writeln!(out, "no leaks: nothing is growing ({} checks so far)", leaks.leak_checks);
        return out;
    }
    for indicator in &leaks.leak_indicators {
        let what = match &indicator.site {
            Some(site) => site.headline(),
            None => format!("pid {} {}", indicator.pid, indicator.kind.replace('_', " ")),
        };
        let _ = writeln!(
            out,
            "{:<8} {:>10} in {:>7} blocks  {}",
            indicator.severity.to_uppercase(),
            human_bytes(indicator.live_bytes),
            indicator.live_allocations,
            what
        );
        if verbose {
            let _ = writeln!(out, "         {}", indicator.summary);
            let _ = writeln!(
                out,
                "         evidence: {} bytes live, +{} bytes over {:.0} s ({}/s, ratio {:.2}), {} checks",
                indicator.live_bytes,
                indicator.growth_bytes,
                indicator.window_seconds,
                human_bytes(indicator.growth_bytes_per_second.max(0.0) as u64),
                indicator.growth_ratio,
                indicator.checks
            );
            if let Some(site) = &indicator.site {
                stack_text(&mut out, site);
            }
        }
    }
    out
}

fn stack_text(out: &mut String, site: &Site) {
    for (depth, frame) in site.display_frames().iter().enumerate() {
        let _ = writeln!(out, "         #{depth:<2} {}  ({})  {}", frame.function, frame.location(), frame.module);
    }
}

fn summary_text(summary: &MemorySummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "heap {} live in {} blocks; RSS {} (peak {}), virtual {}",
        human_bytes(summary.live_bytes),
        summary.total_objects,
        human_bytes(summary.rss_bytes),
        human_bytes(summary.peak_rss_bytes),
        human_bytes(summary.virtual_bytes)
    );
    if let Some(line) = summary.completeness.line() {
        let _ = writeln!(out, "{line}");
    }
    if !summary.top_sites.is_empty() {
        let _ = writeln!(out, "\ntop sites by live bytes:");
        let views: Vec<SiteView> = summary
            .top_sites
            .iter()
            .map(|site| SiteView {
                live_bytes: site.live_bytes,
                live_count: site.live_allocations,
                alloc_bytes: site.allocated_bytes,
                alloc_count: site.allocations,
                frames: site.site.display_frames(),
            })
            .collect();
        site_table(&mut out, &views);
    }
    if !summary.tracked_functions.is_empty() {
        out.push('\n');
        tracked_functions_text(&mut out, &summary.tracked_functions);
    }
    buckets_text(&mut out, "by size class", &summary.by_size_class);
    buckets_text(&mut out, "by module", &summary.by_module);
    let _ = writeln!(out);
    for process in &summary.processes {
        let _ = writeln!(
            out,
            "pid {} ({}{}): RSS {}, heap {} in {} blocks, brk heap {}, mappings {} program + {} allocator",
            process.pid,
            process.comm,
            if process.alive { "" } else { ", exited" },
            human_bytes(process.rss_bytes),
            human_bytes(process.live_bytes),
            process.live_allocations,
            human_bytes(process.brk_heap_bytes),
            human_bytes(process.program_mapped_bytes),
            human_bytes(process.allocator_mapped_bytes)
        );
        if process.discarded_at_exec_blocks > 0 {
            let _ = writeln!(
                out,
                "  discarded at exec: {} ({} bytes) in {} blocks of the images it replaced",
                human_bytes(process.discarded_at_exec_bytes),
                process.discarded_at_exec_bytes,
                process.discarded_at_exec_blocks
            );
        }
    }
    out
}

fn buckets_text(out: &mut String, title: &str, buckets: &[Bucket]) {
    if buckets.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nlive memory {title}:");
    for bucket in buckets {
        let _ = writeln!(out, "  {:>10} {:>8} blocks  {}", human_bytes(bucket.live_bytes), bucket.live_allocations, bucket.name);
    }
}

fn human_duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0) as u64;
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}
