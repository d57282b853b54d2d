//! The soak's pass/fail criteria: pure functions of what was sampled and observed, so every bound
//! is unit-tested here and the run itself only gathers numbers.

use memmon::leaks::least_squares;

/// One row of the soak's table, taken every sample interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the target started allocating.
    pub at_seconds: f64,
    /// The agent's VmRSS.
    pub agent_rss_bytes: u64,
    /// Its anonymous part (RssAnon: the heap and stacks; the rest is mostly the unwind tables'
    /// memory-mapped BPF arrays).
    pub agent_anon_bytes: u64,
    /// The agent's CPU time (user + system) during the interval that ends here.
    pub agent_cpu_seconds: f64,
    /// The target's allocations per second during the interval (its own count).
    pub target_rate: f64,
    /// Its 10 ms ticks that started more than a tick late during the interval (the machine
    /// busy: what explains a rate below the one asked).
    pub target_late_ticks: u64,
    /// The agent's lost-event counters, summed.
    pub lost_events: u64,
    /// The second memmon's (watching the agent) lost-event counters, summed.
    pub watcher_lost_events: u64,
    /// Every nonzero loss reason of both, "agent reason=N" / "second reason=N", for the verdict.
    pub loss_reasons: Vec<String>,
    /// What `memory-summary` (a fresh snapshot) said the slow leak's site holds.
    pub leak_reported_bytes: u64,
    /// The target's leaked bytes just before and just after that `memory-summary`.
    pub leak_truth_before: u64,
    pub leak_truth_after: u64,
    /// The severity `check-leaks` gave the slow leak's site, if flagged yet.
    pub leak_flag: Option<String>,
    /// Leak indicators (any kind but high_usage) the second memmon has for the agent now.
    pub agent_leak_flags: usize,
}

/// A leak indicator as the soak judges it.
#[derive(Clone, Debug, PartialEq)]
pub struct Flag {
    pub kind: String,
    pub severity: String,
    /// The allocating function; None for a process-wide indicator.
    pub function: Option<String>,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub summary: String,
}

/// The target's own counts at one moment (its "stats" line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetStats {
    pub allocations: u64,
    pub frees: u64,
    pub leak_blocks: u64,
    pub leak_bytes: u64,
    pub late_ticks: u64,
}

impl TargetStats {
    /// Parses `stats allocations=A frees=F leak_blocks=L leak_bytes=B late_ticks=T`.
    pub fn parse(line: &str) -> Option<Self> {
        let mut stats = Self::default();
        let mut fields = line.strip_prefix("stats ")?.split(' ');
        for (name, slot) in [
            ("allocations", &mut stats.allocations),
            ("frees", &mut stats.frees),
            ("leak_blocks", &mut stats.leak_blocks),
            ("leak_bytes", &mut stats.leak_bytes),
            ("late_ticks", &mut stats.late_ticks),
        ] {
            *slot = fields.next()?.strip_prefix(name)?.strip_prefix('=')?.parse().ok()?;
        }
        fields.next().is_none().then_some(stats)
    }

    pub fn live_blocks(&self) -> u64 {
        self.allocations - self.frees
    }
}

/// What the run saw at its end, besides the samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Finale {
    /// Every indicator `check-leaks` reported for the target at the end of the run.
    pub target_flags: Vec<Flag>,
    /// The leak's block count the last leak check can have seen: at least the truth before the
    /// check's snapshot could have been taken, at most the truth after the query.
    pub leak_blocks_range: (u64, u64),
    /// Every indicator the second memmon reported for the agent at the end of the run.
    pub agent_flags: Vec<Flag>,
    /// The target's counts once paused, and `memory-summary` after that.
    pub paused: TargetStats,
    pub summary_leak_bytes: u64,
    pub summary_leak_blocks: u64,
    /// Live blocks of the target (`total_objects`) and its allocations since attach (/metrics).
    pub summary_live_blocks: u64,
    pub summary_allocations: u64,
}

/// The bounds, with why each is what it is in README's Soak section.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// Samples left out of the RSS and CPU criteria (the agent's caches and pools filling).
    pub warmup_samples: usize,
    /// Largest rise of the agent's RSS above its level at the end of the warm-up.
    pub rss_growth_bytes: u64,
    /// Largest least-squares slope of the agent's RSS after the warm-up, bytes per hour.
    pub rss_slope_bytes_per_hour: f64,
    /// No interval's agent CPU above `cpu_band_factor` × the median, or the median plus
    /// `cpu_band_floor_seconds` (a tick or two of /proc's 10 ms clock is not a trend).
    pub cpu_band_factor: f64,
    pub cpu_band_floor_seconds: f64,
    /// The target must keep this share of the rate asked of it, or the run measured less load.
    pub min_rate_ratio: f64,
    /// The function that leaks, and the bytes of each of its blocks.
    pub leak_function: &'static str,
    pub leak_bytes: u64,
}

/// One criterion's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

fn check(name: &'static str, passed: bool, detail: String) -> Check {
    Check { name, passed, detail }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Every criterion, in the order the verdict prints them.
pub fn judge(samples: &[Sample], finale: &Finale, bounds: &Bounds, requested_rate: f64) -> Vec<Check> {
    vec![
        rate_kept(samples, bounds, requested_rate),
        rss_flat(samples, bounds),
        cpu_in_band(samples, bounds),
        nothing_lost(samples),
        leak_tracked_exactly(samples),
        leak_flagged(finale, bounds),
        no_false_positive(finale, bounds),
        agent_not_leaking(finale),
        totals_exact(finale, bounds),
    ]
}

fn after_warmup<'a>(samples: &'a [Sample], bounds: &Bounds) -> &'a [Sample] {
    samples.get(bounds.warmup_samples..).unwrap_or(&[])
}

fn rate_kept(samples: &[Sample], bounds: &Bounds, requested: f64) -> Check {
    let slowest = samples.iter().map(|s| s.target_rate).fold(f64::INFINITY, f64::min);
    let passed = !samples.is_empty() && slowest >= bounds.min_rate_ratio * requested;
    check(
        "target kept its allocation rate",
        passed,
        format!("slowest interval {slowest:.0}/s, asked {requested:.0}/s (at least {:.0}%)", bounds.min_rate_ratio * 100.0),
    )
}

fn rss_flat(samples: &[Sample], bounds: &Bounds) -> Check {
    let steady = after_warmup(samples, bounds);
    if steady.len() < 3 {
        return check("agent RSS flat", false, format!("only {} samples after the warm-up; need 3", steady.len()));
    }
    let base = steady[0].agent_rss_bytes;
    let highest = steady.iter().map(|s| s.agent_rss_bytes).max().unwrap_or(base);
    let growth = highest.saturating_sub(base);
    let points: Vec<(f64, f64)> = steady.iter().map(|s| (s.at_seconds, s.agent_rss_bytes as f64)).collect();
    let slope_per_hour = least_squares(&points).map_or(0.0, |(slope, _)| slope * 3600.0);
    check(
        "agent RSS flat",
        growth <= bounds.rss_growth_bytes && slope_per_hour <= bounds.rss_slope_bytes_per_hour,
        format!(
            "{:.1} MiB after warm-up, highest +{:.2} MiB (bound {:.2}), slope {:+.2} MiB/h (bound {:.2})",
            base as f64 / MIB,
            growth as f64 / MIB,
            bounds.rss_growth_bytes as f64 / MIB,
            slope_per_hour / MIB,
            bounds.rss_slope_bytes_per_hour / MIB
        ),
    )
}

fn cpu_in_band(samples: &[Sample], bounds: &Bounds) -> Check {
    let steady = after_warmup(samples, bounds);
    if steady.len() < 3 {
        return check("agent CPU in band", false, format!("only {} samples after the warm-up; need 3", steady.len()));
    }
    let cpu: Vec<f64> = steady.iter().map(|s| s.agent_cpu_seconds).collect();
    let median = crate::median(&cpu);
    let ceiling = (median * bounds.cpu_band_factor).max(median + bounds.cpu_band_floor_seconds);
    let highest = cpu.iter().copied().fold(0.0, f64::max);
    check(
        "agent CPU in band",
        highest <= ceiling,
        format!("per interval: median {median:.2} s, highest {highest:.2} s, ceiling {ceiling:.2} s"),
    )
}

fn nothing_lost(samples: &[Sample]) -> Check {
    let last = samples.last().cloned().unwrap_or_default();
    check(
        "no lost events",
        !samples.is_empty() && last.lost_events == 0 && last.watcher_lost_events == 0,
        format!("agent {}, second memmon {}", last.lost_events, last.watcher_lost_events)
            + &if last.loss_reasons.is_empty() { String::new() } else { format!(" ({})", last.loss_reasons.join(", ")) },
    )
}

fn leak_tracked_exactly(samples: &[Sample]) -> Check {
    let off: Vec<String> = samples
        .iter()
        .filter(|s| s.leak_reported_bytes < s.leak_truth_before || s.leak_reported_bytes > s.leak_truth_after)
        .map(|s| format!("{:.0} s: {} B, truth {}..{} B", s.at_seconds, s.leak_reported_bytes, s.leak_truth_before, s.leak_truth_after))
        .collect();
    check(
        "slow leak's bytes equal the truth at every sample",
        !samples.is_empty() && off.is_empty(),
        if off.is_empty() { format!("{} samples", samples.len()) } else { off.join("; ") },
    )
}

fn leak_flagged(finale: &Finale, bounds: &Bounds) -> Check {
    let (low, high) = finale.leak_blocks_range;
    let flag = finale
        .target_flags
        .iter()
        .find(|f| f.kind == "site_growth" && f.function.as_deref() == Some(bounds.leak_function));
    let Some(flag) = flag else {
        return check("slow leak found", false, format!("check-leaks did not flag {}", bounds.leak_function));
    };
    let exact = flag.live_bytes == flag.live_allocations * bounds.leak_bytes;
    let in_range = (low..=high).contains(&flag.live_allocations);
    check(
        "slow leak found",
        flag.severity == "critical" && exact && in_range,
        format!(
            "{} {}: {} B in {} blocks ({} B each: {}), blocks the check can have seen {low}..={high}",
            flag.severity,
            bounds.leak_function,
            flag.live_bytes,
            flag.live_allocations,
            bounds.leak_bytes,
            if exact { "exact" } else { "NOT exact" }
        ),
    )
}

fn no_false_positive(finale: &Finale, bounds: &Bounds) -> Check {
    let others: Vec<String> = finale
        .target_flags
        .iter()
        .filter(|f| f.kind == "site_growth" && f.function.as_deref() != Some(bounds.leak_function))
        .map(|f| format!("{} at {}", f.severity, f.function.as_deref().unwrap_or("?")))
        .collect();
    check(
        "no churning site flagged",
        others.is_empty(),
        if others.is_empty() { "only the slow leak's site".into() } else { others.join(", ") },
    )
}

/// "No leak in the agent": the second memmon flags no site (site_growth) and no process-wide
/// growth (rss_growth, heap_growth) at any severity; `high_usage` is a level, not a leak.
fn agent_not_leaking(finale: &Finale) -> Check {
    let leaks: Vec<String> = finale
        .agent_flags
        .iter()
        .filter(|f| f.kind != "high_usage")
        .map(|f| format!("{} {}: {}", f.severity, f.kind, f.summary))
        .collect();
    check(
        "second memmon finds no leak in the agent",
        leaks.is_empty(),
        if leaks.is_empty() {
            format!("{} indicator(s), none a leak", finale.agent_flags.len())
        } else {
            leaks.join("; ")
        },
    )
}

fn totals_exact(finale: &Finale, bounds: &Bounds) -> Check {
    let p = &finale.paused;
    let pairs = [
        ("leak bytes", finale.summary_leak_bytes, p.leak_bytes),
        ("leak blocks", finale.summary_leak_blocks, p.leak_blocks),
        ("live blocks", finale.summary_live_blocks, p.live_blocks()),
        ("allocations", finale.summary_allocations, p.allocations),
    ];
    let wrong: Vec<String> =
        pairs.iter().filter(|(_, seen, truth)| seen != truth).map(|(what, seen, truth)| format!("{what} {seen} ≠ {truth}")).collect();
    check(
        "paused target's totals exact",
        wrong.is_empty() && p.leak_bytes == p.leak_blocks * bounds.leak_bytes,
        if wrong.is_empty() {
            format!(
                "{} allocations, {} live blocks, leak {} B in {} blocks",
                p.allocations,
                p.live_blocks(),
                p.leak_bytes,
                p.leak_blocks
            )
        } else {
            wrong.join(", ")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        warmup_samples: 1,
        rss_growth_bytes: 4 << 20,
        rss_slope_bytes_per_hour: 4.0 * MIB,
        cpu_band_factor: 2.0,
        cpu_band_floor_seconds: 0.05,
        min_rate_ratio: 0.9,
        leak_function: "leak_slowly",
        leak_bytes: 4000,
    };

    fn steady(n: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                at_seconds: 60.0 * (i + 1) as f64,
                agent_rss_bytes: 30 << 20,
                agent_cpu_seconds: 1.0,
                target_rate: 100_000.0,
                leak_reported_bytes: 4000 * (i as u64 + 1),
                leak_truth_before: 4000 * (i as u64 + 1),
                leak_truth_after: 4000 * (i as u64 + 1),
                leak_flag: None,
                ..Sample::default()
            })
            .collect()
    }

    fn flag(kind: &str, severity: &str, function: Option<&str>, bytes: u64, blocks: u64) -> Flag {
        Flag {
            kind: kind.into(),
            severity: severity.into(),
            function: function.map(str::to_string),
            live_bytes: bytes,
            live_allocations: blocks,
            summary: String::new(),
        }
    }

    fn good_finale() -> Finale {
        Finale {
            target_flags: vec![flag("site_growth", "critical", Some("leak_slowly"), 400_000, 100), flag("heap_growth", "warning", None, 0, 0)],
            leak_blocks_range: (95, 101),
            agent_flags: vec![flag("high_usage", "info", None, 0, 0)],
            paused: TargetStats { allocations: 1000, frees: 800, leak_blocks: 102, leak_bytes: 408_000, late_ticks: 0 },
            summary_leak_bytes: 408_000,
            summary_leak_blocks: 102,
            summary_live_blocks: 200,
            summary_allocations: 1000,
        }
    }

    fn failures(samples: &[Sample], finale: &Finale) -> Vec<&'static str> {
        judge(samples, finale, &BOUNDS, 100_000.0).into_iter().filter(|c| !c.passed).map(|c| c.name).collect()
    }

    #[test]
    fn a_steady_run_passes_every_criterion() {
        assert_eq!(failures(&steady(10), &good_finale()), Vec::<&str>::new());
    }

    #[test]
    fn stats_lines_parse_exactly_or_not_at_all() {
        let line = "stats allocations=10 frees=4 leak_blocks=2 leak_bytes=8000 late_ticks=1";
        assert_eq!(
            TargetStats::parse(line),
            Some(TargetStats { allocations: 10, frees: 4, leak_blocks: 2, leak_bytes: 8000, late_ticks: 1 })
        );
        assert_eq!(TargetStats::parse("stats allocations=10 frees=4"), None);
        assert_eq!(TargetStats::parse(&format!("{line} extra=1")), None);
        assert_eq!(TargetStats::parse("done start"), None);
    }

    #[test]
    fn rss_growing_past_the_bound_or_sloping_up_fails() {
        let mut jump = steady(10);
        jump[9].agent_rss_bytes += 5 << 20;
        assert_eq!(failures(&jump, &good_finale()), vec!["agent RSS flat"]);
        // 0.5 MiB a minute: every step small, the slope 30 MiB/h.
        let mut creeping = steady(10);
        for (i, s) in creeping.iter_mut().enumerate() {
            s.agent_rss_bytes += (i as u64) << 19;
        }
        assert!(failures(&creeping, &good_finale()).contains(&"agent RSS flat"));
        // The warm-up's rise does not count.
        let mut warming = steady(10);
        warming[0].agent_rss_bytes = 10 << 20;
        assert!(failures(&warming, &good_finale()).is_empty());
    }

    #[test]
    fn a_cpu_interval_out_of_band_fails() {
        let mut spike = steady(10);
        spike[5].agent_cpu_seconds = 2.5;
        assert_eq!(failures(&spike, &good_finale()), vec!["agent CPU in band"]);
        let mut within = steady(10);
        within[5].agent_cpu_seconds = 1.9;
        assert!(failures(&within, &good_finale()).is_empty());
    }

    #[test]
    fn too_few_samples_after_the_warm_up_fail_rather_than_pass() {
        let failed = failures(&steady(3), &good_finale());
        assert!(failed.contains(&"agent RSS flat") && failed.contains(&"agent CPU in band"), "{failed:?}");
        assert!(failures(&[], &good_finale()).contains(&"no lost events"));
    }

    #[test]
    fn a_slow_target_or_a_lost_event_fails() {
        let mut slow = steady(10);
        slow[3].target_rate = 80_000.0;
        assert_eq!(failures(&slow, &good_finale()), vec!["target kept its allocation rate"]);
        let mut lost = steady(10);
        lost[9].watcher_lost_events = 1;
        assert_eq!(failures(&lost, &good_finale()), vec!["no lost events"]);
    }

    #[test]
    fn leak_bytes_outside_the_truth_fail() {
        let mut off = steady(10);
        off[4].leak_reported_bytes -= 4000;
        assert_eq!(failures(&off, &good_finale()), vec!["slow leak's bytes equal the truth at every sample"]);
    }

    #[test]
    fn the_leak_must_be_flagged_critical_exactly_within_its_range() {
        let with_flag = |f: Flag| Finale { target_flags: vec![f], ..good_finale() };
        let name = "slow leak found";
        assert_eq!(failures(&steady(10), &Finale { target_flags: vec![], ..good_finale() }), vec![name]);
        assert_eq!(failures(&steady(10), &with_flag(flag("site_growth", "warning", Some("leak_slowly"), 400_000, 100))), vec![name]);
        assert_eq!(failures(&steady(10), &with_flag(flag("site_growth", "critical", Some("leak_slowly"), 400_001, 100))), vec![name]);
        assert_eq!(failures(&steady(10), &with_flag(flag("site_growth", "critical", Some("leak_slowly"), 360_000, 90))), vec![name]);
    }

    #[test]
    fn another_flagged_site_or_a_leak_in_the_agent_fails() {
        let mut finale = good_finale();
        finale.target_flags.push(flag("site_growth", "warning", Some("cache_insert"), 1, 1));
        assert_eq!(failures(&steady(10), &finale), vec!["no churning site flagged"]);
        let mut finale = good_finale();
        finale.agent_flags.push(flag("rss_growth", "warning", None, 0, 0));
        assert_eq!(failures(&steady(10), &finale), vec!["second memmon finds no leak in the agent"]);
    }

    #[test]
    fn paused_totals_must_match_the_target_exactly() {
        let mut finale = good_finale();
        finale.summary_allocations = 999;
        assert_eq!(failures(&steady(10), &finale), vec!["paused target's totals exact"]);
        let mut finale = good_finale();
        finale.summary_live_blocks = 201;
        assert_eq!(failures(&steady(10), &finale), vec!["paused target's totals exact"]);
    }
}
