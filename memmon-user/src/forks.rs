//! Following the targets' forks (`--follow-forks`; the kernel side is memmon-ebpf/src/forks.rs).
//!
//! The kernel names every new child process of a target as it is created; within 20 ms the
//! agent attaches to it as to any target, with the parent's allocator when the child runs the
//! parent's program (a fork copies the address space) and by looking again when it does not
//! (it exec'ed already). A child is traced from that moment: what it allocated before is not
//! seen (its frees of those blocks count as untracked frees), nor is a child that exits first.
//! Every fork is accounted for, by outcome. A followed child that exits is retired: its probes
//! are detached and its entries leave every kernel table, so a fork storm fills no table and
//! does not grow the agent; what it held at exit stays in a short list.

use serde::{Deserialize, Serialize};

/// How many retired children the agent remembers.
pub const KEPT_EXITS: usize = 16;

/// Default of `--max-followed`.
pub const DEFAULT_MAX_FOLLOWED: u32 = 64;

/// What became of the targets' forks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forks {
    /// `--follow-forks`.
    pub following: bool,
    /// Followed children traced at once, at most (`--max-followed`).
    pub max_followed: u32,
    /// Children the kernel named: every fork of a target, a followed child's included.
    pub seen: u64,
    pub followed: u64,
    /// Gone before memmon could attach (a fork storm's short-lived children).
    pub exited_before_followed: u64,
    /// Not followed: `max_followed` children were traced already.
    pub over_limit: u64,
    /// Attaching failed (the agent's log says why).
    pub failed: u64,
    /// Followed children that exited and were retired.
    pub retired: u64,
    /// Followed children traced now.
    pub alive: u64,
    /// The latest retired children, oldest first (at most [`KEPT_EXITS`]).
    pub recent_exits: Vec<ChildExit>,
}

/// A followed child that exited, and what it still held then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildExit {
    pub pid: u32,
    pub parent: u32,
    pub comm: String,
    /// Its tracked blocks still live when it exited (allocated since memmon followed it).
    pub held_bytes: u64,
    pub held_blocks: u64,
}

impl Forks {
    pub fn new(following: bool, max_followed: u32) -> Self {
        Self { following, max_followed, ..Self::default() }
    }

    pub fn record_exit(&mut self, exit: ChildExit) {
        self.retired += 1;
        self.recent_exits.push(exit);
        if self.recent_exits.len() > KEPT_EXITS {
            self.recent_exits.remove(0);
        }
    }

    /// Every fork seen has exactly one outcome (those still queued aside).
    pub fn outcomes(&self) -> [(&'static str, u64); 4] {
        [
            ("followed", self.followed),
            ("exited_before_followed", self.exited_before_followed),
            ("over_limit", self.over_limit),
            ("failed", self.failed),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_children_are_counted_and_the_latest_kept() {
        let mut forks = Forks::new(true, 4);
        for pid in 1..=40 {
            forks.record_exit(ChildExit { pid, held_bytes: 100, held_blocks: 1, ..ChildExit::default() });
        }
        assert_eq!(forks.retired, 40);
        assert_eq!(forks.recent_exits.len(), KEPT_EXITS);
        assert_eq!(forks.recent_exits[0].pid, 40 - KEPT_EXITS as u32 + 1);
    }
}
