//! The agent and the management commands, against real targets: every command in both formats,
//! the API's errors, and the leak detector's verdicts on real memory patterns.

use std::{
    thread,
    time::{Duration, Instant},
};

use memmon_tests::{Agent, Target, require_root};
use serde_json::Value;

const FAST: &[&str] = &["--metrics-update-interval", "1", "--leak-check-interval", "1"];

#[test]
fn every_command_in_both_formats() {
    require_root();
    let mut target = Target::start("ground_truth");
    let agent = Agent::start(target.pid(), FAST);
    target.run("leak");

    let summary = agent.json("update-metrics");
    assert_eq!(summary["total_objects"], 100, "{summary:#}");
    assert_eq!(summary["live_bytes"], 104_950);
    assert!(summary["rss_bytes"].as_u64().unwrap() > 0);
    assert!(summary["peak_rss_bytes"].as_u64() >= summary["rss_bytes"].as_u64());
    let top = &summary["top_sites"][0];
    assert_eq!(top["site"]["frames"][0]["function"], "leak_exactly", "{top:#}");
    assert!(top["site"]["frames"][0]["file"].as_str().unwrap().ends_with("ground_truth.c"));
    assert!(top["site"]["frames"][0]["line"].as_u64().unwrap() > 0);
    assert_eq!((top["live_bytes"].as_u64(), top["live_allocations"].as_u64()), (Some(104_950), Some(100)));
    assert_eq!((top["allocated_bytes"].as_u64(), top["allocations"].as_u64()), (Some(104_950), Some(100)));
    // 1000..=1024 bytes fall in the 1 KiB class, 1025..=1099 in the 2 KiB class.
    let classes: Vec<(String, u64, u64)> = summary["by_size_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_string(), b["live_bytes"].as_u64().unwrap(), b["live_allocations"].as_u64().unwrap()))
        .collect();
    assert_eq!(classes, [("≤ 1.0 KiB".into(), 25_300, 25), ("≤ 2.0 KiB".into(), 79_650, 75)]);
    assert_eq!(summary["by_module"][0]["name"], "ground_truth");

    let summary = agent.json("memory-summary");
    assert_eq!(summary["live_bytes"], 104_950);
    let (code, text, _) = agent.command("memory-summary", &[]);
    assert_eq!(code, 0);
    assert!(text.starts_with("heap 102.5 KiB live in 100 blocks; RSS "), "{text}");
    assert!(text.contains("104950") && text.contains("leak_exactly"), "{text}");
    let (code, text, _) = agent.command("update-metrics", &[]);
    assert_eq!(code, 0);
    assert!(text.starts_with("snapshot taken\n"), "{text}");

    let status = agent.json("status");
    assert_eq!(status["attached"], true);
    assert_eq!(status["pids"][0], target.pid());
    assert_eq!(status["mode"], "exact");
    assert!(status["uptime_seconds"].as_f64().unwrap() > 0.0);
    let lost: u64 = status["events_lost"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(lost, 0, "{status:#}");
    assert_eq!(status["targets"][0]["allocator"], "glibc");
    // Where each function is probed (Debian 12's glibc): free past its `test` on the emulated
    // `je`, posix_memalign's entry and return past a RIP-relative cmpb; reallocarray, whose `mul`
    // overwrites the size before any emulated instruction, single-stepped at its entry.
    let sites = status["targets"][0]["probe_sites"].as_array().expect("probe_sites");
    let site = |function: &str| {
        let site = sites.iter().find(|s| s["function"] == function).unwrap_or_else(|| panic!("{function}: {status:#}"));
        (site["offset"].as_u64().unwrap(), site["emulated"].as_bool().unwrap(), site["returns"].as_bool().unwrap())
    };
    assert_eq!(site("free"), (3, true, false));
    assert_eq!(site("posix_memalign"), (7, true, true));
    assert_eq!(site("malloc"), (0, true, true));
    assert_eq!(site("reallocarray"), (0, false, true));
    assert_eq!(status["targets"][0]["single_stepped"], serde_json::json!(["reallocarray"]), "{status:#}");
    let (code, text, _) = agent.command("status", &[]);
    assert_eq!(code, 0);
    assert!(text.contains("glibc allocator in") && text.contains("free+3") && text.contains("events lost: none"), "{text}");
    assert!(text.contains("1 single-stepped") && text.contains("single-stepped: reallocarray in libc.so.6 at +0: "), "{text}");

    let health = agent.json("health-check");
    assert_eq!(health["status"], "healthy", "{health:#}");
    let (code, text, _) = agent.command("health-check", &[]);
    assert_eq!((code, text.lines().next()), (0, Some("memmon agent: healthy")), "{text}");

    // One burst of allocations is a first sighting, never growth: nothing to report.
    let leaks = agent.json("check-leaks");
    assert_eq!(leaks["leak_indicators"], serde_json::json!([]), "{leaks:#}");
    let (code, text, _) = agent.command("check-leaks", &["--verbose"]);
    assert_eq!(code, 0);
    assert!(text.starts_with("no leaks: nothing is growing") || text.starts_with("no leak check has run yet"), "{text}");

    target.send("exit");
    target.wait();
    thread::sleep(Duration::from_millis(600));
    let (code, text, _) = agent.command("health-check", &[]);
    assert_eq!(code, 2, "every target gone is a failure: {text}");
    assert!(text.contains("failed    target_alive"), "{text}");
    // The data stays available after the target exits.
    assert_eq!(agent.json("memory-summary")["live_bytes"], 104_950);
    let (code, stdout, stderr) = agent.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("memmon: every target exited"), "{stdout}");
    assert!(stdout.contains("stopping (terminated)"), "{stdout}");
}

fn raw_http(agent: &Agent, request_line: &str) -> (u16, Value) {
    let (status, body) = agent.api(request_line);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn the_api_refuses_malformed_requests_with_json_errors() {
    require_root();
    let target = Target::start("ground_truth");
    let agent = Agent::start(target.pid(), FAST);
    for (request, expected) in [
        ("GET /leaks?verbose=perhaps", 400),
        ("GET /leaks?bogus=1", 400),
        ("GET /no-such-thing", 404),
        ("POST /status", 405),
        ("DELETE /update-metrics", 405),
    ] {
        let (status, body) = raw_http(&agent, request);
        assert_eq!(status, expected, "{request}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{request}: {body}");
    }
    let (status, body) = raw_http(&agent, "GET /status");
    assert_eq!((status, &body["attached"]), (200, &Value::Bool(true)));
    let address = agent.url.trim_start_matches("http://").to_string();
    assert!(address.starts_with("127.0.0.1:"), "loopback: {address}");
}

#[test]
fn commands_say_when_no_agent_answers() {
    let output = std::process::Command::new(memmon_tests::memmon_binary())
        .args(["status", "--agent", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.starts_with("memmon: error: no memmon agent answers at http://127.0.0.1:1"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn bad_configuration_is_refused_naming_the_variable() {
    for (args, variable) in [
        (vec!["--leak-growth-threshold", "-1"], "MEMMON_LEAK_GROWTH_THRESHOLD"),
        (vec!["--leak-memory-threshold-mb=-5"], "MEMMON_LEAK_MEMORY_THRESHOLD_MB"),
        (vec!["--leak-check-interval", "0"], "MEMMON_LEAK_CHECK_INTERVAL"),
        (vec!["--metrics-update-interval", "soon"], "MEMMON_METRICS_UPDATE_INTERVAL"),
        (vec!["--profiling-output-dir", "/proc/1/nope"], "MEMMON_PROFILING_OUTPUT_DIR"),
    ] {
        let output = std::process::Command::new(memmon_tests::memmon_binary())
            .args(["agent", "--pid", &std::process::id().to_string(), "--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{args:?}");
        assert!(stderr.contains(variable), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let output = std::process::Command::new(memmon_tests::memmon_binary())
        .env("MEMMON_LEAK_SITE_GROWTH_THRESHOLD", "-2")
        .args(["agent", "--pid", &std::process::id().to_string()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("MEMMON_LEAK_SITE_GROWTH_THRESHOLD"));
}

/// Polls check-leaks until `checks` leak checks have run; returns the indicators then.
fn indicators_after(agent: &Agent, checks: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaks = agent.json("check-leaks");
        if leaks["leak_checks"].as_u64().unwrap() >= checks {
            return leaks["leak_indicators"].as_array().unwrap().clone();
        }
        assert!(Instant::now() < deadline, "leak checks are not running: {leaks:#}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn site_function(indicator: &Value) -> Option<&str> {
    indicator["site"]["frames"][0]["function"].as_str()
}

#[test]
fn a_steady_leak_is_flagged_within_three_checks_with_exact_bytes() {
    require_root();
    let target = Target::start_args("patterns", &["leak"]);
    let agent = Agent::start(target.pid(), FAST);
    let indicators = indicators_after(&agent, 3);
    let site: Vec<&Value> = indicators.iter().filter(|i| i["kind"] == "site_growth").collect();
    assert_eq!(site.len(), 1, "exactly the leaking site: {indicators:#?}");
    let leak = site[0];
    assert_eq!(site_function(leak), Some("leak_steadily"), "{leak:#}");
    assert!(matches!(leak["severity"].as_str(), Some("warning" | "critical")), "{leak:#}");
    let (bytes, blocks) = (leak["live_bytes"].as_u64().unwrap(), leak["live_allocations"].as_u64().unwrap());
    assert!(blocks > 0 && bytes == blocks * 1024, "every leaked block is 1024 bytes: {leak:#}");
    let rate = leak["growth_bytes_per_second"].as_f64().unwrap();
    assert!((5_000.0..20_000.0).contains(&rate), "about 10 KiB/s: {leak:#}");
    let (code, text, _) = agent.command("check-leaks", &[]);
    assert_eq!(code, 0);
    let line = text.lines().find(|l| l.contains("leak_steadily (")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with("WARNING") || line.starts_with("CRITICAL"), "{text}");
    let (code, text, _) = agent.command("check-leaks", &["--verbose"]);
    assert_eq!(code, 0);
    assert!(text.contains("evidence: ") && text.contains("#0  leak_steadily"), "{text}");
    // Nothing else is a site leak, at any later check either; and with nothing from before
    // attach left to replace, the leak is confirmed.
    let later = indicators_after(&agent, 5);
    for indicator in &later {
        if indicator["kind"] == "site_growth" {
            assert_eq!(site_function(indicator), Some("leak_steadily"), "{indicator:#}");
            assert_eq!(indicator["severity"], "critical", "{indicator:#}");
        }
    }
}

#[test]
fn a_cache_rotating_since_before_attach_is_never_confirmed_as_a_leak() {
    require_root();
    let target = Target::start_args("patterns", &["rotate"]);
    thread::sleep(Duration::from_millis(300)); // the cache is filled before memmon attaches
    let agent = Agent::start(target.pid(), FAST);
    // Its tracked blocks grow at every check for 40 s (old entries replaced by tracked ones),
    // exactly like a leak — but every new block replaces a freed one from before attach.
    for check in 1..=6 {
        let indicators = indicators_after(&agent, check);
        assert!(indicators.iter().all(|i| i["severity"] != "critical"), "check {check}: {indicators:#?}");
    }
    let indicators = indicators_after(&agent, 6);
    let cache = indicators
        .iter()
        .find(|i| site_function(i) == Some("cache_entry"))
        .unwrap_or_else(|| panic!("the growth is still shown, as a warning: {indicators:#?}"));
    assert_eq!(cache["severity"], "warning");
    assert!(cache["summary"].as_str().unwrap().contains("not confirmed"), "{cache:#}");
}

fn never_flagged(pattern: &str, checks: u64) {
    require_root();
    let target = Target::start_args("patterns", &[pattern]);
    let agent = Agent::start(target.pid(), FAST);
    for check in 1..=checks {
        let indicators = indicators_after(&agent, check);
        let growing: Vec<&Value> =
            indicators.iter().filter(|i| i["kind"] != "high_usage").collect();
        assert!(growing.is_empty(), "{pattern}: check {check} flagged {growing:#?}");
    }
}

#[test]
fn steady_churn_is_not_flagged() {
    never_flagged("churn", 6);
}

#[test]
fn a_warm_up_that_plateaus_is_not_flagged_once_it_plateaus() {
    require_root();
    let target = Target::start_args("patterns", &["warmup"]);
    let agent = Agent::start(target.pid(), FAST);
    // The cache grows during the second second; from the fourth check on it has plateaued.
    for check in 4..=7 {
        let indicators = indicators_after(&agent, check);
        assert!(indicators.iter().all(|i| i["kind"] == "high_usage"), "check {check}: {indicators:#?}");
    }
}

#[test]
fn a_single_large_allocation_is_not_flagged() {
    never_flagged("single", 6);
}

#[test]
fn health_check_is_degraded_when_the_live_table_is_nearly_full() {
    require_root();
    let mut target = Target::start("ground_truth");
    let agent = Agent::start(target.pid(), &["--max-live-allocations", "105"]);
    target.run("leak");
    agent.json("update-metrics");
    let (code, text, _) = agent.command("health-check", &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("memmon agent: degraded"), "{text}");
    assert!(text.contains("degraded  tables") && text.contains("live table 100/105"), "{text}");
    let (code, json, _) = agent.command("health-check", &["--format", "json"]);
    assert_eq!(code, 1, "the exit code does not depend on the format");
    let health: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(health["status"], "degraded");
}
