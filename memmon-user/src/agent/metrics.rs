//! `/metrics`: the agent's state in the Prometheus text format.
//!
//! Names follow Prometheus conventions (prefix `memmon_`, base units, `_total` counters) and
//! labels stay bounded: pid and comm per target, reason, kind and severity from fixed sets, and
//! `site` only for the top MEMMON_METRICS_TOP_SITES sites by live bytes, never raw stacks. The
//! registry is built afresh per scrape from the agent's latest snapshot, so values are those of
//! one moment and a site that leaves the top K leaves the output.

use anyhow::Result;
use prometheus::{
    Counter, Encoder as _, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    proto::{self, MetricFamily},
};

use super::state::Agent;

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// Clamps to the i64 range Prometheus' integer gauges hold.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The targets' forks by outcome, and the followed children traced now.
fn fork_metrics(registry: &Registry, forks: &crate::forks::Forks) -> Result<()> {
    let outcomes = counter(registry, "memmon_forks_total", "Child processes the targets forked, by what memmon did (followed, exited_before_followed, over_limit, failed); with --follow-forks.", &["outcome"])?;
    for (outcome, count) in forks.outcomes() {
        outcomes.with_label_values(&[outcome]).inc_by(count);
    }
    let followed = gauge(registry, "memmon_followed_processes", "Followed children traced now (--follow-forks).", &[])?;
    followed.with_label_values::<&str>(&[]).set(int(forks.alive));
    Ok(())
}

/// The tier, the capture windows and the overhead estimate against the budget.
fn capture_metrics(registry: &Registry, capture: &crate::wire::CaptureStatus, overhead: &crate::wire::OverheadStatus) -> Result<()> {
    let tier = gauge(registry, "memmon_tier", "The agent's tier (value 1): exact, or always-on with capture windows.", &["tier"])?;
    tier.with_label_values(&[capture.tier.as_str()]).set(1);
    let open = gauge(registry, "memmon_capture_window_open", "1 while a capture window holds the allocator probes (always-on tier).", &[])?;
    open.with_label_values::<&str>(&[]).set(i64::from(capture.open.is_some()));
    let windows = counter(registry, "memmon_capture_windows_total", "Capture windows opened, by trigger (growth, requested).", &["trigger"])?;
    for trigger in ["growth", "requested"] {
        windows.with_label_values(&[trigger]).inc_by(capture.opened.get(trigger).copied().unwrap_or(0));
    }
    let refused = counter(registry, "memmon_capture_windows_refused_total", "Capture windows the overhead budget refused.", &[])?;
    refused.with_label_values::<&str>(&[]).inc_by(capture.refused);
    let deferred = counter(registry, "memmon_capture_windows_deferred_total", "Growth warnings that opened no capture window: they came during MEMMON_CAPTURE_COOLDOWN.", &[])?;
    deferred.with_label_values::<&str>(&[]).inc_by(capture.deferred);
    let float_gauge = |name: &str, help: &str, value: f64| -> Result<()> {
        let metric = prometheus::Gauge::with_opts(Opts::new(name, help))?;
        registry.register(Box::new(metric.clone()))?;
        metric.set(value);
        Ok(())
    };
    float_gauge("memmon_overhead_budget_ratio", "MEMMON_OVERHEAD_BUDGET: the share of the targets' CPU the allocator probes may cost.", overhead.budget)?;
    float_gauge("memmon_overhead_estimate_ratio", "Estimated share of the targets' CPU the allocator probes cost so far (hits x calibrated trap cost + BPF run time).", overhead.estimate)?;
    float_gauge("memmon_overhead_allowance_seconds", "CPU time the overhead budget still allows the probes (negative: overdrawn).", overhead.allowance_seconds)?;
    let cost = Counter::with_opts(Opts::new("memmon_overhead_estimated_seconds_total", "Estimated CPU time the allocator probes cost the targets."))?;
    registry.register(Box::new(cost.clone()))?;
    cost.inc_by(overhead.estimated_cost_seconds.max(0.0));
    if let Some(costs) = overhead.hit_costs {
        let hit = GaugeVec::new(Opts::new("memmon_probe_hit_cost_seconds", "Calibrated cost of one probe hit on this machine, by kind."), &["kind"])?;
        registry.register(Box::new(hit.clone()))?;
        hit.with_label_values(&["entry_emulated"]).set(costs.entry_emulated_ns / 1e9);
        hit.with_label_values(&["entry_single_stepped"]).set(costs.entry_single_stepped_ns / 1e9);
        hit.with_label_values(&["return"]).set(costs.return_ns / 1e9);
    }
    Ok(())
}

/// The stack walker's tables, and the sites whose stacks end early.
fn unwind_metrics(registry: &Registry, unwind: &crate::unwind::UnwindStats) -> Result<()> {
    let objects = gauge(registry, "memmon_unwind_objects", "Objects (executables, libraries) with an unwind table in the kernel.", &[])?;
    objects.with_label_values::<&str>(&[]).set(int(unwind.objects));
    let rows = gauge(registry, "memmon_unwind_rows", "CFI rows loaded into the kernel's unwind tables.", &[])?;
    rows.with_label_values::<&str>(&[]).set(int(unwind.rows));
    let bytes = gauge(registry, "memmon_unwind_table_bytes", "Kernel memory the loaded unwind rows and page indexes take.", &[])?;
    bytes.with_label_values::<&str>(&[]).set(int(unwind.bytes));
    let capacity = gauge(registry, "memmon_unwind_table_capacity_bytes", "Size of the unwind row table (MEMMON_UNWIND_TABLE_MAX_MB).", &[])?;
    capacity.with_label_values::<&str>(&[]).set(int(unwind.capacity_bytes));
    let build = Counter::with_opts(Opts::new("memmon_unwind_build_seconds_total", "Time spent compiling unwind tables."))?;
    registry.register(Box::new(build.clone()))?;
    build.inc_by(unwind.build_seconds);
    let missing = gauge(registry, "memmon_unwind_objects_missing", "Mapped objects without an unwind table, by reason (budget: MEMMON_UNWIND_TABLE_MAX_MB exhausted; no_cfi: none in the file).", &["reason"])?;
    missing.with_label_values(&["budget"]).set(int(unwind.dropped_objects));
    missing.with_label_values(&["no_cfi"]).set(int(unwind.objects_without_cfi));
    let walks = counter(registry, "memmon_stack_walks_total", "Stack captures by how they were made: recalled (a memoized walk from the same return address and stack pointer still held), memoized (walked, kept for next time), unmemoizable (walked; Python threads, deep stacks, failed reads).", &["result"])?;
    walks.with_label_values(&["recalled"]).inc_by(unwind.walks_recalled);
    walks.with_label_values(&["memoized"]).inc_by(unwind.walks_memoized);
    walks.with_label_values(&["unmemoizable"]).inc_by(unwind.walks_unmemoizable);
    let truncated = gauge(registry, "memmon_truncated_stack_sites", "Allocation sites whose stack walk stopped before the bottom of the stack, by reason.", &["reason"])?;
    for (reason, count) in &unwind.truncated_sites {
        truncated.with_label_values(&[reason]).set(int(*count));
    }
    Ok(())
}

pub fn render(agent: &mut Agent) -> Result<String> {
    let registry = Registry::new();
    let target_labels = ["pid", "comm"];
    let resident = gauge(&registry, "memmon_process_resident_memory_bytes", "Resident memory (VmRSS) of the target process.", &target_labels)?;
    let virtual_memory = gauge(&registry, "memmon_process_virtual_memory_bytes", "Virtual memory (VmSize) of the target process.", &target_labels)?;
    let peak = gauge(&registry, "memmon_process_peak_resident_memory_bytes", "Peak resident memory (VmHWM) of the target process.", &target_labels)?;
    let live_bytes = gauge(&registry, "memmon_heap_live_bytes", "Bytes allocated since attach and not yet freed.", &target_labels)?;
    let live_allocations = gauge(&registry, "memmon_heap_live_allocations", "Blocks allocated since attach and not yet freed.", &target_labels)?;
    let allocated = counter(&registry, "memmon_allocated_bytes_total", "Bytes allocated since attach.", &target_labels)?;
    let allocations = counter(&registry, "memmon_allocations_total", "Allocations since attach.", &target_labels)?;
    let freed = counter(&registry, "memmon_freed_bytes_total", "Bytes of tracked blocks freed since attach.", &target_labels)?;
    let frees = counter(&registry, "memmon_frees_total", "Tracked blocks freed since attach.", &target_labels)?;
    let brk = gauge(&registry, "memmon_brk_heap_bytes", "Size of the brk heap.", &target_labels)?;
    let untracked_frees = counter(&registry, "memmon_untracked_frees_total", "Frees of blocks allocated before memmon attached: while this rises, tracked memory also grows by replacing them.", &target_labels)?;
    let execs = counter(&registry, "memmon_execs_total", "Images the target replaced (execve) since attach.", &target_labels)?;
    let discarded_bytes = counter(&registry, "memmon_exec_discarded_bytes_total", "Tracked heap bytes of images the target exec'ed away: gone with their address space, never leaks.", &target_labels)?;
    let discarded_blocks = counter(&registry, "memmon_exec_discarded_blocks_total", "Tracked heap blocks of images the target exec'ed away.", &target_labels)?;
    let mapped = gauge(&registry, "memmon_anonymous_mapped_bytes", "Anonymous mappings made since attach and still mapped, by owner (program or allocator).", &["pid", "comm", "owner"])?;
    let alive = gauge(&registry, "memmon_target_up", "1 while the target process runs, 0 once it has exited.", &target_labels)?;
    let info = gauge(&registry, "memmon_target_info", "The target process and the allocator memmon probes in it (value 1).", &["pid", "comm", "allocator", "object"])?;
    let probes = gauge(&registry, "memmon_probes_attached", "Allocator probes attached to the target process.", &target_labels)?;
    let heap_age = GaugeVec::new(Opts::new("memmon_heap_live_mean_age_seconds", "Mean age of the live tracked blocks (since their allocation)."), &target_labels)?;
    registry.register(Box::new(heap_age.clone()))?;
    let site_age = GaugeVec::new(Opts::new("memmon_site_live_mean_age_seconds", "Mean age of the live blocks of the top allocation sites."), &["pid", "comm", "site"])?;
    registry.register(Box::new(site_age.clone()))?;
    let site_bytes = gauge(&registry, "memmon_site_live_bytes", "Live bytes of the top allocation sites by live bytes.", &["pid", "comm", "site"])?;
    let site_allocations = gauge(&registry, "memmon_site_live_allocations", "Live blocks of the top allocation sites by live bytes.", &["pid", "comm", "site"])?;
    let lost = counter(&registry, "memmon_events_lost_total", "Events memmon could not account for, by reason; a non-zero rate means numbers may be low.", &["reason"])?;
    let leaks = counter(&registry, "memmon_leaks_detected_total", "Leak indicators reported by the leak checks, by process, kind and severity.", &["pid", "comm", "kind", "severity"])?;
    let leak_checks = counter(&registry, "memmon_leak_checks_total", "Leak checks run.", &[])?;
    let sessions = gauge(&registry, "memmon_profiling_sessions", "This agent's profiling sessions, by state (running, finished, truncated, failed).", &["state"])?;
    let cache = counter(&registry, "memmon_symbolizer_cache_requests_total", "Symbolizer lookups of stack addresses, by result (hit or miss).", &["result"])?;
    let agent_cpu = Counter::with_opts(Opts::new("memmon_agent_cpu_seconds_total", "CPU time used by the memmon agent itself."))?;
    registry.register(Box::new(agent_cpu.clone()))?;
    let agent_memory = gauge(&registry, "memmon_agent_resident_memory_bytes", "Resident memory of the memmon agent itself.", &[])?;
    unwind_metrics(&registry, &agent.unwind_stats())?;
    let status = agent.status();
    capture_metrics(&registry, &status.capture, &status.overhead)?;
    fork_metrics(&registry, &status.forks)?;
    let complete = gauge(&registry, "memmon_data_complete", "1 while the numbers are whole, 0 once events were lost: scope totals (allocations or frees missing) or stacks (bytes under the unknown-stack site).", &["scope"])?;
    complete.with_label_values(&["totals"]).set(i64::from(status.completeness.totals_complete));
    complete.with_label_values(&["stacks"]).set(i64::from(status.completeness.stacks_complete));

    let snapshot = agent.snapshot().clone();
    let top_k = agent.config().metrics_top_sites as usize;
    for target in agent.tracer().targets() {
        let pid = target.process.pid;
        let pid_label = pid.to_string();
        let labels = [pid_label.as_str(), target.process.comm.as_str()];
        let (running, memory) = agent.process_memory(pid);
        resident.with_label_values(&labels).set(int(memory.rss_bytes));
        virtual_memory.with_label_values(&labels).set(int(memory.virtual_bytes));
        peak.with_label_values(&labels).set(int(memory.peak_rss_bytes));
        alive.with_label_values(&labels).set(i64::from(running));
        info.with_label_values(&[labels[0], labels[1], target.allocator.name, target.allocator.object()]).set(1);
        let probe_count: usize = match agent.tracer().allocator_probes_attached() {
            true => target.allocator.objects.iter().map(|o| o.sites.len()).sum(),
            false => 0,
        };
        probes.with_label_values(&labels).set(int(probe_count as u64));
        execs.with_label_values(&labels).inc_by(target.history.image);
        discarded_bytes.with_label_values(&labels).inc_by(target.history.discarded_bytes);
        discarded_blocks.with_label_values(&labels).inc_by(target.history.discarded_blocks);
        let sites = snapshot.sites.iter().filter(|s| s.pid == pid);
        let (mut bytes, mut blocks, mut stats) = (0u64, 0u64, memmon_common::SiteStats::default());
        for site in sites {
            bytes += site.live_bytes();
            blocks += site.live_count();
            stats.alloc_bytes += site.stats.alloc_bytes;
            stats.alloc_count += site.stats.alloc_count;
            stats.free_bytes += site.stats.free_bytes;
            stats.free_count += site.stats.free_count;
        }
        live_bytes.with_label_values(&labels).set(int(bytes));
        let ages: Vec<(u64, f64)> = snapshot
            .sites
            .iter()
            .filter(|s| s.pid == pid)
            .filter_map(|s| Some((s.live_count(), s.live_mean_age_seconds(snapshot.taken_at_ns)?)))
            .collect();
        let aged_blocks: u64 = ages.iter().map(|(count, _)| count).sum();
        if aged_blocks > 0 {
            let weighted: f64 = ages.iter().map(|(count, age)| *count as f64 * age).sum();
            heap_age.with_label_values(&labels).set(weighted / aged_blocks as f64);
        }
        live_allocations.with_label_values(&labels).set(int(blocks));
        allocated.with_label_values(&labels).inc_by(stats.alloc_bytes);
        allocations.with_label_values(&labels).inc_by(stats.alloc_count);
        freed.with_label_values(&labels).inc_by(stats.free_bytes);
        frees.with_label_values(&labels).inc_by(stats.free_count);
        if let Some(process) = snapshot.processes.iter().find(|p| p.pid == pid) {
            brk.with_label_values(&labels).set(int(process.brk_heap_bytes()));
            untracked_frees.with_label_values(&labels).inc_by(process.memory.untracked_frees);
            mapped.with_label_values(&[labels[0], labels[1], "program"]).set(int(process.program_mapped_bytes()));
            mapped.with_label_values(&[labels[0], labels[1], "allocator"]).set(int(process.allocator_mapped_bytes()));
        }
    }
    let comms: std::collections::HashMap<u32, String> =
        agent.tracer().targets().iter().map(|t| (t.process.pid, t.process.comm.clone())).collect();
    for site in snapshot.top_live(top_k) {
        let name = site_label(agent, site.pid, &site.frames, site.id);
        let pid = site.pid.to_string();
        let comm = comms.get(&site.pid).cloned().unwrap_or_default();
        site_bytes.with_label_values(&[&pid, &comm, &name]).set(int(site.live_bytes()));
        site_allocations.with_label_values(&[&pid, &comm, &name]).set(int(site.live_count()));
        if let Some(age) = site.live_mean_age_seconds(snapshot.taken_at_ns) {
            site_age.with_label_values(&[&pid, &comm, &name]).set(age);
        }
    }
    for (reason, count) in &snapshot.losses {
        lost.with_label_values(&[reason]).inc_by(*count);
    }
    for ((pid, kind, severity), count) in agent.leaks_detected() {
        let comm = comms.get(pid).cloned().unwrap_or_default();
        leaks.with_label_values(&[&pid.to_string(), &comm, kind, severity]).inc_by(*count);
    }
    leak_checks.with_label_values(&[] as &[&str]).inc_by(status.leak_checks);
    if status.profiling_enabled {
        for state in ["running", "finished", "truncated", "failed"] {
            let count = status.profiles.iter().filter(|p| p.state == state).count();
            sessions.with_label_values(&[state]).set(int(count as u64));
        }
    }
    let symbolizer = agent.symbolizer();
    cache.with_label_values(&["hit"]).inc_by(symbolizer.hits);
    cache.with_label_values(&["miss"]).inc_by(symbolizer.misses);
    let (cpu_seconds, rss) = own_usage();
    agent_cpu.inc_by(cpu_seconds);
    agent_memory.with_label_values(&[] as &[&str]).set(int(rss));

    let mut families = registry.gather();
    families.push(size_histogram(&snapshot.size_buckets, snapshot.size_sum));
    families.extend(function_metrics(agent, &snapshot.functions, &comms)?);
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut text = Vec::new();
    TextEncoder::new().encode(&families, &mut text)?;
    Ok(String::from_utf8(text)?)
}

/// `memmon_allocation_size_bytes`, a histogram of the kernel's power-of-two size buckets (built
/// by hand: the counts are the kernel's, not observed here one by one).
/// A site's `site` label: its one-line name (innermost frame, or its Python frames for a site
/// allocated from Python code) and 24 bits of its id, which keep two sites of one name apart.
fn site_label(agent: &mut Agent, pid: u32, frames: &[u64], id: u64) -> String {
    let frames = agent.symbolizer().frames(pid, frames);
    let name = match frames.is_empty() {
        false => format!("{} #{:06x}", crate::wire::Site { frames, ..Default::default() }.headline(), id & 0xff_ffff),
        true => format!("[unknown stack] #{:06x}", id & 0xff_ffff),
    };
    name.chars().take(160).collect()
}

fn size_histogram(buckets: &[u64], sum: u64) -> MetricFamily {
    let mut histogram = proto::Histogram::default();
    let mut cumulative = 0u64;
    let mut out = Vec::new();
    for (i, count) in buckets.iter().enumerate().take(buckets.len().saturating_sub(1)) {
        cumulative += count;
        let mut bucket = proto::Bucket::default();
        bucket.set_upper_bound((1u64 << i) as f64);
        bucket.set_cumulative_count(cumulative);
        out.push(bucket);
    }
    cumulative += buckets.last().copied().unwrap_or(0);
    histogram.set_bucket(out);
    histogram.set_sample_count(cumulative);
    histogram.set_sample_sum(sum as f64);
    let mut metric = proto::Metric::default();
    metric.set_histogram(histogram);
    let mut family = MetricFamily::default();
    family.set_name("memmon_allocation_size_bytes".into());
    family.set_help("Sizes of the allocations tracked since attach, all targets together (power-of-two buckets).".into());
    family.set_field_type(proto::MetricType::HISTOGRAM);
    family.set_metric(vec![metric]);
    family
}

/// Per-call memory of the tracked functions (`--track-function`), labelled pid, comm and
/// function (bounded by the functions tracked): three histograms, counters of calls lost,
/// nested, slow and high-usage, calls in flight, and the top stacks allocating inside each.
fn function_metrics(agent: &mut Agent, samples: &[crate::track::FunctionSample], comms: &std::collections::HashMap<u32, String>) -> Result<Vec<MetricFamily>> {
    if samples.is_empty() {
        return Ok(Vec::new());
    }
    let registry = Registry::new();
    let labels = ["pid", "comm", "function"];
    let lost = counter(&registry, "memmon_function_lost_calls_total", "Tracked calls not measured, by reason: unwound (left by longjmp or an exception, return unseen), thread_exit, event_dropped (ring buffer full), table_full.", &["pid", "comm", "function", "reason"])?;
    let nested = counter(&registry, "memmon_function_nested_calls_total", "Calls of tracked functions made inside a tracked call on the same thread (recursion); counted in the outer call.", &labels)?;
    let slow = counter(&registry, "memmon_function_slow_calls_total", "Tracked calls that took longer than MEMMON_SLOW_CALL_SECONDS.", &labels)?;
    let high = counter(&registry, "memmon_function_high_usage_calls_total", "Tracked calls that allocated more than MEMMON_HIGH_USAGE_THRESHOLD_MB.", &labels)?;
    let freed = counter(&registry, "memmon_function_freed_bytes_total", "Bytes of tracked blocks the calls' threads freed during tracked calls.", &labels)?;
    let allocations = counter(&registry, "memmon_function_allocations_total", "Allocations made during tracked calls by their threads.", &labels)?;
    let unpaired = counter(&registry, "memmon_function_unpaired_events_total", "Tracked-function events not in any call, by kind: orphan_return (a return with no call in flight, ignored), site_table_full (an allocation inside a call missing from the per-function site table; raise MEMMON_MAX_SITES).", &["pid", "comm", "function", "kind"])?;
    let in_flight = gauge(&registry, "memmon_function_calls_in_flight", "Tracked calls started and not yet returned.", &labels)?;
    let sites = counter(&registry, "memmon_function_site_allocated_bytes_total", "Bytes allocated inside each tracked function by its top allocation stacks.", &["pid", "comm", "function", "site"])?;
    let frames_of: std::collections::HashMap<u64, Vec<u64>> =
        agent.snapshot().sites.iter().map(|s| (s.id, s.frames[..s.frames.len().min(1)].to_vec())).collect();
    let mut net = Vec::new();
    let mut allocated = Vec::new();
    let mut duration = Vec::new();
    for sample in samples {
        let function = &sample.function;
        let pid = function.pid.to_string();
        let comm = comms.get(&function.pid).cloned().unwrap_or_default();
        let values = [pid.as_str(), comm.as_str(), function.label.as_str()];
        for (reason, count) in sample.lost() {
            lost.with_label_values(&[values[0], values[1], values[2], reason]).inc_by(count);
        }
        nested.with_label_values(&values).inc_by(sample.counters.nested);
        unpaired.with_label_values(&[values[0], values[1], values[2], "orphan_return"]).inc_by(sample.counters.orphan_returns);
        unpaired.with_label_values(&[values[0], values[1], values[2], "site_table_full"]).inc_by(sample.counters.site_table_full);
        slow.with_label_values(&values).inc_by(sample.stats.slow_calls);
        high.with_label_values(&values).inc_by(sample.stats.high_usage_calls);
        freed.with_label_values(&values).inc_by(sample.stats.freed_bytes);
        allocations.with_label_values(&values).inc_by(sample.stats.allocations);
        in_flight.with_label_values(&values).set(int(sample.in_flight));
        for (id, stats) in sample.sites.iter().take(FUNCTION_TOP_SITES) {
            let frames = frames_of.get(id).cloned().unwrap_or_default();
            let name = site_label(agent, function.pid, &frames, *id);
            sites.with_label_values(&[values[0], values[1], values[2], &name]).inc_by(stats.alloc_bytes);
        }
        let pairs = |v: &[&str; 3]| labels.iter().zip(v).map(|(l, v)| (l.to_string(), v.to_string())).collect::<Vec<_>>();
        net.push(histogram_metric(pairs(&values), &sample.stats.net_bytes, 1.0));
        allocated.push(histogram_metric(pairs(&values), &sample.stats.allocated_bytes, 1.0));
        duration.push(histogram_metric(pairs(&values), &sample.stats.duration_ns, 1e-9));
    }
    let mut families = registry.gather();
    families.push(histogram_family("memmon_function_net_bytes", "Per tracked call: bytes allocated during the call and still live at its return.", net));
    families.push(histogram_family("memmon_function_allocated_bytes", "Per tracked call: bytes allocated during the call by its thread.", allocated));
    families.push(histogram_family("memmon_function_duration_seconds", "Per tracked call: time from entry to return.", duration));
    Ok(families)
}

/// Stacks allocating inside each tracked function that get a series.
const FUNCTION_TOP_SITES: usize = 5;

/// One labelled series of a histogram family, from exact bucket counts; `scale` turns the
/// bucket bounds and sum into the metric's unit (ns to seconds).
fn histogram_metric(labels: Vec<(String, String)>, histogram: &crate::track::stats::Histogram, scale: f64) -> proto::Metric {
    let mut out = proto::Histogram::default();
    let buckets = histogram
        .cumulative()
        .into_iter()
        .map(|(bound, count)| {
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(bound as f64 * scale);
            bucket.set_cumulative_count(count);
            bucket
        })
        .collect();
    out.set_bucket(buckets);
    out.set_sample_count(histogram.count());
    out.set_sample_sum(histogram.sum as f64 * scale);
    let mut metric = proto::Metric::default();
    metric.set_label(
        labels
            .into_iter()
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name(name);
                pair.set_value(value);
                pair
            })
            .collect(),
    );
    metric.set_histogram(out);
    metric
}

fn histogram_family(name: &str, help: &str, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.into());
    family.set_help(help.into());
    family.set_field_type(proto::MetricType::HISTOGRAM);
    family.set_metric(metrics);
    family
}

/// The agent's own CPU seconds and resident bytes, from /proc/self.
fn own_usage() -> (f64, u64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
            // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after comm.
            Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/status")
        .map(|s| crate::process::MemoryStatus::parse(&s).rss_bytes)
        .unwrap_or(0);
    (cpu, rss)
}
