//! An agent killed while attached (SIGKILL: no cleanup of its own) harms nothing: the kernel
//! removes its probes with its file descriptors, the target runs on, and a new agent attaches
//! again, counting the frees of blocks from before it as untracked frees, never as its own.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use memmon_tests::{Agent, Target, http, metric, require_root};

fn wait_for_metric(agent: &Agent, name: &str, pid: u32, wanted: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http(&agent.url, "GET /metrics");
        if metric(&metrics, name, pid) == Some(wanted) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{name} never reached {wanted}: {metrics}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_agent_killed_while_attached_leaves_the_target_unharmed_and_a_new_one_attaches() {
    require_root();
    let mut target = Target::start("growth");
    let pid = target.pid();
    let first = Agent::start(pid, &["--metrics-update-interval", "1"]);
    target.run("leak 100 1000");
    wait_for_metric(&first, "memmon_heap_live_bytes", pid, 100_000.0);
    // Killed while a thread of the target hits its probes without a pause.
    target.run("churn");
    thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill").args(["-KILL", &first.pid().to_string()]).status().unwrap();
    assert!(status.success());
    drop(first);
    thread::sleep(Duration::from_millis(500));
    // The target runs on: both its threads (a trap left without a handler would kill it).
    target.run("leak 1 1000");
    target.run("stop");
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(!state.contains(") Z ") && !state.contains(") X "), "{state}");

    // A new agent: the 101 blocks from before it are not its, and their frees are counted as
    // frees of untracked blocks.
    let second = Agent::start(pid, &["--metrics-update-interval", "1"]);
    target.run("leak 10 500");
    wait_for_metric(&second, "memmon_heap_live_bytes", pid, 5_000.0);
    target.run("release");
    let metrics = wait_for_metric(&second, "memmon_untracked_frees_total", pid, 101.0);
    assert_eq!(metric(&metrics, "memmon_heap_live_bytes", pid), Some(0.0), "{metrics}");
    let summary = second.json("memory-summary");
    assert_eq!(summary["live_bytes"], 0, "{summary:#}");
}
