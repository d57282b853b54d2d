//! Whether the numbers memmon shows are complete, from the events it counted as lost.
//!
//! A full table or a call memmon could not pair means some allocations or frees are missing
//! from the totals: the live bytes are low (a block never tracked) or high (a free never seen).
//! A stack that could not be captured or stored only moves its bytes to the "unknown stack"
//! site: the totals stay exact, their attribution does not. Every view that shows numbers
//! carries this verdict, so a reader never takes an incomplete number for an exact one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completeness {
    /// Every allocation and free of the targets since attach is counted.
    pub totals_complete: bool,
    /// Every counted allocation is attributed to its stack.
    pub stacks_complete: bool,
    /// Why not, one line per loss reason that occurred, with its count and effect.
    pub reasons: Vec<String>,
}

impl Default for Completeness {
    fn default() -> Self {
        Self { totals_complete: true, stacks_complete: true, reasons: Vec::new() }
    }
}

/// What a loss reason does to the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Totals(&'static str),
    Stacks(&'static str),
    /// A followed child missed: the targets' numbers themselves are whole.
    Children(&'static str),
}

fn effect(reason: &str) -> Effect {
    match reason {
        "live_table_full" => Effect::Totals("allocations not tracked: live bytes are low (MEMMON_MAX_LIVE_ALLOCATIONS)"),
        "site_table_full" => Effect::Totals("allocations not tracked: live and allocated bytes are low (MEMMON_MAX_SITES)"),
        "pending_table_full" => Effect::Totals("allocator calls not tracked: their bytes are missing"),
        "entry_without_return" => Effect::Totals("allocator calls whose return was never seen: their bytes are missing"),
        "return_without_entry" => Effect::Totals("allocator returns without their call: those blocks are missing"),
        "missed_free" => Effect::Totals("frees never seen: live bytes are high"),
        "mapping_table_full" => Effect::Totals("anonymous mappings not tracked: mapped bytes are low"),
        "pending_syscall_table_full" => Effect::Totals("memory syscalls not tracked: mapped and brk bytes may be off"),
        "stack_capture_failed" | "stack_table_full" | "stack_hash_collision" => {
            Effect::Stacks("bytes counted under the unknown-stack site instead of their own")
        }
        "fork_queue_full" => Effect::Children("forked children not followed"),
        _ => Effect::Totals("events lost"),
    }
}

/// The verdict on numbers gathered with these loss counts.
pub fn assess(losses: &BTreeMap<String, u64>) -> Completeness {
    let mut verdict = Completeness::default();
    for (reason, &count) in losses.iter().filter(|(_, count)| **count > 0) {
        let why = match effect(reason) {
            Effect::Totals(why) => {
                verdict.totals_complete = false;
                why
            }
            Effect::Stacks(why) => {
                verdict.stacks_complete = false;
                why
            }
            Effect::Children(why) => why,
        };
        verdict.reasons.push(format!("{reason}={count}: {why}"));
    }
    verdict
}

impl Completeness {
    /// One line for the text views, or None when everything is complete.
    pub fn line(&self) -> Option<String> {
        let headline = match (self.totals_complete, self.stacks_complete) {
            (true, true) if self.reasons.is_empty() => return None,
            (false, _) => "numbers INCOMPLETE",
            (true, false) => "stacks incomplete (totals exact)",
            (true, true) => "numbers complete",
        };
        Some(format!("{headline}: {}", self.reasons.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn losses(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(reason, n)| (reason.to_string(), *n)).collect()
    }

    #[test]
    fn no_loss_is_complete() {
        let verdict = assess(&losses(&[("live_table_full", 0), ("stack_table_full", 0)]));
        assert_eq!(verdict, Completeness::default());
        assert_eq!(verdict.line(), None);
    }

    #[test]
    fn a_full_table_makes_the_totals_incomplete() {
        let verdict = assess(&losses(&[("live_table_full", 50), ("site_table_full", 3), ("missed_free", 0)]));
        assert!(!verdict.totals_complete && verdict.stacks_complete);
        assert_eq!(verdict.reasons.len(), 2);
        assert!(verdict.reasons[0].starts_with("live_table_full=50: allocations not tracked"), "{verdict:?}");
        assert!(verdict.line().unwrap().starts_with("numbers INCOMPLETE: live_table_full=50"));
    }

    #[test]
    fn a_lost_stack_leaves_the_totals_exact() {
        let verdict = assess(&losses(&[("stack_table_full", 7)]));
        assert!(verdict.totals_complete && !verdict.stacks_complete);
        assert!(verdict.line().unwrap().starts_with("stacks incomplete (totals exact): stack_table_full=7"));
    }

    #[test]
    fn every_loss_reason_has_a_known_effect() {
        for reason in memmon_common::Loss::ALL {
            let verdict = assess(&losses(&[(reason.name(), 1)]));
            assert!(!verdict.reasons[0].contains(": events lost"), "{} has no stated effect", reason.name());
        }
    }
}
