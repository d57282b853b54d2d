//! `memmon report table`: one row per allocation site, largest first.
//!
//! The columns are those of the live report (`crate::report::site_table`) plus what a saved
//! profile is read for afterwards: allocated bytes exactly (a churn site is found by its
//! allocated bytes, not its live ones) and the module of the allocating function. So this is its
//! own table; the site's naming (function, location, callers) is `SiteView`'s, as in the live
//! report.

use std::fmt::Write as _;

use super::{
    counted,
    measure::{Measure, percent},
    model::{Model, Stack},
};
use crate::report::{SiteView, human_bytes};

/// How many callers follow the allocating function on a row.
const CALLER_DEPTH: usize = 2;

/// The table of the `top` sites by `measure`; sites where it is zero are left out.
pub fn render(model: &Model, measure: Measure, top: usize) -> String {
    let mut sites: Vec<&Stack> = model.stacks.iter().filter(|s| measure.of(&s.values) > 0).collect();
    // Largest first; ties by the other unit of the same sample, then by name, so the order is
    // stable from run to run.
    let other =
        Measure { by: if measure.by == super::By::Bytes { super::By::Count } else { super::By::Bytes }, ..measure };
    sites.sort_by(|a, b| {
        (measure.of(&b.values), other.of(&b.values))
            .cmp(&(measure.of(&a.values), other.of(&a.values)))
            .then_with(|| function(a).cmp(function(b)))
    });
    let total: u64 = sites.iter().map(|s| measure.of(&s.values)).sum();
    let mut out = String::new();
    let _ = writeln!(out, "{}: sites by {} ({})", model.name(), measure.meaning(), measure.sample_type());
    let left_out = model.stacks.len() - sites.len();
    let _ = write!(out, "  {}, total {}", counted(sites.len(), "site"), measure.describe(total));
    if left_out > 0 {
        let _ = write!(out, "; {} with none", counted(left_out, "other site"));
    }
    out.push('\n');
    if sites.is_empty() {
        return out;
    }

    let shown = &sites[..top.min(sites.len())];
    let with_pid = model.has_several_processes();
    let module_width = shown.iter().map(|s| module(s).len()).max().unwrap_or(0).max("MODULE".len());
    let pid_header = if with_pid { format!("{:>7} ", "PID") } else { String::new() };
    let _ = writeln!(
        out,
        "  {pid_header}{:>10} {:>12} {:>8} {:>10} {:>12} {:>8}  {:module_width$}  FUNCTION  (LOCATION)  ← CALLERS",
        "LIVE", "LIVE BYTES", "BLOCKS", "ALLOCATED", "ALLOC BYTES", "ALLOCS", "MODULE"
    );
    for stack in shown {
        let v = &stack.values;
        let site = site_view(stack);
        let pid = match (with_pid, stack.pid) {
            (true, Some(pid)) => format!("{pid:>7} "),
            (true, None) => format!("{:>7} ", "-"),
            (false, _) => String::new(),
        };
        let callers = site.callers(CALLER_DEPTH);
        let _ = writeln!(
            out,
            "  {pid}{:>10} {:>12} {:>8} {:>10} {:>12} {:>8}  {:module_width$}  {}  ({}){}",
            human_bytes(v.inuse_space),
            v.inuse_space,
            v.inuse_objects,
            human_bytes(v.alloc_space),
            v.alloc_space,
            v.alloc_objects,
            module(stack),
            site.function(),
            site.location(),
            if callers.is_empty() { String::new() } else { format!("  ← {callers}") },
        );
    }
    let hidden = &sites[shown.len()..];
    if !hidden.is_empty() {
        let rest: u64 = hidden.iter().map(|s| measure.of(&s.values)).sum();
        let _ = writeln!(
            out,
            "  … {} with {} ({:.1}%) not shown; --top {} shows all",
            counted(hidden.len(), "more site"),
            measure.describe(rest),
            percent(rest, total),
            sites.len()
        );
    }
    out
}

fn site_view(stack: &Stack) -> SiteView {
    let v = &stack.values;
    SiteView {
        live_bytes: v.inuse_space,
        live_count: v.inuse_objects,
        alloc_bytes: v.alloc_space,
        alloc_count: v.alloc_objects,
        frames: stack.frames.clone(),
    }
}

fn function(stack: &Stack) -> &str {
    stack.allocating_frame().map_or("", |f| f.function.as_str())
}

fn module(stack: &Stack) -> &str {
    stack.allocating_frame().map_or("", |f| f.module.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::report::{By, Sample, fixtures};

    /// The function column of each row, in order.
    fn functions(table: &str) -> Vec<&str> {
        table
            .lines()
            .skip(3)
            .filter(|l| !l.trim_start().starts_with('…'))
            .map(|l| l.split("  (").next().unwrap().rsplit(' ').next().unwrap())
            .collect()
    }

    #[test]
    fn live_bytes_rows_are_exact_and_largest_first() {
        let table = render(&fixtures::model(), Measure::default(), 20);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "memmon profile p1: sites by live bytes at end of window (inuse_space)");
        assert_eq!(lines[1], "  3 sites, total 103.3 KiB (105800 bytes); 1 other site with none");
        assert_eq!(
            lines[3],
            "   102.5 KiB       104950      100  102.5 KiB       104950      100  app        leak_exactly  (app.c:10)  ← handle ← main"
        );
        assert_eq!(
            lines[4],
            "       800 B          800        4    2.0 KiB         2000       10  libc.so.6  strdup  (libc.so.6)  ← handle ← main"
        );
        assert_eq!(functions(&table), ["leak_exactly", "strdup", "leak_exactly"]);
        assert!(
            lines[2].contains("LIVE BYTES") && lines[2].contains("ALLOC BYTES") && lines[2].contains("MODULE"),
            "{table}"
        );
    }

    #[test]
    fn alloc_sample_and_count_sort_differently() {
        let alloc_bytes = render(&fixtures::model(), Measure { sample: Sample::Alloc, by: By::Bytes }, 20);
        assert_eq!(functions(&alloc_bytes), ["churn", "leak_exactly", "strdup", "leak_exactly"]);
        assert!(alloc_bytes.contains("  4 sites, total 448.2 KiB (459000 bytes)\n"), "{alloc_bytes}");
        assert!(alloc_bytes.contains("         0 B            0        0  343.8 KiB       352000     5000  app        churn  (app.c:40)  ← main\n"), "{alloc_bytes}");
        let live_blocks = render(&fixtures::model(), Measure { sample: Sample::Inuse, by: By::Count }, 20);
        assert_eq!(functions(&live_blocks), ["leak_exactly", "strdup", "leak_exactly"]);
        assert!(live_blocks.contains("total 105 blocks"), "{live_blocks}");
    }

    #[test]
    fn top_says_what_was_left_out() {
        let table = render(&fixtures::model(), Measure { sample: Sample::Alloc, by: By::Bytes }, 2);
        assert_eq!(functions(&table), ["churn", "leak_exactly"]);
        assert!(
            table.ends_with("  … 2 more sites with 2.0 KiB (2050 bytes) (0.4%) not shown; --top 4 shows all\n"),
            "{table}"
        );
    }

    #[test]
    fn several_processes_get_a_pid_column() {
        let table = render(&fixtures::two_process_model(), Measure::default(), 20);
        assert!(table.contains("        8    4.0 KiB         4096        2    4.0 KiB         4096        2  app        grow  (app.c:50)  ← worker ← main\n"), "{table}");
        assert!(table.lines().nth(2).unwrap().starts_with("      PID "), "{table}");
    }

    #[test]
    fn an_empty_profile_is_one_line_of_totals() {
        assert_eq!(
            render(&fixtures::empty_model(), Measure::default(), 20),
            "memmon profile p1: sites by live bytes at end of window (inuse_space)\n  0 sites, total 0 B (0 bytes)\n"
        );
    }
}
