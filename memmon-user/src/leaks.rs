//! Leak detection over a time series of checks (pure: no I/O, no clock).
//!
//! The agent feeds one [`CheckInput`] per traced process every MEMMON_LEAK_CHECK_INTERVAL
//! seconds; [`Detector::check`] answers with that process' current [`Indicator`]s.
//!
//! A false positive pages someone at night, so every growth rule asks for *sustained* growth:
//! a value must strictly grow at several consecutive checks **and** by more than a ratio. What
//! this rules out, by construction:
//! - churn (live bytes going up and down) keeps resetting the streak;
//! - a warm-up that grows for a check or two and then plateaus resets at the plateau;
//! - a single large long-lived allocation is one jump, a streak of 1.
//!
//! Three families of indicators:
//! - [`Kind::SiteGrowth`]: one allocation site (call stack) whose live bytes *and* live block
//!   count grew at consecutive checks (see [`Detector::check`] for the exact rule);
//! - [`Kind::RssGrowth`] / [`Kind::HeapGrowth`]: the process' RSS or traced live heap grew at
//!   consecutive checks, rate and ratio from a least-squares fit over the streak;
//! - [`Kind::HighUsage`]: a point-in-time note that RSS is high (info only, never paged on).
use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

/// How many checks of a process are kept for RSS / heap growth: the evidence window of the
/// process-wide indicators, so their rate reflects recent behaviour, not the whole lifetime.
const HISTORY: usize = 10;

/// The "approaching the leak threshold" level, as a fraction of [`Thresholds::memory_bytes`].
const APPROACHING: f64 = 0.8;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// MEMMON_LEAK_GROWTH_THRESHOLD: growth ratio of a process' RSS or heap over the window (0.2 = +20%).
    pub growth_ratio: f64,
    /// MEMMON_LEAK_MEMORY_THRESHOLD_MB, in bytes: above this level, sustained growth is critical.
    pub memory_bytes: u64,
    /// MEMMON_LEAK_SITE_GROWTH_THRESHOLD: a site's growth ratio over its growth streak (1.0 = doubled).
    pub site_growth_ratio: f64,
    /// MEMMON_HIGH_USAGE_THRESHOLD_MB, in bytes: RSS above this is reported at info level.
    pub high_usage_bytes: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            growth_ratio: 0.2,
            memory_bytes: 100 << 20,
            site_growth_ratio: 1.0,
            high_usage_bytes: 50 << 20,
        }
    }
}

/// One leak check of one process.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckInput {
    /// Monotonic time of the check, seconds.
    pub at_seconds: f64,
    pub pid: u32,
    pub rss_bytes: u64,
    pub heap_live_bytes: u64,
    /// Every site with live memory (a site absent here has 0 live).
    pub sites: Vec<SitePoint>,
    /// Frees so far of blocks allocated before memmon attached (cumulative).
    pub untracked_frees: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SitePoint {
    pub site: u64,
    pub live_bytes: u64,
    pub live_count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    RssGrowth,
    HeapGrowth,
    SiteGrowth,
    HighUsage,
}

/// A leak indicator with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Indicator {
    pub kind: Kind,
    pub severity: Severity,
    pub pid: u32,
    /// The site (SiteGrowth only); None for process-wide indicators.
    pub site: Option<u64>,
    /// Current live bytes (site) or level (RSS / heap for process-wide kinds).
    pub live_bytes: u64,
    /// Current live blocks (site, heap); 0 where it does not apply.
    pub live_allocations: u64,
    /// Growth over the evidence window, bytes (may be negative only in tests of helpers).
    pub growth_bytes: i64,
    pub growth_bytes_per_second: f64,
    /// Growth relative to the start of the evidence window (f64::INFINITY never: use the first observed value as base).
    pub growth_ratio: f64,
    /// Seconds from the first to the last check of the evidence.
    pub window_seconds: f64,
    /// How many consecutive checks showed growth (the streak), or checks in the window.
    pub checks: u32,
    /// One line for a person, e.g. "site grew 3 checks in a row: +20.0 KiB (+2.0x) at 10.0 KiB/s".
    pub summary: String,
}

/// One site's values at one check.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SiteValues {
    at: f64,
    bytes: u64,
    count: u64,
}

/// Growth-streak state of one (pid, site).
#[derive(Clone, Copy, Debug, PartialEq)]
struct SiteState {
    /// The values at the previous check, to tell growth.
    prev: SiteValues,
    /// The values where the streak started (the last non-growing check).
    base: SiteValues,
    /// Consecutive checks at which both live bytes and live count strictly grew.
    streak: u32,
    /// How many blocks the count rose by at the last check.
    last_rise: u64,
}

impl SiteState {
    /// A first sighting is not growth: it only sets the base.
    fn first(now: SiteValues) -> Self {
        Self { prev: now, base: now, streak: 0, last_rise: 0 }
    }

    /// Growth needs bytes *and* count to grow: bytes alone is a realloc or a bigger block
    /// replacing a smaller one (churn); count alone with flat bytes is not more memory.
    fn advance(self, now: SiteValues) -> Self {
        if now.bytes > self.prev.bytes && now.count > self.prev.count {
            let last_rise = now.count - self.prev.count;
            Self { prev: now, base: self.base, streak: self.streak.saturating_add(1), last_rise }
        } else {
            Self::first(now)
        }
    }
}

/// One process-wide sample.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    at: f64,
    rss: u64,
    heap: u64,
    heap_blocks: u64,
}

#[derive(Debug, Default)]
struct ProcessState {
    /// The last [`HISTORY`] checks, oldest first.
    history: VecDeque<Sample>,
    sites: HashMap<u64, SiteState>,
    /// Checks seen for this process.
    checks: u32,
    /// Time from which the live heap is trusted for trends (see [`HEAP_SETTLE_CHECKS`]).
    heap_from: Option<f64>,
    /// `untracked_frees` at the previous check.
    untracked_frees: u64,
}

/// Checks after attach whose live-heap totals are left out of the heap trend. The live heap
/// counts only blocks allocated since attach, so right after attach it climbs as the blocks
/// allocated before are replaced: tracking's warm-up, not the program's.
const HEAP_SETTLE_CHECKS: u32 = 2;

pub struct Detector {
    thresholds: Thresholds,
    processes: HashMap<u32, ProcessState>,
}

impl Detector {
    pub fn new(thresholds: Thresholds) -> Self {
        Self { thresholds, processes: HashMap::new() }
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Feeds one check of one process; returns that process' current indicators, most severe first
    /// (then by live_bytes descending). State for other pids is untouched.
    ///
    /// Rules (thresholds from [`Thresholds`]):
    /// - **Site growth**: per site, the streak counts consecutive checks at which both live bytes
    ///   and live count strictly grew; any other check (and the first sighting) resets it, with
    ///   the base set to the current values. A site absent from the check, or present with 0 live
    ///   bytes, has 0 live: its state is dropped, and its next sighting is a first sighting.
    ///   ratio = (live - base) / base. Warning at streak >= 2, critical at streak >= 3, both
    ///   only when ratio > `site_growth_ratio`. A steady leak first seen at check 1 is thus
    ///   warning at check 3 and critical at check 4. No level threshold for sites: a site that
    ///   doubled over 3 growing checks in a row is a leak whatever its size.
    /// - **RSS / heap growth**: streak of consecutive strict increases over the last
    ///   10 checks (`HISTORY`); with at least 3 points (streak >= 2), a least-squares line through
    ///   them gives the rate and the ratio = fitted growth / fitted value at the streak start.
    ///   Warning at streak >= 2, critical at streak >= 3 and level > `memory_bytes`, both only
    ///   when ratio > `growth_ratio`.
    /// - The live heap's first [`HEAP_SETTLE_CHECKS`] checks are left out of its trend.
    /// - **High usage**: info when RSS > 0.8 x `memory_bytes` ("approaching", or "above" past
    ///   it) or RSS > `high_usage_bytes`; one indicator at most.
    ///
    /// The same site id listed twice in one check is summed (two records of one stack).
    /// Time is expected to be monotonic; if it is not, only rates suffer (guarded to stay
    /// finite), never the streaks.
    pub fn check(&mut self, input: &CheckInput) -> Vec<Indicator> {
        let thresholds = self.thresholds;
        let state = self.processes.entry(input.pid).or_default();
        state.checks += 1;
        if state.checks == HEAP_SETTLE_CHECKS + 1 {
            state.heap_from = Some(input.at_seconds);
        }
        let live_blocks = input.sites.iter().fold(0u64, |sum, s| sum.saturating_add(s.live_count));
        let previous_blocks = state.history.back().map_or(0, |s| s.heap_blocks);
        state.history.push_back(Sample {
            at: input.at_seconds,
            rss: input.rss_bytes,
            heap: input.heap_live_bytes,
            heap_blocks: live_blocks,
        });
        // Blocks from before attach freed since the last check: up to this many tracked blocks
        // may have arrived as their replacements rather than as new memory.
        let replaced = input.untracked_frees.saturating_sub(state.untracked_frees);
        state.untracked_frees = input.untracked_frees;
        while state.history.len() > HISTORY {
            state.history.pop_front();
        }

        let mut found = Vec::new();
        let rss: Vec<(f64, u64)> = state.history.iter().map(|s| (s.at, s.rss)).collect();
        let heap: Vec<(f64, u64)> = match state.heap_from {
            Some(from) => state.history.iter().filter(|s| s.at >= from).map(|s| (s.at, s.heap)).collect(),
            None => Vec::new(),
        };
        let heap_replacement = live_blocks.saturating_sub(previous_blocks) <= replaced;
        for (kind, series, blocks, maybe_replacement) in
            [(Kind::RssGrowth, rss, 0, false), (Kind::HeapGrowth, heap, live_blocks, heap_replacement)]
        {
            found.extend(process_growth(kind, input.pid, &series, blocks, maybe_replacement, &thresholds));
        }
        found.extend(high_usage(input, &thresholds));

        let mut next = HashMap::new();
        for (site, (bytes, count)) in merge_sites(&input.sites) {
            let now = SiteValues { at: input.at_seconds, bytes, count };
            let site_state = match state.sites.get(&site) {
                Some(old) => old.advance(now),
                None => SiteState::first(now),
            };
            found.extend(site_growth(input.pid, site, &site_state, replaced, &thresholds));
            next.insert(site, site_state);
        }
        state.sites = next;

        found.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(b.live_bytes.cmp(&a.live_bytes))
                .then(kind_rank(a.kind).cmp(&kind_rank(b.kind)))
                .then(a.site.cmp(&b.site))
        });
        found
    }

    /// Forgets a process (it exited).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }
}

/// Least-squares fit of (t, v): returns (slope per second, intercept). Pub for tests and reuse.
///
/// None with fewer than 2 points, no variance in t (a vertical line has no slope), or a
/// non-finite input or result. Sums are centred on the means, so large absolute times (an
/// uptime in seconds) do not cost precision.
pub fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 || points.iter().any(|(t, v)| !t.is_finite() || !v.is_finite()) {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|(t, _)| t).sum::<f64>() / n;
    let mean_v = points.iter().map(|(_, v)| v).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for (t, v) in points {
        covariance += (t - mean_t) * (v - mean_v);
        variance += (t - mean_t) * (t - mean_t);
    }
    if variance <= 0.0 || !variance.is_finite() {
        return None;
    }
    let slope = covariance / variance;
    let intercept = mean_v - slope * mean_t;
    (slope.is_finite() && intercept.is_finite()).then_some((slope, intercept))
}

/// Sums the sites of one check by id (sorted, for deterministic output); 0-byte sites are left
/// out: they have nothing live, the same as absent.
fn merge_sites(sites: &[SitePoint]) -> BTreeMap<u64, (u64, u64)> {
    let mut merged: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for point in sites {
        let entry = merged.entry(point.site).or_default();
        entry.0 = entry.0.saturating_add(point.live_bytes);
        entry.1 = entry.1.saturating_add(point.live_count);
    }
    merged.retain(|_, (bytes, _)| *bytes > 0);
    merged
}

/// The site rule of [`Detector::check`], on a site's state after this check.
fn site_growth(
    pid: u32,
    site: u64,
    state: &SiteState,
    replaced: u64,
    thresholds: &Thresholds,
) -> Option<Indicator> {
    let (now, base) = (state.prev, state.base);
    if state.streak < 2 || base.bytes == 0 {
        return None;
    }
    let growth = now.bytes.saturating_sub(base.bytes);
    let ratio = finite(growth as f64 / base.bytes as f64);
    if !exceeds(ratio, thresholds.site_growth_ratio) {
        return None;
    }
    let maybe_replacement = state.last_rise <= replaced;
    let severity = if state.streak >= 3 && !maybe_replacement { Severity::Critical } else { Severity::Warning };
    let window = non_negative(now.at - base.at);
    let rate = per_second(growth as f64, window);
    let summary = format!(
        "site grew {} checks in a row: +{} (+{:.1}x) at {}/s, now {} in {} blocks{}",
        state.streak,
        human_bytes(growth as f64),
        ratio,
        human_bytes(rate),
        human_bytes(now.bytes as f64),
        now.count,
        replacement_note(state.streak >= 3 && maybe_replacement, replaced),
    );
    Some(Indicator {
        kind: Kind::SiteGrowth,
        severity,
        pid,
        site: Some(site),
        live_bytes: now.bytes,
        live_allocations: now.count,
        growth_bytes: i64::try_from(growth).unwrap_or(i64::MAX),
        growth_bytes_per_second: rate,
        growth_ratio: ratio,
        window_seconds: window,
        checks: state.streak,
        summary,
    })
}

/// Why a growth that would be critical stays a warning: right after attach, every block freed
/// from before attach may come back as a tracked one — tracking catching up, not a leak. A
/// rise by more blocks than were replaced since the last check is new memory for sure.
fn replacement_note(held_back: bool, replaced: u64) -> String {
    match held_back {
        true => format!(
            "; not confirmed: the process freed {replaced} blocks from before memmon attached since the last check, \
             so the growth may be their replacements"
        ),
        false => String::new(),
    }
}

/// Process-wide growth below this over a streak is noise at process scale (request-size
/// jitter, allocator caches, a few pages); small leaks are caught exactly, per site.
const MIN_PROCESS_GROWTH_BYTES: f64 = 1024.0 * 1024.0;

/// Two rises of which one is under a tenth of the other: one jump (a buffer filled once, a
/// sample landing mid-fill) next to a page of noise — a step, not yet a trend. A third rise
/// in a row makes it one.
fn is_a_step(window: &[(f64, u64)]) -> bool {
    let rises: Vec<u64> = window.windows(2).map(|pair| pair[1].1 - pair[0].1).collect();
    let (smallest, largest) = (rises.iter().min().copied().unwrap_or(0), rises.iter().max().copied().unwrap_or(0));
    smallest.saturating_mul(10) < largest
}

/// The RSS / heap rule of [`Detector::check`] on one series (time, level), oldest first.
/// `blocks` is the current live block count reported with it (0 for RSS).
///
/// Judgment calls:
/// - growth_bytes is the *fitted* growth (rate x window), so growth, rate and ratio tell one
///   consistent story and a single noisy last point does not inflate them;
/// - the ratio's base is the fitted value at the streak start; if that is below one byte
///   (growth from nothing, e.g. a heap traced from 0), the first positive observed value of
///   the streak is used instead, so the ratio is never infinite (with a streak >= 2 there are
///   always at least 2 positive values);
/// - with no time variance (all checks at one instant) there is no rate: the observed first
///   and last values stand in for the fit, with a rate of 0.
fn process_growth(
    kind: Kind,
    pid: u32,
    series: &[(f64, u64)],
    blocks: u64,
    maybe_replacement: bool,
    thresholds: &Thresholds,
) -> Option<Indicator> {
    let streak = series.windows(2).rev().take_while(|pair| pair[1].1 > pair[0].1).count();
    if streak < 2 {
        return None;
    }
    let window = &series[series.len() - 1 - streak..];
    if streak == 2 && is_a_step(window) {
        return None;
    }
    let (&(start_at, start_level), &(now_at, now_level)) = (window.first()?, window.last()?);
    let elapsed = now_at - start_at;
    let points: Vec<(f64, f64)> = window.iter().map(|&(t, v)| (t - start_at, v as f64)).collect();
    let (rate, fitted_start, fitted_now) = match least_squares(&points) {
        Some((slope, intercept)) => (slope, intercept, intercept + slope * elapsed),
        None => (0.0, start_level as f64, now_level as f64),
    };
    let growth = finite(fitted_now - fitted_start);
    if growth < MIN_PROCESS_GROWTH_BYTES {
        return None;
    }
    let base = if fitted_start >= 1.0 {
        fitted_start
    } else {
        window.iter().map(|&(_, v)| v).find(|&v| v > 0)? as f64
    };
    let ratio = finite(growth / base);
    if !exceeds(ratio, thresholds.growth_ratio) {
        return None;
    }
    let above = now_level > thresholds.memory_bytes;
    let confirmed = streak >= 3 && above;
    let severity = if confirmed && !maybe_replacement { Severity::Critical } else { Severity::Warning };
    let what = match kind {
        Kind::RssGrowth => "RSS",
        _ => "traced heap",
    };
    let level_note = if above {
        format!(" (above the {} leak threshold)", human_bytes(thresholds.memory_bytes as f64))
    } else {
        String::new()
    };
    let summary = format!(
        "{what} grew {streak} checks in a row: +{} (+{:.1}%) at {}/s, now {}{level_note}{}",
        human_bytes(growth),
        ratio * 100.0,
        human_bytes(finite(rate)),
        human_bytes(now_level as f64),
        if confirmed && maybe_replacement { "; not confirmed while blocks from before attach are still being replaced" } else { "" },
    );
    Some(Indicator {
        kind,
        severity,
        pid,
        site: None,
        live_bytes: now_level,
        live_allocations: blocks,
        growth_bytes: to_i64(growth),
        growth_bytes_per_second: finite(rate),
        growth_ratio: ratio,
        window_seconds: non_negative(elapsed),
        checks: u32::try_from(streak).unwrap_or(u32::MAX),
        summary,
    })
}

/// The high-usage note: at most one per check. Nearing (or passing) the leak threshold says
/// more than the high-usage level, so it wins when both apply.
fn high_usage(input: &CheckInput, thresholds: &Thresholds) -> Option<Indicator> {
    let rss = input.rss_bytes;
    let limit = human_bytes(thresholds.memory_bytes as f64);
    let summary = if rss > thresholds.memory_bytes {
        format!("RSS {} is above the {limit} leak threshold", human_bytes(rss as f64))
    } else if rss as f64 > APPROACHING * thresholds.memory_bytes as f64 {
        format!("RSS {} is approaching the {limit} leak threshold", human_bytes(rss as f64))
    } else if rss > thresholds.high_usage_bytes {
        format!(
            "RSS {} is above the {} high-usage threshold",
            human_bytes(rss as f64),
            human_bytes(thresholds.high_usage_bytes as f64)
        )
    } else {
        return None;
    };
    Some(Indicator {
        kind: Kind::HighUsage,
        severity: Severity::Info,
        pid: input.pid,
        site: None,
        live_bytes: rss,
        live_allocations: 0,
        growth_bytes: 0,
        growth_bytes_per_second: 0.0,
        growth_ratio: 0.0,
        window_seconds: 0.0,
        checks: 1,
        summary,
    })
}

/// Tie-break of the output order after severity and live bytes: process-wide first.
fn kind_rank(kind: Kind) -> u8 {
    match kind {
        Kind::RssGrowth => 0,
        Kind::HeapGrowth => 1,
        Kind::SiteGrowth => 2,
        Kind::HighUsage => 3,
    }
}

/// `value > threshold`, false when either is NaN: a broken threshold flags nothing.
fn exceeds(value: f64, threshold: f64) -> bool {
    value > threshold
}

/// NaN and infinities become 0: output must never carry them (JSON cannot, and a NaN breaks
/// every comparison downstream).
fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

fn non_negative(x: f64) -> f64 {
    finite(x).max(0.0)
}

/// Bytes per second; 0 over an empty (or backwards) window, which has no rate.
fn per_second(bytes: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { finite(bytes / seconds) } else { 0.0 }
}

/// Rounds to i64, saturating (and NaN to 0), as `as` does, spelled out.
fn to_i64(x: f64) -> i64 {
    finite(x).round() as i64
}

/// The report's byte formatting for a fitted (real, possibly negative) amount.
fn human_bytes(bytes: f64) -> String {
    let bytes = finite(bytes);
    let sign = if bytes < 0.0 { "-" } else { "" };
    format!("{sign}{}", crate::report::human_bytes(bytes.abs().round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;

    fn site(site: u64, live_bytes: u64, live_count: u64) -> SitePoint {
        SitePoint { site, live_bytes, live_count }
    }

    fn input(at: f64, pid: u32, rss: u64, heap: u64, sites: Vec<SitePoint>) -> CheckInput {
        CheckInput { at_seconds: at, pid, rss_bytes: rss, heap_live_bytes: heap, sites, untracked_frees: 0 }
    }

    /// (kind, severity) of each indicator, in output order.
    fn kinds(found: &[Indicator]) -> Vec<(Kind, Severity)> {
        found.iter().map(|i| (i.kind, i.severity)).collect()
    }

    fn assert_sane(found: &[Indicator]) {
        for i in found {
            for x in [i.growth_bytes_per_second, i.growth_ratio, i.window_seconds] {
                assert!(x.is_finite(), "{i:?}");
            }
            assert!(i.window_seconds >= 0.0, "{i:?}");
            assert!(!i.summary.is_empty());
        }
    }

    /// A process with a constant 20 MiB RSS and 10 MiB heap besides the given sites.
    fn quiet(at: f64, pid: u32, sites: Vec<SitePoint>) -> CheckInput {
        let extra: u64 = sites.iter().map(|s| s.live_bytes).sum();
        input(at, pid, 20 * MIB + extra, 10 * MIB + extra, sites)
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let t = Thresholds::default();
        assert_eq!(t.growth_ratio, 0.2);
        assert_eq!(t.memory_bytes, 100 * MIB);
        assert_eq!(t.site_growth_ratio, 1.0);
        assert_eq!(t.high_usage_bytes, 50 * MIB);
        assert_eq!(Detector::new(t).thresholds(), t);
    }

    #[test]
    fn steady_churn_is_never_flagged_over_20_checks() {
        let mut detector = Detector::new(Thresholds::default());
        // Rises of up to 2 checks in a row, by less than double, then falls; RSS and heap churn
        // the same way around a plateau.
        let bytes = [100, 120, 150, 90, 110, 140, 100, 60, 100, 80];
        let counts = [10, 12, 15, 9, 11, 14, 10, 6, 10, 8];
        for check in 0..20 {
            let i = check % bytes.len();
            let churn = bytes[i] * KIB;
            let sites = vec![
                site(1, churn, counts[i]),
                site(2, 300 * KIB - churn, 30 - counts[i]),
                site(3, 4 * MIB, 1),
            ];
            let found = detector.check(&input(
                check as f64,
                1,
                30 * MIB + churn * 8,
                5 * MIB + churn,
                sites,
            ));
            assert_eq!(kinds(&found), vec![], "check {check}: {found:?}");
        }
    }

    #[test]
    fn warm_up_growing_one_check_then_plateau_is_never_flagged() {
        let mut detector = Detector::new(Thresholds::default());
        let levels = [1, 8, 8, 8, 8, 8, 8, 8];
        for (check, &level) in levels.iter().enumerate() {
            let sites = vec![site(7, level * MIB, level * 16)];
            let found =
                detector.check(&input(check as f64, 1, level * 4 * MIB, level * MIB, sites));
            assert_eq!(kinds(&found), vec![], "check {check}");
        }
    }

    #[test]
    fn warm_up_growing_two_checks_may_warn_then_returns_to_nothing() {
        let mut detector = Detector::new(Thresholds::default());
        let levels = [1, 2, 4, 4, 4, 4, 4];
        let mut seen = Vec::new();
        for (check, &level) in levels.iter().enumerate() {
            let sites = vec![site(7, level * MIB, level * 16)];
            let found =
                detector.check(&input(check as f64, 1, level * 8 * MIB, level * MIB, sites));
            assert_sane(&found);
            seen.push(kinds(&found));
        }
        assert_eq!(seen[0], vec![]);
        assert_eq!(seen[1], vec![]);
        // During the growth: warnings only (RSS 32 MiB is below every level threshold). The
        // heap is still settling after attach, so only RSS and the site speak.
        assert_eq!(
            seen[2],
            vec![(Kind::RssGrowth, Severity::Warning), (Kind::SiteGrowth, Severity::Warning)]
        );
        for (check, kinds) in seen.iter().enumerate().skip(3) {
            assert_eq!(kinds, &vec![], "check {check}");
        }
    }

    #[test]
    fn single_large_allocation_is_never_flagged() {
        let mut detector = Detector::new(Thresholds::default());
        for check in 0..12u64 {
            let mut sites = vec![site(1, 64 * KIB, 8)];
            if check >= 3 {
                sites.push(site(2, 30 * MIB, 1));
            }
            let big = if check >= 3 { 30 * MIB } else { 0 };
            let found =
                detector.check(&input(check as f64, 1, 12 * MIB + big, 64 * KIB + big, sites));
            assert_eq!(kinds(&found), vec![], "check {check}");
        }
    }

    #[test]
    fn single_large_allocation_above_high_usage_is_info_only() {
        let mut detector = Detector::new(Thresholds::default());
        for check in 0..8u64 {
            let big = if check >= 2 { 60 * MIB } else { 0 };
            let sites = vec![site(1, 64 * KIB, 8), site(2, big, u64::from(check >= 2))];
            let found =
                detector.check(&input(check as f64, 1, 10 * MIB + big, 64 * KIB + big, sites));
            let expected =
                if check >= 2 { vec![(Kind::HighUsage, Severity::Info)] } else { vec![] };
            assert_eq!(kinds(&found), expected, "check {check}");
        }
    }

    #[test]
    fn one_jump_next_to_a_page_of_noise_is_a_step_not_growth() {
        let mut detector = Detector::new(Thresholds { high_usage_bytes: u64::MAX, ..Thresholds::default() });
        // RSS: a page more at check 1, then an 8 MiB buffer filled at check 2, then flat.
        let rss = [10 * MIB, 10 * MIB + 4 * KIB, 18 * MIB + 4 * KIB, 18 * MIB + 4 * KIB];
        for (check, &rss) in rss.iter().enumerate() {
            let found = detector.check(&input(check as f64, 1, rss, 64 * KIB, vec![site(1, 64 * KIB, 8)]));
            assert_eq!(kinds(&found), vec![], "check {check}");
        }
        // Growth that goes on is a trend again, however it started.
        let found = detector.check(&input(4.0, 1, 26 * MIB, 64 * KIB, vec![site(1, 64 * KIB, 8)]));
        assert_eq!(kinds(&found), vec![], "flat then one rise: streak 1");
        let found = detector.check(&input(5.0, 1, 34 * MIB, 64 * KIB, vec![site(1, 64 * KIB, 8)]));
        assert_eq!(kinds(&found), vec![(Kind::RssGrowth, Severity::Warning)]);
    }

    #[test]
    fn growth_explained_by_replaced_blocks_is_not_confirmed() {
        let mut detector = Detector::new(Thresholds::default());
        // A site gains 50 blocks a check while the process frees 50 blocks from before attach:
        // maybe a cache whose old entries are being replaced by tracked ones.
        let mut seen = Vec::new();
        for check in 1..=6u64 {
            let mut input = quiet(check as f64, 1, vec![site(5, 50 * KIB * check, 50 * check)]);
            input.untracked_frees = 50 * check;
            seen.push(detector.check(&input));
        }
        assert_eq!(kinds(&seen[2]), vec![(Kind::SiteGrowth, Severity::Warning)]);
        for found in &seen[3..] {
            assert_eq!(kinds(found), vec![(Kind::SiteGrowth, Severity::Warning)], "held at warning");
            assert!(found[0].summary.contains("freed 50 blocks from before memmon attached"), "{}", found[0].summary);
        }
        // Once old blocks stop being freed, growth is new memory: confirmed.
        let mut input = quiet(7.0, 1, vec![site(5, 50 * KIB * 7, 50 * 7)]);
        input.untracked_frees = 50 * 6;
        assert_eq!(kinds(&detector.check(&input)), vec![(Kind::SiteGrowth, Severity::Critical)]);
    }

    #[test]
    fn growth_beyond_the_replaced_blocks_is_confirmed() {
        let mut detector = Detector::new(Thresholds::default());
        let mut last = Vec::new();
        for check in 1..=4u64 {
            let mut input = quiet(check as f64, 1, vec![site(5, 50 * KIB * check, 50 * check)]);
            input.untracked_frees = 49 * check; // one block a check more than was replaced
            last = detector.check(&input);
        }
        assert_eq!(kinds(&last), vec![(Kind::SiteGrowth, Severity::Critical)]);
        assert!(!last[0].summary.contains("not confirmed"));
    }

    #[test]
    fn small_process_growth_is_noise() {
        let mut detector = Detector::new(Thresholds { high_usage_bytes: u64::MAX, ..Thresholds::default() });
        // A churning heap of ~120 KiB that happens to rise three checks in a row by 23%.
        let heap = [120 * KIB, 110 * KIB, 118 * KIB, 114 * KIB, 122 * KIB, 131 * KIB, 140 * KIB];
        for (check, &heap) in heap.iter().enumerate() {
            let found = detector.check(&input(check as f64, 1, 10 * MIB, heap, vec![site(1, heap, 64)]));
            assert_eq!(kinds(&found), vec![], "check {check}");
        }
    }

    #[test]
    fn steady_leak_is_warning_at_third_check_and_critical_at_fourth() {
        let mut detector = Detector::new(Thresholds::default());
        let per_second = 10 * KIB;
        let leak = |check: u64| site(42, per_second * check, check);
        let mut results = Vec::new();
        for check in 1..=6u64 {
            let sites = vec![site(1, 30 * MIB, 1000), leak(check)];
            let extra = per_second * check;
            let found =
                detector.check(&input(check as f64, 9, 40 * MIB + extra, 30 * MIB + extra, sites));
            assert_sane(&found);
            results.push(found);
        }
        assert_eq!(kinds(&results[0]), vec![]);
        assert_eq!(kinds(&results[1]), vec![]);
        assert_eq!(kinds(&results[2]), vec![(Kind::SiteGrowth, Severity::Warning)]);
        let warning = &results[2][0];
        assert_eq!(warning.checks, 2);
        assert_eq!(warning.growth_bytes, 20 * KIB as i64);
        assert_eq!(warning.growth_ratio, 2.0);
        assert_eq!(
            warning.summary,
            "site grew 2 checks in a row: +20.0 KiB (+2.0x) at 10.0 KiB/s, now 30.0 KiB in 3 blocks"
        );

        assert_eq!(kinds(&results[3]), vec![(Kind::SiteGrowth, Severity::Critical)]);
        let critical = &results[3][0];
        assert_eq!(critical.pid, 9);
        assert_eq!(critical.site, Some(42));
        assert_eq!(critical.live_bytes, 40 * KIB);
        assert_eq!(critical.live_allocations, 4);
        assert_eq!(critical.growth_bytes, 30 * KIB as i64);
        assert!((critical.growth_bytes_per_second - 10240.0).abs() <= 102.4);
        assert_eq!(critical.growth_ratio, 3.0);
        assert_eq!(critical.window_seconds, 3.0);
        assert_eq!(critical.checks, 3);

        // It stays critical while it keeps growing.
        assert_eq!(kinds(&results[5]), vec![(Kind::SiteGrowth, Severity::Critical)]);
        assert_eq!(results[5][0].checks, 5);
        assert_eq!(results[5][0].growth_bytes, 50 * KIB as i64);
    }

    #[test]
    fn site_with_only_count_or_only_bytes_growing_is_not_flagged() {
        let mut detector = Detector::new(Thresholds::default());
        for check in 0..10u64 {
            let sites = vec![
                // More blocks, same bytes (smaller blocks).
                site(1, 64 * KIB, 1 + check),
                // More bytes, same count (a buffer realloc'd bigger each time).
                site(2, KIB << check, 1),
            ];
            let found = detector.check(&quiet(check as f64, 1, sites));
            assert_eq!(kinds(&found), vec![], "check {check}");
        }
    }

    #[test]
    fn site_that_disappears_resets() {
        let mut detector = Detector::new(Thresholds::default());
        let mut check =
            |at: f64, sites: Vec<SitePoint>| kinds(&detector.check(&quiet(at, 1, sites)));
        assert_eq!(check(1.0, vec![site(5, 10 * KIB, 1)]), vec![]);
        assert_eq!(check(2.0, vec![site(5, 20 * KIB, 2)]), vec![]);
        assert_eq!(
            check(3.0, vec![site(5, 30 * KIB, 3)]),
            vec![(Kind::SiteGrowth, Severity::Warning)]
        );
        // Gone: 0 live.
        assert_eq!(check(4.0, vec![]), vec![]);
        // Back, bigger than ever: a first sighting again, not growth.
        assert_eq!(check(5.0, vec![site(5, 40 * KIB, 4)]), vec![]);
        assert_eq!(check(6.0, vec![site(5, 80 * KIB, 8)]), vec![]);
        assert_eq!(
            check(7.0, vec![site(5, 120 * KIB, 12)]),
            vec![(Kind::SiteGrowth, Severity::Warning)]
        );
        // Listed with 0 live bytes is the same as absent.
        assert_eq!(check(8.0, vec![site(5, 0, 0)]), vec![]);
        assert_eq!(check(9.0, vec![site(5, 130 * KIB, 13)]), vec![]);
    }

    #[test]
    fn site_growth_below_site_ratio_is_not_flagged() {
        let mut detector = Detector::new(Thresholds::default());
        for check in 0..30u64 {
            let sites = vec![site(3, 1_000_000 + 1000 * check, 1000 + check)];
            let found = detector.check(&quiet(check as f64, 1, sites));
            assert_eq!(kinds(&found), vec![], "check {check}");
        }
    }

    #[test]
    fn site_ratio_threshold_is_configurable() {
        // Growth of 1 KB/check over 1 MB passes a 0.1% threshold at the second growing check.
        let thresholds = Thresholds { site_growth_ratio: 0.001, ..Thresholds::default() };
        let mut detector = Detector::new(thresholds);
        let mut seen = Vec::new();
        for check in 0..4u64 {
            let sites = vec![site(3, 1_000_000 + 1000 * check, 1000 + check)];
            seen.push(kinds(&detector.check(&quiet(check as f64, 1, sites))));
        }
        assert_eq!(seen[1], vec![]);
        assert_eq!(seen[2], vec![(Kind::SiteGrowth, Severity::Warning)]);
        assert_eq!(seen[3], vec![(Kind::SiteGrowth, Severity::Critical)]);
    }

    /// RSS 80, 90, 100, 110 MiB one second apart; heap flat.
    fn rss_ramp(thresholds: Thresholds) -> Vec<Vec<Indicator>> {
        let mut detector = Detector::new(thresholds);
        (0..4u64)
            .map(|check| {
                detector.check(&input(check as f64, 1, (80 + 10 * check) * MIB, MIB, vec![]))
            })
            .collect()
    }

    #[test]
    fn rss_growth_is_critical_only_above_memory_threshold() {
        let found = rss_ramp(Thresholds::default());
        let info = (Kind::HighUsage, Severity::Info);
        assert_eq!(kinds(&found[0]), vec![info]);
        assert_eq!(kinds(&found[1]), vec![info]);
        assert_eq!(kinds(&found[2]), vec![(Kind::RssGrowth, Severity::Warning), info]);
        assert_eq!(kinds(&found[3]), vec![(Kind::RssGrowth, Severity::Critical), info]);
        let rss = &found[3][0];
        assert_eq!(rss.live_bytes, 110 * MIB);
        assert_eq!(rss.checks, 3);
        assert_eq!(rss.growth_bytes, 30 * MIB as i64);
        assert!((rss.growth_bytes_per_second - (10 * MIB) as f64).abs() < 1.0);
        assert!((rss.growth_ratio - 0.375).abs() < 1e-9);
        assert_eq!(rss.window_seconds, 3.0);
        assert_eq!(
            rss.summary,
            "RSS grew 3 checks in a row: +30.0 MiB (+37.5%) at 10.0 MiB/s, now 110.0 MiB \
             (above the 100.0 MiB leak threshold)"
        );
    }

    #[test]
    fn rss_growth_below_memory_threshold_stays_warning() {
        let thresholds = Thresholds { memory_bytes: 1024 * MIB, ..Thresholds::default() };
        let found = rss_ramp(thresholds);
        let info = (Kind::HighUsage, Severity::Info);
        assert_eq!(kinds(&found[2]), vec![(Kind::RssGrowth, Severity::Warning), info]);
        assert_eq!(kinds(&found[3]), vec![(Kind::RssGrowth, Severity::Warning), info]);
    }

    #[test]
    fn rss_growth_below_growth_ratio_is_not_flagged() {
        let mut detector = Detector::new(Thresholds::default());
        for check in 0..10u64 {
            // +1% per check: 9 checks in a row, but +9% over the window.
            let rss = 20 * MIB + check * 200 * KIB;
            let found = detector.check(&input(check as f64, 1, rss, MIB, vec![]));
            assert_eq!(kinds(&found), vec![], "check {check}");
        }
    }

    #[test]
    fn rss_single_jump_is_not_flagged() {
        let mut detector = Detector::new(Thresholds::default());
        let levels = [10, 10, 45, 45, 45, 45, 45];
        for (check, &level) in levels.iter().enumerate() {
            let found = detector.check(&input(check as f64, 1, level * MIB, MIB, vec![]));
            assert_eq!(kinds(&found), vec![], "check {check}");
        }
    }

    #[test]
    fn process_window_is_capped_at_ten_checks() {
        let mut detector = Detector::new(Thresholds::default());
        let mut last = Vec::new();
        for check in 0..15u64 {
            last =
                detector.check(&input(2.0 * check as f64, 1, 10 * MIB, (1 + check) * MIB, vec![]));
        }
        assert_eq!(kinds(&last), vec![(Kind::HeapGrowth, Severity::Warning)]);
        let heap = &last[0];
        assert_eq!(heap.checks, 9);
        assert_eq!(heap.window_seconds, 18.0);
        assert_eq!(heap.growth_bytes, 9 * MIB as i64);
        assert!((heap.growth_bytes_per_second - (MIB / 2) as f64).abs() < 1.0);
        // From 6 MiB to 15 MiB.
        assert!((heap.growth_ratio - 1.5).abs() < 1e-9);
    }

    #[test]
    fn heap_growth_from_zero_has_a_finite_ratio() {
        let mut detector = Detector::new(Thresholds::default());
        let mut last = Vec::new();
        // Two settling checks (left out of the heap trend), then growth from zero.
        for check in 0..6u64 {
            let heap = check.saturating_sub(2) * 10 * MIB;
            let sites = if heap > 0 { vec![site(1, heap, check)] } else { vec![] };
            last = detector.check(&input(check as f64, 1, 20 * MIB, heap, sites));
            assert_sane(&last);
        }
        // Heap 30 MiB is below the memory threshold: warning. The site was first seen at
        // 10 MiB, so it has grown 2 checks in a row (x3): warning too.
        assert_eq!(
            kinds(&last),
            vec![(Kind::HeapGrowth, Severity::Warning), (Kind::SiteGrowth, Severity::Warning)]
        );
        let heap = &last[0];
        assert_eq!(heap.live_allocations, 5);
        // Fitted start is 0: the base is the first positive value, 10 MiB.
        assert!((heap.growth_ratio - 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_heap_climbing_right_after_attach_is_not_a_trend() {
        let mut detector = Detector::new(Thresholds { high_usage_bytes: u64::MAX, ..Thresholds::default() });
        // Tracked heap climbs from 0 as pre-attach blocks are replaced, then wobbles.
        for (check, heap) in [0u64, 60, 100, 104, 108, 103, 101].into_iter().enumerate() {
            let found = detector.check(&input(check as f64, 1, MIB, heap * KIB, vec![]));
            assert!(found.is_empty(), "check {check}: {found:?}");
        }
    }

    #[test]
    fn high_usage_is_info_and_at_most_one() {
        // A fresh detector each time: these levels would otherwise be RSS growth.
        let high =
            |rss: u64| Detector::new(Thresholds::default()).check(&input(0.0, 1, rss, 0, vec![]));
        assert_eq!(kinds(&high(50 * MIB)), vec![]);

        let found = high(60 * MIB);
        assert_eq!(kinds(&found), vec![(Kind::HighUsage, Severity::Info)]);
        assert_eq!(found[0].live_bytes, 60 * MIB);
        assert_eq!(found[0].summary, "RSS 60.0 MiB is above the 50.0 MiB high-usage threshold");

        let found = high(90 * MIB);
        assert_eq!(kinds(&found), vec![(Kind::HighUsage, Severity::Info)]);
        assert_eq!(found[0].summary, "RSS 90.0 MiB is approaching the 100.0 MiB leak threshold");

        let found = high(150 * MIB);
        assert_eq!(kinds(&found), vec![(Kind::HighUsage, Severity::Info)]);
        assert_eq!(found[0].summary, "RSS 150.0 MiB is above the 100.0 MiB leak threshold");
    }

    #[test]
    fn approaching_applies_below_the_high_usage_level() {
        let thresholds = Thresholds {
            memory_bytes: 40 * MIB,
            high_usage_bytes: 500 * MIB,
            ..Default::default()
        };
        let mut detector = Detector::new(thresholds);
        assert_eq!(kinds(&detector.check(&input(0.0, 1, 31 * MIB, 0, vec![]))), vec![]);
        let found = detector.check(&input(1.0, 1, 33 * MIB, 0, vec![]));
        assert_eq!(kinds(&found), vec![(Kind::HighUsage, Severity::Info)]);
        assert!(found[0].summary.contains("approaching"), "{}", found[0].summary);
    }

    #[test]
    fn two_pids_are_independent() {
        let mut detector = Detector::new(Thresholds::default());
        let mut seen = Vec::new();
        for check in 1..=4u64 {
            let at = check as f64;
            // pid 1 leaks at site 1; pid 2 has the same site id, flat, interleaved.
            let leaking = detector.check(&quiet(at, 1, vec![site(1, 10 * KIB * check, check)]));
            let flat = detector.check(&quiet(at + 0.5, 2, vec![site(1, 10 * KIB, 1)]));
            assert_eq!(kinds(&flat), vec![], "check {check}");
            assert!(leaking.iter().all(|i| i.pid == 1));
            seen.push(kinds(&leaking));
        }
        assert_eq!(seen[2], vec![(Kind::SiteGrowth, Severity::Warning)]);
        assert_eq!(seen[3], vec![(Kind::SiteGrowth, Severity::Critical)]);
    }

    #[test]
    fn forget_drops_a_process_state() {
        let mut detector = Detector::new(Thresholds::default());
        for check in 1..=4u64 {
            detector.check(&quiet(check as f64, 1, vec![site(1, 10 * KIB * check, check)]));
            detector.check(&quiet(check as f64, 2, vec![site(1, 10 * KIB * check, check)]));
        }
        detector.forget(1);
        detector.forget(77); // Unknown: nothing happens.
        // pid 1 starts over: its next growing check is a first sighting.
        let again = detector.check(&quiet(5.0, 1, vec![site(1, 50 * KIB, 5)]));
        assert_eq!(kinds(&again), vec![]);
        // pid 2 kept its streak.
        let kept = detector.check(&quiet(5.0, 2, vec![site(1, 50 * KIB, 5)]));
        assert_eq!(kinds(&kept), vec![(Kind::SiteGrowth, Severity::Critical)]);
        assert_eq!(kept[0].checks, 4);
    }

    #[test]
    fn least_squares_fits_a_line_exactly() {
        assert_eq!(least_squares(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some((2.0, 1.0)));
        assert_eq!(least_squares(&[(10.0, 7.0), (20.0, 7.0)]), Some((0.0, 7.0)));
        // Large absolute times keep their precision.
        let base = 1.0e9;
        let (slope, intercept) =
            least_squares(&[(base, 100.0), (base + 1.0, 110.0), (base + 2.0, 120.0)]).unwrap();
        assert!((slope - 10.0).abs() < 1e-9);
        assert!((intercept + slope * base - 100.0).abs() < 1e-3);
        // Scatter around a line: the fit is the known least-squares answer.
        let (slope, intercept) =
            least_squares(&[(0.0, 0.0), (1.0, 2.0), (2.0, 1.0), (3.0, 3.0)]).unwrap();
        assert!((slope - 0.8).abs() < 1e-12);
        assert!((intercept - 0.3).abs() < 1e-12);
    }

    #[test]
    fn least_squares_refuses_what_has_no_slope() {
        assert_eq!(least_squares(&[]), None);
        assert_eq!(least_squares(&[(1.0, 2.0)]), None);
        assert_eq!(least_squares(&[(3.0, 1.0), (3.0, 9.0), (3.0, 4.0)]), None);
        assert_eq!(least_squares(&[(0.0, 1.0), (f64::NAN, 2.0)]), None);
        assert_eq!(least_squares(&[(0.0, f64::INFINITY), (1.0, 2.0)]), None);
    }

    #[test]
    fn output_is_most_severe_first_then_largest() {
        let thresholds = Thresholds { memory_bytes: 30 * MIB, ..Thresholds::default() };
        let mut detector = Detector::new(thresholds);
        let mut found = Vec::new();
        for check in 1..=4u64 {
            // Site 1 leaks from check 1 (critical at 4), site 2 from check 2 (warning at 4),
            // site 3 leaks faster from check 1 (critical, larger); RSS grows past 30 MiB.
            let mut sites =
                vec![site(1, 10 * KIB * check, check), site(3, 100 * KIB * check, check)];
            if check >= 2 {
                sites.push(site(2, 5 * MIB * (check - 1), check - 1));
            }
            let rss = 16 * MIB * check;
            found = detector.check(&input(check as f64, 1, rss, 64 * MIB, sites));
        }
        let order: Vec<(Kind, Severity, Option<u64>)> =
            found.iter().map(|i| (i.kind, i.severity, i.site)).collect();
        assert_eq!(
            order,
            vec![
                (Kind::RssGrowth, Severity::Critical, None),
                (Kind::SiteGrowth, Severity::Critical, Some(3)),
                (Kind::SiteGrowth, Severity::Critical, Some(1)),
                (Kind::SiteGrowth, Severity::Warning, Some(2)),
                (Kind::HighUsage, Severity::Info, None),
            ]
        );
        let sorted = found
            .windows(2)
            .all(|w| (w[0].severity, w[0].live_bytes) >= (w[1].severity, w[1].live_bytes));
        assert!(sorted);
    }

    #[test]
    fn duplicate_site_ids_are_summed() {
        let mut detector = Detector::new(Thresholds::default());
        let mut last = Vec::new();
        for check in 1..=3u64 {
            let half = 5 * KIB * check;
            last = detector.check(&quiet(
                check as f64,
                1,
                vec![site(4, half, check), site(4, half, check)],
            ));
        }
        assert_eq!(kinds(&last), vec![(Kind::SiteGrowth, Severity::Warning)]);
        assert_eq!(last[0].live_bytes, 30 * KIB);
        assert_eq!(last[0].live_allocations, 6);
    }

    #[test]
    fn degenerate_inputs_do_not_panic_nor_produce_nan() {
        let mut detector = Detector::new(Thresholds::default());
        // Empty and zero.
        assert_eq!(detector.check(&input(0.0, 1, 0, 0, vec![])), vec![]);
        // All at one instant: streaks still count, rates are 0.
        for check in 1..=4u64 {
            let found = detector.check(&input(
                0.0,
                2,
                check * 200 * MIB,
                check * MIB,
                vec![site(1, check * KIB, check)],
            ));
            assert_sane(&found);
            if check == 4 {
                assert!(found.iter().all(|i| i.growth_bytes_per_second == 0.0), "{found:?}");
                assert_eq!(found[0].kind, Kind::RssGrowth);
                assert_eq!(found[0].severity, Severity::Critical);
            }
        }
        // Huge values, time going backwards, NaN time.
        let times = [5.0, 4.0, f64::NAN, 3.0, f64::INFINITY, 1.0e300, 1.0e300];
        for (check, &at) in times.iter().enumerate() {
            let n = check as u64;
            let big = u64::MAX - 10 + n;
            let sites = vec![site(1, big, big), site(2, u64::MAX, 1), site(2, u64::MAX, u64::MAX)];
            let found = detector.check(&input(at, 3, big, big, sites));
            assert_sane(&found);
        }
        // Zero thresholds.
        let zero = Thresholds {
            growth_ratio: 0.0,
            memory_bytes: 0,
            site_growth_ratio: 0.0,
            high_usage_bytes: 0,
        };
        let mut detector = Detector::new(zero);
        for check in 0..5u64 {
            let found =
                detector.check(&input(check as f64, 1, check, check, vec![site(1, check, check)]));
            assert_sane(&found);
        }
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0.0), "0 B");
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1023.0), "1023 B");
        assert_eq!(human_bytes(1024.0), "1.0 KiB");
        assert_eq!(human_bytes(10240.0), "10.0 KiB");
        assert_eq!(human_bytes(1.5 * MIB as f64), "1.5 MiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * MIB as f64), "3.0 GiB");
        assert_eq!(human_bytes(-2048.0), "-2.0 KiB");
        assert_eq!(human_bytes(f64::NAN), "0 B");
        assert_eq!(human_bytes(u64::MAX as f64), "16384.0 PiB");
    }
}
