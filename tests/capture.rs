//! The always-on tier: no allocator probe until the leak detector sees growth, then a capture
//! window that attributes it to the leaking function and forgets its blocks when it closes; the
//! overhead budget backing off on a malloc-heavy target; presets.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use memmon_tests::{Agent, Target, has_top_row, http, memmon_binary, pprof_top, require_root};
use serde_json::Value;

const BLOCK: u64 = 65536;

fn profile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memmon-capture-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn json_command(agent: &Agent, command: &str, args: &[&str]) -> (i32, Value, String) {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let (code, stdout, stderr) = agent.command(command, &all);
    (code, serde_json::from_str(&stdout).unwrap_or(Value::Null), stderr)
}

fn capture(agent: &Agent) -> Value {
    agent.json("status")["capture"].clone()
}

fn metric(agent: &Agent, line_start: &str) -> Option<String> {
    let (_, metrics) = http(&agent.url, "GET /metrics");
    metrics.lines().find(|l| l.starts_with(line_start)).map(str::to_string)
}

/// Polls `status` until `done` holds for its capture section.
fn wait_for(agent: &Agent, within: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let capture = capture(agent);
        if done(&capture) {
            return capture;
        }
        assert!(Instant::now() < deadline, "no {what} within {within:?}: {capture}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn growth_opens_a_window_that_names_the_leak_and_forgets_its_blocks() {
    require_root();
    let dir = profile_dir("growth");
    let mut target = Target::start("growth");
    let agent = Agent::start(
        target.pid(),
        &[
            "--tier", "always-on", "--leak-check-interval", "1", "--metrics-update-interval", "1",
            "--capture-window", "3", "--profiling-output-dir", dir.to_str().unwrap(),
        ],
    );
    // No allocator probe: what the target allocates now is not seen.
    let before = capture(&agent);
    assert_eq!((before["tier"].as_str(), before["allocator_probes_attached"].as_bool()), (Some("always-on"), Some(false)), "{before}");
    target.run("leak 10 1000");
    assert_eq!(agent.json("update-metrics")["live_bytes"], 0);
    assert_eq!(metric(&agent, "memmon_tier{").as_deref(), Some("memmon_tier{tier=\"always-on\"} 1"));
    assert!(metric(&agent, "memmon_probes_attached{").is_some_and(|l| l.ends_with(" 0")));

    // A steady leak of 1.5 MiB/s from leak_steadily: RSS and the brk heap grow check after check.
    let mut leaked = 0u64;
    let deadline = Instant::now() + Duration::from_secs(40);
    let window = loop {
        target.run("leak 6 65536");
        leaked += 6;
        let capture = capture(&agent);
        if let Some(window) = capture["closed"].as_array().and_then(|closed| closed.last()) {
            break window.clone();
        }
        assert!(Instant::now() < deadline, "no capture window closed: {capture}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(window["trigger"], "growth", "{window}");
    assert!(window["cause"].as_str().unwrap().contains("growth warning"), "{window}");
    assert_eq!(window["reason"], "window length reached", "{window}");
    assert_eq!(window["planned_seconds"], 3.0);
    let blocks = window["live_allocations"].as_u64().unwrap();
    assert!(blocks > 0 && blocks < leaked, "the window holds only what was leaked during it: {blocks} of {leaked}");
    assert_eq!(window["live_bytes"].as_u64(), Some(blocks * BLOCK), "exact: only leak_steadily allocated");
    let top = &window["top_sites"][0];
    assert_eq!((top["live_bytes"].as_u64(), top["live_allocations"].as_u64()), (Some(blocks * BLOCK), Some(blocks)));
    let frames: Vec<&str> = top["site"]["frames"].as_array().unwrap().iter().map(|f| f["function"].as_str().unwrap()).collect();
    assert_eq!((frames[0], frames.contains(&"main")), ("leak_steadily", true), "{frames:?}");
    // The window's profile: go tool pprof shows the same bytes at the same function.
    let profile = dir.join(format!("{}.pb.gz", window["profile_id"].as_str().unwrap()));
    let top_listing = pprof_top(&profile, "inuse_space");
    assert!(has_top_row(&top_listing, &format!("{}B", blocks * BLOCK), "leak_steadily"), "{top_listing}");

    // The leak goes on, but the window attributed it: growth waits out MEMMON_CAPTURE_COOLDOWN
    // (300 s by default) instead of reopening a window at every leak check.
    let deadline = Instant::now() + Duration::from_secs(20);
    let cooling = loop {
        target.run("leak 6 65536");
        let capture = capture(&agent);
        if capture["deferred"].as_u64().is_some_and(|n| n >= 1) {
            break capture;
        }
        assert!(Instant::now() < deadline, "growth during the cooldown was not deferred: {capture}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(cooling["open"].is_null() && cooling["closed"].as_array().unwrap().len() == 1, "{cooling}");
    assert_eq!(cooling["cooldown_seconds"], 300);
    assert!(cooling["cooldown_remaining_seconds"].as_f64().unwrap() > 250.0, "{cooling}");
    assert!(metric(&agent, "memmon_capture_windows_deferred_total ").is_some_and(|l| l != "memmon_capture_windows_deferred_total 0"));
    let (code, text, _) = agent.command("status", &[]);
    assert!(code == 0 && text.contains("cooldown: growth opens no window for"), "{text}");

    // Once the leak stops, windows stop; the blocks of closed windows are forgotten, never leaks.
    let quiet = wait_for(&agent, Duration::from_secs(15), "quiet", |c| c["open"].is_null());
    assert_eq!(quiet["allocator_probes_attached"], false, "{quiet}");
    let summary = agent.json("update-metrics");
    assert_eq!((summary["live_bytes"].as_u64(), summary["top_sites"].as_array().map(Vec::len)), (Some(0), Some(0)), "{summary}");
    let leaks = agent.json("check-leaks");
    let kinds: Vec<&str> = leaks["leak_indicators"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert!(!kinds.contains(&"site_growth"), "{kinds:?}");
    assert!(quiet["opened"]["growth"].as_u64().unwrap() >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_budget_shrinks_and_refuses_windows_on_a_malloc_heavy_target() {
    require_root();
    let dir = profile_dir("budget");
    let mut target = Target::start("growth");
    target.run("churn");
    std::thread::sleep(Duration::from_secs(1)); // busy before attach: its lifetime CPU rate is ~1
    let agent = Agent::start(
        target.pid(),
        &["--tier", "always-on", "--overhead-budget", "0.02", "--profiling-output-dir", dir.to_str().unwrap()],
    );
    // A first window the budget affords, then one far longer than what is left of it (the
    // budget is a few seconds of windows on a target at one CPU): the second must shrink or be
    // cut, and once the budget is spent a request is refused.
    let mut planned = Vec::new();
    let mut refusal = None;
    for wanted in [4.0, 120.0, 4.0, 4.0, 4.0] {
        let (code, started, stderr) = json_command(&agent, "start-profiling", &["--duration", &format!("{}", wanted / 60.0)]);
        if code != 0 {
            refusal = Some(stderr);
            break;
        }
        planned.push((wanted, started["duration_seconds"].as_f64().unwrap()));
        wait_for(&agent, Duration::from_secs(150), "window close", |c| c["open"].is_null());
    }
    eprintln!("(wanted, planned) windows: {planned:?}");
    let refusal = refusal.unwrap_or_else(|| panic!("the budget never refused a window: {planned:?}"));
    assert!(refusal.contains("MEMMON_OVERHEAD_BUDGET=0.02"), "{refusal}");
    assert!(!planned.is_empty() && planned[0].1 <= 4.0, "{planned:?}");
    // The 120 s window shrank, was cut short, or (on a loaded machine, where the target earns
    // less CPU to credit) was refused outright: each is the budget backing off.
    if planned.len() >= 2 {
        let closed = capture(&agent)["closed"].as_array().unwrap().clone();
        let long_window = &closed[closed.len() - 2]; // newest first
        let backed_off = long_window["planned_seconds"].as_f64().unwrap() < 120.0
            || long_window["reason"] == "overhead budget spent";
        assert!(backed_off, "the long window did not back off: {closed:#?}");
    }
    let overhead = agent.json("status")["overhead"].clone();
    let estimate = overhead["estimate"].as_f64().unwrap();
    assert!(estimate > 0.01 && estimate <= 0.02 * 1.15, "estimate {estimate} against a 0.02 budget: {overhead}");
    assert!(overhead["hit_costs"]["entry_emulated_ns"].as_f64().unwrap() > 0.0, "{overhead}");
    target.run("stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn presets_resolve_and_explicit_settings_win() {
    require_root();
    let target = Target::start("growth");
    let status_with = |args: &[&str], env: &[(&str, &str)]| -> Value {
        let output = Command::new(memmon_binary())
            .args(["agent", "--pid", &target.pid().to_string(), "--listen", "127.0.0.1:0", "--profiling-enabled", "false"])
            .args(["--report-interval", "0", "--duration", "1"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        Value::String(stderr)
    };
    // The agent prints its tier at start; the status of a running one says the rest.
    let production = status_with(&["--preset", "production"], &[]);
    assert!(production.as_str().unwrap().contains("tier always-on"), "{production}");
    let agent = Agent::start(target.pid(), &["--preset", "production"]);
    let status = agent.json("status");
    assert_eq!((status["mode"].as_str(), status["leak_check_interval_seconds"].as_u64()), (Some("always-on"), Some(600)));
    drop(agent);
    let agent = Agent::start(target.pid(), &["--preset", "development"]);
    let status = agent.json("status");
    assert_eq!(status["mode"], "exact");
    assert_eq!((status["leak_check_interval_seconds"].as_u64(), status["metrics_update_interval_seconds"].as_u64()), (Some(1), Some(1)));
    drop(agent);
    let overridden = status_with(&["--preset", "production"], &[("MEMMON_TIER", "exact")]);
    assert!(overridden.as_str().unwrap().contains("tier exact"), "{overridden}");
}
