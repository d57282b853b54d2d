//! Attaching to a process that is allocating flat out at that moment. The probes go on one by
//! one, milliseconds apart, while the target runs: the order they go on in must leave nothing
//! half-seen (an allocation recorded whose free is not yet probed would read, when its address
//! came back, as a missed free).

use memmon_tests::{Agent, Target, http, metric, require_root};
use serde_json::Value;

/// The churning threads of tests/targets/busy.c.
const THREADS: u64 = 2;

fn rounds(line: &str, prefix: &str) -> u64 {
    line.trim().strip_prefix(prefix).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("busy answered {line:?}"))
}

#[test]
fn attaching_to_a_process_churning_on_every_core_loses_nothing() {
    require_root();
    // Several attaches: each is one draw of where in their rounds the threads are.
    for attempt in 1..=3 {
        let mut target = Target::start("busy");
        let pid = target.pid();
        let agent = Agent::start(pid, &["--metrics-update-interval", "1"]);
        // Every probe is on once the agent serves: the rounds from here on are all seen.
        let seen_from = rounds(&target.request("rounds"), "rounds=");
        std::thread::sleep(std::time::Duration::from_millis(500));
        let rounds = rounds(&target.request("pause"), "done pause rounds=");
        let summary = agent.json("update-metrics");
        let lost: Vec<(&String, &Value)> =
            summary["events_lost"].as_object().unwrap().iter().filter(|(_, n)| **n != 0).collect();
        assert!(lost.is_empty(), "attach {attempt}: events lost while attaching: {lost:?}");
        // Every block of a round is freed before the next: with the threads stopped, nothing
        // memmon saw allocated after attaching is still live.
        let churned: Vec<&Value> = summary["top_sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["site"]["frames"].as_array().unwrap().iter().any(|f| f["function"] == "churn_round"))
            .collect();
        assert!(churned.is_empty(), "attach {attempt}: blocks of churn_round left live: {churned:#?}");
        let (_, metrics) = http(agent.address(), "GET /metrics");
        let allocations = metric(&metrics, "memmon_allocations_total", pid).unwrap_or(0.0) as u64;
        // Three allocations a round: at least those of every round begun after the attach (each
        // thread's round in progress at `seen_from` may have begun before), at most all of them.
        let (least, most) = (3 * (rounds - seen_from).saturating_sub(THREADS), 3 * rounds);
        assert!(
            (least..=most).contains(&allocations),
            "attach {attempt}: {allocations} allocations seen, of {least}..={most} ({seen_from} rounds before, {rounds} at the pause)"
        );
        let (code, _, stderr) = agent.stop();
        assert_eq!(code, 0, "{stderr}");
    }
}
