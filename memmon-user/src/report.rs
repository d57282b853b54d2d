//! The live text report an operator reads: top sites by live bytes, and the loss counters.

use std::fmt::Write as _;

use crate::symbolize::Frame;

/// A site ready to show: its counters and symbolized frames (innermost first).
#[derive(Clone, Debug)]
pub struct SiteView {
    pub live_bytes: u64,
    pub live_count: u64,
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub frames: Vec<Frame>,
}

impl SiteView {
    /// The allocating function: the innermost frame (the allocator's caller).
    pub fn function(&self) -> &str {
        self.frames.first().map_or("[unknown stack]", |f| f.function.as_str())
    }

    pub fn location(&self) -> String {
        self.frames.first().map(Frame::location).unwrap_or_default()
    }

    /// Up to `depth` callers of the allocating function, innermost first.
    pub fn callers(&self, depth: usize) -> String {
        let names: Vec<&str> =
            self.frames.iter().skip(1).take(depth).map(|f| f.function.as_str()).collect();
        names.join(" ← ")
    }
}

/// Human size: bytes below 1 KiB, else one decimal in the largest binary unit that fits.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// One process' memory outside the heap blocks: the brk heap and anonymous mappings.
#[derive(Clone, Debug)]
pub struct ProcessLine {
    pub pid: u32,
    pub brk_heap_bytes: u64,
    pub program_mapped_bytes: u64,
    pub allocator_mapped_bytes: u64,
}

/// Everything one text report shows.
#[derive(Clone, Debug, Default)]
pub struct Report<'a> {
    pub title: String,
    /// Top heap sites by live bytes.
    pub sites: Vec<SiteView>,
    /// How many heap sites have live memory (the table shows the top ones).
    pub live_sites: usize,
    pub live_bytes: u64,
    pub live_count: u64,
    /// Top sites of anonymous mappings the program made itself.
    pub mapping_sites: Vec<SiteView>,
    pub processes: Vec<ProcessLine>,
    /// Non-zero loss counters only.
    pub losses: Vec<(&'a str, u64)>,
}

impl Report<'_> {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: heap {} live in {} blocks at {} sites",
            self.title,
            human_bytes(self.live_bytes),
            self.live_count,
            self.live_sites
        );
        if self.sites.is_empty() {
            out.push_str("  (no live tracked allocations)\n");
        } else {
            site_table(&mut out, &self.sites);
        }
        if !self.mapping_sites.is_empty() {
            out.push_str("  anonymous mappings made by the program:\n");
            site_table(&mut out, &self.mapping_sites);
        }
        for process in &self.processes {
            let _ = writeln!(
                out,
                "  pid {}: brk heap {}; anonymous mappings since attach: {} by the program, {} by the allocator",
                process.pid,
                human_bytes(process.brk_heap_bytes),
                human_bytes(process.program_mapped_bytes),
                human_bytes(process.allocator_mapped_bytes),
            );
        }
        if self.losses.is_empty() {
            out.push_str("  events lost: none\n");
        } else {
            let listed: Vec<String> = self.losses.iter().map(|(r, n)| format!("{r}={n}")).collect();
            let _ = writeln!(out, "  events lost (numbers above may be low): {}", listed.join(", "));
        }
        out
    }
}

/// The site table shared by the live report and `memory-summary`.
pub fn site_table(out: &mut String, sites: &[SiteView]) {
    let _ = writeln!(
        out,
        "  {:>10} {:>12} {:>8} {:>10} {:>8}  FUNCTION  (LOCATION)  ← CALLERS",
        "LIVE", "LIVE BYTES", "BLOCKS", "ALLOCATED", "ALLOCS"
    );
    for site in sites {
        let callers = site.callers(2);
        let _ = writeln!(
            out,
            "  {:>10} {:>12} {:>8} {:>10} {:>8}  {}  ({}){}",
            human_bytes(site.live_bytes),
            site.live_bytes,
            site.live_count,
            human_bytes(site.alloc_bytes),
            site.alloc_count,
            site.function(),
            site.location(),
            if callers.is_empty() { String::new() } else { format!("  ← {callers}") },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, line: u32) -> Frame {
        Frame {
            function: function.into(),
            module: "app".into(),
            file: Some("app.c".into()),
            line: Some(line),
            python: false,
            address: 0,
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn table_names_function_location_and_callers() {
        let site = SiteView {
            live_bytes: 4096,
            live_count: 4,
            alloc_bytes: 8192,
            alloc_count: 8,
            frames: vec![frame("leak", 10), frame("handle", 20), frame("main", 30)],
        };
        let report = Report {
            title: "pid 7".into(),
            sites: vec![site],
            live_sites: 1,
            live_bytes: 4096,
            live_count: 4,
            processes: vec![ProcessLine {
                pid: 7,
                brk_heap_bytes: 135_168,
                program_mapped_bytes: 12_288,
                allocator_mapped_bytes: 0,
            }],
            ..Report::default()
        };
        let text = report.render();
        assert!(text.starts_with("pid 7: heap 4.0 KiB live in 4 blocks at 1 sites"), "{text}");
        assert!(text.contains("pid 7: brk heap 132.0 KiB; anonymous mappings since attach: 12.0 KiB by the program, 0 B by the allocator"), "{text}");
        assert!(text.contains("4.0 KiB"), "{text}");
        assert!(text.contains(" 4096 "), "{text}");
        assert!(text.contains("leak  (app.c:10)  ← handle ← main"), "{text}");
        assert!(text.contains("events lost: none"), "{text}");
    }

    #[test]
    fn losses_are_flagged() {
        let report = Report { title: "pid 7".into(), losses: vec![("live_table_full", 3)], ..Report::default() };
        let text = report.render();
        assert!(text.contains("(no live tracked allocations)"));
        assert!(text.contains("may be low): live_table_full=3"), "{text}");
    }
}
