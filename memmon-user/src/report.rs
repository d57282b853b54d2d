//! The live text report an operator reads: top sites by live bytes, and the loss counters.

use std::fmt::Write as _;

use crate::symbolize::Frame;

/// A site ready to show: its counters and symbolized frames (innermost first).
#[derive(Clone, Debug)]
pub struct SiteView {
    pub pid: u32,
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

/// The table of top sites, headed by totals. `losses` lists only non-zero counters.
pub fn render(
    title: &str,
    sites: &[SiteView],
    total_live_bytes: u64,
    total_live_count: u64,
    losses: &[(&str, u64)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{title}: {} live in {} blocks across {} sites shown",
        human_bytes(total_live_bytes),
        total_live_count,
        sites.len()
    );
    if sites.is_empty() {
        out.push_str("  (no live tracked allocations)\n");
    } else {
        let _ = writeln!(
            out,
            "  {:>10} {:>12} {:>8} {:>10} {:>8}  {}",
            "LIVE", "LIVE BYTES", "BLOCKS", "ALLOCATED", "ALLOCS", "FUNCTION  (LOCATION)  ← CALLERS"
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
    if losses.is_empty() {
        out.push_str("  events lost: none\n");
    } else {
        let listed: Vec<String> = losses.iter().map(|(r, n)| format!("{r}={n}")).collect();
        let _ = writeln!(out, "  events lost (numbers above may be low): {}", listed.join(", "));
    }
    out
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
            pid: 7,
            live_bytes: 4096,
            live_count: 4,
            alloc_bytes: 8192,
            alloc_count: 8,
            frames: vec![frame("leak", 10), frame("handle", 20), frame("main", 30)],
        };
        let text = render("pid 7", &[site], 4096, 4, &[]);
        assert!(text.contains("4.0 KiB"), "{text}");
        assert!(text.contains(" 4096 "), "{text}");
        assert!(text.contains("leak  (app.c:10)  ← handle ← main"), "{text}");
        assert!(text.contains("events lost: none"), "{text}");
    }

    #[test]
    fn losses_are_flagged() {
        let text = render("pid 7", &[], 0, 0, &[("live_table_full", 3)]);
        assert!(text.contains("(no live tracked allocations)"));
        assert!(text.contains("may be low): live_table_full=3"), "{text}");
    }
}
