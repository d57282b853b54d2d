//! The agent's /metrics: exact values, Prometheus' own checker, and bounded cardinality.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use memmon_tests::{Agent, Target, http, require_root};

/// The value of the one series whose name and labels contain all of `parts`.
fn value(metrics: &str, parts: &[&str]) -> f64 {
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .collect();
    assert_eq!(lines.len(), 1, "{parts:?} matched {lines:?}");
    lines[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn metrics_are_exact_and_pass_promtool() {
    require_root();
    let mut target = Target::start("ground_truth");
    let agent = Agent::start(target.pid(), &["--metrics-update-interval", "1", "--leak-check-interval", "1"]);
    target.run("leak");
    target.run("churn");
    std::thread::sleep(std::time::Duration::from_secs(2));
    agent.json("update-metrics");
    let (status, metrics) = http(&agent.url, "GET /metrics");
    assert_eq!(status, 200, "{metrics}");
    // Age of live memory: the leak's blocks were made over 2 s ago (and well under a minute).
    let age = value(&metrics, &["memmon_site_live_mean_age_seconds{", "site=\"leak_exactly ("]);
    assert!((2.0..60.0).contains(&age), "site age {age}");
    let age = value(&metrics, &["memmon_heap_live_mean_age_seconds{", &format!("pid=\"{}\"", target.pid())]);
    assert!((2.0..60.0).contains(&age), "heap age {age}");

    let pid = format!("pid=\"{}\"", target.pid());
    assert_eq!(value(&metrics, &["memmon_heap_live_bytes{", &pid]), 104_950.0);
    assert_eq!(value(&metrics, &["memmon_heap_live_allocations{", &pid]), 100.0);
    assert_eq!(value(&metrics, &["memmon_allocations_total{", &pid]), 5_100.0);
    assert_eq!(value(&metrics, &["memmon_allocated_bytes_total{", &pid]), 104_950.0 + 352_000.0);
    assert_eq!(value(&metrics, &["memmon_frees_total{", &pid]), 5_000.0);
    assert_eq!(value(&metrics, &["memmon_site_live_bytes{", "site=\"leak_exactly ("]), 104_950.0);
    assert!(value(&metrics, &["memmon_process_resident_memory_bytes{", &pid]) > 0.0);
    assert_eq!(value(&metrics, &["memmon_target_info{", "allocator=\"glibc\""]), 1.0);
    assert_eq!(value(&metrics, &["memmon_events_lost_total{", "reason=\"live_table_full\""]), 0.0);
    // 100 blocks of 1000..1099 bytes and 5000 churn blocks of 64, 64, 32, 64 and 128 bytes:
    // 25 of the leak's are ≤ 1024, 75 are ≤ 2048.
    assert_eq!(value(&metrics, &["memmon_allocation_size_bytes_bucket{", "le=\"32\""]), 1_000.0);
    assert_eq!(value(&metrics, &["memmon_allocation_size_bytes_bucket{", "le=\"64\""]), 4_000.0);
    assert_eq!(value(&metrics, &["memmon_allocation_size_bytes_bucket{", "le=\"128\""]), 5_000.0);
    assert_eq!(value(&metrics, &["memmon_allocation_size_bytes_bucket{", "le=\"1024\""]), 5_025.0);
    assert_eq!(value(&metrics, &["memmon_allocation_size_bytes_bucket{", "le=\"2048\""]), 5_100.0);
    assert_eq!(value(&metrics, &["memmon_allocation_size_bytes_bucket{", "le=\"+Inf\""]), 5_100.0);
    assert_eq!(value(&metrics, &["memmon_allocation_size_bytes_count"]), 5_100.0);
    assert_eq!(value(&metrics, &["memmon_allocation_size_bytes_sum"]), 456_950.0);
    for name in ["memmon_process_peak_resident_memory_bytes", "memmon_probes_attached", "memmon_agent_cpu_seconds_total", "memmon_symbolizer_cache_requests_total", "memmon_brk_heap_bytes"] {
        assert!(metrics.contains(&format!("# HELP {name} ")), "{name} missing or without HELP");
    }

    // Prometheus' own linter: no complaints at all.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; cargo xtask setup installs it)");
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let complaints = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && complaints.trim().is_empty(), "promtool: {complaints}");
}

#[test]
fn ten_thousand_sites_give_a_bounded_number_of_series() {
    require_root();
    let mut target = Target::start("many_sites");
    let agent = Agent::start(target.pid(), &["--metrics-update-interval", "1"]);
    target.run("sites 10000");
    let summary = agent.json("update-metrics");
    assert_eq!(summary["total_objects"], 10_000, "one block per site");
    let (status, metrics) = http(&agent.url, "GET /metrics");
    assert_eq!(status, 200);
    let series = |name: &str| metrics.lines().filter(|l| l.starts_with(&format!("{name}{{"))).count();
    assert_eq!(series("memmon_site_live_bytes"), 20, "the default top-K");
    assert_eq!(series("memmon_site_live_allocations"), 20);
    // A fixed set per target and per reason, 43 for the size histogram, and 2 x K for sites
    // (170 with the tier, capture, overhead and stack-walk series).
    let total = metrics.lines().filter(|l| !l.starts_with('#')).count();
    assert!(total <= 175, "{total} series for 10000 sites");

    drop(agent);
    let agent = Agent::start(target.pid(), &["--metrics-top-sites", "5"]);
    target.run("sites 100");
    agent.json("update-metrics");
    let (_, metrics) = http(&agent.url, "GET /metrics");
    assert_eq!(metrics.lines().filter(|l| l.starts_with("memmon_site_live_bytes{")).count(), 5);
}

#[test]
fn metrics_can_be_disabled() {
    require_root();
    let target = Target::start("ground_truth");
    let agent = Agent::start(target.pid(), &["--prometheus-metrics-enabled", "false"]);
    let (status, body) = http(&agent.url, "GET /metrics");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("MEMMON_PROMETHEUS_METRICS_ENABLED"), "{body}");
}
