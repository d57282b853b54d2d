//! `memmon report summary`: a profile on one screen — what it is, its window, its totals, the
//! memory over the window, the top allocating functions, and memory by library.
//!
//! Parts that come from memmon's metadata (state, targets, timeline, lost events) are left out
//! for a profile from another producer rather than shown empty.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    measure::{By, Measure, Sample},
    model::{Model, Values},
};
use crate::{profiles::meta::TimelinePoint, report::human_bytes};

/// Timeline rows per process, besides its peaks.
const TIMELINE_ROWS: usize = 8;

/// The summary, with `top` functions per list.
pub fn render(model: &Model, top: usize) -> String {
    let mut out = String::new();
    let meta = &model.meta;
    let _ =
        writeln!(out, "{}", if model.has_meta() { model.name() } else { "heap profile (no memmon metadata)".into() });
    if model.has_meta() {
        let reason = if meta.reason.is_empty() { String::new() } else { format!(" ({})", meta.reason) };
        let _ = writeln!(out, "  state: {}{reason}", meta.state.name());
        let targets: Vec<String> = meta.targets.iter().map(|t| model.process_name(t.pid)).collect();
        let _ = writeln!(
            out,
            "  targets: {}",
            if targets.is_empty() { "none recorded".into() } else { targets.join(", ") }
        );
    }
    let _ = writeln!(out, "  window: {}", window(model));
    let totals = model.totals();
    let _ = writeln!(
        out,
        "  allocated during window: {} in {} allocations",
        Measure { sample: Sample::Alloc, by: By::Bytes }.describe(totals.alloc_space),
        totals.alloc_objects
    );
    let _ = writeln!(
        out,
        "  live at end of window: {} in {} blocks",
        Measure::default().describe(totals.inuse_space),
        totals.inuse_objects
    );
    if !meta.timeline.is_empty() {
        timeline(&mut out, model);
    }
    for exec in &meta.execs {
        let _ = writeln!(
            out,
            "  pid {} exec'ed at +{:.1} s: {} → {}; the old image's {} B in {} blocks discarded, its allocations not in this profile",
            exec.pid, exec.seconds, exec.from_comm, exec.to_comm, exec.discarded_bytes, exec.discarded_blocks
        );
    }
    top_functions(&mut out, model, Sample::Inuse, top);
    top_functions(&mut out, model, Sample::Alloc, top);
    by_library(&mut out, model);
    if model.has_meta() {
        if meta.events_lost.is_empty() {
            out.push_str("  events lost: none\n");
        } else {
            let lost: Vec<String> = meta.events_lost.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
            let _ = writeln!(out, "  events lost (numbers above may be low): {}", lost.join(", "));
        }
    }
    out
}

/// "2026-01-02 03:04:05 UTC, 60.0 s"; producers that record no start get the length only.
fn window(model: &Model) -> String {
    let window = model.window;
    let seconds = window.duration_nanos as f64 / 1e9;
    let start = jiff::Timestamp::from_nanosecond(i128::from(window.start_unix_nanos))
        .ok()
        .filter(|_| window.start_unix_nanos != 0);
    match start {
        Some(start) => format!("{} UTC, {seconds:.1} s", start.strftime("%Y-%m-%d %H:%M:%S")),
        None if window.duration_nanos != 0 => format!("start not recorded, {seconds:.1} s"),
        None => "not recorded".into(),
    }
}

/// The peaks, then a few rows per process: evenly spaced, plus the peak points themselves.
fn timeline(out: &mut String, model: &Model) {
    let (peak_rss, peak_heap) = model.meta.peaks();
    let mut by_pid: BTreeMap<u32, Vec<&TimelinePoint>> = BTreeMap::new();
    for point in &model.meta.timeline {
        by_pid.entry(point.pid).or_default().push(point);
    }
    let of_any = if by_pid.len() > 1 { " (highest of any target)" } else { "" };
    let _ = writeln!(
        out,
        "  peak over the window{of_any}: RSS {} ({peak_rss} bytes), live heap {} ({peak_heap} bytes)",
        human_bytes(peak_rss),
        human_bytes(peak_heap)
    );
    for (pid, mut points) in by_pid {
        points.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let _ = writeln!(out, "  memory of {} over the window:", model.process_name(pid));
        let _ =
            writeln!(out, "  {:>10}  {:>10} {:>12}  {:>10} {:>12}", "SECONDS", "RSS", "BYTES", "LIVE HEAP", "BYTES");
        for point in sampled(&points) {
            let _ = writeln!(
                out,
                "  {:>10.1}  {:>10} {:>12}  {:>10} {:>12}",
                point.seconds,
                human_bytes(point.rss_bytes),
                point.rss_bytes,
                human_bytes(point.heap_live_bytes),
                point.heap_live_bytes
            );
        }
    }
}

/// Up to `TIMELINE_ROWS` evenly spaced points (first and last included) and the peaks.
fn sampled<'a>(points: &[&'a TimelinePoint]) -> Vec<&'a TimelinePoint> {
    let last = points.len().saturating_sub(1);
    let rows = TIMELINE_ROWS.min(points.len());
    let mut chosen: Vec<usize> = (0..rows).map(|i| if rows == 1 { 0 } else { i * last / (rows - 1) }).collect();
    let peak =
        |key: fn(&TimelinePoint) -> u64| (0..points.len()).max_by_key(|&i| (key(points[i]), std::cmp::Reverse(i)));
    chosen.extend(peak(|p| p.rss_bytes));
    chosen.extend(peak(|p| p.heap_live_bytes));
    chosen.sort_unstable();
    chosen.dedup();
    chosen.into_iter().map(|i| points[i]).collect()
}

/// The allocating functions (innermost frames, merged by name) holding the most of `sample`.
fn top_functions(out: &mut String, model: &Model, sample: Sample, top: usize) {
    let mut functions: BTreeMap<&str, (Values, &str)> = BTreeMap::new();
    for stack in &model.stacks {
        let (name, module) =
            stack.allocating_frame().map_or(("[unknown stack]", ""), |f| (f.function.as_str(), f.module.as_str()));
        functions.entry(name).or_insert((Values::default(), module)).0 += stack.values;
    }
    let bytes = Measure { sample, by: By::Bytes };
    let count = Measure { sample, by: By::Count };
    let mut ranked: Vec<_> = functions.into_iter().filter(|(_, (values, _))| bytes.of(values) > 0).collect();
    ranked.sort_by(|a, b| {
        (bytes.of(&b.1.0), count.of(&b.1.0)).cmp(&(bytes.of(&a.1.0), count.of(&a.1.0))).then(a.0.cmp(b.0))
    });
    let heading = match sample {
        Sample::Inuse => "top functions by live bytes at end of window (self)",
        Sample::Alloc => "top functions by bytes allocated during window (self)",
    };
    if ranked.is_empty() {
        let _ = writeln!(out, "  {heading}: none");
        return;
    }
    let _ = writeln!(out, "  {heading}:");
    for (name, (values, module)) in ranked.iter().take(top) {
        let module = if module.is_empty() { String::new() } else { format!("  ({module})") };
        let _ = writeln!(
            out,
            "    {} {:>8} {:<11}  {name}{module}",
            bytes.cell(bytes.of(values)),
            count.of(values),
            count.unit()
        );
    }
    if ranked.len() > top {
        let _ = writeln!(out, "    … {} more", ranked.len() - top);
    }
}

/// Live and allocated bytes by the object the allocating function is in.
fn by_library(out: &mut String, model: &Model) {
    let mut libraries: BTreeMap<&str, Values> = BTreeMap::new();
    for stack in &model.stacks {
        let module =
            stack.allocating_frame().map(|f| f.module.as_str()).filter(|m| !m.is_empty()).unwrap_or("[unknown]");
        *libraries.entry(module).or_default() += stack.values;
    }
    let mut ranked: Vec<(&str, Values)> = libraries.into_iter().collect();
    ranked
        .sort_by(|a, b| (b.1.inuse_space, b.1.alloc_space).cmp(&(a.1.inuse_space, a.1.alloc_space)).then(a.0.cmp(b.0)));
    let _ = writeln!(out, "  bytes by library (of the allocating function):");
    let _ =
        writeln!(out, "    {:>10} {:>12}  {:>10} {:>12}  LIBRARY", "LIVE", "LIVE BYTES", "ALLOCATED", "ALLOC BYTES");
    for (library, values) in ranked {
        let _ = writeln!(
            out,
            "    {:>10} {:>12}  {:>10} {:>12}  {library}",
            human_bytes(values.inuse_space),
            values.inuse_space,
            human_bytes(values.alloc_space),
            values.alloc_space
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{
        meta::{ProfileMeta, State},
        report::fixtures,
    };

    #[test]
    fn a_memmon_profile_on_one_screen() {
        let expected = "\
memmon profile p1
  state: finished (duration reached)
  targets: pid 7 (app)
  window: 2026-01-02 03:04:05 UTC, 60.0 s
  allocated during window: 448.2 KiB (459000 bytes) in 5111 allocations
  live at end of window: 103.3 KiB (105800 bytes) in 105 blocks
  peak over the window: RSS 2.9 MiB (3000000 bytes), live heap 195.3 KiB (200000 bytes)
  memory of pid 7 (app) over the window:
     SECONDS         RSS        BYTES   LIVE HEAP        BYTES
         0.0   976.6 KiB      1000000         0 B            0
        30.0     2.9 MiB      3000000   195.3 KiB       200000
        60.0     1.9 MiB      2000000   103.3 KiB       105800
  top functions by live bytes at end of window (self):
     102.5 KiB       105000      101 blocks       leak_exactly  (app)
         800 B          800        4 blocks       strdup  (libc.so.6)
  top functions by bytes allocated during window (self):
     343.8 KiB       352000     5000 allocations  churn  (app)
     102.5 KiB       105000      101 allocations  leak_exactly  (app)
       2.0 KiB         2000       10 allocations  strdup  (libc.so.6)
  bytes by library (of the allocating function):
          LIVE   LIVE BYTES   ALLOCATED  ALLOC BYTES  LIBRARY
     102.5 KiB       105000   446.3 KiB       457000  app
         800 B          800     2.0 KiB         2000  libc.so.6
  events lost: none
";
        assert_eq!(render(&fixtures::model(), 10), expected);
    }

    #[test]
    fn top_limits_the_function_lists() {
        let summary = render(&fixtures::model(), 1);
        assert!(summary.contains("  churn  (app)\n    … 2 more\n"), "{summary}");
    }

    #[test]
    fn losses_state_and_long_timelines() {
        let mut model = fixtures::model();
        model.meta = ProfileMeta {
            state: State::Truncated,
            reason: "size cap reached".into(),
            events_lost: [("live_table_full".to_string(), 3)].into(),
            timeline: (0..100)
                .map(|i| TimelinePoint {
                    pid: 7,
                    seconds: i as f64,
                    rss_bytes: if i == 41 { 9_000_000 } else { 1000 },
                    heap_live_bytes: i,
                })
                .collect(),
            ..fixtures::meta()
        };
        let summary = render(&model, 10);
        assert!(summary.contains("  state: truncated (size cap reached)\n"), "{summary}");
        assert!(summary.contains("  events lost (numbers above may be low): live_table_full=3\n"), "{summary}");
        assert!(summary.contains("RSS 8.6 MiB (9000000 bytes), live heap 99 B (99 bytes)"), "{summary}");
        let seconds: Vec<&str> = summary
            .lines()
            .skip_while(|l| !l.contains("SECONDS"))
            .skip(1)
            .take_while(|l| !l.contains("top functions"))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(seconds, ["0.0", "14.0", "28.0", "41.0", "42.0", "56.0", "70.0", "84.0", "99.0"], "{summary}");
    }

    #[test]
    fn a_foreign_profile_shows_only_what_it_has() {
        let mut model = fixtures::model();
        model.meta = ProfileMeta::default();
        model.window.start_unix_nanos = 0;
        let summary = render(&model, 10);
        assert!(
            summary.starts_with("heap profile (no memmon metadata)\n  window: start not recorded, 60.0 s\n  allocated"),
            "{summary}"
        );
        for absent in ["state:", "targets:", "peak", "events lost"] {
            assert!(!summary.contains(absent), "{absent}: {summary}");
        }
    }
}
