//! `memmon report tree`: the call tree from the roots (`_start`, `main`, thread starts) down to
//! the allocating functions, with each node's inclusive and self value.
//!
//! Stacks are merged by function name at each level, as a flamegraph merges them, so a function
//! called from one place is one node whatever lines it was called from. Self is what stacks
//! ending at the node hold (the function called the allocator itself); inclusive adds
//! everything below it. Nodes under `--min-percent` of the total are folded into one "…" line
//! per parent that says how much it holds, so the tree stays readable and nothing disappears
//! silently.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{
    counted,
    measure::{Measure, percent},
    model::Model,
};

#[derive(Debug, Default)]
struct Node {
    inclusive: u64,
    own: u64,
    children: BTreeMap<String, Node>,
}

/// The call tree of `model` weighed by `measure`, pruned below `min_percent` of the total.
pub fn render(model: &Model, measure: Measure, min_percent: f64) -> String {
    let mut roots = Node::default();
    let process_roots = model.has_several_processes();
    for stack in &model.stacks {
        let value = measure.of(&stack.values);
        if value == 0 {
            continue;
        }
        roots.inclusive += value;
        let mut node = &mut roots;
        for name in model.call_path(stack, process_roots) {
            node = node.children.entry(name.into_owned()).or_default();
            node.inclusive += value;
        }
        node.own += value;
    }
    let total = roots.inclusive;
    let mut drawing = Drawing { out: String::new(), measure, total, min_percent, pruned_nodes: 0, pruned_value: 0 };
    let _ = writeln!(
        drawing.out,
        "{}: call tree of {} ({}), total {}",
        model.name(),
        measure.meaning(),
        measure.sample_type(),
        measure.describe(total)
    );
    if total == 0 {
        return drawing.out;
    }
    let _ = writeln!(
        drawing.out,
        "  {} {:>6}  {} {:>6}  CALLS",
        measure.header("INCLUSIVE"),
        "%",
        measure.header("SELF"),
        "%"
    );
    drawing.level(&roots.children, "", true);
    if drawing.pruned_nodes > 0 {
        let _ = writeln!(
            drawing.out,
            "  {} below {min_percent}% of the total folded into … lines: {} ({:.1}%); --min-percent 0 shows all",
            counted(drawing.pruned_nodes, "node"),
            measure.describe(drawing.pruned_value),
            percent(drawing.pruned_value, total)
        );
    }
    drawing.out
}

struct Drawing {
    out: String,
    measure: Measure,
    total: u64,
    min_percent: f64,
    pruned_nodes: usize,
    pruned_value: u64,
}

impl Drawing {
    /// Draws `nodes` (siblings) largest first, under `prefix`; roots have no connector.
    fn level(&mut self, nodes: &BTreeMap<String, Node>, prefix: &str, roots: bool) {
        let mut sorted: Vec<(&String, &Node)> = nodes.iter().collect();
        sorted.sort_by(|a, b| b.1.inclusive.cmp(&a.1.inclusive).then_with(|| a.0.cmp(b.0)));
        let (kept, pruned): (Vec<_>, Vec<_>) =
            sorted.into_iter().partition(|(_, node)| percent(node.inclusive, self.total) >= self.min_percent);
        let lines = kept.len() + usize::from(!pruned.is_empty());
        for (i, (name, node)) in kept.iter().enumerate() {
            let last = i + 1 == lines;
            let (connector, below) = match (roots, last) {
                (true, _) => ("", ""),
                (false, true) => ("└─ ", "   "),
                (false, false) => ("├─ ", "│  "),
            };
            let _ = writeln!(
                self.out,
                "  {} {:>5.1}%  {} {:>5.1}%  {prefix}{connector}{name}",
                self.measure.cell(node.inclusive),
                percent(node.inclusive, self.total),
                self.measure.cell(node.own),
                percent(node.own, self.total),
            );
            self.level(&node.children, &format!("{prefix}{below}"), false);
        }
        if !pruned.is_empty() {
            let value: u64 = pruned.iter().map(|(_, node)| node.inclusive).sum();
            self.pruned_nodes += pruned.len();
            self.pruned_value += value;
            let connector = if roots { "" } else { "└─ " };
            let blank = " ".repeat(self.measure.cell(0).len() + 7);
            let _ = writeln!(
                self.out,
                "  {} {:>5.1}%  {blank}  {prefix}{connector}… {} below {}%",
                self.measure.cell(value),
                percent(value, self.total),
                counted(pruned.len(), "more"),
                self.min_percent
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::report::{By, Sample, fixtures};

    #[test]
    fn inclusive_and_self_bytes_with_pruning() {
        let tree = render(&fixtures::model(), Measure::default(), 1.0);
        let expected = "\
memmon profile p1: call tree of live bytes at end of window (inuse_space), total 103.3 KiB (105800 bytes)
   INCLUSIVE        BYTES      %        SELF        BYTES      %  CALLS
   103.3 KiB       105800 100.0%         0 B            0   0.0%  main
   103.3 KiB       105750 100.0%         0 B            0   0.0%  ├─ handle
   102.5 KiB       104950  99.2%   102.5 KiB       104950  99.2%  │  ├─ leak_exactly
       800 B          800   0.8%                                  │  └─ … 1 more below 1%
        50 B           50   0.0%                                  └─ … 1 more below 1%
  2 nodes below 1% of the total folded into … lines: 850 B (850 bytes) (0.8%); --min-percent 0 shows all
";
        assert_eq!(tree, expected);
    }

    #[test]
    fn nothing_is_pruned_at_zero_percent_and_zero_nodes_are_skipped() {
        let tree = render(&fixtures::model(), Measure::default(), 0.0);
        assert!(
            tree.contains("       800 B          800   0.8%       800 B          800   0.8%  │  └─ strdup\n"),
            "{tree}"
        );
        assert!(
            tree.contains("        50 B           50   0.0%        50 B           50   0.0%  └─ leak_exactly\n"),
            "{tree}"
        );
        assert!(!tree.contains("churn"), "churn holds no live bytes: {tree}");
        assert!(!tree.contains('…'), "{tree}");
    }

    #[test]
    fn allocations_by_count_put_churn_first() {
        let tree = render(&fixtures::model(), Measure { sample: Sample::Alloc, by: By::Count }, 1.0);
        let lines: Vec<&str> = tree.lines().collect();
        assert_eq!(
            lines[0],
            "memmon profile p1: call tree of allocations during window (alloc_objects), total 5111 allocations"
        );
        assert_eq!(lines[1], "     INCLUSIVE      %          SELF      %  CALLS");
        assert_eq!(lines[2], "          5111 100.0%             0   0.0%  main");
        assert_eq!(lines[3], "          5000  97.8%          5000  97.8%  ├─ churn");
        assert_eq!(lines[4], "           110   2.2%             0   0.0%  ├─ handle");
    }

    #[test]
    fn processes_are_roots() {
        let tree = render(&fixtures::two_process_model(), Measure::default(), 0.0);
        let roots: Vec<&str> =
            tree.lines().filter(|l| l.contains("%  pid ")).map(|l| l.split("%  ").last().unwrap()).collect();
        assert_eq!(roots, ["pid 7 (app)", "pid 8"]);
        assert!(
            tree.contains("   4.0 KiB         4096   3.7%     4.0 KiB         4096   3.7%        └─ grow\n"),
            "{tree}"
        );
    }

    #[test]
    fn an_empty_profile_says_its_total_is_zero() {
        assert_eq!(
            render(&fixtures::empty_model(), Measure::default(), 1.0),
            "memmon profile p1: call tree of live bytes at end of window (inuse_space), total 0 B (0 bytes)\n"
        );
    }
}
