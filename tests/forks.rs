//! A target's forks under the agent: not traced unless asked; with `--follow-forks`, a child is
//! a target of its own (its leak exact, at its call path), retired with what it held when it
//! exits; a fork storm of 1,000 children a second accounts for every fork, fills no table and
//! leaves the parent's numbers exact. Ground truth: tests/targets/forks.c.

use std::{
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use memmon_tests::{metric_line, Agent, Target, http, require_root};
use serde_json::Value;

const FAST: &[&str] = &["--metrics-update-interval", "1", "--leak-check-interval", "1"];

/// One test at a time: attaching and detaching uprobes takes kernel-wide locks and waits for
/// RCU grace periods, so another test's agent detaching its children's probes could hold up
/// the storm's first attach past the lifetime of every child (seen: 0 of 3,000 followed when
/// the three ran together, 16 when alone).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn poll(agent: &Agent, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = agent.json("status");
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status:#}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// (live bytes, live blocks) of the sites of `pid` whose innermost frame is `function`.
fn held_at(summary: &Value, pid: u64, function: &str) -> (u64, u64) {
    summary["top_sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] == pid && s["site"]["frames"][0]["function"] == function)
        .fold((0, 0), |(bytes, blocks), s| (bytes + s["live_bytes"].as_u64().unwrap(), blocks + s["live_allocations"].as_u64().unwrap()))
}


#[test]
fn a_followed_child_is_a_target_until_it_exits() {
    require_root();
    let _serial = serial();
    let mut target = Target::start("forks");
    let parent = u64::from(target.pid());
    let mut args = FAST.to_vec();
    args.push("--follow-forks");
    let agent = Agent::start(target.pid(), &args);
    target.run("keep");
    target.run("spawn");
    let spawned = Instant::now();
    let status = poll(&agent, "the child is never followed", |s| s["forks"]["alive"] == 1);
    eprintln!("the child was followed {:?} after the fork returned", spawned.elapsed());
    let child = status["targets"].as_array().unwrap().iter().map(|t| t["pid"].as_u64().unwrap()).find(|&pid| pid != parent).unwrap();
    assert_eq!((status["forks"]["seen"].as_u64(), status["forks"]["followed"].as_u64()), (Some(1), Some(1)), "{status:#}");

    target.run("child-leak");
    let summary = agent.json("update-metrics");
    assert_eq!(held_at(&summary, child, "child_keeps"), (3000, 3), "{summary:#}");
    assert_eq!(held_at(&summary, parent, "parent_keeps"), (10_000, 5), "{summary:#}");
    assert_eq!(held_at(&summary, parent, "child_keeps"), (0, 0), "the child's blocks are its own: {summary:#}");
    let site = summary["top_sites"].as_array().unwrap().iter().find(|s| s["pid"] == child).unwrap();
    let path: Vec<&str> = site["site"]["frames"].as_array().unwrap().iter().take(4).map(|f| f["function"].as_str().unwrap()).collect();
    assert_eq!(path, ["child_keeps", "child_loop", "spawn_child", "main"], "{site:#}");
    let (_, metrics) = http(agent.address(), "GET /metrics");
    assert!(metrics.contains(&format!("memmon_heap_live_bytes{{comm=\"forks\",pid=\"{child}\"}} 3000")), "{metrics}");

    target.run("child-exit");
    let status = poll(&agent, "the child is never retired", |s| s["forks"]["retired"] == 1);
    let exit = &status["forks"]["recent_exits"][0];
    assert_eq!((exit["pid"].as_u64(), exit["parent"].as_u64()), (Some(child), Some(parent)), "{status:#}");
    assert_eq!((exit["held_bytes"].as_u64(), exit["held_blocks"].as_u64()), (Some(3000), Some(3)), "{status:#}");
    assert_eq!(status["targets"].as_array().unwrap().len(), 1, "{status:#}");
    let summary = agent.json("update-metrics");
    assert_eq!(held_at(&summary, child, "child_keeps"), (0, 0), "a retired child's sites go: {summary:#}");
    assert_eq!(summary["live_bytes"], 10_000, "{summary:#}");
    let (_, metrics) = http(agent.address(), "GET /metrics");
    assert_eq!(metric_line(&metrics, "memmon_forks_total{outcome=\"followed\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric_line(&metrics, "memmon_followed_processes "), Some(0.0), "{metrics}");
    let (code, text, stderr) = agent.command("status", &[]);
    assert_eq!(code, 0);
    assert!(text.contains("forks: followed, at most 64 at once: 1 seen, 1 followed (0 traced now, 1 exited)"), "{text}");
    assert!(text.contains(&format!("pid {child} (forks, forked by {parent}) exited holding 3000 B in 3 blocks")), "{text}");
    let (code, _, stderr_at_stop) = agent.stop();
    assert_eq!(code, 0, "{stderr}{stderr_at_stop}");
    assert!(stderr_at_stop.contains(&format!("memmon: following pid {child}, forked by pid {parent}")), "{stderr_at_stop}");
}

#[test]
fn without_follow_forks_children_are_not_traced() {
    require_root();
    let _serial = serial();
    let mut target = Target::start("forks");
    let agent = Agent::start(target.pid(), FAST);
    target.run("keep");
    target.run("spawn");
    target.run("child-leak");
    target.run("storm 500");
    let summary = agent.json("update-metrics");
    assert_eq!(summary["live_bytes"], 10_000, "{summary:#}");
    let status = agent.json("status");
    assert_eq!(status["targets"].as_array().unwrap().len(), 1, "{status:#}");
    assert_eq!((status["forks"]["following"].as_bool(), status["forks"]["seen"].as_u64()), (Some(false), Some(0)), "{status:#}");
    target.run("child-exit");
    agent.stop();
}

#[test]
fn a_fork_storm_accounts_for_every_fork_and_fills_no_table() {
    require_root();
    let _serial = serial();
    const FORKS: u64 = 3000;
    let mut target = Target::start("forks");
    let mut args = FAST.to_vec();
    args.extend(["--follow-forks", "--max-followed", "16"]);
    let agent = Agent::start(target.pid(), &args);
    target.run("keep");
    agent.json("update-metrics");
    let (_, metrics_before) = http(agent.address(), "GET /metrics");
    let started = Instant::now();
    target.run(&format!("storm {FORKS}"));
    let storm_seconds = started.elapsed().as_secs_f64();
    let status = poll(&agent, "not every fork was seen, or children stayed traced", |s| {
        s["forks"]["seen"] == FORKS && s["forks"]["alive"] == 0
    });
    let forks = &status["forks"];
    let outcome = |name: &str| forks[name].as_u64().unwrap();
    eprintln!(
        "{FORKS} forks in {storm_seconds:.2} s: {} followed, {} exited before memmon attached, {} over the limit, {} failed",
        outcome("followed"),
        outcome("exited_before_followed"),
        outcome("over_limit"),
        outcome("failed")
    );
    assert!(storm_seconds < 6.0, "the storm ran at under 500 forks/s ({storm_seconds:.2} s): the agent slowed the parent");
    assert_eq!(outcome("followed") + outcome("exited_before_followed") + outcome("over_limit") + outcome("failed"), FORKS, "{forks:#}");
    assert_eq!(outcome("failed"), 0, "{forks:#}");
    // Attaching costs the kernel milliseconds per probe and detaching a retired child's probes
    // far more, so only some of the 200 children alive at a time are reached before they end.
    assert!(outcome("followed") > 0, "{forks:#}");
    assert_eq!(outcome("retired"), outcome("followed"), "{forks:#}");
    assert_eq!(status["targets"].as_array().unwrap().len(), 1, "{status:#}");
    assert!(status["events_lost"].as_object().unwrap().values().all(|n| n == 0), "{status:#}");
    // The parent's numbers: its 5 kept blocks, and one allocation of 64 B per fork, freed.
    let after = agent.json("update-metrics");
    assert_eq!(after["live_bytes"], 10_000, "{after:#}");
    let (_, metrics_after) = http(agent.address(), "GET /metrics");
    let allocations = |metrics: &str| metric_line(metrics, &format!("memmon_allocations_total{{comm=\"forks\",pid=\"{}\"}}", target.pid())).unwrap();
    assert_eq!(allocations(&metrics_after) - allocations(&metrics_before), FORKS as f64, "{metrics_after}");
    // The agent kept serving throughout, and still does.
    let (code, _) = http(agent.address(), "GET /health");
    assert_eq!(code, 200);
    let (code, _, stderr) = agent.stop();
    assert_eq!(code, 0, "{stderr}");
}
