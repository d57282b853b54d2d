//! The short soak (80 s; the long one is `cargo xtask soak`): the same run and criteria as
//! `memmon_tests::soak` — agent RSS flat and CPU in its band after the warm-up, nothing lost, the
//! slow leak's bytes equal to the truth at every sample and flagged critical exactly, no churning
//! site flagged, a second memmon on the agent finding no leak in it, and the paused target's
//! totals exact to the allocation.

use memmon_tests::soak::{self, Config};

#[test]
fn a_short_soak_keeps_the_agent_flat_and_finds_only_the_slow_leak() {
    let outcome = soak::run(&Config::short(), &mut std::io::stdout());
    let verdict = outcome.verdict();
    println!("{verdict}");
    assert!(outcome.passed(), "{verdict}");
}
