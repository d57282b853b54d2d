//! What happened to a traced process over its life: the images it exec'ed and what memmon
//! discarded with each (the kernel side is `memmon-ebpf/src/lifecycle.rs`).
//!
//! An execve replaces the whole address space: the old image's heap blocks can never be freed
//! and its code is gone. They are not leaks; memmon drops them from the live view and counts
//! their bytes once, as discarded at exec.

use serde::{Deserialize, Serialize};

/// One execve of a target, as memmon saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// Its number since attach (1 = the first exec).
    pub image: u64,
    /// When memmon noticed it (UTC, RFC 3339); the kernel's tracepoint fired at most one
    /// liveness tick (250 ms) earlier.
    pub seen_at: String,
    pub from_comm: String,
    pub to_comm: String,
    /// The old image's tracked blocks, dropped from the live table.
    pub discarded_bytes: u64,
    pub discarded_blocks: u64,
    /// The new image's allocator, or why none could be probed.
    pub allocator: String,
}

/// A target's execs since attach.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The current image's number (0: the one memmon attached to).
    pub image: u64,
    pub discarded_bytes: u64,
    pub discarded_blocks: u64,
    /// The latest execs, oldest first (at most [`KEPT_EXECS`]).
    pub execs: Vec<Exec>,
}

/// How many execs a target's history keeps (a shell script may exec thousands of times).
pub const KEPT_EXECS: usize = 16;

impl History {
    pub fn record(&mut self, exec: Exec) {
        self.image = exec.image;
        self.discarded_bytes += exec.discarded_bytes;
        self.discarded_blocks += exec.discarded_blocks;
        self.execs.push(exec);
        if self.execs.len() > KEPT_EXECS {
            self.execs.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_sums_every_exec_and_keeps_the_latest() {
        let mut history = History::default();
        for image in 1..=20 {
            history.record(Exec { image, discarded_bytes: 1000, discarded_blocks: 1, ..Exec::default() });
        }
        assert_eq!((history.image, history.discarded_bytes, history.discarded_blocks), (20, 20_000, 20));
        assert_eq!(history.execs.len(), KEPT_EXECS);
        assert_eq!(history.execs[0].image, 20 - KEPT_EXECS as u64 + 1);
    }
}
