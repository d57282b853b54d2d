//! Load the tables were not sized for: 5,000 threads allocating at once are counted exactly,
//! and tables too small for what a target allocates count every event they drop, show it in
//! status, the memory summary, /metrics and the health check, mark the numbers incomplete, and
//! the agent keeps serving. Ground truth: tests/targets/threads.c and ground_truth.c.

use memmon_tests::{metric_line, Agent, Target, http, require_root};
use serde_json::Value;

const FAST: &[&str] = &["--metrics-update-interval", "1", "--leak-check-interval", "1"];


#[test]
fn five_thousand_threads_allocating_at_once_are_counted_exactly() {
    require_root();
    const THREADS: u64 = 5000;
    let mut target = Target::start("threads");
    let mut args = FAST.to_vec();
    args.extend(["--top", "50"]);
    let agent = Agent::start(target.pid(), &args);
    target.run(&format!("storm {THREADS}"));
    let summary = agent.json("update-metrics");
    let keeps: Vec<&Value> = summary["top_sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["site"]["frames"][0]["function"] == "thread_keeps")
        .collect();
    let held: u64 = keeps.iter().map(|s| s["live_bytes"].as_u64().unwrap()).sum();
    let blocks: u64 = keeps.iter().map(|s| s["live_allocations"].as_u64().unwrap()).sum();
    assert_eq!((held, blocks), (THREADS * 100, THREADS), "{summary:#}");
    assert!(keeps.iter().all(|s| s["site"]["frames"][1]["function"] == "thread_main"), "{keeps:#?}");
    assert!(summary["events_lost"].as_object().unwrap().values().all(|n| n == 0), "{summary:#}");
    assert_eq!(summary["completeness"]["totals_complete"], true, "{summary:#}");
    let (code, _, stderr) = agent.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn overflowing_tables_mark_the_numbers_incomplete_and_the_agent_keeps_serving() {
    require_root();
    let mut target = Target::start("ground_truth");
    let mut args = FAST.to_vec();
    args.extend(["--max-live-allocations", "50", "--max-sites", "3"]);
    let agent = Agent::start(target.pid(), &args);
    let status = agent.json("status");
    assert_eq!((status["completeness"]["totals_complete"].as_bool(), status["completeness"]["stacks_complete"].as_bool()), (Some(true), Some(true)));
    // 100 blocks kept at one site: 50 fit the live table. Then churn through more sites than fit.
    target.run("leak");
    let summary = agent.json("update-metrics");
    assert_eq!(summary["events_lost"]["live_table_full"], 50, "{summary:#}");
    target.run("churn");
    let summary = agent.json("update-metrics");
    let lost = &summary["events_lost"];
    eprintln!("lost after the churn: {lost}");
    // The stack table (as large as the site table) fills first: stacks go to the unknown-stack
    // site, and once even that has no room, allocations have no site and are not tracked.
    assert!(lost["stack_table_full"].as_u64().unwrap() > 0 && lost["site_table_full"].as_u64().unwrap() > 0, "{summary:#}");
    assert_eq!(summary["completeness"]["stacks_complete"], false, "{summary:#}");
    let completeness = &summary["completeness"];
    assert_eq!(completeness["totals_complete"], false, "{summary:#}");
    let reasons: Vec<&str> = completeness["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.starts_with("live_table_full=") && r.contains(": allocations not tracked: live bytes are low")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("site_table_full=")), "{reasons:?}");
    assert_eq!(agent.json("status")["completeness"], *completeness);

    let (_, text, _) = agent.command("status", &[]);
    assert!(text.contains("numbers INCOMPLETE: live_table_full="), "{text}");
    let (_, text, _) = agent.command("memory-summary", &[]);
    assert!(text.contains("numbers INCOMPLETE: live_table_full="), "{text}");
    let (_, metrics) = http(agent.address(), "GET /metrics");
    assert_eq!(metric_line(&metrics, "memmon_data_complete{scope=\"totals\"}"), Some(0.0), "{metrics}");
    assert_eq!(metric_line(&metrics, "memmon_events_lost_total{reason=\"live_table_full\"}"), lost["live_table_full"].as_f64(), "{metrics}");
    let (code, text, _) = agent.command("health-check", &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("degraded  losses") && text.contains("numbers INCOMPLETE"), "{text}");

    // Still serving, still counting: the blocks it holds go, the losses stay counted.
    target.run("release");
    let summary = agent.json("update-metrics");
    assert_eq!(summary["events_lost"]["live_table_full"], lost["live_table_full"], "{summary:#}");
    assert_eq!(summary["completeness"]["totals_complete"], false);
    let (code, _) = http(agent.address(), "GET /health");
    assert!(code == 200 || code == 503, "{code}");
    let (code, _, stderr) = agent.stop();
    assert_eq!(code, 0, "{stderr}");
}
