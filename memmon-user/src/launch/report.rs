//! The exit report of `memmon run`, in valgrind's terms.
//!
//! Counting (as memcheck's HEAP SUMMARY counts): every successful allocation is an alloc —
//! malloc, calloc, the memalign family, C++ new, and each successful realloc/reallocarray (its
//! new block; realloc(NULL, n) is a malloc); every release of a tracked block is a free —
//! free, C++ delete, and the old block of each successful realloc (realloc(p, 0) frees p).
//! free(NULL) and failed allocations count as nothing. Bytes allocated are the sizes asked for.
//! "In use at exit" is what the process had allocated and not released when it exited.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{snapshot::SiteSample, symbolize::Symbolizer, wire::SiteSummary};

use super::suppressions::Suppressions;

/// How the process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Killed(i32),
}

/// What memmon kept of one traced process: its sites as of its exit (counters since its last
/// exec), captured while it still existed.
#[derive(Clone, Debug)]
pub struct Capture {
    pub pid: u32,
    pub command: Vec<String>,
    pub sites: Vec<SiteSample>,
    pub losses: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub bytes: u64,
    pub blocks: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeapUsage {
    pub allocs: u64,
    pub frees: u64,
    pub bytes_allocated: u64,
}

/// A site still live at exit (memory-summary's `top_sites` element), and the suppression that
/// matched it.
#[derive(Clone, Debug, Serialize)]
pub struct ReportSite {
    #[serde(flatten)]
    pub summary: SiteSummary,
    pub suppressed_by: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExitReport {
    pub pid: u32,
    pub command: Vec<String>,
    /// The exit status, when the process exited; null when a signal killed it.
    pub exit_code: Option<i32>,
    /// The signal that killed it ("SIGSEGV"), if one did.
    pub signal: Option<String>,
    pub in_use_at_exit: Usage,
    pub total_heap_usage: HeapUsage,
    /// Of `in_use_at_exit`, what suppressions matched.
    pub suppressed: Usage,
    /// `in_use_at_exit` less `suppressed`: what `--leak-threshold` is compared with.
    pub leaked: Usage,
    /// Sites with blocks in use at exit.
    pub live_sites: u64,
    /// The sites with the most bytes in use at exit, largest first (at most `--top`).
    pub top_sites: Vec<ReportSite>,
    /// Events the kernel could not record, by reason: when any is non-zero, numbers may be low.
    pub events_lost: BTreeMap<String, u64>,
    /// Followed processes (`--follow-forks`), each with the same fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ExitReport>,
}

impl ExitReport {
    pub fn build(capture: &Capture, outcome: Option<Outcome>, symbolizer: &mut Symbolizer, suppressions: &Suppressions, top: usize) -> Self {
        let sites: Vec<&SiteSample> = capture.sites.iter().filter(|s| s.pid == capture.pid).collect();
        let mut in_use = Usage::default();
        let mut heap = HeapUsage::default();
        let mut suppressed = Usage::default();
        let mut live: Vec<ReportSite> = Vec::new();
        for site in &sites {
            heap.allocs += site.stats.alloc_count;
            heap.frees += site.stats.free_count;
            heap.bytes_allocated += site.stats.alloc_bytes;
            if site.live_count() == 0 && site.live_bytes() == 0 {
                continue;
            }
            in_use.bytes += site.live_bytes();
            in_use.blocks += site.live_count();
            let wire_site = symbolizer.site(site.pid, &site.frames, site.truncated);
            let suppressed_by = suppressions.matching(&wire_site.frames);
            if suppressed_by.is_some() {
                suppressed.bytes += site.live_bytes();
                suppressed.blocks += site.live_count();
            }
            live.push(ReportSite {
                summary: SiteSummary {
                    site: wire_site,
                    pid: site.pid,
                    live_bytes: site.live_bytes(),
                    live_allocations: site.live_count(),
                    allocated_bytes: site.stats.alloc_bytes,
                    allocations: site.stats.alloc_count,
                },
                suppressed_by,
            });
        }
        live.sort_by(|a, b| {
            (b.summary.live_bytes, b.summary.live_allocations).cmp(&(a.summary.live_bytes, a.summary.live_allocations))
        });
        let live_sites = live.len() as u64;
        live.truncate(top);
        let (exit_code, signal) = match outcome {
            Some(Outcome::Exited(code)) => (Some(code), None),
            Some(Outcome::Killed(signal)) => (None, Some(super::child::signal_name(signal))),
            None => (None, None),
        };
        Self {
            pid: capture.pid,
            command: capture.command.clone(),
            exit_code,
            signal,
            in_use_at_exit: in_use,
            total_heap_usage: heap,
            suppressed,
            leaked: Usage { bytes: in_use.bytes - suppressed.bytes, blocks: in_use.blocks - suppressed.blocks },
            live_sites,
            top_sites: live,
            events_lost: capture.losses.iter().map(|(reason, &n)| (reason.to_string(), n)).collect(),
            children: Vec::new(),
        }
    }

    /// This process and its followed children, depth first.
    pub fn all(&self) -> Vec<&ExitReport> {
        let mut all = vec![self];
        for child in &self.children {
            all.extend(child.all());
        }
        all
    }

    /// Bytes leaked (after suppressions) by this process and every followed one.
    pub fn leaked_total(&self) -> Usage {
        self.all().iter().fold(Usage::default(), |sum, r| Usage { bytes: sum.bytes + r.leaked.bytes, blocks: sum.blocks + r.leaked.blocks })
    }

    /// valgrind's layout, every line prefixed `==PID==`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for report in self.all() {
            report.text_of_one(&mut out);
        }
        out
    }

    fn text_of_one(&self, out: &mut String) {
        let p = format!("=={}==", self.pid);
        let ended = match (&self.exit_code, &self.signal) {
            (Some(code), _) => format!("exited with {code}"),
            (None, Some(signal)) => format!("killed by {signal}"),
            _ => "ended".into(),
        };
        let _ = writeln!(out, "{p} memmon: HEAP SUMMARY of `{}` ({ended}):", self.command.join(" "));
        let _ = writeln!(out, "{p}     in use at exit: {} bytes in {} blocks", commas(self.in_use_at_exit.bytes), commas(self.in_use_at_exit.blocks));
        let heap = self.total_heap_usage;
        let _ = writeln!(
            out,
            "{p}   total heap usage: {} allocs, {} frees, {} bytes allocated",
            commas(heap.allocs),
            commas(heap.frees),
            commas(heap.bytes_allocated)
        );
        if self.suppressed.blocks > 0 {
            let _ = writeln!(out, "{p}         suppressed: {} bytes in {} blocks", commas(self.suppressed.bytes), commas(self.suppressed.blocks));
            let _ = writeln!(out, "{p}             leaked: {} bytes in {} blocks", commas(self.leaked.bytes), commas(self.leaked.blocks));
        }
        let lost: Vec<String> = self.events_lost.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r}={n}")).collect();
        if !lost.is_empty() {
            let _ = writeln!(out, "{p} events lost (numbers may be low): {}", lost.join(", "));
        }
        for (rank, site) in self.top_sites.iter().enumerate() {
            let s = &site.summary;
            let _ = writeln!(out, "{p}");
            let suppressed = site.suppressed_by.as_deref().map(|by| format!(", suppressed by {by}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "{p} {} bytes in {} blocks still in use at exit (site {} of {}; {} allocs, {} bytes, from here){suppressed}",
                commas(s.live_bytes),
                commas(s.live_allocations),
                rank + 1,
                self.live_sites,
                commas(s.allocations),
                commas(s.allocated_bytes)
            );
            for (depth, frame) in s.site.display_frames().iter().enumerate() {
                let word = if depth == 0 { "at" } else { "by" };
                let place = match (&frame.file, frame.module.is_empty()) {
                    (Some(_), false) => format!(" ({}, {})", frame.location(), frame.module),
                    (None, false) => format!(" ({})", frame.module),
                    _ => String::new(),
                };
                let _ = writeln!(out, "{p}    {word} {}{place}", frame.function);
            }
        }
        if self.live_sites > self.top_sites.len() as u64 {
            let _ = writeln!(out, "{p}");
            let _ = writeln!(out, "{p} … and {} more sites (--top N shows more)", self.live_sites - self.top_sites.len() as u64);
        }
        let _ = writeln!(out, "{p}");
    }
}

/// 1234567 → "1,234,567" (valgrind's numbers).
pub fn commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use memmon_common::{SiteStats, Truncation};

    use super::*;

    fn site(id: u64, pid: u32, alloc: (u64, u64), freed: (u64, u64)) -> SiteSample {
        SiteSample {
            id,
            pid,
            frames: Arc::new(vec![]),
            truncated: Truncation::Complete,
            stats: SiteStats { alloc_count: alloc.0, alloc_bytes: alloc.1, free_count: freed.0, free_bytes: freed.1, live_birth_sum: 0 },
            image_gone: false,
        }
    }

    #[test]
    fn heap_summary_in_valgrinds_terms() {
        let capture = Capture {
            pid: 7,
            command: vec!["prog".into(), "-x".into()],
            sites: vec![site(1, 7, (3, 300), (1, 100)), site(2, 7, (5, 50), (5, 50)), site(3, 8, (9, 9), (0, 0))],
            losses: BTreeMap::from([("live_table_full", 0)]),
        };
        let mut symbolizer = Symbolizer::new();
        let report = ExitReport::build(&capture, Some(Outcome::Killed(11)), &mut symbolizer, &Suppressions::default(), 10);
        assert_eq!(report.in_use_at_exit, Usage { bytes: 200, blocks: 2 });
        assert_eq!(report.total_heap_usage, HeapUsage { allocs: 8, frees: 6, bytes_allocated: 350 });
        assert_eq!(report.leaked, report.in_use_at_exit);
        assert_eq!((report.live_sites, report.top_sites.len()), (1, 1));
        assert_eq!((report.exit_code, report.signal.as_deref()), (None, Some("SIGSEGV")));
        let text = report.text();
        assert!(text.contains("==7== memmon: HEAP SUMMARY of `prog -x` (killed by SIGSEGV):"), "{text}");
        assert!(text.contains("==7==     in use at exit: 200 bytes in 2 blocks\n"), "{text}");
        assert!(text.contains("==7==   total heap usage: 8 allocs, 6 frees, 350 bytes allocated\n"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["in_use_at_exit"], serde_json::json!({"bytes": 200, "blocks": 2}));
        assert_eq!(json["total_heap_usage"], serde_json::json!({"allocs": 8, "frees": 6, "bytes_allocated": 350}));
        assert_eq!(json["top_sites"][0]["live_bytes"], 200);
        assert_eq!(json["top_sites"][0]["live_allocations"], 2);
        assert_eq!(json["top_sites"][0]["allocations"], 3);
        assert!(json["top_sites"][0]["site"]["frames"].is_array());
    }

    #[test]
    fn numbers_with_commas() {
        assert_eq!(commas(0), "0");
        assert_eq!(commas(999), "999");
        assert_eq!(commas(1000), "1,000");
        assert_eq!(commas(7106619), "7,106,619");
    }
}
